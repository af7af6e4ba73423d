//! Winograd's minimal filtering F(2×2, 3×3) for 3×3 stride-1 convolutions with
//! padding 1 on even planes (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2016): each 2×2 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`
//! of the 4×4 input tile `d` around it, so the products take 16 multiplies per
//! tile and channel pair instead of 36 (2.25× fewer flops).
//!
//! Layout: a group of samples has `T` tiles (sample, tile row, tile column); the
//! transformed input is `V[ξ][c][T]` and the transformed weights `U[o][ξ][c]` for
//! the 16 positions `ξ` of a 4×4 tile, so the multiply is 16 independent
//! products `M[ξ] (o×T) = U[ξ] · V[ξ]` on the usual product kernels. The
//! transforms run along tile columns: a padded row split into its even and odd
//! columns turns every tile's 4-wide row transform into contiguous vector
//! operations.
//!
//! The input gradient of such a convolution is the same convolution of the output
//! gradient with the flipped kernel (channels swapped), so it runs here too; the
//! weight gradient is the backward of the transformed products, `dU[ξ] = D[ξ] ·
//! V[ξ]ᵀ` with `D = A gy Aᵀ` per tile, then `dW = Gᵀ dU G`. Results differ from the
//! direct paths by rounding only (`paths_agree` bounds them at 1e-5 relative).

use crate::nn::ops::cpu::buffers::Scratch;
use crate::nn::ops::cpu::conv::{
    ConvDims, conv_backward_threads, conv_forward_threads, padded_ld, thread_chunk,
};
use crate::nn::ops::cpu::products::{mm, mm_rows};
use crate::nn::ops::kernels;
use crate::nn::ops::kernels::Own;
use gemm::Parallelism;
use rayon::prelude::*;

/// Positions of a transformed tile.
const XI: usize = 16;

/// `U[o][ξ][c] = (G g Gᵀ)[ξ]` for the 3×3 kernels `g = w[o][c]` of `wt`
/// `(o, c, 3, 3)`, with `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`;
/// with `flip`, those of the input gradient's convolution instead (`c` outputs,
/// `o` inputs, `g = w[o][c]` rotated by 180°): `U[c][ξ][o]`. Product `ξ` reads
/// rows `16·inner` apart from offset `ξ·inner`. Threads take output channels (a
/// serial transform had cost about 1% of ResNet-18's step on an idle core).
pub(crate) fn transform_weights(wt: &[f32], o: usize, c: usize, flip: bool) -> Vec<f32> {
    assert_eq!(wt.len(), o * c * 9);
    let inner = if flip { o } else { c };
    let mut u = vec![0.0; XI * o * c];
    u.par_chunks_mut(XI * inner)
        .enumerate()
        .for_each(|(r, ur)| {
            for q in 0..inner {
                let (oc, ci) = if flip { (q, r) } else { (r, q) };
                let w = &wt[(oc * c + ci) * 9..][..9];
                let g = |ki: usize, kj: usize| {
                    if flip {
                        w[(2 - ki) * 3 + 2 - kj]
                    } else {
                        w[ki * 3 + kj]
                    }
                };
                // Column j of G g (4×3), then each row of it times Gᵀ (4×4).
                let col = |j: usize| {
                    let (g0, g1, g2) = (g(0, j), g(1, j), g(2, j));
                    [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2]
                };
                let (c0, c1, c2) = (col(0), col(1), col(2));
                for (i, ((a, b), cc)) in c0.into_iter().zip(c1).zip(c2).enumerate() {
                    let v = [a, 0.5 * (a + b + cc), 0.5 * (a - b + cc), cc];
                    for (j, val) in v.into_iter().enumerate() {
                        ur[(i * 4 + j) * inner + q] = val;
                    }
                }
            }
        });
    u
}

