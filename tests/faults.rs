//! Faults and bad input, each with a defined outcome: a clear panic at the caller where one is
//! documented, otherwise a resolved handle; never a hang, a lost result, a dead manager or
//! worker, or a worker ID that does not come back.
//!
//! Destructors that panic are "bombs" here. A bomb in work the limiter drops (a queued item
//! aborted or shut down, a running item aborted, a detached output) is swallowed on the spot,
//! as tokio does when it drops a task's future or output; a bomb that goes off inside an item's
//! poll makes the item panic.
// Real tokio: under the `shuttle` feature the crate runs on shuttle-tokio (tests/shuttle.rs).
#![cfg(not(feature = "shuttle"))]

mod support;

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use support::alloc::allocated_here;
use support::{hold_a_worker, rss, settle, DropFlag, Gate};
use task_limiter::{JoinHandle, Limiter};

/// Counts what each thread allocates, for `enormous_limits_allocate_nothing_up_front`.
#[global_allocator]
static ALLOCATOR: support::alloc::Counting = support::alloc::Counting;

// === helpers ===

/// Panics when dropped, after raising its flag. Its payload is "planned drop".
struct Bomb(Arc<AtomicUsize>);

impl Bomb {
    fn new() -> (Bomb, Arc<AtomicUsize>) {
        let went_off = Arc::new(AtomicUsize::new(0));
        (Bomb(went_off.clone()), went_off)
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        if !std::thread::panicking() {
            panic!("planned drop");
        }
    }
}

thread_local! {
    /// While set, a panic on this thread is recorded here instead of printed.
    static CAPTURED: RefCell<Option<Vec<(String, String)>>> = const { RefCell::new(None) };
}

/// Keeps the planned panics (on any thread) quiet, and records panics on threads that asked.
fn quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let location = info
                .location()
                .map(|l| l.file().to_string())
                .unwrap_or_default();
            let captured = CAPTURED.with(|c| match c.borrow_mut().as_mut() {
                Some(panics) => {
                    panics.push((message.clone(), location));
                    true
                }
                None => false,
            });
            let planned = message.starts_with("planned") || info.payload().is::<Bomb>();
            if !captured && !planned {
                default(info);
            }
        }));
    });
}

/// Runs `f`, expecting it to panic; returns the panic's message and the file it was raised at.
fn panic_of(f: impl FnOnce()) -> (String, String) {
    quiet_hook();
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    let panics = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    assert!(result.is_err(), "expected a panic");
    panics.into_iter().next().expect("the panic was recorded")
}

/// The limiter still works and no worker ID is stuck with an item: a fresh item runs, on worker
/// 0 when the limit is 1, and then every live worker is parked.
async fn assert_alive_and_idle(limiter: &Limiter) {
    let id = limiter.spawn_with(|id| async move { id.index() }).await;
    let id = id.expect("a fresh item runs");
    if limiter.limit() == 1 {
        assert_eq!(id, 0);
    }
    settle().await;
    // Workers park between items, holding their IDs: no ID may be held by a running item.
    let m = limiter.metrics();
    assert_eq!((m.queued, m.running), (0, 0), "{m:?}");
    assert_eq!(
        m.workers, m.idle_workers,
        "every live worker is parked: {m:?}"
    );
    let held = limiter.busy_workers();
    assert!(held.len() <= limiter.limit(), "{held:?}");
}

const LIMIT_MESSAGE: &str = "task_limiter: the limit must be at least 1";

// === bad limits ===

/// Limit 0 panics (DESIGN.md: a programmer error) with the message in full, raised at the
/// caller (`#[track_caller]`), from every way in, before anything else is checked, and a failed
/// `set_limit` leaves the limiter as it was.
#[test]
fn limit_zero_panics_at_the_caller_with_a_clear_message() {
    // Outside a runtime, too: the limit is checked first.
    let (message, file) = panic_of(|| drop(Limiter::new(0)));
    assert_eq!(
        (message.as_str(), file.as_str()),
        (LIMIT_MESSAGE, "tests/faults.rs")
    );
    let (message, file) = panic_of(|| drop(Limiter::builder().limit(0)));
    assert_eq!(
        (message.as_str(), file.as_str()),
        (LIMIT_MESSAGE, "tests/faults.rs")
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let limiter = Limiter::new(3);
        let (message, file) = panic_of(|| limiter.set_limit(0));
        assert_eq!(
            (message.as_str(), file.as_str()),
            (LIMIT_MESSAGE, "tests/faults.rs")
        );
        assert_eq!(limiter.limit(), 3);
        assert_eq!(limiter.metrics().limit, 3);
        assert_alive_and_idle(&limiter).await;
    });
}

