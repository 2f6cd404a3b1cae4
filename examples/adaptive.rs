//! An adaptive limit finding a downstream's capacity as it changes (16, then 4, then 32), and
//! how it compares with fixed limits on the same downstream.
//!
//! The downstream is simulated (`examples/support/downstream.rs`): its calls take 10 ms until
//! more than `capacity` are in it, then every call slows down in proportion. The run is on
//! tokio's paused clock, so it takes well under a second and gives the same figures every
//! time; times below are the simulated ones. It writes `adaptive.svg`: the limit in force, the
//! capacity, and the p99 time the calls spend in the downstream, over time.
//!
//! ```text
//! cargo run --release --example adaptive -- [--out adaptive.svg] [--items 3000]
//! ```
//!
//! With `--noise` it prints instead how `Gradient` fares against noisy and heavy-tailed
//! service times (lognormal): the share of the time its limit stays within `[c/2, 2c + 4]` of a
//! constant capacity `c`, and, with calls arriving open loop at 90 % of the capacity of a
//! downstream whose throughput collapses past it, its throughput and p99 latency against the
//! best fixed limit's.
#[path = "support/downstream.rs"]
mod downstream;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use downstream::{
    best_fixed, mean, run, run_arrivals, run_open, share_within, Arrivals, Downstream, Noise,
    OpenFigures, Trace,
};
use plotters::prelude::*;
use task_limiter::adaptive::{Aimd, Gradient};
use task_limiter::Limiter;

/// The downstream's capacity in each phase.
const CAPACITIES: [usize; 3] = [16, 4, 32];
const BASE: Duration = Duration::from_millis(10);
/// Callers, each submitting one call and awaiting it: more than any limit here needs.
const CLIENTS: usize = 100;

#[derive(Parser)]
#[command(about = "An adaptive limit against a simulated downstream whose capacity changes")]
struct Args {
    /// Where to write the plot.
    #[arg(long, default_value = "adaptive.svg")]
    out: PathBuf,
    /// Calls per phase of capacity.
    #[arg(long, default_value_t = 3000)]
    items: usize,
    /// Print the figures against noisy service times and open-loop arrivals instead.
    #[arg(long)]
    noise: bool,
    /// With `--noise`: simulated seconds of each open-loop run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.noise {
        closed_loop_noise().await;
        println!();
        open_loop_near_capacity(Duration::from_secs(args.seconds)).await;
        return Ok(());
    }
    let phases: Vec<(usize, usize)> = CAPACITIES.iter().map(|&c| (c, args.items)).collect();

    // The plotted run: Gradient, from a limit of 1, on a downstream that queues.
    let limiter = Limiter::builder()
        .adaptive(Gradient::new())
        .limit(1)
        .build();
    let trace = run(
        &limiter,
        &Downstream::new(16, BASE, false),
        CLIENTS,
        &phases,
    )
    .await;
    plot(&trace, &args.out)?;
    println!("wrote {}", args.out.display());
    println!();
    print_phases(&trace, &phases);

    println!();
    println!("a downstream that queues past its capacity (Gradient reads latency):");
    compare(&phases, false).await;
    println!();
    println!("a downstream that refuses past its capacity, at once (Aimd reads the refusals):");
    compare(&phases, true).await;
    Ok(())
}

/// The mean limit and the p99 run time of each phase, once settled (its last two thirds).
fn print_phases(trace: &Trace, phases: &[(usize, usize)]) {
    let mut from = 0;
    for &(capacity, items) in phases {
        let settled = from + items / 3..from + items;
        let limits = &trace.limits[settled.clone()];
        let mean = limits.iter().sum::<usize>() as f64 / limits.len() as f64;
        let mut latencies = trace.run_times[settled].to_vec();
        latencies.sort();
        let p99 = latencies[latencies.len() * 99 / 100];
        println!(
            "capacity {capacity:>2}: limit settled at {mean:>5.1} (min {}, max {}), p99 run time {:>5.1} ms",
            limits.iter().min().unwrap(),
            limits.iter().max().unwrap(),
            p99.as_secs_f64() * 1e3
        );
        from += items;
    }
}

