//! `Gradient`: a latency-based limit against a baseline measured at low concurrency.

use super::{Algorithm, Sample};

/// Latency-based limit, in the family of Netflix's Gradient2 and Envoy's adaptive concurrency
/// filter: shrinks the limit as run times grow past a baseline, grows it while they do not.
///
/// - **The baseline** is the run time of the downstream when it is not queueing. It is
///   *measured*, not inferred: at the first sample and then every
///   [`probe_every`](Self::probe_every) samples, the limit drops to
///   [`probe_limit`](Self::probe_limit) (or stays where it is, if lower) until
///   [`probe_samples`](Self::probe_samples) items
///   admitted under it have ended; their mean run time is the baseline, and the limit goes
///   back to where it was. Between probes the baseline only ever moves down (to a lower
///   recent average), never up: sustained load cannot drag it upwards (the drift reported
///   against Gradient2 and Envoy), and a latency spike does not pollute it. A downstream that
///   really got slower is seen at the next probe, which also lifts a limit that sank to the
///   minimum.
/// - **Each round** of [`window`](Self::window) samples (default 10) of items let start under
///   the limit in force (the items admitted under an earlier limit are still draining and say
///   nothing of this one) gives the mean run time of the round, and the gradient
///   `clamp(tolerance × baseline / average, 0.5, 1)`. The limit moves towards
///   `(limit + √limit) × gradient`: down at once, up by [`smoothing`](Self::smoothing) of the
///   way. Without queueing (gradient 1) it grows by `smoothing × √limit` per round, and that
///   growth doubles each round while the downstream does not queue (as in TCP's slow
///   start); with the downstream queueing it settles a few items past the downstream's
///   capacity (about `√capacity`); at worst it halves per round.
/// - **It grows only in rounds with items that found the limit full**, so a limiter that is
///   handed less work than its limit does not drift upwards.
/// - **An overload** (see [`overload_if`](crate::TaskBuilder::overload_if)) backs the limit
///   off by [`backoff`](Self::backoff), once per round, as [`Aimd`](super::Aimd) does, even
///   while run times look fine. Panicked items are skipped.
///
/// The probes cost some throughput: with the defaults, a few rounds at 4 items in every
/// 2,000 samples.
///
/// # Examples
///
/// ```
/// use task_limiter::adaptive::Gradient;
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::builder()
///     .adaptive(Gradient::new().tolerance(1.2).probe_every(5_000))
///     .limit(16)
///     .max_limit(512)
///     .build();
/// assert_eq!(limiter.spawn(async { 1 }).await.unwrap(), 1);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Gradient {
    smoothing: f64,
    tolerance: f64,
    window: usize,
    backoff: f64,
    probe_limit: usize,
    probe_samples: usize,
    probe_every: usize,
    /// The limit as a real number.
    estimate: f64,
    /// The run times of the round under way.
    round: Round,
    /// What the limit grows by per round while the downstream does not queue.
    growth: f64,
    /// The baseline run time, in seconds; `None` until the first probe ends.
    baseline: Option<f64>,
    probe: Probe,
    /// Samples since the last probe ended.
    since_probe: usize,
}

/// The samples of one round: items let start under the limit in force.
#[derive(Clone, Debug, Default)]
struct Round {
    sum: f64,
    samples: usize,
    /// Some item of the round found the limit full.
    full: bool,
    /// Some item reported an overload during the round.
    overloaded: bool,
}

/// Where the baseline probe stands.
#[derive(Clone, Debug)]
enum Probe {
    /// Due at the next sample.
    Due,
    /// Under way: the limit to go back to, and the run times summed so far.
    Running {
        resume: f64,
        /// The probe's limit: `probe_limit`, or the limit in force if that is lower.
        at: usize,
        sum: f64,
        samples: usize,
    },
    Done,
}

impl Gradient {
    /// `Gradient` with its defaults: smoothing 0.5, tolerance 1.0, window 10, backoff 0.9,
    /// probes at 4 items for 16 samples every 2,000 samples.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Gradient;
    ///
    /// let gradient = Gradient::new();
    /// # drop(gradient);
    /// ```
    pub fn new() -> Gradient {
        Gradient {
            smoothing: 0.5,
            tolerance: 1.0,
            window: 10,
            backoff: 0.9,
            probe_limit: 4,
            probe_samples: 16,
            probe_every: 2000,
            estimate: 0.0,
            round: Round::default(),
            growth: 0.0,
            baseline: None,
            probe: Probe::Due,
            since_probe: 0,
        }
    }

