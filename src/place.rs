//! A place in the bounded queue (`Builder::max_queued`) as a wrapper around an item's work.
//!
//! The place is an owned semaphore permit stored with the work in the item's cell. It goes back
//! when the item starts, or when its work is dropped unstarted (cancelled while queued, which
//! drops the work at once), so a place is held exactly while its item waits.

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::core::{Cut, Load, Work};
use crate::sync::rt::sync::OwnedSemaphorePermit;
use crate::worker_id::WorkerId;

/// Work that holds a place in the bounded queue until it starts.
pub(crate) struct Placed<W> {
    work: W,
    place: OwnedSemaphorePermit,
}

impl<W> Placed<W> {
    pub(crate) fn new(work: W, place: OwnedSemaphorePermit) -> Placed<W> {
        Placed { work, place }
    }

    /// The work back (its place given back), for a refused `try_` call.
    pub(crate) fn into_inner(self) -> W {
        self.work
    }
}

impl<W: Work> Work for Placed<W> {
    type Output = W::Output;
    type Future = W::Future;

    fn start(self, worker: WorkerId) -> W::Future {
        self.start_under(worker, Load::default())
    }

    fn start_under(self, worker: WorkerId, load: Load) -> W::Future {
        drop(self.place);
        self.work.start_under(worker, load)
    }

    #[inline(always)]
    fn poll_cut(future: Pin<&mut W::Future>, cx: &mut Context<'_>) -> Poll<Cut> {
        W::poll_cut(future, cx)
    }
}