/// Limits of 1 << 20 and `usize::MAX` allocate nothing in proportion to the limit: building
/// the limiter and letting its manager start costs a few KiB, and the RSS does not move. Items
/// still run, on dense worker IDs, and so they do after `set_limit` to such a limit.
#[test]
fn enormous_limits_allocate_nothing_up_front() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for limit in [1 << 20, usize::MAX] {
            let (bytes, resident) = (allocated_here(), rss());
            let limiter = Limiter::new(limit);
            settle().await; // the manager's first poll runs on this thread too
            let cost = allocated_here() - bytes;
            let grown = rss().saturating_sub(resident);
            assert!(
                cost < 64 << 10,
                "limit {limit}: building allocated {cost} bytes"
            );
            assert!(grown < 4 << 20, "limit {limit}: RSS grew by {grown} bytes");
            assert_eq!(limiter.limit(), limit);

            let gate = Gate::new();
            let handles: Vec<_> = (0..100)
                .map(|_| {
                    let gate = gate.clone();
                    limiter.spawn_with(move |id| async move {
                        gate.wait().await;
                        id.index()
                    })
                })
                .collect();
            settle().await;
            assert_eq!(limiter.metrics().running, 100);
            gate.open(100);
            let mut ids = Vec::new();
            for handle in handles {
                ids.push(handle.await.unwrap());
            }
            ids.sort_unstable();
            assert_eq!(ids, (0..100).collect::<Vec<_>>(), "IDs are dense from 0");
            limiter.close();
            limiter.wait().await;
        }

        let limiter = Limiter::new(2);
        let (bytes, resident) = (allocated_here(), rss());
        limiter.set_limit(usize::MAX);
        settle().await;
        let cost = allocated_here() - bytes;
        let grown = rss().saturating_sub(resident);
        assert!(cost < 64 << 10, "set_limit allocated {cost} bytes");
        assert!(grown < 4 << 20, "set_limit: RSS grew by {grown} bytes");
        let ids: Vec<_> = (0..10)
            .map(|_| limiter.spawn_with(|id| async move { id.index() }))
            .collect();
        for handle in ids {
            assert!(handle.await.unwrap() < 10);
        }
        assert!(limiter.metrics().workers_spawned <= 10);
    });
}

// === shutdown ===

/// After `shutdown`, `spawn` and `spawn_with` hand back a handle that has already resolved
/// cancelled, with no worker, and drop the work before returning; the counters include them.
#[tokio::test]
async fn spawn_after_shutdown_is_refused_at_once() {
    let limiter = Limiter::new(2);
    limiter.shutdown().await;
    assert!(!limiter.close(), "shutdown closed it already");

    let (flag, dropped) = DropFlag::new();
    let handle = limiter.spawn(async move {
        let _flag = flag;
        1
    });
    assert!(handle.is_finished());
    assert!(
        dropped.load(Ordering::SeqCst),
        "the future was dropped at once"
    );
    let err = handle.await.unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(err.worker_id(), None);

    let (flag, dropped) = DropFlag::new();
    let handle = limiter.spawn_with(move |_| {
        let _flag = flag;
        async { 2 }
    });
    assert!(
        dropped.load(Ordering::SeqCst),
        "the closure was dropped at once"
    );
    assert!(handle.await.unwrap_err().is_cancelled());

    let m = limiter.metrics();
    assert_eq!(
        (m.submitted, m.cancelled, m.queued, m.running),
        (2, 2, 0, 0)
    );
    limiter.shutdown().await; // again: returns at once
    limiter.wait().await;
}

/// Eight tasks call `shutdown` at once on the multi-thread runtime while items run and wait,
/// and others `wait`: every call returns, every handle resolves cancelled, the limiter's tasks
/// are gone, and later calls return at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_many_tasks_at_once() {
    let baseline = support::alive_tasks();
    let limiter = Limiter::new(4);
    let handles: Vec<_> = (0..64)
        .map(|_| limiter.spawn(std::future::pending::<()>()))
        .collect();
    while limiter.metrics().running < 4 {
        tokio::task::yield_now().await;
    }
    let callers: Vec<_> = (0..8)
        .map(|i| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    limiter.shutdown().await;
                } else {
                    limiter.wait().await;
                }
            })
        })
        .collect();
    limiter.shutdown().await;
    for caller in callers {
        tokio::time::timeout(Duration::from_secs(10), caller)
            .await
            .expect("a shutdown or wait call hung")
            .unwrap();
    }
    for handle in handles {
        assert!(handle.await.unwrap_err().is_cancelled());
    }
    let m = limiter.metrics();
    assert_eq!(
        (m.submitted, m.cancelled, m.queued, m.running),
        (64, 64, 0, 0),
        "{m:?}"
    );
    assert!(limiter.busy_workers().is_empty());
    assert_eq!(support::settle_alive(baseline).await, baseline);
    limiter.shutdown().await;
}

