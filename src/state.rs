//! Per-worker state: one value of the user's type per worker ID, made on the first item that
//! needs it and lent to every item that runs under that ID.
//!
//! Built on the core as work: a stateful item takes its ID's value out of the limiter's table
//! when it starts and puts it back when it ends, through a guard that lives inside the item's
//! future (or its blocking closure). An ID is held by one running item at a time, so no other
//! item touches the value meanwhile, and it needs no lock while the item uses it; the table's
//! lock is taken twice per stateful item, never by items without state. The guard is dropped
//! before the item ends, so the value is back in the table before its ID can run anything else.
//!
//! A panic drops the guard while the panic unwinds (the core drops a panicking item's future
//! during the unwind, as tokio does): the value, which may be half-updated, is then dropped
//! rather than put back, and the next item on the ID gets a new one from the factory. As for any
//! destructor that runs during an unwind, a value whose `Drop` panics then aborts the process.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::handle::JoinHandle;
use crate::limiter::Limiter;
use crate::sync::{lock, Arc, Mutex};
use crate::worker_id::WorkerId;

/// The factory `Builder::worker_state` stores.
pub(crate) type MakeState<S> = Arc<dyn Fn(WorkerId) -> S + Send + Sync>;

/// The per-ID table of a limiter's worker state, and the factory that fills it.
pub(crate) struct States<S> {
    make: MakeState<S>,
    /// Indexed by worker ID; `None` where no value was made yet or a panic dropped it.
    values: Mutex<Vec<Option<S>>>,
}

impl<S> States<S> {
    pub(crate) fn new(make: MakeState<S>) -> States<S> {
        States {
            make,
            values: Mutex::new(Vec::new()),
        }
    }

    /// Lends worker `id`'s value to the item starting on it: the stored one, else one made by
    /// the factory (a panic there is the item's panic).
    pub(crate) fn lend(self: &Arc<Self>, id: WorkerId) -> Lent<S> {
        let stored = lock(&self.values)
            .get_mut(id.index())
            .and_then(Option::take);
        let value = stored.unwrap_or_else(|| (self.make)(id));
        Lent {
            home: self.clone(),
            id,
            value: Some(value),
        }
    }

    fn put_back(&self, id: WorkerId, value: S) {
        let mut values = lock(&self.values);
        if values.len() <= id.index() {
            values.resize_with(id.index() + 1, || None);
        }
        let previous = values[id.index()].replace(value);
        drop(values);
        debug_assert!(previous.is_none(), "two values for {id}");
        // A second value for one ID could only come from a second holder of the ID. Dropped
        // outside the lock in release builds all the same.
        drop(previous);
    }
}

/// Worker `id`'s value, lent to the item running on it; goes back to the table when dropped.
pub(crate) struct Lent<S> {
    home: Arc<States<S>>,
    id: WorkerId,
    value: Option<S>,
}

impl<S> Lent<S> {
    pub(crate) fn value(&mut self) -> &mut S {
        self.value.as_mut().expect("lent until dropped")
    }
}

impl<S> Drop for Lent<S> {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            if std::thread::panicking() {
                // The item panicked while it held the value: it may be half-updated.
                drop(value);
            } else {
                // Completed, or aborted at an `.await`: kept as the item left it.
                self.home.put_back(self.id, value);
            }
        }
    }
}

impl<S> fmt::Debug for Lent<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lent").field("worker", &self.id).finish()
    }
}

impl<S: Send + 'static> Limiter<S> {
    /// The table of this limiter's worker state.
    pub(crate) fn states(&self) -> Arc<States<S>> {
        self.extras().states.clone()
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
        self.submit_plain(with_state(self.states(), f), false)
    }
}

/// A stateful item's work: its future holds the lent value for as long as it runs.
pub(crate) fn with_state<F, S, T>(
    home: Arc<States<S>>,
    f: F,
) -> impl FnOnce(WorkerId) -> Pin<Box<dyn Future<Output = T> + Send>> + Send + 'static
where
    F: for<'a> FnOnce(&'a mut S, WorkerId) -> Pin<Box<dyn Future<Output = T> + Send + 'a>>
        + Send
        + 'static,
    S: Send + 'static,
    T: Send + 'static,
{
    move |worker| {
        Box::pin(async move {
            let mut lent = home.lend(worker);
            f(lent.value(), worker).await
        })
    }
}
