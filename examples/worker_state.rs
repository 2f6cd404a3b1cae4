//! Per-worker state: each worker ID gets one reusable scratch buffer and a hit counter, made on
//! first use and lent to every item that runs under that ID, with no lock and no table indexed by
//! `WorkerId`; a panicking item's value is dropped and made anew.
//!
//! Run it with `cargo run --example worker_state`.

use task_limiter::{Limiter, WorkerId};

/// What each worker keeps between items: a buffer that is reused instead of reallocated, and
/// how many items it served.
struct Scratch {
    id: WorkerId,
    buf: Vec<u8>,
    served: usize,
}

#[tokio::main]
async fn main() {
    let limiter = Limiter::builder()
        .limit(4)
        .name("worker-state")
        .worker_state(|id| {
            println!("making the scratch buffer of {id}");
            Scratch {
                id,
                buf: Vec::with_capacity(64 * 1024),
                served: 0,
            }
        })
        .build();

    // Async items borrow the value across `.await`s: the closure returns a boxed future.
    let handles: Vec<_> = (0..200u32)
        .map(|i| {
            limiter.spawn_with_state(move |scratch: &mut Scratch, id| {
                Box::pin(async move {
                    assert_eq!(scratch.id, id);
                    scratch.buf.clear();
                    scratch.buf.extend((0..1000).map(|x| (x * i) as u8));
                    tokio::task::yield_now().await;
                    scratch.served += 1;
                    scratch.buf.iter().map(|&b| u64::from(b)).sum::<u64>()
                })
            })
        })
        .collect();
    let mut total = 0;
    for handle in handles {
        total += handle.await.unwrap();
    }
    println!("sum of 200 items: {total}");

    // Blocking items get the same values, on the blocking pool.
    let served: Vec<_> = (0..4)
        .map(|_| {
            limiter.spawn_blocking_with_state(|scratch: &mut Scratch, id| {
                scratch.served += 1;
                (id, scratch.served)
            })
        })
        .collect();
    for handle in served {
        let (id, served) = handle.await.unwrap();
        println!("{id} has served {served} items so far");
    }

    // A panic while holding the value drops it: the next item on that ID gets a fresh one.
    println!("an item panics on purpose (the panic message below is expected)");
    let err = limiter
        .spawn_with_state(|scratch: &mut Scratch, _| {
            Box::pin(async move {
                scratch.buf.truncate(3); // half-updated when it panics
                panic!("a bad input");
            })
        })
        .await
        .unwrap_err();
    println!(
        "an item panicked on {:?}: its value is rebuilt on next use",
        err.worker_id()
    );

    limiter.close();
    limiter.wait().await;
}
