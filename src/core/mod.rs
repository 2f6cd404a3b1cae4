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
mod deadline;
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
pub(crate) use cell::{Cell, Charge, Cut, Load, Props, Weighed, Work};
pub use queue::QueueOrder;

#[cfg(feature = "shuttle")]
pub use worker::planted::__plant_id_mixup;

use admission::Shared;
use cell::{Job, RawTask};
use deadline::{Watcher, Watches};
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
    /// `Builder::cancel_on`: the limiter shuts down when this is cancelled.
    pub(crate) cancel_on: Option<tokio_util::sync::CancellationToken>,
    /// Run when that token shuts the limiter down, as `Limiter::shutdown` would run it (the
    /// features' own closing: the bounded queue's places).
    pub(crate) on_cancel: Option<Box<dyn FnOnce() + Send>>,
}

/// A running core: what every `Limiter` clone holds.
pub(crate) struct Core {
    shared: Arc<Shared>,
    /// The work channel. The manager sees it close when every `Core` is dropped.
    work_tx: UnboundedSender<Job>,
    /// Queued items' deadlines and tokens, for the manager to watch.
    watches: Arc<Watches>,
    /// False only when the runtime is known to have no time driver.
    timer: bool,
}

impl Clone for Core {
    fn clone(&self) -> Self {
        Core {
            shared: self.shared.clone(),
            work_tx: self.work_tx.clone(),
            watches: self.watches.clone(),
            timer: self.timer,
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
        let timer = keep_alive.is_some() || !timer::known_missing(handle);
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
        let watches = Arc::new(Watches::new());
        let watcher = Watcher::new(config.cancel_on, config.on_cancel);
        let manager = manager::run(exit, work_rx, done_rx, watches.clone(), watcher);
        manager::spawn(handle, &shared.name, manager);
        Core {
            shared,
            work_tx,
            watches,
            timer,
        }
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

    /// Queues an item with a queue deadline and/or a token: the manager times it out at `at`,
    /// or cancels it when `token` fires, if it is still queued then. An item whose deadline has
    /// passed already never reaches the queue: it resolves timed out at once.
    pub(crate) fn submit_watched<W: Work, C: Charge>(
        &self,
        work: W,
        props: Props,
        charge: C,
        at: Option<crate::sync::rt::time::Instant>,
        token: Option<tokio_util::sync::CancellationToken>,
    ) -> Arc<Cell<W, C>> {
        let expired = at.is_some_and(|at| at <= crate::sync::rt::time::Instant::now());
        if expired || token.as_ref().is_some_and(|token| token.is_cancelled()) {
            let (job, cell) = Job::new(work, props, charge);
            self.shared.submitted.fetch_add(1, Ordering::Relaxed);
            match expired {
                true => cell.time_out_queued(),
                false => cell.cancel_queued(),
            };
            // Counted by how the cell ended: timed out, or cancelled.
            cancel_unstarted(&self.shared, [job]);
            return cell;
        }
        let cell = self.submit(work, props, charge);
        // Registered after the submission, so the item may have started (or ended) already:
        // the manager then finds it no longer queued and leaves it be.
        let task: std::sync::Weak<dyn RawTask> = Arc::downgrade(&cell) as _;
        if let Some(at) = at {
            self.watches.deadline(at, task.clone());
        }
        if let Some(token) = token {
            self.watches.token(token, task);
        }
        cell
    }

    /// Whether the limiter's runtime has a time driver (`enable_time`). True where that cannot
    /// be known (a `panic = "abort"` build).
    pub(crate) fn has_timer(&self) -> bool {
        self.timer
    }

    /// Cancelled items that never started, and cancelled running ones, apart.
    pub(crate) fn cancelled_apart(&self) -> (u64, u64) {
        self.shared.state().cancelled_apart()
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
        self.shared.set_limit(limit, expiry);
    }

    /// A handle that sets the limit without keeping the limiter alive (its items may hold it).
    pub(crate) fn limit_handle(&self) -> LimitHandle {
        LimitHandle(Arc::downgrade(&self.shared))
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

/// Sets a limiter's limit from inside its own items (the adaptive limit's controller, which
/// every measured item holds): a weak reference, so that queued items holding it never keep
/// the limiter's state alive.
pub(crate) struct LimitHandle(std::sync::Weak<Shared>);

impl LimitHandle {
    /// [`Core::set_limit`] with no expiry; does nothing once the limiter is gone.
    pub(crate) fn set_limit(&self, limit: usize) {
        if let Some(shared) = self.0.upgrade() {
            shared.set_limit(limit, None);
        }
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
