//! Adaptive limits under a cap (issue 21): `set_limit_until` on an adaptive limiter caps the
//! algorithm's limit, as slots leased from a cluster budget do. The limit in force is the lower
//! of the two, the cap's expiry is checked at admission, the algorithm does not grow from items
//! the cap held back, and it goes on from its own limit when the cap lifts. On paused time,
//! against the simulated downstream of `tests/adaptive.rs`.
#[path = "../examples/support/downstream.rs"]
mod downstream;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use downstream::{run, Downstream};
use task_limiter::adaptive::{Aimd, Algorithm, Gradient, Sample};
use task_limiter::{Builder, Limiter};
use tokio::time::Instant;

const BASE: Duration = Duration::from_millis(10);
/// More callers than any limit here: the limit in force, not the callers, holds work back.
const CLIENTS: usize = 100;
/// Long enough for the caps of these tests not to expire.
const LONG: Duration = Duration::from_secs(1_000_000);

fn adaptive(algorithm: impl Algorithm + Clone + Sync, start: usize) -> Builder {
    Limiter::builder()
        .adaptive(algorithm)
        .limit(start)
        .max_limit(200)
}

/// What a [`Watch`] saw, in order: the sample, the limit the algorithm was handed, and the
/// limit it chose.
type Seen = Arc<Mutex<Vec<(Sample, usize, usize)>>>;

/// Hands every sample to the algorithm it wraps, and keeps what it was given and what it chose.
#[derive(Clone)]
struct Watch<A> {
    algorithm: A,
    seen: Seen,
}

impl<A> Watch<A> {
    fn new(algorithm: A) -> Watch<A> {
        Watch {
            algorithm,
            seen: Arc::default(),
        }
    }

