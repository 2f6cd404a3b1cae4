//! Priority queue: with `QueueOrder::Priority`, urgent items jump the queue while routine items
//! of equal priority keep their submission order.
//!
//! Run it with `cargo run --example priority`.

use std::time::Duration;

use task_limiter::{Limiter, QueueOrder};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let limiter = Limiter::builder()
        .limit(2)
        .queue_order(QueueOrder::Priority)
        .name("priority")
        .build();

    let job = |name: String| async move {
        println!("started {name}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    // Routine work (priority 0, as for any plain `spawn`) fills the queue...
    let mut handles: Vec<_> = (0..6)
        .map(|i| limiter.spawn(job(format!("routine {i}"))))
        .collect();
    // ...background work ranks below it...
    handles.push(
        limiter
            .build_task()
            .priority(-1)
            .spawn(job("background cleanup".into())),
    );
    // ...and urgent work, submitted last, starts as soon as a worker is free.
    for i in 0..2 {
        handles.push(
            limiter
                .build_task()
                .priority(10)
                .spawn(job(format!("urgent {i}"))),
        );
    }
    // The seed's case: compile the biggest functions first, on the blocking pool.
    for size in [3, 40, 7] {
        handles.push(
            limiter
                .build_task()
                .priority(size)
                .spawn_blocking(move |_| {
                    println!("started compiling a function of size {size}");
                    std::thread::sleep(Duration::from_millis(size as u64));
                }),
        );
    }

    // Expected start order: the two highest priorities at once (one per worker: size 40 and
    // urgent 0), then urgent 1, sizes 7 and 3, the routine items in submission order, and the
    // background item last.
    for handle in handles {
        handle.await.unwrap();
    }
    limiter.close();
    limiter.wait().await;
}
