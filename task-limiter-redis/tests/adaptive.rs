//! Adaptive limiters under a cluster budget (issue 21), against a real `redis-server` started
//! by the test: four limiters in one process, each with its own `ClusterBudget` on one name, as
//! four processes would be. Each one's limit in force is its algorithm's capped by its lease.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use task_limiter::adaptive::Aimd;
use task_limiter::Limiter;
use task_limiter_redis::ClusterBudget;

mod common;
use common::Server;

const BUDGET: usize = 12;

/// Items running at once across every limiter of the test, and the most ever seen.
#[derive(Clone, Default)]
struct Overlap {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

/// Counts one running item until dropped (its end, or its cancellation by a shutdown).
struct Running(Overlap);

impl Overlap {
    fn start(&self) -> Running {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        Running(self.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One simulated process: an adaptive limiter and its budget.
struct Process {
    name: &'static str,
    limiter: Limiter,
    budget: ClusterBudget,
}

/// Four adaptive limiters share a budget of 12: two busy ones whose `Aimd` may go up to 40,
/// a busy one whose algorithm may not go past 3 (`max_limit`), and an app-limited one (one
/// caller, one item at a time) that starts at 20. Items report no overload, so each `Aimd`
/// grows whenever its own limit, not its lease, held its items back.
///
/// Asserts, sampling every 50 ms for 4 s: the items running at once across all four, and the
/// limits in force added up, never exceed the budget; the demand each one reports to Redis is
/// what its algorithm wants when it has the work for it: at most 3 for the one held at 3 (it
/// has hundreds queued: running + queued would ask for the whole budget), at most 1 for the
/// app-limited one (its algorithm's 20 would hoard slots it does not use), never above a busy
/// one's own limit, and the busy ones, capped by their share, go on asking for their own
/// limit, above the slots they hold. The budget is used: the slots held add up to 12. Asking
/// for more than it holds does not make a process call Redis at every poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_limiters_share_a_cluster_budget_and_report_what_they_want() {
    let server = Server::start();
    let ttl = Duration::from_secs(1);
    let overlap = Overlap::default();
    let mut processes = Vec::new();
    for (name, start, max) in [
        ("busy-a", 2, 40),
        ("busy-b", 2, 40),
        ("held", 2, 3),
        ("light", 20, 40),
    ] {
        let limiter = Limiter::builder()
            .adaptive(Aimd::new())
            .limit(start)
            .max_limit(max)
            .build();
        let budget = ClusterBudget::builder(&server.url, "adaptive")
            .budget(BUDGET)
            .ttl(ttl)
            .process_id(name)
            .connect(&limiter)
            .await
            .unwrap();
        processes.push(Process {
            name,
            limiter,
            budget,
        });
    }
    // The busy ones: far more items than they can run in the test.
    for p in &processes[..3] {
        for _ in 0..20_000 {
            let overlap = overlap.clone();
            p.limiter.spawn(async move {
                let _running = overlap.start();
                tokio::time::sleep(Duration::from_millis(5)).await;
            });
        }
    }
    // The app-limited one: one caller, one item at a time.
    let light = processes[3].limiter.clone();
    let light_overlap = overlap.clone();
    let caller = tokio::spawn(async move {
        loop {
            let overlap = light_overlap.clone();
            let item = light.spawn(async move {
                let _running = overlap.start();
                tokio::time::sleep(Duration::from_millis(5)).await;
            });
            if item.await.is_err() {
                return;
            }
        }
    });

    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Past the fresh state's first TTL, in which nobody grows beyond what it runs.
    tokio::time::sleep(ttl * 2).await;
    let mut asked_for_more = [0; 2];
    let mut slots_all_used = 0;
    let samples = 80;
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let wants: HashMap<String, usize> = redis::cmd("HGETALL")
            .arg("task-limiter:{adaptive}:want")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut limits = 0;
        let mut slots = 0;
        for (i, p) in processes.iter().enumerate() {
            let (limit, own) = (p.limiter.limit(), p.limiter.adaptive_limit().unwrap());
            let want = wants.get(p.name).copied().unwrap_or(0);
            let held = p.budget.slots();
            assert!(
                limit <= own,
                "{}: limit {limit} above its own {own}",
                p.name
            );
            match p.name {
                "held" => {
                    assert!(
                        want <= 3,
                        "held: reported {want} with its algorithm at {own}"
                    );
                    assert!(p.limiter.metrics().queued > 100);
                }
                "light" => assert!(want <= 1, "light: reported {want}, running one at a time"),
                // An `Aimd` without overloads never lowers its limit: the demand reported
                // (the highest of the last renewal period) is at most its limit now.
                _ => {
                    assert!(
                        want <= own,
                        "{}: reported {want} above its own {own}",
                        p.name
                    );
                    if want == own && own > held {
                        asked_for_more[i] += 1;
                    }
                }
            }
            limits += limit;
            slots += held;
        }
        assert!(limits <= BUDGET, "the limits in force add up to {limits}");
        let most = overlap.most.load(Ordering::SeqCst);
        assert!(
            most <= BUDGET,
            "{most} items ran at once across the limiters"
        );
        slots_all_used += usize::from(slots == BUDGET);
    }
    let report: Vec<_> = processes
        .iter()
        .map(|p| {
            (
                p.name,
                p.limiter.limit(),
                p.limiter.adaptive_limit(),
                p.budget.slots(),
                p.budget.metrics().redis_calls,
            )
        })
        .collect();
    println!(
        "most at once {} of {BUDGET}; asked for more than held {asked_for_more:?} of {samples}; \
         all slots held in {slots_all_used}; (name, limit, own, slots, Redis calls) {report:?}",
        overlap.most.load(Ordering::SeqCst),
    );
    assert!(
        asked_for_more.iter().all(|&n| n > samples / 2),
        "the busy ones asked for their own limit above their slots in {asked_for_more:?} of \
         {samples} samples: {report:?}"
    );
    assert!(slots_all_used > samples / 2, "{slots_all_used}: {report:?}");
    // Renewals every 333 ms for about 6 s, and changes of demand: not a call per poll (every
    // 83 ms), as a process capped below what it asks for keeps asking.
    for (name, .., calls) in &report {
        assert!(*calls < 50, "{name}: {calls} Redis calls: {report:?}");
    }
    for p in processes {
        p.limiter.shutdown().await;
        p.budget.release().await.unwrap();
    }
    caller.await.unwrap();
}
