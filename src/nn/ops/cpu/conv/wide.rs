//! The wide convolution path: padded (phase-)planes read as shifted views (see
//! the parent module).

use gemm::Parallelism;

use crate::nn::ops::cpu::buffers::Scratch;
use crate::nn::ops::cpu::conv::im2col::{add_bias, pack_sample, unpack_sample};
use crate::nn::ops::cpu::conv::{
    ConvDims, LD_PAD, conv_backward_threads, conv_forward_threads, padded_ld, thread_chunk,
};
#[cfg(target_arch = "x86_64")]
use crate::nn::ops::cpu::products::{Chunks, mm_avx2, mm_dot_offsets, mm_narrow, mm_offsets};
use crate::nn::ops::cpu::products::{mm, mm_rows, mm_strided};
use crate::nn::ops::kernels;
#[cfg(target_arch = "x86_64")]
use crate::nn::ops::kernels::Own;

/// Positions per channel of a group of `ns` planes of `pp` positions: the
/// product's column count and the channel stride of the padded buffers, with
/// [`padded_ld`]'s extra columns where `ns·pp` would put the channels a multiple
/// of 512 bytes apart (1×1 layers, whose planes are powers of two: ResNet-50's
/// 16² layers, 6 samples of 256 positions).
pub(crate) fn group_cols(ns: usize, pp: usize) -> usize {
    padded_ld(ns * pp)
}

/// Lays `ns` samples `(ch, hh, ww)` out as `(ch, sample, hp, wp)`, channels `cols`
/// apart ([`group_cols`]), with each image at row and column `top`, zeros
/// elsewhere, plus `tail` zeros at the end.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pad_planes(
    src: &[f32],
    (ch, hh, ww): (usize, usize, usize),
    (hp, wp): (usize, usize),
    (top, cols): (usize, usize),
    tail: usize,
    dst: &mut Vec<f32>,
) {
    let ns = src.len() / (ch * hh * ww).max(1);
    let plane = hp * wp;
    assert!(cols >= ns * plane);
    dst.clear();
    dst.resize(ch * cols + tail, 0.0);
    for (si, sample) in src.chunks(ch * hh * ww).enumerate() {
        for (ci, img) in sample.chunks(hh * ww).enumerate() {
            let base = ci * cols + si * plane + top * wp + top;
            for (y, row) in img.chunks(ww).enumerate() {
                dst[base + y * wp..][..ww].copy_from_slice(row);
            }
        }
    }
}

