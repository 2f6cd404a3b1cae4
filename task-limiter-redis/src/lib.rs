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

//! A cluster-wide budget for [`task_limiter::Limiter`] on Redis: at most `budget` items
//! running at once across every process that uses one name, with leases that expire when a
//! process dies.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use task_limiter::Limiter;
//! use task_limiter_redis::ClusterBudget;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), task_limiter_redis::Error> {
//! let limiter = Limiter::new(1); // its limit is managed by the budget from now on
//! let budget = ClusterBudget::builder("redis://127.0.0.1/", "downstream-api")
//!     .budget(50)
//!     .ttl(Duration::from_secs(6))
//!     .connect(&limiter)
//!     .await?; // an error if Redis is unreachable or the configuration is refused
//!
//! let handle = limiter.spawn(async { "one of at most 50 across the cluster" });
//! handle.await.unwrap();
//! budget.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! A process leases slots of the budget in blocks and sets its limiter's limit to the slots
//! it holds. Items start and finish locally at full speed; Redis sees one call per renewal
//! (about every TTL / 3) plus calls when demand changes, never one per item. Each call runs
//! one Lua script, atomically, which reads Redis's clock (`TIME`), drops the leases whose TTL
//! has passed, computes this process's fair share and grants slots.
//!
//! - **Shared by demand.** A process reports its demand (running + queued items, at least 1
//!   if items came since the last look, capped at the budget and, on an
//!   [adaptive](#adaptive-limits-under-the-budget) limiter, at its algorithm's limit; the
//!   highest of the last hysteresis period). Shares are max-min fair over the
//!   processes with demand: a process with demand `d` is entitled to at least
//!   `min(d, budget / n)` slots when `n` processes have demand. A process grows only into
//!   slots nobody holds and shrinks to its share at its next renewal, so a process gets its
//!   share within about two renewal periods plus the time the items of the processes above
//!   their share take to finish.
//! - **Counted for what may run.** Redis counts a process for `max(granted, items it may still
//!   be running)`: a process that shrinks frees its slots for others only as its items finish.
//! - **Leases expire.** A process that stops renewing (crashed, paused, cut off) loses its
//!   slots in Redis after the TTL; the others take them at their next call, within TTL + one
//!   renewal period.
//! - **A lost lease stops new starts.** The process considers its lease gone at
//!   `renewal sent + TTL - safety margin` on its own monotonic clock, before Redis does, and
//!   its limit falls to the floor (0 by default). Running items finish; queued items wait.
//! - **Fencing tokens.** Each new lease gets a token from a counter that only grows
//!   ([`ClusterBudget::fencing_token`]), across processes and across a Redis that lost its
//!   data: a fresh state starts the counter at Redis's clock in microseconds, above every
//!   token issued before (as long as that clock does not go back).
//! - **A fresh Redis state** (first start, or a restart that lost the data) grants nobody more
//!   than it already runs for one TTL, so that processes still running items re-register them
//!   before anyone grows into their slots.
//!
//! # Adaptive limits under the budget
//!
//! A limiter built with [`Builder::adaptive`](task_limiter::Builder::adaptive) finds the limit
//! its downstream serves from this process; the budget caps what all processes run together.
//! They compose:
//!
//! - **The limit in force is the algorithm's limit capped by the slots leased.** The lease
//!   is set with [`Limiter::set_limit_until`](task_limiter::Limiter::set_limit_until), which
//!   on an adaptive limiter caps the algorithm's limit rather than replacing it; the lease's
//!   expiry is checked at every admission as for any limiter, and after it the floor caps it.
//!   So the budget's guarantee holds as it does for a fixed limit.
//! - **The demand reported is what the algorithm wants**, when the process has the work for
//!   it: running + queued items capped at the algorithm's own limit
//!   ([`Limiter::adaptive_limit`](task_limiter::Limiter::adaptive_limit), within its
//!   `max_limit`) and the budget. A process whose algorithm settled at 8 with hundreds queued
//!   asks for 8, not the whole budget, and leaves the rest to others; a process with an empty
//!   queue does not ask for its algorithm's limit, so it does not hoard slots it would not use.
//! - **The algorithm knows when it was capped**: items held back by the lease rather than by
//!   its own limit do not grow it ([`Sample::capped`](task_limiter::adaptive::Sample::capped)),
//!   so it does not climb to a limit it was never allowed to use, and goes on from its own
//!   limit once more slots are granted. It grows into the slots it gets, then asks for more.
//!
//! ```no_run
//! use task_limiter::adaptive::Gradient;
//! use task_limiter::Limiter;
//! use task_limiter_redis::ClusterBudget;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), task_limiter_redis::Error> {
//! let limiter = Limiter::builder().adaptive(Gradient::new()).limit(4).max_limit(64).build();
//! let budget = ClusterBudget::builder("redis://127.0.0.1/", "downstream-api")
//!     .budget(50) // what the downstream takes from all replicas together
//!     .connect(&limiter)
//!     .await?;
//! // limiter.limit() <= limiter.adaptive_limit(), and <= the slots leased.
//! # budget.release().await
//! # }
//! ```
//!
//! Do not call [`Limiter::set_limit`](task_limiter::Limiter::set_limit) on a limiter under a
//! budget: it lifts the cap (on any limiter, it replaces the lease's limit) until the next
//! renewal.
//!
//! # What is guaranteed, and what is not
//!
//! While Redis keeps its data and every process's clock runs at the rate Redis's does (within
//! the safety margin), the items running at once across all processes never exceed the
//! budget, plus, for each process with a floor above 0, its floor while it holds no lease.
//!
//! Not guaranteed:
//! - **A paused or cut-off process** (SIGSTOP, a long GC-like stall, a network partition)
//!   keeps running the items it had started; once its lease expires in Redis, others take its
//!   slots. Over-admission is bounded by the items such processes were running when they were
//!   cut off; they start nothing new until they hold a lease again.
//! - **A Redis failover** to a replica that missed the last writes (replication is
//!   asynchronous) can grant slots twice until the next renewals. There is no Redlock: it does
//!   not preserve a count across nodes either. Use one primary and accept that window, or
//!   fence the downstream with the fencing token.
//! - **Clocks:** a host suspended (not paused) stops the monotonic clock while Redis's runs on.
//! - A budget that differs between processes is refused at `connect`, but only against the
//!   processes alive then.
//!
//! # Status
//!
//! Tested against a real `redis-server` with several OS processes on one budget (the crate's
//! `tests/cluster.rs`; TTL 1 s): the items running at once across three processes never
//! exceeded the budget; after `kill -9` of one, the others held its slots 0.80–1.16 s later
//! (bound: TTL + one renewal period, 1.33 s); a process stopped with SIGSTOP past its TTL lost its slots to
//! the others and, resumed, started nothing until it held a new lease; through a Redis
//! restart that lost the data, every process fell to its floor, came back after one TTL,
//! and every item ran exactly once; a busy process took the whole budget from idle ones and
//! gave it back to an even split when they got busy. One process at 100,000 items/s made
//! 0.5 Redis calls per second with the default TTL (see the crate README, "Measured").

mod budget;
mod builder;
mod config;
mod connect;
mod error;
mod lease;
mod renewer;
mod shared;

pub use budget::{BudgetMetrics, ClusterBudget, Release};
pub use builder::Builder;
pub use connect::Connect;
pub use error::Error;
pub use lease::Lease;

/// The README's example compiles as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    #[test]
    fn bounds() {
        fn check<T: Send + Sync + Unpin>() {}
        check::<crate::ClusterBudget>();
        check::<crate::Builder>();
        check::<crate::Error>();
        check::<crate::Lease>();
        fn send<T: Send + Unpin>() {}
        send::<crate::Connect>();
        check::<crate::Release>();
    }
}
