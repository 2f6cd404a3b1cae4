//! The manager task and the worker tasks it spawns.
//!
//! The manager is the one owner of the free worker IDs and the one place that spawns workers.
//! It `select!`s over the done channel (worker IDs coming back), control wake-ups (close,
//! shutdown, `set_limit`) and the work channel (drained in batches into the shared queue), and
//! after every wake-up starts a worker for each free ID while the queue has work.
//!
//! A worker runs its first item, then keeps taking the next queued item itself (worker reuse)
//! while its ID is below the limit and the limit has room; only when it cannot does it exit,
//! handing its ID back on the done channel. The manager looks at the queue again on every ID
//! that comes back, so no item is stranded between "a worker saw the queue empty" and "the
//! manager queued more".

use std::collections::BTreeSet;

use futures_util::FutureExt;

use crate::limiter::Shared;
use crate::state::WorkerState;
use crate::sync::rt::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use crate::sync::rt::task::AbortHandle;
use crate::sync::{lock, recv_batch, rt, Arc, Ordering};
use crate::task::{BlockingRun, Job, Outcome, Run};
use crate::WorkerId;

/// Messages drained from a channel per wake-up: as good as any size tried (see DESIGN.md).
const BATCH: usize = 256;

/// The most messages moved from the work channel into the queue per wake-up.
const DRAIN: usize = 64 * BATCH;

/// The worker IDs: which are busy, which are free.
///
/// IDs are handed out lowest first and only below the limit in force, so they stay dense, and
/// nothing here is allocated in proportion to the limit: only to the most workers ever alive.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    /// IDs below `high` that no worker holds.
    free: BTreeSet<u32>,
    /// Every ID ever handed out is below `high`.
    high: u32,
}

impl Slots {
    /// The lowest free ID below `limit`, without taking it.
    fn lowest_free(&self, limit: usize) -> Option<WorkerId> {
        match self.free.first() {
            Some(&id) if (id as usize) < limit => Some(WorkerId(id)),
            _ if (self.high as usize) < limit && self.high < u32::MAX => Some(WorkerId(self.high)),
            _ => None,
        }
    }

    fn take(&mut self, id: WorkerId) {
        if id.0 == self.high {
            self.high += 1;
        } else {
            let was_free = self.free.remove(&id.0);
            debug_assert!(was_free, "{id} handed out twice");
        }
    }

    fn release(&mut self, id: WorkerId) {
        let was_busy = id.0 < self.high && self.free.insert(id.0);
        debug_assert!(was_busy, "{id} returned twice");
    }

    /// Worker tasks alive (each holds one ID).
    pub(crate) fn busy(&self) -> usize {
        self.high as usize - self.free.len()
    }

    /// The IDs held by live workers, lowest first.
    pub(crate) fn busy_ids(&self) -> Vec<WorkerId> {
        (0..self.high)
            .filter(|id| !self.free.contains(id))
            .map(WorkerId)
            .collect()
    }
}

/// Owned by the manager future. Whenever that future goes, by exiting or by being dropped with
/// its runtime, this cancels what is still queued and tells `wait`ers the limiter is done. It is
/// made before the manager is spawned, so it runs even if the manager never gets polled.
pub(crate) struct ExitGuard {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.closed.store(true, Ordering::Release);
        let queued = lock(&shared.queue).take_all();
        shared.cancel_unstarted(queued);
        tracing::debug!(target: "task_limiter", limiter = %shared.name, "manager exited");
        shared.exited.store(true, Ordering::Release);
        shared.exit_notify.notify_waiters();
    }
}

/// Moves a batch from the work channel into the queue.
fn enqueue(shared: &Shared, jobs: &mut Vec<Job>) {
    if shared.shutdown.load(Ordering::Acquire) {
        // A send that raced `shutdown` can land after `on_control` drained the channel (its
        // `try_recv` saw the send still in flight). Queued now, it would never run and the
        // manager would never exit: cancel it instead.
        shared.cancel_unstarted(jobs.drain(..));
    } else {
        lock(&shared.queue).extend(jobs.drain(..));
    }
}

struct Manager {
    exit: ExitGuard,
    work_rx: UnboundedReceiver<Job>,
    done_rx: UnboundedReceiver<WorkerId>,
    /// Lets `shutdown` abort running workers, indexed by worker ID.
    workers: Vec<Option<AbortHandle>>,
    work_open: bool,
}

