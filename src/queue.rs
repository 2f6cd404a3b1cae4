use std::collections::VecDeque;

use crate::task::Job;
use crate::QueueOrder;

/// The items waiting for a worker, in the order the limiter was built with.
///
/// The manager appends whole batches from the work channel; workers pop from it when they
/// finish an item. Both do so under one short lock, never across an `.await`.
pub(crate) enum Queue {
    Fifo(VecDeque<Job>),
    Lifo(Vec<Job>),
}

impl Queue {
    pub(crate) fn new(order: QueueOrder) -> Queue {
        match order {
            QueueOrder::Fifo => Queue::Fifo(VecDeque::new()),
            QueueOrder::Lifo => Queue::Lifo(Vec::new()),
        }
    }

    pub(crate) fn extend(&mut self, jobs: impl Iterator<Item = Job>) {
        match self {
            Queue::Fifo(queue) => queue.extend(jobs),
            Queue::Lifo(stack) => stack.extend(jobs),
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Job> {
        match self {
            Queue::Fifo(queue) => queue.pop_front(),
            Queue::Lifo(stack) => stack.pop(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Queue::Fifo(queue) => queue.is_empty(),
            Queue::Lifo(stack) => stack.is_empty(),
        }
    }

    /// Removes every entry, leaving the storage empty (and its memory freed).
    pub(crate) fn take_all(&mut self) -> Vec<Job> {
        match self {
            Queue::Fifo(queue) => std::mem::take(queue).into(),
            Queue::Lifo(stack) => std::mem::take(stack),
        }
    }
}
