//! Parked workers: a worker that finds the queue empty parks, still holding its ID, instead of
//! exiting; the manager hands new work to a parked worker before it spawns one; parked workers
//! end on close (once drained), on shutdown, on a `set_limit` below their ID, and after
//! [`Builder::keep_alive`](task_limiter::Builder::keep_alive). `Metrics::workers` counts the
//! live worker tasks, parked ones included, and `Metrics::idle_workers` the parked ones.
// Real tokio: under the `shuttle` feature the crate runs on shuttle-tokio (tests/shuttle.rs).
#![cfg(not(feature = "shuttle"))]

mod support;

use std::time::Duration;

use support::{alive_tasks, settle, settle_alive, Gate};
use task_limiter::{JoinHandle, Limiter, Metrics};

/// Long enough that no test here sees it run out unless it advances time past it.
const KEEP_ALIVE: Duration = Duration::from_secs(60);

fn limiter(limit: usize) -> Limiter {
    Limiter::builder()
        .limit(limit)
        .keep_alive(KEEP_ALIVE)
        .build()
}

/// Live worker tasks and parked ones.
fn workers(m: &Metrics) -> (usize, usize) {
    (m.workers, m.idle_workers)
}

/// The worker IDs that live workers hold, parked ones included, lowest first.
fn held(limiter: &Limiter) -> Vec<usize> {
    limiter.busy_workers().iter().map(|id| id.index()).collect()
}

/// Submits `n` items that wait at `gate` and return their worker ID's index.
fn gated(limiter: &Limiter, n: usize, gate: &Gate) -> Vec<JoinHandle<usize>> {
    (0..n)
        .map(|_| {
            let gate = gate.clone();
            limiter.spawn_with(move |id| async move {
                gate.wait().await;
                id.index()
            })
        })
        .collect()
}

/// Runs `n` items at once (so that `n` workers are spawned) and lets them finish: `n` workers
/// are parked afterwards. Returns their IDs, sorted.
async fn park_workers(limiter: &Limiter, n: usize) -> Vec<usize> {
    let gate = Gate::new();
    let handles = gated(limiter, n, &gate);
    settle().await;
    assert_eq!(limiter.metrics().running, n);
    gate.open(n);
    let mut ids = Vec::new();
    for handle in handles {
        ids.push(handle.await.unwrap());
    }
    settle().await;
    ids.sort_unstable();
    let m = limiter.metrics();
    assert_eq!(workers(&m), (n, n), "every worker parked: {m:?}");
    assert_eq!(held(limiter), ids, "parked workers hold their IDs");
    ids
}

#[tokio::test]
async fn a_parked_worker_takes_the_next_item_without_a_spawn() {
    let limiter = limiter(4);
    settle().await;
    let baseline = alive_tasks(); // the manager included
    for i in 0..100 {
        let id = limiter.spawn_with(|id| async move { id.index() }).await;
        // The lowest free ID first: the one parked worker's.
        assert_eq!(id.unwrap(), 0, "item {i}");
        settle().await;
        let m = limiter.metrics();
        assert_eq!(m.workers_spawned, 1, "item {i}: {m:?}");
        assert_eq!(workers(&m), (1, 1), "item {i}: {m:?}");
        assert_eq!(
            alive_tasks(),
            baseline + 1,
            "the manager and one parked worker"
        );
    }
    assert_eq!(limiter.metrics().completed, 100);
}

#[tokio::test]
async fn parked_workers_take_a_burst_before_any_new_one_is_spawned() {
    const LIMIT: usize = 4;
    let limiter = limiter(LIMIT);
    settle().await;
    let baseline = alive_tasks();
    assert_eq!(park_workers(&limiter, LIMIT).await, [0, 1, 2, 3]);
    assert_eq!(limiter.metrics().workers_spawned, LIMIT as u64);
    for round in 0..5 {
        let gate = Gate::new();
        let handles = gated(&limiter, LIMIT * 3, &gate);
        settle().await;
        let m = limiter.metrics();
        assert_eq!(
            (m.running, m.idle_workers),
            (LIMIT, 0),
            "round {round}: {m:?}"
        );
        // Parked workers are idle tasks, but never more than the limit.
        assert!(alive_tasks() <= baseline + LIMIT);
        gate.open(LIMIT * 3);
        for handle in handles {
            assert!(handle.await.unwrap() < LIMIT);
        }
    }
    settle().await;
    let m = limiter.metrics();
    assert_eq!(m.workers_spawned, LIMIT as u64, "{m:?}");
    assert_eq!(workers(&m), (LIMIT, LIMIT), "{m:?}");
}

#[tokio::test(start_paused = true)]
async fn a_parked_worker_exits_after_the_keep_alive() {
    let limiter = Limiter::builder()
        .limit(2)
        .keep_alive(Duration::from_secs(1))
        .build();
    settle().await;
    let baseline = alive_tasks();
    assert_eq!(
        limiter
            .spawn_with(|id| async move { id.index() })
            .await
            .unwrap(),
        0
    );
    settle().await;
    assert_eq!(workers(&limiter.metrics()), (1, 1));

    tokio::time::advance(Duration::from_millis(600)).await;
    settle().await;
    assert_eq!(workers(&limiter.metrics()), (1, 1), "still parked");
    // Work for it: the keep-alive starts again when it parks again.
    assert_eq!(
        limiter
            .spawn_with(|id| async move { id.index() })
            .await
            .unwrap(),
        0
    );
    settle().await;
    tokio::time::advance(Duration::from_millis(600)).await;
    settle().await;
    let m = limiter.metrics();
    assert_eq!(
        (m.workers, m.idle_workers, m.workers_spawned),
        (1, 1, 1),
        "{m:?}"
    );

    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(settle_alive(baseline).await, baseline, "the worker ended");
    let m = limiter.metrics();
    assert_eq!(workers(&m), (0, 0), "{m:?}");
    assert!(limiter.busy_workers().is_empty());

    // The limiter goes on: the next item gets a new worker, on the ID that came back.
    assert_eq!(
        limiter
            .spawn_with(|id| async move { id.index() })
            .await
            .unwrap(),
        0
    );
    assert_eq!(limiter.metrics().workers_spawned, 2);
}