/// The manager's future. The `Manager` is made before the future is first polled, so its `Drop`
/// runs even if the runtime drops the future unpolled.
pub(crate) fn run(
    exit: ExitGuard,
    work_rx: UnboundedReceiver<Job>,
    done_rx: UnboundedReceiver<WorkerId>,
) -> impl std::future::Future<Output = ()> + Send {
    let mut manager = Manager {
        exit,
        work_rx,
        done_rx,
        workers: Vec::new(),
        work_open: true,
    };
    async move { manager.run().await }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // Dropped with its runtime, items may still be in the work channel: cancel them here,
        // where they are counted (dropped with the channel, their handles would resolve but
        // `metrics()` would show them queued forever). Runs before `ExitGuard` marks the
        // limiter exited, so `wait` sees final counters; sends after `close` count themselves.
        self.work_rx.close();
        while let Ok(job) = self.work_rx.try_recv() {
            self.exit.shared.cancel_unstarted([job]);
        }
    }
}

impl Manager {
    async fn run(&mut self) {
        let shared = self.exit.shared.clone();
        let mut jobs = Vec::with_capacity(BATCH);
        let mut ids = Vec::new();
        loop {
            // A full FIFO queue leaves the rest in the channel until workers bring the queue
            // down to its low-water mark and wake the manager through `control`.
            let take_work = self.work_open && lock(&shared.queue).wants_more(shared.limit());
            rt::select! {
                // IDs first: they are what lets queued work start.
                biased;
                _ = recv_batch(&mut self.done_rx, &mut ids, BATCH) => {
                    let mut slots = lock(&shared.slots);
                    for id in ids.drain(..) {
                        slots.release(id);
                        self.workers[id.index()] = None;
                    }
                }
                () = shared.control.notified() => self.on_control(&shared),
                n = recv_batch(&mut self.work_rx, &mut jobs, BATCH), if take_work => {
                    if n == 0 {
                        // Every `Limiter` is gone (or `close` closed the channel) and the
                        // channel is drained.
                        self.work_open = false;
                    } else {
                        enqueue(&shared, &mut jobs);
                        self.drain_ready(&shared, &mut jobs);
                    }
                }
            }
            self.dispatch(&shared);
            if !self.work_open && lock(&shared.slots).busy() == 0 && lock(&shared.queue).is_empty()
            {
                return;
            }
        }
    }

    /// Moves what else already waits in the work channel into the queue, up to `DRAIN` items.
    /// A queue that runs dry sends its workers home, and spawning them again costs far more than
    /// this: on a current-thread runtime, where the submitter fills the channel before the
    /// manager runs, draining one batch per wake-up respawned every worker per batch.
    fn drain_ready(&mut self, shared: &Shared, jobs: &mut Vec<Job>) {
        for _ in 0..DRAIN / BATCH {
            // Polled once: `None` when the channel is empty for now (or the coop budget ran
            // out), `Some(0)` when it is closed, which the next `select!` sees too.
            if !lock(&shared.queue).wants_more(shared.limit()) {
                return;
            }
            match recv_batch(&mut self.work_rx, jobs, BATCH).now_or_never() {
                Some(n) if n > 0 => enqueue(shared, jobs),
                _ => return,
            }
        }
    }

    fn on_control(&mut self, shared: &Arc<Shared>) {
        if shared.closed.load(Ordering::Acquire) {
            // Items already in the channel still run; sends after this fail and their handles
            // resolve cancelled at once.
            self.work_rx.close();
        }
        if shared.shutdown.load(Ordering::Acquire) {
            while let Ok(job) = self.work_rx.try_recv() {
                shared.cancel_unstarted([job]);
            }
            let queued = lock(&shared.queue).take_all();
            shared.cancel_unstarted(queued);
            // Aborted workers drop their item (its handle resolves cancelled) and hand their
            // ID back through their guard; the loop exits once the last one has.
            for worker in self.workers.iter().flatten() {
                worker.abort();
            }
        }
    }

    /// Starts a worker for each free ID while the queue has work and the limit has room.
    fn dispatch(&mut self, shared: &Arc<Shared>) {
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        loop {
            let limit = shared.limit();
            let mut slots = lock(&shared.slots);
            let Some(id) = slots.lowest_free(limit) else {
                return;
            };
            let job = {
                let mut queue = lock(&shared.queue);
                if queue.is_empty() || !shared.try_admit(limit) {
                    return;
                }
                queue.pop().expect("queue checked non-empty under its lock")
            };
            slots.take(id);
            drop(slots);

            let guard = WorkerGuard {
                shared: shared.clone(),
                id,
                item: Held::Admitted,
                state: WorkerState::default(),
            };
            let task = spawn_worker(&shared.name, id, work(guard, job));
            if self.workers.len() <= id.index() {
                self.workers.resize(id.index() + 1, None);
            }
            self.workers[id.index()] = Some(task);
            shared.workers_spawned.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(target: "task_limiter", limiter = %shared.name, worker.id = id.0, "worker spawned");
        }
    }
}

