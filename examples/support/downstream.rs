//! A simulated downstream for adaptive limits: shared by `examples/adaptive.rs` and
//! `tests/adaptive.rs`.
//!
//! A call takes `base × max(1, in_flight / capacity)^thrash` times a noise factor (±10 %
//! uniform, or lognormal with mean 1 for [`Noise::LogNormal`]), where `in_flight` counts the
//! call itself: past its capacity the downstream queues, and every call slows down. With `thrash` 1 (the default) it serves `capacity / base` calls a second at any
//! concurrency past its capacity; above 1 it serves fewer the further it is pushed, as a real
//! server does under contention. With `refuses`, a call that would go past the capacity is
//! refused at once instead (a 429 that takes a tenth of `base`). Capacity and base time can
//! change while it runs.
#![allow(dead_code)] // each user takes what it needs

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use task_limiter::Limiter;
use tokio::time::Instant;

/// The downstream refused a call: it was at its capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy;

/// The spread of a call's time around `base`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Noise {
    /// A factor uniform in 0.9..1.1.
    Uniform,
    /// A factor `exp(sigma × Z - sigma² / 2)`, Z standard normal: mean 1, median below it, and
    /// a heavy right tail (sigma 0.5: a tenth of the calls take over 1.6× the mean, one in a
    /// hundred over 2.8×).
    LogNormal(f64),
}

pub struct Downstream {
    in_flight: AtomicUsize,
    capacity: AtomicUsize,
    base_ns: AtomicU64,
    refuses: bool,
    thrash: f64,
    noise: Noise,
    rng: AtomicU64,
}

