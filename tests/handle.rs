//! Join handles: results, panics, aborts, detaching, and the exactly-once contract, held to
//! what tokio's own `JoinHandle` guarantees (each such test checks tokio first, as a reference).
// Real tokio: under the `shuttle` feature the crate runs on shuttle-tokio (tests/shuttle.rs).
#![cfg(not(feature = "shuttle"))]

mod support;

use std::future::Future;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use support::{hold_a_worker, settle, DropFlag, Gate};
use task_limiter::{AbortHandle, JoinHandle, Limiter};
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

/// Polls a resolved handle again: returns the message it panicked with.
fn poll_again<T>(handle: &mut tokio_test::task::Spawn<JoinHandle<T>>) -> String {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = handle.poll();
    }))
    .expect_err("polling a resolved handle again panics");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Polling a handle again after it resolved panics with the documented message, as tokio's
/// does, whatever it resolved to; the result was delivered once, and the limiter carries on.
#[cfg(panic = "unwind")]
#[tokio::test]
async fn polling_a_resolved_handle_again_panics_whatever_it_resolved_to() {
    const MESSAGE: &str = "`JoinHandle` polled after completion";
    let limiter = Limiter::new(1);
    let mut value = tokio_test::task::spawn(limiter.spawn(async { 1 }));
    let mut cancelled = tokio_test::task::spawn(limiter.spawn(std::future::pending::<i32>()));
    cancelled.abort();
    let mut panicked = tokio_test::task::spawn(limiter.spawn(async { panic!("planned") }));
    settle().await;

    assert_eq!(assert_ready!(value.poll()).unwrap(), 1);
    assert_eq!(poll_again(&mut value), MESSAGE);
    assert!(assert_ready!(cancelled.poll()).unwrap_err().is_cancelled());
    assert_eq!(poll_again(&mut cancelled), MESSAGE);
    assert!(assert_ready!(panicked.poll()).unwrap_err().is_panic());
    assert_eq!(poll_again(&mut panicked), MESSAGE);
    assert!(value.is_finished() && cancelled.is_finished() && panicked.is_finished());

    drop((value, cancelled, panicked));
    assert_eq!(limiter.spawn(async { 2 }).await.unwrap(), 2);
    let m = limiter.metrics();
    assert_eq!((m.completed, m.cancelled, m.panicked), (2, 1, 1), "{m:?}");
}

#[tokio::test]
async fn abort_of_a_queued_item_drops_its_closure_at_once_and_it_never_runs() {
    let limiter = Limiter::new(1);
    let (gate, blocker) = hold_a_worker(&limiter).await;

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
async fn abort_of_a_running_item_frees_its_worker_id() {
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
    assert_eq!(next.await.unwrap(), 0, "the freed ID ran the next item");
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

// === held to tokio's guarantees ===

/// Work whose destructor blocks until the test lets it return, so that a test can look at a
/// handle while the work is being dropped.
struct SlowDrop {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
    returned: Arc<AtomicBool>,
}

/// The test's side of a [`SlowDrop`].
struct SlowDropControl {
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
    returned: Arc<AtomicBool>,
}

fn slow_drop() -> (SlowDrop, SlowDropControl) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let returned = Arc::new(AtomicBool::new(false));
    let work = SlowDrop {
        entered: entered_tx,
        release: release_rx,
        returned: returned.clone(),
    };
    let control = SlowDropControl {
        entered: entered_rx,
        release: release_tx,
        returned,
    };
    (work, control)
}

impl Drop for SlowDrop {
    fn drop(&mut self) {
        let _ = self.entered.send(());
        // Bounded: a handle that blocks while the work drops fails the test instead of hanging.
        let _ = self.release.recv_timeout(Duration::from_secs(10));
        self.returned.store(true, Ordering::SeqCst);
    }
}

impl SlowDropControl {
    /// Blocks until the work's destructor is running.
    fn wait_entered(&self) {
        self.entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the work's destructor never ran");
    }

    /// Lets the destructor return.
    fn release(&self) {
        self.release.send(()).unwrap();
    }

    /// The destructor has returned (released, or it gave up waiting).
    fn returned(&self) -> bool {
        self.returned.load(Ordering::SeqCst)
    }
}

/// Reference for the test below: tokio's handle to an aborted task is not finished, and does not
/// resolve, while the task's future is being dropped; it resolves once the destructor returned.
#[test]
fn tokio_reference_a_handle_is_unfinished_while_its_aborted_future_drops() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let (work, control) = slow_drop();
    let handle = runtime.spawn(async move {
        let _work = work;
        std::future::pending::<()>().await
    });
    let mut handle = tokio_test::task::spawn(handle);
    assert_pending!(handle.poll());
    // tokio drops an idle task's future on its worker thread.
    handle.abort();
    control.wait_entered();
    assert!(!handle.is_finished());
    assert_pending!(handle.poll());
    assert!(!control.returned());
    control.release();
    for _ in 0..10_000 {
        if handle.is_woken() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(handle.is_woken());
    assert!(control.returned());
    assert!(assert_ready!(handle.poll()).unwrap_err().is_cancelled());
}

/// A queued item aborted from another thread: its work is dropped there at once, and while its
/// destructor runs the handle is not finished and does not resolve. It resolves, cancelled,
/// once the destructor has returned; the counters then add up.
#[tokio::test]
async fn a_queued_item_aborted_elsewhere_is_unfinished_until_its_work_is_dropped() {
    let limiter = Limiter::new(1);
    let (gate, blocker) = hold_a_worker(&limiter).await;
    let (work, control) = slow_drop();
    let victim = limiter.spawn(async move {
        let _work = work;
        "never runs"
    });
    settle().await;
    assert_eq!(limiter.metrics().queued, 1, "the victim is queued");
    let abort = victim.abort_handle();
    let mut victim = tokio_test::task::spawn(victim);
    assert_pending!(victim.poll());

    let aborter = std::thread::spawn({
        let abort = abort.clone();
        move || abort.abort()
    });
    control.wait_entered();
    // The destructor is running on the aborting thread.
    let finished = (victim.is_finished(), abort.is_finished());
    let polled = victim.poll();
    assert!(
        !control.returned(),
        "the handle blocked until the work's destructor gave up"
    );
    assert_eq!(
        finished,
        (false, false),
        "finished while the work is being dropped"
    );
    assert!(
        polled.is_pending(),
        "resolved while the work is being dropped: {polled:?}"
    );
    control.release();
    aborter.join().unwrap();
    assert!(control.returned());
    assert!(victim.is_woken());
    assert!(victim.is_finished() && abort.is_finished());
    let err = assert_ready!(victim.poll()).unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(err.worker_id(), None);

    gate.open(1);
    blocker.await.unwrap();
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!(
        (m.submitted, m.completed, m.cancelled, m.panicked),
        (2, 1, 1, 0),
        "{m:?}"
    );
    assert_eq!((m.queued, m.running), (0, 0), "{m:?}");
}

/// Counts the turns a yielding task gets while `work` runs.
async fn turns_of_a_ticking_task_during(work: impl Future<Output = ()>) -> usize {
    let ticks = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let (ticks, stop) = (ticks.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                ticks.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        }
    });
    // Not yielded since the spawn: the ticker has not run yet.
    work.await;
    let turns = ticks.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    ticker.await.unwrap();
    turns
}

