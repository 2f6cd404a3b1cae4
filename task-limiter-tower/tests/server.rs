//! The layer in a real axum (hyper) server on 127.0.0.1, driven by a real HTTP client (hyper's)
//! and, for disconnects, by raw TCP connections. Deterministic: handlers wait on gates the
//! test opens, and the test waits for states (the limiter's metrics, counters kept inside the
//! handlers) with a generous bound; nothing asserts on timing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use task_limiter::{Key, Limiter, WorkerId};
use task_limiter_tower::{LimitLayer, Refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

// === the harness ===

/// What the handlers count, and the gate they wait on.
struct App {
    gate: watch::Receiver<bool>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Per tenant: (in flight, most in flight at once).
    tenants: Mutex<HashMap<String, (usize, usize)>>,
    /// Tenants in the order their requests entered a handler.
    log: Mutex<Vec<String>>,
}

impl App {
    fn new() -> (Arc<App>, watch::Sender<bool>) {
        let (open, gate) = watch::channel(false);
        let app = App {
            gate,
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            tenants: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
        };
        (Arc::new(app), open)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn tenant_of(headers: &HeaderMap) -> String {
    headers
        .get("x-tenant")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

/// Counts itself in, waits for the gate, counts itself out.
async fn gated(State(app): State<Arc<App>>, headers: HeaderMap) -> String {
    let tenant = tenant_of(&headers);
    app.calls.fetch_add(1, Ordering::SeqCst);
    let now = app.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    app.max_in_flight.fetch_max(now, Ordering::SeqCst);
    {
        let mut tenants = app.tenants.lock().unwrap();
        let (in_flight, max) = tenants.entry(tenant.clone()).or_default();
        *in_flight += 1;
        *max = (*max).max(*in_flight);
    }
    app.log.lock().unwrap().push(tenant.clone());
    let mut gate = app.gate.clone();
    gate.wait_for(|open| *open).await.unwrap();
    app.tenants.lock().unwrap().get_mut(&tenant).unwrap().0 -= 1;
    app.in_flight.fetch_sub(1, Ordering::SeqCst);
    "ok".to_string()
}

fn tenant_key(req: &Request) -> Option<Key> {
    let tenant = req.headers().get("x-tenant")?.to_str().ok()?;
    Some(Key::from(tenant))
}

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// Sends `GET path` (as `tenant`, if any) on a task of its own and reads the whole reply.
fn get_as(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    tenant: Option<&str>,
) -> JoinHandle<Reply> {
    let mut request = http::Request::get(format!("http://{addr}{path}"));
    if let Some(tenant) = tenant {
        request = request.header("x-tenant", tenant);
    }
    let request = request.body(Empty::new()).unwrap();
    let client = client.clone();
    tokio::spawn(async move {
        let response = client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
}

/// Waits until `condition` holds, checking every few milliseconds for up to 20 s: a bound on
/// a hang, not a timing assertion.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..4000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A raw HTTP/1.1 request on a connection of its own, to drop at will.
async fn raw_get(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

// === limits ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_limit_holds_inside_handlers() {
    let limiter = Limiter::new(3);
    let (app, open) = App::new();
    let router = Router::new()
        .route("/", get(gated))
        .with_state(app.clone())
        .layer(LimitLayer::new(limiter.clone()));
    let addr = serve(router).await;
    let client = client();
    let replies: Vec<_> = (0..10).map(|_| get_as(&client, addr, "/", None)).collect();

    until("3 run and 7 wait", || {
        let m = limiter.metrics();
        m.running == 3 && m.queued == 7
    })
    .await;
    assert_eq!(app.in_flight(), 3);
    open.send(true).unwrap();
    for reply in replies {
        let reply = reply.await.unwrap();
        assert_eq!(
            (reply.status, &reply.body[..]),
            (StatusCode::OK, &b"ok"[..])
        );
    }
    assert_eq!(app.max_in_flight.load(Ordering::SeqCst), 3);
    assert_eq!(app.calls(), 10);
    until("every lease ended", || limiter.metrics().running == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_limits_hold_inside_handlers() {
    let limiter = Limiter::builder().limit(8).per_key_limit(2).build();
    let (app, open) = App::new();
    let router = Router::new()
        .route("/", get(gated))
        .with_state(app.clone())
        .layer(LimitLayer::new(limiter.clone()).key(tenant_key));
    let addr = serve(router).await;
    let client = client();
    let mut replies = Vec::new();
    for tenant in ["a", "b", "c"] {
        for _ in 0..5 {
            replies.push(get_as(&client, addr, "/", Some(tenant)));
        }
    }

    // 2 of each tenant's 5 run, though the global limit has room for 8.
    until("2 of each tenant run", || {
        let m = limiter.metrics();
        m.running == 6 && m.queued == 9
    })
    .await;
    assert_eq!(app.in_flight(), 6);
    for tenant in ["a", "b", "c"] {
        assert_eq!(app.tenants.lock().unwrap()[tenant].0, 2, "tenant {tenant}");
        assert_eq!(limiter.key_metrics(tenant).unwrap().running, 2);
    }
    open.send(true).unwrap();
    for reply in replies {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    for (tenant, (_, max)) in app.tenants.lock().unwrap().iter() {
        assert_eq!(*max, 2, "tenant {tenant}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_and_routes_share_one_limit() {
    let limiter = Limiter::new(2);
    let (app, open) = App::new();
    let layer = LimitLayer::new(limiter.clone());
    // One layer on two routes (a `layer()` call each) and a clone of it on a nested router.
    let nested = Router::new().route("/c", get(gated)).layer(layer.clone());
    let router = Router::new()
        .route("/a", get(gated).layer(layer.clone()))
        .route("/b", get(gated).layer(layer))
        .merge(nested)
        .with_state(app.clone());
    let addr = serve(router).await;
    let client = client();
    let replies: Vec<_> = ["/a", "/b", "/c", "/a", "/b", "/c"]
        .into_iter()
        .map(|path| get_as(&client, addr, path, None))
        .collect();

    until("2 run and 4 wait", || {
        let m = limiter.metrics();
        m.running == 2 && m.queued == 4
    })
    .await;
    assert_eq!(app.in_flight(), 2);
    open.send(true).unwrap();
    for reply in replies {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(app.max_in_flight.load(Ordering::SeqCst), 2);
}

/// The contrast the issue cites (axum#2582): tower's `ConcurrencyLimitLayer` on each route
/// makes a semaphore per route, so two routes "limited to 2" run 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn towers_per_route_concurrency_limit_limits_each_route_apart() {
    let (app, open) = App::new();
    let layer = tower::limit::ConcurrencyLimitLayer::new(2);
    let router = Router::new()
        .route("/a", get(gated).layer(layer.clone()))
        .route("/b", get(gated).layer(layer))
        .with_state(app.clone());
    let addr = serve(router).await;
    let client = client();
    let replies: Vec<_> = ["/a", "/b", "/a", "/b", "/a", "/b"]
        .into_iter()
        .map(|path| get_as(&client, addr, path, None))
        .collect();
    until("4 run", || app.in_flight() == 4).await;
    open.send(true).unwrap();
    for reply in replies {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
}

// === refusals ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_timeout_answers_503_with_retry_after() {
    let limiter = Limiter::new(1);
    let (app, open) = App::new();
    let router = Router::new()
        .route("/", get(gated))
        .with_state(app.clone())
        .layer(LimitLayer::new(limiter.clone()).queue_timeout(Duration::from_millis(50)));
    let addr = serve(router).await;
    let client = client();
    let holder = get_as(&client, addr, "/", None);
    until("the first runs", || app.in_flight() == 1).await;

    let refused = get_as(&client, addr, "/", None).await.unwrap();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(refused.body.is_empty());
    assert_eq!(
        app.calls(),
        1,
        "a refused request never reaches the handler"
    );

    open.send(true).unwrap();
    assert_eq!(holder.await.unwrap().status, StatusCode::OK);
    // The limiter timed it out in its queue, and counts it so once the queue has passed its
    // entry.
    until("the refused one is counted", || {
        let m = limiter.metrics();
        (m.timed_out, m.cancelled) == (1, 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_limiter_answers_503_with_retry_after() {
    let limiter = Limiter::new(4);
    let (app, _open) = App::new();
    let router = Router::new()
        .route("/", get(gated))
        .with_state(app.clone())
        .layer(LimitLayer::new(limiter.clone()).retry_after(Duration::from_millis(2500)));
    let addr = serve(router).await;
    limiter.close();
    let refused = get_as(&client(), addr, "/", None).await.unwrap();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["retry-after"], "3"); // whole seconds, rounded up
    assert_eq!(app.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_by_on_refused_and_never_an_error() {
    let limiter = Limiter::new(1);
    let (app, open) = App::new();
    let layer = LimitLayer::new(limiter.clone())
        .key(tenant_key)
        .max_queued(1)
        .on_refused(|refusal: Refusal| {
            assert!(refusal.is_full());
            let tenant = refusal.key().map(ToString::to_string).unwrap_or_default();
            let mut response = Response::new(Body::from(format!("busy: {tenant}")));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response
        });
    // `Router::layer` needs `Error = Infallible`: the refusal is a response, not an error.
    let router = Router::new()
        .route("/", get(gated))
        .with_state(app.clone())
        .layer(layer);
    let addr = serve(router).await;
    let client = client();
    let running = get_as(&client, addr, "/", Some("t"));
    until("one runs", || app.in_flight() == 1).await;
    let waiting = get_as(&client, addr, "/", Some("t"));
    until("one waits", || limiter.metrics().queued == 1).await;

    let refused = get_as(&client, addr, "/", Some("t")).await.unwrap();
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(&refused.body[..], b"busy: t");

    open.send(true).unwrap();
    assert_eq!(running.await.unwrap().status, StatusCode::OK);
    assert_eq!(waiting.await.unwrap().status, StatusCode::OK);
    assert_eq!(app.calls(), 2);
}

// === the lease and the response body ===

/// A handler that returns at once with a body streamed from a channel the test feeds.
fn streaming_router(
    layer: LimitLayer,
    chunks: Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>,
) -> Router {
    let handler = move || {
        let rx = chunks
            .lock()
            .unwrap()
            .take()
            .expect("one streaming request");
        async move {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((Ok::<_, Infallible>(chunk), rx))
            });
            Body::from_stream(stream)
        }
    };
    Router::new().route("/stream", get(handler)).layer(layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_body_holds_the_place_until_its_last_chunk() {
    let limiter = Limiter::new(1);
    let (tx, rx) = mpsc::channel(4);
    let router = streaming_router(
        LimitLayer::new(limiter.clone()),
        Arc::new(Mutex::new(Some(rx))),
    );
    let addr = serve(router).await;
    let request = http::Request::get(format!("http://{addr}/stream"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();

    tx.send(Bytes::from_static(b"first")).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "first");
    // The handler returned long ago; the body still streams, and holds the one place.
    assert_eq!(limiter.metrics().running, 1);
    assert!(limiter.try_acquire().unwrap_err().is_full());

    tx.send(Bytes::from_static(b"last")).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "last");
    until("the body's end released the place", || {
        limiter.metrics().running == 0
    })
    .await;
    assert_eq!(limiter.metrics().completed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_at_head_frees_the_place_while_the_body_streams() {
    let limiter = Limiter::new(1);
    let (tx, rx) = mpsc::channel(4);
    let layer = LimitLayer::new(limiter.clone()).release_at_head();
    let router = streaming_router(layer, Arc::new(Mutex::new(Some(rx))));
    let addr = serve(router).await;
    let request = http::Request::get(format!("http://{addr}/stream"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = client().request(request).await.unwrap();
    let mut body = response.into_body();
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    body.frame().await.unwrap().unwrap();
    until("the head released the place", || {
        limiter.metrics().running == 0
    })
    .await;
    assert!(limiter.try_acquire().is_ok());
    drop(tx);
    body.collect().await.unwrap();
}

// === disconnects ===

/// Counts itself on drop while armed: a request future dropped before its response.
struct CountDrop(Arc<AtomicUsize>, bool);

impl Drop for CountDrop {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_while_queued_frees_its_place() {
    let limiter = Limiter::new(1);
    let (app, open) = App::new();
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = dropped.clone();
    let router = Router::new()
        .route("/", get(gated))
        .with_state(app.clone())
        .layer(LimitLayer::new(limiter.clone()))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: axum::middleware::Next| {
                let guard = CountDrop(counter.clone(), true);
                async move {
                    let mut guard = guard;
                    let response = next.run(req).await;
                    guard.1 = false;
                    response
                }
            },
        ));
    let addr = serve(router).await;
    let client = client();
    let holder = get_as(&client, addr, "/", Some("holder"));
    until("the holder runs", || app.in_flight() == 1).await;

    let gone = raw_get(addr, "/").await;
    until("the raw request waits", || limiter.metrics().queued == 1).await;
    drop(gone);
    // hyper drops the request's future (the layer outside counts it), and with it the wait.
    until("hyper dropped the request", || {
        dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(limiter.metrics().running, 1);

    let next = get_as(&client, addr, "/", Some("next"));
    until("the next one waits", || {
        app.calls() == 1 && limiter.metrics().queued >= 1
    })
    .await;
    open.send(true).unwrap();
    assert_eq!(holder.await.unwrap().status, StatusCode::OK);
    assert_eq!(next.await.unwrap().status, StatusCode::OK);
    // The request whose client went away never reached the handler: the next one took the
    // place after the holder.
    assert_eq!(app.log(), ["holder", "next"]);
    until("the withdrawn entry is counted", || {
        limiter.metrics().cancelled == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_while_streaming_frees_the_place() {
    let limiter = Limiter::new(1);
    let (tx, rx) = mpsc::channel(4);
    let router = streaming_router(
        LimitLayer::new(limiter.clone()),
        Arc::new(Mutex::new(Some(rx))),
    );
    let addr = serve(router).await;
    let mut stream = raw_get(addr, "/stream").await;
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    // Read until the first chunk has arrived: the head and the chunk are out.
    let mut seen = Vec::new();
    let mut buf = [0; 1024];
    while !seen.windows(5).any(|w| w == b"first") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(limiter.metrics().running, 1);
    drop(stream);
    // hyper notices the closed connection and drops the body, which ends the lease; the
    // body's sender is kept, so nothing else ends it.
    until("the disconnect released the place", || {
        limiter.metrics().running == 0
    })
    .await;
    assert!(limiter.try_acquire().is_ok());
    drop(tx);
}

// === fairness ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_one_request_is_served_within_one_round() {
    let limiter = Limiter::new(1);
    let (app, open) = App::new();
    let router = Router::new()
        .route("/", get(gated))
        .with_state(app.clone())
        .layer(LimitLayer::new(limiter.clone()).key(tenant_key));
    let addr = serve(router).await;
    let client = client();
    let mut replies = vec![get_as(&client, addr, "/", Some("holder"))];
    until("the holder runs", || app.in_flight() == 1).await;
    // Two busy tenants queue 6 requests each, then a quiet one queues 1.
    for tenant in ["busy-1", "busy-2"] {
        for _ in 0..6 {
            replies.push(get_as(&client, addr, "/", Some(tenant)));
        }
    }
    until("12 wait", || limiter.metrics().queued == 12).await;
    replies.push(get_as(&client, addr, "/", Some("quiet")));
    until("13 wait", || limiter.metrics().queued == 13).await;

    open.send(true).unwrap();
    for reply in replies {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    let log = app.log();
    assert_eq!(log.len(), 14);
    let quiet = log.iter().position(|t| t == "quiet").unwrap();
    // After the holder, one round is one start for each of the 3 tenants with work.
    assert!(quiet <= 3, "the quiet tenant started {quiet}th: {log:?}");
}

// === admission in `call`, adaptive limits ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_hold_no_place() {
    let limiter = Limiter::new(2);
    let router = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(LimitLayer::new(limiter.clone()));
    let addr = serve(router).await;
    // Two keep-alive connections, each ready for its next request.
    let mut connections = Vec::new();
    for _ in 0..2 {
        let mut stream = raw_get(addr, "/").await;
        let mut seen = Vec::new();
        let mut buf = [0; 1024];
        while !seen.ends_with(b"ok") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            seen.extend_from_slice(&buf[..n]);
        }
        connections.push(stream);
    }
    until("both leases ended", || limiter.metrics().running == 0).await;
    // Nothing is held for the idle connections: the whole limit is free.
    let leases = [
        limiter.try_acquire().unwrap(),
        limiter.try_acquire().unwrap(),
    ];
    drop(leases);
    assert_eq!(limiter.metrics().completed, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_passed_on_from_a_downstream_backs_an_adaptive_limit_off() {
    let limiter = Limiter::builder()
        .adaptive(task_limiter::adaptive::Aimd::new())
        .limit(10)
        .build();
    let layer = LimitLayer::new(limiter.clone())
        .overload_if(|res: &Response<Body>| res.status() == StatusCode::SERVICE_UNAVAILABLE);
    let router = Router::new()
        .route(
            "/busy",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "downstream busy") }),
        )
        .route("/fine", get(|| async { "ok" }))
        .layer(layer);
    let addr = serve(router).await;
    let client = client();
    let reply = get_as(&client, addr, "/busy", None).await.unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    until("the limit backed off", || limiter.limit() == 9).await; // Aimd's 0.9
    let reply = get_as(&client, addr, "/fine", None).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    until("its lease ended", || limiter.metrics().completed == 2).await;
    // A 200 is no overload: no further backoff (AIMD grows only a limit that was found full).
    assert_eq!(limiter.limit(), 9);
}

// === the worker ID, and the types ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_the_worker_id_of_their_lease() {
    let limiter = Limiter::new(4);
    let router = Router::new()
        .route(
            "/",
            get(|req: Request| async move {
                let worker = *req.extensions().get::<WorkerId>().unwrap();
                worker.index().to_string()
            }),
        )
        .layer(LimitLayer::new(limiter.clone()));
    let addr = serve(router).await;
    let reply = get_as(&client(), addr, "/", None).await.unwrap();
    let index: usize = std::str::from_utf8(&reply.body).unwrap().parse().unwrap();
    assert!(index < 4);
}

#[test]
fn bounds() {
    fn send_sync_static<T: Send + Sync + 'static>() {}
    fn send_static<T: Send + 'static>() {}
    type Service = task_limiter_tower::LimitService<axum::routing::Route>;
    send_sync_static::<LimitLayer>();
    send_sync_static::<Service>();
    send_static::<task_limiter_tower::ResponseFuture<axum::routing::Route, Body>>();
    send_static::<task_limiter_tower::LimitBody<Body>>();
    send_sync_static::<task_limiter_tower::LimitBody<String>>();
    send_sync_static::<Refusal>();
}
