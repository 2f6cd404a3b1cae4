//! The cell behind each item: one allocation holds the queued work, then the running state, then
//! the result, plus the waker of its `JoinHandle`.
//!
//! The queue (as a [`Job`]) and the handle each hold a pointer to the cell. Cancelling a queued
//! item takes its work out of the cell and drops it at once; the queue entry left behind is a
//! pointer that the next worker to reach it skips.

use std::future::Future;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use pin_project_lite::pin_project;
use tracing::Span;

use crate::state::WorkerState;
use crate::sync::{lock, Arc, AtomicBool, Mutex, Ordering};
use crate::{JoinError, WorkerId};

/// A started item, ready for its worker to run.
pub(crate) enum Run<'a> {
    /// A future for the worker to poll; it may borrow the worker's state. The flag says it
    /// does, so that its panic poisons the worker's state.
    Async(Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>, bool),
    /// A closure for the runtime's blocking pool, given the worker's state there.
    Blocking(Box<dyn BlockingRun>),
}

/// A started blocking item. Dropping it without running it resolves its handle as cancelled.
pub(crate) trait BlockingRun: Send {
    fn run(self: Box<Self>, state: &mut WorkerState) -> Outcome;
}

/// What a queued item holds until it starts: the user's work, in one of the shapes the limiter
/// accepts (a closure making a future, a future, a blocking closure, with or without the
/// worker's state), plus any options it was submitted with.
pub(crate) trait Starter: Send + 'static {
    type Output: Send + 'static;
    /// The item's future, which may borrow the worker's state for as long as it runs.
    type Future<'a>: Future<Output = Self::Output> + Send + 'a;
    /// The item runs on the blocking pool through `run_blocking`, never through `start`.
    const BLOCKING: bool = false;
    /// The item borrows the worker's state, which a panic of the item then drops. A constant,
    /// so that items without state pay nothing for it.
    const USES_STATE: bool = false;

    /// The item's rank in a [`QueueOrder::Priority`](crate::QueueOrder::Priority) queue.
    fn priority(&self) -> i32 {
        0
    }

    /// The item has left the queue to start: gives back its place in the queue, if it holds one.
    fn leave_queue(&mut self) {}

    /// Makes the item's future, on `worker`. Called only if `BLOCKING` is false.
    fn start(self, worker: WorkerId, state: &mut WorkerState) -> Self::Future<'_>;

    /// Runs the item to its end on a blocking-pool thread. Called only if `BLOCKING` is true.
    fn run_blocking(self, worker: WorkerId, state: &mut WorkerState) -> Self::Output;

    /// The submitter's span and the submission time, if a subscriber listened then.
    fn trace(&self) -> Option<&Trace> {
        None
    }
}

/// An item submitted while a subscriber listened: its work plus the span it was submitted in.
/// A wrapper rather than a field of every cell, so that without a subscriber a queued item
/// carries nothing for tracing.
pub(crate) struct Traced<S> {
    starter: S,
    trace: Trace,
}

impl<S: Starter> Starter for Traced<S> {
    type Output = S::Output;
    type Future<'a> = S::Future<'a>;
    const BLOCKING: bool = S::BLOCKING;

    fn priority(&self) -> i32 {
        self.starter.priority()
    }

    fn leave_queue(&mut self) {
        self.starter.leave_queue();
    }

    fn start(self, worker: WorkerId, state: &mut WorkerState) -> Self::Future<'_> {
        self.starter.start(worker, state)
    }

    fn run_blocking(self, worker: WorkerId, state: &mut WorkerState) -> Self::Output {
        self.starter.run_blocking(worker, state)
    }

    fn trace(&self) -> Option<&Trace> {
        Some(&self.trace)
    }
}

/// The handle's side of a new item's cell, whichever way it was wrapped.
pub(crate) enum NewCell<S: Starter> {
    Plain(Arc<Cell<S, S::Output>>),
    Traced(Arc<Cell<Traced<S>, S::Output>>),
}

impl<S: Starter> NewCell<S> {
    pub(crate) fn into_join(self) -> Arc<dyn Join<S::Output>> {
        match self {
            NewCell::Plain(cell) => cell,
            NewCell::Traced(cell) => cell,
        }
    }

