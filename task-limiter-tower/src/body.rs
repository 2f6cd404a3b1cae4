use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use task_limiter::Lease;

pin_project! {
    /// The response body of a [`LimitService`](crate::LimitService): the inner service's body,
    /// holding the request's [`Lease`] until the body has ended or been dropped.
    ///
    /// The lease ends when the body yields its last frame (or an error), or when the body is
    /// dropped, whichever comes first: hyper drops a body once it has written it, and drops it
    /// unfinished when the client goes away. So a streaming response holds its place in the
    /// limit until its last chunk, and a refused request's body holds nothing. With
    /// [`release_at_head`](crate::LimitLayer::release_at_head) it holds nothing either.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http_body_util::BodyExt;
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::{LimitBody, LimitLayer};
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// let limiter = Limiter::new(4);
    /// let service = LimitLayer::new(limiter.clone()).layer(service_fn(|_: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new("chunk".to_string()))
    /// }));
    /// let response = service.oneshot(http::Request::new(())).await.unwrap();
    /// let body: LimitBody<String> = response.into_body();
    /// assert_eq!(limiter.metrics().running, 1); // the body holds the lease
    /// let bytes = body.collect().await.unwrap().to_bytes();
    /// assert_eq!(bytes, "chunk");
    /// assert_eq!(limiter.metrics().running, 0); // its end released it
    /// # }
    /// ```
    pub struct LimitBody<B> {
        #[pin]
        inner: B,
        lease: Option<Lease>,
    }
}

impl<B> LimitBody<B> {
    pub(crate) fn new(inner: B, lease: Option<Lease>) -> LimitBody<B> {
        LimitBody { inner, lease }
    }

    /// The inner body; the lease, if the body still holds one, ends.
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
    /// let service = LimitLayer::new(limiter.clone()).layer(service_fn(|_: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new("text".to_string()))
    /// }));
    /// let response = service.oneshot(http::Request::new(())).await.unwrap();
    /// let text: String = response.into_body().into_inner();
    /// assert_eq!((text.as_str(), limiter.metrics().running), ("text", 0));
    /// # }
    /// ```
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// Whether the body still holds its lease.
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
    /// let ok = |_: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// };
    /// let held = LimitLayer::new(Limiter::new(4)).layer(service_fn(ok));
    /// assert!(held.oneshot(http::Request::new(())).await.unwrap().body().holds_lease());
    /// let at_head = LimitLayer::new(Limiter::new(4)).release_at_head().layer(service_fn(ok));
    /// assert!(!at_head.oneshot(http::Request::new(())).await.unwrap().body().holds_lease());
    /// # }
    /// ```
    pub fn holds_lease(&self) -> bool {
        self.lease.is_some()
    }
}

impl<B: Body> Body for LimitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        // The last frame, or an error (after which hyper polls no more): the response is done
        // with its place in the limit.
        let ended = match &frame {
            Some(Ok(_)) => this.inner.is_end_stream(),
            None | Some(Err(_)) => true,
        };
        if ended {
            drop(this.lease.take());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for LimitBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitBody")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}
