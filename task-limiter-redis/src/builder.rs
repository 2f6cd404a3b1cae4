use std::fmt;
use std::time::Duration;

use crate::config::Config;
use crate::error::Error;

/// Configures a [`ClusterBudget`]; made by [`ClusterBudget::builder`].
///
/// [`ClusterBudget`]: crate::budget::ClusterBudget
/// [`ClusterBudget::builder`]: crate::budget::ClusterBudget::builder
///
/// Defaults: TTL 10 s, renewal every TTL / 3, safety margin TTL / 10, floor 0 (fail closed),
/// idle hysteresis one renewal period. The budget has no default.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use task_limiter::Limiter;
/// use task_limiter_redis::ClusterBudget;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), task_limiter_redis::Error> {
/// let limiter = Limiter::new(1);
/// let budget = ClusterBudget::builder("redis://127.0.0.1/", "downstream-api")
///     .budget(50)
///     .ttl(Duration::from_secs(6))
///     .floor(0)
///     .connect(&limiter)
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Builder {
    pub(crate) url: String,
    pub(crate) name: String,
    pub(crate) budget: Option<usize>,
    pub(crate) ttl: Duration,
    pub(crate) renew_every: Option<Duration>,
    pub(crate) safety_margin: Option<Duration>,
    pub(crate) floor: usize,
    pub(crate) idle_after: Option<Duration>,
    pub(crate) process_id: Option<String>,
}

impl Builder {
    pub(crate) fn new(url: String, name: String) -> Builder {
        Builder {
            url,
            name,
            budget: None,
            ttl: Duration::from_secs(10),
            renew_every: None,
            safety_margin: None,
            floor: 0,
            idle_after: None,
            process_id: None,
        }
    }

    /// Sets the cluster-wide budget: the most items running at once across every process that
    /// uses this name. All of them must use the same budget; a process whose budget differs
    /// from the one live processes use is refused by [`connect`](Self::connect).
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter_redis::ClusterBudget;
    ///
    /// let builder = ClusterBudget::builder("redis://127.0.0.1/", "api").budget(20);
    /// ```
    pub fn budget(mut self, slots: usize) -> Builder {
        self.budget = Some(slots);
        self
    }

    /// Sets the time-to-live of this process's lease, counted by Redis's clock from each
    /// renewal. A process that stops renewing loses its slots after at most this long.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter_redis::ClusterBudget;
    ///
    /// let builder = ClusterBudget::builder("redis://127.0.0.1/", "api").ttl(Duration::from_secs(3));
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Builder {
        self.ttl = ttl;
        self
    }

    /// Sets how often the lease is renewed (default TTL / 3). It must leave room for a
    /// failed renewal and the safety margin: `2 * renew_every + safety_margin <= ttl`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter_redis::ClusterBudget;
    ///
    /// let builder = ClusterBudget::builder("redis://127.0.0.1/", "api")
    ///     .ttl(Duration::from_secs(9))
    ///     .renew_every(Duration::from_secs(2));
    /// ```
    pub fn renew_every(mut self, period: Duration) -> Builder {
        self.renew_every = Some(period);
        self
    }

    /// Sets how much earlier than Redis this process considers its lease gone (default
    /// TTL / 10): covers clocks that run at slightly different rates.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter_redis::ClusterBudget;
    ///
    /// let builder = ClusterBudget::builder("redis://127.0.0.1/", "api")
    ///     .safety_margin(Duration::from_millis(500));
    /// ```
    pub fn safety_margin(mut self, margin: Duration) -> Builder {
        self.safety_margin = Some(margin);
        self
    }

    /// Sets the floor: the limit of this process while it holds no lease (default 0: nothing
    /// new starts, fail closed). A floor above 0 fails open: up to `floor` items per process
    /// start even when Redis is gone. While a lease is held the limit is
    /// `max(granted slots, floor)`, and Redis counts those slots against the budget.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter_redis::ClusterBudget;
    ///
    /// let builder = ClusterBudget::builder("redis://127.0.0.1/", "api").floor(1);
    /// ```
    pub fn floor(mut self, floor: usize) -> Builder {
        self.floor = floor;
        self
    }

    /// Sets how long demand must stay lower before this process gives slots back (default: one
    /// renewal period), so a bursty process does not give up and ask again every renewal.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter_redis::ClusterBudget;
    ///
    /// let builder = ClusterBudget::builder("redis://127.0.0.1/", "api")
    ///     .idle_after(Duration::from_secs(5));
    /// ```
    pub fn idle_after(mut self, hysteresis: Duration) -> Builder {
        self.idle_after = Some(hysteresis);
        self
    }

    /// Sets this process's ID in Redis (default: host name, process ID and a random suffix).
    /// Two live processes must never share one.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter_redis::ClusterBudget;
    ///
    /// let builder = ClusterBudget::builder("redis://127.0.0.1/", "api").process_id("pod-7");
    /// ```
    pub fn process_id(mut self, id: impl Into<String>) -> Builder {
        self.process_id = Some(id.into());
        self
    }

    pub(crate) fn check(&self) -> Result<Config, Error> {
        let budget = match self.budget {
            None => return Err(Error::config("no budget set: call `Builder::budget`")),
            Some(0) => return Err(Error::config("the budget must be at least 1 slot")),
            Some(n) => n,
        };
        if self.name.is_empty() {
            return Err(Error::config("the budget's name must not be empty"));
        }
        let ttl = self.ttl;
        if ttl < Duration::from_millis(30) {
            return Err(Error::config(format!(
                "ttl {ttl:?} too short: at least 30ms"
            )));
        }
        let renew_every = self.renew_every.unwrap_or(ttl / 3);
        let safety_margin = self.safety_margin.unwrap_or(ttl / 10);
        if renew_every.is_zero() || renew_every * 2 + safety_margin > ttl {
            return Err(Error::config(format!(
                "ttl {ttl:?} too short for the renewal period {renew_every:?} and safety margin \
                 {safety_margin:?}: need 2 x renewal + margin <= ttl"
            )));
        }
        let process_id = self.process_id.clone().unwrap_or_else(default_process_id);
        if process_id.is_empty() {
            return Err(Error::config("the process id must not be empty"));
        }
        Ok(Config {
            name: self.name.clone(),
            budget,
            ttl,
            renew_every,
            poll: renew_every / 4,
            safety_margin,
            floor: self.floor,
            idle_after: self.idle_after.unwrap_or(renew_every),
            process_id,
            call_timeout: renew_every,
        })
    }
}

/// `host-pid-random`: readable in `redis-cli`, unique across restarts on one host.
fn default_process_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_owned());
    // RandomState is seeded from the OS per process: a random suffix without a dependency.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(
        "{}-{}-{:08x}",
        host.trim(),
        std::process::id(),
        random as u32
    )
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: only the name and numbers are shown.
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("budget", &self.budget)
            .field("ttl", &self.ttl)
            .field("renew_every", &self.renew_every)
            .field("floor", &self.floor)
            .finish_non_exhaustive()
    }
}
