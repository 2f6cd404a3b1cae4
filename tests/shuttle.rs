//! Model checks: the real manager and worker code, scheduled by shuttle through shuttle-tokio,
//! across thousands of random and PCT schedules per property, with limits 1 to 3 and a handful
//! of items.
//!
//! Run them optimized, with debug assertions kept on (the limiter's own `debug_assert!`s are
//! checks too):
//! `CARGO_TARGET_DIR=target/shuttle cargo test --release --features shuttle --test shuttle
//! --config profile.release.debug-assertions=true`.
//! `TASK_LIMITER_SHUTTLE_ITERATIONS=N` sets the schedules per property, limit and scheduler:
//! default 1000 (a few seconds that way on 2 cores; CI runs 10000, 15 to 45 s depending on
//! the machine's load; an unoptimized build takes minutes at the default). A failure prints the schedule, which `shuttle::replay` replays, and
//! for the random scheduler a seed:
//! `SHUTTLE_RANDOM_SEED=<seed>` with `TASK_LIMITER_SHUTTLE_ITERATIONS=1` replays it.
//!
//! Only this file runs under the `shuttle` feature: the other tests and the doctests drive
//! real tokio, whose runtime does not schedule shuttle-tokio's tasks.
//!
//! Invariants 1 and 2 (DESIGN.md) are checked by `monitor::Monitor`; a hang (a handle that never
//! resolves, a `wait` that never returns) leaves every task blocked, which shuttle reports as a
//! deadlock.
#![cfg(feature = "shuttle")]

mod monitor;
mod shuttle_support;

use std::panic;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use monitor::Monitor;
use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::Runner;
use shuttle_support::{assert_drained, block_on, config, iterations};
use shuttle_tokio::task::yield_now;
use task_limiter::{JoinHandle, Limiter, QueueOrder};

/// Runs `property` under the random and the PCT scheduler for each limit in 1..=3, with this
/// file's subscriber installed.
fn explore<F>(property: F)
where
    F: Fn(usize) + Send + Sync + Copy + 'static,
{
    init();
    shuttle_support::explore(property);
}

/// Installs the process-wide tracing subscriber that watches for the manager's exit, before any
/// test of this file runs a limiter. A scoped (thread-local) subscriber would race other tests'
/// threads registering the same callsites, and could miss the event.
fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        tracing::subscriber::set_global_default(exit_watcher())
            .expect("no other global subscriber in this test binary");
    });
}

/// Submits item `i`: its body reports to `monitor`, yields `yields` times (scheduling points
/// inside the item), then returns `i`.
fn item(limiter: &Limiter, monitor: &Arc<Monitor>, i: u64, yields: usize) -> JoinHandle<u64> {
    let monitor = monitor.clone();
    let since = monitor.mark();
    limiter.spawn_with(move |worker| async move {
        let _running = monitor.enter(i, worker, since);
        for _ in 0..yields {
            yield_now().await;
        }
        i
    })
}

// === properties ===

