//! Backpressure: a producer far faster than its workers, kept at most `max_queued` items ahead
//! of them by `reserve`, while `try_spawn` sheds load (and gets its work back) when the queue
//! is full.
//!
//! Run it with `cargo run --example backpressure`.

use std::time::Duration;

use task_limiter::{Limiter, TrySpawnError};

#[tokio::main]
async fn main() {
    let limiter = Limiter::builder()
        .limit(2)
        .max_queued(8)
        .name("backpressure")
        .build();

    // A producer that waits for room: never more than 8 of its items wait for a worker.
    let mut handles = Vec::new();
    let mut waited = 0;
    for i in 0..100u64 {
        let permit = match limiter.try_reserve() {
            Ok(permit) => permit,
            Err(_) => {
                waited += 1;
                limiter.reserve().await.expect("the limiter is open")
            }
        };
        handles.push(permit.spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            i
        }));
    }
    println!("reserve: 100 items submitted; the producer waited for room {waited} times");
    let sum: u64 = futures::future::join_all(handles)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    println!("reserve: sum {sum}");

    // A producer that never waits: what does not fit is handed back, to drop or retry later.
    let (mut accepted, mut shed) = (Vec::new(), Vec::new());
    for i in 0..50u64 {
        match limiter.try_spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            i
        }) {
            Ok(handle) => accepted.push(handle),
            Err(TrySpawnError::Full(work)) => shed.push(work),
            Err(TrySpawnError::Closed(_)) => unreachable!("the limiter is open"),
        }
    }
    println!(
        "try_spawn: {} accepted, {} handed back",
        accepted.len(),
        shed.len()
    );
    for handle in accepted {
        handle.await.unwrap();
    }
    // The refused futures are intact: run them now that there is room.
    for work in shed {
        limiter.reserve().await.unwrap().spawn(work).await.unwrap();
    }

    limiter.close();
    limiter.wait().await;
    println!("done: {:?}", limiter.metrics());
}
