//! Matrix products: the `gemm` crate, and the hand-written AVX-512 and AVX2
//! kernels of [`kernels`] behind bounds-asserting safe wrappers.

use gemm::Parallelism;

use crate::nn::ops::cpu::buffers::Scratch;
use crate::nn::ops::kernels;
use crate::nn::ops::kernels::Own;
#[cfg(target_arch = "x86_64")]
pub(crate) use crate::nn::ops::kernels::avx2::Chunks;

/// `dst (m×n, row stride ldd) = [dst +] a·b`, with `a` and `b` given by row and
/// column strides so transposes cost nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm(
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
pub(crate) fn mm_strided(
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
/// `B` row-major (row stride `ldb`): the hand-written kernel family `own` names,
/// `gemm` where it names none.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm_rows(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    acc: bool,
    (a, ars, acs): (&[f32], usize, usize),
    (b, ldb): (&[f32], usize),
    own: Own,
) {
    #[cfg(target_arch = "x86_64")]
    if own.hand_written() {
        if m == 0 || n == 0 {
            return;
        }
        let boff: Vec<usize> = (0..k).map(|p| p * ldb).collect();
        mm_offsets(own, (m, n, k), dst, ldd, acc, (a, ars, acs), (b, &boff));
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

/// `dst (m×n, row stride ldd) += A·Bᵀ` with `A` `m×len` and `B` `n×len` row-major:
/// the AVX-512 dot-product kernel where `own` names it, `gemm` otherwise (the
/// AVX2 one measured slower than `gemm` on the column-matrix shapes).
pub(crate) fn mm_dot(
    (m, n, len): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    own: Own,
) {
    #[cfg(target_arch = "x86_64")]
    if own == Own::Avx512 {
        if m == 0 || n == 0 || len == 0 {
            return;
        }
        let boff: Vec<usize> = (0..n).map(|j| j * ldb).collect();
        mm_dot_offsets(own, (m, n, len), dst, ldd, (a, lda), (b, &boff, None));
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

/// [`mm_rows`] with row `p` of `B` at `b[boff[p]..]`, on the kernel family `own`
/// names (not [`Own::Gemm`]).
#[cfg(target_arch = "x86_64")]
pub(crate) fn mm_offsets(
    own: Own,
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
    if own == Own::Avx2 {
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
            return mm_avx2((m, n, k), dst, ldd, acc, (&at, &aoff, 1), (b, boff, None));
        }
        let aoff: Vec<usize> = (0..m).map(|i| i * ars).collect();
        return mm_avx2((m, n, k), dst, ldd, acc, (a, &aoff, acs), (b, boff, None));
    }
    assert!(own == Own::Avx512 && kernels::avx512());
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

/// One past the furthest of the first `n` columns a chunk table names; checks
/// that the table covers them and that its runs are 4 or 8 long.
#[cfg(target_arch = "x86_64")]
fn chunk_span(t: &Chunks, n: usize) -> usize {
    let r = t.run;
    assert!((r == 4 || r == 8) && t.starts.len() >= n.div_ceil(r));
    (0..n.div_ceil(r))
        .map(|q| t.starts[q] + r.min(n - r * q))
        .max()
        .unwrap_or(0)
}

/// `dst (m×n, row stride ldd) = [dst +] A·B` with `A(i, p) = a[aoff[i] + p·acs]`
/// and row `p` of `B` at `b[boff[p]..]`, its column `j` at `j` or, with a chunk
/// table, at `chunks.col(j)`: the AVX2 product.
#[cfg(target_arch = "x86_64")]
pub(crate) fn mm_avx2(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    acc: bool,
    (a, aoff, acs): (&[f32], &[usize], usize),
    (b, boff, chunks): (&[f32], &[usize], Option<&Chunks>),
) {
    assert!(kernels::avx2_products());
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * ldd + n && aoff.len() >= m && boff.len() >= k);
    if k > 0 {
        let last = (k - 1) * acs;
        assert!(aoff[..m].iter().all(|&o| o + last < a.len()));
        // One past the furthest column of a row of B.
        let span = chunks.map_or(n, |t| chunk_span(t, n));
        assert!(boff[..k].iter().all(|&o| o + span <= b.len()));
    }
    // SAFETY: AVX2 and FMA are present and the asserts keep every access in bounds.
    unsafe {
        kernels::avx2::gemm(
            (m, n, k),
            (a.as_ptr(), aoff, acs),
            (b.as_ptr(), boff, chunks),
            (dst.as_mut_ptr(), ldd),
            acc,
        )
    };
}

/// `dst (m×n, row stride ldd) += A·B` with row `i` of `A` at `a[aoff[i]..]` and
/// `B` row-major (stride `ldb`), for `n ≤ 32` (AVX-512 only).
#[cfg(target_arch = "x86_64")]
pub(crate) fn mm_narrow(
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

/// [`mm_dot`] with row `j` of `B` at `b[boff[j]..]`, on the kernel family `own`
/// names (not [`Own::Gemm`]; only the AVX2 one takes a chunk table).
#[cfg(target_arch = "x86_64")]
pub(crate) fn mm_dot_offsets(
    own: Own,
    (m, n, len): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    (a, lda): (&[f32], usize),
    (b, boff, chunks): (&[f32], &[usize], Option<&Chunks>),
) {
    assert!(match own {
        Own::Avx512 => kernels::avx512(),
        Own::Avx2 => kernels::avx2_products(),
        Own::Gemm => false,
    });
    if m == 0 || n == 0 || len == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * ldd + n && boff.len() >= n);
    assert!(a.len() >= (m - 1) * lda + len);
    // One past the furthest element of a row of B.
    assert!(chunks.is_none() || len.is_multiple_of(8));
    let span = chunks.map_or(len, |t| chunk_span(t, len));
    assert!(boff[..n].iter().all(|&o| o + span <= b.len()));
    if own == Own::Avx2 {
        // SAFETY: AVX2 and FMA are present and the asserts keep every access in
        // bounds.
        unsafe {
            kernels::avx2::gemm_dot(
                (m, n, len),
                (a.as_ptr(), lda),
                (b.as_ptr(), boff, chunks),
                (dst.as_mut_ptr(), ldd),
            )
        };
        return;
    }
    assert!(
        chunks.is_none(),
        "the AVX-512 dot product takes no chunk table"
    );
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
            let family = if kernels::avx512() {
                Own::Avx512
            } else {
                Own::Avx2
            };
            let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut c = vec![0.0; m * n];
            let reps = (2e9 / (2.0 * (m * n * k) as f64)).ceil() as usize;
            let gf = |t: f64| 2.0 * (m * n * k * reps) as f64 / t / 1e9;
            let t = Instant::now();
            for _ in 0..reps {
                mm_rows((m, n, k), &mut c, n, false, (&a, k, 1), (&b, n), family);
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
                mm_dot((m, k, n), &mut w, k, (&c, n), (&bt, n), family);
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
            let narrow = if m <= 32 && kernels::avx512() {
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
    use rayon::prelude::*;
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

#[cfg(all(test, target_arch = "x86_64"))]
mod avx2_product {
    use super::Chunks;

    /// `kernels::avx2::gemm` against a plain triple loop on sizes that hit every
    /// edge: partial row tiles (m mod 6), partial panels (n mod 16), several inner
    /// blocks (k > 256) and row blocks (m > 96), row-gathered and transposed `A`,
    /// shifted `B` rows, both overwrite and accumulate, and columns through chunk
    /// tables with runs of 8 and of 4.
    #[test]
    fn matches_plain_loops() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            eprintln!("no AVX2+FMA on this CPU: nothing to check");
            return;
        }
        for &(m, n, k, acs) in &[
            (1, 1, 1, 1),
            (7, 17, 3, 1),
            (13, 40, 300, 1),
            (101, 33, 520, 1),
            (20, 16, 70, 23),
            (97, 5, 257, 97),
        ] {
            // A(i, p) = a[aoff[i] + p·acs], rows in reverse order; B rows shifted
            // by 3 floats each inside one buffer.
            let a: Vec<f32> = (0..(m + 1) * k * acs + m)
                .map(|i| ((i * 7) % 11) as f32 * 0.25 - 1.0)
                .collect();
            let aoff: Vec<usize> = (0..m)
                .map(|i| if acs == 1 { (m - 1 - i) * k } else { m - 1 - i })
                .collect();
            // Columns by a chunk table: runs of eight with a gap of 3 after every
            // second run (as valid outputs of 16-wide rows sit in a 19-wide grid).
            let table: Vec<usize> = (0..usize::div_ceil(n, 8))
                .map(|q| 8 * q + 3 * (q / 2))
                .collect();
            // Runs of four with a gap of 1 after each (4-wide rows in a 5-wide grid).
            let table4: Vec<usize> = (0..usize::div_ceil(n, 4)).map(|q| 5 * q).collect();
            let b: Vec<f32> = (0..3 * k + 2 * n + 8)
                .map(|i| ((i * 5) % 13) as f32 * 0.125 - 0.5)
                .collect();
            let boff: Vec<usize> = (0..k).map(|p| 3 * p).collect();
            let ldc = n + 2;
            let eights = Chunks {
                starts: table,
                run: 8,
            };
            let fours = Chunks {
                starts: table4,
                run: 4,
            };
            for (acc, chunks) in [
                (false, None),
                (true, None),
                (false, Some(&eights)),
                (true, Some(&fours)),
            ] {
                let col = |j: usize| chunks.map_or(j, |t| t.col(j));
                let mut c: Vec<f32> = (0..m * ldc).map(|i| (i % 3) as f32).collect();
                let mut want = c.clone();
                for i in 0..m {
                    for j in 0..n {
                        let s: f64 = (0..k)
                            .map(|p| a[aoff[i] + p * acs] as f64 * b[boff[p] + col(j)] as f64)
                            .sum();
                        let base = if acc { want[i * ldc + j] as f64 } else { 0.0 };
                        want[i * ldc + j] = (base + s) as f32;
                    }
                }
                // SAFETY: the CPU has AVX2 and FMA (checked); every index the
                // formulas name lies inside `a`, `b` and `c` by construction.
                unsafe {
                    crate::nn::ops::kernels::avx2::gemm(
                        (m, n, k),
                        (a.as_ptr(), &aoff, acs),
                        (b.as_ptr(), &boff, chunks),
                        (c.as_mut_ptr(), ldc),
                        acc,
                    )
                };
                for (idx, (g, w)) in c.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "m={m} n={n} k={k} acs={acs} acc={acc} run={:?} at {idx}: {g} vs {w}",
                        chunks.map(|t| t.run)
                    );
                }
            }
        }
    }

    /// `kernels::avx2::gemm_dot` (`C += A·Bᵀ`, `B` rows at offsets) against plain
    /// loops: partial tiles in both directions (m mod 4, n mod 3), rows shorter
    /// than a vector and with a tail (len mod 8), overlapping shifted `B` rows, and
    /// `B` rows read through a chunk table.
    #[test]
    fn dot_matches_plain_loops() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            eprintln!("no AVX2+FMA on this CPU: nothing to check");
            return;
        }
        // Chunk runs: 0 none, else runs of 8 or of 4.
        let cases = [
            (1, 1, 1, 0),
            (3, 2, 7, 0),
            (4, 3, 8, 0),
            (9, 10, 37, 0),
            (16, 27, 1160, 0),
            (5, 7, 8, 8),
            (9, 10, 96, 8),
            (5, 7, 8, 4),
            (9, 10, 96, 4),
        ];
        for &(m, n, len, run) in &cases {
            // Runs of eight with a gap of 3 after every second run; runs of four
            // with a gap of 1 after each (4-wide rows in a 5-wide grid).
            let table: Vec<usize> = if run == 4 {
                (0..len / 4).map(|q| 5 * q).collect()
            } else {
                (0..len / 8).map(|q| 8 * q + 3 * (q / 2)).collect()
            };
            let chunks = (run > 0).then_some(Chunks { starts: table, run });
            let chunks = chunks.as_ref();
            let col = |q: usize| chunks.map_or(q, |t| t.col(q));
            let lda = len + 5;
            let a: Vec<f32> = (0..m * lda)
                .map(|i| ((i * 7) % 11) as f32 * 0.25 - 1.0)
                .collect();
            // Row j of B starts 2·j + (j mod 3) floats in: rows overlap like views.
            let boff: Vec<usize> = (0..n).map(|j| 2 * j + j % 3).collect();
            let b: Vec<f32> = (0..boff[n - 1] + col(len - 1) + 1)
                .map(|i| ((i * 5) % 13) as f32 * 0.125 - 0.5)
                .collect();
            let ldc = n + 1;
            let mut c: Vec<f32> = (0..m * ldc).map(|i| (i % 3) as f32).collect();
            let mut want = c.clone();
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..len)
                        .map(|q| a[i * lda + q] as f64 * b[boff[j] + col(q)] as f64)
                        .sum();
                    want[i * ldc + j] = (want[i * ldc + j] as f64 + s) as f32;
                }
            }
            // SAFETY: the CPU has AVX2 and FMA (checked); rows and C lie inside
            // their buffers by construction.
            unsafe {
                crate::nn::ops::kernels::avx2::gemm_dot(
                    (m, n, len),
                    (a.as_ptr(), lda),
                    (b.as_ptr(), &boff, chunks),
                    (c.as_mut_ptr(), ldc),
                )
            };
            for (idx, (g, w)) in c.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "m={m} n={n} len={len} run={run} at {idx}: {g} vs {w}"
                );
            }
        }
    }
}
