//! Leases: admission without a task. A service's request runs in its connection's task; a lease
//! lets it wait its turn in the limiter's queue (under the same order, keys, weights, priority,
//! deadlines and tokens as spawned items) and then run inline, holding a worker ID and its
//! weight until the lease is dropped.
//!
//! The core does the queueing and the granting (`core/lease.rs`); this file is the user's side:
//! [`Acquire`] waits for a grant, [`Lease`] holds it, [`Run`] runs a future under one. A lease
//! on an adaptive limiter is one sample, and while a subscriber listens it gets the item span
//! and events of a spawned item.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::adaptive::{LeaseSample, Overload};
use crate::compose::Options;
use crate::core::{planted_id, Grant, Outcome, Refusal, Request, Watch, Weighed};
use crate::distributions::LeaseTiming;
use crate::error::{AcquireError, AcquireErrorKind, TryAcquireError};
use crate::key::Key;
use crate::limiter::Limiter;
use crate::sync::rt::time::{sleep_until, Instant, Sleep};
use crate::sync::{poll_budget, Arc};
use crate::task_builder::TaskBuilder;
use crate::timeout::Limits;
use crate::trace::{Report, Submitted};
use crate::worker_id::WorkerId;

/// What a lease request says about itself: a builder's options, less those of spawned work.
struct Ask {
    priority: i32,
    weight: u32,
    key: Option<Key>,
    watch: Option<Watch>,
}

impl Ask {
    fn plain() -> Ask {
        Ask {
            priority: 0,
            weight: 1,
            key: None,
            watch: None,
        }
    }

    /// The lease side of a builder's options; its running limits and its overload classifier
    /// (for `run`).
    fn from_options<O>(
        options: Options<O>,
    ) -> (Ask, Option<Duration>, Option<CancellationToken>, O) {
        let Options {
            priority,
            weight,
            key,
            limits,
            overload,
            ..
        } = options;
        let (timeout, watch) = match limits {
            None => (None, None),
            Some(limits) => {
                let Limits { timeout, watch } = *limits;
                let queued = watch.deadline.is_some() || watch.token.is_some();
                (timeout, queued.then_some(watch))
            }
        };
        let token = watch.as_ref().and_then(|watch| watch.token.clone());
        let ask = Ask {
            priority,
            weight,
            key,
            watch,
        };
        (ask, timeout, token, overload)
    }

    /// Why the request ends before it waits: a deadline passed, a token cancelled already.
    fn ended_already(&self) -> Option<Refusal> {
        let watch = self.watch.as_ref()?;
        if watch.deadline.is_some_and(|at| at <= Instant::now()) {
            Some(Refusal::TimedOut)
        } else if watch
            .token
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            Some(Refusal::Cancelled)
        } else {
            None
        }
    }
}

fn refused(refusal: Refusal) -> AcquireError {
    AcquireError::new(match refusal {
        Refusal::Closed => AcquireErrorKind::Closed,
        Refusal::TimedOut => AcquireErrorKind::QueueTimeout,
        Refusal::Cancelled => AcquireErrorKind::Cancelled,
    })
}

/// Future returned by [`Limiter::acquire`] and [`TaskBuilder::acquire`]: waits in the
/// limiter's queue for a [`Lease`].
///
/// On its first poll it takes a lease at once if one may start without passing anything
/// queued, and otherwise queues a request, which admission serves in the limiter's order, as
/// it serves spawned items.
///
/// # Cancel safety
///
/// Cancel safe, like [`Semaphore::acquire`](tokio::sync::Semaphore::acquire): dropped while
/// queued, its request leaves the queue at once; dropped as it is granted, the lease it was
/// granted ends at once and admission passes the room on to the next in line.
///
/// # Examples
///
/// ```
/// use task_limiter::{Acquire, Limiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(2);
/// let acquire: Acquire = limiter.acquire();
/// let lease = acquire.await.unwrap();
/// assert!(lease.worker().index() < 2);
/// # }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Acquire<S = ()> {
    /// Moved into the lease; `None` once it is.
    limiter: Option<Limiter<S>>,
    ask: Ask,
    stage: Stage,
    /// The adaptive limit's queue wait, and tracing's submission: taken at the first poll.
    submitted: Option<Instant>,
    trace: Option<Submitted>,
    /// With `Builder::distributions`: when it was first polled, and whether the lease was
    /// granted in that same poll (the one clock read serves both).
    asked: Option<(Instant, bool)>,
}

enum Stage {
    First,
    Queued(Arc<Request<Weighed>>),
    Done,
}

