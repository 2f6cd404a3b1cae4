//! The core: the item cell, the queue, the admission point, the manager and the workers. It
//! names no feature: blocking items, worker state, queue places, priority and tracing are work
//! wrappers and item properties built on it in their own files.
//!
//! ```text
//!  Limiter::spawn ──Job──▶ work channel ──▶ manager ──▶ queue ─┐
//!        │                  (unbounded)     │  ▲               │ admission (one lock:
//!        ▼                                  │  │ done channel  │ limit, queue, ID slots,
//!    JoinHandle ◀── cell ◀── worker ◀───────┘  │ (IDs back)    │ running count)
//!                             │  ▲ hand work / spawn for a free ID
//!                             └──┴── next item, park, or exit ─┘
//! ```

mod admission;
pub(crate) mod cell;
mod lanes;
mod manager;
mod queue;
mod timer;
mod worker;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub(crate) use admission::Lifecycle;
pub(crate) use cell::{Cell, Charge, Props, Weighed, Work};
pub use queue::QueueOrder;

#[cfg(feature = "shuttle")]
pub use worker::planted::__plant_id_mixup;

use admission::Shared;
use cell::Job;
use lanes::Lanes;
use manager::{cancel_unstarted, ExitGuard};

use crate::sync::rt::runtime::Handle;
use crate::sync::rt::sync::futures::Notified;
use crate::sync::rt::sync::mpsc::{self, UnboundedSender};
use crate::sync::{Arc, Ordering};
use crate::{Key, KeyMetrics, Metrics, WorkerId};

/// What the core is built from.
pub(crate) struct Config {
    pub(crate) name: Arc<str>,
    pub(crate) limit: usize,
    pub(crate) order: QueueOrder,
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) per_key_limit: usize,
}

/// A running core: what every `Limiter` clone holds.
pub(crate) struct Core {
    shared: Arc<Shared>,
    /// The work channel. The manager sees it close when every `Core` is dropped.
    work_tx: UnboundedSender<Job>,
}

impl Clone for Core {
    fn clone(&self) -> Self {
        Core {
            shared: self.shared.clone(),
            work_tx: self.work_tx.clone(),
        }
    }
}

impl Core {
    /// Spawns the manager on `handle`'s runtime.
    #[track_caller]
    pub(crate) fn start(config: Config, handle: &Handle) -> Core {
        // A keep-alive needs the runtime's timer; without one, parked workers wait until close,
        // shutdown or a smaller limit ends them.
        let keep_alive = config.keep_alive.filter(|_| timer::available(handle));
        let (work_tx, work_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(
            config.name,
            config.limit,
            Lanes::new(config.order, config.per_key_limit),
            keep_alive,
            done_tx,
        ));
        let exit = ExitGuard {
            shared: shared.clone(),
        };
        manager::spawn(handle, &shared.name, manager::run(exit, work_rx, done_rx));
        Core { shared, work_tx }
    }

    /// Queues an item: the one path of every `spawn` method. Returns its cell, for its handle.
    #[inline]
    pub(crate) fn submit<W: Work, C: Charge>(
        &self,
        work: W,
        props: Props,
        charge: C,
    ) -> Arc<Cell<W, C>> {
        let (job, cell) = Job::new(work, props, charge);
        let shared = &*self.shared;
        shared.submitted.fetch_add(1, Ordering::Relaxed);
        if shared.lifecycle() >= Lifecycle::Closed {
            cancel_unstarted(shared, [job]);
            return cell;
        }
        let job = match shared.hand_off(job) {
            Ok(()) => {
                // Queued and handed to a parked worker in one step.
                tracing::trace!(target: "task_limiter", limiter = %shared.name, "item queued");
                return cell;
            }
            Err(job) => job,
        };
        if let Err(refused) = self.send(job) {
            // The manager closed the channel (close or shutdown) or is gone with its runtime.
            cancel_unstarted(shared, [refused]);
        }
        cell
    }

