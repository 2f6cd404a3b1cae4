use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use task_limiter::adaptive::Overload;
use task_limiter::{Acquire, Key, Lease, Limiter};
use tower_service::Service;

use crate::body::LimitBody;
use crate::per_request::PerRequest;
use crate::refusal::{OnRefused, Refusal};

/// The request side of a layer: what the limiter is asked for.
#[derive(Clone)]
pub(crate) struct Admit<K, W, P> {
    pub(crate) limiter: Limiter,
    pub(crate) key: K,
    pub(crate) weight: W,
    pub(crate) priority: P,
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) max_queued: Option<QueueBound>,
}

/// The response side of a layer: what a grant or a refusal turns into.
#[derive(Clone)]
pub(crate) struct Respond<O, R> {
    pub(crate) overload: O,
    pub(crate) refused: R,
    pub(crate) release_at_head: bool,
    pub(crate) retry_after: Duration,
}

/// The layer's bound on waiting requests, shared by every service the layer (and its clones)
/// builds. Leases are not bounded by the limiter's `max_queued`, so the layer counts its own.
#[derive(Clone)]
pub(crate) struct QueueBound {
    pub(crate) max: usize,
    pub(crate) waiting: Arc<AtomicUsize>,
}

/// A request's place among the waiting ones, held from its first wait until it is admitted
/// or gone.
struct QueuePlace {
    bound: QueueBound,
    held: bool,
}

impl QueuePlace {
    /// Takes a place if one is free; true if the request may wait.
    fn enter(&mut self) -> bool {
        if self.held {
            return true;
        }
        // A plain counter: it publishes no other data, so `Relaxed` suffices; the
        // read-modify-write keeps the bound exact however many threads race for the last place.
        if self.bound.waiting.fetch_add(1, Ordering::Relaxed) >= self.bound.max {
            self.bound.waiting.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.held = true;
        true
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        if self.held {
            let before = self.bound.waiting.fetch_sub(1, Ordering::Relaxed);
            debug_assert!(before > 0, "a queue place given back twice");
        }
    }
}

/// The service built by [`LimitLayer`](crate::LimitLayer): admits each request through the
/// layer's [`Limiter`] before calling the inner service.
///
/// Admission happens in [`call`](Service::call), not in [`poll_ready`](Service::poll_ready),
/// which only forwards to the inner service: an idle keep-alive connection holds no place in
/// the limit. The request waits in the limiter's queue (in its order, keys taking turns) for a
/// [`Lease`]; then the inner service is called with the lease's
/// [`WorkerId`](task_limiter::WorkerId) in the request's extensions, and the lease is held by
/// the response body ([`LimitBody`]) until the body has ended or been dropped. A refused
/// request never reaches the inner service: the layer's
/// [`on_refused`](crate::LimitLayer::on_refused) answers it, so the error type is the inner
/// service's own.
///
/// Clones share the limiter (and the layer's [`max_queued`](crate::LimitLayer::max_queued)
/// count). `call` calls the inner service that `poll_ready` made ready: at once if a lease is
/// free, or after the wait, the ready service moving into the [`ResponseFuture`] and a clone
/// taking its place. The [`overload_if`](crate::LimitLayer::overload_if) and
/// [`on_refused`](crate::LimitLayer::on_refused) closures are cloned into each response future:
/// put what they capture behind an `Arc`.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use task_limiter::{Limiter, WorkerId};
/// use task_limiter_tower::{LimitLayer, LimitService};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// let limiter = Limiter::new(8);
/// let service: LimitService<_> = LimitLayer::new(limiter).layer(service_fn(
///     |req: http::Request<()>| async move {
///         // The lease's worker ID, to index per-worker state with.
///         let worker = *req.extensions().get::<WorkerId>().unwrap();
///         Ok::<_, std::convert::Infallible>(http::Response::new(worker.to_string()))
///     },
/// ));
/// let response = service.oneshot(http::Request::new(())).await.unwrap();
/// assert!(response.into_body().into_inner().starts_with("worker-"));
/// # }
/// ```
pub struct LimitService<S, K = (), W = (), P = (), O = (), R = ()> {
    inner: S,
    admit: Arc<Admit<K, W, P>>,
    /// Cloned into each response future (closures without captures are free to clone), so
    /// that no request touches a reference count shared by every connection for it.
    respond: Respond<O, R>,
}

impl<S, K, W, P, O, R> LimitService<S, K, W, P, O, R> {
    pub(crate) fn new(
        inner: S,
        admit: Arc<Admit<K, W, P>>,
        respond: Respond<O, R>,
    ) -> LimitService<S, K, W, P, O, R> {
        LimitService {
            inner,
            admit,
            respond,
        }
    }

