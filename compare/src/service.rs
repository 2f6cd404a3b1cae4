//! The service shape: C client tasks in a closed loop, each submitting one item and awaiting its
//! result before it submits the next, as request handlers do.
//!
//! A burst keeps the queue full, so a worker always finds a next item; here, with C < N, the
//! queue is empty most of the time and every item meets an idle limiter. What that costs (a worker
//! spawned per item, manager wake-ups) is what this shape measures; with C > N the queue fills
//! again and the semaphore pattern keeps C − N idle tasks.
//!
//! Patterns, all on one multi-thread runtime with 2 workers, clients spawned with `tokio::spawn`:
//! - `limiter`: `limiter.spawn(work).await`, one `Limiter::new(N)` shared by the clients;
//! - `semaphore`: `tokio::spawn(async move { sem.acquire().await; work.await }).await`, one
//!   `Arc<Semaphore>`;
//! - `inline`: the client acquires a permit and runs the work itself, no spawn: the floor;
//! - `run`: `limiter.run(work).await`, the work inline under a lease (issue 19);
//! - `acquire`: `let _lease = limiter.acquire().await?; work.await`;
//! - `limiter+hist`, `run+hist`: `limiter` and `run` on a limiter built with
//!   `distributions(true)` (issue 22): the histograms' cost, measured against their plain forms.
//!
//! Items: `yield` calls `tokio::task::yield_now().await` once; `spin` busy-spins for about 2 µs, a
//! number of loop iterations calibrated once in the parent, so every child does the same work.
//!
//! Each child runs a warm-up (not measured: the limiter starts its workers, allocator caches
//! fill), then measures for a fixed duration or a fixed number of requests. Latency is submit to
//! result, per request, from `Instant`; every client keeps its own durations and the child merges
//! and sorts them.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use task_limiter::Limiter;
use tokio::sync::Semaphore;

use crate::{fmt_rate, median, result_field, run_child_process, sample_alive_tasks};

/// `TASK_LIMITER_COMPARE_KEEP_ALIVE_MS`: the limiter's keep-alive for a child run, to measure
/// what parking saves (0: a worker exits as soon as it finds no work, as the first version did).
fn keep_alive_override() -> Option<Duration> {
    std::env::var("TASK_LIMITER_COMPARE_KEEP_ALIVE_MS")
        .ok()
        .map(|ms| Duration::from_millis(ms.parse().expect("a number of milliseconds")))
}

pub(crate) const ALL_PATTERNS: &[&str] = &[
    "limiter",
    "limiter+hist",
    "adaptive",
    "semaphore",
    "inline",
    "run",
    "run+hist",
    "acquire",
];
pub(crate) const ALL_JOBS: &[&str] = &["yield", "spin"];

/// How long one `spin` item busy-spins.
const SPIN: Duration = Duration::from_micros(2);

pub(crate) struct Config {
    pub(crate) clients: Vec<usize>,
    pub(crate) limits: Vec<usize>,
    pub(crate) jobs: Vec<String>,
    pub(crate) patterns: Vec<String>,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    /// Measured requests per run, all clients together; `None`: measure for `duration`.
    pub(crate) requests: Option<u64>,
    /// Spin-loop iterations of one `spin` item; `None`: calibrated when the run starts.
    pub(crate) spin_iters: Option<u64>,
}

impl Config {
    pub(crate) fn new(quick: bool) -> Config {
        Config {
            clients: vec![4, 16, 256],
            limits: vec![8, 64],
            jobs: crate::list("yield,spin"),
            patterns: crate::list("limiter,run,acquire,semaphore,inline"),
            // Quick: 36 cells × 6 children in about 20 s. A full run measures 1 s per child.
            warmup: Duration::from_millis(if quick { 20 } else { 200 }),
            duration: Duration::from_millis(if quick { 50 } else { 1000 }),
            requests: None,
            spin_iters: None,
        }
    }
}