impl<S> Acquire<S> {
    fn new(limiter: Limiter<S>, ask: Ask) -> Acquire<S> {
        Acquire {
            limiter: Some(limiter),
            ask,
            stage: Stage::First,
            submitted: None,
            trace: None,
            asked: None,
        }
    }

    /// The lease for `grant`.
    fn lease(&mut self, grant: Grant) -> Lease<S> {
        let limiter = self.limiter.take().expect("granted once");
        let sample = limiter
            .extras()
            .adaptive
            .as_ref()
            .map(|controller| controller.lease_sample(self.submitted, grant.load));
        let report = self
            .trace
            .take()
            .map(|submitted| submitted.start(grant.id, || ()).1);
        let timing = match (&limiter.extras().distributions, self.asked) {
            (Some(recorders), Some((asked, at_once))) => {
                let granted = if at_once { asked } else { Instant::now() };
                Some(LeaseTiming::granted(recorders, asked, granted))
            }
            _ => None,
        };
        let extras = (sample.is_some() || report.is_some() || timing.is_some()).then(|| {
            Box::new(LeaseExtras {
                sample,
                report,
                timing,
            })
        });
        Lease {
            limiter,
            grant,
            weight: self.ask.weight,
            key: self.ask.key.take(),
            overload: false,
            outcome: Outcome::Completed,
            extras,
        }
    }

    /// The first poll: a lease now, or a request in the queue.
    fn first(&mut self) -> Result<Option<Lease<S>>, AcquireError> {
        let limiter = self
            .limiter
            .as_ref()
            .expect("`Acquire` polled after it resolved");
        // Refused before it waits, it is counted as a `spawn` refused so would be.
        if limiter.is_closed() {
            limiter.core().count_refused_lease(Refusal::Closed);
            return Err(AcquireError::new(AcquireErrorKind::Closed));
        }
        if let Some(refusal) = self.ask.ended_already() {
            limiter.core().count_refused_lease(refusal);
            return Err(refused(refusal));
        }
        if let Some(controller) = &limiter.extras().adaptive {
            self.submitted = controller.submitted_at();
        }
        if tracing::enabled!(target: "task_limiter", tracing::Level::DEBUG) {
            self.trace = Some(Submitted::now(limiter.name()));
        }
        if limiter.extras().distributions.is_some() {
            self.asked = Some((Instant::now(), true));
        }
        let core = limiter.core();
        let asked = self.asked.map(|(at, _)| at);
        // With items or requests queued, queueing is where this request ends up: one turn of
        // the lock, whose admission round still grants it at once if it may start.
        if core.queue_looks_empty() {
            if let Some(grant) = core.lease_now(self.ask.weight, self.ask.key.as_ref(), asked) {
                return Ok(Some(self.lease(grant)));
            }
        }
        if let Some((_, at_once)) = &mut self.asked {
            *at_once = false;
        }
        let charge = Weighed {
            weight: self.ask.weight,
            key: self.ask.key.clone(),
        };
        let request = core
            .queue_lease(self.ask.priority, charge, self.ask.watch.as_ref())
            .map_err(refused)?;
        self.stage = Stage::Queued(request);
        Ok(None)
    }
}

impl<S> Future for Acquire<S> {
    type Output = Result<Lease<S>, AcquireError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // A lease granted at once is ready at once: in a loop of requests, the coop budget is
        // what lets the other tasks on this thread run (as with `Semaphore::acquire`).
        let budget = std::task::ready!(poll_budget(cx));
        if let Stage::First = this.stage {
            match this.first() {
                Ok(Some(lease)) => {
                    budget.made_progress();
                    this.stage = Stage::Done;
                    return Poll::Ready(Ok(lease));
                }
                Ok(None) => {}
                Err(err) => {
                    this.stage = Stage::Done;
                    if let Some(trace) = this.trace.take() {
                        trace.cancelled();
                    }
                    return Poll::Ready(Err(err));
                }
            }
        }
        let Stage::Queued(request) = &this.stage else {
            panic!("`Acquire` polled after it resolved");
        };
        let result = std::task::ready!(request.poll_grant(cx));
        budget.made_progress();
        this.stage = Stage::Done;
        Poll::Ready(match result {
            Ok((id, load)) => Ok(this.lease(Grant { id, load })),
            Err(refusal) => {
                if let Some(trace) = this.trace.take() {
                    trace.cancelled();
                }
                Err(refused(refusal))
            }
        })
    }
}

