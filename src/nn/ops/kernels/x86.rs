//! Hand-written AVX-512 matrix products for the convolution, used when the CPU has
//! AVX-512 and the portable `gemm` crate otherwise. They read the operands in place
//! (no packing): the convolution's column matrix already is contiguous along the
//! output positions, and with few channels packing cost `gemm` as much as the
//! multiply itself.

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
                    *v = unsafe { _mm512_maskz_loadu_ps(mk, b.wrapping_add(boff[j0 + jj] + q)) };
                }
                for (ii, row) in acc.iter_mut().enumerate().take(mr) {
                    // SAFETY: row i0 + ii of A, lanes masked to the row's length.
                    let av =
                        unsafe { _mm512_maskz_loadu_ps(mk, a.wrapping_add((i0 + ii) * lda + q)) };
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
