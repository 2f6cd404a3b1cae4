//! The one admission point, and the one piece of locked state it rules over.
//!
//! Whether an item (or a lease request) may start now, on which worker ID, is decided by
//! [`State::admit`] alone, for the manager (starting a new worker, or handing work to a parked
//! one), for a worker (taking its next item, or waking from its park) and for a lease's end
//! alike, under one lock over the limit in force, the queue, the worker-ID table (`ids.rs`) and
//! the running count. So the invariants are enforced, and model-checked, in one place:
//!
//! - items running at once (spawned or leased) never exceed the limit in force when each
//!   started;
//! - a worker ID is held by at most one worker or lease, and an item starts only on an ID below
//!   the limit;
//! - nothing starts once the limiter shuts down.

use std::mem;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::cell::{Job, Load, Outcome, RawTask};
use super::ids::{Asking, Gone, Held, Ids, Inbox};
use super::lanes::{Lanes, Skipped};
use super::refusals::RefusalCounts;
use super::wakers::Wakers;
use crate::key::Key;
use crate::metrics::{KeyMetrics, Metrics};
use crate::sync::rt::sync::mpsc::UnboundedSender;
use crate::sync::rt::sync::Notify;
use crate::sync::{lock, Arc, AtomicBool, AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};
use crate::worker_id::WorkerId;

/// Where the limiter is in its life. One word that only moves forward (it is raised with
/// `fetch_max`), so "shut down implies closed" is a fact of the encoding, not a convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Lifecycle {
    /// Takes new work.
    Open = 0,
    /// Refuses new work; what was submitted before still runs.
    Closed = 1,
    /// Refuses new work and cancels what is queued or running.
    ShuttingDown = 2,
    /// The manager is gone; nothing of the limiter is left on the runtime.
    Exited = 3,
}

impl Lifecycle {
    fn from_word(word: usize) -> Lifecycle {
        match word {
            0 => Lifecycle::Open,
            1 => Lifecycle::Closed,
            2 => Lifecycle::ShuttingDown,
            _ => Lifecycle::Exited,
        }
    }
}

/// Where a lease's worker ID comes from.
enum Lender {
    /// A free ID: the lease holds it alone.
    Free,
    /// A worker's ID; the worker waits behind the lease, woken through its inbox.
    Worker,
}

/// The limiter's counters, kept under the same lock as the state they count, so a snapshot of
/// them always adds up.
#[derive(Default)]
struct Counters {
    /// Items admitted to run (whether or not they got as far as their first poll).
    started: u64,
    completed: u64,
    panicked: u64,
    cancelled_running: u64,
    /// Items that left the limiter without starting: aborted while queued (counted when the
    /// queue passes their entry), refused after close, or cancelled by shutdown.
    dropped_unstarted: u64,
    /// Items that ended by a time limit: run timeouts, and queue deadlines of items that had
    /// been admitted (counted as started).
    timed_out_running: u64,
    /// Items that left the queue unstarted at their deadline (counted, like aborted ones, when
    /// the queue passes their entry).
    timed_out_queued: u64,
    max_running: usize,
    workers_spawned: u64,
    /// Leases that ended (counted with the items too).
    leases_ended: u64,
    /// Leases granted at once, without a queue entry: submissions counted here, under the lock
    /// they take anyway, rather than on the submitters' counter.
    leased_at_once: u64,
    /// Times the limit in force changed value.
    limit_changes: u64,
}

/// The integrals behind `Metrics::wait_time` and `run_time`, advanced at each turn of the
/// lock: the number waiting and the number running, times the time since the last turn. By
/// Little's law the integral of the number waiting is the sum of the waits, so the sums cost
/// one clock read per turn of the lock rather than one per item and transition, and no
/// per-item timestamp.
///
/// The number running changes only under the lock, so its integral is exact (to the turns of
/// the lock). Submissions are counted without it: the number waiting over an interval is
/// taken from the submission count read at the interval's start, so an item's wait is
/// under-counted by at most the time from its submission to the next turn of the lock (a left
/// Riemann sum).
struct Integrals {
    /// Where the sums stand.
    at: Instant,
    /// The submitters' counter as read at `at`'s turn.
    submitted: u64,
    wait_ns: u128,
    run_ns: u128,
}

/// Everything admission decides over, behind one lock.
pub(crate) struct State {
    /// The limit in force, `uncapped` capped by `cap`, unless `expiry` has passed. Kept as one
    /// number because admission reads it for every item.
    limit: usize,
    /// The limit set with `Limiter::set_limit`, or an adaptive limiter's algorithm's; under a
    /// limit set with an expiry on a plain limiter, `usize::MAX` (the cap alone is in force).
    uncapped: usize,
    /// The cap on `uncapped` (`usize::MAX`: none): the limit set with an expiry
    /// (`Limiter::set_limit_until`). An adaptive limiter's algorithm moves `uncapped` under it.
    cap: usize,
    /// When the cap was set with an expiry: the instant it ends and the cap from then on. Read
    /// at every admission, so a process that was paused past the instant starts nothing under
    /// the old limit when it runs again, whatever else it runs first.
    expiry: Option<(Instant, usize)>,
    /// The queued items: per key, and in the limiter's queue order within each key.
    lanes: Lanes,
    /// The weight of the running items (`busy` counts them).
    weight_running: usize,
    /// An item that ended gave back more room than its worker's next item takes, or let its key
    /// start items again: the worker hands the rest out before it goes on.
    dispatch_due: bool,
    /// The work channel is closed and empty: nothing more will reach the queue.
    drained: bool,
    /// Which worker task or lease holds each worker ID (`ids.rs`).
    ids: Ids,
    /// Items running now (IDs `Busy`, `Leased` or `Lent`), leases included. A count
    /// kept beside the ID table because admission reads it for every item.
    busy: usize,
    /// IDs handed an item by admission outside the manager (a lease's end), for the manager to
    /// spawn their workers: it stays the one place that spawns.
    to_spawn: Vec<WorkerId>,
    /// The manager takes work from the channel, or has been asked to (see `take_work`).
    refill_asked: bool,
    /// The worker that took that pop is to wake the manager.
    refill_due: bool,
    counters: Counters,
    integrals: Integrals,
    /// Whether a worker that ends an item must take a turn of the lock rather than park
    /// lazily (see [`Shared::end_lazily`]): something may be queued, or the work channel is
    /// drained (idle workers exit then). Stored true by [`Shared::publish_work`], false as
    /// the queue empties with the channel still open.
    must_look: Arc<AtomicBool>,
    /// The limit in force, or 0 while it has an expiry, for workers ending items lazily.
    limit_hint: Arc<AtomicUsize>,
    /// Items for which the manager's dispatch takes a free ID for a new worker (below the
    /// limit) before it hands them to parked workers: their submitters found no worker parked.
    /// Without it, workers as many as a service's clients stay busy in turns, and every
    /// submission that finds them so goes through the manager, and keeps them as many.
    grow: usize,
}

