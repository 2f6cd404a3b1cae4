//! The renewal task: one per `ClusterBudget`, the only place that talks to Redis after
//! `connect` and the only place that changes the limiter's limit.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, LazyLock};

use redis::aio::ConnectionManager;
use redis::Script;
use task_limiter::Limiter;
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, Instant};

use crate::config::Config;
use crate::error::Error;
use crate::lease::Lease;
use crate::shared::Shared;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("script.lua")));

/// What a call asks of the script.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// The first call: also refuses a budget that differs from the live processes'.
    Check,
    Renew,
    /// Want nothing; delete the lease once nothing runs.
    Release,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Check => "check",
            Mode::Renew => "renew",
            Mode::Release => "release",
        }
    }
}

// === the limit in force ===
//
// Every change of the limiter's limit goes through these two functions.
//
// The limit carries the lease's local expiry (`Limiter::set_limit_until`): admission checks it, so
// a process resumed after a pause past its lease starts nothing before this task runs again. On
// an adaptive limiter the same call caps the algorithm's limit: the limit in force is the lower
// of the two, and never above what these functions set.

/// Puts `slots` (but at least the floor) in force until `until`, then the floor.
fn apply_lease<S>(limiter: &Limiter<S>, slots: usize, until: Instant, floor: usize) {
    match slots.max(floor) {
        // Nothing granted and a floor of 0: the fallback, at once.
        0 => limiter.set_limit_until(1, Instant::now(), 0),
        limit => limiter.set_limit_until(limit, until, floor),
    }
}

/// Puts the floor in force now.
fn apply_floor<S>(limiter: &Limiter<S>, floor: usize) {
    limiter.set_limit_until(1, Instant::now(), floor);
}

pub(crate) struct Renewer<S> {
    limiter: Limiter<S>,
    conn: ConnectionManager,
    keys: [String; 8],
    cfg: Config,
    shared: Arc<Shared>,
    /// The last reply: slots granted, slots Redis counts for us, our fair share.
    grant: usize,
    hold: usize,
    share: usize,
    token: u64,
    /// Where this process considers its lease gone (local monotonic clock, with the margin).
    valid_until: Option<Instant>,
    /// Demand samples of the last `idle_after`, for the hysteresis.
    samples: VecDeque<(Instant, usize)>,
    /// `Metrics::submitted` at the last sample: items that came and went between two samples
    /// leave no trace in `running + queued`.
    submitted: u64,
    sent_want: usize,
    next_renewal: Instant,
    failing: bool,
}

