//! Backpressure: places in a bounded queue (`Builder::max_queued`), taken by `try_spawn` and
//! `reserve` and given back the moment their item leaves the queue.
//!
//! A place is an owned semaphore permit stored with the item's work in its cell (`place.rs`).
//! Starting the item releases it, and so does cancelling it while queued, since that drops the
//! work at once. Without `max_queued` there is no semaphore, and nothing here runs on the
//! `spawn` path.

use std::fmt;
use std::future::Future;

use crate::compose::{OnClosed, Options};
use crate::core::{Reason, Work};
use crate::error::{ReserveError, TrySpawnError};
use crate::handle::JoinHandle;
use crate::limiter::Limiter;
use crate::sync::rt::sync::OwnedSemaphorePermit;
use crate::task_builder::TaskBuilder;
use crate::worker_id::WorkerId;

/// A future as work that can be given back whole when a `try_spawn` is refused.
struct Ready<F>(F);

impl<F> Work for Ready<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;
    type Future = F;

    fn start(self, _: WorkerId) -> F {
        self.0
    }
}

/// A place in a limiter's queue, held until an item is submitted with it or it is dropped:
/// returned by [`Limiter::reserve`] and [`Limiter::try_reserve`].
///
/// Submitting through a permit never fails for room: the place is already taken. Dropping an
/// unused permit gives the place back.
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::builder().limit(4).max_queued(16).build();
/// let permit = limiter.reserve().await.unwrap();
/// let handle = permit.spawn(async { "queued within the bound" });
/// assert_eq!(handle.await.unwrap(), "queued within the bound");
/// # }
/// ```
#[must_use = "a permit holds a place in the queue until it is used or dropped"]
pub struct Permit<'a, S = ()> {
    limiter: &'a Limiter<S>,
    room: Option<OwnedSemaphorePermit>,
}

impl<'a, S> Permit<'a, S> {
    /// Submits a future in the place this permit holds, as [`Limiter::spawn`] does.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().max_queued(1).build();
    /// let handle = limiter.reserve().await.unwrap().spawn(async { 1 });
    /// assert_eq!(handle.await.unwrap(), 1);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn<F>(self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.build_task().spawn(future)
    }

    /// Submits a closure that makes the item's future from its [`WorkerId`], in the place this
    /// permit holds, as [`Limiter::spawn_with`] does.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(2).max_queued(1).build();
    /// let permit = limiter.reserve().await.unwrap();
    /// let id = permit.spawn_with(|id| async move { id }).await.unwrap();
    /// assert!(id.index() < 2);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_with<C, Fut>(self, make: C) -> JoinHandle<Fut::Output>
    where
        C: FnOnce(WorkerId) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.build_task().spawn_with(make)
    }

    /// Turns the permit into a [`TaskBuilder`] that submits in the place this permit holds:
    /// for a priority, a blocking closure, or the worker's state.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().max_queued(8).build();
    /// let permit = limiter.reserve().await.unwrap();
    /// let handle = permit.build_task().spawn_blocking(|_id| 6 * 7);
    /// assert_eq!(handle.await.unwrap(), 42);
    /// # }
    /// ```
    pub fn build_task(self) -> TaskBuilder<'a, S> {
        TaskBuilder::new(self.limiter, self.room)
    }
}

impl<S> fmt::Debug for Permit<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("limiter", &self.limiter.name())
            .finish()
    }
}

/// Why a place could not be taken now.
enum NoRoom {
    Full,
    Closed,
}

impl<S> Limiter<S> {
    /// Takes a place in the queue without waiting: `None` stands for "unbounded".
    /// Refusals are counted here, by reason.
    fn try_take_room(&self) -> Result<Option<OwnedSemaphorePermit>, NoRoom> {
        let taken = if self.is_closed() {
            Err(NoRoom::Closed)
        } else {
            match &self.extras().room {
                None => Ok(None),
                Some(room) => match room.clone().try_acquire_owned() {
                    Ok(place) => Ok(Some(place)),
                    Err(_) if room.is_closed() => Err(NoRoom::Closed),
                    Err(_) => Err(NoRoom::Full),
                },
            }
        };
        match taken {
            Err(NoRoom::Full) => self.core().count_refused(false, Reason::QueueFull),
            Err(NoRoom::Closed) => self.core().count_refused(false, Reason::Closed),
            Ok(_) => {}
        }
        taken
    }