/// What a worker's [`Shared::end_lazily`] did.
pub(crate) enum Lazily {
    /// Nothing: the worker counts its item's end under the lock.
    No,
    /// The end is left for the next turn of the lock; the worker waits, as parked, idle since
    /// this instant.
    Parked(Instant),
    /// The end is left for the next turn of the lock, but something may wait for the worker
    /// (queued work, a limit below its ID, the limiter closing): it takes that turn itself.
    Look,
}

/// State shared by the `Limiter` clones, the manager and the workers.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    state: Mutex<State>,
    /// A [`Lifecycle`], raised with `fetch_max`. Read without the lock by submitters; admission
    /// reads it under the lock, where any value it sees is one the limiter has been in, and a
    /// raise is always followed by a wake of the manager, which then acts on it under the lock.
    lifecycle: AtomicUsize,
    /// Wakes the manager: close, shutdown, `set_limit`, a FIFO queue at its low-water mark.
    pub(crate) control: Notify,
    /// Wakes `wait`ers once the manager has exited.
    pub(crate) exit_notify: Notify,
    /// Worker IDs coming back to the manager.
    pub(crate) done_tx: UnboundedSender<WorkerId>,
    /// How long a parked worker waits for work before it exits; `None` when it waits for as
    /// long as the limiter is open (the runtime has no timer, or the user asked for that).
    pub(crate) keep_alive: Option<Duration>,
    /// Submissions, counted by the submitters without the lock, on a cache line of its own.
    pub(crate) submitted: Padded<AtomicU64>,
    /// Items sent on the work channel and not yet moved into the queue by the manager: a
    /// submitter may put its item in the queue itself only while nothing waits ahead of it there.
    pub(crate) in_channel: AtomicUsize,
    /// Submissions that found no worker parked and went through the manager (see
    /// [`State::grow`]).
    pub(crate) grow: AtomicUsize,
    /// The queue was long when last looked at: submitters that find every worker busy send
    /// through the channel rather than queue their items themselves (see `hand_off`).
    via_channel: AtomicBool,
    /// Parked workers, readable without the lock (see `Ids`).
    parked_hint: Arc<AtomicUsize>,
    /// Refusals by reason, counted where they happen.
    pub(crate) refusals: RefusalCounts,
    /// The IDs (below 64) whose workers ended an item without the lock, for the next turn to
    /// count: how and when each ended waits in the ID's inbox.
    ended: Padded<AtomicU64>,
    /// See [`State::must_look`].
    must_look: Arc<AtomicBool>,
    /// See [`State::limit_hint`].
    limit_hint: Arc<AtomicUsize>,
}

/// Keeps an atomic that many threads write (the submitters' counter, the lazy ends) on a cache
/// line of its own.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl std::ops::Deref for Padded<AtomicU64> {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

// === impl Shared ===

impl Shared {
    pub(crate) fn new(
        name: Arc<str>,
        limit: usize,
        lanes: Lanes,
        keep_alive: Option<Duration>,
        done_tx: UnboundedSender<WorkerId>,
    ) -> Shared {
        let parked_hint = Arc::new(AtomicUsize::new(0));
        let must_look = Arc::new(AtomicBool::new(false));
        let limit_hint = Arc::new(AtomicUsize::new(limit));
        Shared {
            name,
            parked_hint: parked_hint.clone(),
            ended: Padded(AtomicU64::new(0)),
            must_look: must_look.clone(),
            limit_hint: limit_hint.clone(),
            in_channel: AtomicUsize::new(0),
            grow: AtomicUsize::new(0),
            via_channel: AtomicBool::new(false),
            state: Mutex::new(State {
                limit,
                uncapped: limit,
                cap: usize::MAX,
                expiry: None,
                lanes,
                weight_running: 0,
                dispatch_due: false,
                drained: false,
                ids: Ids::new(parked_hint),
                busy: 0,
                to_spawn: Vec::new(),
                refill_asked: false,
                refill_due: false,
                counters: Counters::default(),
                integrals: Integrals {
                    at: Instant::now(),
                    submitted: 0,
                    wait_ns: 0,
                    run_ns: 0,
                },
                must_look,
                limit_hint,
                grow: 0,
            }),
            lifecycle: AtomicUsize::new(Lifecycle::Open as usize),
            control: Notify::new(),
            exit_notify: Notify::new(),
            done_tx,
            keep_alive,
            submitted: Padded(AtomicU64::new(0)),
            refusals: RefusalCounts::new(),
        }
    }

