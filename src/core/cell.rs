//! The cell behind each item: one allocation holds the queued work, then the running state, then
//! the result, plus the waker of its `JoinHandle`.
//!
//! The queue (as a [`Job`]) and the handle each hold a pointer to the cell. Cancelling a queued
//! item takes its work out of the cell and drops it at once; the queue entry left behind is a
//! pointer that admission skips.

use std::any::{Any, TypeId};
use std::future::Future;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;

use crate::error::JoinError;
use crate::key::Key;
use crate::sync::{lock, Arc, AtomicBool, AtomicU8, Mutex, Ordering};
use crate::worker_id::WorkerId;

/// What the core runs: made into a future on the worker ID the item starts under.
///
/// Every shape of work the limiter accepts is one of these: `spawn_with`'s closure is one as it
/// is, and each feature (blocking items, worker state, queue places, tracing) wraps the user's
/// work in a closure or a small type of its own. The core knows nothing else about the work.
pub(crate) trait Work: Send + 'static {
    type Output: Send + 'static;
    type Future: Future<Output = Self::Output> + Send + 'static;

    /// Makes the item's future. Called once, on the worker, when the item starts.
    fn start(self, worker: WorkerId) -> Self::Future;

    /// [`start`](Self::start), told the load the item was admitted under. Only work that
    /// measures itself (adaptive limits) overrides it; the rest keep this default.
    #[inline(always)]
    fn start_under(self, worker: WorkerId, load: Load) -> Self::Future
    where
        Self: Sized,
    {
        let _ = load;
        self.start(worker)
    }

    /// Polled by the core each time the item's future returns `Pending`: `Ready` when the item
    /// must end before its future does (its run timeout passed, or its token was cancelled).
    /// Work without such a limit keeps this default, which inlines to `Pending`: it costs those
    /// items nothing, not a field and not a branch.
    #[inline(always)]
    fn poll_cut(future: Pin<&mut Self::Future>, cx: &mut Context<'_>) -> Poll<Cut> {
        let _ = (future, cx);
        Poll::Pending
    }
}

/// What admission saw as it let an item start: the weight running, the item's own included, the
/// limit in force, and whether that limit was a cap below the limit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Load {
    pub(crate) running: usize,
    pub(crate) limit: usize,
    pub(crate) capped: bool,
}

/// Why a started item ends before its future does (see [`Work::poll_cut`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    TimedOut,
    Cancelled,
}

impl<C, Fut> Work for C
where
    C: FnOnce(WorkerId) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    type Output = Fut::Output;
    type Future = Fut;

    fn start(self, worker: WorkerId) -> Fut {
        self(worker)
    }
}

/// The properties of an item that the core acts on, fixed at submission and kept in its cell,
/// beside (not inside) the work: a wrapper around the work cannot lose them on the way through.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Props {
    /// The item's rank in a [`QueueOrder::Priority`](crate::QueueOrder::Priority) queue.
    pub(crate) priority: i32,
    /// Once started, the item runs to its end: `abort` and `shutdown` no longer cancel it (a
    /// closure on the blocking pool cannot be stopped, so its worker ID stays held until it
    /// returns).
    pub(crate) runs_to_end: bool,
}

/// What an item counts against the limits while it runs: its weight, and its key's share.
///
/// A type parameter of the cell rather than a field, so that an item without a key or a
/// weight (`()`) keeps the cell at its size: its one allocation per item stays in its malloc
/// size class.
pub(crate) trait Charge: Send + Sync + 'static {
    fn weight(&self) -> u32;
    fn key(&self) -> Option<&Key>;
}

/// The charge of a plain item: weight 1, no key.
impl Charge for () {
    #[inline]
    fn weight(&self) -> u32 {
        1
    }

    #[inline]
    fn key(&self) -> Option<&Key> {
        None
    }
}

/// The charge of an item given a key or a weight.
pub(crate) struct Weighed {
    pub(crate) weight: u32,
    pub(crate) key: Option<Key>,
}

impl Charge for Weighed {
    fn weight(&self) -> u32 {
        self.weight
    }

    fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }
}

/// How a started item ended, for the limiter's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Panicked,
    Cancelled,
    /// Ended by a time limit: its run timeout, or its queue deadline.
    TimedOut,
}

/// Why a cell was aborted, in its `aborted` byte: 0 while it is not.
const ABORT_CANCELLED: u8 = 1;
const ABORT_TIMED_OUT: u8 = 2;