/// The header line that describes the service workload.
pub(crate) fn workload(config: &crate::Config, spin_iters: u64) -> String {
    let s = &config.service;
    format!(
        "- service workload: C = {:?} client tasks in a closed loop, limits N = {:?}, items {:?} \
         (`spin` = {spin_iters} loop iterations, {}), {} ms warm-up then {}, {} interleaved timed \
         runs per cell{}; multi_thread runtime with 2 workers",
        s.clients,
        s.limits,
        s.jobs,
        if s.spin_iters.is_some() {
            // Given to repeat an earlier run's work exactly; say what this machine makes of it.
            format!(
                "from --spin-iters; {} µs calibrates to {} here",
                SPIN.as_micros(),
                calibrate_spin()
            )
        } else {
            format!("≈ {} µs, calibrated at start", SPIN.as_micros())
        },
        s.warmup.as_millis(),
        match s.requests {
            Some(r) => format!("{r} measured requests"),
            None => format!("{} ms measured", s.duration.as_millis()),
        },
        config.runs,
        if config.sample {
            " + 1 separate sampling run (live tasks)"
        } else {
            ""
        },
    )
}

// === the child: one measurement ===

#[derive(Clone, Copy)]
enum Job {
    Yield,
    Spin(u64),
}

/// One request's work; it returns its input so that the client can check it got its own result.
async fn item(job: Job, i: u64) -> u64 {
    match job {
        Job::Yield => tokio::task::yield_now().await,
        Job::Spin(iters) => spin(iters),
    }
    i
}

/// Busy work the optimizer cannot remove: `black_box` keeps every iteration.
fn spin(iters: u64) {
    let mut x = 0u64;
    for i in 0..iters {
        x = black_box(x.wrapping_mul(31).wrapping_add(i));
    }
    black_box(x);
}

/// Spin-loop iterations that take [`SPIN`] on this machine.
pub(crate) fn calibrate_spin() -> u64 {
    // The fastest of several trials: a trial that lost its CPU for a while reads slow, and the
    // item should be 2 µs of work on a CPU of its own, the same in every child.
    let mut best = 0.0f64;
    for _ in 0..7 {
        let mut iters = 1u64 << 10;
        loop {
            let start = Instant::now();
            spin(iters);
            let took = start.elapsed();
            if took >= Duration::from_millis(5) {
                best = best.max(iters as f64 / took.as_secs_f64());
                break;
            }
            iters *= 2;
        }
    }
    ((best * SPIN.as_secs_f64()).round() as u64).max(1)
}

/// Where a client sends its requests.
#[derive(Clone)]
enum Target {
    Limiter(Limiter),
    Run(Limiter),
    Acquire(Limiter),
    Semaphore(Arc<Semaphore>),
    Inline(Arc<Semaphore>),
}

impl Target {
    async fn call(&self, job: Job, i: u64) -> u64 {
        match self {
            Target::Limiter(limiter) => limiter.spawn(item(job, i)).await.expect("item failed"),
            Target::Run(limiter) => limiter.run(item(job, i)).await.expect("limiter closed"),
            Target::Acquire(limiter) => {
                let _lease = limiter.acquire().await.expect("limiter closed");
                item(job, i).await
            }
            Target::Semaphore(sem) => {
                let sem = sem.clone();
                tokio::spawn(async move {
                    let _permit = sem.acquire().await.expect("semaphore closed");
                    item(job, i).await
                })
                .await
                .expect("task failed")
            }
            Target::Inline(sem) => {
                let _permit = sem.acquire().await.expect("semaphore closed");
                item(job, i).await
            }
        }
    }

    fn limiter(&self) -> Option<&Limiter> {
        match self {
            Target::Limiter(limiter) | Target::Run(limiter) | Target::Acquire(limiter) => {
                Some(limiter)
            }
            Target::Semaphore(_) | Target::Inline(_) => None,
        }
    }

    fn workers_spawned(&self) -> u64 {
        self.limiter()
            .map_or(0, |limiter| limiter.metrics().workers_spawned)
    }
}

const WARM: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// What the coordinator and the clients share.
struct Phase {
    /// `WARM`, `MEASURE` or `STOP`, set by the coordinator.
    phase: AtomicU8,
    /// Measured requests claimed so far, in `--requests` runs.
    tickets: AtomicU64,
    requests: Option<u64>,
}

