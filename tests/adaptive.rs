//! Adaptive limits (issue 12), against a simulated downstream on paused time
//! (`examples/support/downstream.rs`): its service time grows once more than `capacity`
//! calls are in it, and its capacity changes while the limiter runs. Each convergence test
//! states the band the limit must settle in and how many samples it may take to get there.
#[path = "../examples/support/downstream.rs"]
mod downstream;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use downstream::{run, Downstream, Trace};
use task_limiter::adaptive::{Aimd, Algorithm, Gradient, Sample};
use task_limiter::{Builder, Limiter};

const BASE: Duration = Duration::from_millis(10);
/// More callers than any limit the tests settle at: the limit, not the callers, holds work back.
const CLIENTS: usize = 100;
/// Items per phase of capacity.
const PHASE: usize = 1500;
/// Samples a limit may take to settle after a change of capacity.
const SETTLE: usize = 500;

fn adaptive(algorithm: impl Algorithm + Clone + Sync, start: usize) -> Builder {
    Limiter::builder()
        .adaptive(algorithm)
        .limit(start)
        .max_limit(200)
}

/// The band `Gradient` settles in around a capacity `c`: from `c` to `c + 2√c + 2` (it aims
/// at a queue of about √limit in the downstream).
fn gradient_band(c: usize) -> (usize, usize) {
    (c, c + 2 * (c as f64).sqrt() as usize + 2)
}

/// The band `Aimd` settles in under refusals past a capacity `c`: its saw-tooth, from
/// `0.8 c - 1` to `1.1 c + 2`.
fn aimd_band(c: usize) -> (usize, usize) {
    ((c * 8 / 10).saturating_sub(1).max(1), c + c / 10 + 2)
}

/// Checks each phase of `trace`: after `SETTLE` samples, every limit lies in
/// `band(capacity)`, except during `Gradient`'s baseline probes (at its probe limit, 4),
/// which take at most 8 % of the samples.
fn assert_settles(trace: &Trace, phases: &[(usize, usize)], band: fn(usize) -> (usize, usize)) {
    assert_settles_within(trace, phases, band, SETTLE);
}

/// [`assert_settles`], with `settle` samples for the first phase.
fn assert_settles_within(
    trace: &Trace,
    phases: &[(usize, usize)],
    band: fn(usize) -> (usize, usize),
    settle: usize,
) {
    let mut from = 0;
    for (i, &(capacity, items)) in phases.iter().enumerate() {
        let (low, high) = band(capacity);
        let settle = if i == 0 { settle } else { SETTLE };
        let settled = &trace.limits[from + settle..from + items];
        let is_probe = |l: usize| l == 4 && low > 4;
        let probing = settled.iter().filter(|&&l| is_probe(l)).count();
        let outside = settled
            .iter()
            .filter(|&&l| !(low..=high).contains(&l) && !is_probe(l))
            .count();
        assert!(
            outside == 0 && probing * 100 <= settled.len() * 8,
            "capacity {capacity}: {outside} of {} limits outside {low}..={high} ({probing} \
             probing): {}",
            settled.len(),
            summary(&trace.limits[from..from + items])
        );
        from += items;
    }
}

