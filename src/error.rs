use std::any::Any;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::worker_id::WorkerId;

/// Why an item did not produce its value: it was cancelled, it timed out, or it panicked.
///
/// Modelled on [`tokio::task::JoinError`], plus the [`WorkerId`] the item ran under when it got
/// that far.
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(2);
/// let err = limiter
///     .spawn(async { panic!("boom") })
///     .await
///     .unwrap_err();
/// assert!(err.is_panic());
/// assert_eq!(*err.into_panic().downcast::<&str>().unwrap(), "boom");
/// # }
/// ```
pub struct JoinError {
    repr: Repr,
    /// The worker's ID, or `NO_WORKER`: a plain `u32` rather than an `Option`, so that the
    /// timed-out flag fits beside it and a `JoinError` (in every item's result slot) stays two
    /// words. IDs never reach `u32::MAX` (admission hands out IDs below it).
    worker: u32,
    /// Cancelled by a time limit: `repr` is `Cancelled` then.
    timed_out: bool,
}

const NO_WORKER: u32 = u32::MAX;

fn encode(worker: Option<WorkerId>) -> u32 {
    worker.map_or(NO_WORKER, |id| id.0)
}

enum Repr {
    /// Cancelled, or (with `timed_out`) ended by its `timeout` while it ran, or by its
    /// `deadline` while it was queued.
    Cancelled,
    /// In a `Mutex` only to make `JoinError: Sync` (the payload is `Send` but not `Sync`, as
    /// in tokio's `JoinError`); it is never locked by two threads. Boxed once more so that a
    /// `JoinError`, and with it every item's result slot, stays two words.
    Panic(Box<Mutex<Box<dyn Any + Send + 'static>>>),
}

impl JoinError {
    pub(crate) fn cancelled(worker: Option<WorkerId>) -> JoinError {
        JoinError {
            repr: Repr::Cancelled,
            worker: encode(worker),
            timed_out: false,
        }
    }

    pub(crate) fn timed_out(worker: Option<WorkerId>) -> JoinError {
        JoinError {
            repr: Repr::Cancelled,
            worker: encode(worker),
            timed_out: true,
        }
    }

    pub(crate) fn panic(worker: WorkerId, payload: Box<dyn Any + Send + 'static>) -> JoinError {
        JoinError {
            repr: Repr::Panic(Box::new(Mutex::new(payload))),
            worker: worker.0,
            timed_out: false,
        }
    }

    /// Returns true if the item was cancelled: aborted through its handle, dropped by
    /// [`Limiter::shutdown`](crate::Limiter::shutdown), refused because the limiter was closed,
    /// or dropped with its runtime.
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
    /// handle.abort();
    /// assert!(handle.await.unwrap_err().is_cancelled());
    /// # }
    /// ```
    pub fn is_cancelled(&self) -> bool {
        matches!(self.repr, Repr::Cancelled) && !self.timed_out
    }

    /// Returns true if the item ended by a time limit: it ran past its
    /// [`timeout`](crate::TaskBuilder::timeout), or it was still queued at its
    /// [`deadline`](crate::TaskBuilder::deadline) (or past its
    /// [`queue_timeout`](crate::TaskBuilder::queue_timeout)).
    ///
    /// A timed-out item is not [cancelled](Self::is_cancelled): the two are told apart, and so
    /// are their counters in [`Metrics`](crate::Metrics). An item that timed out while running
    /// reports the worker it ran on in [`worker_id`](Self::worker_id); one that timed out while
    /// queued reports none.
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
    /// let err = limiter
    ///     .build_task()
    ///     .timeout(Duration::from_millis(10))
    ///     .spawn(std::future::pending::<()>())
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.is_timeout());
    /// assert!(!err.is_cancelled());
    /// assert_eq!(err.worker_id().map(|id| id.index()), Some(0));
    /// # }
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self.repr, Repr::Cancelled) && self.timed_out
    }

    /// Returns true if the item panicked.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let err = limiter.spawn(async { panic!("boom") }).await.unwrap_err();
    /// assert!(err.is_panic());
    /// # }
    /// ```
    pub fn is_panic(&self) -> bool {
        matches!(self.repr, Repr::Panic(_))
    }

    /// Consumes the error, returning the object with which the item panicked.
    ///
    /// # Panics
    ///
    /// Panics if the error is not a panic (see [`is_panic`](Self::is_panic)).
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let err = limiter.spawn(async { std::panic::panic_any(7_u32) }).await.unwrap_err();
    /// assert_eq!(*err.into_panic().downcast::<u32>().unwrap(), 7);
    /// # }
    /// ```
    #[track_caller]
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.try_into_panic()
            .expect("`JoinError` reason is not a panic")
    }

    /// Consumes the error, returning the panic payload if the item panicked, and the error
    /// itself otherwise.
    ///
    /// Use it with [`std::panic::resume_unwind`] to re-raise an item's panic in the caller.
    ///
    /// # Examples
    ///
    /// ```should_panic
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// if let Err(err) = limiter.spawn(async { panic!("boom") }).await {
    ///     if let Ok(payload) = err.try_into_panic() {
    ///         std::panic::resume_unwind(payload);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send + 'static>, JoinError> {
        match self.repr {
            Repr::Panic(payload) => {
                Ok(payload.into_inner().unwrap_or_else(PoisonError::into_inner))
            }
            Repr::Cancelled => Err(self),
        }
    }

    /// Returns the worker slot the item ran under, or `None` if it was cancelled (or timed out)
    /// before it started.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let err = limiter.spawn(async { panic!("boom") }).await.unwrap_err();
    /// assert_eq!(err.worker_id().map(|id| id.index()), Some(0));
    /// # }
    /// ```
    pub fn worker_id(&self) -> Option<WorkerId> {
        (self.worker != NO_WORKER).then_some(WorkerId(self.worker))
    }
}

