//! Blocking items: run on tokio's blocking pool, under the same limit and worker IDs as async
//! items, holding their ID until the closure really returns.
#![cfg(not(feature = "shuttle"))]

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use support::{settle, until, Concurrency, DropFlag, Latch};
use task_limiter::Limiter;

#[tokio::test]
async fn runs_off_the_runtime_thread() {
    // On a current-thread runtime, a closure that waits for the runtime's own thread can only
    // finish if it runs elsewhere.
    let limiter = Limiter::new(1);
    let (tx, rx) = mpsc::channel::<u32>();
    let blocking = limiter.spawn_blocking(move |_| rx.recv().unwrap() + 1);
    let sender = tokio::spawn(async move {
        tokio::task::yield_now().await;
        tx.send(41).unwrap();
    });
    assert_eq!(blocking.await.unwrap(), 42);
    sender.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_and_async_items_share_the_limit_and_the_ids() {
    const LIMIT: usize = 3;
    let limiter = Limiter::new(LIMIT);
    let running = Concurrency::default();
    let held: Arc<Vec<AtomicBool>> = Arc::new((0..LIMIT).map(|_| AtomicBool::new(false)).collect());
    let mut handles = Vec::new();
    for i in 0..60 {
        let running = running.clone();
        let held = held.clone();
        let enter = move |id: task_limiter::WorkerId| {
            let guard = running.enter();
            assert!(id.index() < LIMIT);
            assert!(
                !held[id.index()].swap(true, Ordering::SeqCst),
                "{id} held twice"
            );
            (guard, held, id)
        };
        let leave = |(guard, held, id): (
            support::ConcurrencyGuard,
            Arc<Vec<AtomicBool>>,
            task_limiter::WorkerId,
        )| {
            held[id.index()].store(false, Ordering::SeqCst);
            drop(guard);
        };
        if i % 2 == 0 {
            handles.push(limiter.spawn_blocking(move |id| {
                let token = enter(id);
                std::thread::sleep(Duration::from_millis(2));
                leave(token);
            }));
        } else {
            handles.push(limiter.spawn_with(move |id| async move {
                let token = enter(id);
                tokio::time::sleep(Duration::from_millis(2)).await;
                leave(token);
            }));
        }
    }
    for handle in handles {
        handle.await.unwrap();
    }
    assert!(running.max() <= LIMIT, "{} ran at once", running.max());
    // Counters settle after the handles resolve.
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!((m.completed, m.running), (60, 0));
    assert!(m.max_running <= LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_has_no_effect_on_a_started_blocking_item_which_keeps_its_id() {
    let limiter = Limiter::new(1);
    let latch = Latch::new();
    let started = Arc::new(AtomicBool::new(false));
    let blocking = limiter.spawn_blocking({
        let latch = latch.clone();
        let started = started.clone();
        move |id| {
            started.store(true, Ordering::SeqCst);
            latch.wait();
            id.index()
        }
    });
    let next_ran = Arc::new(AtomicBool::new(false));
    let next = limiter.spawn({
        let next_ran = next_ran.clone();
        async move { next_ran.store(true, Ordering::SeqCst) }
    });
    until(|| started.load(Ordering::SeqCst)).await;

    blocking.abort();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !blocking.is_finished(),
        "abort cannot stop a running closure"
    );
    assert!(
        !next_ran.load(Ordering::SeqCst),
        "the ID stays held until the closure returns"
    );
    assert_eq!(limiter.metrics().running, 1);

    latch.open();
    assert_eq!(
        blocking.await.unwrap(),
        0,
        "the closure's value, not a cancellation"
    );
    next.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_of_a_queued_blocking_item_drops_its_closure_at_once() {
    let limiter = Limiter::new(1);
    let latch = Latch::new();
    let first = limiter.spawn_blocking({
        let latch = latch.clone();
        move |_| latch.wait()
    });
    let (flag, dropped) = DropFlag::new();
    let ran = Arc::new(AtomicBool::new(false));
    let queued = limiter.spawn_blocking({
        let ran = ran.clone();
        move |_| {
            let _flag = flag;
            ran.store(true, Ordering::SeqCst);
        }
    });
    until(|| limiter.metrics().running == 1).await;
    queued.abort();
    assert!(
        dropped.load(Ordering::SeqCst),
        "dropped before `abort` returned"
    );
    latch.open();
    first.await.unwrap();
    assert!(queued.await.unwrap_err().is_cancelled());
    assert!(!ran.load(Ordering::SeqCst));
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn a_panicking_blocking_item_delivers_its_payload_and_the_next_item_runs() {
    let limiter = Limiter::new(1);
    let err = limiter
        .spawn_blocking(|_| -> u32 { std::panic::panic_any(7_u32) })
        .await
        .unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.worker_id().map(|id| id.index()), Some(0));
    assert_eq!(*err.into_panic().downcast::<u32>().unwrap(), 7);
    assert_eq!(limiter.spawn_blocking(|_| 1).await.unwrap(), 1);
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!((m.panicked, m.completed, m.running), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_running_blocking_item_and_cancels_the_queue() {
    let limiter = Limiter::new(1);
    let latch = Latch::new();
    let started = Arc::new(AtomicBool::new(false));
    let running = limiter.spawn_blocking({
        let latch = latch.clone();
        let started = started.clone();
        move |_| {
            started.store(true, Ordering::SeqCst);
            latch.wait();
            "finished"
        }
    });
    let queued = limiter.spawn_blocking(|_| "never");
    until(|| started.load(Ordering::SeqCst)).await;

    let shutdown = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.shutdown().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!shutdown.is_finished(), "shutdown waits for the closure");
    assert!(queued.is_finished(), "the queue is cancelled at once");
    assert_eq!(limiter.busy_workers().len(), 1, "its ID is still held");

    latch.open();
    shutdown.await.unwrap();
    assert_eq!(running.await.unwrap(), "finished");
    assert!(queued.await.unwrap_err().is_cancelled());
    assert!(limiter.busy_workers().is_empty());
    let m = limiter.metrics();
    assert_eq!(
        (m.completed, m.cancelled, m.running, m.queued),
        (1, 1, 0, 0)
    );
}

#[test]
fn dropping_the_runtime_resolves_blocking_handles() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let limiter = Limiter::builder().limit(1).build_on(runtime.handle());
    let started = Arc::new(AtomicBool::new(false));
    let running = limiter.spawn_blocking({
        let started = started.clone();
        move |_| {
            started.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            1
        }
    });
    let queued = limiter.spawn_blocking(|_| 2);
    runtime.block_on(until(|| started.load(Ordering::SeqCst)));
    // Dropping a runtime waits for running blocking closures.
    drop(runtime);

    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    other.block_on(async {
        assert_eq!(running.await.unwrap(), 1);
        assert!(queued.await.unwrap_err().is_cancelled());
        limiter.wait().await;
    });
}

#[tokio::test]
async fn ids_come_back_and_workers_are_reused_across_blocking_items() {
    let limiter = Limiter::new(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let ran = ran.clone();
            limiter.spawn_blocking(move |id| {
                ran.fetch_add(1, Ordering::SeqCst);
                id.index()
            })
        })
        .collect();
    for handle in handles {
        assert!(handle.await.unwrap() < 2);
    }
    assert_eq!(ran.load(Ordering::SeqCst), 50);
    settle().await;
    let m = limiter.metrics();
    assert!(
        m.workers_spawned < 50,
        "a worker goes on to the next item after a blocking one: {m:?}"
    );
    limiter.close();
    limiter.wait().await;
    assert!(limiter.busy_workers().is_empty());
}
