//! For CPUs with AVX2+FMA but no AVX-512 (8-wide `f32`, sixteen vector
//! registers), and the products also beside AVX-512 on AMD Zen 4
//! ([`super::avx2_products`]): explicit-vector reductions for batch norm, a
//! product that serves the forward and input-gradient products of the wide
//! convolution path (see
//! `cpu::conv::ConvDims::own`): one product over all kernel taps instead of one
//! `gemm` call per tap with the channels as inner dimension, whose packing and
//! repeated passes over `C` cost more than the multiply on those shapes; and a
//! dot-product form ([`gemm_dot`]) for that path's weight gradient up to 64
//! channels.

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

/// A column table: column `j` of a product is position `starts[j / run] + j mod
/// run` of a grid, so the columns skip the positions a convolution discards. The
/// valid outputs come in runs of `run` (8, or 4 on planes 4, 12, 20, … wide).
#[derive(Clone, Debug)]
pub(crate) struct Chunks {
    /// Where each run starts.
    pub(crate) starts: Vec<usize>,
    /// Positions per run: 4 or 8.
    pub(crate) run: usize,
}

impl Chunks {
    /// Grid position of column `j`.
    #[inline]
    pub(crate) fn col(&self, j: usize) -> usize {
        self.starts[j / self.run] + j % self.run
    }
}

/// A panel of `B`, copied contiguous and aligned (zero-padded past `n`).
#[repr(C, align(32))]
struct Panel([f32; KC * NR]);

