//! `Gradient`: a latency-based limit against a baseline measured at low concurrency.

use super::{Algorithm, Sample};

/// Latency-based limit, in the family of Netflix's Gradient2 and Envoy's adaptive concurrency
/// filter: shrinks the limit as run times grow past a baseline, grows it while they do not.
///
/// - **The baseline** is the run time of the downstream when it is not queueing. It is
///   *measured*, not inferred: a probe drops the limit to [`probe_limit`](Self::probe_limit)
///   (or keeps it, if lower) until [`probe_samples`](Self::probe_samples) items admitted under
///   it have ended; their mean run time is the baseline, and the limit goes back to where it
///   was. A probe runs at the first sample, when the limit has fallen
///   [eight rounds in a row](#when-it-probes), and every
///   [`probe_every`](Self::probe_every) samples if asked. Between probes the baseline only
///   ever moves down, and only by what a round shows beyond its noise: sustained load cannot
///   drag it upwards (the drift reported against Gradient2 and Envoy), a latency spike does
///   not pollute it, and a lucky fast round does not drag it (and the limit) down for good.
/// - **Each round** of [`window`](Self::window) samples (default 10; more where run times
///   spread, see [`confidence`](Self::confidence)) of items let start under the limit in force
///   (the items admitted under an earlier limit are still draining and say nothing of this
///   one) gives the mean run time of the round; a long round that already shows a clear queue
///   ends early. Less the noise allowance, over the baseline, it gives the gradient `clamp(tolerance × baseline / mean, 0.5, 1)`. Below 1, the limit
///   falls at once to `(limit + 1) × gradient`: what the round says the downstream serves
///   without a queue, plus one item. At 1, it grows by [`smoothing`](Self::smoothing) of
///   `√limit`, and that growth doubles each round while the downstream does not queue (as in
///   TCP's slow start). So it settles at about the downstream's capacity, plus one item and
///   the noise allowance, with no standing queue: on a downstream that serves fewer calls the
///   further it is pushed, each item queued in it costs throughput.
/// - **It grows only in rounds in which most items found the limit full**, so a limiter that
///   is handed less work than its limit does not drift upwards.
/// - **Under a [cap](super::Sample::capped)** below its limit (slots leased from a cluster
///   budget, [`Limiter::set_limit_until`](crate::Limiter::set_limit_until)), rounds are of
///   items let start under the cap: they never grow the limit, since the cap, not the limit,
///   held items back; a round that shows a queue at the cap takes the limit to
///   `(cap + 1) × gradient`, below the cap. When the cap lifts, it goes on from its own limit.
/// - **An overload** (see [`overload_if`](crate::TaskBuilder::overload_if)) backs the limit
///   off by [`backoff`](Self::backoff), once per round, as [`Aimd`](super::Aimd) does, even
///   while run times look fine. Panicked items are skipped.
///
/// # When it probes
///
/// A probe holds the limit low for a while: calls that arrive meanwhile queue in the limiter,
/// and near capacity that queue drains slowly. So `Gradient` does not probe on a timer by
/// default. It probes at the start, and again when the limit has fallen eight rounds in a row
/// (or stayed at the floor): a downstream that got slower for good looks like a queue at
/// every limit, and only a new baseline tells the two apart. A downstream that got slower by
/// a little (say 20 %) without that is seen as queueing, and the limit settles lower than it
/// could; [`probe_every`](Self::probe_every) adds periodic probes for such downstreams.
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
    /// `None`: no periodic probes.
    probe_every: Option<usize>,
    confidence: f64,
    /// The limit as a real number.
    estimate: f64,
    /// The run times of the round under way.
    round: Round,
    /// What the limit grows by per round while the downstream does not queue.
    growth: f64,
    /// The baseline run time, in seconds; `None` until the first probe ends.
    baseline: Option<f64>,
    /// The spread of run times at a given limit: their squared coefficient of variation
    /// (variance ÷ mean²), averaged over the probe and the last `SPREAD_ROUNDS` rounds.
    spread: f64,
    /// How many measurements `spread` averages (up to `SPREAD_ROUNDS`).
    spread_weight: usize,
    probe: Probe,
    /// Samples since the last probe ended.
    since_probe: usize,
    /// Rounds in a row that lowered the limit (or found it at the floor).
    falling: usize,
}

/// How far (as a share of it) the noise may move a round's mean run time at `confidence`
/// standard errors before rounds get longer: rounds take `(confidence × cv / MARGIN)²`
/// samples where run times spread with a coefficient of variation `cv`, from `window` up to
/// `LONGEST_ROUND × window`.
const MARGIN: f64 = 0.1;
const LONGEST_ROUND: usize = 16;

/// Rounds in a row that lower the limit before the baseline is measured again: a limit still
/// falling after that many is more likely held down by a downstream that got slower than by
/// a queue (a limit halves at worst per round, so eight rounds take it down 256-fold).
const STALE_ROUNDS: usize = 8;