/// One client: submit, await, record, again. Returns the latencies of its measured requests, in
/// nanoseconds.
async fn client(target: Target, job: Job, shared: Arc<Phase>, id: u64) -> Vec<u64> {
    let mut latencies = Vec::with_capacity(1 << 12);
    // The client's ID in the high bits: a result that went to the wrong client cannot match.
    let mut i = id << 40;
    loop {
        // Acquire pairs with the coordinator's Release store: a request submitted after this
        // load sees MEASURE happens after the coordinator read the spawn counter.
        let measured = match shared.phase.load(Ordering::Acquire) {
            WARM => false,
            MEASURE => match shared.requests {
                Some(r) if shared.tickets.fetch_add(1, Ordering::Relaxed) >= r => break,
                _ => true,
            },
            _ => break,
        };
        let start = Instant::now();
        let value = target.call(job, i).await;
        let took = start.elapsed();
        assert_eq!(value, i, "a request got another request's result");
        if measured {
            latencies.push(took.as_nanos() as u64);
        }
        i += 1;
    }
    latencies
}

struct Outcome {
    /// Every measured request's latency, in nanoseconds.
    latencies: Vec<u64>,
    /// From the start of the measured phase until the last client returned.
    secs: f64,
    /// Worker tasks the limiter spawned during the measured phase.
    spawns: u64,
}

/// Builds the target inside the runtime, runs C clients through the warm-up and the measured
/// phase, and collects what they recorded.
async fn drive(pattern: &str, n: usize, c: usize, job: Job, run: &RunSpec) -> Outcome {
    let target = match pattern {
        "limiter" => Target::Limiter(match keep_alive_override() {
            None => Limiter::new(n),
            Some(after) => Limiter::builder().limit(n).keep_alive(after).build(),
        }),
        // Gradient held at `n` by its bounds: the sampling's cost alone.
        "adaptive" => Target::Limiter(
            Limiter::builder()
                .adaptive(task_limiter::adaptive::Gradient::new())
                .limit(n)
                .min_limit(n)
                .max_limit(n)
                .build(),
        ),
        // `Builder::distributions` on: the histograms' cost (clock reads at each transition).
        "limiter+hist" => Target::Limiter(Limiter::builder().limit(n).distributions(true).build()),
        "run" => Target::Run(Limiter::new(n)),
        "run+hist" => Target::Run(Limiter::builder().limit(n).distributions(true).build()),
        "acquire" => Target::Acquire(Limiter::new(n)),
        "semaphore" => Target::Semaphore(Arc::new(Semaphore::new(n))),
        "inline" => Target::Inline(Arc::new(Semaphore::new(n))),
        other => panic!("unknown service pattern {other:?}"),
    };
    let shared = Arc::new(Phase {
        phase: AtomicU8::new(WARM),
        tickets: AtomicU64::new(0),
        requests: run.requests,
    });
    let clients: Vec<_> = (0..c as u64)
        .map(|id| tokio::spawn(client(target.clone(), job, shared.clone(), id)))
        .collect();
    tokio::time::sleep(run.warmup).await;
    // Read before the clients see MEASURE: a worker spawned late for a warm-up request counts
    // against the measured ones, so the figure errs high, never low.
    let spawned_before = target.workers_spawned();
    shared.phase.store(MEASURE, Ordering::Release);
    let start = Instant::now();
    if run.requests.is_none() {
        tokio::time::sleep(run.duration).await;
        shared.phase.store(STOP, Ordering::Release);
    }
    // Requests in flight at STOP were submitted while measuring: they finish and count.
    let mut per_client = Vec::with_capacity(c);
    for handle in clients {
        per_client.push(handle.await.expect("client failed"));
    }
    let secs = start.elapsed().as_secs_f64();
    let latencies = per_client.concat();
    let spawns = target.workers_spawned() - spawned_before;
    if let Some(limiter) = target.limiter() {
        limiter.close();
        limiter.wait().await;
    }
    Outcome {
        latencies,
        secs,
        spawns,
    }
}