/// Awaiting a finished handle spends the task's coop budget, as tokio's `JoinHandle::poll`
/// does: a loop over 10,000 finished handles on a current-thread runtime lets another task run
/// now and then (tokio's handles give it about 10,000 / 128 turns).
#[tokio::test]
async fn awaiting_finished_handles_in_a_loop_spends_the_coop_budget() {
    const ITEMS: usize = 10_000;
    let handles: Vec<_> = (0..ITEMS).map(|_| tokio::spawn(async {})).collect();
    while !handles.iter().all(|h| h.is_finished()) {
        tokio::task::yield_now().await;
    }
    let tokio_turns = turns_of_a_ticking_task_during(async {
        for handle in handles {
            handle.await.unwrap();
        }
    })
    .await;
    assert!(tokio_turns > 0, "reference: tokio's handles spend budget");

    let limiter = Limiter::new(4);
    let handles: Vec<_> = (0..ITEMS).map(|_| limiter.spawn(async {})).collect();
    limiter.close();
    limiter.wait().await;
    assert!(handles.iter().all(JoinHandle::is_finished));
    let turns = turns_of_a_ticking_task_during(async {
        for handle in handles {
            handle.await.unwrap();
        }
    })
    .await;
    assert!(
        turns > 0,
        "awaiting {ITEMS} finished handles never yielded (tokio's gave {tokio_turns} turns)"
    );
}

/// Records, when dropped, whether the thread was panicking.
struct UnwindProbe(Arc<Mutex<Option<bool>>>);

impl Drop for UnwindProbe {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(std::thread::panicking());
    }
}

/// A future that panics when polled, owning a probe that only its own drop drops: an async
/// block's locals would be dropped by the unwind itself, whoever polls it.
struct PanicsInPoll(#[allow(dead_code)] UnwindProbe);

impl Future for PanicsInPoll {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        panic!("planned panic in poll")
    }
}

fn panics_in_poll() -> (PanicsInPoll, Arc<Mutex<Option<bool>>>) {
    let seen = Arc::new(Mutex::new(None));
    (PanicsInPoll(UnwindProbe(seen.clone())), seen)
}

/// A future that panics in `poll` is dropped during the unwind, as tokio drops a task's future
/// (inside its panic guard): its destructors see `std::thread::panicking()`.
#[cfg(panic = "unwind")]
#[tokio::test]
async fn a_future_that_panics_in_poll_is_dropped_during_the_unwind() {
    let (future, seen) = panics_in_poll();
    assert!(tokio::spawn(future).await.unwrap_err().is_panic());
    assert_eq!(*seen.lock().unwrap(), Some(true), "reference: tokio");

    let limiter = Limiter::new(1);
    let (future, seen) = panics_in_poll();
    let err = limiter.spawn(future).await.unwrap_err();
    assert!(err.is_panic());
    assert_eq!(
        *seen.lock().unwrap(),
        Some(true),
        "the future was dropped (Some) during the unwind (true)"
    );

    let (future, seen) = panics_in_poll();
    let err = limiter.spawn_with(move |_| future).await.unwrap_err();
    assert!(err.is_panic());
    assert_eq!(*seen.lock().unwrap(), Some(true), "spawn_with");
}

/// `JoinHandle<T>` (whatever `T`) and `AbortHandle` are `UnwindSafe` and `RefUnwindSafe`, as
/// tokio's are.
#[test]
fn handles_are_unwind_safe() {
    fn unwind_safe<T: UnwindSafe + RefUnwindSafe>() {}
    unwind_safe::<tokio::task::JoinHandle<std::cell::Cell<u8>>>();
    unwind_safe::<tokio::task::AbortHandle>();

    unwind_safe::<JoinHandle<()>>();
    // `Cell` is neither `RefUnwindSafe` nor, behind a reference, `UnwindSafe`.
    unwind_safe::<JoinHandle<std::cell::Cell<u8>>>();
    unwind_safe::<AbortHandle>();
}