    /// Takes back the work of an item that never reached the queue, for a refused `try_` call
    /// to give it back. Returns `None` if the item is no longer queued.
    pub(crate) fn take_unstarted(&self) -> Option<S> {
        match self {
            NewCell::Plain(cell) => cell.take_unstarted(),
            NewCell::Traced(cell) => cell.take_unstarted().map(|traced| traced.starter),
        }
    }
}

/// `spawn_with`'s closures, and through them `spawn`'s futures.
impl<C, Fut> Starter for C
where
    C: FnOnce(WorkerId) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    type Output = Fut::Output;
    type Future<'a> = Fut;

    fn start(self, worker: WorkerId, _: &mut WorkerState) -> Fut {
        self(worker)
    }

    fn run_blocking(self, _: WorkerId, _: &mut WorkerState) -> Fut::Output {
        unreachable!("an async item never runs on the blocking pool")
    }
}

/// How a started item ended, for the limiter's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Panicked,
    Cancelled,
}

/// A submitted item as the work channel and the queue hold it.
///
/// Dropping a `Job` that never started cancels its item, so every path that loses a queued item
/// (shutdown, the runtime dropping the manager, a closed channel) resolves its handle.
pub(crate) struct Job(Option<Arc<dyn RawTask>>);

impl Job {
    /// Allocates the cell for one item; returns the queue's and the handle's pointers to it.
    pub(crate) fn new<S: Starter>(starter: S) -> (Job, NewCell<S>) {
        if tracing::enabled!(target: "task_limiter", tracing::Level::DEBUG) {
            let trace = Trace {
                parent: Span::current(),
                queued_at: Instant::now(),
            };
            let (job, cell) = Job::with_cell(Traced { starter, trace });
            (job, NewCell::Traced(cell))
        } else {
            let (job, cell) = Job::with_cell(starter);
            (job, NewCell::Plain(cell))
        }
    }

    fn with_cell<S: Starter>(starter: S) -> (Job, Arc<Cell<S, S::Output>>) {
        let cell = Arc::new(Cell {
            aborted: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            stage: Mutex::new(Stage::Queued(starter, None)),
        });
        (Job(Some(cell.clone())), cell)
    }

    /// Moves the item to running on `worker`, or returns `None` if it was cancelled while queued.
    /// An async item borrows `state` (the worker's) while it runs.
    pub(crate) fn start<'a>(
        mut self,
        worker: WorkerId,
        limiter: &str,
        state: &'a mut WorkerState,
    ) -> Option<Run<'a>> {
        self.0
            .take()
            .and_then(|raw| raw.start(worker, limiter, state))
    }

    /// The item's rank in a priority queue; 0 once it has been cancelled.
    pub(crate) fn priority(&self) -> i32 {
        self.0.as_ref().map_or(0, |raw| raw.priority())
    }

    /// Cancels the item if it has not started; returns true if this call cancelled it.
    pub(crate) fn cancel(mut self) -> bool {
        self.0.take().is_some_and(|raw| raw.cancel_queued())
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(raw) = self.0.take() {
            raw.cancel_queued();
        }
    }
}

/// The type-erased face of a cell that the queue and the workers see.
trait RawTask: Send + Sync {
    fn start<'a>(
        self: Arc<Self>,
        worker: WorkerId,
        limiter: &str,
        state: &'a mut WorkerState,
    ) -> Option<Run<'a>>;
    fn cancel_queued(&self) -> bool;
    fn priority(&self) -> i32;
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

/// The caller's span and the submission time, kept only while a subscriber listens.
pub(crate) struct Trace {
    parent: Span,
    queued_at: Instant,
}

pub(crate) struct Cell<S, T> {
    /// Set by `abort` while the item runs. Read without the lock on every poll of the item, so
    /// an item that finishes in one poll never takes the lock for it.
    aborted: AtomicBool,
    /// The `JoinHandle` was dropped: nobody will take the output. Only read and written under
    /// the lock; an atomic beside it rather than a field in it, because it fits in the padding
    /// beside `aborted` and keeps the cell (one allocation per queued item) a size class smaller.
    detached: AtomicBool,
    stage: Mutex<Stage<S, T>>,
}

