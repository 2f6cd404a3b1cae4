//! Compares task-limiter with the usual ways to limit concurrency on tokio, side by side, under
//! the two shapes of load it must be fast at: a **burst** (a large batch submitted at once, the
//! queue always full) and a **service** (C clients that each submit one item and await it).
//!
//! Run it from the workspace root with `cargo run --release -p task-limiter-compare -- [flags]`;
//! `-- --quick` for a smoke run, `-- --shapes service` (or `burst`) for one shape, `-- --help` for
//! every flag. It is a workspace member of its own, so the root package's `cargo test` does not
//! build it.
//!
//! Every measurement runs in a fresh child process (this binary re-executed with a hidden
//! `--child pattern,N,job,runtime,mode` or `--service-child ...` argument), so peak RSS (`VmHWM`
//! minus the RSS read when the child starts) and the runtime's state belong to that one
//! measurement. Runs are interleaved A B C … A B C so that a slow phase of the machine hits every
//! pattern alike; the tables report medians, and speed as ratios between patterns of the same run.
//! Live tasks are sampled in one more run per cell, apart from the timed ones.
//!
//! Burst (`--items M` per measurement, `--limits`, `--jobs`, `--runtimes`): patterns
//! (`--patterns`, comma-separated; append `@task` to any of them to submit from inside a spawned
//! task instead of `Runtime::block_on`):
//! - `limiter`: task-limiter, `spawn` per item, every `JoinHandle` kept in a `Vec` and awaited;
//! - `limiter+hist`: `limiter` on a limiter built with `distributions(true)` (issue 22's
//!   histograms; asserts every item's run time was recorded);
//! - `semaphore`: `tokio::spawn` per item, an `Arc<Semaphore>` permit acquired inside the task;
//! - `acquire`: `acquire_owned` in the submitter, then `tokio::spawn` with the permit;
//! - `joinset`: `JoinSet`, `join_next` whenever `len() == N`;
//! - `buffered`: `futures` `buffer_unordered(N)` (one task: a ceiling, not a peer);
//! - `unlimited`: `tokio::spawn` per item with no limit.
//! - `proto`: the featureless prototype of the core's shape that issue 18 measured against
//!   (`proto.rs`): a manager, one queue under one lock, workers taking their next item, one cell
//!   per item; task-limiter with nothing else.
//! - `keyed`: task-limiter with `per_key_limit(max(1, N / 8))`, each item given one of 1,000
//!   keys (`i % 1000`) through `build_task().key(..)`;
//! - `keyed-semaphores`: the usual hand-made alternative for the same limits: a `HashMap` of
//!   per-key `Arc<Semaphore>`s in front of a global one, `tokio::spawn` per item, the key's
//!   permit acquired, then the global one, inside the task.
//!
//! Job kinds: `ret` returns its index; `yield` calls `tokio::task::yield_now().await` once, then
//! returns its index. Runtimes: `mt` (multi-thread, 2 workers) and `ct` (current-thread).
//!
//! Service (`--clients`, `--service-limits`, `--service-jobs yield,spin`, `--service-patterns
//! limiter,semaphore,inline`, `--warmup-ms`, `--duration-ms` or `--requests`): see
//! `service.rs`. It reports requests/s, p50 and p99 latency, task-limiter's worker spawns per
//! item after the warm-up, and live tasks beyond the clients.

use std::fmt::Write as _;
use std::future::Future;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use task_limiter::Limiter;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

mod proto;
mod service;

const ALL_SHAPES: &[&str] = &["burst", "service"];

const ALL_PATTERNS: &[&str] = &[
    "limiter",
    "limiter+hist",
    "keyed",
    "keyed-semaphores",
    "semaphore",
    "acquire",
    "joinset",
    "buffered",
    "unlimited",
    "timeout",
    "deadline",
    "adaptive-gradient",
    "adaptive-aimd",
    "proto",
];
/// The default set: every pattern submitting from `block_on`, plus task-limiter and `JoinSet`
/// submitting from a spawned task. A submitter that waits (`JoinSet`, `acquire_owned`) is much
/// slower in `block_on` on the multi-thread runtime, where every wait parks and unparks a thread
/// that is not a worker; `joinset@task` is that pattern as fast as it gets. (`semaphore@task`
/// and `acquire@task` measured slower than their `block_on` forms; add them with `--patterns`.)
const DEFAULT_PATTERNS: &str =
    "limiter,semaphore,acquire,joinset,buffered,unlimited,limiter@task,joinset@task";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let spec = args.get(pos + 1).expect("--child needs a spec");
        let items = flag_value(&args, "--items")
            .map(|v| v.parse().expect("--items"))
            .expect("--child needs --items");
        child(spec, items);
        return;
    }
    if let Some(pos) = args.iter().position(|a| a == "--service-child") {
        service::child(args.get(pos + 1).expect("--service-child needs a spec"));
        return;
    }
    parent(&args);
}

fn flag_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|pos| args.get(pos + 1))
        .map(String::as_str)
}

// === the child: one measurement ===

/// What one job does.
trait Work: Send + Sync + 'static {
    fn job(i: u64) -> impl Future<Output = u64> + Send + 'static;
}

/// Returns its index.
struct Ret;

impl Work for Ret {
    #[allow(clippy::manual_async_fn)]
    fn job(i: u64) -> impl Future<Output = u64> + Send + 'static {
        async move { i }
    }
}

