use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::adaptive::Overload;
use crate::blocking::{blocking, blocking_with_state, RUNS_TO_END};
use crate::compose::{OnClosed, Options};
use crate::core::Work;
use crate::handle::JoinHandle;
use crate::key::Key;
use crate::limiter::Limiter;
use crate::state::with_state;
use crate::sync::rt::sync::OwnedSemaphorePermit;
use crate::sync::rt::time::Instant;
use crate::worker_id::WorkerId;

/// Sets options for one item, then submits it: returned by
/// [`Limiter::build_task`] and [`Permit::build_task`](crate::Permit::build_task).
///
/// The counterpart of tokio's `task::Builder` and `JoinSet::build_task`: every `spawn` method
/// of [`Limiter`] is here too, so any shape of work (a future, a closure, a blocking closure,
/// with or without the worker's state) takes any option. Its `spawn` methods behave like the
/// limiter's: they never block and never await.
///
/// # Examples
///
/// ```
/// use task_limiter::{Limiter, QueueOrder};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::builder().queue_order(QueueOrder::Priority).build();
/// let handle = limiter
///     .build_task()
///     .priority(5)
///     .spawn_blocking(|_id| 2 + 2);
/// assert_eq!(handle.await.unwrap(), 4);
/// # }
/// ```
#[must_use = "a task builder does nothing until one of its `spawn` methods is called"]
pub struct TaskBuilder<'a, S = (), O = ()> {
    limiter: &'a Limiter<S>,
    options: Options<O>,
}

impl<'a, S> TaskBuilder<'a, S> {
    pub(crate) fn new(limiter: &'a Limiter<S>, place: Option<OwnedSemaphorePermit>) -> Self {
        TaskBuilder {
            limiter,
            options: Options::new(place),
        }
    }
}

impl<'a, S, O> TaskBuilder<'a, S, O> {
    fn submit<W: Work>(self, work: W, runs_to_end: bool) -> JoinHandle<W::Output>
    where
        O: Overload<W::Output>,
    {
        match self
            .limiter
            .submit(work, runs_to_end, self.options, OnClosed::Cancel)
        {
            Ok(handle) => handle,
            Err(_) => unreachable!("`OnClosed::Cancel` never gives the work back"),
        }
    }

    /// The limiter, and what the builder collected (for the lease methods).
    pub(crate) fn into_parts(self) -> (&'a Limiter<S>, Options<O>) {
        (self.limiter, self.options)
    }

    /// Sets the item's priority, for a limiter built with
    /// [`QueueOrder::Priority`](crate::QueueOrder::Priority): a queued item with a higher
    /// priority starts before one with a lower priority, and items of equal priority start in
    /// the order they were submitted. Defaults to 0, the priority of items submitted without a
    /// builder; negative values rank below them. Ignored under the other queue orders.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::{Limiter, QueueOrder};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::{Arc, Mutex};
    ///
    /// let limiter = Limiter::builder()
    ///     .limit(1)
    ///     .queue_order(QueueOrder::Priority)
    ///     .build();
    /// let log = Arc::new(Mutex::new(Vec::new()));
    /// let mut handles = Vec::new();
    /// for (name, priority) in [("background", -1), ("normal", 0), ("urgent", 10)] {
    ///     let log = log.clone();
    ///     handles.push(
    ///         limiter
    ///             .build_task()
    ///             .priority(priority)
    ///             .spawn(async move { log.lock().unwrap().push(name) }),
    ///     );
    /// }
    /// for handle in handles {
    ///     handle.await.unwrap();
    /// }
    /// // All three were queued before the one worker took any.
    /// assert_eq!(*log.lock().unwrap(), ["urgent", "normal", "background"]);
    /// # }
    /// ```
    pub fn priority(mut self, priority: i32) -> Self {
        self.options.priority = priority;
        self
    }

    // --- time limits and cancellation (issue 11) ---

