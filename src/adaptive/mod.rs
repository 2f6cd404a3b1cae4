//! Adaptive limits: the limiter sets its own limit from what its items measure.
//!
//! A fixed limit is a guess: too low leaves a downstream's capacity unused, too high queues
//! work inside the downstream and inflates every latency. With
//! [`Builder::adaptive`](crate::Builder::adaptive) the limiter feeds one [`Sample`] per
//! finished item to an [`Algorithm`], which returns the limit to use next; the limiter puts it
//! in force as [`Limiter::set_limit`](crate::Limiter::set_limit) does, within
//! [`Builder::min_limit`](crate::Builder::min_limit) and
//! [`Builder::max_limit`](crate::Builder::max_limit).
//!
//! Two algorithms come with the crate:
//!
//! - [`Aimd`]: loss based. The limit backs off by a factor when an item reports an overload
//!   (see [`TaskBuilder::overload_if`](crate::TaskBuilder::overload_if), a run
//!   [`timeout`](crate::TaskBuilder::timeout), or an optional latency bound), and grows while
//!   the limit is what holds items back.
//! - [`Gradient`]: latency based, in the family of Netflix's Gradient2 and Envoy's adaptive
//!   concurrency filter. It compares recent run times, less what their measured noise allows,
//!   with a baseline measured at low concurrency, and shrinks the limit as run times grow
//!   past it.
//!
//! Both grow the limit only from samples of items that found the limit full (the limiter
//! knows exactly how many items ran when each one started), so a limiter that is handed less
//! work than its limit never drifts upwards, and one held back by a cap (slots leased from a
//! cluster budget) does not grow past what it may use. Users can bring their own algorithm by
//! implementing [`Algorithm`].
//!
//! # How the built-in algorithms behave
//!
//! They were written against the failures users of Netflix's `concurrency-limits`, Envoy's
//! adaptive concurrency filter and their ports keep reporting:
//!
//! - **Only items that found the limit full can grow it.** The limiter knows exactly what ran
//!   when each item started, so a service that hands it less work than its limit never inflates
//!   it.
//! - **[`Gradient`]'s baseline is measured, not inferred**: at the start it holds the limit
//!   at 4 for 16 items and takes their mean run time and spread. Between probes the baseline
//!   only moves down, and only to a round's mean plus three standard errors when that is lower,
//!   so noisy run times (lognormal, heavy-tailed) do not drag it down round by round, and
//!   sustained load cannot drag it up. It probes again when the limit has fallen eight rounds in
//!   a row (a downstream slower for good); periodic probes are opt-in
//!   ([`Gradient::probe_every`]), since a dip to 4 costs tail latency.
//! - **It recomputes once per round** of items let start under the limit in force (the items
//!   admitted under an earlier limit say nothing about this one). A round counts as queueing
//!   only past a noise allowance ([`Gradient::confidence`] standard errors; rounds grow longer
//!   where run times spread); a queueing round takes the limit to `(limit + 1) × gradient`,
//!   and only rounds with no queueing, in which most items found the limit full, grow it (by
//!   √limit, doubling while nothing queues). It aims for no standing queue in the downstream.
//! - **[`Aimd`] backs off by 0.9 once per round** on overloads (an `overload_if` match, a run
//!   `timeout`, or a latency bound), and grows by a step per round that doubles while nothing is
//!   refused, so it climbs back quickly after a change and does not collapse on one burst of
//!   errors. `Gradient` backs off on overloads too, even while run times look fine.
//! - **Never 0, never above `max_limit`** (default 1,000): the bounds clamp every choice. A panic
//!   is not an overload; a cancelled item gives no sample; a retry is a new item with its own
//!   sample. [`Limiter::set_limit`](crate::Limiter::set_limit) still works, and the algorithm goes
//!   on from the value set; [`Limiter::set_limit_until`](crate::Limiter::set_limit_until) caps
//!   the algorithm's limit ([below](#under-a-cap-adaptive-limits-inside-a-cluster-budget)).
//!
//! ```
//! use task_limiter::adaptive::{Aimd, Gradient};
//! use task_limiter::Limiter;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Latency based: shrinks the limit as run times grow past a baseline measured at low load.
//! let api = Limiter::builder().adaptive(Gradient::new()).limit(8).max_limit(256).build();
//!
//! // Loss based: backs off when the downstream says it is overloaded.
//! let db = Limiter::builder().adaptive(Aimd::new()).limit(8).min_limit(2).build();
//! let reply = db
//!     .build_task()
//!     .overload_if(|reply: &Result<u32, u16>| matches!(reply, Err(429 | 503)))
//!     .spawn(async { Ok::<u32, u16>(7) });
//! assert_eq!(reply.await.unwrap(), Ok(7));
//! # drop(api);
//! # }
//! ```
//!
//! The repository's `cargo run --release --example adaptive` runs `Gradient` against a simulated
//! downstream whose capacity goes 16 → 4 → 32, plots the limit it follows, and compares fixed
//! limits with adaptive ones; its plot, its table and what adaptive limits cost per item (in
//! short: nothing measurable when off, 9–40 % per item that does nothing when on) are in
//! `benches/adaptive-results.md`.
//!
//! # Under a cap: adaptive limits inside a cluster budget
//!
//! An adaptive limit finds what the downstream serves from one process; twenty processes that
//! each find their own can still overrun the downstream's total. A budget shared across
//! processes (`task-limiter-redis`'s `ClusterBudget` leases slots of it from Redis) caps each
//! one: [`Limiter::set_limit_until`](crate::Limiter::set_limit_until) on an adaptive limiter
//! sets a **cap**, kept apart from the algorithm's limit.
//!
//! - **The limit in force is the lower of the two**: the algorithm's limit, capped by the
//!   slots leased. The cap carries the lease's expiry, checked at every admission as on any
//!   limiter: from then on the fallback caps the algorithm's limit (a floor of 0: nothing new
//!   starts). [`Limiter::limit`](crate::Limiter::limit) reports the limit in force,
//!   [`Limiter::adaptive_limit`](crate::Limiter::adaptive_limit) the algorithm's own.
//! - **The algorithm knows when it was capped.** Items let start under a cap below the
//!   algorithm's limit give samples marked [`Sample::capped`], whose
//!   [`found_limit_full`](Sample::found_limit_full) is false: the cap, not the algorithm's
//!   limit, held them back, so neither built-in algorithm grows from them (nor does a user
//!   algorithm that grows only on `found_limit_full`). They still measure the downstream at
//!   the cap: on an overload `Aimd` and `Gradient` back off from the cap, and a queue at the
//!   cap takes `Gradient`'s limit below it. When the cap rises or lifts, the algorithm goes on
//!   from its own limit. Its limit may still end up above the cap by one round's growth:
//!   items let start while its own limit was in force (up to the cap, before it bit) found it
//!   full and grow it as they end, `Gradient` by about √limit per round, `Aimd` by its step,
//!   which doubles in slow start (in a simulation with the cap alternating between 10 and 14
//!   against a downstream that takes 32, `Gradient`'s limit stood at 12–16 and `Aimd`'s at 21).
//!   A process under a budget then asks for that limit, and tries it once it is granted.
//! - **The demand it reports is what its algorithm wants**, when it has the work for it:
//!   `task-limiter-redis` reports running + queued items capped at the algorithm's own limit
//!   (within its `max_limit`) and the budget. Not more, as slots above the algorithm's limit
//!   would sit unused while other processes want them; not the algorithm's limit alone, as a
//!   process with an empty queue would hoard slots.
//!
//! [`Limiter::set_limit`](crate::Limiter::set_limit) lifts the cap, as it clears the expiry of
//! a limiter that is not adaptive.
//!
//! ```
//! use std::time::Duration;
//! use task_limiter::adaptive::Gradient;
//! use task_limiter::Limiter;
//! use tokio::time::Instant;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let limiter = Limiter::builder().adaptive(Gradient::new()).limit(16).build();
//! // Six slots leased for 10 s; none after that unless the lease is renewed.
//! limiter.set_limit_until(6, Instant::now() + Duration::from_secs(10), 0);
//! assert_eq!(limiter.limit(), 6);
//! assert_eq!(limiter.adaptive_limit(), Some(16));
//! # }
//! ```
//!
//! # What is sampled
//!
//! | the item | its sample |
//! |---|---|
//! | returned a value | run time, queue wait, load; an overload if `overload_if` says so |
//! | ended by its run [`timeout`](crate::TaskBuilder::timeout) | an overload |
//! | panicked | [`Sample::panicked`]: not an overload; the built-in algorithms skip it |
//! | cancelled (abort, shutdown, a token), or timed out while queued | no sample |
//!
//! A retry is a new item: submitted again, it gives a sample of its own.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use task_limiter::adaptive::Gradient;
//! use task_limiter::Limiter;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let limiter = Limiter::builder()
//!     .adaptive(Gradient::new())
//!     .limit(4) // where it starts
//!     .min_limit(2)
//!     .max_limit(64)
//!     .build();
//! let handles: Vec<_> = (0..100)
//!     .map(|_| limiter.spawn(tokio::time::sleep(Duration::from_millis(10))))
//!     .collect();
//! for handle in handles {
//!     handle.await.unwrap();
//! }
//! let limit = limiter.limit();
//! assert!((2..=64).contains(&limit));
//! # }
//! ```

