//! Model checks of leases (issue 19): acquires, drops and grants racing spawned items,
//! `set_limit`, an abort and a shutdown. Scheduled by shuttle through shuttle-tokio, like
//! tests/shuttle.rs; invariants 1 and 2 (DESIGN.md), counting leases as running items, are
//! checked by `monitor::Monitor`, and a lost grant (a request never woken, a `wait` that never
//! returns) leaves every task blocked, which shuttle reports as a deadlock.
//!
//! Run them with
//! `CARGO_TARGET_DIR=target/shuttle cargo test --release --features shuttle --test shuttle_leases
//! --config profile.release.debug-assertions=true`.
//! `TASK_LIMITER_SHUTTLE_ITERATIONS=N` sets the schedules per property, limit and scheduler
//! (default 1000).
#![cfg(feature = "shuttle")]

mod monitor;
mod shuttle_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use monitor::Monitor;
use shuttle::scheduler::RandomScheduler;
use shuttle::Runner;
use shuttle_support::{assert_drained, block_on, config, explore, iterations};
use shuttle_tokio::task::yield_now;
use task_limiter::{JoinHandle, Limiter};

/// A spawned item that reports to `monitor` and yields once.
fn item(limiter: &Limiter, monitor: &Arc<Monitor>, i: u64) -> JoinHandle<u64> {
    let monitor = monitor.clone();
    let since = monitor.mark();
    limiter.spawn_with(move |worker| async move {
        let _running = monitor.enter(i, worker, since);
        yield_now().await;
        i
    })
}

/// A task that acquires a lease, reports to `monitor` while it holds it (yielding once), and
/// drops it. Returns whether it got one.
async fn lease(limiter: Limiter, monitor: Arc<Monitor>, i: u64) -> bool {
    let since = monitor.mark();
    match limiter.acquire().await {
        Ok(lease) => {
            let _running = monitor.enter(i, lease.worker(), since);
            yield_now().await;
            drop(_running);
            drop(lease);
            true
        }
        Err(err) => {
            assert!(err.is_closed(), "{err}");
            false
        }
    }
}

/// Leases from two tasks, a `run`, spawned items, an acquire dropped while it waits (or as it
/// is granted), and the limit raised and lowered from another task: IDs stay unique and below
/// the limit, running items and leases together stay within it, every lease and item ends, and
/// `wait` returns once closed.
fn leases_and_items_share_the_limit(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let a = shuttle_tokio::spawn(lease(limiter.clone(), monitor.clone(), 100));
        let b = shuttle_tokio::spawn(lease(limiter.clone(), monitor.clone(), 101));
        // A run: its future runs inline in this task, under a lease it cannot see.
        let run = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                limiter
                    .run(async {
                        yield_now().await;
                        7
                    })
                    .await
            }
        });
        let dropped = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                let mut acquire = Box::pin(limiter.acquire());
                // Polled once (it may be granted at once, or queue), then given up.
                let _ = futures::poll!(acquire.as_mut());
                yield_now().await;
                drop(acquire);
            }
        });
        let resizer = shuttle_tokio::spawn({
            let (limiter, monitor) = (limiter.clone(), monitor.clone());
            async move {
                monitor.set_limit(&limiter, limit + 1);
                yield_now().await;
                monitor.set_limit(&limiter, limit);
            }
        });
        let items: Vec<_> = (0..2).map(|i| item(&limiter, &monitor, i)).collect();
        for (i, handle) in items.into_iter().enumerate() {
            assert_eq!(handle.await.unwrap(), i as u64);
        }
        assert!(a.await.unwrap());
        assert!(b.await.unwrap());
        assert_eq!(run.await.unwrap().unwrap(), 7);
        dropped.await.unwrap();
        resizer.await.unwrap();
        assert!(limiter.close());
        limiter.wait().await;
        monitor.assert_ok();
        assert_drained(&limiter);
    });
}

