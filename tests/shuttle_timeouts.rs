//! Model checks of time limits and tokens (issue 11): a run timeout racing the item's
//! completion, a queue deadline racing the item's start, and tokens racing `shutdown`. Scheduled
//! by shuttle through shuttle-tokio, like tests/shuttle.rs.
//!
//! shuttle-tokio has no clock: its `Sleep` fires at whichever step the scheduler picks, so a
//! timeout or a deadline lands anywhere among the other tasks' steps.
//!
//! Run them with `CARGO_TARGET_DIR=target/shuttle cargo test --release --features shuttle
//! --test shuttle_timeouts`; `TASK_LIMITER_SHUTTLE_ITERATIONS=N` sets the schedules.
#![cfg(feature = "shuttle")]

mod monitor;
mod shuttle_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monitor::Monitor;
use shuttle_support::{assert_drained, block_on, explore};
use shuttle_tokio::sync::Notify;
use shuttle_tokio::task::yield_now;
use task_limiter::Limiter;
use tokio_util::sync::CancellationToken;

const HOUR: Duration = Duration::from_secs(3600);

/// Items that ended each way, over every schedule of one property: both must have happened, or
/// the check explored only one side of the race. One pair per property (tests run in parallel).
struct Sides {
    values: AtomicU64,
    timeouts: AtomicU64,
}

impl Sides {
    const fn new() -> Sides {
        Sides {
            values: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        }
    }

    fn count(&self, ok: bool) {
        match ok {
            true => self.values.fetch_add(1, Ordering::Relaxed),
            false => self.timeouts.fetch_add(1, Ordering::Relaxed),
        };
    }

    #[track_caller]
    fn assert_both(&self) {
        let values = self.values.load(Ordering::Relaxed);
        let timeouts = self.timeouts.load(Ordering::Relaxed);
        assert!(
            values > 0 && timeouts > 0,
            "values {values}, timeouts {timeouts}"
        );
    }
}

static TIMEOUT_SIDES: Sides = Sides::new();
static DEADLINE_SIDES: Sides = Sides::new();

/// Items with a run timeout wait for a release from another task: each resolves exactly once,
/// to its value or timed out (never cancelled), on an ID of its own below the limit, and the
/// counters add up with the timeouts apart.
fn timeout_racing_completion(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let release = Arc::new(Notify::new());
        let handles: Vec<_> = (0..3u64)
            .map(|i| {
                let (monitor, release) = (monitor.clone(), release.clone());
                limiter
                    .build_task()
                    .timeout(HOUR)
                    .spawn_with(move |worker| async move {
                        let _running = monitor.enter(i, worker, 0);
                        release.notified().await;
                        i
                    })
            })
            .collect();
        let releaser = shuttle_tokio::spawn(async move {
            for _ in 0..3 {
                yield_now().await;
                release.notify_one();
            }
        });
        let mut timed_out = 0;
        for (i, handle) in handles.into_iter().enumerate() {
            let result = handle.await;
            TIMEOUT_SIDES.count(result.is_ok());
            match result {
                Ok(value) => assert_eq!(value, i as u64),
                Err(err) => {
                    assert!(err.is_timeout() && !err.is_cancelled(), "{err:?}");
                    assert!(err.worker_id().is_some());
                    timed_out += 1;
                }
            }
        }
        releaser.await.unwrap();
        limiter.close();
        limiter.wait().await;
        monitor.assert_ok();
        assert_drained(&limiter);
        assert_eq!(limiter.metrics().timed_out, timed_out);
    });
}

#[test]
fn a_timeout_races_completion() {
    explore(timeout_racing_completion);
    TIMEOUT_SIDES.assert_both();
}

/// Items with queue deadlines behind a busy worker, and a limit raised from another task: an
/// item either starts (and then completes) or times out unstarted, never both, and the limiter
/// drains with its counters adding up.
fn deadline_racing_start(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit + 1));
        let handles: Vec<_> = (0..4u64)
            .map(|i| {
                let monitor = monitor.clone();
                limiter
                    .build_task()
                    .queue_timeout(HOUR)
                    .spawn_with(move |worker| async move {
                        let _running = monitor.enter(i, worker, 0);
                        yield_now().await;
                        i
                    })
            })
            .collect();
        let grower = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.set_limit(limit + 1) }
        });
        for (i, handle) in handles.into_iter().enumerate() {
            let result = handle.await;
            DEADLINE_SIDES.count(result.is_ok());
            match result {
                Ok(value) => assert_eq!(value, i as u64),
                Err(err) => {
                    assert!(err.is_timeout(), "{err:?}");
                    assert_eq!(err.worker_id(), None);
                }
            }
        }
        grower.await.unwrap();
        limiter.close();
        limiter.wait().await;
        monitor.assert_ok();
        assert_drained(&limiter);
    });
}

#[test]
fn a_deadline_races_the_start() {
    explore(deadline_racing_start);
    DEADLINE_SIDES.assert_both();
}

/// The limiter's token and the items' token cancelled from one task while another shuts the
/// limiter down: every handle resolves cancelled (or with its value), `shutdown` returns, and
/// nothing of the limiter is left.
fn tokens_racing_shutdown(limit: usize) {
    block_on(async move {
        let stop = CancellationToken::new();
        let items = CancellationToken::new();
        let limiter = Limiter::builder()
            .limit(limit)
            .cancel_on(stop.clone())
            .build();
        let handles: Vec<_> = (0..4u64)
            .map(|i| {
                let builder = limiter.build_task();
                let builder = match i % 2 {
                    0 => builder.cancel_on(items.clone()),
                    _ => builder,
                };
                builder.spawn(async move {
                    yield_now().await;
                    i
                })
            })
            .collect();
        let canceller = shuttle_tokio::spawn(async move {
            items.cancel();
            yield_now().await;
            stop.cancel();
        });
        let stopper = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                yield_now().await;
                limiter.shutdown().await;
            }
        });
        for (i, handle) in handles.into_iter().enumerate() {
            match handle.await {
                Ok(value) => assert_eq!(value, i as u64),
                Err(err) => assert!(err.is_cancelled(), "{err:?}"),
            }
        }
        canceller.await.unwrap();
        stopper.await.unwrap();
        limiter.wait().await;
        assert_drained(&limiter);
    });
}

#[test]
fn tokens_race_shutdown() {
    explore(tokens_racing_shutdown);
}
