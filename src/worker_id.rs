use std::fmt;

/// The worker slot an item runs under: an index in `0..limit`.
///
/// At most one running item holds a given `WorkerId` at a time, and IDs are dense and reused:
/// the limiter always hands out the lowest free ID below the limit in force. That makes an ID a
/// lock-free index into per-worker state (buffers, connections, caches) that lives as long as
/// the limiter.
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(4);
/// let id = limiter.spawn_with(|id| async move { id }).await.unwrap();
/// assert!(id.index() < 4);
/// println!("ran on {id}");
/// # }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub(crate) u32);

impl WorkerId {
    /// Returns the index of this worker slot, in `0..limit`.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(1);
    /// let index = limiter.spawn_with(|id| async move { id.index() }).await.unwrap();
    /// assert_eq!(index, 0);
    /// # }
    /// ```
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkerId({})", self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker-{}", self.0)
    }
}