// === the runtime goes away ===

#[derive(Clone, Copy, Debug)]
enum Ending {
    Drop,
    ShutdownTimeout,
    ShutdownBackground,
}

/// The limiter's runtime ends (dropped, `shutdown_timeout`, `shutdown_background`) with items
/// running, queued, and still in the work channel, while tasks on another runtime await their
/// handles and `wait`: everything resolves cancelled, none hangs, and the limiter stays usable
/// as a closed one.
fn runtime_ends_under_load(multi_thread: bool, ending: Ending) {
    quiet_hook();
    let runtime = match multi_thread {
        true => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        false => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .unwrap();
    let limiter = Limiter::builder().limit(2).build_on(runtime.handle());
    let running: Vec<_> = (0..2)
        .map(|_| limiter.spawn(std::future::pending::<()>()))
        .collect();
    let queued: Vec<_> = (0..5).map(|i| limiter.spawn(async move { i })).collect();
    runtime.block_on(async {
        while limiter.metrics().running < 2 {
            tokio::task::yield_now().await;
        }
    });
    // Submitted last: on the current-thread runtime they are still in the work channel when it
    // ends; on the multi-thread one, in the channel or the queue.
    let in_channel: Vec<_> = (0..5).map(|i| limiter.spawn(async move { i })).collect();

    // The awaiting happens on another runtime, already parked on the handles when this one
    // ends.
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let running = other.spawn(async move {
        let mut workers = Vec::new();
        for handle in running {
            let err = handle.await.unwrap_err();
            assert!(err.is_cancelled());
            workers.push(
                err.worker_id()
                    .expect("a running item has a worker")
                    .index(),
            );
        }
        workers.sort_unstable();
        assert_eq!(workers, [0, 1]);
    });
    let rest = other.spawn(async move {
        for handle in queued.into_iter().chain(in_channel) {
            assert!(handle.await.unwrap_err().is_cancelled());
        }
    });
    let waiter = other.spawn({
        let limiter = limiter.clone();
        async move { limiter.wait().await }
    });

    match ending {
        Ending::Drop => drop(runtime),
        Ending::ShutdownTimeout => runtime.shutdown_timeout(Duration::from_secs(1)),
        Ending::ShutdownBackground => runtime.shutdown_background(),
    }
    other.block_on(async {
        for task in [running, rest, waiter] {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .unwrap_or_else(|_| panic!("{ending:?}: a handle or `wait` hung"))
                .unwrap();
        }
        assert!(limiter.is_closed());
        let late = limiter.spawn(async {});
        assert!(late.is_finished(), "refused at once");
        assert!(late.await.unwrap_err().is_cancelled());
        limiter.shutdown().await; // returns at once
    });
    let m = limiter.metrics();
    assert_eq!((m.queued, m.running), (0, 0), "{m:?}");
    assert_eq!(
        (m.submitted, m.cancelled, m.completed),
        (13, 13, 0),
        "{m:?}"
    );
}

#[test]
fn multi_thread_runtime_dropped_under_load() {
    runtime_ends_under_load(true, Ending::Drop);
}

#[test]
fn multi_thread_runtime_shutdown_timeout_under_load() {
    runtime_ends_under_load(true, Ending::ShutdownTimeout);
}

#[test]
fn multi_thread_runtime_shutdown_background_under_load() {
    runtime_ends_under_load(true, Ending::ShutdownBackground);
}

#[test]
fn current_thread_runtime_shutdown_timeout_under_load() {
    runtime_ends_under_load(false, Ending::ShutdownTimeout);
}

/// An item that `metrics()` counts as running was admitted on a worker ID, so when the runtime
/// drops it, however soon after its admission (its worker task may not have been polled yet),
/// its handle resolves cancelled on that ID. Many short rounds on the multi-thread runtime, so
/// that some runtime drops land in that window.
#[test]
fn an_item_counted_running_names_its_worker_when_the_runtime_drops_it() {
    let mut without_worker = 0;
    for _ in 0..300 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let limiter = Limiter::builder().limit(2).build_on(runtime.handle());
        let running: Vec<_> = (0..2)
            .map(|_| limiter.spawn(std::future::pending::<()>()))
            .collect();
        runtime.block_on(async {
            while limiter.metrics().running < 2 {
                tokio::task::yield_now().await;
            }
        });
        drop(runtime);
        futures::executor::block_on(async {
            for handle in running {
                let err = handle.await.unwrap_err();
                assert!(err.is_cancelled());
                without_worker += usize::from(err.worker_id().is_none());
            }
        });
    }
    assert_eq!(
        without_worker, 0,
        "items counted as running resolved cancelled without a worker ID"
    );
}

