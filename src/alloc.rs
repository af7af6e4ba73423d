//! A global allocator that zeroes large blocks on every kernel thread.
//!
//! dfdx allocates each gradient buffer with `vec![0.0; n]` on the thread that runs the
//! backward pass, and with [`tune_allocator`](crate::tune_allocator)'s settings glibc
//! serves such blocks from the heap and clears them with one `memset`. On the small
//! ResNet (`small16`) that memset was about 7% of the step's wall time with the other
//! core idle. [`ParallelZero`] clears blocks of at least [`PARALLEL_ZERO_MIN`] bytes
//! with rayon instead, once [`enable_parallel_zeroing`] has been called (after the pool
//! is sized: calling rayon earlier would create the global pool with its default size).
//!
//! Install it in a binary with `#[global_allocator] static A: ParallelZero = ParallelZero;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

/// Smallest block cleared in parallel; below it waking a second thread costs more
/// than the memset (a 1 MiB memset takes about 0.1 ms here).
pub const PARALLEL_ZERO_MIN: usize = 1 << 20;

/// Bytes each rayon task clears.
const CHUNK: usize = 256 << 10;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Lets [`ParallelZero`] use rayon's global pool. Call after the pool is built.
pub fn enable_parallel_zeroing() {
    ENABLED.store(true, Ordering::Release);
}

/// The system allocator, except that zeroed blocks of [`PARALLEL_ZERO_MIN`] bytes or
/// more are cleared by rayon's pool once [`enable_parallel_zeroing`] was called.
pub struct ParallelZero;

// SAFETY: every method forwards to `System` with the caller's layout; `alloc_zeroed`
// only adds writing zeros into the block `System.alloc` returned, within its size.
unsafe impl GlobalAlloc for ParallelZero {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        if size < PARALLEL_ZERO_MIN || !ENABLED.load(Ordering::Acquire) {
            // SAFETY: the caller's contract is `System`'s.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: the caller's contract is `System`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            // SAFETY: `p` points to `size` writable bytes owned by nobody else yet.
            let block = unsafe { std::slice::from_raw_parts_mut(p, size) };
            // rayon's own allocations here are small, so this does not recurse.
            block.par_chunks_mut(CHUNK).for_each(|c| c.fill(0));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_zeroed_blocks_are_zero_after_reuse() {
        enable_parallel_zeroing();
        let a = ParallelZero;
        let layout = Layout::from_size_align(3 * PARALLEL_ZERO_MIN + 12_345, 64).unwrap();
        for round in 0..3u8 {
            // SAFETY: the layout has a non-zero size; the block is freed with it.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                let s = std::slice::from_raw_parts_mut(p, layout.size());
                assert!(s.iter().all(|&b| b == 0), "round {round}");
                // Dirty it so a reused block would show.
                s.fill(0xA5);
                a.dealloc(p, layout);
            }
        }
    }
}
