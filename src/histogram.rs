//! A distribution of durations in fixed log-scale buckets: recorded with one relaxed atomic add
//! per bucket and one for the sum, without a lock, and read as a [`Histogram`] snapshot.
//!
//! The buckets are those of an HDR histogram with three bits of sub-bucket precision: eight
//! buckets of one nanosecond each below 8 ns, then every power of two is cut into eight equal
//! buckets, up to 2^42 ns (about 73 minutes). A bucket's width is at most an eighth of its lower
//! bound, so a quantile read at a bucket's midpoint is within 6.25 % of a value recorded in it.
//! Longer durations are counted in the last bucket (their sum stays exact).

use std::fmt;
use std::time::Duration;

use crate::sync::{AtomicU64, Ordering};

/// Sub-bucket bits: each power of two is cut into `1 << SUB_BITS` buckets.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// The largest power of two with buckets of its own: values from `2^MAX_EXP` on go in the last
/// bucket.
const MAX_EXP: u32 = 41;
/// Buckets: `SUB` of one nanosecond, then `SUB` per power of two from `2^SUB_BITS` to
/// `2^MAX_EXP`.
const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;

/// The bucket of `ns` nanoseconds.
fn index(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros();
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = (ns >> (exp - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(exp - SUB_BITS) * SUB + sub) as usize
}

/// The bounds of bucket `i`, in nanoseconds: `[lower, upper)`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i + 1);
    }
    let exp = (i - SUB) / SUB + u64::from(SUB_BITS);
    let sub = (i - SUB) % SUB;
    let unit = 1u64 << (exp - u64::from(SUB_BITS));
    ((SUB + sub) * unit, (SUB + sub + 1) * unit)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The recording side: one atomic counter per bucket and one sum, shared by every thread that
