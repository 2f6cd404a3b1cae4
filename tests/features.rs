//! Where features meet (STYLE.md 15: bugs live there): a tracing subscriber listening while
//! stateful items panic, whichever way they were submitted; blocking and stateful items under
//! `set_limit` and under `shutdown`.
// Real tokio: under the `shuttle` feature the crate runs on shuttle-tokio (tests/shuttle.rs).
#![cfg(not(feature = "shuttle"))]

mod monitor;
mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monitor::Monitor;
use support::state::{Conn, Factory};
use support::{alive_tasks, settle, settle_alive, until, Gate, Latch};
use task_limiter::{JoinHandle, Limiter, WorkerId};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

// === per-worker state ===

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stateful item: returns which value it got and how many items that value has served.
fn serve(conn: &mut Conn, id: WorkerId) -> Boxed<'_, (usize, u32)> {
    assert_eq!(conn.id, id, "an item gets the value of its own worker ID");
    conn.served += 1;
    Box::pin(async move { (conn.made, conn.served) })
}

/// A stateful item that leaves its value half-updated and panics.
fn bump_and_panic(conn: &mut Conn, _: WorkerId) -> Boxed<'_, ()> {
    Box::pin(async move {
        conn.served += 100;
        panic!("planned");
    })
}

fn bump_and_panic_blocking(conn: &mut Conn, _: WorkerId) {
    conn.served += 100;
    panic!("planned");
}

// === a subscriber while stateful items panic ===

/// Counts the item spans a subscriber saw: shows that the limiter took its traced path.
struct ItemSpans(Arc<AtomicUsize>);

