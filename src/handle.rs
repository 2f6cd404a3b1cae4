use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::panic::{RefUnwindSafe, UnwindSafe};

use crate::core::cell::{Abort, Join};
use crate::error::JoinError;
use crate::sync::Arc;

/// An owned permission to await an item's result, returned by
/// [`Limiter::spawn`](crate::Limiter::spawn) and [`Limiter::spawn_with`](crate::Limiter::spawn_with).
///
/// Awaiting it gives the item's value, or a [`JoinError`] if the item panicked or was
/// cancelled. It resolves exactly once, and never hangs: aborting, [`shutdown`], closing and
/// dropping the runtime all resolve it.
///
/// Dropping a `JoinHandle` detaches the item: it still runs, and its output is dropped when it
/// finishes. Use [`abort`](Self::abort) to cancel it.
///
/// Destructors that panic never take the limiter down. Work whose destructor panics as it
/// completes resolves as a panic (its value is lost), as a tokio task does; a panic while the
/// limiter drops cancelled work, an output nobody will take, or a panic payload, is swallowed.
///
/// [`shutdown`]: crate::Limiter::shutdown
///
/// # Panics
///
/// Polling the handle again after it returned `Poll::Ready` panics, as tokio's does.
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(2);
/// let handle = limiter.spawn(async { 6 * 7 });
/// assert_eq!(handle.await.unwrap(), 42);
/// # }
/// ```
pub struct JoinHandle<T> {
    /// Let go of as soon as the result is taken: the cell's memory goes then, and dropping the
    /// handle afterwards has nothing left to do.
    raw: Option<Arc<dyn Join<T>>>,
}

/// A handle that can cancel an item without awaiting it. Cloneable; dropping it does nothing.
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(1);
/// let handle = limiter.spawn(std::future::pending::<()>());
/// let abort = handle.abort_handle();
/// abort.abort();
/// assert!(handle.await.unwrap_err().is_cancelled());
/// assert!(abort.is_finished());
/// # }
/// ```
#[derive(Clone)]
pub struct AbortHandle {
    /// `None` if made from a handle whose result was already taken.
    raw: Option<Arc<dyn Abort>>,
}

// === impl JoinHandle ===

impl<T> JoinHandle<T> {
    pub(crate) fn new(raw: Arc<dyn Join<T>>) -> JoinHandle<T> {
        JoinHandle { raw: Some(raw) }
    }

    /// Cancels the item.
    ///
    /// A queued item never starts, and its future or closure is dropped before `abort` returns.
    /// A running item is dropped at its next poll, which frees its worker slot for the next
    /// item. Either way the handle then resolves to a [`JoinError`] that
    /// [`is_cancelled`](JoinError::is_cancelled). Aborting a finished item does nothing: its
    /// value stays available.
    ///
    /// A [blocking item](crate::Limiter::spawn_blocking) that has started cannot be stopped, as
    /// with tokio's blocking tasks: aborting it then does nothing, and the handle resolves to
    /// the closure's value when it returns.
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
    /// let queued = limiter.spawn(async { "never runs" });
    /// queued.abort();
    /// running.abort();
    /// assert!(queued.await.unwrap_err().is_cancelled());
    /// assert!(running.await.unwrap_err().is_cancelled());
    /// # }
    /// ```
    pub fn abort(&self) {
        if let Some(raw) = &self.raw {
            raw.abort();
        }
    }

    /// Returns true once the item has finished: completed, panicked or been cancelled.
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
    /// assert!(!handle.is_finished());
    /// handle.abort();
    /// assert!(handle.is_finished());
    /// # }
    /// ```
    pub fn is_finished(&self) -> bool {
        self.raw.as_ref().is_none_or(|raw| raw.is_finished())
    }

    /// Returns an [`AbortHandle`] for the item, which can cancel it without awaiting it.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let handle = limiter.spawn(std::future::pending::<()>());
    /// let abort = handle.abort_handle();
    /// drop(handle); // detached: it would run forever
    /// abort.abort();
    /// assert!(abort.is_finished());
    /// # }
    /// ```
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle {
            raw: self.raw.clone().map(|raw| raw.into_abort()),
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let raw = self
            .raw
            .as_ref()
            .expect("`JoinHandle` polled after completion");
        // Awaiting handles takes coop budget, as tokio's `JoinHandle` does: a task awaiting
        // many finished handles in a row still lets the other tasks on its thread run.
        #[cfg(not(feature = "shuttle"))]
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let result = raw.poll_join(cx);
        if result.is_ready() {
            #[cfg(not(feature = "shuttle"))]
            coop.made_progress();
            self.raw = None;
        }
        result
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(raw) = &self.raw {
            raw.detach();
        }
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

// The handles hold no user data that a caught panic could leave half-changed where they can
// reach it: the cell's state moves only under its lock, by the limiter's own code. Like tokio's
// handles, they are unwind safe whatever `T` is.
impl<T> UnwindSafe for JoinHandle<T> {}
impl<T> RefUnwindSafe for JoinHandle<T> {}
impl UnwindSafe for AbortHandle {}
impl RefUnwindSafe for AbortHandle {}

// === impl AbortHandle ===

impl AbortHandle {
    /// Cancels the item, as [`JoinHandle::abort`] does.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let handle = limiter.spawn(async { 1 });
    /// handle.abort_handle().abort();
    /// assert!(handle.await.unwrap_err().is_cancelled());
    /// # }
    /// ```
    pub fn abort(&self) {
        if let Some(raw) = &self.raw {
            raw.abort();
        }
    }

    /// Returns true once the item has finished: completed, panicked or been cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let handle = limiter.spawn(async { 1 });
    /// let abort = handle.abort_handle();
    /// assert_eq!(handle.await.unwrap(), 1);
    /// assert!(abort.is_finished());
    /// # }
    /// ```
    pub fn is_finished(&self) -> bool {
        self.raw.as_ref().is_none_or(|raw| raw.is_finished())
    }
}

impl fmt::Debug for AbortHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbortHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}
