//! Metrics (issue 22): refusals by reason for items and leases, `started`, the wait and run
//! time sums, limit changes, per-key counters and the bounded top-queued listing, and the
//! opt-in distributions, checked on paused time against known waits and run times.
#![cfg(not(feature = "shuttle"))]

mod support;

use std::time::Duration;

use support::{hold_a_worker, settle};
use task_limiter::{Histogram, Key, Limiter, Refusals};
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

const MS: Duration = Duration::from_millis(1);

fn refusals(queue_full: u64, queue_timeout: u64, token: u64, closed: u64) -> Refusals {
    let mut r = Refusals::default();
    r.queue_full = queue_full;
    r.queue_timeout = queue_timeout;
    r.token = token;
    r.closed = closed;
    r
}

// === refusals, items ===

#[tokio::test]
async fn items_refused_for_a_full_queue() {
    let limiter = Limiter::builder().limit(1).max_queued(1).build();
    let (gate, blocker) = hold_a_worker(&limiter).await;
    let queued = limiter.try_spawn(async {}).unwrap();
    assert!(limiter.try_spawn(async {}).unwrap_err().is_full());
    assert!(limiter.try_spawn_with(|_| async {}).unwrap_err().is_full());
    assert!(limiter.try_reserve().unwrap_err().is_full());
    let m = limiter.metrics();
    assert_eq!(m.refused, refusals(3, 0, 0, 0));
    assert_eq!(m.leases_refused, Refusals::default());
    gate.open(1);
    blocker.await.unwrap();
    queued.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn items_refused_at_their_queue_deadline() {
    let limiter = Limiter::new(1);
    let (gate, blocker) = hold_a_worker(&limiter).await;
    let late = limiter.build_task().queue_timeout(10 * MS).spawn(async {});
    assert!(late.await.unwrap_err().is_timeout());
    // A deadline passed already: refused at submission.
    let past = limiter
        .build_task()
        .deadline(Instant::now())
        .spawn(async {});
    assert!(past.await.unwrap_err().is_timeout());
    // Counted when the deadline fires, not when the queue passes the entries.
    assert_eq!(limiter.metrics().refused, refusals(0, 2, 0, 0));
    gate.open(1);
    blocker.await.unwrap();
    settle().await;
    assert_eq!(limiter.metrics().refused, refusals(0, 2, 0, 0));
}

#[tokio::test]
async fn items_refused_by_their_token() {
    let limiter = Limiter::new(1);
    let (gate, blocker) = hold_a_worker(&limiter).await;
    let token = CancellationToken::new();
    let queued = limiter
        .build_task()
        .cancel_on(token.clone())
        .spawn(async {});
    settle().await;
    token.cancel();
    assert!(queued.await.unwrap_err().is_cancelled());
    let already = limiter.build_task().cancel_on(token).spawn(async {});
    assert!(already.await.unwrap_err().is_cancelled());
    assert_eq!(limiter.metrics().refused, refusals(0, 0, 2, 0));
    gate.open(1);
    blocker.await.unwrap();
}

#[tokio::test]
async fn items_refused_by_close_and_shutdown() {
    let limiter = Limiter::new(1);
    let (_gate, _blocker) = hold_a_worker(&limiter).await;
    let queued: Vec<_> = (0..3).map(|_| limiter.spawn(async {})).collect();
    settle().await;
    limiter.close();
    assert!(limiter.spawn(async {}).await.unwrap_err().is_cancelled());
    assert!(limiter.try_spawn(async {}).unwrap_err().is_closed());
    assert!(limiter.reserve().await.is_err());
    assert_eq!(limiter.metrics().refused, refusals(0, 0, 0, 3));
    // The three still queued are refused by the shutdown; the running one is not a refusal.
    limiter.shutdown().await;
    for handle in queued {
        assert!(handle.await.unwrap_err().is_cancelled());
    }
    assert_eq!(limiter.metrics().refused, refusals(0, 0, 0, 6));
}

#[tokio::test]
async fn an_abort_is_not_a_refusal() {
    let limiter = Limiter::new(1);
    let (gate, blocker) = hold_a_worker(&limiter).await;
    let queued = limiter.spawn(async {});
    settle().await;
    queued.abort();
    assert!(queued.await.unwrap_err().is_cancelled());
    gate.open(1);
    blocker.await.unwrap();
    settle().await;
    let m = limiter.metrics();
    assert_eq!(m.refused.total(), 0);
    assert_eq!(m.cancelled, 1);
}

// === refusals, leases ===

#[tokio::test]
async fn a_failed_try_acquire_is_not_a_refusal() {
    // A probe, as the tower layer's fast path uses it before it waits.
    let limiter = Limiter::new(1);
    let lease = limiter.try_acquire().unwrap();
    assert!(limiter.try_acquire().unwrap_err().is_full());
    assert!(limiter
        .build_task()
        .key("k")
        .try_acquire()
        .unwrap_err()
        .is_full());
    drop(lease);
    limiter.close();
    assert!(limiter.try_acquire().unwrap_err().is_closed());
    let m = limiter.metrics();
    assert_eq!(m.leases_refused, Refusals::default());
    assert_eq!(m.refused, Refusals::default());
}

#[tokio::test(start_paused = true)]
async fn leases_refused_at_their_queue_deadline() {
    let limiter = Limiter::new(1);
    let lease = limiter.acquire().await.unwrap();
    let err = limiter
        .build_task()
        .queue_timeout(10 * MS)
        .acquire()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let err = limiter
        .build_task()
        .deadline(Instant::now())
        .run(async {})
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(limiter.metrics().leases_refused, refusals(0, 2, 0, 0));
    drop(lease);
}

#[tokio::test]
async fn leases_refused_by_their_token() {
    let limiter = Limiter::new(1);
    let lease = limiter.acquire().await.unwrap();
    let token = CancellationToken::new();
    let waiting = tokio::spawn(limiter.build_task().cancel_on(token.clone()).acquire());
    settle().await;
    token.cancel();
    assert!(waiting.await.unwrap().unwrap_err().is_cancelled());
    let err = limiter
        .build_task()
        .cancel_on(token)
        .acquire()
        .await
        .unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(limiter.metrics().leases_refused, refusals(0, 0, 2, 0));
    drop(lease);
}

#[tokio::test]
async fn leases_refused_by_close_and_shutdown() {
    let limiter = Limiter::new(1);
    let lease = limiter.acquire().await.unwrap();
    let waiting = tokio::spawn(limiter.acquire());
    settle().await;
    limiter.close();
    assert!(limiter.acquire().await.unwrap_err().is_closed());
    assert!(limiter.run(async {}).await.unwrap_err().is_closed());
    assert_eq!(limiter.metrics().leases_refused, refusals(0, 0, 0, 2));
    let shutdown = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.shutdown().await }
    });
    let err = waiting.await.unwrap().unwrap_err();
    assert!(err.is_closed());
    // Shutdown waits for held leases.
    drop(lease);
    shutdown.await.unwrap();
    let m = limiter.metrics();
    assert_eq!(m.leases_refused, refusals(0, 0, 0, 3));
    assert_eq!(m.refused, Refusals::default());
}

