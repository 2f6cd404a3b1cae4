//! Model checks of the features built on the core (issue 6): blocking items (the worker's guard
//! travels to the blocking pool and back), per-worker state (parked per ID when a worker exits),
//! the bounded queue (places released as items start or are aborted), and batches that end
//! themselves on a failure. Scheduled by shuttle through shuttle-tokio, like tests/shuttle.rs.
//!
//! Run them with
//! `CARGO_TARGET_DIR=target/shuttle cargo test --release --features shuttle --test shuttle_features`.
//! `TASK_LIMITER_SHUTTLE_ITERATIONS=N` sets the schedules per property, limit and scheduler
//! (default 300).
#![cfg(feature = "shuttle")]

mod monitor;
mod shuttle_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use monitor::Monitor;
use shuttle_support::{assert_drained, block_on, explore};
use shuttle_tokio::task::yield_now;
use task_limiter::{Limiter, WorkerId};

/// Blocking and async items, one blocking item aborted and the limiter shut down from other
/// tasks at any point: IDs stay unique and below the limit (a blocking item keeps its ID until
/// its closure returns, even when its worker task is aborted), a blocking item that started
/// resolves to its value, and `shutdown` returns with nothing left.
fn blocking_items_hold_their_ids_through_abort_and_shutdown(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let monitor = Arc::new(Monitor::new(limit));
        let mut handles = Vec::new();
        for i in 0..4u64 {
            let entered = Arc::new(AtomicBool::new(false));
            let monitor = monitor.clone();
            let handle = if i % 2 == 0 {
                let entered = entered.clone();
                limiter.spawn_blocking(move |worker| {
                    let _running = monitor.enter(i, worker, 0);
                    entered.store(true, Ordering::SeqCst);
                    shuttle::thread::yield_now();
                    i
                })
            } else {
                let entered = entered.clone();
                limiter.spawn_with(move |worker| async move {
                    let _running = monitor.enter(i, worker, 0);
                    entered.store(true, Ordering::SeqCst);
                    yield_now().await;
                    i
                })
            };
            handles.push((i, entered, handle));
        }
        let aborter = shuttle_tokio::spawn({
            let abort = handles[0].2.abort_handle();
            async move { abort.abort() }
        });
        let stopper = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                yield_now().await;
                limiter.shutdown().await;
            }
        });
        for (i, entered, handle) in handles {
            match handle.await {
                Ok(value) => assert_eq!(value, i),
                Err(err) => {
                    assert!(err.is_cancelled());
                    if i % 2 == 0 {
                        assert!(
                            !entered.load(Ordering::SeqCst),
                            "a blocking item that started cannot be cancelled"
                        );
                    }
                }
            }
        }
        aborter.await.unwrap();
        stopper.await.unwrap();
        limiter.wait().await;
        monitor.assert_ok();
        assert_drained(&limiter);
    });
}

#[test]
fn blocking_items_keep_their_ids_until_they_return() {
    explore(blocking_items_hold_their_ids_through_abort_and_shutdown);
}

/// A per-worker value that records its ID; live values are counted.
struct Value {
    id: WorkerId,
    busy: bool,
    live: Arc<AtomicUsize>,
}