/// The phase lengths a child is given.
struct RunSpec {
    warmup: Duration,
    duration: Duration,
    requests: Option<u64>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs one measurement: `spec` is `pattern,N,C,job,mode,warmup_us,duration_us,requests,spin_iters`
/// (`requests` 0: measure for the duration).
pub(crate) fn child(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let [pattern, n, c, job, mode, warmup_us, duration_us, requests, spin_iters] = parts[..] else {
        panic!("bad --service-child spec {spec:?}");
    };
    let num = |s: &str| -> u64 { s.parse().unwrap_or_else(|_| panic!("bad number {s:?}")) };
    let (n, c) = (num(n) as usize, num(c) as usize);
    let job = match job {
        "yield" => Job::Yield,
        "spin" => Job::Spin(num(spin_iters)),
        other => panic!("unknown service job {other:?}"),
    };
    let run = RunSpec {
        warmup: Duration::from_micros(num(warmup_us)),
        duration: Duration::from_micros(num(duration_us)),
        requests: Some(num(requests)).filter(|&r| r > 0),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = (mode == "sample").then(|| sample_alive_tasks(rt.handle().clone(), stop.clone()));
    let outcome = rt.block_on(drive(pattern, n, c, job, &run));
    stop.store(true, Ordering::Release);
    let (max_alive, samples) = sampler.map_or((0, 0), |s| s.join().expect("sampler"));
    let mut latencies = outcome.latencies;
    latencies.sort_unstable();
    println!(
        "RESULT requests={} secs={} p50_ns={} p99_ns={} spawns={} max_alive={max_alive} \
         samples={samples}",
        latencies.len(),
        outcome.secs,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        outcome.spawns,
    );
    std::process::exit(0);
}

// === the parent: schedules children and reports ===

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    job: String,
    n: usize,
    c: usize,
    pattern: String,
}

/// One child's report.
#[derive(Clone, Copy, Default)]
struct Sample {
    requests: u64,
    req_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    spawns_per_item: f64,
    /// Most live tasks seen beyond the C clients (sampling runs only).
    extra_alive: usize,
}

#[derive(Default)]
struct Cell {
    timed: Vec<Sample>,
    sampled: Option<Sample>,
    failures: Vec<String>,
}

impl Cell {
    fn median_of(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        median(&mut self.timed.iter().map(f).collect::<Vec<_>>())
    }

    fn rate(&self) -> f64 {
        self.median_of(|s| s.req_per_sec)
    }

    fn p50(&self) -> f64 {
        self.median_of(|s| s.p50_us)
    }

    fn p99(&self) -> f64 {
        self.median_of(|s| s.p99_us)
    }

    fn spawns_per_item(&self) -> f64 {
        self.median_of(|s| s.spawns_per_item)
    }