/// Lays `ns` samples `(ch, hh, ww)`, zero-padded by `pad`, out as phase planes
/// `(ch, phase, sample, hph, wph)`, phases `cols` apart: padded pixel `(py, px)`
/// goes to phase `(py mod s)·s + px mod s` at `(py / s, px / s)`. Plus `tail`
/// zeros at the end. With `s = 1` this is [`pad_planes`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn pad_phases(
    src: &[f32],
    (ch, hh, ww): (usize, usize, usize),
    s: usize,
    (hph, wph): (usize, usize),
    (pad, cols): (usize, usize),
    tail: usize,
    dst: &mut Vec<f32>,
) {
    if s == 1 {
        return pad_planes(src, (ch, hh, ww), (hph, wph), (pad, cols), tail, dst);
    }
    let ns = src.len() / (ch * hh * ww).max(1);
    let pp = hph * wph;
    assert!(cols >= ns * pp);
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
pub(crate) fn tap_offset(ki: usize, kj: usize, s: usize, cols: usize, wph: usize) -> usize {
    ((ki % s) * s + kj % s) * cols + (ki / s) * wph + kj / s
}

/// Row offsets of the shifted views: row `(ci, ki, kj)` of the implicit column
/// matrix starts at `ci·s²·cols + tap_offset(ki, kj)` of the phase-plane buffer.
pub(crate) fn view_offsets(ch: usize, cols: usize, k: usize, wph: usize, s: usize) -> Vec<usize> {
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

/// The runs of `run` valid outputs on the grid of `ns` planes (`pp` positions
/// each, rows `wph` apart) whose valid part is `rows × width`, `width` a multiple
/// of `run`: the column table of [`compact_product`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn valid_chunks(
    ns: usize,
    (rows, width): (usize, usize),
    wph: usize,
    pp: usize,
    run: usize,
) -> Chunks {
    assert!(width.is_multiple_of(run) && width <= wph);
    let mut v = Vec::with_capacity(ns * rows * width / run);
    for si in 0..ns {
        for y in 0..rows {
            v.extend((0..width).step_by(run).map(|x| si * pp + y * wph + x));
        }
    }
    Chunks { starts: v, run }
}

/// `dst (m × run·starts.len()) = A · views(b)` on the valid positions only: `A` is
/// `m × k` row-major, row `p` of the views starts at `b[boff[p]..]`, and output
/// column `j` is grid position `chunks.col(j)` (AVX2 product).
#[cfg(target_arch = "x86_64")]
pub(crate) fn compact_product(
    (m, k): (usize, usize),
    dst: &mut [f32],
    a: &[f32],
    (b, boff): (&[f32], &[usize]),
    chunks: &Chunks,
) {
    let n = chunks.run * chunks.starts.len();
    let aoff: Vec<usize> = (0..m).map(|i| i * k).collect();
    mm_avx2(
        (m, n, k),
        dst,
        n,
        false,
        (a, &aoff, 1),
        (b, boff, Some(chunks)),
    );
}

/// `wide (o×cols) = W · views(xp)`: one product over the shifted views with the own
/// kernel, else one `gemm` per kernel tap with the channels as inner dimension.
pub(crate) fn wide_product(d: ConvDims, cols: usize, wide: &mut [f32], wt: &[f32], xp: &[f32]) {
    let (k, s, wph) = (d.win.kernel, d.win.stride, d.wph());
    let (ckk, kk) = (d.ckk(), k * k);
    #[cfg(target_arch = "x86_64")]
    if d.own().hand_written() {
        let off = view_offsets(d.c, cols, k, wph, s);
        mm_offsets(
            d.own(),
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
pub(crate) fn wide_dw(
    d: ConvDims,
    cols: usize,
    (dw, dwt): (&mut [f32], &mut [f32]),
    xp: &[f32],
    gy0: &[f32],
) {
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
    #[cfg(target_arch = "x86_64")]
    if d.own().hand_written() && d.c <= 64 {
        // dW (o×ckk) += gy0 · viewsᵀ: dot products along the group's columns,
        // straight into dW's layout (no transposed copy to add back). Up to 64
        // channels, where the views of a group fit in L2: 32 → 36 GFLOP/s on one
        // thread for a 64-channel 32² layer, 24 → 35 at 16 channels (small16's
        // step 7% faster); at 128 channels `gemm` per tap stayed ahead (33 → 30).
        let xoff = view_offsets(d.c, cols, k, wph, s);
        mm_dot_offsets(
            d.own(),
            (d.o, ckk, cols),
            dw,
            ckk,
            (gy0, cols),
            (xp, &xoff, None),
        );
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
pub(crate) fn wide_gx_flip(d: ConvDims, cols: usize, wide: &mut [f32], wflip: &[f32], gyq: &[f32]) {
    let (k, wp) = (d.win.kernel, d.wph());
    let (kk, okk) = (k * k, d.o * k * k);
    #[cfg(target_arch = "x86_64")]
    if d.own().hand_written() {
        let goff = view_offsets(d.o, cols, k, wp, 1);
        mm_offsets(
            d.own(),
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
pub(crate) fn wide_gx_scatter(
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

pub(crate) fn conv_forward_wide(
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
        let mut wide = Scratch::new(d.o * (g * pp + LD_PAD));
        for (yg, xg) in yc.chunks_mut(g * d.o * howo).zip(xc.chunks(g * chw)) {
            let ns = xg.len() / chw;
            let cols = group_cols(ns, pp);
            pad_phases(
                xg,
                (d.c, d.h, d.w),
                st,
                (d.hph(), wph),
                (d.win.padding, cols),
                d.tail(),
                &mut xp,
            );
            #[cfg(target_arch = "x86_64")]
            if d.compact() {
                let chunks = valid_chunks(ns, (d.ho, d.wo), wph, pp, d.run());
                let off = view_offsets(d.c, cols, d.win.kernel, wph, 1);
                compact_product((d.o, d.ckk()), &mut wide, wt, (&xp, &off), &chunks);
                for (si, ys) in yg.chunks_mut(d.o * howo).enumerate() {
                    unpack_sample(ys, &wide, ns * howo, si, howo);
                    if let Some(b) = bias {
                        add_bias(ys, b, howo);
                    }
                }
                continue;
            }
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

/// At stride 1 the input gradient is the correlation of gy, padded by k−1−p, with
/// the flipped kernel whose in/out channels are swapped:
/// `wflip[c, (o, ki, kj)] = w[o, c, k−1−ki, k−1−kj]`.
fn flip_weights(wt: &[f32], d: ConvDims) -> Vec<f32> {
    let k = d.win.kernel;
    let okk = d.o * k * k;
    let mut wflip = vec![0.0; d.c * okk];
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
    wflip
}

/// The input gradient alone, accumulated into `gx`, by the compact correlation
/// ([`ConvDims::compact`] must hold): the whole-batch path's backward uses it
/// instead of its column gradient and col2im on compact shapes whose weight
/// gradient stays there (over [`super::DOT_LIMIT`] input channels).
#[cfg(target_arch = "x86_64")]
pub(crate) fn input_grad_compact(wt: &[f32], gy: &[f32], gx: &mut [f32], n: usize, d: ConvDims) {
    use rayon::prelude::*;
    assert!(d.compact());
    let (hw, chw, howo) = (d.h * d.w, d.c * d.h * d.w, d.ho * d.wo);
    let (hph, wph) = (d.hph(), d.wph());
    let q = d.win.kernel - 1 - d.win.padding;
    let wflip = flip_weights(wt, d);
    let chunk = thread_chunk(n);
    let g = d.wide_group(chunk);
    gx.par_chunks_mut(chunk * chw)
        .zip(gy.par_chunks(chunk * d.o * howo))
        .for_each(|(gxc, gyc)| {
            let mut gyq = Vec::new();
            let mut wide = Scratch::new(d.c * g * hw);
            for (gxg, gysrc) in gxc.chunks_mut(g * chw).zip(gyc.chunks(g * d.o * howo)) {
                let ns = gxg.len() / chw;
                let cols = group_cols(ns, hph * wph);
                pad_planes(
                    gysrc,
                    (d.o, d.ho, d.wo),
                    (hph, wph),
                    (q, cols),
                    d.tail(),
                    &mut gyq,
                );
                compact_gx(d, ns, gxg, (&wflip, &gyq), &mut wide);
            }
        });
}

/// Adds one group's input gradient into `gxg` (its `ns` samples): the compact
/// correlation of `gyq` (the group's gy padded by k−1−p on the wide grid) with the
/// flipped kernel, through the `wide` buffer (at least `c·ns·h·w`).
#[cfg(target_arch = "x86_64")]
fn compact_gx(
    d: ConvDims,
    ns: usize,
    gxg: &mut [f32],
    (wflip, gyq): (&[f32], &[f32]),
    wide: &mut [f32],
) {
    let (k, hw, wph) = (d.win.kernel, d.h * d.w, d.wph());
    let pp = d.hph() * wph;
    let chunks = valid_chunks(ns, (d.h, d.w), wph, pp, d.run());
    let off = view_offsets(d.o, group_cols(ns, pp), k, wph, 1);
    compact_product((d.c, d.o * k * k), wide, wflip, (gyq, &off), &chunks);
    for (si, gs) in gxg.chunks_mut(d.c * hw).enumerate() {
        for (ci, gp) in gs.chunks_mut(hw).enumerate() {
            kernels::add_to(gp, &wide[ci * ns * hw + si * hw..][..hw]);
        }
    }
}

pub(crate) fn conv_backward_wide(
    x: &[f32],
    wt: &[f32],
    gy: &[f32],
    gx: Option<&mut [f32]>,
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    let (k, p, st) = (d.win.kernel, d.win.padding, d.win.stride);
    let (ckk, howo, chw) = (d.ckk(), d.ho * d.wo, d.c * d.h * d.w);
    let (hph, wph) = (d.hph(), d.wph());
    let pp = hph * wph;
    let wflip = if st == 1 {
        flip_weights(wt, d)
    } else {
        Vec::new()
    };
    let q = k - 1 - p;
    let g = d.wide_group(thread_chunk(n));
    let wlen = d.o * ckk;
    conv_backward_threads((x, gy, gx), n, d, |gxc, xc, gyc| {
        let mut dw = vec![0.0; wlen];
        // dWᵀ (ckk×o) for the own kernels' narrow product.
        let mut dwt = vec![0.0; if d.own_dw() { wlen } else { 0 }];
        let (mut xp, mut gy0, mut gyq) = (Vec::new(), Vec::new(), Vec::new());
        let mut wide = Scratch::new(if st == 1 { d.c } else { ckk } * (g * pp + LD_PAD));
        let mut gx_groups = gxc.map(|gxc| gxc.chunks_mut(g * chw));
        for (xg, gysrc) in xc.chunks(g * chw).zip(gyc.chunks(g * d.o * howo)) {
            let gxg = gx_groups.as_mut().and_then(|it| it.next());
            let ns = xg.len() / chw;
            let cols = group_cols(ns, pp);
            pad_phases(
                xg,
                (d.c, d.h, d.w),
                st,
                (hph, wph),
                (p, cols),
                d.tail(),
                &mut xp,
            );
            if d.compact_dw() {
                // dW (o×ckk) += gy · viewsᵀ over the valid positions: gy of the
                // group channel-major, the views' columns through the chunk table.
                let nv = ns * howo;
                gy0.clear();
                gy0.resize(d.o * nv, 0.0);
                for (si, gs) in gysrc.chunks(d.o * howo).enumerate() {
                    pack_sample(&mut gy0, nv, si, gs, howo);
                }
                // compact_dw holds only with the AVX2 kernels, i.e. on x86_64.
                #[cfg(target_arch = "x86_64")]
                {
                    let chunks = valid_chunks(ns, (d.ho, d.wo), wph, pp, d.run());
                    let xoff = view_offsets(d.c, cols, k, wph, 1);
                    mm_dot_offsets(
                        Own::Avx2,
                        (d.o, ckk, nv),
                        &mut dw,
                        ckk,
                        (&gy0, nv),
                        (&xp, &xoff, Some(&chunks)),
                    );
                }
            } else {
                pad_planes(gysrc, (d.o, d.ho, d.wo), (hph, wph), (0, cols), 0, &mut gy0);
                wide_dw(d, cols, (&mut dw, &mut dwt), &xp, &gy0);
            }
            let Some(gxg) = gxg else {
                continue;
            };
            if st == 1 {
                pad_planes(
                    gysrc,
                    (d.o, d.ho, d.wo),
                    (hph, wph),
                    (q, cols),
                    d.tail(),
                    &mut gyq,
                );
                #[cfg(target_arch = "x86_64")]
                if d.compact() {
                    compact_gx(d, ns, gxg, (&wflip, &gyq), &mut wide);
                    continue;
                }
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