impl<S> Drop for Acquire<S> {
    fn drop(&mut self) {
        if let Stage::Queued(request) = &self.stage {
            // Granted as it was dropped: the grant passes on to the next in line.
            if let Some(id) = request.withdraw() {
                if let Some(limiter) = &self.limiter {
                    limiter.core().end_lease(id, Outcome::Cancelled, None);
                }
            }
        }
    }
}

impl<S> fmt::Debug for Acquire<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("weight", &self.ask.weight)
            .field("key", &self.ask.key)
            .field("queued", &matches!(self.stage, Stage::Queued(_)))
            .finish()
    }
}

/// Admission without a task: a worker ID and its weight, held until this is dropped. Returned
/// by [`Limiter::acquire`], [`Limiter::try_acquire`] and their [`TaskBuilder`] forms.
///
/// A lease counts as a running item: toward the limit in force, its key's limit and the
/// running weight, and in [`metrics`](Limiter::metrics) (submitted, started, running, and
/// completed when it is dropped, or panicked when it is dropped by a panic's unwind). Its
/// [`worker`](Self::worker) ID is held by no running item or other lease meanwhile, and was
/// below the limit in force when it was granted. Dropping it gives the ID and the weight back,
/// and the next queued item or lease starts.
///
/// The limiter cannot cancel a lease: [`shutdown`](Limiter::shutdown) and
/// [`wait`](Limiter::wait) wait for held leases to be dropped. A lease that is leaked
/// (`mem::forget`) keeps its ID and its weight for good. A lease holds a clone of its
/// [`Limiter`].
///
/// On an [adaptive](crate::Builder::adaptive) limiter a lease is one sample: its run time goes
/// from the grant to the drop; [`set_overload`](Self::set_overload) marks it an overload.
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(1);
/// let lease = limiter.acquire().await.unwrap();
/// assert_eq!(limiter.metrics().running, 1);
/// // The request's work runs here, in this task.
/// drop(lease);
/// assert_eq!(limiter.metrics().running, 0);
/// # }
/// ```
#[must_use = "dropping a lease ends it at once"]
pub struct Lease<S = ()> {
    limiter: Limiter<S>,
    grant: Grant,
    weight: u32,
    key: Option<Key>,
    overload: bool,
    /// How the lease ends, unless a panic ends it: a `run` cut short sets it.
    outcome: Outcome,
    /// Only when the limiter is adaptive or a subscriber listens.
    extras: Option<Box<LeaseExtras>>,
}

struct LeaseExtras {
    sample: Option<LeaseSample>,
    report: Option<Report>,
    timing: Option<LeaseTiming>,
}

impl<S> Lease<S> {
    /// The worker ID the lease holds: in `0..limit`, held by no running item or other lease
    /// until the lease is dropped. Index per-worker state with it, as items do.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// let a = limiter.acquire().await.unwrap();
    /// let b = limiter.acquire().await.unwrap();
    /// assert_ne!(a.worker(), b.worker());
    /// # }
    /// ```
    pub fn worker(&self) -> WorkerId {
        // The model checks' planted bug reports every ID as 0; otherwise the ID as granted.
        planted_id(self.grant.id)
    }

    /// The lease's key, if it was acquired with one ([`TaskBuilder::key`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::{Key, Limiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(2);
    /// let lease = limiter.build_task().key("tenant-1").acquire().await.unwrap();
    /// assert_eq!(lease.key(), Some(&Key::from("tenant-1")));
    /// # }
    /// ```
    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    /// The lease's weight ([`TaskBuilder::weight`]; 1 by default).
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(4);
    /// let lease = limiter.build_task().weight(3).acquire().await.unwrap();
    /// assert_eq!(lease.weight(), 3);
    /// assert_eq!(limiter.metrics().weight_running, 3);
    /// # }
    /// ```
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Marks the lease's sample an overload (or not), for an
    /// [adaptive](crate::Builder::adaptive) limiter: a 429 or 503 from the downstream the
    /// lease guards. The sample is taken when the lease is dropped. A limiter without
    /// `adaptive` ignores it.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Aimd;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().adaptive(Aimd::new()).limit(10).build();
    /// let mut lease = limiter.acquire().await.unwrap();
    /// let status = 503; // what the downstream said
    /// lease.set_overload(status == 503);
    /// drop(lease);
    /// assert_eq!(limiter.limit(), 9); // backed off by Aimd's 0.9
    /// # }
    /// ```
    pub fn set_overload(&mut self, overload: bool) {
        self.overload = overload;
    }
}

