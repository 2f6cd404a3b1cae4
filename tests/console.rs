//! What tokio-console sees: the limiter's tasks are named `{name}.manager` and
//! `{name}.worker-{id}`, and thousands of items never make more than `limit` distinct workers.
//!
//! Needs tokio's task instrumentation:
//! `RUSTFLAGS="--cfg tokio_unstable" cargo test --features console --test console`.
#![cfg(all(tokio_unstable, feature = "console", not(feature = "shuttle")))]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use task_limiter::Limiter;
use tracing::field::{Field, Visit};
use tracing::span::Attributes;
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Counts the `runtime.spawn` spans that tokio makes for every spawned task, by `task.name`.
struct SpawnNames(&'static Mutex<BTreeMap<String, usize>>);

fn is_spawn(metadata: &Metadata<'_>) -> bool {
    metadata.target() == "tokio::task" && metadata.name() == "runtime.spawn"
}

impl<S: Subscriber> Layer<S> for SpawnNames {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if is_spawn(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        is_spawn(metadata)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, _: &tracing::span::Id, _: Context<'_, S>) {
        if !is_spawn(attrs.metadata()) {
            return;
        }
        let mut name = TaskName(None);
        attrs.record(&mut name);
        let name = name.0.expect("runtime.spawn spans carry task.name");
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name)
            .or_default() += 1;
    }
}

struct TaskName(Option<String>);

impl Visit for TaskName {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "task.name" {
            // Recorded with `%`, so `Debug` prints the name as it is.
            self.0 = Some(format!("{value:?}"));
        }
    }
}

#[test]
fn console_sees_one_manager_and_at_most_limit_workers() {
    const NAME: &str = "console-test";
    const LIMIT: usize = 4;
    const ROUNDS: usize = 20;
    const ITEMS_PER_ROUND: usize = 500;

    let names: &'static Mutex<BTreeMap<String, usize>> = Box::leak(Box::default());
    // Global: tokio makes the spans on whichever runtime thread spawns.
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(SpawnNames(names)))
        .expect("no other global subscriber in this test binary");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let metrics = runtime.block_on(async {
        let limiter = Limiter::builder().limit(LIMIT).name(NAME).build();
        // Rounds let the queue run dry: the workers park between them, and the same named
        // tasks take the next round (the first version's workers exited at every round, and the
        // console's live view lost track of them).
        for round in 0..ROUNDS {
            let handles: Vec<_> = (0..ITEMS_PER_ROUND)
                .map(|i| {
                    limiter.spawn_with(move |worker| async move {
                        if i % 2 == 0 {
                            tokio::task::yield_now().await;
                        }
                        worker
                    })
                })
                .collect();
            for handle in handles {
                let worker = handle.await.unwrap();
                assert!(worker.index() < LIMIT, "round {round}: {worker}");
            }
        }
        limiter.close();
        limiter.wait().await;
        limiter.metrics()
    });
    drop(runtime);

    assert_eq!(metrics.completed, (ROUNDS * ITEMS_PER_ROUND) as u64);
    let names = names.lock().unwrap_or_else(PoisonError::into_inner);
    let ours: BTreeMap<&str, usize> = names
        .iter()
        .filter(|(name, _)| name.starts_with(NAME))
        .map(|(name, &count)| (name.as_str(), count))
        .collect();

    assert_eq!(
        ours.get(format!("{NAME}.manager").as_str()),
        Some(&1),
        "one manager task: {ours:?}"
    );
    let workers: Vec<&str> = ours
        .keys()
        .copied()
        .filter(|name| *name != format!("{NAME}.manager"))
        .collect();
    assert!(!workers.is_empty(), "worker tasks were named: {ours:?}");
    assert!(
        workers.len() <= LIMIT,
        "at most {LIMIT} distinct workers: {workers:?}"
    );
    for name in &workers {
        let id = name
            .strip_prefix(&format!("{NAME}.worker-"))
            .and_then(|id| id.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("unexpected task name {name:?}"));
        assert!(id < LIMIT, "{name}");
    }
    // Every task the limiter spawned was named: the manager plus each worker spawn.
    let spawned: usize = ours.values().sum();
    assert_eq!(spawned as u64, metrics.workers_spawned + 1, "{ours:?}");
    // Parked between rounds, each worker is one stable task for the whole run.
    assert!(
        ours.values().all(|&count| count == 1),
        "each task spawned once: {ours:?}"
    );
}
