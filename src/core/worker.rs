//! The worker tasks: each holds one worker ID for its whole life and runs item after item on it.
//!
//! A worker runs the item it was spawned with, then asks admission for its next one. When there
//! is none it parks, still holding its ID, until the manager hands it work, or until close (once
//! drained), shutdown, a limit below its ID, or its keep-alive ends it. So a service whose queue
//! is mostly empty keeps its workers, rather than paying a spawn, a done message and two manager
//! wake-ups per item, and tokio-console shows them as the stable tasks they are.

use std::future::poll_fn;
use std::future::Future;
#[cfg(not(feature = "shuttle"))]
use std::pin::Pin;
#[cfg(not(feature = "shuttle"))]
use std::task::Context;
use std::task::{Poll, Waker};

use super::admission::{Lazily, Shared};
use super::cell::{Job, Load, Outcome, Run};
use super::ids::Inbox;
use crate::sync::{rt, Arc};
use crate::worker_id::WorkerId;

/// Held by a worker task for its whole life: the worker's ID goes back to the manager when it
/// drops, on every exit path (told to exit, its runtime shutting down, the runtime refusing to
/// spawn it).
pub(crate) struct IdGuard {
    shared: Arc<Shared>,
    id: WorkerId,
}

impl IdGuard {
    pub(crate) fn new(shared: Arc<Shared>, id: WorkerId) -> IdGuard {
        IdGuard { shared, id }
    }
}

impl Drop for IdGuard {
    fn drop(&mut self) {
        let (handed, give_back) = self.shared.state().worker_gone(self.id);
        // A job handed to a worker that never took it was admitted on this ID: it resolves
        // cancelled on it, its work dropped unstarted.
        drop(handed.and_then(|job| job.start(self.id, Load::default(), &mut None).ok()));
        if give_back {
            // Fails only when the manager is gone with its runtime: nobody needs the ID then.
            let _ = self.shared.done_tx.send(self.id);
        }
    }
}

/// A worker task's future. Its first job waits in its inbox, handed to it at its spawn.
pub(crate) async fn work(guard: IdGuard) {
    let shared = &*guard.shared;
    let id = guard.id;
    let inbox = shared.state_untimed().inbox(id);
    let mut keep_alive = KeepAlive::new(shared);
    let mut ended = None;
    // The last item's allocation, for the next item of its type to run in.
    let mut spare: Option<Run> = None;
    while let Some((job, load)) = keep_alive.next(shared, &inbox, id, ended.take()).await {
        // A worker that finds ready items in a row must still let other tasks on its thread run.
        rt::task::consume_budget().await;
        let runs_to_end = job.runs_to_end();
        let (outcome, handle) = match job.start(planted::item_id(id), load, &mut spare) {
            Ok(run) => {
                let mut running = Running::new(run, runs_to_end);
                let outcome = (&mut running).await;
                spare = running.run.take();
                let handle = spare
                    .as_mut()
                    .and_then(|run| run.as_mut().take_join_waker());
                (outcome, WakeHandle(handle))
            }
            // Aborted (or timed out) between its admission and its start: its work is already
            // dropped, and its handle woken.
            Err(outcome) => (outcome, WakeHandle(None)),
        };
        ended = Some((outcome, handle));
    }
}

/// The waker of the handle of the item a worker just ran, woken once the worker has counted
/// the item's end, or left it for admission ([`Shared::end_lazily`]): a submitter that the
/// result wakes, and that submits again at once, then finds the worker parked rather than
/// busy (it would go through the manager). Woken as it drops, so that no path loses it.
struct WakeHandle(Option<Waker>);

impl Drop for WakeHandle {
    fn drop(&mut self) {
        if let Some(waker) = self.0.take() {
            waker.wake();
        }
    }
}

/// A started item as its worker polls it.
///
/// A worker is dropped mid-item only when its runtime shuts down. An item that runs to its end
/// (a closure on the blocking pool, which the runtime waits for as it shuts down) is then
/// finished on a thread of its own, so that its handle still gets the value, as the handle of a
/// tokio blocking task does. Any other item is dropped, and resolves cancelled.
struct Running {
    /// The item; kept once it has ended (for the worker to reuse its allocation).
    run: Option<Run>,
    runs_to_end: bool,
    ended: bool,
}

