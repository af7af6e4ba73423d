//! Host buffers: copies in and out of dfdx storage, the process-wide pool of
//! host copies ([`HostBuf`]) and per-thread scratch ([`Scratch`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::sync::Mutex;

use dfdx::prelude::*;
use rayon::prelude::*;

thread_local! {
    /// Per-thread free list for [`Scratch`].
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A per-thread scratch buffer of `len` floats with unspecified contents, handed
/// back to the thread's free list when dropped. The convolution's column and
/// product buffers have the same sizes every step; allocating and zeroing them on
/// every call cost more than some of the kernels. Users overwrite before reading.
pub(crate) struct Scratch(Vec<f32>);

impl Scratch {
    /// Buffers kept per thread.
    const KEEP: usize = 8;

    pub(crate) fn new(len: usize) -> Self {
        let mut v = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let best = (0..s.len())
                .filter(|&i| s[i].capacity() >= len)
                .min_by_key(|&i| s[i].capacity());
            best.map_or_else(Vec::new, |i| s.swap_remove(i))
        });
        if v.len() < len {
            v.resize(len, 0.0);
        } else {
            v.truncate(len);
        }
        Scratch(v)
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        // `try_with`: during thread teardown the list may already be gone.
        let _ = SCRATCH.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < Self::KEEP {
                s.push(v);
            }
        });
    }
}

/// A host copy of a contiguous tensor, in a recycled buffer (see [`HostBuf`]).
pub(crate) fn read<S: Shape, T>(t: &Tensor<S, f32, Cpu, T>) -> HostBuf {
    let len = t.shape().num_elements();
    let mut v = HostBuf::take(len).unwrap_or_else(|| zeros(len));
    t.copy_into(&mut v);
    HostBuf(v)
}

/// A host copy of a contiguous tensor in a vector of its own (for data that moves
/// into a new tensor).
pub(crate) fn read_vec<S: Shape, T>(t: &Tensor<S, f32, Cpu, T>) -> Vec<f32> {
    let mut v = zeros(t.shape().num_elements());
    t.copy_into(&mut v);
    v
}

/// Free host buffers by length, shared by all kernels.
pub(crate) struct HostPool {
    free: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

pub(crate) static HOST_POOL: Mutex<Option<HostPool>> = Mutex::new(None);

/// A host copy a kernel keeps (often until its backward runs); dropped, its buffer
/// goes back to a process-wide pool keyed by length. Every step copies tensors of
/// the same sizes, so the next step's copies reuse these buffers instead of
/// allocating and zeroing fresh ones (a serial pass over every activation). The
/// pool is bounded; buffers beyond the bound are freed.
pub(crate) struct HostBuf(pub(crate) Vec<f32>);

impl HostBuf {
    /// Bytes the pool may hold.
    const CAP: usize = 2 << 30;

    fn pool() -> std::sync::MutexGuard<'static, Option<HostPool>> {
        HOST_POOL.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pooled buffer of exactly `len` floats (contents unspecified).
    fn take(len: usize) -> Option<Vec<f32>> {
        let mut g = Self::pool();
        let pool = g.as_mut()?;
        let v = pool.free.get_mut(&len)?.pop()?;
        pool.bytes -= len * 4;
        Some(v)
    }
}

impl std::ops::Deref for HostBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for HostBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        // Small buffers are cheap to allocate; keep the pool for activations.
        if v.len() < 1 << 14 {
            return;
        }
        let mut g = Self::pool();
        let pool = g.get_or_insert_with(|| HostPool {
            free: HashMap::new(),
            bytes: 0,
        });
        if pool.bytes + v.len() * 4 <= Self::CAP {
            pool.bytes += v.len() * 4;
            pool.free.entry(v.len()).or_default().push(v);
        }
    }
}

/// A zeroed vector, written by all threads when large: first touches of fresh
/// pages and the zeroing itself are otherwise serial work between parallel kernels.
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    if len < 1 << 16 {
        return vec![0.0; len];
    }
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(0.0f32, len));
    v
}

/// A vector of `len` floats written in place: `fill(i, chunk)` gets the `i`-th
/// run of `chunk_len` uninitialised elements (in parallel) and must write all of
/// them; the kernels it calls assert matching lengths, so a short write panics
/// instead of leaving elements uninitialised. Saves zeroing memory that is about
/// to be overwritten.
pub(crate) fn filled(
    len: usize,
    chunk_len: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk_len.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: `fill` initialised every element of the first `len` (its contract,
    // enforced by the kernels' length asserts; a panic above never gets here).
    unsafe { v.set_len(len) };
    v
}

/// A buffer of `len` floats from the pool (contents unspecified; zeroed when new).
/// The memory bank's buffers have the same sizes every step.
pub(crate) fn pooled(len: usize) -> HostBuf {
    HostBuf(HostBuf::take(len).unwrap_or_else(|| zeros(len)))
}