/// A limiter built on the handle of a runtime that has already shut down is closed from the
/// start: its manager never runs, submissions resolve cancelled at once, `wait` returns.
#[test]
fn built_on_a_runtime_that_has_shut_down() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    drop(runtime);
    let limiter = Limiter::builder().limit(2).build_on(&handle);
    assert!(limiter.is_closed());
    let item = limiter.spawn(async { 1 });
    assert!(item.is_finished());
    futures::executor::block_on(async {
        assert!(item.await.unwrap_err().is_cancelled());
        limiter.wait().await;
        limiter.shutdown().await;
    });
}

/// The runtime dropped before the manager was ever polled, with items in the work channel:
/// they resolve cancelled and are counted as cancelled, not left "queued" forever.
#[test]
fn runtime_dropped_before_the_manager_ran() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let limiter = Limiter::builder().limit(1).build_on(runtime.handle());
    let handles: Vec<_> = (0..3).map(|i| limiter.spawn(async move { i })).collect();
    drop(runtime);
    futures::executor::block_on(async {
        for handle in handles {
            assert!(handle.await.unwrap_err().is_cancelled());
        }
        limiter.wait().await;
    });
    let m = limiter.metrics();
    assert_eq!(
        (m.submitted, m.cancelled, m.queued, m.running),
        (3, 3, 0, 0),
        "{m:?}"
    );
    assert!(limiter.is_empty());
}

// === destructors that panic ===

/// A bomb that goes off as the item's future completes is a panic inside the item's poll: the
/// handle resolves to that panic (not the value), and the worker and manager carry on.
#[cfg(panic = "unwind")]
#[tokio::test]
async fn work_that_panics_on_drop_as_it_completes_resolves_as_a_panic() {
    quiet_hook();
    let limiter = Limiter::new(1);
    let (bomb, went_off) = Bomb::new();
    let handle = limiter.spawn(async move {
        let _bomb = bomb;
        tokio::task::yield_now().await;
        7
    });
    let err = handle.await.unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.worker_id().map(|id| id.index()), Some(0));
    assert_eq!(
        *err.into_panic().downcast::<&str>().unwrap(),
        "planned drop"
    );
    assert_eq!(went_off.load(Ordering::SeqCst), 1);
    assert_alive_and_idle(&limiter).await;
    assert_eq!(limiter.metrics().panicked, 1);
}

/// Aborting a queued item whose closure panics on drop: `abort` returns normally (the panic is
/// swallowed where the work is dropped, at once), the handle resolves cancelled.
#[tokio::test]
async fn queued_work_that_panics_on_drop_when_aborted() {
    quiet_hook();
    let limiter = Limiter::new(1);
    let (gate, blocker) = hold_a_worker(&limiter).await;
    let (bomb, went_off) = Bomb::new();
    let queued = limiter.spawn_with(move |_| {
        let _bomb = bomb;
        async { 1 }
    });
    queued.abort();
    assert_eq!(went_off.load(Ordering::SeqCst), 1, "dropped at once");
    assert!(queued.await.unwrap_err().is_cancelled());
    gate.open(1);
    blocker.await.unwrap();
    assert_alive_and_idle(&limiter).await;
}

/// Aborting a running item whose future panics on drop: the worker swallows the panic, the
/// handle resolves cancelled, and the worker's ID serves the next item.
#[tokio::test]
async fn running_work_that_panics_on_drop_when_aborted() {
    quiet_hook();
    let limiter = Limiter::new(1);
    let (bomb, went_off) = Bomb::new();
    let running = limiter.spawn(async move {
        let _bomb = bomb;
        std::future::pending::<()>().await
    });
    let next = limiter.spawn(async { 2 });
    settle().await;
    running.abort();
    let err = running.await.unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(err.worker_id().map(|id| id.index()), Some(0));
    assert_eq!(went_off.load(Ordering::SeqCst), 1);
    assert_eq!(next.await.unwrap(), 2);
    assert_alive_and_idle(&limiter).await;
}

