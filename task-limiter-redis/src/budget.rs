use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::builder::Builder;
use crate::error::Error;
use crate::lease::Lease;
use crate::shared::Shared;

/// A share of a cluster-wide budget, leased from Redis, that sets a [`Limiter`]'s limit.
///
/// Every process that connects with the same name shares one budget: at most `budget` items
/// run at once across all of them (see the crate docs for the exact guarantee and its failure
/// windows). The process leases slots in blocks and its limiter's limit is the slots it holds,
/// so items start and finish locally without a Redis call; a background task renews the lease
/// about every TTL / 3, asks for more slots while items are queued, and gives slots back once
/// demand stayed low for the hysteresis.
///
/// If renewals fail until the lease may have run out (by this process's monotonic clock, with
/// a safety margin), the limit falls to the floor (0 by default: nothing new starts). Running
/// items are never cancelled and queued items stay queued; the limit comes back once a lease is
/// granted again.
///
/// Dropping the `ClusterBudget` stops the renewals: the limit falls to the floor, and its
/// slots go back to Redis once the items still running are done (or expire after the TTL).
/// [`release`](Self::release) does the same and waits for it. The budget keeps a clone of the
/// limiter while it lives, so dropping your own clones does not close the limiter.
///
/// [`Limiter`]: task_limiter::Limiter
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use task_limiter::Limiter;
/// use task_limiter_redis::ClusterBudget;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), task_limiter_redis::Error> {
/// let limiter = Limiter::new(1); // the budget sets its limit
/// let budget = ClusterBudget::builder("redis://127.0.0.1/", "downstream-api")
///     .budget(50) // at most 50 calls at once, summed over every replica
///     .ttl(Duration::from_secs(6))
///     .connect(&limiter)
///     .await?;
///
/// for i in 0..1000 {
///     limiter.spawn(async move { i });
/// }
/// println!("this process holds {} of 50 slots", budget.slots());
/// budget.release().await?;
/// # Ok(())
/// # }
/// ```
pub struct ClusterBudget {
    shared: Arc<Shared>,
    process_id: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), Error>>>,
}

/// Counters of a [`ClusterBudget`], from [`ClusterBudget::metrics`].
///
/// # Examples
///
/// ```no_run
/// # use task_limiter::Limiter;
/// # use task_limiter_redis::ClusterBudget;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), task_limiter_redis::Error> {
/// # let limiter = Limiter::new(1);
/// # let budget = ClusterBudget::builder("redis://127.0.0.1/", "api").budget(8).connect(&limiter).await?;
/// let m = budget.metrics();
/// println!("{} Redis calls, {} failed", m.redis_calls, m.redis_errors);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetMetrics {
    /// Calls of the lease script sent to Redis (one command each).
    pub redis_calls: u64,
    /// Calls that failed or timed out.
    pub redis_errors: u64,
    /// Leases acquired: the first, and each one after a lease was lost.
    pub leases: u64,
    /// Slots of the lease in force now (0 without one).
    pub slots: usize,
}

