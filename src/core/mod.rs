//! The core: the item cell, the queue, the admission point, the worker-ID table, the manager
//! and the workers.
//!
//! What the core acts on is part of it: an item's priority, key and weight are queue
//! discipline (`queue.rs`, `lanes.rs`); the limit in force, its expiry and the key limits are
//! admission inputs (`admission.rs`); a queued item's deadline and token are watched by the
//! manager (`deadline.rs`). Everything else wraps the work in a file of its own outside the
//! core, composed in one place (`compose.rs`): blocking items, worker state, bounded-queue
//! places, running time limits, adaptive sampling and tracing. The core runs any
//! [`Work`] and knows nothing of them.
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
mod ids;
mod lanes;
mod lease;
mod manager;
mod queue;
mod refusals;
mod timer;
mod wakers;
mod worker;

pub(crate) use worker::planted::item_id as planted_id;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub(crate) use admission::Lifecycle;
pub(crate) use cell::Outcome;
pub(crate) use cell::{Cell, Charge, Cut, Load, Props, Weighed, Work};
pub(crate) use deadline::Watch;
pub(crate) use lease::{Grant, Refusal, Request};
pub use queue::QueueOrder;
pub(crate) use refusals::Reason;

#[cfg(feature = "shuttle")]
pub use worker::planted::__plant_id_mixup;

use admission::Shared;
use cell::{Job, RawTask};
use deadline::{Watcher, Watches};
use lanes::Lanes;
use manager::{cancel_unstarted, ExitGuard};

