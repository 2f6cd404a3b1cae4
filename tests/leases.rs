//! Leases: admission without a task (`acquire`, `try_acquire`, `run`), in the same queue and
//! under the same limits as spawned items.
#![cfg(not(feature = "shuttle"))]

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{alive_tasks, settle, settle_alive, Gate};
use task_limiter::adaptive::Aimd;
use task_limiter::{Key, Lease, Limiter, QueueOrder};
use tokio_test::task::spawn as test_spawn;
use tokio_test::{assert_pending, assert_ready};
use tokio_util::sync::CancellationToken;

const SEC: Duration = Duration::from_secs(1);

#[tokio::test]
async fn an_idle_limiter_grants_at_once_with_no_task_spawned() {
    let limiter = Limiter::new(2);
    settle().await;
    let baseline = alive_tasks();
    let mut acquire = test_spawn(limiter.acquire());
    let lease = assert_ready!(acquire.poll()).unwrap();
    assert!(lease.worker().index() < 2);
    let m = limiter.metrics();
    assert_eq!((m.running, m.submitted, m.workers), (1, 1, 0), "{m:?}");
    assert_eq!(alive_tasks(), baseline, "a lease is not a task");
    drop(lease);
    let m = limiter.metrics();
    assert_eq!((m.running, m.completed, m.queued), (0, 1, 0), "{m:?}");
}

#[tokio::test]
async fn an_idle_limiter_grants_at_once_when_parked_workers_hold_every_id() {
    let limiter = Limiter::builder()
        .limit(2)
        .keep_alive(Duration::MAX)
        .build();
    let a = limiter.spawn(async {});
    let gate = Gate::new();
    let b = limiter.spawn({
        let gate = gate.clone();
        async move { gate.wait().await }
    });
    a.await.unwrap();
    gate.open(1);
    b.await.unwrap();
    settle().await;
    let m = limiter.metrics();
    assert_eq!((m.workers, m.idle_workers), (2, 2), "{m:?}");
    let mut acquire = test_spawn(limiter.acquire());
    let first = assert_ready!(acquire.poll()).unwrap();
    let mut acquire = test_spawn(limiter.acquire());
    let second = assert_ready!(acquire.poll()).unwrap();
    assert_ne!(first.worker(), second.worker());
    assert!(first.worker().index() < 2 && second.worker().index() < 2);
    // The limit is full: a spawned item waits.
    let item = limiter.spawn_with(|id| async move { id });
    settle().await;
    assert_eq!(limiter.metrics().queued, 1);
    let freed = first.worker();
    drop(first);
    assert_eq!(
        item.await.unwrap(),
        freed,
        "the parked worker got its ID back"
    );
    drop(second);
    limiter.close();
    limiter.wait().await;
}

#[tokio::test]
async fn queued_acquires_and_items_share_one_fifo_queue() {
    let limiter = Limiter::new(1);
    let log = Arc::new(Mutex::new(Vec::new()));
    let holder = limiter.acquire().await.unwrap();
    let mut first = test_spawn(limiter.acquire());
    assert_pending!(first.poll());
    let item = limiter.spawn({
        let log = log.clone();
        async move { log.lock().unwrap().push("item") }
    });
    let mut third = test_spawn(limiter.acquire());
    assert_pending!(third.poll());
    settle().await;
    assert!(!first.is_woken());
    drop(holder);
    assert!(first.is_woken(), "the next in line is woken by the drop");
    let lease = assert_ready!(first.poll()).unwrap();
    log.lock().unwrap().push("first");
    settle().await;
    assert_pending!(third.poll());
    assert_eq!(limiter.metrics().running, 1);
    drop(lease);
    item.await.unwrap();
    let lease = assert_ready!(third.poll()).unwrap();
    log.lock().unwrap().push("third");
    drop(lease);
    assert_eq!(*log.lock().unwrap(), ["first", "item", "third"]);
}

#[tokio::test]
async fn try_acquire_never_passes_queued_work() {
    let limiter = Limiter::new(2);
    let a = limiter.try_acquire().unwrap();
    let b = limiter.try_acquire().unwrap();
    assert!(limiter.try_acquire().unwrap_err().is_full());
    let mut queued = test_spawn(limiter.acquire());
    assert_pending!(queued.poll());
    drop(a);
    // The freed place went to the queued request, not to a caller that came later.
    assert!(limiter.try_acquire().unwrap_err().is_full());
    let c = assert_ready!(queued.poll()).unwrap();
    drop((b, c));
    limiter.close();
    assert!(limiter.try_acquire().unwrap_err().is_closed());
}

