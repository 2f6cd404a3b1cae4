//! Batches: a stream of results in input or completion order; dropping it, `abort_all`, or a
//! failure with `cancel_on_panic` / `cancel_on_error` aborts the rest at once.
#![cfg(not(feature = "shuttle"))]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use support::{settle, DropFlag, Gate};
use task_limiter::{Batch, Limiter, QueueOrder};
use tokio::time::sleep;

fn delays(ms: &[u64]) -> Vec<impl std::future::Future<Output = u64> + Send + 'static> {
    ms.iter()
        .map(|&ms| async move {
            sleep(Duration::from_millis(ms)).await;
            ms
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn results_come_in_input_order_whatever_order_items_finish_in() {
    let limiter = Limiter::new(4);
    let results: Vec<u64> = limiter
        .spawn_batch(delays(&[40, 10, 30, 20, 5, 50]))
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(results, [40, 10, 30, 20, 5, 50]);
}

#[tokio::test(start_paused = true)]
async fn unordered_results_come_as_items_finish() {
    let limiter = Limiter::new(6);
    let results: Vec<u64> = limiter
        .spawn_batch(delays(&[40, 10, 30, 20, 5, 50]))
        .unordered()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(results, [5, 10, 20, 30, 40, 50]);
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn without_an_early_end_every_item_yields_one_result_panics_included() {
    let limiter = Limiter::new(2);
    let results: Vec<_> = limiter
        .spawn_batch((0..6).map(|i| async move {
            if i % 3 == 1 {
                panic!("item {i}");
            }
            i
        }))
        .collect()
        .await;
    assert_eq!(results.len(), 6);
    for (i, result) in results.into_iter().enumerate() {
        match i % 3 {
            1 => assert!(result.unwrap_err().is_panic()),
            _ => assert_eq!(result.unwrap(), i),
        }
    }
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn cancel_on_panic_aborts_the_rest_at_once_and_ends_the_stream() {
    let limiter = Limiter::new(2);
    let gate = Gate::new();
    let started = Arc::new(AtomicUsize::new(0));
    let mut dropped = Vec::new();
    let mut work = Vec::new();
    for i in 0..10 {
        let (flag, was_dropped) = DropFlag::new();
        dropped.push(was_dropped);
        let gate = gate.clone();
        let started = started.clone();
        work.push(async move {
            let _flag = flag;
            started.fetch_add(1, Ordering::SeqCst);
            match i {
                0 => gate.wait().await, // still running when item 1 fails
                1 => panic!("item 1 failed"),
                _ => {}
            }
            i
        });
    }
    let mut batch = limiter.spawn_batch(work).cancel_on_panic();
    // Item 1 fails while item 0 (earlier in input order) still runs: the failure comes first.
    let failure = batch.next().await.unwrap().unwrap_err();
    assert!(failure.is_panic());
    assert!(batch.next().await.is_none());
    assert!(batch.is_empty());
    // Queued items were dropped before they ran; the running one goes at its next poll.
    for flag in &dropped[2..] {
        assert!(flag.load(Ordering::SeqCst));
    }
    settle().await;
    assert!(
        dropped[0].load(Ordering::SeqCst),
        "the running item was aborted"
    );
    assert_eq!(started.load(Ordering::SeqCst), 2, "items 2.. never ran");
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!((m.panicked, m.cancelled, m.completed), (1, 9, 0), "{m:?}");
}

#[tokio::test]
async fn cancel_on_error_ends_the_batch_on_an_err_value() {
    let limiter = Limiter::new(1);
    let ran = Arc::new(AtomicUsize::new(0));
    let results: Vec<_> = limiter
        .spawn_batch((0..50).map(|i| {
            let ran = ran.clone();
            async move {
                ran.fetch_add(1, Ordering::SeqCst);
                if i == 4 {
                    Err(format!("item {i}"))
                } else {
                    Ok(i)
                }
            }
        }))
        .cancel_on_error()
        .collect()
        .await;
    assert_eq!(results.len(), 5);
    assert_eq!(results[4].as_ref().unwrap().as_ref().unwrap_err(), "item 4");
    for (i, result) in results[..4].iter().enumerate() {
        assert_eq!(result.as_ref().unwrap().as_ref().unwrap(), &i);
    }
    settle().await;
    assert_eq!(
        ran.load(Ordering::SeqCst),
        5,
        "nothing after the failure ran"
    );
}

#[tokio::test]
async fn cancel_on_panic_ignores_err_values() {
    let limiter = Limiter::new(1);
    let results: Vec<_> = limiter
        .spawn_batch((0..4).map(|i| async move {
            if i == 1 {
                Err(i)
            } else {
                Ok(i)
            }
        }))
        .cancel_on_panic()
        .collect()
        .await;
    assert_eq!(results.len(), 4);
}

#[tokio::test]
async fn dropping_the_stream_aborts_what_it_has_not_yielded() {
    let limiter = Limiter::new(2);
    let mut dropped = Vec::new();
    let mut work = Vec::new();
    for i in 0..10 {
        let (flag, was_dropped) = DropFlag::new();
        dropped.push(was_dropped);
        work.push(async move {
            let _flag = flag;
            if i > 0 {
                std::future::pending::<()>().await;
            }
            i
        });
    }
    let mut batch = limiter.spawn_batch(work);
    assert_eq!(batch.next().await.unwrap().unwrap(), 0);
    settle().await;
    assert_eq!(limiter.metrics().running, 2);
    drop(batch);
    for flag in &dropped[3..] {
        assert!(flag.load(Ordering::SeqCst), "queued items go at once");
    }
    settle().await;
    assert!(dropped.iter().all(|flag| flag.load(Ordering::SeqCst)));
    assert!(limiter.is_empty(), "{:?}", limiter.metrics());
}

#[tokio::test]
async fn abort_all_cancels_the_rest_but_keeps_finished_values() {
    let limiter = Limiter::new(1);
    let gate = Gate::new();
    let mut batch = limiter.spawn_batch((0..5).map(|i| {
        let gate = gate.clone();
        async move {
            if i == 1 {
                gate.wait().await;
            }
            i
        }
    }));
    settle().await; // item 0 finished, item 1 waits
    batch.abort_all();
    let results: Vec<_> = batch.collect().await;
    assert_eq!(results.len(), 5);
    assert_eq!(*results[0].as_ref().unwrap(), 0);
    assert!(results[1..]
        .iter()
        .all(|r| r.as_ref().unwrap_err().is_cancelled()));
}

#[tokio::test]
async fn handles_of_any_kind_collect_into_a_batch() {
    let limiter = Limiter::builder()
        .limit(1)
        .queue_order(QueueOrder::Priority)
        .worker_state(|_| 100_u32)
        .build();
    let handles = vec![
        limiter.spawn_blocking(|_| 1),
        limiter.build_task().priority(9).spawn(async { 2 }),
        limiter.spawn_with_state(|base: &mut u32, _| {
            let base = *base;
            Box::pin(async move { base + 3 })
        }),
    ];
    let batch: Batch<u32> = handles.into_iter().collect();
    // Input order is the order of the handles, not the order the items ran in.
    assert_eq!(
        batch.map(Result::unwrap).collect::<Vec<_>>().await,
        [1, 2, 103]
    );
}

#[tokio::test]
async fn len_and_size_hint_count_what_is_left() {
    let limiter = Limiter::new(2);
    let mut batch = limiter.spawn_batch((0..4).map(|i| async move { i }));
    assert_eq!(
        (batch.len(), futures::Stream::size_hint(&batch)),
        (4, (4, Some(4)))
    );
    batch.next().await;
    assert_eq!(batch.len(), 3);
    let rest: Vec<_> = (&mut batch).collect().await;
    assert_eq!(rest.len(), 3);
    assert!(batch.is_empty());
    assert!(futures::stream::FusedStream::is_terminated(&batch));
    assert!(batch.next().await.is_none());

    let empty = limiter.spawn_batch(Vec::<std::future::Ready<()>>::new());
    assert!(empty.is_empty());
    assert_eq!(empty.collect::<Vec<_>>().await.len(), 0);
}

#[tokio::test]
async fn items_run_whether_or_not_the_stream_is_polled() {
    let limiter = Limiter::new(3);
    let log = Arc::new(Mutex::new(Vec::new()));
    let batch = limiter.spawn_batch((0..6).map(|i| {
        let log = log.clone();
        async move { log.lock().unwrap().push(i) }
    }));
    settle().await;
    assert_eq!(log.lock().unwrap().len(), 6);
    assert_eq!(batch.len(), 6, "results wait for the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_output_holds_under_load() {
    let limiter = Limiter::new(8);
    let mut rng = fastrand::Rng::with_seed(6);
    let work: Vec<_> = (0..2000u32)
        .map(|i| {
            let spins = rng.u32(0..4);
            async move {
                for _ in 0..spins {
                    tokio::task::yield_now().await;
                }
                i
            }
        })
        .collect();
    let results: Vec<u32> = limiter
        .spawn_batch(work)
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(results, (0..2000).collect::<Vec<_>>());
}
