//! The smallest useful program: 1,000 items through a limiter of 4, each told its worker ID.
//!
//! Run it with `cargo run --example basic`.

use std::time::Duration;

use task_limiter::Limiter;

#[tokio::main]
async fn main() {
    let limiter = Limiter::builder().limit(4).name("basic").build();

    let handles: Vec<_> = (0..1_000u64)
        .map(|i| {
            limiter.spawn_with(move |worker| async move {
                tokio::time::sleep(Duration::from_micros(200)).await;
                (i, worker)
            })
        })
        .collect();
    println!("submitted {} items; {:?}", handles.len(), limiter);

    let mut per_worker = [0usize; 4];
    for handle in handles {
        let (_, worker) = handle.await.expect("items do not panic");
        per_worker[worker.index()] += 1;
    }

    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    println!("items per worker: {per_worker:?}");
    println!(
        "completed {} items, at most {} at once, with {} worker tasks spawned",
        m.completed, m.max_running, m.workers_spawned
    );
}