mod aimd;
mod gradient;

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

pub use aimd::Aimd;
pub use gradient::Gradient;

use crate::core::{Cut, LimitHandle, Load, Work};
use crate::sync::rt::time::Instant;
use crate::sync::{lock, Arc, Mutex};
use crate::worker_id::WorkerId;

/// What one finished item measured, as an [`Algorithm`] receives it.
///
/// The limiter makes one per finished item (see the [module docs](self) for which items give
/// one). [`Sample::new`] and its `with_` methods make samples by hand, for testing an
/// algorithm.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use task_limiter::adaptive::Sample;
///
/// let sample = Sample::new(Duration::from_millis(20), 8, 8).with_overload(true);
/// assert_eq!(sample.run_time(), Duration::from_millis(20));
/// assert!(sample.found_limit_full());
/// assert!(sample.is_overload());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    run_time: Duration,
    queue_wait: Duration,
    running: usize,
    limit: usize,
    overload: bool,
    panicked: bool,
    capped: bool,
}

impl Sample {
    /// A sample of an item that ran for `run_time`, started while `running` items (its own
    /// included) ran under `limit`; no queue wait, no overload, no panic, not capped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Sample;
    ///
    /// let sample = Sample::new(Duration::from_millis(5), 3, 8);
    /// assert!(!sample.found_limit_full());
    /// ```
    pub fn new(run_time: Duration, running: usize, limit: usize) -> Sample {
        Sample {
            run_time,
            queue_wait: Duration::ZERO,
            running,
            limit,
            overload: false,
            panicked: false,
            capped: false,
        }
    }