/// Held by a worker task: hands its ID back to the manager on every exit path (its queue ran
/// dry, its item panicked, it was aborted, its runtime shut down), and settles the counters of
/// the item it held if it was dropped mid-item.
struct WorkerGuard {
    shared: Arc<Shared>,
    id: WorkerId,
    item: Held,
    /// The per-worker value of a limiter built with `worker_state`, once an item needed it.
    state: WorkerState,
}

/// What a worker holds, for its counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Between items: not counted in `running`.
    Nothing,
    /// Admitted (counted in `running`), not yet started.
    Admitted,
    /// Started: counted in `running` and `started`.
    Started,
    /// Between two items: still counted in `running`, so that a worker going straight on to
    /// the next item keeps its place instead of giving it up and taking it again.
    Between,
}

impl WorkerGuard {
    fn end_item(&mut self) {
        debug_assert!(self.item != Held::Nothing);
        self.item = Held::Nothing;
        self.shared.running.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether more work may come for this worker soon: the limiter is open and its ID is
    /// below the limit.
    fn may_linger(&self) -> bool {
        let shared = &self.shared;
        !shared.closed.load(Ordering::Acquire) && self.id.index() < shared.limit()
    }

    /// Takes the next queued item if this worker may run it: the limiter is not shutting down,
    /// this worker's ID is below the limit in force, and the limit has room. Otherwise gives up
    /// the worker's place in `running`, if it still holds one.
    fn next_job(&mut self) -> Option<Job> {
        let shared = &self.shared;
        let limit = shared.limit();
        if !shared.shutdown.load(Ordering::Acquire) && self.id.index() < limit {
            let mut queue = lock(&shared.queue);
            if !queue.is_empty() {
                let admitted = match self.item {
                    // `running` counts this worker: keep its place unless the limit shrank
                    // below what runs now. `running` never grows here, so racing admissions
                    // (which grow it only while below the limit) cannot push it past the limit.
                    Held::Between => shared.running.load(Ordering::Acquire) <= limit,
                    _ => shared.try_admit(limit),
                };
                if admitted {
                    self.item = Held::Admitted;
                    let job = queue.pop();
                    if queue.at_low_water(limit) {
                        drop(queue);
                        shared.control.notify_one();
                    }
                    return job;
                }
            }
        }
        if self.item == Held::Between {
            self.end_item();
        }
        None
    }
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        let shared = &self.shared;
        match self.item {
            Held::Nothing => {}
            // The worker was dropped (shutdown, runtime shutdown) while it held an item: the
            // item's own guards resolved its handle as cancelled.
            Held::Admitted => {
                shared.dropped_unstarted.fetch_add(1, Ordering::Relaxed);
                shared.running.fetch_sub(1, Ordering::AcqRel);
            }
            Held::Started => {
                shared.cancelled_running.fetch_add(1, Ordering::Relaxed);
                shared.running.fetch_sub(1, Ordering::AcqRel);
            }
            Held::Between => {
                shared.running.fetch_sub(1, Ordering::AcqRel);
            }
        }
        // Before the ID goes back: the next worker with this ID takes the value from the table.
        self.state.park(self.id);
        #[cfg(feature = "shuttle")]
        if planted::early_id_release() {
            return; // already handed back at the start of `work`
        }
        // Fails only when the manager is gone with its runtime: nobody needs the ID then.
        let _ = shared.done_tx.send(self.id);
    }
}