impl<S> Drop for Lease<S> {
    fn drop(&mut self) {
        let panicked = std::thread::panicking();
        let outcome = match panicked {
            true => Outcome::Panicked,
            false => self.outcome,
        };
        let mut ended_at = None;
        if let Some(extras) = self.extras.take() {
            let LeaseExtras {
                sample,
                report,
                timing,
            } = *extras;
            ended_at = timing.map(LeaseTiming::ended);
            if let Some(sample) = sample {
                // A run cut by its token gives no sample; one cut by its timeout is an
                // overload.
                if outcome != Outcome::Cancelled {
                    sample.report(self.overload || outcome == Outcome::TimedOut, panicked);
                }
            }
            if let Some(mut report) = report {
                if outcome == Outcome::Completed {
                    report.finished();
                }
            }
        }
        self.limiter
            .core()
            .end_lease(self.grant.id, outcome, ended_at);
    }
}

impl<S> fmt::Debug for Lease<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("limiter", &self.limiter.name())
            .field("worker", &self.grant.id)
            .field("weight", &self.weight)
            .field("key", &self.key)
            .finish()
    }
}

pin_project! {
    /// Future returned by [`Limiter::run`] and [`TaskBuilder::run`]: acquires a lease, then
    /// polls the future in the caller's task while holding it.
    ///
    /// Resolves to the future's output, or to an [`AcquireError`] if no lease was had, or if
    /// the builder's [`timeout`](TaskBuilder::timeout) or [`cancel_on`](TaskBuilder::cancel_on)
    /// token cut the run short (the future is dropped then, and the lease ends). A panic in the
    /// future unwinds through the caller, as in any inline code; the lease ends on the way,
    /// counted as panicked.
    ///
    /// # Cancel safety
    ///
    /// Dropping it while it waits leaves the queue at once (see [`Acquire`]); while it runs,
    /// drops the future and ends the lease.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::{Limiter, Run};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(4);
    /// let run: Run<_> = limiter.run(async { 6 * 7 });
    /// assert_eq!(run.await.unwrap(), 42);
    /// # }
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct Run<F, S = (), O = ()> {
        acquire: Acquire<S>,
        lease: Option<Lease<S>>,
        #[pin]
        future: Option<F>,
        timeout: Option<Duration>,
        token: Option<CancellationToken>,
        // Made at the grant: the run's own limits.
        cut: Option<Box<Cut>>,
        overload: O,
    }
}

/// A run's time limit and token, while it runs.
struct Cut {
    timer: Option<Pin<Box<Sleep>>>,
    cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl Cut {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<AcquireErrorKind> {
        if let Some(cancelled) = &mut self.cancelled {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(AcquireErrorKind::Cancelled);
            }
        }
        if let Some(timer) = &mut self.timer {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(AcquireErrorKind::RunTimeout);
            }
        }
        Poll::Pending
    }
}

impl<F, S, O> Future for Run<F, S, O>
where
    F: Future,
    O: Overload<F::Output>,
{
    type Output = Result<F::Output, AcquireError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if this.lease.is_none() {
            let lease = match std::task::ready!(Pin::new(&mut *this.acquire).poll(cx)) {
                Ok(lease) => lease,
                Err(err) => {
                    this.future.set(None);
                    return Poll::Ready(Err(err));
                }
            };
            if this.timeout.is_some() || this.token.is_some() {
                // The run time counts from the grant; a timeout too long for the clock never
                // ends the run.
                let timer = this
                    .timeout
                    .and_then(|after| Instant::now().checked_add(after))
                    .map(|at| Box::pin(sleep_until(at)));
                let cancelled = this
                    .token
                    .take()
                    .map(|token| Box::pin(token.cancelled_owned()));
                *this.cut = Some(Box::new(Cut { timer, cancelled }));
            }
            *this.lease = Some(lease);
        }
        let polled = {
            // A panic in the future unwinds through the caller; the future, then the lease,
            // are dropped on the way (the lease counted as panicked).
            let mut guard = EndOnUnwind {
                future: this.future.as_mut(),
                lease: &mut *this.lease,
            };
            let future = guard
                .future
                .as_mut()
                .as_pin_mut()
                .expect("`Run` polled after it resolved");
            let lease = guard.lease.as_ref().expect("granted above");
            match lease.extras.as_ref().and_then(|e| e.report.as_ref()) {
                Some(report) => report.span().in_scope(|| future.poll(cx)),
                None => future.poll(cx),
            }
        };
        match polled {
            Poll::Ready(output) => {
                let mut lease = this.lease.take().expect("held while running");
                lease.overload |= this.overload.is_overload(&output);
                this.future.set(None);
                drop(lease);
                Poll::Ready(Ok(output))
            }
            Poll::Pending => {
                let Some(cut) = this.cut else {
                    return Poll::Pending;
                };
                // After the future: a value ready at the deadline wins, as with
                // `tokio::time::timeout`.
                let kind = std::task::ready!(cut.poll(cx));
                let mut lease = this.lease.take().expect("held while running");
                lease.outcome = match kind {
                    AcquireErrorKind::RunTimeout => Outcome::TimedOut,
                    _ => Outcome::Cancelled,
                };
                // The future goes before the lease: its ID is held until the run has ended.
                this.future.set(None);
                drop(lease);
                Poll::Ready(Err(AcquireError::new(kind)))
            }
        }
    }
}

