//! One budget across processes: run this in three terminals against one Redis and watch them
//! share it. Every second each process prints its slots (its limiter's limit), its running and
//! queued items and the items it finished per second; at the end, its Redis calls.
//!
//! ```text
//! redis-server --save '' --appendonly no        # or any local Redis
//! cargo run -p task-limiter-redis --example cluster -- --redis redis://127.0.0.1/ --budget 6 --items 300
//! ```
//!
//! Start one: it takes the whole budget (after one TTL, 3 s, on a Redis that has no state for
//! the budget yet: see "a fresh Redis state" in the crate docs). Start two more: the slots split 2/2/2. Kill one with
//! `kill -9`: the others take its slots within the TTL plus one renewal period. Stop one with
//! Ctrl-Z and resume it with `fg` after a few seconds: it starts nothing until it holds a
//! lease again. Ctrl-C cancels the items and gives the slots back.
//!
//! `--item-ms 0 --rate 100000 --items 1000000` pushes tiny items at 100k/s, for counting Redis
//! calls (build with `--release`).

use std::time::Duration;

use clap::Parser;
use task_limiter::Limiter;
use task_limiter_redis::ClusterBudget;
use tokio::time::{interval, Instant, MissedTickBehavior};

#[derive(Parser, Debug)]
#[command(about = "One process of a cluster-wide budget on Redis")]
struct Args {
    /// The Redis to lease slots from.
    #[arg(long, default_value = "redis://127.0.0.1/")]
    redis: String,
    /// The name of the budget: processes with the same name share it.
    #[arg(long, default_value = "cluster-example")]
    name: String,
    /// Items running at once across all processes.
    #[arg(long, default_value_t = 6)]
    budget: usize,
    /// Items this process runs.
    #[arg(long, default_value_t = 300)]
    items: u64,
    /// How long each item sleeps, in milliseconds (0: it returns at once).
    #[arg(long, default_value_t = 200)]
    item_ms: u64,
    /// Items submitted per second (0: all at once).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// The lease's TTL in milliseconds (renewed every third of it).
    #[arg(long, default_value_t = 3000)]
    ttl_ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let limiter = Limiter::new(1);
    let budget = ClusterBudget::builder(&args.redis, &args.name)
        .budget(args.budget)
        .ttl(Duration::from_millis(args.ttl_ms))
        .connect(&limiter)
        .await?;
    println!(
        "{}: budget {:?} of {} on {}",
        budget.process_id(),
        args.name,
        args.budget,
        args.redis
    );

    let start = Instant::now();
    let submitter = tokio::spawn(submit(limiter.clone(), args.items, args.item_ms, args.rate));
    let drained = async {
        submitter.await.expect("the submitter does not panic");
        limiter.close();
        limiter.wait().await;
    };
    tokio::pin!(drained);
    let mut tick = interval(Duration::from_secs(1));
    tick.tick().await;
    let mut finished = 0;
    loop {
        tokio::select! {
            _ = &mut drained => break,
            _ = tokio::signal::ctrl_c() => {
                println!("interrupted: cancelling the items, giving the slots back");
                limiter.shutdown().await;
                break;
            }
            _ = tick.tick() => {
                let m = limiter.metrics();
                let token = budget.fencing_token().map_or("none".to_owned(), |t| t.to_string());
                println!(
                    "{:>4.0}s  slots {:>3}  running {:>3}  queued {:>7}  items/s {:>7}  token {token}",
                    start.elapsed().as_secs_f64(),
                    m.limit,
                    m.running,
                    m.queued,
                    m.completed - finished,
                );
                finished = m.completed;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let m = limiter.metrics();
    let b = budget.metrics();
    println!(
        "done: {} items in {elapsed:.1} s ({:.0} items/s); {} Redis calls ({:.1}/s), {} failed, {} leases",
        m.completed,
        m.completed as f64 / elapsed,
        b.redis_calls,
        b.redis_calls as f64 / elapsed,
        b.redis_errors,
        b.leases,
    );
    budget.release().await?;
    Ok(())
}

/// Submits `items` items, all at once or `rate` per second (in batches every 10 ms).
async fn submit(limiter: Limiter, items: u64, item_ms: u64, rate: u64) {
    let work = Duration::from_millis(item_ms);
    let spawn = |limiter: &Limiter| {
        if work.is_zero() {
            limiter.spawn(async {});
        } else {
            // The sleep starts when the item does (a `Sleep` made here would count from now).
            limiter.spawn(async move { tokio::time::sleep(work).await });
        }
    };
    if rate == 0 {
        for _ in 0..items {
            spawn(&limiter);
        }
        return;
    }
    let mut tick = interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let per_tick = rate.div_ceil(100);
    let mut sent = 0;
    while sent < items {
        tick.tick().await;
        for _ in 0..per_tick.min(items - sent) {
            spawn(&limiter);
        }
        sent += per_tick.min(items - sent);
    }
}
