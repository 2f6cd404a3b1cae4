//! Adaptive limits (issue 12), against a simulated downstream on paused time
//! (`examples/support/downstream.rs`): its service time grows once more than `capacity`
//! calls are in it, and its capacity changes while the limiter runs. Each test states the
//! band the limit must settle in and how many samples it may take.
#[path = "../examples/support/downstream.rs"]
mod downstream;

use std::time::Duration;

use downstream::{run, Downstream};
use task_limiter::adaptive::{Aimd, Algorithm, Gradient};
use task_limiter::{Builder, Limiter};

const BASE: Duration = Duration::from_millis(10);

fn adaptive(algorithm: impl Algorithm + Clone + Sync, start: usize) -> Builder {
    Limiter::builder().adaptive(algorithm).limit(start)
}

fn show(limits: &[usize]) -> String {
    limits
        .chunks(100)
        .map(|c| format!("{}", c.iter().sum::<usize>() / c.len()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn explore_gradient() {
    let downstream = Downstream::new(16, BASE, false);
    let limiter = adaptive(Gradient::new(), 1).max_limit(200).build();
    let trace = run(&limiter, &downstream, 100, &[(16, 1500), (4, 1500), (32, 1500)]).await;
    println!("low start: {}", show(&trace.limits));
    println!("cap32 detail: {:?}", &trace.limits[3000..3600]);
    let limiter = adaptive(Gradient::new(), 150).max_limit(200).build();
    let trace = run(&limiter, &downstream, 100, &[(16, 1500), (4, 1500), (32, 1500)]).await;
    println!("high start: {}", show(&trace.limits));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn explore_aimd() {
    let downstream = Downstream::new(16, BASE, true);
    let limiter = adaptive(Aimd::new(), 1).max_limit(200).build();
    let trace = run(&limiter, &downstream, 100, &[(16, 1500), (4, 1500), (32, 1500)]).await;
    println!("aimd low start: {} refused {}", show(&trace.limits), trace.refused.iter().filter(|r| **r).count());
}
