//! The wakers a turn of admission collects under the lock, to wake after it.

use std::task::Waker;

/// Wakers to wake once the admission lock is released.
///
/// A turn of admission outside the manager almost always wakes one task (the parked worker it
/// handed an item to, or a lease's waiter), so the first waker is kept inline: a `Vec` would
/// allocate, and free, once per request in a service. The manager keeps one `Wakers` across
/// its wake-ups, so `rest` keeps its capacity there.
#[derive(Default)]
pub(crate) struct Wakers {
    first: Option<Waker>,
    rest: Vec<Waker>,
}

impl Wakers {
    pub(crate) fn push(&mut self, waker: Waker) {
        match self.first {
            None => self.first = Some(waker),
            Some(_) => self.rest.push(waker),
        }
    }

    /// Wakes every waker collected, leaving `self` empty (with its capacity).
    pub(crate) fn wake_all(&mut self) {
        if let Some(first) = self.first.take() {
            first.wake();
        }
        self.rest.drain(..).for_each(Waker::wake);
    }
}

impl Extend<Waker> for Wakers {
    fn extend<I: IntoIterator<Item = Waker>>(&mut self, wakers: I) {
        wakers.into_iter().for_each(|waker| self.push(waker));
    }
}
