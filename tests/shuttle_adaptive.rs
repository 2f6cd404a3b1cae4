//! Model checks of adaptive limits (issue 12), scheduled by shuttle through shuttle-tokio like
//! tests/shuttle.rs: an algorithm that swings the limit up and down on every sample, from
//! inside the items as they end on their workers, racing the user's `set_limit`, an abort,
//! (in one property) `shutdown`, and (in another) caps set with `set_limit_until` (issue 21),
//! keeps every limiter invariant: each item is admitted with the
//! weight running within the limit in force, worker IDs stay below the highest limit set, every
//! handle resolves, and the counters add up.
//!
//! Run them with
//! `CARGO_TARGET_DIR=target/shuttle cargo test --release --features shuttle --test shuttle_adaptive`.
#![cfg(feature = "shuttle")]

mod shuttle_support;

use std::sync::Arc;

use shuttle::sync::Mutex;

use shuttle_support::{assert_drained, block_on, explore};
use shuttle_tokio::task::yield_now;
use task_limiter::adaptive::{Algorithm, Sample};
use task_limiter::{JoinHandle, Limiter};

/// Returns the limits of `cycle` in turn, one per sample, and keeps the samples whose load
/// broke the limit (a panic here would be caught: the limiter drops the sample of an
/// algorithm that panics).
#[derive(Clone)]
struct Swing {
    cycle: Vec<usize>,
    next: Arc<Mutex<usize>>,
    broken: Arc<Mutex<Vec<Sample>>>,
}

impl Swing {
    fn new(cycle: Vec<usize>) -> Swing {
        Swing {
            cycle,
            next: Arc::default(),
            broken: Arc::default(),
        }
    }

    #[track_caller]
    fn assert_held(&self) {
        let broken = self.broken.lock().unwrap();
        assert!(broken.is_empty(), "admitted past the limit: {broken:?}");
    }
}

impl Algorithm for Swing {
    fn update(&mut self, sample: &Sample, _limit: usize) -> usize {
        if sample.running() > sample.limit() {
            self.broken.lock().unwrap().push(*sample);
        }
        let mut next = self.next.lock().unwrap();
        *next += 1;
        self.cycle[*next % self.cycle.len()]
    }
}

/// Items running at once, as they see it from their first poll to their end.
#[derive(Clone, Default)]
struct Running(Arc<Mutex<usize>>);

struct Held(Running);

impl Running {
    fn enter(&self, most: usize) -> Held {
        let mut running = self.0.lock().unwrap();
        *running += 1;
        assert!(
            *running <= most,
            "{} running, past every limit ever set",
            *running
        );
        Held(self.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        *self.0 .0.lock().unwrap() -= 1;
    }
}

fn spawn_items(limiter: &Limiter, running: &Running, most: usize) -> Vec<JoinHandle<usize>> {
    (0..5)
        .map(|i| {
            let running = running.clone();
            limiter.spawn_with(move |worker| async move {
                assert!(worker.index() < most, "{worker} past every limit ever set");
                let _held = running.enter(most);
                yield_now().await;
                i
            })
        })
        .collect()
}

/// The algorithm swings the limit between 1 and `limit + 1` while the user sets it too and one
/// item is aborted: every item resolves, the loads hold, the counters add up.
fn swinging_limits_keep_the_invariants(limit: usize) {
    block_on(async move {
        let cycle = vec![1, limit + 1, 2, limit];
        let most = limit + 1;
        let swing = Swing::new(cycle);
        let limiter = Limiter::builder()
            .adaptive(swing.clone())
            .limit(limit)
            .max_limit(most)
            .build();
        let running = Running::default();
        let handles = spawn_items(&limiter, &running, most);
        let user = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                yield_now().await;
                limiter.set_limit(1);
                yield_now().await;
                limiter.set_limit(most);
            }
        });
        let abort = handles[3].abort_handle();
        let aborter = shuttle_tokio::spawn(async move { abort.abort() });
        for (i, handle) in handles.into_iter().enumerate() {
            match handle.await {
                Ok(value) => assert_eq!(value, i),
                Err(err) => assert!(i == 3 && err.is_cancelled(), "item {i}: {err}"),
            }
        }
        user.await.unwrap();
        aborter.await.unwrap();
        limiter.close();
        limiter.wait().await;
        assert_drained(&limiter);
        swing.assert_held();
        assert!((1..=most).contains(&limiter.limit()));
    });
}

#[test]
fn swinging_limits_keep_every_invariant() {
    explore(swinging_limits_keep_the_invariants);
}

/// The same swings racing `shutdown`: every handle resolves (a value or cancelled), and
/// nothing is left running.
fn swinging_limits_through_shutdown(limit: usize) {
    block_on(async move {
        let most = limit + 1;
        let swing = Swing::new(vec![most, 1]);
        let limiter = Limiter::builder()
            .adaptive(swing.clone())
            .limit(1)
            .max_limit(most)
            .build();
        let running = Running::default();
        let handles = spawn_items(&limiter, &running, most);
        let stopper = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                yield_now().await;
                limiter.shutdown().await;
            }
        });
        for handle in handles {
            if let Err(err) = handle.await {
                assert!(err.is_cancelled(), "{err}");
            }
        }
        stopper.await.unwrap();
        limiter.wait().await;
        assert_drained(&limiter);
        swing.assert_held();
    });
}

#[test]
fn swinging_limits_resolve_through_shutdown() {
    explore(swinging_limits_through_shutdown);
}

/// The swings under a cap (issue 21): the user caps the algorithm's limit with
/// `set_limit_until` (a cap that holds, one already expired to its fallback, a fallback of 0
/// that stops all starts) and lifts it with `set_limit`, racing the algorithm's own changes
/// from inside the items. Every item is admitted within the limit in force, every handle
/// resolves, the counters add up.
fn capped_swings_keep_the_invariants(limit: usize) {
    block_on(async move {
        let most = limit + 1;
        let swing = Swing::new(vec![most, 1, limit]);
        let limiter = Limiter::builder()
            .adaptive(swing.clone())
            .limit(limit)
            .max_limit(most)
            .build();
        let running = Running::default();
        let handles = spawn_items(&limiter, &running, most);
        let user = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                let far = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
                limiter.set_limit_until(1, far, 0);
                yield_now().await;
                limiter.set_limit_until(most, tokio::time::Instant::now(), 2);
                yield_now().await;
                limiter.set_limit_until(2, tokio::time::Instant::now(), 0);
                yield_now().await;
                // Nothing starts until this lifts the cap.
                limiter.set_limit(most);
            }
        });
        for (i, handle) in handles.into_iter().enumerate() {
            assert_eq!(handle.await.unwrap(), i);
        }
        user.await.unwrap();
        limiter.close();
        limiter.wait().await;
        assert_drained(&limiter);
        swing.assert_held();
        assert!((1..=most).contains(&limiter.limit()));
    });
}

#[test]
fn capped_swings_keep_every_invariant() {
    explore(capped_swings_keep_the_invariants);
}
