//! Distributions of queue waits and run times ([`Builder::distributions`]): a wrapper around an
//! item's work that reads the clock at its submission, its start and its end, and records the
//! wait and the run time in lock-free histograms. A limiter built without them wraps nothing
//! and reads no clock for them (`compose.rs` passes the work on as it is).
//!
//! Leases are timed in `lease.rs`, from the same recorders: acquire (first poll) to grant, grant
//! to drop.
//!
//! [`Builder::distributions`]: crate::Builder::distributions

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use crate::core::{Cut, Load, Work};
use crate::histogram::{Buckets, Histogram};
use crate::sync::rt::time::Instant;
use crate::sync::Arc;
use crate::worker_id::WorkerId;

/// A snapshot of a limiter's distributions, taken by
/// [`Limiter::distributions`](crate::Limiter::distributions) from a limiter built with
/// [`Builder::distributions`](crate::Builder::distributions).
///
/// Items and leases alike: a spawned item waits from its submission to its start and runs
/// from its start to its end (however it ends: a value, a panic, an abort, a timeout); a lease
/// waits from the first poll of its [`Acquire`](crate::Acquire) (or its
/// [`try_acquire`](crate::Limiter::try_acquire)) to its grant and runs from its grant to its
/// drop. Waits that end without a start (refused, timed out, cancelled) are not in
/// `queue_wait`: see [`Metrics::wait_time`](crate::Metrics::wait_time) and
/// [`Metrics::refused`](crate::Metrics::refused) for those.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = Limiter::builder().limit(1).distributions(true).build();
/// // Three items of 100 ms each, one at a time: they wait 0, 100 and 200 ms.
/// let handles: Vec<_> = (0..3)
///     .map(|_| limiter.spawn(async { tokio::time::sleep(Duration::from_millis(100)).await }))
///     .collect();
/// for handle in handles {
///     handle.await.unwrap();
/// }
/// let d = limiter.distributions().unwrap();
/// assert_eq!(d.queue_wait.count(), 3);
/// assert_eq!(d.queue_wait.sum(), Duration::from_millis(300));
/// assert_eq!(d.run_time.sum(), Duration::from_millis(300));
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Distributions {
    /// Waits from submission (or a lease request's first poll) to start.
    pub queue_wait: Histogram,
    /// Run times from start (or grant) to end (or a lease's drop).
    pub run_time: Histogram,
}

/// A limiter's recording side, shared by its items' wrappers and its leases.
pub(crate) struct Recorders {
    pub(crate) queue_wait: Buckets,
    pub(crate) run_time: Buckets,
}

impl Recorders {
    pub(crate) fn new() -> Recorders {
        Recorders {
            queue_wait: Buckets::new(),
            run_time: Buckets::new(),
        }
    }

    pub(crate) fn snapshot(&self) -> Distributions {
        Distributions {
            queue_wait: self.queue_wait.snapshot(),
            run_time: self.run_time.snapshot(),
        }
    }
}

/// Work whose queue wait and run time are recorded.
pub(crate) struct Timed<W> {
    work: W,
    recorders: Arc<Recorders>,
    submitted: Instant,
}

impl<W> Timed<W> {
    /// Reads the clock: the item is submitted now.
    pub(crate) fn new(work: W, recorders: Arc<Recorders>) -> Timed<W> {
        Timed {
            work,
            recorders,
            submitted: Instant::now(),
        }
    }

    /// The work back, for a refused `try_` call: nothing is recorded.
    pub(crate) fn into_inner(self) -> W {
        self.work
    }
}

pin_project! {
    /// A timed item's future: records its run time when it returns, or when it is dropped
    /// unfinished (cut by its timeout or token, aborted, unwound by a panic, shut down).
    pub(crate) struct TimedFuture<F> {
        #[pin]
        future: F,
        started: Instant,
        // Taken when the run time is recorded.
        recorders: Option<Arc<Recorders>>,
    }

    impl<F> PinnedDrop for TimedFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(recorders) = this.recorders.take() {
                recorders.run_time.record(this.started.elapsed());
            }
        }
    }
}

impl<F: Future> Future for TimedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.future.poll(cx));
        if let Some(recorders) = this.recorders.take() {
            recorders.run_time.record(this.started.elapsed());
        }
        Poll::Ready(output)
    }
}

impl<W: Work> Work for Timed<W> {
    type Output = W::Output;
    type Future = TimedFuture<W::Future>;

    fn start(self, worker: WorkerId) -> Self::Future {
        self.start_under(worker, Load::default())
    }

    fn start_under(self, worker: WorkerId, load: Load) -> Self::Future {
        // The one clock read of the start: the end of the wait, the start of the run.
        let started = Instant::now();
        let wait = started.saturating_duration_since(self.submitted);
        self.recorders.queue_wait.record(wait);
        TimedFuture {
            future: self.work.start_under(worker, load),
            started,
            recorders: Some(self.recorders),
        }
    }

    #[inline(always)]
    fn poll_cut(future: Pin<&mut Self::Future>, cx: &mut Context<'_>) -> Poll<Cut> {
        W::poll_cut(future.project().future, cx)
    }
}

/// A lease's timing: the recorders and the instant it was granted.
pub(crate) struct LeaseTiming {
    recorders: Arc<Recorders>,
    granted: Instant,
}

impl LeaseTiming {
    /// Records the wait of a lease requested at `asked` and granted at `granted`.
    pub(crate) fn granted(
        recorders: &Arc<Recorders>,
        asked: Instant,
        granted: Instant,
    ) -> LeaseTiming {
        recorders
            .queue_wait
            .record(granted.saturating_duration_since(asked));
        LeaseTiming {
            recorders: recorders.clone(),
            granted,
        }
    }

    /// Records the run time of the lease, ending now.
    /// Records the run time; returns the clock read it ended at, for the lease's end to use.
    pub(crate) fn ended(self) -> Instant {
        let now = Instant::now();
        let run: Duration = now.saturating_duration_since(self.granted);
        self.recorders.run_time.record(run);
        now
    }
}
