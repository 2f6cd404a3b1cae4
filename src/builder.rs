use std::fmt;

use crate::sync::rt::runtime::Handle;
use crate::Limiter;

/// The order in which queued items start.
///
/// # Examples
///
/// ```
/// use task_limiter::{Limiter, QueueOrder};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::builder().limit(4).queue_order(QueueOrder::Lifo).build();
/// # drop(limiter);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueueOrder {
    /// First in, first out: items start in the order they were submitted. The default.
    #[default]
    Fifo,
    /// Last in, first out: the most recently submitted item starts first, as in the Go
    /// compiler's back end. Keeps recently made (cache-warm) work moving.
    Lifo,
}

/// Configures and builds a [`Limiter`].
///
/// # Examples
///
/// ```
/// use task_limiter::{Limiter, QueueOrder};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::builder()
///     .limit(8)
///     .name("thumbnails")
///     .queue_order(QueueOrder::Fifo)
///     .build();
/// assert_eq!(limiter.limit(), 8);
/// assert_eq!(limiter.name(), "thumbnails");
/// # }
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    pub(crate) limit: Option<usize>,
    pub(crate) name: String,
    pub(crate) order: QueueOrder,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder {
            limit: None,
            name: String::from("task-limiter"),
            order: QueueOrder::default(),
        }
    }

    /// Sets the most items that may run at once. Defaults to the number of CPUs
    /// ([`std::thread::available_parallelism`]).
    ///
    /// # Panics
    ///
    /// Panics if `limit` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(3).build();
    /// assert_eq!(limiter.limit(), 3);
    /// # }
    /// ```
    #[track_caller]
    pub fn limit(mut self, limit: usize) -> Builder {
        assert!(limit > 0, "task_limiter: the limit must be at least 1");
        self.limit = Some(limit);
        self
    }

    /// Names the limiter, for tracing fields and tokio-console task names
    /// (`{name}.manager`, `{name}.worker-{id}`). Defaults to `task-limiter`.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().name("uploads").build();
    /// assert_eq!(limiter.name(), "uploads");
    /// # }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = name.into();
        self
    }

    /// Sets the order in which queued items start. Defaults to [`QueueOrder::Fifo`].
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::{Limiter, QueueOrder};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().queue_order(QueueOrder::Lifo).build();
    /// # drop(limiter);
    /// # }
    /// ```
    pub fn queue_order(mut self, order: QueueOrder) -> Builder {
        self.order = order;
        self
    }

    /// Builds the limiter on the current tokio runtime, spawning its manager task there.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(2).build();
    /// assert_eq!(limiter.spawn(async { 1 }).await.unwrap(), 1);
    /// # }
    /// ```
    #[track_caller]
    pub fn build(self) -> Limiter {
        match Handle::try_current() {
            Ok(handle) => self.build_on(&handle),
            Err(_) => panic!(
                "task_limiter: a `Limiter` must be built inside a tokio runtime; \
                 use `Builder::build_on(&handle)` to build it from outside one"
            ),
        }
    }

    /// Builds the limiter on the runtime behind `handle`: its manager and workers run there,
    /// and it may be built and used from any thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// let runtime = tokio::runtime::Runtime::new().unwrap();
    /// let limiter = Limiter::builder().limit(2).build_on(runtime.handle());
    /// let handle = limiter.spawn(async { 1 + 1 });
    /// assert_eq!(runtime.block_on(handle).unwrap(), 2);
    /// ```
    pub fn build_on(self, handle: &Handle) -> Limiter {
        Limiter::from_builder(self, handle)
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("limit", &self.limit)
            .field("name", &self.name)
            .field("queue_order", &self.order)
            .finish()
    }
}
