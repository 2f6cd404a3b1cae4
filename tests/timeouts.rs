//! Time limits and cancellation (issue 11): run timeouts, queue deadlines in every queue order,
//! per-item and per-limiter tokens, `shutdown_timeout`, the `timed_out` counter, and the panic
//! on a runtime without a timer. Paused time throughout: no assertion depends on the wall clock.
#![cfg(not(feature = "shuttle"))]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{alive_tasks, settle_alive, DropFlag};
use task_limiter::{Limiter, Metrics, QueueOrder};
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

const SEC: Duration = Duration::from_secs(1);

#[track_caller]
fn assert_sums(m: &Metrics) {
    assert_eq!((m.queued, m.running), (0, 0), "{m:?}");
    assert_eq!(
        m.submitted,
        m.completed + m.panicked + m.cancelled + m.timed_out,
        "{m:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn run_timeout_cancels_the_item_and_frees_its_worker() {
    let limiter = Limiter::new(1);
    let (flag, dropped) = DropFlag::new();
    let start = Instant::now();
    let slow = limiter.build_task().timeout(SEC).spawn(async move {
        let _flag = flag;
        sleep(60 * SEC).await;
    });
    let next = limiter.spawn(async { Instant::now() });
    let err = slow.await.unwrap_err();
    assert!(
        err.is_timeout() && !err.is_cancelled() && !err.is_panic(),
        "{err:?}"
    );
    assert_eq!(err.worker_id().map(|id| id.index()), Some(0));
    assert!(dropped.load(Ordering::SeqCst), "the future is dropped");
    assert_eq!(Instant::now() - start, SEC);
    // The worker ID went to the next item at the timeout, not after 60 s.
    assert_eq!(next.await.unwrap() - start, SEC);
    assert_eq!(err.to_string(), "item on worker-0 timed out");
    let m = limiter.metrics();
    assert_eq!((m.timed_out, m.cancelled, m.completed), (1, 0, 1), "{m:?}");
    assert_sums(&m);
}

#[tokio::test(start_paused = true)]
async fn run_timeout_counts_from_the_start_not_the_submission() {
    let limiter = Limiter::new(1);
    let start = Instant::now();
    let first = limiter.spawn(sleep(10 * SEC));
    let second = limiter.build_task().timeout(2 * SEC).spawn(async {
        sleep(SEC).await;
        Instant::now()
    });
    first.await.unwrap();
    // Queued for 10 s, then ran for 1 s of its 2.
    assert_eq!(second.await.unwrap() - start, 11 * SEC);
}

#[tokio::test(start_paused = true)]
async fn a_value_ready_at_the_timeout_is_kept() {
    let limiter = Limiter::new(1);
    let handle = limiter.build_task().timeout(SEC).spawn(async {
        sleep(SEC).await;
        7
    });
    assert_eq!(handle.await.unwrap(), 7);
}

async fn queue_deadlines_drop_work_at_the_deadline(order: QueueOrder) {
    let limiter = Limiter::builder().limit(1).queue_order(order).build();
    let start = Instant::now();
    let busy = limiter.spawn(sleep(10 * SEC));
    // Running before the rest is queued, whatever the order.
    while limiter.metrics().running == 0 {
        tokio::task::yield_now().await;
    }
    let mut waiting = Vec::new();
    // Deadlines out of submission order, each its own; one without any.
    for (i, secs) in [3u64, 1, 2, 5].into_iter().enumerate() {
        let (flag, dropped) = DropFlag::new();
        let handle = limiter
            .build_task()
            .priority(i as i32)
            .deadline(start + Duration::from_secs(secs))
            .spawn(async move {
                let _flag = flag;
            });
        waiting.push((secs, dropped, handle));
    }
    let free = limiter.spawn(async { Instant::now() });
    waiting.sort_by_key(|(secs, ..)| *secs);
    for (secs, dropped, handle) in waiting {
        let err = handle.await.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(err.worker_id(), None);
        assert!(dropped.load(Ordering::SeqCst));
        // Resolved, and its work dropped, at its deadline: the queue never reached it.
        assert_eq!(
            Instant::now() - start,
            Duration::from_secs(secs),
            "{order:?}"
        );
    }
    busy.await.unwrap();
    assert_eq!(free.await.unwrap() - start, 10 * SEC);
    let m = limiter.metrics();
    assert_eq!((m.timed_out, m.completed), (4, 2), "{order:?} {m:?}");
    assert_sums(&m);
}

#[tokio::test(start_paused = true)]
async fn queue_deadlines_fifo() {
    queue_deadlines_drop_work_at_the_deadline(QueueOrder::Fifo).await;
}

#[tokio::test(start_paused = true)]
async fn queue_deadlines_lifo() {
    queue_deadlines_drop_work_at_the_deadline(QueueOrder::Lifo).await;
}

#[tokio::test(start_paused = true)]
async fn queue_deadlines_priority() {
    queue_deadlines_drop_work_at_the_deadline(QueueOrder::Priority).await;
}

#[tokio::test(start_paused = true)]
async fn each_queued_item_times_out_at_its_own_deadline() {
    let limiter = Limiter::new(1);
    let start = Instant::now();
    let busy = limiter.spawn(sleep(3600 * SEC));
    let handles: Vec<_> = (1..=2000u64)
        .map(|ms| {
            let handle = limiter
                .build_task()
                .queue_timeout(Duration::from_millis(ms))
                .spawn(async {});
            (ms, handle)
        })
        .collect();
    for (ms, handle) in handles {
        assert!(handle.await.unwrap_err().is_timeout());
        // Timer resolution: the millisecond.
        assert_eq!(Instant::now() - start, Duration::from_millis(ms));
    }
    assert_eq!(limiter.metrics().running, 1);
    busy.abort();
}

#[tokio::test(start_paused = true)]
async fn queued_deadlines_spawn_no_task_per_item() {
    let baseline = alive_tasks();
    let limiter = Limiter::new(1);
    let busy = limiter.spawn(sleep(3600 * SEC));
    let token = CancellationToken::new();
    let handles: Vec<_> = (1..=1000u64)
        .map(|ms| {
            limiter
                .build_task()
                .queue_timeout(Duration::from_millis(ms))
                .cancel_on(token.clone())
                .spawn(async {})
        })
        .collect();
    sleep(Duration::from_micros(500)).await;
    // The manager and the one worker, however many deadlines and tokens wait.
    assert_eq!(alive_tasks(), baseline + 2);
    token.cancel();
    for handle in handles {
        assert!(handle.await.unwrap_err().is_cancelled());
    }
    busy.abort();
}

#[tokio::test(start_paused = true)]
async fn limiter_token_wakes_reserve_waiters() {
    let token = CancellationToken::new();
    let limiter = Limiter::builder()
        .limit(1)
        .max_queued(1)
        .cancel_on(token.clone())
        .build();
    let held = limiter.reserve().await.unwrap();
    let waiter = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.reserve().await.map(drop) })
    };
    tokio::task::yield_now().await;
    token.cancel();
    let woken = tokio::time::timeout(SEC, waiter).await;
    assert!(woken.expect("the waiter is woken").unwrap().is_err());
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn an_item_that_starts_in_time_runs_past_its_queue_deadline() {
    let limiter = Limiter::new(1);
    let handle = limiter.build_task().queue_timeout(SEC).spawn(async {
        sleep(5 * SEC).await;
        "ran"
    });
    assert_eq!(handle.await.unwrap(), "ran");
}

