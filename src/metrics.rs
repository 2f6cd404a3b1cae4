use std::time::Duration;

/// A snapshot of a limiter's counters, taken by [`Limiter::metrics`](crate::Limiter::metrics).
///
/// The counters are read one by one while work goes on, so a snapshot taken under load may be
/// off by the items that moved between two reads; once the limiter is drained,
/// `submitted == completed + panicked + cancelled + timed_out`: every item is counted in exactly
/// one of the four.
///
/// A [lease](crate::Lease) counts as an item: submitted when it is requested (or granted at
/// once), queued while it waits, started and running from its grant to its drop, then
/// completed (or panicked, if a panic's unwind drops it; timed out or cancelled, if a
/// [`run`](crate::Limiter::run) is cut by its timeout or token). A request that leaves the
/// queue without a lease counts as cancelled or timed out, as a spawned item does. Leases are
/// not worker tasks: `workers` does not count them.
///
/// # Cost
///
/// Every counter is always on. Those of admitted items are kept under the admission lock the
/// item takes anyway; refusals are counted where they happen, off the path of an admitted
/// item. `wait_time` and `run_time` are integrals over time of the number waiting and
/// running, advanced each time the admission lock is taken: one read of the monotonic clock
/// (before the lock) and one relaxed load of the submission counter per lock, not per item
/// transition. Distributions of single waits and run times are opt-in:
/// [`Builder::distributions`](crate::Builder::distributions).
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(2);
/// for i in 0..10 {
///     limiter.spawn(async move { i });
/// }
/// limiter.close();
/// limiter.wait().await;
/// let m = limiter.metrics();
/// assert_eq!((m.submitted, m.completed, m.queued, m.running), (10, 10, 0, 0));
/// assert!(m.max_running <= 2);
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// The limit in force.
    pub limit: usize,
    /// Items waiting in the queue. An item aborted while queued has its work dropped at once,
    /// but stays in this count (and out of `cancelled`) until the queue next passes its slot.
    pub queued: usize,
    /// Items running now.
    pub running: usize,
    /// The weight of the items running now ([`TaskBuilder::weight`](crate::TaskBuilder::weight)):
    /// what the limit holds; `running` when every item weighs 1.
    pub weight_running: usize,
    /// Items ever submitted (including those refused because the limiter was closed).
    pub submitted: u64,
    /// Items that ran to completion and produced a value.
    pub completed: u64,
    /// Items that panicked.
    pub panicked: u64,
    /// Items cancelled: aborted, dropped by `shutdown` or with the runtime, refused because the
    /// limiter was closed, or cancelled by their token. Timeouts are not in it: see `timed_out`.
    pub cancelled: u64,
    /// Items that ended by a time limit ([`JoinError::is_timeout`](crate::JoinError::is_timeout)):
    /// they ran past their [`timeout`](crate::TaskBuilder::timeout), or were still queued at
    /// their [`deadline`](crate::TaskBuilder::deadline). Counted apart from `cancelled`. An item
    /// that timed out while queued has its work dropped at its deadline, but, like an aborted
    /// one, stays in `queued` until the queue next passes its entry.
    pub timed_out: u64,
    /// The most items ever running at once.
    pub max_running: usize,
    /// Worker tasks spawned so far. Workers run item after item and park between them, so in
    /// steady use this stops growing: a new one is spawned only for a worker ID that no live
    /// worker holds (the first items, or after a keep-alive ran out).
    pub workers_spawned: u64,
    /// Worker tasks alive now, parked ones included: at most `limit` (plus, for a moment, one
    /// whose ID is on its way back to the manager after a smaller limit).
    pub workers: usize,
    /// Workers parked now: alive, holding their ID, waiting for work (see
    /// [`Builder::keep_alive`](crate::Builder::keep_alive)).
    pub idle_workers: usize,
    /// Items (and leases) admitted to run so far. The divisor of the mean wait:
    /// `rate(wait_time) / rate(started)`.
    pub started: u64,
    /// Items refused or ended before they started, by reason (spawned items and
    /// [`reserve`](crate::Limiter::reserve) places; leases are in `leases_refused`).
    pub refused: Refusals,
    /// Lease requests ([`acquire`](crate::Limiter::acquire), [`run`](crate::Limiter::run))
    /// that ended without a lease, by reason. A failed
    /// [`try_acquire`](crate::Limiter::try_acquire) is not counted: it is a probe, often the
    /// fast path of a caller that then waits, and its caller sees the error at once.
    pub leases_refused: Refusals,
    /// Time spent waiting, added up over every item and lease request, from its submission
    /// (or first poll) to its start, or to its end unstarted. Kept as the integral of the
    /// number waiting over time, so an item aborted or timed out in the queue counts as
    /// waiting until the queue passes its entry, as in `queued`. Always on: see
    /// [the cost](#cost).
    pub wait_time: Duration,
    /// Time spent running (from admission to end), added up over every item and lease: the
    /// integral of `running` over time. `rate(run_time)` is the mean number running.
    pub run_time: Duration,
    /// Times the limit in force changed value: [`set_limit`](crate::Limiter::set_limit),
    /// an adaptive limit's moves, a [`set_limit_until`](crate::Limiter::set_limit_until) and
    /// its fallback.
    pub limit_changes: u64,
}