use crate::key::Key;
use crate::metrics::{KeyMetrics, Metrics};
use crate::sync::rt::runtime::Handle;
use crate::sync::rt::sync::futures::Notified;
use crate::sync::rt::sync::mpsc::{self, UnboundedSender};
use crate::sync::{Arc, Ordering};
use crate::worker_id::WorkerId;

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
        let probed = timer::probe(handle);
        let keep_alive = config.keep_alive.filter(|_| probed == Some(true));
        let timer = probed != Some(false);
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

    /// Queues an item: the one way into the core, for every shape of work and every entry
    /// point. `watch` carries the item's queue deadline and token, for the manager to watch
    /// while it waits; an item whose deadline has passed, or whose token is cancelled, never
    /// reaches the queue and resolves at once. A closed limiter refuses the item: the caller
    /// either resolves it cancelled ([`Refused::cancel`]) or takes its work back
    /// ([`Refused::into_work`]).
    #[inline]
    pub(crate) fn submit<W: Work, C: Charge>(
        &self,
        work: W,
        props: Props,
        charge: C,
        watch: Option<&Watch>,
    ) -> Result<Arc<Cell<W, C>>, Refused<W, C>> {
        let (job, cell) = Job::new(work, props, charge);
        let shared = &*self.shared;
        shared.submitted.fetch_add(1, Ordering::Relaxed);
        if let Some(watch) = watch {
            if watch.ended_already(&*cell) {
                // Counted by how the cell ended: timed out, or cancelled.
                shared.refusals.count(false, ended_reason(cell.timed_out()));
                cancel_unstarted(shared, [job]);
                return Ok(cell);
            }
        }
        if shared.lifecycle() >= Lifecycle::Closed {
            return Err(Refused { job, cell });
        }
        if let Err(job) = shared.hand_off(job) {
            if let Err(job) = self.send(job) {
                // The manager closed the channel (close or shutdown), or is gone with its
                // runtime.
                return Err(Refused { job, cell });
            }
        } else {
            tracing::trace!(target: "task_limiter", limiter = %shared.name, "item queued");
        }
        if let Some(watch) = watch {
            // Registered after the submission, so the item may have started (or ended)
            // already: the manager then finds it no longer queued and leaves it be.
            let task: std::sync::Weak<dyn RawTask> = Arc::downgrade(&cell) as _;
            if self.watches.register(watch, task) {
                self.shared.control.notify_one();
            }
        }
        Ok(cell)
    }

    // --- leases ---

    /// A lease now, if one may start without waiting and without passing anything queued.
    #[inline]
    /// `now`: a clock read the caller made just before (for its own timing), which the
    /// admission turn then uses rather than read the clock again.
    pub(crate) fn lease_now(
        &self,
        weight: u32,
        key: Option<&Key>,
        now: Option<tokio::time::Instant>,
    ) -> Option<Grant> {
        // Counted as submitted under the admission lock (`leased_at_once`).
        let (id, load) = self.shared.lease_now(weight, key, now)?;
        Some(Grant { id, load })
    }

    /// Whether a lease request should ask for a lease at once before it queues (see
    /// `Shared::queue_looks_empty`).
    pub(crate) fn queue_looks_empty(&self) -> bool {
        self.shared.queue_looks_empty()
    }

    /// Queues a lease request, with `watch`'s deadline and token; its waiter polls the request
    /// for its grant.
    pub(crate) fn queue_lease<C: Charge>(
        &self,
        priority: i32,
        charge: C,
        watch: Option<&Watch>,
    ) -> Result<Arc<Request<C>>, Refusal> {
        let shared = &*self.shared;
        if shared.lifecycle() >= Lifecycle::Closed {
            self.count_refused_lease(Refusal::Closed);
            return Err(Refusal::Closed);
        }
        let (job, request) = Request::new(priority, charge);
        shared.submitted.fetch_add(1, Ordering::Relaxed);
        if let Some(watch) = watch {
            if watch.ended_already(&*request) {
                let refusal = match request.timed_out() {
                    true => Refusal::TimedOut,
                    false => Refusal::Cancelled,
                };
                shared
                    .refusals
                    .count(true, ended_reason(request.timed_out()));
                cancel_unstarted(shared, [job]);
                return Err(refusal);
            }
        }
        if let Err(job) = shared.queue_lease(job) {
            if let Err(job) = self.send(job) {
                cancel_unstarted(shared, [job]);
                return Err(Refusal::Closed);
            }
        }
        if let Some(watch) = watch {
            let task: std::sync::Weak<dyn RawTask> = Arc::downgrade(&request) as _;
            if self.watches.register(watch, task) {
                self.shared.control.notify_one();
            }
        }
        Ok(request)
    }

    /// Counts a lease request that ended before it reached the queue (the limiter closed, its
    /// deadline passed, its token cancelled), as a submission that ends so is counted.
    pub(crate) fn count_refused_lease(&self, refusal: Refusal) {
        self.shared.submitted.fetch_add(1, Ordering::Relaxed);
        let reason = match refusal {
            Refusal::TimedOut => Reason::QueueTimeout,
            Refusal::Cancelled => Reason::Token,
            Refusal::Closed => Reason::Closed,
        };
        self.shared.refusals.count(true, reason);
        let mut state = self.shared.state();
        match refusal {
            Refusal::TimedOut => state.count_timed_out_queued(1),
            Refusal::Closed | Refusal::Cancelled => state.count_dropped(1),
        }
    }

    /// Counts a refusal that never reached the core: a `try_` call that found the queue full
    /// or the limiter closed, a `try_acquire` with no room.
    pub(crate) fn count_refused(&self, lease: bool, reason: Reason) {
        self.shared.refusals.count(lease, reason);
    }

    /// Ends the lease on `id`, counted as `outcome`: its ID and charge come back.
    /// `now` as for [`lease_now`](Self::lease_now).
    pub(crate) fn end_lease(
        &self,
        id: WorkerId,
        outcome: Outcome,
        now: Option<tokio::time::Instant>,
    ) {
        self.shared.end_lease(id, outcome, now);
    }

    /// Whether the limiter's runtime has a time driver (`enable_time`). True where that cannot
    /// be known (a `panic = "abort"` build).
    pub(crate) fn has_timer(&self) -> bool {
        self.timer
    }

    /// Cancelled items that never started, cancelled running ones, and ended leases, apart.
    pub(crate) fn counted_apart(&self) -> (u64, u64, u64) {
        self.shared.state_untimed().counted_apart()
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
        self.shared.state_untimed().limit()
    }

    pub(crate) fn set_limit(&self, limit: usize, expiry: Option<(tokio::time::Instant, usize)>) {
        self.shared.set_limit(limit, expiry);
    }

    /// Caps the limit set (the one [`LimitHandle::set_uncapped`] moves) at `cap` until `until`,
    /// at `fallback` from then on: the limit in force is the lower of the two, and the expiry is
    /// checked at admission as `set_limit`'s is.
    pub(crate) fn set_cap(&self, cap: usize, until: tokio::time::Instant, fallback: usize) {
        self.shared.set_cap(cap, until, fallback);
    }

    /// A handle that sets the limit without keeping the limiter alive (its items may hold it).
    pub(crate) fn limit_handle(&self) -> LimitHandle {
        LimitHandle(Arc::downgrade(&self.shared))
    }

    pub(crate) fn key_limit(&self, key: &Key) -> usize {
        self.shared.state_untimed().key_limit(key)
    }

    pub(crate) fn set_key_limit(&self, key: Key, limit: usize) {
        if self.shared.state_untimed().set_key_limit(key, limit) {
            self.shared.control.notify_one();
        }
    }

    pub(crate) fn key_metrics(&self, key: &Key) -> Option<KeyMetrics> {
        self.shared.state_untimed().key_metrics(key)
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let mut state = self.shared.state();
        // Read after the counters, so that a racing item is never counted as both finished
        // and queued.
        let submitted = self.shared.submitted.load(Ordering::Acquire);
        state.metrics(submitted, &self.shared.refusals)
    }

    /// Up to `n` keys with the most queued, most first.
    pub(crate) fn keys_most_queued(&self, n: usize) -> Vec<(Key, KeyMetrics)> {
        self.shared.state_untimed().keys_most_queued(n)
    }

    pub(crate) fn busy_ids(&self) -> Vec<WorkerId> {
        self.shared.state_untimed().busy_ids()
    }
}

