//! Tracing: an item submitted while a subscriber listens carries its submitter's span and its
//! submission time, runs inside a `task_limiter.item` span that is a child of that span, and
//! reports its start and its end as events.
//!
//! A wrapper around the item's work, rather than a field of every cell, so that without a
//! subscriber a queued item carries nothing for tracing and its polls enter no span. Being just
//! work, it cannot drop any property of the item: those live in the item's cell.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;
use tracing::Span;

use crate::core::{Load, Work};
use crate::sync::Arc;
use crate::worker_id::WorkerId;

const TARGET: &str = "task_limiter";

/// What tracing needs of an item's submission (a spawned item's or a lease's).
pub(crate) struct Submitted {
    parent: Span,
    limiter: Arc<str>,
    queued_at: Instant,
}

impl Submitted {
    /// Taken now, in the submitter's span.
    pub(crate) fn now(limiter: &str) -> Submitted {
        Submitted {
            parent: Span::current(),
            limiter: limiter.into(),
            queued_at: Instant::now(),
        }
    }

    /// The item starts on `worker`: its span, entered for `f`, and the start's event.
    pub(crate) fn start<T>(&self, worker: WorkerId, f: impl FnOnce() -> T) -> (T, Report) {
        let span = tracing::debug_span!(
            target: TARGET,
            parent: &self.parent,
            "task_limiter.item",
            limiter = &*self.limiter,
            worker.id = worker.0,
        );
        let made = {
            let _entered = span.enter();
            let waited_us = self.queued_at.elapsed().as_micros() as u64;
            tracing::trace!(target: TARGET, waited_us, "item started");
            f()
        };
        let report = Report {
            span,
            started_at: Instant::now(),
            done: false,
        };
        (made, report)
    }

    /// The item left the queue without starting: it never got a span of its own, so tell it
    /// in the span it was submitted from.
    pub(crate) fn cancelled(&self) {
        let waited_us = self.queued_at.elapsed().as_micros() as u64;
        tracing::debug!(target: TARGET, parent: &self.parent, waited_us, "item cancelled");
    }
}

/// An item's work, with what tracing needs of its submission.
pub(crate) struct Traced<W> {
    work: Option<W>,
    submitted: Submitted,
}

impl<W: Work> Traced<W> {
    pub(crate) fn new(work: W, limiter: &str) -> Traced<W> {
        Traced {
            work: Some(work),
            submitted: Submitted::now(limiter),
        }
    }

    /// The work back, for a refused `try_` call.
    pub(crate) fn into_inner(mut self) -> W {
        self.work.take().expect("unstarted work")
    }
}

impl<W> Drop for Traced<W> {
    fn drop(&mut self) {
        if self.work.is_some() {
            self.submitted.cancelled();
        }
    }
}

impl<W: Work> Work for Traced<W> {
    type Output = W::Output;
    type Future = TracedFuture<W::Future>;

    // The item's own limits (`TaskBuilder::timeout`, `cancel_on`) are the inner work's.
    #[inline(always)]
    fn poll_cut(future: Pin<&mut Self::Future>, cx: &mut Context<'_>) -> Poll<crate::core::Cut> {
        W::poll_cut(future.project().future, cx)
    }

    fn start(self, worker: WorkerId) -> Self::Future {
        self.start_under(worker, Load::default())
    }

    // Passes the load on: the adaptive limit's measuring sits inside the span.
    fn start_under(mut self, worker: WorkerId, load: Load) -> Self::Future {
        let work = self.work.take().expect("an item starts once");
        // Made inside the span: work that captures `Span::current()` (a blocking item taking it
        // to its thread) gets the item's span.
        let (future, report) = self
            .submitted
            .start(worker, || work.start_under(worker, load));
        TracedFuture { future, report }
    }
}

pin_project! {
    /// An item's future polled inside its span.
    pub(crate) struct TracedFuture<F> {
        #[pin]
        future: F,
        report: Report,
    }
}

/// Reports how the item ended when it is dropped: finished, panicked (dropped while its panic
/// unwinds) or cancelled.
pub(crate) struct Report {
    span: Span,
    started_at: Instant,
    done: bool,
}

impl Report {
    /// The item's span.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// The item returned: it reports "finished" as it drops.
    pub(crate) fn finished(&mut self) {
        self.done = true;
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        let _entered = self.span.enter();
        let ran_us = self.started_at.elapsed().as_micros() as u64;
        if self.done {
            tracing::trace!(target: TARGET, ran_us, "item finished");
        } else if std::thread::panicking() {
            tracing::debug!(target: TARGET, ran_us, "item panicked");
        } else {
            tracing::debug!(target: TARGET, ran_us, "item cancelled");
        }
    }
}

impl<F: Future> Future for TracedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.report.span.enter();
        let poll = this.future.poll(cx);
        if poll.is_ready() {
            this.report.done = true;
        }
        poll
    }
}