    /// The sample with its queue wait set.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Sample;
    ///
    /// let sample = Sample::new(Duration::from_millis(5), 8, 8).with_queue_wait(Duration::from_millis(1));
    /// assert_eq!(sample.queue_wait(), Duration::from_millis(1));
    /// ```
    pub fn with_queue_wait(self, queue_wait: Duration) -> Sample {
        Sample { queue_wait, ..self }
    }

    /// The sample with its overload mark set.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Sample;
    ///
    /// assert!(Sample::new(Duration::ZERO, 1, 1).with_overload(true).is_overload());
    /// ```
    pub fn with_overload(self, overload: bool) -> Sample {
        Sample { overload, ..self }
    }

    /// The sample with its panic mark set.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Sample;
    ///
    /// assert!(Sample::new(Duration::ZERO, 1, 1).with_panicked(true).panicked());
    /// ```
    pub fn with_panicked(self, panicked: bool) -> Sample {
        Sample { panicked, ..self }
    }

    /// The sample with its cap mark set: see [`capped`](Self::capped).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Sample;
    ///
    /// assert!(Sample::new(Duration::ZERO, 4, 4).with_capped(true).capped());
    /// ```
    pub fn with_capped(self, capped: bool) -> Sample {
        Sample { capped, ..self }
    }