    /// Takes the admission lock, and advances the wait and run time integrals to now (see
    /// `Integrals`): every change to the counts they integrate is made under this lock, so a
    /// turn that changes them finds the counts in force since the last turn.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // Read before the lock, to keep the clock out of the lock's hold time; a turn that read
        // it before the last one took the lock adds nothing.
        self.state_at(Instant::now())
    }

    /// [`state`](Self::state) with a clock read the caller made just before, and uses too (a
    /// lease's grant or end with distributions on): one read serves both.
    pub(crate) fn state_at(&self, now: Instant) -> MutexGuard<'_, State> {
        let mut state = lock(&self.state);
        self.settle(&mut state);
        // Relaxed: a submission that happened before this turn's changes (it reached the queue
        // through the lock, or the channel, or this thread) is seen; one racing with it is
        // counted from the next turn.
        let submitted = self.submitted.load(Ordering::Relaxed);
        state.advance(now, submitted);
        state
    }

    /// Takes the admission lock for a turn that changes none of the counts the integrals
    /// integrate (items started, ended or left unstarted): no clock read. The manager's
    /// channel and ID bookkeeping, the limits, and reads.
    pub(crate) fn state_untimed(&self) -> MutexGuard<'_, State> {
        let mut state = lock(&self.state);
        self.settle(&mut state);
        state
    }

    /// Counts the items that workers ended without the lock (see
    /// [`end_lazily`](Self::end_lazily)), each at the instant it ended, and parks their
    /// workers. Every turn of the lock starts with it, so no turn sees such an end
    /// half-counted; a turn that leaves work for workers runs it again after saying so in
    /// `must_look` ([`publish_work`](Self::publish_work)).
    fn settle(&self, state: &mut State) {
        // SeqCst: pairs with the worker's store in `end_lazily` (see there).
        if self.ended.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut ended = self.ended.swap(0, Ordering::SeqCst);
        while ended != 0 {
            let id = WorkerId(ended.trailing_zeros());
            ended &= ended - 1;
            let Some((outcome, at)) = state.ids.inbox(id).take_ended() else {
                debug_assert!(false, "{id} ended lazily without saying how");
                continue;
            };
            let submitted = state.integrals.submitted;
            state.advance(at, submitted);
            state.end_item(id, outcome);
            state.ids.park(id);
        }
    }

    /// A worker's end of an item when nothing seems to wait for it: rather than take the
    /// admission lock to count the end and park, it leaves the end for the next turn of the
    /// lock to count (whoever takes it: most often the submitter that hands the worker its
    /// next item), and waits as parked. A service whose queue is mostly empty so takes the
    /// admission lock once per request, not twice.
    ///
    /// Until that turn, the item counts as running: admission can only start less, never more.
    /// What could wait for the worker meanwhile is read after the end is left, each in a
    /// `SeqCst` pair with the turn that changes it: an item queued or the channel drained
    /// (`must_look`, stored before that turn settles), a limit lowered below its ID or with an
    /// expiry
    /// (`limit_hint`), the limiter closing (`lifecycle`). Either that turn counts the end
    /// (and so finds the worker parked), or the worker sees the change and takes a turn
    /// itself ([`Lazily::Look`]).
    ///
    /// Only workers with an ID below 64 end lazily: the IDs with an end to count are one
    /// word's bits.
    pub(crate) fn end_lazily(&self, id: WorkerId, outcome: Outcome, inbox: &Inbox) -> Lazily {
        if id.0 >= u64::BITS || self.keep_alive == Some(Duration::ZERO) || self.busy_elsewhere(id) {
            return Lazily::No;
        }
        let at = Instant::now();
        inbox.end(outcome, at);
        self.ended.fetch_or(1 << id.0, Ordering::SeqCst);
        match self.busy_elsewhere(id) {
            false => Lazily::Parked(at),
            true => Lazily::Look,
        }
    }

    /// Whether worker `id` may have something to do after its item (see `end_lazily`).
    fn busy_elsewhere(&self, id: WorkerId) -> bool {
        self.must_look.load(Ordering::SeqCst)
            || id.index() >= self.limit_hint.load(Ordering::SeqCst)
            || Lifecycle::from_word(self.lifecycle.load(Ordering::SeqCst)) != Lifecycle::Open
    }

    pub(crate) fn lifecycle(&self) -> Lifecycle {
        // Pairs with the `AcqRel` raise: whoever sees the new stage sees what came before it.
        Lifecycle::from_word(self.lifecycle.load(Ordering::Acquire))
    }

    /// Moves the lifecycle forward to `to` (never back); returns the stage it was in.
    pub(crate) fn advance(&self, to: Lifecycle) -> Lifecycle {
        // SeqCst: pairs with a worker ending its item lazily (see `end_lazily`).
        Lifecycle::from_word(self.lifecycle.fetch_max(to as usize, Ordering::SeqCst))
    }

    /// A worker's one call between items and while it waits: counts the item it just ended
    /// (`ended`; an item aborted between its admission and its start counts as cancelled),
    /// then, by the admission rule, gives it its next job, tells it to exit (`None`), or parks
    /// it until there is work or a reason to exit (it is woken through its inbox, where it left
    /// its waker before). Also returns the clock read the turn made, for a parked worker's
    /// keep-alive to start from.
    pub(crate) fn poll_next(
        &self,
        id: WorkerId,
        ended: Option<Outcome>,
    ) -> (Poll<Option<(Job, Load)>>, Instant) {
        let now = Instant::now();
        let mut state = self.state_at(now);
        // Read under the lock: a turn after the manager's acts on the stage it acted on (a
        // stage read before the lock could be one the manager has since left, and this worker
        // would park where the manager counts on it to exit).
        let lifecycle = self.lifecycle();
        let mut wake = Wakers::default();
        let poll = state.poll_next(id, ended, lifecycle, &mut wake);
        let more = state.dispatch_due && state.dispatch_more(lifecycle, &mut wake);
        state.note_empty_queue();
        self.after_admission(state, wake, more);
        (poll, now)
    }

    /// Ends a turn of admission taken outside the manager: wakes the workers and lease waiters
    /// it handed work to (outside the lock), and the manager when there is something for it:
    /// workers to spawn, a FIFO queue that a pop brought to its low-water mark, or `also`.
    fn after_admission(&self, mut state: MutexGuard<'_, State>, mut wake: Wakers, also: bool) {
        let due = also || mem::take(&mut state.refill_due) || !state.to_spawn.is_empty();
        drop(state);
        wake.wake_all();
        if due {
            self.control.notify_one();
        }
    }

    /// Puts `limit` in force (until `expiry`, if given) and wakes the manager, which starts
    /// what a larger limit lets start.
    pub(crate) fn set_limit(&self, limit: usize, expiry: Option<(Instant, usize)>) {
        self.state_untimed().set_limit(limit, expiry);
        self.control.notify_one();
    }

    /// Sets the limit under the cap, which stays (an adaptive limiter's algorithm), and wakes
    /// the manager.
    pub(crate) fn set_uncapped(&self, limit: usize) {
        self.state_untimed().set_uncapped(limit);
        self.control.notify_one();
    }

    /// Caps the limit set at `cap` until `until`, at `fallback` from then on, and wakes the
    /// manager.
    pub(crate) fn set_cap(&self, cap: usize, until: Instant, fallback: usize) {
        self.state_untimed().set_cap(cap, until, fallback);
        self.control.notify_one();
    }

    /// A turn that leaves work for the workers (something queued, the channel drained) says
    /// so to the workers ending items lazily, then counts the ends they left before they could
    /// see it (see `end_lazily`): their workers are then parked, for the turn to hand the work
    /// to (or to wake, to exit).
    pub(crate) fn publish_work(&self, state: &mut State) {
        state.must_look.store(true, Ordering::SeqCst);
        self.settle(state);
    }

    /// The submitter's shortcut past the manager: while nothing waits in the work channel,
    /// queues `job` itself and lets admission hand it to the most recently parked worker, which
    /// it wakes, or start it on a new worker, or leave it queued for the next worker to finish
    /// an item. A service that submits one item at a time so reaches a worker without the
    /// manager's round trip, whether workers are parked or all busy. Returns the job if it must
    /// take the channel instead: something waits there, or the queue is long (a burst, where
    /// the manager moves items in batches; see `via_channel`).
    pub(crate) fn hand_off(&self, job: Job) -> Result<(), Job> {
        // Relaxed: a stale hint only costs a lock taken for nothing, or a trip through the
        // manager. A worker that ended its item lazily is parked by this turn's start.
        if self.parked_hint.load(Ordering::Relaxed) == 0
            && self.ended.load(Ordering::Relaxed) == 0
            && (self.via_channel.load(Ordering::Relaxed)
                || self.in_channel.load(Ordering::Relaxed) != 0)
        {
            // Nothing queued (not a burst): every worker is busy, and this item is for a new
            // one, if the limit leaves room.
            if !self.must_look.load(Ordering::Relaxed) {
                self.grow.fetch_add(1, Ordering::Relaxed);
            }
            return Err(job);
        }
        let mut state = self.state();
        let lifecycle = self.lifecycle();
        // Under the lock, `in_channel` counts every send that happened before this submission
        // and whose job the manager has not yet moved into the queue (it subtracts under the
        // lock, after moving them): at 0, queueing here keeps the queue's order.
        if lifecycle != Lifecycle::Open || self.in_channel.load(Ordering::Acquire) != 0 {
            return Err(job);
        }
        let mut wake = Wakers::default();
        if state.has_parked_below_limit() {
            state.lanes.push(job);
            // Should admission refuse (every running place taken), the item waits in the
            // queue, where the next worker to finish an item takes it.
            if !state.hand_to_parked(lifecycle, &mut wake) {
                self.publish_work(&mut state);
                state.hand_to_parked(lifecycle, &mut wake);
            }
        } else {
            // No worker parked below the limit. With an ID free, the item is for a new worker,
            // which the manager spawns. Without, it could not start now anyway: a short queue
            // is then a saturated service's, and the item waits in it for the next worker to
            // finish an item. A long one (or lanes of keys) is a burst's, which the manager
            // moves in batches: this and the next items go through the channel, until the
            // manager finds the queue short again.
            if state.has_free_below_limit() {
                if state.nothing_queued() {
                    self.grow.fetch_add(1, Ordering::Relaxed);
                }
                return Err(job);
            }
            if state.queue_is_long() {
                self.via_channel.store(true, Ordering::Relaxed);
                return Err(job);
            }
            state.lanes.push(job);
            // Workers that ended their items lazily before they could see it are parked now.
            self.publish_work(&mut state);
            state.hand_to_parked(lifecycle, &mut wake);
        }
        self.after_admission(state, wake, false);
        Ok(())
    }

    /// After the manager moved items from the channel: whether submitters that find every
    /// worker busy send through the channel (the queue is long) or queue their items
    /// themselves (see `hand_off`).
    pub(crate) fn note_queue_length(&self, state: &State) {
        let long = state.queue_is_long();
        if self.via_channel.load(Ordering::Relaxed) != long {
            self.via_channel.store(long, Ordering::Relaxed);
        }
    }

    // --- leases ---

    /// Whether the queue was empty at the last turn that looked (see `State::must_look`): a
    /// lease request then first asks for a lease at once; otherwise it queues at once, in one
    /// turn of the lock rather than two (a saturated service's requests find the queue full).
    pub(crate) fn queue_looks_empty(&self) -> bool {
        !self.must_look.load(Ordering::Relaxed)
    }

    /// A lease at once, if one may start now without passing anything queued: on a free ID
    /// (preferred: parked workers stay ready for spawned items), else on a parked worker's.
    /// `None` if it must wait in the queue.
    /// `now`: a clock read the caller made just before, if it made one.
    pub(crate) fn lease_now(
        &self,
        weight: u32,
        key: Option<&Key>,
        now: Option<Instant>,
    ) -> Option<(WorkerId, Load)> {
        let mut state = self.state_at(now.unwrap_or_else(Instant::now));
        // As for `hand_off`: under the lock, 0 means nothing submitted before waits in the
        // channel.
        if self.in_channel.load(Ordering::Acquire) != 0 || self.lifecycle() != Lifecycle::Open {
            return None;
        }
        state.lease_now(weight, key)
    }

    /// Queues a lease request (made after `lease_now` found no room) and lets admission run
    /// over the queue at once: the request may start now, or the room it waited for may have
    /// come back since. Gives the job back if it must go through the manager's channel
    /// instead (items sent before it are still there), or the limiter is no longer open.
    pub(crate) fn queue_lease(&self, job: Job) -> Result<(), Job> {
        let mut state = self.state();
        let lifecycle = self.lifecycle();
        if self.in_channel.load(Ordering::Acquire) != 0 || lifecycle != Lifecycle::Open {
            return Err(job);
        }
        state.lanes.push(job);
        self.publish_work(&mut state);
        let mut wake = Wakers::default();
        state.dispatch(lifecycle, &mut wake);
        self.after_admission(state, wake, false);
        Ok(())
    }

    /// A lease on `id` ended, how `outcome` says: its ID and its charge come back, and
    /// admission hands what may start now to the next in line.
    /// `now`: a clock read the caller made just before, if it made one.
    pub(crate) fn end_lease(&self, id: WorkerId, outcome: Outcome, now: Option<Instant>) {
        let mut state = self.state_at(now.unwrap_or_else(Instant::now));
        // Read under the lock, as in `poll_next`: read before it, a shutdown that came between
        // would go unseen, and the manager, which found this lease's ID still held, unwoken.
        let lifecycle = self.lifecycle();
        let mut wake = Wakers::default();
        state.end_lease(id, outcome, &mut wake);
        // Nothing waits that this lease's room could start: no admission round (the common
        // case of a service whose queue is mostly empty).
        if state.lanes.ahead_of(None) {
            state.dispatch(lifecycle, &mut wake);
            state.note_empty_queue();
        }
        // Once the limiter is closed, the manager looks again at whether it may exit.
        self.after_admission(state, wake, lifecycle >= Lifecycle::Closed);
    }
}

