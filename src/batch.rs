use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FusedStream, FuturesUnordered, Stream, StreamExt};

use crate::error::JoinError;
use crate::handle::{AbortHandle, JoinHandle};
use crate::limiter::Limiter;
use crate::sync::{lock, Arc, AtomicUsize, Mutex, Ordering};

/// A [`Stream`] of the results of a batch of items, in input order or, after
/// [`unordered`](Self::unordered), in completion order: returned by [`Limiter::spawn_batch`],
/// or collected from [`JoinHandle`]s.
///
/// The items run as soon as they are submitted, whether or not the stream is polled; the
/// stream only hands their results out. It yields one `Result<T, JoinError>` per item, unless
/// a failure ends the batch early ([`cancel_on_panic`](Self::cancel_on_panic),
/// [`cancel_on_error`](Self::cancel_on_error)).
///
/// Dropping the stream aborts every item whose result it has not yielded yet, so a batch
/// never outlives its consumer: queued items are dropped at once, running ones at their next
/// `.await`. (Dropping a [`JoinHandle`] on its own detaches instead; a batch is a unit.)
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(4);
/// let squares: Vec<u64> = limiter
///     .spawn_batch((0..10u64).map(|i| async move { i * i }))
///     .map(Result::unwrap)
///     .collect()
///     .await;
/// assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
/// # }
/// ```
#[must_use = "streams do nothing unless polled, and dropping a batch aborts its items"]
pub struct Batch<T> {
    /// Items whose results have not come in, each with its input index.
    running: FuturesUnordered<Indexed<T>>,
    /// In input order: results that came in before those of earlier items, by index - `next`.
    early: VecDeque<Option<Result<T, JoinError>>>,
    /// In input order: the index of the next result to yield.
    next: usize,
    ordered: bool,
    /// Decides which results end the batch early.
    fails: Option<Fails<T>>,
    /// The batch ended early: nothing more is yielded.
    ended: bool,
    /// What the items of `spawn_batch` share, to end the batch themselves as they fail.
    shared: Arc<Shared<T>>,
}

/// Shared by a batch and the items `spawn_batch` made for it: a failing item aborts its
/// siblings at once, without waiting for the stream to be polled.
struct Shared<T> {
    /// The rule of `cancel_on_panic` / `cancel_on_error`, once set.
    fails: Mutex<Option<Fails<T>>>,
    /// The items to abort, in input order.
    aborts: Mutex<Vec<AbortHandle>>,
    /// The index of the item that ended the batch, or `NONE`.
    trigger: AtomicUsize,
}

const NONE: usize = usize::MAX;

impl<T> Shared<T> {
    fn new() -> Shared<T> {
        Shared {
            fails: Mutex::new(None),
            aborts: Mutex::new(Vec::new()),
            trigger: AtomicUsize::new(NONE),
        }
    }

    fn trigger(&self) -> Option<usize> {
        Some(self.trigger.load(Ordering::Acquire)).filter(|&index| index != NONE)
    }

    /// Item `index` failed: if the batch ends on failures and no other item ended it first,
    /// aborts every other item (queued ones are dropped before this returns).
    fn fail(&self, index: usize) {
        if lock(&self.fails).is_none() {
            return;
        }
        let first = self
            .trigger
            .compare_exchange(NONE, index, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            // Lock order: `aborts`, then each item's cell.
            let aborts = lock(&self.aborts);
            for (i, abort) in aborts.iter().enumerate() {
                if i != index {
                    abort.abort();
                }
            }
        }
    }

    /// A finished item's value: ends the batch if the rule says it is a failure.
    fn check(&self, index: usize, value: T) -> T {
        let fails = *lock(&self.fails);
        match fails {
            Some(fails) => {
                let result = Ok(value);
                if fails(&result) {
                    self.fail(index);
                }
                match result {
                    Ok(value) => value,
                    Err(_) => unreachable!(),
                }
            }
            None => value,
        }
    }
}

/// Held by a running item of `spawn_batch`: dropped before the item finished, it panicked or
/// was cancelled, which fails the batch.
struct Member<'a, T> {
    shared: &'a Shared<T>,
    index: usize,
    armed: bool,
}

impl<T> Drop for Member<'_, T> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.fail(self.index);
        }
    }
}

/// Tells whether a result ends the batch.
type Fails<T> = fn(&Result<T, JoinError>) -> bool;

struct Indexed<T> {
    index: usize,
    handle: JoinHandle<T>,
}

impl<T> Future for Indexed<T> {
    type Output = (usize, Result<T, JoinError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let index = self.index;
        Pin::new(&mut self.handle)
            .poll(cx)
            .map(|result| (index, result))
    }
}