    /// The limiter that admits the requests.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::LimitLayer;
    /// use tower::{service_fn, Layer};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    ///
    /// let service = LimitLayer::new(Limiter::new(8)).layer(service_fn(|()| async { Ok::<_, ()>(()) }));
    /// assert_eq!(service.limiter().limit(), 8);
    /// # }
    /// ```
    pub fn limiter(&self) -> &Limiter {
        &self.admit.limiter
    }

    /// The inner service.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::LimitLayer;
    /// use tower::Layer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    ///
    /// let service = LimitLayer::new(Limiter::new(8)).layer(7);
    /// assert_eq!(*service.get_ref(), 7);
    /// # }
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::LimitLayer;
    /// use tower::Layer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    ///
    /// let mut service = LimitLayer::new(Limiter::new(8)).layer(7);
    /// *service.get_mut() += 1;
    /// assert_eq!(service.into_inner(), 8);
    /// # }
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service, returning the inner one.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::LimitLayer;
    /// use tower::Layer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    ///
    /// let service = LimitLayer::new(Limiter::new(8)).layer("inner");
    /// assert_eq!(service.into_inner(), "inner");
    /// # }
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K, W, P, O: Clone, R: Clone> Clone for LimitService<S, K, W, P, O, R> {
    fn clone(&self) -> Self {
        LimitService {
            inner: self.inner.clone(),
            admit: self.admit.clone(),
            respond: self.respond.clone(),
        }
    }
}

impl<S: fmt::Debug, K, W, P, O, R> fmt::Debug for LimitService<S, K, W, P, O, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitService")
            .field("inner", &self.inner)
            .field("limiter", &self.admit.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody, K, W, P, O, R> Service<Request<ReqBody>>
    for LimitService<S, K, W, P, O, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: PerRequest<ReqBody, Option<Key>>,
    W: PerRequest<ReqBody, u32>,
    P: PerRequest<ReqBody, i32>,
    O: Overload<Response<ResBody>> + Clone,
    R: OnRefused<ResBody> + Clone,
{
    type Response = Response<LimitBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, O, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let admit = &*self.admit;
        let key = admit.key.get(&request).flatten();
        let weight = admit.weight.get(&request).map(|weight| weight.max(1));
        let priority = admit.priority.get(&request);
        let task = || {
            let mut task = admit.limiter.build_task();
            if let Some(key) = &key {
                task = task.key(key);
            }
            if let Some(weight) = weight {
                task = task.weight(weight);
            }
            if let Some(priority) = priority {
                task = task.priority(priority);
            }
            task
        };
        // A lease now (nothing queued and room in the limits) calls the service `poll_ready`
        // made ready at once; this is the path of a limit that is not reached.
        let state = match task().try_acquire() {
            Ok(lease) => {
                request.extensions_mut().insert(lease.worker());
                State::Calling {
                    future: self.inner.call(request),
                    lease: Some(lease),
                }
            }
            Err(_) => {
                // The request waits (or is refused: `Acquire` says why): the ready service
                // moves into the future, to be called after the wait, and a clone takes its
                // place. The queue timeout is the request's queue deadline in the limiter (one
                // timer for all of them, in its manager).
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                let task = match admit.queue_timeout {
                    Some(timeout) => task().queue_timeout(timeout),
                    None => task(),
                };
                State::Admitting {
                    acquire: task.acquire(),
                    service: Some(service),
                    request: Some(request),
                    queue: admit
                        .max_queued
                        .clone()
                        .map(|bound| QueuePlace { bound, held: false }),
                }
            }
        };
        ResponseFuture {
            state,
            key,
            respond: self.respond.clone(),
        }
    }
}

pin_project! {
    /// Future returned by [`LimitService`]'s `call`: waits for a lease, then calls the inner
    /// service and resolves to its response, its body holding the lease.
    ///
    /// # Cancel safety
    ///
    /// Dropping it while it waits (hyper does when the client disconnects) takes the request
    /// out of the limiter's queue at once, and the inner service is never called; dropping it
    /// while the inner service runs drops the inner future and ends the lease.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use task_limiter::Limiter;
    /// use task_limiter_tower::{LimitLayer, ResponseFuture};
    /// use tower::{service_fn, Layer, Service};
    ///
    /// let limiter = Limiter::new(1);
    /// let mut service = LimitLayer::new(limiter.clone()).layer(service_fn(|_: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// }));
    /// let held = limiter.acquire().await.unwrap();
    /// let waiting: ResponseFuture<_, ()> = service.call(http::Request::new(()));
    /// let mut waiting = tokio_test::task::spawn(waiting);
    /// assert!(waiting.poll().is_pending());
    /// assert_eq!(limiter.metrics().queued, 1);
    /// drop(waiting); // the client went away: its place is freed at once
    /// drop(held);
    /// assert!(limiter.try_acquire().is_ok());
    /// # }
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, ReqBody, O = (), R = ()>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        key: Option<Key>,
        respond: Respond<O, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Admitting {
            acquire: Acquire,
            service: Option<S>,
            request: Option<Request<ReqBody>>,
            queue: Option<QueuePlace>,
        },
        Calling {
            #[pin]
            future: S::Future,
            lease: Option<Lease>,
        },
        Done,
    }
}

impl<S, ReqBody, ResBody, O, R> Future for ResponseFuture<S, ReqBody, O, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    O: Overload<Response<ResBody>>,
    R: OnRefused<ResBody>,
{
    type Output = Result<Response<LimitBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Admitting {
                    acquire,
                    service,
                    request,
                    queue,
                } => {
                    let refusal = match Pin::new(acquire).poll(cx) {
                        Poll::Ready(Ok(lease)) => {
                            let mut request = request.take().expect("admitted once");
                            request.extensions_mut().insert(lease.worker());
                            let future = service.take().expect("admitted once").call(request);
                            this.state.set(State::Calling {
                                future,
                                lease: Some(lease),
                            });
                            continue;
                        }
                        Poll::Ready(Err(err)) => {
                            Refusal::acquire(err, this.key.take(), this.respond.retry_after)
                        }
                        Poll::Pending => {
                            if !queue.as_mut().is_none_or(QueuePlace::enter) {
                                Refusal::full(this.key.take(), this.respond.retry_after)
                            } else {
                                return Poll::Pending;
                            }
                        }
                    };
                    // Drops the request's entry in the limiter's queue (if it has one) now,
                    // not when the response is dropped.
                    this.state.set(State::Done);
                    let response = this.respond.refused.on_refused(refusal);
                    return Poll::Ready(Ok(response.map(|body| LimitBody::new(body, None))));
                }
                StateProj::Calling { future, lease } => {
                    let result = std::task::ready!(future.poll(cx));
                    let mut lease = lease
                        .take()
                        .expect("`ResponseFuture` polled after it resolved");
                    this.state.set(State::Done);
                    return Poll::Ready(match result {
                        Ok(response) => {
                            if this.respond.overload.is_overload(&response) {
                                lease.set_overload(true);
                            }
                            let lease = match this.respond.release_at_head {
                                true => None,
                                false => Some(lease),
                            };
                            Ok(response.map(|body| LimitBody::new(body, lease)))
                        }
                        Err(err) => Err(err),
                    });
                }
                StateProj::Done => panic!("`ResponseFuture` polled after it resolved"),
            }
        }
    }
}

impl<S, ReqBody, O, R> fmt::Debug for ResponseFuture<S, ReqBody, O, R>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Admitting { .. } => "admitting",
            State::Calling { .. } => "calling",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}
