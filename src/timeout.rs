//! Time limits and tokens on items: `TaskBuilder::timeout`, `deadline`, `queue_timeout` and
//! `cancel_on`.
//!
//! Two phases, two mechanisms, and nothing for items that use neither:
//!
//! - **Queued**: the item's queue deadline and its token go to the manager (`core/deadline.rs`),
//!   which keeps one timer for all the limiter's queued deadlines and one small watcher future
//!   per token, and drops the work of an item still queued when either comes.
//! - **Running**: the item's work is wrapped in [`Limited`], whose future carries the run
//!   timeout's `Sleep` and the token's `cancelled()` inline: at most one timer per running item,
//!   polled by its worker inside the item's own poll (after the item's future, so a value ready
//!   at the deadline wins). The core asks through `Work::poll_cut`, which items without limits
//!   leave at its default, inlined away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::core::{Cut, Load, Watch, Work};
use crate::limiter::Limiter;
use crate::sync::rt::time::{sleep_until, Instant, Sleep};
use crate::worker_id::WorkerId;

/// The limits a `TaskBuilder` collected for one item.
#[derive(Clone, Debug, Default)]
pub(crate) struct Limits {
    /// The longest the item may run once started.
    pub(crate) timeout: Option<Duration>,
    /// The queue deadline and the token.
    pub(crate) watch: Watch,
}

/// The limits of an item's running phase.
pub(crate) struct RunLimits {
    timeout: Option<Duration>,
    token: Option<CancellationToken>,
}

impl Limits {
    /// Splits the limits by phase: the running phase's ride in the work, the queued phase's
    /// go to the manager. A started blocking closure cannot be stopped (`runs_to_end`): its
    /// limits end with the queue.
    pub(crate) fn split(self, runs_to_end: bool) -> (Option<RunLimits>, Option<Watch>) {
        let Limits { timeout, watch } = self;
        let running = !runs_to_end && (timeout.is_some() || watch.token.is_some());
        let run = running.then(|| RunLimits {
            timeout,
            token: watch.token.clone(),
        });
        let queued = watch.deadline.is_some() || watch.token.is_some();
        (run, queued.then_some(watch))
    }
}

impl<S> Limiter<S> {
    /// Panics, at the caller, if the limiter's runtime has no timer.
    #[track_caller]
    pub(crate) fn assert_timer(&self, what: &str) {
        assert!(
            self.inner.core.has_timer(),
            "task_limiter: `{what}` needs the runtime's time driver, and this limiter's runtime \
             has none; build the runtime with `enable_time()` (or `enable_all()`)"
        );
    }
}

/// An item's work with its running-phase limits.
pub(crate) struct Limited<W> {
    work: W,
    limits: RunLimits,
}

impl<W> Limited<W> {
    pub(crate) fn new(work: W, limits: RunLimits) -> Limited<W> {
        Limited { work, limits }
    }

    /// The work back, for a refused `try_` call.
    pub(crate) fn into_inner(self) -> W {
        self.work
    }
}

pin_project! {
    /// The item's future, with its run timer and its token's wait beside it (inline: the item's
    /// future is already pinned in its own allocation).
    pub(crate) struct LimitedFuture<F> {
        #[pin]
        future: F,
        #[pin]
        timer: Option<Sleep>,
        #[pin]
        cancelled: Option<WaitForCancellationFutureOwned>,
    }
}

impl<F: Future> Future for LimitedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

impl<W: Work> Work for Limited<W> {
    type Output = W::Output;
    type Future = LimitedFuture<W::Future>;

    fn start(self, worker: WorkerId) -> Self::Future {
        self.start_under(worker, Load::default())
    }

    fn start_under(self, worker: WorkerId, load: Load) -> Self::Future {
        // The run time counts from here, the item's first poll on its worker. A timeout too
        // long for the clock never ends.
        let RunLimits { timeout, token } = self.limits;
        let timer = timeout
            .and_then(|after| Instant::now().checked_add(after))
            .map(sleep_until);
        LimitedFuture {
            future: self.work.start_under(worker, load),
            timer,
            cancelled: token.map(CancellationToken::cancelled_owned),
        }
    }

    fn poll_cut(future: Pin<&mut Self::Future>, cx: &mut Context<'_>) -> Poll<Cut> {
        let this = future.project();
        if let Poll::Ready(cut) = W::poll_cut(this.future, cx) {
            return Poll::Ready(cut);
        }
        if let Some(cancelled) = this.cancelled.as_pin_mut() {
            if cancelled.poll(cx).is_ready() {
                return Poll::Ready(Cut::Cancelled);
            }
        }
        if let Some(timer) = this.timer.as_pin_mut() {
            if timer.poll(cx).is_ready() {
                return Poll::Ready(Cut::TimedOut);
            }
        }
        Poll::Pending
    }
}