    fn seen(&self) -> Vec<(Sample, usize, usize)> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl<A: Algorithm> Algorithm for Watch<A> {
    fn update(&mut self, sample: &Sample, limit: usize) -> usize {
        let next = self.algorithm.update(sample, limit);
        self.seen.lock().unwrap().push((*sample, limit, next));
        next
    }

    fn uses_queue_wait(&self) -> bool {
        self.algorithm.uses_queue_wait()
    }
}

/// An algorithm that returns what the test asks for (or keeps the limit).
#[derive(Clone, Default)]
struct Set(Arc<Mutex<Option<usize>>>);

impl Set {
    fn to(&self, limit: usize) {
        *self.0.lock().unwrap() = Some(limit);
    }
}

impl Algorithm for Set {
    fn update(&mut self, _: &Sample, limit: usize) -> usize {
        self.0.lock().unwrap().unwrap_or(limit)
    }
}

/// Spawns `n` items of `each` (from their start: the sleep is made as the item starts) and
/// waits for them all.
async fn run_items(limiter: &Limiter, n: usize, each: Duration) {
    let handles: Vec<_> = (0..n)
        .map(|_| limiter.spawn(async move { tokio::time::sleep(each).await }))
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
}

/// The limit in force is min(the algorithm's, the cap), whichever of the two moves; items run
/// within it, and a sample says which of the two held it.
#[tokio::test(start_paused = true)]
async fn the_limit_in_force_is_the_lower_of_the_algorithms_and_the_cap() {
    let set = Set::default();
    let watch = Watch::new(set.clone());
    let limiter = adaptive(watch.clone(), 8).build();
    limiter.set_limit_until(3, Instant::now() + LONG, 0);
    assert_eq!(limiter.limit(), 3);
    assert_eq!(limiter.adaptive_limit(), Some(8));
    run_items(&limiter, 12, Duration::from_millis(10)).await;
    // Every item started under the cap, and the algorithm was handed its own limit.
    let seen = watch.seen();
    assert_eq!(seen.len(), 12);
    for (sample, handed, _) in &seen {
        assert_eq!((sample.limit(), sample.capped(), *handed), (3, true, 8));
        assert!(sample.running() <= 3, "{sample:?}");
        assert!(!sample.found_limit_full(), "{sample:?}");
    }
    assert!(seen.iter().any(|(s, _, _)| s.running() == 3));
    assert_eq!(limiter.metrics().max_running, 3);

    // The algorithm goes below the cap: its limit is in force, and nothing is capped.
    set.to(2);
    limiter.spawn(async {}).await.unwrap();
    assert_eq!((limiter.limit(), limiter.adaptive_limit()), (2, Some(2)));
    watch.clear();
    run_items(&limiter, 6, Duration::from_millis(10)).await;
    for (sample, handed, _) in watch.seen() {
        assert_eq!((sample.limit(), sample.capped(), handed), (2, false, 2));
    }

    // The algorithm goes above the cap: the cap is in force again.
    set.to(20);
    limiter.spawn(async {}).await.unwrap();
    assert_eq!((limiter.limit(), limiter.adaptive_limit()), (3, Some(20)));

    // A new cap above the algorithm's limit: the algorithm's is in force.
    limiter.set_limit_until(50, Instant::now() + LONG, 0);
    assert_eq!(limiter.limit(), 20);
    watch.clear();
    run_items(&limiter, 40, Duration::from_millis(10)).await;
    let seen = watch.seen();
    assert!(seen.iter().all(|(s, _, _)| s.limit() == 20 && !s.capped()));
    assert!(seen.iter().any(|(s, _, _)| s.found_limit_full()));

    // `set_limit` lifts the cap: the value set is in force, and the algorithm goes on from it.
    limiter.set_limit_until(3, Instant::now() + LONG, 0);
    *set.0.lock().unwrap() = None;
    limiter.set_limit(30);
    assert_eq!((limiter.limit(), limiter.adaptive_limit()), (30, Some(30)));
}

/// The cap's expiry is checked at admission: items admitted after it start under the fallback
/// (capped by it, or the algorithm's limit if that is lower), with no call in between that
/// could have put it in force.
#[tokio::test(start_paused = true)]
async fn the_cap_expires_to_its_fallback_at_admission() {
    let watch = Watch::new(Set::default());
    let limiter = adaptive(watch.clone(), 8).build();
    let start = Instant::now();
    limiter.set_limit_until(4, start + Duration::from_millis(1000), 1);
    // Items of 300 ms: four at a time until 1 s (the last four start at 0.9 s), then one.
    let handles: Vec<_> = (0..20)
        .map(|_| limiter.spawn(async { tokio::time::sleep(Duration::from_millis(300)).await }))
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    let seen = watch.seen();
    assert_eq!(seen.len(), 20);
    // Started before the expiry (ended by 1.2 s): under the cap of 4.
    let before: Vec<_> = seen.iter().take(16).map(|(s, _, _)| *s).collect();
    assert!(before.iter().all(|s| s.limit() == 4 && s.capped()));
    assert!(before.iter().any(|s| s.running() == 4));
    // The four admitted at 1.2 s and after: under the fallback, one at a time.
    for (sample, handed, _) in &seen[16..] {
        assert_eq!(
            (sample.limit(), sample.running(), sample.capped(), *handed),
            (1, 1, true, 8)
        );
    }
    assert_eq!(start.elapsed(), Duration::from_millis(1200 + 4 * 300));
    assert_eq!((limiter.limit(), limiter.adaptive_limit()), (1, Some(8)));

    // A fallback above the algorithm's limit leaves the algorithm's in force, and a fallback
    // of 0 starts nothing until the cap is raised again.
    limiter.set_limit_until(2, Instant::now(), 50);
    assert_eq!(limiter.limit(), 8);
    limiter.set_limit_until(2, Instant::now() + Duration::from_millis(10), 0);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut queued = tokio_test::task::spawn(limiter.spawn(async { 7 }));
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio_test::assert_pending!(queued.poll());
    assert_eq!(limiter.metrics().running, 0);
    limiter.set_limit_until(2, Instant::now() + LONG, 0);
    assert_eq!(queued.await.unwrap(), 7);
}

/// Both built-in algorithms, capped below their limit for thousands of items against a
/// downstream that could take four times more, do not grow; without the cap, the same run
/// grows them (so the test can fail).
#[tokio::test(start_paused = true)]
async fn the_algorithm_does_not_grow_while_capped() {
    for capped in [true, false] {
        let runs: [(&str, Builder, Seen); 2] = {
            let gradient = Watch::new(Gradient::new());
            let aimd = Watch::new(Aimd::new());
            [
                ("gradient", adaptive(gradient.clone(), 8), gradient.seen),
                ("aimd", adaptive(aimd.clone(), 8), aimd.seen),
            ]
        };
        for (name, builder, seen) in runs {
            let downstream = Downstream::new(32, BASE, true);
            let limiter = builder.build();
            if capped {
                limiter.set_limit_until(6, Instant::now() + LONG, 0);
            }
            let trace = run(&limiter, &downstream, CLIENTS, &[(32, 3000)]).await;
            let chosen = seen.lock().unwrap().iter().map(|s| s.2).max().unwrap();
            if capped {
                assert!(chosen <= 8, "{name}: grew to {chosen} under a cap of 6");
                assert!(trace.limits.iter().all(|&l| l <= 6), "{name}");
                let capped_samples = seen.lock().unwrap().iter().filter(|s| s.0.capped()).count();
                assert!(
                    capped_samples > 2500,
                    "{name}: {capped_samples} capped samples"
                );
            } else {
                assert!(chosen >= 16, "{name}: reached only {chosen} without a cap");
            }
        }
    }
}

/// When the cap lifts (raised above what the algorithm wants), the algorithm goes on from its
/// own limit, not from the cap, and settles around the downstream's capacity as it does
/// uncapped.
#[tokio::test(start_paused = true)]
async fn the_algorithm_goes_on_from_its_own_limit_when_the_cap_lifts() {
    // The bands of `tests/adaptive.rs` at a capacity of 32: `Gradient` (on a downstream that
    // queues) from `c` to `c + 2√c + 2`, `Aimd` (on one that refuses past its capacity) in its
    // saw-tooth from `0.8 c - 1` to `1.1 c + 2`.
    lifts(Gradient::new(), "gradient", false, (32, 45)).await;
    lifts(Aimd::new(), "aimd", true, (24, 37)).await;
}

async fn lifts<A: Algorithm + Clone + Sync>(
    algorithm: A,
    name: &str,
    refuses: bool,
    (low, high): (usize, usize),
) {
    let watch = Watch::new(algorithm);
    let limiter = adaptive(watch.clone(), 12).build();
    let downstream = Downstream::new(32, BASE, refuses);
    limiter.set_limit_until(6, Instant::now() + LONG, 0);
    run(&limiter, &downstream, CLIENTS, &[(32, 1000)]).await;
    let own = limiter.adaptive_limit().unwrap();
    assert!((6..=12).contains(&own), "{name}: {own} under the cap");
    // More slots than it wants: the cap no longer holds it.
    limiter.set_limit_until(200, Instant::now() + LONG, 0);
    assert_eq!(limiter.limit(), own);
    watch.clear();
    let trace = run(&limiter, &downstream, CLIENTS, &[(32, 1500)]).await;
    let seen = watch.seen();
    // The first samples of items admitted after the lift hand the algorithm its own limit.
    let first = seen.iter().find(|(s, _, _)| !s.capped()).unwrap();
    assert_eq!(first.1, own, "{name}");
    // It grows from there into its band, as it does without a cap.
    let settled = &trace.limits[700..];
    let outside = settled
        .iter()
        .filter(|&&l| !(low..=high).contains(&l) && l != 4)
        .count();
    assert!(
        outside == 0,
        "{name}: {outside} of {} limits outside {low}..={high}: {:?}",
        settled.len(),
        &settled[..20]
    );
}

/// An overload seen under a cap was seen at the cap: `Aimd` backs off from the cap, not from its
/// own higher limit, and once per round (later overloads of items admitted under the cap are
/// answered by then).
#[tokio::test(start_paused = true)]
async fn an_overload_under_a_cap_backs_off_from_the_cap() {
    for items in [1, 10] {
        let limiter = adaptive(Aimd::new(), 20).build();
        limiter.set_limit_until(10, Instant::now() + LONG, 0);
        let handles: Vec<_> = (0..items)
            .map(|_| {
                limiter
                    .build_task()
                    .overload_if(|busy: &bool| *busy)
                    .spawn(async {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        true
                    })
            })
            .collect();
        for handle in handles {
            assert!(handle.await.unwrap());
        }
        // 10 × 0.9, not 20 × 0.9 (nor 10 × 0.9 × 0.9 ...).
        assert_eq!(
            (limiter.limit(), limiter.adaptive_limit()),
            (9, Some(9)),
            "{items} items"
        );
    }
}

/// A downstream that queues past 4 calls, under a cap of 10 with the algorithm at 20: `Gradient`
/// sees the queue at the cap and takes its own limit below the cap, around the capacity.
#[tokio::test(start_paused = true)]
async fn a_queue_at_the_cap_takes_gradient_below_it() {
    let limiter = adaptive(Gradient::new(), 20).build();
    limiter.set_limit_until(10, Instant::now() + LONG, 0);
    let downstream = Downstream::new(4, BASE, false);
    let trace = run(&limiter, &downstream, CLIENTS, &[(4, 1500)]).await;
    let own = limiter.adaptive_limit().unwrap();
    // `Gradient`'s band at a capacity of 4 (see `tests/adaptive.rs`): 4..=8.
    assert!((4..=8).contains(&own), "its own limit is {own}");
    let late = &trace.limits[1000..];
    assert!(late.iter().all(|&l| l <= 8), "{:?}", &late[..20]);
}

/// Random limits from the algorithm, random caps with short expiries and random fallbacks (0
/// among them) from another task, on the multi-thread runtime: every item started within the
/// limit in force when it started, every worker ID below it, and every item ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_caps_and_algorithm_limits_hold_items_within_the_limit_in_force() {
    #[derive(Clone, Default)]
    struct Random {
        state: Arc<Mutex<u64>>,
        broken: Arc<Mutex<Vec<Sample>>>,
    }

