//! Priority queues: the highest priority starts first, equal priorities keep FIFO order, and
//! other queue orders ignore priorities.
#![cfg(not(feature = "shuttle"))]

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use support::{hold_a_worker, settle, DropFlag};
use task_limiter::{Limiter, QueueOrder};

/// Holds the only worker with a gate, submits `(name, priority)` items (`None`: a plain
/// `spawn`), then lets them run and returns the order they started in.
async fn start_order(
    order: QueueOrder,
    items: &[(&'static str, Option<i32>)],
) -> Vec<&'static str> {
    let limiter = Limiter::builder().limit(1).queue_order(order).build();
    let (gate, blocker) = hold_a_worker(&limiter).await;

    let log = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = items
        .iter()
        .map(|&(name, priority)| {
            let log = log.clone();
            let work = async move { log.lock().unwrap().push(name) };
            match priority {
                Some(priority) => limiter.build_task().priority(priority).spawn(work),
                None => limiter.spawn(work),
            }
        })
        .collect();
    settle().await;
    gate.open(1);
    blocker.await.unwrap();
    for handle in handles {
        handle.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    log
}

const ITEMS: &[(&str, Option<i32>)] = &[
    ("low-a", Some(-1)),
    ("plain-a", None),
    ("high-a", Some(5)),
    ("mid", Some(1)),
    ("high-b", Some(5)),
    ("zero", Some(0)),
    ("plain-b", None),
    ("high-c", Some(5)),
    ("low-b", Some(-1)),
];

#[tokio::test]
async fn higher_priorities_start_first_and_equal_ones_in_submission_order() {
    assert_eq!(
        start_order(QueueOrder::Priority, ITEMS).await,
        ["high-a", "high-b", "high-c", "mid", "plain-a", "zero", "plain-b", "low-a", "low-b"]
    );
}

#[tokio::test]
async fn fifo_and_lifo_ignore_priorities() {
    let submitted: Vec<_> = ITEMS.iter().map(|(name, _)| *name).collect();
    assert_eq!(start_order(QueueOrder::Fifo, ITEMS).await, submitted);
    let mut reversed = submitted.clone();
    reversed.reverse();
    assert_eq!(start_order(QueueOrder::Lifo, ITEMS).await, reversed);
}

#[tokio::test]
async fn an_urgent_item_jumps_a_long_queue() {
    let limiter = Limiter::builder()
        .limit(1)
        .queue_order(QueueOrder::Priority)
        .build();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..100 {
        let log = log.clone();
        handles.push(limiter.spawn(async move {
            log.lock().unwrap().push(i);
            tokio::task::yield_now().await;
        }));
    }
    // Let a few run, then submit an urgent item behind the 90-odd still queued.
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    let started_before = log.lock().unwrap().len();
    assert!(started_before < 100);
    let urgent = limiter.build_task().priority(1).spawn({
        let log = log.clone();
        async move { log.lock().unwrap().push(1000) }
    });
    urgent.await.unwrap();
    let position = log.lock().unwrap().iter().position(|&i| i == 1000).unwrap();
    assert!(
        position <= started_before + 1,
        "the urgent item started at {position}, {started_before} had started before it"
    );
    for handle in handles {
        handle.await.unwrap();
    }
}

#[tokio::test]
async fn blocking_and_stateful_items_take_priorities_too() {
    let limiter = Limiter::builder()
        .limit(1)
        .queue_order(QueueOrder::Priority)
        .worker_state(|_| ())
        .build();
    let (gate, blocker) = hold_a_worker(&limiter).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let push = |name: &'static str| {
        let log = log.clone();
        move || log.lock().unwrap().push(name)
    };
    let low = limiter.build_task().priority(1).spawn_blocking({
        let push = push("blocking-1");
        move |_| push()
    });
    let high = limiter.build_task().priority(3).spawn_with_state({
        let push = push("state-3");
        move |_: &mut (), _| Box::pin(async move { push() })
    });
    let mid = limiter.build_task().priority(2).spawn_blocking_with_state({
        let push = push("blocking-state-2");
        move |_: &mut (), _| push()
    });
    settle().await;
    gate.open(1);
    blocker.await.unwrap();
    high.await.unwrap();
    mid.await.unwrap();
    low.await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["state-3", "blocking-state-2", "blocking-1"]
    );
}

#[tokio::test]
async fn an_aborted_queued_item_is_dropped_at_once_and_skipped() {
    let limiter = Limiter::builder()
        .limit(1)
        .queue_order(QueueOrder::Priority)
        .build();
    let (gate, blocker) = hold_a_worker(&limiter).await;
    let (flag, dropped) = DropFlag::new();
    let aborted = limiter.build_task().priority(10).spawn(async move {
        let _flag = flag;
        "never"
    });
    let next = limiter.build_task().priority(1).spawn(async { "next" });
    settle().await;
    aborted.abort();
    assert!(dropped.load(Ordering::SeqCst));
    gate.open(1);
    blocker.await.unwrap();
    assert!(aborted.await.unwrap_err().is_cancelled());
    assert_eq!(next.await.unwrap(), "next");
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!((m.completed, m.cancelled, m.queued), (2, 1, 0), "{m:?}");
}

#[tokio::test]
async fn shutdown_cancels_a_priority_queue() {
    let limiter = Limiter::builder()
        .limit(1)
        .queue_order(QueueOrder::Priority)
        .build();
    let running = limiter.spawn(std::future::pending::<()>());
    settle().await;
    let queued: Vec<_> = (0..10)
        .map(|i| limiter.build_task().priority(i % 3).spawn(async move { i }))
        .collect();
    settle().await;
    limiter.shutdown().await;
    assert!(running.await.unwrap_err().is_cancelled());
    for handle in queued {
        assert!(handle.await.unwrap_err().is_cancelled());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_runs_once_under_load() {
    let limiter = Limiter::builder()
        .limit(4)
        .queue_order(QueueOrder::Priority)
        .build();
    let mut rng = fastrand::Rng::with_seed(5);
    let handles: Vec<_> = (0..3000u32)
        .map(|i| {
            let priority = rng.i32(-3..=3);
            limiter.build_task().priority(priority).spawn(async move {
                if i % 4 == 0 {
                    tokio::task::yield_now().await;
                }
                i
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), i as u32);
    }
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!((m.completed, m.queued, m.running), (3000, 0, 0));
    assert!(m.max_running <= 4);
}