kernels::multiversion! {
    /// `V[ξ][ci][t0 + ty·w2 + tx]` (row stride `ldv` per channel, `c·ldv` per
    /// `ξ`) of one sample `x` `(c, h, w)`.
    fn input_transform(
        x: &[f32],
        chw: (usize, usize, usize),
        v: &mut [f32],
        ldv: usize,
        t0: usize,
    ) {
        let (c, h, w) = chw;
        let (w2, h2, hw) = (w / 2, h / 2, h * w);
        let len = h2 * w2;
        assert!(x.len() >= c * hw && w2 > 0 && h2 > 0);
        assert!(v.len() >= ((XI - 1) * c + c - 1) * ldv + t0 + len);
        // Even and odd columns of a padded row (p[j + 1] = x[j], zeros at both ends).
        let mut e = vec![0.0f32; w2 + 1];
        let mut od = vec![0.0f32; w2 + 1];
        // rt[j][parity][r][tx]: the row transform (Bᵀ on a tile's four columns) of
        // padded row 2r + parity (row 0 and row h + 1 are the zero padding), so
        // the column transform of every tile row is one pass over contiguous runs.
        let rows = h2 + 1;
        let mut rt = vec![0.0f32; 4 * 2 * rows * w2];
        for ci in 0..c {
            let plane = &x[ci * hw..][..hw];
            for p in 1..=h {
                let src = &plane[(p - 1) * w..][..w];
                for tx in 0..w2 {
                    od[tx] = src[2 * tx];
                    e[tx + 1] = src[2 * tx + 1];
                }
                let at = |j: usize| ((j * 2 + p % 2) * rows + p / 2) * w2;
                // Bᵀ d on the tile's columns (E[tx], O[tx], E[tx+1], O[tx+1]).
                let r0 = &mut rt[at(0)..][..w2];
                for tx in 0..w2 {
                    r0[tx] = e[tx] - e[tx + 1];
                }
                let r1 = &mut rt[at(1)..][..w2];
                for tx in 0..w2 {
                    r1[tx] = od[tx] + e[tx + 1];
                }
                let r2 = &mut rt[at(2)..][..w2];
                for tx in 0..w2 {
                    r2[tx] = e[tx + 1] - od[tx];
                }
                let r3 = &mut rt[at(3)..][..w2];
                for tx in 0..w2 {
                    r3[tx] = od[tx] - od[tx + 1];
                }
            }
            for j in 0..4 {
                // Tile row ty reads padded rows 2ty..2ty+3: even[ty], odd[ty],
                // even[ty+1], odd[ty+1].
                let even = &rt[(j * 2) * rows * w2..][..rows * w2];
                let odd = &rt[(j * 2 + 1) * rows * w2..][..rows * w2];
                let (q0, q1) = (&even[..len], &odd[..len]);
                let (q2, q3) = (&even[w2..w2 + len], &odd[w2..w2 + len]);
                // Bᵀ over the four rows: (q0 − q2, q1 + q2, q2 − q1, q1 − q3).
                let at = |i: usize| ((i * 4 + j) * c + ci) * ldv + t0;
                let dst = &mut v[at(0)..][..len];
                for k in 0..len {
                    dst[k] = q0[k] - q2[k];
                }
                let dst = &mut v[at(1)..][..len];
                for k in 0..len {
                    dst[k] = q1[k] + q2[k];
                }
                let dst = &mut v[at(2)..][..len];
                for k in 0..len {
                    dst[k] = q2[k] - q1[k];
                }
                let dst = &mut v[at(3)..][..len];
                for k in 0..len {
                    dst[k] = q1[k] - q3[k];
                }
            }
        }
    }
}

