//! A crawler's shape: fetches against many hosts with at most 32 in flight in all and at most 4
//! per host (one host, `slow.example`, allowed only 1), weighted uploads that count 4 each, and a
//! per-host report. The "fetch" is a sleep whose length depends on the host, so the example needs
//! no network.
//!
//! ```text
//! cargo run --release --example per_host
//! ```
//!
//! It prints a mid-run snapshot of `key_metrics` per host, then per host: requests, the most in
//! flight at once (never above the host's limit), and the time to finish its queue. Every host
//! gets turns while `big.example` has a thousand requests queued: the small hosts finish early.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use task_limiter::Limiter;
use tokio::time::{sleep, Instant};

#[derive(Default)]
struct HostStats {
    requests: usize,
    in_flight: usize,
    max_in_flight: usize,
    finished_at: Duration,
}

#[tokio::main]
async fn main() {
    let limiter = Limiter::builder()
        .name("crawler")
        .limit(32)
        .per_key_limit(4)
        .build();
    limiter.set_key_limit("slow.example", 1);

    let mut hosts: Vec<(String, usize)> = vec![("big.example".into(), 1000)];
    hosts.extend((0..20).map(|i| (format!("host{i}.example"), 10)));
    hosts.push(("slow.example".into(), 5));

    let stats: Arc<Mutex<BTreeMap<String, HostStats>>> = Arc::default();
    let start = Instant::now();
    let mut handles = Vec::new();
    for (host, n) in &hosts {
        for i in 0..*n {
            let stats = stats.clone();
            let host = host.clone();
            // Every tenth request to a host is an upload: it counts 4 toward both limits.
            let weight = if i % 10 == 9 { 4 } else { 1 };
            let latency = Duration::from_millis(2 + (host.len() as u64 % 5) * weight as u64);
            let task = limiter.build_task().key(host.as_str()).weight(weight);
            handles.push(task.spawn(async move {
                {
                    let mut stats = stats.lock().unwrap();
                    let s = stats.entry(host.clone()).or_default();
                    s.in_flight += weight as usize;
                    s.max_in_flight = s.max_in_flight.max(s.in_flight);
                }
                sleep(latency).await;
                let mut stats = stats.lock().unwrap();
                let s = stats.get_mut(&host).expect("entered above");
                s.in_flight -= weight as usize;
                s.requests += 1;
                s.finished_at = start.elapsed();
            }));
        }
    }

    sleep(Duration::from_millis(20)).await;
    println!("after 20 ms:");
    for host in ["big.example", "host0.example", "slow.example"] {
        match limiter.key_metrics(host) {
            Some(m) => println!(
                "  {host:<14} limit {:>2}  queued {:>4}  running {}  weight running {}",
                m.limit, m.queued, m.running, m.weight_running
            ),
            None => println!("  {host:<14} done"),
        }
    }

    for handle in handles {
        handle.await.expect("a fetch never panics here");
    }
    println!(
        "\n{:<14} {:>8} {:>14} {:>10}",
        "host", "requests", "max in flight", "done at"
    );
    for (host, s) in stats.lock().unwrap().iter() {
        let limit = limiter.key_limit(host.as_str());
        assert!(s.max_in_flight <= limit, "{host} passed its limit");
        println!(
            "{host:<14} {:>8} {:>10} / {limit} {:>8.1?}",
            s.requests, s.max_in_flight, s.finished_at
        );
    }
    let m = limiter.metrics();
    println!(
        "\nall: {} completed, at most {} running at once (limit {}); keys left: {}",
        m.completed,
        m.max_running,
        m.limit,
        hosts
            .iter()
            .filter(|(host, _)| limiter.key_metrics(host.as_str()).is_some())
            .count()
    );
}