// === impl State ===

/// Gives back a running item's place, its weight and its key's share (fields of `State`,
/// borrowed apart from the slot that holds `task`). Returns true if that may let more start
/// than the item's worker takes next: it weighed more than 1, or its key may start items again.
fn charge_back(
    lanes: &mut Lanes,
    busy: &mut usize,
    weight_running: &mut usize,
    (weight, key): (u32, Option<&Key>),
) -> bool {
    *busy -= 1;
    *weight_running -= weight as usize;
    let key_ready = match key {
        Some(key) => lanes.finish(key, weight),
        None => false,
    };
    weight > 1 || key_ready
}

impl State {
    /// **The admission point.** May an item start now on worker `id`, and which one?
    ///
    /// Only while the limiter is not shutting down, `id` is below the limit in force, and fewer
    /// than `limit` items run. Items aborted while queued are skipped here, before anything is
    /// spawned or woken for them. An admitted item counts as running from here on; it starts
    /// told the load it was admitted under.
    fn admit(&mut self, id: WorkerId, lifecycle: Lifecycle) -> Option<(Job, Load)> {
        self.expire_limit();
        if lifecycle >= Lifecycle::ShuttingDown
            || id.index() >= self.limit
            || self.busy >= self.limit
        {
            return None;
        }
        // Entries of items aborted while queued are passed and counted: their work is gone
        // already, and dropping the entry does nothing more.
        let mut skipped = Skipped::default();
        let popped = self
            .lanes
            .pop(self.limit, self.weight_running, &mut skipped);
        self.counters.dropped_unstarted += skipped.cancelled;
        self.counters.timed_out_queued += skipped.timed_out;
        if !self.refill_asked
            && !self.lanes.keyed()
            && self.lanes.unkeyed().at_low_water(self.limit)
        {
            self.refill_asked = true;
            self.refill_due = true;
        }
        let (job, weight) = popped?;
        self.busy += 1;
        self.weight_running += weight as usize;
        self.counters.started += 1;
        self.counters.max_running = self.counters.max_running.max(self.busy);
        let load = Load {
            running: self.weight_running,
            limit: self.limit,
            capped: self.capped(),
        };
        Some((job, load))
    }

