//! The wakers a turn of admission collects under the lock, to wake after it.

use std::task::Waker;

use super::ids::Inbox;
use crate::sync::Arc;

/// A task to wake: a lease's waiter (by its waker), or a worker (through its inbox, which
/// keeps the worker's waker).
enum Wake {
    Task(Waker),
    Worker(Arc<Inbox>),
}

impl Wake {
    fn wake(self) {
        match self {
            Wake::Task(waker) => waker.wake(),
            Wake::Worker(inbox) => inbox.wake(),
        }
    }
}

/// Wakers to wake once the admission lock is released.
///
/// A turn of admission outside the manager almost always wakes one task (the parked worker it
/// handed an item to, or a lease's waiter), so the first waker is kept inline: a `Vec` would
/// allocate, and free, once per request in a service. The manager keeps one `Wakers` across
/// its wake-ups, so `rest` keeps its capacity there.
#[derive(Default)]
pub(crate) struct Wakers {
    first: Option<Wake>,
    rest: Vec<Wake>,
}

impl Wakers {
    pub(crate) fn push(&mut self, waker: Waker) {
        self.push_wake(Wake::Task(waker));
    }

    /// The worker behind `inbox` is to look for work.
    pub(crate) fn push_worker(&mut self, inbox: Arc<Inbox>) {
        self.push_wake(Wake::Worker(inbox));
    }

    fn push_wake(&mut self, wake: Wake) {
        match self.first {
            None => self.first = Some(wake),
            Some(_) => self.rest.push(wake),
        }
    }

    /// Wakes every waker collected, leaving `self` empty (with its capacity).
    pub(crate) fn wake_all(&mut self) {
        if let Some(first) = self.first.take() {
            first.wake();
        }
        self.rest.drain(..).for_each(Wake::wake);
    }
}

impl Extend<Waker> for Wakers {
    fn extend<I: IntoIterator<Item = Waker>>(&mut self, wakers: I) {
        wakers.into_iter().for_each(|waker| self.push(waker));
    }
}
