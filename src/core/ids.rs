//! The worker-ID table: for each ID, who holds it (a worker task, in one of its states, or a
//! lease) or that it is free, with every transition between those in this file. Exclusivity
//! can be read off it: an ID leaves `Free` only through [`Ids::hand_free`] and
//! [`Ids::lend_free`], every other transition keeps its one holder (a worker hands its ID to a
//! lease and gets it back, or gives it up by exiting), and an ID comes back to `Free` only from
//! `Exiting` (its worker task gone, [`Ids::release`]) or `Leased` (its lease ended,
//! [`Ids::end_lease`]).
//!
//! Admission (`admission.rs`) decides what starts, and on which ID; this table only records it.
//! Both live under the one admission lock, except for two moves through the ID's [`Inbox`]:
//! the job handed to an ID's worker waits there, and the worker empties it as it wakes, without
//! that lock (the slot is `Busy` from the hand-over on); and a worker that finds nothing queued
//! after its item leaves how the item ended there, for the next turn of the lock to count and
//! to park it (`Shared::end_lazily`; the slot stays `Busy` until then).

use std::collections::BTreeSet;
use std::mem;
use std::task::Waker;

use tokio::time::Instant;

use super::cell::{Job, Load, Outcome, RawTask};
use super::wakers::Wakers;
use crate::key::Key;
use crate::sync::{lock, Arc, AtomicUsize, Mutex, Ordering};
use crate::worker_id::WorkerId;

/// What one worker ID is doing.
enum Slot {
    /// No worker or lease holds it.
    Free,
    /// Its worker runs this item, or is about to: admission handed it the item's job through
    /// the ID's [`Inbox`], which the worker takes it from. Kept so that `shutdown` can cancel it.
    Busy(Arc<dyn RawTask>),
    /// Its worker waits for work, holding the ID; it is woken through its [`Inbox`].
    Parked,
    /// Its worker is on its way out; the ID comes back to the manager on the done channel.
    Exiting,
    /// A lease holds it, with no worker task behind the ID.
    Leased(Held),
    /// A lease holds it, lent by a worker that waits behind it for the ID back (woken through
    /// its [`Inbox`] when the lease ends).
    Lent(Held),
}

/// What a lease counts against the limits while it holds its ID: kept in its slot, so that the
/// lease itself needs no cell once granted.
pub(crate) struct Held {
    pub(crate) weight: u32,
    pub(crate) key: Option<Key>,
}

/// What a worker finds in its slot as it asks for work.
pub(crate) enum Asking {
    /// A job handed to it, taken from its inbox: it runs it now.
    Handed(Job, Load),
    /// It just ended an item.
    Busy,
    /// It waits for work.
    Parked,
    /// Its ID is lent to a lease: it waits for it to come back.
    Lent,
}

/// What a worker left behind as its task went (see [`Ids::gone`]).
pub(crate) enum Gone {
    /// It was running this item, or had been handed its job (then still in the ID's inbox).
    Running(Arc<dyn RawTask>),
    /// It held no item.
    Idle,
    /// Its ID is lent to a lease, which keeps it (the ID does not go back to the manager).
    Lent,
}

/// The table, and two indexes over it.
pub(crate) struct Ids {
    /// Indexed by worker ID; only as long as the highest ID held.
    slots: Vec<Slot>,
    /// The IDs in `slots` that are `Free`.
    free: BTreeSet<u32>,
    /// The IDs that are `Parked`, the most recently parked last. Work goes to the most recently
    /// parked worker: its stack and caches are warm, and the others can run into their
    /// keep-alive when there is less work than workers.
    parked: Vec<u32>,
    /// `parked.len()`, readable without the lock: submitters look at it to decide whether to
    /// try handing their item to a parked worker themselves.
    parked_hint: Arc<AtomicUsize>,
    /// The IDs that are `Leased`: held with no worker task behind them.
    leased_alone: usize,
    /// Each ID's inbox, made with its first slot and kept (an ID's next worker reuses it).
    inboxes: Vec<Arc<Inbox>>,
}

