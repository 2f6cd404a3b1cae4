//! Per-key limits and weighted items: limits at every instant, turns across keys, the bound on a
//! heavy item's wait, live key limits, aborts, and the bookkeeping's memory.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{settle, DropFlag, Gate};
use task_limiter::{JoinHandle, Key, Limiter, QueueOrder};
use tokio::time::sleep;

/// The weight running now, in all and per key, checked by each item as it starts against the
/// limits in force then.
#[derive(Clone, Default)]
struct Load(Arc<Mutex<LoadInner>>);

#[derive(Default)]
struct LoadInner {
    total: usize,
    per_key: HashMap<String, usize>,
    max_total: usize,
    max_key: usize,
    starts: Vec<String>,
}

struct Held(Load, String, usize);

impl Load {
    fn enter(&self, key: &str, weight: usize) -> Held {
        let mut load = self.0.lock().unwrap();
        load.total += weight;
        let total = load.total;
        load.max_total = load.max_total.max(total);
        let per_key = load.per_key.entry(key.to_string()).or_default();
        *per_key += weight;
        let per_key = *per_key;
        load.max_key = load.max_key.max(per_key);
        load.starts.push(key.to_string());
        Held(self.clone(), key.to_string(), weight)
    }

    fn max(&self) -> (usize, usize) {
        let load = self.0.lock().unwrap();
        (load.max_total, load.max_key)
    }

    fn total(&self) -> usize {
        self.0.lock().unwrap().total
    }

    fn starts(&self) -> Vec<String> {
        self.0.lock().unwrap().starts.clone()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut load = self.0 .0.lock().unwrap();
        load.total -= self.2;
        *load.per_key.get_mut(&self.1).unwrap() -= self.2;
    }
}

fn spawn_keyed(
    limiter: &Limiter,
    load: &Load,
    key: &str,
    weight: u32,
    run_for: Duration,
) -> JoinHandle<()> {
    let load = load.clone();
    let name = key.to_string();
    limiter
        .build_task()
        .key(key)
        .weight(weight)
        .spawn(async move {
            let _held = load.enter(&name, weight as usize);
            sleep(run_for).await;
        })
}

#[tokio::test(start_paused = true)]
async fn per_key_and_global_limits_hold_and_are_used() {
    let limiter = Limiter::builder().limit(8).per_key_limit(2).build();
    let load = Load::default();
    let mut handles = Vec::new();
    for i in 0..60 {
        let key = ["a", "b", "c"][i % 3];
        handles.push(spawn_keyed(
            &limiter,
            &load,
            key,
            1,
            Duration::from_millis(10),
        ));
    }
    settle().await;
    assert_eq!(load.total(), 6, "three keys at two each, under a global 8");
    let m = limiter.key_metrics("a").unwrap();
    assert_eq!(
        (m.limit, m.running, m.weight_running, m.queued),
        (2, 2, 2, 18)
    );
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(load.max(), (6, 2));
    assert!(limiter.key_metrics("a").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_key_with_one_item_starts_it_within_one_round_however_long_another_queue_is() {
    let limiter = Limiter::new(1);
    let load = Load::default();
    let mut handles = Vec::new();
    for _ in 0..1000 {
        handles.push(spawn_keyed(
            &limiter,
            &load,
            "big",
            1,
            Duration::from_millis(1),
        ));
    }
    handles.push(spawn_keyed(
        &limiter,
        &load,
        "small",
        1,
        Duration::from_millis(1),
    ));
    for handle in handles {
        handle.await.unwrap();
    }
    let starts = load.starts();
    let at = starts.iter().position(|key| key == "small").unwrap();
    // "big" may have one item started (or handed to a worker) before "small" was queued; then
    // the turn is "small"'s.
    assert!(at <= 2, "small started {at}th");
}

#[tokio::test(start_paused = true)]
async fn keys_take_turns_and_unkeyed_items_are_one_more_lane() {
    let limiter = Limiter::builder().limit(1).build();
    let gate = Gate::new();
    // Holds the one worker while the rest queue, so the order is admission's alone.
    let blocker = {
        let gate = gate.clone();
        limiter.spawn(async move { gate.wait().await })
    };
    settle().await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for (key, n) in [(Some("x"), 3), (Some("y"), 3), (None, 3)] {
        for i in 0..n {
            let order = order.clone();
            let label = format!("{}{i}", key.unwrap_or("-"));
            let task = limiter.build_task();
            let task = match key {
                Some(key) => task.key(key),
                None => task,
            };
            handles.push(task.spawn(async move { order.lock().unwrap().push(label) }));
        }
    }
    settle().await;
    gate.open(1);
    blocker.await.unwrap();
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        ["x0", "y0", "-0", "x1", "y1", "-1", "x2", "y2", "-2"]
    );
}

#[tokio::test(start_paused = true)]
async fn within_a_key_the_queue_order_holds() {
    let limiter = Limiter::builder()
        .limit(1)
        .queue_order(QueueOrder::Priority)
        .build();
    let gate = Gate::new();
    let blocker = {
        let gate = gate.clone();
        limiter
            .build_task()
            .key("k")
            .spawn(async move { gate.wait().await })
    };
    settle().await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = [1, 5, 3]
        .into_iter()
        .map(|priority| {
            let order = order.clone();
            limiter
                .build_task()
                .key("k")
                .priority(priority)
                .spawn(async move { order.lock().unwrap().push(priority) })
        })
        .collect();
    settle().await;
    gate.open(1);
    blocker.await.unwrap();
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [5, 3, 1]);
}