/// Submissions that ended without starting, by reason: a field of [`Metrics`] for spawned
/// items and another for leases.
///
/// Each refusal is counted once, when it happens: a `try_spawn` or `try_reserve` refused, a
/// queued item
/// timed out at its deadline (when the deadline fires, not when the queue passes its entry),
/// a token cancelled, a submission to a closed limiter or a queued item cancelled by
/// [`shutdown`](crate::Limiter::shutdown). An item [aborted](crate::JoinHandle::abort) while
/// queued is not refused: it counts in [`Metrics::cancelled`] only.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = Limiter::builder().limit(1).max_queued(1).build();
/// let running = limiter.try_spawn(std::future::pending::<()>()).unwrap();
/// tokio::time::sleep(Duration::from_millis(1)).await; // it starts, and leaves its place
/// let _queued = limiter.try_spawn(async {}).unwrap();
/// assert!(limiter.try_spawn(async {}).unwrap_err().is_full());
/// let late = limiter
///     .build_task()
///     .queue_timeout(Duration::from_millis(10))
///     .spawn(async {});
/// assert!(late.await.unwrap_err().is_timeout());
/// let refused = limiter.metrics().refused;
/// assert_eq!((refused.queue_full, refused.queue_timeout), (1, 1));
/// assert_eq!(refused.total(), 2);
/// running.abort();
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusals {
    /// A `try_` call found the queue full ([`TrySpawnError::Full`](crate::TrySpawnError::Full)
    /// with [`max_queued`](crate::Builder::max_queued)). Always 0 for leases, which take no
    /// place in that queue (a bound on them, such as the tower layer's, refuses outside the
    /// limiter).
    pub queue_full: u64,
    /// The queue deadline ([`TaskBuilder::deadline`](crate::TaskBuilder::deadline),
    /// [`queue_timeout`](crate::TaskBuilder::queue_timeout)) passed before it started.
    pub queue_timeout: u64,
    /// Its token ([`TaskBuilder::cancel_on`](crate::TaskBuilder::cancel_on)) was cancelled
    /// before it started.
    pub token: u64,
    /// The limiter was closed or shut down: submitted after [`close`](crate::Limiter::close),
    /// or still queued when [`shutdown`](crate::Limiter::shutdown) (or the runtime's) came.
    pub closed: u64,
}

impl Refusals {
    /// All refusals, whatever the reason.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// limiter.close();
    /// assert!(limiter.acquire().await.unwrap_err().is_closed());
    /// assert_eq!(limiter.metrics().leases_refused.total(), 1);
    /// # }
    /// ```
    pub fn total(&self) -> u64 {
        self.queue_full + self.queue_timeout + self.token + self.closed
    }
}

/// A snapshot of one key's state, taken by [`Limiter::key_metrics`](crate::Limiter::key_metrics).
///
/// # Examples
///
/// ```
/// use task_limiter::{Key, Limiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::builder().limit(8).per_key_limit(2).build();
/// let host = Key::from("example.com");
/// let (tx, rx) = tokio::sync::oneshot::channel::<()>();
/// let handle = limiter
///     .build_task()
///     .key(&host)
///     .weight(2)
///     .spawn(async move { rx.await.ok() });
/// tokio::task::yield_now().await;
/// let m = limiter.key_metrics(&host).unwrap();
/// assert_eq!((m.limit, m.queued, m.running, m.weight_running), (2, 0, 1, 2));
/// assert_eq!((m.started, m.ended), (1, 0));
/// tx.send(()).unwrap();
/// handle.await.unwrap();
/// // Nothing of the key is left: its bookkeeping is gone.
/// assert!(limiter.key_metrics(&host).is_none());
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyMetrics {
    /// The key's limit in force.
    pub limit: usize,
    /// The key's items waiting to start.
    pub queued: usize,
    /// The key's items running now.
    pub running: usize,
    /// Their weight: what the key's limit holds.
    pub weight_running: usize,
    /// The key's items (and leases) started since its bookkeeping was made. A key's
    /// bookkeeping goes once nothing of it is queued or running, and its counts with it: keep
    /// per-key series for keys that stay busy, or read them with
    /// [`Limiter::keys_most_queued`](crate::Limiter::keys_most_queued).
    pub started: u64,
    /// The key's items (and leases) ended since its bookkeeping was made, however they ended.
    pub ended: u64,
}
