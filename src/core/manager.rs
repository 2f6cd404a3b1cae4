//! The manager task: the one owner of the free worker IDs and the one place that spawns workers.
//!
//! It `select!`s over the done channel (worker IDs coming back), control wake-ups (close,
//! shutdown, `set_limit`, a FIFO queue at its low-water mark) and the work channel (drained in
//! batches into the queue). After every wake-up it starts what admission allows: it hands work
//! to parked workers first, and spawns a worker only for a free ID.

use futures_util::FutureExt;

use super::admission::{Lifecycle, Shared};
use super::cell::Job;
use super::deadline::{Fired, Watcher, Watches};
use super::refusals::Reason;
use super::wakers::Wakers;
use super::worker::{self, IdGuard};
use crate::sync::rt::sync::mpsc::UnboundedReceiver;
use crate::sync::{recv_batch, rt, Arc, Ordering};
use crate::worker_id::WorkerId;

/// Messages drained from a channel per wake-up: as good as any size tried in the benchmarks of
/// the first core (`benches/compare-results.md`).
const BATCH: usize = 256;

/// The most messages moved from the work channel into the queue per wake-up.
const DRAIN: usize = 64 * BATCH;

/// Owned by the manager future. Whenever that future goes, by exiting or by being dropped with
/// its runtime, this cancels what is still queued and tells `wait`ers the limiter is done. It is
/// made before the manager is spawned, so it runs even if the manager never gets polled.
pub(crate) struct ExitGuard {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.advance(Lifecycle::Closed);
        let mut state = shared.state();
        let queued = state.take_queued();
        // Items admitted for workers that the manager never got to spawn.
        let mut unspawned = Vec::new();
        state.take_to_spawn(&mut unspawned);
        let handed: Vec<Job> = unspawned
            .into_iter()
            .filter_map(|id| state.worker_gone(id).0)
            .collect();
        drop(state);
        drop(handed);
        cancel_unstarted(shared, queued);
        tracing::debug!(target: "task_limiter", limiter = %shared.name, "manager exited");
        shared.advance(Lifecycle::Exited);
        shared.exit_notify.notify_waiters();
    }
}

/// Cancels items that never started, counting them; their work is dropped outside the lock.
/// Those still waiting (not already ended by an abort, their deadline or their token) are
/// refused because the limiter is closed or shutting down: every caller is on that path, or
/// passes jobs that ended already.
pub(crate) fn cancel_unstarted(shared: &Shared, jobs: impl IntoIterator<Item = Job>) {
    let jobs: Vec<Job> = jobs.into_iter().collect();
    if !jobs.is_empty() {
        for job in jobs.iter().filter(|job| job.is_queued()) {
            shared.refusals.count(job.is_lease(), Reason::Closed);
        }
        // Entries of items that already timed out in the queue count as timed out.
        let timed_out = jobs.iter().filter(|job| job.timed_out()).count();
        let mut state = shared.state();
        state.count_dropped(jobs.len() - timed_out);
        state.count_timed_out_queued(timed_out);
        drop(state);
        drop(jobs);
    }
}

struct Manager {
    exit: ExitGuard,
    work_rx: UnboundedReceiver<Job>,
    done_rx: UnboundedReceiver<WorkerId>,
    work_open: bool,
    /// Queue deadlines and tokens (see `deadline.rs`); polled only once one is in use.
    watches: Arc<Watches>,
    watcher: Watcher,
    /// Reused from wake-up to wake-up.
    wake: Wakers,
    spawn: Vec<WorkerId>,
}