/// `shutdown` with bombs queued and running: the queued ones are swallowed where the manager
/// drops them; the running ones go off while tokio drops the aborted worker (which tokio
/// catches), and the worker's guards still resolve the handle and hand the ID back. Every
/// handle resolves cancelled and `shutdown` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_panics_on_drop_when_shutdown_drops_it() {
    quiet_hook();
    let limiter = Limiter::new(2);
    let mut bombs = Vec::new();
    let running: Vec<_> = (0..2)
        .map(|_| {
            let (bomb, went_off) = Bomb::new();
            bombs.push(went_off);
            limiter.spawn(async move {
                let _bomb = bomb;
                std::future::pending::<()>().await
            })
        })
        .collect();
    while limiter.metrics().running < 2 {
        tokio::task::yield_now().await;
    }
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let (bomb, went_off) = Bomb::new();
            bombs.push(went_off);
            limiter.spawn_with(move |_| {
                let _bomb = bomb;
                async {}
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(10), limiter.shutdown())
        .await
        .expect("shutdown hung");
    for handle in running.into_iter().chain(queued) {
        assert!(handle.await.unwrap_err().is_cancelled());
    }
    for went_off in bombs {
        assert_eq!(went_off.load(Ordering::SeqCst), 1);
    }
    let m = limiter.metrics();
    assert_eq!(
        (m.submitted, m.cancelled, m.queued, m.running),
        (5, 5, 0, 0),
        "{m:?}"
    );
    assert!(limiter.busy_workers().is_empty());
}

/// The runtime dropped with bombs running and queued: tokio catches the running ones as it
/// drops the tasks, the manager's exit swallows the queued ones, and every handle resolves.
#[test]
fn work_that_panics_on_drop_when_the_runtime_drops_it() {
    quiet_hook();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let limiter = Limiter::builder().limit(1).build_on(runtime.handle());
    let handles: Vec<JoinHandle<()>> = (0..3)
        .map(|_| {
            let (bomb, _) = Bomb::new();
            limiter.spawn(async move {
                let _bomb = bomb;
                std::future::pending::<()>().await
            })
        })
        .collect();
    runtime.block_on(async {
        while limiter.metrics().running < 1 {
            tokio::task::yield_now().await;
        }
    });
    drop(runtime);
    futures::executor::block_on(async {
        for handle in handles {
            assert!(handle.await.unwrap_err().is_cancelled());
        }
        limiter.wait().await;
    });
    let m = limiter.metrics();
    assert_eq!((m.cancelled, m.queued, m.running), (3, 0, 0), "{m:?}");
}

/// An output whose destructor panics, with its handle dropped before the item finishes (the
/// worker drops the output) or after (the handle's drop does): swallowed both times, the
/// counters say completed, the worker carries on.
#[tokio::test]
async fn outputs_that_panic_on_drop_with_the_handle_gone() {
    quiet_hook();
    let limiter = Limiter::new(1);
    let gate = Gate::new();
    let (before, before_went_off) = Bomb::new();
    let detached_early = limiter.spawn({
        let gate = gate.clone();
        async move {
            gate.wait().await;
            before
        }
    });
    drop(detached_early);
    gate.open(1);
    settle().await;
    assert_eq!(before_went_off.load(Ordering::SeqCst), 1);

    let (after, after_went_off) = Bomb::new();
    let finished = limiter.spawn(async move { after });
    settle().await;
    assert!(finished.is_finished());
    finished.abort(); // a finished item keeps its output
    assert_eq!(after_went_off.load(Ordering::SeqCst), 0);
    drop(finished);
    assert_eq!(after_went_off.load(Ordering::SeqCst), 1);

    // A detached item that panics with a payload that panics on drop.
    let (payload, payload_went_off) = Bomb::new();
    drop(limiter.spawn(async move { panic::panic_any(payload) }));
    settle().await;
    assert_eq!(payload_went_off.load(Ordering::SeqCst), 1);

    assert_alive_and_idle(&limiter).await;
    let m = limiter.metrics();
    assert_eq!((m.completed, m.panicked), (3, 1), "{m:?}");
}