/// Yields to the runtime once, then returns its index.
struct Yield;

impl Work for Yield {
    #[allow(clippy::manual_async_fn)]
    fn job(i: u64) -> impl Future<Output = u64> + Send + 'static {
        async move {
            tokio::task::yield_now().await;
            i
        }
    }
}

/// What a pattern reports besides its checksum.
#[derive(Default)]
struct Extra {
    /// task-limiter's own counters: `(max_running, workers_spawned)`.
    limiter: Option<(usize, u64)>,
}

/// Awaits every handle of a task-limiter pattern, then closes the limiter and reads its counters.
async fn drain_limiter(
    limiter: &Limiter,
    handles: Vec<task_limiter::JoinHandle<u64>>,
) -> (u64, Extra) {
    let mut sum = 0;
    for handle in handles {
        sum += handle.await.expect("item failed");
    }
    limiter.close();
    limiter.wait().await;
    let metrics = limiter.metrics();
    let extra = Extra {
        limiter: Some((metrics.max_running, metrics.workers_spawned)),
    };
    (sum, extra)
}

/// Awaits every `tokio::spawn` handle of a baseline pattern.
async fn drain_tasks(handles: Vec<tokio::task::JoinHandle<u64>>) -> (u64, Extra) {
    let mut sum = 0;
    for handle in handles {
        sum += handle.await.expect("task failed");
    }
    (sum, Extra::default())
}

async fn run_limiter<W: Work>(m: u64, n: usize) -> (u64, Extra) {
    let limiter = Limiter::new(n);
    let handles: Vec<_> = (0..m).map(|i| limiter.spawn(W::job(i))).collect();
    drain_limiter(&limiter, handles).await
}

/// `limiter` with `Builder::distributions` on: the queue wait and run time histograms' cost
/// (three clock reads and four relaxed atomic adds per item).
async fn run_limiter_hist<W: Work>(m: u64, n: usize) -> (u64, Extra) {
    let limiter = Limiter::builder().limit(n).distributions(true).build();
    let handles: Vec<_> = (0..m).map(|i| limiter.spawn(W::job(i))).collect();
    let done = drain_limiter(&limiter, handles).await;
    let recorded = limiter.distributions().expect("on").run_time.count();
    assert_eq!(recorded, m, "every item's run time is recorded");
    done
}

/// The keys of the keyed patterns, and each key's limit under a global limit of `n`.
const KEYS: u64 = 1000;

fn key_limit(n: usize) -> usize {
    (n / 8).max(1)
}

async fn run_keyed<W: Work>(m: u64, n: usize) -> (u64, Extra) {
    let limiter = Limiter::builder()
        .limit(n)
        .per_key_limit(key_limit(n))
        .build();
    let keys: Vec<task_limiter::Key> = (0..KEYS).map(task_limiter::Key::from).collect();
    let handles: Vec<_> = (0..m)
        .map(|i| {
            limiter
                .build_task()
                .key(&keys[(i % KEYS) as usize])
                .spawn(W::job(i))
        })
        .collect();
    drain_limiter(&limiter, handles).await
}

async fn run_keyed_semaphores<W: Work>(m: u64, n: usize) -> (u64, Extra) {
    let global = Arc::new(Semaphore::new(n));
    let mut per_key: std::collections::HashMap<u64, Arc<Semaphore>> =
        std::collections::HashMap::new();
    let handles: Vec<_> = (0..m)
        .map(|i| {
            let key = per_key
                .entry(i % KEYS)
                .or_insert_with(|| Arc::new(Semaphore::new(key_limit(n))))
                .clone();
            let global = global.clone();
            tokio::spawn(async move {
                let _key = key.acquire().await.expect("semaphore closed");
                let _global = global.acquire().await.expect("semaphore closed");
                W::job(i).await
            })
        })
        .collect();
    drain_tasks(handles).await
}

async fn run_semaphore<W: Work>(m: u64, n: usize) -> (u64, Extra) {
    let sem = Arc::new(Semaphore::new(n));
    let handles: Vec<_> = (0..m)
        .map(|i| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire().await.expect("semaphore closed");
                W::job(i).await
            })
        })
        .collect();
    drain_tasks(handles).await
}

async fn run_acquire<W: Work>(m: u64, n: usize) -> (u64, Extra) {
    let sem = Arc::new(Semaphore::new(n));
    let mut handles = Vec::with_capacity(m as usize);
    for i in 0..m {
        let permit = sem.clone().acquire_owned().await.expect("semaphore closed");
        handles.push(tokio::spawn(async move {
            let value = W::job(i).await;
            drop(permit);
            value
        }));
    }
    drain_tasks(handles).await
}

async fn run_joinset<W: Work>(m: u64, n: usize) -> (u64, Extra) {
    let mut set = JoinSet::new();
    let mut sum = 0;
    for i in 0..m {
        if set.len() == n {
            sum += set
                .join_next()
                .await
                .expect("set is full")
                .expect("task failed");
        }
        set.spawn(W::job(i));
    }
    while let Some(result) = set.join_next().await {
        sum += result.expect("task failed");
    }
    (sum, Extra::default())
}