/// The `JoinHandle`'s waker lives in the stages that need one (an item still queued or
/// running), not beside them: that keeps a returning item's cell a malloc size class smaller.
enum Stage<S, T> {
    /// The work, and the handle's waker.
    Queued(S, Option<Waker>),
    Running {
        /// The worker's waker, so that `abort` can wake the worker.
        waker: Option<Waker>,
        join: Option<Waker>,
    },
    Finished(Result<T, JoinError>),
    /// The output was taken by the handle, or dropped because the handle was gone.
    Consumed,
}

impl<S, T> Stage<S, T> {
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
}

/// Runs `f` and swallows a panic from it: used for dropping user values (work, outputs, panic
/// payloads) on the limiter's own tasks, which a user destructor must not bring down.
fn drop_quietly(f: impl FnOnce()) {
    let _ = panic::catch_unwind(AssertUnwindSafe(f));
}

impl<S, T> Cell<S, T> {
    /// Stores the item's result, wakes its handle, and tells the worker how it ended.
    fn finish(&self, result: Result<T, JoinError>) -> Outcome {
        let outcome = match &result {
            Ok(_) => Outcome::Completed,
            Err(err) if err.is_panic() => Outcome::Panicked,
            Err(_) => Outcome::Cancelled,
        };
        let mut state = lock(&self.stage);
        debug_assert!(matches!(*state, Stage::Running { .. }));
        if self.detached.load(Ordering::Relaxed) {
            *state = Stage::Consumed;
            drop(state);
            drop_quietly(|| drop(result));
        } else {
            let waker = state.take_join_waker();
            *state = Stage::Finished(result);
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        outcome
    }

    fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Stores the worker's waker so that `abort` can reach the pending item; returns true if
    /// the item was aborted meanwhile.
    ///
    /// `abort` sets the flag and takes the waker under the lock. If its lock came first, the
    /// flag is visible after ours; if ours came first, it finds and wakes this waker. Either
    /// way no abort is missed.
    fn register_worker(&self, cx: &mut Context<'_>) -> bool {
        let mut state = lock(&self.stage);
        match &mut *state {
            Stage::Running { waker, .. } => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
            }
            _ => unreachable!("a running item's cell is always in the running stage"),
        }
        drop(state);
        self.is_aborted()
    }
}

