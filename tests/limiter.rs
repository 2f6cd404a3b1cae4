//! The limiter's contract: limits, worker IDs, queue order, resizing, closing and shutdown.
// Real tokio: under the `shuttle` feature the crate runs on shuttle-tokio (tests/shuttle.rs).
#![cfg(not(feature = "shuttle"))]

mod monitor;
mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use monitor::Monitor;
use support::{alive_tasks, hold_a_worker, settle, settle_alive, spawn_gated, Concurrency, Gate};
use task_limiter::{Limiter, QueueOrder};

#[tokio::test]
async fn runs_every_item_and_returns_its_value() {
    let limiter = Limiter::new(3);
    let handles: Vec<_> = (0..100u64)
        .map(|i| limiter.spawn(async move { i * i }))
        .collect();
    let mut got = Vec::new();
    for handle in handles {
        got.push(handle.await.unwrap());
    }
    assert_eq!(got, (0..100u64).map(|i| i * i).collect::<Vec<_>>());
}

async fn start_order(order: QueueOrder) -> Vec<usize> {
    let limiter = Limiter::builder().limit(1).queue_order(order).build();
    let (gate, blocker) = hold_a_worker(&limiter).await;

    let log = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let log = log.clone();
            limiter.spawn(async move { log.lock().unwrap().push(i) })
        })
        .collect();
    settle().await;
    assert!(
        log.lock().unwrap().is_empty(),
        "nothing starts while the only worker ID is held"
    );
    gate.open(1);
    blocker.await.unwrap();
    for handle in handles {
        handle.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    log
}

#[tokio::test]
async fn fifo_starts_items_in_submission_order() {
    assert_eq!(start_order(QueueOrder::Fifo).await, vec![0, 1, 2, 3, 4, 5]);
}

