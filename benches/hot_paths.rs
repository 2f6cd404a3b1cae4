//! Criterion benches for task-limiter's hot paths: submit, run and await 10k trivial items,
//! `spawn_with`, submission alone, and aborting queued items, with the `tokio::spawn` +
//! `Semaphore` and `JoinSet` patterns beside them for scale.
//!
//! Run them with `cargo bench --bench hot_paths` (add `-- --save-baseline before` and
//! `-- --baseline before` to compare two versions of the internals). For the full side-by-side
//! comparison at a million items, see the `compare` workspace member (`compare/src/main.rs`).

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use task_limiter::Limiter;
use tokio::runtime::{Builder, Runtime};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const ITEMS: u64 = 10_000;
const LIMIT: usize = 8;

fn runtimes() -> [(&'static str, Runtime); 2] {
    [
        (
            "current_thread",
            Builder::new_current_thread().build().expect("runtime"),
        ),
        (
            "multi_thread",
            Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .expect("runtime"),
        ),
    ]
}

async fn limiter_spawn(items: u64, limit: usize) -> u64 {
    let limiter = Limiter::new(limit);
    let handles: Vec<_> = (0..items)
        .map(|i| limiter.spawn(async move { black_box(i) }))
        .collect();
    let mut sum = 0;
    for handle in handles {
        sum += handle.await.expect("item failed");
    }
    limiter.close();
    limiter.wait().await;
    sum
}

async fn limiter_spawn_with(items: u64, limit: usize) -> u64 {
    let limiter = Limiter::new(limit);
    let handles: Vec<_> = (0..items)
        .map(|i| limiter.spawn_with(move |id| async move { black_box(i + id.index() as u64) }))
        .collect();
    let mut sum = 0;
    for handle in handles {
        sum += handle.await.expect("item failed");
    }
    limiter.close();
    limiter.wait().await;
    sum
}

async fn semaphore_spawn(items: u64, limit: usize) -> u64 {
    let sem = Arc::new(Semaphore::new(limit));
    let handles: Vec<_> = (0..items)
        .map(|i| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire().await.expect("semaphore closed");
                black_box(i)
            })
        })
        .collect();
    let mut sum = 0;
    for handle in handles {
        sum += handle.await.expect("task failed");
    }
    sum
}

async fn joinset(items: u64, limit: usize) -> u64 {
    let mut set = JoinSet::new();
    let mut sum = 0;
    for i in 0..items {
        if set.len() == limit {
            sum += set
                .join_next()
                .await
                .expect("set is full")
                .expect("task failed");
        }
        set.spawn(async move { black_box(i) });
    }
    while let Some(result) = set.join_next().await {
        sum += result.expect("task failed");
    }
    sum
}

/// Runs `submitter` in a spawned task and waits for it.
fn in_task<F>(rt: &Runtime, submitter: F) -> u64
where
    F: Future<Output = u64> + Send + 'static,
{
    rt.block_on(async { tokio::spawn(submitter).await.expect("submitter failed") })
}

/// Submit, run and await 10k items at N = 8; the submitter runs in a spawned task, as in a
/// service, so that on the multi-thread runtime it runs on a worker thread.
fn spawn_await(c: &mut Criterion) {
    let mut group = c.benchmark_group("spawn_await_10k_n8");
    group.throughput(Throughput::Elements(ITEMS));
    for (rt_name, rt) in runtimes() {
        group.bench_function(BenchmarkId::new("limiter_spawn", rt_name), |b| {
            b.iter(|| in_task(&rt, limiter_spawn(ITEMS, LIMIT)))
        });
        group.bench_function(BenchmarkId::new("limiter_spawn_with", rt_name), |b| {
            b.iter(|| in_task(&rt, limiter_spawn_with(ITEMS, LIMIT)))
        });
        group.bench_function(BenchmarkId::new("tokio_spawn_semaphore", rt_name), |b| {
            b.iter(|| in_task(&rt, semaphore_spawn(ITEMS, LIMIT)))
        });
        group.bench_function(BenchmarkId::new("joinset", rt_name), |b| {
            b.iter(|| in_task(&rt, joinset(ITEMS, LIMIT)))
        });
    }
    group.finish();
}

/// The submitter's own cost per item: `spawn` 10k items on a current-thread runtime, where
/// nothing else runs until the submitter yields. Only the submission is timed.
fn submit_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("submit_only_10k");
    group.throughput(Throughput::Elements(ITEMS));
    let rt = Builder::new_current_thread().build().expect("runtime");
    group.bench_function("limiter_spawn/current_thread", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                spent += rt.block_on(async {
                    let limiter = Limiter::new(LIMIT);
                    let start = Instant::now();
                    let handles: Vec<_> = (0..ITEMS)
                        .map(|i| limiter.spawn(async move { black_box(i) }))
                        .collect();
                    let spent = start.elapsed();
                    for handle in handles {
                        handle.await.expect("item failed");
                    }
                    limiter.close();
                    limiter.wait().await;
                    spent
                });
            }
            spent
        })
    });
    group.bench_function("tokio_spawn_semaphore/current_thread", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                spent += rt.block_on(async {
                    let sem = Arc::new(Semaphore::new(LIMIT));
                    let start = Instant::now();
                    let handles: Vec<_> = (0..ITEMS)
                        .map(|i| {
                            let sem = sem.clone();
                            tokio::spawn(async move {
                                let _permit = sem.acquire().await.expect("semaphore closed");
                                black_box(i)
                            })
                        })
                        .collect();
                    let spent = start.elapsed();
                    for handle in handles {
                        handle.await.expect("task failed");
                    }
                    spent
                });
            }
            spent
        })
    });
    group.finish();
}

/// Abort 10k queued items behind one item that holds the only slot, then await them all.
fn abort_queued(c: &mut Criterion) {
    let mut group = c.benchmark_group("abort_queued_10k");
    group.throughput(Throughput::Elements(ITEMS));
    let rt = Builder::new_current_thread().build().expect("runtime");
    group.bench_function("limiter/current_thread", |b| {
        b.iter(|| {
            rt.block_on(async {
                let limiter = Limiter::new(1);
                let (release, gate) = tokio::sync::oneshot::channel::<()>();
                let blocker = limiter.spawn(async move {
                    let _ = gate.await;
                });
                let handles: Vec<_> = (0..ITEMS)
                    .map(|i| limiter.spawn(async move { black_box(i) }))
                    .collect();
                // Let the manager move the items into its queue first, as in a service.
                tokio::task::yield_now().await;
                for handle in &handles {
                    handle.abort();
                }
                let _ = release.send(());
                blocker.await.expect("blocker failed");
                for handle in handles {
                    assert!(handle.await.expect_err("aborted").is_cancelled());
                }
                limiter.close();
                limiter.wait().await;
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = spawn_await, submit_only, abort_queued
}
criterion_main!(benches);
