use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use task_limiter::{Key, Limiter};
use tower_layer::Layer;

use crate::refusal::Refusal;
use crate::service::{Admit, LimitService, QueueBound, Respond};

/// A tower [`Layer`] that admits every request through one [`Limiter`]: at most its limit of
/// requests run at once, the rest wait in its queue (keys taking turns), and a request that
/// cannot be admitted is answered with a response, `503` by default.
///
/// Every service the layer builds, and every clone of the layer, shares that one limiter:
/// the limit is global across clones, connections and routes. In axum,
/// `Router::route_layer` and `MethodRouter::layer` call [`layer`](Layer::layer) once per
/// route, and the routes still share the limit (tower's `ConcurrencyLimitLayer` makes one
/// semaphore per call, so a per-route use of it limits each route apart). For a limit per
/// route, give each route a layer with a limiter of its own.
///
/// The type parameters are the closures set on it (`()` when unset): `K` the
/// [`key`](Self::key), `W` the [`weight`](Self::weight), `P` the
/// [`priority`](Self::priority), `O` [`overload_if`](Self::overload_if) and `R`
/// [`on_refused`](Self::on_refused).
///
/// # Examples
///
/// One limit for the whole router, one per tenant within it:
///
/// ```
/// use std::time::Duration;
/// use axum::{extract::Request, routing::get, Router};
/// use task_limiter::{Key, Limiter};
/// use task_limiter_tower::LimitLayer;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
///
/// let limiter = Limiter::builder().limit(64).per_key_limit(8).build();
/// let layer = LimitLayer::new(limiter)
///     .key(|req: &Request| {
///         let tenant = req.headers().get("x-tenant")?.to_str().ok()?;
///         Some(Key::from(tenant))
///     })
///     .queue_timeout(Duration::from_millis(500));
/// let app: Router = Router::new()
///     .route("/search", get(|| async { "results" }))
///     .route("/export", get(|| async { "file" }))
///     .layer(layer);
/// # }
/// ```
///
/// Two routes sharing one limit, a third limited apart:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use axum::{routing::get, Router};
/// use task_limiter::Limiter;
/// use task_limiter_tower::LimitLayer;
///
/// let shared = LimitLayer::new(Limiter::new(16));
/// let reports = LimitLayer::new(Limiter::new(2));
/// let app: Router = Router::new()
///     .route("/a", get(|| async { "a" }).layer(shared.clone()))
///     .route("/b", get(|| async { "b" }).layer(shared))
///     .route("/report", get(|| async { "slow" }).layer(reports));
/// # }
/// ```
pub struct LimitLayer<K = (), W = (), P = (), O = (), R = ()> {
    admit: Admit<K, W, P>,
    respond: Respond<O, R>,
}

impl LimitLayer {
    /// A layer that admits requests through `limiter`: no key, weight 1, priority 0, no queue
    /// timeout (a request waits until it is admitted or its client goes away), and refusals
    /// (a closed limiter) answered `503` with `Retry-After: 1`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::LimitLayer;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// let service = LimitLayer::new(Limiter::new(8)).layer(service_fn(|_: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new("ok".to_string()))
    /// }));
    /// let response = service.oneshot(http::Request::new(())).await.unwrap();
    /// assert_eq!(response.status(), 200);
    /// # }
    /// ```
    pub fn new(limiter: Limiter) -> LimitLayer {
        LimitLayer {
            admit: Admit {
                limiter,
                key: (),
                weight: (),
                priority: (),
                queue_timeout: None,
                max_queued: None,
            },
            respond: Respond {
                overload: (),
                refused: (),
                release_at_head: false,
                retry_after: Duration::from_secs(1),
            },
        }
    }
}