/// A started item, ready for its worker to poll.
pub(crate) type Run = Pin<Box<dyn Started>>;

/// A started item's future, as its worker holds it: once it has ended, the worker keeps the
/// allocation and runs its next item in it when that item's cell is of the same type (the
/// common case: a service submits the same closure again and again). An item so costs one
/// allocation, its cell, rather than two.
pub(crate) trait Started: Future<Output = Outcome> + Send {
    /// The type of the cells it runs.
    fn cell_type(&self) -> TypeId;

    /// Runs the item of `cell` (of [`cell_type`](Self::cell_type), and ended before) next, on
    /// `worker` under `load`: takes its work out of the queue, or returns how it ended if it
    /// was cancelled (or timed out) while queued.
    fn refill(
        self: Pin<&mut Self>,
        cell: Arc<dyn Any + Send + Sync>,
        worker: WorkerId,
        load: Load,
    ) -> Result<(), Outcome>;

    /// Once the item has ended: its handle's waker, for the worker to wake once it has left
    /// the item's end for admission (a submitter woken by it then finds the worker parked).
    /// Woken on drop if it was never taken.
    fn take_join_waker(self: Pin<&mut Self>) -> Option<Waker>;
}

/// A submitted item as the work channel and the queue hold it.
///
/// Dropping a `Job` that never started cancels its item, so every path that loses a queued item
/// (shutdown, the runtime dropping the manager, a closed channel) resolves its handle.
pub(crate) struct Job(Option<Arc<dyn RawTask>>);

impl Job {
    /// Allocates the cell for one item; returns the queue's and the handle's pointers to it.
    pub(crate) fn new<W: Work, C: Charge>(
        work: W,
        props: Props,
        charge: C,
    ) -> (Job, Arc<Cell<W, C>>) {
        let cell = Arc::new(Cell {
            aborted: AtomicU8::new(0),
            detached: AtomicBool::new(false),
            runs_to_end: props.runs_to_end,
            priority: props.priority,
            charge,
            stage: Mutex::new(Stage::Queued(work, None)),
        });
        (Job(Some(cell.clone())), cell)
    }

    /// The queue's pointer to a cell made elsewhere (a lease request).
    pub(crate) fn from_task(task: Arc<dyn RawTask>) -> Job {
        Job(Some(task))
    }

    /// Moves the item to running on `worker`, admitted under `load`, or returns how it ended
    /// if it was cancelled (or timed out) while queued. `spare`: the worker's last item, ended,
    /// to run this one in if it is of the same type (taken then).
    pub(crate) fn start(
        mut self,
        worker: WorkerId,
        load: Load,
        spare: &mut Option<Run>,
    ) -> Result<Run, Outcome> {
        self.0.take().map_or(Err(Outcome::Cancelled), |raw| {
            raw.start(worker, load, spare)
        })
    }

    /// Whether the item left the queue by its deadline (for the counters).
    pub(crate) fn timed_out(&self) -> bool {
        self.0.as_ref().is_some_and(|raw| raw.timed_out())
    }

    /// Whether the item, once started, runs to its end whatever happens to its worker.
    pub(crate) fn runs_to_end(&self) -> bool {
        self.0.as_ref().is_some_and(|raw| raw.runs_to_end())
    }

    /// The item's rank in a priority queue.
    pub(crate) fn priority(&self) -> i32 {
        self.0.as_ref().map_or(0, |raw| raw.priority())
    }

    /// The item's key, if it has one.
    pub(crate) fn key(&self) -> Option<&Key> {
        self.0.as_ref().and_then(|raw| raw.charge().1)
    }

    /// The item's weight while it still waits to start; `None` once cancelled while queued.
    pub(crate) fn queued_weight(&self) -> Option<u32> {
        self.0.as_ref().and_then(|raw| raw.queued_weight())
    }

    /// Whether the item still waits to start (it was not cancelled while queued).
    pub(crate) fn is_queued(&self) -> bool {
        self.0.as_ref().is_some_and(|raw| raw.is_queued())
    }

    /// The item's cell, for `shutdown` to abort it once it runs.
    pub(crate) fn task(&self) -> Option<Arc<dyn RawTask>> {
        self.0.clone()
    }

    /// Whether the item is a lease request: admission gives it a worker ID, not a worker.
    pub(crate) fn is_lease(&self) -> bool {
        self.0.as_ref().is_some_and(|raw| raw.is_lease())
    }

