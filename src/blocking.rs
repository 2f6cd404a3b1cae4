//! Blocking items: closures that run on tokio's blocking pool, under the same limit and worker
//! IDs as async items.
//!
//! Built on the core as work whose future waits for the closure on the blocking pool, with the
//! item property `runs_to_end`: neither `abort` nor `shutdown` can stop a closure that runs, so
//! its item is not cancelled either, and its worker (with its ID and its place among the running
//! items) waits for the closure to return. The ID is therefore held exactly as long as the
//! closure really runs.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::core::Work;
use crate::handle::JoinHandle;
use crate::limiter::Limiter;
use crate::state::States;
use crate::sync::{rt, Arc};
use crate::worker_id::WorkerId;

/// A blocking item runs to its end: once its closure runs it cannot be stopped, so its item
/// holds its worker ID until the closure returns.
pub(crate) const RUNS_TO_END: bool = true;

/// A blocking closure as work: started, it goes to the blocking pool, and its worker waits for
/// it there. The submitter's (or the item's) span goes with it.
pub(crate) fn blocking<F, R>(f: F) -> impl Work<Output = R>
where
    F: FnOnce(WorkerId) -> R + Send + 'static,
    R: Send + 'static,
{
    move |worker| {
        let span = tracing::Span::current();
        OnBlockingPool(rt::task::spawn_blocking(move || {
            let _entered = span.enter();
            f(worker)
        }))
    }
}

/// A blocking closure with the worker state of the ID it runs under, lent for the closure's run.
pub(crate) fn blocking_with_state<F, S, R>(home: Arc<States<S>>, f: F) -> impl Work<Output = R>
where
    F: FnOnce(&mut S, WorkerId) -> R + Send + 'static,
    S: Send + 'static,
    R: Send + 'static,
{
    blocking(move |worker| {
        let mut lent = home.lend(worker);
        f(lent.value(), worker)
    })
}

/// A blocking item's future: its closure's end, on the blocking pool.
struct OnBlockingPool<R>(rt::task::JoinHandle<R>);

impl<R> Future for OnBlockingPool<R> {
    type Output = R;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        match std::task::ready!(Pin::new(&mut self.0).poll(cx)) {
            Ok(value) => Poll::Ready(value),
            // The closure's own panic, re-raised with its payload as the item's panic.
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // The blocking pool refused or dropped the closure: the runtime is shutting down
            // and is about to drop this item's worker, which resolves it as cancelled.
            Err(_) => Poll::Pending,
        }
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
        self.submit_plain(blocking(f), RUNS_TO_END)
    }
}

impl<S: Send + 'static> Limiter<S> {
    /// Submits a blocking closure that borrows its worker's state: the value that
    /// [`Builder::worker_state`](crate::Builder::worker_state) made for the [`WorkerId`] it runs
    /// under.
    ///
    /// The blocking counterpart of [`spawn_with_state`](Self::spawn_with_state): the value
    /// is lent to the closure on its blocking-pool thread, and is dropped and made
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
        self.submit_plain(blocking_with_state(self.states(), f), RUNS_TO_END)
    }
}
