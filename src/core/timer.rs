//! Whether a runtime has a timer, for the parked workers' keep-alive.
//!
//! tokio has no call that answers this: making a `Sleep` on a runtime built without
//! `enable_time` panics. The limiter must work on such a runtime all the same (its workers then
//! stay parked until close, shutdown or a smaller limit), so it asks by making a `Sleep` once,
//! when it is built, and catching the panic. The panic message would be printed by the panic
//! hook; a hook installed once, the first time this runs, passes every panic on to the hook
//! that was there before, except one raised by this probe on this thread.

use crate::sync::rt::runtime::Handle;

/// Whether `handle`'s runtime has its time driver enabled.
#[cfg(all(not(feature = "shuttle"), panic = "unwind"))]
pub(super) fn available(handle: &Handle) -> bool {
    use std::cell::Cell;
    use std::panic::{self, AssertUnwindSafe};
    use std::sync::Once;

    std::thread_local! {
        static PROBING: Cell<bool> = const { Cell::new(false) };
    }
    static QUIET_PROBE: Once = Once::new();

    QUIET_PROBE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !PROBING.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let _enter = handle.enter();
    PROBING.with(|probing| probing.set(true));
    let made = panic::catch_unwind(AssertUnwindSafe(|| {
        drop(tokio::time::sleep(std::time::Duration::ZERO));
    }));
    PROBING.with(|probing| probing.set(false));
    made.is_ok()
}

/// Built to abort on panic, the probe cannot be caught: no keep-alive, workers stay parked
/// until close, shutdown or a smaller limit.
#[cfg(all(not(feature = "shuttle"), not(panic = "unwind")))]
pub(super) fn available(_: &Handle) -> bool {
    false
}

/// The model checks leave time out: parked workers end by close, shutdown and `set_limit` only.
#[cfg(feature = "shuttle")]
pub(super) fn available(_: &Handle) -> bool {
    false
}

/// Whether `handle`'s runtime is known to have no time driver: only a probe that can catch the
/// panic knows it. Without one (`panic = "abort"`), a time limit on such a runtime panics where
/// tokio makes its timer, with tokio's own message naming `enable_time`.
#[cfg(all(not(feature = "shuttle"), panic = "unwind"))]
pub(super) fn known_missing(handle: &Handle) -> bool {
    !available(handle)
}

#[cfg(any(feature = "shuttle", not(panic = "unwind")))]
pub(super) fn known_missing(_: &Handle) -> bool {
    false
}