/// The panic message, when the payload is a string as `panic!` makes it.
fn panic_message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("item ")?;
        if let Some(worker) = self.worker_id() {
            write!(f, "on {worker} ")?;
        }
        match &self.repr {
            Repr::Cancelled if self.timed_out => f.write_str("timed out"),
            Repr::Cancelled => f.write_str("was cancelled"),
            Repr::Panic(payload) => match panic_message(&**lock(payload)) {
                Some(msg) => write!(f, "panicked with message {msg:?}"),
                None => f.write_str("panicked"),
            },
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("JoinError");
        match &self.repr {
            Repr::Cancelled if self.timed_out => s.field("reason", &"timed out"),
            Repr::Cancelled => s.field("reason", &"cancelled"),
            Repr::Panic(payload) => match panic_message(&**lock(payload)) {
                Some(msg) => s.field("reason", &"panic").field("message", &msg),
                None => s.field("reason", &"panic"),
            },
        };
        s.field("worker", &self.worker_id()).finish()
    }
}

impl std::error::Error for JoinError {}

impl From<JoinError> for std::io::Error {
    fn from(err: JoinError) -> std::io::Error {
        std::io::Error::other(err.to_string())
    }
}

/// Why [`Limiter::try_spawn`](crate::Limiter::try_spawn) refused work: it comes back inside.
///
/// Modelled on async-channel's `TrySendError`. `try_reserve` returns it with `()` inside.
///
/// # Examples
///
/// ```
/// use task_limiter::{Limiter, TrySpawnError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(1);
/// limiter.close();
/// match limiter.try_spawn(async { 1 }) {
///     Err(TrySpawnError::Closed(work)) => assert_eq!(work.await, 1),
///     _ => unreachable!(),
/// }
/// # }
/// ```
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum TrySpawnError<T> {
    /// The queue holds [`max_queued`](crate::Builder::max_queued) items already.
    Full(T),
    /// The limiter is closed.
    Closed(T),
}

impl<T> TrySpawnError<T> {
    /// Returns the work that was refused.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// limiter.close();
    /// let work = limiter.try_spawn(async { 5 }).unwrap_err().into_inner();
    /// assert_eq!(work.await, 5);
    /// # }
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            TrySpawnError::Full(work) | TrySpawnError::Closed(work) => work,
        }
    }

    /// Returns true if the queue was full.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().max_queued(1).build();
    /// let _first = limiter.try_spawn(async {}).unwrap();
    /// assert!(limiter.try_spawn(async {}).unwrap_err().is_full());
    /// # }
    /// ```
    pub fn is_full(&self) -> bool {
        matches!(self, TrySpawnError::Full(_))
    }

    /// Returns true if the limiter was closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// limiter.close();
    /// assert!(limiter.try_spawn(async {}).unwrap_err().is_closed());
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        matches!(self, TrySpawnError::Closed(_))
    }

    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> TrySpawnError<U> {
        match self {
            TrySpawnError::Full(work) => TrySpawnError::Full(f(work)),
            TrySpawnError::Closed(work) => TrySpawnError::Closed(f(work)),
        }
    }
}

impl<T> fmt::Debug for TrySpawnError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySpawnError::Full(_) => f.write_str("Full(..)"),
            TrySpawnError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<T> fmt::Display for TrySpawnError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySpawnError::Full(_) => f.write_str("limiter queue is full"),
            TrySpawnError::Closed(_) => f.write_str("limiter is closed"),
        }
    }
}

