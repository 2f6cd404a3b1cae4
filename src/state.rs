//! Per-worker state: one value of the user's type per worker ID, made on the first item that
//! needs it and lent to every item that runs under that ID, without a lock.
//!
//! The worker task owns the value while it lives (in its [`WorkerState`]) and lends `&mut` to
//! each stateful item it runs; a blocking item takes the worker's whole guard, value included,
//! to its blocking-pool thread and back. When the worker exits, the value is parked in the
//! limiter's table under its ID, before the ID goes back to the manager, so the next worker to
//! get that ID finds it there. An ID is held by one worker at a time, so the table is touched once
//! per worker lifetime, never per item, and never by two holders of one ID.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::sync::{lock, Arc, Mutex};
use crate::task::Starter;
use crate::{JoinHandle, Limiter, WorkerId};

/// The factory `Builder::worker_state` stores.
pub(crate) type MakeState<S> = Arc<dyn Fn(WorkerId) -> S + Send + Sync>;

/// The per-ID table of a limiter's worker state, and the factory that fills it.
pub(crate) struct States<S> {
    make: MakeState<S>,
    /// Values of the IDs that no worker holds now, indexed by ID.
    parked: Mutex<Vec<Option<S>>>,
}

impl<S> States<S> {
    pub(crate) fn new(make: MakeState<S>) -> States<S> {
        States {
            make,
            parked: Mutex::new(Vec::new()),
        }
    }

    fn unpark(&self, worker: WorkerId) -> Option<S> {
        lock(&self.parked)
            .get_mut(worker.index())
            .and_then(Option::take)
    }

    fn park(&self, worker: WorkerId, value: S) {
        let mut parked = lock(&self.parked);
        if parked.len() <= worker.index() {
            parked.resize_with(worker.index() + 1, || None);
        }
        let previous = parked[worker.index()].replace(value);
        drop(parked);
        debug_assert!(previous.is_none(), "two values for {worker}");
        // A value of this ID without a worker cannot be: it would be one from a second
        // holder of the ID. Dropped outside the lock in release builds all the same.
        drop(previous);
    }
}

/// What a worker task holds of the per-worker state: the value of its ID, once an item needed
/// it. Lives in the worker's guard.
#[derive(Default)]
pub(crate) struct WorkerState {
    value: Option<Box<dyn Lent>>,
}

/// A value and the table it goes back to, with its type erased so that the worker code stays
/// the same for every limiter.
trait Lent: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    fn park(self: Box<Self>, worker: WorkerId);
}

struct Value<S> {
    value: S,
    home: Arc<States<S>>,
}

impl<S: Send + 'static> Lent for Value<S> {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn park(self: Box<Self>, worker: WorkerId) {
        let Value { value, home } = *self;
        home.park(worker, value);
    }
}

impl WorkerState {
    /// Lends this worker's value to the item starting on it: from the worker itself, else from
    /// the table, else made by the factory (a panic there is the item's panic).
    fn lend<S: Send + 'static>(&mut self, worker: WorkerId, home: &Arc<States<S>>) -> &mut S {
        if self.value.is_none() {
            let value = home.unpark(worker).unwrap_or_else(|| (home.make)(worker));
            self.value = Some(Box::new(Value {
                value,
                home: home.clone(),
            }));
        }
        let value = self.value.as_mut().expect("just filled").as_any();
        &mut value
            .downcast_mut::<Value<S>>()
            .expect("every stateful item of a limiter has the limiter's state type")
            .value
    }

    /// A stateful item panicked: the value may be half-updated, so it is dropped, and the next
    /// item on this ID gets a new one.
    pub(crate) fn poison(&mut self) {
        if let Some(value) = self.value.take() {
            // A panicking destructor must not take the worker down with it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(value)));
        }
    }

    /// The worker is exiting: parks the value under its ID. Must run before the ID goes back.
    pub(crate) fn park(&mut self, worker: WorkerId) {
        if let Some(value) = self.value.take() {
            value.park(worker);
        }
    }
}

impl fmt::Debug for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerState")
            .field("holds_value", &self.value.is_some())
            .finish()
    }
}

// === Starters ===

/// `spawn_with_state`'s closure, and the table to get the value from.
pub(crate) struct WithState<F, S> {
    pub(crate) f: F,
    pub(crate) home: Arc<States<S>>,
}

