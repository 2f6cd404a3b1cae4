//! Join handles: results, panics, aborts, detaching, and the exactly-once contract.
// Real tokio: under the `shuttle` feature the crate runs on shuttle-tokio (tests/shuttle.rs).
#![cfg(not(feature = "shuttle"))]

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use support::{settle, DropFlag, Gate};
use task_limiter::Limiter;
use tokio_test::{assert_pending, assert_ready};

#[tokio::test]
async fn handle_is_pending_until_the_item_finishes_and_then_woken() {
    let limiter = Limiter::new(1);
    let gate = Gate::new();
    let mut handle = tokio_test::task::spawn(limiter.spawn({
        let gate = gate.clone();
        async move {
            gate.wait().await;
            7
        }
    }));
    assert_pending!(handle.poll());
    settle().await;
    assert_pending!(handle.poll());
    assert!(!handle.is_woken());
    gate.open(1);
    settle().await;
    assert!(handle.is_woken());
    assert_eq!(assert_ready!(handle.poll()).unwrap(), 7);
}

#[tokio::test]
#[should_panic(expected = "`JoinHandle` polled after completion")]
async fn polling_a_handle_after_completion_panics() {
    let limiter = Limiter::new(1);
    let mut handle = tokio_test::task::spawn(limiter.spawn(async { 1 }));
    settle().await;
    assert_eq!(assert_ready!(handle.poll()).unwrap(), 1);
    let _ = handle.poll();
}

#[tokio::test]
async fn abort_of_a_queued_item_drops_its_closure_at_once_and_it_never_runs() {
    let limiter = Limiter::new(1);
    let gate = Gate::new();
    let blocker = limiter.spawn({
        let gate = gate.clone();
        async move { gate.wait().await }
    });
    settle().await;

    let ran = Arc::new(AtomicBool::new(false));
    let (flag, dropped) = DropFlag::new();
    let queued = limiter.spawn_with({
        let ran = ran.clone();
        move |_| {
            let _flag = flag;
            async move { ran.store(true, Ordering::SeqCst) }
        }
    });
    settle().await;
    assert!(!dropped.load(Ordering::SeqCst));
    queued.abort();
    // Freed by `abort` itself, not when the queue reaches the item.
    assert!(dropped.load(Ordering::SeqCst));
    assert!(queued.is_finished());
    let err = queued.await.unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(err.worker_id(), None);

    gate.open(1);
    blocker.await.unwrap();
    limiter.close();
    limiter.wait().await;
    assert!(!ran.load(Ordering::SeqCst), "an aborted item never runs");
    let m = limiter.metrics();
    assert_eq!((m.completed, m.cancelled, m.queued), (1, 1, 0));
}

#[tokio::test]
async fn abort_of_a_running_item_frees_its_slot() {
    let limiter = Limiter::new(1);
    let (flag, dropped) = DropFlag::new();
    let running = limiter.spawn(async move {
        let _flag = flag;
        std::future::pending::<()>().await
    });
    let next = limiter.spawn_with(|id| async move { id.index() });
    settle().await;
    assert!(!next.is_finished());
    running.abort();
    assert_eq!(next.await.unwrap(), 0, "the freed slot ran the next item");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the aborted future was dropped"
    );
    let err = running.await.unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(err.worker_id().map(|id| id.index()), Some(0));
}

#[tokio::test]
async fn abort_handle_cancels_a_detached_item() {
    let limiter = Limiter::new(1);
    let (flag, dropped) = DropFlag::new();
    let handle = limiter.spawn(async move {
        let _flag = flag;
        std::future::pending::<()>().await
    });
    let abort = handle.abort_handle();
    let abort_clone = abort.clone();
    drop(handle);
    settle().await;
    assert!(!abort.is_finished());
    abort_clone.abort();
    settle().await;
    assert!(abort.is_finished());
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(limiter.metrics().running, 0);
}

#[tokio::test]
async fn abort_after_completion_keeps_the_value() {
    let limiter = Limiter::new(1);
    let handle = limiter.spawn(async { 5 });
    settle().await;
    assert!(handle.is_finished());
    handle.abort();
    assert_eq!(handle.await.unwrap(), 5);
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn a_panicking_item_delivers_its_payload_and_the_next_item_runs() {
    let limiter = Limiter::new(1);
    let n = std::hint::black_box(42);
    let boom = limiter.spawn(async move { panic!("boom {n}") });
    let next = limiter.spawn(async { "still running" });
    let err = boom.await.unwrap_err();
    assert!(err.is_panic());
    assert!(!err.is_cancelled());
    assert_eq!(err.worker_id().map(|id| id.index()), Some(0));
    assert_eq!(
        err.to_string(),
        "item on worker-0 panicked with message \"boom 42\""
    );
    let payload = err.into_panic();
    assert_eq!(payload.downcast_ref::<String>().unwrap(), "boom 42");
    assert_eq!(next.await.unwrap(), "still running");
    assert_eq!(limiter.metrics().panicked, 1);
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn a_panic_in_the_closure_is_caught_like_one_in_the_future() {
    let limiter = Limiter::new(1);
    let err = limiter
        .spawn_with(|_| -> std::future::Ready<()> { std::panic::panic_any(3_u8) })
        .await
        .unwrap_err();
    assert_eq!(*err.try_into_panic().unwrap().downcast::<u8>().unwrap(), 3);
    assert_eq!(limiter.spawn(async { 1 }).await.unwrap(), 1);
}

#[tokio::test]
async fn dropping_the_handle_detaches_the_item() {
    let limiter = Limiter::new(2);
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let done = done.clone();
        drop(limiter.spawn(async move {
            tokio::task::yield_now().await;
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    limiter.close();
    limiter.wait().await;
    assert_eq!(done.load(Ordering::SeqCst), 10);
    assert_eq!(limiter.metrics().completed, 10);
}

#[tokio::test]
async fn a_detached_output_is_dropped_when_the_item_finishes() {
    let limiter = Limiter::new(1);
    let (flag, dropped) = DropFlag::new();
    drop(limiter.spawn(async move { flag }));
    settle().await;
    assert!(dropped.load(Ordering::SeqCst));
}

#[test]
fn join_error_formats_without_the_output_type() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let limiter = Limiter::new(1);
        let handle = limiter.spawn(async { 1 });
        handle.abort();
        let err = handle.await.unwrap_err();
        assert_eq!(err.to_string(), "item was cancelled");
        assert_eq!(
            format!("{err:?}"),
            "JoinError { reason: \"cancelled\", worker: None }"
        );
        let err = err.try_into_panic().unwrap_err();
        let io: std::io::Error = err.into();
        assert_eq!(io.to_string(), "item was cancelled");
    });
}
