use std::fmt;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::adaptive::{Algorithm, Controller, MakeAlgorithm, DEFAULT_MAX_LIMIT};
use crate::core::{Config, Core, QueueOrder};
use crate::distributions::Recorders;
use crate::limiter::{Extras, Limiter};
use crate::state::{MakeState, States};
use crate::sync::rt::runtime::Handle;
use crate::sync::rt::sync::Semaphore;
use crate::sync::Arc;
use crate::worker_id::WorkerId;

/// How long a worker with no work stays parked by default: as long as tokio keeps an idle
/// blocking-pool thread. A parked worker costs one idle task; a worker spawned again costs a
/// task spawn and a manager round trip for the item that finds none parked.
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Configures and builds a [`Limiter`].
///
/// # Examples
///
/// ```
/// use task_limiter::{Limiter, QueueOrder};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::builder()
///     .limit(8)
///     .name("thumbnails")
///     .queue_order(QueueOrder::Fifo)
///     .build();
/// assert_eq!(limiter.limit(), 8);
/// assert_eq!(limiter.name(), "thumbnails");
/// # }
/// ```
///
/// The type parameter `S` is the type of the per-worker state set by
/// [`worker_state`](Self::worker_state); it is `()` without one.
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<S = ()> {
    pub(crate) limit: Option<usize>,
    pub(crate) name: String,
    pub(crate) order: QueueOrder,
    pub(crate) max_queued: Option<usize>,
    /// `distributions`: record queue waits and run times in histograms.
    distributions: bool,
    pub(crate) keep_alive: Duration,
    pub(crate) per_key_limit: usize,
    pub(crate) make: MakeState<S>,
    pub(crate) cancel_on: Option<CancellationToken>,
    pub(crate) adaptive: Option<MakeAlgorithm>,
    pub(crate) min_limit: Option<usize>,
    pub(crate) max_limit: Option<usize>,
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

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder {
            limit: None,
            name: String::from("task-limiter"),
            order: QueueOrder::default(),
            max_queued: None,
            distributions: false,
            keep_alive: DEFAULT_KEEP_ALIVE,
            per_key_limit: usize::MAX,
            make: Arc::new(|_| ()),
            cancel_on: None,
            adaptive: None,
            min_limit: None,
            max_limit: None,
        }
    }
}

impl<S> Clone for Builder<S> {
    fn clone(&self) -> Self {
        Builder {
            limit: self.limit,
            name: self.name.clone(),
            order: self.order,
            max_queued: self.max_queued,
            distributions: self.distributions,
            keep_alive: self.keep_alive,
            per_key_limit: self.per_key_limit,
            make: self.make.clone(),
            cancel_on: self.cancel_on.clone(),
            adaptive: self.adaptive.clone(),
            min_limit: self.min_limit,
            max_limit: self.max_limit,
        }
    }
}

impl<S> Builder<S> {
    /// Sets the most items that may run at once. Defaults to the number of CPUs
    /// ([`std::thread::available_parallelism`]).
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
    /// let limiter = Limiter::builder().limit(3).build();
    /// assert_eq!(limiter.limit(), 3);
    /// # }
    /// ```
    #[track_caller]
    pub fn limit(mut self, limit: usize) -> Builder<S> {
        assert!(limit > 0, "task_limiter: the limit must be at least 1");
        self.limit = Some(limit);
        self
    }