async fn run_buffered<W: Work>(m: u64, n: usize) -> (u64, Extra) {
    let sum = futures::stream::iter(0..m)
        .map(W::job)
        .buffer_unordered(n)
        .fold(0, |sum, value| async move { sum + value })
        .await;
    (sum, Extra::default())
}

async fn run_unlimited<W: Work>(m: u64, _n: usize) -> (u64, Extra) {
    let handles: Vec<_> = (0..m).map(|i| tokio::spawn(W::job(i))).collect();
    drain_tasks(handles).await
}

/// task-limiter with a time limit on every item that never runs out: a run `timeout` (a timer
/// per running item) or a queue `deadline` (one heap entry per item, one timer per limiter).
/// Against `limiter`, what the limits cost items that use them; `limiter` itself is what they
/// cost items that do not (compare it with a run of the previous commit).
async fn run_limited<W: Work>(m: u64, n: usize, run_timeout: bool) -> (u64, Extra) {
    let limiter = Limiter::new(n);
    let far = std::time::Duration::from_secs(3600);
    let handles: Vec<_> = (0..m)
        .map(|i| {
            let task = limiter.build_task();
            let task = match run_timeout {
                true => task.timeout(far),
                false => task.queue_timeout(far),
            };
            task.spawn(W::job(i))
        })
        .collect();
    let mut sum = 0;
    for handle in handles {
        sum += handle.await.expect("item failed");
    }
    limiter.close();
    limiter.wait().await;
    (sum, Extra::default())
}

/// An adaptive limiter whose bounds hold its limit at `n`: every item is measured and fed to
/// `algorithm`, but the limit (and so the work) is the plain limiter's, so the difference is
/// the cost of the sampling alone.
async fn run_adaptive<W: Work, A>(m: u64, n: usize, algorithm: A) -> (u64, Extra)
where
    A: task_limiter::adaptive::Algorithm + Clone + Sync,
{
    let limiter = Limiter::builder()
        .adaptive(algorithm)
        .limit(n)
        .min_limit(n)
        .max_limit(n)
        .build();
    let handles: Vec<_> = (0..m).map(|i| limiter.spawn(W::job(i))).collect();
    drain_limiter(&limiter, handles).await
}

/// The featureless prototype of the core's shape (`proto.rs`): what task-limiter would cost if
/// its features cost nothing.
async fn run_proto<W: Work>(m: u64, n: usize) -> (u64, Extra) {
    let proto = proto::Proto::new(n);
    let handles: Vec<_> = (0..m).map(|i| proto.spawn(W::job(i))).collect();
    let mut sum = 0;
    for handle in handles {
        sum += handle.await;
    }
    (sum, Extra::default())
}

async fn run_pattern<W: Work>(pattern: &str, m: u64, n: usize) -> (u64, Extra) {
    match pattern {
        "limiter" => run_limiter::<W>(m, n).await,
        "limiter+hist" => run_limiter_hist::<W>(m, n).await,
        "keyed" => run_keyed::<W>(m, n).await,
        "keyed-semaphores" => run_keyed_semaphores::<W>(m, n).await,
        "semaphore" => run_semaphore::<W>(m, n).await,
        "acquire" => run_acquire::<W>(m, n).await,
        "joinset" => run_joinset::<W>(m, n).await,
        "buffered" => run_buffered::<W>(m, n).await,
        "unlimited" => run_unlimited::<W>(m, n).await,
        "timeout" => run_limited::<W>(m, n, true).await,
        "deadline" => run_limited::<W>(m, n, false).await,
        "adaptive-gradient" => {
            run_adaptive::<W, _>(m, n, task_limiter::adaptive::Gradient::new()).await
        }
        "adaptive-aimd" => run_adaptive::<W, _>(m, n, task_limiter::adaptive::Aimd::new()).await,
        "proto" => run_proto::<W>(m, n).await,
        other => panic!("unknown pattern {other:?}"),
    }
}

async fn submitter<W: Work>(pattern: String, m: u64, n: usize, in_task: bool) -> (u64, Extra) {
    if in_task {
        tokio::spawn(async move { run_pattern::<W>(&pattern, m, n).await })
            .await
            .expect("submitter task failed")
    } else {
        run_pattern::<W>(&pattern, m, n).await
    }
}

/// Reads the runtime's live-task count from a thread of its own (not a task, so it neither counts
/// itself nor takes a worker's turn) until `stop`; returns the most seen and the number of samples.
fn sample_alive_tasks(
    handle: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, u64)> {
    std::thread::spawn(move || {
        let mut max = 0;
        let mut samples = 0u64;
        while !stop.load(Ordering::Acquire) {
            max = max.max(handle.metrics().num_alive_tasks());
            samples += 1;
            std::thread::sleep(Duration::from_micros(50));
        }
        (max, samples)
    })
}