/// Mean limit per 100 samples, for failure messages.
fn summary(limits: &[usize]) -> String {
    limits
        .chunks(100)
        .map(|c| (c.iter().sum::<usize>() / c.len()).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

const CHANGES: [(usize, usize); 3] = [(16, PHASE), (4, PHASE), (32, PHASE)];

#[tokio::test(start_paused = true)]
async fn gradient_settles_around_capacity_from_a_low_start() {
    let downstream = Downstream::new(16, BASE, false);
    let limiter = adaptive(Gradient::new(), 1).build();
    let trace = run(&limiter, &downstream, CLIENTS, &CHANGES).await;
    assert_settles(&trace, &CHANGES, gradient_band);
}

#[tokio::test(start_paused = true)]
async fn gradient_settles_around_capacity_from_a_high_start() {
    let downstream = Downstream::new(16, BASE, false);
    let limiter = adaptive(Gradient::new(), 150).build();
    let trace = run(&limiter, &downstream, CLIENTS, &CHANGES).await;
    assert_settles(&trace, &CHANGES, gradient_band);
}

#[tokio::test(start_paused = true)]
async fn aimd_settles_under_refusals_from_a_low_and_a_high_start() {
    // From ten times the capacity, a back-off of 0.9 per round takes about 20 rounds: it may
    // take 1,000 samples to settle.
    for (start, settle) in [(1, SETTLE), (150, 1000)] {
        let downstream = Downstream::new(16, BASE, true);
        let limiter = adaptive(Aimd::new(), start).build();
        let trace = run(&limiter, &downstream, CLIENTS, &CHANGES).await;
        assert_settles_within(&trace, &CHANGES, aimd_band, settle);
    }
}

/// Refusals come back fast, so run times look fine; the overloads alone bring the limit down.
#[tokio::test(start_paused = true)]
async fn gradient_backs_off_on_overloads_while_latency_looks_fine() {
    let phases = [(16, PHASE), (4, PHASE)];
    let downstream = Downstream::new(16, BASE, true);
    let limiter = adaptive(Gradient::new(), 64).build();
    let trace = run(&limiter, &downstream, CLIENTS, &phases).await;
    // Refused calls are a tenth of a served one: a limit well past the capacity serves
    // refusals mostly. Settled, the limit stays within twice the capacity plus a queue.
    assert_settles(&trace, &phases, |c| (c / 2, 2 * c + 4));
    let refused_late = trace.refused[PHASE + SETTLE..]
        .iter()
        .filter(|r| **r)
        .count();
    assert!(
        refused_late * 4 < PHASE - SETTLE,
        "{refused_late} of the last {} calls refused",
        PHASE - SETTLE
    );
}

/// Fewer callers than the limit: the limit never grows, whichever algorithm, because no item
/// found it full.
#[tokio::test(start_paused = true)]
async fn an_app_limited_limiter_does_not_grow() {
    let algorithms: [(&str, Builder); 2] = [
        ("gradient", adaptive(Gradient::new(), 16)),
        ("aimd", adaptive(Aimd::new(), 16)),
    ];
    for (name, builder) in algorithms {
        let downstream = Downstream::new(32, BASE, false);
        let limiter = builder.build();
        let trace = run(&limiter, &downstream, 5, &[(32, 3000)]).await;
        let most = trace.limits.iter().max().unwrap();
        assert!(*most <= 16, "{name}: grew to {most} with 5 callers");
    }
}

/// Under sustained load the baseline does not creep up (so the limit does not either).
#[tokio::test(start_paused = true)]
async fn the_baseline_does_not_drift_up_under_sustained_load() {
    let phases = [(16, 20_000)];
    let downstream = Downstream::new(16, BASE, false);
    let limiter = adaptive(Gradient::new(), 16).build();
    let trace = run(&limiter, &downstream, CLIENTS, &phases).await;
    assert_settles(&trace, &phases, gradient_band);
    let mean = |limits: &[usize]| limits.iter().sum::<usize>() as f64 / limits.len() as f64;
    let (early, late) = (
        mean(&trace.limits[1000..3000]),
        mean(&trace.limits[18_000..]),
    );
    assert!(
        late <= early + 1.0,
        "the limit crept from {early:.1} to {late:.1}"
    );
}

/// The downstream slows down five-fold for everyone for a while (a spike), then recovers: the
/// limit falls with it, then comes back into its band.
#[tokio::test(start_paused = true)]
async fn the_limit_recovers_after_a_latency_spike() {
    let downstream = Downstream::new(16, BASE, false);
    let limiter = adaptive(Gradient::new(), 16).build();
    let before = run(&limiter, &downstream, CLIENTS, &[(16, PHASE)]).await;
    downstream.set_base(BASE * 5);
    let spike = run(&limiter, &downstream, CLIENTS, &[(16, 1000)]).await;
    downstream.set_base(BASE);
    let after = run(&limiter, &downstream, CLIENTS, &[(16, PHASE)]).await;
    assert_settles(&before, &[(16, PHASE)], gradient_band);
    let lowest = spike.limits.iter().min().unwrap();
    assert!(*lowest < 16, "the spike never brought the limit down");
    assert_settles(&after, &[(16, PHASE)], gradient_band);
}

/// `min_limit` and `max_limit` hold, and a limit pushed down to `min_limit` comes back.
#[tokio::test(start_paused = true)]
async fn the_limit_stays_within_its_bounds_and_recovers_from_the_minimum() {
    // No baseline probe during the slow phase: one would (rightly) take the slower downstream
    // as its new baseline and lift the limit before it reached the minimum.
    let gradient = Gradient::new().probe_every(100_000);
    for (name, builder, refuses) in [
        ("gradient", Limiter::builder().adaptive(gradient), false),
        ("aimd", Limiter::builder().adaptive(Aimd::new()), true),
    ] {
        let limiter = builder.limit(10).min_limit(3).max_limit(20).build();
        let downstream = Downstream::new(32, BASE, refuses);
        // Above its capacity, the downstream is held back by `max_limit`.
        let high = run(&limiter, &downstream, CLIENTS, &[(32, 2000)]).await;
        // Then pushed to the minimum: a downstream that refuses past 1 item (`Aimd`), or one
        // twenty times slower for a while (`Gradient`)...
        downstream.set_base(BASE * if refuses { 1 } else { 20 });
        let low = run(
            &limiter,
            &downstream,
            CLIENTS,
            &[(if refuses { 1 } else { 32 }, 300)],
        )
        .await;
        downstream.set_base(BASE);
        // ...and back.
        let back = run(&limiter, &downstream, CLIENTS, &[(32, 2000)]).await;
        for trace in [&high, &low, &back] {
            let (min, max) = (trace.limits.iter().min(), trace.limits.iter().max());
            assert!(
                *min.unwrap() >= 3 && *max.unwrap() <= 20,
                "{name}: out of bounds"
            );
        }
        assert_eq!(high.limits[1000..].iter().min(), Some(&20), "{name}");
        assert_eq!(
            low.limits.iter().min(),
            Some(&3),
            "{name}: {}",
            summary(&low.limits)
        );
        assert_eq!(back.limits[1000..].iter().min(), Some(&20), "{name}");
    }
}

// === samples ===

/// Records every sample and the limit it was given, and returns a scripted limit.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<(Sample, usize)>>>,
    /// `None`: keep the limit as it is.
    next: Arc<Mutex<Option<usize>>>,
}

impl Algorithm for Recorder {
    fn update(&mut self, sample: &Sample, limit: usize) -> usize {
        self.seen.lock().unwrap().push((*sample, limit));
        self.next.lock().unwrap().unwrap_or(limit)
    }
}

impl Recorder {
    fn samples(&self) -> Vec<Sample> {
        self.seen.lock().unwrap().iter().map(|(s, _)| *s).collect()
    }
}

/// One sample per finished item, told apart: a value, an overload, a run timeout (an
/// overload), a panic (not an overload); cancelled items and queue timeouts give none.
#[cfg(panic = "unwind")]
#[tokio::test(start_paused = true)]
async fn each_finished_item_gives_one_sample() {
    let recorder = Recorder::default();
    let limiter = Limiter::builder()
        .adaptive(recorder.clone())
        .limit(1)
        .build();
    let value = limiter
        .build_task()
        .overload_if(|v: &u32| *v == 429)
        .spawn(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            200_u32
        });
    let overload = limiter
        .build_task()
        .overload_if(|v: &u32| *v == 429)
        .spawn(async { 429_u32 });
    let timed_out = limiter
        .build_task()
        .timeout(Duration::from_millis(50))
        .spawn(std::future::pending::<()>());
    let panicked = limiter.spawn(async { panic!("boom") });
    let queue_timeout = limiter
        .build_task()
        .queue_timeout(Duration::from_millis(1))
        .spawn(async {});
    let aborted = limiter.spawn(async {});
    aborted.abort();
    let token = tokio_util::sync::CancellationToken::new();
    let cancelled_running = limiter
        .build_task()
        .cancel_on(token.clone())
        .spawn(std::future::pending::<()>());

    assert_eq!(value.await.unwrap(), 200);
    assert_eq!(overload.await.unwrap(), 429);
    assert!(timed_out.await.unwrap_err().is_timeout());
    assert!(panicked.await.unwrap_err().is_panic());
    assert!(queue_timeout.await.unwrap_err().is_timeout());
    assert!(aborted.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(10)).await;
    token.cancel();
    assert!(cancelled_running.await.unwrap_err().is_cancelled());

    let samples = recorder.samples();
    let marks: Vec<(bool, bool)> = samples
        .iter()
        .map(|s| (s.is_overload(), s.panicked()))
        .collect();
    assert_eq!(
        marks,
        [(false, false), (true, false), (true, false), (false, true)],
        "{samples:#?}"
    );
    assert_eq!(samples[0].run_time(), Duration::from_millis(5));
    assert_eq!(samples[2].run_time(), Duration::from_millis(50));
    // Each waited in the queue behind the ones before it.
    assert_eq!(samples[1].queue_wait(), Duration::from_millis(5));
    assert_eq!(samples[2].queue_wait(), Duration::from_millis(5));
    assert_eq!(samples[3].queue_wait(), Duration::from_millis(55));
}