    /// Limits how long the item may run: once it has run for `timeout` (counted from its start
    /// on a worker, not from its submission), it is cancelled: its future is dropped, its worker
    /// ID is freed for the next item, and its handle resolves to a [`JoinError`] for which
    /// [`is_timeout`](crate::JoinError::is_timeout) is true (and
    /// [`is_cancelled`](crate::JoinError::is_cancelled) false), with the worker ID it ran on.
    ///
    /// The timer is the item's own, one `Sleep` polled by its worker inside the item's poll,
    /// after the item's future: a value that is ready when the time runs out is kept, as with
    /// [`tokio::time::timeout`]. The timeout is as precise as tokio's timer (a millisecond), and
    /// paused time (`tokio::time::pause`) drives it. Time spent queued does not count; use
    /// [`deadline`](Self::deadline) or [`queue_timeout`](Self::queue_timeout) to bound that.
    /// A `timeout` too large for the clock never ends the item.
    ///
    /// A [blocking item](Self::spawn_blocking) cannot be stopped once its closure runs, so the
    /// timeout does not apply to it.
    ///
    /// # Panics
    ///
    /// Panics if the limiter's runtime was built without its time driver (no `enable_time`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let slow = limiter
    ///     .build_task()
    ///     .timeout(Duration::from_secs(1))
    ///     .spawn(tokio::time::sleep(Duration::from_secs(60)));
    /// let fast = limiter
    ///     .build_task()
    ///     .timeout(Duration::from_secs(1))
    ///     .spawn(async { "in time" });
    /// assert!(slow.await.unwrap_err().is_timeout());
    /// assert_eq!(fast.await.unwrap(), "in time");
    /// # }
    /// ```
    ///
    /// [`JoinError`]: crate::JoinError
    #[track_caller]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.limiter.assert_timer("TaskBuilder::timeout");
        self.options.limits().timeout = Some(timeout);
        self
    }

    /// Sets the latest the item may start: if it is still queued at `deadline`, it never
    /// starts. Its work (future or closure) is dropped at the deadline, not when the queue
    /// would have reached it, and its handle resolves to a [`JoinError`] for which
    /// [`is_timeout`](crate::JoinError::is_timeout) is true, with no worker ID. An item that has started
    /// by then runs on; bound its run with [`timeout`](Self::timeout).
    ///
    /// The limiter keeps one timer for all its queued deadlines (the manager task's, armed for
    /// the earliest), not one per item, so thousands of items with deadlines of their own cost
    /// one heap entry each. The deadline is a [`tokio::time::Instant`], as for
    /// [`tokio::time::sleep_until`], so paused time drives it. A deadline that has passed
    /// already resolves the item timed out at once, without queueing it. With
    /// [`queue_timeout`](Self::queue_timeout) as well, the earlier of the two holds.
    ///
    /// # Panics
    ///
    /// Panics if the limiter's runtime was built without its time driver (no `enable_time`).
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
    /// let busy = limiter.spawn(tokio::time::sleep(Duration::from_secs(10)));
    /// // The only worker is busy for 10 s: this one would wait longer than it may.
    /// let late = limiter
    ///     .build_task()
    ///     .deadline(Instant::now() + Duration::from_secs(1))
    ///     .spawn(async { "never runs" });
    /// let err = late.await.unwrap_err();
    /// assert!(err.is_timeout());
    /// assert_eq!(err.worker_id(), None);
    /// busy.await.unwrap();
    /// # }
    /// ```
    ///
    /// [`JoinError`]: crate::JoinError
    #[track_caller]
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.limiter.assert_timer("TaskBuilder::deadline");
        self.options.limits().watch.deadline_at(deadline);
        self
    }

    /// Sets how long the item may wait in the queue: [`deadline`](Self::deadline) at now plus
    /// `timeout`. A `timeout` too large for the clock sets no deadline.
    ///
    /// # Panics
    ///
    /// Panics if the limiter's runtime was built without its time driver (no `enable_time`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let busy = limiter.spawn(tokio::time::sleep(Duration::from_secs(10)));
    /// let waiting = limiter
    ///     .build_task()
    ///     .queue_timeout(Duration::from_millis(100))
    ///     .spawn(async {});
    /// assert!(waiting.await.unwrap_err().is_timeout());
    /// assert_eq!(limiter.metrics().running, 1);
    /// busy.await.unwrap();
    /// # }
    /// ```
    #[track_caller]
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.limiter.assert_timer("TaskBuilder::queue_timeout");
        if let Some(at) = Instant::now().checked_add(timeout) {
            self.options.limits().watch.deadline_at(at);
        }
        self
    }

    /// Cancels the item when `token` is cancelled, wherever it is then: queued, its work is
    /// dropped at once and it never starts; running, its future is dropped and its worker ID
    /// freed. Its handle resolves to a [`JoinError`] for which
    /// [`is_cancelled`](crate::JoinError::is_cancelled) is true, as an abort does. A token cancelled
    /// already cancels the item at once, without queueing it.
    ///
    /// Running, the item waits on the token inside its own poll. Queued, the limiter's manager
    /// watches the token with a small future (no task per item); items without a token pay
    /// for neither. A started [blocking item](Self::spawn_blocking) cannot be stopped, so the
    /// token cancels it only while it is queued.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let request = CancellationToken::new();
    /// let running = limiter
    ///     .build_task()
    ///     .cancel_on(request.clone())
    ///     .spawn(std::future::pending::<()>());
    /// let queued = limiter
    ///     .build_task()
    ///     .cancel_on(request.clone())
    ///     .spawn(async { "never runs" });
    /// request.cancel();
    /// assert!(running.await.unwrap_err().is_cancelled());
    /// assert!(queued.await.unwrap_err().is_cancelled());
    /// # }
    /// ```
    ///
    /// [`JoinError`]: crate::JoinError
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.options.limits().watch.token = Some(token);
        self
    }

    // --- keys and weights (issue 10) ---

    /// Gives the item a key: a host, a tenant, a model. At most the key's limit
    /// ([`Builder::per_key_limit`](crate::Builder::per_key_limit),
    /// [`Limiter::set_key_limit`]) of its items' weight runs at once, within the global limit.
    /// Items without a key are limited by the global limit only.
    ///
    /// **Turns across keys.** The keys with queued items, and the items without a key as one
    /// more, take turns: each start goes to the next of them in turn whose next item fits, and
    /// that one goes to the back. So a key with one queued item starts it within one round of
    /// the keys with work, however many items another key has queued; no key starves another.
    /// Within a key, items start in the limiter's [`QueueOrder`](crate::QueueOrder) (see
    /// [`weight`](Self::weight) for the one exception). A key at its limit sits out until one
    /// of its items ends.
    ///
    /// A key's bookkeeping exists only while it has items queued or running; limits set with
    /// `set_key_limit` are kept. Aborting a queued keyed item drops its work at once, as for any
    /// item.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(16).per_key_limit(2).build();
    /// let handles: Vec<_> = ["a.example", "b.example", "a.example"]
    ///     .into_iter()
    ///     .map(|host| limiter.build_task().key(host).spawn(async move { host.len() }))
    ///     .collect();
    /// for handle in handles {
    ///     assert_eq!(handle.await.unwrap(), 9);
    /// }
    /// # }
    /// ```
    pub fn key(mut self, key: impl Into<Key>) -> Self {
        self.options.key = Some(key.into());
        self
    }

    /// Sets the item's weight: while it runs it counts `weight` toward the global limit and
    /// its key's (it still holds one worker ID). The default is 1.
    ///
    /// An item heavier than a limit in force runs when nothing else of that limit runs, never
    /// refused and never stranded, also when `set_limit` shrinks the limit under it.
    ///
    /// **No starvation by weight.** An item that does not fit the global limit is set aside
    /// (one at a time) with its weight held against its key; from then on at most `limit`
    /// items (the global limit then in force) may start before it, after which nothing starts
    /// until it fits. So it starts within `2 × limit` completions, under any stream of lighter
    /// items. These are the only items that may pass one queued before them in their key.
    /// Within its key's limit, a head item that does not fit waits, and its key's later items
    /// wait behind it.
    ///
    /// # Panics
    ///
    /// Panics if `weight` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(4);
    /// // A test that needs three of the four threads.
    /// let big = limiter.build_task().weight(3).spawn(async { "big" });
    /// let small = limiter.spawn(async { "small" });
    /// assert_eq!(big.await.unwrap(), "big");
    /// assert_eq!(small.await.unwrap(), "small");
    /// # }
    /// ```
    #[track_caller]
    pub fn weight(mut self, weight: u32) -> Self {
        assert!(
            weight > 0,
            "task_limiter: an item's weight must be at least 1"
        );
        self.options.weight = weight;
        self
    }

    // --- adaptive limits (issue 12) ---

    /// Marks the item's output as an overload when `overload` says so, for the limiter's
    /// [adaptive limit](crate::Builder::adaptive): an `Err` that stands for a 429 or a 503, a
    /// "too busy" reply. Its sample then backs the limit off, however fast the reply came (a
    /// refusal is often the fastest answer a downstream gives).
    ///
    /// Write the argument's type out (`|reply: &Result<Body, Error>| ...`): the builder learns
    /// the output's type only at `spawn`. A limiter without `adaptive` ignores it. A panicking
    /// item is never an overload, and a cancelled one gives no sample (see
    /// [`adaptive`](crate::adaptive)); a retry is a new item with a sample of its own.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Aimd;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().adaptive(Aimd::new()).limit(10).build();
    /// let reply = limiter
    ///     .build_task()
    ///     .overload_if(|status: &u16| *status == 429)
    ///     .spawn(async { 429u16 });
    /// assert_eq!(reply.await.unwrap(), 429);
    /// assert_eq!(limiter.limit(), 9); // backed off by Aimd's 0.9
    /// # }
    /// ```
    pub fn overload_if<F>(self, overload: F) -> TaskBuilder<'a, S, F> {
        TaskBuilder {
            limiter: self.limiter,
            options: self.options.with_overload(overload),
        }
    }

    /// Submits a future with these options, as [`Limiter::spawn`] does.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// let handle = limiter.build_task().priority(1).spawn(async { 7 });
    /// assert_eq!(handle.await.unwrap(), 7);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn<F>(self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
        O: Overload<F::Output>,
    {
        self.submit(move |_: WorkerId| future, false)
    }

    /// Submits a closure that makes the item's future from its [`WorkerId`], with these
    /// options, as [`Limiter::spawn_with`] does.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// let handle = limiter.build_task().spawn_with(|id| async move { id.index() });
    /// assert!(handle.await.unwrap() < 2);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_with<C, Fut>(self, make: C) -> JoinHandle<Fut::Output>
    where
        C: FnOnce(WorkerId) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
        O: Overload<Fut::Output>,
    {
        self.submit(make, false)
    }

    /// Submits a blocking closure with these options, as [`Limiter::spawn_blocking`] does.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// let handle = limiter.build_task().priority(3).spawn_blocking(|_id| "done");
    /// assert_eq!(handle.await.unwrap(), "done");
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_blocking<F, R>(self, f: F) -> JoinHandle<R>
    where
        F: FnOnce(WorkerId) -> R + Send + 'static,
        R: Send + 'static,
        O: Overload<R>,
    {
        self.submit(blocking(f), RUNS_TO_END)
    }
}

