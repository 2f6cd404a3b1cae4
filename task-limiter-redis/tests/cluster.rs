//! Several OS processes on one budget, against a real `redis-server` the test starts.
//!
//! Each worker process is this test binary run again with `worker` as the only test and the
//! `TLR_WORKER` variable set (without it, the `worker` test does nothing). A worker has its own
//! `Limiter` and `ClusterBudget`, reads commands on stdin (`submit N MS`, `skip`, `quit`) and
//! logs on stdout, with `CLOCK_MONOTONIC` instants that all processes of the machine share:
//!
//! - `R t` connected; `D t` released and exiting;
//! - `S id t token` an item started (`token`: fencing token of the lease last published, 0
//!   for none); `E id t` it ended;
//! - `L t limit running queued token` the limiter's state, every 25 ms.
//!
//! The parent computes the overlap of the items across processes from those logs.
//!
//! Every test uses a TTL of 1 s: renewal every 333 ms, safety margin 100 ms.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::{die_with_parent, mono_ns, Server};

const TTL: Duration = Duration::from_secs(1);
const RENEW: Duration = Duration::from_nanos(1_000_000_000 / 3);
const BUDGET: usize = 6;
/// Scheduling slack on a loaded 2-core machine: status samples come every 25 ms, a poll of the
/// renewal task every 83 ms, and the machine may be compiling at the same time.
const SLACK: Duration = Duration::from_millis(400);

// === the worker process ===

#[test]
fn worker() {
    let Ok(url) = std::env::var("TLR_WORKER") else {
        return; // run as a test of its own: nothing to do
    };
    let name = std::env::var("TLR_NAME").unwrap();
    let id = std::env::var("TLR_ID").unwrap();
    // current_thread: between the renewal task putting a grant in force and publishing its
    // lease no item can start, so an item's logged token is the lease it started under.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run_worker(url, name, id));
}

async fn run_worker(url: String, name: String, id: String) {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use task_limiter::Limiter;
    use task_limiter_redis::ClusterBudget;

    let limiter = Limiter::new(1);
    let budget = ClusterBudget::builder(url, name)
        .budget(BUDGET)
        .ttl(TTL)
        .process_id(id)
        .connect(&limiter)
        .await
        .expect("connect");
    // A line of its own: libtest may have written "test worker ... " without one.
    println!("\nR {}", mono_ns());
    let lease = budget.subscribe();
    let token = move || lease.borrow().map_or(0, |l| l.fencing_token());
    let skip = Arc::new(AtomicBool::new(false));

    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let status = |limiter: &Limiter| {
        let m = limiter.metrics();
        println!(
            "L {} {} {} {} {}",
            mono_ns(),
            m.limit,
            m.running,
            m.queued,
            token()
        );
    };
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    let mut next_id = 0_u64;
    loop {
        tokio::select! {
            _ = tick.tick() => status(&limiter),
            command = commands.recv() => {
                let command = command.unwrap_or_else(|| "quit".to_owned());
                let words: Vec<&str> = command.split_whitespace().collect();
                match words[..] {
                    ["submit", n, ms] => {
                        let ms = Duration::from_millis(ms.parse().unwrap());
                        for _ in 0..n.parse::<u64>().unwrap() {
                            let item = next_id;
                            next_id += 1;
                            let (token, skip) = (token.clone(), skip.clone());
                            limiter.spawn(async move {
                                // Skipped items end at once and are not logged: how the
                                // tests drain a queue they no longer need.
                                if skip.load(Relaxed) {
                                    return;
                                }
                                println!("S {item} {} {}", mono_ns(), token());
                                tokio::time::sleep(ms).await;
                                println!("E {item} {}", mono_ns());
                            });
                        }
                    }
                    ["skip"] => skip.store(true, Relaxed),
                    ["quit"] => break,
                    _ => panic!("unknown command {command:?}"),
                }
            }
        }
    }
    limiter.close();
    let wait = limiter.wait();
    tokio::pin!(wait);
    loop {
        tokio::select! {
            _ = &mut wait => break,
            _ = tick.tick() => status(&limiter),
        }
    }
    budget.release().await.expect("release");
    status(&limiter);
    println!("D {}", mono_ns());
}

// === the parent's side ===

