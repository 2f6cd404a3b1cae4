//! `Aimd`: additive increase, multiplicative decrease, on overloads.

use std::time::Duration;

use super::{Algorithm, Sample};

/// Loss-based limit: backs off on overloads, grows while the limit holds items back.
///
/// - **On an overload** (an item's [`overload_if`](crate::TaskBuilder::overload_if) said so,
///   its run [`timeout`](crate::TaskBuilder::timeout) ended it, or it ran longer than
///   [`latency_limit`](Self::latency_limit)), the limit is multiplied by
///   [`backoff`](Self::backoff), once per round: the overloads of items that were let start
///   under a higher limit than the one in force (they started before the last back-off) do
///   not back it off again, so one burst of errors is one decrease, not a collapse to the
///   minimum.
/// - **On a sample of an item that found the limit full** and was no overload, the limit grows
///   by `step / limit`: by `step` per round of `limit` items. The step starts at
///   [`increase`](Self::increase) and doubles after every round without an overload, up to the
///   limit itself (so the limit at most doubles per round, as in TCP's slow start); an
///   overload resets it. So a limiter that starts low, or whose downstream has just grown,
///   ramps up in a few rounds rather than one item per round.
/// - **Other samples** (the limiter had fewer items than its limit; a panic; items held back
///   by a [cap](super::Sample::capped) below the limit) change nothing: a limiter that is
///   handed little work does not inflate its limit, nor does one that a cap holds back.
///
/// With an overload signal and nothing else, the limit settles in a saw-tooth just under the
/// point where the downstream starts to refuse: between about `backoff × capacity` and the
/// capacity.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use task_limiter::adaptive::Aimd;
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::builder()
///     .adaptive(Aimd::new().backoff(0.8).latency_limit(Duration::from_millis(250)))
///     .limit(8)
///     .max_limit(256)
///     .build();
/// let reply = limiter
///     .build_task()
///     .overload_if(|reply: &Result<u32, u16>| matches!(reply, Err(429 | 503)))
///     .spawn(async { Ok::<u32, u16>(200) });
/// assert_eq!(reply.await.unwrap(), Ok(200));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Aimd {
    backoff: f64,
    increase: f64,
    latency_limit: Option<Duration>,
    /// The limit as a real number: growth by `step / limit` per sample needs fractions.
    estimate: f64,
    step: f64,
    /// Saturated samples without an overload since the step last changed.
    calm: usize,
}

impl Aimd {
    /// `Aimd` with its defaults: backoff 0.9, increase 1, no latency limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Aimd;
    ///
    /// let aimd = Aimd::new();
    /// # drop(aimd);
    /// ```
    pub fn new() -> Aimd {
        Aimd {
            backoff: 0.9,
            increase: 1.0,
            latency_limit: None,
            estimate: 0.0,
            step: 1.0,
            calm: 0,
        }
    }

    /// The factor the limit is multiplied by on an overload (default 0.9).
    ///
    /// # Panics
    ///
    /// Panics unless `0 < backoff < 1`.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Aimd;
    ///
    /// let aimd = Aimd::new().backoff(0.5);
    /// # drop(aimd);
    /// ```
    #[track_caller]
    pub fn backoff(mut self, backoff: f64) -> Aimd {
        assert!(
            backoff > 0.0 && backoff < 1.0,
            "task_limiter: `Aimd::backoff` must be above 0 and below 1, not {backoff}"
        );
        self.backoff = backoff;
        self
    }

    /// How much the limit grows per round of `limit` items, at first and after each overload
    /// (default 1). The step doubles after every round without an overload.
    ///
    /// # Panics
    ///
    /// Panics unless `increase` is above 0 and finite.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Aimd;
    ///
    /// let aimd = Aimd::new().increase(2.0);
    /// # drop(aimd);
    /// ```
    #[track_caller]
    pub fn increase(mut self, increase: f64) -> Aimd {
        assert!(
            increase > 0.0 && increase.is_finite(),
            "task_limiter: `Aimd::increase` must be above 0 and finite, not {increase}"
        );
        self.increase = increase;
        self.step = increase;
        self
    }

    /// Counts an item that ran longer than `limit` as an overload (default: none does).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::adaptive::Aimd;
    ///
    /// let aimd = Aimd::new().latency_limit(Duration::from_millis(100));
    /// # drop(aimd);
    /// ```
    pub fn latency_limit(mut self, limit: Duration) -> Aimd {
        self.latency_limit = Some(limit);
        self
    }
}

impl Default for Aimd {
    fn default() -> Aimd {
        Aimd::new()
    }
}

impl Algorithm for Aimd {
    /// It does not: it reads run times and overloads only.
    fn uses_queue_wait(&self) -> bool {
        false
    }

    fn update(&mut self, sample: &Sample, limit: usize) -> usize {
        // Start again from the limit in force when someone else set it.
        if self.estimate as usize != limit {
            self.estimate = limit as f64;
        }
        if sample.panicked() {
            return limit;
        }
        let overload = sample.is_overload()
            || self
                .latency_limit
                .is_some_and(|most| sample.run_time() > most);
        if overload {
            // An item let start under a higher limit than the one in force started before
            // the last back-off: its overload is already answered. One let start under a cap
            // saw the downstream overloaded at the cap: back off from there (the limit in force
            // then, the algorithm's, is below the cap, so the next ones are answered too).
            if sample.limit() <= limit {
                let from = match sample.capped() {
                    true => self.estimate.min(sample.limit() as f64),
                    false => self.estimate,
                };
                self.estimate = (from * self.backoff).max(1.0);
            }
            self.step = self.increase;
            self.calm = 0;
        } else if sample.found_limit_full() {
            self.estimate += self.step / self.estimate;
            self.calm += 1;
            if self.calm >= limit {
                self.calm = 0;
                self.step = (self.step * 2.0).min(self.estimate);
            }
        }
        self.estimate as usize
    }
}