#[tokio::test(start_paused = true)]
async fn set_key_limit_grows_at_once_and_shrinks_by_letting_items_finish() {
    let limiter = Limiter::builder().limit(16).per_key_limit(1).build();
    let load = Load::default();
    let handles: Vec<_> = (0..10)
        .map(|_| spawn_keyed(&limiter, &load, "k", 1, Duration::from_secs(1)))
        .collect();
    settle().await;
    assert_eq!(load.total(), 1);
    limiter.set_key_limit("k", 4);
    settle().await;
    assert_eq!(
        load.total(),
        4,
        "growing a key's limit starts its queued items at once"
    );
    assert_eq!(limiter.key_limit("k"), 4);

    limiter.set_key_limit("k", 2);
    settle().await;
    assert_eq!(load.total(), 4, "running items are not interrupted");
    sleep(Duration::from_millis(1500)).await;
    // The four ended at 1 s; from then on at most two run.
    assert_eq!(load.total(), 2);
    let m = limiter.key_metrics("k").unwrap();
    assert_eq!((m.limit, m.running, m.queued), (2, 2, 4));
    for handle in handles {
        handle.await.unwrap();
    }
    // The key's own limit outlives its bookkeeping.
    assert!(limiter.key_metrics("k").is_none());
    assert_eq!(limiter.key_limit("k"), 2);
}

#[tokio::test(start_paused = true)]
async fn weights_count_against_the_global_limit() {
    let limiter = Limiter::new(4);
    let load = Load::default();
    let mut handles = Vec::new();
    for i in 0..40 {
        let weight = [1, 3, 2, 1][i % 4];
        handles.push(spawn_keyed(
            &limiter,
            &load,
            "w",
            weight,
            Duration::from_millis(7),
        ));
    }
    settle().await;
    assert!(limiter.metrics().weight_running <= 4);
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(
        load.max().0,
        4,
        "the weight running reached the limit and never passed it"
    );
}

#[tokio::test(start_paused = true)]
async fn an_item_heavier_than_the_limit_runs_alone_also_after_the_limit_shrinks() {
    let limiter = Limiter::new(4);
    let load = Load::default();
    let light: Vec<_> = (0..4)
        .map(|_| spawn_keyed(&limiter, &load, "l", 1, Duration::from_secs(1)))
        .collect();
    settle().await;
    // Fits now only as 3 of 4; shrink the limit under it while it waits.
    let heavy_load = load.clone();
    let heavy = limiter.build_task().weight(3).spawn(async move {
        let total_before = heavy_load.total();
        let _held = heavy_load.enter("h", 3);
        sleep(Duration::from_secs(1)).await;
        total_before
    });
    settle().await;
    limiter.set_limit(2);
    let later: Vec<_> = (0..4)
        .map(|_| spawn_keyed(&limiter, &load, "l", 1, Duration::from_secs(1)))
        .collect();
    assert_eq!(
        heavy.await.unwrap(),
        0,
        "a heavier-than-the-limit item runs alone"
    );
    for handle in light.into_iter().chain(later) {
        handle.await.unwrap();
    }
    assert_eq!(limiter.metrics().weight_running, 0);
}