/// Submissions that find every worker ID busy queue their items themselves while the queue is
/// short, and go through the manager's channel once it is long (more than 1,024 entries at
/// limit 1): the start order is the submission order across both ways in, and across the
/// switch between them.
#[tokio::test]
async fn fifo_order_holds_across_the_direct_queue_and_the_channel() {
    let limiter = Limiter::new(1);
    let (gate, blocker) = hold_a_worker(&limiter).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let submit = |range: std::ops::Range<usize>| -> Vec<_> {
        range
            .map(|i| {
                let log = log.clone();
                limiter.spawn(async move { log.lock().unwrap().push(i) })
            })
            .collect()
    };
    let mut handles = submit(0..3000);
    // The manager moves what waits in the channel; the queue stays long, so these go through
    // the channel too, behind the rest.
    settle().await;
    handles.extend(submit(3000..3100));
    assert_eq!(limiter.metrics().queued, 3100);
    gate.open(1);
    blocker.await.unwrap();
    // Submitted while the queue drains: each finds its place behind what is left.
    let mut later = Vec::new();
    for (n, handle) in handles.into_iter().enumerate() {
        handle.await.unwrap();
        if n % 500 == 0 {
            later.extend(submit(3100 + n / 500 * 10..3110 + n / 500 * 10));
        }
    }
    for handle in later {
        handle.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    let expected: Vec<usize> = (0..3170).collect();
    assert_eq!(log.len(), expected.len());
    assert!(
        log.windows(2).all(|w| w[0] < w[1]),
        "items started out of submission order"
    );
    assert_eq!(log, expected);
}

#[tokio::test]
async fn lifo_starts_the_newest_item_first() {
    assert_eq!(start_order(QueueOrder::Lifo).await, vec![5, 4, 3, 2, 1, 0]);
}

#[tokio::test(start_paused = true)]
async fn worker_ids_are_unique_among_running_items_and_below_the_limit() {
    const LIMIT: usize = 4;
    let limiter = Limiter::new(LIMIT);
    let held = Arc::new(Mutex::new(HashSet::new()));
    let running = Concurrency::default();
    let handles: Vec<_> = (0..200u64)
        .map(|i| {
            let held = held.clone();
            let running = running.clone();
            limiter.spawn_with(move |id| async move {
                let _running = running.enter();
                assert!(id.index() < LIMIT, "{id} is not below the limit");
                assert!(held.lock().unwrap().insert(id), "{id} held twice");
                tokio::time::sleep(std::time::Duration::from_millis(i % 7)).await;
                assert!(held.lock().unwrap().remove(&id));
                id
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for handle in handles {
        seen.insert(handle.await.unwrap());
    }
    assert_eq!(seen.len(), LIMIT, "every worker ID was used");
    assert_eq!(running.max(), LIMIT);
    assert_eq!(limiter.metrics().max_running, LIMIT);
}

#[tokio::test]
async fn live_tasks_never_exceed_limit_plus_manager() {
    const LIMIT: usize = 8;
    let baseline = alive_tasks();
    let limiter = Limiter::new(LIMIT);
    let handles: Vec<_> = (0..5_000)
        .map(|i| {
            limiter.spawn(async move {
                if i % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                i
            })
        })
        .collect();
    let mut max_alive = 0;
    for handle in handles {
        max_alive = max_alive.max(alive_tasks() - baseline);
        handle.await.unwrap();
    }
    // The manager, at most LIMIT workers, and one worker that has handed its ID back and is
    // about to exit.
    assert!(max_alive <= LIMIT + 2, "{max_alive} tasks alive");
    assert!(
        limiter.metrics().workers_spawned < 5_000,
        "workers are reused"
    );
}

#[tokio::test]
async fn set_limit_up_starts_queued_work_at_once() {
    let limiter = Limiter::new(1);
    let gate = Gate::new();
    let running = Concurrency::default();
    let handles = spawn_gated(&limiter, 5, &gate, &running);
    settle().await;
    assert_eq!(running.now(), 1);
    limiter.set_limit(4);
    assert_eq!(limiter.limit(), 4);
    settle().await;
    assert_eq!(running.now(), 4, "growing the limit started queued items");
    assert_eq!(limiter.metrics().queued, 1);
    gate.open(5);
    for handle in handles {
        handle.await.unwrap();
    }
}

#[tokio::test]
async fn set_limit_down_lets_running_items_finish_then_holds_the_new_limit() {
    let limiter = Limiter::new(4);
    let gate = Gate::new();
    let running = Concurrency::default();
    let blockers = spawn_gated(&limiter, 4, &gate, &running);
    settle().await;
    assert_eq!(running.now(), 4);

    limiter.set_limit(1);
    let after = Concurrency::default();
    let ids = Arc::new(Mutex::new(HashSet::new()));
    let rest: Vec<_> = (0..20)
        .map(|_| {
            let after = after.clone();
            let running = running.clone();
            let ids = ids.clone();
            limiter.spawn_with(move |id| async move {
                let _after = after.enter();
                // Started only once the blockers are gone and no other item runs.
                assert_eq!(running.now(), 0);
                ids.lock().unwrap().insert(id.index());
                tokio::task::yield_now().await;
            })
        })
        .collect();
    settle().await;
    assert_eq!(running.now(), 4, "running items are not interrupted");
    assert_eq!(after.max(), 0, "nothing starts while the limit is exceeded");
    gate.open(4);
    for handle in blockers.into_iter().chain(rest) {
        handle.await.unwrap();
    }
    assert_eq!(after.max(), 1);
    assert_eq!(*ids.lock().unwrap(), HashSet::from([0]));
}

#[tokio::test(start_paused = true)]
async fn an_expired_limit_starts_nothing_new_until_it_is_set_again() {
    use std::time::Duration;
    use tokio::time::{sleep, Instant};

    let limiter = Limiter::new(1);
    let running = Concurrency::default();
    limiter.set_limit_until(2, Instant::now() + Duration::from_secs(1), 0);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let running = running.clone();
            limiter.spawn(async move {
                let _running = running.enter();
                sleep(Duration::from_secs(2)).await;
            })
        })
        .collect();
    settle().await;
    assert_eq!(running.now(), 2);
    assert_eq!(limiter.limit(), 2);

    // Past the expiry, the running items finish, and their workers, asking for the next item,
    // find the fallback in force: nothing new starts, and nothing queued is lost.
    sleep(Duration::from_millis(2500)).await;
    settle().await;
    assert_eq!(limiter.limit(), 0);
    let metrics = limiter.metrics();
    assert_eq!((metrics.limit, metrics.running, metrics.queued), (0, 0, 2));
    assert_eq!(running.max(), 2);

    // Renewed, the queued items start at once.
    limiter.set_limit_until(2, Instant::now() + Duration::from_secs(10), 0);
    settle().await;
    assert_eq!(running.now(), 2);
    for handle in handles {
        handle.await.unwrap();
    }
    // A plain `set_limit` clears the expiry.
    limiter.set_limit(3);
    sleep(Duration::from_secs(20)).await;
    assert_eq!(limiter.limit(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_limit_set_with_an_expiry_in_the_past_puts_the_fallback_in_force() {
    let limiter = Limiter::new(4);
    limiter.set_limit_until(8, tokio::time::Instant::now(), 2);
    assert_eq!(limiter.limit(), 2);
    assert_eq!(limiter.metrics().limit, 2);
}

/// `set_limit` up and down while items run and queue: each item is held, as its body starts, to
/// the limit in force then, not to the largest limit ever set. Only around a change may an item
/// have been admitted under the limit before it (a worker that takes an item may first poll it
/// on its next turn), so the monitor allows both until a few turns after each change.
#[tokio::test]
async fn set_limit_under_load_keeps_every_item_within_the_limit_in_force() {
    let limiter = Limiter::new(2);
    let monitor = Arc::new(Monitor::new(2));
    let limits = [5, 1, 8, 3, 1, 6];
    let mut handles = Vec::new();
    for (round, limit) in limits.into_iter().enumerate() {
        for i in 0..200 {
            let monitor = monitor.clone();
            let item = (round * 200 + i) as u64;
            // Submitted here, after the latest change: admitted under the limit in force now.
            let submitted = monitor.mark_exact();
            handles.push(limiter.spawn_with(move |worker| async move {
                let in_force = monitor.mark().max(submitted);
                let _running = monitor.enter(item, worker, in_force);
                if i % 2 == 0 {
                    tokio::task::yield_now().await;
                }
                round
            }));
        }
        tokio::task::yield_now().await;
        // Under load: items of this round and earlier ones run and queue.
        monitor.set_limit(&limiter, limit);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        monitor.settled();
    }
    for handle in handles {
        handle.await.unwrap();
    }
    monitor.assert_ok();
    assert_eq!(monitor.started(), 1200);
    // The largest limit was reached while it was in force: the items did load the limiter.
    assert_eq!(monitor.max_running(), 8);
    let m = limiter.metrics();
    assert_eq!((m.completed, m.max_running), (1200, 8), "{m:?}");
}

#[tokio::test]
async fn work_can_submit_more_work_to_its_own_limiter() {
    let limiter = Limiter::new(2);
    let total = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();

    type Handles = tokio::sync::mpsc::UnboundedSender<task_limiter::JoinHandle<()>>;
    fn tree(limiter: Limiter, depth: u32, total: Arc<AtomicUsize>, handles: Handles) {
        let child_limiter = limiter.clone();
        let child_handles = handles.clone();
        let handle = limiter.spawn(async move {
            total.fetch_add(1, Ordering::SeqCst);
            if depth > 0 {
                for _ in 0..3 {
                    // Submitting never blocks, even from an item holding one of the two IDs.
                    tree(
                        child_limiter.clone(),
                        depth - 1,
                        total.clone(),
                        child_handles.clone(),
                    );
                }
            }
        });
        handles.send(handle).unwrap();
    }
    tree(limiter.clone(), 4, total.clone(), tx.clone());
    drop(tx);
    let mut resolved = 0;
    while let Some(handle) = rx.recv().await {
        handle.await.unwrap();
        resolved += 1;
    }
    assert_eq!(resolved, 121);
    limiter.close();
    limiter.wait().await;
    // 1 + 3 + 9 + 27 + 81 items.
    assert_eq!(total.load(Ordering::SeqCst), 121);
    assert_eq!(limiter.metrics().completed, 121);
}

#[tokio::test]
async fn close_lets_submitted_work_finish_and_refuses_new_work() {
    let limiter = Limiter::new(2);
    let before: Vec<_> = (0..10).map(|i| limiter.spawn(async move { i })).collect();
    assert!(limiter.close());
    assert!(!limiter.close());
    assert!(limiter.is_closed());
    let after = limiter.spawn(async { 99 });
    assert!(after.await.unwrap_err().is_cancelled());
    for (i, handle) in before.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), i);
    }
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!((m.submitted, m.completed, m.cancelled), (11, 10, 1));
}

#[tokio::test]
async fn wait_resolves_only_once_closed_and_drained() {
    let limiter = Limiter::new(1);
    let gate = Gate::new();
    let item = limiter.spawn({
        let gate = gate.clone();
        async move { gate.wait().await }
    });
    let mut wait = tokio_test::task::spawn(limiter.wait());
    settle().await;
    tokio_test::assert_pending!(wait.poll());
    limiter.close();
    settle().await;
    tokio_test::assert_pending!(wait.poll(), "an item is still running");
    gate.open(1);
    item.await.unwrap();
    settle().await;
    assert!(wait.is_woken());
    tokio_test::assert_ready!(wait.poll());
    assert!(limiter.is_empty());
    assert!(limiter.busy_workers().is_empty());
}

#[tokio::test]
async fn dropping_every_limiter_runs_queued_work_then_the_manager_exits() {
    let baseline = alive_tasks();
    let limiter = Limiter::new(2);
    let clone = limiter.clone();
    let done = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let done = done.clone();
            clone.spawn(async move {
                tokio::task::yield_now().await;
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    drop(limiter);
    drop(clone);
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 50);
    assert_eq!(
        settle_alive(baseline).await,
        baseline,
        "manager and workers are gone"
    );
}

#[tokio::test]
async fn shutdown_cancels_queued_and_running_items() {
    let baseline = alive_tasks();
    let limiter = Limiter::new(2);
    let gate = Gate::new();
    let running: Vec<_> = (0..2)
        .map(|_| {
            let gate = gate.clone();
            limiter.spawn(async move { gate.wait().await })
        })
        .collect();
    let queued: Vec<_> = (0..5).map(|i| limiter.spawn(async move { i })).collect();
    settle().await;
    assert_eq!(limiter.metrics().running, 2);

    limiter.shutdown().await;
    assert!(limiter.is_closed());
    for handle in running {
        let err = handle.await.unwrap_err();
        assert!(err.is_cancelled());
        assert!(err.worker_id().is_some(), "running items had a worker");
    }
    for handle in queued {
        let err = handle.await.unwrap_err();
        assert!(err.is_cancelled());
        assert_eq!(err.worker_id(), None, "queued items never started");
    }
    assert!(limiter.spawn(async {}).await.unwrap_err().is_cancelled());
    // Twice, and concurrently, is fine.
    tokio::join!(limiter.shutdown(), limiter.shutdown());
    let m = limiter.metrics();
    assert_eq!((m.submitted, m.completed, m.cancelled), (8, 0, 8));
    assert_eq!((m.queued, m.running), (0, 0));
    assert_eq!(settle_alive(baseline).await, baseline);
}

#[test]
fn dropping_the_runtime_resolves_every_handle() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let limiter = Limiter::builder().limit(1).build_on(runtime.handle());
    let running = limiter.spawn(std::future::pending::<()>());
    let queued: Vec<_> = (0..3).map(|i| limiter.spawn(async move { i })).collect();
    runtime.block_on(support::settle());
    assert_eq!(limiter.metrics().running, 1);
    drop(runtime);

    // Awaited elsewhere, with no runtime at all: none hangs.
    futures::executor::block_on(async {
        assert!(running.await.unwrap_err().is_cancelled());
        for handle in queued {
            assert!(handle.await.unwrap_err().is_cancelled());
        }
        limiter.wait().await;
    });
    assert!(limiter.is_closed());
    assert!(limiter.spawn(async {}).is_finished(), "refused at once");
}

#[test]
fn built_on_a_handle_from_outside_the_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let limiter = Limiter::builder()
        .limit(2)
        .name("outside")
        .build_on(runtime.handle());
    let handles: Vec<_> = (0..100).map(|i| limiter.spawn(async move { i })).collect();
    let sum: i32 = runtime.block_on(async {
        let mut sum = 0;
        for handle in handles {
            sum += handle.await.unwrap();
        }
        sum
    });
    assert_eq!(sum, 4950);
    assert!(format!("{limiter:?}").contains("outside"));
}

#[test]
#[should_panic(expected = "must be built inside a tokio runtime")]
fn new_outside_a_runtime_panics() {
    let _ = Limiter::new(1);
}