/// Items submitted from the main task, from another task, and from inside an item: no two
/// running items share a worker ID, at most `limit` run at once, every handle resolves to its
/// value, and `wait` returns once the limiter is closed and drained (the manager has exited).
fn ids_and_limit_hold_and_the_manager_exits(limit: usize) {
    block_on(async move {
        // LIFO at limit 2: the other queue order takes the same paths.
        let order = match limit {
            2 => QueueOrder::Lifo,
            _ => QueueOrder::Fifo,
        };
        let limiter = Limiter::builder()
            .limit(limit)
            .queue_order(order)
            .build_on(&shuttle_tokio::runtime::Handle::current());
        let monitor = Arc::new(Monitor::new(limit));

        let other = shuttle_tokio::spawn({
            let (limiter, monitor) = (limiter.clone(), monitor.clone());
            async move {
                [
                    item(&limiter, &monitor, 10, 1),
                    item(&limiter, &monitor, 11, 0),
                ]
            }
        });
        let nested = limiter.spawn_with({
            let (limiter, monitor) = (limiter.clone(), monitor.clone());
            // Work submitting work; the inner handle comes back in a `Vec`, not as a bare
            // awaitable output.
            move |_| async move { vec![item(&limiter, &monitor, 20, 1)] }
        });
        let mine: Vec<_> = (0..3).map(|i| item(&limiter, &monitor, i, 1)).collect();

        for (i, handle) in mine.into_iter().enumerate() {
            assert_eq!(handle.await.unwrap(), i as u64);
        }
        for (i, handle) in (10..).zip(other.await.unwrap()) {
            assert_eq!(handle.await.unwrap(), i);
        }
        for handle in nested.await.unwrap() {
            assert_eq!(handle.await.unwrap(), 20);
        }
        assert!(limiter.close());
        limiter.wait().await;

        monitor.assert_ok();
        assert!(monitor.max_running() <= limit);
        assert_eq!(monitor.started(), 6);
        assert_drained(&limiter);
        let m = limiter.metrics();
        assert_eq!((m.submitted, m.completed), (7, 7));
    });
}

#[test]
fn ids_unique_limit_held_every_handle_resolves_manager_exits() {
    explore(ids_and_limit_hold_and_the_manager_exits);
}

/// Another task aborts items that may be queued, running or finished. Each handle resolves
/// once: the value if the body ran to its end, cancelled otherwise, and by then the item's
/// future has been dropped. The IDs of aborted items come back: later items still run.
fn aborts_race_completion(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let items: Vec<_> = (0..4)
            .map(|i| {
                let monitor = monitor.clone();
                let since = monitor.mark();
                let finished = Arc::new(AtomicBool::new(false));
                let (flag, dropped) = DropFlag::new();
                let handle = limiter.spawn_with({
                    let finished = finished.clone();
                    move |worker| async move {
                        let _flag = flag;
                        let _running = monitor.enter(i, worker, since);
                        yield_now().await;
                        finished.store(true, Ordering::SeqCst);
                        i
                    }
                });
                (handle, finished, dropped)
            })
            .collect();
        let aborts: Vec<_> = items.iter().map(|(h, ..)| h.abort_handle()).collect();
        let aborter = shuttle_tokio::spawn(async move {
            // Items 0 and 2: the first may be running, the other queued or running.
            aborts[0].abort();
            yield_now().await;
            aborts[2].abort();
            aborts[2].abort();
        });
        // Aborting from here, too, racing the aborter and the workers.
        items[3].0.abort();

        for (i, (handle, finished, dropped)) in (0..).zip(items) {
            match handle.await {
                Ok(value) => {
                    assert_eq!(value, i);
                    assert!(finished.load(Ordering::SeqCst), "item {i}");
                }
                Err(err) => {
                    assert!(err.is_cancelled(), "item {i}: {err:?}");
                    assert!(i != 1, "item 1 was never aborted");
                    assert!(!finished.load(Ordering::SeqCst), "item {i}");
                }
            }
            assert!(
                dropped.load(Ordering::SeqCst),
                "item {i}'s future outlived its handle"
            );
        }
        aborter.await.unwrap();
        // Every ID came back: a fresh item still runs.
        assert_eq!(item(&limiter, &monitor, 9, 0).await.unwrap(), 9);
        limiter.close();
        limiter.wait().await;
        monitor.assert_ok();
        assert_drained(&limiter);
        assert_eq!(limiter.metrics().submitted, 5);
    });
}