/// How many rounds the measured spread of run times averages over. A heavy tail shows in a
/// round only now and then (a round's spread is mostly below the true one, and now and then
/// far above it): a short average would swing the noise allowance, and the limit with it.
const SPREAD_ROUNDS: usize = 32;

/// The samples of one round: items let start under the limit in force.
#[derive(Clone, Debug, Default)]
struct Round {
    sum: f64,
    /// The sum of the squared run times.
    squares: f64,
    samples: usize,
    /// How many items of the round found the limit full.
    full: usize,
    /// Some item reported an overload during the round.
    overloaded: bool,
    /// The cap the round's items were let start under, below the algorithm's limit (see
    /// `Sample::capped`); `None`: they started under the algorithm's limit.
    cap: Option<usize>,
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
        squares: f64,
        samples: usize,
    },
    Done,
}

impl Gradient {
    /// `Gradient` with its defaults: smoothing 0.5, tolerance 1.0, window 10, backoff 0.9,
    /// confidence 2, probes at 4 items for 16 samples, no periodic probes.
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
            probe_every: None,
            confidence: 2.0,
            estimate: 0.0,
            round: Round::default(),
            growth: 0.0,
            baseline: None,
            spread: 0.0,
            spread_weight: 0,
            probe: Probe::Due,
            since_probe: 0,
            falling: 0,
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

    /// Probes the baseline periodically too: `samples` samples after the end of one probe, the
    /// next starts (default: no periodic probes; see [When it probes](Self#when-it-probes)).
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
        self.probe_every = Some(samples);
        self
    }

    /// How many standard errors of a round's mean run time the noise is allowed before the
    /// round counts as queueing (default 2). The spread of run times is measured as the limit
    /// runs; a round's mean counts as queued only by what is left once `confidence` standard
    /// errors are taken off it, and the baseline moves down between probes only when a
    /// round's mean plus `confidence + 1` standard errors is below it. Rounds get longer as the
    /// spread grows (up to 16 × [`window`](Self::window)), so that the allowance stays near 10 %
    /// of the mean; one that shows queueing past `confidence + 1` standard errors at `window`,
    /// twice, four times... its samples ends there. 0 believes every round as it is.
    ///
    /// # Panics
    ///
    /// Panics unless `confidence >= 0` and finite.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::adaptive::Gradient;
    ///
    /// let gradient = Gradient::new().confidence(3.0);
    /// # drop(gradient);
    /// ```
    #[track_caller]
    pub fn confidence(mut self, confidence: f64) -> Gradient {
        assert!(
            (0.0..f64::INFINITY).contains(&confidence),
            "task_limiter: `Gradient::confidence` must be at least 0 and finite, not {confidence}"
        );
        self.confidence = confidence;
        self
    }

    /// Whether the round under way, before its end (at `window`, twice, four times... its
    /// samples), already shows queueing past `confidence + 1` standard errors: then it ends at
    /// once, so that long rounds (noisy run times) do not slow the answer to a clear queue.
    /// (Not so for growth: rounds cut short when they look good would bias the measured
    /// spread low, and a short allowance lets noise drag the limit down.)
    fn clearly_queued(&self) -> bool {
        let round = &self.round;
        let checkpoint = round.samples >= self.window
            && (round.samples / self.window).is_power_of_two()
            && round.samples % self.window == 0;
        let Some(baseline) = self.baseline.filter(|_| checkpoint) else {
            return false;
        };
        let n = round.samples as f64;
        let error = (self.spread / n).sqrt();
        let floor = round.sum / n * (1.0 - (self.confidence + 1.0) * error);
        floor > self.tolerance * baseline
    }

    /// How many samples the round under way takes: `window`, longer where run times spread.
    fn round_len(&self) -> usize {
        let wanted = self.confidence * self.confidence * self.spread / (MARGIN * MARGIN);
        (wanted.ceil() as usize).clamp(self.window, LONGEST_ROUND * self.window)
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
                    squares: 0.0,
                    samples: 0,
                };
                Some(at)
            }
            Probe::Running {
                at,
                resume,
                sum,
                squares,
                samples,
            } => {
                // Only items admitted under the probe's limit measure the unqueued downstream;
                // the ones started before it are still draining.
                if sample.limit() <= *at {
                    *sum += run_time;
                    *squares += run_time * run_time;
                    *samples += 1;
                }
                if *samples < self.probe_samples {
                    return Some(*at);
                }
                // The probe's mean is the baseline, whatever it was before: the one way it
                // moves up.
                let mean = *sum / *samples as f64;
                self.baseline = Some(mean);
                if let Some(spread) = spread(*sum, *squares, *samples) {
                    // One measurement, of a few samples: the rounds soon outweigh it.
                    self.spread = spread;
                    self.spread_weight = 1;
                }
                self.estimate = *resume;
                self.round = Round::default();
                self.probe = Probe::Done;
                self.since_probe = 0;
                self.falling = 0;
                None
            }
        }
    }
}