    /// How long the item ran: from its first poll on its worker to its end, without its queue
    /// wait.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Sample;
    ///
    /// assert_eq!(Sample::new(Duration::from_millis(3), 1, 1).run_time(), Duration::from_millis(3));
    /// ```
    pub fn run_time(&self) -> Duration {
        self.run_time
    }

    /// How long the item waited to start: from its submission to its first poll. Zero when
    /// the algorithm does not read it ([`Algorithm::uses_queue_wait`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Sample;
    ///
    /// assert_eq!(Sample::new(Duration::ZERO, 1, 1).queue_wait(), Duration::ZERO);
    /// ```
    pub fn queue_wait(&self) -> Duration {
        self.queue_wait
    }

    /// What was running when the item was let start, the item included: the number of items,
    /// or their weight where items have a [`weight`](crate::TaskBuilder::weight) (what the
    /// limit counts).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Sample;
    ///
    /// assert_eq!(Sample::new(Duration::ZERO, 3, 8).running(), 3);
    /// ```
    pub fn running(&self) -> usize {
        self.running
    }

    /// The limit in force when the item was let start: the algorithm's limit, or the cap
    /// below it (see [`capped`](Self::capped)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Sample;
    ///
    /// assert_eq!(Sample::new(Duration::ZERO, 3, 8).limit(), 8);
    /// ```
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the item started with the algorithm's limit full: `running() >= limit()`, and
    /// the limit in force was the algorithm's own, not a [cap](Self::capped) below it. Then
    /// the limit, not the work handed to the limiter, was what held items back. An algorithm
    /// that grows the limit only on such samples never grows it past what the work needs, nor
    /// past what a cap lets it use.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Sample;
    ///
    /// assert!(Sample::new(Duration::ZERO, 8, 8).found_limit_full());
    /// assert!(!Sample::new(Duration::ZERO, 2, 8).found_limit_full());
    /// // Held back by a cap, not by the algorithm's limit.
    /// assert!(!Sample::new(Duration::ZERO, 8, 8).with_capped(true).found_limit_full());
    /// ```
    pub fn found_limit_full(&self) -> bool {
        self.running >= self.limit && !self.capped
    }

    /// Whether the limit in force when the item was let start was a cap below the algorithm's
    /// limit: [`Limiter::set_limit_until`](crate::Limiter::set_limit_until) on an adaptive
    /// limiter (slots leased from a budget that other processes share, for one) caps the
    /// algorithm's limit, and [`limit`](Self::limit) is then the cap. Such an item says
    /// nothing about a limit the algorithm was not allowed to use: it never
    /// [found the limit full](Self::found_limit_full), and an algorithm should not grow from
    /// it. It still measures the downstream at [`limit`](Self::limit) items: the built-in
    /// algorithms back off from the cap on an overload, and [`Gradient`] from a queue.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::{Algorithm, Sample};
    /// use task_limiter::Limiter;
    ///
    /// /// Remembers whether it saw an item held back by the cap.
    /// #[derive(Clone)]
    /// struct SeesCap(std::sync::Arc<std::sync::atomic::AtomicBool>);
    ///
    /// impl Algorithm for SeesCap {
    ///     fn update(&mut self, sample: &Sample, limit: usize) -> usize {
    ///         if sample.capped() {
    ///             self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    ///         }
    ///         limit
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    /// let limiter = Limiter::builder().adaptive(SeesCap(seen.clone())).limit(8).build();
    /// // Two slots for the next minute: the limit in force is min(8, 2).
    /// let until = tokio::time::Instant::now() + Duration::from_secs(60);
    /// limiter.set_limit_until(2, until, 0);
    /// assert_eq!(limiter.limit(), 2);
    /// limiter.spawn(async {}).await.unwrap();
    /// assert!(seen.load(std::sync::atomic::Ordering::Relaxed));
    /// # }
    /// ```
    pub fn capped(&self) -> bool {
        self.capped
    }

