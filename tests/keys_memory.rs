//! The bookkeeping of keys is freed with them: a million distinct keys passing through leave
//! the limiter's memory where it started. A binary of its own, as the live-byte count is the
//! whole process's and other tests would move it.

mod support;

use support::alloc::live_bytes;
use support::settle;
use task_limiter::Limiter;

#[global_allocator]
static ALLOCATOR: support::alloc::Counting = support::alloc::Counting;

#[tokio::test]
async fn a_million_keys_passing_through_leave_no_bookkeeping_behind() {
    let limiter = Limiter::builder().limit(64).per_key_limit(1).build();
    // Warm up: the runtime's and the limiter's own first allocations.
    for key in 0..10_000_u64 {
        limiter.build_task().key(key).spawn(async {});
    }
    while !limiter.is_empty() {
        tokio::task::yield_now().await;
    }
    settle().await;
    let before = live_bytes();
    for round in 0..10_u64 {
        let handles: Vec<_> = (0..100_000_u64)
            .map(|i| {
                limiter
                    .build_task()
                    .key(1_000_000 + round * 100_000 + i)
                    .spawn(async {})
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
    }
    settle().await;
    let after = live_bytes();
    assert!(limiter.key_metrics(1_000_000_u64).is_none());
    // The key table shrinks as keys go; what is left is within a few pages of the start.
    assert!(
        after - before < 64 * 1024,
        "{} bytes more after a million keys",
        after - before
    );
    assert_eq!(limiter.metrics().completed, 1_010_000);
}
