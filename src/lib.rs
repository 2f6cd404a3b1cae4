#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings, rust_2018_idioms), allow(dead_code, unused_variables))
))]

//! An async, tokio-native task limiter: run any amount of work with at most `N` tasks alive,
//! await each item's result through a [`JoinHandle`], and give every item a stable
//! [`WorkerId`].
//!
//! # Quick start
//!
//! ```
//! use task_limiter::Limiter;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // At most 8 items run at once; the rest wait in the limiter's queue, not as idle tasks.
//! let limiter = Limiter::new(8);
//!
//! let handles: Vec<_> = (0..1000)
//!     .map(|i| limiter.spawn_with(move |worker| async move { (i, worker.index()) }))
//!     .collect();
//!
//! for handle in handles {
//!     let (i, worker) = handle.await.unwrap();
//!     assert!(worker < 8, "item {i} ran on worker {worker}");
//! }
//!
//! limiter.close();
//! limiter.wait().await; // every item done, the manager task gone
//! # }
//! ```
//!
//! # How it works
//!
//! Building a [`Limiter`] spawns one manager task. Submissions travel on an unbounded channel,
//! so [`spawn`](Limiter::spawn) never blocks or awaits and work may submit more work. The
//! manager owns the worker IDs `0..N` and spawns a worker task only while an ID is free. A
//! worker runs item after item on its ID; when the queue is empty it parks, still holding its
//! ID, and the next item goes to a parked worker before a new one is spawned (a submission that
//! finds one parked, with nothing ahead of it, hands its item over itself, without a trip
//! through the manager). So a service that submits one item at a time keeps its workers,
//! and the runtime holds at most `N` worker tasks plus the manager, whatever the queue length.
//! Parked workers end on close, shutdown, a smaller limit, or after
//! [`Builder::keep_alive`].
//!
//! Whether an item may start, and on which ID, is decided in one place, under one lock: the
//! limit in force, the queue, the worker IDs and the running count are checked together, for
//! the manager and the workers alike.
//!
//! Every handle resolves exactly once: the value, a panic (with its original payload), or
//! cancelled. Worker IDs come back on every exit path: completion, panic, abort, shutdown and
//! runtime shutdown.
//!
//! # Beyond spawning futures
//!
//! - **Per-worker state**: [`Builder::worker_state`] gives each worker ID one value (a buffer,
//!   a connection, a cache), lent as `&mut` to [`spawn_with_state`](Limiter::spawn_with_state)
//!   items without a lock.
//! - **Blocking work**: [`spawn_blocking`](Limiter::spawn_blocking) runs closures on tokio's
//!   blocking pool under the same limit and worker IDs.
//! - **Backpressure**: with [`Builder::max_queued`], [`try_spawn`](Limiter::try_spawn) gives
//!   work back when the queue is full and [`reserve`](Limiter::reserve) waits for room.
//! - **Batches**: [`spawn_batch`](Limiter::spawn_batch) returns a [`Batch`], a stream of
//!   results in input or completion order that can end on the first failure.
//! - **Priority**: [`QueueOrder::Priority`] with [`build_task`](Limiter::build_task)`().`
//!   [`priority(..)`](TaskBuilder::priority) lets urgent items jump the queue.
//! - **Per-key limits and weights**: [`Builder::per_key_limit`] and
//!   [`set_key_limit`](Limiter::set_key_limit) cap each [`Key`] (a host, a tenant) inside the
//!   global limit, with turns across keys; [`weight`](TaskBuilder::weight) makes an item count
//!   more than one unit; [`key_metrics`](Limiter::key_metrics) shows one key.
//! - **Expiring limits**: [`set_limit_until`](Limiter::set_limit_until), for slots leased from a
//!   budget shared with other processes.
//! - **Time limits and cancellation**: [`TaskBuilder::timeout`] bounds an item's run,
//!   [`TaskBuilder::deadline`] and [`TaskBuilder::queue_timeout`] drop work still queued at its
//!   deadline ([`JoinError::is_timeout`]), [`TaskBuilder::cancel_on`] and [`Builder::cancel_on`]
//!   take tokio-util's `CancellationToken`, and [`Limiter::shutdown_timeout`] stops in bounded
//!   time. One timer per limiter serves every queued deadline; a running item with a timeout has
//!   one of its own; items without them pay nothing.
//!
//! # Observability
//!
//! Every item runs inside a `task_limiter.item` span (level DEBUG, target `task_limiter`), a
//! child of the span that was current when it was submitted, with `limiter` (the
//! [`Builder::name`]) and `worker.id` fields. TRACE and DEBUG events report an item queued,
//! started (`waited_us`), finished, panicked and cancelled (`ran_us`); nothing is logged at INFO
//! or above, and without a subscriber none of this costs a span or a clock read.
//!
//! For tokio-console, enable the `console` feature and build with
//! `RUSTFLAGS="--cfg tokio_unstable"`: the manager and the workers are then spawned with
//! `tokio::task::Builder` and named `{name}.manager` and `{name}.worker-{id}`, so the console
//! shows one manager and at most `limit` workers however much is queued. Without both, they are
//! plain tasks. [`Limiter::metrics`] and [`Limiter::busy_workers`] give a dashboard its numbers.
//!
//! # Comparison with `JoinSet` + `Semaphore`
//!
//! The usual limiter on tokio spawns a task per item and acquires a [`Semaphore`] permit inside
//! it. Every pending item is then an idle task on the runtime: a task cell of a few hundred
//! bytes, a line in tokio-console, and work for the scheduler. Acquiring the permit before
//! spawning avoids the idle tasks, but blocks the submitter, which deadlocks when work submits
//! work. A [`JoinSet`] joined whenever it holds `N` tasks has the same problem and gives no
//! handle per item.
//!
//! With a `Limiter`, pending items are a small queue entry each, submission never waits, each
//! item has its own [`JoinHandle`], and its [`WorkerId`] indexes per-worker state without
//! locks.
//!
//! # Comparison with `buffer_unordered`
//!
//! [`StreamExt::buffer_unordered`] polls up to `N` futures inside the one task that drives the
//! stream: cheap, but the futures never run in parallel on a multi-thread runtime, make no
//! progress while the stream is not polled, and need the whole batch up front. A `Limiter`
//! runs items as independent tasks across the runtime's threads, accepts work from anywhere at
//! any time, and keeps running it while nobody polls.
//!
//! [`Semaphore`]: tokio::sync::Semaphore
//! [`JoinSet`]: tokio::task::JoinSet
//! [`StreamExt::buffer_unordered`]: https://docs.rs/futures/latest/futures/stream/trait.StreamExt.html#method.buffer_unordered