/// `close` races a task that submits and items that complete: what was sent before the close
/// runs to its value, what was sent after resolves cancelled without running, and `wait`
/// returns with everything drained.
fn close_races_submission(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let first: Vec<_> = (0..2).map(|i| item(&limiter, &monitor, i, 1)).collect();
        let submitter = shuttle_tokio::spawn({
            let (limiter, monitor) = (limiter.clone(), monitor.clone());
            async move {
                let mut handles = Vec::new();
                for i in 2..5 {
                    handles.push(item(&limiter, &monitor, i, 0));
                    yield_now().await;
                }
                handles
            }
        });
        assert!(limiter.close());
        let rest = submitter.await.unwrap();
        limiter.wait().await;
        let mut ran = 0;
        for (i, handle) in (0..).zip(first.into_iter().chain(rest)) {
            match handle.await {
                Ok(value) => {
                    assert_eq!(value, i);
                    ran += 1;
                }
                Err(err) => {
                    assert!(err.is_cancelled(), "item {i}: {err:?}");
                    assert!(i >= 2, "item {i} was submitted before the close");
                }
            }
        }
        monitor.assert_ok();
        assert_eq!(monitor.started(), ran, "a refused item ran");
        assert_drained(&limiter);
        let m = limiter.metrics();
        assert_eq!((m.submitted, m.completed), (5, ran));
    });
}

#[test]
fn close_racing_submission_runs_what_was_sent_before_it() {
    explore(close_races_submission);
}

#[test]
fn aborts_racing_completion_resolve_once_and_free_their_ids() {
    explore(aborts_race_completion);
}

/// Another task grows and shrinks the limit while items run and finish: at most the largest
/// limit in force while they ran run at once, IDs stay unique and below the limit in force
/// when each item started, and every item still runs.
fn set_limit_races_completion(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let handles: Vec<_> = (0..5).map(|i| item(&limiter, &monitor, i, 1)).collect();
        let setter = shuttle_tokio::spawn({
            let (limiter, monitor) = (limiter.clone(), monitor.clone());
            async move {
                for new in [limit + 1, 1, 3, limit] {
                    monitor.set_limit(&limiter, new);
                    yield_now().await;
                }
            }
        });
        for (i, handle) in (0..).zip(handles) {
            assert_eq!(handle.await.unwrap(), i);
        }
        setter.await.unwrap();
        limiter.close();
        limiter.wait().await;
        monitor.assert_ok();
        assert_drained(&limiter);
        assert_eq!(limiter.metrics().completed, 5);
    });
}

#[test]
fn set_limit_racing_completion_keeps_ids_and_the_limit_in_force() {
    explore(set_limit_races_completion);
}

/// `shutdown` from two tasks races a task that submits: every handle resolves (a value or
/// cancelled), both calls return, nothing is left queued or running, and later submissions are
/// refused at once.
fn shutdown_races_submission(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let first: Vec<_> = (0..2).map(|i| item(&limiter, &monitor, i, 1)).collect();
        let submitter = shuttle_tokio::spawn({
            let (limiter, monitor) = (limiter.clone(), monitor.clone());
            async move {
                let mut handles = Vec::new();
                for i in 2..5 {
                    handles.push(item(&limiter, &monitor, i, 1));
                    yield_now().await;
                }
                handles
            }
        });
        let other_shutdown = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.shutdown().await }
        });
        limiter.shutdown().await;
        assert!(limiter.is_closed());
        let late = limiter.spawn(async { 99 });
        assert!(
            late.is_finished(),
            "a submission after shutdown resolves at once"
        );
        assert!(late.await.unwrap_err().is_cancelled());

        let rest = submitter.await.unwrap();
        for (i, handle) in (0..).zip(first.into_iter().chain(rest)) {
            match handle.await {
                Ok(value) => assert_eq!(value, i),
                Err(err) => assert!(err.is_cancelled(), "item {i}: {err:?}"),
            }
        }
        other_shutdown.await.unwrap();
        monitor.assert_ok();
        assert_drained(&limiter);
        assert_eq!(limiter.metrics().submitted, 6);
    });
}

#[test]
fn shutdown_racing_submission_resolves_everything() {
    explore(shutdown_races_submission);
}