/// Reads a `kB` field of `/proc/self/status`.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn child(spec: &str, m: u64) {
    // Before anything big is allocated: the runtime and the workload count against the peak.
    let base_kb = status_kb("VmRSS");
    let parts: Vec<&str> = spec.split(',').collect();
    let [pattern, n, job, runtime, mode] = parts[..] else {
        panic!("bad --child spec {spec:?}: want pattern,N,job,runtime,mode");
    };
    let n: usize = n.parse().expect("N");
    let (pattern, in_task) = match pattern.strip_suffix("@task") {
        Some(p) => (p.to_owned(), true),
        None => (pattern.to_owned(), false),
    };
    let rt = match runtime {
        "mt" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        "ct" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        other => panic!("unknown runtime {other:?}"),
    }
    .expect("runtime");

    // Only in `sample` runs, so that the sampler never skews a timed run.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = (mode == "sample").then(|| sample_alive_tasks(rt.handle().clone(), stop.clone()));

    let start = Instant::now();
    let (sum, extra) = match job {
        "ret" => rt.block_on(submitter::<Ret>(pattern, m, n, in_task)),
        "yield" => rt.block_on(submitter::<Yield>(pattern, m, n, in_task)),
        other => panic!("unknown job {other:?}"),
    };
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    let (max_alive, samples) = sampler.map_or((0, 0), |s| s.join().expect("sampler"));
    let hwm_kb = status_kb("VmHWM");
    assert_eq!(sum, m * (m.saturating_sub(1)) / 2, "wrong checksum");
    let (max_running, workers_spawned) = extra.limiter.unwrap_or((0, 0));
    println!(
        "RESULT secs={secs} base_kb={base_kb} hwm_kb={hwm_kb} max_alive={max_alive} \
         samples={samples} max_running={max_running} workers_spawned={workers_spawned}"
    );
    // Skip the teardown of a million finished tasks: it is not part of the measurement.
    std::process::exit(0);
}

// === the parent: schedules children and reports ===

struct Config {
    /// `burst` and/or `service`, run in that order.
    shapes: Vec<String>,
    items: u64,
    runs: usize,
    limits: Vec<usize>,
    jobs: Vec<String>,
    runtimes: Vec<String>,
    patterns: Vec<String>,
    sample: bool,
    timeout: Duration,
    service: service::Config,
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_config(args: &[String]) -> Config {
    let quick = args.iter().any(|a| a == "--quick");
    let mut config = Config {
        shapes: list("burst,service"),
        items: if quick { 100_000 } else { 1_000_000 },
        runs: 5,
        limits: vec![2, 8, 64, 1024],
        jobs: list("ret,yield"),
        runtimes: list("mt,ct"),
        patterns: list(DEFAULT_PATTERNS),
        sample: true,
        timeout: Duration::from_secs(300),
        service: service::Config::new(quick),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--quick" => {}
            "--no-sample" => config.sample = false,
            "--items" => config.items = value().parse().unwrap_or_else(|_| usage("--items")),
            "--runs" => config.runs = value().parse().unwrap_or_else(|_| usage("--runs")),
            "--limits" => {
                config.limits = list(value())
                    .iter()
                    .map(|n| n.parse().unwrap_or_else(|_| usage("--limits")))
                    .collect();
            }
            "--jobs" => config.jobs = list(value()),
            "--runtimes" => config.runtimes = list(value()),
            "--patterns" => config.patterns = list(value()),
            "--timeout" => {
                let secs = value().parse().unwrap_or_else(|_| usage("--timeout"));
                config.timeout = Duration::from_secs(secs);
            }
            "--shapes" => config.shapes = list(value()),
            "--clients" => config.service.clients = numbers(value(), "--clients"),
            "--service-limits" => config.service.limits = numbers(value(), "--service-limits"),
            "--service-jobs" => config.service.jobs = list(value()),
            "--service-patterns" => config.service.patterns = list(value()),
            "--warmup-ms" => config.service.warmup = millis(value(), "--warmup-ms"),
            "--duration-ms" => config.service.duration = millis(value(), "--duration-ms"),
            "--requests" => {
                let r = value().parse().unwrap_or_else(|_| usage("--requests"));
                config.service.requests = Some(r);
            }
            "--spin-iters" => {
                let k = value().parse().unwrap_or_else(|_| usage("--spin-iters"));
                config.service.spin_iters = Some(k);
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    for p in &config.patterns {
        let base = p.strip_suffix("@task").unwrap_or(p);
        if !ALL_PATTERNS.contains(&base) {
            usage(&format!("unknown pattern {p:?}"));
        }
    }
    for j in &config.jobs {
        if j != "ret" && j != "yield" {
            usage(&format!("unknown job kind {j:?}"));
        }
    }
    for r in &config.runtimes {
        if r != "mt" && r != "ct" {
            usage(&format!("unknown runtime {r:?}"));
        }
    }
    if config.runs == 0 || config.items == 0 || config.limits.contains(&0) {
        usage("--runs, --items and every limit must be at least 1");
    }
    for shape in &config.shapes {
        if !ALL_SHAPES.contains(&shape.as_str()) {
            usage(&format!("unknown shape {shape:?}"));
        }
    }
    let s = &config.service;
    for p in &s.patterns {
        if !service::ALL_PATTERNS.contains(&p.as_str()) {
            usage(&format!("unknown service pattern {p:?}"));
        }
    }
    for j in &s.jobs {
        if !service::ALL_JOBS.contains(&j.as_str()) {
            usage(&format!("unknown service job kind {j:?}"));
        }
    }
    if s.limits.contains(&0)
        || s.clients.contains(&0)
        || s.requests == Some(0)
        || s.spin_iters == Some(0)
        || (s.requests.is_none() && s.duration.is_zero())
    {
        usage("every service limit and client count, --requests, --spin-iters and --duration-ms must be at least 1");
    }
    config
}

fn numbers(value: &str, flag: &str) -> Vec<usize> {
    list(value)
        .iter()
        .map(|n| n.parse().unwrap_or_else(|_| usage(flag)))
        .collect()
}

fn millis(value: &str, flag: &str) -> Duration {
    Duration::from_millis(value.parse().unwrap_or_else(|_| usage(flag)))
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("error: {msg}\n");
    }
    eprintln!(
        "usage: cargo run --release -p task-limiter-compare -- [--quick] [--shapes burst,service]\n\
         \x20      [--runs R] [--no-sample] [--timeout SECS]\n\
         burst: [--items M] [--limits 2,8,64,1024] [--jobs ret,yield] [--runtimes mt,ct]\n\
         \x20      [--patterns {DEFAULT_PATTERNS}]\n\
         \x20      patterns: {}; append @task to submit from a spawned task\n\
         service: [--clients 4,16,256] [--service-limits 8,64] [--service-jobs yield,spin]\n\
         \x20      [--service-patterns {}] [--warmup-ms 200]\n\
         \x20      [--duration-ms 1000 | --requests R] [--spin-iters K]\n\
         --quick: 100000 burst items; service 20 ms warm-up + 50 ms measured per child",
        ALL_PATTERNS.join(","),
        service::ALL_PATTERNS.join(","),
    );
    std::process::exit(if msg.is_empty() { 0 } else { 2 });
}

/// One child's report.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    items_per_sec: f64,
    rss_per_item: f64,
    max_alive: usize,
    max_running: usize,
    workers_spawned: u64,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    runtime: String,
    job: String,
    n: usize,
    pattern: String,
}

fn run_child(config: &Config, key: &Key, mode: &str) -> Result<Sample, String> {
    let spec = format!(
        "{},{},{},{},{mode}",
        key.pattern, key.n, key.job, key.runtime
    );
    let line = run_child_process(
        &["--child", &spec, "--items", &config.items.to_string()],
        config.timeout,
    )?;
    let field = |name: &str| result_field(&line, name);
    let m = config.items as f64;
    Ok(Sample {
        items_per_sec: m / field("secs"),
        rss_per_item: (field("hwm_kb") - field("base_kb")).max(0.0) * 1024.0 / m,
        max_alive: field("max_alive") as usize,
        max_running: field("max_running") as usize,
        workers_spawned: field("workers_spawned") as u64,
    })
}

/// Runs this binary again with `args` and returns its `RESULT` line, without the prefix.
fn run_child_process(args: &[&str], timeout: Duration) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("child failed: {status}"));
    }
    out.lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(str::to_owned)
        .ok_or_else(|| "no RESULT line".to_owned())
}

