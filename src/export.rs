//! Publishing a limiter's metrics through the [`metrics`] crate's facade (the `metrics`
//! feature): whatever recorder the application installed (Prometheus, StatsD, OpenTelemetry)
//! gets the limiter's series, labelled `limiter = <name>`.
//!
//! # Series
//!
//! Names follow OpenTelemetry's semantic conventions where one exists: its stable
//! rate-limiting metrics (`aspnetcore.rate_limiting.*`) and its connection-pool metrics
//! (`db.client.connection.*`), under the `task_limiter.` prefix. Every series has the label
//! `limiter` (the limiter's [name](crate::Builder::name)); a Prometheus exporter turns the dots
//! into underscores (`task_limiter_queued_requests`).
//!
//! | series | type | value | OpenTelemetry counterpart |
//! |---|---|---|---|
//! | `task_limiter.request_leases.active` | gauge | [`Metrics::running`]: items and leases running | `aspnetcore.rate_limiting.active_request_leases`; `db.client.connection.count{state=used}` |
//! | `task_limiter.queued_requests` | gauge | [`Metrics::queued`] | `aspnetcore.rate_limiting.queued_requests`; `db.client.connection.pending_requests` |
//! | `task_limiter.limit` | gauge | [`Metrics::limit`] | `db.client.connection.max` |
//! | `task_limiter.weight.active` | gauge | [`Metrics::weight_running`] | |
//! | `task_limiter.workers` | gauge | [`Metrics::workers`] | |
//! | `task_limiter.workers.idle` | gauge | [`Metrics::idle_workers`] | `db.client.connection.count{state=idle}` |
//! | `task_limiter.requests{result}` | counter | `result="acquired"`: [`Metrics::started`]; `"queue_full"`, `"queue_timeout"`, `"token"`, `"closed"`: [`Metrics::refused`] plus [`Metrics::leases_refused`] | `aspnetcore.rate_limiting.requests{aspnetcore.rate_limiting.result}`; `db.client.connection.timeouts` is `result="queue_timeout"` |
//! | `task_limiter.leases.refused{result}` | counter | [`Metrics::leases_refused`] alone, by the same `result`s | |
//! | `task_limiter.request_lease.ended{outcome}` | counter | `outcome="completed"`, `"panicked"`, `"cancelled"`, `"timed_out"`: [`Metrics::completed`], … | |
//! | `task_limiter.request.wait_time` | counter, µs | [`Metrics::wait_time`]: `rate()` of it over `rate()` of `requests{result="acquired"}` is the mean wait | `db.client.connection.wait_time`, summed |
//! | `task_limiter.request_lease.use_time` | counter, µs | [`Metrics::run_time`] | `db.client.connection.use_time`, summed |
//! | `task_limiter.limit.changes` | counter | [`Metrics::limit_changes`] | |
//! | `task_limiter.request.time_in_queue` | histogram, s | [`Distributions::queue_wait`], with [`Builder::distributions`] | `aspnetcore.rate_limiting.request.time_in_queue`; `db.client.connection.wait_time` |
//! | `task_limiter.request_lease.duration` | histogram, s | [`Distributions::run_time`], with [`Builder::distributions`] | `aspnetcore.rate_limiting.request_lease.duration`; `db.client.connection.use_time` |
//!
//! Per key, only for the keys named with [`Exporter::key`] (never one series per key seen,
//! which would grow without bound), with the labels `limiter` and `key`:
//! `task_limiter.key.queued_requests`, `task_limiter.key.request_leases.active`,
//! `task_limiter.key.limit` (gauges) and `task_limiter.key.requests{result="acquired"}`
//! (a counter that restarts when the key's bookkeeping does: see [`KeyMetrics::started`]). A
//! named key with nothing queued or running reads 0.
//!
//! The histograms are published from the limiter's own lock-free buckets, not per item: each
//! publish records, for every bucket that grew since the last one, the bucket's midpoint as
//! many times as it grew (`record_many`). So the recorder sees every duration to within the
//! bucket's 6.25 %, and an item pays nothing for the export.
//!
//! [`Metrics::running`]: crate::Metrics::running
//! [`Metrics::queued`]: crate::Metrics::queued
//! [`Metrics::limit`]: crate::Metrics::limit
//! [`Metrics::weight_running`]: crate::Metrics::weight_running
//! [`Metrics::workers`]: crate::Metrics::workers
//! [`Metrics::idle_workers`]: crate::Metrics::idle_workers
//! [`Metrics::started`]: crate::Metrics::started
//! [`Metrics::refused`]: crate::Metrics::refused
//! [`Metrics::leases_refused`]: crate::Metrics::leases_refused
//! [`Metrics::completed`]: crate::Metrics::completed
//! [`Metrics::wait_time`]: crate::Metrics::wait_time
//! [`Metrics::run_time`]: crate::Metrics::run_time
//! [`Metrics::limit_changes`]: crate::Metrics::limit_changes
//! [`Distributions::queue_wait`]: crate::Distributions::queue_wait
//! [`Distributions::run_time`]: crate::Distributions::run_time
//! [`Builder::distributions`]: crate::Builder::distributions
//! [`KeyMetrics::started`]: crate::KeyMetrics::started