/// records. Relaxed throughout: each add stands alone, and a snapshot claims no more than to
/// have read each counter once.
pub(crate) struct Buckets {
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Buckets {
    pub(crate) fn new() -> Buckets {
        Buckets {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    #[inline]
    pub(crate) fn record(&self, duration: Duration) {
        let ns = nanos(duration);
        self.counts[index(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Reads every counter once.
    pub(crate) fn snapshot(&self) -> Histogram {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect();
        Histogram {
            count: counts.iter().sum(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            counts,
        }
    }
}

/// A snapshot of a distribution of durations: how many were recorded, their sum, and how many
/// fell in each of a fixed set of log-scale buckets, from which it reads quantiles.
///
/// Taken by [`Limiter::distributions`](crate::Limiter::distributions) for the queue waits and
/// the run times of a limiter built with
/// [`Builder::distributions`](crate::Builder::distributions).
///
/// The buckets are fixed, the same for every histogram: one nanosecond wide below 8 ns, then
/// each power of two cut into eight equal buckets, up to 2^42 ns (about 73 minutes); longer
/// durations fall in the last bucket. A quantile is read at the midpoint of the bucket it falls
/// in, so it is within 6.25 % of a duration that was recorded there. The sum is exact.
///
/// Recording goes on while a snapshot is read, counter by counter: under load, `count` and
/// `sum` may disagree by the durations recorded in between.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = Limiter::builder().limit(1).distributions(true).build();
/// for ms in [10, 20, 30, 40] {
///     limiter
///         .spawn(tokio::time::sleep(Duration::from_millis(ms)))
///         .await
///         .unwrap();
/// }
/// let run_time = limiter.distributions().unwrap().run_time;
/// assert_eq!(run_time.count(), 4);
/// assert_eq!(run_time.sum(), Duration::from_millis(100));
/// assert_eq!(run_time.mean(), Some(Duration::from_millis(25)));
/// let median = run_time.quantile(0.5).unwrap();
/// assert!(median.abs_diff(Duration::from_millis(20)) <= Duration::from_millis(2));
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    count: u64,
    sum_ns: u64,
    counts: Vec<u64>,
}

impl Histogram {
    /// How many durations were recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().distributions(true).build();
    /// limiter.run(async {}).await.unwrap();
    /// let distributions = limiter.distributions().unwrap();
    /// assert_eq!(distributions.queue_wait.count(), 1);
    /// assert_eq!(distributions.run_time.count(), 1);
    /// # }
    /// ```
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the durations recorded (exact, not read from the buckets).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::builder().distributions(true).build();
    /// let lease = limiter.acquire().await.unwrap();
    /// tokio::time::sleep(Duration::from_secs(3)).await;
    /// drop(lease);
    /// assert_eq!(limiter.distributions().unwrap().run_time.sum(), Duration::from_secs(3));
    /// # }
    /// ```
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns)
    }

    /// The mean duration, or `None` if none was recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().distributions(true).build();
    /// assert_eq!(limiter.distributions().unwrap().run_time.mean(), None);
    /// # }
    /// ```
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.sum_ns / self.count))
    }

    /// The `q`-quantile (`q` in `0.0..=1.0`, clamped to it; 0.5 is the median, 0.99 the 99th
    /// percentile): the midpoint of the bucket that holds the `ceil(q * count)`-th smallest
    /// duration (the smallest for `q = 0`). `None` if none was recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::builder().limit(1).distributions(true).build();
    /// // One slow item among nine fast ones.
    /// for ms in [1, 1, 1, 1, 1, 1, 1, 1, 1, 500] {
    ///     limiter.run(tokio::time::sleep(Duration::from_millis(ms))).await.unwrap();
    /// }
    /// let run_time = limiter.distributions().unwrap().run_time;
    /// let p50 = run_time.quantile(0.5).unwrap();
    /// let p99 = run_time.quantile(0.99).unwrap();
    /// assert!(p50 < Duration::from_millis(2));
    /// assert!(p99 > Duration::from_millis(450));
    /// # }
    /// ```
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (lower, upper) = bounds(i);
                return Some(Duration::from_nanos(lower + (upper - lower) / 2));
            }
        }
        // A snapshot whose count ran ahead of its buckets: the last one that holds any.
        let last = self.counts.iter().rposition(|&n| n > 0).unwrap_or(0);
        Some(Duration::from_nanos(bounds(last).0))
    }

    /// The buckets that hold any duration, shortest first: each bucket's upper bound
    /// (exclusive) and how many durations fell in it. For exporters that keep their own
    /// buckets; the last bucket, which also holds every longer duration, reports 2^42 ns.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::builder().distributions(true).build();
    /// limiter.run(tokio::time::sleep(Duration::from_millis(5))).await.unwrap();
    /// let buckets: Vec<_> = limiter.distributions().unwrap().run_time.buckets().collect();
    /// assert_eq!(buckets.len(), 1);
    /// let (upper, count) = buckets[0];
    /// assert!(upper > Duration::from_millis(5) && count == 1);
    /// # }
    /// ```
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(i, &n)| (Duration::from_nanos(bounds(i).1), n))
    }
}

impl Histogram {
    /// Every bucket, shortest first: its midpoint and its count (for the exporter).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn bucket_counts(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        self.counts.iter().enumerate().map(|(i, &n)| {
            let (lower, upper) = bounds(i);
            (Duration::from_nanos(lower + (upper - lower) / 2), n)
        })
    }

    /// Bucket `i`'s count.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn bucket_count(&self, i: usize) -> u64 {
        self.counts.get(i).copied().unwrap_or(0)
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("sum", &self.sum())
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range() {
        let mut expected_lower = 0;
        for i in 0..BUCKETS {
            let (lower, upper) = bounds(i);
            assert_eq!(lower, expected_lower, "bucket {i}");
            assert!(upper > lower);
            // At most an eighth of the lower bound wide (past the one-nanosecond buckets).
            if lower >= SUB {
                assert!((upper - lower) * SUB <= lower, "bucket {i}");
            }
            assert_eq!(index(lower), i);
            assert_eq!(index(upper - 1), i);
            expected_lower = upper;
        }
        assert_eq!(expected_lower, 1 << (MAX_EXP + 1));
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }
}