impl<S: Subscriber> Layer<S> for ItemSpans {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "task_limiter.item" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The ways to submit a stateful item; each wraps the work on its way to the core.
#[derive(Clone, Copy, Debug)]
enum Way {
    Spawn,
    TaskBuilder,
    Permit,
}

async fn submit_panicking(limiter: &Limiter<Conn>, way: Way, blocking: bool) -> JoinHandle<()> {
    match (way, blocking) {
        (Way::Spawn, false) => limiter.spawn_with_state(bump_and_panic),
        (Way::Spawn, true) => limiter.spawn_blocking_with_state(bump_and_panic_blocking),
        (Way::TaskBuilder, false) => limiter.build_task().spawn_with_state(bump_and_panic),
        (Way::TaskBuilder, true) => limiter
            .build_task()
            .priority(1)
            .spawn_blocking_with_state(bump_and_panic_blocking),
        (Way::Permit, false) => {
            let permit = limiter.reserve().await.unwrap();
            permit.build_task().spawn_with_state(bump_and_panic)
        }
        (Way::Permit, true) => {
            let permit = limiter.reserve().await.unwrap();
            permit
                .build_task()
                .spawn_blocking_with_state(bump_and_panic_blocking)
        }
    }
}

/// With limit 1 every item runs on worker 0: after each way of submitting a stateful item that
/// panics, the next stateful item must get a fresh value from the factory, not the half-updated
/// one. With `traced`, a DEBUG subscriber listens on this (the runtime's) thread throughout.
async fn a_panic_leaves_a_fresh_value_behind(traced: bool) {
    let item_spans = Arc::new(AtomicUsize::new(0));
    let _subscriber = traced.then(|| {
        let subscriber = tracing_subscriber::registry()
            .with(LevelFilter::DEBUG)
            .with(ItemSpans(item_spans.clone()));
        tracing::subscriber::set_default(subscriber)
    });
    let factory = Factory::default();
    let limiter = Limiter::builder()
        .limit(1)
        .max_queued(4)
        .worker_state(factory.make())
        .build();
    assert_eq!(limiter.spawn_with_state(serve).await.unwrap(), (1, 1));
    let mut made = 1;
    for way in [Way::Spawn, Way::TaskBuilder, Way::Permit] {
        for blocking in [false, true] {
            let err = submit_panicking(&limiter, way, blocking)
                .await
                .await
                .unwrap_err();
            assert!(err.is_panic(), "{way:?}, blocking {blocking}: {err}");
            assert_eq!(err.worker_id().map(WorkerId::index), Some(0));
            made += 1;
            assert_eq!(
                limiter.spawn_with_state(serve).await.unwrap(),
                (made, 1),
                "{way:?}, blocking {blocking}, traced {traced}: the next item on worker 0 did not \
                 get a fresh value (made, served)"
            );
            assert_eq!(factory.live(), 1);
        }
    }
    if traced {
        assert_eq!(
            item_spans.load(Ordering::SeqCst),
            13,
            "the subscriber saw every item"
        );
    }
    limiter.close();
    limiter.wait().await;
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn a_panicking_stateful_item_leaves_a_fresh_value_for_its_id() {
    a_panic_leaves_a_fresh_value_behind(false).await;
}

/// The traced wrapper once dropped the "uses state" property on its way through, so that a
/// panicking stateful item left its half-updated value in place while a subscriber listened.
#[cfg(panic = "unwind")]
#[tokio::test]
async fn under_a_subscriber_a_panicking_stateful_item_leaves_a_fresh_value_for_its_id() {
    a_panic_leaves_a_fresh_value_behind(true).await;
}

// === blocking and stateful items under set_limit ===

/// A blocking stateful item that reports to `monitor` and waits at `latch`.
fn latched_blocking(
    limiter: &Limiter<Conn>,
    monitor: &Arc<Monitor>,
    item: u64,
    latch: &Latch,
) -> JoinHandle<usize> {
    let (monitor, latch) = (monitor.clone(), latch.clone());
    let since = monitor.mark_exact();
    limiter.spawn_blocking_with_state(move |conn: &mut Conn, id| {
        let _running = monitor.enter(item, id, since);
        assert_eq!(conn.id, id);
        conn.served += 1;
        latch.wait();
        id.index()
    })
}

/// An async stateful item that reports to `monitor` and waits at `gate`.
fn gated_stateful(
    limiter: &Limiter<Conn>,
    monitor: &Arc<Monitor>,
    item: u64,
    gate: &Gate,
) -> JoinHandle<usize> {
    let (monitor, gate) = (monitor.clone(), gate.clone());
    let since = monitor.mark_exact();
    limiter.spawn_with_state(move |conn: &mut Conn, id| {
        Box::pin(async move {
            let _running = monitor.enter(item, id, since);
            assert_eq!(conn.id, id);
            let before = conn.served;
            gate.wait().await;
            assert_eq!(conn.served, before, "another item touched the value");
            conn.served += 1;
            id.index()
        })
    })
}

/// Shrinking while blocking items hold every ID lets them run to their end; nothing starts
/// until fewer than the new limit run, and then only on IDs below it. Growing while stateful
/// items hold the IDs starts queued work at once, on the new IDs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_limit_shrinks_and_grows_while_blocking_and_stateful_items_run() {
    let factory = Factory::default();
    let limiter = factory.limiter(4);
    let monitor = Arc::new(Monitor::new(4));

    // Four blocking items hold every ID; shrink to 2 under them.
    let latch = Latch::new();
    let first: Vec<_> = (0..4)
        .map(|i| latched_blocking(&limiter, &monitor, i, &latch))
        .collect();
    until(|| monitor.running() == 4).await;
    monitor.set_limit(&limiter, 2);
    let gate = Gate::new();
    let second: Vec<_> = (4..10)
        .map(|i| match i % 2 {
            0 => gated_stateful(&limiter, &monitor, i, &gate),
            _ => latched_blocking(&limiter, &monitor, i, &latch),
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(monitor.started(), 4, "nothing starts over the new limit");
    assert_eq!(limiter.busy_workers().len(), 4, "running items go on");
    latch.open();
    let mut ids: Vec<_> = Vec::new();
    for handle in first {
        ids.push(handle.await.unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2, 3], "the running items ran to their end");

    // In FIFO order: items 4 (gated) and 5 (blocking) start, 5 ends, 6 (gated) starts; the two
    // gated items hold the two IDs left, and 7.. wait for them.
    until(|| monitor.started() == 7).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!((monitor.started(), monitor.running()), (7, 2));
    let busy: Vec<_> = limiter.busy_workers().iter().map(|id| id.index()).collect();
    assert!(busy.len() == 2 && busy.iter().all(|&id| id < 2), "{busy:?}");
    // Grow while they run: queued items start at once.
    let third: Vec<_> = (10..16)
        .map(|i| gated_stateful(&limiter, &monitor, i, &gate))
        .collect();
    monitor.set_limit(&limiter, 5);
    until(|| monitor.running() == 5).await;
    gate.open(100);
    // The monitor held the items that started before the growth to IDs below 2.
    for handle in second.into_iter().chain(third) {
        assert!(handle.await.unwrap() < 5);
    }
    monitor.assert_ok();
    assert_eq!(monitor.started(), 16);
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!((m.completed, m.queued, m.running), (16, 0, 0), "{m:?}");
    assert!(factory.live() <= 5, "one value per ID at most");
}

/// A seeded mix of blocking, stateful, blocking stateful and plain items on the multi-thread
/// runtime, with the limit changed every few items: the monitor holds each to the limit in
/// force, and no stateful value is lent to two items at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_and_stateful_items_under_set_limit_churn() {
    let seed = fastrand::u64(..);
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let factory = Factory::default();
    let limiter = factory.limiter(3);
    let monitor = Arc::new(Monitor::new(3));
    let mut handles = Vec::new();
    for item in 0..600u64 {
        if item % 40 == 39 {
            monitor.set_limit(&limiter, [1, 2, 3, 6][rng.usize(0..4)]);
        }
        let monitor = monitor.clone();
        // Submitted by the task that sets the limit.
        let since = monitor.mark_exact();
        let pause = rng.u64(0..200);
        let handle = match rng.u8(0..4) {
            0 => limiter.spawn_blocking(move |id| {
                let _running = monitor.enter(item, id, since);
                std::thread::sleep(Duration::from_micros(pause));
                id
            }),
            1 => limiter.spawn_blocking_with_state(move |conn: &mut Conn, id| {
                let _running = monitor.enter(item, id, since);
                assert_eq!(conn.id, id);
                conn.served += 1;
                std::thread::sleep(Duration::from_micros(pause));
                id
            }),
            2 => limiter.spawn_with_state(move |conn: &mut Conn, id| {
                Box::pin(async move {
                    let _running = monitor.enter(item, id, since);
                    assert_eq!(conn.id, id);
                    let before = conn.served;
                    tokio::time::sleep(Duration::from_micros(pause)).await;
                    assert_eq!(conn.served, before, "another item touched the value");
                    conn.served += 1;
                    id
                })
            }),
            _ => limiter.spawn_with(move |id| async move {
                let _running = monitor.enter(item, id, since);
                tokio::task::yield_now().await;
                id
            }),
        };
        handles.push(handle);
        if item % 8 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for handle in handles {
        handle.await.unwrap();
    }
    monitor.assert_ok();
    assert_eq!(monitor.started(), 600);
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!((m.completed, m.queued, m.running), (600, 0, 0), "{m:?}");
}

// === blocking and stateful items under shutdown ===

/// `shutdown` with a blocking, a blocking stateful and an async stateful item running and one
/// of every kind queued: the queue and the async item are cancelled at once; the blocking
/// closures run to their end and hold their IDs until then, and `shutdown` waits for them.
/// Then every handle has resolved, the limiter's tasks are gone, and so are the values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_blocking_and_stateful_items_running_and_queued() {
    let baseline = alive_tasks();
    let factory = Factory::default();
    let limiter = factory.limiter(3);
    let latch = Latch::new();
    let started = Arc::new(AtomicUsize::new(0));
    let blocking_state = limiter.spawn_blocking_with_state({
        let (latch, started) = (latch.clone(), started.clone());
        move |conn: &mut Conn, id| {
            started.fetch_add(1, Ordering::SeqCst);
            latch.wait();
            conn.served += 1;
            id.index()
        }
    });
    let blocking = limiter.spawn_blocking({
        let (latch, started) = (latch.clone(), started.clone());
        move |id| {
            started.fetch_add(1, Ordering::SeqCst);
            latch.wait();
            id.index()
        }
    });
    let stateful = limiter.spawn_with_state({
        let started = started.clone();
        move |_: &mut Conn, id| {
            Box::pin(async move {
                started.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                id.index()
            })
        }
    });
    until(|| started.load(Ordering::SeqCst) == 3).await;
    let queued = vec![
        limiter.spawn_with_state(|_: &mut Conn, id| Box::pin(async move { id.index() })),
        limiter.spawn_blocking_with_state(|_: &mut Conn, id| id.index()),
        limiter.spawn_blocking(|id| id.index()),
        limiter.spawn_with(|id| async move { id.index() }),
    ];

    let shutdown = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.shutdown().await }
    });
    until(|| stateful.is_finished() && queued.iter().all(JoinHandle::is_finished)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!shutdown.is_finished(), "shutdown waits for the closures");
    assert!(!blocking.is_finished() && !blocking_state.is_finished());
    let busy: Vec<_> = limiter.busy_workers();
    assert_eq!(busy.len(), 2, "the closures hold their IDs: {busy:?}");
    assert_eq!(limiter.metrics().running, 2);
    assert_eq!(started.load(Ordering::SeqCst), 3, "nothing queued started");

    latch.open();
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown hung")
        .unwrap();
    let ids = [blocking_state.await.unwrap(), blocking.await.unwrap()];
    let mut busy: Vec<_> = busy.iter().map(|id| id.index()).collect();
    busy.sort_unstable();
    let mut sorted = ids;
    sorted.sort_unstable();
    assert_eq!(busy, sorted, "the busy IDs were the closures'");
    let err = stateful.await.unwrap_err();
    assert!(err.is_cancelled());
    assert!(err.worker_id().is_some(), "it had started");
    for handle in queued {
        let err = handle.await.unwrap_err();
        assert!(err.is_cancelled());
        assert_eq!(err.worker_id(), None, "a queued item never started");
    }
    assert!(limiter.busy_workers().is_empty());
    let m = limiter.metrics();
    assert_eq!(
        (m.submitted, m.completed, m.cancelled, m.queued, m.running),
        (7, 2, 5, 0, 0),
        "{m:?}"
    );
    assert_eq!(settle_alive(baseline).await, baseline);
    drop(limiter);
    settle().await;
    assert_eq!(factory.live(), 0, "the values went with the limiter");
}