/// The value of `name=value` in a `RESULT` line; NaN when it is missing.
fn result_field(line: &str, name: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[derive(Default)]
struct Cell {
    timed: Vec<Sample>,
    sampled: Option<Sample>,
    failures: Vec<String>,
}

impl Cell {
    fn rate(&self) -> f64 {
        median(
            &mut self
                .timed
                .iter()
                .map(|s| s.items_per_sec)
                .collect::<Vec<_>>(),
        )
    }

    fn rss(&self) -> f64 {
        median(
            &mut self
                .timed
                .iter()
                .map(|s| s.rss_per_item)
                .collect::<Vec<_>>(),
        )
    }

    fn range(&self) -> (f64, f64) {
        let rates = self.timed.iter().map(|s| s.items_per_sec);
        (
            rates.clone().fold(f64::INFINITY, f64::min),
            rates.fold(0.0, f64::max),
        )
    }
}

fn cmd_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = text.lines().next()?.trim().to_owned();
    (!first.is_empty()).then_some(first)
}

fn lock_version(lock: &str, name: &str) -> String {
    let needle = format!("name = \"{name}\"\nversion = \"");
    lock.find(&needle)
        .map(|at| {
            let rest = &lock[at + needle.len()..];
            rest[..rest.find('"').unwrap_or(0)].to_owned()
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn header(args: &[String], config: &Config, spin_iters: Option<u64>) -> String {
    let mut h = String::new();
    // The workspace root: it holds Cargo.lock and the crate's src/, one level above this package.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let lock = std::fs::read_to_string(format!("{root}/Cargo.lock")).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned());
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let git = cmd_output("git", &["-C", root, "rev-parse", "--short", "HEAD"])
        .unwrap_or_else(|| "?".to_owned());
    // What of the crate itself differs from that commit: the figures are for this tree.
    let src_diff = cmd_output(
        "git",
        &["-C", root, "diff", "--shortstat", "HEAD", "--", "src"],
    );
    let _ = writeln!(h, "# task-limiter comparison\n");
    let _ = writeln!(
        h,
        "- command: `cargo run --release -p task-limiter-compare --{}`",
        args.iter().map(|a| format!(" {a}")).collect::<String>()
    );
    let _ = writeln!(
        h,
        "- machine: nproc = {nproc}, {cpu}, {mem_gb:.0} GiB RAM, {}",
        cmd_output("uname", &["-sr"]).unwrap_or_default()
    );
    let _ = writeln!(
        h,
        "- tokio {} (Cargo.lock), futures {}, {}; allocator = glibc malloc (the system \
         allocator, {})",
        lock_version(&lock, "tokio"),
        lock_version(&lock, "futures"),
        cmd_output("rustc", &["--version"]).unwrap_or_else(|| "rustc ?".to_owned()),
        cmd_output("ldd", &["--version"])
            .and_then(|l| l.split_whitespace().last().map(|v| format!("glibc {v}")))
            .unwrap_or_else(|| "glibc".to_owned()),
    );
    // The binary may be older than HEAD when others commit meanwhile: its build time tells.
    let built = std::env::current_exe()
        .and_then(std::fs::metadata)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| {
            cmd_output(
                "date",
                &["-u", "-d", &format!("@{}", d.as_secs()), "+%F %T UTC"],
            )
        })
        .unwrap_or_else(|| "?".to_owned());
    let _ = writeln!(
        h,
        "- binary built {built}; load average at start: {}",
        loadavg()
    );
    let _ = writeln!(
        h,
        "- task-limiter at git {git} (HEAD when the run started){}",
        src_diff.map_or(String::new(), |d| format!(", src/ modified: {d}"))
    );
    if config.shapes.iter().any(|s| s == "burst") {
        let _ = writeln!(
            h,
            "- burst workload: M = {} items, {} interleaved timed runs per cell{}, limits {:?}, \
             jobs {:?}, runtimes {:?} (mt = multi_thread with 2 workers, ct = current_thread), \
             submitter in `block_on` unless the pattern ends in `@task`",
            config.items,
            config.runs,
            if config.sample {
                " + 1 separate sampling run (live tasks)"
            } else {
                ""
            },
            config.limits,
            config.jobs,
            config.runtimes,
        );
    }
    if let Some(spin_iters) = spin_iters {
        let _ = writeln!(h, "{}", service::workload(config, spin_iters));
    }
    h
}

/// The machine's load averages: other work running during the measurement shows here.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

fn fmt_rate(rate: f64) -> String {
    if rate.is_nan() {
        "–".to_owned()
    } else {
        format!("{:.2} M/s", rate / 1e6)
    }
}

fn pattern_title(p: &str) -> String {
    let (base, in_task) = match p.strip_suffix("@task") {
        Some(base) => (base, true),
        None => (p, false),
    };
    let name = match base {
        "limiter" => "**task-limiter** `spawn`",
        "limiter+hist" => "**task-limiter** `spawn`, `distributions(true)`",
        "semaphore" => "`tokio::spawn` + `Semaphore` inside",
        "acquire" => "`acquire_owned` then `tokio::spawn`",
        "joinset" => "`JoinSet`, join at `len() == N`",
        "buffered" => "`buffer_unordered(N)` (ceiling)",
        "unlimited" => "`tokio::spawn`, no limit",
        "keyed" => "**task-limiter**, 1,000 keys, `per_key_limit(N/8)`",
        "keyed-semaphores" => "`HashMap` of per-key `Semaphore`s + global, spawn per item",
        "timeout" => "**task-limiter**, every item with a run `timeout`",
        "deadline" => "**task-limiter**, every item with a queue deadline",
        "adaptive-gradient" => "**task-limiter**, `adaptive(Gradient)` held at N",
        "adaptive-aimd" => "**task-limiter**, `adaptive(Aimd)` held at N",
        "proto" => "featureless prototype of the core's shape (reference)",
        other => other,
    };
    if in_task {
        format!("{name}, submitter in a spawned task")
    } else {
        name.to_owned()
    }
}

fn parent(args: &[String]) {
    let config = parse_config(args);
    let started = Instant::now();
    let has_shape = |shape: &str| config.shapes.iter().any(|s| s == shape);
    // Calibrated here, once, so that every service child spins the same number of iterations.
    let spin_iters = has_shape("service").then(|| {
        config
            .service
            .spin_iters
            .unwrap_or_else(service::calibrate_spin)
    });
    let head = header(args, &config, spin_iters);
    println!("{head}");

    if has_shape("burst") {
        run_burst(&config, started);
    }
    if let Some(spin_iters) = spin_iters {
        service::run(&config, spin_iters, started);
    }
    println!(
        "_total wall time {:.0} s; load average at the end: {}_",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}

fn run_burst(config: &Config, started: Instant) {
    let mut keys = Vec::new();
    for runtime in &config.runtimes {
        for job in &config.jobs {
            for &n in &config.limits {
                for pattern in &config.patterns {
                    keys.push(Key {
                        runtime: runtime.clone(),
                        job: job.clone(),
                        n,
                        pattern: pattern.clone(),
                    });
                }
            }
        }
    }
    let mut cells: std::collections::BTreeMap<Key, Cell> = Default::default();
    let total = keys.len() * (config.runs + usize::from(config.sample));
    let mut done = 0;

    println!("## Raw measurements\n\n```text");
    println!("run,runtime,job,n,pattern,mode,items_per_s,rss_b_per_item,max_alive,max_running,workers_spawned");
    let mut passes: Vec<(String, &str)> =
        (0..config.runs).map(|r| (r.to_string(), "time")).collect();
    if config.sample {
        passes.push(("S".to_owned(), "sample"));
    }
    for (run, mode) in &passes {
        for key in &keys {
            done += 1;
            let result = run_child(config, key, mode);
            let cell = cells.entry(key.clone()).or_default();
            match result {
                Ok(s) => {
                    println!(
                        "{run},{},{},{},{},{mode},{:.0},{:.1},{},{},{}",
                        key.runtime,
                        key.job,
                        key.n,
                        key.pattern,
                        s.items_per_sec,
                        s.rss_per_item,
                        s.max_alive,
                        s.max_running,
                        s.workers_spawned
                    );
                    eprintln!(
                        "[{done}/{total} {:.0}s] {run} {} {} N={} {}: {} {:.0} B/item{}",
                        started.elapsed().as_secs_f64(),
                        key.runtime,
                        key.job,
                        key.n,
                        key.pattern,
                        fmt_rate(s.items_per_sec),
                        s.rss_per_item,
                        if *mode == "sample" {
                            format!(", {} live tasks", s.max_alive)
                        } else {
                            String::new()
                        }
                    );
                    if *mode == "sample" {
                        cell.sampled = Some(s);
                    } else {
                        cell.timed.push(s);
                    }
                }
                Err(err) => {
                    println!(
                        "{run},{},{},{},{},{mode},FAILED: {err}",
                        key.runtime, key.job, key.n, key.pattern
                    );
                    eprintln!(
                        "[{done}/{total}] {run} {key_s} FAILED: {err}",
                        key_s =
                            format_args!("{} {} N={} {}", key.runtime, key.job, key.n, key.pattern)
                    );
                    cell.failures.push(format!("run {run}: {err}"));
                }
            }
        }
    }
    println!("```\n");

    println!("{}", report(config, &cells));
}

fn report(config: &Config, cells: &std::collections::BTreeMap<Key, Cell>) -> String {
    let mut out = String::new();
    let get = |runtime: &str, job: &str, n: usize, pattern: &str| {
        cells.get(&Key {
            runtime: runtime.to_owned(),
            job: job.to_owned(),
            n,
            pattern: pattern.to_owned(),
        })
    };
    let rate = |runtime: &str, job: &str, n: usize, pattern: &str| {
        get(runtime, job, n, pattern).map_or(f64::NAN, Cell::rate)
    };
    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(
        out,
        "Each cell: median items/s over the timed runs · task-limiter ÷ this pattern (above 1 \
         means task-limiter is faster) · peak RSS per item (`VmHWM` − start RSS, ÷ M, median) · \
         most live tasks seen (`num_alive_tasks`, separate sampling run; includes the limiter's \
         manager and, for `@task`, the submitter task).\n"
    );
    for runtime in &config.runtimes {
        for job in &config.jobs {
            let rt_name = match runtime.as_str() {
                "mt" => "multi_thread (2 workers)",
                _ => "current_thread",
            };
            let job_name = match job.as_str() {
                "ret" => "returning jobs",
                _ => "yielding jobs (`yield_now` once)",
            };
            let _ = writeln!(out, "### {rt_name}, {job_name}, M = {}\n", config.items);
            let _ = write!(out, "| pattern |");
            for n in &config.limits {
                let _ = write!(out, " N = {n} |");
            }
            let _ = write!(out, "\n|---|");
            for _ in &config.limits {
                let _ = write!(out, "--:|");
            }
            let _ = writeln!(out);
            for pattern in &config.patterns {
                let _ = write!(out, "| {} |", pattern_title(pattern));
                for &n in &config.limits {
                    let Some(cell) = get(runtime, job, n, pattern) else {
                        let _ = write!(out, " – |");
                        continue;
                    };
                    let mine = rate(runtime, job, n, "limiter");
                    let r = cell.rate();
                    let live = cell
                        .sampled
                        .map_or("–".to_owned(), |s| s.max_alive.to_string());
                    let fails = if cell.failures.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} failed)", cell.failures.len())
                    };
                    let _ = write!(
                        out,
                        " {} · ×{:.2} · {:.0} B · {live}{fails} |",
                        fmt_rate(r),
                        mine / r,
                        cell.rss()
                    );
                }
                let _ = writeln!(out);
            }
            let _ = writeln!(out);
        }
    }

    // Spread and the limiter's own counters, for judging noise and worker reuse.
    let _ = writeln!(out, "### Spread (min–max items/s over the timed runs)\n");
    let _ = writeln!(out, "| runtime | job | pattern |{}", {
        config
            .limits
            .iter()
            .map(|n| format!(" N = {n} |"))
            .collect::<String>()
    });
    let _ = writeln!(out, "|---|---|---|{}", "--:|".repeat(config.limits.len()));
    for runtime in &config.runtimes {
        for job in &config.jobs {
            for pattern in &config.patterns {
                let _ = write!(out, "| {runtime} | {job} | {pattern} |");
                for &n in &config.limits {
                    match get(runtime, job, n, pattern) {
                        Some(cell) if !cell.timed.is_empty() => {
                            let (lo, hi) = cell.range();
                            let _ = write!(out, " {:.2}–{:.2} M |", lo / 1e6, hi / 1e6);
                        }
                        _ => {
                            let _ = write!(out, " – |");
                        }
                    }
                }
                let _ = writeln!(out);
            }
        }
    }
    let _ = writeln!(out);
    let limiter_patterns: Vec<&String> = config
        .patterns
        .iter()
        .filter(|p| p.starts_with("limiter"))
        .collect();
    if config.sample && !limiter_patterns.is_empty() {
        let _ = writeln!(
            out,
            "### task-limiter counters (sampling run): max running items / worker tasks spawned\n"
        );
        let _ = writeln!(out, "| runtime | job | pattern |{}", {
            config
                .limits
                .iter()
                .map(|n| format!(" N = {n} |"))
                .collect::<String>()
        });
        let _ = writeln!(out, "|---|---|---|{}", "--:|".repeat(config.limits.len()));
        for runtime in &config.runtimes {
            for job in &config.jobs {
                for pattern in &limiter_patterns {
                    let _ = write!(out, "| {runtime} | {job} | {pattern} |");
                    for &n in &config.limits {
                        match get(runtime, job, n, pattern).and_then(|c| c.sampled) {
                            Some(s) => {
                                let _ = write!(out, " {} / {} |", s.max_running, s.workers_spawned);
                            }
                            None => {
                                let _ = write!(out, " – |");
                            }
                        }
                    }
                    let _ = writeln!(out);
                }
            }
        }
        let _ = writeln!(out);
    }

    out.push_str(&targets(config, cells));
    out
}