impl<S: Send + 'static> Renewer<S> {
    pub(crate) fn new(
        limiter: Limiter<S>,
        conn: ConnectionManager,
        cfg: Config,
        shared: Arc<Shared>,
    ) -> Renewer<S> {
        // One hash tag, so the keys share a slot on Redis Cluster and one script may use them.
        let prefix = format!("task-limiter:{{{}}}:", cfg.name);
        let keys = [
            "expiry", "held", "want", "token", "fence", "epoch", "grace", "budget",
        ]
        .map(|k| format!("{prefix}{k}"));
        Renewer {
            limiter,
            conn,
            keys,
            cfg,
            shared,
            grant: 0,
            hold: 0,
            share: 0,
            token: 0,
            valid_until: None,
            samples: VecDeque::new(),
            submitted: 0,
            sent_want: 0,
            next_renewal: Instant::now(),
            failing: false,
        }
    }

    pub(crate) fn fail_closed(&self) {
        apply_floor(&self.limiter, self.cfg.floor);
    }

    /// The demand to report: items running or queued, capped at the budget, and the highest
    /// of the last `idle_after` so that slots go back only after demand stayed low that long.
    ///
    /// On an adaptive limiter, also capped at the algorithm's own limit (what it would use
    /// with no cap, already within its `max_limit`): slots beyond it would sit unused, as the
    /// limit in force is the lower of the two, while other processes may want them. Not the
    /// algorithm's limit alone: a process with less work than its limit (an empty queue) would
    /// hoard slots it does not use. So a process reports what its algorithm wants when it has
    /// the work for it, and the work it has otherwise.
    ///
    /// A process that was given items since the last sample wants at least one slot even if
    /// none is running or queued at the instant of the sample: short items submitted in
    /// bursts (100k items/s in batches) are gone between two samples, and reporting no
    /// demand then took the process down to 0 slots and stalled its next batch until the
    /// following call.
    fn want(&mut self, now: Instant) -> usize {
        let m = self.limiter.metrics();
        let active = m.submitted != self.submitted;
        self.submitted = m.submitted;
        let demand = (m.running + m.queued)
            .max(usize::from(active))
            .min(self.limiter.adaptive_limit().unwrap_or(usize::MAX))
            .min(self.cfg.budget);
        self.samples.push_back((now, demand));
        while let Some(&(at, _)) = self.samples.front() {
            if now.duration_since(at) > self.cfg.idle_after {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        self.samples.iter().map(|&(_, d)| d).max().unwrap_or(0)
    }

    /// The most items the limiter may start now, as far as this task has set it: the lease's
    /// slots (at least the floor) until the lease's local end, the floor after it. The limit
    /// in force is that, or lower on an adaptive limiter whose algorithm wants less; but the
    /// algorithm may raise it up to this at any time, without this task.
    fn lease_limit(&self, now: Instant) -> usize {
        match self.valid_until {
            Some(until) if now < until => self.grant.max(self.cfg.floor),
            _ => self.cfg.floor,
        }
    }

    /// Whether this poll needs Redis. Without a reason it waits for the renewal period, so
    /// calls scale with processes and changes of demand, not with items.
    fn due(&self, now: Instant, want: usize) -> bool {
        let m = self.limiter.metrics();
        let may_run = m.running.max(m.limit).max(self.lease_limit(now));
        now >= self.next_renewal
            || self.failing
            // Entitled to more, or Redis does not know yet that we want more.
            || (want > self.grant && (self.share > self.grant || want > self.sent_want))
            // Demand stayed low for the hysteresis: give slots back.
            || (want < self.sent_want && want < self.grant)
            // Redis still counts slots our items have stopped using since we shrank.
            || self.hold > may_run
    }

    /// One call of the script; on success the grant is put in force at once.
    pub(crate) async fn call(&mut self, mode: Mode, want: usize) -> Result<(), Error> {
        // `sent` is read before the request goes out and Redis starts the TTL when the script
        // runs, later: so a lease that ends at `sent + ttl` (minus the margin for clock rates)
        // on this clock has not ended on Redis's yet.
        let sent = Instant::now();
        let m = self.limiter.metrics();
        // Items start only while fewer than the limit in force run, and that limit rises only
        // here, or, on an adaptive limiter, up to the lease's limit: until the reply is
        // applied, no more than max(running, limit, the lease's limit) can run.
        let keep = match mode {
            Mode::Release => m.running,
            _ => m.running.max(m.limit).max(self.lease_limit(sent)),
        };
        let mut invocation = SCRIPT.prepare_invoke();
        for key in &self.keys {
            invocation.key(key);
        }
        invocation
            .arg(&self.cfg.process_id)
            .arg(self.cfg.budget)
            .arg(self.cfg.ttl.as_millis() as u64)
            .arg(want)
            .arg(keep)
            .arg(mode.as_str())
            .arg(self.shared.fence_seen.load(Relaxed));
        self.shared.calls.fetch_add(1, Relaxed);
        let reply = timeout(
            self.cfg.call_timeout,
            invocation.invoke_async::<Vec<i64>>(&mut self.conn),
        )
        .await;
        let reply = match reply {
            Ok(Ok(reply)) => reply,
            Ok(Err(err)) => return Err(self.failed(Error::redis("lease call failed", Some(err)))),
            Err(_) => return Err(self.failed(Error::redis("lease call timed out", None))),
        };
        if reply.first() == Some(&-1) {
            let stored = reply.get(1).copied().unwrap_or(0);
            return Err(Error::config(format!(
                "budget {} differs from the budget {stored} that live processes of {:?} use",
                self.cfg.budget, self.cfg.name
            )));
        }
        let [grant, token, hold, share, free, live, grace] = match reply[..] {
            [a, b, c, d, e, f, g] => [a, b, c, d, e, f, g],
            _ => {
                return Err(
                    self.failed(Error::redis("unexpected reply from the lease script", None))
                )
            }
        };
        let token = token as u64;
        let until = sent + self.cfg.ttl - self.cfg.safety_margin;
        apply_lease(&self.limiter, grant as usize, until, self.cfg.floor);
        if token != self.token {
            self.shared.leases.fetch_add(1, Relaxed);
        }
        self.shared.fence_seen.fetch_max(token, Relaxed);
        self.grant = grant as usize;
        self.hold = hold as usize;
        self.share = share as usize;
        self.token = token;
        self.sent_want = want;
        self.valid_until = Some(until);
        self.next_renewal = sent + self.cfg.renew_every;
        self.failing = false;
        tracing::trace!(
            target: "task_limiter_redis",
            grant, hold, share, free, live, grace, token, "lease renewed"
        );
        self.shared.lease.send_replace(Some(Lease {
            slots: self.grant,
            share: self.share,
            fencing_token: token,
            granted_at: Instant::now(),
            valid_until: until,
        }));
        Ok(())
    }

    fn failed(&mut self, err: Error) -> Error {
        self.shared.errors.fetch_add(1, Relaxed);
        self.failing = true;
        tracing::debug!(target: "task_limiter_redis", error = %err, "lease call failed");
        err
    }

    /// Polls demand every `poll`, renews when due, and falls to the floor when the lease runs
    /// out locally. Ends on `stop` (or its sender dropped) or once the limiter is closed and
    /// drained, and then gives the slots back.
    pub(crate) async fn run(mut self, mut stop: oneshot::Receiver<()>) -> Result<(), Error> {
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = sleep(self.cfg.poll) => {}
            }
            if self.limiter.is_closed() && self.limiter.is_empty() {
                break;
            }
            let now = Instant::now();
            if self.valid_until.is_some_and(|until| now >= until) {
                self.valid_until = None;
                self.grant = 0;
                self.fail_closed();
                self.shared.lease.send_replace(None);
                tracing::debug!(target: "task_limiter_redis", "lease lost: limit at the floor");
            }
            let want = self.want(now);
            if self.due(now, want) {
                let _ = self.call(Mode::Renew, want).await;
            }
        }
        self.release().await
    }

    /// Falls to the floor, keeps counting the items still running until they are done, then
    /// deletes the lease. Gives up once the lease has run out anyway.
    async fn release(mut self) -> Result<(), Error> {
        self.fail_closed();
        self.shared.lease.send_replace(None);
        let give_up = self.valid_until.unwrap_or_else(Instant::now) + self.cfg.ttl;
        loop {
            let running = self.limiter.metrics().running;
            let result = self.call(Mode::Release, 0).await;
            // The call put the (zero) grant in force; the floor is what holds now.
            self.fail_closed();
            self.shared.lease.send_replace(None);
            match result {
                Ok(()) if running == 0 && self.hold == 0 => return Ok(()),
                Err(err) if err.is_config() || Instant::now() >= give_up => return Err(err),
                _ => {}
            }
            if Instant::now() >= give_up {
                return Ok(());
            }
            sleep(self.cfg.poll).await;
        }
    }
}