    /// After an item that gave back more room than its worker's next item takes (or let its key
    /// start again): hands what else may start to parked workers, whose wakers go to `wake`
    /// for the caller to wake outside the lock. Returns true if more may start than were
    /// parked: the manager then spawns workers for it.
    #[cold]
    fn dispatch_more(&mut self, lifecycle: Lifecycle, wake: &mut Wakers) -> bool {
        self.dispatch_due = false;
        while self.hand_to_parked(lifecycle, wake) {}
        self.may_start_more()
    }

    /// Whether an item may be startable beyond what parked workers took: room under the limit
    /// and a lane whose head may fit. The manager then spawns workers as admission allows.
    fn may_start_more(&self) -> bool {
        self.busy < self.limit && self.lowest_free().is_some() && self.lanes.has_ready()
    }

    /// Whether a worker with no item should end rather than park.
    fn should_exit(&mut self, id: WorkerId, lifecycle: Lifecycle) -> bool {
        self.expire_limit();
        lifecycle >= Lifecycle::ShuttingDown
            || id.index() >= self.limit
            || (self.drained && self.lanes.is_empty())
    }

    /// Counts how a worker's item ended and gives up its place among the running items.
    fn end_item(&mut self, id: WorkerId, outcome: Outcome) {
        let task = self.ids.running(id);
        self.dispatch_due |= charge_back(
            &mut self.lanes,
            &mut self.busy,
            &mut self.weight_running,
            task.charge(),
        );
        self.count(outcome);
    }

