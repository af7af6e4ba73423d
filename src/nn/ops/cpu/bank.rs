//! The memory bank's fused log-softmax against a constant table.

use dfdx::prelude::*;
use gemm::Parallelism;
use rayon::prelude::*;

use crate::nn::ops::T2;
use crate::nn::ops::cpu::buffers::{HostBuf, pooled, view, zeros};
use crate::nn::ops::cpu::products::mm;
use crate::nn::ops::kernels;

/// `Σ a[i]·b[i]` in 32 independent lanes, so the reduction vectorises (two AVX-512
/// registers: two FMA chains in flight).
#[inline(always)]
pub(crate) fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
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
pub(crate) fn prefetch_row(table: &[f32], i: usize, d: usize) {
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
pub(crate) const PREFETCH_AHEAD: usize = 8;

/// [`bank_log_softmax`] multiplies with the whole table when it has fewer rows than
/// this many times the logits per row. The `bank_paths` timing test on the
/// memory-bank recipe's shape (2 threads, AVX2): dense 17 / sparse 32 ms at 2.4
/// (the recipe), 43 / 56 ms at 7.3, 82 / 75 ms at 14.6. The dense path's two
/// `n × rows` buffers stay a few tens of MB below the switch.
pub(crate) const BANK_DENSE_RATIO: usize = 12;

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

/// Lanes of the row reductions of [`log_softmax_row`].
pub(crate) const LANES: usize = 16;

/// `e^x` for `LANES` values `x ≤ 0` at once, in a loop LLVM vectorises (std's `exp` is
/// one libm call per value, and was most of the log-softmax's time): Cody–Waite
/// reduction `x = n·ln 2 + r` and Cephes' `expf` polynomial for `e^r`, within a few
/// ulp of the exact value; below −87.3 (under the smallest normal float) it is 0.
#[inline(always)]
pub(crate) fn exp_lanes(x: &[f32; LANES]) -> [f32; LANES] {
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
pub(crate) fn max_lanes(y: &[f32]) -> f32 {
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
pub(crate) fn exp_sum(y: &[f32], max: f32, mut p: Option<&mut [f32]>) -> f32 {
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
pub(crate) fn log_softmax_row(y: &mut [f32], mut p: Option<&mut [f32]>) {
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
pub(crate) fn bank_log_softmax_path<T: Tape<f32, Cpu>>(
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
    let fv = view(&f);
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
            (fv, d, 1),
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
    drop(full);
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