/// An item a closed limiter refused (see [`Core::submit`]).
pub(crate) struct Refused<W: Work, C: Charge> {
    job: Job,
    cell: Arc<Cell<W, C>>,
}

impl<W: Work, C: Charge> Refused<W, C> {
    /// Resolves the item cancelled, as `spawn` on a closed limiter does; returns its cell, for
    /// its handle.
    pub(crate) fn cancel(self, core: &Core) -> Arc<Cell<W, C>> {
        cancel_unstarted(&core.shared, [self.job]);
        self.cell
    }

    /// Takes the work back, for a `try_` call to give it back: the item never was, but its
    /// refusal counts.
    pub(crate) fn into_work(self, core: &Core) -> W {
        core.shared.submitted.fetch_sub(1, Ordering::Relaxed);
        core.shared.refusals.count(false, Reason::Closed);
        let work = self.cell.take_unstarted();
        drop(self.job);
        work.expect("a refused item is still queued")
    }
}

/// Sets a limiter's limit from inside its own items (the adaptive limit's controller, which
/// every measured item holds): a weak reference, so that queued items holding it never keep
/// the limiter's state alive.
pub(crate) struct LimitHandle(std::sync::Weak<Shared>);

impl LimitHandle {
    /// [`Core::set_limit`] with no expiry (which lifts a cap); does nothing once the limiter is
    /// gone.
    pub(crate) fn set_limit(&self, limit: usize) {
        if let Some(shared) = self.0.upgrade() {
            shared.set_limit(limit, None);
        }
    }

    /// Sets the limit under the cap, which stays (see [`Core::set_cap`]); does nothing once
    /// the limiter is gone.
    pub(crate) fn set_uncapped(&self, limit: usize) {
        if let Some(shared) = self.0.upgrade() {
            shared.set_uncapped(limit);
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

/// Why a submission whose watch had ended already was refused.
fn ended_reason(timed_out: bool) -> Reason {
    match timed_out {
        true => Reason::QueueTimeout,
        false => Reason::Token,
    }
}