    /// Counts how a started item (or lease) ended.
    fn count(&mut self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Completed => &mut self.counters.completed,
            Outcome::Panicked => &mut self.counters.panicked,
            Outcome::Cancelled => &mut self.counters.cancelled_running,
            Outcome::TimedOut => &mut self.counters.timed_out_running,
        };
        *counter += 1;
    }

    fn poll_next(
        &mut self,
        id: WorkerId,
        ended: Option<Outcome>,
        lifecycle: Lifecycle,
        wake: &mut Wakers,
    ) -> Poll<Option<(Job, Load)>> {
        if let Some(outcome) = ended {
            self.end_item(id, outcome);
        }
        match self.ids.ask(id) {
            // Handed over by the manager, a submitter, or (for a new worker) at its spawn.
            Asking::Handed(job, load) => return Poll::Ready(Some((job, load))),
            Asking::Lent => return Poll::Pending,
            Asking::Busy => debug_assert!(
                ended.is_some(),
                "a busy worker asks for work only after an item"
            ),
            Asking::Parked => {}
        }
        while let Some((job, load)) = self.admit(id, lifecycle) {
            if job.is_lease() {
                // The worker lends its ID to the lease and waits behind it.
                if self.grant(id, job, load, Lender::Worker, wake) {
                    return Poll::Pending;
                }
                // The lease's waiter was gone: admit again.
                continue;
            }
            self.ids
                .run(id, job.task().expect("an admitted job is queued"));
            return Poll::Ready(Some((job, load)));
        }
        if self.should_exit(id, lifecycle) {
            self.ids.exit(id);
            Poll::Ready(None)
        } else {
            self.ids.park(id);
            Poll::Pending
        }
    }

    /// A parked worker's keep-alive ran out: it exits, unless work was handed to it meanwhile.
    #[cfg(not(feature = "shuttle"))]
    pub(crate) fn expire(&mut self, id: WorkerId) -> bool {
        self.ids.expire(id)
    }

    /// Worker `id`'s task is gone (its guard dropped), whatever it was doing; a runtime that
    /// shuts down drops workers mid-item. Returns a job handed to it but never taken, for the
    /// caller to drop (and so cancel) outside the lock, and whether the ID goes back to the
    /// manager: not when a lease holds it (the lease gives it back as it ends).
    pub(crate) fn worker_gone(&mut self, id: WorkerId) -> (Option<Job>, bool) {
        let task = match self.ids.gone(id) {
            Gone::Running(task) => task,
            Gone::Idle => return (None, true),
            Gone::Lent => return (None, false),
        };
        self.dispatch_due |= charge_back(
            &mut self.lanes,
            &mut self.busy,
            &mut self.weight_running,
            task.charge(),
        );
        self.counters.cancelled_running += 1;
        // A job handed to the worker that it never took is still in the ID's inbox.
        (self.ids.inbox(id).take().map(|(job, _)| job), true)
    }

    // --- the manager's side ---

    /// Starts what the limit allows: hands admitted items to parked workers first (the most
    /// recently parked first), then takes free IDs (lowest first) for new workers, each handed
    /// its first job. Returns the wakers of the parked workers given work, and the IDs to spawn
    /// workers for.
    pub(crate) fn dispatch(&mut self, lifecycle: Lifecycle, wake: &mut Wakers) {
        self.expire_limit();
        loop {
            if self.grow > 0 && self.lowest_free().is_none() {
                self.grow = 0;
            }
            if self.grow == 0 && self.has_parked_below_limit() {
                if !self.hand_to_parked(lifecycle, wake) {
                    return;
                }
                continue;
            }
            let Some(id) = self.lowest_free() else {
                return;
            };
            let Some((job, load)) = self.admit(id, lifecycle) else {
                return;
            };
            if job.is_lease() {
                self.grant(id, job, load, Lender::Free, wake);
                continue;
            }
            // The new worker takes its first job from its slot, as a woken parked worker does:
            // a worker dropped before its first poll then resolves the job on its ID.
            self.ids.hand_free(id, job, load);
            self.grow = self.grow.saturating_sub(1);
            self.counters.workers_spawned += 1;
            self.to_spawn.push(id);
        }
    }

    /// `n` more items for the manager's dispatch to start on new workers (see `grow`).
    pub(crate) fn grow(&mut self, n: usize) {
        self.grow += n;
    }

    /// Worker `id`'s inbox, where admission hands it its jobs.
    pub(crate) fn inbox(&self, id: WorkerId) -> Arc<Inbox> {
        self.ids.inbox(id).clone()
    }

    /// The IDs admission handed an item whose worker is yet to be spawned: the manager's to
    /// spawn.
    pub(crate) fn take_to_spawn(&mut self, spawn: &mut Vec<WorkerId>) {
        spawn.append(&mut self.to_spawn);
    }

    /// Whether a parked worker may be handed work (its ID is below the limit).
    fn has_parked_below_limit(&self) -> bool {
        self.parked_below_limit().is_some()
    }

    /// Whether the queue is a burst's, which the manager fills in batches from the channel: at
    /// its low-water mark or longer, or lanes of keys (see `Shared::hand_off`).
    fn queue_is_long(&self) -> bool {
        self.lanes.keyed() || !self.lanes.unkeyed().is_short(self.limit)
    }

    /// Whether an ID below the limit is free, for a new worker.
    fn has_free_below_limit(&self) -> bool {
        self.lowest_free().is_some()
    }

    /// The most recently parked worker whose ID is below the limit.
    fn parked_below_limit(&self) -> Option<WorkerId> {
        self.ids.parked_below(self.limit)
    }

    /// The lowest ID no worker or lease holds, below the limit.
    fn lowest_free(&self) -> Option<WorkerId> {
        self.ids.lowest_free(self.limit)
    }

    /// Admits the next queued item for the most recently parked worker (below the limit) and
    /// hands it over (or, to a lease, the worker's ID). Returns false if there is no such
    /// worker or admission refused. The wakers to wake outside the lock go to `wake`: the
    /// worker's, if it registered one (a worker yet to register looks at its slot before it
    /// waits), or the lease's waiter's.
    fn hand_to_parked(&mut self, lifecycle: Lifecycle, wake: &mut Wakers) -> bool {
        let Some(id) = self.parked_below_limit() else {
            return false;
        };
        let Some((job, load)) = self.admit(id, lifecycle) else {
            return false;
        };
        if job.is_lease() {
            self.grant(id, job, load, Lender::Worker, wake);
        } else {
            wake.push_worker(self.ids.hand_parked(id, job, load));
        }
        true
    }

    /// Gives worker ID `id` to the admitted lease request `job` and wakes its waiter: its slot
    /// becomes `Leased` or (a worker's, lent) `Lent`. A request whose waiter went away after its
    /// admission gives everything back at once, as an item aborted between its admission and
    /// its start does: the ID to its lender, the room to the limits. Returns whether it was
    /// granted.
    fn grant(
        &mut self,
        id: WorkerId,
        job: Job,
        load: Load,
        lender: Lender,
        wake: &mut Wakers,
    ) -> bool {
        let task = job.into_task().expect("an admitted job is queued");
        let (weight, key) = task.charge();
        if let Some(waiter) = task.grant(id, load) {
            wake.extend(waiter);
            self.lend(id, weight, key.cloned(), lender);
            return true;
        }
        self.dispatch_due |= charge_back(
            &mut self.lanes,
            &mut self.busy,
            &mut self.weight_running,
            (weight, key),
        );
        self.counters.cancelled_running += 1;
        false
    }

    /// Puts ID `id` in a lease's hands: `Leased` when it was free, `Lent` when a worker lends
    /// it (and waits behind it).
    fn lend(&mut self, id: WorkerId, weight: u32, key: Option<Key>, lender: Lender) {
        let held = Held { weight, key };
        match lender {
            Lender::Free => self.ids.lend_free(id, held),
            Lender::Worker => self.ids.lend_worker(id, held),
        }
    }

    /// A lease now, unless something queued would start before it or the limits leave it no
    /// room (see [`Shared::lease_now`]). Counted as an item admitted.
    fn lease_now(&mut self, weight: u32, key: Option<&Key>) -> Option<(WorkerId, Load)> {
        self.expire_limit();
        if self.busy >= self.limit
            || self.lanes.ahead_of(key)
            || !self
                .lanes
                .fits(weight, self.weight_running, self.limit, key)
        {
            return None;
        }
        let (id, lender) = match self.lowest_free() {
            Some(id) => (id, Lender::Free),
            None => (self.parked_below_limit()?, Lender::Worker),
        };
        if let Some(key) = key {
            self.lanes.charge(key, weight);
        }
        self.busy += 1;
        self.weight_running += weight as usize;
        self.counters.started += 1;
        self.counters.leased_at_once += 1;
        self.counters.max_running = self.counters.max_running.max(self.busy);
        self.lend(id, weight, key.cloned(), lender);
        let load = Load {
            running: self.weight_running,
            limit: self.limit,
            capped: self.capped(),
        };
        Some((id, load))
    }

    /// Ends the lease on `id`: its charge comes back, and its ID to its lender (free again, or
    /// back to the parked worker behind it, which is woken to look for work).
    fn end_lease(&mut self, id: WorkerId, outcome: Outcome, wake: &mut Wakers) {
        let (held, worker) = self.ids.end_lease(id);
        // Its worker, parked again, looks for work (or its keep-alive's end).
        if let Some(inbox) = worker {
            wake.push_worker(inbox);
        }
        self.dispatch_due |= charge_back(
            &mut self.lanes,
            &mut self.busy,
            &mut self.weight_running,
            (held.weight, held.key.as_ref()),
        );
        self.count(outcome);
        self.counters.leases_ended += 1;
    }

    /// An exited worker's ID came back on the done channel.
    pub(crate) fn release(&mut self, id: WorkerId) {
        self.ids.release(id);
    }

    /// Whether the manager should move work from the channel into the queue now. When it
    /// should not (a full FIFO queue), the next pop that brings the queue to its low-water mark
    /// asks it to, once; while it does, nobody needs to.
    pub(crate) fn take_work(&mut self) -> bool {
        let wants = self.lanes.keyed() || self.lanes.unkeyed().wants_more(self.limit);
        self.refill_asked = wants;
        wants
    }

    /// Moves submitted items into their lanes.
    pub(crate) fn enqueue(&mut self, jobs: impl Iterator<Item = Job>) {
        for job in jobs {
            self.lanes.push(job);
        }
    }

    /// Takes every queued item out (shutdown, or the manager's exit).
    pub(crate) fn take_queued(&mut self) -> Vec<Job> {
        self.lanes.take_all()
    }

    pub(crate) fn nothing_queued(&self) -> bool {
        self.lanes.is_empty()
    }

    pub(crate) fn key_limit(&self, key: &Key) -> usize {
        self.lanes.key_limit(key)
    }

    /// Sets one key's limit; returns true if items of the key may start now.
    pub(crate) fn set_key_limit(&mut self, key: Key, limit: usize) -> bool {
        self.lanes.set_key_limit(key, limit)
    }

    pub(crate) fn key_metrics(&self, key: &Key) -> Option<KeyMetrics> {
        self.lanes.key_metrics(key)
    }

    pub(crate) fn keys_most_queued(&self, n: usize) -> Vec<(Key, KeyMetrics)> {
        self.lanes.most_queued(n)
    }

    /// The work channel is closed and drained: workers with nothing left to do may now exit.
    pub(crate) fn set_drained(&mut self) {
        self.drained = true;
    }

    /// Takes the wakers of all parked workers, for them to look again at whether they should
    /// run, park or exit (after close, shutdown or a change of the limit).
    pub(crate) fn wake_parked(&mut self, wake: &mut Wakers) {
        self.ids.wake_parked(wake);
    }

    /// The items running or handed to a parked worker, for `shutdown` to cancel.
    pub(crate) fn running_tasks(&self) -> Vec<Arc<dyn RawTask>> {
        self.ids.running_tasks()
    }

    /// Counts items leaving the limiter unstarted (refused, cancelled by shutdown).
    pub(crate) fn count_dropped(&mut self, n: usize) {
        self.counters.dropped_unstarted += n as u64;
    }

    /// Counts queue entries of items that timed out while queued, found by a shutdown.
    pub(crate) fn count_timed_out_queued(&mut self, n: usize) {
        self.counters.timed_out_queued += n as u64;
    }

    /// Cancelled items that never started, cancelled running ones, and ended leases, apart
    /// (`metrics()` counts them with the items), for `shutdown_timeout`'s report.
    pub(crate) fn counted_apart(&self) -> (u64, u64, u64) {
        (
            self.counters.dropped_unstarted,
            self.counters.cancelled_running,
            self.counters.leases_ended,
        )
    }

    /// The limit in force.
    pub(crate) fn limit(&mut self) -> usize {
        self.expire_limit();
        self.limit
    }

    /// Says that the queue is empty, when it has become so (and the channel is still open), to
    /// the workers ending items lazily (see [`Shared::end_lazily`]). A stale `true` only sends
    /// them through the lock.
    fn note_empty_queue(&mut self) {
        if self.lanes.is_empty() && !self.drained && self.must_look.load(Ordering::Relaxed) {
            self.must_look.store(false, Ordering::SeqCst);
        }
    }

    /// Publishes the limit in force for workers ending items lazily: 0 (none may) while it
    /// has an expiry, which only admission checks.
    fn publish_limit(&self) {
        let limit = match self.expiry {
            Some(_) => 0,
            None => self.limit,
        };
        self.limit_hint.store(limit, Ordering::SeqCst);
    }

    /// Sets the limit in force, with no cap; with `expiry`, it holds until the instant and
    /// gives way to the fallback then (a cap over no limit of its own).
    pub(crate) fn set_limit(&mut self, limit: usize, expiry: Option<(Instant, usize)>) {
        let (before, changes) = (self.limit, self.counters.limit_changes);
        match expiry {
            None => (self.uncapped, self.cap) = (limit, usize::MAX),
            Some(_) => (self.uncapped, self.cap) = (usize::MAX, limit),
        }
        self.expiry = expiry;
        self.limit = self.uncapped.min(self.cap);
        self.expire_limit();
        // One change, whether or not the expiry has passed already.
        self.counters.limit_changes = changes + u64::from(self.limit != before);
        self.publish_limit();
    }

    /// Sets the limit under the cap; the cap and its expiry stay.
    pub(crate) fn set_uncapped(&mut self, limit: usize) {
        let (before, changes) = (self.limit, self.counters.limit_changes);
        self.uncapped = limit;
        self.limit = self.uncapped.min(self.cap);
        self.expire_limit();
        self.counters.limit_changes = changes + u64::from(self.limit != before);
        self.publish_limit();
    }

    /// Caps the limit set: at `cap` until `until`, at `fallback` from then on.
    pub(crate) fn set_cap(&mut self, cap: usize, until: Instant, fallback: usize) {
        let (before, changes) = (self.limit, self.counters.limit_changes);
        self.cap = cap;
        self.expiry = Some((until, fallback));
        self.limit = self.uncapped.min(self.cap);
        self.expire_limit();
        self.counters.limit_changes = changes + u64::from(self.limit != before);
        self.publish_limit();
    }

    /// Whether the limit in force is a cap below the limit set: items held back by it were
    /// held back by the cap, not by the limit set (an adaptive limiter's algorithm's).
    fn capped(&self) -> bool {
        self.limit < self.uncapped
    }

    /// Puts the fallback in force once the cap's expiry has passed. One branch when the limit
    /// has none; a read of the monotonic clock when it has.
    #[inline]
    fn expire_limit(&mut self) {
        if let Some((until, fallback)) = self.expiry {
            if Instant::now() >= until {
                let next = self.uncapped.min(fallback);
                if self.limit != next {
                    self.counters.limit_changes += 1;
                }
                self.cap = fallback;
                self.limit = next;
                self.expiry = None;
                self.publish_limit();
            }
        }
    }

    /// Worker tasks alive (or just spawned, or exiting with their ID not yet back).
    pub(crate) fn workers(&self) -> usize {
        self.ids.workers()
    }

    /// IDs held by worker tasks or leases: the manager exits only once there are none.
    pub(crate) fn ids_held(&self) -> usize {
        self.ids.held()
    }

    /// The IDs held by live workers or leases, lowest first.
    pub(crate) fn busy_ids(&self) -> Vec<WorkerId> {
        self.ids.held_ids()
    }

    /// Advances the wait and run time integrals to `now` (see `Integrals`).
    #[inline]
    fn advance(&mut self, now: Instant, submitted: u64) {
        let sums = &mut self.integrals;
        if now > sums.at {
            let elapsed = (now - sums.at).as_nanos();
            let c = &self.counters;
            let waiting = (sums.submitted + c.leased_at_once)
                .saturating_sub(c.started + c.dropped_unstarted + c.timed_out_queued);
            sums.wait_ns += elapsed * u128::from(waiting);
            sums.run_ns += elapsed * self.busy as u128;
            sums.at = now;
        }
        sums.submitted = submitted;
    }

    /// A snapshot of the counters; `submitted` is read by the caller after it, so that a
    /// racing item is never counted as both finished and queued.
    pub(crate) fn metrics(&mut self, submitted: u64, refusals: &RefusalCounts) -> Metrics {
        self.expire_limit();
        let (refused, leases_refused) = refusals.snapshot();
        let c = &self.counters;
        let submitted = submitted + c.leased_at_once;
        Metrics {
            limit: self.limit,
            queued: submitted.saturating_sub(c.started + c.dropped_unstarted + c.timed_out_queued)
                as usize,
            running: self.busy,
            weight_running: self.weight_running,
            submitted,
            completed: c.completed,
            panicked: c.panicked,
            cancelled: c.cancelled_running + c.dropped_unstarted,
            timed_out: c.timed_out_running + c.timed_out_queued,
            max_running: c.max_running,
            workers_spawned: c.workers_spawned,
            workers: self.workers(),
            idle_workers: self.ids.idle(),
            started: c.started,
            refused,
            leases_refused,
            wait_time: nanos(self.integrals.wait_ns),
            run_time: nanos(self.integrals.run_ns),
            limit_changes: c.limit_changes,
        }
    }
}

/// A sum of nanoseconds as a `Duration` (saturating, some 584 billion years on).
fn nanos(ns: u128) -> Duration {
    const PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(ns / PER_SEC).unwrap_or(u64::MAX);
    Duration::new(secs, (ns % PER_SEC) as u32)
}
