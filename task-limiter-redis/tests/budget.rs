//! Against a real Redis server, started by the test on a free port (no persistence).
use std::time::Duration;

use task_limiter::Limiter;
use task_limiter_redis::ClusterBudget;

mod common;
use common::Server;

#[tokio::test]
async fn refused_configurations() {
    let limiter = Limiter::new(1);
    let err = ClusterBudget::builder("redis://127.0.0.1/", "t")
        .budget(0)
        .connect(&limiter)
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    let err = ClusterBudget::builder("nonsense://x", "t")
        .budget(2)
        .connect(&limiter)
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    let err = ClusterBudget::builder("redis://127.0.0.1/", "t")
        .budget(2)
        .ttl(Duration::from_secs(1))
        .renew_every(Duration::from_millis(600))
        .connect(&limiter)
        .await
        .unwrap_err();
    assert!(
        err.is_config() && err.to_string().contains("too short"),
        "{err}"
    );
    let err = ClusterBudget::builder("redis://127.0.0.1:1/", "t")
        .budget(2)
        .ttl(Duration::from_secs(1))
        .connect(&limiter)
        .await
        .unwrap_err();
    assert!(err.is_redis(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_takes_the_budget_and_sum_stays_within_it() {
    let server = Server::start();
    let ttl = Duration::from_secs(1);
    let busy = Limiter::new(1);
    let idle = Limiter::new(1);
    let b1 = ClusterBudget::builder(&server.url, "t")
        .budget(6)
        .ttl(ttl)
        .process_id("busy")
        .connect(&busy)
        .await
        .unwrap();
    let b2 = ClusterBudget::builder(&server.url, "t")
        .budget(6)
        .ttl(ttl)
        .process_id("idle")
        .connect(&idle)
        .await
        .unwrap();
    // A different budget on the same name is refused while these live.
    let other = Limiter::new(1);
    let err = ClusterBudget::builder(&server.url, "t")
        .budget(7)
        .ttl(ttl)
        .connect(&other)
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    for _ in 0..2000 {
        // The sleep is made when the item starts: a `Sleep` made here would count from now.
        busy.spawn(async { tokio::time::sleep(Duration::from_millis(5)).await });
    }
    let mut max_busy = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (a, b) = (busy.limit(), idle.limit());
        // The limits in force never add up to more than the budget.
        assert!(a + b <= 6, "limits {a} + {b}");
        max_busy = max_busy.max(a);
    }
    assert!(
        max_busy >= 5,
        "busy process reached only {max_busy} of 6: {:?} {:?}",
        b1.metrics(),
        b1.lease()
    );
    assert!(b1.fencing_token().is_some());
    assert_ne!(b1.fencing_token(), b2.fencing_token());
    let calls = b1.metrics().redis_calls;
    println!("busy: {calls} redis calls in 4 s");
    assert!(calls < 100, "{calls} calls");
    b2.release().await.unwrap();
    drop(b1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_items_in_bursts_keep_a_slot() {
    // Items that are gone before the renewal task samples the demand (batches of tiny items
    // every 5 ms, samples every 25 ms): the process still wants a slot while items come.
    let server = Server::start();
    let ttl = Duration::from_millis(300);
    let limiter = Limiter::new(1);
    let budget = ClusterBudget::builder(&server.url, "bursts")
        .budget(4)
        .ttl(ttl)
        .connect(&limiter)
        .await
        .unwrap();
    // Past the first TTL of the fresh state, in which nobody grows.
    tokio::time::sleep(ttl * 2).await;
    let mut at_zero = 0;
    let mut samples = 0;
    let mut handles = Vec::new();
    for round in 0..300 {
        for _ in 0..50 {
            handles.push(limiter.spawn(async {}));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Once the first batches have taken a slot.
        if round >= 40 {
            samples += 1;
            at_zero += usize::from(limiter.limit() == 0);
        }
    }
    for handle in handles {
        handle.await.unwrap();
    }
    println!(
        "bursts: limit 0 in {at_zero} of {samples} samples, {:?}",
        budget.metrics()
    );
    assert_eq!(at_zero, 0, "the limit fell to 0 while items kept coming");
    budget.release().await.unwrap();
}
