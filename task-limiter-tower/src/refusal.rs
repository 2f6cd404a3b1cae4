use std::fmt;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderValue, Response, StatusCode};
use task_limiter::{AcquireError, Key};

/// Why a request was not admitted: handed to [`LimitLayer::on_refused`], which turns it into
/// the response.
///
/// A refusal is never the inner service's error: the service answers it with a response, so
/// a router whose services must be infallible (axum's) takes the layer. By default that
/// response is [`to_response`](Self::to_response)'s: `503 Service Unavailable` with a
/// `Retry-After` header.
///
/// # Examples
///
/// ```
/// use axum::body::Body;
/// use axum::http::StatusCode;
/// use axum::{routing::get, Router};
/// use task_limiter::Limiter;
/// use task_limiter_tower::{LimitLayer, Refusal};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
///
/// let layer = LimitLayer::new(Limiter::new(64)).on_refused(|refusal: Refusal| {
///     let mut response = refusal.to_response::<Body>();
///     if refusal.is_timeout() {
///         *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
///     }
///     response
/// });
/// let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(layer);
/// # }
/// ```
///
/// [`LimitLayer::on_refused`]: crate::LimitLayer::on_refused
#[derive(Clone)]
pub struct Refusal {
    kind: Kind,
    key: Option<Key>,
    retry_after: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Timeout,
    Full,
    Closed,
    Cancelled,
}

impl Refusal {
    pub(crate) fn acquire(err: AcquireError, key: Option<Key>, retry_after: Duration) -> Refusal {
        let kind = if err.is_timeout() {
            Kind::Timeout
        } else if err.is_closed() {
            Kind::Closed
        } else {
            Kind::Cancelled
        };
        Refusal {
            kind,
            key,
            retry_after,
        }
    }

    pub(crate) fn full(key: Option<Key>, retry_after: Duration) -> Refusal {
        Refusal {
            kind: Kind::Full,
            key,
            retry_after,
        }
    }

    /// The request waited its [`queue_timeout`](crate::LimitLayer::queue_timeout) and was
    /// not admitted.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// The layer's [`max_queued`](crate::LimitLayer::max_queued) requests were waiting
    /// already: this one was refused without waiting.
    pub fn is_full(&self) -> bool {
        self.kind == Kind::Full
    }

    /// The limiter is closed or shutting down: the server is going away.
    pub fn is_closed(&self) -> bool {
        self.kind == Kind::Closed
    }

    /// The request's wait was cancelled by a token (the limiter's own
    /// [`cancel_on`](task_limiter::Builder::cancel_on) shuts it down, which reads as
    /// [`is_closed`](Self::is_closed)).
    pub fn is_cancelled(&self) -> bool {
        self.kind == Kind::Cancelled
    }

    /// The request's key, if the layer's [`key`](crate::LimitLayer::key) closure gave it one.
    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    /// How long the client is told to wait before it retries: the layer's
    /// [`retry_after`](crate::LimitLayer::retry_after), 1 second by default.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The default answer to a refusal: `503 Service Unavailable`, a `Retry-After` header of
    /// [`retry_after`](Self::retry_after) in whole seconds (rounded up, at least 1), and an
    /// empty body (`B::default()`).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::{LimitLayer, Refusal};
    /// use tower::{service_fn, Layer, Service, ServiceExt};
    ///
    /// type Request = http::Request<String>;
    /// type Response = http::Response<String>;
    ///
    /// let limiter = Limiter::new(1);
    /// let _busy = limiter.acquire().await.unwrap();
    /// let mut service = LimitLayer::new(limiter.clone())
    ///     .queue_timeout(Duration::from_millis(10))
    ///     .on_refused(|refusal: Refusal| {
    ///         assert!(refusal.is_timeout());
    ///         refusal.to_response::<String>()
    ///     })
    ///     .layer(service_fn(|_: Request| async {
    ///         Ok::<_, std::convert::Infallible>(Response::new("ok".to_string()))
    ///     }));
    /// let response = service.ready().await.unwrap().call(Request::default()).await.unwrap();
    /// assert_eq!(response.status(), 503);
    /// assert_eq!(response.headers()["retry-after"], "1");
    /// # }
    /// ```
    pub fn to_response<B: Default>(&self) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let secs = self.retry_after.as_secs()
            + u64::from(self.retry_after.subsec_nanos() > 0 || self.retry_after.is_zero());
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
        response
    }
}

impl fmt::Debug for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refusal")
            .field("kind", &self.kind)
            .field("key", &self.key)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Timeout => "queue timeout passed before the request was admitted",
            Kind::Full => "too many requests waiting",
            Kind::Closed => "limiter is closed",
            Kind::Cancelled => "wait cancelled by its token",
        })
    }
}

impl std::error::Error for Refusal {}

/// What answers a [`Refusal`]: set with [`LimitLayer::on_refused`](crate::LimitLayer::on_refused).
///
/// Implemented for closures `Fn(Refusal) -> Response<B>`, and for `()`, the default, which
/// answers with [`Refusal::to_response`] (for bodies that implement `Default`, as axum's and
/// `String` do).
///
/// # Examples
///
/// ```
/// use http::Response;
/// use task_limiter_tower::{OnRefused, Refusal};
///
/// fn answers<R: OnRefused<String>>(_: &R) {}
/// answers(&());
/// answers(&|refusal: Refusal| Response::new(refusal.to_string()));
/// ```
pub trait OnRefused<B> {
    /// The response for `refusal`.
    fn on_refused(&self, refusal: Refusal) -> Response<B>;
}

impl<B: Default> OnRefused<B> for () {
    fn on_refused(&self, refusal: Refusal) -> Response<B> {
        refusal.to_response()
    }
}

impl<B, F> OnRefused<B> for F
where
    F: Fn(Refusal) -> Response<B>,
{
    fn on_refused(&self, refusal: Refusal) -> Response<B> {
        self(refusal)
    }
}