/// Where admission leaves the job it hands to an ID's worker (parked, or yet to be spawned),
/// and where that worker leaves its waker.
///
/// The job is written under the admission lock, together with the slot becoming `Busy`, and
/// read by the worker without it, as it wakes: a service's request so costs its worker no trip
/// through the admission lock to learn what to run. The worker's own lock is held for a move,
/// by one writer and one reader that the wake-up puts in turn.
///
/// The waker is left once by the worker task (before its first turn of admission) and stays
/// until the task is gone: a park clones no waker, and a wake does not consume one.
#[derive(Default)]
pub(crate) struct Inbox(Mutex<Mailbox>);

#[derive(Default)]
struct Mailbox {
    job: Option<(Job, Load)>,
    waker: Option<Waker>,
    /// How and when the worker's last item ended, when it ended it without the admission
    /// lock, until the next turn of the lock counts it (`Shared::end_lazily`).
    ended: Option<(Outcome, Instant)>,
}

impl Inbox {
    /// Takes the job handed to this ID's worker, if there is one.
    pub(crate) fn take(&self) -> Option<(Job, Load)> {
        lock(&self.0).job.take()
    }

    /// The worker task holding this ID leaves its waker, for admission to wake it with.
    pub(crate) fn register(&self, waker: &Waker) {
        let mut mailbox = lock(&self.0);
        if !mailbox.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            mailbox.waker = Some(waker.clone());
        }
    }

    /// Wakes the worker: called once the admission lock that handed it work (or told it to
    /// look again) is released.
    pub(crate) fn wake(&self) {
        if let Some(waker) = &lock(&self.0).waker {
            waker.wake_by_ref();
        }
    }

    /// The worker ended its item without the admission lock: how and when, for the next turn
    /// of the lock to count.
    pub(crate) fn end(&self, outcome: Outcome, at: Instant) {
        let previous = lock(&self.0).ended.replace((outcome, at));
        debug_assert!(previous.is_none(), "an end left over another");
    }

    /// Takes the end left by [`end`](Self::end).
    pub(crate) fn take_ended(&self) -> Option<(Outcome, Instant)> {
        lock(&self.0).ended.take()
    }

    fn put(&self, job: Job, load: Load) {
        let previous = lock(&self.0).job.replace((job, load));
        debug_assert!(previous.is_none(), "a job handed over another");
    }

    /// The worker task is gone: its waker goes too.
    fn forget_waker(&self) -> Option<Waker> {
        lock(&self.0).waker.take()
    }
}

impl Ids {
    pub(crate) fn new(parked_hint: Arc<AtomicUsize>) -> Ids {
        Ids {
            slots: Vec::new(),
            free: BTreeSet::new(),
            parked: Vec::new(),
            parked_hint,
            leased_alone: 0,
            inboxes: Vec::new(),
        }
    }

    // --- a worker's own transitions ---

    /// Worker `id` asks for work: takes a job handed to it (from its inbox), or says where
    /// it is.
    pub(crate) fn ask(&mut self, id: WorkerId) -> Asking {
        match &self.slots[id.index()] {
            Slot::Busy(_) => match self.inboxes[id.index()].take() {
                Some((job, load)) => Asking::Handed(job, load),
                None => Asking::Busy,
            },
            Slot::Parked => Asking::Parked,
            Slot::Lent(_) => Asking::Lent,
            Slot::Free | Slot::Exiting | Slot::Leased(_) => {
                unreachable!("{id} asks for work without holding its ID")
            }
        }
    }

    /// Worker `id` (which just ended an item, or was parked) starts `task`.
    pub(crate) fn run(&mut self, id: WorkerId, task: Arc<dyn RawTask>) {
        self.leave_park(id);
        self.slots[id.index()] = Slot::Busy(task);
    }

    /// Worker `id` (which just ended an item, or was parked) exits; its ID goes back to the
    /// manager when its task is gone.
    pub(crate) fn exit(&mut self, id: WorkerId) {
        self.leave_park(id);
        self.slots[id.index()] = Slot::Exiting;
    }

    /// Worker `id` waits for work, to be woken through its inbox.
    pub(crate) fn park(&mut self, id: WorkerId) {
        if !matches!(self.slots[id.index()], Slot::Parked) {
            self.index_parked(id);
            self.slots[id.index()] = Slot::Parked;
        }
    }

