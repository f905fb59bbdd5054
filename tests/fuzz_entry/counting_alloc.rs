//! A counting (and optionally limiting) allocator: the test binaries that use the harness make it
//! their global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LIMIT_ONE: AtomicUsize = AtomicUsize::new(usize::MAX);
static LIMIT_TOTAL: AtomicUsize = AtomicUsize::new(usize::MAX);
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Wraps [`System`], tracking live and peak bytes. With [`set_limits`], a request larger than
/// the single-allocation limit, or one that would take the live total past the total limit,
/// gets a null pointer: the process then aborts with "memory allocation of N bytes failed",
/// like libFuzzer's `-malloc_limit_mb` / `-rss_limit_mb`.
pub struct CountingAlloc;

fn admit(size: usize) -> bool {
    if size > LIMIT_ONE.load(Ordering::Relaxed) {
        REFUSED.store(true, Ordering::Relaxed);
        return false;
    }
    let now = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
    if now > LIMIT_TOTAL.load(Ordering::Relaxed) {
        CURRENT.fetch_sub(size, Ordering::Relaxed);
        REFUSED.store(true, Ordering::Relaxed);
        return false;
    }
    PEAK.fetch_max(now, Ordering::Relaxed);
    true
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old
            && (new_size > LIMIT_ONE.load(Ordering::Relaxed) || !admit(new_size - old))
        {
            REFUSED.store(true, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > old {
                CURRENT.fetch_sub(new_size - old, Ordering::Relaxed);
            }
        } else if new_size < old {
            CURRENT.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        p
    }
}

/// Live heap bytes (only meaningful where [`CountingAlloc`] is the global allocator).
pub fn live_bytes() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Resets the peak to the live bytes and returns them (the baseline of a measurement).
pub fn reset_peak() -> usize {
    let now = CURRENT.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Limits for [`CountingAlloc`] (`usize::MAX` = none).
pub fn set_limits(one: usize, total: usize) {
    LIMIT_ONE.store(one, Ordering::Relaxed);
    LIMIT_TOTAL.store(total, Ordering::Relaxed);
}