/// `Duration::ZERO`: no parking, a worker that finds no work exits at once.
#[tokio::test]
async fn a_zero_keep_alive_ends_a_worker_as_soon_as_it_finds_no_work() {
    let limiter = Limiter::builder()
        .limit(2)
        .keep_alive(Duration::ZERO)
        .build();
    settle().await;
    let baseline = alive_tasks();
    for i in 1..=5 {
        assert_eq!(
            limiter
                .spawn_with(|id| async move { id.index() })
                .await
                .unwrap(),
            0
        );
        assert_eq!(settle_alive(baseline).await, baseline, "item {i}");
        let m = limiter.metrics();
        assert_eq!((m.workers, m.workers_spawned), (0, i), "{m:?}");
        assert!(limiter.busy_workers().is_empty());
    }
}

#[tokio::test]
async fn close_ends_parked_workers_once_the_queue_is_drained() {
    let baseline = alive_tasks();
    let limiter = limiter(4);
    park_workers(&limiter, 4).await;
    // One item keeps one worker busy; the other three stay parked.
    let gate = Gate::new();
    let last = gated(&limiter, 1, &gate);
    settle().await;
    assert_eq!(workers(&limiter.metrics()), (4, 3));

    let busy = held(&limiter);
    assert!(limiter.close());
    settle().await;
    let m = limiter.metrics();
    assert_eq!(workers(&m), (1, 0), "the parked workers ended: {m:?}");
    assert_eq!(held(&limiter).len(), 1);
    assert!(busy.contains(&held(&limiter)[0]));
    gate.open(1);
    for handle in last {
        handle.await.unwrap();
    }
    limiter.wait().await;
    assert_eq!(settle_alive(baseline).await, baseline);
    assert_eq!(workers(&limiter.metrics()), (0, 0));
}

#[tokio::test]
async fn dropping_every_limiter_ends_parked_workers() {
    let baseline = alive_tasks();
    let limiter = limiter(3);
    park_workers(&limiter, 3).await;
    drop(limiter);
    assert_eq!(settle_alive(baseline).await, baseline);
}

#[tokio::test]
async fn shutdown_ends_parked_workers() {
    let baseline = alive_tasks();
    let limiter = limiter(4);
    park_workers(&limiter, 3).await;
    let running = limiter.spawn(std::future::pending::<()>());
    settle().await;
    assert_eq!(workers(&limiter.metrics()), (3, 2));
    limiter.shutdown().await;
    assert!(running.await.unwrap_err().is_cancelled());
    assert_eq!(settle_alive(baseline).await, baseline);
    let m = limiter.metrics();
    assert_eq!(workers(&m), (0, 0), "{m:?}");
    assert!(limiter.busy_workers().is_empty());
}

#[tokio::test]
async fn set_limit_below_their_ids_ends_parked_workers() {
    let limiter = limiter(4);
    settle().await;
    let baseline = alive_tasks();
    park_workers(&limiter, 4).await;
    assert_eq!(alive_tasks(), baseline + 4);

    limiter.set_limit(2);
    assert_eq!(
        settle_alive(baseline + 2).await,
        baseline + 2,
        "workers 2 and 3 ended"
    );
    let m = limiter.metrics();
    assert_eq!(workers(&m), (2, 2), "{m:?}");
    assert_eq!(held(&limiter), [0, 1]);
    // The two left take the next items without a spawn.
    let gate = Gate::new();
    let handles = gated(&limiter, 4, &gate);
    settle().await;
    let m = limiter.metrics();
    assert_eq!((m.running, m.idle_workers, m.queued), (2, 0, 2), "{m:?}");
    assert_eq!(held(&limiter), [0, 1]);
    gate.open(4);
    for handle in handles {
        assert!(handle.await.unwrap() < 2, "an ID at or over the new limit");
    }
    assert_eq!(limiter.metrics().workers_spawned, 4);

    // Growing again spawns workers for the new IDs only.
    limiter.set_limit(4);
    assert_eq!(park_workers(&limiter, 4).await, [0, 1, 2, 3]);
    assert_eq!(limiter.metrics().workers_spawned, 6);
}

/// The keep-alive needs tokio's timer, but a runtime built without one must still run the
/// limiter: items run on parked workers, and close + wait finishes.
fn on_a_runtime_without_a_time_driver(runtime: tokio::runtime::Runtime) {
    runtime.block_on(async {
        for limiter in [Limiter::new(2), limiter(2)] {
            for i in 0..20 {
                assert_eq!(limiter.spawn(async move { i }).await.unwrap(), i);
            }
            let handles: Vec<_> = (0..20)
                .map(|i| {
                    limiter.spawn(async move {
                        tokio::task::yield_now().await;
                        i
                    })
                })
                .collect();
            for (i, handle) in handles.into_iter().enumerate() {
                assert_eq!(handle.await.unwrap(), i);
            }
            limiter.close();
            limiter.wait().await;
            let m = limiter.metrics();
            assert_eq!((m.completed, m.workers), (40, 0), "{m:?}");
        }
    });
}

#[test]
fn works_on_a_current_thread_runtime_without_a_time_driver() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    on_a_runtime_without_a_time_driver(runtime);
}

#[test]
fn works_on_a_multi_thread_runtime_without_a_time_driver() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    on_a_runtime_without_a_time_driver(runtime);
}