#[tokio::test(start_paused = true)]
async fn a_past_deadline_times_out_at_once() {
    let limiter = Limiter::new(1);
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let handle = limiter
        .build_task()
        .deadline(Instant::now())
        .spawn(async move { flag.store(true, Ordering::SeqCst) });
    assert!(handle.is_finished());
    assert!(handle.await.unwrap_err().is_timeout());
    assert!(!ran.load(Ordering::SeqCst));
    limiter.close();
    limiter.wait().await;
    assert_sums(&limiter.metrics());
}

#[tokio::test(start_paused = true)]
async fn item_token_cancels_queued_and_running_items() {
    let limiter = Limiter::new(1);
    let token = CancellationToken::new();
    let running = limiter
        .build_task()
        .cancel_on(token.clone())
        .spawn(std::future::pending::<()>());
    let (flag, dropped) = DropFlag::new();
    let queued = limiter
        .build_task()
        .cancel_on(token.clone())
        .spawn(async move {
            let _flag = flag;
        });
    let other = limiter.spawn(async { 1 });
    tokio::task::yield_now().await;
    token.cancel();
    let err = queued.await.unwrap_err();
    assert!(err.is_cancelled() && !err.is_timeout());
    assert!(dropped.load(Ordering::SeqCst));
    assert!(running.await.unwrap_err().is_cancelled());
    assert_eq!(other.await.unwrap(), 1);
    let cancelled = limiter.build_task().cancel_on(token).spawn(async {});
    assert!(cancelled.await.unwrap_err().is_cancelled());
    let m = limiter.metrics();
    assert_eq!((m.cancelled, m.timed_out, m.completed), (3, 0, 1), "{m:?}");
}