#[tokio::test]
async fn dropping_a_queued_acquire_frees_its_place_at_once() {
    let limiter = Limiter::new(1);
    let holder = limiter.acquire().await.unwrap();
    let mut dropped = test_spawn(limiter.acquire());
    assert_pending!(dropped.poll());
    let mut next = test_spawn(limiter.acquire());
    assert_pending!(next.poll());
    drop(dropped);
    drop(holder);
    let lease = assert_ready!(next.poll()).unwrap();
    assert_eq!(lease.worker().index(), 0);
    drop(lease);
    let m = limiter.metrics();
    assert_eq!((m.running, m.queued, m.completed), (0, 0, 2), "{m:?}");
}

#[tokio::test]
async fn an_acquire_dropped_as_it_is_granted_passes_the_grant_on() {
    let limiter = Limiter::new(1);
    let holder = limiter.acquire().await.unwrap();
    let mut granted = test_spawn(limiter.acquire());
    assert_pending!(granted.poll());
    let mut next = test_spawn(limiter.acquire());
    assert_pending!(next.poll());
    drop(holder);
    assert!(granted.is_woken());
    // Granted, never polled again: dropped now, its grant goes to the next.
    drop(granted);
    assert!(next.is_woken());
    let lease = assert_ready!(next.poll()).unwrap();
    drop(lease);
    let m = limiter.metrics();
    assert_eq!((m.running, m.queued), (0, 0), "{m:?}");
}

/// Spawned items and leases together never run more than the limit, and their worker IDs are
/// exclusive, at every instant (checked inside the work and the leases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_ids_hold_across_items_and_leases() {
    const LIMIT: usize = 3;
    let limiter = Limiter::new(LIMIT);
    let now = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(HashSet::new()));
    let enter = {
        let (now, max, ids) = (now.clone(), max.clone(), ids.clone());
        move |id: usize| {
            assert!(id < LIMIT, "{id}");
            assert!(ids.lock().unwrap().insert(id), "{id} held twice");
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(n, Ordering::SeqCst);
        }
    };
    let leave = {
        let (now, ids) = (now.clone(), ids.clone());
        move |id: usize| {
            assert!(ids.lock().unwrap().remove(&id));
            now.fetch_sub(1, Ordering::SeqCst);
        }
    };
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let (enter, leave) = (enter.clone(), leave.clone());
        if i % 2 == 0 {
            let handle = limiter.spawn_with(move |id| async move {
                enter(id.index());
                tokio::task::yield_now().await;
                leave(id.index());
            });
            tasks.push(tokio::spawn(async move { handle.await.unwrap() }));
        } else {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                let lease = limiter.acquire().await.unwrap();
                enter(lease.worker().index());
                tokio::task::yield_now().await;
                leave(lease.worker().index());
                drop(lease);
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(max.load(Ordering::SeqCst) <= LIMIT);
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!((m.completed, m.running, m.queued), (200, 0, 0), "{m:?}");
}

#[tokio::test]
async fn keys_and_weights_count_leases() {
    let limiter = Limiter::builder().limit(4).per_key_limit(2).build();
    let a1 = limiter.build_task().key("a").acquire().await.unwrap();
    let a2 = limiter.build_task().key("a").try_acquire().unwrap();
    assert!(limiter
        .build_task()
        .key("a")
        .try_acquire()
        .unwrap_err()
        .is_full());
    let km = limiter.key_metrics("a").unwrap();
    assert_eq!((km.running, km.weight_running), (2, 2), "{km:?}");
    let mut a3 = test_spawn(limiter.build_task().key("a").acquire());
    assert_pending!(a3.poll());
    // Another key goes past the waiting one: it has its own turn.
    let heavy = limiter
        .build_task()
        .key("b")
        .weight(2)
        .acquire()
        .await
        .unwrap();
    assert_eq!(limiter.metrics().weight_running, 4);
    assert_eq!(heavy.key(), Some(&Key::from("b")));
    drop(heavy);
    assert_pending!(a3.poll());
    drop(a1);
    let a3 = assert_ready!(a3.poll()).unwrap();
    drop((a2, a3));
    assert!(limiter.key_metrics("a").is_none());
    assert_eq!(limiter.metrics().weight_running, 0);
}