pub mod adaptive;
mod batch;
mod compose;
mod blocking;
mod builder;
mod core;
mod error;
mod handle;
mod key;
mod limiter;
mod metrics;
mod permit;
mod place;
mod shutdown;
mod state;
mod sync;
mod task_builder;
mod timeout;
mod trace;
mod worker_id;

pub use crate::core::QueueOrder;
pub use batch::Batch;
pub use builder::Builder;
pub use error::{JoinError, ReserveError, TrySpawnError};
pub use handle::{AbortHandle, JoinHandle};
pub use key::Key;
pub use limiter::{Limiter, Shutdown, Wait};
pub use metrics::{KeyMetrics, Metrics};
pub use permit::Permit;
pub use shutdown::{ShutdownReport, ShutdownTimeout};
pub use task_builder::TaskBuilder;
pub use worker_id::WorkerId;

#[cfg(feature = "shuttle")]
#[doc(hidden)]
pub use crate::core::__plant_id_mixup;

/// README's examples run as doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        fn assert_send_sync_unpin<T: Send + Sync + Unpin>() {}
        assert_send_sync_unpin::<Limiter>();
        assert_send_sync_unpin::<JoinHandle<()>>();
        assert_send_sync_unpin::<JoinHandle<std::cell::Cell<u8>>>();
        assert_send_sync_unpin::<AbortHandle>();
        assert_send_sync_unpin::<JoinError>();
        assert_send_sync_unpin::<WorkerId>();
        assert_send_sync_unpin::<Metrics>();
        assert_send_sync_unpin::<Builder>();
        assert_send_sync_unpin::<Limiter<std::cell::Cell<u8>>>();
        assert_send_sync_unpin::<Builder<std::cell::Cell<u8>>>();
        assert_send_sync_unpin::<Batch<()>>();
        assert_send_sync_unpin::<Permit<'static>>();
        assert_send_sync_unpin::<TaskBuilder<'static>>();
        assert_send_sync_unpin::<TrySpawnError<()>>();
        assert_send_sync_unpin::<ReserveError>();
        assert_send_sync_unpin::<Wait<'static>>();
        assert_send_sync_unpin::<Shutdown<'static>>();
        assert_send_sync_unpin::<ShutdownTimeout<'static>>();
        assert_send_sync_unpin::<ShutdownReport>();

        fn assert_unwind_safe<T: std::panic::UnwindSafe + std::panic::RefUnwindSafe>() {}
        assert_unwind_safe::<JoinHandle<std::cell::Cell<u8>>>();
        assert_unwind_safe::<AbortHandle>();
    }
}
/// The per-item cell is the limiter's memory per queued item: keep it in its size class.
#[cfg(all(test, target_pointer_width = "64"))]
mod size {
    fn cell_size<W: crate::core::Work>(_: &W) -> usize {
        std::mem::size_of::<crate::core::Cell<W>>()
    }

    #[test]
    fn queued_item_cell_stays_small() {
        let index = 7_u64;
        let fut = async move { index };
        let size = cell_size(&move |_: crate::WorkerId| fut);
        // With Arc's two counts, a 72-byte request: an 80-byte chunk in glibc malloc.
        assert!(size <= 56, "{size}");
        let yielding = async move {
            tokio::task::yield_now().await;
            index
        };
        let size = cell_size(&move |_: crate::WorkerId| yielding);
        // An 88-byte request: a 96-byte chunk.
        assert!(size <= 72, "{size}");
        assert_eq!(std::mem::size_of::<crate::JoinError>(), 16);
        assert_eq!(std::mem::size_of::<crate::JoinHandle<u64>>(), 16);
    }
}