kernels::multiversion! {
    /// One sample's output `y` `(o, h, w)` from `M[ξ][oc][t0 + ty·w2 + tx]` (row
    /// stride `ldm`, `o·ldm` per `ξ`): `Aᵀ m A` with `Aᵀ = [[1, 1, 1, 0],
    /// [0, 1, −1, −1]]`, plus `bias`; added to `y` when `acc`.
    fn output_transform(
        m: &[f32],
        ohw_dims: (usize, usize, usize),
        ldm: usize,
        t0: usize,
        y: &mut [f32],
        bias: Option<&[f32]>,
        acc: bool,
    ) {
        let (o, h, w) = ohw_dims;
        let (w2, h2, hw) = (w / 2, h / 2, h * w);
        let len = h2 * w2;
        assert!(y.len() >= o * hw && m.len() >= (XI * o - 1) * ldm + t0 + len);
        // s[a][j][ty·w2 + tx] = (Aᵀ m)[a][j] of every tile, then the even and odd
        // output columns of row a of every tile.
        let mut s = vec![0.0f32; 8 * len];
        let (mut ev, mut odv) = (vec![0.0f32; len], vec![0.0f32; len]);
        for oc in 0..o {
            let b = bias.map_or(0.0, |b| b[oc]);
            let mrow = |xi: usize| &m[(xi * o + oc) * ldm + t0..][..len];
            for j in 0..4 {
                let (m0, m1, m2, m3) = (mrow(j), mrow(4 + j), mrow(8 + j), mrow(12 + j));
                let (sa, sb) = s.split_at_mut(4 * len);
                let (s0, s1) = (&mut sa[j * len..][..len], &mut sb[j * len..][..len]);
                for k in 0..len {
                    s0[k] = m0[k] + m1[k] + m2[k];
                    s1[k] = m1[k] - m2[k] - m3[k];
                }
            }
            let plane = &mut y[oc * hw..][..hw];
            for a in 0..2 {
                let sr = |j: usize| &s[(a * 4 + j) * len..][..len];
                let (c0, c1, c2, c3) = (sr(0), sr(1), sr(2), sr(3));
                for k in 0..len {
                    ev[k] = c0[k] + c1[k] + c2[k] + b;
                    odv[k] = c1[k] - c2[k] - c3[k] + b;
                }
                for ty in 0..h2 {
                    let out = &mut plane[(2 * ty + a) * w..][..w];
                    let (e, od) = (&ev[ty * w2..][..w2], &odv[ty * w2..][..w2]);
                    if acc {
                        for tx in 0..w2 {
                            out[2 * tx] += e[tx];
                            out[2 * tx + 1] += od[tx];
                        }
                    } else {
                        for tx in 0..w2 {
                            out[2 * tx] = e[tx];
                            out[2 * tx + 1] = od[tx];
                        }
                    }
                }
            }
        }
    }
}

kernels::multiversion! {
    /// `D[ξ][oc][t0 + ty·w2 + tx] = (A g Aᵀ)[ξ]` for the 2×2 tiles `g` of one
    /// sample's output gradient `gy` `(o, h, w)` (row stride `ldd`, `o·ldd` per
    /// `ξ`), `A = [[1, 0], [1, 1], [1, −1], [0, −1]]`: the gradient reaching the
    /// transformed products of [`output_transform`].
    fn grad_transform(
        gy: &[f32],
        ohw_dims: (usize, usize, usize),
        dm: &mut [f32],
        ldd: usize,
        t0: usize,
    ) {
        let (o, h, w) = ohw_dims;
        let (w2, h2, hw) = (w / 2, h / 2, h * w);
        let len = h2 * w2;
        assert!(gy.len() >= o * hw && dm.len() >= ((XI - 1) * o + o - 1) * ldd + t0 + len);
        // u[j][parity][ty][tx]: A on the two columns of row 2ty + parity.
        let mut u = vec![0.0f32; 4 * 2 * len];
        for oc in 0..o {
            let plane = &gy[oc * hw..][..hw];
            for y in 0..h {
                let src = &plane[y * w..][..w];
                let at = |j: usize| (j * 2 + y % 2) * len + (y / 2) * w2;
                let (u01, u23) = u.split_at_mut(2 * 2 * len);
                let (u0, u1) = u01.split_at_mut(2 * len);
                let (u2, u3) = u23.split_at_mut(2 * len);
                let b = at(0);
                for tx in 0..w2 {
                    let (g0, g1) = (src[2 * tx], src[2 * tx + 1]);
                    u0[b + tx] = g0;
                    u1[b + tx] = g0 + g1;
                    u2[b + tx] = g0 - g1;
                    u3[b + tx] = -g1;
                }
            }
            for j in 0..4 {
                let (r0, r1) = (&u[(j * 2) * len..][..len], &u[(j * 2 + 1) * len..][..len]);
                let at = |i: usize| ((i * 4 + j) * o + oc) * ldd + t0;
                let dst = &mut dm[at(0)..][..len];
                dst.copy_from_slice(r0);
                let dst = &mut dm[at(1)..][..len];
                for k in 0..len {
                    dst[k] = r0[k] + r1[k];
                }
                let dst = &mut dm[at(2)..][..len];
                for k in 0..len {
                    dst[k] = r0[k] - r1[k];
                }
                let dst = &mut dm[at(3)..][..len];
                for k in 0..len {
                    dst[k] = -r1[k];
                }
            }
        }
    }
}

