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

use crate::adaptive::Overload;
use crate::core::Charge;
use crate::core::{Cut, Props, Work};
use crate::sync::rt::sync::OwnedSemaphorePermit;
use crate::sync::rt::time::{sleep_until, Instant, Sleep};
use crate::task_builder::Placed;
use crate::trace::Traced;
use crate::{JoinHandle, Limiter, WorkerId};

/// The limits a `TaskBuilder` collected for one item.
#[derive(Clone, Debug, Default)]
pub(crate) struct Limits {
    /// The longest the item may run once started.
    pub(crate) timeout: Option<Duration>,
    /// The latest it may start.
    pub(crate) deadline: Option<Instant>,
    pub(crate) token: Option<CancellationToken>,
}

impl Limits {
    /// Moves the deadline to `at` if that is earlier.
    pub(crate) fn deadline_at(&mut self, at: Instant) {
        self.deadline = Some(self.deadline.map_or(at, |old| old.min(at)));
    }

    /// Submits `work` under these limits: the queued phase is registered with the manager, the
    /// running phase rides in the work.
    pub(crate) fn submit<S, W: Work, C: Charge, O: Overload<W::Output>>(
        self,
        limiter: &Limiter<S>,
        room: Option<OwnedSemaphorePermit>,
        work: W,
        props: Props,
        charge: C,
        overload: O,
    ) -> JoinHandle<W::Output> {
        // A started blocking closure cannot be stopped: its limits end with the queue.
        let running = !props.runs_to_end && (self.timeout.is_some() || self.token.is_some());
        let (timeout, run_token) = match running {
            true => (self.timeout, self.token.clone()),
            false => (None, None),
        };
        let work = Limited {
            work,
            timeout,
            token: run_token,
        };
        let (at, token) = (self.deadline, self.token);
        match room {
            None => limiter.submit_watched(work, props, charge, overload, at, token),
            Some(place) => {
                let work = Placed { work, place };
                limiter.submit_watched(work, props, charge, overload, at, token)
            }
        }
    }
}

impl<S> Limiter<S> {
    /// `submit`, for an item with a queue deadline or a token.
    fn submit_watched<W: Work, C: Charge, O: Overload<W::Output>>(
        &self,
        work: W,
        props: Props,
        charge: C,
        overload: O,
        at: Option<Instant>,
        token: Option<CancellationToken>,
    ) -> JoinHandle<W::Output> {
        match &self.extras.adaptive {
            None => self.submit_watched_traced(work, props, charge, at, token),
            Some(adaptive) => {
                let work = adaptive.measure(work, overload);
                self.submit_watched_traced(work, props, charge, at, token)
            }
        }
    }

    fn submit_watched_traced<W: Work, C: Charge>(
        &self,
        work: W,
        props: Props,
        charge: C,
        at: Option<Instant>,
        token: Option<CancellationToken>,
    ) -> JoinHandle<W::Output> {
        if tracing::enabled!(target: "task_limiter", tracing::Level::DEBUG) {
            let traced = Traced::new(work, self.core.name());
            JoinHandle::new(self.core.submit_watched(traced, props, charge, at, token))
        } else {
            JoinHandle::new(self.core.submit_watched(work, props, charge, at, token))
        }
    }

    /// Panics, at the caller, if the limiter's runtime has no timer.
    #[track_caller]
    pub(crate) fn assert_timer(&self, what: &str) {
        assert!(
            self.core.has_timer(),
            "task_limiter: `{what}` needs the runtime's time driver, and this limiter's runtime \
             has none; build the runtime with `enable_time()` (or `enable_all()`)"
        );
    }
}

/// An item's work with its running-phase limits.
pub(crate) struct Limited<W> {
    work: W,
    timeout: Option<Duration>,
    token: Option<CancellationToken>,
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
        // The run time counts from here, the item's first poll on its worker. A timeout too
        // long for the clock never ends.
        let timer = self
            .timeout
            .and_then(|after| Instant::now().checked_add(after))
            .map(sleep_until);
        LimitedFuture {
            future: self.work.start(worker),
            timer,
            cancelled: self.token.map(CancellationToken::cancelled_owned),
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