/// Ends a run's lease if a panic unwinds through the poll of its future.
struct EndOnUnwind<'a, F, S> {
    future: Pin<&'a mut Option<F>>,
    lease: &'a mut Option<Lease<S>>,
}

impl<F, S> Drop for EndOnUnwind<'_, F, S> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.future.set(None);
            drop(self.lease.take());
        }
    }
}

impl<F, S, O> fmt::Debug for Run<F, S, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Run")
            .field("lease", &self.lease)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

// === the entry points ===

impl<S> Limiter<S> {
    /// Waits in the limiter's queue for a [`Lease`]: a worker ID and a place among the running
    /// items, held by the caller's own task until the lease is dropped.
    ///
    /// For work that runs where it is, such as a request in its connection's task: no task is
    /// spawned and nothing hops threads. The request waits in the same queue as spawned items,
    /// in the same order; see [`TaskBuilder::acquire`] for keys, weights, priority, deadlines
    /// and tokens, and [`run`](Self::run) to run a future under a lease. An idle limiter grants
    /// a lease at once. On a closed limiter it fails with an [`AcquireError`] for which
    /// [`is_closed`](AcquireError::is_closed) is true; a [`shutdown`](Self::shutdown) resolves
    /// queued requests the same way.
    ///
    /// The future is `'static` (it holds a clone of the limiter) and `Send`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: see [`Acquire`].
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(8);
    /// let lease = limiter.acquire().await.unwrap();
    /// let reply = format!("handled under {}", lease.worker());
    /// drop(lease);
    /// assert!(reply.starts_with("handled under worker-"));
    /// # }
    /// ```
    pub fn acquire(&self) -> Acquire<S> {
        Acquire::new(self.clone(), Ask::plain())
    }

    /// A [`Lease`] now, or an error: never waits. Fails with [`TryAcquireError::Full`] when the
    /// limits leave no room, or when items or leases are queued (it never passes them), and
    /// with [`TryAcquireError::Closed`] once the limiter is closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let lease = limiter.try_acquire().unwrap();
    /// assert!(limiter.try_acquire().unwrap_err().is_full());
    /// drop(lease);
    /// assert!(limiter.try_acquire().is_ok());
    /// # }
    /// ```
    pub fn try_acquire(&self) -> Result<Lease<S>, TryAcquireError> {
        try_acquire(self, Ask::plain())
    }

    /// Acquires a lease, then polls `future` in the caller's task while holding it: the inline
    /// counterpart of [`spawn`](Self::spawn). Resolves to the future's output, or to an
    /// [`AcquireError`] if no lease was had. See [`Run`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops `future` too (see [`Run`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(4);
    /// let body = limiter.run(async { "response" }).await.unwrap();
    /// assert_eq!(body, "response");
    /// # }
    /// ```
    pub fn run<F: Future>(&self, future: F) -> Run<F, S> {
        Run {
            acquire: self.acquire(),
            lease: None,
            future: Some(future),
            timeout: None,
            token: None,
            cut: None,
            overload: (),
        }
    }
}

