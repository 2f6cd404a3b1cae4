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
//! so [`spawn`](Limiter::spawn) never blocks or awaits and work may submit more work. Each item
//! is one allocation: a cell that holds its work, then its result, shared by the queue and its
//! [`JoinHandle`]. The manager drains the channel in batches into the queue (FIFO, LIFO or
//! priority, see [`QueueOrder`]), owns the worker IDs `0..N` and is the one place that spawns
//! worker tasks, only while an ID is free.
//!
//! **One admission point.** Whether an item may start now, and on which ID, is decided in one
//! place, under one lock: the limit in force, the queue, the worker IDs, the running count and
//! the lifecycle (open, closed, shutting down, exited) are checked together, for the manager
//! and the workers alike. An item starts only while the limiter is not shutting down, its ID is
//! below the limit in force and fewer than `limit` items run. Items aborted while queued are
//! skipped there, before anything is spawned or woken for them. The shuttle model checks
//! (`tests/shuttle.rs`) exercise this rule from every side.
//!
//! **Parked workers.** A worker runs item after item on its ID. When the queue is empty it
//! parks, still holding its ID, and the next item goes to a parked worker (the most recently
//! parked, whose stack and caches are warm) before a new one is spawned. A submission that finds
//! a parked worker and nothing waiting in the work channel hands its item over itself, without
//! the manager's round trip (checking the channel first keeps the queue's order). So a service
//! whose queue is mostly empty keeps its workers: no task spawn, no done message and no manager
//! wake-up per item. A worker that finds nothing queued after its item parks without taking
//! the admission lock: the next turn of the lock counts the item's end, and the item's handle
//! is woken once the end is left there. A submission that finds every worker busy goes through
//! the manager while the limit leaves room for another, which starts it on a new worker (rather
//! than on the next to finish), so a service's workers are not left as many as its clients.
//! When every ID is busy (a saturated service) and the queue is short, the submission queues its
//! item itself, for the next worker to finish; a long queue is a burst's, whose items go through
//! the channel, moved by the manager in batches. Parked
//! workers end on close (once the queue is drained), on shutdown, on a
//! [`set_limit`](Limiter::set_limit) below their ID, and after [`Builder::keep_alive`] (10 s by
//! default, on the runtime's timer; without a time driver there is no keep-alive). At most
//! `limit` workers are alive, plus the manager, plus for a moment one whose ID is on its way
//! back. Workers yield to the runtime between items (tokio's coop budget), so a long run of
//! ready items does not starve other tasks, and awaiting a `JoinHandle` takes coop budget as
//! tokio's does.
//!
//! **One submission path.** Every way in (`spawn*`, `try_spawn*`, [`Permit`], batches,
//! [`TaskBuilder`], leases) describes its item as one set of options, and one function wraps the
//! work in the features it uses (its run timeout and token, its place in a bounded queue, the
//! adaptive limit's sample, its tracing span), in one fixed order, before the core queues it. An
//! item pays only for the wrappers it uses.
//!
//! Every handle resolves exactly once: the value, a panic (with its original payload), or
//! cancelled. Worker IDs come back on every exit path: completion, panic, abort, shutdown and
//! runtime shutdown.
//!
//! # Leases: requests that run in their own task
//!
//! A service runs each request in its connection's task; spawning it as an item would cost a
//! task hop. A [`Lease`] is an item without a task: [`acquire`](Limiter::acquire) waits in the
//! same queue as spawned items (the same order, keys, weights, priority, deadlines and tokens,
//! through [`TaskBuilder::acquire`]), and the lease holds a worker ID and its weight until it is
//! dropped. [`run`](Limiter::run) polls a future inline under one. Spawned items and leases
//! share the limit in force, the key limits and the worker IDs; the limiter spawns no task for a
//! lease, and an idle limiter grants one at once, without an allocation.
//!
//! ```
//! use std::time::Duration;
//! use task_limiter::Limiter;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limiter = Limiter::builder().limit(64).per_key_limit(8).build();
//! // In a request handler:
//! let reply = limiter
//!     .build_task()
//!     .key("tenant-7")
//!     .queue_timeout(Duration::from_millis(100))
//!     .run(async { "response" })
//!     .await;
//! let status = match reply {
//!     Ok(_) => 200,
//!     Err(err) if err.is_timeout() => 503, // waited too long for its turn
//!     Err(_) => 503,                       // shutting down
//! };
//! assert_eq!(status, 200);
//! # }
//! ```
//!
//! The limiter cannot cancel a lease (it runs in its holder's task): [`Limiter::shutdown`]
//! resolves queued requests with an error and waits for held leases. `cargo run --example
//! service` shows handlers, a flooding tenant and quiet ones.
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
//!   budget shared with other processes (the `task-limiter-redis` crate leases them from Redis);
//!   on an adaptive limiter it caps the algorithm's limit.
//! - **Time limits and cancellation**: see [below](#deadlines-time-limits-and-cancellation).
//! - **Adaptive limits**: [`Builder::adaptive`] lets an algorithm set the limit from what the
//!   items measure; see the [`adaptive`] module.
//!
//! Each has a runnable example in the repository: `cargo run --example worker_state` (and
//! `blocking`, `backpressure`, `batch`, `priority`, `per_host`, `adaptive`).
//!
//! # Per-worker state
//!
//! The value [`Builder::worker_state`] makes for an ID is made on the first item that needs it,
//! then kept from item to item and from worker task to worker task under that ID, and lent by a
//! guard inside the item to one item at a time, so no lock is needed. If an item panics while
//! it holds the value, the value is dropped, since it may be half-updated, and the next item on
//! that ID gets a new one. At most one value per ID ever exists.
//!
//! # Backpressure
//!
//! The queue is unbounded unless you ask for a bound with [`Builder::max_queued`]. Then
//! [`try_spawn`](Limiter::try_spawn) refuses work when the queue is full and gives it back
//! ([`TrySpawnError::into_inner`]), and [`reserve`](Limiter::reserve) waits for a place and
//! returns a [`Permit`] to submit into it (cancel safe). An item's place is released when it
//! starts or is dropped. [`spawn`](Limiter::spawn) itself never waits.
//!
//! # Keys and weights
//!
//! [`TaskBuilder::key`] puts an item under a [`Key`] with its own limit
//! ([`Builder::per_key_limit`], [`Limiter::set_key_limit`]) inside the global one, and
//! [`TaskBuilder::weight`] makes an item count for more than one unit of the limit (a test that
//! needs 4 threads, a large upload).
//!
//! The weight running never passes the global limit in force, nor a key's weight its key's
//! limit, except for one item heavier than a limit, which runs when nothing else of that limit
//! runs (never refused, never stranded, also when the limit shrinks under it). The keys with
//! queued items, and the items without a key as one more, take turns: a key with one queued item
//! starts it within one round of the keys with work, however long another key's queue is.
//! Within a key the queue order holds; a key at its limit sits out until one of its items ends.
//! A head item too heavy for the global room now is set aside, and at most `limit` items may
//! start before it, so it starts within `2 × limit` completions under any stream of lighter
//! items. A key's bookkeeping is freed when it has nothing queued or running (a million
//! distinct keys leave memory where it started: `tests/keys_memory.rs`). Items without a key or
//! weight keep the cell they had: the charge is a type parameter of the cell, `()` for them.
//! What keys cost is measured in the repository's `benches/keys-results.md`.
//!
//! # Deadlines, time limits and cancellation
//!
//! | need | API | ends the item as |
//! |---|---|---|
//! | bound how long an item may run once started | [`TaskBuilder::timeout`] | [`JoinError::is_timeout`], with the worker ID it ran on |
//! | drop work nobody waits for any more: never start an item still queued at its deadline | [`TaskBuilder::deadline`], [`TaskBuilder::queue_timeout`] | `is_timeout()`, no worker ID; its work is dropped at the deadline |
//! | cancel one item (queued or running) with the request it belongs to | [`TaskBuilder::cancel_on`] | `is_cancelled()` |
//! | stop the whole limiter with the service | [`Builder::cancel_on`] | as [`shutdown`](Limiter::shutdown) |
//! | stop in bounded time: drain, then cut off | [`Limiter::shutdown_timeout`] -> [`ShutdownReport`] | finished in time: their values; the rest `is_cancelled()` |
//!
//! ```
//! use std::time::Duration;
//! use task_limiter::Limiter;
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let shutdown = CancellationToken::new();
//! let limiter = Limiter::builder().limit(2).cancel_on(shutdown.child_token()).build();
//!
//! let request = limiter
//!     .build_task()
//!     .queue_timeout(Duration::from_millis(200)) // a client gives up after 200 ms in the queue
//!     .timeout(Duration::from_secs(5)) // and no request runs for more than 5 s
//!     .spawn(async { "response" });
//! assert_eq!(request.await.unwrap(), "response");
//!
//! let stuck = limiter.spawn(std::future::pending::<()>());
//! let report = limiter.shutdown_timeout(Duration::from_secs(30)).await;
//! assert_eq!(report.cancelled_running, 1);
//! assert!(stuck.await.unwrap_err().is_cancelled());
//! let m = limiter.metrics();
//! assert_eq!(m.submitted, m.completed + m.panicked + m.cancelled + m.timed_out);
//! # }
//! ```
//!
//! Time is tokio's: deadlines are `tokio::time::Instant`s, and paused time drives every timer,
//! so tests of code that uses these need no real waiting. Timeouts are counted in
//! [`Metrics::timed_out`], apart from `cancelled`. What they cost: a limiter keeps **one timer
//! for all its queued deadlines** (the manager's, over a min-heap of weak pointers to the
//! items), and **a running item with a `timeout` has one timer of its own**, polled by its
//! worker inside the item's poll; a queued item with a token has one small watcher future in
//! the manager (no task); what this costs, for items with deadlines and for items without, is
//! measured in the repository's `benches/keys-results.md`. On a runtime built without
//! `enable_time`, the time-based calls panic and say so. A blocking item cannot be stopped once
//! its closure runs: its `timeout` and token apply only while it is queued.
//!
//! # Observability
//!
//! Every item runs inside a `task_limiter.item` span (level DEBUG, target `task_limiter`), a
//! child of the span that was current when it was submitted, with `limiter` (the
//! [`Builder::name`]) and `worker.id` fields. TRACE and DEBUG events report an item queued,
//! started (`waited_us`), finished, panicked and cancelled (`ran_us`); nothing is logged at INFO
//! or above, and without a subscriber none of this costs a span or a clock read.
//! [`Limiter::metrics`] and [`Limiter::busy_workers`] give a dashboard its numbers: always-on
//! counters, among them refusals by reason and the sums of the waits and run times (so
//! `rate(wait_time) / rate(started)` is the mean wait), kept under the lock an item takes
//! anyway. [`Builder::distributions`] adds histograms of the waits and run times
//! ([`Limiter::distributions`], [`Histogram`]) for quantiles, and
//! [`Limiter::keys_most_queued`] a bounded listing of the busiest keys. With the `metrics`
//! feature, `Limiter::exporter` publishes all of it through the `metrics` crate's facade under
//! OpenTelemetry-style names (the `export` module lists them; the tower crate's
//! `examples/prometheus.rs` serves them to Prometheus).
//!
//! For tokio-console, enable the `console` feature and build with
//! `RUSTFLAGS="--cfg tokio_unstable"` (tokio's task instrumentation needs the flag): the manager
//! and the workers are then spawned with `tokio::task::Builder` and named `{name}.manager` and
//! `{name}.worker-{id}` (the name defaults to `task-limiter`), so the console shows one manager
//! and at most `limit` workers however much is queued. Without both, they are plain tasks.
//!
//! ```toml
//! task-limiter = { version = "0.1", features = ["console"] }
//! ```
//!
//! To see it straight away, run the repository's demo, a workspace member of its own so that
//! console-subscriber stays out of the normal build:
//!
//! ```sh
//! cargo install --locked tokio-console
//! RUSTFLAGS="--cfg tokio_unstable" cargo run -p console-demo   # serves 127.0.0.1:6669
//! tokio-console http://127.0.0.1:6669                          # in another terminal
//! ```
//!
//! The demo keeps about 1,000 items queued on a limiter named `demo` with limit 8; tokio-console
//! lists `demo.manager` and `demo.worker-0` … `demo.worker-7`, and nothing else from the
//! limiter. Ctrl-C stops it through [`shutdown`](Limiter::shutdown). Give `tokio_unstable`
//! builds their own `CARGO_TARGET_DIR` (for example `target/unstable`) so that switching
//! `RUSTFLAGS` does not rebuild everything.
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
mod blocking;
mod builder;
mod compose;
mod core;
mod distributions;
mod error;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod export;
mod handle;
mod histogram;
mod key;
mod lease;
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
pub use distributions::Distributions;
pub use error::{AcquireError, JoinError, ReserveError, TryAcquireError, TrySpawnError};
pub use handle::{AbortHandle, JoinHandle};
pub use histogram::Histogram;
pub use key::Key;
pub use lease::{Acquire, Lease, Run};
pub use limiter::{Limiter, Shutdown, Wait};
pub use metrics::{KeyMetrics, Metrics, Refusals};
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