impl Running {
    fn new(run: Run, runs_to_end: bool) -> Running {
        Running {
            run: Some(run),
            runs_to_end,
            ended: false,
        }
    }
}

impl Future for Running {
    type Output = Outcome;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Outcome> {
        debug_assert!(!self.ended, "`Running` polled after it finished");
        let run = self.run.as_mut().expect("`Running` holds its item");
        let outcome = std::task::ready!(run.as_mut().poll(cx));
        self.ended = true;
        Poll::Ready(outcome)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(run) = self.run.take().filter(|_| !self.ended) {
            if self.runs_to_end {
                finish_elsewhere(run);
            }
        }
    }
}

/// Polls `run` to its end on a new thread; if no thread can be had, drops it (it then resolves
/// cancelled).
#[cfg(not(feature = "shuttle"))]
fn finish_elsewhere(run: Run) {
    use std::sync::Arc as StdArc;
    use std::task::Wake;

    struct Unpark(std::thread::Thread);

    impl Wake for Unpark {
        fn wake(self: StdArc<Self>) {
            self.0.unpark();
        }
    }

    let _ = std::thread::Builder::new()
        .name("task-limiter-finish".into())
        .spawn(move || {
            let mut run = run;
            let waker = std::task::Waker::from(StdArc::new(Unpark(std::thread::current())));
            let mut cx = std::task::Context::from_waker(&waker);
            while run.as_mut().poll(&mut cx).is_pending() {
                std::thread::park();
            }
        });
}

/// The model checks have no runtime that drops its workers mid-item.
#[cfg(feature = "shuttle")]
fn finish_elsewhere(run: Run) {
    drop(run);
}

/// A parked worker's keep-alive: one timer per worker, armed only while it has no item.
///
/// Rather than reset the timer on every park (a trip to the runtime's timer wheel per item in a
/// service whose queue is mostly empty), the timer keeps its deadline while the worker works and
/// is moved on only when it fires early: it is reset at most once per keep-alive period.
struct KeepAlive {
    #[cfg_attr(feature = "shuttle", allow(dead_code))]
    after: Option<std::time::Duration>,
    #[cfg(not(feature = "shuttle"))]
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The waker this task left in its ID's inbox.
    waker: Option<std::task::Waker>,
}

impl KeepAlive {
    fn new(shared: &Shared) -> KeepAlive {
        KeepAlive {
            after: shared.keep_alive,
            #[cfg(not(feature = "shuttle"))]
            timer: None,
            waker: None,
        }
    }