    /// Whether the item reported an overload: its output, by its
    /// [`overload_if`](crate::TaskBuilder::overload_if), or its run timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Sample;
    ///
    /// assert!(!Sample::new(Duration::ZERO, 1, 1).is_overload());
    /// ```
    pub fn is_overload(&self) -> bool {
        self.overload
    }

    /// Whether the item panicked. Its run time then says little about the downstream, and a
    /// panic is not an overload.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Sample;
    ///
    /// assert!(!Sample::new(Duration::ZERO, 1, 1).panicked());
    /// ```
    pub fn panicked(&self) -> bool {
        self.panicked
    }
}

/// An algorithm that sets an adaptive limiter's limit, one finished item at a time.
///
/// The limiter calls [`update`](Self::update) once per [`Sample`], one call at a time (under a
/// lock of the limiter's own, on the worker whose item just ended), and puts the limit it
/// returns in force, clamped to [`Builder::min_limit`](crate::Builder::min_limit) and
/// [`Builder::max_limit`](crate::Builder::max_limit). Keep `update` short: it runs once per
/// item. A panic in it is caught: that sample is dropped and the limit stays as it is.
///
/// # Examples
///
/// An algorithm that halves the limit on an overload and adds one on an item that found the
/// limit full:
///
/// ```
/// use task_limiter::adaptive::{Algorithm, Sample};
///
/// #[derive(Clone, Debug)]
/// struct Halve;
///
/// impl Algorithm for Halve {
///     fn update(&mut self, sample: &Sample, limit: usize) -> usize {
///         if sample.is_overload() {
///             limit / 2
///         } else if sample.found_limit_full() {
///             limit + 1
///         } else {
///             limit
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = task_limiter::Limiter::builder().adaptive(Halve).limit(4).build();
/// let handle = limiter.build_task().overload_if(|busy: &bool| *busy).spawn(async { true });
/// handle.await.unwrap();
/// assert_eq!(limiter.limit(), 2);
/// # }
/// ```
pub trait Algorithm: Send + 'static {
    /// Takes one finished item's sample and returns the limit to use from now on.
    ///
    /// `limit` is the algorithm's limit: what it returned last (after clamping), unless the
    /// user has set the limit since with [`Limiter::set_limit`](crate::Limiter::set_limit): an
    /// algorithm that keeps its own estimate should start again from `limit` when the two
    /// differ. Under a cap ([`Limiter::set_limit_until`](crate::Limiter::set_limit_until)) the
    /// limit in force may be lower: the cap, which [`Sample::limit`] gives with
    /// [`Sample::capped`] set.
    fn update(&mut self, sample: &Sample, limit: usize) -> usize;

    /// Whether the algorithm reads [`Sample::queue_wait`] (by default it does). Measuring the
    /// queue wait costs a read of the clock per item as it is submitted; an algorithm that
    /// returns false here is given samples whose queue wait is zero. Asked once, as the
    /// limiter is built.
    fn uses_queue_wait(&self) -> bool {
        true
    }
}

/// Tells whether an item's output means that the downstream was overloaded: what
/// [`TaskBuilder::overload_if`](crate::TaskBuilder::overload_if) takes.
///
/// Implemented for every `Fn(&T) -> bool`, and for `()`, which calls no output an overload.
///
/// # Examples
///
/// ```
/// use task_limiter::adaptive::Overload;
///
/// fn busy(reply: &Result<u32, u16>) -> bool {
///     matches!(reply, Err(429 | 503))
/// }
/// assert!(busy.is_overload(&Err(503)));
/// assert!(!().is_overload(&Err::<u32, u16>(503)));
/// ```
pub trait Overload<T>: Send + 'static {
    /// Whether `output` means an overload.
    fn is_overload(&self, output: &T) -> bool;
}

impl<T> Overload<T> for () {
    #[inline(always)]
    fn is_overload(&self, _: &T) -> bool {
        false
    }
}