/// Every `Limiter` clone is dropped, one of them by another task, while work is queued: the
/// queued work still runs, then the manager exits (seen through its "manager exited" event,
/// since no `Limiter` is left to `wait` on).
fn dropping_every_limiter_runs_queued_work(limit: usize) {
    let exited = Arc::new(ExitSignal::default());
    EXIT.with(|slot| *slot.borrow_mut() = Some(exited.clone()));
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let mut handles: Vec<_> = (0..3).map(|i| item(&limiter, &monitor, i, 1)).collect();
        let clone = limiter.clone();
        let other = shuttle_tokio::spawn({
            let monitor = monitor.clone();
            async move {
                let handle = item(&clone, &monitor, 3, 0);
                drop(clone);
                vec![handle]
            }
        });
        drop(limiter);
        handles.extend(other.await.unwrap());
        for (i, handle) in (0..).zip(handles) {
            assert_eq!(handle.await.unwrap(), i);
        }
        exited.wait().await;
        monitor.assert_ok();
        assert_eq!(monitor.started(), 4);
    });
}

#[test]
fn dropping_every_limiter_with_work_queued_runs_it_then_the_manager_exits() {
    explore(dropping_every_limiter_runs_queued_work);
}

/// Items that panic and items whose handles were dropped, mixed with returning items: panics
/// come back as panics, the manager survives them, and detached outputs are dropped.
#[cfg(panic = "unwind")]
fn panics_and_detached_items(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let (flag, output_dropped) = DropFlag::new();
        let panicking = {
            let monitor = monitor.clone();
            limiter.spawn_with(move |worker| async move {
                let _running = monitor.enter(0, worker, 0);
                yield_now().await;
                panic!("planned");
            })
        };
        drop(limiter.spawn(async move { flag }));
        let ok = item(&limiter, &monitor, 2, 1);
        let err = panicking.await.unwrap_err();
        assert!(err.is_panic());
        assert_eq!(ok.await.unwrap(), 2);
        limiter.close();
        limiter.wait().await;
        assert!(output_dropped.load(Ordering::SeqCst));
        monitor.assert_ok();
        assert_drained(&limiter);
        let m = limiter.metrics();
        assert_eq!((m.completed, m.panicked), (2, 1));
    });
}

#[cfg(panic = "unwind")]
#[test]
fn panicking_and_detached_items_resolve_and_the_manager_survives() {
    // Shuttle's panic hook reports every panic, even caught ones; this property's panics are
    // planned, so it runs with fewer schedules and a quiet hook.
    init();
    let n = iterations() / 4;
    // Shuttle installs its hook on its first run; wrap it after that.
    Runner::new(RandomScheduler::new(1), config()).run(|| {});
    silence_planned_panics();
    for limit in 1..=3 {
        Runner::new(RandomScheduler::new(n), config())
            .run(move || panics_and_detached_items(limit));
        Runner::new(PctScheduler::new(3, n), config())
            .run(move || panics_and_detached_items(limit));
    }
}

/// Item 0 holds its worker until the test lets it go; item 1 ends at once and its worker exits
/// (nothing is queued). Items submitted after that make the manager hand out an ID while item 0
/// still holds one. Returns the monitor's verdict instead of panicking: with the planted bug on,
/// workers are still running when it is reached, and a failed execution would tear them down
/// mid-step.
fn held_id_scenario(limit: usize) -> Result<(), String> {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let gate = Arc::new(shuttle_tokio::sync::Notify::new());
        let held = limiter.spawn_with({
            let (monitor, gate) = (monitor.clone(), gate.clone());
            move |worker| async move {
                let _running = monitor.enter(0, worker, 0);
                gate.notified().await;
                0
            }
        });
        item(&limiter, &monitor, 1, 0).await.unwrap();
        for _ in 0..1000 {
            if limiter.metrics().running <= 1 {
                break;
            }
            yield_now().await;
        }
        let handles: Vec<_> = (2..4).map(|i| item(&limiter, &monitor, i, 1)).collect();
        for handle in handles {
            let _ = handle.await;
        }
        gate.notify_one();
        let _ = held.await;
        limiter.close();
        limiter.wait().await;
        monitor.check()
    })
}

