//! Per-worker state: made lazily once per worker ID, lent to one item at a time, kept across
//! items and worker tasks, dropped and made anew after a panic.
#![cfg(not(feature = "shuttle"))]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::state::{Conn, Factory};
use support::{settle, Gate};
use task_limiter::{Limiter, WorkerId};

fn serve(limiter: &Limiter<Conn>) -> task_limiter::JoinHandle<(WorkerId, u32)> {
    limiter.spawn_with_state(|conn: &mut Conn, id| {
        Box::pin(async move {
            assert_eq!(conn.id, id, "an item gets the value of its own worker ID");
            conn.served += 1;
            tokio::task::yield_now().await;
            (id, conn.served)
        })
    })
}

#[tokio::test]
async fn one_value_per_id_made_lazily_and_kept_across_items() {
    let factory = Factory::default();
    let limiter = factory.limiter(3);
    settle().await;
    assert_eq!(factory.made(), 0, "nothing is made before an item needs it");

    let handles: Vec<_> = (0..60).map(|_| serve(&limiter)).collect();
    let mut served: Vec<Vec<u32>> = vec![Vec::new(); 3];
    for handle in handles {
        let (id, count) = handle.await.unwrap();
        served[id.index()].push(count);
    }
    let used = served.iter().filter(|counts| !counts.is_empty()).count();
    assert_eq!(
        factory.made(),
        used,
        "one value per ID that ran a stateful item"
    );
    for counts in &served {
        // Each value saw its items one at a time, in order, with nothing lost in between.
        assert_eq!(*counts, (1..=counts.len() as u32).collect::<Vec<_>>());
    }
    assert_eq!(served.iter().map(Vec::len).sum::<usize>(), 60);
}

#[tokio::test]
async fn items_without_state_never_make_a_value() {
    let factory = Factory::default();
    let limiter = factory.limiter(2);
    for i in 0..10 {
        assert_eq!(limiter.spawn(async move { i }).await.unwrap(), i);
        assert_eq!(limiter.spawn_blocking(move |_| i).await.unwrap(), i);
    }
    assert_eq!(factory.made(), 0);
}