impl<T, F> Overload<T> for F
where
    F: Fn(&T) -> bool + Send + 'static,
{
    fn is_overload(&self, output: &T) -> bool {
        self(output)
    }
}

// === the limiter's side ===

/// How a builder makes the algorithm for each limiter it builds (a builder can be cloned and
/// built twice; each limiter gets an algorithm of its own).
pub(crate) type MakeAlgorithm = Arc<dyn Fn() -> Box<dyn Algorithm> + Send + Sync>;

/// The default [`Builder::max_limit`](crate::Builder::max_limit) of an adaptive limiter.
pub(crate) const DEFAULT_MAX_LIMIT: usize = 1000;

/// An adaptive limiter's controller: its algorithm, the limit it last put in force, and its
/// bounds. Every measured item holds it, and reports to it as it ends.
pub(crate) struct Controller {
    /// On a cache line of its own: every measured item takes this lock as it ends, on its
    /// worker's thread, while submitters move the `Arc`'s reference count (the line before).
    inner: Padded<Mutex<Inner>>,
    /// The algorithm reads queue waits: items take their submission time with them.
    queue_wait: bool,
    handle: LimitHandle,
    min: usize,
    max: usize,
}

struct Inner {
    algorithm: Box<dyn Algorithm>,
    /// The algorithm's limit, as the controller (or the user, through `set_limit`) last set
    /// it; the limit in force is this under the cap, if one is set.
    limit: usize,
}

impl Controller {
    pub(crate) fn new(
        algorithm: Box<dyn Algorithm>,
        limit: usize,
        min: usize,
        max: usize,
        handle: LimitHandle,
    ) -> Controller {
        Controller {
            queue_wait: algorithm.uses_queue_wait(),
            inner: Padded(Mutex::new(Inner { algorithm, limit })),
            handle,
            min,
            max,
        }
    }

    /// Wraps an item's work so that it reports a sample when it ends.
    pub(crate) fn measure<W: Work, O: Overload<W::Output>>(
        self: &Arc<Self>,
        work: W,
        overload: O,
    ) -> Measured<W, O> {
        Measured {
            work,
            overload,
            controller: self.clone(),
            submitted: self.queue_wait.then(Instant::now),
        }
    }

    /// When an item or a lease request is submitted, if its queue wait is measured.
    pub(crate) fn submitted_at(&self) -> Option<Instant> {
        self.queue_wait.then(Instant::now)
    }

    /// A lease's sample, started as the lease is granted under `load`.
    pub(crate) fn lease_sample(
        self: &Arc<Self>,
        submitted: Option<Instant>,
        load: Load,
    ) -> LeaseSample {
        let started = Instant::now();
        LeaseSample {
            controller: self.clone(),
            started,
            queue_wait: submitted
                .map_or(Duration::ZERO, |at| started.saturating_duration_since(at)),
            load,
        }
    }

    /// Feeds one sample to the algorithm and puts the limit it returns in force.
    fn record(&self, sample: Sample) {
        let mut inner = lock(&self.inner.0);
        let Inner { algorithm, limit } = &mut *inner;
        let current = *limit;
        // User code: a panic in it loses this sample, nothing else (no lock is poisoned, as
        // the guard is not dropped by the unwind).
        let Ok(next) = panic::catch_unwind(AssertUnwindSafe(|| algorithm.update(&sample, current)))
        else {
            return;
        };
        let next = next.clamp(self.min, self.max);
        if next != current {
            *limit = next;
            // Under the controller's lock, so that the limits reach the core in the order
            // the algorithm chose them. Under the cap, which stays: only the lease's holder
            // (`set_limit_until`) moves it.
            self.handle.set_uncapped(next);
            tracing::trace!(target: "task_limiter", limit = next, "adaptive limit changed");
        }
    }

    /// The user's `set_limit`: the controller goes on from `limit`, and a cap is lifted.
    pub(crate) fn set_limit(&self, limit: usize) {
        let mut inner = lock(&self.inner.0);
        inner.limit = limit;
        self.handle.set_limit(limit);
    }

    /// The algorithm's limit: what it would use with no cap.
    pub(crate) fn limit(&self) -> usize {
        lock(&self.inner.0).limit
    }
}