#[tokio::test]
async fn priority_orders_queued_acquires() {
    let limiter = Limiter::builder()
        .limit(1)
        .queue_order(QueueOrder::Priority)
        .build();
    let holder = limiter.acquire().await.unwrap();
    let mut low = test_spawn(limiter.build_task().priority(-1).acquire());
    let mut high = test_spawn(limiter.build_task().priority(5).acquire());
    assert_pending!(low.poll());
    assert_pending!(high.poll());
    drop(holder);
    assert!(high.is_woken());
    assert_pending!(low.poll());
    drop(assert_ready!(high.poll()).unwrap());
    drop(assert_ready!(low.poll()).unwrap());
}

#[tokio::test(start_paused = true)]
async fn queue_deadlines_and_tokens_end_waiting_acquires() {
    let limiter = Limiter::new(1);
    let holder = limiter.acquire().await.unwrap();
    let err = limiter
        .build_task()
        .queue_timeout(SEC)
        .acquire()
        .await
        .unwrap_err();
    assert!(err.is_timeout() && !err.is_cancelled());
    let token = CancellationToken::new();
    let mut waiting = test_spawn(limiter.build_task().cancel_on(token.clone()).acquire());
    assert_pending!(waiting.poll());
    token.cancel();
    settle().await;
    assert!(assert_ready!(waiting.poll()).unwrap_err().is_cancelled());
    drop(holder);
    let m = limiter.metrics();
    assert_eq!((m.timed_out, m.cancelled, m.queued), (1, 1, 0), "{m:?}");
}