/// The scenario of the planted-bug test, without the bug: it needs a limit of at least 2.
#[test]
fn an_id_held_by_a_long_item_is_not_handed_out_again() {
    init();
    let n = iterations();
    for limit in 2..=3 {
        let property = move || held_id_scenario(limit).unwrap();
        Runner::new(RandomScheduler::new(n), config()).run(property);
        Runner::new(PctScheduler::new(3, n), config()).run(property);
    }
}

// === the checker bites ===

/// With the planted bug on, every worker starts its items under ID 0 whatever ID admission gave
/// it, as if item 0's ID were handed to a second worker while item 0 still runs. The monitor
/// must see two running items share an ID.
#[test]
#[should_panic(expected = "share a worker ID")]
fn planted_id_mixup_is_caught() {
    thread_local! {
        static CAUGHT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    }
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            task_limiter::__plant_id_mixup(false);
        }
    }
    init();
    // The flag is per thread, and shuttle runs this test's schedules on this thread: the other
    // tests, on their own threads, never see it.
    task_limiter::__plant_id_mixup(true);
    let _off = Off;
    let n = iterations();
    let tried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = tried.clone();
    Runner::new(RandomScheduler::new(n), config()).run(move || {
        if CAUGHT.with(|caught| caught.borrow().is_some()) {
            return; // caught already: skip the remaining schedules
        }
        counter.fetch_add(1, Ordering::Relaxed);
        if let Err(violations) = held_id_scenario(2) {
            CAUGHT.with(|caught| *caught.borrow_mut() = Some(violations));
        }
    });
    match CAUGHT.with(|caught| caught.borrow_mut().take()) {
        Some(violations) => panic!(
            "caught in schedule {} of {n}: {violations}",
            tried.load(Ordering::Relaxed)
        ),
        None => panic!("no schedule out of {n} caught the planted bug"),
    }
}

// === parked workers ===

/// Clients in the service shape: each submits one item, awaits it, and submits the next, so
/// workers park between items and the manager hands the next item to a parked worker (or,
/// racing the park, a worker takes it itself). IDs stay unique and below the limit, at most
/// `limit` items run, every handle resolves to its value, at most `limit` workers are ever alive,
/// and once closed every parked worker exits and the manager with them.
fn parked_workers_take_handed_work(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let clients: Vec<_> = (0..2u64)
            .map(|c| {
                let (limiter, monitor) = (limiter.clone(), monitor.clone());
                shuttle_tokio::spawn(async move {
                    for k in 0..3 {
                        let i = 10 * c + k;
                        assert_eq!(
                            item(&limiter, &monitor, i, (k % 2) as usize).await.unwrap(),
                            i
                        );
                        let m = limiter.metrics();
                        assert!(m.workers <= limit, "{m:?}");
                    }
                })
            })
            .collect();
        for client in clients {
            client.await.unwrap();
        }
        let m = limiter.metrics();
        assert!(m.workers_spawned <= 6, "{m:?}");
        assert!(m.idle_workers <= m.workers && m.workers <= limit, "{m:?}");
        limiter.close();
        limiter.wait().await;
        monitor.assert_ok();
        assert_drained(&limiter);
        assert_eq!(limiter.metrics().workers, 0);
        assert_eq!(monitor.started(), 6);
    });
}

#[test]
fn parked_workers_take_handed_work_and_exit_on_close() {
    explore(parked_workers_take_handed_work);
}

