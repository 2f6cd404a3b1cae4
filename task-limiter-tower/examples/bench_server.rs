//! The benchmark's server (`bench/run.sh` drives it with wrk): an axum router on hyper's HTTP/1
//! server, behind one of the limits compared, on 127.0.0.1. Not an example to copy: one route,
//! a handler that yields once or sleeps, and the limit under test.
//!
//! ```text
//! cargo build --release -p task-limiter-tower --example bench_server
//! target/release/examples/bench_server --layer limiter --limit 8 --handler sleep1 --port 8088
//! ```
//!
//! `--layer`: `none`, `tower` (`ConcurrencyLimitLayer`), `shed` (`GlobalConcurrencyLimitLayer`
//! under `LoadShed`, refusals answered 503), `limiter` (`LimitLayer`), `limiter-keys`
//! (`LimitLayer` keyed by the `x-tenant` header), `spawn` (no layer: the handler awaits
//! `limiter.spawn(work)`), `firq` (firq-tower 0.1.3, tenants from `x-tenant`). `--handler`:
//! `yield` (yields once), `sleep1` or `sleep5` (sleeps 1 or 5 ms).

use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use task_limiter::{Key, Limiter};
use task_limiter_tower::LimitLayer;
use tower::limit::{ConcurrencyLimitLayer, GlobalConcurrencyLimitLayer};
use tower::load_shed::LoadShedLayer;
use tower::{BoxError, Service, ServiceBuilder};

type Request = http::Request<Incoming>;

#[derive(Clone, Copy)]
enum Work {
    Yield,
    Sleep(u64),
}

async fn work(kind: Work) -> &'static str {
    match kind {
        Work::Yield => tokio::task::yield_now().await,
        Work::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
    }
    "ok"
}

struct Args {
    layer: String,
    limit: usize,
    work: Work,
    port: u16,
}

fn args() -> Args {
    let mut args = Args {
        layer: "none".into(),
        limit: 8,
        work: Work::Yield,
        port: 8088,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--layer" => args.layer = value,
            "--limit" => args.limit = value.parse().expect("--limit N"),
            "--port" => args.port = value.parse().expect("--port N"),
            "--handler" => {
                args.work = match value.as_str() {
                    "yield" => Work::Yield,
                    "sleep1" => Work::Sleep(1),
                    "sleep5" => Work::Sleep(5),
                    other => panic!("unknown handler {other}"),
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn tenant(req: &Request) -> Option<&str> {
    req.headers().get("x-tenant")?.to_str().ok()
}

/// Serves `service` on `port`, one task per connection, as `axum::serve` does.
async fn serve<S, B>(port: u16, service: S)
where
    S: Service<Request, Response = http::Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    println!("listening on 127.0.0.1:{port}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        stream.set_nodelay(true).ok();
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() {
    let Args {
        layer,
        limit,
        work: kind,
        port,
    } = args();
    let limiter = Limiter::new(limit);
    let handler = {
        let limiter = limiter.clone();
        let spawn = layer == "spawn";
        move || {
            let limiter = limiter.clone();
            async move {
                match spawn {
                    true => limiter.spawn(work(kind)).await.expect("spawned item"),
                    false => work(kind).await,
                }
            }
        }
    };
    let router = Router::new().route("/", get(handler));
    match layer.as_str() {
        "none" | "spawn" => serve(port, router).await,
        "tower" => {
            let service = ServiceBuilder::new()
                .layer(ConcurrencyLimitLayer::new(limit))
                .service(router);
            serve(port, service).await
        }
        "shed" => {
            let service = ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    StatusCode::SERVICE_UNAVAILABLE
                }))
                .layer(LoadShedLayer::new())
                .layer(GlobalConcurrencyLimitLayer::new(limit))
                .service(router);
            serve(port, service).await
        }
        "limiter" => {
            let service = ServiceBuilder::new()
                .layer(LimitLayer::new(limiter))
                .service(router);
            serve(port, service).await
        }
        "limiter-keys" => {
            let layer = LimitLayer::new(limiter).key(|req: &Request| tenant(req).map(Key::from));
            let service = ServiceBuilder::new().layer(layer).service(router);
            serve(port, service).await
        }
        "firq" => {
            let hasher = RandomState::new();
            let firq = firq_tower::Firq::new()
                .with_in_flight_limit(limit)
                // Queues large enough that nothing is refused at 200 connections.
                .with_max_global(4096)
                .with_max_per_tenant(4096)
                .build(move |req: &Request| {
                    firq_tower::TenantKey::from(hasher.hash_one(tenant(req).unwrap_or("")))
                });
            let service = ServiceBuilder::new()
                .layer(HandleErrorLayer::new(
                    |_: firq_tower::FirqError<Infallible>| async {
                        StatusCode::SERVICE_UNAVAILABLE
                    },
                ))
                .layer(firq)
                .service(router);
            serve(port, service).await
        }
        other => panic!("unknown layer {other}"),
    }
}