impl<T> std::error::Error for TrySpawnError<T> {}

/// Why [`Limiter::reserve`](crate::Limiter::reserve) failed: the limiter is closed.
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::builder().max_queued(4).build();
/// limiter.close();
/// let err = limiter.reserve().await.unwrap_err();
/// assert_eq!(err.to_string(), "limiter is closed");
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ReserveError(());

impl ReserveError {
    pub(crate) fn new() -> ReserveError {
        ReserveError(())
    }
}

impl fmt::Debug for ReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReserveError")
    }
}

impl fmt::Display for ReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("limiter is closed")
    }
}

impl std::error::Error for ReserveError {}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a lease was not had: returned by [`Limiter::acquire`](crate::Limiter::acquire) and
/// [`Limiter::run`](crate::Limiter::run).
///
/// The limiter was closed or shut down ([`is_closed`](Self::is_closed)); the request's queue
/// deadline passed, or a [`run`](crate::Limiter::run) outlasted its
/// [`timeout`](crate::TaskBuilder::timeout) ([`is_timeout`](Self::is_timeout)); or its token was
/// cancelled ([`is_cancelled`](Self::is_cancelled)).
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(1);
/// limiter.close();
/// let err = limiter.acquire().await.unwrap_err();
/// assert!(err.is_closed());
/// assert_eq!(err.to_string(), "limiter is closed");
/// # }
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AcquireError(AcquireErrorKind);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum AcquireErrorKind {
    Closed,
    QueueTimeout,
    RunTimeout,
    Cancelled,
}

impl AcquireError {
    pub(crate) fn new(kind: AcquireErrorKind) -> AcquireError {
        AcquireError(kind)
    }

    /// Returns true if the limiter was closed or shut down before a lease was granted.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// limiter.close();
    /// assert!(limiter.run(async {}).await.unwrap_err().is_closed());
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.0 == AcquireErrorKind::Closed
    }

    /// Returns true if a time limit ended it: the request's queue deadline passed before a
    /// lease was granted, or a [`run`](crate::Limiter::run) outlasted its
    /// [`timeout`](crate::TaskBuilder::timeout) (its future was dropped then).
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
    /// let err = limiter
    ///     .build_task()
    ///     .timeout(Duration::from_secs(1))
    ///     .run(std::future::pending::<()>())
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.is_timeout());
    /// assert_eq!(err.to_string(), "run timed out");
    /// # }
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.0,
            AcquireErrorKind::QueueTimeout | AcquireErrorKind::RunTimeout
        )
    }

    /// Returns true if the token given with [`cancel_on`](crate::TaskBuilder::cancel_on) was
    /// cancelled: while the request waited, or (for [`run`](crate::Limiter::run)) while its
    /// future ran.
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
    /// let token = CancellationToken::new();
    /// token.cancel();
    /// let err = limiter.build_task().cancel_on(token).acquire().await.unwrap_err();
    /// assert!(err.is_cancelled());
    /// # }
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.0 == AcquireErrorKind::Cancelled
    }
}

impl fmt::Debug for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AcquireError").field(&self.0).finish()
    }
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            AcquireErrorKind::Closed => "limiter is closed",
            AcquireErrorKind::QueueTimeout => "queue deadline passed before a lease was granted",
            AcquireErrorKind::RunTimeout => "run timed out",
            AcquireErrorKind::Cancelled => "cancelled by its token",
        })
    }
}

impl std::error::Error for AcquireError {}

/// Why [`Limiter::try_acquire`](crate::Limiter::try_acquire) gave no lease.
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(1);
/// let lease = limiter.try_acquire().unwrap();
/// let err = limiter.try_acquire().unwrap_err();
/// assert!(err.is_full());
/// assert_eq!(err.to_string(), "no room in the limiter now");
/// drop(lease);
/// # }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TryAcquireError {
    /// No room now: the limits are full, or queued items come first.
    Full,
    /// The limiter is closed.
    Closed,
}

impl TryAcquireError {
    /// Returns true if there was no room now.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let _lease = limiter.try_acquire().unwrap();
    /// assert!(limiter.try_acquire().unwrap_err().is_full());
    /// # }
    /// ```
    pub fn is_full(&self) -> bool {
        *self == TryAcquireError::Full
    }

    /// Returns true if the limiter was closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// limiter.close();
    /// assert!(limiter.try_acquire().unwrap_err().is_closed());
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        *self == TryAcquireError::Closed
    }
}

impl fmt::Display for TryAcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TryAcquireError::Full => "no room in the limiter now",
            TryAcquireError::Closed => "limiter is closed",
        })
    }
}

impl std::error::Error for TryAcquireError {}
