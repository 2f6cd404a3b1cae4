//! A per-worker value for the tests of worker state, and the factory that makes and counts them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use task_limiter::{Limiter, WorkerId};

/// A per-worker value: the ID it was made for, which of the factory's values it is (1, 2, ...),
/// and how many items it served. Live values are counted, so that tests can see when one is
/// made or dropped.
#[derive(Debug)]
pub struct Conn {
    pub id: WorkerId,
    pub made: usize,
    pub served: u32,
    live: Arc<AtomicUsize>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Makes [`Conn`]s and counts them: made ever, live now.
#[derive(Clone, Debug, Default)]
pub struct Factory {
    made: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
}

impl Factory {
    /// The factory for [`Builder::worker_state`](task_limiter::Builder::worker_state).
    pub fn make(&self) -> impl Fn(WorkerId) -> Conn + Send + Sync + 'static {
        let this = self.clone();
        move |id| {
            this.live.fetch_add(1, Ordering::SeqCst);
            Conn {
                id,
                made: this.made.fetch_add(1, Ordering::SeqCst) + 1,
                served: 0,
                live: this.live.clone(),
            }
        }
    }

    /// A limiter of `limit` whose workers get this factory's values.
    pub fn limiter(&self, limit: usize) -> Limiter<Conn> {
        Limiter::builder()
            .limit(limit)
            .worker_state(self.make())
            .build()
    }

    /// Values made so far.
    pub fn made(&self) -> usize {
        self.made.load(Ordering::SeqCst)
    }

    /// Values alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}