    impl Algorithm for Random {
        fn update(&mut self, sample: &Sample, _: usize) -> usize {
            if sample.running() > sample.limit() {
                self.broken.lock().unwrap().push(*sample);
            }
            let mut state = self.state.lock().unwrap();
            *state = xorshift(*state);
            1 + (*state % 12) as usize
        }
    }

    fn xorshift(mut x: u64) -> u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }

    let algorithm = Random::default();
    *algorithm.state.lock().unwrap() = 0x9e37_79b9_7f4a_7c15;
    let limiter = adaptive(algorithm.clone(), 6).build();
    let (ids_seen, max_cap) = (Arc::new(Mutex::new(Vec::new())), 12);
    let caps = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            let mut x = 0x2545_f491_4f6c_dd1d_u64;
            for _ in 0..400 {
                x = xorshift(x);
                let cap = 1 + (x % max_cap) as usize;
                let fallback = ((x >> 8) % 13) as usize;
                let until = Instant::now() + Duration::from_micros((x >> 16) % 3000);
                limiter.set_limit_until(cap, until, fallback);
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        })
    };
    let handles: Vec<_> = (0..3000_u64)
        .map(|i| {
            let ids_seen = ids_seen.clone();
            limiter.spawn_with(move |id| async move {
                ids_seen.lock().unwrap().push(id.index());
                if i % 3 == 0 {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                } else {
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    caps.await.unwrap();
    // Lift the cap, so that what is still queued runs.
    limiter.set_limit(8);
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(limiter.metrics().completed, 3000);
    let broken = algorithm.broken.lock().unwrap();
    assert!(
        broken.is_empty(),
        "started above the limit: {:?}",
        &broken[..]
    );
    let highest = ids_seen.lock().unwrap().iter().copied().max().unwrap();
    assert!(highest < 12, "worker ID {highest}");
}
