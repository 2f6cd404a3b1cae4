//! `Limiter::shutdown_timeout`: close, let the work drain for a while, then cancel what is left.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::core::Exited;
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::sync::rt::time::{sleep_until, Instant, Sleep};

/// What [`Limiter::shutdown_timeout`] did: how the items that were left when it was called
/// ended, and how long it took.
///
/// Counted from the limiter's counters between the call's start and its end, so an item is in
/// exactly one field; items cancelled during the call by other means (an abort, their token, a
/// concurrent [`shutdown`](Limiter::shutdown)) count as cancelled too, and so do submissions
/// refused because the limiter was closed.
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
/// limiter.spawn(tokio::time::sleep(Duration::from_secs(1)));
/// limiter.spawn(tokio::time::sleep(Duration::from_secs(60)));
/// limiter.spawn(async {});
/// let report = limiter.shutdown_timeout(Duration::from_secs(5)).await;
/// assert_eq!(report.completed, 1); // the first one, in time
/// assert_eq!(report.cancelled_running, 1); // the second, cut off at 5 s
/// assert_eq!(report.cancelled_queued, 1); // the third never got its turn
/// assert_eq!(report.elapsed, Duration::from_secs(5));
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Items that completed with a value during the call.
    pub completed: u64,
    /// Items that panicked during the call.
    pub panicked: u64,
    /// Items that ended by their own time limit during the call.
    pub timed_out: u64,
    /// Items cancelled before they started: still queued when the time ran out.
    pub cancelled_queued: u64,
    /// Items cancelled while they ran: still running when the time ran out.
    pub cancelled_running: u64,
    /// Leases that ended during the call. They are counted in the fields above too (as
    /// completed, or panicked), but the limiter cannot cancel them: a lease runs in its
    /// holder's task, and the call waits for it to be dropped, however long that takes.
    pub leases: u64,
    /// How long the call took, from its first poll until the manager had exited.
    pub elapsed: Duration,
}

/// Future returned by [`Limiter::shutdown_timeout`]: closes the limiter when first polled, waits
/// for its work to finish until the time is up, then cancels the rest as
/// [`shutdown`](Limiter::shutdown) does, and resolves to a [`ShutdownReport`] once the manager
/// has exited.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use task_limiter::{Limiter, ShutdownTimeout};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = Limiter::new(2);
/// let stop: ShutdownTimeout<'_> = limiter.shutdown_timeout(Duration::from_secs(1));
/// assert_eq!(stop.await.cancelled_running, 0);
/// # }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct ShutdownTimeout<'a, S = ()> {
    limiter: &'a Limiter<S>,
    exited: Exited<'a>,
    grace: Duration,
    /// Made at the first poll, when the limiter closes.
    begun: Option<Begun>,
}

struct Begun {
    at: Instant,
    before: (Metrics, (u64, u64, u64)),
    /// `None` once it fired and the shutdown began (or when the grace is too long to end).
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Limiter<S> {
    /// Closes the limiter, lets queued and running items finish for up to `timeout`, then
    /// cancels whatever is left, as [`shutdown`](Self::shutdown) does, and returns what
    /// happened to the items that were left: a [`ShutdownReport`].
    ///
    /// Items that finish in time keep their values; the rest resolve cancelled. It returns as
    /// soon as the limiter is drained, or once `timeout` has passed and the rest is cancelled
    /// and gone (a running item is dropped at its next poll, so that takes one more turn of
    /// the runtime); either way the manager and every worker have exited by then. Items that
    /// [run to their end](Self::spawn_blocking) cannot be cut off and are waited for. Calling
    /// it while [`shutdown`](Self::shutdown), another `shutdown_timeout` or
    /// [`Builder::cancel_on`](crate::Builder::cancel_on) shuts the limiter down is fine: each
    /// returns once the limiter is done.
    ///
    /// # Panics
    ///
    /// Panics if the limiter's runtime was built without its time driver (no `enable_time`).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves leaves the limiter closed and draining, but no
    /// longer cuts it off: call [`shutdown`](Self::shutdown) to do that.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// let quick = limiter.spawn(async { 1 });
    /// let stuck = limiter.spawn(std::future::pending::<()>());
    /// let report = limiter.shutdown_timeout(Duration::from_secs(30)).await;
    /// assert_eq!(quick.await.unwrap(), 1);
    /// assert!(stuck.await.unwrap_err().is_cancelled());
    /// assert_eq!((report.completed, report.cancelled_running), (1, 1));
    /// assert_eq!(report.elapsed, Duration::from_secs(30));
    /// # }
    /// ```
    #[track_caller]
    pub fn shutdown_timeout(&self, timeout: Duration) -> ShutdownTimeout<'_, S> {
        self.assert_timer("Limiter::shutdown_timeout");
        ShutdownTimeout {
            limiter: self,
            exited: self.core().exited(),
            grace: timeout,
            begun: None,
        }
    }

    fn counts(&self) -> (Metrics, (u64, u64, u64)) {
        (self.metrics(), self.core().counted_apart())
    }
}

impl<S> Future for ShutdownTimeout<'_, S> {
    type Output = ShutdownReport;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ShutdownReport> {
        let this = &mut *self;
        let limiter = this.limiter;
        let begun = this.begun.get_or_insert_with(|| {
            // Counted before the close, so that submissions it refuses are in the report.
            let before = limiter.counts();
            let at = Instant::now();
            limiter.close();
            Begun {
                at,
                before,
                timer: at
                    .checked_add(this.grace)
                    .map(|end| Box::pin(sleep_until(end))),
            }
        });
        if Pin::new(&mut this.exited).poll(cx).is_pending() {
            let Some(timer) = &mut begun.timer else {
                return Poll::Pending;
            };
            std::task::ready!(timer.as_mut().poll(cx));
            begun.timer = None;
            limiter.close_room();
            limiter.core().begin_shutdown();
            std::task::ready!(Pin::new(&mut this.exited).poll(cx));
        }
        let ((m0, (q0, r0, l0)), (m1, (q1, r1, l1))) = (&begun.before, limiter.counts());
        Poll::Ready(ShutdownReport {
            completed: m1.completed - m0.completed,
            panicked: m1.panicked - m0.panicked,
            timed_out: m1.timed_out - m0.timed_out,
            cancelled_queued: q1 - q0,
            cancelled_running: r1 - r0,
            leases: l1 - l0,
            elapsed: Instant::now() - begun.at,
        })
    }
}

impl<S> fmt::Debug for ShutdownTimeout<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownTimeout")
            .field("limiter", &self.limiter.name())
            .field("timeout", &self.grace)
            .field("begun", &self.begun.is_some())
            .finish()
    }
}