use std::fmt;
use std::sync::Weak;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Unit};

use crate::histogram::Histogram;
use crate::key::Key;
use crate::limiter::{Inner, Limiter};
use crate::metrics::Refusals;

/// Publishes a limiter's counters, gauges and (with
/// [`Builder::distributions`](crate::Builder::distributions)) histograms through the
/// [`metrics`] facade, labelled with the limiter's name. Made by [`Limiter::exporter`]; see
/// [the series and their OpenTelemetry counterparts](self#series).
///
/// Call [`publish`](Self::publish) where the values should be fresh (a scrape handler, before
/// it renders), or spawn [`run`](Self::run), which publishes on a period. The exporter holds
/// the limiter weakly: it never keeps a limiter open, and stops once every `Limiter` clone is
/// gone.
///
/// # Examples
///
/// ```
/// use task_limiter::Limiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::builder().name("downloads").distributions(true).build();
/// let mut exporter = limiter.exporter().key("example.com");
/// limiter.spawn(async {}).await.unwrap();
/// // Into whatever recorder is installed (none here: the values go nowhere).
/// assert!(exporter.publish());
/// drop(limiter);
/// assert!(!exporter.publish());
/// # }
/// ```
pub struct Exporter<S = ()> {
    limiter: Weak<Inner<S>>,
    name: String,
    keys: Vec<Key>,
    /// The bucket counts published so far (queue wait, run time).
    published: Option<(Histogram, Histogram)>,
}

impl<S> Limiter<S> {
    /// An [`Exporter`] of this limiter's metrics to the [`metrics`] facade.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().name("api").build();
    /// // Publishes once a second until the limiter is gone.
    /// let exporting = tokio::spawn(limiter.exporter().run(Duration::from_secs(1)));
    /// drop(limiter);
    /// exporting.await.unwrap();
    /// # }
    /// ```
    pub fn exporter(&self) -> Exporter<S> {
        Exporter {
            limiter: std::sync::Arc::downgrade(&self.inner),
            name: self.name().to_owned(),
            keys: Vec::new(),
            published: None,
        }
    }
}

impl<S> Exporter<S> {
    /// Also publishes per-key series for `key`. Only named keys get series: a limiter may see
    /// any number of keys, a metrics backend should not.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::builder().per_key_limit(4).build();
    /// let mut exporter = limiter.exporter().key("tenant-a").key("tenant-b");
    /// exporter.publish();
    /// # }
    /// ```
    pub fn key(mut self, key: impl Into<Key>) -> Exporter<S> {
        self.keys.push(key.into());
        self
    }

