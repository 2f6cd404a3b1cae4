//! An independent check of invariants 1 and 2 (DESIGN.md), shared by tests/shuttle.rs,
//! tests/chaos.rs and the `set_limit` tests: items report when their bodies start and end, and
//! the monitor records every violation instead of panicking inside an item (the limiter would
//! catch that panic).
//!
//! The limit in force changes with `set_limit`, so each item carries a mark: the first limit it
//! may have been admitted under (taken at submission, or at start for an item known to be
//! admitted after the latest change). An item's worker ID must be below the largest limit since
//! its mark. The running count is held to the largest limit since the *latest* mark among the
//! running items. Why that suffices: take the running items, and the one among them admitted
//! last. When it was admitted, all the others were already admitted and not yet finished, and
//! the limiter admits only while fewer than the limit in force are running; that admission came
//! after every running item's mark (each item's own admission follows its mark). So the running
//! count never exceeds the limit in force at that admission, one of the limits since the latest
//! mark.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;

use task_limiter::{Limiter, WorkerId};

#[derive(Debug)]
pub struct Monitor {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Every limit set, in order; the last one is (about to be) in force.
    limits: Vec<usize>,
    /// Worker index -> (item, the `since` mark it was submitted with).
    running: HashMap<usize, (u64, usize)>,
    max_running: usize,
    started: u64,
    violations: Vec<String>,
}

/// Returned by [`Monitor::enter`]; the item's body ends when it is dropped (also on panic and
/// abort).
#[derive(Debug)]
pub struct Running<'a> {
    monitor: &'a Monitor,
    worker: usize,
    item: u64,
}

impl Monitor {
    pub fn new(limit: usize) -> Monitor {
        Monitor {
            state: Mutex::new(State {
                limits: vec![limit],
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Taken when an item is submitted. One entry earlier than the newest, so that a limit
    /// recorded by [`set_limit`](Self::set_limit) but not yet stored in the limiter still counts.
    pub fn mark(&self) -> usize {
        self.lock().limits.len().saturating_sub(2)
    }

    /// The limit in force now, exactly: for an item submitted by the task that calls
    /// [`set_limit`](Self::set_limit), which cannot see a limit recorded but not yet stored.
    pub fn mark_exact(&self) -> usize {
        self.lock().limits.len() - 1
    }

    /// Every item admitted before the latest [`set_limit`](Self::set_limit) has started (the
    /// caller made sure): from now on [`mark`](Self::mark) points at the latest limit alone.
    pub fn settled(&self) {
        let mut state = self.lock();
        let latest = *state.limits.last().expect("a limit is always recorded");
        state.limits.push(latest);
    }

    /// Records `limit`, then sets it. Call it from one task at a time, so that the record's order
    /// is the order of the stores.
    pub fn set_limit<S>(&self, limiter: &Limiter<S>, limit: usize) {
        self.lock().limits.push(limit);
        limiter.set_limit(limit);
    }

    /// An item submitted at `since` starts its body on `worker`.
    pub fn enter(&self, item: u64, worker: WorkerId, since: usize) -> Running<'_> {
        let worker = worker.index();
        let mut state = self.lock();
        state.started += 1;
        let ceiling = |state: &State, from: usize| -> usize {
            state.limits[from..].iter().copied().max().unwrap_or(0)
        };
        if worker >= ceiling(&state, since) {
            let msg = format!(
                "item {item} runs on worker {worker}, not below the limits {:?} in force since its mark",
                &state.limits[since..]
            );
            state.violations.push(msg);
        }
        if let Some(&(other, _)) = state.running.get(&worker) {
            let msg = format!("items {other} and {item} share a worker ID: {worker}");
            state.violations.push(msg);
        } else {
            state.running.insert(worker, (item, since));
        }
        let now = state.running.len();
        state.max_running = state.max_running.max(now);
        let latest = state
            .running
            .values()
            .map(|&(_, since)| since)
            .max()
            .unwrap_or(since);
        if now > ceiling(&state, latest) {
            let msg = format!(
                "{now} items run at once, over the limits {:?} in force since the last of them could be admitted",
                &state.limits[latest..]
            );
            state.violations.push(msg);
        }
        Running {
            monitor: self,
            worker,
            item,
        }
    }

    pub fn max_running(&self) -> usize {
        self.lock().max_running
    }

    /// Bodies started so far.
    pub fn started(&self) -> u64 {
        self.lock().started
    }

    /// Items whose bodies are running now.
    pub fn running(&self) -> usize {
        self.lock().running.len()
    }

    /// The violations seen, if any, summed up.
    pub fn check(&self) -> Result<(), String> {
        let state = self.lock();
        match state.violations.len() {
            0 => Ok(()),
            n => {
                let first: Vec<_> = state.violations.iter().take(5).collect();
                Err(format!("{n} violations, first: {first:#?}"))
            }
        }
    }

    /// Panics with the first violations seen, if any.
    #[track_caller]
    pub fn assert_ok(&self) {
        if let Err(violations) = self.check() {
            panic!("{violations}");
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = self.monitor.lock();
        if state.running.get(&self.worker).map(|&(item, _)| item) == Some(self.item) {
            state.running.remove(&self.worker);
        }
    }
}
