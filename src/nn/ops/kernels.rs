//! Inner loops of the CPU kernels, written so LLVM vectorises them, and compiled
//! three times: for the build target, with AVX2+FMA, and with AVX-512, the best one
//! the CPU has picked at run time (the release binary stays portable).
//!
//! Reductions keep 16 independent lanes: a single `f32` accumulator is a serial
//! dependency chain that LLVM may not reorder, which made batch norm run at about
//! one element per 1.3 ns.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not yet detected, 1: AVX-512 (and AVX2) paths on, 2: portable paths only,
/// 3: AVX2+FMA paths on, AVX-512 off.
static MODE: AtomicU8 = AtomicU8::new(0);

fn mode() -> u8 {
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let m = detect();
            MODE.store(m, Ordering::Relaxed);
            m
        }
        m => m,
    }
}

/// Whether the AVX-512 paths are on: the CPU has AVX-512F (checked once), unless
/// `RECIPE_NO_AVX512=1`, [`use_avx2`] or [`use_portable`] turned them off.
pub(crate) fn avx512() -> bool {
    mode() == 1
}

/// Whether the AVX2+FMA paths are on and the AVX-512 ones off (the hand-written
/// AVX2 products serve every convolution then). `RECIPE_NO_AVX2=1` or
/// [`use_portable`] turns them off.
pub(crate) fn avx2() -> bool {
    mode() == 3
}

fn detect() -> u8 {
    let off = |var: &str| std::env::var_os(var).is_some_and(|v| v != "0");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let fma = has!("fma") && has!("avx2");
        if !off("RECIPE_NO_AVX512") && fma && has!("avx512f") && has!("avx512vl") {
            return 1;
        }
        if !off("RECIPE_NO_AVX2") && fma {
            return 3;
        }
    }
    let _ = off;
    2
}

/// Turns the AVX-512 and AVX2 paths off for the rest of the process.
pub(crate) fn use_portable() {
    MODE.store(2, Ordering::Relaxed);
}

/// Turns the AVX-512 paths off for the rest of the process, keeping the AVX2 ones
/// where the CPU has AVX2+FMA (else the portable ones).
pub(crate) fn use_avx2() {
    #[cfg(target_arch = "x86_64")]
    let fma =
        std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let fma = false;
    MODE.store(if fma { 3 } else { 2 }, Ordering::Relaxed);
}

/// Defines `fn name(args) -> ret` whose body is compiled for the target and, on
/// x86-64, again with AVX2+FMA and with AVX-512; the call picks the best one on.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    inner($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    inner($($arg),*)
                }
                if $crate::nn::ops::kernels::avx512() {
                    // SAFETY: `avx512()` checked that the CPU has these features.
                    return unsafe { v4($($arg),*) };
                }
                if $crate::nn::ops::kernels::avx2() {
                    // SAFETY: `avx2()` checked that the CPU has these features.
                    return unsafe { v3($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use multiversion;

/// Lanes of the vectorised reductions (one AVX-512 register of `f32`).
const L: usize = 16;

fn hsum(v: &[f32; L]) -> f32 {
    // Pairwise, so the result does not depend on summation order quirks.
    let mut w = *v;
    let mut n = L;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            w[i] += w[i + n];
        }
    }
    w[0]
}

multiversion! {
    /// `(Σ (x − k), Σ (x − k)²)` over one plane; the shift `k` keeps the one-pass
    /// variance accurate when the mean is large against the spread.
    pub(crate) fn moments(p: &[f32], k: f32) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: AVX-512 is present.
            return unsafe { x86::moments(p, k) };
        }
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 and FMA are present.
            return unsafe { avx2::moments(p, k) };
        }
        let (mut s, mut q) = ([0.0f32; L], [0.0f32; L]);
        let mut it = p.chunks_exact(L);
        for ch in &mut it {
            let ch: &[f32; L] = ch.try_into().expect("chunk of L");
            for j in 0..L {
                let d = ch[j] - k;
                s[j] += d;
                q[j] += d * d;
            }
        }
        let (mut ss, mut qq) = (hsum(&s), hsum(&q));
        for &v in it.remainder() {
            let d = v - k;
            ss += d;
            qq += d * d;
        }
        (ss, qq)
    }
}