/// One submitter's items start in its submission order (FIFO, one worker ID), whichever way
/// each goes in: queued by the submitter (a worker parked, or every ID busy and the queue
/// short) or through the manager's channel (the queue long). A submission that queues its
/// item itself while an earlier one still waits in the channel would pass it.
fn one_submitters_items_start_in_order(_: usize) {
    block_on(async move {
        let limiter = Limiter::new(1);
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        // A worker, parked once this returns.
        limiter.spawn(async {}).await.unwrap();
        let mut handles = Vec::new();
        for i in 0..4u64 {
            let log = log.clone();
            handles.push(limiter.spawn(async move {
                log.lock().unwrap().push(i);
                yield_now().await;
            }));
            yield_now().await;
        }
        for handle in handles {
            handle.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), [0, 1, 2, 3], "started out of order");
        limiter.close();
        limiter.wait().await;
        assert_drained(&limiter);
    });
}

#[test]
fn one_submitters_items_start_in_submission_order() {
    explore(one_submitters_items_start_in_order);
}

/// The limit shrinks and grows while workers park, are handed work and finish: a parked worker
/// whose ID is no longer below the limit exits, no item starts on an ID at or above the limit in
/// force, and at most the limit in force run. Queued items still all run.
fn set_limit_races_parking(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let first: Vec<_> = (0..3).map(|i| item(&limiter, &monitor, i, 0)).collect();
        let setter = shuttle_tokio::spawn({
            let (limiter, monitor) = (limiter.clone(), monitor.clone());
            async move {
                for new in [1, limit + 1, 1] {
                    yield_now().await;
                    monitor.set_limit(&limiter, new);
                }
            }
        });
        for (i, handle) in (0..).zip(first) {
            assert_eq!(handle.await.unwrap(), i);
        }
        // Submitted once the first ones are done: their workers are parked or exiting.
        let later: Vec<_> = (3..5).map(|i| item(&limiter, &monitor, i, 1)).collect();
        setter.await.unwrap();
        for (i, handle) in (3..).zip(later) {
            assert_eq!(handle.await.unwrap(), i);
        }
        limiter.close();
        limiter.wait().await;
        monitor.assert_ok();
        assert_drained(&limiter);
        assert_eq!(limiter.metrics().completed, 5);
    });
}

#[test]
fn set_limit_racing_parked_workers_keeps_ids_below_the_limit_in_force() {
    explore(set_limit_races_parking);
}

/// `shutdown` races a client whose items are being handed to parked workers: every handle
/// resolves (its value, or cancelled), `shutdown` returns with every worker gone, and nothing is
/// left queued or running.
fn shutdown_races_hand_off(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        // Park the workers first.
        for i in 0..limit as u64 {
            assert_eq!(item(&limiter, &monitor, i, 0).await.unwrap(), i);
        }
        let client = shuttle_tokio::spawn({
            let (limiter, monitor) = (limiter.clone(), monitor.clone());
            async move {
                let mut ran = 0;
                for i in 10..13 {
                    match item(&limiter, &monitor, i, 1).await {
                        Ok(value) => {
                            assert_eq!(value, i);
                            ran += 1;
                        }
                        Err(err) => assert!(err.is_cancelled()),
                    }
                }
                ran
            }
        });
        yield_now().await;
        limiter.shutdown().await;
        let ran = client.await.unwrap();
        monitor.assert_ok();
        assert_drained(&limiter);
        let m = limiter.metrics();
        assert_eq!(m.workers, 0, "{m:?}");
        assert_eq!(m.completed, limit as u64 + ran, "{m:?}");
    });
}

#[test]
fn shutdown_racing_hand_off_to_parked_workers_resolves_everything() {
    explore(shutdown_races_hand_off);
}

