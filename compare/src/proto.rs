//! `proto`: the featureless reference issue 18 measured the core against: the core's shape with
//! nothing else. A manager drains an unbounded channel with `recv_many` into one queue under one
//! lock; up to N workers take the next item themselves (a worker exits when the queue is empty,
//! and the manager spawns one per item it queues while fewer than N are alive); one `Arc` cell
//! per item holds the work, then its result, and the handle's waker. No worker IDs, parking,
//! keys, weights, priorities, deadlines, metrics, shutdown or panic handling: what is left of
//! task-limiter's own time per item when its features cost nothing.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

/// The prototype limiter; dropping it ends its manager once the queue is handed out.
pub(crate) struct Proto {
    tx: UnboundedSender<Job>,
}

type Job = Arc<dyn Run>;

trait Run: Send + Sync {
    fn poll_run(&self, cx: &mut Context<'_>) -> Poll<()>;
}

struct Shared {
    queue: Mutex<Queue>,
    limit: usize,
}

struct Queue {
    jobs: VecDeque<Job>,
    alive: usize,
}

impl Proto {
    pub(crate) fn new(limit: usize) -> Proto {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                alive: 0,
            }),
            limit,
        });
        tokio::spawn(manager(shared, rx));
        Proto { tx }
    }

    pub(crate) fn spawn<F>(&self, future: F) -> Handle<F>
    where
        F: Future + Send + 'static,
        F::Output: Send,
    {
        let cell = Arc::new(Cell {
            inner: Mutex::new(Inner {
                stage: Stage::Queued(future),
                waker: None,
            }),
        });
        if self.tx.send(cell.clone()).is_err() {
            panic!("the prototype's manager is gone");
        }
        Handle(cell)
    }
}

async fn manager(shared: Arc<Shared>, mut rx: UnboundedReceiver<Job>) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut queue = shared.queue.lock().unwrap();
        let new = (shared.limit - queue.alive).min(queue.jobs.len() + batch.len());
        queue.jobs.extend(batch.drain(..));
        queue.alive += new;
        drop(queue);
        for _ in 0..new {
            tokio::spawn(worker(shared.clone()));
        }
    }
}

async fn worker(shared: Arc<Shared>) {
    loop {
        let job = {
            let mut queue = shared.queue.lock().unwrap();
            match queue.jobs.pop_front() {
                Some(job) => job,
                None => {
                    queue.alive -= 1;
                    return;
                }
            }
        };
        poll_fn(|cx| job.poll_run(cx)).await;
    }
}

struct Cell<F: Future> {
    inner: Mutex<Inner<F>>,
}

struct Inner<F: Future> {
    stage: Stage<F>,
    waker: Option<Waker>,
}

enum Stage<F: Future> {
    Queued(F),
    Done(F::Output),
    Taken,
}

impl<F> Run for Cell<F>
where
    F: Future + Send,
    F::Output: Send,
{
    fn poll_run(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.lock().unwrap();
        let Stage::Queued(future) = &mut inner.stage else {
            return Poll::Ready(());
        };
        // SAFETY: the future lives inside the `Arc`'s allocation and is never moved out of
        // it while `Queued`: it is dropped in place when the stage is overwritten.
        let future = unsafe { Pin::new_unchecked(future) };
        let Poll::Ready(value) = future.poll(cx) else {
            return Poll::Pending;
        };
        inner.stage = Stage::Done(value);
        let waker = inner.waker.take();
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
        Poll::Ready(())
    }
}

/// Awaits one item's result.
pub(crate) struct Handle<F: Future>(Arc<Cell<F>>);

impl<F: Future> Future for Handle<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut inner = self.0.inner.lock().unwrap();
        if matches!(inner.stage, Stage::Done(_)) {
            let Stage::Done(value) = std::mem::replace(&mut inner.stage, Stage::Taken) else {
                unreachable!("matched above");
            };
            return Poll::Ready(value);
        }
        if !inner
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inner.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}
