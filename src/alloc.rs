//! The binaries' allocator set-up: glibc's heap tuning ([`tune_allocator`]) and a global
//! allocator that zeroes large blocks on every kernel thread ([`ParallelZero`]).
//!
//! dfdx allocates each gradient buffer with `vec![0.0; n]` on the thread that runs the
//! backward pass, and with [`tune_allocator`]'s settings glibc
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

/// Keeps freed large blocks in the process heap for reuse (glibc only).
///
/// The engine's CPU kernels allocate fresh multi-megabyte buffers for every op. glibc
/// serves blocks above 128 KiB with `mmap` and returns them with `munmap` on free, so
/// every op pays page faults and kernel page zeroing again; raising the mmap and trim
/// thresholds lets the heap recycle them. Measured on the 2-core development machine:
/// +25% training-step throughput for a small ResNet (414 → 518 images/s), peak RSS
/// unchanged. With mmap off altogether (blocks over 32 MiB, e.g. batch-512
/// activations, too): the shipped SimCLR recipe's step 780 → 1,220 images/s.
/// Call once at start-up, before threads allocate.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before the
    // program allocates from other threads, and the values are valid sizes.
    unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        // Blocks over the 32 MiB cap would still be mmap-ed and unmapped on every
        // step; on the VM we measure on, faulting their pages back in cost more
        // than the convolutions (batch-512 recipe: 780 → 1,220 images/s without).
        libc::mallopt(libc::M_MMAP_MAX, 0);
    }
}

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
