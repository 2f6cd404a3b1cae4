//! What the manager watches for queued items besides its channels: their queue deadlines, their
//! cancellation tokens, and the limiter's own token.
//!
//! One timer per limiter, not one per item: submitters put `(deadline, cell)` into one min-heap
//! and the manager keeps a single `Sleep`, armed for the earliest deadline. When it fires, the
//! manager pops every entry that is due and resolves those items that are still queued as timed
//! out, dropping their work there and then (not when the queue reaches them). Items with a token
//! get a small watcher future each (`token.cancelled()`, boxed), polled by the manager in one
//! `FuturesUnordered`: no task per item, and nothing at all for items without a token.
//!
//! The heap and the watchers hold cells weakly and forget items that started or ended only when
//! they fire, or when they have grown to twice what was left after the last sweep: then one pass
//! drops every entry whose item left the queue, so a service that gives every request a long
//! deadline keeps at most about twice as many entries as it has items queued.
//!
//! A limiter whose items never use either pays nothing: the manager polls none of this until the
//! first registration (`Watches::active`).

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::cell::RawTask;
use super::refusals::{Reason, RefusalCounts};
use crate::sync::rt::time::{sleep_until, Instant, Sleep};
use crate::sync::{lock, AtomicBool, Mutex, Ordering};

/// The fewest entries kept before a sweep is worth it.
const SWEEP_AT_LEAST: usize = 64;

/// What the manager watches for while an item waits in the queue: its queue deadline and its
/// token. Items without either carry none.
#[derive(Clone, Debug, Default)]
pub(crate) struct Watch {
    /// The latest the item may start.
    pub(crate) deadline: Option<Instant>,
    /// Cancels the item while it waits.
    pub(crate) token: Option<CancellationToken>,
}

impl Watch {
    /// Moves the deadline to `at` if that is earlier.
    pub(crate) fn deadline_at(&mut self, at: Instant) {
        self.deadline = Some(self.deadline.map_or(at, |old| old.min(at)));
    }

    /// Ends `task` (still queued, never seen by the manager) if its deadline has passed or its
    /// token is cancelled already; returns true if it did.
    pub(crate) fn ended_already(&self, task: &dyn RawTask) -> bool {
        if self.deadline.is_some_and(|at| at <= Instant::now()) {
            task.time_out_queued()
        } else if self
            .token
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            task.cancel_queued()
        } else {
            false
        }
    }
}

/// The submitters' side: registrations for the manager to pick up.
pub(crate) struct Watches {
    registry: Mutex<Registry>,
    /// Something was registered since the manager last looked.
    dirty: AtomicBool,
    /// Set once, at the first registration: from then on the manager polls its `Watcher`.
    active: AtomicBool,
    /// The manager's waker, for a registration to wake it.
    waker: AtomicWaker,
}

struct Registry {
    heap: BinaryHeap<Reverse<Entry>>,
    next_seq: u64,
    sweep_at: usize,
    /// The earliest deadline in the heap when the manager last looked, which its timer is
    /// armed for; `None` before it first looks or while the heap is empty. A registration
    /// wakes the manager only when its deadline comes earlier (or the heap is due a sweep):
    /// a burst of items with deadlines wakes it once, not once per item.
    armed_at: Option<Instant>,
    tokens: Vec<(CancellationToken, Weak<dyn RawTask>)>,
}

