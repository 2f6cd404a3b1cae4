use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::adaptive::Controller;
use crate::core::{Core, Exited, Lifecycle};
use crate::distributions::{Distributions, Recorders};
use crate::handle::JoinHandle;
use crate::key::Key;
use crate::metrics::{KeyMetrics, Metrics};
use crate::state::States;
use crate::sync::rt::sync::Semaphore;
use crate::sync::Arc;
use crate::worker_id::WorkerId;

/// Runs futures on the tokio runtime with at most `limit` of them alive at once.
///
/// Submitting ([`spawn`](Self::spawn), [`spawn_with`](Self::spawn_with)) never blocks and never
/// awaits: the item goes on an unbounded queue and its [`JoinHandle`] comes back at once. A
/// manager task, spawned when the limiter is built, starts a worker task only while one of the
/// `limit` worker IDs is free; a worker that finishes an item takes the next queued one itself.
/// So the runtime holds at most `limit` worker tasks plus the manager, however much is queued,
/// and every item knows the [`WorkerId`] it runs under.
///
/// `Limiter` is cheap to clone; clones share one manager and one queue. Dropping the last clone
/// closes the limiter: queued work still runs, then the manager exits. [`shutdown`] cancels
/// everything instead.
///
/// [`shutdown`]: Self::shutdown
///
/// The type parameter `S` is the type of the per-worker state made by
/// [`Builder::worker_state`](crate::Builder::worker_state) and lent to items by
/// [`spawn_with_state`](Self::spawn_with_state); it is `()` for a limiter built without one.
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(4);
/// let handles: Vec<_> = (0..100).map(|i| limiter.spawn(async move { i * 2 })).collect();
/// let mut sum = 0;
/// for handle in handles {
///     sum += handle.await.unwrap();
/// }
/// assert_eq!(sum, 9900);
/// # }
/// ```
pub struct Limiter<S = ()> {
    /// One pointer: a clone is one reference count, which `acquire` and `run` take per call.
    pub(crate) inner: Arc<Inner<S>>,
}

/// What every clone of a `Limiter` shares. The core's work channel closes when the last clone
/// drops it.
pub(crate) struct Inner<S> {
    pub(crate) core: Core,
    pub(crate) extras: Extras<S>,
}

/// Per-limiter data of the features built on the core, opaque to the core.
pub(crate) struct Extras<S> {
    /// The per-worker state table.
    pub(crate) states: Arc<States<S>>,
    /// Places in the queue for `try_spawn` and `reserve`, with `Builder::max_queued`.
    pub(crate) room: Option<Arc<Semaphore>>,
    /// The adaptive limit's controller, when the limiter has one.
    pub(crate) adaptive: Option<Arc<Controller>>,
    /// The queue wait and run time histograms, with `Builder::distributions`.
    pub(crate) distributions: Option<Arc<Recorders>>,
}

impl<S> Clone for Limiter<S> {
    fn clone(&self) -> Self {
        Limiter {
            inner: self.inner.clone(),
        }
    }
}

impl<S> Limiter<S> {
    /// Wraps a started core and the features' data in a `Limiter`.
    pub(crate) fn from_parts(core: Core, extras: Extras<S>) -> Limiter<S> {
        Limiter {
            inner: Arc::new(Inner { core, extras }),
        }
    }

    pub(crate) fn core(&self) -> &Core {
        &self.inner.core
    }

    pub(crate) fn extras(&self) -> &Extras<S> {
        &self.inner.extras
    }
}