// === started, wait and run time sums, limit changes ===

#[tokio::test(start_paused = true)]
async fn started_counts_items_and_leases() {
    let limiter = Limiter::new(2);
    for _ in 0..3 {
        limiter.spawn(async {}).await.unwrap();
    }
    limiter.run(async {}).await.unwrap();
    drop(limiter.try_acquire().unwrap());
    assert_eq!(limiter.metrics().started, 5);
}

#[tokio::test(start_paused = true)]
async fn wait_and_run_time_are_the_sums_of_the_waits_and_runs() {
    let limiter = Limiter::new(1);
    // Three items of 100 ms, one at a time: they wait 0, 100 and 200 ms.
    let handles: Vec<_> = (0..3)
        .map(|_| limiter.spawn(async { sleep(100 * MS).await }))
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    let m = limiter.metrics();
    assert_eq!(m.wait_time, 300 * MS);
    assert_eq!(m.run_time, 300 * MS);
    // Nothing waits or runs now: the sums stand still.
    sleep(Duration::from_secs(5)).await;
    let later = limiter.metrics();
    assert_eq!((later.wait_time, later.run_time), (m.wait_time, m.run_time));
}

#[tokio::test(start_paused = true)]
async fn wait_and_run_time_count_leases() {
    let limiter = Limiter::new(1);
    let first = limiter.acquire().await.unwrap();
    let second = tokio::spawn({
        let limiter = limiter.clone();
        async move {
            let lease = limiter.acquire().await.unwrap();
            sleep(30 * MS).await;
            drop(lease);
        }
    });
    sleep(50 * MS).await;
    drop(first);
    second.await.unwrap();
    let m = limiter.metrics();
    assert_eq!(m.wait_time, 50 * MS);
    assert_eq!(m.run_time, 80 * MS);
}