impl ClusterBudget {
    /// Returns a [`Builder`] for the budget called `name` on the Redis at `url`
    /// (`redis://host:port/db`, `rediss://` for TLS is not built in, `redis+unix:///path`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use task_limiter::Limiter;
    /// use task_limiter_redis::ClusterBudget;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), task_limiter_redis::Error> {
    /// let limiter = Limiter::new(1);
    /// let budget = ClusterBudget::builder("redis://127.0.0.1/", "api")
    ///     .budget(8)
    ///     .connect(&limiter)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(url: impl Into<String>, name: impl Into<String>) -> Builder {
        Builder::new(url.into(), name.into())
    }

    /// A budget whose renewal task already runs: see `Builder::connect`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        process_id: String,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), Error>>,
    ) -> ClusterBudget {
        ClusterBudget {
            shared,
            process_id,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Returns the lease in force now, or `None` if this process holds none (lost, released,
    /// or past its local expiry and not yet renewed).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use task_limiter::Limiter;
    /// # use task_limiter_redis::ClusterBudget;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), task_limiter_redis::Error> {
    /// # let limiter = Limiter::new(1);
    /// # let budget = ClusterBudget::builder("redis://127.0.0.1/", "api").budget(8).connect(&limiter).await?;
    /// match budget.lease() {
    ///     Some(lease) => println!("{} slots", lease.slots()),
    ///     None => println!("no lease: at the floor"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn lease(&self) -> Option<Lease> {
        let lease = *self.shared.lease.borrow();
        lease.filter(|lease| Instant::now() < lease.valid_until)
    }

    /// Returns the slots held now: those of [`lease`](Self::lease), 0 without one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use task_limiter::Limiter;
    /// # use task_limiter_redis::ClusterBudget;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), task_limiter_redis::Error> {
    /// # let limiter = Limiter::new(1);
    /// # let budget = ClusterBudget::builder("redis://127.0.0.1/", "api").budget(8).connect(&limiter).await?;
    /// println!("{} slots", budget.slots());
    /// # Ok(())
    /// # }
    /// ```
    pub fn slots(&self) -> usize {
        self.lease().map_or(0, |lease| lease.slots)
    }

    /// Returns the fencing token of the lease in force, `None` without one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use task_limiter::Limiter;
    /// # use task_limiter_redis::ClusterBudget;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), task_limiter_redis::Error> {
    /// # let limiter = Limiter::new(1);
    /// # let budget = ClusterBudget::builder("redis://127.0.0.1/", "api").budget(8).connect(&limiter).await?;
    /// if let Some(token) = budget.fencing_token() {
    ///     // send `token` with the request; the downstream refuses older ones
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn fencing_token(&self) -> Option<u64> {
        self.lease().map(|lease| lease.fencing_token)
    }

    /// Returns a receiver that sees every renewal (`Some`) and every loss of the lease
    /// (`None`), for dashboards and for guarding a downstream with the fencing token.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use task_limiter::Limiter;
    /// # use task_limiter_redis::ClusterBudget;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), task_limiter_redis::Error> {
    /// # let limiter = Limiter::new(1);
    /// # let budget = ClusterBudget::builder("redis://127.0.0.1/", "api").budget(8).connect(&limiter).await?;
    /// let mut changes = budget.subscribe();
    /// changes.changed().await.unwrap();
    /// println!("{:?}", *changes.borrow());
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&self) -> watch::Receiver<Option<Lease>> {
        self.shared.lease.subscribe()
    }

    /// Returns this process's ID in Redis (see [`Builder::process_id`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use task_limiter::Limiter;
    /// # use task_limiter_redis::ClusterBudget;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), task_limiter_redis::Error> {
    /// # let limiter = Limiter::new(1);
    /// # let budget = ClusterBudget::builder("redis://127.0.0.1/", "api").budget(8).connect(&limiter).await?;
    /// println!("{}", budget.process_id());
    /// # Ok(())
    /// # }
    /// ```
    pub fn process_id(&self) -> &str {
        &self.process_id
    }

    /// Returns the budget's counters: Redis calls made and failed, leases acquired.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use task_limiter::Limiter;
    /// # use task_limiter_redis::ClusterBudget;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), task_limiter_redis::Error> {
    /// # let limiter = Limiter::new(1);
    /// # let budget = ClusterBudget::builder("redis://127.0.0.1/", "api").budget(8).connect(&limiter).await?;
    /// assert!(budget.metrics().redis_calls >= 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn metrics(&self) -> BudgetMetrics {
        BudgetMetrics {
            redis_calls: self.shared.calls.load(Relaxed),
            redis_errors: self.shared.errors.load(Relaxed),
            leases: self.shared.leases.load(Relaxed),
            slots: self.slots(),
        }
    }

    /// Stops renewing and gives the slots back: the limit falls to the floor at once, and the
    /// lease is deleted from Redis once the items still running are done (queued items stay
    /// queued). Resolves when that is done, or with an error if Redis could not be told before
    /// the lease would have expired anyway.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the release goes on in the background if the future is dropped.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use task_limiter::Limiter;
    /// # use task_limiter_redis::ClusterBudget;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), task_limiter_redis::Error> {
    /// # let limiter = Limiter::new(1);
    /// let budget = ClusterBudget::builder("redis://127.0.0.1/", "api").budget(8).connect(&limiter).await?;
    /// limiter.close();
    /// limiter.wait().await;
    /// budget.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn release(mut self) -> Release {
        drop(self.stop.take());
        let task = self
            .task
            .take()
            .expect("the renewal task is taken only here");
        Release { task }
    }
}

impl Drop for ClusterBudget {
    fn drop(&mut self) {
        // Dropping the sender stops the renewal task, which then releases in the background.
        drop(self.stop.take());
    }
}

impl fmt::Debug for ClusterBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterBudget")
            .field("process_id", &self.process_id)
            .field("lease", &self.lease())
            .finish()
    }
}

/// Future returned by [`ClusterBudget::release`]: resolves once the lease is given back.
///
/// # Examples
///
/// ```no_run
/// # use task_limiter::Limiter;
/// use task_limiter_redis::{ClusterBudget, Release};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), task_limiter_redis::Error> {
/// # let limiter = Limiter::new(1);
/// # let budget = ClusterBudget::builder("redis://127.0.0.1/", "api").budget(8).connect(&limiter).await?;
/// let release: Release = budget.release();
/// release.await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Release {
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Future for Release {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.task).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(err)) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::redis(
                "the renewal task was cancelled (its runtime shut down)",
                None,
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl fmt::Debug for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Release").finish_non_exhaustive()
    }
}