/// `dW[o][c] = Gᵀ dU[o][c] G` (3×3 from the 4×4 gradient of the transformed
/// weights `dU[ξ][o][c]`), the transpose of [`transform_weights`].
fn untransform_weight_grad(du: &[f32], o: usize, c: usize) -> Vec<f32> {
    const G: [[f32; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let mut dw = vec![0.0; o * c * 9];
    for oc in 0..o {
        for ci in 0..c {
            let g = |xi: usize| du[(xi * o + oc) * c + ci];
            let out = &mut dw[(oc * c + ci) * 9..][..9];
            for (ki, row) in out.chunks_mut(3).enumerate() {
                for (kj, v) in row.iter_mut().enumerate() {
                    let mut acc = 0.0;
                    for (i, gi) in G.iter().enumerate() {
                        for (j, gj) in G.iter().enumerate() {
                            acc += gi[ki] * g(i * 4 + j) * gj[kj];
                        }
                    }
                    *v = acc;
                }
            }
        }
    }
    dw
}

/// The weight gradient of one thread's samples: `dU[ξ] = Σ_t D[ξ][·][t] V[ξ][·][t]`
/// over its tiles (16 products with the tiles as inner dimension, 2.25× fewer
/// flops than the direct form), then `Gᵀ dU G`.
fn weight_grad_chunk(xs: &[f32], gys: &[f32], d: &ConvDims) -> Vec<f32> {
    let (c, o, h, w) = (d.c, d.o, d.h, d.w);
    let (chw, ohw, tiles) = (c * h * w, o * h * w, h * w / 4);
    let ns_all = xs.len() / chw;
    let g = group((c, o, h, w), ns_all);
    let ld = padded_ld(g * tiles);
    let mut v = Scratch::new(XI * c * ld);
    let mut dm = Scratch::new(XI * o * ld);
    let mut du = vec![0.0f32; XI * o * c];
    for (xg, gyg) in xs.chunks(g * chw).zip(gys.chunks(g * ohw)) {
        let ns = xg.len() / chw;
        let t = ns * tiles;
        for (s, x) in xg.chunks(chw).enumerate() {
            input_transform(x, (c, h, w), &mut v, ld, s * tiles);
        }
        for (s, gy) in gyg.chunks(ohw).enumerate() {
            grad_transform(gy, (o, h, w), &mut dm, ld, s * tiles);
        }
        for xi in 0..XI {
            // dU[ξ] (o×c) += D[ξ] (o×t) · V[ξ]ᵀ on `gemm`, which packs the
            // transpose: the AVX2 dot-product kernel's per-output reductions cost
            // more on these short rows (256-channel 8² backward 38.9 → 30.8 ms).
            mm(
                (o, c, t),
                &mut du[xi * o * c..][..o * c],
                c,
                true,
                (&dm[xi * o * ld..], ld, 1),
                (&v[xi * c * ld..], 1, ld),
                Parallelism::None,
            );
        }
    }
    untransform_weight_grad(&du, o, c)
}

/// The weight gradient of such a convolution (see [`weight_grad_chunk`]),
/// summed over the threads' ranges of samples.
fn weight_grad(x: &[f32], gy: &[f32], n: usize, d: ConvDims) -> Vec<f32> {
    conv_backward_threads((x, gy, None), n, d, |_, xs, gys| {
        weight_grad_chunk(xs, gys, &d)
    })
}

/// Samples per group: the transformed input of a group (16 rows per channel of
/// its tiles) stays about 1 MiB, the L2 cache of the machines measured: ResNet-18's
/// 256-channel 8² layer on Zen 4 went 21.9 → 14.4 ms forward with 64 tiles per
/// group instead of 512, the 64-channel 32² one 18.8 → 17.7 with 256.
fn group((c, o, h, w): (usize, usize, usize, usize), n: usize) -> usize {
    let tiles = (16384 / c.max(o)).max(16);
    (tiles / (h * w / 4).max(1)).clamp(1, n.max(1))
}

/// The convolution of one thread's samples `xs` `(ns, c, h, w)` with the
/// transformed weights `u` (`U[o][ξ][c]`) into `ys` `(ns, o, h, w)`: written, or
/// added when `acc`.
fn convolve(
    xs: &[f32],
    u: &[f32],
    ys: &mut [f32],
    (c, o, h, w): (usize, usize, usize, usize),
    bias: Option<&[f32]>,
    acc: bool,
) {
    let (chw, ohw, tiles) = (c * h * w, o * h * w, h * w / 4);
    let g = group((c, o, h, w), xs.len() / chw);
    let ld = padded_ld(g * tiles);
    let mut v = Scratch::new(XI * c * ld);
    let mut m = Scratch::new(XI * o * ld);
    let own = if kernels::avx2_products() {
        Own::Avx2
    } else {
        Own::Gemm
    };
    for (xg, yg) in xs.chunks(g * chw).zip(ys.chunks_mut(g * ohw)) {
        let ns = xg.len() / chw;
        let t = ns * tiles;
        for (s, x) in xg.chunks(chw).enumerate() {
            input_transform(x, (c, h, w), &mut v, ld, s * tiles);
        }
        for xi in 0..XI {
            mm_rows(
                (o, t, c),
                &mut m[xi * o * ld..],
                ld,
                false,
                (&u[xi * c..], XI * c, 1),
                (&v[xi * c * ld..], ld),
                own,
            );
        }
        for (s, y) in yg.chunks_mut(ohw).enumerate() {
            output_transform(&m, (o, h, w), ld, s * tiles, y, bias, acc);
        }
    }
}

/// The backward of [`super::conv_backward`] on this path: adds the input
/// gradient into `gx` (when given) and returns the weight gradient.
pub(crate) fn backward(
    x: &[f32],
    wt: &[f32],
    gy: &[f32],
    gx: Option<&mut [f32]>,
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    let dw = weight_grad(x, gy, n, d);
    if let Some(gx) = gx {
        input_grad(wt, gy, gx, n, d);
    }
    dw
}

/// Whether a convolution takes this path: 3×3, stride 1, padding 1, even planes
/// of 8×8 and up, from 32 channels in and out. Measured with `shape_speed` on
/// Zen 4 (2 threads, batch 64, forward / backward ms, direct → Winograd):
/// ResNet-18's 64-channel 32² layer 26.5 → 18.4 / 48.9 → 39.2, 128-channel 16²
/// 25.3 → 15.2 / 49.4 → 30.7, 256-channel 8² 25.3 → 14.5 / 52.0 → 30.8. On 4×4
/// planes (4 tiles per sample) the backward got slower (512 channels: 57 → 66–86
/// ms with 32 to 256 tiles per group, the forward within ±10%), and at 16
/// channels the products are too small to gain. `RECIPE_NO_WINOGRAD=1` turns the
/// path off.
pub(crate) fn applies(d: &ConvDims) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var_os("RECIPE_NO_WINOGRAD").is_some_and(|v| v != "0"));
    let w = d.win;
    !off && w.kernel == 3
        && w.stride == 1
        && w.padding == 1
        && d.h.is_multiple_of(2)
        && d.w.is_multiple_of(2)
        && d.h.min(d.w) >= 8
        && d.c.min(d.o) >= 32
}

/// The forward of [`super::conv_forward`] on this path.
pub(crate) fn forward(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    let u = transform_weights(wt, d.o, d.c, false);
    conv_forward_threads(x, n, d, |ys, xs| {
        convolve(xs, &u, ys, (d.c, d.o, d.h, d.w), bias, false)
    })
}

/// Adds the input gradient of such a convolution into `gx`: the convolution of
/// `gy` with the flipped kernel, channels swapped.
fn input_grad(wt: &[f32], gy: &[f32], gx: &mut [f32], n: usize, d: ConvDims) {
    let u = transform_weights(wt, d.o, d.c, true);
    let (chw, ohw) = (d.c * d.h * d.w, d.o * d.h * d.w);
    let chunk = thread_chunk(n);
    gx.par_chunks_mut(chunk * chw)
        .zip(gy.par_chunks(chunk * ohw))
        .for_each(|(gxc, gyc)| convolve(gyc, &u, gxc, (d.o, d.c, d.h, d.w), None, true));
}