impl<K, W, P, O, R> LimitLayer<K, W, P, O, R> {
    /// Gives each request the key `key` returns (a tenant, a client, an API token), or none:
    /// at most the key's limit ([`Builder::per_key_limit`](task_limiter::Builder::per_key_limit),
    /// [`Limiter::set_key_limit`]) of its requests run at once, within the global limit, and
    /// the keys with queued requests take turns, so a tenant with one request is served
    /// within one round of the tenants with work however many another has queued. Requests
    /// without a key share the global limit and take their turns as one more key.
    ///
    /// Write the argument's type out (`|req: &Request<Body>| ...`).
    ///
    /// # Examples
    ///
    /// ```
    /// use axum::{body::Body, http::Request, routing::get, Router};
    /// use task_limiter::{Key, Limiter};
    /// use task_limiter_tower::LimitLayer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    ///
    /// let limiter = Limiter::builder().limit(32).per_key_limit(4).build();
    /// let layer = LimitLayer::new(limiter).key(|req: &Request<Body>| {
    ///     req.headers()
    ///         .get("x-tenant")
    ///         .and_then(|value| value.to_str().ok())
    ///         .map(Key::from)
    /// });
    /// let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(layer);
    /// # }
    /// ```
    pub fn key<B, F>(self, key: F) -> LimitLayer<F, W, P, O, R>
    where
        F: Fn(&Request<B>) -> Option<Key>,
    {
        self.with_closures(|_, weight, priority| (key, weight, priority))
    }

    /// Gives each request the weight `weight` returns: it counts that much toward the global
    /// limit and its key's while it runs (an export that takes four of the database's
    /// connections). 0 counts as 1. See
    /// [`TaskBuilder::weight`](task_limiter::TaskBuilder::weight) for how heavy requests are
    /// kept from starving.
    ///
    /// # Examples
    ///
    /// ```
    /// use axum::{body::Body, http::Request, routing::get, Router};
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::LimitLayer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    ///
    /// let layer = LimitLayer::new(Limiter::new(16))
    ///     .weight(|req: &Request<Body>| if req.uri().path() == "/export" { 4 } else { 1 });
    /// let app: Router = Router::new()
    ///     .route("/export", get(|| async { "csv" }))
    ///     .layer(layer);
    /// # }
    /// ```
    pub fn weight<B, F>(self, weight: F) -> LimitLayer<K, F, P, O, R>
    where
        F: Fn(&Request<B>) -> u32,
    {
        self.with_closures(|key, _, priority| (key, weight, priority))
    }

    /// Gives each request the priority `priority` returns, for a limiter built with
    /// [`QueueOrder::Priority`](task_limiter::QueueOrder::Priority): a waiting request with a
    /// higher priority is admitted first (within its key's turns). Ignored under the other
    /// queue orders.
    ///
    /// # Examples
    ///
    /// ```
    /// use axum::{body::Body, http::Request, routing::get, Router};
    /// use task_limiter::{Limiter, QueueOrder};
    /// use task_limiter_tower::LimitLayer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    ///
    /// let limiter = Limiter::builder().limit(16).queue_order(QueueOrder::Priority).build();
    /// let layer = LimitLayer::new(limiter)
    ///     .priority(|req: &Request<Body>| if req.uri().path() == "/health" { 10 } else { 0 });
    /// let app: Router = Router::new().route("/health", get(|| async { "ok" })).layer(layer);
    /// # }
    /// ```
    pub fn priority<B, F>(self, priority: F) -> LimitLayer<K, W, F, O, R>
    where
        F: Fn(&Request<B>) -> i32,
    {
        self.with_closures(|key, weight, _| (key, weight, priority))
    }

    /// The layer with its key, weight and priority closures replaced by what `replace` makes
    /// of them (each setter swaps one, and with it a type parameter); the rest stays.
    fn with_closures<K2, W2, P2>(
        self,
        replace: impl FnOnce(K, W, P) -> (K2, W2, P2),
    ) -> LimitLayer<K2, W2, P2, O, R> {
        let Admit {
            limiter,
            key,
            weight,
            priority,
            queue_timeout,
            max_queued,
        } = self.admit;
        let (key, weight, priority) = replace(key, weight, priority);
        LimitLayer {
            admit: Admit {
                limiter,
                key,
                weight,
                priority,
                queue_timeout,
                max_queued,
            },
            respond: self.respond,
        }
    }

