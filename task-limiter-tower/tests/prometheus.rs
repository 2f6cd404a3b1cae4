//! The `prometheus` example's app on a real axum server on 127.0.0.1, loaded by a real HTTP
//! client (hyper's) and scraped over HTTP twice: the limiter's series are there, labelled with
//! its name, and they move under load. Asserts on counts, never on timing.

#[path = "../examples/prometheus.rs"]
#[allow(dead_code, unreachable_pub)]
mod example;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn get(client: &HttpClient, addr: SocketAddr, path: &str, tenant: &str) -> (u16, String) {
    let request = http::Request::get(format!("http://{addr}{path}"))
        .header("x-tenant", tenant)
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Fires `n` requests at once, spread over two tenants; all must succeed.
async fn load(client: &HttpClient, addr: SocketAddr, n: usize) {
    let requests: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let tenant = if i % 2 == 0 { "acme" } else { "globex" };
            tokio::spawn(async move { get(&client, addr, "/work", tenant).await })
        })
        .collect();
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "done\n"));
    }
}

/// The value of the sample whose line starts with `name` and holds every one of `labels`.
fn sample(scrape: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.split(['{', ' ']).next() == Some(name) && labels.iter().all(|l| line.contains(l))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_over_http_and_move_under_load() {
    let prometheus = example::install_prometheus();
    let app = example::app(example::limiter(), prometheus);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // 40 requests at once against a limit of 4 (2 per tenant): most of them wait.
    load(&client, addr, 40).await;
    let (status, first) = get(&client, addr, "/metrics", "-").await;
    assert_eq!(status, 200);
    let api = "limiter=\"api\"";
    let acquired = |scrape: &str| {
        sample(
            scrape,
            "task_limiter_requests",
            &[api, "result=\"acquired\""],
        )
    };
    assert_eq!(acquired(&first), Some(40.0), "{first}");
    // Nothing was refused (the layer's `try_acquire` fast path is no refusal).
    for result in ["queue_full", "queue_timeout", "token", "closed"] {
        let refused = sample(
            &first,
            "task_limiter_requests",
            &[api, &format!("result=\"{result}\"")],
        );
        assert_eq!(refused, Some(0.0), "{result}: {first}");
    }
    // The summed wait, in microseconds, and the histogram's sum, in seconds.
    let waited = |scrape: &str| sample(scrape, "task_limiter_request_wait_time", &[api]);
    assert!(waited(&first).unwrap() > 0.0, "requests queued: {first}");
    let wait_sum = sample(&first, "task_limiter_request_time_in_queue_sum", &[api]);
    assert!(wait_sum.unwrap() > 0.0, "{first}");
    // The histograms, with their buckets.
    let runs = |scrape: &str| sample(scrape, "task_limiter_request_lease_duration_count", &[api]);
    assert_eq!(runs(&first), Some(40.0), "{first}");
    assert!(
        first.contains("task_limiter_request_time_in_queue_bucket{"),
        "{first}"
    );
    assert!(first.contains("task_limiter_request_lease_duration_bucket{"));
    // The named tenant's series; the other tenant has none.
    assert_eq!(
        sample(&first, "task_limiter_key_limit", &[api, "key=\"acme\""]),
        Some(2.0)
    );
    assert!(!first.contains("globex"));

    load(&client, addr, 30).await;
    let (_, second) = get(&client, addr, "/metrics", "-").await;
    assert_eq!(acquired(&second), Some(70.0), "{second}");
    assert_eq!(runs(&second), Some(70.0), "{second}");
    assert!(waited(&second).unwrap() >= waited(&first).unwrap());
    let ran = |scrape: &str| sample(scrape, "task_limiter_request_lease_use_time", &[api]);
    assert!(ran(&second).unwrap() > ran(&first).unwrap());

    server.abort();
}