#[tokio::test(start_paused = true)]
async fn a_heavy_item_starts_within_twice_the_limit_completions_under_a_stream_of_light_ones() {
    const LIMIT: usize = 4;
    let limiter = Limiter::new(LIMIT);
    let completions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let light = |limiter: &Limiter| {
        let completions = completions.clone();
        limiter.spawn(async move {
            sleep(Duration::from_millis(3)).await;
            completions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut handles: Vec<_> = (0..LIMIT).map(|_| light(&limiter)).collect();
    settle().await;
    let seen = completions.clone();
    let heavy = limiter
        .build_task()
        .weight(LIMIT as u32)
        .spawn(async move { seen.load(std::sync::atomic::Ordering::SeqCst) });
    // A steady stream of light items, always more queued than the limit.
    for _ in 0..200 {
        handles.push(light(&limiter));
        handles.push(light(&limiter));
        sleep(Duration::from_millis(1)).await;
    }
    let waited = heavy.await.unwrap();
    assert!(
        waited <= 2 * LIMIT,
        "the heavy item waited {waited} completions"
    );
    for handle in handles {
        handle.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_heavy_item_waits_for_its_keys_room_in_order() {
    let limiter = Limiter::builder().limit(16).per_key_limit(2).build();
    let load = Load::default();
    let first = spawn_keyed(&limiter, &load, "k", 1, Duration::from_secs(1));
    let heavy = spawn_keyed(&limiter, &load, "k", 2, Duration::from_secs(1));
    let after = spawn_keyed(&limiter, &load, "k", 1, Duration::from_secs(1));
    settle().await;
    assert_eq!(
        load.total(),
        1,
        "the heavy head waits for its key, and the key's rest behind it"
    );
    for handle in [first, heavy, after] {
        handle.await.unwrap();
    }
    assert_eq!(load.starts(), ["k", "k", "k"]);
    assert_eq!(load.max().1, 2);
}

#[tokio::test(start_paused = true)]
async fn aborting_a_queued_keyed_item_drops_its_work_at_once_and_frees_its_key() {
    let limiter = Limiter::builder().limit(1).per_key_limit(1).build();
    let gate = Gate::new();
    let blocker = {
        let gate = gate.clone();
        limiter
            .build_task()
            .key("k")
            .spawn(async move { gate.wait().await })
    };
    let (flag, dropped) = DropFlag::new();
    let queued = limiter.build_task().key("q").spawn(async move {
        drop(flag);
    });
    settle().await;
    assert_eq!(limiter.key_metrics("q").unwrap().queued, 1);
    queued.abort();
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    assert!(queued.await.unwrap_err().is_cancelled());
    assert!(
        limiter.key_metrics("q").is_none(),
        "nothing of the key waits any more"
    );
    gate.open(1);
    blocker.await.unwrap();
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!((m.completed, m.cancelled, m.queued), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_queued_keyed_and_set_aside_items() {
    let limiter = Limiter::builder().limit(2).per_key_limit(1).build();
    let load = Load::default();
    let running = spawn_keyed(&limiter, &load, "a", 1, Duration::from_secs(10));
    let waits_for_key = spawn_keyed(&limiter, &load, "a", 1, Duration::from_secs(1));
    let set_aside = limiter.build_task().weight(2).spawn(async {});
    settle().await;
    limiter.shutdown().await;
    assert!(running.await.unwrap_err().is_cancelled());
    assert!(waits_for_key.await.unwrap_err().is_cancelled());
    assert!(set_aside.await.unwrap_err().is_cancelled());
    let m = limiter.metrics();
    assert_eq!(
        (m.cancelled, m.running, m.queued, m.weight_running),
        (3, 0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn keys_and_weights_go_with_every_shape_of_work() {
    use futures::StreamExt;
    use task_limiter::Batch;

    let limiter = Limiter::builder()
        .limit(4)
        .per_key_limit(2)
        .max_queued(64)
        .worker_state(|id| id.index())
        .build();
    let key = Key::from("k");
    let blocking = limiter
        .build_task()
        .key(&key)
        .weight(2)
        .spawn_blocking(|_| 1);
    let stateful = limiter
        .build_task()
        .key(&key)
        .spawn_with_state(|_state: &mut usize, _id| Box::pin(async { 2 }));
    let blocking_stateful = limiter
        .build_task()
        .key(&key)
        .spawn_blocking_with_state(|_state: &mut usize, _id| 3);
    let reserved = limiter
        .reserve()
        .await
        .unwrap()
        .build_task()
        .key(&key)
        .weight(3)
        .spawn(async { 4 });
    let batch: Batch<u32> = [blocking, stateful, blocking_stateful, reserved]
        .into_iter()
        .collect();
    let values: Vec<u32> = batch.map(Result::unwrap).collect().await;
    assert_eq!(values, [1, 2, 3, 4]);
    let m = limiter.metrics();
    assert!(
        m.max_running <= 2,
        "key k never ran more than its weight 2: {m:?}"
    );
    assert!(limiter.key_metrics(&key).is_none());
}

#[tokio::test(start_paused = true)]
async fn queue_deadlines_hold_for_keyed_weighted_and_set_aside_items_under_set_limit() {
    let limiter = Limiter::builder().limit(2).per_key_limit(1).build();
    let load = Load::default();
    let running = spawn_keyed(&limiter, &load, "a", 1, Duration::from_secs(10));
    let (flag, dropped) = DropFlag::new();
    // Waits for its key, then times out in the queue: its work is dropped at the deadline.
    let waits_for_key = limiter
        .build_task()
        .key("a")
        .queue_timeout(Duration::from_secs(1))
        .spawn(async move { drop(flag) });
    // Too heavy for the room left: set aside, then timed out while set aside.
    let set_aside = limiter
        .build_task()
        .key("b")
        .weight(2)
        .queue_timeout(Duration::from_secs(2))
        .spawn(async {});
    let light = spawn_keyed(&limiter, &load, "c", 1, Duration::from_secs(1));
    settle().await;
    limiter.set_limit(1);
    sleep(Duration::from_millis(1500)).await;
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        "dropped at its deadline"
    );
    assert!(waits_for_key.await.unwrap_err().is_timeout());
    assert!(set_aside.await.unwrap_err().is_timeout());
    light.await.unwrap();
    running.await.unwrap();
    limiter.close();
    limiter.wait().await;
    let m = limiter.metrics();
    assert_eq!(
        (m.completed, m.timed_out, m.queued, m.weight_running),
        (2, 2, 0, 0)
    );
    assert_eq!(
        m.submitted,
        m.completed + m.panicked + m.cancelled + m.timed_out
    );
    assert!(limiter.key_metrics("b").is_none());
}

#[test]
#[should_panic(expected = "weight must be at least 1")]
fn weight_zero_panics() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let limiter = Limiter::new(1);
    let _ = limiter.build_task().weight(0);
}

#[test]
#[should_panic(expected = "a key's limit must be at least 1")]
fn per_key_limit_zero_panics() {
    let _ = Limiter::builder().per_key_limit(0);
}

#[test]
#[should_panic(expected = "a key's limit must be at least 1")]
fn set_key_limit_zero_panics() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _enter = rt.enter();
    Limiter::new(1).set_key_limit("k", 0);
}

#[test]
fn keys_compare_and_print() {
    let a = Key::from("a");
    assert_eq!(a.clone(), Key::from(String::from("a")));
    assert_eq!(
        format!("{a} {a:?} {:?}", Key::from(3_u64)),
        "a Key(\"a\") Key(3)"
    );
    assert!(Key::from(u64::MAX) < Key::from(""));
}