async fn work(mut guard: WorkerGuard, mut job: Job) {
    #[cfg(feature = "shuttle")]
    if planted::early_id_release() {
        let _ = guard.shared.done_tx.send(guard.id);
    }
    loop {
        let mut poisoned = false;
        let blocking = match job.start(guard.id, &guard.shared.name, &mut guard.state) {
            Some(Run::Async(item, uses_state)) => {
                guard.item = Held::Started;
                guard.shared.started.fetch_add(1, Ordering::Relaxed);
                let outcome = item.await;
                poisoned = uses_state && outcome == Outcome::Panicked;
                count(&guard.shared, outcome);
                None
            }
            Some(Run::Blocking(item)) => Some(item),
            // Aborted while queued: its work is already dropped.
            None => {
                guard
                    .shared
                    .dropped_unstarted
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        if poisoned {
            // The value may be half-updated: the next item on this ID gets a new one.
            guard.state.poison();
        }
        match blocking {
            None => guard.item = Held::Between,
            Some(item) => {
                guard.item = Held::Started;
                guard.shared.started.fetch_add(1, Ordering::Relaxed);
                // Counted and ended on the blocking thread, which hands the guard back.
                guard = match run_blocking(guard, item).await {
                    Some(guard) => guard,
                    None => return,
                };
            }
        }
        // A worker that finds ready items in a row must still let other tasks on its thread run.
        rt::task::consume_budget().await;
        job = match guard.next_job() {
            Some(next) => next,
            // The queue ran dry, but the manager may be moving more into it right now: look
            // once more after letting it run, rather than exit and be spawned again (a task
            // spawn, a done message and a wake of the manager).
            None if guard.may_linger() => {
                rt::task::yield_now().await;
                match guard.next_job() {
                    Some(next) => next,
                    None => return,
                }
            }
            None => return,
        };
    }
}

/// Counts how a started item ended.
fn count(shared: &Shared, outcome: Outcome) {
    let counter = match outcome {
        Outcome::Completed => &shared.completed,
        Outcome::Panicked => &shared.panicked,
        Outcome::Cancelled => &shared.cancelled_running,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Runs a blocking item on the runtime's blocking pool, with the worker's guard moved into the
/// closure: the ID, the item's place in `running` and the worker state stay with the closure
/// until it really returns, whatever happens to this worker task meanwhile. The item is counted
/// and ended there; the guard then comes back for the worker to go on, or, if the worker task
/// is gone (aborted by `shutdown`), is dropped on the blocking thread, handing the ID back.
/// Returns `None` if the guard is gone: the blocking pool refused the closure (runtime
/// shutdown), which resolved the item as cancelled and released the ID.
async fn run_blocking(mut guard: WorkerGuard, item: Box<dyn BlockingRun>) -> Option<WorkerGuard> {
    let (back_tx, back_rx) = rt::sync::oneshot::channel();
    let _detached = rt::task::spawn_blocking(move || {
        let outcome = item.run(&mut guard.state);
        count(&guard.shared, outcome);
        guard.end_item();
        let _ = back_tx.send(guard);
    });
    back_rx.await.ok()
}

/// Spawns the manager onto `handle`'s runtime, named `{name}.manager` for tokio-console.
#[track_caller]
pub(crate) fn spawn_manager<F>(handle: &rt::runtime::Handle, name: &str, future: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    #[cfg(all(tokio_unstable, feature = "console", not(feature = "shuttle")))]
    {
        let name = format!("{name}.manager");
        rt::task::Builder::new()
            .name(&name)
            .spawn_on(future, handle)
            .expect("task_limiter: failed to spawn the manager task");
    }
    #[cfg(not(all(tokio_unstable, feature = "console", not(feature = "shuttle"))))]
    {
        let _ = name;
        handle.spawn(future);
    }
}

/// Spawns a worker on the manager's runtime, named `{name}.worker-{id}` for tokio-console.
fn spawn_worker<F>(name: &str, id: WorkerId, future: F) -> AbortHandle
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    #[cfg(all(tokio_unstable, feature = "console", not(feature = "shuttle")))]
    {
        let name = format!("{name}.worker-{}", id.0);
        rt::task::Builder::new()
            .name(&name)
            .spawn(future)
            .expect("task_limiter: failed to spawn a worker task")
            .abort_handle()
    }
    #[cfg(not(all(tokio_unstable, feature = "console", not(feature = "shuttle"))))]
    {
        let _ = (name, id);
        rt::spawn(future).abort_handle()
    }
}

/// A planted bug, compiled only for the model checks: with it on, a worker hands its ID back as
/// it starts, before its items end, so the manager may give the ID to a second worker while the
/// first still runs. tests/shuttle.rs turns it on to show that its checks catch that.
#[cfg(feature = "shuttle")]
pub(crate) mod planted {
    use std::cell::Cell;

    std::thread_local! {
        // Per OS thread: shuttle runs all of a test's schedules on the test's own thread.
        static EARLY_ID_RELEASE: Cell<bool> = const { Cell::new(false) };
    }

    /// Turns the planted bug on or off for this thread.
    #[doc(hidden)]
    pub fn __plant_early_id_release(on: bool) {
        EARLY_ID_RELEASE.with(|flag| flag.set(on));
    }

    pub(super) fn early_id_release() -> bool {
        EARLY_ID_RELEASE.with(Cell::get)
    }
}

// Keeps the sender type nameable for `Shared`.
pub(crate) type DoneTx = UnboundedSender<WorkerId>;