    /// How far the limit grows towards its target per round, from 0 (not at all) to 1 (all
    /// the way); default 0.5. It falls to its target at once.
    ///
    /// # Panics
    ///
    /// Panics unless `0 < smoothing <= 1`.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Gradient;
    ///
    /// let gradient = Gradient::new().smoothing(0.1);
    /// # drop(gradient);
    /// ```
    #[track_caller]
    pub fn smoothing(mut self, smoothing: f64) -> Gradient {
        assert!(
            smoothing > 0.0 && smoothing <= 1.0,
            "task_limiter: `Gradient::smoothing` must be above 0 and at most 1, not {smoothing}"
        );
        self.smoothing = smoothing;
        self
    }

    /// How much slower than the baseline run times may get before the limit shrinks, as a
    /// factor (default 1.0: any queueing counts). Above 1 trades latency for throughput
    /// against a noisy downstream.
    ///
    /// # Panics
    ///
    /// Panics unless `tolerance >= 1` and finite.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Gradient;
    ///
    /// let gradient = Gradient::new().tolerance(1.5);
    /// # drop(gradient);
    /// ```
    #[track_caller]
    pub fn tolerance(mut self, tolerance: f64) -> Gradient {
        assert!(
            (1.0..f64::INFINITY).contains(&tolerance),
            "task_limiter: `Gradient::tolerance` must be at least 1 and finite, not {tolerance}"
        );
        self.tolerance = tolerance;
        self
    }

    /// How many samples make a round, the unit the limit is recomputed in (default 10).
    ///
    /// # Panics
    ///
    /// Panics if `samples` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Gradient;
    ///
    /// let gradient = Gradient::new().window(20);
    /// # drop(gradient);
    /// ```
    #[track_caller]
    pub fn window(mut self, samples: usize) -> Gradient {
        assert!(
            samples > 0,
            "task_limiter: `Gradient::window` must be at least 1"
        );
        self.window = samples;
        self
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
    /// use task_limiter::adaptive::Gradient;
    ///
    /// let gradient = Gradient::new().backoff(0.7);
    /// # drop(gradient);
    /// ```
    #[track_caller]
    pub fn backoff(mut self, backoff: f64) -> Gradient {
        assert!(
            backoff > 0.0 && backoff < 1.0,
            "task_limiter: `Gradient::backoff` must be above 0 and below 1, not {backoff}"
        );
        self.backoff = backoff;
        self
    }

    /// The limit during a baseline probe (default 4; never below
    /// [`Builder::min_limit`](crate::Builder::min_limit)). It should be a concurrency the
    /// downstream serves without queueing.
    ///
    /// # Panics
    ///
    /// Panics if `limit` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Gradient;
    ///
    /// let gradient = Gradient::new().probe_limit(2);
    /// # drop(gradient);
    /// ```
    #[track_caller]
    pub fn probe_limit(mut self, limit: usize) -> Gradient {
        assert!(
            limit > 0,
            "task_limiter: `Gradient::probe_limit` must be at least 1"
        );
        self.probe_limit = limit;
        self
    }

    /// How many items admitted under the probe's limit a probe waits for (default 16).
    ///
    /// # Panics
    ///
    /// Panics if `samples` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Gradient;
    ///
    /// let gradient = Gradient::new().probe_samples(32);
    /// # drop(gradient);
    /// ```
    #[track_caller]
    pub fn probe_samples(mut self, samples: usize) -> Gradient {
        assert!(
            samples > 0,
            "task_limiter: `Gradient::probe_samples` must be at least 1"
        );
        self.probe_samples = samples;
        self
    }

    /// How many samples pass between the end of one baseline probe and the start of the next
    /// (default 2,000).
    ///
    /// # Panics
    ///
    /// Panics if `samples` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Gradient;
    ///
    /// let gradient = Gradient::new().probe_every(10_000);
    /// # drop(gradient);
    /// ```
    #[track_caller]
    pub fn probe_every(mut self, samples: usize) -> Gradient {
        assert!(
            samples > 0,
            "task_limiter: `Gradient::probe_every` must be at least 1"
        );
        self.probe_every = samples;
        self
    }

    /// Goes on with a probe; returns the limit to use while it runs, or `None` once it has
    /// ended (the baseline is then set).
    fn probe(&mut self, sample: &Sample, run_time: f64) -> Option<usize> {
        match &mut self.probe {
            Probe::Done => None,
            Probe::Due => {
                // A probe never raises the limit.
                let at = self.probe_limit.min(self.estimate as usize).max(1);
                self.probe = Probe::Running {
                    at,
                    resume: self.estimate,
                    sum: 0.0,
                    samples: 0,
                };
                Some(at)
            }
            Probe::Running {
                at,
                resume,
                sum,
                samples,
            } => {
                // Only items admitted under the probe's limit measure the unqueued downstream;
                // the ones started before it are still draining.
                if sample.limit() <= *at {
                    *sum += run_time;
                    *samples += 1;
                }
                if *samples < self.probe_samples {
                    return Some(*at);
                }
                self.baseline = Some(*sum / *samples as f64);
                self.estimate = *resume;
                self.round = Round::default();
                self.probe = Probe::Done;
                self.since_probe = 0;
                None
            }
        }
    }
}

impl Default for Gradient {
    fn default() -> Gradient {
        Gradient::new()
    }
}

impl Algorithm for Gradient {
    /// It does not: it reads run times and overloads only.
    fn uses_queue_wait(&self) -> bool {
        false
    }

