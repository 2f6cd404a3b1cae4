use std::error::Error as StdError;
use std::fmt;

/// Why a [`ClusterBudget`](crate::budget::ClusterBudget) could not start or release: a refused
/// configuration, or Redis failing to answer.
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
/// use task_limiter_redis::ClusterBudget;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(1);
/// let err = ClusterBudget::builder("redis://127.0.0.1/", "api")
///     .budget(0)
///     .connect(&limiter)
///     .await
///     .unwrap_err();
/// assert!(err.is_config());
/// assert_eq!(err.to_string(), "the budget must be at least 1 slot");
/// # }
/// ```
pub struct Error {
    kind: Kind,
}

enum Kind {
    Config(String),
    Redis(String, Option<redis::RedisError>),
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error {
            kind: Kind::Config(message.into()),
        }
    }

    pub(crate) fn redis(context: impl Into<String>, source: Option<redis::RedisError>) -> Error {
        Error {
            kind: Kind::Redis(context.into(), source),
        }
    }

    /// Returns true if the configuration was refused (bad URL, budget 0, a TTL too short for
    /// the renewal period, a budget that differs from the one live processes use).
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    /// use task_limiter_redis::ClusterBudget;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let err = ClusterBudget::builder("not a url", "api")
    ///     .budget(4)
    ///     .connect(&Limiter::new(1))
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.is_config());
    /// # }
    /// ```
    pub fn is_config(&self) -> bool {
        matches!(self.kind, Kind::Config(_))
    }

    /// Returns true if Redis could not be reached or did not answer in time.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    /// use task_limiter_redis::ClusterBudget;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // Port 1 on loopback: nothing listens there.
    /// let err = ClusterBudget::builder("redis://127.0.0.1:1/", "api")
    ///     .budget(4)
    ///     .ttl(Duration::from_secs(1))
    ///     .connect(&Limiter::new(1))
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.is_redis());
    /// # }
    /// ```
    pub fn is_redis(&self) -> bool {
        matches!(self.kind, Kind::Redis(..))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Config(message) => f.write_str(message),
            Kind::Redis(context, Some(source)) => write!(f, "{context}: {source}"),
            Kind::Redis(context, None) => f.write_str(context),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_config() { "config" } else { "redis" };
        f.debug_struct("Error")
            .field("kind", &kind)
            .field("message", &self.to_string())
            .finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            Kind::Redis(_, Some(source)) => Some(source),
            _ => None,
        }
    }
}