impl<S> Limiter<S> {
    /// Submits a future; it runs once a worker slot is free.
    ///
    /// Never blocks and never awaits, so work may submit more work to its own limiter. The
    /// future is stored until it starts, so prefer [`spawn_with`](Self::spawn_with) when the
    /// future is large or holds resources worth acquiring only when it runs.
    ///
    /// If the limiter is closed or shut down, the item is dropped and its handle resolves to a
    /// cancelled [`JoinError`](crate::JoinError) at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// let handle = limiter.spawn(async { "done" });
    /// assert_eq!(handle.await.unwrap(), "done");
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_with(move |_| future)
    }

    /// Submits a closure that makes the item's future from the [`WorkerId`] it runs under.
    ///
    /// The closure is called only when the item starts, so a queued item holds just the
    /// closure. The ID is in `0..limit` and no other running item holds it: index per-worker
    /// state with it, without locks. Otherwise the same as [`spawn`](Self::spawn); a panic in
    /// the closure is caught and delivered like a panic in the future.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(4);
    /// let handle = limiter.spawn_with(|id| async move { format!("ran on {id}") });
    /// assert!(handle.await.unwrap().starts_with("ran on worker-"));
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_with<C, Fut>(&self, make: C) -> JoinHandle<Fut::Output>
    where
        C: FnOnce(WorkerId) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.submit_plain(make, false)
    }

    /// Wakes `reserve` waiters once the limiter closes.
    pub(crate) fn close_room(&self) {
        if let Some(room) = &self.extras().room {
            room.close();
        }
    }

    /// Closes the limiter: items already submitted still run, later submissions resolve
    /// cancelled at once, and [`wait`](Self::wait) can finish. Returns true if this call closed
    /// it, false if it was already closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// let before = limiter.spawn(async { 1 });
    /// assert!(limiter.close());
    /// assert!(!limiter.close());
    /// let after = limiter.spawn(async { 2 });
    /// assert_eq!(before.await.unwrap(), 1);
    /// assert!(after.await.unwrap_err().is_cancelled());
    /// # }
    /// ```
    pub fn close(&self) -> bool {
        let closed_now = self.core().close();
        if closed_now {
            self.close_room();
        }
        closed_now
    }

    /// Returns true once the limiter is closed (by [`close`](Self::close) or
    /// [`shutdown`](Self::shutdown), or because its runtime shut down).
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// assert!(!limiter.is_closed());
    /// limiter.close();
    /// assert!(limiter.is_closed());
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.core().lifecycle() >= Lifecycle::Closed
    }

    /// Waits until the limiter is closed and no item is queued or running, and its manager task
    /// has exited.
    ///
    /// It does not close the limiter: without [`close`](Self::close) or
    /// [`shutdown`](Self::shutdown) it waits forever, as tokio-util's `TaskTracker::wait` does.
    /// It also resolves if the limiter's runtime shuts down.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future has no effect on the limiter.
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
    /// assert_eq!(limiter.metrics().completed, 10);
    /// # }
    /// ```
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            exited: self.core().exited(),
        }
    }

    /// Closes the limiter and cancels everything: queued items are dropped, running items are
    /// aborted, and all their handles resolve cancelled. Returns once the manager has exited
    /// and no item of this limiter is left on the runtime.
    ///
    /// Later calls to [`spawn`](Self::spawn) still return a handle, which resolves cancelled at
    /// once. Calling `shutdown` again, or from several tasks at once, is fine: each call returns
    /// once the limiter is done.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the shutdown goes on if the future is dropped; awaiting
    /// [`wait`](Self::wait) later observes its end.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let running = limiter.spawn(std::future::pending::<()>());
    /// let queued = limiter.spawn(async { 1 });
    /// limiter.shutdown().await;
    /// assert!(running.await.unwrap_err().is_cancelled());
    /// assert!(queued.await.unwrap_err().is_cancelled());
    /// assert!(limiter.spawn(async { 2 }).await.unwrap_err().is_cancelled());
    /// # }
    /// ```
    pub fn shutdown(&self) -> Shutdown<'_, S> {
        Shutdown {
            limiter: self,
            exited: self.core().exited(),
            begun: false,
        }
    }

    /// Returns the most items that may run at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// assert_eq!(Limiter::new(5).limit(), 5);
    /// # }
    /// ```
    pub fn limit(&self) -> usize {
        self.core().limit()
    }

    /// Changes the limit while the limiter runs.
    ///
    /// Growing it starts queued items at once. Shrinking it lets running items finish; from then
    /// on no item starts while `limit` or more are running, and no worker ID `>= limit` is
    /// handed out. On an [adaptive](crate::Builder::adaptive) limiter it sets the limit in force
    /// all the same (outside `min_limit`..=`max_limit` too), and the algorithm goes on from it
    /// at its next sample. On every limiter it clears what
    /// [`set_limit_until`](Self::set_limit_until) set: the expiry, and an adaptive limiter's cap.
    ///
    /// # Panics
    ///
    /// Panics if `limit` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// limiter.set_limit(16);
    /// assert_eq!(limiter.limit(), 16);
    /// # }
    /// ```
    #[track_caller]
    pub fn set_limit(&self, limit: usize) {
        assert!(limit > 0, "task_limiter: the limit must be at least 1");
        match &self.extras().adaptive {
            None => self.core().set_limit(limit, None),
            Some(adaptive) => adaptive.set_limit(limit),
        }
    }

    /// Sets a limit that holds until `until`, and `fallback` from then on, unless the limit is
    /// set again first.
    ///
    /// For a limit that is only good for a while, such as slots leased from a budget that other
    /// processes share: the lease's holder sets the limit to what it holds, until the instant the
    /// lease may have run out, with the limit it falls back to when the lease is not renewed in
    /// time. The expiry is checked at every admission against the monotonic clock (tokio's
    /// [`Instant`](tokio::time::Instant), so paused time in tests moves it too), not by a timer:
    /// a process that was paused past `until` starts nothing under the old limit when it runs
    /// again, even before whatever renews the limit gets to run.
    ///
    /// `fallback` may be 0: from `until` on, nothing new starts, and queued items wait (they
    /// are not cancelled) until the limit is raised again; running items finish. While the
    /// limit in force is 0, [`wait`](Self::wait) after [`close`](Self::close) waits for that
    /// raise (or a [`shutdown`](Self::shutdown)). Otherwise the semantics are
    /// [`set_limit`](Self::set_limit)'s; a plain `set_limit` clears the expiry. An `until` that
    /// has already passed puts `fallback` in force at once. [`limit`](Self::limit) and
    /// [`metrics`](Self::metrics) report the limit in force.
    ///
    /// # On an adaptive limiter: a cap
    ///
    /// On an [adaptive](crate::Builder::adaptive) limiter, `limit` (and `fallback` from
    /// `until` on) caps the algorithm's limit instead of replacing it: the limit in force is
    /// the lower of the two, and the algorithm goes on choosing its own under the cap (see
    /// [`adaptive_limit`](Self::adaptive_limit)). Items let start under a cap below the
    /// algorithm's limit give samples marked [`capped`](crate::adaptive::Sample::capped), from
    /// which the algorithm does not grow its limit: it was not allowed to use it. When the cap
    /// is raised or lifted, the algorithm goes on from its own limit. The cap is not clamped to
    /// [`Builder::min_limit`](crate::Builder::min_limit): the one who leased the slots knows
    /// best. Each call replaces the cap; [`set_limit`](Self::set_limit) lifts it.
    ///
    /// # Panics
    ///
    /// Panics if `limit` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    /// use tokio::time::Instant;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// // Eight slots for the next second, none after it unless renewed.
    /// limiter.set_limit_until(8, Instant::now() + Duration::from_secs(1), 0);
    /// assert_eq!(limiter.limit(), 8);
    /// tokio::time::sleep(Duration::from_secs(1)).await;
    /// assert_eq!(limiter.limit(), 0);
    /// # }
    /// ```
    ///
    /// An adaptive limiter under a cap:
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Aimd;
    /// use task_limiter::Limiter;
    /// use tokio::time::Instant;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::builder().adaptive(Aimd::new()).limit(10).build();
    /// // Four slots for the next second, one after it unless renewed.
    /// limiter.set_limit_until(4, Instant::now() + Duration::from_secs(1), 1);
    /// assert_eq!((limiter.limit(), limiter.adaptive_limit()), (4, Some(10)));
    /// tokio::time::sleep(Duration::from_secs(1)).await;
    /// assert_eq!((limiter.limit(), limiter.adaptive_limit()), (1, Some(10)));
    /// # }
    /// ```
    #[track_caller]
    pub fn set_limit_until(&self, limit: usize, until: tokio::time::Instant, fallback: usize) {
        assert!(limit > 0, "task_limiter: the limit must be at least 1");
        match &self.extras().adaptive {
            None => self.core().set_limit(limit, Some((until, fallback))),
            // The algorithm moves the limit under the cap; the cap and its expiry stay.
            Some(_) => self.core().set_cap(limit, until, fallback),
        }
    }

    /// Returns an [adaptive](crate::Builder::adaptive) limiter's own limit: the one its
    /// algorithm chose last (or [`set_limit`](Self::set_limit) set), before any cap that
    /// [`set_limit_until`](Self::set_limit_until) puts on it. It is what the limiter would use
    /// if it could, and [`limit`](Self::limit), the limit in force, is at most this.
    /// `None` on a limiter that is not adaptive.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Gradient;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().adaptive(Gradient::new()).limit(8).build();
    /// assert_eq!(limiter.adaptive_limit(), Some(8));
    /// assert_eq!(Limiter::new(8).adaptive_limit(), None);
    /// # }
    /// ```
    pub fn adaptive_limit(&self) -> Option<usize> {
        self.extras()
            .adaptive
            .as_ref()
            .map(|adaptive| adaptive.limit())
    }

    /// Returns the limit in force for `key`: its own ([`set_key_limit`](Self::set_key_limit)),
    /// else [`Builder::per_key_limit`](crate::Builder::per_key_limit), else `usize::MAX` (the
    /// key is limited by the global limit only).
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::{Key, Limiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(8);
    /// assert_eq!(limiter.key_limit(1_u64), usize::MAX);
    /// limiter.set_key_limit(1_u64, 3);
    /// assert_eq!(limiter.key_limit(&Key::from(1_u64)), 3); // a `&Key` works too
    /// # }
    /// ```
    pub fn key_limit(&self, key: impl Into<Key>) -> usize {
        self.core().key_limit(&key.into())
    }

    /// Sets one key's own limit, live, with [`set_limit`](Self::set_limit)'s semantics:
    /// growing it starts queued items of the key at once; shrinking it lets its running items
    /// finish. The limit is kept while the key has nothing queued or running.
    ///
    /// # Panics
    ///
    /// Panics if `limit` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(32).per_key_limit(4).build();
    /// // One tenant paid for more.
    /// limiter.set_key_limit("tenant-7", 16);
    /// assert_eq!(limiter.key_limit("tenant-7"), 16);
    /// assert_eq!(limiter.key_limit("tenant-8"), 4);
    /// # }
    /// ```
    #[track_caller]
    pub fn set_key_limit(&self, key: impl Into<Key>, limit: usize) {
        assert!(limit > 0, "task_limiter: a key's limit must be at least 1");
        self.core().set_key_limit(key.into(), limit);
    }

    /// Returns a snapshot of one key's state, or `None` when the key has nothing queued or
    /// running. See [`KeyMetrics`] for an example.
    pub fn key_metrics(&self, key: impl Into<Key>) -> Option<KeyMetrics> {
        self.core().key_metrics(&key.into())
    }

    /// Up to `n` keys with the most items queued, most first, each with its
    /// [`KeyMetrics`]: a bounded listing for dashboards, whatever the number of keys.
    ///
    /// Keys are ranked by their queue entries, which count items cancelled while queued until
    /// the queue passes them; the metrics count only the items still waiting. Ties go to the
    /// smaller key. Takes the admission lock for one pass over the keys with something queued
    /// or running (not over their items): cheap enough for a scrape, not for every item.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::{Key, Limiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(8).per_key_limit(1).build();
    /// let (tx, rx) = tokio::sync::watch::channel(false);
    /// for (key, n) in [("a", 2), ("b", 4), ("c", 3)] {
    ///     for _ in 0..n {
    ///         let mut rx = rx.clone();
    ///         limiter.build_task().key(key).spawn(async move {
    ///             let _ = rx.wait_for(|go| *go).await;
    ///         });
    ///     }
    /// }
    /// tokio::task::yield_now().await;
    /// let top = limiter.keys_most_queued(2);
    /// let listed: Vec<_> = top.iter().map(|(key, m)| (key.clone(), m.queued)).collect();
    /// // One item of each key runs; the rest wait.
    /// assert_eq!(listed, [(Key::from("b"), 3), (Key::from("c"), 2)]);
    /// tx.send(true).unwrap();
    /// # }
    /// ```
    pub fn keys_most_queued(&self, n: usize) -> Vec<(Key, KeyMetrics)> {
        self.core().keys_most_queued(n)
    }

    /// A snapshot of the distributions of queue waits and run times, or `None` if the limiter
    /// was built without [`Builder::distributions`](crate::Builder::distributions).
    ///
    /// Reads each histogram's counters once, without a lock: see [`Distributions`] for what
    /// is recorded and [`Histogram`](crate::Histogram) for the buckets and quantiles.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// assert!(Limiter::new(2).distributions().is_none());
    ///
    /// let limiter = Limiter::builder().limit(2).distributions(true).build();
    /// limiter.spawn(tokio::time::sleep(Duration::from_millis(50))).await.unwrap();
    /// let run_time = limiter.distributions().unwrap().run_time;
    /// assert_eq!(run_time.count(), 1);
    /// assert_eq!(run_time.sum(), Duration::from_millis(50));
    /// # }
    /// ```
    pub fn distributions(&self) -> Option<Distributions> {
        self.extras().distributions.as_ref().map(|d| d.snapshot())
    }

    /// Returns the limiter's name (see [`Builder::name`](crate::Builder::name)).
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// assert_eq!(Limiter::new(1).name(), "task-limiter");
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        self.core().name()
    }

    /// Returns the number of items queued or running.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let handle = limiter.spawn(async {});
    /// assert_eq!(limiter.len(), 1);
    /// handle.await.unwrap();
    /// assert_eq!(limiter.len(), 0);
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        let m = self.metrics();
        m.queued + m.running
    }

    /// Returns true if no item is queued or running.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// assert!(Limiter::new(1).is_empty());
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns a snapshot of the limiter's counters.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// limiter.spawn(async {}).await.unwrap();
    /// let m = limiter.metrics();
    /// assert_eq!((m.limit, m.submitted, m.completed), (2, 1, 1));
    /// # }
    /// ```
    pub fn metrics(&self) -> Metrics {
        self.core().metrics()
    }

    /// Returns the worker IDs held by live worker tasks or by [leases](crate::Lease), lowest
    /// first: a view for dashboards.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(4);
    /// limiter.close();
    /// limiter.wait().await;
    /// assert!(limiter.busy_workers().is_empty());
    /// # }
    /// ```
    pub fn busy_workers(&self) -> Vec<WorkerId> {
        self.core().busy_ids()
    }
}

