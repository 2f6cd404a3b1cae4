//! `Gradient` against noisy and heavy-tailed service times (issue 21), on paused time against
//! the simulated downstream of `examples/support/downstream.rs`: lognormal service times must
//! not drag the baseline (and the limit) down, and open-loop calls near a collapsing
//! downstream's capacity must not pay for baseline probes in latency.
#[path = "../examples/support/downstream.rs"]
mod downstream;

use std::time::Duration;

use downstream::{mean, run, run_arrivals, share_within, Arrivals, Downstream, Noise, OpenFigures};
use task_limiter::adaptive::Gradient;
use task_limiter::Limiter;

const BASE: Duration = Duration::from_millis(10);
const CLIENTS: usize = 100;

/// Lognormal service times (sigma 0.5) at a constant capacity of 20: once settled, the limit
/// stays within `[c/2, 2c + 4]` for at least 90 % of the samples, and it does not sink (nor
/// creep up) over the run: its late mean is at most 5 % above its early mean, and at most
/// 10 % below. (Not "not above": means over 2,000 samples of this noise wander by a few per
/// cent with no trend, 22.3-23.2 here; the baseline itself never moves up between probes.)
#[tokio::test(start_paused = true)]
async fn the_limit_holds_its_band_under_lognormal_noise() {
    let c = 20;
    for start in [c, 4 * c] {
        let downstream = Downstream::noisy(c, BASE, false, 1.0, Noise::LogNormal(0.5));
        let limiter = Limiter::builder()
            .adaptive(Gradient::new())
            .limit(start)
            .max_limit(200)
            .build();
        let trace = run(&limiter, &downstream, CLIENTS, &[(c, 6000)]).await;
        let settled = &trace.limits[1000..];
        let within = share_within(settled, c / 2, 2 * c + 4);
        let (early, late) = (mean(&trace.limits[1000..3000]), mean(&trace.limits[4000..]));
        assert!(
            within >= 0.9,
            "start {start}: {:.0} % within the band",
            100.0 * within
        );
        assert!(
            late <= early * 1.05 && late >= early * 0.9,
            "start {start}: the limit moved from {early:.1} to {late:.1}"
        );
    }
}

/// Calls arriving open loop (Poisson) at 90 % of the capacity of a downstream whose throughput
/// collapses past it: once past the first baseline probe, `Gradient` serves at least 95 % of
/// what the best fixed limit serves, with a p99 latency at most 1.5 times its.
#[tokio::test(start_paused = true)]
async fn open_loop_near_capacity_costs_little_against_the_best_fixed_limit() {
    let c = 16;
    let arrivals = Arrivals {
        load: 0.9,
        poisson: true,
    };
    let run_for = Duration::from_secs(8);
    let warm_up = Duration::from_secs(2);
    let phases = [(c, run_for)];
    let make = || Downstream::noisy(c, BASE, false, 1.5, Noise::Uniform);
    // Settled figures for the fixed limits too, from the same point on.
    let mut fixed = Vec::new();
    for n in [c - 2, c, c + 2, c + 4] {
        let trace = run_arrivals(&Limiter::new(n), &make(), BASE, arrivals, &phases).await;
        fixed.push((n, OpenFigures::of(&trace, warm_up)));
    }
    let most = fixed.iter().map(|(_, f)| f.throughput).fold(0.0, f64::max);
    let (best, best_figures) = fixed
        .iter()
        .filter(|(_, f)| f.throughput >= 0.99 * most)
        .min_by_key(|(_, f)| f.settled_p99)
        .copied()
        .unwrap();
    let limiter = Limiter::builder()
        .adaptive(Gradient::new())
        .limit(c)
        .build();
    let trace = run_arrivals(&limiter, &make(), BASE, arrivals, &phases).await;
    let adaptive = OpenFigures::of(&trace, warm_up);
    assert!(
        adaptive.throughput >= 0.95 * best_figures.throughput
            && adaptive.settled_p99.as_secs_f64() <= 1.5 * best_figures.settled_p99.as_secs_f64(),
        "Gradient {adaptive:?} against fixed {best} {best_figures:?}"
    );
}

/// A downstream that gets three times slower for good: the limit falls, keeps falling, and the
/// baseline is measured again, so the limit comes back to the capacity (it counts items, not
/// time) instead of staying at the minimum.
#[tokio::test(start_paused = true)]
async fn a_downstream_slower_for_good_is_measured_again() {
    let c = 16;
    let downstream = Downstream::new(c, BASE, false);
    let limiter = Limiter::builder()
        .adaptive(Gradient::new())
        .limit(c)
        .max_limit(200)
        .build();
    run(&limiter, &downstream, CLIENTS, &[(c, 1000)]).await;
    downstream.set_base(BASE * 3);
    let slower = run(&limiter, &downstream, CLIENTS, &[(c, 1500)]).await;
    let lowest = slower.limits.iter().min().unwrap();
    assert!(*lowest < c / 2, "the slowdown never brought the limit down");
    let settled = &slower.limits[1000..];
    assert!(
        settled.iter().all(|l| (c..=2 * c).contains(l)),
        "the limit did not come back: {settled:?}"
    );
}
