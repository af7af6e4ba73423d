//! Host buffers: borrowed views of dfdx storage ([`view`]), the process-wide pool
//! of large buffers ([`HostBuf`]) and per-thread scratch ([`Scratch`]).

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

/// The elements of a tensor with row-major strides (what `contiguous()` returns),
/// borrowed from its storage without a copy.
///
/// dfdx 0.13 keeps a CPU tensor's elements in one `Vec` but lends no slice of it;
/// its `copy_into` is a serial memcpy between parallel kernels, 7% of a small-CNN
/// step. `Index` lends references into that `Vec`, so the slice starts at element
/// 0's. The checks below make the run `[0, len)` one stretch of the storage: every
/// axis' unit index is at the row-major stride and the last element (which `Index`
/// bounds-checks against the `Vec`) is at `len − 1`. The storage is shared behind
/// an `Arc` and only changed through `&mut Tensor`, so it cannot change while `t`
/// is borrowed. Widening an element's reference to its neighbours is what the
/// compiler sees as reads of one allocation; Miri's Stacked Borrows model would
/// reject it, which is the price of not copying.
pub(crate) fn view<S: Shape, T>(t: &Tensor<S, f32, Cpu, T>) -> &[f32] {
    let dims = t.shape().concrete();
    let len = t.shape().num_elements();
    if len == 0 {
        return &[];
    }
    let zero = S::Concrete::default();
    let base: *const f32 = &t[zero];
    let offset = |i: S::Concrete| {
        // SAFETY: both pointers are into the one storage `Vec` (see above).
        unsafe { (&t[i] as *const f32).offset_from(base) }
    };
    let mut stride = 1usize;
    for a in (0..S::NUM_DIMS).rev() {
        if dims[a] > 1 {
            let mut unit = zero;
            unit[a] = 1;
            assert_eq!(
                offset(unit),
                stride as isize,
                "view: axis {a} of {dims:?} is not row-major"
            );
        }
        stride *= dims[a];
    }
    let mut last = zero;
    for a in 0..S::NUM_DIMS {
        last[a] = dims[a] - 1;
    }
    assert_eq!(
        offset(last),
        len as isize - 1,
        "view: {dims:?} is not dense"
    );
    // SAFETY: `len` elements from `base` lie in the storage (checked above) and
    // stay unchanged while `t` is borrowed.
    unsafe { std::slice::from_raw_parts(base, len) }
}

/// [`view`], mutable: the elements of a row-major tensor, changed in place.
///
/// dfdx's `IndexMut` first makes the storage unique (`Arc::make_mut`, a copy only
/// when another tensor shares it), so the slice aliases nothing else while `t` is
/// borrowed mutably. The layout checks are [`view`]'s.
pub(crate) fn view_mut<S: Shape, T>(t: &mut Tensor<S, f32, Cpu, T>) -> &mut [f32] {
    let len = view(t).len();
    if len == 0 {
        return &mut [];
    }
    let base: *mut f32 = &mut t[S::Concrete::default()];
    // SAFETY: as in `view`, and the storage is unique and borrowed mutably.
    unsafe { std::slice::from_raw_parts_mut(base, len) }
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

/// A vector of `len` floats written in place, in parallel: `fill(i, chunk)` gets
/// the `i`-th run of `chunk_len` uninitialised elements (the last run may be
/// shorter) and writes all of them. Saves zeroing memory that is about to be
/// overwritten.
///
/// # Safety
///
/// Whenever `fill(i, chunk)` returns, it has written every element of `chunk`: the
/// vector is handed out with all `len` elements taken as initialised. A `fill` that
/// may fall short must panic instead (the kernels it calls assert matching lengths);
/// a panic propagates before anything is exposed.
pub(crate) unsafe fn filled(
    len: usize,
    chunk_len: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk_len.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: `fill` initialised every element of the first `len` (the caller's
    // contract); a panic above never gets here.
    unsafe { v.set_len(len) };
    v
}

/// [`filled`], with a second output written alongside: `side` (as long as the
/// vector) is cut into the same runs, and `fill(i, chunk, side_chunk)` gets both
/// (the residual join writes its ReLU mask this way).
///
/// # Safety
///
/// As for [`filled`]: whenever `fill` returns it has written every element of its
/// `chunk`.
pub(crate) unsafe fn filled_with<U: Send>(
    len: usize,
    chunk_len: usize,
    side: &mut [U],
    fill: impl Fn(usize, &mut [MaybeUninit<f32>], &mut [U]) + Sync,
) -> Vec<f32> {
    assert_eq!(
        side.len(),
        len,
        "filled_with: side output of another length"
    );
    let chunk_len = chunk_len.max(1);
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk_len)
        .zip(side.par_chunks_mut(chunk_len))
        .enumerate()
        .for_each(|(i, (c, s))| fill(i, c, s));
    // SAFETY: as in `filled`.
    unsafe { v.set_len(len) };
    v
}

/// A buffer of `len` floats from the pool (contents unspecified; zeroed when new).
/// The memory bank's buffers have the same sizes every step.
pub(crate) fn pooled(len: usize) -> HostBuf {
    HostBuf(HostBuf::take(len).unwrap_or_else(|| zeros(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_is_the_tensor_in_row_major_order() {
        let dev = Cpu::default();
        let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let t = dev.tensor_from_vec(data.clone(), (2, 3, 4));
        assert_eq!(view(&t), &data[..]);
        // A permuted tensor made contiguous is a fresh row-major copy.
        let p = t.clone().permute::<_, Axes3<2, 0, 1>>().contiguous();
        assert_eq!(view(&p), &p.as_vec()[..]);
        let e = dev.zeros_like(&(0, 3));
        assert!(view(&e).is_empty());
    }

    #[test]
    fn view_mut_writes_the_tensor_and_only_it() {
        let dev = Cpu::default();
        let mut t = dev.tensor_from_vec(vec![1.0f32, 2.0, 3.0, 4.0], (2, 2));
        let shared = t.clone();
        view_mut(&mut t).iter_mut().for_each(|v| *v *= 10.0);
        assert_eq!(t.as_vec(), [10.0, 20.0, 30.0, 40.0]);
        // The tensor that shared the storage keeps its values.
        assert_eq!(shared.as_vec(), [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    #[should_panic(expected = "not row-major")]
    fn view_refuses_a_permuted_layout() {
        let dev = Cpu::default();
        let t = dev.tensor_from_vec((0..6).map(|i| i as f32).collect(), (2, 3));
        let p = t.permute::<_, Axes2<1, 0>>();
        view(&p);
    }
}
