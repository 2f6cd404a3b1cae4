//! Model checks of per-key limits and weights (issue 10), scheduled by shuttle through
//! shuttle-tokio like tests/shuttle.rs: the global and per-key limits with weights hold while
//! `set_limit` and `set_key_limit` race the items, and aborts, shrinking limits and `shutdown`
//! never strand an item (heavier-than-the-limit ones included) or leave the counters off.
//!
//! Run them with
//! `CARGO_TARGET_DIR=target/shuttle cargo test --release --features shuttle --test shuttle_keys`.
#![cfg(feature = "shuttle")]

mod shuttle_support;

use std::collections::HashMap;
use std::sync::Arc;

use shuttle::sync::Mutex;

use shuttle_support::{assert_drained, block_on, explore};
use shuttle_tokio::task::yield_now;
use task_limiter::{JoinHandle, Limiter};

/// The weight running, in all and per key, as the items see it: each enters at its first poll
/// and leaves when its future is dropped, inside the span admission counts it for. A shuttle
/// lock, so that the limits can be read while it is held: read before it, a limit may be
/// stale by the time the total is taken.
#[derive(Clone, Default)]
struct Load(Arc<Mutex<(usize, HashMap<u64, usize>)>>);

struct Held(Load, u64, usize);

impl Load {
    /// Enters an item and checks the limits in force now, read while no other item can enter
    /// or leave. Limits in these checks only grow, so the limit in force now is at least the
    /// one under which any running item was admitted.
    fn enter(&self, limiter: &Limiter, key: u64, weight: usize) -> Held {
        let mut load = self.0.lock().unwrap();
        load.0 += weight;
        let total = load.0;
        let per_key = load.1.entry(key).or_default();
        *per_key += weight;
        let per_key = *per_key;
        let limit = limiter.limit();
        let key_limit = limiter.key_limit(key);
        let metrics = limiter.metrics();
        assert!(
            total <= limit || total == weight,
            "weight {total} running under a limit of {limit} (this item: key {key}, weight \
             {weight}; per key {:?}; {metrics:?})",
            load.1
        );
        assert!(
            per_key <= key_limit || per_key == weight,
            "key {key}: weight {per_key} running under its limit of {key_limit}"
        );
        Held(self.clone(), key, weight)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut load = self.0 .0.lock().unwrap();
        load.0 -= self.2;
        *load.1.get_mut(&self.1).unwrap() -= self.2;
    }
}

/// Keyed items of weights 1..=3 on two keys (one at 1, one at 2) and an unkeyed one, while
/// another task grows the global limit and a key's: the limits hold at every start, and
/// every item runs.
fn keyed_weights_hold_the_limits_while_they_grow(limit: usize) {
    block_on(async move {
        let limiter = Limiter::builder().limit(limit).per_key_limit(1).build();
        limiter.set_key_limit(1_u64, 2);
        let load = Load::default();
        let mut handles = Vec::new();
        for (i, (key, weight)) in [(0, 1), (1, 2), (0, 3), (1, 1), (2, 1)]
            .into_iter()
            .enumerate()
        {
            let load = load.clone();
            let limiter2 = limiter.clone();
            handles.push(
                limiter
                    .build_task()
                    .key(key as u64)
                    .weight(weight)
                    .spawn(async move {
                        let _held = load.enter(&limiter2, key as u64, weight as usize);
                        yield_now().await;
                        i
                    }),
            );
        }
        let grower = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                yield_now().await;
                limiter.set_limit(limit + 1);
                limiter.set_key_limit(0_u64, 2);
            }
        });
        for (i, handle) in handles.into_iter().enumerate() {
            assert_eq!(handle.await.unwrap(), i);
        }
        grower.await.unwrap();
        limiter.close();
        limiter.wait().await;
        assert_drained(&limiter);
        assert!(limiter.key_metrics(0_u64).is_none());
    });
}

#[test]
fn keyed_weights_hold_the_limits() {
    explore(keyed_weights_hold_the_limits_while_they_grow);
}

/// Submits one item per `(key, weight)`, each yielding once and returning its weight.
fn spawn_charged(limiter: &Limiter, items: &[(u64, u32)]) -> Vec<JoinHandle<u32>> {
    items
        .iter()
        .map(|&(key, weight)| {
            limiter
                .build_task()
                .key(key)
                .weight(weight)
                .spawn(async move {
                    yield_now().await;
                    weight
                })
        })
        .collect()
}

/// Keyed and heavy items (one heavier than every limit) while other tasks shrink both limits,
/// abort one item and shut the limiter down: every handle resolves (a value, or cancelled),
/// `shutdown` returns, and the counters add up with nothing left running.
fn keyed_items_resolve_through_shrink_abort_and_shutdown(limit: usize) {
    block_on(async move {
        let limiter = Limiter::builder().limit(limit).per_key_limit(2).build();
        let handles = spawn_charged(&limiter, &[(0_u64, 1), (0, 4), (1, 2), (0, 1)]);
        let heavy = limiter.build_task().weight(5).spawn(async { 5 });
        let shrinker = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                limiter.set_key_limit(0_u64, 1);
                yield_now().await;
                limiter.set_limit(1);
            }
        });
        let aborter = shuttle_tokio::spawn({
            let abort = handles[1].abort_handle();
            async move { abort.abort() }
        });
        let stopper = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                yield_now().await;
                yield_now().await;
                limiter.shutdown().await;
            }
        });
        for handle in handles.into_iter().chain([heavy]) {
            if let Err(err) = handle.await {
                assert!(err.is_cancelled());
            }
        }
        shrinker.await.unwrap();
        aborter.await.unwrap();
        stopper.await.unwrap();
        limiter.wait().await;
        assert_drained(&limiter);
        assert_eq!(limiter.metrics().weight_running, 0);
    });
}

#[test]
fn keyed_items_resolve_through_shrink_abort_shutdown() {
    explore(keyed_items_resolve_through_shrink_abort_and_shutdown);
}

/// Without shutdown: a heavier-than-the-limit item and a key's items behind a shrinking limit
/// all run to their end (none is stranded), and the key's bookkeeping is gone after.
fn heavy_items_are_never_stranded(limit: usize) {
    block_on(async move {
        let limiter = Limiter::builder().limit(limit).per_key_limit(1).build();
        let mut handles = spawn_charged(&limiter, &[(7_u64, 1), (7, 3), (8, 9), (7, 1)]);
        handles.push(limiter.build_task().weight(9).spawn(async { 9 }));
        let shrinker = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                yield_now().await;
                limiter.set_limit(1);
            }
        });
        for handle in handles {
            handle.await.unwrap();
        }
        shrinker.await.unwrap();
        limiter.close();
        limiter.wait().await;
        assert_drained(&limiter);
        assert!(limiter.key_metrics(7_u64).is_none());
    });
}

#[test]
fn heavy_items_run_to_their_end() {
    explore(heavy_items_are_never_stranded);
}