/// The load a sample reports is what admission saw: the weight running, the item's own
/// included, and the limit in force.
#[tokio::test(start_paused = true)]
async fn a_sample_reports_the_exact_load_it_started_under() {
    let recorder = Recorder::default();
    let limiter = Limiter::builder()
        .adaptive(recorder.clone())
        .limit(3)
        .build();
    // Items of 10, 20, 30, ... ms: the first three start together; each later one starts as
    // one ends, with the limit full again.
    let handles: Vec<_> = (1..=6_u64)
        .map(|i| limiter.spawn(tokio::time::sleep(Duration::from_millis(10 * i))))
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    let running: Vec<usize> = recorder.samples().iter().map(Sample::running).collect();
    let limits: Vec<usize> = recorder.samples().iter().map(Sample::limit).collect();
    assert_eq!(running, [1, 2, 3, 3, 3, 3]);
    assert_eq!(limits, [3; 6]);

    // Weighted items report their weight.
    let recorder = Recorder::default();
    let limiter = Limiter::builder()
        .adaptive(recorder.clone())
        .limit(10)
        .build();
    let a = limiter.build_task().weight(4).spawn(async {});
    let b = limiter.build_task().weight(3).spawn(async {});
    let (a, b) = tokio::join!(a, b);
    a.unwrap();
    b.unwrap();
    let running: Vec<usize> = recorder.samples().iter().map(Sample::running).collect();
    assert_eq!(running, [4, 7]);
}