#[tokio::test(start_paused = true)]
async fn wait_time_counts_waits_that_timed_out() {
    let limiter = Limiter::new(1);
    let lease = limiter.acquire().await.unwrap();
    let err = limiter
        .build_task()
        .queue_timeout(40 * MS)
        .acquire()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    drop(lease);
    let m = limiter.metrics();
    // The request waited its 40 ms (and was passed by the lease's end, at the same instant).
    assert_eq!(m.wait_time, 40 * MS);
    assert_eq!(m.started, 1);
}

#[tokio::test(start_paused = true)]
async fn run_time_counts_runs_cut_by_their_timeout() {
    let limiter = Limiter::new(1);
    let handle = limiter
        .build_task()
        .timeout(25 * MS)
        .spawn(std::future::pending::<()>());
    assert!(handle.await.unwrap_err().is_timeout());
    settle().await;
    assert_eq!(limiter.metrics().run_time, 25 * MS);
}

#[tokio::test(start_paused = true)]
async fn limit_changes_count_changes_of_value() {
    let limiter = Limiter::new(2);
    assert_eq!(limiter.metrics().limit_changes, 0);
    limiter.set_limit(4);
    limiter.set_limit(4); // no change
    assert_eq!(limiter.metrics().limit_changes, 1);
    limiter.set_limit_until(8, Instant::now() + 100 * MS, 3);
    assert_eq!(limiter.metrics().limit_changes, 2);
    sleep(150 * MS).await;
    let m = limiter.metrics();
    assert_eq!((m.limit, m.limit_changes), (3, 3));
}

// === per key ===

#[tokio::test]
async fn key_metrics_count_started_and_ended() {
    let limiter = Limiter::builder().limit(4).per_key_limit(1).build();
    let key = Key::from("tenant");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let mut rx = rx.clone();
            limiter.build_task().key(&key).spawn(async move {
                let _ = rx.wait_for(|go| *go).await;
            })
        })
        .collect();
    let lease = limiter.build_task().key("other").acquire().await.unwrap();
    settle().await;
    let m = limiter.key_metrics(&key).unwrap();
    assert_eq!((m.queued, m.running, m.started, m.ended), (2, 1, 1, 0));
    let other = limiter.key_metrics("other").unwrap();
    assert_eq!((other.started, other.ended), (1, 0));
    drop(lease);
    // A lease given back without a wait ... the other key's bookkeeping goes with it.
    assert!(limiter.key_metrics("other").is_none());
    tx.send(true).unwrap();
    // Keep the key alive with one more item, to read its counts after the three.
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    for handle in handles {
        handle.await.unwrap();
    }
    let last = limiter.build_task().key(&key).spawn(async move {
        let _ = hold_rx.await;
    });
    settle().await;
    let m = limiter.key_metrics(&key);
    // The key's lane went when its three items ended (nothing of it was left), so the counts
    // start again with the new item.
    assert_eq!(m.map(|m| (m.started, m.ended)), Some((1, 0)));
    hold_tx.send(()).unwrap();
    last.await.unwrap();
}

#[tokio::test]
async fn keys_most_queued_is_bounded_and_ordered() {
    let limiter = Limiter::builder().limit(64).per_key_limit(1).build();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    // Key i has i + 1 items: one runs, i wait.
    for i in 0..20usize {
        for _ in 0..=i {
            let mut rx = rx.clone();
            handles.push(
                limiter
                    .build_task()
                    .key(format!("key-{i:02}"))
                    .spawn(async move {
                        let _ = rx.wait_for(|go| *go).await;
                    }),
            );
        }
    }
    settle().await;
    let top = limiter.keys_most_queued(3);
    let listed: Vec<_> = top.iter().map(|(k, m)| (k.clone(), m.queued)).collect();
    assert_eq!(
        listed,
        [
            (Key::from("key-19"), 19),
            (Key::from("key-18"), 18),
            (Key::from("key-17"), 17)
        ]
    );
    assert!(limiter.keys_most_queued(0).is_empty());
    // Keys with nothing queued are not listed: key-00's one item runs.
    let all = limiter.keys_most_queued(100);
    assert_eq!(all.len(), 19);
    assert!(all.windows(2).all(|w| w[0].1.queued >= w[1].1.queued));
    tx.send(true).unwrap();
    for handle in handles {
        handle.await.unwrap();
    }
    assert!(limiter.keys_most_queued(10).is_empty());
}

// === distributions ===
//
// Each item makes its `Sleep` when it starts: one made at submission would count its time
// from then.

/// Whether `got` is within the 6.25 % a quantile may be off a recorded `want`.
fn near(got: Duration, want: Duration) -> bool {
    got.abs_diff(want).as_secs_f64() <= want.as_secs_f64() / 16.0
}

