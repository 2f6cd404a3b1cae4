//! The one place the crate takes its concurrency primitives from.
//!
//! Under the `shuttle` feature everything here is scheduled by shuttle, so its model checker can
//! explore interleavings of the real manager and worker code (tokio-util routes loom the same way
//! in `src/loom.rs`). No lock from this module is ever held across an `.await`.

#[cfg(not(feature = "shuttle"))]
pub(crate) use ::tokio as rt;

#[cfg(feature = "shuttle")]
pub(crate) use ::shuttle_tokio as rt;

#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Mutex, MutexGuard,
};

#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Mutex, MutexGuard,
};

// Reference counts are not a scheduling point worth exploring, and `Arc<dyn Trait>` needs the
// standard `Arc`'s unsized coercion.
pub(crate) use std::sync::Arc;

use rt::sync::mpsc::UnboundedReceiver;

/// Locks `mutex`, ignoring poison: no user code ever runs under the crate's locks, so a poisoned
/// lock can only come from a panic in the crate's own bookkeeping, which leaves no state half-done.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Receives up to `limit` messages into `buf`, waiting for at least one; returns 0 once the
/// channel is closed and empty.
#[cfg(not(feature = "shuttle"))]
pub(crate) async fn recv_batch<T>(
    rx: &mut UnboundedReceiver<T>,
    buf: &mut Vec<T>,
    limit: usize,
) -> usize {
    rx.recv_many(buf, limit).await
}

/// shuttle-tokio's mpsc has no `recv_many`: `recv` one, then `try_recv` the rest.
#[cfg(feature = "shuttle")]
pub(crate) async fn recv_batch<T>(
    rx: &mut UnboundedReceiver<T>,
    buf: &mut Vec<T>,
    limit: usize,
) -> usize {
    match rx.recv().await {
        None => 0,
        Some(first) => {
            buf.push(first);
            let mut n = 1;
            while n < limit {
                match rx.try_recv() {
                    Ok(msg) => buf.push(msg),
                    Err(_) => break,
                }
                n += 1;
            }
            n
        }
    }
}
