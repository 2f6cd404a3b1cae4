//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod alloc;
pub mod state;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Lets the manager and the workers of a current-thread runtime run until they are idle.
pub async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

/// Items wait on a gate until the test opens it.
#[derive(Clone, Debug)]
pub struct Gate(Arc<Semaphore>);

impl Gate {
    pub fn new() -> Gate {
        Gate(Arc::new(Semaphore::new(0)))
    }

    pub async fn wait(&self) {
        self.0.acquire().await.unwrap().forget();
    }

    /// Lets `n` waiters through.
    pub fn open(&self, n: usize) {
        self.0.add_permits(n);
    }
}

/// Holds one of `limiter`'s worker IDs with an item that waits at the returned gate (with limit
/// 1, whatever is submitted next stays queued); returns once that item runs. Release it with
/// `gate.open(1)` and await the handle.
pub async fn hold_a_worker<S>(
    limiter: &task_limiter::Limiter<S>,
) -> (Gate, task_limiter::JoinHandle<()>) {
    let running = limiter.metrics().running;
    let gate = Gate::new();
    let blocker = limiter.spawn({
        let gate = gate.clone();
        async move { gate.wait().await }
    });
    settle().await;
    assert_eq!(
        limiter.metrics().running,
        running + 1,
        "the holding item runs"
    );
    (gate, blocker)
}

/// A latch a blocking closure waits on, opened from async code.
#[derive(Clone, Debug)]
pub struct Latch(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Latch {
    pub fn new() -> Latch {
        Latch(Arc::new((
            std::sync::Mutex::new(false),
            std::sync::Condvar::new(),
        )))
    }

    /// Blocks until the latch opens, or for ten seconds at most: a test that fails before it
    /// opens the latch must not leave a blocking-pool thread (and the runtime's drop) hanging.
    pub fn wait(&self) {
        let (open, cvar) = &*self.0;
        let open = open.lock().unwrap();
        let timeout = std::time::Duration::from_secs(10);
        let _ = cvar
            .wait_timeout_while(open, timeout, |open| !*open)
            .unwrap();
    }

    pub fn open(&self) {
        let (open, cvar) = &*self.0;
        *open.lock().unwrap() = true;
        cvar.notify_all();
    }
}

/// Waits (sleeping a millisecond at a time, up to ten seconds) until `cond` holds; panics if it
/// never does. For conditions that other threads make true; needs the time driver.
pub async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("condition never held");
}

/// Counts items running at once and remembers the most seen.
#[derive(Clone, Debug, Default)]
pub struct Concurrency {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl Concurrency {
    pub fn enter(&self) -> ConcurrencyGuard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        ConcurrencyGuard(self.now.clone())
    }

    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

pub struct ConcurrencyGuard(Arc<AtomicUsize>);

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sets a flag when dropped: shows when the limiter lets go of a closure or future.
#[derive(Debug)]
pub struct DropFlag(pub Arc<AtomicBool>);

impl DropFlag {
    pub fn new() -> (DropFlag, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (DropFlag(flag.clone()), flag)
    }
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until the runtime's live tasks fall back to `baseline` (a worker that handed its ID back
/// may still be returning); gives up after ten seconds and returns the count. It yields rather
/// than sleeps, so it needs no time driver and works with paused time.
pub async fn settle_alive(baseline: usize) -> usize {
    let start = std::time::Instant::now();
    while alive_tasks() > baseline && start.elapsed() < std::time::Duration::from_secs(10) {
        tokio::task::yield_now().await;
    }
    alive_tasks()
}

/// The process's resident set size, in bytes (0 where /proc is missing).
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Submits `n` items that each count themselves in `running` and wait at `gate`.
pub fn spawn_gated(
    limiter: &task_limiter::Limiter,
    n: usize,
    gate: &Gate,
    running: &Concurrency,
) -> Vec<task_limiter::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let gate = gate.clone();
            let running = running.clone();
            limiter.spawn(async move {
                let _running = running.enter();
                gate.wait().await;
            })
        })
        .collect()
}