/// A queued item's deadline: ordered by the deadline, then by registration.
struct Entry {
    at: Instant,
    seq: u64,
    task: Weak<dyn RawTask>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> CmpOrdering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Whether a weakly held item is still waiting in the queue.
fn still_queued(task: &Weak<dyn RawTask>) -> bool {
    task.upgrade().is_some_and(|task| task.is_queued())
}

impl Watches {
    pub(crate) fn new() -> Watches {
        Watches {
            registry: Mutex::new(Registry {
                heap: BinaryHeap::new(),
                next_seq: 0,
                sweep_at: SWEEP_AT_LEAST,
                armed_at: None,
                tokens: Vec::new(),
            }),
            dirty: AtomicBool::new(false),
            active: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    /// Whether anything was ever registered.
    pub(crate) fn active(&self) -> bool {
        // Relaxed: the `dirty` flag and the waker carry the registration itself; this only
        // says whether to look, and a registration always wakes the manager after setting it.
        self.active.load(Ordering::Relaxed)
    }

    /// Watches `task`'s deadline and token while it is queued. Returns true for the limiter's
    /// first registration: the manager does not poll its watcher before one, so the caller
    /// must wake it by other means (a registration's own wake reaches only a watcher that was
    /// polled).
    pub(crate) fn register(&self, watch: &Watch, task: Weak<dyn RawTask>) -> bool {
        let first = !self.active();
        if let Some(at) = watch.deadline {
            self.deadline(at, task.clone());
        }
        if let Some(token) = &watch.token {
            self.token(token.clone(), task);
        }
        first
    }

    /// Times `task` out if it is still queued at `at`.
    fn deadline(&self, at: Instant, task: Weak<dyn RawTask>) {
        let mut registry = lock(&self.registry);
        let seq = registry.next_seq;
        registry.next_seq += 1;
        registry.heap.push(Reverse(Entry { at, seq, task }));
        let look = registry.armed_at.is_none_or(|armed| at < armed)
            || registry.heap.len() >= registry.sweep_at;
        drop(registry);
        if look {
            self.wake();
        } else {
            // The manager's timer fires at or before this deadline, and it looks at the heap
            // then. `armed_at` is set only by a look, after a registration set `active`; read
            // first, so that the shared line is not written per item.
            if !self.active() {
                self.active.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Cancels `task` if it is still queued when `token` is cancelled.
    fn token(&self, token: CancellationToken, task: Weak<dyn RawTask>) {
        lock(&self.registry).tokens.push((token, task));
        self.wake();
    }

    fn wake(&self) {
        self.active.store(true, Ordering::Relaxed);
        // Release, after the registration: the manager that swaps it back finds the entry.
        self.dirty.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// The manager's side: the one timer, the token watchers, and the limiter's own token.
pub(crate) struct Watcher {
    /// Made at the first deadline, then reset from deadline to deadline.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    tokens: FuturesUnordered<TokenWatch>,
    sweep_tokens_at: usize,
    /// `Builder::cancel_on`: shuts the limiter down when cancelled.
    shutdown_on: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    on_cancel: Option<Box<dyn FnOnce() + Send>>,
}

/// What woke the manager's `Watcher`.
pub(crate) enum Fired {
    /// The limiter's token was cancelled.
    Shutdown,
    /// Something to look at: new registrations, the timer, an item's token.
    Look,
}

/// One queued item's token.
struct TokenWatch {
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    task: Weak<dyn RawTask>,
}

impl Future for TokenWatch {
    type Output = Weak<dyn RawTask>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        std::task::ready!(self.cancelled.as_mut().poll(cx));
        Poll::Ready(self.task.clone())
    }
}

impl Watcher {
    pub(crate) fn new(
        shutdown_on: Option<CancellationToken>,
        on_cancel: Option<Box<dyn FnOnce() + Send>>,
    ) -> Watcher {
        Watcher {
            timer: None,
            armed: false,
            tokens: FuturesUnordered::new(),
            sweep_tokens_at: SWEEP_AT_LEAST,
            shutdown_on: shutdown_on.map(|token| Box::pin(token.cancelled_owned())),
            on_cancel,
        }
    }

    /// Whether the manager should poll this at all.
    pub(crate) fn active(&self, watches: &Watches) -> bool {
        self.shutdown_on.is_some() || watches.active()
    }

    /// Waits for the limiter's token, a registration, the timer or an item's token. Items whose
    /// token fired are cancelled here; the rest is left to [`look`](Self::look).
    pub(crate) fn poll(
        &mut self,
        watches: &Watches,
        refusals: &RefusalCounts,
        cx: &mut Context<'_>,
    ) -> Poll<Fired> {
        if let Some(token) = &mut self.shutdown_on {
            if token.as_mut().poll(cx).is_ready() {
                self.shutdown_on = None;
                if let Some(on_cancel) = self.on_cancel.take() {
                    on_cancel();
                }
                return Poll::Ready(Fired::Shutdown);
            }
        }
        watches.waker.register(cx.waker());
        let mut fired = watches.dirty.load(Ordering::Acquire);
        if self.armed {
            if let Some(timer) = &mut self.timer {
                if timer.as_mut().poll(cx).is_ready() {
                    self.armed = false;
                    fired = true;
                }
            }
        }
        // Ready(None) only while it is empty.
        while let Poll::Ready(Some(task)) = self.tokens.poll_next_unpin(cx) {
            if let Some(task) = task.upgrade() {
                if task.cancel_queued() {
                    refusals.count(task.is_lease(), Reason::Token);
                }
            }
            fired = true;
        }
        match fired {
            true => Poll::Ready(Fired::Look),
            false => Poll::Pending,
        }
    }

    /// Takes new registrations, times out the queued items that are due, and arms the timer
    /// for the next deadline.
    pub(crate) fn look(&mut self, watches: &Watches, refusals: &RefusalCounts) {
        // Acquire: pairs with the registration's Release; a registration after the swap sets
        // it again and wakes the manager.
        watches.dirty.store(false, Ordering::Release);
        let now = Instant::now();
        let mut due = Vec::new();
        let mut registry = lock(&watches.registry);
        let tokens = std::mem::take(&mut registry.tokens);
        while let Some(Reverse(entry)) = registry.heap.peek() {
            if !is_due(
                entry.at,
                now,
                !self.armed && self.timer.is_some(),
                due.is_empty(),
            ) {
                break;
            }
            let Some(Reverse(entry)) = registry.heap.pop() else {
                break;
            };
            due.push(entry.task);
        }
        if registry.heap.len() >= registry.sweep_at {
            registry
                .heap
                .retain(|Reverse(entry)| still_queued(&entry.task));
            registry.sweep_at = (registry.heap.len() * 2).max(SWEEP_AT_LEAST);
        }
        let next = registry.heap.peek().map(|Reverse(entry)| entry.at);
        registry.armed_at = next;
        drop(registry);

        // Outside the registry's lock: this drops the items' work.
        for task in due {
            if let Some(task) = task.upgrade() {
                if task.time_out_queued() {
                    refusals.count(task.is_lease(), Reason::QueueTimeout);
                }
            }
        }
        for (token, task) in tokens {
            if !still_queued(&task) {
                continue;
            }
            self.tokens.push(TokenWatch {
                cancelled: Box::pin(token.cancelled_owned()),
                task,
            });
        }
        if self.tokens.len() >= self.sweep_tokens_at {
            let all = std::mem::take(&mut self.tokens);
            self.tokens = all.into_iter().filter(|w| still_queued(&w.task)).collect();
            self.sweep_tokens_at = (self.tokens.len() * 2).max(SWEEP_AT_LEAST);
        }
        match next {
            Some(at) => {
                match &mut self.timer {
                    Some(timer) => timer.as_mut().reset(at),
                    None => self.timer = Some(Box::pin(sleep_until(at))),
                }
                self.armed = true;
            }
            None => self.armed = false,
        }
    }
}

/// Whether a deadline `at` has come. With tokio's clock: `at <= now`.
#[cfg(not(feature = "shuttle"))]
fn is_due(at: Instant, now: Instant, _fired: bool, _first: bool) -> bool {
    at <= now
}

/// shuttle-tokio has no clock of its own: its `Sleep` fires at whichever step the scheduler
/// picks. That firing stands for the earliest deadline coming, so it times out one entry, the
/// earliest, and the model checks explore a deadline landing anywhere among the other steps.
#[cfg(feature = "shuttle")]
fn is_due(at: Instant, now: Instant, fired: bool, first: bool) -> bool {
    at <= now || (fired && first)
}