/// The limit shrinks while `limit` gated items run on every ID; items submitted after the
/// shrink (so held to the smaller limit by the monitor) may start only once fewer than the new
/// limit run, whichever worker finishes first. This is the running-count half of admission: the
/// ID half alone (an ID below the limit) would let the worker on ID 0 start one while the others
/// still run.
fn shrink_holds_the_running_count(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let gates: Vec<_> = (0..limit)
            .map(|_| Arc::new(shuttle_tokio::sync::Notify::new()))
            .collect();
        let held: Vec<_> = (0..limit as u64)
            .zip(&gates)
            .map(|(i, gate)| {
                let (monitor, gate) = (monitor.clone(), gate.clone());
                limiter.spawn_with(move |worker| async move {
                    let _running = monitor.enter(i, worker, 0);
                    gate.notified().await;
                    i
                })
            })
            .collect();
        while limiter.metrics().running < limit {
            yield_now().await;
        }
        monitor.set_limit(&limiter, limit - 1);
        // Submitted by the task that set the limit: held to exactly the new one.
        let later: Vec<_> = (10..12)
            .map(|i| {
                let monitor = monitor.clone();
                let since = monitor.mark_exact();
                limiter.spawn_with(move |worker| async move {
                    let _running = monitor.enter(i, worker, since);
                    i
                })
            })
            .collect();
        for gate in &gates {
            gate.notify_one();
            yield_now().await;
        }
        for (i, handle) in (0..).zip(held) {
            assert_eq!(handle.await.unwrap(), i);
        }
        for (i, handle) in (10..).zip(later) {
            assert_eq!(handle.await.unwrap(), i);
        }
        limiter.close();
        limiter.wait().await;
        monitor.assert_ok();
        assert_drained(&limiter);
    });
}

#[test]
fn a_shrink_holds_later_items_to_the_new_limit_whichever_worker_finishes() {
    init();
    let n = iterations();
    for limit in 2..=3 {
        Runner::new(RandomScheduler::new(n), config())
            .run(move || shrink_holds_the_running_count(limit));
        Runner::new(PctScheduler::new(3, n), config())
            .run(move || shrink_holds_the_running_count(limit));
    }
}

// === helpers ===

/// Sets a flag when dropped: shows when the limiter lets go of a future or an output.
struct DropFlag(Arc<AtomicBool>);

impl DropFlag {
    fn new() -> (DropFlag, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (DropFlag(flag.clone()), flag)
    }
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Set when the limiter's manager logs "manager exited". A tracing callback may not touch
/// shuttle's primitives (a scheduling point there switches tasks while tracing's dispatcher is
/// borrowed), so this is a plain flag that the test polls.
#[derive(Default)]
struct ExitSignal(AtomicBool);

impl ExitSignal {
    async fn wait(&self) {
        for _ in 0..10_000 {
            if self.0.load(Ordering::SeqCst) {
                return;
            }
            yield_now().await;
        }
        panic!("the manager never exited");
    }
}

thread_local! {
    /// The signal of the execution running on this thread (shuttle runs a test's executions on
    /// the test's thread).
    static EXIT: std::cell::RefCell<Option<Arc<ExitSignal>>> = const { std::cell::RefCell::new(None) };
}

/// A subscriber that raises this thread's [`ExitSignal`] on the manager's exit event.
fn exit_watcher() -> impl tracing::Subscriber + Send + Sync {
    use tracing_subscriber::layer::SubscriberExt;
    tracing_subscriber::registry().with(ExitLayer)
}

struct ExitLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ExitLayer {
    /// Only the limiter's manager events; everything else is off, so the other tests pay nothing.
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        let manager_event = meta.is_event()
            && meta.target() == "task_limiter"
            && meta.file().is_some_and(|file| file.ends_with("manager.rs"));
        match manager_event {
            true => tracing::subscriber::Interest::always(),
            false => tracing::subscriber::Interest::never(),
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" && format!("{value:?}") == "manager exited" {
                    self.0 = true;
                }
            }
        }
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            if let Some(signal) = EXIT.with(|slot| slot.borrow().clone()) {
                signal.0.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Keeps shuttle's panic hook (which prints a schedule for every panic, caught or not) from
/// reporting the planned panics of `panics_and_detached_items`.
fn silence_planned_panics() {
    let hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"planned") {
            hook(info);
        }
    }));
}