#[tokio::test(start_paused = true)]
async fn distributions_are_off_by_default() {
    let limiter = Limiter::new(2);
    limiter.spawn(async {}).await.unwrap();
    assert!(limiter.distributions().is_none());
    let off = Limiter::builder().distributions(false).build();
    assert!(off.distributions().is_none());
}

#[tokio::test(start_paused = true)]
async fn item_quantiles_match_known_waits_and_run_times() {
    let limiter = Limiter::builder().limit(1).distributions(true).build();
    // Ten items of 10 ms, one at a time: they wait 0, 10, ..., 90 ms.
    let handles: Vec<_> = (0..10)
        .map(|_| limiter.spawn(async { sleep(10 * MS).await }))
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    let d = limiter.distributions().unwrap();
    let wait: &Histogram = &d.queue_wait;
    assert_eq!(wait.count(), 10);
    assert_eq!(wait.sum(), 450 * MS);
    assert_eq!(wait.mean(), Some(45 * MS));
    assert_eq!(wait.quantile(0.0), Some(Duration::ZERO));
    for (q, want) in [(0.2, 10), (0.5, 40), (0.9, 80), (1.0, 90)] {
        let got = wait.quantile(q).unwrap();
        assert!(near(got, want * MS), "q{q}: {got:?}, want {want} ms");
    }
    let run = &d.run_time;
    assert_eq!((run.count(), run.sum()), (10, 100 * MS));
    assert!(near(run.quantile(0.5).unwrap(), 10 * MS));
    assert!(near(run.quantile(1.0).unwrap(), 10 * MS));
    // The always-on sums agree with the distributions'.
    let m = limiter.metrics();
    assert_eq!((m.wait_time, m.run_time), (wait.sum(), run.sum()));
}

#[tokio::test(start_paused = true)]
async fn lease_quantiles_match_known_waits_and_run_times() {
    let limiter = Limiter::builder().limit(1).distributions(true).build();
    let first = limiter.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.run(async { sleep(70 * MS).await }).await.unwrap() }
    });
    sleep(200 * MS).await;
    drop(first);
    waiter.await.unwrap();
    let d = limiter.distributions().unwrap();
    // The first lease waited for nothing and ran 200 ms; the second waited 200 ms, ran 70.
    assert_eq!(d.queue_wait.count(), 2);
    assert_eq!(d.queue_wait.quantile(0.5), Some(Duration::ZERO));
    assert!(near(d.queue_wait.quantile(1.0).unwrap(), 200 * MS));
    assert_eq!(d.run_time.sum(), 270 * MS);
    assert!(near(d.run_time.quantile(0.5).unwrap(), 70 * MS));
    assert!(near(d.run_time.quantile(1.0).unwrap(), 200 * MS));
}

#[tokio::test(start_paused = true)]
async fn distributions_time_cut_and_aborted_runs_but_not_unstarted_waits() {
    let limiter = Limiter::builder().limit(1).distributions(true).build();
    let cut = limiter
        .build_task()
        .timeout(30 * MS)
        .spawn(std::future::pending::<()>());
    let late = limiter.build_task().queue_timeout(10 * MS).spawn(async {});
    assert!(late.await.unwrap_err().is_timeout());
    assert!(cut.await.unwrap_err().is_timeout());
    let aborted = limiter.spawn(std::future::pending::<()>());
    sleep(20 * MS).await;
    aborted.abort();
    assert!(aborted.await.unwrap_err().is_cancelled());
    settle().await;
    let d = limiter.distributions().unwrap();
    // Two started (the cut one, the aborted one); the timed-out one never did.
    assert_eq!(d.queue_wait.count(), 2);
    assert_eq!(d.run_time.count(), 2);
    assert_eq!(d.run_time.sum(), 50 * MS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributions_count_every_item_under_load() {
    let limiter = Limiter::builder().limit(4).distributions(true).build();
    let handles: Vec<_> = (0..2000)
        .map(|i| {
            limiter.spawn(async move {
                if i % 3 == 0 {
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let leases: Vec<_> = (0..200)
        .map(|_| tokio::spawn(limiter.run(tokio::task::yield_now())))
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    for lease in leases {
        lease.await.unwrap().unwrap();
    }
    let d = limiter.distributions().unwrap();
    assert_eq!(d.queue_wait.count(), 2200);
    assert_eq!(d.run_time.count(), 2200);
    let m = limiter.metrics();
    assert_eq!(m.started, 2200);
    assert!(d.queue_wait.quantile(0.5) <= d.queue_wait.quantile(0.99));
}
