//! Connecting: the first lease, then the renewal task.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use task_limiter::Limiter;
use tokio::sync::{oneshot, watch};
use tokio::time::timeout;

use crate::budget::ClusterBudget;
use crate::builder::Builder;
use crate::error::Error;
use crate::renewer::{Mode, Renewer};
use crate::shared::Shared;

impl Builder {
    /// Connects to Redis, takes this process's first lease and starts renewing it, managing
    /// `limiter`'s limit from then on (see [`ClusterBudget`]).
    ///
    /// The limit is set to the floor first, so nothing starts under the limiter's own limit
    /// while the first lease is taken. Errors: the configuration is refused (bad URL, budget
    /// 0, TTL too short for the renewal period, a budget that differs from the live
    /// processes'), or Redis does not answer within the renewal period.
    ///
    /// # Panics
    ///
    /// The returned future panics if polled outside a tokio runtime with a time driver.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future before it resolves leaves no renewal task; a lease it
    /// already took expires after the TTL, and the limit stays at the floor.
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
    ///     .budget(10)
    ///     .connect(&limiter)
    ///     .await?;
    /// println!("holding {} slots", budget.slots());
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect<S: Send + 'static>(self, limiter: &Limiter<S>) -> Connect {
        connect(self, limiter.clone())
    }
}

fn connect<S: Send + 'static>(builder: Builder, limiter: Limiter<S>) -> Connect {
    Connect {
        inner: Box::pin(async move {
            let cfg = builder.check()?;
            let client = redis::Client::open(builder.url.as_str())
                .map_err(|err| Error::config(format!("invalid redis url: {err}")))?;
            // The manager reconnects on its own after a failure; a short backoff and
            // timeouts within the renewal period keep a dead server from holding up the
            // renewal task past the lease.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(cfg.call_timeout))
                .set_response_timeout(Some(cfg.call_timeout))
                .set_number_of_retries(1)
                .set_min_delay(cfg.poll)
                .set_max_delay(cfg.renew_every);
            let conn = match timeout(
                cfg.call_timeout * 2,
                ConnectionManager::new_with_config(client, config),
            )
            .await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(err)) => return Err(Error::redis("redis unreachable", Some(err))),
                Err(_) => return Err(Error::redis("redis unreachable: connect timed out", None)),
            };
            let (lease, _) = watch::channel(None);
            let shared = Arc::new(Shared {
                lease,
                calls: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                leases: AtomicU64::new(0),
                fence_seen: AtomicU64::new(0),
            });
            let process_id = cfg.process_id.clone();
            let mut renewer = Renewer::new(limiter, conn, cfg, shared.clone());
            // Nothing starts under the limiter's own limit while the first lease is taken.
            renewer.fail_closed();
            renewer.call(Mode::Check, 0).await?;
            let (stop, stopped) = oneshot::channel();
            let task = tokio::spawn(renewer.run(stopped));
            Ok(ClusterBudget::new(shared, process_id, stop, task))
        }),
    }
}

/// Future returned by [`Builder::connect`]: resolves to the running [`ClusterBudget`] once the
/// first lease is in force.
///
/// # Examples
///
/// ```no_run
/// use task_limiter::Limiter;
/// use task_limiter_redis::{ClusterBudget, Connect};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), task_limiter_redis::Error> {
/// let limiter = Limiter::new(1);
/// let connect: Connect = ClusterBudget::builder("redis://127.0.0.1/", "api").budget(8).connect(&limiter);
/// let budget = connect.await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Connect {
    inner: Pin<Box<dyn Future<Output = Result<ClusterBudget, Error>> + Send>>,
}

impl Future for Connect {
    type Output = Result<ClusterBudget, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect").finish_non_exhaustive()
    }
}