impl<S: Starter> Abort for Cell<S, S::Output> {
    fn abort(&self) {
        let mut state = lock(&self.stage);
        match &mut *state {
            Stage::Queued(..) => {
                drop(state);
                self.cancel_if_queued();
            }
            Stage::Running { waker, .. } => {
                self.aborted.store(true, Ordering::Release);
                let waker = waker.take();
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            Stage::Finished(_) | Stage::Consumed => {}
        }
    }

    fn is_finished(&self) -> bool {
        matches!(*lock(&self.stage), Stage::Finished(_) | Stage::Consumed)
    }
}

impl<S: Starter> Join<S::Output> for Cell<S, S::Output> {
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<S::Output, JoinError>> {
        let mut state = lock(&self.stage);
        match mem::replace(&mut *state, Stage::Consumed) {
            Stage::Finished(result) => Poll::Ready(result),
            Stage::Consumed => {
                drop(state);
                panic!("`JoinHandle` polled after completion");
            }
            pending => {
                *state = pending;
                if let Some(join) = state.join_slot() {
                    if !join.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *join = Some(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        }
    }

    fn detach(&self) {
        let mut state = lock(&self.stage);
        self.detached.store(true, Ordering::Relaxed);
        let waker = state.take_join_waker();
        let output = match *state {
            Stage::Finished(_) => Some(mem::replace(&mut *state, Stage::Consumed)),
            _ => None,
        };
        drop(state);
        drop(waker);
        if let Some(output) = output {
            drop_quietly(|| drop(output));
        }
    }

    fn into_abort(self: Arc<Self>) -> Arc<dyn Abort> {
        self
    }
}

impl<S: Starter> RawTask for Cell<S, S::Output> {
    fn start<'a>(
        self: Arc<Self>,
        worker: WorkerId,
        limiter: &str,
        worker_state: &'a mut WorkerState,
    ) -> Option<Run<'a>> {
        let mut state = lock(&self.stage);
        if !matches!(*state, Stage::Queued(..)) {
            return None;
        }
        let Stage::Queued(mut starter, join) = mem::replace(&mut *state, Stage::Consumed) else {
            unreachable!()
        };
        *state = Stage::Running { waker: None, join };
        drop(state);
        starter.leave_queue();

        let trace = starter.trace();
        let span = match trace {
            Some(trace) => tracing::debug_span!(
                target: "task_limiter",
                parent: &trace.parent,
                "task_limiter.item",
                limiter = limiter,
                worker.id = worker.0,
            ),
            None => Span::none(),
        };
        let queued_at = trace.map(|trace| trace.queued_at);
        if S::BLOCKING {
            return Some(Run::Blocking(Box::new(BlockingItem {
                cell: self,
                worker,
                starter: Some(starter),
                span,
                queued_at,
            })));
        }
        let run = RunItem {
            cell: self,
            worker,
            start: Some((starter, worker_state)),
            work: None,
            queued_at,
            started_at: None,
            finished: false,
        };
        let run: Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> = match span.is_none() {
            // No subscriber listens: spare every poll the span's enter and exit.
            true => Box::pin(run),
            false => Box::pin(tracing::Instrument::instrument(run, span)),
        };
        Some(Run::Async(run, S::USES_STATE))
    }

    fn cancel_queued(&self) -> bool {
        self.cancel_if_queued()
    }

    fn priority(&self) -> i32 {
        match &*lock(&self.stage) {
            Stage::Queued(starter, _) => starter.priority(),
            _ => 0,
        }
    }
}

impl<S: Starter> Cell<S, S::Output> {
    /// Resolves a queued item as cancelled and drops its work now, not when the queue reaches
    /// its slot. Returns false if it had already started or ended.
    fn cancel_if_queued(&self) -> bool {
        let mut state = lock(&self.stage);
        if !matches!(*state, Stage::Queued(..)) {
            return false;
        }
        let resolved = match self.detached.load(Ordering::Relaxed) {
            true => Stage::Consumed,
            false => Stage::Finished(Err(JoinError::cancelled(None))),
        };
        let waker = state.take_join_waker();
        let queued = mem::replace(&mut *state, resolved);
        drop(state);
        if let Stage::Queued(starter, _) = &queued {
            if let Some(trace) = starter.trace() {
                // It never got a span of its own: tell it in the span it was submitted from.
                let waited_us = trace.queued_at.elapsed().as_micros() as u64;
                tracing::debug!(target: "task_limiter", parent: &trace.parent, waited_us, "item cancelled");
            }
        }
        // The work goes now, not when the queue reaches its slot.
        drop_quietly(|| drop(queued));
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Takes back the work of an item that never reached the queue, for a refused `try_` call to
    /// give it back. Returns `None` if the item is no longer queued.
    pub(crate) fn take_unstarted(&self) -> Option<S> {
        let mut state = lock(&self.stage);
        match mem::replace(&mut *state, Stage::Consumed) {
            Stage::Queued(starter, _) => Some(starter),
            other => {
                *state = other;
                None
            }
        }
    }
}

/// A started blocking item, on its way to a blocking-pool thread.
struct BlockingItem<S: Starter> {
    cell: Arc<Cell<S, S::Output>>,
    worker: WorkerId,
    /// Taken when the item runs; still here if the blocking pool drops it unrun (runtime
    /// shutdown), and then `Drop` resolves the handle as cancelled.
    starter: Option<S>,
    span: Span,
    queued_at: Option<Instant>,
}

impl<S: Starter> BlockingRun for BlockingItem<S> {
    fn run(mut self: Box<Self>, worker_state: &mut WorkerState) -> Outcome {
        let starter = self.starter.take().expect("a blocking item runs once");
        let _span = self.span.enter();
        let started_at = self.queued_at.map(|queued_at| {
            tracing::trace!(target: "task_limiter", waited_us = queued_at.elapsed().as_micros() as u64, "item started");
            Instant::now()
        });
        let worker = self.worker;
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            starter.run_blocking(worker, &mut *worker_state)
        }));
        if S::USES_STATE && result.is_err() {
            worker_state.poison();
        }
        let outcome = self
            .cell
            .finish(result.map_err(|payload| JoinError::panic(worker, payload)));
        if let Some(started_at) = started_at {
            let ran_us = started_at.elapsed().as_micros() as u64;
            match outcome {
                Outcome::Completed => {
                    tracing::trace!(target: "task_limiter", ran_us, "item finished")
                }
                _ => tracing::debug!(target: "task_limiter", ran_us, "item panicked"),
            }
        }
        outcome
    }
}

