//! Blocking work under the same limit as async work: the seed's own case, "compile N functions
//! at a time", with CPU-bound closures on tokio's blocking pool and async I/O-like items sharing
//! one limit and one set of worker IDs.
//!
//! Run it with `cargo run --example blocking`.

use std::time::{Duration, Instant};

use task_limiter::Limiter;

/// Stands in for compiling one function: pure CPU, no `.await` anywhere.
fn compile(size: u64) -> u64 {
    (0..size * 20_000).fold(size, |h, x| h.rotate_left(5) ^ x)
}

#[tokio::main]
async fn main() {
    let limiter = Limiter::builder().limit(4).name("compile").build();
    let started = Instant::now();

    // The closures run on the blocking pool, never on the async worker threads, and each holds
    // its worker ID until it returns.
    let compiled: Vec<_> = (1..=32u64)
        .map(|size| limiter.spawn_blocking(move |id| (size, id, compile(size))))
        .collect();
    // Async items wait in the same queue and count against the same limit of 4.
    let uploads: Vec<_> = (0..8)
        .map(|i| {
            limiter.spawn_with(move |id| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                (i, id)
            })
        })
        .collect();

    for handle in compiled {
        let (size, id, hash) = handle.await.unwrap();
        println!("function of size {size:>2} compiled on {id}: {hash:016x}");
    }
    for handle in uploads {
        let (i, id) = handle.await.unwrap();
        println!("upload {i} ran on {id}");
    }

    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    println!(
        "{} items in {:?}, at most {} at once, {} worker tasks spawned",
        m.completed,
        started.elapsed(),
        m.max_running,
        m.workers_spawned
    );
}