#[derive(Clone, Copy, Debug)]
enum Event {
    Ready,
    Start { item: u64, token: u64 },
    End { item: u64 },
    Status { limit: usize, token: u64 },
    Done,
}

/// A worker process and what it logged, as `(instant, event)` in the order it logged them.
struct Worker {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    log: Arc<Mutex<Vec<(u64, Event)>>>,
}

impl Worker {
    /// Starts a worker on `server`'s budget `budget_name` and waits until it is connected.
    fn start(server: &Server, budget_name: &str, name: &'static str) -> Worker {
        let mut child = die_with_parent(&mut Command::new(std::env::current_exe().unwrap()))
            .args(["worker", "--exact", "--nocapture", "--quiet"])
            .env("TLR_WORKER", &server.url)
            .env("TLR_NAME", budget_name)
            .env("TLR_ID", name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(event) = parse(&line) {
                    sink.lock().unwrap().push(event);
                }
            }
        });
        let worker = Worker {
            name,
            stdin: child.stdin.take(),
            child,
            log,
        };
        worker.wait_for("connected", Duration::from_secs(5), |events| {
            events.iter().any(|(_, e)| matches!(e, Event::Ready))
        });
        worker
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("worker's stdin open");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    fn submit(&mut self, items: usize, ms: u64) {
        self.send(&format!("submit {items} {ms}"));
    }

    /// Queued items end without running from now on (not logged), so the worker drains fast.
    fn skip(&mut self) {
        self.send("skip");
    }

    /// Closes the worker's limiter; it drains, releases its lease and exits.
    fn quit(&mut self) {
        self.send("quit");
    }

    fn events(&self) -> Vec<(u64, Event)> {
        self.log.lock().unwrap().clone()
    }

    /// Polls the log until `done` holds, or panics after `within`.
    fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&[(u64, Event)]) -> bool) {
        let give_up = mono_ns() + within.as_nanos() as u64;
        while !done(&self.log.lock().unwrap()) {
            assert!(
                mono_ns() < give_up,
                "{}: not {what} within {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_done(&mut self, within: Duration) {
        self.wait_for("done", within, |events| {
            events.iter().any(|(_, e)| matches!(e, Event::Done))
        });
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{}: {status}", self.name);
    }

    /// Sends `signal` to the process; returns the instant it was sent.
    fn signal(&self, signal: libc::c_int) -> u64 {
        let at = mono_ns();
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.name);
        at
    }

    /// The limit of the latest status line.
    fn limit(&self) -> usize {
        self.events()
            .iter()
            .rev()
            .find_map(|&(_, e)| match e {
                Event::Status { limit, .. } => Some(limit),
                _ => None,
            })
            .unwrap_or(0)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A failed test must not leave workers behind (SIGKILL also ends a stopped one).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(line: &str) -> Option<(u64, Event)> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| w[i].parse::<u64>().unwrap();
    match w.first().copied()? {
        "R" if w.len() == 2 => Some((n(1), Event::Ready)),
        "D" if w.len() == 2 => Some((n(1), Event::Done)),
        "S" if w.len() == 4 => Some((
            n(2),
            Event::Start {
                item: n(1),
                token: n(3),
            },
        )),
        "E" if w.len() == 3 => Some((n(2), Event::End { item: n(1) })),
        "L" if w.len() == 6 => Some((
            n(1),
            Event::Status {
                limit: n(2) as usize,
                token: n(5),
            },
        )),
        _ => None, // libtest's own lines
    }
}

/// The most items running at once across `workers`. An item that never logged its end runs
/// until its worker's entry in `ended_at` (killed processes), else to the end of time.
fn max_overlap(workers: &[&Worker], ended_at: &HashMap<&str, u64>) -> usize {
    let mut edges = Vec::new();
    for w in workers {
        let mut open = HashMap::new();
        for (t, e) in w.events() {
            match e {
                Event::Start { item, .. } => {
                    open.insert(item, t);
                    edges.push((t, 1_i32));
                }
                Event::End { item } => {
                    assert!(
                        open.remove(&item).is_some(),
                        "{}: end of {item} before its start",
                        w.name
                    );
                    edges.push((t, -1));
                }
                _ => {}
            }
        }
        let end = ended_at.get(w.name).copied().unwrap_or(u64::MAX);
        edges.extend(open.values().map(|_| (end, -1)));
    }
    // At one instant, ends before starts.
    edges.sort();
    let (mut now, mut max) = (0_i32, 0_i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// Each item `0..items` of `w` started exactly once and ended exactly once.
fn assert_exactly_once(w: &Worker, items: u64) {
    let mut starts = HashMap::<u64, usize>::new();
    let mut ends = HashMap::<u64, usize>::new();
    for (_, e) in w.events() {
        match e {
            Event::Start { item, .. } => *starts.entry(item).or_default() += 1,
            Event::End { item } => *ends.entry(item).or_default() += 1,
            _ => {}
        }
    }
    for item in 0..items {
        assert_eq!(
            starts.get(&item),
            Some(&1),
            "{}: starts of item {item}",
            w.name
        );
        assert_eq!(ends.get(&item), Some(&1), "{}: ends of item {item}", w.name);
    }
    assert_eq!(starts.len() as u64, items, "{}: items started", w.name);
}

/// Replays the status lines of `workers` in time order from `from` on; returns the first
/// instant at which `holds` is true of their latest limits.
fn first_time(workers: &[&Worker], from: u64, holds: impl Fn(&[usize]) -> bool) -> Option<u64> {
    let mut lines: Vec<(u64, usize, usize)> = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        for (t, e) in w.events() {
            if let Event::Status { limit, .. } = e {
                lines.push((t, i, limit));
            }
        }
    }
    lines.sort();
    let mut limits = vec![None; workers.len()];
    for (t, i, limit) in lines {
        limits[i] = Some(limit);
        if t >= from {
            if let Some(limits) = limits.iter().copied().collect::<Option<Vec<usize>>>() {
                if holds(&limits) {
                    return Some(t);
                }
            }
        }
    }
    None
}

/// Waits until `holds` is true of the workers' latest limits; panics after `within`.
fn wait_limits(
    workers: &[&Worker],
    what: &str,
    within: Duration,
    holds: impl Fn(&[usize]) -> bool,
) {
    let give_up = mono_ns() + within.as_nanos() as u64;
    loop {
        let limits: Vec<usize> = workers.iter().map(|w| w.limit()).collect();
        if holds(&limits) {
            return;
        }
        assert!(
            mono_ns() < give_up,
            "not {what} within {within:?}: limits {limits:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn starts(w: &Worker) -> Vec<(u64, u64, u64)> {
    w.events()
        .into_iter()
        .filter_map(|(t, e)| match e {
            Event::Start { item, token } => Some((t, item, token)),
            _ => None,
        })
        .collect()
}

fn three(server: &Server, budget_name: &str) -> [Worker; 3] {
    ["a", "b", "c"].map(|name| Worker::start(server, budget_name, name))
}

/// Three workers, each given `items` items of `item_ms`, once they hold 2 slots each.
fn three_busy(server: &Server, budget_name: &str, items: usize, item_ms: u64) -> [Worker; 3] {
    let mut ws = three(server, budget_name);
    for w in &mut ws {
        w.submit(items, item_ms);
    }
    let [a, b, c] = &ws;
    wait_limits(&[a, b, c], "at 2 slots each", Duration::from_secs(5), |l| {
        l.iter().all(|&n| n == 2)
    });
    ws
}

// === the tests ===

#[test]
fn global_concurrency_across_three_processes() {
    let server = Server::start();
    let mut ws = three(&server, "global");
    const ITEMS: u64 = 60;
    for w in &mut ws {
        w.submit(ITEMS as usize, 60);
    }
    for w in &mut ws {
        w.quit();
    }
    for w in &mut ws {
        w.wait_done(Duration::from_secs(20));
    }
    let all: Vec<&Worker> = ws.iter().collect();
    let max = max_overlap(&all, &HashMap::new());
    println!("global concurrency: at most {max} items running at once across 3 processes (budget {BUDGET})");
    assert!(max <= BUDGET, "{max} items ran at once, budget {BUDGET}");
    // The budget is used, not only respected.
    assert!(
        max >= BUDGET - 1,
        "at most {max} items at once: budget not used"
    );
    for w in &ws {
        assert_exactly_once(w, ITEMS);
        // Floor 0: nothing starts without a lease.
        assert!(
            starts(w).iter().all(|&(_, _, token)| token > 0),
            "{}: started without a lease",
            w.name
        );
    }
}

#[test]
fn kill_9_frees_the_slots_within_ttl_and_one_renewal() {
    let server = Server::start();
    let mut ws = three_busy(&server, "kill", 400, 100);
    let [a, b, c] = &mut ws;
    // At some phase of a's renewal period, not always just after the renewal that put the
    // limits at 2 each.
    std::thread::sleep(Duration::from_nanos(mono_ns() % RENEW.as_nanos() as u64));
    let killed_at = a.signal(libc::SIGKILL);
    wait_limits(
        &[&*b, &*c],
        "taking a's slots",
        TTL + RENEW + Duration::from_secs(3),
        |l| l.iter().sum::<usize>() == BUDGET,
    );
    let recovered = first_time(&[&*b, &*c], killed_at, |l| {
        l.iter().sum::<usize>() == BUDGET
    })
    .unwrap();
    let recovery = Duration::from_nanos(recovered - killed_at);
    println!("kill -9: the others held all {BUDGET} slots {recovery:?} after the kill (TTL {TTL:?}, renewal {RENEW:?})");
    for w in [&mut *b, &mut *c] {
        w.skip();
        w.quit();
    }
    for w in [&mut *b, &mut *c] {
        w.wait_done(Duration::from_secs(10));
    }
    // Within the bound: a's lease ends in Redis at most a TTL after its last renewal, which
    // was before the kill; each survivor renews within one period after that.
    assert!(
        recovery <= TTL + RENEW + SLACK,
        "recovery took {recovery:?}"
    );
    // And not before a's lease could have ended: its slots were held by a lease, not freed by
    // something else. Its last renewal was at most one period, plus a poll (RENEW / 4) and
    // some slack, before the kill.
    assert!(
        recovery >= TTL - RENEW - RENEW / 4 - Duration::from_millis(100),
        "recovery took only {recovery:?}"
    );
    let ended = HashMap::from([("a", killed_at)]);
    let max = max_overlap(&[&*a, &*b, &*c], &ended);
    println!("kill -9: at most {max} items at once");
    assert!(max <= BUDGET, "{max} items ran at once");
}

#[test]
fn sigstop_past_the_ttl_then_nothing_new_until_a_new_lease() {
    let server = Server::start();
    let mut ws = three_busy(&server, "stop", 300, 300);
    let [a, b, c] = &mut ws;
    let stopped_at = a.signal(libc::SIGSTOP);
    let old_token = starts(a).iter().map(|&(.., token)| token).max().unwrap();
    wait_limits(
        &[&*b, &*c],
        "taking a's slots",
        TTL + RENEW + Duration::from_secs(3),
        |l| l.iter().sum::<usize>() == BUDGET,
    );
    let taken = first_time(&[&*b, &*c], stopped_at, |l| {
        l.iter().sum::<usize>() == BUDGET
    })
    .unwrap();
    // Stopped for 2.5 TTLs in all.
    std::thread::sleep(Duration::from_nanos(
        (stopped_at + 2_500_000_000).saturating_sub(mono_ns()),
    ));
    let continued_at = a.signal(libc::SIGCONT);
    // a gets a lease again once the others shrink to their shares.
    a.wait_for("holding a new lease", Duration::from_secs(5), |events| {
        events.iter().any(|&(t, e)| {
            t > continued_at
                && matches!(e, Event::Status { limit, token } if limit > 0 && token > old_token)
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    for w in [&mut *a, &mut *b, &mut *c] {
        w.skip();
        w.quit();
    }
    for w in [&mut *a, &mut *b, &mut *c] {
        w.wait_done(Duration::from_secs(10));
    }

    let before: Vec<_> = starts(a)
        .into_iter()
        .filter(|&(t, ..)| t < stopped_at)
        .collect();
    let ended: Vec<u64> = a
        .events()
        .iter()
        .filter_map(|&(t, e)| match e {
            Event::End { item } if t < stopped_at => Some(item),
            _ => None,
        })
        .collect();
    let running_when_stopped = before
        .iter()
        .filter(|(_, item, _)| !ended.contains(item))
        .count();
    let after: Vec<_> = starts(a)
        .into_iter()
        .filter(|&(t, ..)| t > continued_at)
        .collect();
    let max = max_overlap(&[&*a, &*b, &*c], &HashMap::new());
    println!(
        "SIGSTOP: b and c held all {BUDGET} slots {:?} after a stopped; a ran {running_when_stopped} items \
         when stopped, at most {max} items at once; after SIGCONT a started {} items, the first {:?} after \
         SIGCONT, all under a new lease (token {old_token} before)",
        Duration::from_nanos(taken - stopped_at),
        after.len(),
        after.first().map(|&(t, ..)| Duration::from_nanos(t - continued_at)),
    );
    assert!(Duration::from_nanos(taken - stopped_at) <= TTL + RENEW + SLACK);
    assert!(max <= BUDGET + running_when_stopped, "{max} items at once");
    // Nothing that a started after SIGCONT ran under the lease it held before the stop.
    for &(t, item, token) in &after {
        assert!(
            token > old_token,
            "a started item {item} {:?} after SIGCONT under token {token} (before the stop: {old_token})",
            Duration::from_nanos(t - continued_at)
        );
    }
    // Nor did anything start while it was stopped (a check of the test itself).
    assert!(starts(a)
        .iter()
        .all(|&(t, ..)| t < stopped_at || t > continued_at));
    assert!(!after.is_empty(), "a started nothing after SIGCONT");
}

#[test]
fn redis_restart_under_load_floor_then_recovery_and_every_item_once() {
    let mut server = Server::start();
    const ITEMS: u64 = 200;
    let mut ws = three_busy(&server, "restart", ITEMS as usize, 40);
    let tokens_before: Vec<u64> = ws.iter().map(|w| starts(w).last().unwrap().2).collect();
    let stopped_at = mono_ns();
    server.stop();
    std::thread::sleep(Duration::from_millis(2500));
    let up_at = mono_ns();
    server.restart();
    for w in &ws {
        // Starts came back after the restart.
        w.wait_for("starting items again", Duration::from_secs(6), |events| {
            events
                .iter()
                .any(|&(t, e)| t > up_at && matches!(e, Event::Start { .. }))
        });
    }
    for w in &mut ws {
        w.quit();
    }
    for w in &mut ws {
        w.wait_done(Duration::from_secs(20));
    }
    let all: Vec<&Worker> = ws.iter().collect();
    for (w, &token_before) in ws.iter().zip(&tokens_before) {
        let s = starts(w);
        let last_before = s
            .iter()
            .filter(|&&(t, ..)| t < up_at)
            .map(|&(t, ..)| t)
            .max()
            .unwrap();
        let first_after = s.iter().find(|&&(t, ..)| t > up_at).unwrap();
        let floor_at = w.events().iter().find_map(|&(t, e)| match e {
            Event::Status { limit: 0, .. } if t > stopped_at && t < up_at => Some(t),
            _ => None,
        });
        println!(
            "redis restart, {}: last start {:?} after the stop, limit 0 from {:?} after the stop, first start \
             {:?} after the restart (token {} -> {})",
            w.name,
            Duration::from_nanos(last_before.saturating_sub(stopped_at)),
            floor_at.map(|t| Duration::from_nanos(t - stopped_at)),
            Duration::from_nanos(first_after.0 - up_at),
            token_before,
            first_after.2,
        );
        // At the floor (0) while Redis was gone: nothing started past the local expiry.
        assert!(floor_at.is_some(), "{}: never at the floor", w.name);
        assert!(
            last_before < stopped_at + TTL.as_nanos() as u64,
            "{}: started an item {:?} after Redis stopped",
            w.name,
            Duration::from_nanos(last_before - stopped_at)
        );
        // The fencing token still grows across a Redis that lost its data.
        assert!(
            first_after.2 > token_before,
            "{}: token {} after {token_before}",
            w.name,
            first_after.2
        );
        assert_exactly_once(w, ITEMS);
    }
    // Across processes too: a token issued after the data loss is above every token issued
    // before it, so a downstream that keeps the newest token it saw refuses the old leases.
    let tokens = |keep: &dyn Fn(u64) -> bool| -> Vec<u64> {
        all.iter()
            .flat_map(|w| starts(w))
            .filter(|&(t, ..)| keep(t))
            .map(|(.., token)| token)
            .collect()
    };
    let newest_before = *tokens(&|t| t < stopped_at).iter().max().unwrap();
    let oldest_after = *tokens(&|t| t > up_at).iter().min().unwrap();
    println!(
        "redis restart: fencing tokens up to {newest_before} before, from {oldest_after} after"
    );
    assert!(
        oldest_after > newest_before,
        "token {oldest_after} after the restart, {newest_before} before"
    );
    let max = max_overlap(&all, &HashMap::new());
    println!("redis restart: at most {max} items at once");
    assert!(max <= BUDGET, "{max} items at once");
}

#[test]
fn rebalancing_busy_takes_most_then_shares_even_out() {
    let server = Server::start();
    let mut ws = three(&server, "rebalance");
    let [a, b, c] = &mut ws;
    // Past the first TTL of a fresh Redis state, in which nobody grows (see the crate docs).
    std::thread::sleep(TTL);
    let busy_from = mono_ns();
    a.submit(1000, 50);
    // b and c are connected but idle: a grows into the whole budget.
    wait_limits(&[&*a], "most of the budget", Duration::from_secs(4), |l| {
        l[0] >= BUDGET - 1
    });
    let most = first_time(&[&*a], busy_from, |l| l[0] >= BUDGET - 1).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let a_limit = a.limit();
    let all_busy = mono_ns();
    b.submit(1000, 50);
    c.submit(1000, 50);
    // Fair share 2 each, tolerance 0, within 1.5 s: a shrinks at its next renewal (333 ms),
    // its running items end (50 ms), b and c grow at their next poll (83 ms).
    const WITHIN: Duration = Duration::from_millis(1500);
    let fair = BUDGET / 3;
    std::thread::sleep(WITHIN + Duration::from_secs(1));
    let even = first_time(&[&*a, &*b, &*c], all_busy, |l| l.iter().all(|&n| n >= fair));
    let samples: Vec<Vec<usize>> = {
        // Each worker's limits over the last second.
        let from = mono_ns() - 1_000_000_000;
        [&*a, &*b, &*c]
            .iter()
            .map(|w| {
                w.events()
                    .iter()
                    .filter_map(|&(t, e)| match e {
                        Event::Status { limit, .. } if t >= from => Some(limit),
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    };
    // b and c run out of work: after the hysteresis (one renewal period) they give their
    // slots back and a grows into them, within 1.5 s.
    let idle_from = mono_ns();
    b.skip();
    c.skip();
    std::thread::sleep(WITHIN);
    let back = first_time(&[&*a], idle_from, |l| l[0] >= BUDGET - 1);
    for w in [&mut *a, &mut *b, &mut *c] {
        w.skip();
        w.quit();
    }
    for w in [&mut *a, &mut *b, &mut *c] {
        w.wait_done(Duration::from_secs(10));
    }
    println!(
        "rebalancing: busy a reached {} slots {:?} after its items came (b, c idle), held {a_limit}; \
         all busy: every process at >= {fair} slots {:?} later; limits over the next second: a {:?}..{:?}, \
         b {:?}..{:?}, c {:?}..{:?}; b and c idle again: a back at >= {} slots {:?} later",
        BUDGET - 1,
        Duration::from_nanos(most - busy_from),
        even.map(|t| Duration::from_nanos(t - all_busy)),
        samples[0].iter().min(),
        samples[0].iter().max(),
        samples[1].iter().min(),
        samples[1].iter().max(),
        samples[2].iter().min(),
        samples[2].iter().max(),
        BUDGET - 1,
        back.map(|t| Duration::from_nanos(t - idle_from)),
    );
    assert!(
        back.is_some(),
        "a did not get the slots back from idle b and c"
    );
    assert!(
        a_limit >= BUDGET - 1,
        "busy a held only {a_limit} of {BUDGET}"
    );
    let even = even.expect("shares never evened out");
    assert!(
        Duration::from_nanos(even - all_busy) <= WITHIN,
        "shares even only after {:?}",
        Duration::from_nanos(even - all_busy)
    );
    for (w, s) in ["a", "b", "c"].iter().zip(&samples) {
        assert!(!s.is_empty());
        assert!(
            s.iter().all(|&n| n >= fair),
            "{w}: limits {s:?} in the last second"
        );
    }
    let max = max_overlap(&[&*a, &*b, &*c], &HashMap::new());
    assert!(max <= BUDGET, "{max} items at once");
}