impl<S: Send + 'static, O> TaskBuilder<'_, S, O> {
    /// Submits an item that borrows its worker's state, with these options, as
    /// [`Limiter::spawn_with_state`] does.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().worker_state(|_id| 0_u64).build();
    /// let handle = limiter.build_task().spawn_with_state(|count: &mut u64, _id| {
    ///     Box::pin(async move {
    ///         *count += 1;
    ///         *count
    ///     })
    /// });
    /// assert_eq!(handle.await.unwrap(), 1);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_with_state<F, T>(self, f: F) -> JoinHandle<T>
    where
        F: for<'b> FnOnce(&'b mut S, WorkerId) -> Pin<Box<dyn Future<Output = T> + Send + 'b>>
            + Send
            + 'static,
        T: Send + 'static,
        O: Overload<T>,
    {
        let home = self.limiter.states();
        self.submit(with_state(home, f), false)
    }

    /// Submits a blocking closure that borrows its worker's state, with these options, as
    /// [`Limiter::spawn_blocking_with_state`] does.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().worker_state(|_id| Vec::<u32>::new()).build();
    /// let handle = limiter
    ///     .build_task()
    ///     .spawn_blocking_with_state(|scratch: &mut Vec<u32>, _id| {
    ///         scratch.clear();
    ///         scratch.extend(1..=4);
    ///         scratch.iter().sum::<u32>()
    ///     });
    /// assert_eq!(handle.await.unwrap(), 10);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_blocking_with_state<F, R>(self, f: F) -> JoinHandle<R>
    where
        F: FnOnce(&mut S, WorkerId) -> R + Send + 'static,
        R: Send + 'static,
        O: Overload<R>,
    {
        let home = self.limiter.states();
        self.submit(blocking_with_state(home, f), RUNS_TO_END)
    }
}

impl<S, O> fmt::Debug for TaskBuilder<'_, S, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("limiter", &self.limiter.name())
            .field("priority", &self.options.priority)
            .field("weight", &self.options.weight)
            .field("key", &self.options.key)
            .field("holds_place", &self.options.place.is_some())
            .field("limits", &self.options.limits)
            .field("overload_if", &(std::any::type_name::<O>() != "()"))
            .finish()
    }
}

impl<S> Limiter<S> {
    /// Returns a [`TaskBuilder`] to set options (a priority) for one item before submitting
    /// it.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::{Limiter, QueueOrder};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder()
    ///     .limit(2)
    ///     .queue_order(QueueOrder::Priority)
    ///     .build();
    /// let urgent = limiter.build_task().priority(100).spawn(async { "now" });
    /// assert_eq!(urgent.await.unwrap(), "now");
    /// # }
    /// ```
    pub fn build_task(&self) -> TaskBuilder<'_, S> {
        TaskBuilder::new(self, None)
    }
}