/// Checks the targets of issue 3 against this run.
fn targets(config: &Config, cells: &std::collections::BTreeMap<Key, Cell>) -> String {
    let mut out = String::new();
    let cell = |runtime: &str, job: &str, n: usize, pattern: &str| {
        cells.get(&Key {
            runtime: runtime.to_owned(),
            job: job.to_owned(),
            n,
            pattern: pattern.to_owned(),
        })
    };
    let rate = |runtime: &str, job: &str, n: usize, pattern: &str| {
        cell(runtime, job, n, pattern).map(Cell::rate)
    };
    let best = |runtime: &str, job: &str, n: usize, base: &str| {
        [base.to_owned(), format!("{base}@task")]
            .into_iter()
            .filter_map(|p| Some((rate(runtime, job, n, &p)?, p)))
            .filter(|(r, _)| !r.is_nan())
            .max_by(|a, b| a.0.total_cmp(&b.0))
    };
    let mark = |ok: bool| if ok { "met" } else { "**NOT met**" };
    let _ = writeln!(out, "## Targets of issue 3 (from this run)\n");
    if config.items < 1_000_000 {
        let _ = writeln!(
            out,
            "_M = {} (the targets are stated for 1,000,000 items)_\n",
            config.items
        );
    }
    let mut line = |text: String| {
        let _ = writeln!(out, "- {text}");
    };
    for job in &config.jobs {
        for &n in config.limits.iter().filter(|&&n| n >= 8) {
            let Some(mine) = rate("mt", job, n, "limiter") else {
                continue;
            };
            // Against the faster submitter placement of each rival, where both were measured.
            if let Some((sem, which)) = best("mt", job, n, "semaphore") {
                line(format!(
                    "mt {job} N={n}: ≥ 2× spawn + semaphore: ×{:.2} ({} vs {} `{which}`) — {}",
                    mine / sem,
                    fmt_rate(mine),
                    fmt_rate(sem),
                    mark(mine >= 2.0 * sem)
                ));
            }
            if let Some((js, which)) = best("mt", job, n, "joinset") {
                line(format!(
                    "mt {job} N={n}: ≥ 1.3× JoinSet: ×{:.2} ({} vs {} `{which}`) — {}",
                    mine / js,
                    fmt_rate(mine),
                    fmt_rate(js),
                    mark(mine >= 1.3 * js)
                ));
            }
            line(format!(
                "mt {job} N={n}: ≥ 3 M items/s: {} — {}",
                fmt_rate(mine),
                mark(mine >= 3e6)
            ));
        }
    }
    if let Some(mine) = rate("mt", "ret", 2, "limiter") {
        line(format!(
            "mt ret N=2: ≥ 2.5 M items/s: {} — {}",
            fmt_rate(mine),
            mark(mine >= 2.5e6)
        ));
    }
    for (job, want) in [("ret", 5e6), ("yield", 4e6)] {
        if let Some(mine) = rate("ct", job, 64, "limiter") {
            line(format!(
                "ct {job} N=64: ≥ {:.0} M items/s: {} — {}",
                want / 1e6,
                fmt_rate(mine),
                mark(mine >= want)
            ));
        }
    }
    let mut worst_rss: Option<(f64, String)> = None;
    let mut worst_live: Vec<String> = Vec::new();
    let mut live_checked = 0;
    for key in cells.keys().filter(|k| k.pattern.starts_with("limiter")) {
        let c = &cells[key];
        let rss = c.rss();
        if !rss.is_nan() && worst_rss.as_ref().is_none_or(|(w, _)| rss > *w) {
            worst_rss = Some((
                rss,
                format!("{} {} N={} {}", key.runtime, key.job, key.n, key.pattern),
            ));
        }
        if let Some(s) = c.sampled {
            live_checked += 1;
            // limit + manager + one transient worker, plus the submitter task for `@task`.
            let allowed = key.n + 2 + usize::from(key.pattern.ends_with("@task"));
            if s.max_alive > allowed {
                worst_live.push(format!(
                    "{} {} N={} {}: {} > {allowed}",
                    key.runtime, key.job, key.n, key.pattern, s.max_alive
                ));
            }
        }
    }
    if let Some((rss, at)) = worst_rss {
        line(format!(
            "memory ≤ 150 B per item, handle included: worst {rss:.0} B ({at}) — {}",
            mark(rss <= 150.0)
        ));
    }
    if live_checked > 0 {
        line(format!(
            "live tasks ≤ limit + 1 (manager) + 1 (transient) in all {live_checked} sampled \
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
