//! Ordered batches: fetch a list of "pages" through a limiter and get the results back as a
//! stream, in input order or as they finish, and stop the whole batch at the first error.
//!
//! Run it with `cargo run --example batch`.

use std::time::Duration;

use futures::StreamExt;
use task_limiter::{Batch, Limiter};

async fn fetch(page: u32) -> Result<String, String> {
    // Later pages are quicker, so completion order differs from input order.
    tokio::time::sleep(Duration::from_millis(u64::from(20 - page))).await;
    match page {
        13 => Err(format!("page {page}: not found")),
        _ => Ok(format!("page {page}")),
    }
}

#[tokio::main]
async fn main() {
    let limiter = Limiter::builder().limit(4).name("batch").build();

    // Input order: results come back in the order of the pages, whatever order they finish in.
    let mut pages = limiter.spawn_batch((0..8).map(fetch));
    while let Some(page) = pages.next().await {
        println!("in order:   {}", page.unwrap().unwrap());
    }

    // Completion order.
    let mut pages = limiter.spawn_batch((0..8).map(fetch)).unordered();
    while let Some(page) = pages.next().await {
        println!("as done:    {}", page.unwrap().unwrap());
    }

    // Fail fast: the first error aborts the rest of the batch (queued pages are dropped at
    // once) and is the last result the stream yields.
    let mut pages = limiter.spawn_batch((0..20).map(fetch)).cancel_on_error();
    while let Some(page) = pages.next().await {
        match page.unwrap() {
            Ok(page) => println!("fail fast:  {page}"),
            Err(err) => println!("fail fast:  stopped at {err}"),
        }
    }

    // Any handles make a batch too: here blocking items, in the order of the handles.
    let batch: Batch<u64> = (1..=4u64)
        .map(|n| limiter.spawn_blocking(move |_| (1..=n).product()))
        .collect();
    let factorials: Vec<u64> = batch.map(Result::unwrap).collect().await;
    println!("factorials: {factorials:?}");

    limiter.close();
    limiter.wait().await;
    println!("{:?}", limiter.metrics());
}