    fn range(&self) -> (f64, f64) {
        let rates = self.timed.iter().map(|s| s.req_per_sec);
        (
            rates.clone().fold(f64::INFINITY, f64::min),
            rates.fold(0.0, f64::max),
        )
    }
}

fn run_child(
    config: &crate::Config,
    spin_iters: u64,
    key: &Key,
    mode: &str,
) -> Result<Sample, String> {
    let s = &config.service;
    let spec = format!(
        "{},{},{},{},{mode},{},{},{},{spin_iters}",
        key.pattern,
        key.n,
        key.c,
        key.job,
        s.warmup.as_micros(),
        s.duration.as_micros(),
        s.requests.unwrap_or(0),
    );
    let line = run_child_process(&["--service-child", &spec], config.timeout)?;
    let field = |name: &str| result_field(&line, name);
    let requests = field("requests");
    if requests.is_nan() || requests < 1.0 {
        return Err("no request completed in the measured phase".to_owned());
    }
    Ok(Sample {
        requests: requests as u64,
        req_per_sec: requests / field("secs"),
        p50_us: field("p50_ns") / 1e3,
        p99_us: field("p99_ns") / 1e3,
        spawns_per_item: field("spawns") / requests,
        extra_alive: (field("max_alive") as usize).saturating_sub(key.c),
    })
}

/// Runs every service measurement, interleaved, and prints the raw lines, the tables and the
/// targets.
pub(crate) fn run(config: &crate::Config, spin_iters: u64, started: Instant) {
    let s = &config.service;
    let mut keys = Vec::new();
    for job in &s.jobs {
        for &n in &s.limits {
            for &c in &s.clients {
                for pattern in &s.patterns {
                    keys.push(Key {
                        job: job.clone(),
                        n,
                        c,
                        pattern: pattern.clone(),
                    });
                }
            }
        }
    }
    let mut cells: std::collections::BTreeMap<Key, Cell> = Default::default();
    let total = keys.len() * (config.runs + usize::from(config.sample));
    let mut done = 0;

    println!("## Service shape\n\n### Raw measurements\n\n```text");
    println!(
        "run,job,n,c,pattern,mode,requests,req_per_s,p50_us,p99_us,spawns_per_item,extra_alive"
    );
    let mut passes: Vec<(String, &str)> =
        (0..config.runs).map(|r| (r.to_string(), "time")).collect();
    if config.sample {
        passes.push(("S".to_owned(), "sample"));
    }
    for (run, mode) in &passes {
        for key in &keys {
            done += 1;
            let result = run_child(config, spin_iters, key, mode);
            let cell = cells.entry(key.clone()).or_default();
            let what = format!("{} N={} C={} {}", key.job, key.n, key.c, key.pattern);
            match result {
                Ok(sample) => {
                    println!(
                        "{run},{},{},{},{},{mode},{},{:.0},{:.2},{:.2},{:.4},{}",
                        key.job,
                        key.n,
                        key.c,
                        key.pattern,
                        sample.requests,
                        sample.req_per_sec,
                        sample.p50_us,
                        sample.p99_us,
                        sample.spawns_per_item,
                        sample.extra_alive,
                    );
                    eprintln!(
                        "[{done}/{total} {:.0}s] {run} service {what}: {} p50 {:.1} µs p99 {:.1} \
                         µs{}",
                        started.elapsed().as_secs_f64(),
                        fmt_rate(sample.req_per_sec),
                        sample.p50_us,
                        sample.p99_us,
                        if *mode == "sample" {
                            format!(", {} live tasks beyond the clients", sample.extra_alive)
                        } else {
                            String::new()
                        }
                    );
                    if *mode == "sample" {
                        cell.sampled = Some(sample);
                    } else {
                        cell.timed.push(sample);
                    }
                }
                Err(err) => {
                    println!(
                        "{run},{},{},{},{},{mode},FAILED: {err}",
                        key.job, key.n, key.c, key.pattern
                    );
                    eprintln!("[{done}/{total}] {run} service {what} FAILED: {err}");
                    cell.failures.push(format!("run {run}: {err}"));
                }
            }
        }
    }
    println!("```\n");
    println!("{}", report(config, spin_iters, &cells));
}

fn pattern_title(p: &str) -> &str {
    match p {
        "limiter" => "**task-limiter** `spawn(work).await`",
        "adaptive" => "**task-limiter**, `adaptive(Gradient)` held at N",
        "semaphore" => "`tokio::spawn` + `Semaphore` inside, awaited",
        "inline" => "permit, work inline, no spawn (floor)",
        "run" => "**task-limiter** `run(work).await` (a lease, inline)",
        "limiter+hist" => "**task-limiter** `spawn(work).await`, `distributions(true)`",
        "run+hist" => "**task-limiter** `run(work).await`, `distributions(true)`",
        "acquire" => "**task-limiter** `acquire().await`, work inline",
        other => other,
    }
}

fn report(
    config: &crate::Config,
    spin_iters: u64,
    cells: &std::collections::BTreeMap<Key, Cell>,
) -> String {
    let s = &config.service;
    let mut out = String::new();
    let get = |job: &str, n: usize, c: usize, pattern: &str| {
        cells.get(&Key {
            job: job.to_owned(),
            n,
            c,
            pattern: pattern.to_owned(),
        })
    };
    // Columns: every (N, C), grouped by N.
    let columns: Vec<(usize, usize)> = s
        .limits
        .iter()
        .flat_map(|&n| s.clients.iter().map(move |&c| (n, c)))
        .collect();
    let column_heads = || {
        columns
            .iter()
            .map(|(n, c)| format!(" N = {n}, C = {c} |"))
            .collect::<String>()
    };
    let _ = writeln!(
        out,
        "### Results\n\nEach cell: median requests/s over the timed runs · task-limiter ÷ this \
         pattern (above 1 means task-limiter is faster) · p50 / p99 latency in µs, submit to \
         result (medians of the per-run percentiles) · most live tasks seen beyond the C clients \
         (`num_alive_tasks` − C, separate sampling run; includes the limiter's manager). C < N: \
         the queue is mostly empty; C > N: saturated.\n"
    );
    for job in &s.jobs {
        let job_name = match job.as_str() {
            "yield" => "items that `yield_now()` once".to_owned(),
            _ if s.spin_iters.is_some() => format!("items that spin {spin_iters} iterations"),
            _ => format!(
                "items that spin ≈ {} µs ({spin_iters} iterations)",
                SPIN.as_micros()
            ),
        };
        let _ = writeln!(out, "#### Service, multi_thread (2 workers), {job_name}\n");
        let _ = writeln!(out, "| pattern |{}", column_heads());
        let _ = writeln!(out, "|---|{}", "--:|".repeat(columns.len()));
        for pattern in &s.patterns {
            let _ = write!(out, "| {} |", pattern_title(pattern));
            for &(n, c) in &columns {
                let Some(cell) = get(job, n, c, pattern).filter(|c| !c.timed.is_empty()) else {
                    let _ = write!(out, " – |");
                    continue;
                };
                let mine = get(job, n, c, "limiter").map_or(f64::NAN, Cell::rate);
                let live = cell
                    .sampled
                    .map_or("–".to_owned(), |s| s.extra_alive.to_string());
                let fails = if cell.failures.is_empty() {
                    String::new()
                } else {
                    format!(" ({} failed)", cell.failures.len())
                };
                let _ = write!(
                    out,
                    " {} · ×{:.2} · {:.1} / {:.1} µs · {live}{fails} |",
                    fmt_rate(cell.rate()),
                    mine / cell.rate(),
                    cell.p50(),
                    cell.p99(),
                );
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out);
    }

    if s.patterns.iter().any(|p| p == "limiter") {
        let _ = writeln!(
            out,
            "#### task-limiter: worker tasks spawned per item after warm-up (median over the \
             timed runs)\n"
        );
        let _ = writeln!(out, "| job |{}", column_heads());
        let _ = writeln!(out, "|---|{}", "--:|".repeat(columns.len()));
        for job in &s.jobs {
            let _ = write!(out, "| {job} |");
            for &(n, c) in &columns {
                match get(job, n, c, "limiter").filter(|c| !c.timed.is_empty()) {
                    Some(cell) => {
                        let _ = write!(out, " {:.3} |", cell.spawns_per_item());
                    }
                    None => {
                        let _ = write!(out, " – |");
                    }
                }
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(
        out,
        "#### Service spread (min–max requests/s over the timed runs)\n"
    );
    let _ = writeln!(out, "| job | pattern |{}", column_heads());
    let _ = writeln!(out, "|---|---|{}", "--:|".repeat(columns.len()));
    for job in &s.jobs {
        for pattern in &s.patterns {
            let _ = write!(out, "| {job} | {pattern} |");
            for &(n, c) in &columns {
                match get(job, n, c, pattern).filter(|c| !c.timed.is_empty()) {
                    Some(cell) => {
                        let (lo, hi) = cell.range();
                        let _ = write!(out, " {:.2}–{:.2} M |", lo / 1e6, hi / 1e6);
                    }
                    None => {
                        let _ = write!(out, " – |");
                    }
                }
            }
            let _ = writeln!(out);
        }
    }
    let _ = writeln!(out);

    out.push_str(&targets(config, cells));
    out
}

/// Checks the service targets against this run: every ratio is between cells of this run.
fn targets(config: &crate::Config, cells: &std::collections::BTreeMap<Key, Cell>) -> String {
    let s = &config.service;
    let mut out = String::new();
    let get = |job: &str, n: usize, c: usize, pattern: &str| {
        cells
            .get(&Key {
                job: job.to_owned(),
                n,
                c,
                pattern: pattern.to_owned(),
            })
            .filter(|cell| !cell.timed.is_empty())
    };
    let mark = |ok: bool| if ok { "met" } else { "**NOT met**" };
    let _ = writeln!(out, "### Service targets (from this run)\n");
    let mut line = |text: String| {
        let _ = writeln!(out, "- {text}");
    };
    for job in &s.jobs {
        for &n in &s.limits {
            for &c in &s.clients {
                let (Some(mine), Some(sem)) =
                    (get(job, n, c, "limiter"), get(job, n, c, "semaphore"))
                else {
                    continue;
                };
                let at = format!("service {job} N={n} C={c}");
                let ratio = mine.rate() / sem.rate();
                let rates = format!("{} vs {}", fmt_rate(mine.rate()), fmt_rate(sem.rate()));
                if c < n {
                    line(format!(
                        "{at} (C < N): ≥ 1.1× spawn + semaphore req/s: ×{ratio:.2} ({rates}) — {}",
                        mark(ratio >= 1.1)
                    ));
                    line(format!(
                        "{at} (C < N): p99 ≤ spawn + semaphore's: {:.1} µs vs {:.1} µs — {}",
                        mine.p99(),
                        sem.p99(),
                        mark(mine.p99() <= sem.p99())
                    ));
                    line(format!(
                        "{at} (C < N): ≤ 0.05 worker spawns per item after warm-up: {:.3} — {}",
                        mine.spawns_per_item(),
                        mark(mine.spawns_per_item() <= 0.05)
                    ));
                } else if c > n {
                    line(format!(
                        "{at} (C > N): ≥ 1.5× spawn + semaphore req/s: ×{ratio:.2} ({rates}) — {}",
                        mark(ratio >= 1.5)
                    ));
                }
                // Leases (issue 19): `run` against the spawn pattern and the inline floor.
                if let (Some(run), Some(floor)) = (get(job, n, c, "run"), get(job, n, c, "inline"))
                {
                    let to_floor = run.rate() / floor.rate();
                    if c < n {
                        let to_sem = run.rate() / sem.rate();
                        line(format!(
                            "{at} (C < N): run ≥ 2× spawn + semaphore req/s: ×{to_sem:.2} — {}",
                            mark(to_sem >= 2.0)
                        ));
                    }
                    line(format!(
                        "{at}: run ≥ 0.8× the inline floor's req/s: ×{to_floor:.2} ({} vs {}) — {}",
                        fmt_rate(run.rate()),
                        fmt_rate(floor.rate()),
                        mark(to_floor >= 0.8)
                    ));
                    line(format!(
                        "{at}: run's p99 ≤ 1.5× the floor's: {:.1} µs vs {:.1} µs — {}",
                        run.p99(),
                        floor.p99(),
                        mark(run.p99() <= 1.5 * floor.p99())
                    ));
                }
            }
        }
    }
    let mut live_checked = 0;
    let mut worst_live = Vec::new();
    for (key, cell) in cells.iter().filter(|(k, _)| k.pattern == "limiter") {
        if let Some(sample) = cell.sampled {
            live_checked += 1;
            // The limit, the manager, and one transient worker that has finished and is exiting.
            let allowed = key.n + 2;
            if sample.extra_alive > allowed {
                worst_live.push(format!(
                    "{} N={} C={}: {} > {allowed}",
                    key.job, key.n, key.c, sample.extra_alive
                ));
            }
        }
    }
    if live_checked > 0 {
        line(format!(
            "service: live tasks beyond the clients ≤ limit + 2 in all {live_checked} sampled \
             limiter runs — {}{}",
            mark(worst_live.is_empty()),
            if worst_live.is_empty() {
                String::new()
            } else {
                format!(": {}", worst_live.join("; "))
            }
        ));
    }
    let _ = writeln!(out);
    out
}