impl<S> fmt::Debug for Limiter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.metrics();
        f.debug_struct("Limiter")
            .field("name", &self.name())
            .field("limit", &m.limit)
            .field("queued", &m.queued)
            .field("running", &m.running)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Future returned by [`Limiter::wait`]: resolves once the limiter is closed, nothing of it is
/// queued or running, and its manager task has exited.
///
/// # Examples
///
/// ```
/// use task_limiter::{Limiter, Wait};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(2);
/// limiter.close();
/// let done: Wait<'_> = limiter.wait();
/// done.await;
/// # }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Wait<'a> {
    exited: Exited<'a>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.exited).poll(cx)
    }
}

impl fmt::Debug for Wait<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wait").finish_non_exhaustive()
    }
}

/// Future returned by [`Limiter::shutdown`]: starts the shutdown when first polled, then
/// resolves once the limiter's manager has exited and no item of it is left on the runtime.
///
/// # Examples
///
/// ```
/// use task_limiter::{Limiter, Shutdown};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(2);
/// let shutdown: Shutdown<'_> = limiter.shutdown();
/// shutdown.await;
/// assert!(limiter.is_closed());
/// # }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Shutdown<'a, S = ()> {
    limiter: &'a Limiter<S>,
    exited: Exited<'a>,
    begun: bool,
}

impl<S> Future for Shutdown<'_, S> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.begun {
            self.begun = true;
            self.limiter.close_room();
            self.limiter.core().begin_shutdown();
        }
        Pin::new(&mut self.exited).poll(cx)
    }
}

impl<S> fmt::Debug for Shutdown<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("limiter", &self.limiter.name())
            .field("begun", &self.begun)
            .finish()
    }
}