/// Fixed limits (too low, right for the first phase, too high) against the adaptive ones, on
/// one downstream, by goodput and latency over the whole run: calls arrive at 80 % of the
/// capacity of each phase, and a downstream pushed past its capacity serves fewer calls the
/// further it is pushed (`thrash` 1.5) or refuses them.
async fn compare(phases: &[(usize, usize)], refuses: bool) {
    println!(
        "{:<22} {:>10} {:>9} {:>9} {:>9}",
        "limit", "served/s", "p50 ms", "p99 ms", "refused"
    );
    let mut rows: Vec<(String, Limiter)> = [4, 16, 64]
        .into_iter()
        .map(|n| (format!("fixed {n}"), Limiter::new(n)))
        .collect();
    rows.push((
        "adaptive: Gradient".into(),
        Limiter::builder()
            .adaptive(Gradient::new())
            .limit(1)
            .build(),
    ));
    // Aimd reads overloads only: on a downstream that queues rather than refuses, it needs a
    // latency bound to count as one (here three times the unqueued call).
    let aimd = match refuses {
        true => Aimd::new(),
        false => Aimd::new().latency_limit(BASE * 3),
    };
    rows.push((
        format!("adaptive: Aimd{}", if refuses { "" } else { " (30 ms)" }),
        Limiter::builder().adaptive(aimd).limit(1).build(),
    ));
    // Each phase lasts as long as the closed-loop run's phase would at full capacity.
    let timed: Vec<(usize, Duration)> = phases
        .iter()
        .map(|&(capacity, items)| (capacity, BASE.mul_f64(items as f64 / capacity as f64)))
        .collect();
    for (name, limiter) in rows {
        let downstream = Downstream::thrashing(phases[0].0, BASE, refuses, 1.5);
        let trace = run_open(&limiter, &downstream, BASE, &timed).await;
        let refused = trace.refused.iter().filter(|r| **r).count();
        println!(
            "{name:<22} {:>10.0} {:>9.1} {:>9.1} {:>9}",
            trace.throughput(),
            trace.latency_quantile(0.5).as_secs_f64() * 1e3,
            trace.latency_quantile(0.99).as_secs_f64() * 1e3,
            refused
        );
    }
}

/// `Gradient` (from a limit of 1 and of 4c) against a downstream of constant capacity `c` whose
/// service times are lognormal, with more callers than the limit: the share of the samples
/// after the first 500 whose limit lies within `[c/2, 2c + 4]`, and the mean limit early
/// (samples 500..2,500) and late (the last 2,000).
async fn closed_loop_noise() {
    const ITEMS: usize = 8000;
    println!(
        "closed loop, 100 callers, {ITEMS} calls, constant capacity c, lognormal service times:"
    );
    println!(
        "{:>5} {:>3} {:>5} {:>11} {:>10} {:>9} {:>5} {:>5}",
        "sigma", "c", "start", "in [c/2,2c+4]", "early mean", "late mean", "min", "max"
    );
    for sigma in [0.3, 0.5, 1.0] {
        for c in [8, 20, 40] {
            for start in [1, 4 * c] {
                let downstream = Downstream::noisy(c, BASE, false, 1.0, Noise::LogNormal(sigma));
                let limiter = Limiter::builder()
                    .adaptive(Gradient::new())
                    .limit(start)
                    .max_limit(1000)
                    .build();
                let trace = run(&limiter, &downstream, CLIENTS, &[(c, ITEMS)]).await;
                let settled = &trace.limits[500..];
                println!(
                    "{sigma:>5} {c:>3} {start:>5} {:>12.1}% {:>10.1} {:>9.1} {:>5} {:>5}",
                    100.0 * share_within(settled, c / 2, 2 * c + 4),
                    mean(&trace.limits[500..2500]),
                    mean(&trace.limits[ITEMS - 2000..]),
                    settled.iter().min().unwrap(),
                    settled.iter().max().unwrap(),
                );
            }
        }
    }
}

