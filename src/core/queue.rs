use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use super::cell::Job;

/// The order in which queued items start.
///
/// # Examples
///
/// ```
/// use task_limiter::{Limiter, QueueOrder};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::builder().limit(4).queue_order(QueueOrder::Lifo).build();
/// # drop(limiter);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueueOrder {
    /// First in, first out: items start in the order they were submitted. The default.
    #[default]
    Fifo,
    /// Last in, first out: the most recently submitted item starts first, as in the Go
    /// compiler's back end. Keeps recently made (cache-warm) work moving.
    Lifo,
    /// Highest priority first, and first in, first out among equal priorities. An item's
    /// priority is set with [`TaskBuilder::priority`](crate::TaskBuilder::priority); items
    /// submitted without one have priority 0. Under the other orders priorities are ignored.
    ///
    /// Priority decides which queued item starts next; it never stops a running item.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::{Limiter, QueueOrder};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder()
    ///     .limit(1)
    ///     .queue_order(QueueOrder::Priority)
    ///     .build();
    /// let routine = limiter.spawn(async { "routine" });
    /// let urgent = limiter.build_task().priority(10).spawn(async { "urgent" });
    /// assert_eq!(urgent.await.unwrap(), "urgent");
    /// assert_eq!(routine.await.unwrap(), "routine");
    /// # }
    /// ```
    Priority,
}

/// The items waiting for a worker, in the order the limiter was built with.
///
/// The manager appends whole batches from the work channel; workers pop from it when they
/// finish an item. Both do so under one short lock, never across an `.await`.
///
/// A FIFO queue is filled only a little ahead of the workers ([`wants_more`](Self::wants_more)):
/// the rest waits in the work channel, in the same order, rather than in both places at once
/// (which cost 16 bytes or more per queued item and a reallocation of the queue as it grew).
/// When the workers bring it down to its low-water mark they wake the manager to top it up. LIFO and
/// priority queues take everything at once, since their order covers every waiting item.
pub(crate) enum Queue {
    Fifo(VecDeque<Job>),
    Lifo(Vec<Job>),
    Priority {
        heap: BinaryHeap<Ranked>,
        /// Arrival count, to keep FIFO order among equal priorities.
        next_seq: u64,
    },
}

/// A job in a priority queue, ranked by its priority and then by its arrival.
pub(crate) struct Ranked {
    priority: i32,
    seq: u64,
    job: Job,
}

impl Ord for Ranked {
    /// The greatest is popped first: the highest priority, then the earliest arrival.
    fn cmp(&self, other: &Ranked) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Ranked) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Ranked) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

/// Queued items at which workers ask the manager to top a FIFO queue up: enough to keep every
/// worker busy until the manager runs. A worker runs up to tokio's coop budget (128) of ready
/// items before it yields, and the manager, once woken, may wait behind every worker in the run
/// queue, so the mark scales with the limit.
///
/// Under the shuttle model checker the marks shrink to a few items, so that its handful of items
/// per schedule goes through the refill protocol (the queue full, the rest left in the channel,
/// a worker's low-water wake-up) rather than never filling the queue.
fn low_water(limit: usize) -> usize {
    const PER_SLOT: usize = if cfg!(feature = "shuttle") { 1 } else { 128 };
    const AT_LEAST: usize = if cfg!(feature = "shuttle") { 1 } else { 1024 };
    limit.saturating_mul(PER_SLOT).max(AT_LEAST)
}

impl Queue {
    pub(crate) fn new(order: QueueOrder) -> Queue {
        match order {
            QueueOrder::Fifo => Queue::Fifo(VecDeque::new()),
            QueueOrder::Lifo => Queue::Lifo(Vec::new()),
            QueueOrder::Priority => Queue::Priority {
                heap: BinaryHeap::new(),
                next_seq: 0,
            },
        }
    }

    pub(crate) fn extend(&mut self, jobs: impl Iterator<Item = Job>) {
        match self {
            Queue::Fifo(queue) => queue.extend(jobs),
            Queue::Lifo(stack) => stack.extend(jobs),
            Queue::Priority { heap, next_seq } => {
                for job in jobs {
                    // Fixed at submission and read without the cell's lock.
                    let priority = job.priority();
                    heap.push(Ranked {
                        priority,
                        seq: *next_seq,
                        job,
                    });
                    *next_seq += 1;
                }
            }
        }
    }

    pub(crate) fn push(&mut self, job: Job) {
        match self {
            Queue::Fifo(queue) => queue.push_back(job),
            Queue::Lifo(stack) => stack.push(job),
            Queue::Priority { .. } => self.extend(std::iter::once(job)),
        }
    }

    /// The entry that `pop` would take.
    pub(crate) fn peek(&self) -> Option<&Job> {
        match self {
            Queue::Fifo(queue) => queue.front(),
            Queue::Lifo(stack) => stack.last(),
            Queue::Priority { heap, .. } => heap.peek().map(|ranked| &ranked.job),
        }
    }

    /// Entries whose items still wait (not cancelled while queued).
    pub(crate) fn count_queued(&self) -> usize {
        match self {
            Queue::Fifo(queue) => queue.iter().filter(|job| job.is_queued()).count(),
            Queue::Lifo(stack) => stack.iter().filter(|job| job.is_queued()).count(),
            Queue::Priority { heap, .. } => heap.iter().filter(|r| r.job.is_queued()).count(),
        }
    }

    /// Entries, those of items cancelled while queued included: no pass over them.
    pub(crate) fn entries(&self) -> usize {
        match self {
            Queue::Fifo(queue) => queue.len(),
            Queue::Lifo(stack) => stack.len(),
            Queue::Priority { heap, .. } => heap.len(),
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Job> {
        match self {
            Queue::Fifo(queue) => queue.pop_front(),
            Queue::Lifo(stack) => stack.pop(),
            Queue::Priority { heap, .. } => heap.pop().map(|ranked| ranked.job),
        }
    }

    /// Whether the manager should move more work from the channel into this queue.
    pub(crate) fn wants_more(&self, limit: usize) -> bool {
        match self {
            Queue::Fifo(queue) => queue.len() < low_water(limit).saturating_mul(2),
            Queue::Lifo(_) | Queue::Priority { .. } => true,
        }
    }

    /// True when a FIFO queue is down to its low-water mark: the worker whose pop brought it
    /// there wakes the manager (once per top-up), which may have stopped filling the queue.
    pub(crate) fn at_low_water(&self, limit: usize) -> bool {
        matches!(self, Queue::Fifo(queue) if queue.len() <= low_water(limit))
    }

    /// Whether the queue is short enough for submitters to queue their items themselves
    /// rather than through the manager's channel: below the FIFO low-water mark, whatever the
    /// order.
    pub(crate) fn is_short(&self, limit: usize) -> bool {
        self.entries() < low_water(limit)
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Queue::Fifo(queue) => queue.is_empty(),
            Queue::Lifo(stack) => stack.is_empty(),
            Queue::Priority { heap, .. } => heap.is_empty(),
        }
    }

    /// Removes every entry, leaving the storage empty (and its memory freed).
    pub(crate) fn take_all(&mut self) -> Vec<Job> {
        match self {
            Queue::Fifo(queue) => std::mem::take(queue).into(),
            Queue::Lifo(stack) => std::mem::take(stack),
            Queue::Priority { heap, .. } => std::mem::take(heap)
                .into_vec()
                .into_iter()
                .map(|ranked| ranked.job)
                .collect(),
        }
    }
}