/// The squared coefficient of variation of `samples` run times summing to `sum`, with squares
/// summing to `squares`; `None` with fewer than two, or a mean of zero.
fn spread(sum: f64, squares: f64, samples: usize) -> Option<f64> {
    let n = samples as f64;
    let mean = sum / n;
    if samples < 2 || mean <= 0.0 {
        return None;
    }
    let variance = ((squares - n * mean * mean) / (n - 1.0)).max(0.0);
    Some(variance / (mean * mean))
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
        if let Some(every) = self.probe_every {
            self.since_probe += 1;
            if self.since_probe >= every {
                self.probe = Probe::Due;
            }
        }
        if sample.is_overload() {
            // Once per round, as `Aimd` does: an item let start under a higher limit started
            // before the last back-off. One let start under a cap saw the overload at the cap:
            // back off from there.
            if sample.limit() <= limit {
                let from = match sample.capped() {
                    true => self.estimate.min(sample.limit() as f64),
                    false => self.estimate,
                };
                self.estimate = (from * self.backoff).max(1.0);
            }
            // Nor may the round it fell in grow the limit.
            self.round.overloaded = true;
            self.growth = 0.0;
            return self.estimate as usize;
        }
        // Only items let start under the limit in force say what it does to run times; the
        // ones admitted under an earlier limit are still draining. Under a cap below the
        // algorithm's limit, that is the cap: the algorithm does not know the cap in force
        // now, only the one each sample started under, so a round is of one cap, and a sample
        // under another (a new cap, or one that drains from before it) starts the round over.
        // Such rounds can lower the limit (a queue at the cap) but never grow it: their items
        // never found the algorithm's limit full.
        let cap = sample.capped().then(|| sample.limit());
        if cap.is_none() && sample.limit() != limit {
            return self.estimate as usize;
        }
        if cap != self.round.cap {
            self.round = Round {
                cap,
                ..Round::default()
            };
        }
        let round_len = self.round_len();
        let round = &mut self.round;
        round.sum += run_time;
        round.squares += run_time * run_time;
        round.samples += 1;
        round.full += usize::from(sample.found_limit_full());
        if round.samples < round_len && !self.clearly_queued() {
            return self.estimate as usize;
        }
        let round = &self.round;
        let n = round.samples as f64;
        let average = round.sum / n;
        // Most of its items found the limit full: the limit, not the work handed to the
        // limiter, held items back. (One item now and then finds it full when work arrives in
        // bursts, with the limit well above what the work needs.)
        let full = 2 * round.full >= round.samples && !round.overloaded;
        // The limit the round ran under: the algorithm's, or the cap below it.
        let ran_under = round.cap.map_or(self.estimate, |cap| cap as f64);
        if let Some(spread) = spread(round.sum, round.squares, round.samples) {
            self.spread_weight = (self.spread_weight + 1).min(SPREAD_ROUNDS);
            self.spread += (spread - self.spread) / self.spread_weight as f64;
        }
        self.round = Round::default();
        // The standard error of the round's mean, as a share of it.
        let error = (self.spread / n).sqrt();
        // The first probe sets it, at the first sample.
        let Some(baseline) = self.baseline else {
            return self.estimate as usize;
        };
        // Between probes the baseline only moves down, and only to what this round shows
        // beyond its noise: the mean plus `confidence + 1` standard errors. Following the
        // lower means themselves would let every lucky round pull the baseline down for
        // good, and the limit with it.
        let ceiling = average * (1.0 + (self.confidence + 1.0) * error);
        let baseline = baseline.min(ceiling);
        self.baseline = Some(baseline);
        // The queueing the round shows beyond its noise.
        let floor = average * (1.0 - self.confidence * error);
        let gradient = if floor > 0.0 {
            (self.tolerance * baseline / floor).clamp(0.5, 1.0)
        } else {
            1.0
        };
        let mut target = if gradient < 1.0 {
            // Queueing beyond the noise: down to what the round says the downstream serves
            // without a queue, plus one item, and the growth starts over. No standing queue
            // is aimed for: on a downstream that serves less the further it is pushed, every
            // item queued in it costs throughput.
            self.growth = 0.0;
            (ran_under + 1.0) * gradient
        } else if full {
            // No queueing, and the limit held items back: up by √limit, doubling each round
            // it goes on (as in TCP's slow start), so that a limit far under the downstream's
            // capacity gets there in a few rounds.
            let room = self.estimate.sqrt();
            self.growth = (self.growth * 2.0).clamp(room, self.estimate);
            self.estimate + self.growth
        } else {
            self.estimate
        };
        if !full {
            // The limiter had less work than its limit: never grow on that.
            target = target.min(self.estimate);
        }
        // A limit that keeps falling (or stays on the floor) is more likely held down by a
        // downstream that got slower than by a queue: measure the baseline again.
        self.falling = match target < self.estimate {
            true => self.falling + 1,
            false => 0,
        };
        if self.falling >= STALE_ROUNDS {
            self.probe = Probe::Due;
        }
        // Down at once (queueing inflates every latency), up by `smoothing`.
        self.estimate = match target < self.estimate {
            true => target.max(1.0),
            false => self.estimate + self.smoothing * (target - self.estimate),
        };
        self.estimate as usize
    }
}
