//! Whether a runtime has a timer, for the parked workers' keep-alive.
//!
//! tokio has no call that answers this (tokio-rs/tokio#8361): making a `Sleep` on a runtime
//! built without `enable_time` panics. The limiter must work on such a runtime all the same
//! (its workers then stay parked until close, shutdown or a smaller limit), so it asks by
//! making a `Sleep` once, when it is built, and catching the panic. It installs no panic hook:
//! on a runtime without a time driver the process's hook sees that one panic (tokio's message
//! naming `enable_time`), once per limiter built there.

use crate::sync::rt::runtime::Handle;

/// Whether `handle`'s runtime has its time driver enabled; `None` where that cannot be known.
#[cfg(all(not(feature = "shuttle"), panic = "unwind"))]
pub(super) fn probe(handle: &Handle) -> Option<bool> {
    use std::panic::{self, AssertUnwindSafe};

    let _enter = handle.enter();
    let made = panic::catch_unwind(AssertUnwindSafe(|| {
        drop(tokio::time::sleep(std::time::Duration::ZERO));
    }));
    Some(made.is_ok())
}

/// Built to abort on panic, the probe cannot be caught: no keep-alive (workers stay parked
/// until close, shutdown or a smaller limit), and a time limit on a runtime without a timer
/// panics where tokio makes its timer, with tokio's own message naming `enable_time`.
#[cfg(all(not(feature = "shuttle"), not(panic = "unwind")))]
pub(super) fn probe(_: &Handle) -> Option<bool> {
    None
}

/// The model checks leave time out: parked workers end by close, shutdown and `set_limit`
/// only.
#[cfg(feature = "shuttle")]
pub(super) fn probe(_: &Handle) -> Option<bool> {
    None
}