    /// A parked worker's keep-alive ran out: it exits, unless it is no longer parked (work was
    /// handed to it, or its ID lent). Returns whether it exits.
    #[cfg(not(feature = "shuttle"))]
    pub(crate) fn expire(&mut self, id: WorkerId) -> bool {
        if !matches!(self.slots[id.index()], Slot::Parked) {
            return false;
        }
        self.exit(id);
        true
    }

    /// Worker `id`'s task is gone, whatever it was doing (a runtime that shuts down drops
    /// workers mid-item): its ID is on its way back to the manager, unless a lease holds it.
    pub(crate) fn gone(&mut self, id: WorkerId) -> Gone {
        self.leave_park(id);
        drop(self.inboxes[id.index()].forget_waker());
        match mem::replace(&mut self.slots[id.index()], Slot::Exiting) {
            Slot::Busy(task) => Gone::Running(task),
            Slot::Parked | Slot::Exiting => Gone::Idle,
            Slot::Lent(held) => {
                self.slots[id.index()] = Slot::Leased(held);
                self.leased_alone += 1;
                Gone::Lent
            }
            slot @ (Slot::Free | Slot::Leased(_)) => {
                debug_assert!(false, "{id} released while not a worker's");
                self.slots[id.index()] = slot;
                Gone::Lent
            }
        }
    }

    // --- admission's transitions ---

    /// Hands `job` to parked worker `id`; returns its inbox, to wake it through.
    pub(crate) fn hand_parked(&mut self, id: WorkerId, job: Job, load: Load) -> Arc<Inbox> {
        self.leave_park(id);
        let task = job.task().expect("a handed job is queued");
        let inbox = &self.inboxes[id.index()];
        inbox.put(job, load);
        match mem::replace(&mut self.slots[id.index()], Slot::Busy(task)) {
            Slot::Parked => inbox.clone(),
            _ => unreachable!("{id} is handed work while not parked"),
        }
    }

    /// Takes free ID `id` for a new worker, handed `job` as its first: the manager spawns it.
    pub(crate) fn hand_free(&mut self, id: WorkerId, job: Job, load: Load) {
        let task = job.task().expect("a handed job is queued");
        self.take_free(id, Slot::Busy(task));
        self.inboxes[id.index()].put(job, load);
    }

    /// Free ID `id` goes to a lease.
    pub(crate) fn lend_free(&mut self, id: WorkerId, held: Held) {
        self.take_free(id, Slot::Leased(held));
        self.leased_alone += 1;
    }

    /// Worker `id` (parked, or asking for work) lends its ID to a lease and waits behind it.
    pub(crate) fn lend_worker(&mut self, id: WorkerId, held: Held) {
        self.leave_park(id);
        match mem::replace(&mut self.slots[id.index()], Slot::Lent(held)) {
            Slot::Parked | Slot::Busy(_) => {}
            _ => unreachable!("{id} is lent while not its worker's"),
        }
    }

    /// The lease on `id` ended: the ID goes back to its lender (free again, or to its worker,
    /// parked, whose inbox is returned for the caller to wake it through). Returns what the
    /// lease held.
    pub(crate) fn end_lease(&mut self, id: WorkerId) -> (Held, Option<Arc<Inbox>>) {
        match mem::replace(&mut self.slots[id.index()], Slot::Exiting) {
            Slot::Leased(held) => {
                self.leased_alone -= 1;
                self.free_id(id);
                (held, None)
            }
            Slot::Lent(held) => {
                self.slots[id.index()] = Slot::Parked;
                self.index_parked(id);
                (held, Some(self.inboxes[id.index()].clone()))
            }
            _ => unreachable!("{id} ends a lease it does not hold"),
        }
    }

    /// An exited worker's ID came back on the done channel.
    pub(crate) fn release(&mut self, id: WorkerId) {
        debug_assert!(matches!(self.slots[id.index()], Slot::Exiting));
        self.free_id(id);
    }

    // --- views ---

    /// The inbox of `id`, an ID that has been handed out before.
    pub(crate) fn inbox(&self, id: WorkerId) -> &Arc<Inbox> {
        &self.inboxes[id.index()]
    }