/// A xorshift64 step: the same sequence on every run.
fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A uniform number in (0, 1) from a xorshift state, which it moves on.
fn uniform(state: &mut u64) -> f64 {
    *state = xorshift(*state);
    ((*state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// A standard normal number (Box-Muller) from a xorshift state, which it moves on.
fn normal(state: &mut u64) -> f64 {
    let (u, v) = (uniform(state), uniform(state));
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

impl Downstream {
    pub fn new(capacity: usize, base: Duration, refuses: bool) -> Arc<Downstream> {
        Downstream::thrashing(capacity, base, refuses, 1.0)
    }

    /// A downstream whose calls slow down as `(in_flight / capacity)^thrash` past capacity.
    pub fn thrashing(
        capacity: usize,
        base: Duration,
        refuses: bool,
        thrash: f64,
    ) -> Arc<Downstream> {
        Downstream::noisy(capacity, base, refuses, thrash, Noise::Uniform)
    }

    /// A thrashing downstream whose calls spread around `base` as `noise` says.
    pub fn noisy(
        capacity: usize,
        base: Duration,
        refuses: bool,
        thrash: f64,
        noise: Noise,
    ) -> Arc<Downstream> {
        Arc::new(Downstream {
            in_flight: AtomicUsize::new(0),
            capacity: AtomicUsize::new(capacity),
            base_ns: AtomicU64::new(base.as_nanos() as u64),
            refuses,
            thrash,
            noise,
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        })
    }

    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    pub fn set_base(&self, base: Duration) {
        self.base_ns
            .store(base.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The next noise factor (see [`Noise`]): the same sequence on every run.
    fn noise(&self) -> f64 {
        match self.noise {
            Noise::Uniform => {
                let old = self
                    .rng
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(xorshift(x)))
                    .unwrap();
                0.9 + 0.2 * (xorshift(old) % 1000) as f64 / 1000.0
            }
            Noise::LogNormal(sigma) => {
                // Box-Muller takes two steps of the state: move it on by two, and draw from
                // where it was.
                let mut old = self
                    .rng
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
                        Some(xorshift(xorshift(x)))
                    })
                    .unwrap();
                (sigma * normal(&mut old) - sigma * sigma / 2.0).exp()
            }
        }
    }

    /// One call.
    pub async fn call(&self) -> Result<(), Busy> {
        let base = Duration::from_nanos(self.base_ns.load(Ordering::Relaxed));
        let capacity = self.capacity();
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        if self.refuses && now > capacity {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            tokio::time::sleep(base.mul_f64(0.1 * self.noise())).await;
            return Err(Busy);
        }
        let factor = (now as f64 / capacity as f64).max(1.0).powf(self.thrash);
        tokio::time::sleep(base.mul_f64(factor * self.noise())).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What a run saw, one entry per finished item, in the order they finished.
#[derive(Default)]
pub struct Trace {
    /// When it finished, since the run began.
    pub at: Vec<Duration>,
    /// The limit in force when it finished.
    pub limits: Vec<usize>,
    /// The downstream's capacity when it finished.
    pub capacities: Vec<usize>,
    /// Its latency as its caller saw it: queue wait plus run time.
    pub latencies: Vec<Duration>,
    /// Its run time: the time the call spent in the downstream.
    pub run_times: Vec<Duration>,
    /// Whether the downstream refused it.
    pub refused: Vec<bool>,
}

impl Trace {
    /// Items per second of the run's (simulated) time.
    pub fn throughput(&self) -> f64 {
        let took = self.at.last().copied().unwrap_or_default().as_secs_f64();
        let served = self.refused.iter().filter(|refused| !**refused).count();
        served as f64 / took.max(f64::MIN_POSITIVE)
    }

    /// The `q` quantile (0..=1) of the latencies.
    pub fn latency_quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// Runs `phases` of `(capacity, items)` one after the other, with `clients` callers that each
/// submit one call through `limiter` and await it, again and again (a caller whose call is
/// refused goes on with its next one, as a retry would). Returns the trace.
pub async fn run(
    limiter: &Limiter,
    downstream: &Arc<Downstream>,
    clients: usize,
    phases: &[(usize, usize)],
) -> Trace {
    let start = Instant::now();
    let trace = Arc::new(std::sync::Mutex::new(Trace::default()));
    for &(capacity, items) in phases {
        downstream.set_capacity(capacity);
        let left = Arc::new(AtomicUsize::new(items));
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (limiter, downstream, trace, left) = (
                limiter.clone(),
                downstream.clone(),
                trace.clone(),
                left.clone(),
            );
            callers.spawn(async move {
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    call(&limiter, &downstream, start, &trace).await;
                }
            });
        }
        while callers.join_next().await.is_some() {}
    }
    Arc::try_unwrap(trace)
        .ok()
        .expect("the callers are gone")
        .into_inner()
        .unwrap()
}

/// Runs `phases` of `(capacity, duration)` with calls arriving at 80 % of the capacity each
/// phase (`0.8 × capacity / base` a second, evenly spaced), each submitted through `limiter`
/// on arrival and awaited by a task of its own: a service whose callers do not wait for each
/// other. Returns the trace, in the order the calls finished.
pub async fn run_open(
    limiter: &Limiter,
    downstream: &Arc<Downstream>,
    base: Duration,
    phases: &[(usize, Duration)],
) -> Trace {
    let arrivals = Arrivals {
        load: 0.8,
        poisson: false,
    };
    run_arrivals(limiter, downstream, base, arrivals, phases).await
}

/// How calls arrive in [`run_arrivals`].
#[derive(Clone, Copy, Debug)]
pub struct Arrivals {
    /// The rate, as a share of the phase's capacity (`load × capacity / base` a second).
    pub load: f64,
    /// Exponential gaps between calls (a Poisson process, the same on every run) rather than
    /// even ones.
    pub poisson: bool,
}

/// [`run_open`], with calls arriving as `arrivals` says.
pub async fn run_arrivals(
    limiter: &Limiter,
    downstream: &Arc<Downstream>,
    base: Duration,
    arrivals: Arrivals,
    phases: &[(usize, Duration)],
) -> Trace {
    let start = Instant::now();
    let trace = Arc::new(std::sync::Mutex::new(Trace::default()));
    let mut calls = tokio::task::JoinSet::new();
    let mut rng = 0x2545_F491_4F6C_DD1D_u64;
    for &(capacity, duration) in phases {
        downstream.set_capacity(capacity);
        let every = base.div_f64(arrivals.load * capacity as f64);
        let phase_end = Instant::now() + duration;
        let mut next = Instant::now();
        while next < phase_end {
            tokio::time::sleep_until(next).await;
            next += match arrivals.poisson {
                true => every.mul_f64(-uniform(&mut rng).ln()),
                false => every,
            };
            let (limiter, downstream, trace) = (limiter.clone(), downstream.clone(), trace.clone());
            calls.spawn(async move { call(&limiter, &downstream, start, &trace).await });
            // Reap as we go, so that a long run does not hold every finished task.
            while calls.try_join_next().is_some() {}
        }
    }
    while calls.join_next().await.is_some() {}
    Arc::try_unwrap(trace)
        .ok()
        .expect("the calls are gone")
        .into_inner()
        .unwrap()
}

/// One call through `limiter`, an overload if refused, logged in `trace`.
async fn call(
    limiter: &Limiter,
    downstream: &Arc<Downstream>,
    start: Instant,
    trace: &std::sync::Mutex<Trace>,
) {
    let asked = Instant::now();
    let downstream2 = downstream.clone();
    let (reply, run_time) = limiter
        .build_task()
        .overload_if(|reply: &(Result<(), Busy>, Duration)| reply.0.is_err())
        .spawn(async move {
            let started = Instant::now();
            (downstream2.call().await, started.elapsed())
        })
        .await
        .expect("a call never panics");
    let mut trace = trace.lock().unwrap();
    trace.at.push(start.elapsed());
    trace.limits.push(limiter.limit());
    trace.capacities.push(downstream.capacity());
    trace.latencies.push(asked.elapsed());
    trace.run_times.push(run_time);
    trace.refused.push(reply.is_err());
}

/// The share of `limits` within `low..=high`.
pub fn share_within(limits: &[usize], low: usize, high: usize) -> f64 {
    let within = limits.iter().filter(|l| (low..=high).contains(*l)).count();
    within as f64 / limits.len().max(1) as f64
}

/// The mean of `limits`.
pub fn mean(limits: &[usize]) -> f64 {
    limits.iter().sum::<usize>() as f64 / limits.len().max(1) as f64
}

impl Trace {
    /// The calls that finished from `warm_up` on, as a trace of their own (for settled
    /// figures; its throughput counts from the run's start, so it is only for latencies).
    pub fn after(&self, warm_up: Duration) -> Trace {
        let from = self.at.partition_point(|at| *at < warm_up);
        Trace {
            at: self.at[from..].to_vec(),
            limits: self.limits[from..].to_vec(),
            capacities: self.capacities[from..].to_vec(),
            latencies: self.latencies[from..].to_vec(),
            run_times: self.run_times[from..].to_vec(),
            refused: self.refused[from..].to_vec(),
        }
    }
}

/// Served calls a second and the latencies of one open-loop run: over the whole run, and
/// (`settled_p99`) over the calls that finished after a warm-up.
#[derive(Clone, Copy, Debug)]
pub struct OpenFigures {
    pub throughput: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub settled_p99: Duration,
}

impl OpenFigures {
    pub fn of(trace: &Trace, warm_up: Duration) -> OpenFigures {
        OpenFigures {
            throughput: trace.throughput(),
            p50: trace.latency_quantile(0.5),
            p99: trace.latency_quantile(0.99),
            settled_p99: trace.after(warm_up).latency_quantile(0.99),
        }
    }
}

/// Runs each of `limits` as a fixed limit against a fresh downstream from `downstream`, with
/// calls arriving as `arrivals` says for `duration` at `capacity`, and returns the figures of
/// each, and the best: the lowest settled p99 (after `warm_up`) among the limits that serve at
/// least 99 % of the most any of them served.
pub async fn best_fixed(
    limits: &[usize],
    downstream: impl Fn() -> Arc<Downstream>,
    base: Duration,
    arrivals: Arrivals,
    phases: &[(usize, Duration)],
    warm_up: Duration,
) -> (Vec<(usize, OpenFigures)>, (usize, OpenFigures)) {
    let mut all = Vec::new();
    for &n in limits {
        let limiter = Limiter::new(n);
        let trace = run_arrivals(&limiter, &downstream(), base, arrivals, phases).await;
        all.push((n, OpenFigures::of(&trace, warm_up)));
    }
    let most = all.iter().map(|(_, f)| f.throughput).fold(0.0, f64::max);
    let best = all
        .iter()
        .filter(|(_, f)| f.throughput >= 0.99 * most)
        .min_by_key(|(_, f)| f.settled_p99)
        .copied()
        .expect("one limit at least");
    (all, best)
}
