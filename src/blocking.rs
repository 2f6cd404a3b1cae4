//! Blocking items: closures that run on tokio's blocking pool, under the same limit and worker
//! IDs as async items.
//!
//! A worker that starts a blocking item moves its guard (its ID, its place in the running
//! count and its worker state) into the closure it sends to the blocking pool, and gets it back
//! when the closure returns. So the ID is held exactly as long as the closure really runs, even
//! if the worker task is aborted meanwhile (by `shutdown`): the guard is then dropped on the
//! blocking thread when the closure returns, and hands the ID back from there.

use crate::state::{BlockingWithState, WorkerState};
use crate::task::Starter;
use crate::{JoinHandle, Limiter, WorkerId};

/// `spawn_blocking`'s closure.
pub(crate) struct Blocking<F>(pub(crate) F);

impl<F, R> Starter for Blocking<F>
where
    F: FnOnce(WorkerId) -> R + Send + 'static,
    R: Send + 'static,
{
    type Output = R;
    type Future<'a> = std::future::Pending<R>;
    const BLOCKING: bool = true;

    fn start(self, _: WorkerId, _: &mut WorkerState) -> Self::Future<'_> {
        unreachable!("a blocking item is never polled")
    }

    fn run_blocking(self, worker: WorkerId, _: &mut WorkerState) -> R {
        (self.0)(worker)
    }
}

impl<S> Limiter<S> {
    /// Submits a blocking or CPU-bound closure, run on tokio's blocking pool under the same
    /// limit and worker IDs as async items.
    ///
    /// The closure is called with the [`WorkerId`] it runs under once a worker slot is free,
    /// on a thread of the runtime's blocking pool (as [`tokio::task::spawn_blocking`] does), so
    /// it never stalls the async worker threads. It counts against the limit like any item, and
    /// its worker ID stays held until the closure returns. Its [`JoinHandle`] resolves to the
    /// closure's value, or to a panic.
    ///
    /// Like tokio's blocking tasks, a blocking item cannot be stopped once it has started:
    /// [`abort`](JoinHandle::abort) then has no effect, and the handle still resolves to the
    /// closure's value; [`shutdown`](Self::shutdown) waits for running blocking items to
    /// return. Aborting an item still queued drops its closure at once, as for any item.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // Hash 8 inputs, at most 2 at a time, off the async threads.
    /// let limiter = Limiter::new(2);
    /// let handles: Vec<_> = (0..8u64)
    ///     .map(|i| limiter.spawn_blocking(move |id| {
    ///         assert!(id.index() < 2);
    ///         (0..100_000u64).fold(i, |h, x| h.wrapping_mul(31).wrapping_add(x))
    ///     }))
    ///     .collect();
    /// for handle in handles {
    ///     handle.await.unwrap();
    /// }
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_blocking<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce(WorkerId) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.submit(Blocking(f))
    }
}

impl<S: Send + 'static> Limiter<S> {
    /// Submits a blocking closure that borrows its worker's state: the value that
    /// [`Builder::worker_state`](crate::Builder::worker_state) made for the [`WorkerId`] it runs
    /// under.
    ///
    /// The blocking counterpart of [`spawn_with_state`](Self::spawn_with_state): the value
    /// travels with the worker to the blocking-pool thread and back, and is dropped and made
    /// anew if the closure panics. Otherwise the same as
    /// [`spawn_blocking`](Self::spawn_blocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // A compiler-like cache per worker: each worker counts the items it compiled.
    /// let limiter = Limiter::builder()
    ///     .limit(2)
    ///     .worker_state(|_id| 0_u32)
    ///     .build();
    /// let handles: Vec<_> = (0..6)
    ///     .map(|_| limiter.spawn_blocking_with_state(|compiled: &mut u32, _id| {
    ///         *compiled += 1;
    ///         *compiled
    ///     }))
    ///     .collect();
    /// let mut total = 0;
    /// for handle in handles {
    ///     total = total.max(handle.await.unwrap());
    /// }
    /// assert!(total >= 3, "6 items on 2 workers: one of them compiled 3 or more");
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_blocking_with_state<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce(&mut S, WorkerId) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.submit(BlockingWithState {
            f,
            home: self.states(),
        })
    }
}
