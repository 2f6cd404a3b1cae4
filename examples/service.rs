//! A service's request handlers under one limiter, with leases: each request runs inline in its
//! own task (`build_task().key(tenant).queue_timeout(..).run(..)`), calls a slow downstream, and
//! answers "busy" when it waited too long for its turn. One tenant floods the service; the
//! others send a request now and then. Prints per-tenant figures at the end.
//!
//! Run it with `cargo run --release --example service`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use task_limiter::Limiter;

/// The downstream: 20 ms per call, however many run at once (the limiter is what keeps it from
/// being overrun).
async fn downstream(tenant: &str) -> String {
    tokio::time::sleep(Duration::from_millis(20)).await;
    format!("data for {tenant}")
}

#[derive(Default, Debug)]
struct Figures {
    served: u32,
    busy: u32,
    latencies: Vec<Duration>,
}

/// One request, as a handler would run it.
async fn handle(limiter: &Limiter, tenant: &'static str, figures: &Mutex<BTreeMap<&str, Figures>>) {
    let start = Instant::now();
    let reply = limiter
        .build_task()
        .key(tenant)
        .queue_timeout(Duration::from_millis(100))
        .run(downstream(tenant))
        .await;
    let mut figures = figures.lock().unwrap();
    let mine = figures.entry(tenant).or_default();
    match reply {
        Ok(_body) => {
            mine.served += 1;
            mine.latencies.push(start.elapsed());
        }
        // 503 in a real service.
        Err(err) if err.is_timeout() => mine.busy += 1,
        Err(err) => panic!("unexpected: {err}"),
    }
}

#[tokio::main]
async fn main() {
    // 8 calls to the downstream at once, at most 4 for any one tenant.
    let limiter = Limiter::builder()
        .name("api")
        .limit(8)
        .per_key_limit(4)
        .build();
    let figures = Arc::new(Mutex::new(BTreeMap::new()));
    let mut clients = Vec::new();
    // The flood: 40 connections of tenant "bulk", each sending requests back to back.
    for _ in 0..40 {
        let (limiter, figures) = (limiter.clone(), figures.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..20 {
                handle(&limiter, "bulk", &figures).await;
            }
        }));
    }
    // Four quiet tenants: one request every 50 ms each.
    for tenant in ["alpha", "beta", "gamma", "delta"] {
        let (limiter, figures) = (limiter.clone(), figures.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..20 {
                handle(&limiter, tenant, &figures).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    limiter.close();
    limiter.wait().await;

    println!("tenant   served  busy   p50       p99");
    for (tenant, figures) in figures.lock().unwrap().iter_mut() {
        figures.latencies.sort();
        let at = |q: f64| {
            let n = figures.latencies.len();
            figures
                .latencies
                .get(((n as f64 * q).ceil() as usize).clamp(1, n.max(1)) - 1)
                .copied()
                .unwrap_or_default()
        };
        println!(
            "{tenant:<8} {:>6} {:>5}   {:>7.1?} {:>8.1?}",
            figures.served,
            figures.busy,
            at(0.5),
            at(0.99)
        );
    }
    let m = limiter.metrics();
    println!(
        "\nlimiter: {} requests, {} served, {} timed out in the queue, at most {} at once, {} worker tasks spawned",
        m.submitted, m.completed, m.timed_out, m.max_running, m.workers_spawned
    );
}