impl<T> Batch<T> {
    /// Yields results in the order the items finish, instead of input order.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    ///
    /// let limiter = Limiter::new(3);
    /// let batch = limiter.spawn_batch([30, 10, 20].map(|ms| async move {
    ///     tokio::time::sleep(Duration::from_millis(ms)).await;
    ///     ms
    /// }));
    /// let done: Vec<_> = batch.unordered().map(Result::unwrap).collect().await;
    /// assert_eq!(done, [10, 20, 30]);
    /// # }
    /// ```
    pub fn unordered(mut self) -> Self {
        self.ordered = false;
        self
    }

    /// Ends the batch on the first item that panics or is cancelled: every item not finished
    /// yet is aborted (queued ones dropped at once), the failure is the next result the stream
    /// yields, and then the stream ends.
    ///
    /// In a batch made by [`Limiter::spawn_batch`], the failing item aborts the others itself,
    /// the moment it fails, whether or not the stream is being polled; in a batch collected
    /// from handles, that happens when the stream sees the failure. Failures count in
    /// completion order: in input order the failure is yielded before the results still
    /// waiting for earlier items, which are dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let mut batch = limiter
    ///     .spawn_batch((0..100).map(|i| async move {
    ///         if i == 2 {
    ///             panic!("item 2 failed");
    ///         }
    ///         i
    ///     }))
    ///     .cancel_on_panic();
    /// assert_eq!(batch.next().await.unwrap().unwrap(), 0);
    /// assert_eq!(batch.next().await.unwrap().unwrap(), 1);
    /// assert!(batch.next().await.unwrap().unwrap_err().is_panic());
    /// assert!(batch.next().await.is_none()); // items 3..100 never ran
    /// # }
    /// ```
    pub fn cancel_on_panic(self) -> Self {
        self.ends_on(|result| result.is_err())
    }

    fn ends_on(mut self, fails: Fails<T>) -> Self {
        self.fails = Some(fails);
        *lock(&self.shared.fails) = Some(fails);
        self
    }

    /// Aborts every item of the batch whose result has not been yielded yet.
    ///
    /// Queued items are dropped before this returns, running ones at their next `.await`
    /// (blocking items once started run to their end). The stream still yields one result per
    /// remaining item: the value of any that finished first, a cancelled [`JoinError`] for the
    /// rest (unless the batch ends on failures, when the first cancellation ends it).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// let mut batch = limiter.spawn_batch((0..10).map(|_| std::future::pending::<()>()));
    /// batch.abort_all();
    /// let results: Vec<_> = batch.collect().await;
    /// assert_eq!(results.len(), 10);
    /// assert!(results.iter().all(|r| r.as_ref().unwrap_err().is_cancelled()));
    /// # }
    /// ```
    pub fn abort_all(&mut self) {
        for item in self.running.iter() {
            item.handle.abort();
        }
    }

    /// Returns the number of results the stream has yet to yield (before any early end).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// let mut batch = limiter.spawn_batch((0..3).map(|i| async move { i }));
    /// assert_eq!(batch.len(), 3);
    /// batch.next().await;
    /// assert_eq!(batch.len(), 2);
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        if self.ended {
            return 0;
        }
        self.running.len() + self.early.iter().filter(|slot| slot.is_some()).count()
    }

    /// Returns true if the stream has no result left to yield.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::{Batch, Limiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// let batch: Batch<()> = limiter.spawn_batch(Vec::<std::future::Ready<()>>::new());
    /// assert!(batch.is_empty());
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends the batch: aborts what is left and drops the results not yielded.
    fn end(&mut self) {
        self.abort_all();
        self.running = FuturesUnordered::new();
        self.early.clear();
        self.ended = true;
    }
}

impl<T, E> Batch<Result<T, E>> {
    /// Ends the batch on the first item that returns an `Err`, panics or is cancelled: every
    /// item not finished yet is aborted (queued ones dropped at once), the failure is the next
    /// result the stream yields, and then the stream ends. Otherwise as
    /// [`cancel_on_panic`](Self::cancel_on_panic).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let results: Vec<_> = limiter
    ///     .spawn_batch((0..100).map(|i| async move {
    ///         if i == 3 { Err(format!("item {i} failed")) } else { Ok(i) }
    ///     }))
    ///     .cancel_on_error()
    ///     .collect()
    ///     .await;
    /// assert_eq!(results.len(), 4); // 0, 1, 2, then the error; the rest never ran
    /// assert_eq!(results[3].as_ref().unwrap().as_ref().unwrap_err(), "item 3 failed");
    /// # }
    /// ```
    pub fn cancel_on_error(self) -> Self {
        self.ends_on(|result| !matches!(result, Ok(Ok(_))))
    }
}