/// A retry is a new item: each attempt gives its own sample, and a refused attempt's is an
/// overload.
#[tokio::test(start_paused = true)]
async fn retries_count_once_each() {
    let recorder = Recorder::default();
    let limiter = Limiter::builder()
        .adaptive(recorder.clone())
        .limit(4)
        .build();
    let downstream = Downstream::new(2, BASE, true);
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (limiter, downstream) = (limiter.clone(), downstream.clone());
        callers.spawn(async move {
            let mut attempts = 0;
            loop {
                attempts += 1;
                let downstream = downstream.clone();
                let reply = limiter
                    .build_task()
                    .overload_if(|reply: &Result<(), downstream::Busy>| reply.is_err())
                    .spawn(async move { downstream.call().await })
                    .await
                    .unwrap();
                if reply.is_ok() {
                    return attempts;
                }
            }
        });
    }
    let mut attempts = 0;
    while let Some(n) = callers.join_next().await {
        attempts += n.unwrap();
    }
    let samples = recorder.samples();
    assert!(attempts > 8, "nothing was refused");
    assert_eq!(samples.len(), attempts);
    assert_eq!(
        samples.iter().filter(|s| s.is_overload()).count(),
        attempts - 8
    );
}

/// The user's `set_limit` sets the controller's value: the algorithm is handed it next, and
/// goes on from it.
#[tokio::test(start_paused = true)]
async fn set_limit_sets_the_value_the_algorithm_goes_on_from() {
    let recorder = Recorder::default();
    let limiter = Limiter::builder()
        .adaptive(recorder.clone())
        .limit(4)
        .build();
    limiter.spawn(async {}).await.unwrap();
    limiter.set_limit(7);
    assert_eq!(limiter.limit(), 7);
    limiter.spawn(async {}).await.unwrap();
    *recorder.next.lock().unwrap() = Some(9);
    limiter.spawn(async {}).await.unwrap();
    assert_eq!(limiter.limit(), 9);
    assert_eq!(limiter.metrics().limit, 9);
    let given: Vec<usize> = recorder.seen.lock().unwrap().iter().map(|s| s.1).collect();
    assert_eq!(given, [4, 7, 7]);
}

