//! Refusals, counted by reason where they happen: off the path of an admitted item, so with a
//! relaxed add on counters of their own rather than under the admission lock.

use crate::metrics::Refusals;
use crate::sync::{AtomicU64, Ordering};

/// Why a submission ended without starting (see [`Refusals`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    QueueFull = 0,
    QueueTimeout = 1,
    Token = 2,
    Closed = 3,
}

/// Items' refusals, then leases', by [`Reason`]; on a cache line of their own, away from the
/// counters every submission writes.
#[repr(align(128))]
pub(crate) struct RefusalCounts([AtomicU64; 8]);

impl RefusalCounts {
    pub(crate) fn new() -> RefusalCounts {
        RefusalCounts(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    /// Counts one refusal of an item (`lease` false) or a lease request.
    pub(crate) fn count(&self, lease: bool, reason: Reason) {
        let at = usize::from(lease) * 4 + reason as usize;
        // Relaxed: a count, read by snapshots that make no claim to order it with anything.
        self.0[at].fetch_add(1, Ordering::Relaxed);
    }

    /// Items' refusals and leases'.
    pub(crate) fn snapshot(&self) -> (Refusals, Refusals) {
        let read = |base: usize| Refusals {
            queue_full: self.0[base].load(Ordering::Relaxed),
            queue_timeout: self.0[base + 1].load(Ordering::Relaxed),
            token: self.0[base + 2].load(Ordering::Relaxed),
            closed: self.0[base + 3].load(Ordering::Relaxed),
        };
        (read(0), read(4))
    }
}
