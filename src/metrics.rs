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
}