/// The algorithm's choices are clamped to the bounds; a choice of 0 never reaches the limiter.
#[tokio::test(start_paused = true)]
async fn choices_outside_the_bounds_are_clamped() {
    let recorder = Recorder::default();
    let limiter = Limiter::builder()
        .adaptive(recorder.clone())
        .limit(4)
        .min_limit(2)
        .max_limit(6)
        .build();
    *recorder.next.lock().unwrap() = Some(0);
    limiter.spawn(async {}).await.unwrap();
    assert_eq!(limiter.limit(), 2);
    *recorder.next.lock().unwrap() = Some(usize::MAX);
    limiter.spawn(async {}).await.unwrap();
    assert_eq!(limiter.limit(), 6);
}

/// Shrinking and growing from inside the items keeps the limiter's rules: items finish, queued
/// items start once the limit grows, nothing is lost.
#[tokio::test(start_paused = true)]
async fn limits_set_by_the_algorithm_start_and_hold_items() {
    let recorder = Recorder::default();
    let limiter = Limiter::builder()
        .adaptive(recorder.clone())
        .limit(8)
        .build();
    *recorder.next.lock().unwrap() = Some(1);
    let handles: Vec<_> = (0..50)
        .map(|i| limiter.spawn(tokio::time::sleep(Duration::from_millis(1 + i % 3))))
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(limiter.limit(), 1);
    assert!(limiter.metrics().running <= 1);
    *recorder.next.lock().unwrap() = Some(8);
    for handle in handles {
        handle.await.unwrap();
    }
    let m = limiter.metrics();
    assert_eq!((m.completed, m.queued, m.running), (50, 0, 0));
    for (sample, _) in recorder.seen.lock().unwrap().iter() {
        assert!(sample.running() <= sample.limit(), "{sample:?}");
    }
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn a_panicking_algorithm_loses_its_sample_only() {
    #[derive(Clone)]
    struct Panics;
    impl Algorithm for Panics {
        fn update(&mut self, _: &Sample, _: usize) -> usize {
            panic!("algorithm bug")
        }
    }
    let limiter = Limiter::builder().adaptive(Panics).limit(3).build();
    for i in 0..5 {
        assert_eq!(limiter.spawn(async move { i }).await.unwrap(), i);
    }
    assert_eq!(limiter.limit(), 3);
    assert_eq!(limiter.metrics().completed, 5);
}

/// Queued items hold the controller; dropping every `Limiter` still closes the limiter: the
/// queued items run, and the manager and its workers exit.
#[tokio::test(flavor = "current_thread")]
async fn queued_measured_items_do_not_keep_the_limiter_alive() {
    let limiter = Limiter::builder().adaptive(Aimd::new()).limit(1).build();
    let handles: Vec<_> = (0..10).map(|i| limiter.spawn(async move { i })).collect();
    drop(limiter);
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), i);
    }
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..100 {
        if metrics.num_alive_tasks() == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{} tasks still alive", metrics.num_alive_tasks());
}

/// Builds a limiter from `builder` on a runtime of its own (for the panics at `build`).
fn build_in_a_runtime(builder: Builder) -> Limiter {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    builder.build()
}

#[test]
#[should_panic(expected = "`max_limit` (2) is below `min_limit` (5)")]
fn max_below_min_panics() {
    build_in_a_runtime(adaptive(Aimd::new(), 3).min_limit(5).max_limit(2));
}

#[test]
#[should_panic(expected = "the starting limit 50 is outside")]
fn a_starting_limit_outside_the_bounds_panics() {
    build_in_a_runtime(adaptive(Aimd::new(), 50).max_limit(20));
}

#[test]
#[should_panic(expected = "`Aimd::backoff` must be above 0 and below 1")]
fn a_bad_parameter_panics() {
    let _ = Aimd::new().backoff(1.5);
}
