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

/// Takes one unit of the task's coop budget, as tokio's own primitives do when they are ready
/// at once: `Pending` (with the task woken to run again soon) once the budget is spent, so that
/// a loop of futures that are always ready still lets the other tasks on its thread run.
/// Dropped without [`Budget::made_progress`], the unit comes back.
#[cfg(not(feature = "shuttle"))]
pub(crate) fn poll_budget(cx: &mut std::task::Context<'_>) -> std::task::Poll<Budget> {
    rt::task::coop::poll_proceed(cx).map(Budget)
}

/// A unit of the coop budget taken by [`poll_budget`].
#[cfg(not(feature = "shuttle"))]
pub(crate) struct Budget(rt::task::coop::RestoreOnPending);

#[cfg(not(feature = "shuttle"))]
impl Budget {
    /// The unit was used: the future made progress.
    pub(crate) fn made_progress(&self) {
        self.0.made_progress();
    }
}

/// The model checks schedule every task point themselves: no budget.
#[cfg(feature = "shuttle")]
pub(crate) fn poll_budget(_: &mut std::task::Context<'_>) -> std::task::Poll<Budget> {
    std::task::Poll::Ready(Budget)
}

#[cfg(feature = "shuttle")]
pub(crate) struct Budget;

#[cfg(feature = "shuttle")]
impl Budget {
    pub(crate) fn made_progress(&self) {}
}