    /// Publishes the limiter's series once, into the recorder installed now. Returns false
    /// (and publishes nothing) once the limiter is gone.
    ///
    /// Takes a [`metrics`](Limiter::metrics) snapshot (one turn of the admission lock), one
    /// per named key, and reads the histograms without a lock.
    ///
    /// # Examples
    ///
    /// ```
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new(4);
    /// let mut exporter = limiter.exporter();
    /// assert!(exporter.publish());
    /// # }
    /// ```
    pub fn publish(&mut self) -> bool {
        let Some(inner) = self.limiter.upgrade() else {
            return false;
        };
        let limiter = Limiter { inner };
        let name = self.name.clone();
        let labels = [("limiter", name.clone())];
        let m = limiter.metrics();
        gauge!("task_limiter.request_leases.active", &labels).set(m.running as f64);
        gauge!("task_limiter.queued_requests", &labels).set(m.queued as f64);
        gauge!("task_limiter.limit", &labels).set(m.limit as f64);
        gauge!("task_limiter.weight.active", &labels).set(m.weight_running as f64);
        gauge!("task_limiter.workers", &labels).set(m.workers as f64);
        gauge!("task_limiter.workers.idle", &labels).set(m.idle_workers as f64);
        let result = |result: &'static str| [("limiter", name.clone()), ("result", result.into())];
        counter!("task_limiter.requests", &result("acquired")).absolute(m.started);
        let all = sum(&m.refused, &m.leases_refused);
        for (reason, n) in reasons(&all) {
            counter!("task_limiter.requests", &result(reason)).absolute(n);
        }
        for (reason, n) in reasons(&m.leases_refused) {
            counter!("task_limiter.leases.refused", &result(reason)).absolute(n);
        }
        let outcome =
            |outcome: &'static str| [("limiter", name.clone()), ("outcome", outcome.into())];
        for (o, n) in [
            ("completed", m.completed),
            ("panicked", m.panicked),
            ("cancelled", m.cancelled),
            ("timed_out", m.timed_out),
        ] {
            counter!("task_limiter.request_lease.ended", &outcome(o)).absolute(n);
        }
        counter!("task_limiter.request.wait_time", &labels).absolute(micros(m.wait_time));
        counter!("task_limiter.request_lease.use_time", &labels).absolute(micros(m.run_time));
        counter!("task_limiter.limit.changes", &labels).absolute(m.limit_changes);
        for key in &self.keys {
            let labels = [("limiter", name.clone()), ("key", key.to_string())];
            let k = limiter.key_metrics(key.clone()).unwrap_or_default();
            let limit = match limiter.key_limit(key.clone()) {
                usize::MAX => f64::INFINITY,
                limit => limit as f64,
            };
            gauge!("task_limiter.key.queued_requests", &labels).set(k.queued as f64);
            gauge!("task_limiter.key.request_leases.active", &labels).set(k.running as f64);
            gauge!("task_limiter.key.limit", &labels).set(limit);
            let acquired = [
                ("limiter", name.clone()),
                ("key", key.to_string()),
                ("result", "acquired".to_owned()),
            ];
            counter!("task_limiter.key.requests", &acquired).absolute(k.started);
        }
        if let Some(now) = limiter.distributions() {
            let (wait_before, run_before) = match &self.published {
                Some((wait, run)) => (Some(wait), Some(run)),
                None => (None, None),
            };
            let wait = histogram!("task_limiter.request.time_in_queue", &labels);
            publish_growth(&wait, &now.queue_wait, wait_before);
            let run = histogram!("task_limiter.request_lease.duration", &labels);
            publish_growth(&run, &now.run_time, run_before);
            self.published = Some((now.queue_wait, now.run_time));
        }
        true
    }

    /// Publishes every `period` (the first at once) until every `Limiter` clone is gone.
    /// Spawn it; dropping the future stops it.
    ///
    /// # Panics
    ///
    /// Panics if polled outside a tokio runtime with time enabled, or if `period` is zero.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped between publishes, it loses nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_limiter::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::builder().name("jobs").build();
    /// tokio::spawn(limiter.exporter().run(Duration::from_secs(10)));
    /// limiter.spawn(async {}).await.unwrap();
    /// # }
    /// ```
    pub async fn run(mut self, period: Duration) {
        describe();
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if !self.publish() {
                return;
            }
        }
    }
}

/// Describes the series to the installed recorder: units and help texts.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "task_limiter.request_leases.active",
        "Items and leases running"
    );
    describe_gauge!("task_limiter.queued_requests", "Items and leases waiting");
    describe_gauge!("task_limiter.limit", "The limit in force");
    describe_counter!(
        "task_limiter.requests",
        "Requests by result: acquired (started) or refused, by reason"
    );
    describe_counter!(
        "task_limiter.request.wait_time",
        Unit::Microseconds,
        "Time spent waiting, summed over items and leases"
    );
    describe_counter!(
        "task_limiter.request_lease.use_time",
        Unit::Microseconds,
        "Time spent running, summed over items and leases"
    );
    describe_histogram!(
        "task_limiter.request.time_in_queue",
        Unit::Seconds,
        "Queue waits of started items and leases"
    );
    describe_histogram!(
        "task_limiter.request_lease.duration",
        Unit::Seconds,
        "Run times of items and leases"
    );
}

/// Records into `to` what `now` holds beyond `before`: each grown bucket's midpoint, as many
/// times as it grew.
fn publish_growth(to: &metrics::Histogram, now: &Histogram, before: Option<&Histogram>) {
    for (i, (midpoint, n)) in now.bucket_counts().enumerate() {
        let had = before.map_or(0, |before| before.bucket_count(i));
        if n > had {
            to.record_many(midpoint.as_secs_f64(), (n - had) as usize);
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn sum(a: &Refusals, b: &Refusals) -> Refusals {
    let mut all = *a;
    all.queue_full += b.queue_full;
    all.queue_timeout += b.queue_timeout;
    all.token += b.token;
    all.closed += b.closed;
    all
}

fn reasons(r: &Refusals) -> [(&'static str, u64); 4] {
    [
        ("queue_full", r.queue_full),
        ("queue_timeout", r.queue_timeout),
        ("token", r.token),
        ("closed", r.closed),
    ]
}

impl<S> fmt::Debug for Exporter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("limiter", &self.name)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}
