use tokio::time::Instant;

/// A lease of this process: slots of the budget, valid until an instant on the local clock.
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
/// if let Some(lease) = budget.lease() {
///     println!("{} slots, token {}", lease.slots(), lease.fencing_token());
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub(crate) slots: usize,
    pub(crate) share: usize,
    pub(crate) fencing_token: u64,
    pub(crate) granted_at: Instant,
    pub(crate) valid_until: Instant,
}

impl Lease {
    /// Returns the slots granted: the limiter's limit while the lease is valid (or the floor,
    /// if that is higher).
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
    /// let slots = budget.lease().map_or(0, |lease| lease.slots());
    /// # Ok(())
    /// # }
    /// ```
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Returns this process's fair share at the last renewal: what it may grow to as slots
    /// come free.
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
    /// let lease = budget.lease().unwrap();
    /// assert!(lease.slots() <= lease.share() || lease.share() == 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn share(&self) -> usize {
        self.share
    }

    /// Returns the lease's fencing token: it grows with every new lease (a lease is new after
    /// the previous one expired or was released), never within one. Pass it to a downstream
    /// that refuses writes carrying a token older than the newest it saw.
    ///
    /// Tokens are unique and ordered across all processes of the budget, also across a Redis
    /// restart that lost the data: a fresh state starts the counter at Redis's clock in
    /// microseconds (so tokens are large numbers), which is above every token issued before
    /// unless that clock went back.
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
    /// let token = budget.fencing_token().expect("holding a lease");
    /// # Ok(())
    /// # }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// Returns when the reply that granted this lease arrived.
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
    /// let age = budget.lease().unwrap().granted_at().elapsed();
    /// # Ok(())
    /// # }
    /// ```
    pub fn granted_at(&self) -> Instant {
        self.granted_at
    }

    /// Returns the instant from which this process considers the lease gone: the time the
    /// renewal was sent, plus the TTL, minus the safety margin. Redis ends it later.
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
    /// let left = budget.lease().unwrap().valid_until() - tokio::time::Instant::now();
    /// # Ok(())
    /// # }
    /// ```
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }
}