    /// Names the limiter, for tracing fields and tokio-console task names
    /// (`{name}.manager`, `{name}.worker-{id}`). Defaults to `task-limiter`.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().name("uploads").build();
    /// assert_eq!(limiter.name(), "uploads");
    /// # }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Builder<S> {
        self.name = name.into();
        self
    }

    /// Sets the order in which queued items start. Defaults to [`QueueOrder::Fifo`].
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::{Limiter, QueueOrder};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().queue_order(QueueOrder::Lifo).build();
    /// # drop(limiter);
    /// # }
    /// ```
    pub fn queue_order(mut self, order: QueueOrder) -> Builder<S> {
        self.order = order;
        self
    }

    /// Sets the limit of every key that has no limit of its own
    /// ([`Limiter::set_key_limit`]): at most `limit` weight of one key's items run at once,
    /// within the global limit. Without it, keys are limited by the global limit only.
    ///
    /// Items are given a key with [`TaskBuilder::key`](crate::TaskBuilder::key). Keys with
    /// work take turns: see [`TaskBuilder::key`](crate::TaskBuilder::key) for what is
    /// guaranteed.
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
    /// // 64 fetches at once, at most 2 per host.
    /// let limiter = Limiter::builder().limit(64).per_key_limit(2).build();
    /// assert_eq!(limiter.key_limit("example.com"), 2);
    /// # }
    /// ```
    #[track_caller]
    pub fn per_key_limit(mut self, limit: usize) -> Builder<S> {
        assert!(limit > 0, "task_limiter: a key's limit must be at least 1");
        self.per_key_limit = limit;
        self
    }

    /// Sets how long a worker that finds no work stays parked, holding its worker ID, before
    /// its task exits. Defaults to 10 seconds.
    ///
    /// A parked worker takes the next item at once, without a task spawn: a service whose
    /// queue is mostly empty keeps its workers, and tokio-console shows them as stable tasks.
    /// At most `limit` workers are ever parked. Close (once the queue is drained), shutdown and a
    /// limit below a worker's ID end parked workers whatever their keep-alive.
    /// `Duration::MAX` keeps them until then.
    ///
    /// The keep-alive runs on the runtime's timer, so paused time (`tokio::time::pause`) drives
    /// it too. On a runtime built without its time driver (no `enable_time`), or in a program
    /// built with `panic = "abort"`, there is no keep-alive: parked workers wait until close,
    /// shutdown or a smaller limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder()
    ///     .limit(4)
    ///     .keep_alive(Duration::from_secs(60))
    ///     .build();
    /// limiter.spawn(async {}).await.unwrap();
    /// // The worker that ran the item is parked, ready for the next one.
    /// assert_eq!(limiter.metrics().idle_workers, 1);
    /// # }
    /// ```
    pub fn keep_alive(mut self, keep_alive: Duration) -> Builder<S> {
        self.keep_alive = keep_alive;
        self
    }

    /// Bounds the queue for [`try_spawn`](Limiter::try_spawn) and
    /// [`reserve`](Limiter::reserve): at most `max` items submitted through them wait for a
    /// worker at once. Without it the queue is unbounded.
    ///
    /// An item takes its place in the queue when it is submitted and gives it back the moment
    /// it leaves the queue: when it starts, or when it is cancelled (its place is free as soon
    /// as [`abort`](crate::JoinHandle::abort) returns). Once `max` such items wait,
    /// `try_spawn` gives its work back with [`TrySpawnError::Full`](crate::TrySpawnError::Full)
    /// and `reserve` waits for a place.
    ///
    /// The other submission methods ([`spawn`](Limiter::spawn),
    /// [`spawn_with`](Limiter::spawn_with), [`spawn_blocking`](Limiter::spawn_blocking), ...)
    /// never wait and are never refused for room, bound or not, and their items take no place:
    /// work may submit more work to its own limiter, and that must not wait for the queue that
    /// the work itself is holding up, or it would deadlock. Bound the producers that feed the
    /// limiter from outside with `try_spawn` and `reserve`.
    ///
    /// # Panics
    ///
    /// Panics if `max` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(1).max_queued(1).build();
    /// let first = limiter.try_spawn(async { 1 }).unwrap(); // queued: the manager has not run yet
    /// let refused = limiter.try_spawn(async { 2 }).unwrap_err();
    /// assert!(refused.is_full());
    /// let work = refused.into_inner(); // the future comes back
    /// assert_eq!(first.await.unwrap(), 1);
    /// assert_eq!(limiter.try_spawn(work).unwrap().await.unwrap(), 2);
    /// # }
    /// ```
    #[track_caller]
    pub fn max_queued(mut self, max: usize) -> Builder<S> {
        assert!(max > 0, "task_limiter: `max_queued` must be at least 1");
        self.max_queued = Some(max);
        self
    }

    /// Records each item's queue wait and run time in histograms, read with
    /// [`Limiter::distributions`] (off by default).
    ///
    /// The counters of [`Limiter::metrics`] are always on, among them the sums of the waits
    /// and run times; this adds their distributions, for quantiles and for spikes that a
    /// scrape of gauges misses. On, an item reads the clock once at each transition (its
    /// submission, its start, its end; a lease's request, grant and drop) and makes two
    /// relaxed atomic adds into fixed log-scale buckets per recorded duration, without a lock.
    /// Off, an item pays nothing for them: no clock read, no atomic, one branch at submission.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(1).distributions(true).build();
    /// let blocker = limiter.acquire().await.unwrap();
    /// let waiting = limiter.spawn(async {});
    /// tokio::time::sleep(Duration::from_millis(250)).await;
    /// drop(blocker);
    /// waiting.await.unwrap();
    /// let wait = limiter.distributions().unwrap().queue_wait;
    /// // The lease waited for nothing, the item for 250 ms.
    /// assert_eq!((wait.count(), wait.sum()), (2, Duration::from_millis(250)));
    /// # }
    /// ```
    ///
    /// [`Limiter::distributions`]: crate::Limiter::distributions
    /// [`Limiter::metrics`]: crate::Limiter::metrics
    pub fn distributions(mut self, on: bool) -> Builder<S> {
        self.distributions = on;
        self
    }

    /// Shuts the limiter down when `token` is cancelled, as [`Limiter::shutdown`] does: queued
    /// items are dropped, running items are aborted, their handles resolve cancelled, and the
    /// manager exits. The token is [tokio-util's](tokio_util::sync::CancellationToken), the one
    /// a service already hands to everything it must stop on shutdown (pass a
    /// [`child_token`](CancellationToken::child_token) to stop this limiter alone).
    ///
    /// The manager task watches the token; nothing else is spawned for it. A token cancelled
    /// before `build` shuts the limiter down as soon as its manager first runs.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let token = CancellationToken::new();
    /// let limiter = Limiter::builder().limit(1).cancel_on(token.clone()).build();
    /// let running = limiter.spawn(std::future::pending::<()>());
    /// token.cancel();
    /// limiter.wait().await; // the manager is gone
    /// assert!(running.await.unwrap_err().is_cancelled());
    /// assert!(limiter.is_closed());
    /// # }
    /// ```
    pub fn cancel_on(mut self, token: CancellationToken) -> Builder<S> {
        self.cancel_on = Some(token);
        self
    }

    // --- adaptive limits (issue 12) ---

    /// Lets `algorithm` set the limit from what the items measure: one
    /// [`Sample`](crate::adaptive::Sample) per finished item (see the [`adaptive`](crate::adaptive)
    /// module for which items give one, and the algorithms that come with the crate).
    ///
    /// [`limit`](Self::limit) is then the limit it starts from (by default the number of CPUs,
    /// within the bounds), and the limit stays within [`min_limit`](Self::min_limit) (by
    /// default 1) and [`max_limit`](Self::max_limit) (by default 1,000). Each limit the
    /// algorithm chooses is put in force as [`Limiter::set_limit`](crate::Limiter::set_limit)
    /// puts it: growing it starts queued items at once, shrinking it lets running items
    /// finish. A user's
    /// `set_limit` still works: it sets the limit in force, and the algorithm goes on from it.
    /// [`Limiter::set_limit_until`](crate::Limiter::set_limit_until) caps the algorithm's limit
    /// (slots leased from a cluster budget): the limit in force is then the lower of the two.
    /// [`Limiter::limit`](crate::Limiter::limit) and [`Limiter::metrics`](crate::Limiter::metrics)
    /// report the limit in force, [`Limiter::adaptive_limit`](crate::Limiter::adaptive_limit)
    /// the algorithm's.
    ///
    /// The builder keeps `algorithm` as given; each limiter it builds gets a clone of it.
    ///
    /// # Panics
    ///
    /// [`build`](Self::build) panics if `max_limit < min_limit`, or if a `limit` given is
    /// outside them.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Aimd;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder()
    ///     .adaptive(Aimd::new())
    ///     .limit(8)
    ///     .min_limit(2)
    ///     .max_limit(100)
    ///     .build();
    /// assert_eq!(limiter.limit(), 8);
    /// # }
    /// ```
    pub fn adaptive<A>(mut self, algorithm: A) -> Builder<S>
    where
        A: Algorithm + Clone + Sync,
    {
        self.adaptive = Some(Arc::new(move || Box::new(algorithm.clone())));
        self
    }

    /// The lowest limit an adaptive limit may take (default 1). Without
    /// [`adaptive`](Self::adaptive) it has no effect.
    ///
    /// # Panics
    ///
    /// Panics if `limit` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Gradient;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().adaptive(Gradient::new()).min_limit(4).build();
    /// assert!(limiter.limit() >= 4);
    /// # }
    /// ```
    #[track_caller]
    pub fn min_limit(mut self, limit: usize) -> Builder<S> {
        assert!(limit > 0, "task_limiter: `min_limit` must be at least 1");
        self.min_limit = Some(limit);
        self
    }

    /// The highest limit an adaptive limit may take (default 1,000). Without
    /// [`adaptive`](Self::adaptive) it has no effect.
    ///
    /// # Panics
    ///
    /// Panics if `limit` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Gradient;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().adaptive(Gradient::new()).max_limit(2).build();
    /// assert!(limiter.limit() <= 2);
    /// # }
    /// ```
    #[track_caller]
    pub fn max_limit(mut self, limit: usize) -> Builder<S> {
        assert!(limit > 0, "task_limiter: `max_limit` must be at least 1");
        self.max_limit = Some(limit);
        self
    }

    /// The limit to start with and, for an adaptive limiter, `min_limit..=max_limit` with
    /// their defaults.
    #[track_caller]
    fn starting_limit(&self) -> (usize, Option<(usize, usize)>) {
        let cpus = || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        if self.adaptive.is_none() {
            return (self.limit.unwrap_or_else(cpus), None);
        }
        let min = self.min_limit.unwrap_or(1);
        let max = self.max_limit.unwrap_or(DEFAULT_MAX_LIMIT.max(min));
        assert!(
            min <= max,
            "task_limiter: `max_limit` ({max}) is below `min_limit` ({min})"
        );
        let limit = match self.limit {
            Some(limit) => {
                assert!(
                    (min..=max).contains(&limit),
                    "task_limiter: the starting limit {limit} is outside \
                     `min_limit`..=`max_limit` ({min}..={max})"
                );
                limit
            }
            None => cpus().clamp(min, max),
        };
        (limit, Some((min, max)))
    }

    /// Gives every worker ID a value of type `T`, made by `make` on the first item that needs
    /// it and lent to the items submitted with
    /// [`spawn_with_state`](Limiter::spawn_with_state) and
    /// [`spawn_blocking_with_state`](Limiter::spawn_blocking_with_state) that run under that
    /// ID: a reusable buffer, a connection, a cache.
    ///
    /// The worker task owns the value and lends `&mut T` to one item at a time, so the items
    /// need no lock and no table indexed by [`WorkerId`]. The value outlives worker tasks: when
    /// a worker exits, its value is kept for the next worker with the same ID. It is dropped
    /// if an item panics while it holds it (the next item gets a new one), and otherwise
    /// when the limiter and its workers are gone. At most one value per ID ever exists, so at
    /// most `limit` values (the highest limit in force, after [`set_limit`](Limiter::set_limit)).
    ///
    /// `make` runs on the worker, inside the first item that needs the value: a panic in it is
    /// that item's panic, and the next item on the ID calls it again.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder()
    ///     .limit(4)
    ///     .worker_state(|id| format!("connection for {id}"))
    ///     .build();
    /// let greeting = limiter
    ///     .spawn_with_state(|conn: &mut String, _id| Box::pin(async move { conn.clone() }))
    ///     .await
    ///     .unwrap();
    /// assert!(greeting.starts_with("connection for worker-"));
    /// # }
    /// ```
    pub fn worker_state<T, F>(self, make: F) -> Builder<T>
    where
        F: Fn(WorkerId) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        Builder {
            limit: self.limit,
            name: self.name,
            order: self.order,
            max_queued: self.max_queued,
            distributions: self.distributions,
            keep_alive: self.keep_alive,
            per_key_limit: self.per_key_limit,
            make: Arc::new(make),
            cancel_on: self.cancel_on,
            adaptive: self.adaptive,
            min_limit: self.min_limit,
            max_limit: self.max_limit,
        }
    }

    /// Builds the limiter on the current tokio runtime, spawning its manager task there.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(2).build();
    /// assert_eq!(limiter.spawn(async { 1 }).await.unwrap(), 1);
    /// # }
    /// ```
    #[track_caller]
    pub fn build(self) -> Limiter<S>
    where
        S: Send + 'static,
    {
        match Handle::try_current() {
            Ok(handle) => self.build_on(&handle),
            Err(_) => panic!(
                "task_limiter: a `Limiter` must be built inside a tokio runtime; \
                 use `Builder::build_on(&handle)` to build it from outside one"
            ),
        }
    }

    /// Builds the limiter on the runtime behind `handle`: its manager and workers run there,
    /// and it may be built and used from any thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// let runtime = tokio::runtime::Runtime::new().unwrap();
    /// let limiter = Limiter::builder().limit(2).build_on(runtime.handle());
    /// let handle = limiter.spawn(async { 1 + 1 });
    /// assert_eq!(runtime.block_on(handle).unwrap(), 2);
    /// ```
    #[track_caller]
    pub fn build_on(self, handle: &Handle) -> Limiter<S>
    where
        S: Send + 'static,
    {
        let (limit, bounds) = self.starting_limit();
        let adaptive = self.adaptive.zip(bounds);
        let config = Config {
            name: self.name.into(),
            limit,
            order: self.order,
            keep_alive: Some(self.keep_alive).filter(|&after| after != Duration::MAX),
            per_key_limit: self.per_key_limit,
            cancel_on: None,
            on_cancel: None,
        };
        let mut extras = Extras {
            states: Arc::new(States::new(self.make)),
            room: self
                .max_queued
                .map(|max| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))),
            adaptive: None,
            distributions: self.distributions.then(|| Arc::new(Recorders::new())),
        };
        let config = Config {
            // `reserve` waiters learn of the shutdown as they do from `Limiter::shutdown`.
            on_cancel: extras
                .room
                .clone()
                .map(|room| Box::new(move || room.close()) as Box<dyn FnOnce() + Send>),
            cancel_on: self.cancel_on,
            ..config
        };
        let core = Core::start(config, handle);
        // Made once the core is: it sets the core's limit.
        extras.adaptive = adaptive.map(|(make, (min, max))| {
            let handle = core.limit_handle();
            Arc::new(Controller::new(make(), limit, min, max, handle))
        });
        Limiter::from_parts(core, extras)
    }
}

impl<S> fmt::Debug for Builder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("limit", &self.limit)
            .field("name", &self.name)
            .field("queue_order", &self.order)
            .field("max_queued", &self.max_queued)
            .field("distributions", &self.distributions)
            .field("keep_alive", &self.keep_alive)
            .field("cancel_on", &self.cancel_on.is_some())
            .field("adaptive", &self.adaptive.is_some())
            .field("min_limit", &self.min_limit)
            .field("max_limit", &self.max_limit)
            .finish()
    }
}