impl<T> FromIterator<JoinHandle<T>> for Batch<T> {
    /// Collects handles into a batch whose input order is the iteration order. The batch takes
    /// them over: dropping it aborts their items.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use task_limiter::{Batch, Limiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// let batch: Batch<u32> = (0..4u32)
    ///     .map(|i| limiter.spawn_blocking(move |_id| i * 10))
    ///     .collect();
    /// let values: Vec<_> = batch.map(Result::unwrap).collect().await;
    /// assert_eq!(values, [0, 10, 20, 30]);
    /// # }
    /// ```
    fn from_iter<I: IntoIterator<Item = JoinHandle<T>>>(handles: I) -> Self {
        Batch {
            running: handles
                .into_iter()
                .enumerate()
                .map(|(index, handle)| Indexed { index, handle })
                .collect(),
            early: VecDeque::new(),
            next: 0,
            ordered: true,
            fails: None,
            ended: false,
            shared: Arc::new(Shared::new()),
        }
    }
}

impl<T> Stream for Batch<T> {
    type Item = Result<T, JoinError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if this.ordered {
                if let Some(Some(_)) = this.early.front() {
                    this.next += 1;
                    return Poll::Ready(this.early.pop_front().flatten());
                }
            }
            let (index, result) = match this.running.poll_next_unpin(cx) {
                Poll::Ready(Some(done)) => done,
                Poll::Ready(None) => {
                    // Only results yielded or held in `early` are left, and `early` holds
                    // none: its front would have been yielded above.
                    debug_assert!(this.early.iter().all(Option::is_none));
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            };
            if this.fails.is_some_and(|fails| fails(&result)) {
                match this.shared.trigger() {
                    // Cancelled by the item that ended the batch, whose own result is the one
                    // to yield: wait for it.
                    Some(trigger) if trigger != index => continue,
                    _ => {
                        this.end();
                        return Poll::Ready(Some(result));
                    }
                }
            }
            if !this.ordered {
                return Poll::Ready(Some(result));
            }
            if index == this.next && this.early.is_empty() {
                this.next += 1;
                return Poll::Ready(Some(result));
            }
            // Earlier items are still running: keep it until they have been yielded.
            let slot = index - this.next;
            if this.early.len() <= slot {
                this.early.resize_with(slot + 1, || None);
            }
            this.early[slot] = Some(result);
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = self.len();
        match self.fails {
            Some(_) => (len.min(1), Some(len)),
            None => (len, Some(len)),
        }
    }
}

impl<T> FusedStream for Batch<T> {
    fn is_terminated(&self) -> bool {
        self.is_empty()
    }
}

// Results are stored, never pinned, and the running handles are `Unpin`.
impl<T> Unpin for Batch<T> {}

impl<T> Drop for Batch<T> {
    fn drop(&mut self) {
        self.abort_all();
    }
}

impl<T> fmt::Debug for Batch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.len())
            .field("ordered", &self.ordered)
            .field("ends_early", &self.fails.is_some())
            .finish()
    }
}

impl<S> Limiter<S> {
    /// Submits every future of `work` and returns a [`Batch`]: a [`Stream`] of their results
    /// in input order ([`unordered`](Batch::unordered) for completion order).
    ///
    /// The iterator is consumed before this returns: every item is queued at once, as by
    /// [`spawn`](Self::spawn), and runs whether or not the stream is polled. Dropping the
    /// stream aborts the items whose results it has not yielded;
    /// [`cancel_on_panic`](Batch::cancel_on_panic) and
    /// [`cancel_on_error`](Batch::cancel_on_error) end the batch on its first failure.
    ///
    /// For blocking items, the worker's state, a priority, a key or a weight, collect the
    /// handles of [`build_task`](Self::build_task) items into a batch instead:
    /// `handles.collect::<Batch<_>>()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(8);
    /// let urls = ["a", "b", "c"];
    /// let mut pages = limiter.spawn_batch(urls.map(|url| async move { format!("<{url}>") }));
    /// while let Some(page) = pages.next().await {
    ///     println!("{}", page.unwrap());
    /// }
    /// # }
    /// ```
    pub fn spawn_batch<I>(&self, work: I) -> Batch<<I::Item as Future>::Output>
    where
        I: IntoIterator,
        I::Item: Future + Send + 'static,
        <I::Item as Future>::Output: Send + 'static,
    {
        let shared = Arc::new(Shared::new());
        let mut handles = Vec::new();
        for (index, future) in work.into_iter().enumerate() {
            let member = shared.clone();
            let handle = self.spawn(async move {
                let mut guard = Member {
                    shared: &member,
                    index,
                    armed: true,
                };
                let value = future.await;
                guard.armed = false;
                member.check(index, value)
            });
            let mut aborts = lock(&shared.aborts);
            aborts.push(handle.abort_handle());
            // An item that failed before this one was registered could not abort it.
            if shared.trigger().is_some() {
                handle.abort();
            }
            drop(aborts);
            handles.push(handle);
        }
        let mut batch: Batch<_> = handles.into_iter().collect();
        batch.shared = shared;
        batch
    }
}
