//! What tests/shuttle.rs and tests/shuttle_features.rs share: how many schedules to explore,
//! shuttle's configuration, and the drained-limiter check.
#![allow(dead_code)]

use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::{Config, Runner};
use task_limiter::Limiter;

/// Schedules per property, limit and scheduler: `TASK_LIMITER_SHUTTLE_ITERATIONS`, or 1000.
pub fn iterations() -> usize {
    match std::env::var("TASK_LIMITER_SHUTTLE_ITERATIONS") {
        Ok(n) => n
            .parse()
            .expect("TASK_LIMITER_SHUTTLE_ITERATIONS must be a number"),
        Err(_) => 1000,
    }
}

pub fn config() -> Config {
    let mut config = Config::new();
    // The limiter's futures nest a few levels deep; debug builds need more than the default.
    config.stack_size = 0x8_0000;
    // On a failure, stop at once and leak the other tasks' stacks instead of unwinding them: a
    // task preempted while holding one of the limiter's locks would block the destructors of
    // the others, and a panic during that unwinding aborts the process before the failure is
    // reported.
    config
        .ungraceful_shutdown_config
        .immediately_return_on_panic = true;
    config
}

/// Runs `property` under the random and the PCT scheduler for each limit in 1..=3.
pub fn explore<F>(property: F)
where
    F: Fn(usize) + Send + Sync + Copy + 'static,
{
    let n = iterations();
    for limit in 1..=3 {
        Runner::new(RandomScheduler::new(n), config()).run(move || property(limit));
        Runner::new(PctScheduler::new(3, n), config()).run(move || property(limit));
    }
}

/// Drives `future` to completion on shuttle's scheduler from the test's main task.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    shuttle::future::block_on(future)
}

/// Checks that the limiter's counters add up once it is drained.
#[track_caller]
pub fn assert_drained<S>(limiter: &Limiter<S>) {
    let m = limiter.metrics();
    assert_eq!((m.queued, m.running), (0, 0), "{m:?}");
    assert_eq!(
        m.submitted,
        m.completed + m.panicked + m.cancelled + m.timed_out,
        "{m:?}"
    );
    assert!(limiter.busy_workers().is_empty(), "{m:?}");
}