/// Calls arriving open loop at 90 % of a constant capacity, on a downstream that serves fewer
/// calls the further it is pushed past its capacity (`thrash` 1.5): `Gradient` against the best
/// of the fixed limits from `c/2` to `2c` (the lowest p99 among those serving at least 99 % of
/// the most any serves).
async fn open_loop_near_capacity(duration: Duration) {
    // Settled: the calls that finish after the first probe's queue has drained.
    let warm_up = Duration::from_secs(5);
    println!(
        "open loop at 90 % of capacity c, {} s, a downstream that collapses past c (thrash 1.5);",
        duration.as_secs()
    );
    println!(
        "p99 over the whole run, and settled (calls finishing after {} s):",
        warm_up.as_secs()
    );
    println!(
        "{:>3} {:>10} {:>8} | {:>5} {:>7} {:>5} {:>5} | {:>7} {:>5} {:>5} {:>6} | {:>5} {:>5} {:>5}",
        "c", "noise", "arrivals", "fixed", "thr/s", "p99", "set.", "thr/s", "p99", "set.", "limit",
        "thr", "p99", "set."
    );
    for c in [16, 40] {
        for noise in [Noise::Uniform, Noise::LogNormal(0.5)] {
            for poisson in [false, true] {
                let arrivals = Arrivals { load: 0.9, poisson };
                let phases = [(c, duration)];
                let make = || Downstream::noisy(c, BASE, false, 1.5, noise);
                let limits: Vec<usize> = (c / 2..=2 * c).step_by((c / 8).max(1)).collect();
                let (_, (best, fixed)) =
                    best_fixed(&limits, make, BASE, arrivals, &phases, warm_up).await;
                let limiter = Limiter::builder()
                    .adaptive(Gradient::new())
                    .limit(c)
                    .build();
                let trace = run_arrivals(&limiter, &make(), BASE, arrivals, &phases).await;
                let adaptive = OpenFigures::of(&trace, warm_up);
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                println!(
                    "{c:>3} {:>10} {:>8} | {best:>5} {:>7.0} {:>5.0} {:>5.0} | {:>7.0} {:>5.0} {:>5.0} {:>6.1} | {:>5.2} {:>5.2} {:>5.2}",
                    match noise {
                        Noise::Uniform => "±10 %".to_string(),
                        Noise::LogNormal(s) => format!("lognorm {s}"),
                    },
                    if poisson { "poisson" } else { "even" },
                    fixed.throughput,
                    ms(fixed.p99),
                    ms(fixed.settled_p99),
                    adaptive.throughput,
                    ms(adaptive.p99),
                    ms(adaptive.settled_p99),
                    mean(&trace.limits),
                    adaptive.throughput / fixed.throughput,
                    ms(adaptive.p99) / ms(fixed.p99),
                    ms(adaptive.settled_p99) / ms(fixed.settled_p99),
                );
            }
        }
    }
    println!("(fixed: the best fixed limit; then its figures, Gradient's, and Gradient ÷ fixed)");
}

/// Draws the limit and the capacity (left axis) and the p99 latency per 100 calls (right
/// axis) against the run's time.
fn plot(trace: &Trace, out: &PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let secs = |d: &Duration| d.as_secs_f64();
    let end = trace.at.last().map(secs).unwrap_or(1.0);
    let most = trace.limits.iter().chain(&trace.capacities).max().copied();
    let p99: Vec<(f64, f64)> = trace
        .run_times
        .chunks(100)
        .zip(trace.at.chunks(100))
        .map(|(latencies, at)| {
            let mut sorted = latencies.to_vec();
            sorted.sort();
            let p99 = sorted[(sorted.len() - 1) * 99 / 100];
            (secs(at.last().unwrap()), p99.as_secs_f64() * 1e3)
        })
        .collect();
    let slowest = p99.iter().map(|p| p.1).fold(0.0, f64::max);

    let root = SVGBackend::new(out, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "task-limiter: Gradient against a downstream whose capacity goes 16 → 4 → 32",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..(most.unwrap_or(1) as f64 * 1.2))?
        .set_secondary_coord(0.0..end, 0.0..slowest * 1.2);
    chart
        .configure_mesh()
        .x_desc("simulated time (s)")
        .y_desc("items at once")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("p99 run time (ms)")
        .draw()?;

    let series = |values: &[usize]| -> Vec<(f64, f64)> {
        trace
            .at
            .iter()
            .zip(values)
            .map(|(at, &v)| (secs(at), v as f64))
            .collect()
    };
    chart
        .draw_series(LineSeries::new(
            series(&trace.capacities),
            BLACK.stroke_width(2),
        ))?
        .label("downstream capacity")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(series(&trace.limits), BLUE.stroke_width(2)))?
        .label("limit in force")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(p99, RED))?
        .label("p99 time in the downstream, per 100 calls (right axis)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