    /// The item's cell, taken out of the job (which then cancels nothing as it drops).
    pub(crate) fn into_task(mut self) -> Option<Arc<dyn RawTask>> {
        self.0.take()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(raw) = self.0.take() {
            raw.drop_unstarted();
        }
    }
}

/// The type-erased face of a cell that the queue and the workers see.
pub(crate) trait RawTask: Send + Sync {
    /// See [`Job::start`].
    fn start(
        self: Arc<Self>,
        worker: WorkerId,
        load: Load,
        spare: &mut Option<Run>,
    ) -> Result<Run, Outcome>;
    fn cancel_queued(&self) -> bool;
    /// Resolves a queued item as timed out (its queue deadline passed); false if it had left
    /// the queue already.
    fn time_out_queued(&self) -> bool;
    /// Whether the item was aborted by a time limit.
    fn timed_out(&self) -> bool;
    fn is_queued(&self) -> bool;
    /// The item's weight, if it was not cancelled while queued: the one call admission makes
    /// on each queued entry.
    fn queued_weight(&self) -> Option<u32>;
    /// The item's weight and key, for the end of its run: one call.
    fn charge(&self) -> (u32, Option<&Key>);
    fn priority(&self) -> i32;
    fn runs_to_end(&self) -> bool;
    /// Cancels the item wherever it is (`shutdown`): queued, it is dropped now; running, its
    /// worker drops it at its next poll, unless it runs to its end.
    fn abort(&self);

    /// The limiter lets go of the item before it started (shutdown, a closed limiter, the
    /// manager gone with its runtime): resolves it as cancelled.
    fn drop_unstarted(&self) {
        self.cancel_queued();
    }

    /// Whether the item is a lease request (see `core/lease.rs`).
    fn is_lease(&self) -> bool {
        false
    }

    /// Grants a lease request worker ID `id`, admitted under `load`: returns its waiter's
    /// waker, or `None` if its waiter is gone (the request then takes nothing).
    fn grant(&self, id: WorkerId, load: Load) -> Option<Option<Waker>> {
        let _ = (id, load);
        unreachable!("only lease requests are granted")
    }
}

/// The face of a cell that a [`JoinHandle`](crate::JoinHandle) sees.
pub(crate) trait Join<T>: Abort {
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>>;
    /// The handle is gone: drop the waker, and the output when there is one.
    fn detach(&self);
    fn into_abort(self: Arc<Self>) -> Arc<dyn Abort>;
}

/// The face of a cell that an [`AbortHandle`](crate::AbortHandle) sees.
pub(crate) trait Abort: Send + Sync {
    fn abort(&self);
    fn is_finished(&self) -> bool;
}

pub(crate) struct Cell<W: Work, C: Charge = ()> {
    /// Set by `abort`, of a running item or of a queued one. Read without the lock on every poll
    /// of the item (so an item that finishes in one poll never takes the lock for it) and by
    /// admission (to skip an item cancelled while queued).
    /// 0, or why: `ABORT_CANCELLED`, `ABORT_TIMED_OUT` (a byte, as the flag it was, so the cell
    /// keeps its size).
    aborted: AtomicU8,
    /// The `JoinHandle` was dropped: nobody will take the output. Only read and written under
    /// the lock; an atomic beside it rather than a field in it, because it fits in the padding
    /// beside `aborted` and keeps the cell (one allocation per queued item) a size class smaller.
    detached: AtomicBool,
    /// The item's [`Props`], stored field by field so that they share the flags' padding.
    runs_to_end: bool,
    priority: i32,
    charge: C,
    stage: Mutex<Stage<W, W::Output>>,
}

/// The `JoinHandle`'s waker lives in the stages that need one (an item still queued or
/// running), not beside them: that keeps a returning item's cell a malloc size class smaller.
enum Stage<W, T> {
    /// The work, and the handle's waker.
    Queued(W, Option<Waker>),
    /// Running, or its unstarted work being dropped: not finished until that drop returns, as a
    /// tokio task is not finished until its future's destructor has run.
    Running {
        /// The worker's waker, so that `abort` can wake the worker.
        waker: Option<Waker>,
        join: Option<Waker>,
    },
    Finished(Result<T, JoinError>),
    /// The output was taken by the handle, or dropped because the handle was gone.
    Consumed,
}

impl<W, T> Stage<W, T> {
    /// Where the handle's waker goes while the item is queued or running.
    fn join_slot(&mut self) -> Option<&mut Option<Waker>> {
        match self {
            Stage::Queued(_, join) | Stage::Running { join, .. } => Some(join),
            Stage::Finished(_) | Stage::Consumed => None,
        }
    }

