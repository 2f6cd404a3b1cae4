use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

use crate::builder::Builder;
use crate::manager::{self, DoneTx, ExitGuard, Slots};
use crate::queue::Queue;
use crate::state::States;
use crate::sync::rt::runtime::Handle;
use crate::sync::rt::sync::mpsc::{self, UnboundedSender};
use crate::sync::rt::sync::{Notify, Semaphore};
use crate::sync::{lock, Arc, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering};
use crate::task::{Job, Starter};
use crate::{JoinHandle, Metrics, WorkerId};

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
/// [`Builder::worker_state`] and lent to items by
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
    pub(crate) shared: Arc<Shared>,
    /// The work channel. The manager sees it close when every `Limiter` is dropped.
    work_tx: UnboundedSender<Job>,
    /// The state lives in `shared.states`; this only names its type.
    _state: PhantomData<fn() -> S>,
}

impl<S> Clone for Limiter<S> {
    fn clone(&self) -> Self {
        Limiter {
            shared: self.shared.clone(),
            work_tx: self.work_tx.clone(),
            _state: PhantomData,
        }
    }
}

/// State shared by the `Limiter` clones, the manager and the workers.
pub(crate) struct Shared {
    pub(crate) name: Box<str>,
    limit: AtomicUsize,
    pub(crate) queue: Mutex<Queue>,
    pub(crate) slots: Mutex<Slots>,
    /// Items admitted to run: never raised past the limit (see `try_admit`).
    pub(crate) running: AtomicUsize,
    pub(crate) closed: AtomicBool,
    pub(crate) shutdown: AtomicBool,
    /// Wakes the manager for close, shutdown and `set_limit`.
    pub(crate) control: Notify,
    pub(crate) done_tx: DoneTx,
    pub(crate) exited: AtomicBool,
    pub(crate) exit_notify: Notify,

    pub(crate) submitted: Padded<AtomicU64>,
    pub(crate) started: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) cancelled_running: AtomicU64,
    /// Items dropped before they started: aborted while queued, refused, or cancelled by shutdown.
    pub(crate) dropped_unstarted: AtomicU64,
    max_running: AtomicUsize,
    pub(crate) workers_spawned: AtomicU64,

    /// The `Arc<States<S>>` of a `Limiter<S>`: per-worker state, untouched by other items.
    pub(crate) states: Box<dyn Any + Send + Sync>,
    /// Places in the queue for `try_spawn` and `reserve`, with `Builder::max_queued`.
    pub(crate) room: Option<Arc<Semaphore>>,
}

/// Keeps the submitter's counter off the cache line that the workers write.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl std::ops::Deref for Padded<AtomicU64> {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