    fn update(&mut self, sample: &Sample, limit: usize) -> usize {
        let probing = matches!(self.probe, Probe::Running { .. });
        if !probing && self.estimate as usize != limit {
            self.estimate = limit as f64;
            self.round = Round::default();
        }
        if sample.panicked() {
            return limit;
        }
        let run_time = sample.run_time().as_secs_f64();
        match self.probe(sample, run_time) {
            Some(limit) => return limit,
            // The probe ended with this sample: back to the limit from before it.
            None if probing => return self.estimate as usize,
            None => {}
        }
        self.since_probe += 1;
        if self.since_probe >= self.probe_every {
            self.probe = Probe::Due;
        }
        if sample.is_overload() {
            // Once per round, as `Aimd` does: an item let start under a higher limit started
            // before the last back-off.
            if sample.limit() <= limit {
                self.estimate = (self.estimate * self.backoff).max(1.0);
            }
            // Nor may the round it fell in grow the limit.
            self.round.overloaded = true;
            self.growth = 0.0;
            return self.estimate as usize;
        }
        // Only items let start under the limit in force say what it does to run times; the
        // ones admitted under an earlier limit are still draining.
        if sample.limit() != limit {
            return self.estimate as usize;
        }
        let round = &mut self.round;
        round.sum += run_time;
        round.samples += 1;
        round.full |= sample.found_limit_full();
        if round.samples < self.window {
            return self.estimate as usize;
        }
        let average = round.sum / round.samples as f64;
        let full = round.full && !round.overloaded;
        self.round = Round::default();
        let baseline = self
            .baseline
            .map_or(average, |baseline| baseline.min(average));
        self.baseline = Some(baseline);
        let gradient = if average > 0.0 {
            (self.tolerance * baseline / average).clamp(0.5, 1.0)
        } else {
            1.0
        };
        // Vegas's estimate of the items queueing in the downstream. Well under the queue the
        // target allows, the growth doubles each round, as in TCP's slow start, so that a
        // limit far under the downstream's capacity gets there in a few rounds; otherwise it
        // is the square root of the limit.
        let queue = self.estimate * (1.0 - gradient);
        let room = self.estimate.sqrt();
        self.growth = match queue < room / 2.0 && full {
            true => (self.growth * 2.0).clamp(room, self.estimate),
            false => room,
        };
        // The growth is scaled by the gradient too, so that a downstream that queues at
        // any limit drives the limit all the way down to the minimum.
        let mut target = (self.estimate + self.growth) * gradient;
        if !full {
            // The limiter had less work than its limit: never grow on that.
            target = target.min(self.estimate);
        }
        // Down at once (queueing inflates every latency), up by `smoothing`.
        self.estimate = match target < self.estimate {
            true => target.max(1.0),
            false => self.estimate + self.smoothing * (target - self.estimate),
        };
        self.estimate as usize
    }
}