    /// Submits a future if the queue has room, or gives it back.
    ///
    /// With [`Builder::max_queued`](crate::Builder::max_queued), fails with
    /// [`TrySpawnError::Full`] while that many items submitted through `try_spawn` and
    /// [`reserve`](Self::reserve) wait for a worker; without it the queue never fills. Fails
    /// with [`TrySpawnError::Closed`] once the limiter is closed. Either way the future comes
    /// back in the error ([`into_inner`](TrySpawnError::into_inner)). Otherwise the same as
    /// [`spawn`](Self::spawn): it never blocks or awaits.
    ///
    /// A [`close`](Self::close) that races with this call may instead let it return a handle
    /// that resolves cancelled, as a `spawn` racing with `close` does.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::{Limiter, TrySpawnError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(1).max_queued(2).build();
    /// let mut handles = Vec::new();
    /// let mut refused = 0;
    /// for i in 0..5 {
    ///     match limiter.try_spawn(async move { i }) {
    ///         Ok(handle) => handles.push(handle),
    ///         Err(TrySpawnError::Full(_work)) => refused += 1,
    ///         Err(TrySpawnError::Closed(_work)) => unreachable!(),
    ///     }
    /// }
    /// assert_eq!((handles.len(), refused), (2, 3));
    /// # }
    /// ```
    pub fn try_spawn<F>(&self, future: F) -> Result<JoinHandle<F::Output>, TrySpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.try_spawn_with_room(Ready(future))
            .map_err(|err| err.map(|Ready(future)| future))
    }

    /// Submits a closure that makes the item's future from its [`WorkerId`] if the queue has
    /// room, or gives it back: [`try_spawn`](Self::try_spawn) for
    /// [`spawn_with`](Self::spawn_with)'s closures.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(2).max_queued(1).build();
    /// let handle = limiter.try_spawn_with(|id| async move { id.index() }).unwrap();
    /// let refused = limiter.try_spawn_with(|id| async move { id.index() }).unwrap_err();
    /// assert!(refused.is_full());
    /// assert!(handle.await.unwrap() < 2);
    /// # }
    /// ```
    pub fn try_spawn_with<C, Fut>(
        &self,
        make: C,
    ) -> Result<JoinHandle<Fut::Output>, TrySpawnError<C>>
    where
        C: FnOnce(WorkerId) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.try_spawn_with_room(make)
    }

    fn try_spawn_with_room<W: Work>(
        &self,
        work: W,
    ) -> Result<JoinHandle<W::Output>, TrySpawnError<W>> {
        let room = match self.try_take_room() {
            Ok(room) => room,
            Err(NoRoom::Full) => return Err(TrySpawnError::Full(work)),
            Err(NoRoom::Closed) => return Err(TrySpawnError::Closed(work)),
        };
        self.submit(work, false, Options::new(room), OnClosed::GiveBack)
            .map_err(TrySpawnError::Closed)
    }

    /// Waits for a place in the queue, then returns a [`Permit`] that submits one item in it.
    ///
    /// With [`Builder::max_queued`](crate::Builder::max_queued), waits while that many items
    /// submitted through [`try_spawn`](Self::try_spawn) and `reserve` wait for a worker; places
    /// go to waiters in the order they started waiting, and one frees the moment an item
    /// holding one starts or is cancelled. Without `max_queued`, returns at once. Fails with
    /// [`ReserveError`] if the limiter is closed, or closes while this waits.
    ///
    /// Reserving first and then building the work keeps the work out of the waiting: nothing
    /// is lost if the wait is given up, which is what makes this safe to use in `select!`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. Dropping the future before it resolves takes no place and loses nothing;
    /// the caller only loses its turn among the waiters.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // A producer that never queues more than 4 items ahead of the workers.
    /// let limiter = Limiter::builder().limit(2).max_queued(4).build();
    /// let mut handles = Vec::new();
    /// for i in 0..20 {
    ///     let permit = limiter.reserve().await.unwrap();
    ///     handles.push(permit.spawn(async move { i }));
    /// }
    /// for (i, handle) in handles.into_iter().enumerate() {
    ///     assert_eq!(handle.await.unwrap(), i);
    /// }
    /// # }
    /// ```
    pub async fn reserve(&self) -> Result<Permit<'_, S>, ReserveError> {
        let closed = || {
            self.core().count_refused(false, Reason::Closed);
            ReserveError::new()
        };
        if self.is_closed() {
            return Err(closed());
        }
        let room = match &self.extras().room {
            None => None,
            Some(room) => Some(room.clone().acquire_owned().await.map_err(|_| closed())?),
        };
        // The runtime may have shut the limiter down while this waited.
        if self.is_closed() {
            return Err(closed());
        }
        Ok(Permit {
            limiter: self,
            room,
        })
    }

    /// Takes a place in the queue if one is free now: [`reserve`](Self::reserve) without the
    /// wait.
    ///
    /// Fails with [`TrySpawnError::Full`] or [`TrySpawnError::Closed`], carrying `()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(1).max_queued(1).build();
    /// let permit = limiter.try_reserve().unwrap();
    /// assert!(limiter.try_reserve().unwrap_err().is_full());
    /// drop(permit); // the place comes back
    /// let handle = limiter.try_reserve().unwrap().build_task().spawn_blocking(|_id| 1);
    /// assert_eq!(handle.await.unwrap(), 1);
    /// # }
    /// ```
    pub fn try_reserve(&self) -> Result<Permit<'_, S>, TrySpawnError<()>> {
        match self.try_take_room() {
            Ok(room) => Ok(Permit {
                limiter: self,
                room,
            }),
            Err(NoRoom::Full) => Err(TrySpawnError::Full(())),
            Err(NoRoom::Closed) => Err(TrySpawnError::Closed(())),
        }
    }
}