impl Shared {
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Counts one more running item if that keeps `running <= limit`. This is the one place
    /// `running` grows, so items running at once never exceed the limit in force when each
    /// started.
    pub(crate) fn try_admit(&self, limit: usize) -> bool {
        let admitted = self
            .running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                (running < limit).then_some(running + 1)
            });
        match admitted {
            Ok(before) => {
                if before + 1 > self.max_running.load(Ordering::Relaxed) {
                    self.max_running.fetch_max(before + 1, Ordering::Relaxed);
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Cancels items that never started and counts them.
    pub(crate) fn cancel_unstarted(&self, jobs: impl IntoIterator<Item = Job>) {
        // Counted whether or not this call cancelled it: an item aborted while queued is
        // counted when the queue lets go of it, here or in a worker.
        let mut count = 0;
        for job in jobs {
            job.cancel();
            count += 1;
        }
        self.dropped_unstarted.fetch_add(count, Ordering::Relaxed);
    }
}

impl Limiter {
    /// Creates a limiter that runs at most `limit` items at once on the current tokio runtime.
    ///
    /// The same as `Limiter::builder().limit(limit).build()`; see [`Builder`] for a name and
    /// the queue order.
    ///
    /// # Panics
    ///
    /// Panics if `limit` is 0, or if called outside a tokio runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(8);
    /// assert_eq!(limiter.limit(), 8);
    /// # }
    /// ```
    #[track_caller]
    pub fn new(limit: usize) -> Limiter {
        Builder::new().limit(limit).build()
    }

    /// Returns a [`Builder`] to configure a limiter.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(2).name("io").build();
    /// assert_eq!(limiter.name(), "io");
    /// # }
    /// ```
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<S: Send + 'static> Limiter<S> {
    // The manager's spawn location, as tokio-console shows it, is then the user's `build` call.
    #[track_caller]
    pub(crate) fn from_builder(builder: Builder<S>, handle: &Handle) -> Limiter<S> {
        let limit = builder.limit.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let (work_tx, work_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            name: builder.name.into_boxed_str(),
            limit: AtomicUsize::new(limit),
            queue: Mutex::new(Queue::new(builder.order)),
            slots: Mutex::new(Slots::default()),
            running: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            control: Notify::new(),
            done_tx,
            exited: AtomicBool::new(false),
            exit_notify: Notify::new(),
            submitted: Padded(AtomicU64::new(0)),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            cancelled_running: AtomicU64::new(0),
            dropped_unstarted: AtomicU64::new(0),
            max_running: AtomicUsize::new(0),
            workers_spawned: AtomicU64::new(0),
            states: Box::new(Arc::new(States::new(builder.make))),
            room: builder
                .max_queued
                .map(|max| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))),
        });
        let exit = ExitGuard {
            shared: shared.clone(),
        };
        manager::spawn_manager(handle, &shared.name, manager::run(exit, work_rx, done_rx));
        Limiter {
            shared,
            work_tx,
            _state: PhantomData,
        }
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
        self.submit(make)
    }

    /// Queues an item of any shape: the one path of every `spawn` method.
    #[inline]
    pub(crate) fn submit<T: Starter>(&self, starter: T) -> JoinHandle<T::Output> {
        let (job, cell) = Job::new(starter);
        let shared = &*self.shared;
        shared.submitted.fetch_add(1, Ordering::Relaxed);
        if shared.closed.load(Ordering::Acquire) {
            shared.cancel_unstarted([job]);
        } else if let Err(refused) = self.work_tx.send(job) {
            // The manager closed the channel (close or shutdown) or is gone with its runtime.
            shared.cancel_unstarted([refused.0]);
        } else {
            tracing::trace!(target: "task_limiter", limiter = %shared.name, "item queued");
        }
        JoinHandle::new(cell.into_join())
    }

    /// Queues an item unless the limiter is closed, in which case its work comes back.
    pub(crate) fn try_submit<T: Starter>(&self, starter: T) -> Result<JoinHandle<T::Output>, T> {
        let shared = &*self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(starter);
        }
        let (job, cell) = Job::new(starter);
        shared.submitted.fetch_add(1, Ordering::Relaxed);
        match self.work_tx.send(job) {
            Ok(()) => {
                tracing::trace!(target: "task_limiter", limiter = %shared.name, "item queued");
                Ok(JoinHandle::new(cell.into_join()))
            }
            // Closed since the check: the item never reached the manager, so take it back.
            Err(refused) => {
                shared.submitted.fetch_sub(1, Ordering::Relaxed);
                let starter = cell.take_unstarted();
                drop(refused);
                Err(starter.expect("a refused item is still queued"))
            }
        }
    }

    /// Wakes `reserve` waiters once the limiter closes.
    fn close_room(&self) {
        if let Some(room) = &self.shared.room {
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
        let closed_now = !self.shared.closed.swap(true, Ordering::AcqRel);
        if closed_now {
            self.close_room();
            self.shared.control.notify_one();
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
        self.shared.closed.load(Ordering::Acquire)
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
    pub async fn wait(&self) {
        loop {
            // Made before the check: `notify_waiters` reaches every `Notified` made before it.
            let exited = self.shared.exit_notify.notified();
            if self.shared.exited.load(Ordering::Acquire) {
                return;
            }
            exited.await;
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
    pub async fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.closed.store(true, Ordering::Release);
        self.close_room();
        self.shared.control.notify_one();
        self.wait().await;
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
        self.shared.limit()
    }

    /// Changes the limit while the limiter runs.
    ///
    /// Growing it starts queued items at once. Shrinking it lets running items finish; from then
    /// on no item starts while `limit` or more are running, and no worker ID `>= limit` is
    /// handed out.
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
        self.shared.limit.store(limit, Ordering::Release);
        self.shared.control.notify_one();
    }

    /// Returns the limiter's name (see [`Builder::name`]).
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
        &self.shared.name
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
        let s = &*self.shared;
        // Read the later stages first, so that a racing item is never counted as both
        // finished and queued.
        let completed = s.completed.load(Ordering::Acquire);
        let panicked = s.panicked.load(Ordering::Acquire);
        let cancelled_running = s.cancelled_running.load(Ordering::Acquire);
        let dropped = s.dropped_unstarted.load(Ordering::Acquire);
        let running = s.running.load(Ordering::Acquire);
        let started = s.started.load(Ordering::Acquire);
        let submitted = s.submitted.load(Ordering::Acquire);
        Metrics {
            limit: s.limit(),
            queued: submitted.saturating_sub(started + dropped) as usize,
            running,
            submitted,
            completed,
            panicked,
            cancelled: cancelled_running + dropped,
            max_running: s.max_running.load(Ordering::Relaxed),
            workers_spawned: s.workers_spawned.load(Ordering::Relaxed),
        }
    }

    /// Returns the worker IDs held by live worker tasks, lowest first: a view for dashboards.
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
        lock(&self.shared.slots).busy_ids()
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