    /// Queues an item unless the limiter is closed, in which case its work comes back.
    pub(crate) fn try_submit<W: Work>(&self, work: W, props: Props) -> Result<Arc<Cell<W>>, W> {
        let shared = &*self.shared;
        if shared.lifecycle() >= Lifecycle::Closed {
            return Err(work);
        }
        let (job, cell) = Job::new(work, props, ());
        shared.submitted.fetch_add(1, Ordering::Relaxed);
        let job = match shared.hand_off(job) {
            Ok(()) => return Ok(cell),
            Err(job) => job,
        };
        match self.send(job) {
            Ok(()) => Ok(cell),
            // Closed since the check: the item never reached the manager, so take it back.
            Err(refused) => {
                shared.submitted.fetch_sub(1, Ordering::Relaxed);
                let work = cell.take_unstarted();
                drop(refused);
                Err(work.expect("a refused item is still queued"))
            }
        }
    }

    /// Sends a job to the manager; gives it back if the manager no longer takes work.
    fn send(&self, job: Job) -> Result<(), Job> {
        let shared = &*self.shared;
        // Counted before the send, so that a submitter that comes after sees it.
        shared.in_channel.fetch_add(1, Ordering::AcqRel);
        match self.work_tx.send(job) {
            Ok(()) => {
                tracing::trace!(target: "task_limiter", limiter = %shared.name, "item queued");
                Ok(())
            }
            Err(refused) => {
                shared.in_channel.fetch_sub(1, Ordering::AcqRel);
                Err(refused.0)
            }
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.shared.name
    }

    pub(crate) fn lifecycle(&self) -> Lifecycle {
        self.shared.lifecycle()
    }

    /// Closes the limiter; returns true if this call closed it.
    pub(crate) fn close(&self) -> bool {
        let closed_now = self.shared.advance(Lifecycle::Closed) == Lifecycle::Open;
        if closed_now {
            self.shared.control.notify_one();
        }
        closed_now
    }

    /// Starts a shutdown (it goes on without the caller); see `Limiter::shutdown`.
    pub(crate) fn begin_shutdown(&self) {
        if self.shared.advance(Lifecycle::ShuttingDown) < Lifecycle::ShuttingDown {
            self.shared.control.notify_one();
        }
    }

    /// A future that resolves once the manager has exited.
    pub(crate) fn exited(&self) -> Exited<'_> {
        Exited {
            shared: &self.shared,
            notified: Box::pin(self.shared.exit_notify.notified()),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.shared.state().limit()
    }

    pub(crate) fn set_limit(&self, limit: usize, expiry: Option<(tokio::time::Instant, usize)>) {
        self.shared.state().set_limit(limit, expiry);
        self.shared.control.notify_one();
    }

    pub(crate) fn key_limit(&self, key: &Key) -> usize {
        self.shared.state().key_limit(key)
    }

    pub(crate) fn set_key_limit(&self, key: Key, limit: usize) {
        if self.shared.state().set_key_limit(key, limit) {
            self.shared.control.notify_one();
        }
    }

    pub(crate) fn key_metrics(&self, key: &Key) -> Option<KeyMetrics> {
        self.shared.state().key_metrics(key)
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let mut state = self.shared.state();
        // Read after the counters, so that a racing item is never counted as both finished
        // and queued.
        let submitted = self.shared.submitted.load(Ordering::Acquire);
        state.metrics(submitted)
    }

    pub(crate) fn busy_ids(&self) -> Vec<WorkerId> {
        self.shared.state().busy_ids()
    }
}

/// Resolves once the manager has exited (`Limiter::wait`).
pub(crate) struct Exited<'a> {
    shared: &'a Shared,
    /// Made before the first check: `notify_waiters` reaches every `Notified` made before it.
    /// Boxed so that the futures built on this stay `Unpin`.
    notified: Pin<Box<Notified<'a>>>,
}

impl Future for Exited<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.shared.lifecycle() == Lifecycle::Exited {
                return Poll::Ready(());
            }
            std::task::ready!(self.notified.as_mut().poll(cx));
            let next = self.shared.exit_notify.notified();
            self.notified.set(next);
        }
    }
}
