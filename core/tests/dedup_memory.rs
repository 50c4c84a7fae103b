//! The dedup window allocates as it fills, not at its capacity (a client holds one, and a benchmark or a server
//! process may hold thousands). Measured with a counting allocator, alone in this test binary.
#![allow(unsafe_code)] // a GlobalAlloc implementation is unsafe by definition

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use tidings_core::engine::DedupWindow;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn an_empty_window_is_small_and_a_full_one_is_bounded() {
    let before = LIVE.load(Ordering::SeqCst);
    let mut w = DedupWindow::new(10_000);
    let empty = LIVE.load(Ordering::SeqCst) - before;
    assert!(empty < 1024, "an empty window for 10 000 ids holds {empty} bytes");
    for i in 0..100 {
        w.insert(&format!("01JDZ3K5W8Q2M4N6P8{i:08}"));
    }
    let hundred = LIVE.load(Ordering::SeqCst) - before;
    assert!(hundred < 100 * 256, "100 ids take {hundred} bytes");
    for i in 0..50_000 {
        w.insert(&format!("01JDZ3K5W8Q2M4N6P8{i:08}"));
    }
    assert_eq!(w.len(), 10_000);
    let full = LIVE.load(Ordering::SeqCst) - before;
    assert!(full < 10_000 * 256, "a full window takes {full} bytes");
}
