//! Serves tokio-console while a named [`Limiter`] runs an endless workload of short sleeps, so you
//! can watch it keep at most 8 worker tasks (`demo.worker-0` ..= `demo.worker-7`) plus one
//! `demo.manager` on the runtime while about a thousand items wait in its queue.
//!
//! ```text
//! RUSTFLAGS="--cfg tokio_unstable" cargo run -p console-demo    # serves 127.0.0.1:6669
//! tokio-console http://127.0.0.1:6669                           # in another terminal
//! ```
//!
//! Install the console with `cargo install --locked tokio-console`. The demo runs until Ctrl-C;
//! `console-demo SECONDS` stops it after that many seconds. Use the same `RUSTFLAGS` (or a
//! separate `CARGO_TARGET_DIR`) consistently, or cargo rebuilds everything each time they change.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use task_limiter::Limiter;

const LIMIT: usize = 8;
const NAME: &str = "demo";
/// The feeder tops the queue up to this many items.
const QUEUE_TARGET: usize = 1_000;
const ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 6669);

fn main() {
    if !cfg!(tokio_unstable) {
        // console-subscriber panics at start-up without tokio's unstable instrumentation.
        eprintln!(
            "console-demo needs tokio's unstable task instrumentation. Run it as\n\n    \
             RUSTFLAGS=\"--cfg tokio_unstable\" cargo run -p console-demo"
        );
        std::process::exit(2);
    }
    let seconds = match std::env::args().nth(1) {
        None => None,
        Some(arg) => match arg.parse::<u64>() {
            Ok(seconds) => Some(Duration::from_secs(seconds)),
            Err(_) => {
                eprintln!("usage: console-demo [SECONDS]");
                std::process::exit(2);
            }
        },
    };

    console_subscriber::ConsoleLayer::builder()
        .server_addr(ADDR)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("failed to build the tokio runtime")
        .block_on(run(seconds));
}

async fn run(seconds: Option<Duration>) {
    println!("tokio-console server on {ADDR}; attach with:\n");
    println!("    tokio-console http://{ADDR}\n");
    println!(
        "(built with RUSTFLAGS=\"--cfg tokio_unstable\" and task-limiter's `console` feature)"
    );
    println!(
        "limiter {NAME:?}: limit {LIMIT}, about {QUEUE_TARGET} items queued at any time, \
         each sleeping 5-150 ms. Ctrl-C stops it.\n"
    );

    let limiter = Limiter::builder().limit(LIMIT).name(NAME).build();
    let started = Instant::now();
    let deadline = seconds.map(|seconds| tokio::time::Instant::now() + seconds);
    let stop = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);

    // Feeding and reporting run right here, in the future that `block_on` drives, so the only
    // tasks on the runtime are the limiter's own.
    let mut next_item: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {}
        }
        let queued = limiter.metrics().queued;
        for _ in queued..QUEUE_TARGET {
            let sleep = Duration::from_millis(5 + splitmix64(next_item) % 146);
            next_item += 1;
            // Handles are dropped: the items run detached, as in tokio.
            drop(limiter.spawn_with(move |worker| async move {
                tokio::time::sleep(sleep).await;
                worker
            }));
        }
        ticks += 1;
        if ticks % 40 == 0 {
            report(&limiter, started);
        }
    }

    println!("\nstopping: shutdown() cancels what is queued and running");
    limiter.shutdown().await;
    let m = limiter.metrics();
    println!(
        "done after {:.0}s: {} items completed, {} cancelled, {} worker tasks spawned in all",
        started.elapsed().as_secs_f64(),
        m.completed,
        m.cancelled,
        m.workers_spawned,
    );
}

fn report(limiter: &Limiter, started: Instant) {
    let m = limiter.metrics();
    let busy: Vec<usize> = limiter
        .busy_workers()
        .into_iter()
        .map(|id| id.index())
        .collect();
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    println!(
        "{:>5.0}s  queued {:>4}  running {}  completed {:>6}  busy workers {:?}  \
         tasks alive on the runtime {alive} (limit {} + manager)",
        started.elapsed().as_secs_f64(),
        m.queued,
        m.running,
        m.completed,
        busy,
        m.limit,
    );
}

/// A well-mixed pseudo-random number from `x`: varied sleeps without a dependency.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