/// `g` where the fused ReLU passed its input (`x·s + t > 0`), else 0; without a
/// ReLU, `g`. A select, not a branch, so loops over it vectorise.
#[inline(always)]
fn relu_gate<const RELU: bool>(g: f32, x: f32, s: f32, t: f32) -> f32 {
    if RELU && x * s + t <= 0.0 { 0.0 } else { g }
}

#[inline(always)]
fn grad_sums<const RELU: bool>(x: &[f32], gy: &[f32], mean: f32, s: f32, t: f32) -> (f32, f32) {
    let (mut a, mut b) = ([0.0f32; L], [0.0f32; L]);
    let mut xi = x.chunks_exact(L);
    let mut gi = gy.chunks_exact(L);
    for (xc, gc) in (&mut xi).zip(&mut gi) {
        let xc: &[f32; L] = xc.try_into().expect("chunk of L");
        let gc: &[f32; L] = gc.try_into().expect("chunk of L");
        for j in 0..L {
            let g = relu_gate::<RELU>(gc[j], xc[j], s, t);
            a[j] += g;
            b[j] += g * (xc[j] - mean);
        }
    }
    let (mut sa, mut sb) = (hsum(&a), hsum(&b));
    for (&x, &g) in xi.remainder().iter().zip(gi.remainder()) {
        let g = relu_gate::<RELU>(g, x, s, t);
        sa += g;
        sb += g * (x - mean);
    }
    (sa, sb)
}

multiversion! {
    /// Batch-norm backward sums over one plane: `(Σ g, Σ g·(x − mean))`, where `g`
    /// is the output gradient, zeroed where a fused ReLU clipped (`x·s + t ≤ 0`).
    pub(crate) fn bn_grad_sums(x: &[f32], gy: &[f32], mean: f32, s: f32, t: f32, relu: bool) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: AVX-512 is present.
            return unsafe { x86::grad_sums(x, gy, mean, s, t, relu) };
        }
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 and FMA are present.
            return unsafe { avx2::grad_sums(x, gy, mean, s, t, relu) };
        }
        if relu {
            grad_sums::<true>(x, gy, mean, s, t)
        } else {
            grad_sums::<false>(x, gy, mean, s, t)
        }
    }
}

#[inline(always)]
fn grad_input<const RELU: bool>(
    gx: &mut [f32],
    x: &[f32],
    gy: &[f32],
    (c0, c1): (f32, f32),
    s: f32,
    t: f32,
) {
    for ((o, &x), &g) in gx.iter_mut().zip(x).zip(gy) {
        *o += s * relu_gate::<RELU>(g, x, s, t) + c0 + c1 * x;
    }
}

multiversion! {
    /// `gx += s·g + c0 + c1·x`, with `g` masked as in [`bn_grad_sums`] and `s` the
    /// channel's forward scale.
    pub(crate) fn bn_grad_input(gx: &mut [f32], x: &[f32], gy: &[f32], c: (f32, f32), s: f32, t: f32, relu: bool) {
        if relu {
            grad_input::<true>(gx, x, gy, c, s, t);
        } else {
            grad_input::<false>(gx, x, gy, c, s, t);
        }
    }
}

multiversion! {
    /// `y = x·s + t` (then `max(·, 0)` when `relu`) into uninitialised storage;
    /// writes every element of `y` (panics when the lengths differ).
    pub(crate) fn affine_into(x: &[f32], y: &mut [MaybeUninit<f32>], s: f32, t: f32, relu: bool) {
        assert_eq!(x.len(), y.len());
        if relu {
            for (y, x) in y.iter_mut().zip(x) {
                y.write((x * s + t).max(0.0));
            }
        } else {
            for (y, x) in y.iter_mut().zip(x) {
                y.write(x * s + t);
            }
        }
    }
}

multiversion! {
    /// `y = max(a + b, 0)` into uninitialised storage, recording where the result is
    /// positive; writes every element of `y` (panics when the lengths differ).
    pub(crate) fn add_relu_into(a: &[f32], b: &[f32], y: &mut [MaybeUninit<f32>], mask: &mut [bool]) {
        assert!(a.len() == y.len() && b.len() == y.len() && mask.len() == y.len());
        for (((y, a), b), m) in y.iter_mut().zip(a).zip(b).zip(mask) {
            let v = (a + b).max(0.0);
            y.write(v);
            *m = v > 0.0;
        }
    }
}

