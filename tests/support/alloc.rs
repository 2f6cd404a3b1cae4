//! A counting global allocator, for the tests that measure what the limiter allocates. A test
//! binary opts in with
//! `#[global_allocator] static ALLOCATOR: support::alloc::Counting = support::alloc::Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// Counts the bytes live in the whole process and the bytes each thread has allocated.
pub struct Counting;

/// Allocated and not yet freed, by every thread: a leak shows up exactly, whatever the system
/// allocator keeps cached.
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    /// Allocated by this thread so far, frees not subtracted: what one call costs.
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn allocated(bytes: usize) {
    LIVE_BYTES.fetch_add(bytes as isize, Ordering::Relaxed);
    // `try_with`: the thread-local may already be gone while a thread exits.
    let _ = ALLOCATED.try_with(|n| n.set(n.get() + bytes));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        allocated(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        allocated(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match new_size.checked_sub(layout.size()) {
            Some(grown) => allocated(grown),
            None => {
                let shrunk = layout.size() - new_size;
                LIVE_BYTES.fetch_sub(shrunk as isize, Ordering::Relaxed);
            }
        }
        System.realloc(ptr, layout, new_size)
    }
}

/// Panics unless [`Counting`] is this binary's global allocator: without it every count stays
/// at zero and a test that compares counts would pass for nothing.
fn assert_installed() {
    static CHECKED: AtomicBool = AtomicBool::new(false);
    if !CHECKED.load(Ordering::Relaxed) {
        let before = ALLOCATED.with(Cell::get);
        drop(std::hint::black_box(Box::new(0_u64)));
        assert!(
            ALLOCATED.with(Cell::get) > before,
            "support::alloc::Counting is not this test binary's global allocator"
        );
        CHECKED.store(true, Ordering::Relaxed);
    }
}

/// Bytes allocated and not yet freed, by every thread.
pub fn live_bytes() -> isize {
    assert_installed();
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Bytes this thread has allocated so far.
pub fn allocated_here() -> usize {
    assert_installed();
    ALLOCATED.with(Cell::get)
}