/// A lease held, requests queued behind it, an item aborted and a shutdown from other tasks at
/// any point: queued requests resolve (granted before the shutdown, or closed), the shutdown
/// waits for every held lease, and nothing is left.
fn shutdown_ends_queued_requests_and_waits_for_held_leases(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let granted = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..limit as u64 + 1 {
            let (limiter, monitor, granted) = (limiter.clone(), monitor.clone(), granted.clone());
            tasks.push(shuttle_tokio::spawn(async move {
                if lease(limiter, monitor, 200 + i).await {
                    granted.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        let aborted = item(&limiter, &monitor, 1);
        let abort = aborted.abort_handle();
        let aborter = shuttle_tokio::spawn(async move { abort.abort() });
        let stopper = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.shutdown().await }
        });
        for task in tasks {
            task.await.unwrap();
        }
        let _ = aborted.await;
        aborter.await.unwrap();
        stopper.await.unwrap();
        limiter.wait().await;
        monitor.assert_ok();
        assert_drained(&limiter);
        let m = limiter.metrics();
        assert!(
            m.completed >= granted.load(Ordering::SeqCst) as u64,
            "{m:?}"
        );
    });
}

/// Lease requests queued while every worker ID runs an item, as those items end: a worker
/// that finds nothing queued leaves its item's end for the next turn of admission to count
/// (`end_lazily`), so the turn that queues a request must count such ends before it admits.
/// Every request is granted (a request stranded behind an uncounted end would leave every
/// task blocked), and nothing else runs meanwhile to rescue it.
fn lease_requests_race_lazy_ends(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let items: Vec<_> = (0..limit as u64)
            .map(|i| item(&limiter, &monitor, i))
            .collect();
        let leases: Vec<_> = (0..limit as u64)
            .map(|i| shuttle_tokio::spawn(lease(limiter.clone(), monitor.clone(), 10 + i)))
            .collect();
        for lease in leases {
            assert!(lease.await.unwrap());
        }
        for (i, handle) in (0..).zip(items) {
            assert_eq!(handle.await.unwrap(), i);
        }
        limiter.close();
        limiter.wait().await;
        monitor.assert_ok();
        assert_drained(&limiter);
    });
}

#[test]
fn lease_requests_racing_lazy_ends_are_granted() {
    explore(lease_requests_race_lazy_ends);
}

#[test]
fn leases_and_items_share_the_limit_under_every_schedule() {
    explore(leases_and_items_share_the_limit);
}

#[test]
fn shutdown_ends_queued_requests_and_waits_for_held_leases_under_every_schedule() {
    explore(shutdown_ends_queued_requests_and_waits_for_held_leases);
}

/// With the planted bug on, a lease reports ID 0 whatever ID it was granted: a lease and a
/// running item (or two leases) then share an ID, and the monitor must see it.
#[test]
#[should_panic(expected = "share a worker ID")]
fn planted_lease_id_mixup_is_caught() {
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            task_limiter::__plant_id_mixup(false);
        }
    }
    task_limiter::__plant_id_mixup(true);
    let _off = Off;
    let n = iterations();
    let caught = Arc::new(std::sync::Mutex::new(None));
    let found = caught.clone();
    Runner::new(RandomScheduler::new(n), config()).run(move || {
        if found.lock().unwrap().is_some() {
            return;
        }
        let verdict = block_on(async {
            let limiter = Limiter::new(2);
            let monitor = Arc::new(Monitor::new(2));
            let first = limiter.acquire().await.unwrap();
            let second = limiter.acquire().await.unwrap();
            let a = monitor.enter(1, first.worker(), 0);
            let b = monitor.enter(2, second.worker(), 0);
            drop((a, b, first, second));
            limiter.close();
            limiter.wait().await;
            monitor.check()
        });
        if let Err(violations) = verdict {
            *found.lock().unwrap() = Some(violations);
        }
    });
    let verdict = caught.lock().unwrap().take();
    match verdict {
        Some(violations) => panic!("{violations}"),
        None => panic!("no schedule out of {n} caught the planted bug"),
    }
}
