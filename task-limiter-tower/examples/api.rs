//! A small axum API behind `LimitLayer`: tenants named by an `x-tenant` header, a simulated
//! slow downstream, per-tenant limits, a queue timeout answering `503`, and an adaptive limit
//! (AIMD) that backs off when the downstream answers `503` and grows while it copes.
//!
//! ```text
//! cargo run --release -p task-limiter-tower --example api        # listens on 127.0.0.1:3000
//! curl -i -H 'x-tenant: acme' http://127.0.0.1:3000/search
//! curl -s http://127.0.0.1:3000/stats
//! ```
//!
//! The downstream takes 20 ms a call and copes with 16 calls at once; beyond that it answers
//! `503` at once. The limiter starts at 32 and the layer marks a `503` an overload, so AIMD
//! backs the limit off towards what the downstream copes with. See README.md for a load run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use task_limiter::adaptive::Aimd;
use task_limiter::{Key, Limiter, WorkerId};
use task_limiter_tower::LimitLayer;

/// A downstream that takes 20 ms a call and refuses calls beyond its capacity.
struct Downstream {
    in_flight: AtomicUsize,
    capacity: usize,
    refused: AtomicUsize,
}

impl Downstream {
    async fn call(&self) -> Result<(), StatusCode> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let result = if now > self.capacity {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Err(StatusCode::SERVICE_UNAVAILABLE)
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// `GET /search`: one downstream call; a `503` from it is passed on.
async fn search(State(downstream): State<Arc<Downstream>>, req: Request) -> Response {
    // The lease's worker ID: index per-worker state (a connection, a buffer) with it.
    let worker = req.extensions().get::<WorkerId>().copied();
    match downstream.call().await {
        Ok(()) => format!("results (on {})\n", worker.map_or(0, |w| w.index())).into_response(),
        Err(status) => (status, "downstream busy\n").into_response(),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_string());
    let downstream = Arc::new(Downstream {
        in_flight: AtomicUsize::new(0),
        capacity: 16,
        refused: AtomicUsize::new(0),
    });

    // At most `limit` requests at once (AIMD moves it between 4 and 64), 4 per tenant.
    let limiter = Limiter::builder()
        .name("api")
        .limit(32)
        .adaptive(Aimd::new())
        .min_limit(4)
        .max_limit(64)
        .per_key_limit(4)
        .build();
    let layer = LimitLayer::new(limiter.clone())
        .key(|req: &Request| {
            let tenant = req.headers().get("x-tenant")?.to_str().ok()?;
            Some(Key::from(tenant))
        })
        // A request not admitted within 250 ms gets 503 with Retry-After: 1.
        .queue_timeout(Duration::from_millis(250))
        // A 503 passed on from the downstream backs the adaptive limit off.
        .overload_if(|res: &Response| res.status() == StatusCode::SERVICE_UNAVAILABLE);

    let stats = {
        let limiter = limiter.clone();
        let downstream = downstream.clone();
        move || async move {
            let m = limiter.metrics();
            Json(counters(&[
                ("limit", m.limit as u64),
                ("running", m.running as u64),
                ("queued", m.queued as u64),
                ("completed", m.completed),
                ("cancelled", m.cancelled),
                (
                    "downstream_refused",
                    downstream.refused.load(Ordering::Relaxed) as u64,
                ),
            ]))
        }
    };
    let app = Router::new()
        .route("/search", get(search))
        .layer(layer)
        // Added after the layer: not limited.
        .route("/stats", get(stats))
        .with_state(downstream);

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr} (GET /search with an x-tenant header, GET /stats)");
    axum::serve(listener, app).await
}

/// A flat JSON object of counters.
fn counters(fields: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    fields.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}