/// A parked worker holds its ID, and its value, until its keep-alive runs out; the worker that
/// next takes the ID gets the same value.
#[tokio::test(start_paused = true)]
async fn the_value_outlives_the_worker_task_that_made_it() {
    let factory = Factory::default();
    let limiter = Limiter::builder()
        .limit(1)
        .keep_alive(Duration::from_secs(1))
        .worker_state(factory.make())
        .build();
    assert_eq!(serve(&limiter).await.unwrap().1, 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(limiter.metrics().workers, 0, "the worker exited");
    assert!(limiter.busy_workers().is_empty(), "its ID came back");
    assert_eq!(
        serve(&limiter).await.unwrap().1,
        2,
        "its successor got the value"
    );
    assert_eq!(limiter.metrics().workers_spawned, 2);
    assert_eq!((factory.made(), factory.live()), (1, 1));
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn a_panic_drops_the_value_and_the_next_item_gets_a_new_one() {
    let factory = Factory::default();
    let limiter = factory.limiter(1);
    assert_eq!(serve(&limiter).await.unwrap().1, 1);
    let err = limiter
        .spawn_with_state(|conn: &mut Conn, _| {
            Box::pin(async move {
                conn.served += 100; // half-updated when it panics
                panic!("boom");
            })
        })
        .await
        .unwrap_err();
    assert!(err.is_panic());
    assert_eq!(factory.live(), 0, "the poisoned value is dropped at once");
    assert_eq!(serve(&limiter).await.unwrap().1, 1, "a new value");
    assert_eq!(factory.made(), 2);
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn a_panic_of_an_item_without_state_keeps_the_value() {
    let factory = Factory::default();
    let limiter = factory.limiter(1);
    let gate = Gate::new();
    // One worker runs all three items in a row, so it holds the value throughout.
    let first = serve(&limiter);
    let panicking = limiter.spawn({
        let gate = gate.clone();
        async move {
            gate.wait().await;
            panic!("not a stateful item");
        }
    });
    let third = serve(&limiter);
    assert_eq!(first.await.unwrap().1, 1);
    gate.open(1);
    assert!(panicking.await.unwrap_err().is_panic());
    assert_eq!(third.await.unwrap().1, 2);
    assert_eq!(factory.made(), 1);
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn a_panic_in_the_factory_is_the_items_panic_and_it_is_tried_again() {
    let calls = Arc::new(AtomicUsize::new(0));
    let limiter = Limiter::builder()
        .limit(1)
        .worker_state({
            let calls = calls.clone();
            move |_id| {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first connection attempt failed");
                }
                String::from("connected")
            }
        })
        .build();
    let get = |limiter: &Limiter<String>| {
        limiter.spawn_with_state(|conn: &mut String, _| {
            let conn = conn.clone();
            Box::pin(async move { conn })
        })
    };
    let err = get(&limiter).await.unwrap_err();
    assert!(err.is_panic());
    assert_eq!(get(&limiter).await.unwrap(), "connected");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_aborted_item_leaves_the_value_as_it_was() {
    let factory = Factory::default();
    let limiter = factory.limiter(1);
    let stuck = limiter.spawn_with_state(|conn: &mut Conn, _| {
        Box::pin(async move {
            conn.served += 1;
            std::future::pending::<()>().await;
        })
    });
    settle().await;
    stuck.abort();
    assert!(stuck.await.unwrap_err().is_cancelled());
    assert_eq!(
        serve(&limiter).await.unwrap().1,
        2,
        "kept, with the aborted item's update"
    );
    assert_eq!(factory.made(), 1);
}

#[tokio::test]
async fn blocking_and_async_items_share_the_value_of_their_id() {
    let factory = Factory::default();
    let limiter = factory.limiter(1);
    assert_eq!(serve(&limiter).await.unwrap().1, 1);
    let served = limiter
        .spawn_blocking_with_state(|conn: &mut Conn, id| {
            assert_eq!(conn.id, id);
            conn.served += 1;
            conn.served
        })
        .await
        .unwrap();
    assert_eq!(served, 2);
    assert_eq!(serve(&limiter).await.unwrap().1, 3);
    assert_eq!(factory.made(), 1);
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn a_panicking_blocking_item_drops_the_value_too() {
    let factory = Factory::default();
    let limiter = factory.limiter(1);
    assert_eq!(serve(&limiter).await.unwrap().1, 1);
    let err = limiter
        .spawn_blocking_with_state(|_: &mut Conn, _| panic!("boom"))
        .await
        .unwrap_err();
    assert!(err.is_panic());
    assert_eq!(serve(&limiter).await.unwrap().1, 1);
    assert_eq!(factory.made(), 2);
}

#[tokio::test]
async fn values_are_dropped_once_the_limiter_and_its_workers_are_gone() {
    let factory = Factory::default();
    let limiter = factory.limiter(4);
    let handles: Vec<_> = (0..40).map(|_| serve(&limiter)).collect();
    for handle in handles {
        handle.await.unwrap();
    }
    assert!(factory.live() >= 1);
    limiter.close();
    limiter.wait().await;
    drop(limiter);
    settle().await;
    assert_eq!(factory.live(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_values_for_one_id_under_load() {
    const LIMIT: usize = 4;
    let factory = Factory::default();
    let limiter = factory.limiter(LIMIT);
    let max_live = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..2000u32 {
        let max_live = max_live.clone();
        let factory = factory.clone();
        handles.push(limiter.spawn_with_state(move |conn: &mut Conn, id| {
            Box::pin(async move {
                assert_eq!(conn.id, id);
                max_live.fetch_max(factory.live(), Ordering::SeqCst);
                let before = conn.served;
                if i % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                // Nobody else touched the value across the `.await`.
                assert_eq!(conn.served, before);
                conn.served += 1;
            })
        }));
        if i % 500 == 0 {
            // Let the queue run dry now and then, so that workers park and take work again.
            tokio::task::yield_now().await;
        }
    }
    for handle in handles {
        handle.await.unwrap();
    }
    assert!(factory.made() <= LIMIT, "made {}", factory.made());
    assert!(max_live.load(Ordering::SeqCst) <= LIMIT);
}

#[tokio::test]
async fn a_limiter_without_worker_state_lends_unit() {
    let limiter = Limiter::new(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handle = limiter.spawn_with_state({
        let seen = seen.clone();
        move |unit: &mut (), id| {
            Box::pin(async move {
                seen.lock().unwrap().push((*unit, id.index()));
            })
        }
    });
    handle.await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
}