fn try_acquire<S>(limiter: &Limiter<S>, ask: Ask) -> Result<Lease<S>, TryAcquireError> {
    // Not counted as refusals: `try_acquire` is a probe, often the fast path of a caller that
    // then waits (the tower layer's), whose wait is what gets counted.
    if limiter.is_closed() {
        return Err(TryAcquireError::Closed);
    }
    // With distributions on, the one clock read serves the grant's turn and its timing.
    let asked = limiter.extras().distributions.is_some().then(Instant::now);
    let grant = limiter
        .core()
        .lease_now(ask.weight, ask.key.as_ref(), asked)
        .ok_or(TryAcquireError::Full)?;
    let mut acquire = Acquire::new(limiter.clone(), ask);
    if let Some(controller) = &limiter.extras().adaptive {
        acquire.submitted = controller.submitted_at();
    }
    if tracing::enabled!(target: "task_limiter", tracing::Level::DEBUG) {
        acquire.trace = Some(Submitted::now(limiter.name()));
    }
    acquire.asked = asked.map(|at| (at, true));
    acquire.stage = Stage::Done;
    Ok(acquire.lease(grant))
}

impl<'a, S, O> TaskBuilder<'a, S, O> {
    /// Waits in the limiter's queue for a [`Lease`] with these options, as
    /// [`Limiter::acquire`] does: its [`key`](Self::key), [`weight`](Self::weight) and
    /// [`priority`](Self::priority) count as a spawned item's do, its
    /// [`deadline`](Self::deadline) or [`queue_timeout`](Self::queue_timeout) bounds its wait
    /// (then an [`AcquireError`] for which [`is_timeout`](AcquireError::is_timeout) is true),
    /// and its [`cancel_on`](Self::cancel_on) token ends its wait
    /// ([`is_cancelled`](AcquireError::is_cancelled)). A lease is not bounded by
    /// [`max_queued`](crate::Builder::max_queued): a builder from a [`Permit`](crate::Permit)
    /// gives its place back. [`timeout`](Self::timeout) and
    /// [`overload_if`](Self::overload_if) apply to [`run`](Self::run) only.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: see [`Acquire`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(8).per_key_limit(1).build();
    /// let first = limiter.build_task().key("tenant-1").acquire().await.unwrap();
    /// // The tenant's one place is taken: a second request waits, and gives up after 100 ms.
    /// let err = limiter
    ///     .build_task()
    ///     .key("tenant-1")
    ///     .queue_timeout(Duration::from_millis(100))
    ///     .acquire()
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.is_timeout());
    /// drop(first);
    /// # }
    /// ```
    pub fn acquire(self) -> Acquire<S> {
        let (limiter, options) = self.into_parts();
        let (ask, ..) = Ask::from_options(options);
        Acquire::new(limiter.clone(), ask)
    }

    /// A [`Lease`] with these options now, or an error, as [`Limiter::try_acquire`]: never
    /// waits, and never passes queued items. Deadlines and tokens do not apply.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(4).per_key_limit(1).build();
    /// let _a = limiter.build_task().key("a").try_acquire().unwrap();
    /// assert!(limiter.build_task().key("a").try_acquire().unwrap_err().is_full());
    /// assert!(limiter.build_task().key("b").try_acquire().is_ok());
    /// # }
    /// ```
    pub fn try_acquire(self) -> Result<Lease<S>, TryAcquireError> {
        let (limiter, options) = self.into_parts();
        let (ask, ..) = Ask::from_options(options);
        try_acquire(limiter, ask)
    }

    /// Acquires a lease with these options, then polls `future` in the caller's task while
    /// holding it, as [`Limiter::run`] does. The builder's [`timeout`](Self::timeout) bounds
    /// the run from its grant, and its [`cancel_on`](Self::cancel_on) token cuts it short
    /// while it runs as well as while it waits: the future is dropped, the lease ends, and it
    /// resolves to an [`AcquireError`] that says which. [`overload_if`](Self::overload_if)
    /// classifies the output for an adaptive limiter, and a timeout counts as an overload.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops `future` too (see [`Run`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(16).per_key_limit(4).build();
    /// let reply = limiter
    ///     .build_task()
    ///     .key("tenant-7")
    ///     .queue_timeout(Duration::from_millis(50))
    ///     .timeout(Duration::from_secs(2))
    ///     .run(async { "ok" })
    ///     .await;
    /// let answer = match reply {
    ///     Ok(body) => body,
    ///     Err(err) if err.is_timeout() => "busy",
    ///     Err(_) => "shutting down",
    /// };
    /// assert_eq!(answer, "ok");
    /// # }
    /// ```
    pub fn run<F>(self, future: F) -> Run<F, S, O>
    where
        F: Future,
        O: Overload<F::Output>,
    {
        let (limiter, options) = self.into_parts();
        let (ask, timeout, token, overload) = Ask::from_options(options);
        Run {
            acquire: Acquire::new(limiter.clone(), ask),
            lease: None,
            future: Some(future),
            timeout,
            token,
            cut: None,
            overload,
        }
    }
}