    fn take_join_waker(&mut self) -> Option<Waker> {
        self.join_slot().and_then(Option::take)
    }

    /// Takes the work of a queued item and moves it to running (keeping the handle's waker);
    /// `None` if it is no longer queued. The one way out of the queue, to start or to cancel.
    fn leave_queue(&mut self) -> Option<W> {
        let Stage::Queued(_, join) = self else {
            return None;
        };
        let join = join.take();
        match mem::replace(self, Stage::Running { waker: None, join }) {
            Stage::Queued(work, _) => Some(work),
            _ => unreachable!("checked queued above"),
        }
    }
}

/// Runs `f` and swallows a panic from it: used for dropping user values (work, outputs, panic
/// payloads) on the limiter's own tasks, which a user destructor must not bring down.
pub(crate) fn drop_quietly(f: impl FnOnce()) {
    let _ = panic::catch_unwind(AssertUnwindSafe(f));
}

impl<W: Work, C: Charge> Cell<W, C> {
    /// Stores the item's result and wakes its handle.
    fn finish(&self, result: Result<W::Output, JoinError>) {
        if let Some(waker) = self.publish(result) {
            waker.wake();
        }
    }

    /// Stores the item's result; returns its handle's waker, for the caller to wake.
    fn publish(&self, result: Result<W::Output, JoinError>) -> Option<Waker> {
        let mut stage = lock(&self.stage);
        debug_assert!(matches!(*stage, Stage::Running { .. }));
        if self.detached.load(Ordering::Relaxed) {
            *stage = Stage::Consumed;
            drop(stage);
            drop_quietly(|| drop(result));
            None
        } else {
            let waker = stage.take_join_waker();
            *stage = Stage::Finished(result);
            waker
        }
    }

    fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire) != 0
    }

    /// Stores the worker's waker so that `abort` can reach the pending item; returns true if
    /// the item was aborted meanwhile.
    ///
    /// `abort` sets the flag and takes the waker under the lock. If its lock came first, the
    /// flag is visible after ours; if ours came first, it finds and wakes this waker. Either
    /// way no abort is missed.
    fn register_worker(&self, cx: &mut Context<'_>) -> bool {
        let mut stage = lock(&self.stage);
        if let Stage::Running { waker, .. } = &mut *stage {
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        } else {
            unreachable!("a running item's cell is always in the running stage");
        }
        drop(stage);
        self.is_aborted()
    }

    /// Resolves a queued item as cancelled. Its work is dropped before the handle resolves, and
    /// now, not when the queue reaches its entry. Returns false if it had already started.
    fn cancel_if_queued(&self, reason: u8) -> bool {
        let mut stage = lock(&self.stage);
        let Some(work) = stage.leave_queue() else {
            return false;
        };
        // Tells admission, without the lock, to skip the entry left in the queue (and why, for
        // its counters). Only the one caller that took the work out of the queue stores it.
        self.aborted.store(reason, Ordering::Release);
        drop(stage);
        drop_quietly(|| drop(work));
        self.finish(Err(match reason {
            ABORT_TIMED_OUT => JoinError::timed_out(None),
            _ => JoinError::cancelled(None),
        }));
        true
    }

    /// Takes the work out of the queue to start it, or says how the item ended if it was
    /// cancelled (or timed out) while queued.
    fn leave_queue(&self) -> Result<W, Outcome> {
        lock(&self.stage)
            .leave_queue()
            .ok_or(match self.timed_out() {
                true => Outcome::TimedOut,
                false => Outcome::Cancelled,
            })
    }

    /// Takes back the work of an item that never reached the queue, for a refused `try_` call to
    /// give it back. Returns `None` if the item is no longer queued.
    pub(crate) fn take_unstarted(&self) -> Option<W> {
        let mut stage = lock(&self.stage);
        match mem::replace(&mut *stage, Stage::Consumed) {
            Stage::Queued(work, _) => Some(work),
            other => {
                *stage = other;
                None
            }
        }
    }
}

