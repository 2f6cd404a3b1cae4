//! Leases in the core: a lease request waits in the queue as any item does, under the same
//! order, keys, weights, deadlines and tokens; admission gives it a worker ID instead of a
//! worker (see `admission.rs`, `Slot::Leased` and `Slot::Lent`), and a [`Grant`] gives the ID
//! and the charge back when the lease ends.

use std::task::{Context, Poll, Waker};

use super::cell::{Charge, Job, Load, Outcome, RawTask, Run};
use crate::key::Key;
use crate::sync::{lock, Arc, AtomicU8, Mutex, Ordering};
use crate::worker_id::WorkerId;

/// Why a lease request ended without a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The limiter closed or shut down.
    Closed,
    /// Its queue deadline passed.
    TimedOut,
    /// Its token was cancelled.
    Cancelled,
}

impl Refusal {
    fn code(self) -> u8 {
        match self {
            Refusal::Cancelled => 1,
            Refusal::TimedOut => 2,
            Refusal::Closed => 3,
        }
    }
}

/// A lease waiting in the queue, as the queue and its waiter (`Acquire`) hold it.
pub(crate) struct Request<C: Charge> {
    /// 0 while it waits; then why it ended unleased (`Refusal::code`). Read without the lock
    /// by admission, to skip it.
    ended: AtomicU8,
    priority: i32,
    charge: C,
    stage: Mutex<Stage>,
}

enum Stage {
    /// Queued; the waiter's waker.
    Waiting(Option<Waker>),
    /// Admission gave it `WorkerId`, under `Load`; its waiter is yet to take it.
    Granted(WorkerId, Load),
    /// The waiter took the grant, or went away.
    Taken,
    Ended(Refusal),
}

impl<C: Charge> Request<C> {
    /// A request for the queue: the queue's job, and the waiter's pointer.
    pub(crate) fn new(priority: i32, charge: C) -> (Job, Arc<Request<C>>) {
        let request = Arc::new(Request {
            ended: AtomicU8::new(0),
            priority,
            charge,
            stage: Mutex::new(Stage::Waiting(None)),
        });
        (Job::from_task(request.clone()), request)
    }

    /// The waiter's poll: the grant, the reason it ended without one, or pending (with `cx`'s
    /// waker kept for the grant).
    pub(crate) fn poll_grant(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(WorkerId, Load), Refusal>> {
        let mut stage = lock(&self.stage);
        match &mut *stage {
            Stage::Waiting(waker) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Stage::Granted(id, load) => {
                let grant = (*id, *load);
                *stage = Stage::Taken;
                Poll::Ready(Ok(grant))
            }
            Stage::Ended(refusal) => Poll::Ready(Err(*refusal)),
            Stage::Taken => unreachable!("a lease request polled after it resolved"),
        }
    }

    /// The waiter went away. A waiting request is cancelled (admission skips it); one granted
    /// meanwhile gives back its grant's ID, for the caller to end the lease on.
    pub(crate) fn withdraw(&self) -> Option<WorkerId> {
        let mut stage = lock(&self.stage);
        match std::mem::replace(&mut *stage, Stage::Taken) {
            Stage::Waiting(_) => {
                self.ended
                    .store(Refusal::Cancelled.code(), Ordering::Release);
                *stage = Stage::Ended(Refusal::Cancelled);
                None
            }
            Stage::Granted(id, _) => Some(id),
            other => {
                *stage = other;
                None
            }
        }
    }

    /// Ends a waiting request without a lease; false if it no longer waits.
    fn end(&self, refusal: Refusal) -> bool {
        let mut stage = lock(&self.stage);
        let Stage::Waiting(waker) = &mut *stage else {
            return false;
        };
        let waker = waker.take();
        self.ended.store(refusal.code(), Ordering::Release);
        *stage = Stage::Ended(refusal);
        drop(stage);
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    fn waits(&self) -> bool {
        self.ended.load(Ordering::Acquire) == 0
    }
}

impl<C: Charge> RawTask for Request<C> {
    fn start(self: Arc<Self>, _: WorkerId, _: Load, _: &mut Option<Run>) -> Result<Run, Outcome> {
        debug_assert!(
            false,
            "a lease request is granted, never started on a worker"
        );
        Err(Outcome::Cancelled)
    }

    fn cancel_queued(&self) -> bool {
        self.end(Refusal::Cancelled)
    }

    fn time_out_queued(&self) -> bool {
        self.end(Refusal::TimedOut)
    }

    fn timed_out(&self) -> bool {
        self.ended.load(Ordering::Acquire) == Refusal::TimedOut.code()
    }

    fn is_queued(&self) -> bool {
        self.waits()
    }

    fn queued_weight(&self) -> Option<u32> {
        self.waits().then(|| self.charge.weight())
    }

    fn charge(&self) -> (u32, Option<&Key>) {
        (self.charge.weight(), self.charge.key())
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn runs_to_end(&self) -> bool {
        false
    }

    fn abort(&self) {
        self.end(Refusal::Closed);
    }

    fn drop_unstarted(&self) {
        self.end(Refusal::Closed);
    }

    fn is_lease(&self) -> bool {
        true
    }

    fn grant(&self, id: WorkerId, load: Load) -> Option<Option<Waker>> {
        let mut stage = lock(&self.stage);
        let Stage::Waiting(waker) = &mut *stage else {
            return None;
        };
        let waker = waker.take();
        *stage = Stage::Granted(id, load);
        Some(waker)
    }
}

/// A granted lease as the core sees it: its worker ID and the load it was granted under.
/// Ended with [`Core::end_lease`](super::Core::end_lease).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grant {
    pub(crate) id: WorkerId,
    pub(crate) load: Load,
}