#[tokio::test(start_paused = true)]
async fn run_polls_inline_and_its_timeout_and_token_cut_it() {
    let limiter = Limiter::new(1);
    let caller = std::thread::current().id();
    let here = limiter
        .run(async move { std::thread::current().id() == caller })
        .await
        .unwrap();
    assert!(here);
    let err = limiter
        .build_task()
        .timeout(SEC)
        .run(std::future::pending::<()>())
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let token = CancellationToken::new();
    let run = limiter
        .build_task()
        .cancel_on(token.clone())
        .run(std::future::pending::<()>());
    let cancel = async {
        tokio::time::sleep(SEC).await;
        token.cancel();
    };
    let (result, ()) = tokio::join!(run, cancel);
    assert!(result.unwrap_err().is_cancelled());
    let m = limiter.metrics();
    assert_eq!(
        (m.completed, m.timed_out, m.cancelled, m.running),
        (1, 1, 1, 0),
        "{m:?}"
    );
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn a_panic_in_run_unwinds_through_the_caller_and_ends_the_lease() {
    use futures::FutureExt;
    let limiter = Limiter::new(1);
    let caught = std::panic::AssertUnwindSafe(limiter.run(async { panic!("boom") }))
        .catch_unwind()
        .await
        .unwrap_err();
    assert_eq!(caught.downcast_ref::<&str>(), Some(&"boom"));
    let m = limiter.metrics();
    assert_eq!((m.panicked, m.running), (1, 0), "{m:?}");
    assert_eq!(limiter.run(async { 1 }).await.unwrap(), 1);
}

#[tokio::test]
async fn set_limit_starts_queued_acquires_and_shrinking_lets_leases_finish() {
    let limiter = Limiter::new(1);
    let first = limiter.acquire().await.unwrap();
    let mut second = test_spawn(limiter.acquire());
    assert_pending!(second.poll());
    limiter.set_limit(2);
    settle().await;
    let second = assert_ready!(second.poll()).unwrap();
    limiter.set_limit(1);
    assert_eq!(limiter.metrics().running, 2, "held leases are not cut");
    let mut third = test_spawn(limiter.acquire());
    assert_pending!(third.poll());
    drop(second);
    settle().await;
    assert_pending!(third.poll());
    drop(first);
    settle().await;
    let third = assert_ready!(third.poll()).unwrap();
    assert_eq!(third.worker().index(), 0, "below the limit in force");
}

#[tokio::test]
async fn close_refuses_and_wait_waits_for_held_leases() {
    let limiter = Limiter::new(2);
    let held = limiter.acquire().await.unwrap();
    limiter.close();
    assert!(limiter.acquire().await.unwrap_err().is_closed());
    assert!(limiter.run(async {}).await.unwrap_err().is_closed());
    let mut wait = test_spawn(limiter.wait());
    settle().await;
    assert_pending!(wait.poll());
    drop(held);
    settle().await;
    assert_ready!(wait.poll());
}

#[tokio::test]
async fn shutdown_ends_queued_acquires_and_waits_for_held_leases() {
    let limiter = Limiter::new(1);
    let held = limiter.acquire().await.unwrap();
    let mut queued = test_spawn(limiter.acquire());
    assert_pending!(queued.poll());
    let mut shutdown = test_spawn(limiter.shutdown());
    assert_pending!(shutdown.poll());
    settle().await;
    assert!(assert_ready!(queued.poll()).unwrap_err().is_closed());
    assert_pending!(shutdown.poll());
    drop(held);
    settle().await;
    assert_ready!(shutdown.poll());
    let m = limiter.metrics();
    assert_eq!((m.completed, m.cancelled, m.running), (1, 1, 0), "{m:?}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_reports_leases_apart() {
    let limiter = Limiter::new(2);
    let held = limiter.acquire().await.unwrap();
    let item = limiter.spawn(tokio::time::sleep(SEC));
    let ends = async {
        tokio::time::sleep(2 * SEC).await;
        drop(held);
    };
    let (report, ()) = tokio::join!(limiter.shutdown_timeout(5 * SEC), ends);
    item.await.unwrap();
    assert_eq!((report.completed, report.leases), (2, 1), "{report:?}");
    assert_eq!(report.elapsed, 2 * SEC);
}

#[tokio::test]
async fn a_lease_on_an_adaptive_limiter_is_one_sample() {
    let limiter = Limiter::builder().adaptive(Aimd::new()).limit(10).build();
    let mut lease = limiter.acquire().await.unwrap();
    lease.set_overload(true);
    drop(lease);
    assert_eq!(limiter.limit(), 9);
    let reply = limiter
        .build_task()
        .overload_if(|status: &u16| *status == 503)
        .run(async { 503u16 })
        .await
        .unwrap();
    assert_eq!(reply, 503);
    assert_eq!(limiter.limit(), 8);
}

#[tokio::test]
async fn leases_are_not_tasks() {
    let limiter = Limiter::new(8);
    settle().await;
    let baseline = alive_tasks();
    let leases: Vec<Lease> = futures::future::join_all((0..8).map(|_| limiter.acquire()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(alive_tasks(), baseline);
    let ids: HashSet<_> = leases.iter().map(Lease::worker).collect();
    assert_eq!(ids.len(), 8);
    drop(leases);
    limiter.close();
    limiter.wait().await;
    assert_eq!(
        settle_alive(baseline).await,
        baseline - 1,
        "the manager is gone"
    );
}

#[test]
fn bounds() {
    fn send_static<T: Send + 'static>() {}
    send_static::<task_limiter::Acquire>();
    send_static::<Lease>();
    send_static::<task_limiter::Run<std::future::Ready<()>>>();
    fn send_sync<T: Send + Sync>() {}
    send_sync::<task_limiter::AcquireError>();
    send_sync::<task_limiter::TryAcquireError>();
}

/// A lease granted at once is ready at once; the coop budget still makes a loop of them yield,
/// as a loop of `Semaphore::acquire` does, so the other tasks on the thread run.
#[tokio::test]
async fn a_loop_of_ready_leases_lets_other_tasks_run() {
    let limiter = Limiter::new(4);
    let other = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn({
        let other = other.clone();
        async move { other.store(true, Ordering::SeqCst) }
    });
    let mut rounds = 0u64;
    while !other.load(Ordering::SeqCst) {
        limiter.run(async {}).await.unwrap();
        rounds += 1;
        assert!(rounds < 100_000, "the loop never yielded");
    }
}

/// The first queue deadline of a limiter whose manager already sleeps (nothing was ever sent
/// through its channel: leases queue without it) still fires.
#[tokio::test(start_paused = true)]
async fn a_first_queue_deadline_wakes_a_sleeping_manager() {
    let limiter = Limiter::new(1);
    settle().await; // the manager has run and waits
    let holder = limiter.acquire().await.unwrap();
    let err = limiter
        .build_task()
        .queue_timeout(SEC)
        .acquire()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    drop(holder);
    // The same for a spawned item handed over without the channel.
    let limiter = Limiter::builder()
        .limit(1)
        .keep_alive(Duration::MAX)
        .build();
    limiter.spawn(async {}).await.unwrap();
    settle().await; // a worker is parked: the next item is handed to it directly
    let holder = limiter.acquire().await.unwrap();
    let late = limiter
        .build_task()
        .queue_timeout(SEC)
        .spawn(async { "never" });
    assert!(late.await.unwrap_err().is_timeout());
    drop(holder);
}