/// The manager's future. The `Manager` is made before the future is first polled, so its `Drop`
/// runs even if the runtime drops the future unpolled.
pub(crate) fn run(
    exit: ExitGuard,
    work_rx: UnboundedReceiver<Job>,
    done_rx: UnboundedReceiver<WorkerId>,
    watches: Arc<Watches>,
    watcher: Watcher,
) -> impl std::future::Future<Output = ()> + Send {
    let mut manager = Manager {
        exit,
        work_rx,
        done_rx,
        work_open: true,
        watches,
        watcher,
        wake: Wakers::default(),
        spawn: Vec::new(),
    };
    async move { manager.run().await }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // Dropped with its runtime, items may still be in the work channel: cancel them here,
        // where they are counted (dropped with the channel, their handles would resolve but
        // `metrics()` would show them queued forever). Runs before `ExitGuard` marks the
        // limiter exited, so `wait` sees final counters.
        self.work_rx.close();
        while let Ok(job) = self.work_rx.try_recv() {
            took_one(&self.exit.shared);
            cancel_unstarted(&self.exit.shared, [job]);
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
            let take_work = self.work_open && shared.state_untimed().take_work();
            let watching = self.watcher.active(&self.watches);
            rt::select! {
                // IDs first: they are what lets queued work start on new workers.
                biased;
                _ = recv_batch(&mut self.done_rx, &mut ids, BATCH) => {
                    let mut state = shared.state_untimed();
                    for id in ids.drain(..) {
                        state.release(id);
                    }
                }
                () = shared.control.notified() => self.on_control(&shared),
                fired = std::future::poll_fn(|cx| self.watcher.poll(&self.watches, &shared.refusals, cx)), if watching => {
                    match fired {
                        // `Builder::cancel_on`: as `Limiter::shutdown` would.
                        Fired::Shutdown => {
                            shared.advance(Lifecycle::ShuttingDown);
                            self.on_control(&shared);
                        }
                        Fired::Look => self.watcher.look(&self.watches, &shared.refusals),
                    }
                }
                n = recv_batch(&mut self.work_rx, &mut jobs, BATCH), if take_work => {
                    if n == 0 {
                        // Every `Limiter` is gone (or `close` closed the channel) and the
                        // channel is drained: idle workers may go.
                        self.on_drained(&shared);
                    } else {
                        enqueue(&shared, &mut jobs);
                        self.drain_ready(&shared, &mut jobs);
                    }
                }
            }
            self.dispatch(&shared);
            if !self.work_open {
                let mut state = shared.state_untimed();
                if state.nothing_queued() {
                    // Leases hold IDs too: `wait` waits for them.
                    if state.ids_held() == 0 {
                        return;
                    }
                    // Admission may have passed the last entries (items or lease requests
                    // cancelled while queued) after the parked workers last looked: with nothing
                    // queued and nothing more to come, they may exit now.
                    state.wake_parked(&mut self.wake);
                }
                drop(state);
                self.wake.wake_all();
            }
        }
    }

    /// Moves what else already waits in the work channel into the queue, up to `DRAIN` items.
    /// On a current-thread runtime the submitter fills the channel before the manager runs;
    /// one batch per wake-up would make the manager and the workers take turns per batch.
    fn drain_ready(&mut self, shared: &Shared, jobs: &mut Vec<Job>) {
        for _ in 0..DRAIN / BATCH {
            if !shared.state_untimed().take_work() {
                return;
            }
            // Polled once: `None` when the channel is empty for now (or the coop budget ran
            // out), `Some(0)` when it is closed, which the next `select!` sees too.
            match recv_batch(&mut self.work_rx, jobs, BATCH).now_or_never() {
                Some(n) if n > 0 => enqueue(shared, jobs),
                _ => return,
            }
        }
    }

    fn on_drained(&mut self, shared: &Shared) {
        self.work_open = false;
        let mut state = shared.state_untimed();
        state.set_drained();
        shared.publish_work(&mut state);
        state.wake_parked(&mut self.wake);
        drop(state);
        self.wake.wake_all();
    }

    fn on_control(&mut self, shared: &Arc<Shared>) {
        let lifecycle = shared.lifecycle();
        if lifecycle >= Lifecycle::Closed {
            // Items already in the channel still run; sends after this fail and their handles
            // resolve cancelled at once.
            self.work_rx.close();
        }
        let mut running = Vec::new();
        if lifecycle >= Lifecycle::ShuttingDown {
            while let Ok(job) = self.work_rx.try_recv() {
                took_one(shared);
                cancel_unstarted(shared, [job]);
            }
            let queued = shared.state_untimed().take_queued();
            cancel_unstarted(shared, queued);
            running = shared.state_untimed().running_tasks();
            // The channel stays in the `select!` until it reports itself drained: a send that
            // was in flight may still land, and is cancelled (and counted) by `enqueue`.
        }
        // Whatever changed (close, shutdown, the limit), parked workers look again at whether
        // they should exit.
        shared.state_untimed().wake_parked(&mut self.wake);
        self.wake.wake_all();
        // Running items drop their work at their next poll and resolve cancelled; their
        // workers then exit. Items that run to their end keep their IDs until they return.
        for task in running {
            task.abort();
        }
    }

    /// Hands work to parked workers and spawns workers for free IDs, as admission allows.
    fn dispatch(&mut self, shared: &Arc<Shared>) {
        let lifecycle = shared.lifecycle();
        let mut state = shared.state();
        state.grow(shared.grow.swap(0, Ordering::Relaxed));
        state.dispatch(lifecycle, &mut self.wake);
        state.take_to_spawn(&mut self.spawn);
        drop(state);
        self.wake.wake_all();
        for id in self.spawn.drain(..) {
            // Made before the spawn, so that a runtime refusing the task still hands the ID back
            // (and cancels the job handed to it).
            let guard = IdGuard::new(shared.clone(), id);
            worker::spawn(&shared.name, id, worker::work(guard));
            tracing::trace!(target: "task_limiter", limiter = %shared.name, worker.id = id.0, "worker spawned");
        }
    }
}

/// Moves a batch from the work channel into the queue.
fn enqueue(shared: &Shared, jobs: &mut Vec<Job>) {
    let n = jobs.len();
    if shared.lifecycle() >= Lifecycle::ShuttingDown {
        // A send that raced `shutdown` can land after `on_control` drained the channel (its
        // `try_recv` saw the send still in flight). Queued now, it would never run and the
        // manager would never exit: cancel it instead.
        shared.in_channel.fetch_sub(n, Ordering::AcqRel);
        cancel_unstarted(shared, jobs.drain(..));
    } else {
        let mut state = shared.state_untimed();
        state.enqueue(jobs.drain(..));
        shared.note_queue_length(&state);
        shared.publish_work(&mut state);
        // Under the lock and after the jobs are in the queue: a submitter that finds nothing in
        // the channel may queue its own item, and must find these ahead of it.
        shared.in_channel.fetch_sub(n, Ordering::AcqRel);
    }
}

/// A job taken off the channel to be cancelled rather than queued.
fn took_one(shared: &Shared) {
    shared.in_channel.fetch_sub(1, Ordering::AcqRel);
}

/// Spawns the manager onto `handle`'s runtime, named `{name}.manager` for tokio-console.
#[track_caller]
pub(crate) fn spawn<F>(handle: &rt::runtime::Handle, name: &str, future: F)
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