impl<F, S, T> Starter for WithState<F, S>
where
    F: for<'a> FnOnce(&'a mut S, WorkerId) -> Pin<Box<dyn Future<Output = T> + Send + 'a>>
        + Send
        + 'static,
    S: Send + 'static,
    T: Send + 'static,
{
    type Output = T;
    type Future<'a> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
    const USES_STATE: bool = true;

    fn start(self, worker: WorkerId, state: &mut WorkerState) -> Self::Future<'_> {
        let value = state.lend(worker, &self.home);
        (self.f)(value, worker)
    }

    fn run_blocking(self, _: WorkerId, _: &mut WorkerState) -> T {
        unreachable!("an async item never runs on the blocking pool")
    }
}

/// `spawn_blocking_with_state`'s closure, and the table to get the value from.
pub(crate) struct BlockingWithState<F, S> {
    pub(crate) f: F,
    pub(crate) home: Arc<States<S>>,
}

impl<F, S, R> Starter for BlockingWithState<F, S>
where
    F: FnOnce(&mut S, WorkerId) -> R + Send + 'static,
    S: Send + 'static,
    R: Send + 'static,
{
    type Output = R;
    type Future<'a> = std::future::Pending<R>;
    const BLOCKING: bool = true;
    const USES_STATE: bool = true;

    fn start(self, _: WorkerId, _: &mut WorkerState) -> Self::Future<'_> {
        unreachable!("a blocking item is never polled")
    }

    fn run_blocking(self, worker: WorkerId, state: &mut WorkerState) -> R {
        (self.f)(state.lend(worker, &self.home), worker)
    }
}

impl<S: Send + 'static> Limiter<S> {
    /// The table of this limiter's worker state.
    pub(crate) fn states(&self) -> Arc<States<S>> {
        self.shared
            .states
            .downcast_ref::<Arc<States<S>>>()
            .expect("a `Limiter<S>` is built with a table of `S`")
            .clone()
    }

    /// Submits an item that borrows its worker's state: the value that
    /// [`Builder::worker_state`](crate::Builder::worker_state) made for the [`WorkerId`] it runs
    /// under.
    ///
    /// The closure is called when the item starts, with `&mut` to the value of its worker ID
    /// and the ID itself, and returns the item's future, boxed so that it may borrow the value
    /// (a [`futures::future::BoxFuture`]; write `Box::pin(async move { ... })`). The value is
    /// made on the first item that needs it for that ID, then kept from item to item and from
    /// worker task to worker task under that ID; no other item touches it meanwhile, so it
    /// needs no lock.
    ///
    /// If the item panics, its worker's value is dropped, since it may be half-updated (as a
    /// panic poisons a `std` mutex); the next stateful item on that ID gets a new one from the
    /// factory. If the item is aborted at an `.await`, the value is kept as the item left it,
    /// as a `tokio::sync::Mutex` keeps its data when a task holding the lock is cancelled.
    ///
    /// On a limiter built without [`worker_state`](crate::Builder::worker_state) the state is
    /// `()`. Otherwise the same as [`spawn_with`](Self::spawn_with).
    ///
    /// [`futures::future::BoxFuture`]: https://docs.rs/futures/latest/futures/future/type.BoxFuture.html
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // One reusable buffer per worker: at most 2 buffers, however many items run.
    /// let limiter = Limiter::builder()
    ///     .limit(2)
    ///     .worker_state(|_id| Vec::<u8>::with_capacity(1024))
    ///     .build();
    ///
    /// let handles: Vec<_> = (0..10u8)
    ///     .map(|i| {
    ///         limiter.spawn_with_state(move |buf: &mut Vec<u8>, _id| {
    ///             Box::pin(async move {
    ///                 buf.clear();
    ///                 buf.extend_from_slice(&[i; 4]);
    ///                 buf.iter().map(|&b| b as u32).sum::<u32>()
    ///             })
    ///         })
    ///     })
    ///     .collect();
    /// for (i, handle) in handles.into_iter().enumerate() {
    ///     assert_eq!(handle.await.unwrap(), 4 * i as u32);
    /// }
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_with_state<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: for<'a> FnOnce(&'a mut S, WorkerId) -> Pin<Box<dyn Future<Output = T> + Send + 'a>>
            + Send
            + 'static,
        T: Send + 'static,
    {
        self.submit(WithState {
            f,
            home: self.states(),
        })
    }
}