impl<W: Work, C: Charge> Abort for Cell<W, C> {
    fn abort(&self) {
        let mut stage = lock(&self.stage);
        match &mut *stage {
            Stage::Queued(..) => {
                drop(stage);
                self.cancel_if_queued(ABORT_CANCELLED);
            }
            Stage::Running { waker, .. } if !self.runs_to_end => {
                self.aborted.store(ABORT_CANCELLED, Ordering::Release);
                let waker = waker.take();
                drop(stage);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            Stage::Running { .. } | Stage::Finished(_) | Stage::Consumed => {}
        }
    }

    fn is_finished(&self) -> bool {
        matches!(*lock(&self.stage), Stage::Finished(_) | Stage::Consumed)
    }
}

impl<W: Work, C: Charge> Join<W::Output> for Cell<W, C> {
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<W::Output, JoinError>> {
        let mut stage = lock(&self.stage);
        match mem::replace(&mut *stage, Stage::Consumed) {
            Stage::Finished(result) => Poll::Ready(result),
            Stage::Consumed => {
                drop(stage);
                panic!("`JoinHandle` polled after completion");
            }
            pending => {
                *stage = pending;
                if let Some(join) = stage.join_slot() {
                    if !join.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *join = Some(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        }
    }

    fn detach(&self) {
        let mut stage = lock(&self.stage);
        self.detached.store(true, Ordering::Relaxed);
        let waker = stage.take_join_waker();
        let output = match *stage {
            Stage::Finished(_) => Some(mem::replace(&mut *stage, Stage::Consumed)),
            _ => None,
        };
        drop(stage);
        drop(waker);
        if let Some(output) = output {
            drop_quietly(|| drop(output));
        }
    }

    fn into_abort(self: Arc<Self>) -> Arc<dyn Abort> {
        self
    }
}

impl<W: Work, C: Charge> RawTask for Cell<W, C> {
    fn start(
        self: Arc<Self>,
        worker: WorkerId,
        load: Load,
        spare: &mut Option<Run>,
    ) -> Result<Run, Outcome> {
        if let Some(mut run) = spare.take_if(|run| run.cell_type() == TypeId::of::<Self>()) {
            return match run.as_mut().refill(self, worker, load) {
                Ok(()) => Ok(run),
                Err(outcome) => {
                    *spare = Some(run);
                    Err(outcome)
                }
            };
        }
        let work = self.leave_queue()?;
        Ok(Box::pin(RunItem {
            cell: Some(self),
            worker,
            load,
            work: Some(work),
            future: None,
            finished: false,
            join: None,
        }))
    }

    fn cancel_queued(&self) -> bool {
        self.cancel_if_queued(ABORT_CANCELLED)
    }

    fn time_out_queued(&self) -> bool {
        self.cancel_if_queued(ABORT_TIMED_OUT)
    }

    fn timed_out(&self) -> bool {
        self.aborted.load(Ordering::Acquire) == ABORT_TIMED_OUT
    }

    fn is_queued(&self) -> bool {
        // Without the lock: admission skips items cancelled while queued on this hint, and an
        // item cancelled just after it is caught by `start`, which finds it no longer queued.
        !self.is_aborted()
    }

    fn queued_weight(&self) -> Option<u32> {
        (!self.is_aborted()).then(|| self.charge.weight())
    }

    fn charge(&self) -> (u32, Option<&Key>) {
        (self.charge.weight(), self.charge.key())
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn runs_to_end(&self) -> bool {
        self.runs_to_end
    }

    fn abort(&self) {
        Abort::abort(self);
    }
}

pin_project! {
    /// A started item, as its worker polls it: makes the future from the work on the first
    /// poll, polls it with abort and panic protection, and stores the result in the cell. One
    /// hand-written future rather than layers of adapters: each poll of a yielding item went
    /// through all of them.
    ///
    /// Dropped before it finished (the runtime shutting down), it resolves the handle as
    /// cancelled.
    struct RunItem<W: Work, C: Charge> {
        // Let go of as the item ends, so that the handle, not the worker, frees the cell
        // (the allocator's cache of the thread that made it).
        cell: Option<Arc<Cell<W, C>>>,
        worker: WorkerId,
        load: Load,
        work: Option<W>,
        #[pin]
        future: Option<W::Future>,
        finished: bool,
        // The handle's waker once the item has ended, until the worker wakes it.
        join: Option<Waker>,
    }

    impl<W: Work, C: Charge> PinnedDrop for RunItem<W, C> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if !*this.finished {
                drop_quietly(|| {
                    this.future.set(None);
                    drop(this.work.take());
                });
                if let Some(cell) = this.cell.take() {
                    cell.finish(Err(JoinError::cancelled(Some(*this.worker))));
                }
            }
            if let Some(waker) = this.join.take() {
                waker.wake();
            }
        }
    }
}

/// Drops the future it guards if a panic unwinds through its poll, so that the future's
/// destructors run during the unwind (they see `std::thread::panicking()`), as tokio's do.
struct DropOnUnwind<'a, F>(Pin<&'a mut Option<F>>);

impl<F> Drop for DropOnUnwind<'_, F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.set(None);
        }
    }
}

