//! Fast CPU kernels: rayon over samples (or channels), gemm 0.19 for the matrix
//! products, registered on dfdx's tape as custom backward ops.
//!
//! Data moves in and out of dfdx storage with `copy_into` (a memcpy of a contiguous
//! tensor) and `tensor_from_vec` (no copy). A kernel keeps the host copies it needs
//! for backward only when the tape records (`T::OWNS_TAPE`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::sync::Mutex;

use dfdx::prelude::*;
use gemm::Parallelism;
use rayon::prelude::*;

use super::kernels;
use super::timing;
use super::{BnConfig, BnRunning, EngineDevice, T1, T2, T4, Window};

thread_local! {
    /// Per-thread free list for [`Scratch`].
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A per-thread scratch buffer of `len` floats with unspecified contents, handed
/// back to the thread's free list when dropped. The convolution's column and
/// product buffers have the same sizes every step; allocating and zeroing them on
/// every call cost more than some of the kernels. Users overwrite before reading.
struct Scratch(Vec<f32>);

impl Scratch {
    /// Buffers kept per thread.
    const KEEP: usize = 8;

    fn new(len: usize) -> Self {
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

/// Takes a gradient buffer out of `Gradients` (leaving an empty one): the output
/// gradient of an op is read by that op's backward only, so moving it saves a copy
/// and frees its memory early.
macro_rules! take_grad {
    ($grads:expr, $ghost:expr) => {
        std::mem::take(&mut **$grads.get_or_alloc_mut(&$ghost)?)
    };
}

/// A host copy of a contiguous tensor, in a recycled buffer (see [`HostBuf`]).
fn read<S: Shape, T>(t: &Tensor<S, f32, Cpu, T>) -> HostBuf {
    let len = t.shape().num_elements();
    let mut v = HostBuf::take(len).unwrap_or_else(|| zeros(len));
    t.copy_into(&mut v);
    HostBuf(v)
}

/// A host copy of a contiguous tensor in a vector of its own (for data that moves
/// into a new tensor).
fn read_vec<S: Shape, T>(t: &Tensor<S, f32, Cpu, T>) -> Vec<f32> {
    let mut v = zeros(t.shape().num_elements());
    t.copy_into(&mut v);
    v
}

/// Free host buffers by length, shared by all kernels.
struct HostPool {
    free: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

static HOST_POOL: Mutex<Option<HostPool>> = Mutex::new(None);

/// A host copy a kernel keeps (often until its backward runs); dropped, its buffer
/// goes back to a process-wide pool keyed by length. Every step copies tensors of
/// the same sizes, so the next step's copies reuse these buffers instead of
/// allocating and zeroing fresh ones (a serial pass over every activation). The
/// pool is bounded; buffers beyond the bound are freed.
struct HostBuf(Vec<f32>);

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
fn zeros(len: usize) -> Vec<f32> {
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
fn filled(
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

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `dst (m×n, row stride ldd) = [dst +] a·b`, with `a` and `b` given by row and
/// column strides so transposes cost nothing.
#[allow(clippy::too_many_arguments)]
fn mm(
    mnk: (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    acc: bool,
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    par: Parallelism,
) {
    mm_strided(mnk, (dst, ldd, 1), acc, a, b, par);
}

/// [`mm`] with `dst` given by row and column strides too.
#[allow(clippy::too_many_arguments)]
fn mm_strided(
    (m, n, k): (usize, usize, usize),
    (dst, ldd, dcs): (&mut [f32], usize, usize),
    acc: bool,
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(dst.len() > last(ldd, dcs, m, n));
    if k == 0 {
        if !acc {
            for r in 0..m {
                (0..n).for_each(|c| dst[r * ldd + c * dcs] = 0.0);
            }
        }
        return;
    }
    assert!(a.len() > last(a_rs, a_cs, m, k) && b.len() > last(b_rs, b_cs, k, n));
    // SAFETY: the asserts above keep every index gemm touches inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dcs as isize,
            ldd as isize,
            acc,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `dst (m×n, row stride ldd) = [dst +] A·B` with `A(i, p) = a[i·ars + p·acs]` and
/// `B` row-major (row stride `ldb`): the hand-written AVX-512 or AVX2 kernel where
/// `own` and the CPU has one, `gemm` otherwise.
#[allow(clippy::too_many_arguments)]
fn mm_rows(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    acc: bool,
    (a, ars, acs): (&[f32], usize, usize),
    (b, ldb): (&[f32], usize),
    own: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if own && (kernels::avx512() || kernels::avx2()) {
        if m == 0 || n == 0 {
            return;
        }
        let boff: Vec<usize> = (0..k).map(|p| p * ldb).collect();
        mm_offsets((m, n, k), dst, ldd, acc, (a, ars, acs), (b, &boff));
        return;
    }
    mm(
        (m, n, k),
        dst,
        ldd,
        acc,
        (a, ars, acs),
        (b, ldb, 1),
        Parallelism::None,
    );
}

/// `dst (m×n, row stride ldd) += A·Bᵀ` with `A` `m×len` and `B` `n×len` row-major.
fn mm_dot(
    (m, n, len): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    own: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if own && kernels::avx512() {
        if m == 0 || n == 0 || len == 0 {
            return;
        }
        let boff: Vec<usize> = (0..n).map(|j| j * ldb).collect();
        mm_dot_offsets((m, n, len), dst, ldd, (a, lda), (b, &boff));
        return;
    }
    mm(
        (m, n, len),
        dst,
        ldd,
        true,
        (a, lda, 1),
        (b, 1, ldb),
        Parallelism::None,
    );
}

/// [`mm_rows`] with row `p` of `B` at `b[boff[p]..]` (AVX-512 or AVX2 only).
#[cfg(target_arch = "x86_64")]
fn mm_offsets(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    acc: bool,
    (a, ars, acs): (&[f32], usize, usize),
    (b, boff): (&[f32], &[usize]),
) {
    if m == 0 || n == 0 {
        return;
    }
    if kernels::avx2() {
        if ars == 1 && acs > 1 && k > 0 {
            // A transpose (Wᵀ): copied row-major first. Broadcasts down a column
            // touch a new cache line every step, and a tile's lines did not stay
            // in L1 next to the B panel.
            assert!(a.len() > (m - 1) + (k - 1) * acs);
            let mut at = Scratch::new(m * k);
            for (i, row) in at.chunks_mut(k).enumerate() {
                for (p, v) in row.iter_mut().enumerate() {
                    *v = a[i + p * acs];
                }
            }
            let aoff: Vec<usize> = (0..m).map(|i| i * k).collect();
            return mm_avx2((m, n, k), dst, ldd, acc, (&at, &aoff, 1), (b, boff));
        }
        let aoff: Vec<usize> = (0..m).map(|i| i * ars).collect();
        return mm_avx2((m, n, k), dst, ldd, acc, (a, &aoff, acs), (b, boff));
    }
    assert!(kernels::avx512());
    assert!(dst.len() >= (m - 1) * ldd + n && boff.len() >= k);
    assert!(k == 0 || a.len() > (m - 1) * ars + (k - 1) * acs);
    assert!(boff[..k].iter().all(|&o| o + n <= b.len()));
    // SAFETY: AVX-512 is present and the asserts keep every access in bounds.
    unsafe {
        kernels::x86::gemm_bcast(
            (m, n, k),
            (a.as_ptr(), ars, acs),
            (b.as_ptr(), boff),
            (dst.as_mut_ptr(), ldd),
            acc,
        )
    };
}

/// `dst (m×n, row stride ldd) = [dst +] A·B` with `A(i, p) = a[aoff[i] + p·acs]`
/// and row `p` of `B` at `b[boff[p]..]`: the AVX2 product.
#[cfg(target_arch = "x86_64")]
fn mm_avx2(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    acc: bool,
    (a, aoff, acs): (&[f32], &[usize], usize),
    (b, boff): (&[f32], &[usize]),
) {
    assert!(kernels::avx2());
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * ldd + n && aoff.len() >= m && boff.len() >= k);
    if k > 0 {
        let last = (k - 1) * acs;
        assert!(aoff[..m].iter().all(|&o| o + last < a.len()));
        assert!(boff[..k].iter().all(|&o| o + n <= b.len()));
    }
    // SAFETY: AVX2 and FMA are present and the asserts keep every access in bounds.
    unsafe {
        kernels::avx2::gemm(
            (m, n, k),
            (a.as_ptr(), aoff, acs),
            (b.as_ptr(), boff),
            (dst.as_mut_ptr(), ldd),
            acc,
        )
    };
}

/// `dst (m×n, row stride ldd) += A·B` with row `i` of `A` at `a[aoff[i]..]` and
/// `B` row-major (stride `ldb`), for `n ≤ 32` (AVX-512 only).
#[cfg(target_arch = "x86_64")]
fn mm_narrow(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    (a, aoff): (&[f32], &[usize]),
    (b, ldb): (&[f32], usize),
) {
    assert!(kernels::avx512() && n <= 32);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * ldd + n && aoff.len() >= m);
    assert!(b.len() >= (k - 1) * ldb + n);
    assert!(aoff[..m].iter().all(|&o| o + k <= a.len()));
    // SAFETY: AVX-512 is present and the asserts keep every access in bounds.
    unsafe {
        kernels::x86::gemm_narrow(
            (m, n, k),
            (a.as_ptr(), aoff),
            (b.as_ptr(), ldb),
            (dst.as_mut_ptr(), ldd),
        )
    };
}

/// [`mm_dot`] with row `j` of `B` at `b[boff[j]..]` (AVX-512 only).
#[cfg(target_arch = "x86_64")]
fn mm_dot_offsets(
    (m, n, len): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    (a, lda): (&[f32], usize),
    (b, boff): (&[f32], &[usize]),
) {
    assert!(kernels::avx512());
    if m == 0 || n == 0 || len == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * ldd + n && boff.len() >= n);
    assert!(a.len() >= (m - 1) * lda + len);
    assert!(boff[..n].iter().all(|&o| o + len <= b.len()));
    // SAFETY: AVX-512 is present and the asserts keep every access in bounds.
    unsafe {
        kernels::x86::gemm_dot(
            (m, n, len),
            (a.as_ptr(), lda),
            (b.as_ptr(), boff),
            (dst.as_mut_ptr(), ldd),
        )
    };
}

/// Output columns `ox` whose input column `ox·s + kj - p` lies inside `[0, w)`.
fn valid_range(w: usize, wo: usize, kj: usize, win: Window) -> (usize, usize) {
    let (s, p) = (win.stride, win.padding);
    let lo = if kj >= p { 0 } else { (p - kj).div_ceil(s) };
    let hi = if w + p > kj {
        ((w - 1 + p - kj) / s + 1).min(wo)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Geometry of one convolution call.
#[derive(Clone, Copy)]
struct ConvDims {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    ho: usize,
    wo: usize,
    win: Window,
}

impl ConvDims {
    fn ckk(&self) -> usize {
        self.c * self.win.kernel * self.win.kernel
    }
    /// Samples per gemm: enough output columns (about 1024) to keep gemm efficient on
    /// the small late-stage maps, while the column buffer stays small.
    fn group(&self, n: usize) -> usize {
        (1024 / (self.ho * self.wo).max(1)).clamp(1, n.max(1))
    }
}

/// One sample `(c, h, w)` → rows `r` of `col[r·ld ..][.. ho·wo]` (`r` over `c·k·k`).
fn im2col(x: &[f32], d: ConvDims, col: &mut [f32], ld: usize) {
    let k = d.win.kernel;
    let howo = d.ho * d.wo;
    for ci in 0..d.c {
        let xc = &x[ci * d.h * d.w..(ci + 1) * d.h * d.w];
        for ki in 0..k {
            for kj in 0..k {
                let row = &mut col[((ci * k + ki) * k + kj) * ld..][..howo];
                let (lo, hi) = valid_range(d.w, d.wo, kj, d.win);
                for oy in 0..d.ho {
                    let dst = &mut row[oy * d.wo..(oy + 1) * d.wo];
                    let iy = (oy * d.win.stride + ki) as isize - d.win.padding as isize;
                    if iy < 0 || iy >= d.h as isize || lo >= hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let xrow = &xc[iy as usize * d.w..(iy as usize + 1) * d.w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let ix0 = lo * d.win.stride + kj - d.win.padding;
                    if d.win.stride == 1 {
                        dst[lo..hi].copy_from_slice(&xrow[ix0..ix0 + (hi - lo)]);
                    } else {
                        for (j, v) in dst[lo..hi].iter_mut().enumerate() {
                            *v = xrow[ix0 + j * d.win.stride];
                        }
                    }
                }
            }
        }
    }
}

/// Adds rows `col[r·ld ..][.. ho·wo]` back into one sample's gradient `(c, h, w)`.
fn col2im_add(col: &[f32], d: ConvDims, gx: &mut [f32], ld: usize) {
    let k = d.win.kernel;
    let howo = d.ho * d.wo;
    for ci in 0..d.c {
        let gc = &mut gx[ci * d.h * d.w..(ci + 1) * d.h * d.w];
        for ki in 0..k {
            for kj in 0..k {
                let row = &col[((ci * k + ki) * k + kj) * ld..][..howo];
                let (lo, hi) = valid_range(d.w, d.wo, kj, d.win);
                if lo >= hi {
                    continue;
                }
                for oy in 0..d.ho {
                    let iy = (oy * d.win.stride + ki) as isize - d.win.padding as isize;
                    if iy < 0 || iy >= d.h as isize {
                        continue;
                    }
                    let grow = &mut gc[iy as usize * d.w..(iy as usize + 1) * d.w];
                    let src = &row[oy * d.wo + lo..oy * d.wo + hi];
                    let ix0 = lo * d.win.stride + kj - d.win.padding;
                    if d.win.stride == 1 {
                        for (g, s) in grow[ix0..ix0 + (hi - lo)].iter_mut().zip(src) {
                            *g += s;
                        }
                    } else {
                        for (j, s) in src.iter().enumerate() {
                            grow[ix0 + j * d.win.stride] += s;
                        }
                    }
                }
            }
        }
    }
}

impl ConvDims {
    /// Whether the "wide" path applies: the image is zero-padded once (for stride
    /// `s`, split into `s×s` phase planes, so a tap's inputs are again a shifted
    /// view) and every position of the phase grid is computed (the extra columns
    /// are discarded). The kernel then reads shifted views of the padded image
    /// instead of a column matrix nine times its size. Worth it while the discarded
    /// share is small; a kernel smaller than the stride (1×1, stride 2) would copy
    /// phases it never reads.
    fn wide(&self) -> bool {
        // Without the own kernels each tap is a `gemm` with the channels as inner
        // dimension, which needs enough channels to run well.
        self.wide_geometry() && (self.own() || self.c.min(self.o) >= 16)
    }
    /// The geometric half of [`ConvDims::wide`]: phase planes cover every tap and
    /// the discarded share is small.
    fn wide_geometry(&self) -> bool {
        let (k, p, s) = (self.win.kernel, self.win.padding, self.win.stride);
        (s == 1 || k >= s)
            && p < k
            && (self.hph() * self.wph()) as f64 <= 1.35 * (self.ho * self.wo) as f64
    }
    /// Rows of one phase plane of the padded image.
    fn hph(&self) -> usize {
        self.hp().div_ceil(self.win.stride)
    }
    /// Columns of one phase plane of the padded image.
    fn wph(&self) -> usize {
        self.wp().div_ceil(self.win.stride)
    }
    /// Whether the hand-written kernels serve this convolution. AVX-512: up to 32
    /// channels, where `gemm`'s packing costs as much as its multiply; with more
    /// channels `gemm` is as fast or faster (measured on ResNet-18 layers: equal at
    /// 64, slower dW at 128 and up). AVX2: forward and input gradient of wide-path
    /// convolutions with a kernel over 1×1 and from 16 channels (one product over
    /// all taps instead of a `gemm` per tap: 5–20% faster forward on ResNet-18's
    /// 32² and 16² layers in `conv_speed`); the weight gradient (see
    /// [`ConvDims::own_dw`]), 1×1 kernels, the column-matrix path and the 3-channel
    /// stem stay on `gemm`, which measured as fast or faster there.
    fn own(&self) -> bool {
        (kernels::avx512() && self.c.max(self.o) <= 32)
            || (kernels::avx2()
                && self.win.kernel > 1
                && self.c.min(self.o) >= 16
                && self.wide_geometry())
    }
    /// Whether the weight gradient uses the own narrow-row product (AVX-512 only:
    /// with many channels its transposed result cost as much to add back as the
    /// product itself).
    fn own_dw(&self) -> bool {
        kernels::avx512() && self.own()
    }
    fn hp(&self) -> usize {
        self.h + 2 * self.win.padding
    }
    fn wp(&self) -> usize {
        self.w + 2 * self.win.padding
    }
    /// Zeros after the last phase plane, so the shifted views of the last rows
    /// stay inside the buffer.
    fn tail(&self) -> usize {
        ((self.win.kernel - 1) / self.win.stride) * (self.wph() + 1)
    }
    /// Samples per wide product: about 1.5k columns.
    fn wide_group(&self, n: usize) -> usize {
        (1536 / (self.hph() * self.wph()).max(1)).clamp(1, n.max(1))
    }
}

/// Lays `ns` samples `(ch, hh, ww)` out as `(ch, sample, hp, wp)` with each image
/// at row and column `top`, zeros elsewhere, plus `tail` zeros at the end.
#[allow(clippy::too_many_arguments)]
fn pad_planes(
    src: &[f32],
    (ch, hh, ww): (usize, usize, usize),
    (hp, wp): (usize, usize),
    top: usize,
    tail: usize,
    dst: &mut Vec<f32>,
) {
    let ns = src.len() / (ch * hh * ww).max(1);
    let plane = hp * wp;
    dst.clear();
    dst.resize(ch * ns * plane + tail, 0.0);
    for (si, sample) in src.chunks(ch * hh * ww).enumerate() {
        for (ci, img) in sample.chunks(hh * ww).enumerate() {
            let base = (ci * ns + si) * plane + top * wp + top;
            for (y, row) in img.chunks(ww).enumerate() {
                dst[base + y * wp..][..ww].copy_from_slice(row);
            }
        }
    }
}

/// Lays `ns` samples `(ch, hh, ww)`, zero-padded by `pad`, out as phase planes
/// `(ch, phase, sample, hph, wph)`: padded pixel `(py, px)` goes to phase
/// `(py mod s)·s + px mod s` at `(py / s, px / s)`. Plus `tail` zeros at the end.
/// With `s = 1` this is [`pad_planes`].
#[allow(clippy::too_many_arguments)]
fn pad_phases(
    src: &[f32],
    (ch, hh, ww): (usize, usize, usize),
    s: usize,
    (hph, wph): (usize, usize),
    pad: usize,
    tail: usize,
    dst: &mut Vec<f32>,
) {
    if s == 1 {
        return pad_planes(src, (ch, hh, ww), (hph, wph), pad, tail, dst);
    }
    let ns = src.len() / (ch * hh * ww).max(1);
    let pp = hph * wph;
    let cols = ns * pp;
    dst.clear();
    dst.resize(ch * s * s * cols + tail, 0.0);
    for (si, sample) in src.chunks(ch * hh * ww).enumerate() {
        for (ci, img) in sample.chunks(hh * ww).enumerate() {
            let base = ci * s * s * cols + si * pp;
            for (y, row) in img.chunks(ww).enumerate() {
                let py = y + pad;
                let rbase = base + (py % s) * s * cols + (py / s) * wph;
                // Column phase b holds padded columns px ≡ b (mod s), side by side.
                for b in 0..s {
                    let px0 = pad + (b + s - pad % s) % s;
                    if px0 >= pad + ww {
                        continue;
                    }
                    let out = &mut dst[rbase + b * cols + px0 / s..];
                    for (o, v) in out.iter_mut().zip(row[px0 - pad..].iter().step_by(s)) {
                        *o = *v;
                    }
                }
            }
        }
    }
}

/// Offset of tap `(ki, kj)`'s view in channel 0 of a phase-plane buffer with
/// `cols` positions per phase.
fn tap_offset(ki: usize, kj: usize, s: usize, cols: usize, wph: usize) -> usize {
    ((ki % s) * s + kj % s) * cols + (ki / s) * wph + kj / s
}

/// Row offsets of the shifted views: row `(ci, ki, kj)` of the implicit column
/// matrix starts at `ci·s²·cols + tap_offset(ki, kj)` of the phase-plane buffer.
fn view_offsets(ch: usize, cols: usize, k: usize, wph: usize, s: usize) -> Vec<usize> {
    let mut v = Vec::with_capacity(ch * k * k);
    for ci in 0..ch {
        for ki in 0..k {
            for kj in 0..k {
                v.push(ci * s * s * cols + tap_offset(ki, kj, s, cols, wph));
            }
        }
    }
    v
}

/// `wide (o×cols) = W · views(xp)`: one product over the shifted views with the own
/// kernel, else one `gemm` per kernel tap with the channels as inner dimension.
fn wide_product(d: ConvDims, cols: usize, wide: &mut [f32], wt: &[f32], xp: &[f32]) {
    let (k, s, wph) = (d.win.kernel, d.win.stride, d.wph());
    let (ckk, kk) = (d.ckk(), k * k);
    #[cfg(target_arch = "x86_64")]
    if d.own() {
        let off = view_offsets(d.c, cols, k, wph, s);
        mm_offsets(
            (d.o, cols, ckk),
            wide,
            cols,
            false,
            (wt, ckk, 1),
            (xp, &off),
        );
        return;
    }
    for ki in 0..k {
        for kj in 0..k {
            let t = ki * k + kj;
            mm(
                (d.o, cols, d.c),
                wide,
                cols,
                t > 0,
                (&wt[t..], ckk, kk),
                (&xp[tap_offset(ki, kj, s, cols, wph)..], s * s * cols, 1),
                Parallelism::None,
            );
        }
    }
}

/// `dw += gy0 · views(xp)ᵀ` on the wide path (gy0 is zero off the valid outputs,
/// so the discarded positions add nothing).
fn wide_dw(d: ConvDims, cols: usize, (dw, dwt): (&mut [f32], &mut [f32]), xp: &[f32], gy0: &[f32]) {
    let (k, s, wph) = (d.win.kernel, d.win.stride, d.wph());
    let (ckk, kk) = (d.ckk(), k * k);
    #[cfg(target_arch = "x86_64")]
    if d.own_dw() {
        // dWᵀ (ckk×o) = views · gy0ᵀ: narrow rows (o ≤ 32) kept in L1. `dwt`
        // accumulates over the thread's groups and is added into dW once.
        let xoff = view_offsets(d.c, cols, k, wph, s);
        let mut gt = Scratch::new(cols * d.o);
        for (j, out) in gt.chunks_mut(d.o).enumerate() {
            for (oc, v) in out.iter_mut().enumerate() {
                *v = gy0[oc * cols + j];
            }
        }
        mm_narrow((ckk, d.o, cols), dwt, d.o, (xp, &xoff), (&gt, d.o));
        return;
    }
    for t in 0..kk {
        let v = tap_offset(t / k, t % k, s, cols, wph);
        // dW[o, c, ki, kj] += Σ_j gy0[o, j] · xp[c, v + j]
        mm_strided(
            (d.o, d.c, cols),
            (&mut dw[t..], ckk, kk),
            true,
            (gy0, cols, 1),
            (&xp[v..], 1, s * s * cols),
            Parallelism::None,
        );
    }
}

/// Stride 1: `wide (c×cols) = Wflip · views(gyq)`, the input gradient as a
/// correlation of gy padded by k−1−p with the flipped kernel.
fn wide_gx_flip(d: ConvDims, cols: usize, wide: &mut [f32], wflip: &[f32], gyq: &[f32]) {
    let (k, wp) = (d.win.kernel, d.wp());
    let (kk, okk) = (k * k, d.o * k * k);
    #[cfg(target_arch = "x86_64")]
    if d.own() {
        let goff = view_offsets(d.o, cols, k, wp, 1);
        mm_offsets(
            (d.c, cols, okk),
            wide,
            cols,
            false,
            (wflip, okk, 1),
            (gyq, &goff),
        );
        return;
    }
    for ki in 0..k {
        for kj in 0..k {
            let t = ki * k + kj;
            // wide[c, j] += Σ_o w[o, c, k−1−ki, k−1−kj] · gyq[o, ki·wp + kj + j]
            mm(
                (d.c, cols, d.o),
                wide,
                cols,
                t > 0,
                (&wflip[t..], okk, kk),
                (&gyq[ki * wp + kj..], cols, 1),
                Parallelism::None,
            );
        }
    }
}

/// Stride over 1: the gradient of every view, `dviews (ckk×cols) = Wᵀ · gy0`, added
/// back into a phase-plane buffer `gxp` at each view's offset (junk columns of gy0
/// are zero, so they add nothing).
fn wide_gx_scatter(
    d: ConvDims,
    cols: usize,
    (dviews, gxp): (&mut [f32], &mut [f32]),
    wt: &[f32],
    gy0: &[f32],
) {
    let (k, s, wph, ckk) = (d.win.kernel, d.win.stride, d.wph(), d.ckk());
    mm_rows(
        (ckk, cols, d.o),
        dviews,
        cols,
        false,
        (wt, 1, ckk),
        (gy0, cols),
        d.own(),
    );
    for (r, off) in view_offsets(d.c, cols, k, wph, s).into_iter().enumerate() {
        kernels::add_to(&mut gxp[off..off + cols], &dviews[r * cols..(r + 1) * cols]);
    }
}

/// Samples per thread: each thread takes one contiguous range of the batch.
fn thread_chunk(n: usize) -> usize {
    n.div_ceil(threads()).max(1)
}

/// The output of a convolution forward: `body(ys, xs)` fills the outputs of one
/// thread's range of samples from their inputs.
fn conv_forward_threads(
    x: &[f32],
    n: usize,
    d: ConvDims,
    body: impl Fn(&mut [f32], &[f32]) + Sync,
) -> Vec<f32> {
    let (howo, chw) = (d.ho * d.wo, d.c * d.h * d.w);
    let chunk = thread_chunk(n);
    let mut y = zeros(n * d.o * howo);
    y.par_chunks_mut(chunk * d.o * howo)
        .zip(x.par_chunks(chunk * chw))
        .for_each(|(yc, xc)| body(yc, xc));
    y
}

/// A convolution backward: `body(gxs, xs, gys)` accumulates the input gradient of
/// one thread's range of samples and returns its weight gradient; the sum of those
/// is returned.
fn conv_backward_threads(
    (x, gy, gx): (&[f32], &[f32], &mut [f32]),
    n: usize,
    d: ConvDims,
    body: impl Fn(&mut [f32], &[f32], &[f32]) -> Vec<f32> + Sync,
) -> Vec<f32> {
    let (howo, chw) = (d.ho * d.wo, d.c * d.h * d.w);
    let chunk = thread_chunk(n);
    gx.par_chunks_mut(chunk * chw)
        .zip(x.par_chunks(chunk * chw))
        .zip(gy.par_chunks(chunk * d.o * howo))
        .map(|((gxc, xc), gyc)| body(gxc, xc, gyc))
        .reduce(
            || vec![0.0; d.o * d.ckk()],
            |mut a, b| {
                kernels::add_to(&mut a, &b);
                a
            },
        )
}

fn conv_forward_wide(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    let (howo, chw) = (d.ho * d.wo, d.c * d.h * d.w);
    let (st, wph) = (d.win.stride, d.wph());
    let pp = d.hph() * wph;
    let g = d.wide_group(thread_chunk(n));
    conv_forward_threads(x, n, d, |yc, xc| {
        let mut xp = Vec::new();
        let mut wide = Scratch::new(d.o * g * pp);
        for (yg, xg) in yc.chunks_mut(g * d.o * howo).zip(xc.chunks(g * chw)) {
            let ns = xg.len() / chw;
            let cols = ns * pp;
            pad_phases(
                xg,
                (d.c, d.h, d.w),
                st,
                (d.hph(), wph),
                d.win.padding,
                d.tail(),
                &mut xp,
            );
            wide_product(d, cols, &mut wide, wt, &xp);
            for (si, ys) in yg.chunks_mut(d.o * howo).enumerate() {
                for (oc, out) in ys.chunks_mut(howo).enumerate() {
                    let b = bias.map_or(0.0, |b| b[oc]);
                    let src = &wide[oc * cols + si * pp..];
                    for (oy, row) in out.chunks_mut(d.wo).enumerate() {
                        for (v, s) in row.iter_mut().zip(&src[oy * wph..oy * wph + d.wo]) {
                            *v = s + b;
                        }
                    }
                }
            }
        }
    })
}

fn conv_backward_wide(
    x: &[f32],
    wt: &[f32],
    gy: &[f32],
    gx: &mut [f32],
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    let (k, p, st) = (d.win.kernel, d.win.padding, d.win.stride);
    let (ckk, howo, chw) = (d.ckk(), d.ho * d.wo, d.c * d.h * d.w);
    let (hph, wph) = (d.hph(), d.wph());
    let pp = hph * wph;
    let okk = d.o * k * k;
    // Stride 1: gx is the correlation of gy, padded by k−1−p, with the flipped
    // kernel whose in/out channels are swapped:
    // wflip[c, (o, ki, kj)] = w[o, c, k−1−ki, k−1−kj].
    let mut wflip = Vec::new();
    if st == 1 {
        wflip = vec![0.0; d.c * okk];
        for o in 0..d.o {
            for c in 0..d.c {
                for ki in 0..k {
                    for kj in 0..k {
                        wflip[c * okk + (o * k + ki) * k + kj] =
                            wt[((o * d.c + c) * k + k - 1 - ki) * k + k - 1 - kj];
                    }
                }
            }
        }
    }
    let q = k - 1 - p;
    let g = d.wide_group(thread_chunk(n));
    let wlen = d.o * ckk;
    conv_backward_threads((x, gy, gx), n, d, |gxc, xc, gyc| {
        let mut dw = vec![0.0; wlen];
        // dWᵀ (ckk×o) for the own kernels' narrow product.
        let mut dwt = vec![0.0; if d.own_dw() { wlen } else { 0 }];
        let (mut xp, mut gy0, mut gyq) = (Vec::new(), Vec::new(), Vec::new());
        let mut wide = Scratch::new(if st == 1 { d.c } else { ckk } * g * pp);
        for ((gxg, xg), gysrc) in gxc
            .chunks_mut(g * chw)
            .zip(xc.chunks(g * chw))
            .zip(gyc.chunks(g * d.o * howo))
        {
            let ns = xg.len() / chw;
            let cols = ns * pp;
            pad_phases(xg, (d.c, d.h, d.w), st, (hph, wph), p, d.tail(), &mut xp);
            pad_planes(gysrc, (d.o, d.ho, d.wo), (hph, wph), 0, 0, &mut gy0);
            wide_dw(d, cols, (&mut dw, &mut dwt), &xp, &gy0);
            if st == 1 {
                pad_planes(gysrc, (d.o, d.ho, d.wo), (hph, wph), q, d.tail(), &mut gyq);
                wide_gx_flip(d, cols, &mut wide, &wflip, &gyq);
                for (si, gs) in gxg.chunks_mut(chw).enumerate() {
                    for (ci, gp) in gs.chunks_mut(d.h * d.w).enumerate() {
                        let src = &wide[ci * cols + si * pp..];
                        for (iy, row) in gp.chunks_mut(d.w).enumerate() {
                            kernels::add_to(row, &src[iy * wph..iy * wph + d.w]);
                        }
                    }
                }
                continue;
            }
            // The phase-plane gradient reuses the input buffer's shape.
            let gxp = &mut xp;
            gxp.iter_mut().for_each(|v| *v = 0.0);
            wide_gx_scatter(d, cols, (&mut wide, gxp), wt, &gy0);
            for (si, gs) in gxg.chunks_mut(chw).enumerate() {
                for (ci, gp) in gs.chunks_mut(d.h * d.w).enumerate() {
                    let base = ci * st * st * cols + si * pp;
                    for (iy, row) in gp.chunks_mut(d.w).enumerate() {
                        let py = iy + p;
                        let rb = base + (py % st) * st * cols + (py / st) * wph;
                        // Column phase b holds padded columns px ≡ b (mod st).
                        for b in 0..st {
                            let px0 = p + (b + st - p % st) % st;
                            if px0 >= p + d.w {
                                continue;
                            }
                            let src = &gxp[rb + b * cols + px0 / st..];
                            for (g, v) in row[px0 - p..].iter_mut().step_by(st).zip(src) {
                                *g += v;
                            }
                        }
                    }
                }
            }
        }
        for (i, row) in dwt.chunks(d.o).enumerate() {
            for (oc, v) in row.iter().enumerate() {
                dw[oc * ckk + i] += v;
            }
        }
        dw
    })
}

/// Forward: per thread a contiguous range of samples, processed in groups whose
/// columns sit side by side so one gemm covers the whole group.
fn conv_forward(x: &[f32], wt: &[f32], bias: Option<&[f32]>, n: usize, d: ConvDims) -> Vec<f32> {
    if d.wide() {
        return conv_forward_wide(x, wt, bias, n, d);
    }
    let (ckk, howo, chw) = (d.ckk(), d.ho * d.wo, d.c * d.h * d.w);
    let g = d.group(thread_chunk(n));
    conv_forward_threads(x, n, d, |yc, xc| {
        let mut col = Scratch::new(ckk * g * howo);
        let mut tmp = Scratch::new(d.o * g * howo);
        for (yg, xg) in yc.chunks_mut(g * d.o * howo).zip(xc.chunks(g * chw)) {
            let ns = xg.len() / chw;
            let ld = ns * howo;
            for (s, xs) in xg.chunks(chw).enumerate() {
                im2col(xs, d, &mut col[s * howo..], ld);
            }
            if ns == 1 {
                // One sample: the product already has the output's layout.
                mm_rows(
                    (d.o, ld, ckk),
                    yg,
                    ld,
                    false,
                    (wt, ckk, 1),
                    (&col, ld),
                    d.own(),
                );
            } else {
                mm_rows(
                    (d.o, ld, ckk),
                    &mut tmp,
                    ld,
                    false,
                    (wt, ckk, 1),
                    (&col, ld),
                    d.own(),
                );
                for (s, ys) in yg.chunks_mut(d.o * howo).enumerate() {
                    for (oc, plane) in ys.chunks_mut(howo).enumerate() {
                        plane.copy_from_slice(&tmp[oc * ld + s * howo..][..howo]);
                    }
                }
            }
            if let Some(b) = bias {
                for ys in yg.chunks_mut(d.o * howo) {
                    for (oc, plane) in ys.chunks_mut(howo).enumerate() {
                        plane.iter_mut().for_each(|v| *v += b[oc]);
                    }
                }
            }
        }
    })
}

/// Accumulates the input gradient into `gx` and returns the weight gradient.
fn conv_backward(
    x: &[f32],
    wt: &[f32],
    gy: &[f32],
    gx: &mut [f32],
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    if d.wide() {
        return conv_backward_wide(x, wt, gy, gx, n, d);
    }
    let (ckk, howo, chw) = (d.ckk(), d.ho * d.wo, d.c * d.h * d.w);
    let g = d.group(thread_chunk(n));
    conv_backward_threads((x, gy, gx), n, d, |gxc, xc, gyc| {
        let mut dw = vec![0.0; d.o * ckk];
        let mut col = Scratch::new(ckk * g * howo);
        let mut dcol = Scratch::new(ckk * g * howo);
        let mut gyg = Scratch::new(d.o * g * howo);
        for ((gxg, xg), gysrc) in gxc
            .chunks_mut(g * chw)
            .zip(xc.chunks(g * chw))
            .zip(gyc.chunks(g * d.o * howo))
        {
            let ns = xg.len() / chw;
            let ld = ns * howo;
            for (s, xs) in xg.chunks(chw).enumerate() {
                im2col(xs, d, &mut col[s * howo..], ld);
            }
            for (s, gys) in gysrc.chunks(d.o * howo).enumerate() {
                for (oc, plane) in gys.chunks(howo).enumerate() {
                    gyg[oc * ld + s * howo..][..howo].copy_from_slice(plane);
                }
            }
            // dW (o×ckk) += gy (o×ld) · colᵀ
            mm_dot(
                (d.o, ckk, ld),
                &mut dw,
                ckk,
                (&gyg, ld),
                (&col, ld),
                d.own(),
            );
            // dcol (ckk×ld) = Wᵀ · gy
            mm_rows(
                (ckk, ld, d.o),
                &mut dcol,
                ld,
                false,
                (wt, 1, ckk),
                (&gyg, ld),
                d.own(),
            );
            for (s, gxs) in gxg.chunks_mut(chw).enumerate() {
                col2im_add(&dcol[s * howo..], d, gxs, ld);
            }
        }
        dw
    })
}

fn add_assign(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(d, s)| kernels::add_to(d, s));
}

/// For each channel of data laid out `(n, c, plane)`, the two sums `f(ci, start)`
/// returns for each of the channel's planes (starting at `start`), accumulated in
/// f64 across planes.
fn channel_pair_sums(
    (n, c, plane): (usize, usize, usize),
    f: impl Fn(usize, usize) -> (f32, f32) + Sync,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ci| {
            (0..n).fold((0.0, 0.0), |(a, b), ni| {
                let (pa, pb) = f(ci, (ni * c + ci) * plane);
                (a + pa as f64, b + pb as f64)
            })
        })
        .collect()
}

/// Per-channel sums of `v` laid out `(n, c, plane)`, in f64 across planes.
fn channel_sums(v: &[f32], c: usize, plane: usize) -> Vec<f32> {
    let n = v.len() / (c * plane).max(1);
    channel_pair_sums((n, c, plane), |_, o| (kernels::sum(&v[o..o + plane]), 0.0))
        .into_iter()
        .map(|(s, _)| s as f32)
        .collect()
}

/// Per-channel batch mean and biased variance of `x` laid out `(n, c, plane)`: one
/// pass of shifted sums (shift = the channel's first value), combined in f64.
fn channel_moments(x: &[f32], c: usize, plane: usize) -> (Vec<f32>, Vec<f32>) {
    let n = x.len() / (c * plane).max(1);
    let m = (n * plane).max(1) as f64;
    let shift = |ci: usize| x[ci * plane];
    channel_pair_sums((n, c, plane), |ci, o| {
        kernels::moments(&x[o..o + plane], shift(ci))
    })
    .into_iter()
    .enumerate()
    .map(|(ci, (s, q))| {
        let d = s / m;
        (
            (shift(ci) as f64 + d) as f32,
            (q / m - d * d).max(0.0) as f32,
        )
    })
    .unzip()
}

/// Fast conv2d (im2col + gemm per sample, rayon over samples).
pub fn conv2d<T: Tape<f32, Cpu>>(
    x: T4<Cpu, T>,
    w: T4<Cpu, T>,
    b: Option<T1<Cpu, T>>,
    win: Window,
) -> T4<Cpu, T> {
    let _t = timing::start("conv2d.fwd");
    let (n, c, h, wd) = *x.shape();
    let o = w.shape().0;
    let d = ConvDims {
        c,
        h,
        w: wd,
        o,
        ho: win.out_size(h).expect("window fits"),
        wo: win.out_size(wd).expect("window fits"),
        win,
    };
    let (x, tx) = x.contiguous().split_tape();
    let (w, tw) = w.contiguous().split_tape();
    let mut tape = tx.merge(tw);
    let b = b.map(|b| {
        let (b, tb) = b.split_tape();
        tape = std::mem::take(&mut tape).merge(tb);
        b
    });
    let xv = read(&x);
    let wv = read(&w);
    let bv = b.as_ref().map(read);
    let yv = conv_forward(&xv, &wv, bv.as_deref(), n, d);
    let y = x.device().tensor_from_vec(yv, (n, o, d.ho, d.wo));
    if T::OWNS_TAPE {
        let (xg, wg, bg, yg) = (
            x.ghost(),
            w.ghost(),
            b.as_ref().map(|b| b.ghost()),
            y.ghost(),
        );
        tape.add_backward_op(move |grads| {
            let _t = timing::start("conv2d.bwd");
            let gy = take_grad!(grads, yg);
            let dw = {
                let gx = grads.get_or_alloc_mut(&xg)?;
                conv_backward(&xv, &wv, &gy, gx, n, d)
            };
            add_assign(grads.get_or_alloc_mut(&wg)?, &dw);
            if let Some(bg) = bg {
                let db = channel_sums(&gy, o, d.ho * d.wo);
                add_assign(grads.get_or_alloc_mut(&bg)?, &db);
            }
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// Fast max pooling (argmax kept for backward).
pub fn max_pool2d<T: Tape<f32, Cpu>>(x: T4<Cpu, T>, win: Window) -> T4<Cpu, T> {
    let _t = timing::start("max_pool.fwd");
    let (n, c, h, w) = *x.shape();
    let ho = win.out_size(h).expect("window fits");
    let wo = win.out_size(w).expect("window fits");
    let (x, mut tape) = x.contiguous().split_tape();
    let xv = read(&x);
    let mut yv = zeros(n * c * ho * wo);
    let mut arg = vec![0u32; n * c * ho * wo];
    yv.par_chunks_mut(ho * wo)
        .zip(arg.par_chunks_mut(ho * wo))
        .zip(xv.par_chunks(h * w))
        .for_each(|((yp, ap), xp)| {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut best = f32::NEG_INFINITY;
                    let mut at = u32::MAX;
                    for ki in 0..win.kernel {
                        let iy = (oy * win.stride + ki) as isize - win.padding as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kj in 0..win.kernel {
                            let ix = (ox * win.stride + kj) as isize - win.padding as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let i = iy as usize * w + ix as usize;
                            if at == u32::MAX || xp[i] > best {
                                best = xp[i];
                                at = i as u32;
                            }
                        }
                    }
                    yp[oy * wo + ox] = best;
                    ap[oy * wo + ox] = at;
                }
            }
        });
    drop(xv);
    let y = x.device().tensor_from_vec(yv, (n, c, ho, wo));
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let _t = timing::start("max_pool.bwd");
            let gy = take_grad!(grads, yg);
            let gx = grads.get_or_alloc_mut(&xg)?;
            gx.par_chunks_mut(h * w)
                .zip(gy.par_chunks(ho * wo))
                .zip(arg.par_chunks(ho * wo))
                .for_each(|((gp, gyp), ap)| {
                    for (g, &a) in gyp.iter().zip(ap) {
                        if a != u32::MAX {
                            gp[a as usize] += g;
                        }
                    }
                });
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// Fast global average pooling.
pub fn global_avg_pool<T: Tape<f32, Cpu>>(x: T4<Cpu, T>) -> T2<Cpu, T> {
    let _t = timing::start("avg_pool.fwd");
    let (n, c, h, w) = *x.shape();
    let hw = h * w;
    let (x, mut tape) = x.contiguous().split_tape();
    let xv = read(&x);
    let yv: Vec<f32> = xv
        .par_chunks(hw.max(1))
        .map(|p| p.iter().sum::<f32>() / hw as f32)
        .collect();
    let y = x.device().tensor_from_vec(yv, (n, c));
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let gy = take_grad!(grads, yg);
            let gx = grads.get_or_alloc_mut(&xg)?;
            gx.par_chunks_mut(hw.max(1))
                .zip(gy.par_iter())
                .for_each(|(p, g)| p.iter_mut().for_each(|v| *v += g / hw as f32));
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// Fast fused batch norm (statistics, normalisation and affine in two passes).
pub fn batch_norm2d<T: Tape<f32, Cpu>>(
    x: T4<Cpu, T>,
    gamma: T1<Cpu, T>,
    beta: T1<Cpu, T>,
    running: &BnRunning<Cpu>,
    train: bool,
    cfg: BnConfig,
) -> (T4<Cpu, T>, Option<BnRunning<Cpu>>) {
    bn_impl(x, gamma, beta, running, train, cfg, false)
}

/// Batch norm followed by ReLU in one kernel: the ReLU mask is recomputed from the
/// saved input in backward, so nothing extra is stored.
pub fn batch_norm2d_relu<T: Tape<f32, Cpu>>(
    x: T4<Cpu, T>,
    gamma: T1<Cpu, T>,
    beta: T1<Cpu, T>,
    running: &BnRunning<Cpu>,
    train: bool,
    cfg: BnConfig,
) -> (T4<Cpu, T>, Option<BnRunning<Cpu>>) {
    bn_impl(x, gamma, beta, running, train, cfg, true)
}

#[allow(clippy::too_many_arguments)]
fn bn_impl<T: Tape<f32, Cpu>>(
    x: T4<Cpu, T>,
    gamma: T1<Cpu, T>,
    beta: T1<Cpu, T>,
    running: &BnRunning<Cpu>,
    train: bool,
    cfg: BnConfig,
    relu: bool,
) -> (T4<Cpu, T>, Option<BnRunning<Cpu>>) {
    let _t = timing::start("batch_norm.fwd");
    let shape = *x.shape();
    let (n, c, h, w) = shape;
    let plane = h * w;
    let m = n * plane;
    let (x, tx) = x.contiguous().split_tape();
    let (g, tg) = gamma.split_tape();
    let (b, tb) = beta.split_tape();
    let mut tape = tx.merge(tg).merge(tb);
    let xv = read(&x);
    let gv = read(&g);
    let bv = read(&b);
    let (mean, var) = if train {
        channel_moments(&xv, c, plane)
    } else {
        (read_vec(&running.mean), read_vec(&running.var))
    };
    let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + cfg.eps).sqrt()).collect();
    // Per channel, y = x·s + t.
    let scale: Vec<f32> = (0..c).map(|ci| gv[ci] * inv[ci]).collect();
    let shift: Vec<f32> = (0..c).map(|ci| bv[ci] - mean[ci] * scale[ci]).collect();
    let yv = filled(xv.len(), plane.max(1), |i, yp| {
        let ci = i % c;
        let xp = &xv[i * plane..][..yp.len()];
        kernels::affine_into(xp, yp, scale[ci], shift[ci], relu);
    });
    let new = train.then(|| {
        let mo = cfg.momentum;
        let unbias = m as f32 / (m as f32 - 1.0).max(1.0);
        let rm = read_vec(&running.mean);
        let rv = read_vec(&running.var);
        let nm: Vec<f32> = rm
            .iter()
            .zip(&mean)
            .map(|(r, v)| r * (1.0 - mo) + v * mo)
            .collect();
        let nv: Vec<f32> = rv
            .iter()
            .zip(&var)
            .map(|(r, v)| r * (1.0 - mo) + v * unbias * mo)
            .collect();
        BnRunning {
            mean: x.device().tensor_from_vec(nm, (c,)),
            var: x.device().tensor_from_vec(nv, (c,)),
        }
    });
    let y = x.device().tensor_from_vec(yv, shape);
    if T::OWNS_TAPE {
        let (xg, gg, bg, yg) = (x.ghost(), g.ghost(), b.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let _t = timing::start("batch_norm.bwd");
            let gy = take_grad!(grads, yg);
            // Per channel: Σ g and Σ g·(x − mean), g masked by the fused ReLU.
            let (sum_gy, sum_gxc): (Vec<f32>, Vec<f32>) =
                channel_pair_sums((n, c, plane), |ci, o| {
                    kernels::bn_grad_sums(
                        &xv[o..o + plane],
                        &gy[o..o + plane],
                        mean[ci],
                        scale[ci],
                        shift[ci],
                        relu,
                    )
                })
                .into_iter()
                .map(|(a, b)| (a as f32, b as f32))
                .unzip();
            let sum_gyx: Vec<f32> = (0..c).map(|ci| sum_gxc[ci] * inv[ci]).collect();
            {
                // gx = k·(g − Σg/m − x̂·Σg·x̂/m) with x̂ = (x − mean)·inv, written as
                // gx += k·g + c0 + c1·x.
                let coef: Vec<(f32, f32)> = (0..c)
                    .map(|ci| {
                        if !train {
                            return (0.0, 0.0);
                        }
                        let k = scale[ci];
                        let (a, bb) = (sum_gy[ci] / m as f32, sum_gyx[ci] / m as f32);
                        let c1 = -k * bb * inv[ci];
                        (-k * a - c1 * mean[ci], c1)
                    })
                    .collect();
                let gx = grads.get_or_alloc_mut(&xg)?;
                gx.par_chunks_mut(plane.max(1))
                    .zip(xv.par_chunks(plane.max(1)))
                    .zip(gy.par_chunks(plane.max(1)))
                    .enumerate()
                    .for_each(|(p, ((gp, xp), gyp))| {
                        let ci = p % c;
                        kernels::bn_grad_input(gp, xp, gyp, coef[ci], scale[ci], shift[ci], relu);
                    });
            }
            add_assign(grads.get_or_alloc_mut(&gg)?, &sum_gyx);
            add_assign(grads.get_or_alloc_mut(&bg)?, &sum_gy);
            Ok(())
        });
    }
    (y.put_tape(tape), new)
}

/// Fast ReLU on any shape.
pub fn relu<S: Shape, T: Tape<f32, Cpu>>(x: Tensor<S, f32, Cpu, T>) -> Tensor<S, f32, Cpu, T> {
    let _t = timing::start("relu.fwd");
    let shape = *x.shape();
    let (x, mut tape) = x.contiguous().split_tape();
    let mut yv = read_vec(&x);
    yv.par_chunks_mut(1 << 14)
        .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
    let mask: Vec<bool> = if T::OWNS_TAPE {
        yv.par_iter().map(|v| *v > 0.0).collect()
    } else {
        Vec::new()
    };
    let y = x.device().tensor_from_vec(yv, shape);
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let _t = timing::start("relu.bwd");
            let gy = take_grad!(grads, yg);
            let gx = grads.get_or_alloc_mut(&xg)?;
            gx.par_chunks_mut(1 << 14)
                .zip(gy.par_chunks(1 << 14))
                .zip(mask.par_chunks(1 << 14))
                .for_each(|((g, gyc), mc)| {
                    for ((g, gy), m) in g.iter_mut().zip(gyc).zip(mc) {
                        if *m {
                            *g += gy;
                        }
                    }
                });
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// Fused residual join `max(a + b, 0)`.
pub fn add_relu<T: Tape<f32, Cpu>>(a: T4<Cpu, T>, b: T4<Cpu, T>) -> T4<Cpu, T> {
    let _t = timing::start("add_relu.fwd");
    let shape = *a.shape();
    let (a, ta) = a.contiguous().split_tape();
    let (b, tb) = b.contiguous().split_tape();
    let mut tape = ta.merge(tb);
    let av = read(&a);
    let bv = read(&b);
    let len = av.len();
    assert_eq!(len, bv.len());
    let mut mask = vec![false; len];
    let mut yv: Vec<f32> = Vec::with_capacity(len);
    yv.spare_capacity_mut()[..len]
        .par_chunks_mut(1 << 14)
        .zip(av.par_chunks(1 << 14))
        .zip(bv.par_chunks(1 << 14))
        .zip(mask.par_chunks_mut(1 << 14))
        .for_each(|(((y, a), b), m)| kernels::add_relu_into(a, b, y, m));
    // SAFETY: the chunks of `av`, `bv`, `mask` and the storage have equal lengths and
    // `add_relu_into` writes all of its `y` (asserted), so all `len` are initialised.
    unsafe { yv.set_len(len) };
    drop((av, bv));
    let y = a.device().tensor_from_vec(yv, shape);
    if T::OWNS_TAPE {
        let (ag, bg, yg) = (a.ghost(), b.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let _t = timing::start("add_relu.bwd");
            let gy = take_grad!(grads, yg);
            // Both input gradients in one pass: take one out of `grads` meanwhile.
            let mut ga = {
                grads.get_or_alloc_mut(&ag)?;
                take_grad!(grads, ag)
            };
            let gb = grads.get_or_alloc_mut(&bg)?;
            if gb.is_empty() && !ga.is_empty() {
                // `a` and `b` are one tensor: its gradient is the one taken out.
                ga.par_chunks_mut(1 << 14)
                    .zip(gy.par_chunks(1 << 14))
                    .zip(mask.par_chunks(1 << 14))
                    .for_each(|((a, g), m)| {
                        // a += g' into `a` and into a zeroed copy, then once more.
                        let mut once = vec![0.0; a.len()];
                        kernels::add_relu_bwd(a, &mut once, g, m);
                        kernels::add_to(a, &once);
                    });
                **grads.get_or_alloc_mut(&ag)? = ga;
                return Ok(());
            }
            ga.par_chunks_mut(1 << 14)
                .zip(gb.par_chunks_mut(1 << 14))
                .zip(gy.par_chunks(1 << 14))
                .zip(mask.par_chunks(1 << 14))
                .for_each(|(((a, b), g), m)| kernels::add_relu_bwd(a, b, g, m));
            **grads.get_or_alloc_mut(&ag)? = ga;
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// Fast linear layer (gemm, multithreaded by gemm itself).
pub fn linear<T: Tape<f32, Cpu>>(
    x: T2<Cpu, T>,
    w: T2<Cpu, T>,
    b: Option<T1<Cpu, T>>,
) -> T2<Cpu, T> {
    let _t = timing::start("linear.fwd");
    let (n, fin) = *x.shape();
    let out = w.shape().0;
    let (x, tx) = x.contiguous().split_tape();
    let (w, tw) = w.contiguous().split_tape();
    let mut tape = tx.merge(tw);
    let b = b.map(|b| {
        let (b, tb) = b.split_tape();
        tape = std::mem::take(&mut tape).merge(tb);
        b
    });
    let xv = read(&x);
    let wv = read(&w);
    let mut yv = vec![0.0; n * out];
    if let Some(b) = &b {
        let bv = read(b);
        yv.chunks_mut(out.max(1))
            .for_each(|r| r.copy_from_slice(&bv));
    }
    mm(
        (n, out, fin),
        &mut yv,
        out,
        b.is_some(),
        (&xv, fin, 1),
        (&wv, 1, fin),
        Parallelism::Rayon(0),
    );
    let y = x.device().tensor_from_vec(yv, (n, out));
    if T::OWNS_TAPE {
        let (xg, wg, bg, yg) = (
            x.ghost(),
            w.ghost(),
            b.as_ref().map(|b| b.ghost()),
            y.ghost(),
        );
        tape.add_backward_op(move |grads| {
            let _t = timing::start("linear.bwd");
            let gy = take_grad!(grads, yg);
            mm(
                (n, fin, out),
                grads.get_or_alloc_mut(&xg)?,
                fin,
                true,
                (&gy, out, 1),
                (&wv, fin, 1),
                Parallelism::Rayon(0),
            );
            mm(
                (out, fin, n),
                grads.get_or_alloc_mut(&wg)?,
                fin,
                true,
                (&gy, 1, out),
                (&xv, fin, 1),
                Parallelism::Rayon(0),
            );
            if let Some(bg) = bg {
                let gb = grads.get_or_alloc_mut(&bg)?;
                for r in gy.chunks(out.max(1)) {
                    gb.iter_mut().zip(r).for_each(|(a, v)| *a += v);
                }
            }
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// Fast row-wise L2 normalisation.
pub fn l2_normalize<T: Tape<f32, Cpu>>(x: T2<Cpu, T>, eps: f32) -> T2<Cpu, T> {
    let (n, f) = *x.shape();
    let (x, mut tape) = x.contiguous().split_tape();
    let mut yv = read_vec(&x);
    let norms: Vec<f32> = yv
        .chunks_mut(f.max(1))
        .map(|r| {
            let nrm = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(eps);
            r.iter_mut().for_each(|v| *v /= nrm);
            nrm
        })
        .collect();
    let y = x.device().tensor_from_vec(yv.clone(), (n, f));
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let gy = take_grad!(grads, yg);
            let gx = grads.get_or_alloc_mut(&xg)?;
            for (r, nrm) in norms.iter().enumerate() {
                let (ys, gys) = (&yv[r * f..(r + 1) * f], &gy[r * f..(r + 1) * f]);
                let gxs = &mut gx[r * f..(r + 1) * f];
                // Below eps the norm is a constant, so only the direct term remains.
                let dot = if *nrm > eps {
                    ys.iter().zip(gys).map(|(a, b)| a * b).sum::<f32>()
                } else {
                    0.0
                };
                for ((g, gyv), yv) in gxs.iter_mut().zip(gys).zip(ys) {
                    *g += (gyv - yv * dot) / nrm;
                }
            }
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// `Σ a[i]·b[i]` in 32 independent lanes, so the reduction vectorises (two AVX-512
/// registers: two FMA chains in flight).
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    const W: usize = 32;
    let mut acc = [0.0f32; W];
    let (ac, bc) = (a.chunks_exact(W), b.chunks_exact(W));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        let x: &[f32; W] = x.try_into().expect("chunk of W");
        let y: &[f32; W] = y.try_into().expect("chunk of W");
        for j in 0..W {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Asks the CPU to start loading table row `i` (`d` floats), which a gather reads a
/// few iterations later: the rows are scattered over a table larger than the
/// caches, and the hardware cannot guess the next one.
#[inline(always)]
fn prefetch_row(table: &[f32], i: usize, d: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let row = &table[i * d..(i + 1) * d];
        for line in row.chunks(16) {
            // SAFETY: a prefetch of a valid address; it reads nothing.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    line.as_ptr().cast(),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (table, i, d);
}

/// Rows a gather prefetches ahead.
const PREFETCH_AHEAD: usize = 8;

/// [`bank_log_softmax`] multiplies with the whole table when it has fewer rows than
/// this many times the logits per row. The `bank_paths` timing test on the
/// memory-bank recipe's shape (2 threads, AVX2): dense 17 / sparse 32 ms at 2.4
/// (the recipe), 43 / 56 ms at 7.3, 82 / 75 ms at 14.6. The dense path's two
/// `n × rows` buffers stay a few tens of MB below the switch.
const BANK_DENSE_RATIO: usize = 12;

kernels::multiversion! {
    /// `out[j] = scale · a · table[idx[j]]` for `d = a.len()`-wide table rows.
    fn bank_row_logits(a: &[f32], table: &[f32], idx: &[u32], scale: f32, out: &mut [f32]) {
        let d = a.len();
        for (j, (o, &i)) in out.iter_mut().zip(idx).enumerate() {
            if let Some(&next) = idx.get(j + PREFETCH_AHEAD) {
                prefetch_row(table, next as usize, d);
            }
            let i = i as usize;
            *o = scale * dot_lanes(a, &table[i * d..(i + 1) * d]);
        }
    }
}

kernels::multiversion! {
    /// `acc += Σ_j g[j] · table[idx[j]]` for `d = acc.len()`-wide table rows.
    fn bank_row_grad(g: &[f32], table: &[f32], idx: &[u32], acc: &mut [f32]) {
        let d = acc.len();
        for (j, (&gj, &i)) in g.iter().zip(idx).enumerate() {
            if let Some(&next) = idx.get(j + PREFETCH_AHEAD) {
                prefetch_row(table, next as usize, d);
            }
            let i = i as usize;
            for (a, b) in acc.iter_mut().zip(&table[i * d..(i + 1) * d]) {
                *a += gj * b;
            }
        }
    }
}

/// A buffer of `len` floats from the pool (contents unspecified; zeroed when new).
/// The memory bank's buffers have the same sizes every step.
fn pooled(len: usize) -> HostBuf {
    HostBuf(HostBuf::take(len).unwrap_or_else(|| zeros(len)))
}

/// Lanes of the row reductions of [`log_softmax_row`].
const LANES: usize = 16;

/// `e^x` for `LANES` values `x ≤ 0` at once, in a loop LLVM vectorises (std's `exp` is
/// one libm call per value, and was most of the log-softmax's time): Cody–Waite
/// reduction `x = n·ln 2 + r` and Cephes' `expf` polynomial for `e^r`, within a few
/// ulp of the exact value; below −87.3 (under the smallest normal float) it is 0.
#[inline(always)]
fn exp_lanes(x: &[f32; LANES]) -> [f32; LANES] {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer without
    // SSE4.1's `roundps`, which the portable build lacks.
    const ROUND: f32 = 12_582_912.0;
    const LOW: f32 = -87.336_55;
    let mut out = [0.0f32; LANES];
    for j in 0..LANES {
        let v = if x[j] < LOW { LOW } else { x[j] };
        let n = (v * LOG2E + ROUND) - ROUND;
        let r = v - n * 0.693_359_4 - n * -2.121_944_4e-4;
        let mut p = 1.987_569_1e-4f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 0.166_666_65;
        p = p * r + 0.5;
        let e = p * r * r + r + 1.0;
        // n is in [−126, 0]: 2ⁿ is a normal float.
        let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
        out[j] = if x[j] < LOW { 0.0 } else { e * two_n };
    }
    out
}

/// The largest value, in lanes (a running `max` is a serial chain).
fn max_lanes(y: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut it = y.chunks_exact(LANES);
    for c in &mut it {
        let c: &[f32; LANES] = c.try_into().expect("chunk of LANES");
        for j in 0..LANES {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    acc.iter()
        .chain(it.remainder())
        .fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a })
}

/// `Σ exp(y − max)` in lanes, writing each term to `p` when given.
fn exp_sum(y: &[f32], max: f32, mut p: Option<&mut [f32]>) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (c, ys) in y.chunks(LANES).enumerate() {
        // The last chunk is padded with values whose exponential is 0.
        let mut x = [-100.0f32; LANES];
        x.iter_mut().zip(ys).for_each(|(x, v)| *x = v - max);
        let e = exp_lanes(&x);
        if let Some(p) = p.as_deref_mut() {
            p[c * LANES..c * LANES + ys.len()].copy_from_slice(&e[..ys.len()]);
        }
        for j in 0..LANES {
            acc[j] += e[j];
        }
    }
    acc.iter().sum()
}

/// One row's log-softmax in place, `(y − max) − ln Σ exp(y − max)` as dfdx's
/// `log_softmax` writes it; with `p`, also the softmax (what backward needs).
fn log_softmax_row(y: &mut [f32], mut p: Option<&mut [f32]>) {
    let max = max_lanes(y);
    let sum = exp_sum(y, max, p.as_deref_mut());
    if let Some(p) = p {
        p.iter_mut().for_each(|e| *e /= sum);
    }
    let ln = sum.ln();
    y.iter_mut().for_each(|v| *v = (*v - max) - ln);
}

/// Log-softmax of the logits against a constant table (see
/// [`EngineDevice::bank_log_softmax`]), fused: one pass over each row of logits
/// instead of dfdx's chain of broadcasts and reductions.
///
/// The logits come one of two ways, picked by size. Dense: when the table has fewer
/// than [`BANK_DENSE_RATIO`] × `m` rows, one gemm `f·tableᵀ` over the whole table and
/// a gather (backward: scatter the logits' gradient into an `n × rows` matrix, one
/// gemm with the table); the table is read once, packed, instead of once per draw.
/// Sparse otherwise: one `d`-length dot product (backward: one axpy) per logit,
/// rayon over rows. Either way the table's gradient, which nobody wants, is never
/// formed. Backward needs the table as it is now (the caller may update it before
/// backward runs), so a recording tape keeps a pooled copy.
pub fn bank_log_softmax<T: Tape<f32, Cpu>>(
    f: T2<Cpu, T>,
    bank: &[f32],
    idx: &[usize],
    scale: f32,
) -> T2<Cpu, T> {
    let rows = bank.len() / f.shape().1.max(1);
    let m = idx.len().checked_div(f.shape().0).unwrap_or(0);
    bank_log_softmax_path(f, bank, idx, scale, rows < BANK_DENSE_RATIO * m)
}

/// [`bank_log_softmax`] on the dense (`true`) or the sparse path.
fn bank_log_softmax_path<T: Tape<f32, Cpu>>(
    f: T2<Cpu, T>,
    bank: &[f32],
    idx: &[usize],
    scale: f32,
    dense: bool,
) -> T2<Cpu, T> {
    let (n, d) = *f.shape();
    let rows = bank.len() / d.max(1);
    let m = idx.len().checked_div(n).unwrap_or(0);
    assert!(
        bank.len() == rows * d && idx.len() == n * m && rows as u64 <= 1 << 32,
        "bank_log_softmax: table of {} values for width {d}, {} indices for {n} rows",
        bank.len(),
        idx.len()
    );
    let (f, mut tape) = f.contiguous().split_tape();
    let fv = read(&f);
    // Table rows fit in u32 (asserted), which halves the copy backward keeps.
    let idx32: Vec<u32> = idx
        .par_iter()
        .map(|&i| {
            assert!(
                i < rows,
                "bank_log_softmax: index {i} outside a table of {rows}"
            );
            i as u32
        })
        .collect();
    let full = dense.then(|| {
        let mut full = pooled(n * rows);
        mm(
            (n, rows, d),
            &mut full,
            rows,
            false,
            (&fv, d, 1),
            (bank, 1, d),
            Parallelism::Rayon(0),
        );
        full
    });
    // Row `r`'s logits, then their log-softmax while they are in cache.
    let row = |r: usize, y: &mut [f32], p: Option<&mut [f32]>| {
        let ids = &idx32[r * m..(r + 1) * m];
        match &full {
            Some(full) => {
                let src = &full[r * rows..(r + 1) * rows];
                // One read per cache line, in order, so the hardware prefetcher brings
                // the row into cache before the random reads (about twice as fast).
                let touch = src.iter().step_by(16).fold(0.0f32, |a, &v| a + v);
                std::hint::black_box(touch);
                for (o, &i) in y.iter_mut().zip(ids) {
                    *o = scale * src[i as usize];
                }
            }
            None => bank_row_logits(&fv[r * d..(r + 1) * d], bank, ids, scale, y),
        }
        log_softmax_row(y, p);
    };
    let mut yv = zeros(n * m);
    // The softmax, kept for backward.
    let mut soft = if T::OWNS_TAPE {
        pooled(n * m)
    } else {
        HostBuf(Vec::new())
    };
    if T::OWNS_TAPE {
        yv.par_chunks_mut(m.max(1))
            .zip(soft.par_chunks_mut(m.max(1)))
            .enumerate()
            .for_each(|(r, (y, p))| row(r, y, Some(p)));
    } else {
        yv.par_chunks_mut(m.max(1))
            .enumerate()
            .for_each(|(r, y)| row(r, y, None));
    }
    drop((fv, full));
    let y = f.device().tensor_from_vec(yv, (n, m));
    if T::OWNS_TAPE {
        let mut table = pooled(bank.len());
        table
            .par_chunks_mut(1 << 16)
            .zip(bank.par_chunks(1 << 16))
            .for_each(|(t, b)| t.copy_from_slice(b));
        let (fg, yg) = (f.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let gy = take_grad!(grads, yg);
            let gx = grads.get_or_alloc_mut(&fg)?;
            // The logits' gradient, `scale · (g − p·Σg)` per row (log-softmax's
            // backward, and the logits' scale).
            let logit_grad = |g: &[f32], p: &[f32]| {
                let sum: f32 = g.iter().sum();
                g.iter()
                    .zip(p)
                    .map(move |(gj, pj)| scale * (gj - pj * sum))
                    .collect::<Vec<f32>>()
            };
            if dense {
                let mut gfull = pooled(n * rows);
                gfull
                    .par_chunks_mut(rows.max(1))
                    .zip(gy.par_chunks(m.max(1)))
                    .zip(soft.par_chunks(m.max(1)))
                    .enumerate()
                    .for_each(|(r, ((dst, g), p))| {
                        dst.fill(0.0);
                        let ids = &idx32[r * m..(r + 1) * m];
                        for (v, &i) in logit_grad(g, p).into_iter().zip(ids) {
                            dst[i as usize] += v;
                        }
                    });
                mm(
                    (n, d, rows),
                    gx,
                    d,
                    true,
                    (&gfull, rows, 1),
                    (&table, d, 1),
                    Parallelism::Rayon(0),
                );
            } else {
                gx.par_chunks_mut(d.max(1))
                    .zip(gy.par_chunks(m.max(1)))
                    .zip(soft.par_chunks(m.max(1)))
                    .enumerate()
                    .for_each(|(r, ((gxr, g), p))| {
                        let gl = logit_grad(g, p);
                        bank_row_grad(&gl, &table, &idx32[r * m..(r + 1) * m], gxr);
                    });
            }
            Ok(())
        });
    }
    y.put_tape(tape)
}

impl EngineDevice for Cpu {
    fn conv2d<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        w: T4<Self, T>,
        b: Option<T1<Self, T>>,
        win: Window,
    ) -> T4<Self, T> {
        conv2d(x, w, b, win)
    }
    fn max_pool2d<T: Tape<f32, Self>>(x: T4<Self, T>, win: Window) -> T4<Self, T> {
        max_pool2d(x, win)
    }
    fn global_avg_pool<T: Tape<f32, Self>>(x: T4<Self, T>) -> T2<Self, T> {
        global_avg_pool(x)
    }
    fn batch_norm2d<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        gamma: T1<Self, T>,
        beta: T1<Self, T>,
        running: &BnRunning<Self>,
        train: bool,
        cfg: BnConfig,
    ) -> (T4<Self, T>, Option<BnRunning<Self>>) {
        batch_norm2d(x, gamma, beta, running, train, cfg)
    }
    fn batch_norm2d_relu<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        gamma: T1<Self, T>,
        beta: T1<Self, T>,
        running: &BnRunning<Self>,
        train: bool,
        cfg: BnConfig,
    ) -> (T4<Self, T>, Option<BnRunning<Self>>) {
        batch_norm2d_relu(x, gamma, beta, running, train, cfg)
    }
    fn relu4<T: Tape<f32, Self>>(x: T4<Self, T>) -> T4<Self, T> {
        relu(x)
    }
    fn add_relu<T: Tape<f32, Self>>(a: T4<Self, T>, b: T4<Self, T>) -> T4<Self, T> {
        add_relu(a, b)
    }
    fn relu2<T: Tape<f32, Self>>(x: T2<Self, T>) -> T2<Self, T> {
        relu(x)
    }
    fn linear<T: Tape<f32, Self>>(
        x: T2<Self, T>,
        w: T2<Self, T>,
        b: Option<T1<Self, T>>,
    ) -> T2<Self, T> {
        linear(x, w, b)
    }
    fn l2_normalize<T: Tape<f32, Self>>(x: T2<Self, T>, eps: f32) -> T2<Self, T> {
        l2_normalize(x, eps)
    }
    fn bank_log_softmax<T: Tape<f32, Self>>(
        f: T2<Self, T>,
        bank: &[f32],
        idx: &[usize],
        scale: f32,
    ) -> T2<Self, T> {
        bank_log_softmax(f, bank, idx, scale)
    }
}

#[cfg(test)]
mod kernel_speed {
    use super::*;
    use std::time::Instant;

    /// `cargo test --release --lib kernel_speed -- --ignored --nocapture`: GFLOP/s of
    /// the hand-written products against the `gemm` crate on conv-like shapes.
    #[test]
    #[ignore]
    fn products() {
        for &(m, n, k) in &[
            (16, 1156, 144),
            (32, 1296, 288),
            (64, 1156, 576),
            (16, 1024, 144),
            (64, 1024, 576),
            (128, 1024, 1152),
            (576, 1024, 64),
            (256, 512, 2304),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut c = vec![0.0; m * n];
            let reps = (2e9 / (2.0 * (m * n * k) as f64)).ceil() as usize;
            let gf = |t: f64| 2.0 * (m * n * k * reps) as f64 / t / 1e9;
            let t = Instant::now();
            for _ in 0..reps {
                mm_rows((m, n, k), &mut c, n, false, (&a, k, 1), (&b, n), true);
            }
            let own = gf(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for _ in 0..reps {
                mm(
                    (m, n, k),
                    &mut c,
                    n,
                    false,
                    (&a, k, 1),
                    (&b, n, 1),
                    Parallelism::None,
                );
            }
            let crate_ = gf(t.elapsed().as_secs_f64());
            // dW form: (m×len)·(n×len)ᵀ with len = n.
            let bt: Vec<f32> = (0..k * n).map(|i| (i % 3) as f32 * 0.1).collect();
            let mut w = vec![0.0; m * k];
            let t = Instant::now();
            for _ in 0..reps {
                mm_dot((m, k, n), &mut w, k, (&c, n), (&bt, n), true);
            }
            let dot = gf(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for _ in 0..reps {
                mm(
                    (m, k, n),
                    &mut w,
                    k,
                    true,
                    (&c, n, 1),
                    (&bt, 1, n),
                    Parallelism::None,
                );
            }
            let dot_crate = gf(t.elapsed().as_secs_f64());
            // The same dW product as dWᵀ = colᵀ-views · gyᵀ with narrow rows.
            let narrow = if m <= 32 {
                let ct: Vec<f32> = (0..n * m).map(|i| (i % 7) as f32 * 0.1).collect();
                let aoff: Vec<usize> = (0..k).map(|i| i * n).collect();
                let mut wt = vec![0.0; k * m];
                let t = Instant::now();
                for _ in 0..reps {
                    mm_narrow((k, m, n), &mut wt, m, (&bt, &aoff), (&ct, m));
                }
                gf(t.elapsed().as_secs_f64())
            } else {
                f64::NAN
            };
            println!(
                "m={m:4} n={n:5} k={k:5}: rows own {own:6.1} crate {crate_:6.1} | dot own {dot:6.1} crate {dot_crate:6.1} narrow {narrow:6.1} GFLOP/s"
            );
        }
    }
}

#[cfg(test)]
mod core_scaling {
    use super::*;
    use std::time::Instant;

    /// Aggregate GFLOP/s of one `gemm` per thread on 1 and 2 threads.
    #[test]
    #[ignore]
    fn two_threads() {
        let (m, n, k) = (256, 512, 2304);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        for threads in [1usize, 2] {
            let reps = 20;
            let t = Instant::now();
            (0..threads).into_par_iter().for_each(|_| {
                let mut c = vec![0.0; m * n];
                for _ in 0..reps {
                    mm(
                        (m, n, k),
                        &mut c,
                        n,
                        false,
                        (&a, k, 1),
                        (&b, n, 1),
                        Parallelism::None,
                    );
                }
            });
            let gf = 2.0 * (m * n * k * reps * threads) as f64 / t.elapsed().as_secs_f64() / 1e9;
            println!("{threads} thread(s): {gf:.1} GFLOP/s in all");
        }
    }
}

#[cfg(test)]
mod bank_speed {
    use super::*;
    use std::time::Instant;

    /// `cargo test --release --lib bank_speed -- --ignored --nocapture`: forward +
    /// backward of both [`bank_log_softmax`] paths on the memory-bank recipe's shape
    /// (128 rows, 4097 logits each, a table of `rows` × 128) as the table grows.
    #[test]
    #[ignore]
    fn bank_paths() {
        let dev = Cpu::default();
        let (n, m, d) = (128usize, 4097usize, 128usize);
        for rows in [4_000usize, 10_000, 16_000, 30_000, 60_000] {
            let bank: Vec<f32> = (0..rows * d).map(|i| (i % 13) as f32 * 0.01).collect();
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
            let idx: Vec<usize> = (0..n * m)
                .map(|_| rand::Rng::gen_range(&mut rng, 0..rows))
                .collect();
            let fv: Vec<f32> = (0..n * d).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut ms = [0.0f64; 2];
            for (p, dense) in [(0, true), (1, false)] {
                let reps = 5;
                let t = Instant::now();
                for _ in 0..reps {
                    let f: T2<Cpu, NoneTape> = dev.tensor_from_vec(fv.clone(), (n, d));
                    let y = bank_log_softmax_path(f.leaky_trace(), &bank, &idx, 0.5, dense);
                    let _ = y.sum().backward();
                }
                ms[p] = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
            }
            println!(
                "rows {rows:6} (rows/m {:.1}): dense {:7.2} ms, sparse {:7.2} ms",
                rows as f64 / m as f64,
                ms[0],
                ms[1]
            );
        }
    }
}

#[cfg(test)]
mod bank_exp {
    use super::*;

    /// The vectorised exponential against std's over the log-softmax's inputs
    /// (`x ≤ 0`), including the flush to 0 below the smallest normal float.
    #[test]
    fn exp_lanes_matches_std() {
        let mut worst = 0.0f64;
        for k in 0..200_000 {
            let mut x = [0.0f32; LANES];
            for (j, v) in x.iter_mut().enumerate() {
                *v = -((k * LANES + j) as f32) * 87.3 / (200_000 * LANES) as f32;
            }
            let got = exp_lanes(&x);
            for (g, v) in got.iter().zip(&x) {
                let want = (*v as f64).exp();
                worst = worst.max((*g as f64 - want).abs() / want);
            }
        }
        assert!(worst < 5e-7, "relative error {worst:e}");
        let got = exp_lanes(&[-88.0; LANES]);
        assert!(got.iter().all(|&v| v == 0.0));
        let got = exp_lanes(&[0.0; LANES]);
        assert!(got.iter().all(|&v| v == 1.0), "{got:?}");
    }

    #[test]
    fn row_reductions_match_plain_loops() {
        let y: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.37 - 20.0)
            .collect();
        let max = y.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max_lanes(&y), max);
        let mut p = vec![0.0; y.len()];
        let sum = exp_sum(&y, max, Some(&mut p));
        let want: f64 = y.iter().map(|v| ((v - max) as f64).exp()).sum();
        assert!((sum as f64 - want).abs() < 1e-6 * want);
        for (e, v) in p.iter().zip(&y) {
            let w = ((v - max) as f64).exp();
            assert!((*e as f64 - w).abs() <= 1e-6 * w, "{e} vs {w}");
        }
    }
}

#[cfg(test)]
mod conv_speed {
    use super::*;
    use std::time::Instant;

    /// `(c, o, h, kernel, stride, padding, layers)`: a convolution shape on an
    /// `h × h` input and how many layers of the network have it.
    type ConvShape = (usize, usize, usize, usize, usize, usize, usize);

    /// ResNet-18 with the CIFAR stem on 32×32.
    const RESNET18: &[ConvShape] = &[
        (3, 64, 32, 3, 1, 1, 1),
        (64, 64, 32, 3, 1, 1, 4),
        (64, 128, 32, 3, 2, 1, 1),
        (64, 128, 32, 1, 2, 0, 1),
        (128, 128, 16, 3, 1, 1, 3),
        (128, 256, 16, 3, 2, 1, 1),
        (128, 256, 16, 1, 2, 0, 1),
        (256, 256, 8, 3, 1, 1, 3),
        (256, 512, 8, 3, 2, 1, 1),
        (256, 512, 8, 1, 2, 0, 1),
        (512, 512, 4, 3, 1, 1, 3),
    ];

    /// ResNet-50 (torchvision layout) on 64×64.
    const RESNET50: &[ConvShape] = &[
        (3, 64, 64, 7, 2, 3, 1),
        (64, 64, 16, 1, 1, 0, 1),
        (64, 64, 16, 3, 1, 1, 3),
        (64, 256, 16, 1, 1, 0, 4),
        (256, 64, 16, 1, 1, 0, 2),
        (256, 128, 16, 1, 1, 0, 1),
        (128, 128, 16, 3, 2, 1, 1),
        (128, 512, 8, 1, 1, 0, 4),
        (256, 512, 16, 1, 2, 0, 1),
        (512, 128, 8, 1, 1, 0, 3),
        (128, 128, 8, 3, 1, 1, 3),
        (512, 256, 8, 1, 1, 0, 1),
        (256, 256, 8, 3, 2, 1, 1),
        (256, 1024, 4, 1, 1, 0, 6),
        (512, 1024, 8, 1, 2, 0, 1),
        (1024, 256, 4, 1, 1, 0, 5),
        (256, 256, 4, 3, 1, 1, 5),
        (1024, 512, 4, 1, 1, 0, 1),
        (512, 512, 4, 3, 2, 1, 1),
        (512, 2048, 2, 1, 1, 0, 3),
        (1024, 2048, 4, 1, 2, 0, 1),
        (2048, 512, 2, 1, 1, 0, 2),
        (512, 512, 2, 3, 1, 1, 2),
    ];

    /// GFLOP/s of one `gemm` per thread on every thread of the pool (the matmul
    /// rate the convolutions are measured against).
    fn matmul_peak() -> f64 {
        let (m, n, k) = (256, 512, 2304);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let t = threads();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            (0..t).into_par_iter().for_each(|_| {
                let mut c = vec![0.0; m * n];
                mm(
                    (m, n, k),
                    &mut c,
                    n,
                    false,
                    (&a, k, 1),
                    (&b, n, 1),
                    Parallelism::None,
                );
            });
            best = best.min(start.elapsed().as_secs_f64());
        }
        2.0 * (m * n * k * t) as f64 / best / 1e9
    }

    /// Best-of-three seconds of the forward and the backward of one shape.
    fn time_shape(&(c, o, h, k, s, p, _): &ConvShape, n: usize) -> (f64, f64, f64) {
        let win = Window::new(k, s, p);
        let ho = win.out_size(h).expect("fits");
        let d = ConvDims {
            c,
            h,
            w: h,
            o,
            ho,
            wo: ho,
            win,
        };
        let x: Vec<f32> = (0..n * c * h * h).map(|i| (i % 13) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..o * c * k * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let gy: Vec<f32> = (0..n * o * ho * ho).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut gx = vec![0.0; x.len()];
        let (mut fwd, mut bwd) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let t = Instant::now();
            std::hint::black_box(conv_forward(&x, &w, None, n, d));
            fwd = fwd.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            std::hint::black_box(conv_backward(&x, &w, &gy, &mut gx, n, d));
            bwd = bwd.min(t.elapsed().as_secs_f64());
        }
        let flops = 2.0 * (n * o * ho * ho * c * k * k) as f64;
        (flops, fwd, bwd)
    }

    /// `cargo test --release --lib conv_speed -- --ignored --nocapture`: for each
    /// conv shape of ResNet-18 (CIFAR, 2×32 images) and ResNet-50 (64×64, 2×16),
    /// forward and backward, the GFLOP/s reached on the rayon pool and the fraction
    /// of the pool's matmul rate; then the whole network's convolutions. Where the
    /// CPU has AVX2 and no AVX-512, the `gemm`-crate paths (portable mode) are
    /// timed too, for comparison.
    #[test]
    #[ignore]
    fn kernel_speed() {
        let peak = matmul_peak();
        println!("matmul peak on {} threads: {peak:.1} GFLOP/s", threads());
        let modes: &[(&str, fn())] = if kernels::avx2() {
            &[("avx2", kernels::use_avx2), ("gemm", kernels::use_portable)]
        } else {
            &[("own", || {})]
        };
        for (net, shapes, n) in [("resnet18", RESNET18, 64), ("resnet50", RESNET50, 32)] {
            for &(mode, set) in modes {
                set();
                let (mut tf, mut tt) = (0.0, 0.0);
                println!("{net} ({mode}), batch {n}:");
                for sh in shapes {
                    let (fl, f, b) = time_shape(sh, n);
                    let (gf, gb) = (fl / f / 1e9, 2.0 * fl / b / 1e9);
                    println!(
                        "  c{:5} o{:5} {:3}² k{} s{} ×{}: fwd {gf:6.1} GFLOP/s ({:3.0}%)  bwd {gb:6.1} GFLOP/s ({:3.0}%)",
                        sh.0,
                        sh.1,
                        sh.2,
                        sh.3,
                        sh.4,
                        sh.6,
                        100.0 * gf / peak,
                        100.0 * gb / peak
                    );
                    tf += 3.0 * fl * sh.6 as f64;
                    tt += (f + b) * sh.6 as f64;
                }
                let g = tf / tt / 1e9;
                println!(
                    "  all convolutions: {g:.1} GFLOP/s ({:.0}% of the matmul rate), {:.0} ms per step",
                    100.0 * g / peak,
                    tt * 1e3
                );
            }
            if kernels::avx2() || modes.len() > 1 {
                kernels::use_avx2();
            }
        }
    }
}