multiversion! {
    /// `ga += g`, `gb += g` where `mask`, for the residual join's backward.
    pub(crate) fn add_relu_bwd(ga: &mut [f32], gb: &mut [f32], gy: &[f32], mask: &[bool]) {
        for (((a, b), &g), &m) in ga.iter_mut().zip(gb.iter_mut()).zip(gy).zip(mask) {
            let g = if m { g } else { 0.0 };
            // (a select: the loop vectorises)
            *a += g;
            *b += g;
        }
    }
}

multiversion! {
    /// `dst += src`.
    pub(crate) fn add_to(dst: &mut [f32], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

multiversion! {
    /// Sum of a slice in 16 lanes.
    pub(crate) fn sum(p: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: AVX-512 is present.
            return unsafe { x86::moments(p, 0.0).0 };
        }
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 and FMA are present.
            return unsafe { avx2::moments(p, 0.0).0 };
        }
        let mut s = [0.0f32; L];
        let mut it = p.chunks_exact(L);
        for ch in &mut it {
            let ch: &[f32; L] = ch.try_into().expect("chunk of L");
            for j in 0..L {
                s[j] += ch[j];
            }
        }
        hsum(&s) + it.remainder().iter().sum::<f32>()
    }
}

/// Hand-written AVX-512 matrix products for the convolution, used when the CPU has
/// AVX-512 and the portable `gemm` crate otherwise. They read the operands in place
/// (no packing): the convolution's column matrix already is contiguous along the
/// output positions, and with few channels packing cost `gemm` as much as the
/// multiply itself.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// `(Σ (x − k), Σ (x − k)²)`: [`super::moments`] with explicit vectors (LLVM
    /// kept the portable version's 16 lanes in scalar registers).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f,avx512vl,fma")]
    pub(crate) unsafe fn moments(p: &[f32], k: f32) -> (f32, f32) {
        let kv = _mm512_set1_ps(k);
        let (mut s0, mut s1, mut q0, mut q1) = (
            _mm512_setzero_ps(),
            _mm512_setzero_ps(),
            _mm512_setzero_ps(),
            _mm512_setzero_ps(),
        );
        let mut i = 0;
        while i + 32 <= p.len() {
            // SAFETY: i + 32 ≤ len.
            let (a, b) = unsafe {
                (
                    _mm512_loadu_ps(p.as_ptr().add(i)),
                    _mm512_loadu_ps(p.as_ptr().add(i + 16)),
                )
            };
            let (da, db) = (_mm512_sub_ps(a, kv), _mm512_sub_ps(b, kv));
            s0 = _mm512_add_ps(s0, da);
            s1 = _mm512_add_ps(s1, db);
            q0 = _mm512_fmadd_ps(da, da, q0);
            q1 = _mm512_fmadd_ps(db, db, q1);
            i += 32;
        }
        while i < p.len() {
            let m = mask(p.len() - i, 0);
            // SAFETY: masked lanes are inside `p`.
            let a = unsafe { _mm512_maskz_loadu_ps(m, p.as_ptr().add(i)) };
            let da = _mm512_maskz_sub_ps(m, a, kv);
            s0 = _mm512_add_ps(s0, da);
            q0 = _mm512_fmadd_ps(da, da, q0);
            i += 16;
        }
        (
            _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)),
            _mm512_reduce_add_ps(_mm512_add_ps(q0, q1)),
        )
    }

    /// [`super::bn_grad_sums`] with explicit vectors.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `x` and `gy` have the same length.
    #[target_feature(enable = "avx512f,avx512vl,fma")]
    pub(crate) unsafe fn grad_sums(
        x: &[f32],
        gy: &[f32],
        mean: f32,
        s: f32,
        t: f32,
        relu: bool,
    ) -> (f32, f32) {
        let n = x.len().min(gy.len());
        let (mv, sv, tv, zero) = (
            _mm512_set1_ps(mean),
            _mm512_set1_ps(s),
            _mm512_set1_ps(t),
            _mm512_setzero_ps(),
        );
        let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i < n {
            let m = mask(n - i, 0);
            // SAFETY: masked lanes are inside both slices.
            let (xv, gv) = unsafe {
                (
                    _mm512_maskz_loadu_ps(m, x.as_ptr().add(i)),
                    _mm512_maskz_loadu_ps(m, gy.as_ptr().add(i)),
                )
            };
            let gv = if relu {
                // Keep g where x·s + t > 0 (the fused ReLU passed it), rounded
                // as the forward pass rounds it (multiply, then add).
                let pre = _mm512_add_ps(_mm512_mul_ps(xv, sv), tv);
                let pass = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(pre, zero);
                _mm512_maskz_mov_ps(pass, gv)
            } else {
                gv
            };
            a = _mm512_add_ps(a, gv);
            b = _mm512_fmadd_ps(gv, _mm512_sub_ps(xv, mv), b);
            i += 16;
        }
        (_mm512_reduce_add_ps(a), _mm512_reduce_add_ps(b))
    }

    /// Rows of `A` per tile of [`gemm_bcast`].
    const MR: usize = 8;
    /// Columns per tile (three registers).
    const NR: usize = 48;
    /// Inner-dimension block: a packed panel of `KC × NR` floats (24 KiB) stays in L1.
    const KC: usize = 128;

    /// A tile's slice of `B`, copied contiguous and aligned.
    #[repr(C, align(64))]
    struct Panel([f32; KC * NR]);

    fn mask(n: usize, lane0: usize) -> __mmask16 {
        let cnt = n.saturating_sub(lane0).min(16);
        ((1u32 << cnt) - 1) as __mmask16
    }

    /// `C (m×n, row stride ldc) [+]= A·B`, where `A(i, p) = a[i·ars + p·acs]` is
    /// broadcast and row `p` of `B` starts at `b + boff[p]` (contiguous along `j`).
    /// The offset table lets `B` be shifted views of one padded image, which is how
    /// the stride-1 convolution avoids building a column matrix.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, `boff.len() ≥ k`, and every index the formula
    /// names for `i < m`, `j < n`, `p < k` must lie inside the respective allocation.
    #[target_feature(enable = "avx512f,avx512vl,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm_bcast(
        (m, n, k): (usize, usize, usize),
        (a, ars, acs): (*const f32, usize, usize),
        (b, boff): (*const f32, &[usize]),
        (c, ldc): (*mut f32, usize),
        acc: bool,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !acc {
                for i in 0..m {
                    // SAFETY: row i of C is inside the allocation (caller's contract).
                    unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, n) };
                }
            }
            return;
        }
        // With more than one row tile, each B panel is packed once and then read
        // from L1 by every row tile: B rows are far apart (one per channel and
        // tap), and streaming them from L2 for every row tile starved the FMAs.
        let pack = m > MR;
        let mut panel = Panel([0.0; KC * NR]);
        let panel_rows: [usize; KC] = std::array::from_fn(|p| p * NR);
        let mut p0 = 0;
        while p0 < k {
            let kc = KC.min(k - p0);
            let first = p0 == 0 && !acc;
            let mut j0 = 0;
            while j0 < n {
                let nr = NR.min(n - j0);
                let bo = &boff[p0..p0 + kc];
                if pack {
                    let mk = [mask(nr, 0), mask(nr, 16), mask(nr, 32)];
                    for (p, &off) in bo.iter().enumerate() {
                        let src = b.wrapping_add(off + j0);
                        let dst = panel.0.as_mut_ptr().wrapping_add(p * NR);
                        for (v, &mv) in mk.iter().enumerate() {
                            // SAFETY: masked lanes are inside row p of B; the panel
                            // holds KC·NR floats.
                            unsafe {
                                let x = _mm512_maskz_loadu_ps(mv, src.wrapping_add(16 * v));
                                _mm512_store_ps(dst.add(16 * v), x);
                            }
                        }
                    }
                }
                let mut i0 = 0;
                while i0 < m {
                    let mr = MR.min(m - i0);
                    let at = a.wrapping_add(i0 * ars + p0 * acs);
                    let ct = c.wrapping_add(i0 * ldc + j0);
                    // A packed panel is read through the same kernel, its rows `NR`
                    // apart.
                    let (bt, bot) = if pack {
                        (panel.0.as_ptr(), &panel_rows[..kc])
                    } else {
                        (b.wrapping_add(j0), bo)
                    };
                    // SAFETY: the tile lies inside the operands (caller's contract);
                    // the panel holds KC·NR floats.
                    unsafe {
                        match mr {
                            8 => tile::<8>(nr, at, ars, acs, bt, bot, ct, ldc, first),
                            7 => tile::<7>(nr, at, ars, acs, bt, bot, ct, ldc, first),
                            6 => tile::<6>(nr, at, ars, acs, bt, bot, ct, ldc, first),
                            5 => tile::<5>(nr, at, ars, acs, bt, bot, ct, ldc, first),
                            4 => tile::<4>(nr, at, ars, acs, bt, bot, ct, ldc, first),
                            3 => tile::<3>(nr, at, ars, acs, bt, bot, ct, ldc, first),
                            2 => tile::<2>(nr, at, ars, acs, bt, bot, ct, ldc, first),
                            _ => tile::<1>(nr, at, ars, acs, bt, bot, ct, ldc, first),
                        }
                    }
                    i0 += mr;
                }
                j0 += nr;
            }
            p0 += kc;
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        nr: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        boff: &[usize],
        c: *mut f32,
        ldc: usize,
        first: bool,
    ) {
        let m = [mask(nr, 0), mask(nr, 16), mask(nr, 32)];
        let mut acc = [[_mm512_setzero_ps(); 3]; R];
        for (p, &off) in boff.iter().enumerate() {
            let bp = b.wrapping_add(off);
            // SAFETY: masked-off lanes are not read; the others are inside B.
            let (b0, b1, b2) = unsafe {
                (
                    _mm512_maskz_loadu_ps(m[0], bp),
                    _mm512_maskz_loadu_ps(m[1], bp.wrapping_add(16)),
                    _mm512_maskz_loadu_ps(m[2], bp.wrapping_add(32)),
                )
            };
            let ap = a.wrapping_add(p * acs);
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: A(i0 + r, p0 + p) is inside A.
                let av = _mm512_set1_ps(unsafe { *ap.add(r * ars) });
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
                row[2] = _mm512_fmadd_ps(av, b2, row[2]);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, val) in row.iter().enumerate() {
                let cp = c.wrapping_add(r * ldc + v * 16);
                // SAFETY: masked lanes are inside row r of the tile of C.
                unsafe {
                    let out = if first {
                        *val
                    } else {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(m[v], cp), *val)
                    };
                    _mm512_mask_storeu_ps(cp, m[v], out);
                }
            }
        }
    }

    /// `C (m×n, row stride ldc) += A·B` for narrow `C` (`n ≤ 32`), where row `i` of
    /// `A` starts at `a + aoff[i]` (contiguous along the inner dimension) and `B` is
    /// row-major with stride `ldb`. The weight gradient of a convolution with few
    /// output channels, as `dWᵀ = views · gyᵀ`: each `B` row is one or two vectors
    /// that stay in L1, where the dot-product form streamed every operand from L2.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, `n ≤ 32`, `aoff.len() ≥ m`, and every index the
    /// formula names for `i < m`, `j < n`, `p < k` must lie inside the allocations.
    #[target_feature(enable = "avx512f,avx512vl,fma")]
    pub(crate) unsafe fn gemm_narrow(
        (m, n, k): (usize, usize, usize),
        (a, aoff): (*const f32, &[usize]),
        (b, ldb): (*const f32, usize),
        (c, ldc): (*mut f32, usize),
    ) {
        // SAFETY: forwarded contract.
        unsafe {
            if n <= 16 {
                narrow::<12, 1>((m, n, k), (a, aoff), (b, ldb), (c, ldc));
            } else {
                narrow::<12, 2>((m, n, k), (a, aoff), (b, ldb), (c, ldc));
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,fma")]
    unsafe fn narrow<const R: usize, const V: usize>(
        (m, n, k): (usize, usize, usize),
        (a, aoff): (*const f32, &[usize]),
        (b, ldb): (*const f32, usize),
        (c, ldc): (*mut f32, usize),
    ) {
        let mk = [mask(n, 0), mask(n, 16)];
        let mut i0 = 0;
        while i0 < m {
            let r = R.min(m - i0);
            // Rows past the end repeat the last one; their sums are not stored.
            let rows: [*const f32; R] =
                std::array::from_fn(|t| a.wrapping_add(aoff[i0 + t.min(r - 1)]));
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            for p in 0..k {
                let bp = b.wrapping_add(p * ldb);
                // SAFETY: masked lanes are inside row p of B.
                let bv: [__m512; V] = std::array::from_fn(|v| unsafe {
                    _mm512_maskz_loadu_ps(mk[v], bp.wrapping_add(16 * v))
                });
                for (row, ptr) in acc.iter_mut().zip(&rows) {
                    // SAFETY: A(i, p) is inside A.
                    let av = _mm512_set1_ps(unsafe { *ptr.add(p) });
                    for v in 0..V {
                        row[v] = _mm512_fmadd_ps(av, bv[v], row[v]);
                    }
                }
            }
            for (t, row) in acc.iter().enumerate().take(r) {
                for v in 0..V {
                    let cp = c.wrapping_add((i0 + t) * ldc + 16 * v);
                    // SAFETY: masked lanes are inside row i0 + t of C.
                    unsafe {
                        let sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mk[v], cp), row[v]);
                        _mm512_mask_storeu_ps(cp, mk[v], sum);
                    }
                }
            }
            i0 += r;
        }
    }

    /// `C (m×n, row stride ldc) += A·Bᵀ` where `A` is `m×len` row-major (stride
    /// `lda`) and row `j` of the `n×len` matrix `B` starts at `b + boff[j]`: dot
    /// products along contiguous rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and all named rows must lie inside the allocations.
    #[target_feature(enable = "avx512f,avx512vl,fma")]
    pub(crate) unsafe fn gemm_dot(
        (m, n, len): (usize, usize, usize),
        (a, lda): (*const f32, usize),
        (b, boff): (*const f32, &[usize]),
        (c, ldc): (*mut f32, usize),
    ) {
        const TM: usize = 4;
        const TN: usize = 6;
        let mut i0 = 0;
        while i0 < m {
            let mr = TM.min(m - i0);
            let mut j0 = 0;
            while j0 < n {
                let nr = TN.min(n - j0);
                let mut acc = [[_mm512_setzero_ps(); TN]; TM];
                let mut q = 0;
                while q < len {
                    let mk = mask(len - q, 0);
                    let mut bv = [_mm512_setzero_ps(); TN];
                    for (jj, v) in bv.iter_mut().enumerate().take(nr) {
                        // SAFETY: row j0 + jj of B, lanes masked to the row's length.
                        *v =
                            unsafe { _mm512_maskz_loadu_ps(mk, b.wrapping_add(boff[j0 + jj] + q)) };
                    }
                    for (ii, row) in acc.iter_mut().enumerate().take(mr) {
                        // SAFETY: row i0 + ii of A, lanes masked to the row's length.
                        let av = unsafe {
                            _mm512_maskz_loadu_ps(mk, a.wrapping_add((i0 + ii) * lda + q))
                        };
                        for jj in 0..TN {
                            row[jj] = _mm512_fmadd_ps(av, bv[jj], row[jj]);
                        }
                    }
                    q += 16;
                }
                for (ii, row) in acc.iter().enumerate().take(mr) {
                    for (jj, v) in row.iter().enumerate().take(nr) {
                        // SAFETY: C(i0 + ii, j0 + jj) is inside C.
                        unsafe { *c.add((i0 + ii) * ldc + j0 + jj) += _mm512_reduce_add_ps(*v) };
                    }
                }
                j0 += nr;
            }
            i0 += mr;
        }
    }
}

