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

//! [`task_limiter`] as a tower layer: every request of a service admitted through one
//! [`Limiter`](task_limiter::Limiter), with its keys (per-tenant limits, tenants taking
//! turns), weights, priorities, a queue timeout and adaptive limits, refusals answered `503`
//! with `Retry-After`, and each request's place held until its response body has ended.
//!
//! Requests run where they are, in their connection's task: the layer takes a
//! [`Lease`](task_limiter::Lease) for each, spawns nothing, and hands the lease's
//! [`WorkerId`](task_limiter::WorkerId) to the inner service in the request's extensions.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{extract::Request, routing::get, Router};
//! use task_limiter::{Key, Limiter};
//! use task_limiter_tower::LimitLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! // 64 requests at once, at most 8 per tenant; a request waits at most 500 ms, then gets
//! // 503 Service Unavailable with Retry-After: 1.
//! let limiter = Limiter::builder().limit(64).per_key_limit(8).build();
//! let layer = LimitLayer::new(limiter)
//!     .key(|req: &Request| {
//!         let tenant = req.headers().get("x-tenant")?.to_str().ok()?;
//!         Some(Key::from(tenant))
//!     })
//!     .queue_timeout(Duration::from_millis(500));
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(layer);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! # What the layer does
//!
//! - **Admission in `call`.** `poll_ready` forwards to the inner service; a request waits for
//!   its place only once it exists, so idle keep-alive connections hold nothing.
//! - **One limit for everything the layer builds.** Clones of the layer and the services it
//!   builds share its limiter: the limit is global across connections and routes (see
//!   [`LimitLayer`] for the per-route case).
//! - **Per request**: [`key`](LimitLayer::key), [`weight`](LimitLayer::weight) and
//!   [`priority`](LimitLayer::priority) from closures over the request;
//!   [`queue_timeout`](LimitLayer::queue_timeout) and [`max_queued`](LimitLayer::max_queued)
//!   bound the wait.
//! - **Refusals are responses.** A queue timeout, a full queue or a closed limiter is answered
//!   by [`on_refused`](LimitLayer::on_refused), by default `503` with `Retry-After: 1`
//!   ([`Refusal::to_response`]); the service's error type is the inner service's, so routers
//!   that need `Error = Infallible` (axum's) take the layer without `HandleErrorLayer`.
//! - **The place is held until the response body ends** (its last frame, an error, or its
//!   drop: [`LimitBody`]), so a streaming response counts until its last chunk;
//!   [`release_at_head`](LimitLayer::release_at_head) ends it with the response head.
//! - **Adaptive limits**: [`overload_if`](LimitLayer::overload_if) marks a response an
//!   overload (a `503` from a downstream) for the limiter's
//!   [`adaptive`](task_limiter::Builder::adaptive) algorithm.
//! - **Cancellation**: a client that disconnects while its request waits drops the
//!   [`ResponseFuture`], which takes the request out of the queue at once; while the request
//!   runs, dropping the future or the body ends the lease.
//!
//! # Comparison with tower's `ConcurrencyLimitLayer` and `LoadShed`
//!
//! tower's `ConcurrencyLimit` takes its permit in `poll_ready`, so a connection that is ready
//! for its next request holds a permit while idle; each `layer()` call makes a new semaphore,
//! so a per-route use limits each route apart; waiting is first come, first served, with no
//! bound on the wait; and shedding (`LoadShed`) turns a full limit into an `Overloaded` error,
//! a `BoxError` that axum routers refuse without `HandleErrorLayer`. Its permit is released
//! when the response future resolves, before a streaming body has been sent. This layer
//! admits in `call`, shares one limiter, lets keys take turns, bounds the wait, answers
//! refusals with a response and holds the place until the body ends.

mod body;
mod layer;
mod per_request;
mod refusal;
mod service;

pub use body::LimitBody;
pub use layer::LimitLayer;
pub use per_request::PerRequest;
pub use refusal::{OnRefused, Refusal};
pub use service::{LimitService, ResponseFuture};
