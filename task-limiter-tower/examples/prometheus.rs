//! An axum service behind `LimitLayer` that serves its limiter's metrics at `/metrics` in
//! Prometheus' text format: task-limiter's `metrics` feature publishes the limiter's series
//! (labelled `limiter="api"`) through the `metrics` facade, and `metrics-exporter-prometheus`
//! renders them. `tests/prometheus.rs` runs this very app and scrapes it.
//!
//! ```text
//! cargo run -p task-limiter-tower --example prometheus        # listens on 127.0.0.1:3001
//! for i in $(seq 50); do curl -s -H 'x-tenant: acme' http://127.0.0.1:3001/work & done; wait
//! curl -s http://127.0.0.1:3001/metrics | grep task_limiter
//! ```
//!
//! The limiter admits 4 requests at once (2 per tenant) and records distributions, so the
//! scrape shows queue waits and run times as histograms (`..._bucket{le=...}`) beside the
//! always-on counters: requests by result, the summed wait and run time, the gauges. The
//! tenant `acme` is named for per-key series; other tenants get none.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use task_limiter::export::Exporter;
use task_limiter::{Key, Limiter};
use task_limiter_tower::LimitLayer;

/// What `/metrics` needs: the limiter's exporter (publishes at each scrape, so the values are
/// fresh) and the recorder's handle (renders).
#[derive(Clone)]
pub struct Scrape {
    exporter: Arc<Mutex<Exporter>>,
    prometheus: PrometheusHandle,
}

/// Installs the Prometheus recorder as the process's `metrics` recorder, with buckets for the
/// limiter's histograms (in seconds). Once per process.
pub fn install_prometheus() -> PrometheusHandle {
    PrometheusBuilder::new()
        .set_buckets(&[
            0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ])
        .expect("buckets are not empty")
        .install_recorder()
        .expect("no other recorder is installed")
}

/// The service: `GET /work` (limited: a 5 ms call to a simulated downstream) and
/// `GET /metrics` (not limited).
pub fn app(limiter: Limiter, prometheus: PrometheusHandle) -> Router {
    let exporter = limiter.exporter().key("acme");
    let layer = LimitLayer::new(limiter)
        .key(|req: &Request| {
            let tenant = req.headers().get("x-tenant")?.to_str().ok()?;
            Some(Key::from(tenant))
        })
        .queue_timeout(Duration::from_secs(2));
    let scrape = Scrape {
        exporter: Arc::new(Mutex::new(exporter)),
        prometheus,
    };
    Router::new()
        .route("/work", get(work))
        .layer(layer)
        // Added after the layer: not limited.
        .route("/metrics", get(metrics).with_state(scrape))
}

/// The limiter the app is built around: its name labels every series.
pub fn limiter() -> Limiter {
    Limiter::builder()
        .name("api")
        .limit(4)
        .per_key_limit(2)
        .distributions(true)
        .build()
}

async fn work() -> &'static str {
    tokio::time::sleep(Duration::from_millis(5)).await;
    "done\n"
}

async fn metrics(State(scrape): State<Scrape>) -> String {
    scrape.exporter.lock().unwrap().publish();
    scrape.prometheus.render()
}

#[allow(dead_code)] // the test includes this file for `app`, and runs its own server
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3001".to_string());
    let prometheus = install_prometheus();
    let app = app(limiter(), prometheus);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr} (GET /work with an x-tenant header, GET /metrics)");
    axum::serve(listener, app).await
}