/// `C (m×n, row stride ldc) [+]= A·B` with `A(i, p) = a[aoff[i] + p·acs]` and
/// `B(p, j) = b[boff[p] + col(j)]`, where `col(j) = j`, or with a chunk table
/// `col(j) = chunks.col(j)` ([`Chunks`]). Offset tables let `A` be any row gather
/// (shifted views of a padded image) or a transpose, and `B` rows be shifted
/// views; the chunk table lets the columns skip the grid positions a convolution
/// discards (runs of eight valid outputs), at no cost in the packing.
///
/// # Safety
/// The CPU must have AVX2 and FMA, `aoff.len() ≥ m`, `boff.len() ≥ k`,
/// `chunks.run` 4 or 8 and `chunks.starts.len() ≥ ⌈n / run⌉` when given, and every index the formulas name for
/// `i < m`, `j < n`, `p < k` must lie inside the respective allocation.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    (a, aoff, acs): (*const f32, &[usize], usize),
    (b, boff, chunks): (*const f32, &[usize], Option<&Chunks>),
    (c, ldc): (*mut f32, usize),
    acc: bool,
) {
    let col = |j: usize| chunks.map_or(j, |t| t.col(j));
    let quarter = chunks.is_some_and(|t| t.run == 4);
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
                // Where the panel's 8-column halves (4-column quarters with runs
                // of 4) start in a row of B.
                let h: [usize; 4] = if nr < NR {
                    [0; 4]
                } else if quarter {
                    std::array::from_fn(|q| col(j0 + 4 * q))
                } else {
                    [col(j0), col(j0 + 8), 0, 0]
                };
                for (p, &off) in boff[p0..p0 + kc].iter().enumerate() {
                    let row = b.wrapping_add(off);
                    // SAFETY: the panel holds KC·NR floats; columns j0..j0 + nr
                    // of row p0 + p of B are inside B (caller's contract).
                    unsafe {
                        let dst = pp.add(p * NR);
                        if nr == NR && quarter {
                            for (q, &hq) in h.iter().enumerate() {
                                _mm_store_ps(dst.add(4 * q), _mm_loadu_ps(row.add(hq)));
                            }
                        } else if nr == NR {
                            _mm256_store_ps(dst, _mm256_loadu_ps(row.add(h[0])));
                            _mm256_store_ps(dst.add(8), _mm256_loadu_ps(row.add(h[1])));
                        } else {
                            for j in 0..NR {
                                *dst.add(j) = if j < nr { *row.add(col(j0 + j)) } else { 0.0 };
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
                                    tile::<$r, true>(kc, (at, ar, acs), pp, (ct, ldc), nr, first)
                                } else {
                                    tile::<$r, false>(kc, (at, ar, acs), pp, (ct, ldc), nr, first)
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

/// Rows of `A` per tile of [`gemm_dot`].
const DM: usize = 4;
/// Rows of `B` per tile of [`gemm_dot`]: 4×3 accumulators, three `B` vectors and
/// one `A` vector fill the sixteen registers.
const DN: usize = 3;

/// `C (m×n, row stride ldc) += A·Bᵀ`, `A` row-major (row stride `lda`) and row `j`
/// of `B` at `b + boff[j]`, both `len` long: dot products along contiguous rows,
/// eight lanes per accumulator, reduced once at the end. This is the weight
/// gradient of the wide path (rows of `B` are shifted views of the padded input,
/// about 1.5k long), written straight into `dW`'s layout. The tile's `A` rows stay
/// in L1 while `B`'s rows (overlapping views of a few channels) come from L2;
/// blocking the inner dimension at 256 or 512 cost more in reductions (34.7 →
/// 30.7 GFLOP/s at 256 on a 64-channel 32² layer) than it saved.
///
/// With a chunk table, element `q` of `B`'s row `j` is `b[boff[j] +
/// chunks.col(q)]` (`A` stays contiguous): the weight gradient over the valid output
/// positions only, `A` the output gradient in the group's channel-major layout.
///
/// # Safety
/// The CPU must have AVX2 and FMA; rows `i < m` of `A` and `j < n` of `B`, `len`
/// long, and `C(i, j)` must lie inside their allocations; with a chunk table,
/// `len` must be a multiple of 8, `run` 4 or 8 and the table at least `len / run`
/// long.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemm_dot(
    (m, n, len): (usize, usize, usize),
    (a, lda): (*const f32, usize),
    (b, boff, chunks): (*const f32, &[usize], Option<&Chunks>),
    (c, ldc): (*mut f32, usize),
) {
    // The run length is a constant of each copy, so the table lookups in the
    // inner loop are shifts: with a division by a run-time length there, the
    // backward of a 64-channel 32² layer fell from about 185 to 69 GFLOP/s.
    let (starts, run) = chunks.map_or((&[][..], 0), |t| (&t.starts[..], t.run));
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match run {
            0 => dot::<0>((m, n, len), (a, lda), (b, boff, starts), (c, ldc)),
            4 => dot::<4>((m, n, len), (a, lda), (b, boff, starts), (c, ldc)),
            _ => dot::<8>((m, n, len), (a, lda), (b, boff, starts), (c, ldc)),
        }
    }
}

/// [`gemm_dot`] with runs of `RUN` positions in `starts` (0: no table).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot<const RUN: usize>(
    (m, n, len): (usize, usize, usize),
    (a, lda): (*const f32, usize),
    (b, boff, starts): (*const f32, &[usize], &[usize]),
    (c, ldc): (*mut f32, usize),
) {
    let kc = len;
    let vec_end = kc - kc % 8;
    // Where the vector at `q` starts, and its upper half with runs of 4.
    let col = |q: usize| match RUN {
        0 => (q, q + 4),
        4 => (starts[q / 4], starts[q / 4 + 1]),
        _ => (starts[q / 8], starts[q / 8] + 4),
    };
    let mut i0 = 0;
    while i0 < m {
        let mr = DM.min(m - i0);
        let mut j0 = 0;
        while j0 < n {
            let nr = DN.min(n - j0);
            // Missing rows of a partial tile read row 0 of the tile again
            // (in bounds) and are never stored.
            let arow: [*const f32; DM] =
                std::array::from_fn(|ii| a.wrapping_add((i0 + ii.min(mr - 1)) * lda));
            let brow: [*const f32; DN] =
                std::array::from_fn(|jj| b.wrapping_add(boff[j0 + jj.min(nr - 1)]));
            let mut acc = [[_mm256_setzero_ps(); DN]; DM];
            let mut q = 0;
            while q < vec_end {
                let (lo, hi) = col(q);
                // SAFETY: q + 8 ≤ kc: inside each row, or through the table
                // (the caller's contract).
                let bv: [__m256; DN] = std::array::from_fn(|jj| unsafe {
                    if RUN == 4 {
                        _mm256_insertf128_ps::<1>(
                            _mm256_castps128_ps256(_mm_loadu_ps(brow[jj].add(lo))),
                            _mm_loadu_ps(brow[jj].add(hi)),
                        )
                    } else {
                        _mm256_loadu_ps(brow[jj].add(lo))
                    }
                });
                for (ii, row) in acc.iter_mut().enumerate() {
                    // SAFETY: as above.
                    let av = unsafe { _mm256_loadu_ps(arow[ii].add(q)) };
                    for jj in 0..DN {
                        row[jj] = _mm256_fmadd_ps(av, bv[jj], row[jj]);
                    }
                }
                q += 8;
            }
            for ii in 0..mr {
                for jj in 0..nr {
                    let mut s = hsum(acc[ii][jj]);
                    for t in vec_end..kc {
                        // SAFETY: t < kc: inside both rows (no table: the caller
                        // makes `len` a multiple of 8 with one).
                        s += unsafe { *arow[ii].add(t) * *brow[jj].add(t) };
                    }
                    // SAFETY: C(i0 + ii, j0 + jj) is inside C.
                    unsafe { *c.add((i0 + ii) * ldc + j0 + jj) += s };
                }
            }
            j0 += nr;
        }
        i0 += mr;
    }
}
