//! Backpressure: `max_queued` bounds what `try_spawn` and `reserve` may queue; places come
//! back the moment an item starts or is cancelled; `spawn` never waits and takes no place.
#![cfg(not(feature = "shuttle"))]

mod support;

use std::sync::atomic::Ordering;

use support::{hold_a_worker, settle, DropFlag, Gate};
use task_limiter::{JoinHandle, Limiter, TrySpawnError};
use tokio_test::{assert_pending, assert_ready, task};

/// A limiter with one worker held busy (by a plain `spawn`, which takes no place) until the
/// returned gate opens.
async fn busy_limiter(max_queued: usize) -> (Limiter, Gate, JoinHandle<()>) {
    let limiter = Limiter::builder().limit(1).max_queued(max_queued).build();
    let (gate, blocker) = hold_a_worker(&limiter).await;
    (limiter, gate, blocker)
}

#[tokio::test]
async fn try_spawn_gives_the_work_back_once_the_queue_is_full() {
    let (limiter, gate, blocker) = busy_limiter(2).await;
    let a = limiter.try_spawn(async { "a" }).unwrap();
    let b = limiter.try_spawn(async { "b" }).unwrap();
    let refused = limiter.try_spawn(async { "c" }).unwrap_err();
    assert!(refused.is_full() && !refused.is_closed());
    // The very future comes back, and still works.
    assert_eq!(refused.into_inner().await, "c");
    assert_eq!(
        limiter.metrics().submitted,
        3,
        "a refused item is not submitted"
    );

    gate.open(1);
    blocker.await.unwrap();
    assert_eq!((a.await.unwrap(), b.await.unwrap()), ("a", "b"));
    assert!(
        limiter.try_spawn(async {}).is_ok(),
        "room again once they started"
    );
}

#[tokio::test]
async fn try_spawn_with_gives_the_closure_back() {
    let (limiter, gate, _blocker) = busy_limiter(1).await;
    let _a = limiter.try_spawn_with(|_| async { 1 }).unwrap();
    let make = limiter
        .try_spawn_with(|id| async move { id.index() + 10 })
        .unwrap_err()
        .into_inner();
    gate.open(1);
    assert_eq!(limiter.spawn_with(make).await.unwrap(), 10);
}

#[tokio::test]
async fn starting_an_item_frees_its_place_before_it_finishes() {
    let limiter = Limiter::builder().limit(1).max_queued(1).build();
    let gate = Gate::new();
    let first = limiter
        .try_spawn({
            let gate = gate.clone();
            async move { gate.wait().await }
        })
        .unwrap();
    assert!(limiter.try_spawn(async {}).unwrap_err().is_full());
    settle().await;
    assert_eq!(limiter.metrics().running, 1);
    let second = limiter.try_spawn(async {}).unwrap();
    gate.open(1);
    first.await.unwrap();
    second.await.unwrap();
}

#[tokio::test]
async fn aborting_a_queued_item_frees_its_place_at_once() {
    let (limiter, _gate, _blocker) = busy_limiter(1).await;
    let (flag, dropped) = DropFlag::new();
    let queued = limiter
        .try_spawn(async move {
            let _flag = flag;
        })
        .unwrap();
    assert!(limiter.try_spawn(async {}).unwrap_err().is_full());
    queued.abort();
    assert!(dropped.load(Ordering::SeqCst));
    // No `.await` in between: the place is back as `abort` returns.
    assert!(limiter.try_spawn(async {}).is_ok());
}

#[tokio::test]
async fn spawn_never_waits_and_takes_no_place() {
    let (limiter, gate, blocker) = busy_limiter(1).await;
    let bounded = limiter.try_spawn(async { 0 }).unwrap();
    let unbounded: Vec<_> = (1..=10).map(|i| limiter.spawn(async move { i })).collect();
    assert!(limiter.try_spawn(async { 0 }).unwrap_err().is_full());
    assert_eq!(limiter.metrics().queued, 11);
    gate.open(1);
    blocker.await.unwrap();
    assert_eq!(bounded.await.unwrap(), 0);
    for (i, handle) in unbounded.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), i + 1);
    }
}

#[tokio::test]
async fn reserve_waits_for_a_place_and_is_woken_when_one_frees() {
    let (limiter, _gate, _blocker) = busy_limiter(1).await;
    let queued = limiter.try_spawn(async {}).unwrap();
    let mut reserve = task::spawn(limiter.reserve());
    assert_pending!(reserve.poll());
    queued.abort();
    assert!(reserve.is_woken());
    let permit = assert_ready!(reserve.poll()).unwrap();
    assert!(
        limiter.try_reserve().unwrap_err().is_full(),
        "the permit holds the place"
    );
    drop(permit);
    assert!(
        limiter.try_reserve().is_ok(),
        "an unused permit gives it back"
    );
}