/// A lease's sample in the making: one sample per lease, its run time from the grant to the
/// lease's end.
pub(crate) struct LeaseSample {
    controller: Arc<Controller>,
    started: Instant,
    queue_wait: Duration,
    load: Load,
}

impl LeaseSample {
    /// Reports the sample as the lease ends.
    pub(crate) fn report(self, overload: bool, panicked: bool) {
        let sample = sample(self.started, self.queue_wait, self.load);
        self.controller
            .record(sample.with_overload(overload).with_panicked(panicked));
    }
}

/// Keeps a value on cache lines of its own.
#[repr(align(128))]
struct Padded<T>(T);

/// An item's work on an adaptive limiter: it takes its submission time with it, and its
/// future reports the item's sample.
pub(crate) struct Measured<W, O> {
    work: W,
    overload: O,
    controller: Arc<Controller>,
    /// When the item was submitted, if its queue wait is measured.
    submitted: Option<Instant>,
}

impl<W, O> Measured<W, O> {
    /// The work as it was given (for a refused `try_` call to give it back).
    pub(crate) fn into_inner(self) -> W {
        self.work
    }
}

pin_project! {
    /// A measured item's future. Reports its sample when it returns, when its run timeout cuts
    /// it, or when a panic unwinds through it; dropped otherwise (cancelled), it reports none.
    pub(crate) struct MeasuredFuture<F, O> {
        #[pin]
        future: F,
        overload: O,
        started: Instant,
        queue_wait: Duration,
        load: Load,
        // Taken when the sample is reported (or when the item is cut without one).
        controller: Option<Arc<Controller>>,
    }

    impl<F, O> PinnedDrop for MeasuredFuture<F, O> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(controller) = this.controller.take() {
                // Dropped by the unwind of a panic in the item's poll: a sample, marked.
                if std::thread::panicking() {
                    let sample = sample(*this.started, *this.queue_wait, *this.load);
                    controller.record(sample.with_panicked(true));
                }
            }
        }
    }
}

fn sample(started: Instant, queue_wait: Duration, load: Load) -> Sample {
    Sample::new(started.elapsed(), load.running, load.limit)
        .with_queue_wait(queue_wait)
        .with_capped(load.capped)
}

impl<F, O> MeasuredFuture<F, O> {
    fn report(self: Pin<&mut Self>, overload: bool) {
        let this = self.project();
        if let Some(controller) = this.controller.take() {
            let sample = sample(*this.started, *this.queue_wait, *this.load);
            controller.record(sample.with_overload(overload));
        }
    }
}

impl<F: Future, O: Overload<F::Output>> Future for MeasuredFuture<F, O> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.as_mut().project();
        let output = std::task::ready!(this.future.poll(cx));
        let overload = this.overload.is_overload(&output);
        self.report(overload);
        Poll::Ready(output)
    }
}

impl<W: Work, O: Overload<W::Output>> Work for Measured<W, O> {
    type Output = W::Output;
    type Future = MeasuredFuture<W::Future, O>;

    fn start(self, worker: WorkerId) -> Self::Future {
        self.start_under(worker, Load::default())
    }

    fn start_under(self, worker: WorkerId, load: Load) -> Self::Future {
        let started = Instant::now();
        MeasuredFuture {
            future: self.work.start_under(worker, load),
            overload: self.overload,
            started,
            queue_wait: self
                .submitted
                .map_or(Duration::ZERO, |at| started.saturating_duration_since(at)),
            load,
            controller: Some(self.controller),
        }
    }

    fn poll_cut(mut future: Pin<&mut Self::Future>, cx: &mut Context<'_>) -> Poll<Cut> {
        let cut = std::task::ready!(W::poll_cut(future.as_mut().project().future, cx));
        match cut {
            // A run timeout is the downstream not answering in time: an overload.
            Cut::TimedOut => future.report(true),
            // Cancelled: no sample.
            Cut::Cancelled => drop(future.project().controller.take()),
        }
        Poll::Ready(cut)
    }
}
