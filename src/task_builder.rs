use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::blocking::Blocking;
use crate::state::{BlockingWithState, WithState, WorkerState};
use crate::sync::rt::sync::OwnedSemaphorePermit;
use crate::task::Starter;
use crate::{JoinHandle, Limiter, WorkerId};

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
pub struct TaskBuilder<'a, S = ()> {
    limiter: &'a Limiter<S>,
    priority: i32,
    /// A place in the queue, when the builder came from a `Permit`.
    room: Option<OwnedSemaphorePermit>,
}

/// A starter with the options of a `TaskBuilder`, or the place `try_spawn` took.
pub(crate) struct Configured<T> {
    pub(crate) inner: T,
    pub(crate) priority: i32,
    pub(crate) room: Option<OwnedSemaphorePermit>,
}

impl<T: Starter> Starter for Configured<T> {
    type Output = T::Output;
    type Future<'a> = T::Future<'a>;
    const BLOCKING: bool = T::BLOCKING;
    const USES_STATE: bool = T::USES_STATE;

    fn priority(&self) -> i32 {
        self.priority
    }

    fn leave_queue(&mut self) {
        self.room = None;
    }

    fn start(self, worker: WorkerId, state: &mut WorkerState) -> Self::Future<'_> {
        self.inner.start(worker, state)
    }

    fn run_blocking(self, worker: WorkerId, state: &mut WorkerState) -> Self::Output {
        self.inner.run_blocking(worker, state)
    }
}

/// A future as a starter whose work can be given back: `try_spawn`'s.
pub(crate) struct Ready<F>(pub(crate) F);

impl<F> Starter for Ready<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;
    type Future<'a> = F;

    fn start(self, _: WorkerId, _: &mut WorkerState) -> F {
        self.0
    }

    fn run_blocking(self, _: WorkerId, _: &mut WorkerState) -> F::Output {
        unreachable!("an async item never runs on the blocking pool")
    }
}

impl<'a, S> TaskBuilder<'a, S> {
    pub(crate) fn new(limiter: &'a Limiter<S>, room: Option<OwnedSemaphorePermit>) -> Self {
        TaskBuilder {
            limiter,
            priority: 0,
            room,
        }
    }

    fn submit<T: Starter>(self, inner: T) -> JoinHandle<T::Output> {
        self.limiter.submit(Configured {
            inner,
            priority: self.priority,
            room: self.room,
        })
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
        self.priority = priority;
        self
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
    {
        self.submit(Ready(future))
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
    {
        self.submit(make)
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
    {
        self.submit(Blocking(f))
    }
}

impl<S: Send + 'static> TaskBuilder<'_, S> {
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
    {
        let home = self.limiter.states();
        self.submit(WithState { f, home })
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
    {
        let home = self.limiter.states();
        self.submit(BlockingWithState { f, home })
    }
}

impl<S> fmt::Debug for TaskBuilder<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("limiter", &self.limiter.name())
            .field("priority", &self.priority)
            .field("holds_place", &self.room.is_some())
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