impl<W: Work, C: Charge> Future for RunItem<W, C> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut this = self.project();
        let worker = *this.worker;
        let cell = this
            .cell
            .as_ref()
            .expect("`RunItem` polled after it finished");
        let runs_to_end = cell.runs_to_end;
        // `Err`: aborted, cut short or timed out.
        let result = 'result: {
            if !runs_to_end && cell.is_aborted() {
                break 'result Err(Cut::Cancelled);
            }
            if let Some(work) = this.work.take() {
                let load = *this.load;
                match panic::catch_unwind(AssertUnwindSafe(|| work.start_under(worker, load))) {
                    Ok(future) => this.future.set(Some(future)),
                    Err(payload) => break 'result Ok(Err(payload)),
                }
            }
            let polled = panic::catch_unwind(AssertUnwindSafe(|| {
                let mut guard = DropOnUnwind(this.future.as_mut());
                guard
                    .0
                    .as_mut()
                    .as_pin_mut()
                    .expect("`RunItem` polled after it finished")
                    .poll(cx)
            }));
            match polled {
                Ok(Poll::Ready(value)) => Ok(Ok(value)),
                Err(payload) => Ok(Err(payload)),
                Ok(Poll::Pending) if runs_to_end => return Poll::Pending,
                Ok(Poll::Pending) => {
                    // The item's own limits (a run timeout, a token), after its future: a
                    // value ready at the deadline wins, as with `tokio::time::timeout`.
                    // Written so that, for work that keeps the default `poll_cut`, the whole
                    // block compiles away.
                    if let Some(future) = this.future.as_mut().as_pin_mut() {
                        if let Poll::Ready(cut) = W::poll_cut(future, cx) {
                            break 'result Err(cut);
                        }
                    }
                    // `abort` sets its flag, then wakes the waker registered here; check the
                    // flag once more after registering so that an abort in between is not
                    // missed.
                    if !cell.register_worker(cx) {
                        return Poll::Pending;
                    }
                    Err(Cut::Cancelled)
                }
            }
        };
        *this.finished = true;
        // The future (or the work, for an item aborted before its first poll) goes before the
        // result is published: the allocation outlives the item, kept for the worker's next.
        // A destructor that panics makes a completed item a panicked one, as it would inside
        // the item.
        let dropped = panic::catch_unwind(AssertUnwindSafe(|| {
            this.future.set(None);
            drop(this.work.take());
        }));
        let (result, outcome) = match (result, dropped) {
            (Ok(Ok(_)), Err(payload)) | (Ok(Err(payload)), _) => {
                (Err(JoinError::panic(worker, payload)), Outcome::Panicked)
            }
            (Ok(Ok(value)), Ok(())) => (Ok(value), Outcome::Completed),
            (Err(Cut::Cancelled), _) => {
                (Err(JoinError::cancelled(Some(worker))), Outcome::Cancelled)
            }
            (Err(Cut::TimedOut), _) => (Err(JoinError::timed_out(Some(worker))), Outcome::TimedOut),
        };
        *this.join = cell.publish(result);
        *this.cell = None;
        Poll::Ready(outcome)
    }
}

impl<W: Work, C: Charge> Started for RunItem<W, C> {
    fn cell_type(&self) -> TypeId {
        TypeId::of::<Cell<W, C>>()
    }

    fn refill(
        self: Pin<&mut Self>,
        cell: Arc<dyn Any + Send + Sync>,
        worker: WorkerId,
        load: Load,
    ) -> Result<(), Outcome> {
        let this = self.project();
        debug_assert!(*this.finished, "a running item's allocation is refilled");
        debug_assert!(this.join.is_none(), "a handle left unwoken");
        let cell: Arc<Cell<W, C>> = cell.downcast().expect("refilled with a cell of its type");
        *this.work = Some(cell.leave_queue()?);
        *this.cell = Some(cell);
        *this.worker = worker;
        *this.load = load;
        *this.finished = false;
        Ok(())
    }

    fn take_join_waker(self: Pin<&mut Self>) -> Option<Waker> {
        self.project().join.take()
    }
}