impl<S: Starter> Drop for BlockingItem<S> {
    fn drop(&mut self) {
        if let Some(starter) = self.starter.take() {
            drop_quietly(|| drop(starter));
            self.cell
                .finish(Err(JoinError::cancelled(Some(self.worker))));
        }
    }
}

pin_project! {
    /// A started item, as its worker polls it: makes the work from its starter on the first
    /// poll, polls it with abort and panic protection, and stores the result in the cell. One
    /// hand-written future rather than layers of adapters: each poll of a yielding item went
    /// through all of them.
    ///
    /// Dropped before it finished (`shutdown` aborting its worker, or the runtime shutting
    /// down), it resolves the handle as cancelled.
    struct RunItem<'a, S: Starter> {
        cell: Arc<Cell<S, S::Output>>,
        worker: WorkerId,
        start: Option<(S, &'a mut WorkerState)>,
        #[pin]
        work: Option<S::Future<'a>>,
        // Set while a subscriber listens, for the events' durations.
        queued_at: Option<Instant>,
        started_at: Option<Instant>,
        finished: bool,
    }

    impl<'a, S: Starter> PinnedDrop for RunItem<'a, S> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if !*this.finished {
                drop_quietly(|| this.work.set(None));
                this.cell.finish(Err(JoinError::cancelled(Some(*this.worker))));
                if let Some(started_at) = this.started_at {
                    let ran_us = started_at.elapsed().as_micros() as u64;
                    tracing::debug!(target: "task_limiter", ran_us, "item cancelled");
                }
            }
        }
    }
}

impl<S: Starter> Future for RunItem<'_, S> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut this = self.project();
        let worker = *this.worker;
        // `None`: aborted.
        let result = 'result: {
            if this.cell.is_aborted() {
                break 'result None;
            }
            if let Some((starter, state)) = this.start.take() {
                if let Some(queued_at) = this.queued_at {
                    let waited_us = queued_at.elapsed().as_micros() as u64;
                    tracing::trace!(target: "task_limiter", waited_us, "item started");
                    *this.started_at = Some(Instant::now());
                }
                match panic::catch_unwind(AssertUnwindSafe(|| starter.start(worker, state))) {
                    Ok(work) => this.work.set(Some(work)),
                    Err(payload) => break 'result Some(Err(payload)),
                }
            }
            let work = this
                .work
                .as_mut()
                .as_pin_mut()
                .expect("`RunItem` polled after it finished");
            match panic::catch_unwind(AssertUnwindSafe(|| work.poll(cx))) {
                Ok(Poll::Ready(value)) => Some(Ok(value)),
                Err(payload) => Some(Err(payload)),
                // `abort` sets its flag, then wakes the waker registered here; check the flag
                // once more after registering so that an abort in between is not missed.
                Ok(Poll::Pending) if !this.cell.register_worker(cx) => return Poll::Pending,
                Ok(Poll::Pending) => None,
            }
        };
        *this.finished = true;
        // The work goes before the result is published. A destructor that panics makes a
        // completed item a panicked one, as it would inside the item.
        let dropped = panic::catch_unwind(AssertUnwindSafe(|| this.work.set(None)));
        let result = match (result, dropped) {
            (Some(Ok(_)), Err(payload)) => Err(JoinError::panic(worker, payload)),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (Some(Err(payload)), _) => Err(JoinError::panic(worker, payload)),
            (None, _) => Err(JoinError::cancelled(Some(worker))),
        };
        let outcome = this.cell.finish(result);
        if let Some(started_at) = this.started_at {
            let ran_us = started_at.elapsed().as_micros() as u64;
            match outcome {
                Outcome::Completed => {
                    tracing::trace!(target: "task_limiter", ran_us, "item finished")
                }
                Outcome::Panicked => {
                    tracing::debug!(target: "task_limiter", ran_us, "item panicked")
                }
                Outcome::Cancelled => {
                    tracing::debug!(target: "task_limiter", ran_us, "item cancelled")
                }
            }
        }
        Poll::Ready(outcome)
    }
}
