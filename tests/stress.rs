//! Many items on the multi-thread runtime, with random panics, aborts and dropped handles.
// Real tokio: under the `shuttle` feature the crate runs on shuttle-tokio (tests/shuttle.rs).
#![cfg(not(feature = "shuttle"))]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::Concurrency;
use task_limiter::Limiter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Return,
    Yield,
    Panic,
    Abort,
    Detach,
}

async fn stress(limit: usize, items: usize, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let limiter = Limiter::new(limit);
    let running = Concurrency::default();
    let ran = Arc::new(AtomicUsize::new(0));
    let mut kept = Vec::new();
    for i in 0..items {
        let kind = match rng.u8(0..20) {
            0 => Kind::Panic,
            1 => Kind::Abort,
            2 => Kind::Detach,
            3..=9 => Kind::Yield,
            _ => Kind::Return,
        };
        let running = running.clone();
        let ran = ran.clone();
        let handle = limiter.spawn_with(move |id| async move {
            let _running = running.enter();
            assert!(id.index() < limit);
            ran.fetch_add(1, Ordering::SeqCst);
            match kind {
                Kind::Panic => panic!("planned"),
                Kind::Yield | Kind::Abort => tokio::task::yield_now().await,
                Kind::Return | Kind::Detach => {}
            }
            i
        });
        match kind {
            Kind::Detach => drop(handle),
            Kind::Abort => {
                handle.abort();
                kept.push((i, kind, handle));
            }
            _ => kept.push((i, kind, handle)),
        }
        if i % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for (i, kind, handle) in kept {
        match (kind, handle.await) {
            (Kind::Return | Kind::Yield, Ok(value)) => assert_eq!(value, i),
            (Kind::Panic, Err(err)) => assert!(err.is_panic()),
            // An abort races the item: it may have finished first.
            (Kind::Abort, Ok(value)) => assert_eq!(value, i),
            (Kind::Abort, Err(err)) => assert!(err.is_cancelled()),
            (kind, result) => panic!("item {i} ({kind:?}) resolved to {result:?}"),
        }
    }
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert!(
        running.max() <= limit,
        "{} items ran at once",
        running.max()
    );
    assert!(m.max_running <= limit);
    assert_eq!(m.submitted, items as u64);
    assert_eq!(m.submitted, m.completed + m.panicked + m.cancelled, "{m:?}");
    // Every item that ran ended as completed, panicked, or aborted mid-run (cancelled).
    let ran = ran.load(Ordering::SeqCst) as u64;
    assert!(m.completed + m.panicked <= ran && ran <= m.completed + m.panicked + m.cancelled);
    assert_eq!((m.queued, m.running), (0, 0));
}

#[cfg(panic = "unwind")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_items_with_panics_aborts_and_drops_resolve_within_the_limit() {
    let seed = fastrand::u64(..);
    println!("seed {seed}");
    for (round, limit) in [1, 2, 8, 64].into_iter().enumerate() {
        stress(limit, 10_000, seed.wrapping_add(round as u64)).await;
    }
}