/// The hand-written product for CPUs with AVX2+FMA but no AVX-512 (8-wide `f32`,
/// sixteen vector registers), used for every convolution product there: one
/// product over all kernel taps instead of one `gemm` call per tap with the
/// channels as inner dimension, whose packing and repeated passes over `C` cost
/// as much as the multiply on the late, narrow layers.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// Rows of `A` per tile.
    const MR: usize = 6;
    /// Columns per tile (two registers): 6×2 accumulators, two `B` vectors and one
    /// broadcast fill fifteen of the sixteen registers.
    const NR: usize = 16;
    /// Inner-dimension block: a packed `KC × NR` panel (16 KiB) stays in L1.
    const KC: usize = 256;
    /// Rows of `A` per block: `MC × KC` of `A` (96 KiB) stays in L2 while the
    /// panels of one block of `B` pass.
    const MC: usize = 96;

    /// Sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }

    /// `(Σ (x − k), Σ (x − k)²)`: [`super::moments`] with explicit vectors (LLVM's
    /// AVX2 code for the portable version was slower than its SSE2 code).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn moments(p: &[f32], k: f32) -> (f32, f32) {
        let (kv, z) = (_mm256_set1_ps(k), _mm256_setzero_ps());
        let (mut s0, mut s1, mut q0, mut q1) = (z, z, z, z);
        let mut i = 0;
        while i + 16 <= p.len() {
            // SAFETY: i + 16 ≤ len.
            let (a, b) = unsafe {
                (
                    _mm256_loadu_ps(p.as_ptr().add(i)),
                    _mm256_loadu_ps(p.as_ptr().add(i + 8)),
                )
            };
            let (da, db) = (_mm256_sub_ps(a, kv), _mm256_sub_ps(b, kv));
            s0 = _mm256_add_ps(s0, da);
            s1 = _mm256_add_ps(s1, db);
            q0 = _mm256_fmadd_ps(da, da, q0);
            q1 = _mm256_fmadd_ps(db, db, q1);
            i += 16;
        }
        let (mut s, mut q) = (hsum(_mm256_add_ps(s0, s1)), hsum(_mm256_add_ps(q0, q1)));
        for &v in &p[i..] {
            let d = v - k;
            s += d;
            q += d * d;
        }
        (s, q)
    }

    /// [`super::bn_grad_sums`] with explicit vectors (the ReLU mask as an `and`,
    /// where LLVM's AVX2 code used slow blends).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn grad_sums(
        x: &[f32],
        gy: &[f32],
        mean: f32,
        s: f32,
        t: f32,
        relu: bool,
    ) -> (f32, f32) {
        let n = x.len().min(gy.len());
        let (mv, sv, tv, z) = (
            _mm256_set1_ps(mean),
            _mm256_set1_ps(s),
            _mm256_set1_ps(t),
            _mm256_setzero_ps(),
        );
        // Keep g where x·s + t > 0 (the fused ReLU passed it), rounded as the
        // forward pass rounds it (multiply, then add).
        let gate = |xv: __m256, gv: __m256| {
            if relu {
                let pre = _mm256_add_ps(_mm256_mul_ps(xv, sv), tv);
                _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(pre, z))
            } else {
                gv
            }
        };
        let (mut a0, mut a1, mut b0, mut b1) = (z, z, z, z);
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 ≤ n, the length of both slices' common prefix.
            let (x0, x1, g0, g1) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    _mm256_loadu_ps(x.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(gy.as_ptr().add(i)),
                    _mm256_loadu_ps(gy.as_ptr().add(i + 8)),
                )
            };
            let (g0, g1) = (gate(x0, g0), gate(x1, g1));
            a0 = _mm256_add_ps(a0, g0);
            a1 = _mm256_add_ps(a1, g1);
            b0 = _mm256_fmadd_ps(g0, _mm256_sub_ps(x0, mv), b0);
            b1 = _mm256_fmadd_ps(g1, _mm256_sub_ps(x1, mv), b1);
            i += 16;
        }
        let (mut sa, mut sb) = (hsum(_mm256_add_ps(a0, a1)), hsum(_mm256_add_ps(b0, b1)));
        for (&xv, &g) in x[i..n].iter().zip(&gy[i..n]) {
            let g = if relu && xv * s + t <= 0.0 { 0.0 } else { g };
            sa += g;
            sb += g * (xv - mean);
        }
        (sa, sb)
    }

    /// A panel of `B`, copied contiguous and aligned (zero-padded past `n`).
    #[repr(C, align(32))]
    struct Panel([f32; KC * NR]);

    /// `C (m×n, row stride ldc) [+]= A·B` with `A(i, p) = a[aoff[i] + p·acs]` and
    /// `B(p, j) = b[boff[p] + j]`. Offset tables let `A` be any row gather (shifted
    /// views of a padded image) or a transpose, and `B` rows be shifted views.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, `aoff.len() ≥ m`, `boff.len() ≥ k`, and every
    /// index the formulas name for `i < m`, `j < n`, `p < k` must lie inside the
    /// respective allocation.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm(
        (m, n, k): (usize, usize, usize),
        (a, aoff, acs): (*const f32, &[usize], usize),
        (b, boff): (*const f32, &[usize]),
        (c, ldc): (*mut f32, usize),
        acc: bool,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !acc {
                for i in 0..m {
                    // SAFETY: row i of C is inside the allocation (caller's contract).
                    unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, n) };
                }
            }
            return;
        }
        let mut panel = Panel([0.0; KC * NR]);
        let pp = panel.0.as_mut_ptr();
        let mut p0 = 0;
        while p0 < k {
            let kc = KC.min(k - p0);
            let first = p0 == 0 && !acc;
            let mut i1 = 0;
            while i1 < m {
                let mc = MC.min(m - i1);
                let mut j0 = 0;
                while j0 < n {
                    let nr = NR.min(n - j0);
                    for (p, &off) in boff[p0..p0 + kc].iter().enumerate() {
                        let src = b.wrapping_add(off + j0);
                        // SAFETY: the panel holds KC·NR floats; columns j0..j0 + nr
                        // of row p0 + p of B are inside B (caller's contract).
                        unsafe {
                            let dst = pp.add(p * NR);
                            if nr == NR {
                                _mm256_store_ps(dst, _mm256_loadu_ps(src));
                                _mm256_store_ps(dst.add(8), _mm256_loadu_ps(src.add(8)));
                            } else {
                                for j in 0..NR {
                                    *dst.add(j) = if j < nr { *src.add(j) } else { 0.0 };
                                }
                            }
                        }
                    }
                    let mut i0 = i1;
                    while i0 < i1 + mc {
                        let mr = MR.min(i1 + mc - i0);
                        let ct = c.wrapping_add(i0 * ldc + j0);
                        let ar = &aoff[i0..i0 + mr];
                        let at = a.wrapping_add(p0 * acs);
                        macro_rules! go {
                            ($r:literal) => {
                                // SAFETY: the tile lies inside the operands (caller's
                                // contract); the panel holds kc rows of NR floats.
                                unsafe {
                                    if acs == 1 {
                                        tile::<$r, true>(
                                            kc,
                                            (at, ar, acs),
                                            pp,
                                            (ct, ldc),
                                            nr,
                                            first,
                                        )
                                    } else {
                                        tile::<$r, false>(
                                            kc,
                                            (at, ar, acs),
                                            pp,
                                            (ct, ldc),
                                            nr,
                                            first,
                                        )
                                    }
                                }
                            };
                        }
                        match mr {
                            6 => go!(6),
                            5 => go!(5),
                            4 => go!(4),
                            3 => go!(3),
                            2 => go!(2),
                            _ => go!(1),
                        }
                        i0 += mr;
                    }
                    j0 += nr;
                }
                i1 += mc;
            }
            p0 += kc;
        }
    }

    /// One `R × NR` tile of `C` over `kc` steps of the inner dimension (`UNIT`:
    /// `acs == 1`, so the row pointers advance by one float).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const UNIT: bool>(
        kc: usize,
        (a, aoff, acs): (*const f32, &[usize], usize),
        bp: *const f32,
        (c, ldc): (*mut f32, usize),
        nr: usize,
        first: bool,
    ) {
        let rows: [*const f32; R] = std::array::from_fn(|r| a.wrapping_add(aoff[r]));
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..kc {
            // SAFETY: the panel holds kc rows of NR floats, 32-byte aligned.
            let (b0, b1) = unsafe {
                (
                    _mm256_load_ps(bp.add(p * NR)),
                    _mm256_load_ps(bp.add(p * NR + 8)),
                )
            };
            let q = if UNIT { p } else { p * acs };
            for (row, ptr) in acc.iter_mut().zip(&rows) {
                // SAFETY: A(i0 + r, p0 + p) is inside A (caller's contract).
                let av = unsafe { _mm256_broadcast_ss(&*ptr.add(q)) };
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
        if nr == NR {
            for (r, row) in acc.iter().enumerate() {
                let cp = c.wrapping_add(r * ldc);
                for (v, val) in row.iter().enumerate() {
                    // SAFETY: the NR columns of row r of the tile are inside C.
                    unsafe {
                        let out = if first {
                            *val
                        } else {
                            _mm256_add_ps(_mm256_loadu_ps(cp.add(8 * v)), *val)
                        };
                        _mm256_storeu_ps(cp.add(8 * v), out);
                    }
                }
            }
        } else {
            let mut t = [0.0f32; NR];
            for (r, row) in acc.iter().enumerate() {
                // SAFETY: `t` holds NR floats; the first nr columns of row r of the
                // tile are inside C.
                unsafe {
                    _mm256_storeu_ps(t.as_mut_ptr(), row[0]);
                    _mm256_storeu_ps(t.as_mut_ptr().add(8), row[1]);
                    let cp = c.add(r * ldc);
                    for (j, &v) in t.iter().enumerate().take(nr) {
                        *cp.add(j) = if first { v } else { *cp.add(j) + v };
                    }
                }
            }
        }
    }
}