    /// The item worker `id` runs.
    pub(crate) fn running(&self, id: WorkerId) -> &Arc<dyn RawTask> {
        match &self.slots[id.index()] {
            Slot::Busy(task) => task,
            _ => unreachable!("{id} ends an item it does not run"),
        }
    }

    /// The most recently parked worker whose ID is below `limit` (the others are on their way
    /// out, woken by the change of limit).
    pub(crate) fn parked_below(&self, limit: usize) -> Option<WorkerId> {
        self.parked
            .iter()
            .rev()
            .find(|&&id| (id as usize) < limit)
            .map(|&id| WorkerId(id))
    }

    /// The lowest ID nobody holds, below `limit`.
    pub(crate) fn lowest_free(&self, limit: usize) -> Option<WorkerId> {
        let next = self
            .free
            .first()
            .copied()
            .unwrap_or(self.slots.len() as u32);
        ((next as usize) < limit && next < u32::MAX).then_some(WorkerId(next))
    }

    /// Collects the inboxes of all parked workers, for them to look again at whether they
    /// should run, park or exit (after close, shutdown or a change of the limit).
    pub(crate) fn wake_parked(&mut self, wake: &mut Wakers) {
        for &id in &self.parked {
            wake.push_worker(self.inboxes[id as usize].clone());
        }
    }

    /// The items running or handed to a worker, for `shutdown` to cancel.
    pub(crate) fn running_tasks(&self) -> Vec<Arc<dyn RawTask>> {
        self.slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Busy(task) => Some(task.clone()),
                _ => None,
            })
            .collect()
    }

    /// IDs held by worker tasks or leases.
    pub(crate) fn held(&self) -> usize {
        // `free` indexes the free slots, and `slots` ends at the highest ID held.
        self.slots.len() - self.free.len()
    }

    /// Worker tasks alive (or just spawned, or exiting with their ID not yet back).
    pub(crate) fn workers(&self) -> usize {
        self.held() - self.leased_alone
    }

    /// Parked workers.
    pub(crate) fn idle(&self) -> usize {
        self.parked.len()
    }

    /// The IDs held, lowest first.
    pub(crate) fn held_ids(&self) -> Vec<WorkerId> {
        (0..self.slots.len() as u32)
            .filter(|id| !self.free.contains(id))
            .map(WorkerId)
            .collect()
    }

    // --- the indexes ---

    fn take_free(&mut self, id: WorkerId, slot: Slot) {
        if id.index() == self.slots.len() {
            self.slots.push(slot);
            if self.inboxes.len() < self.slots.len() {
                self.inboxes.push(Arc::default());
            }
        } else {
            let was_free = self.free.remove(&id.0);
            debug_assert!(was_free, "{id} handed out twice");
            self.slots[id.index()] = slot;
        }
    }

    fn free_id(&mut self, id: WorkerId) {
        // Keep `slots` as long as the highest ID held, so a burst at a huge limit leaves nothing
        // behind. The highest ID (the common case: a lease alone on an idle limiter) goes
        // without a trip through the free set.
        if id.index() + 1 == self.slots.len() {
            self.slots.pop();
        } else {
            self.slots[id.index()] = Slot::Free;
            self.free.insert(id.0);
        }
        while let Some(Slot::Free) = self.slots.last() {
            self.slots.pop();
            self.free.remove(&(self.slots.len() as u32));
        }
    }

    fn index_parked(&mut self, id: WorkerId) {
        debug_assert!(!self.parked.contains(&id.0), "{id} parked twice");
        self.parked.push(id.0);
        self.parked_hint.store(self.parked.len(), Ordering::Relaxed);
    }

    /// Takes `id` out of the parked index if it is parked.
    fn leave_park(&mut self, id: WorkerId) {
        if !matches!(self.slots[id.index()], Slot::Parked) {
            return;
        }
        let at = self.parked.iter().rposition(|&parked| parked == id.0);
        debug_assert!(at.is_some(), "{id} is parked but not indexed");
        if let Some(at) = at {
            self.parked.remove(at);
        }
        self.parked_hint.store(self.parked.len(), Ordering::Relaxed);
    }
}