#[tokio::test]
async fn a_dropped_reserve_takes_no_place_and_the_next_waiter_gets_it() {
    let (limiter, _gate, _blocker) = busy_limiter(1).await;
    let queued = limiter.try_spawn(async {}).unwrap();
    let mut first = task::spawn(limiter.reserve());
    let mut second = task::spawn(limiter.reserve());
    assert_pending!(first.poll());
    assert_pending!(second.poll());
    drop(first); // cancelled while waiting
    queued.abort();
    assert!(second.is_woken());
    let permit = assert_ready!(second.poll()).unwrap();
    let handle = permit.spawn(async { "in" });
    assert!(limiter.try_reserve().unwrap_err().is_full());
    handle.abort();
    assert!(limiter.try_reserve().is_ok());
}

#[tokio::test]
async fn reserve_keeps_a_producer_within_the_bound() {
    let limiter = Limiter::builder().limit(2).max_queued(3).build();
    let mut handles = Vec::new();
    for i in 0..50 {
        let permit = limiter.reserve().await.unwrap();
        handles.push(permit.spawn(async move {
            tokio::task::yield_now().await;
            i
        }));
        assert!(limiter.metrics().queued <= 3, "{:?}", limiter.metrics());
    }
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), i);
    }
}

#[tokio::test]
async fn a_permit_submits_any_shape_of_work() {
    let limiter = Limiter::builder()
        .limit(1)
        .max_queued(1)
        .worker_state(|_| 5_u32)
        .build();
    let blocking = limiter
        .reserve()
        .await
        .unwrap()
        .build_task()
        .spawn_blocking(|_| 1);
    assert_eq!(blocking.await.unwrap(), 1);
    let stateful = limiter
        .try_reserve()
        .unwrap()
        .build_task()
        .spawn_with_state(|n: &mut u32, _| {
            let n = *n;
            Box::pin(async move { n })
        });
    assert_eq!(stateful.await.unwrap(), 5);
    let with = limiter
        .reserve()
        .await
        .unwrap()
        .spawn_with(|id| async move { id.index() });
    assert_eq!(with.await.unwrap(), 0);
}

#[tokio::test]
async fn a_closed_limiter_refuses_with_closed() {
    let limiter = Limiter::builder().max_queued(4).build();
    limiter.close();
    match limiter.try_spawn(async { 3 }) {
        Err(TrySpawnError::Closed(work)) => assert_eq!(work.await, 3),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(limiter.try_reserve().unwrap_err().is_closed());
    let err = limiter.reserve().await.unwrap_err();
    assert_eq!(err.to_string(), "limiter is closed");
    // Without a bound, too.
    let unbounded = Limiter::new(1);
    unbounded.close();
    assert!(unbounded.try_spawn(async {}).unwrap_err().is_closed());
    assert!(unbounded.reserve().await.is_err());
}

#[tokio::test]
async fn close_and_shutdown_wake_waiting_reservers_with_an_error() {
    for shutdown in [false, true] {
        let (limiter, gate, _blocker) = busy_limiter(1).await;
        let _queued = limiter.try_spawn(async {}).unwrap();
        let mut reserve = task::spawn(limiter.reserve());
        assert_pending!(reserve.poll());
        if shutdown {
            let mut shutting = task::spawn(limiter.shutdown());
            let _ = shutting.poll();
        } else {
            assert!(limiter.close());
        }
        assert!(reserve.is_woken());
        assert!(assert_ready!(reserve.poll()).is_err());
        gate.open(1);
    }
}

#[tokio::test]
async fn without_max_queued_nothing_is_ever_full() {
    let limiter = Limiter::new(1);
    let handles: Vec<_> = (0..1000)
        .map(|i| limiter.try_spawn(async move { i }).unwrap())
        .collect();
    let mut reserve = task::spawn(limiter.reserve());
    let permit = assert_ready!(reserve.poll()).unwrap();
    drop(permit);
    drop(reserve);
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), i);
    }
}

#[test]
fn errors_format_without_the_work_type() {
    struct NotDebug;
    let full: TrySpawnError<NotDebug> = TrySpawnError::Full(NotDebug);
    let closed: TrySpawnError<NotDebug> = TrySpawnError::Closed(NotDebug);
    assert_eq!(format!("{full:?}"), "Full(..)");
    assert_eq!(format!("{closed:?}"), "Closed(..)");
    assert_eq!(full.to_string(), "limiter queue is full");
    assert_eq!(closed.to_string(), "limiter is closed");
    let _: &dyn std::error::Error = &full;
}

#[test]
#[should_panic(expected = "`max_queued` must be at least 1")]
fn max_queued_zero_panics() {
    let _ = Limiter::builder().max_queued(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_all_get_through_the_bound() {
    const MAX: usize = 8;
    let limiter = Limiter::builder().limit(2).max_queued(MAX).build();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let mut handles = Vec::new();
                for i in 0..500 {
                    let handle = match i % 2 {
                        0 => limiter
                            .reserve()
                            .await
                            .unwrap()
                            .spawn(async move { p * 1000 + i }),
                        _ => loop {
                            match limiter.try_spawn(async move { p * 1000 + i }) {
                                Ok(handle) => break handle,
                                Err(err) => {
                                    assert!(err.is_full());
                                    tokio::task::yield_now().await;
                                }
                            }
                        },
                    };
                    handles.push((p * 1000 + i, handle));
                }
                for (want, handle) in handles {
                    assert_eq!(handle.await.unwrap(), want);
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!((m.submitted, m.completed), (2000, 2000));
}