    /// Counts the item that just `ended`, then waits (parked, if there is no work) for the next
    /// job; `None` when the worker must exit.
    async fn next(
        &mut self,
        shared: &Shared,
        inbox: &Inbox,
        id: WorkerId,
        mut ended: Option<(Outcome, WakeHandle)>,
    ) -> Option<(Job, Load)> {
        // Set when the worker first finds no work: it has been idle since.
        #[cfg(not(feature = "shuttle"))]
        let mut expires = None;
        poll_fn(|cx| {
            // Woken with a job handed over (or spawned with one): no need for the admission
            // lock to find it. After an item, the lock counts its end first.
            if ended.is_none() {
                if let Some(job) = inbox.take() {
                    return Poll::Ready(Some(job));
                }
            }
            // Left once: the waker stays in the inbox while this task holds the ID.
            if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                inbox.register(cx.waker());
                self.waker = Some(cx.waker().clone());
            }
            // The item's handle is woken as `handle` drops, once its end is counted or left.
            let (next, now) = match ended.take() {
                // Nothing seems to wait for this worker: its item's end is left for the next
                // turn of the admission lock, and it waits as parked, without taking one.
                Some((outcome, handle)) => match shared.end_lazily(id, outcome, inbox) {
                    Lazily::Parked(at) => {
                        drop(handle);
                        (Poll::Pending, at)
                    }
                    Lazily::Look => {
                        drop(handle);
                        shared.poll_next(id, None)
                    }
                    Lazily::No => {
                        let next = shared.poll_next(id, Some(outcome));
                        drop(handle);
                        next
                    }
                },
                None => shared.poll_next(id, None),
            };
            if let Poll::Ready(job) = next {
                return Poll::Ready(job);
            }
            #[cfg(feature = "shuttle")]
            let _ = now;
            #[cfg(not(feature = "shuttle"))]
            if let Some(after) = self.after {
                // Idle from the admission turn that found no work: its clock read serves.
                let Some(at) = *expires.get_or_insert_with(|| now.checked_add(after)) else {
                    return Poll::Pending; // a keep-alive too long to end
                };
                if self.poll_expired(at, cx).is_ready() {
                    if shared.state_untimed().expire(id) {
                        tracing::trace!(target: "task_limiter", limiter = %shared.name, worker.id = id.0, "worker kept alive long enough");
                        return Poll::Ready(None);
                    }
                    // Work was handed over as the timer fired: take it.
                    return shared.poll_next(id, None).0;
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Ready once `expires` has passed.
    ///
    /// A timer that has not fired yet is not polled again: the waker its last poll registered
    /// is this worker task's own, which every poll of the worker passes, so it still reaches
    /// the worker. A park so costs no trip to the timer wheel, nor a clock read.
    #[cfg(not(feature = "shuttle"))]
    fn poll_expired(&mut self, expires: tokio::time::Instant, cx: &mut Context<'_>) -> Poll<()> {
        let timer = match &mut self.timer {
            Some(timer) if !timer.is_elapsed() => return Poll::Pending,
            Some(timer) => timer,
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(expires))),
        };
        loop {
            std::task::ready!(timer.as_mut().poll(cx));
            if tokio::time::Instant::now() >= expires {
                return Poll::Ready(());
            }
            // Fired at an earlier park's deadline: move it on to this one's.
            timer.as_mut().reset(expires);
        }
    }
}

/// Spawns a worker on the manager's runtime, named `{name}.worker-{id}` for tokio-console.
pub(crate) fn spawn<F>(name: &str, id: WorkerId, future: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    #[cfg(all(tokio_unstable, feature = "console", not(feature = "shuttle")))]
    {
        let name = format!("{name}.worker-{}", id.0);
        rt::task::Builder::new()
            .name(&name)
            .spawn(future)
            .expect("task_limiter: failed to spawn a worker task");
    }
    #[cfg(not(all(tokio_unstable, feature = "console", not(feature = "shuttle"))))]
    {
        let _ = (name, id);
        rt::spawn(future);
    }
}

/// A planted bug, compiled only for the model checks: with it on, every worker starts its items
/// under ID 0, whatever ID admission gave it, as if an ID held by a running item were handed to
/// a second worker. tests/shuttle.rs turns it on to show that its checks catch that.
#[cfg(feature = "shuttle")]
pub(crate) mod planted {
    use std::cell::Cell;

    use crate::worker_id::WorkerId;

    std::thread_local! {
        // Per OS thread: shuttle runs all of a test's schedules on the test's own thread.
        static ID_MIXUP: Cell<bool> = const { Cell::new(false) };
    }

    /// Turns the planted bug on or off for this thread.
    #[doc(hidden)]
    pub fn __plant_id_mixup(on: bool) {
        ID_MIXUP.with(|flag| flag.set(on));
    }

    /// The ID an item of worker `id` starts under.
    pub(crate) fn item_id(id: WorkerId) -> WorkerId {
        match ID_MIXUP.with(Cell::get) {
            true => WorkerId(0),
            false => id,
        }
    }
}

#[cfg(not(feature = "shuttle"))]
pub(crate) mod planted {
    use crate::worker_id::WorkerId;

    #[inline(always)]
    pub(crate) fn item_id(id: WorkerId) -> WorkerId {
        id
    }
}