#[tokio::test(start_paused = true)]
async fn limiter_token_shuts_the_limiter_down() {
    let baseline = alive_tasks();
    let token = CancellationToken::new();
    let limiter = Limiter::builder().limit(2).cancel_on(token.clone()).build();
    let handles: Vec<_> = (0..5)
        .map(|_| limiter.spawn(std::future::pending::<()>()))
        .collect();
    tokio::task::yield_now().await;
    token.cancel();
    limiter.wait().await;
    for handle in handles {
        assert!(handle.await.unwrap_err().is_cancelled());
    }
    assert!(limiter.is_closed());
    assert!(limiter.spawn(async {}).await.unwrap_err().is_cancelled());
    assert_eq!(settle_alive(baseline).await, baseline);
    assert_sums(&limiter.metrics());
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_under_load() {
    let baseline = alive_tasks();
    let limiter = Limiter::new(4);
    let start = Instant::now();
    // 100 items of 1.5 to 20.5 s on 4 workers: a few finish inside the 10 s.
    let handles: Vec<_> = (1..=100u64)
        .map(|secs| {
            limiter.spawn(async move {
                sleep(Duration::from_millis((secs % 20) * 1000 + 1500)).await;
                secs
            })
        })
        .collect();
    let report = limiter.shutdown_timeout(10 * SEC).await;
    assert_eq!(report.elapsed, 10 * SEC, "{report:?}");
    assert_eq!(Instant::now() - start, 10 * SEC);
    let (mut ok, mut cancelled) = (0, 0);
    for (i, handle) in handles.into_iter().enumerate() {
        match handle.await {
            Ok(secs) => {
                assert_eq!(secs, i as u64 + 1);
                ok += 1;
            }
            Err(err) => {
                assert!(err.is_cancelled(), "{err:?}");
                cancelled += 1;
            }
        }
    }
    assert!(ok > 0 && cancelled > 0);
    assert_eq!(report.completed, ok);
    assert_eq!(report.cancelled_running, 4, "{report:?}");
    assert_eq!(
        report.cancelled_queued + report.cancelled_running,
        cancelled
    );
    assert_eq!(settle_alive(baseline).await, baseline);
    assert!(limiter.busy_workers().is_empty());
    assert_sums(&limiter.metrics());
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_returns_early_once_drained() {
    let limiter = Limiter::new(2);
    let handles: Vec<_> = (0..10)
        .map(|i| {
            limiter.spawn(async move {
                sleep(SEC).await;
                i
            })
        })
        .collect();
    let report = limiter.shutdown_timeout(3600 * SEC).await;
    assert_eq!(report.elapsed, 5 * SEC);
    assert_eq!(
        (
            report.completed,
            report.cancelled_queued,
            report.cancelled_running
        ),
        (10, 0, 0)
    );
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), i);
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_with_shutdown_concurrently() {
    let baseline = alive_tasks();
    let limiter = Limiter::new(2);
    let handles: Vec<_> = (0..10)
        .map(|_| limiter.spawn(std::future::pending::<()>()))
        .collect();
    let other = limiter.clone();
    let (report, ()) = tokio::join!(limiter.shutdown_timeout(3600 * SEC), async move {
        sleep(SEC).await;
        other.shutdown().await;
    });
    assert_eq!(report.elapsed, SEC);
    assert_eq!(
        report.cancelled_running + report.cancelled_queued,
        10,
        "{report:?}"
    );
    for handle in handles {
        assert!(handle.await.unwrap_err().is_cancelled());
    }
    assert_eq!(settle_alive(baseline).await, baseline);
    // And twice at once.
    let limiter = Limiter::new(1);
    let _h = limiter.spawn(std::future::pending::<()>());
    let (a, b) = tokio::join!(
        limiter.shutdown_timeout(SEC),
        limiter.shutdown_timeout(2 * SEC)
    );
    assert_eq!((a.elapsed, b.elapsed), (SEC, SEC));
}

#[tokio::test(start_paused = true)]
async fn timed_out_sums_with_every_other_end() {
    let limiter = Limiter::new(2);
    let mut handles = Vec::new();
    for i in 0..40u64 {
        let builder = limiter.build_task();
        let handle = match i % 4 {
            0 => builder.timeout(SEC).spawn(async move {
                sleep(2 * SEC).await;
                i
            }),
            1 => builder.queue_timeout(SEC).spawn(async move {
                sleep(SEC).await;
                i
            }),
            2 => builder.spawn(async move {
                sleep(SEC / 2).await;
                i
            }),
            _ => builder.spawn(async move { panic!("item {i}") }),
        };
        handles.push(handle);
    }
    handles[2].abort();
    for handle in handles {
        let _ = handle.await;
    }
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert!(m.timed_out > 10, "{m:?}");
    assert_eq!((m.cancelled, m.panicked), (1, 10), "{m:?}");
    assert_sums(&m);
}

#[test]
fn time_limits_need_the_time_driver() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let limiter = Limiter::builder().build_on(runtime.handle());
    for call in 0..4 {
        let limiter = limiter.clone();
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || match call {
            0 => drop(limiter.build_task().timeout(SEC)),
            1 => drop(limiter.build_task().queue_timeout(SEC)),
            2 => drop(limiter.build_task().deadline(Instant::now())),
            _ => drop(limiter.shutdown_timeout(SEC)),
        }))
        .unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("enable_time"), "{message}");
    }
    // Tokens need no timer.
    let token = CancellationToken::new();
    let handle = limiter
        .build_task()
        .cancel_on(token.clone())
        .spawn(async { 1 });
    assert_eq!(runtime.block_on(handle).unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn limits_survive_the_wrappers_of_tracing_and_queue_places() {
    // With a subscriber, items carry their span in a wrapper; through a permit, a queue place.
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    let limiter = Limiter::builder().limit(1).max_queued(4).build();
    let traced = limiter
        .build_task()
        .timeout(SEC)
        .spawn(std::future::pending::<()>());
    let permit = limiter.reserve().await.unwrap();
    let placed = permit.build_task().queue_timeout(SEC / 2).spawn(async {});
    assert!(placed.await.unwrap_err().is_timeout());
    assert!(traced.await.unwrap_err().is_timeout());
    let permit = limiter.reserve().await.unwrap();
    let placed = permit
        .build_task()
        .timeout(SEC)
        .spawn(std::future::pending::<()>());
    assert!(placed.await.unwrap_err().is_timeout());
    let m = limiter.metrics();
    assert_eq!(m.timed_out, 3, "{m:?}");
}

#[tokio::test(start_paused = true)]
async fn a_started_blocking_item_is_not_cut_off_but_a_queued_one_is() {
    let limiter = Limiter::new(1);
    let token = CancellationToken::new();
    let running = limiter
        .build_task()
        .timeout(Duration::from_millis(1))
        .cancel_on(token.clone())
        .spawn_blocking(|_| {
            std::thread::sleep(Duration::from_millis(20));
            "returned"
        });
    while limiter.metrics().running == 0 {
        tokio::task::yield_now().await;
    }
    let queued = limiter
        .build_task()
        .queue_timeout(Duration::from_millis(1))
        .spawn_blocking(|_| "never");
    // Auto-advance waits for running blocking closures: move the clock past both time limits.
    tokio::time::advance(Duration::from_millis(2)).await;
    token.cancel();
    assert!(queued.await.unwrap_err().is_timeout());
    assert_eq!(running.await.unwrap(), "returned");
}
