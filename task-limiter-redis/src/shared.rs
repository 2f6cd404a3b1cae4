use std::sync::atomic::AtomicU64;

use tokio::sync::watch;

use crate::lease::Lease;

/// What the renewal task publishes and the `ClusterBudget` reads.
pub(crate) struct Shared {
    pub(crate) lease: watch::Sender<Option<Lease>>,
    /// Counters only: no other state is ordered against them, so `Relaxed` throughout.
    pub(crate) calls: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) leases: AtomicU64,
    /// The highest fencing token seen, sent with every call so the counter keeps growing
    /// even after Redis lost its data.
    pub(crate) fence_seen: AtomicU64,
}
