use http::Request;

/// A value the layer takes from each request (its key, weight or priority): set with
/// [`LimitLayer::key`](crate::LimitLayer::key), [`weight`](crate::LimitLayer::weight) and
/// [`priority`](crate::LimitLayer::priority).
///
/// Implemented for closures `Fn(&Request<B>) -> T`, and for `()`, which gives nothing (the
/// limiter's default: no key, weight 1, priority 0).
///
/// # Examples
///
/// ```
/// use http::Request;
/// use task_limiter_tower::PerRequest;
///
/// let weight = |req: &Request<()>| if req.uri().path() == "/export" { 4 } else { 1 };
/// let export = Request::builder().uri("/export").body(()).unwrap();
/// assert_eq!(weight.get(&export), Some(4));
/// assert_eq!(PerRequest::<(), u32>::get(&(), &export), None);
/// ```
pub trait PerRequest<B, T> {
    /// The value for `request`; `None` leaves the limiter's default.
    fn get(&self, request: &Request<B>) -> Option<T>;
}

impl<B, T> PerRequest<B, T> for () {
    #[inline]
    fn get(&self, _: &Request<B>) -> Option<T> {
        None
    }
}

impl<B, T, F> PerRequest<B, T> for F
where
    F: Fn(&Request<B>) -> T,
{
    #[inline]
    fn get(&self, request: &Request<B>) -> Option<T> {
        Some(self(request))
    }
}