impl Drop for Value {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Stateful items (async and blocking) and plain ones, submitted from two tasks so that
/// workers exit and IDs change hands between them: an item always gets the value of its own
/// ID, never one another item holds, and at most one value per ID ever lives.
fn one_value_per_worker_id(limit: usize) {
    block_on(async move {
        let live = Arc::new(AtomicUsize::new(0));
        let too_many = Arc::new(AtomicBool::new(false));
        let limiter = Limiter::builder()
            .limit(limit)
            .worker_state({
                let (live, too_many) = (live.clone(), too_many.clone());
                move |id| {
                    if live.fetch_add(1, Ordering::SeqCst) + 1 > limit {
                        too_many.store(true, Ordering::SeqCst);
                    }
                    Value {
                        id,
                        busy: false,
                        live: live.clone(),
                    }
                }
            })
            .build();
        let submit = |limiter: &Limiter<Value>, i: u64| match i % 3 {
            0 => limiter.spawn_with_state(move |value: &mut Value, id| {
                Box::pin(async move {
                    assert_eq!(value.id, id);
                    assert!(!value.busy);
                    value.busy = true;
                    yield_now().await;
                    value.busy = false;
                    i
                })
            }),
            1 => limiter.spawn_blocking_with_state(move |value: &mut Value, id| {
                assert_eq!(value.id, id);
                assert!(!value.busy);
                i
            }),
            _ => limiter.spawn(async move { i }),
        };
        let other = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                let mut handles = Vec::new();
                for i in 10..13 {
                    handles.push(submit(&limiter, i));
                    yield_now().await;
                }
                handles
            }
        });
        let mine: Vec<_> = (0..3).map(|i| submit(&limiter, i)).collect();
        for (i, handle) in (0..).zip(mine) {
            assert_eq!(handle.await.unwrap(), i);
        }
        for (i, handle) in (10..).zip(other.await.unwrap()) {
            assert_eq!(handle.await.unwrap(), i);
        }
        limiter.close();
        limiter.wait().await;
        assert_drained(&limiter);
        assert!(!too_many.load(Ordering::SeqCst), "two values for one ID");
        drop(limiter);
        // The last worker and the manager let go of the limiter's state just after `wait`
        // returns; the values go with it.
        for _ in 0..1000 {
            if live.load(Ordering::SeqCst) == 0 {
                break;
            }
            yield_now().await;
        }
        assert_eq!(
            live.load(Ordering::SeqCst),
            0,
            "values outlived the limiter"
        );
    });
}

#[test]
fn per_worker_state_one_value_per_id() {
    explore(one_value_per_worker_id);
}

/// Two producers, one waiting with `reserve` and one retrying `try_spawn`, against a queue of
/// one place, while a third task aborts one of their items: nobody waits forever for a place
/// that an aborted or started item has given back, and everything resolves.
fn places_come_back_on_start_and_abort(limit: usize) {
    block_on(async move {
        let limiter = Limiter::builder().limit(limit).max_queued(1).build();
        let waiting = shuttle_tokio::spawn({
            let limiter = limiter.clone();
            async move {
                let mut handles = Vec::new();
                for i in 0..3u64 {
                    let permit = limiter.reserve().await.unwrap();
                    handles.push(permit.spawn(async move {
                        yield_now().await;
                        i
                    }));
                }
                handles
            }
        });
        let mut retrying = Vec::new();
        for i in 10..12u64 {
            let mut work = async move { i };
            loop {
                match limiter.try_spawn(work) {
                    Ok(handle) => break retrying.push(handle),
                    Err(err) => {
                        assert!(err.is_full());
                        work = err.into_inner();
                        yield_now().await;
                    }
                }
            }
        }
        let aborter = shuttle_tokio::spawn({
            let abort = retrying[0].abort_handle();
            async move { abort.abort() }
        });
        for (i, handle) in (0..).zip(waiting.await.unwrap()) {
            assert_eq!(handle.await.unwrap(), i);
        }
        aborter.await.unwrap();
        for (i, handle) in (10..).zip(retrying) {
            match handle.await {
                Ok(value) => assert_eq!(value, i),
                Err(err) => assert!(err.is_cancelled()),
            }
        }
        // Every place is free again.
        let _ = limiter.try_reserve().unwrap();
        limiter.close();
        limiter.wait().await;
        assert_drained(&limiter);
    });
}

#[test]
fn bounded_queue_places_come_back() {
    explore(places_come_back_on_start_and_abort);
}

/// A batch ending on an `Err` while its items run and the stream is polled: the stream yields
/// results in input order up to the failure, which it yields last; every other item is done or
/// cancelled, and the limiter drains.
fn a_batch_ends_on_its_first_error(limit: usize) {
    block_on(async move {
        let limiter = Limiter::new(limit);
        let batch = limiter
            .spawn_batch((0..4u64).map(|i| async move {
                yield_now().await;
                if i == 2 {
                    Err(i)
                } else {
                    Ok(i)
                }
            }))
            .cancel_on_error();
        let results: Vec<_> = batch.collect().await;
        let last = results.last().unwrap();
        assert_eq!(*last.as_ref().unwrap(), Err(2), "{results:?}");
        for (i, result) in (0..).zip(&results[..results.len() - 1]) {
            assert_eq!(*result.as_ref().unwrap(), Ok(i));
        }
        limiter.close();
        limiter.wait().await;
        assert_drained(&limiter);
    });
}

#[test]
fn batches_end_on_their_first_error() {
    explore(a_batch_ends_on_its_first_error);
}