    /// Bounds each request's wait: a request not admitted `timeout` after its `call` leaves
    /// the queue and is refused ([`Refusal::is_timeout`]), by default with `503` and
    /// `Retry-After`. Without it a request waits until it is admitted or dropped.
    ///
    /// It is the request's queue deadline in the limiter
    /// ([`TaskBuilder::queue_timeout`](task_limiter::TaskBuilder::queue_timeout)): one timer
    /// for all waiting requests, in the limiter's manager, on tokio's clock (so paused time
    /// drives it); [`metrics`](Limiter::metrics) count such a request as timed out.
    ///
    /// # Panics
    ///
    /// A request that waits panics if the limiter's runtime has no time driver (no
    /// `enable_time`).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::LimitLayer;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// let limiter = Limiter::new(1);
    /// let service = LimitLayer::new(limiter.clone())
    ///     .queue_timeout(Duration::from_millis(250))
    ///     .layer(service_fn(|_: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    ///     }));
    /// let _busy = limiter.acquire().await.unwrap();
    /// let response = service.oneshot(http::Request::new(())).await.unwrap();
    /// assert_eq!(response.status(), 503);
    /// # }
    /// ```
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.admit.queue_timeout = Some(timeout);
        self
    }

    /// Bounds how many requests of this layer may wait at once: one more is refused at once
    /// ([`Refusal::is_full`]). `max_queued(0)` never waits: a request that cannot be admitted
    /// now is refused, as tower's `LoadShed` over a concurrency limit does.
    ///
    /// The count is the layer's (shared by its clones and the services they build), of the
    /// requests that have started waiting and are not yet admitted or gone; the limiter's own
    /// [`max_queued`](task_limiter::Builder::max_queued) bounds spawned items, not leases.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::LimitLayer;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// let limiter = Limiter::new(1);
    /// let shed = LimitLayer::new(limiter.clone())
    ///     .max_queued(0)
    ///     .on_refused(|refusal: task_limiter_tower::Refusal| {
    ///         assert!(refusal.is_full());
    ///         refusal.to_response::<String>()
    ///     })
    ///     .layer(service_fn(|_: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    ///     }));
    /// let _busy = limiter.acquire().await.unwrap();
    /// let response = shed.oneshot(http::Request::new(())).await.unwrap();
    /// assert_eq!(response.status(), 503);
    /// # }
    /// ```
    pub fn max_queued(mut self, max: usize) -> Self {
        self.admit.max_queued = Some(QueueBound {
            max,
            waiting: Arc::new(AtomicUsize::new(0)),
        });
        self
    }

    /// Ends each request's lease when the inner service returns the response head, instead
    /// of when the response body has ended or been dropped (the default).
    ///
    /// For a limit that guards the handler's work (a database call made before the response
    /// is built) rather than the response's streaming: a slow client reading a large body
    /// then holds no place.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::LimitLayer;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// let limiter = Limiter::new(4);
    /// let service = LimitLayer::new(limiter.clone())
    ///     .release_at_head()
    ///     .layer(service_fn(|_: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new("body".to_string()))
    ///     }));
    /// let response = service.oneshot(http::Request::new(())).await.unwrap();
    /// assert_eq!(limiter.metrics().running, 0); // released with the head
    /// # }
    /// ```
    pub fn release_at_head(mut self) -> Self {
        self.respond.release_at_head = true;
        self
    }

    /// Sets the `Retry-After` that refusals carry ([`Refusal::retry_after`]): 1 second by
    /// default, sent in whole seconds, rounded up.
    ///
    /// One second because a refusal here means the queue was full or slow right now, and
    /// queues on a service drain in well under a second; a client that honours it comes back
    /// once, not in a tight loop. A closed limiter means the server is going away: a retry
    /// should reach another instance, which a load balancer gives it as quickly.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::LimitLayer;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// let limiter = Limiter::new(1);
    /// limiter.close();
    /// let service = LimitLayer::new(limiter)
    ///     .retry_after(Duration::from_secs(5))
    ///     .layer(service_fn(|_: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    ///     }));
    /// let response = service.oneshot(http::Request::new(())).await.unwrap();
    /// assert_eq!(response.status(), 503);
    /// assert_eq!(response.headers()["retry-after"], "5");
    /// # }
    /// ```
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.respond.retry_after = retry_after;
        self
    }

    /// Marks a request's lease an overload when `overload` says so of its response (a `503`
    /// passed on from a downstream, a `429`), for the limiter's
    /// [adaptive limit](task_limiter::Builder::adaptive): the sample then backs the limit off
    /// however fast the answer came. A limiter without `adaptive` ignores it. The sample is
    /// taken when the lease ends (with the body, or at the head under
    /// [`release_at_head`](Self::release_at_head)); refused requests give none.
    ///
    /// Write the argument's type out (`|res: &Response<Body>| ...`).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http::{Response, StatusCode};
    /// use task_limiter::{adaptive::Aimd, Limiter};
    /// use task_limiter_tower::LimitLayer;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// let limiter = Limiter::builder().adaptive(Aimd::new()).limit(10).build();
    /// let service = LimitLayer::new(limiter.clone())
    ///     .overload_if(|res: &Response<String>| res.status() == StatusCode::SERVICE_UNAVAILABLE)
    ///     .layer(service_fn(|_: http::Request<()>| async {
    ///         let mut busy = Response::new(String::new());
    ///         *busy.status_mut() = StatusCode::SERVICE_UNAVAILABLE; // the downstream is busy
    ///         Ok::<_, std::convert::Infallible>(busy)
    ///     }));
    /// drop(service.oneshot(http::Request::new(())).await.unwrap());
    /// assert_eq!(limiter.limit(), 9); // backed off by Aimd's 0.9
    /// # }
    /// ```
    pub fn overload_if<B, F>(self, overload: F) -> LimitLayer<K, W, P, F, R>
    where
        F: Fn(&Response<B>) -> bool,
    {
        let Respond {
            refused,
            release_at_head,
            retry_after,
            ..
        } = self.respond;
        LimitLayer {
            admit: self.admit,
            respond: Respond {
                overload,
                refused,
                release_at_head,
                retry_after,
            },
        }
    }

    /// Answers refused requests with the response `on_refused` makes of the [`Refusal`]
    /// (instead of `503` with `Retry-After`, [`Refusal::to_response`]). A refused request
    /// never reaches the inner service, and a refusal is never an error of the service.
    ///
    /// # Examples
    ///
    /// ```
    /// use axum::{body::Body, routing::get, Router};
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::{LimitLayer, Refusal};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    ///
    /// let layer = LimitLayer::new(Limiter::new(64)).on_refused(|refusal: Refusal| {
    ///     let mut response = refusal.to_response::<Body>();
    ///     *response.body_mut() = Body::from(format!("busy: {refusal}"));
    ///     response
    /// });
    /// let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(layer);
    /// # }
    /// ```
    pub fn on_refused<B, F>(self, on_refused: F) -> LimitLayer<K, W, P, O, F>
    where
        F: Fn(Refusal) -> Response<B>,
    {
        let Respond {
            overload,
            release_at_head,
            retry_after,
            ..
        } = self.respond;
        LimitLayer {
            admit: self.admit,
            respond: Respond {
                overload,
                refused: on_refused,
                release_at_head,
                retry_after,
            },
        }
    }

    /// The limiter that admits the requests.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::LimitLayer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    ///
    /// let layer = LimitLayer::new(Limiter::new(8));
    /// assert_eq!(layer.limiter().limit(), 8);
    /// # }
    /// ```
    pub fn limiter(&self) -> &Limiter {
        &self.admit.limiter
    }
}

impl<S, K, W, P, O, R> Layer<S> for LimitLayer<K, W, P, O, R>
where
    K: Clone,
    W: Clone,
    P: Clone,
    O: Clone,
    R: Clone,
{
    type Service = LimitService<S, K, W, P, O, R>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService::new(inner, Arc::new(self.admit.clone()), self.respond.clone())
    }
}

impl<K, W, P, O, R> Clone for LimitLayer<K, W, P, O, R>
where
    K: Clone,
    W: Clone,
    P: Clone,
    O: Clone,
    R: Clone,
{
    fn clone(&self) -> Self {
        LimitLayer {
            admit: self.admit.clone(),
            respond: self.respond.clone(),
        }
    }
}

impl<K, W, P, O, R> fmt::Debug for LimitLayer<K, W, P, O, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitLayer")
            .field("limiter", &self.admit.limiter)
            .field("queue_timeout", &self.admit.queue_timeout)
            .field("max_queued", &self.admit.max_queued.as_ref().map(|b| b.max))
            .field("release_at_head", &self.respond.release_at_head)
            .field("retry_after", &self.respond.retry_after)
            .finish_non_exhaustive()
    }
}
