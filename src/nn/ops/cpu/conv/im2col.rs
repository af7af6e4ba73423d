//! The column-matrix convolution path: im2col, one product per group of samples,
//! col2im for the input gradient.

use crate::nn::ops::Window;
use crate::nn::ops::cpu::buffers::Scratch;
use crate::nn::ops::cpu::conv::{
    ConvDims, LD_PAD, conv_backward_threads, conv_forward_threads, padded_ld, thread_chunk,
};
use crate::nn::ops::cpu::products::{mm_dot, mm_rows};

/// Output columns `ox` whose input column `ox·s + kj - p` lies inside `[0, w)`.
pub(crate) fn valid_range(w: usize, wo: usize, kj: usize, win: Window) -> (usize, usize) {
    let (s, p) = (win.stride, win.padding);
    let lo = if kj >= p { 0 } else { (p - kj).div_ceil(s) };
    let hi = if w + p > kj {
        ((w - 1 + p - kj) / s + 1).min(wo)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// One sample `(c, h, w)` → rows `r` of `col[r·ld ..][.. ho·wo]` (`r` over `c·k·k`).
pub(crate) fn im2col(x: &[f32], d: ConvDims, col: &mut [f32], ld: usize) {
    // The runs are short (a row of a 7×7 or 14×14 output): the stride is a constant
    // in the common cases so each run is a tight loop without bounds checks.
    match d.win.stride {
        1 => im2col_strided::<1>(x, d, col, ld),
        2 => im2col_strided::<2>(x, d, col, ld),
        _ => im2col_strided::<0>(x, d, col, ld),
    }
}

/// Checks the slices [`im2col`] and [`col2im_add`] index without bounds checks.
fn check_lens(x: usize, col: usize, d: ConvDims, ld: usize) {
    let (ckk, howo) = (d.ckk(), d.ho * d.wo);
    assert!(
        x >= d.c * d.h * d.w && ld >= howo && col >= (ckk - 1) * ld + howo,
        "im2col: {x} input and {col} column values for {d:?} at ld {ld}"
    );
}

/// [`im2col`] with the stride `S` (0: read it from `d`).
#[inline(always)]
fn im2col_strided<const S: usize>(x: &[f32], d: ConvDims, col: &mut [f32], ld: usize) {
    let (k, p) = (d.win.kernel, d.win.padding);
    let s = if S == 0 { d.win.stride } else { S };
    check_lens(x.len(), col.len(), d, ld);
    for ci in 0..d.c {
        let xc = &x[ci * d.h * d.w..(ci + 1) * d.h * d.w];
        for ki in 0..k {
            for kj in 0..k {
                let r = (ci * k + ki) * k + kj;
                let (lo, hi) = valid_range(d.w, d.wo, kj, d.win);
                for oy in 0..d.ho {
                    // SAFETY: r·ld + oy·wo + wo ≤ (ckk − 1)·ld + howo ≤ col.len()
                    // (check_lens).
                    let dst = unsafe { col.as_mut_ptr().add(r * ld + oy * d.wo) };
                    let iy = (oy * s + ki) as isize - p as isize;
                    if iy < 0 || iy >= d.h as isize || lo >= hi {
                        // SAFETY: wo values from dst (above).
                        unsafe { std::ptr::write_bytes(dst, 0, d.wo) };
                        continue;
                    }
                    let ix0 = lo * s + kj - p;
                    let xrow = &xc[iy as usize * d.w..(iy as usize + 1) * d.w];
                    // valid_range keeps every read inside the input row.
                    debug_assert!(ix0 + (hi - lo - 1) * s < d.w);
                    let src = xrow.as_ptr();
                    // SAFETY: j < wo for dst; ix0 + (hi − lo − 1)·s < w for src.
                    unsafe {
                        for j in 0..lo {
                            *dst.add(j) = 0.0;
                        }
                        for j in 0..hi - lo {
                            *dst.add(lo + j) = *src.add(ix0 + j * s);
                        }
                        for j in hi..d.wo {
                            *dst.add(j) = 0.0;
                        }
                    }
                }
            }
        }
    }
}

/// Adds rows `col[r·ld ..][.. ho·wo]` back into one sample's gradient `(c, h, w)`.
pub(crate) fn col2im_add(col: &[f32], d: ConvDims, gx: &mut [f32], ld: usize) {
    match d.win.stride {
        1 if d.ho == d.h && d.wo == d.w => col2im_same(col, d, gx, ld),
        1 => col2im_strided::<1>(col, d, gx, ld),
        2 => col2im_strided::<2>(col, d, gx, ld),
        _ => col2im_strided::<0>(col, d, gx, ld),
    }
}

/// [`col2im_add`] at stride 1 with planes of the output's size (padding
/// `(k − 1)/2`): tap `(ki, kj)` adds its block shifted by `(ki − p)·w + kj − p` in
/// one pass over the valid rows, the columns that would wrap into a neighbouring
/// row multiplied by a zero mask. On 8×8 and 4×4 planes the per-row runs of the
/// general loop are 4–8 floats, so its bookkeeping cost more than the adds.
fn col2im_same(col: &[f32], d: ConvDims, gx: &mut [f32], ld: usize) {
    let (k, p, h, w) = (d.win.kernel, d.win.padding as isize, d.h, d.w);
    let hw = h * w;
    check_lens(gx.len(), col.len(), d, ld);
    // masks[kj][t]: 1 where column t mod w, shifted by kj − p, stays in the row.
    let masks: Vec<Vec<f32>> = (0..k)
        .map(|kj| {
            let dx = kj as isize - p;
            (0..hw)
                .map(|t| {
                    let ox = (t % w) as isize + dx;
                    if (0..w as isize).contains(&ox) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    for ci in 0..d.c {
        let gc = &mut gx[ci * hw..(ci + 1) * hw];
        for ki in 0..k {
            let dy = ki as isize - p;
            // Rows oy with 0 ≤ oy + dy < h.
            let oy0 = (-dy).max(0) as usize;
            let oy1 = (h as isize - dy).min(h as isize).max(0) as usize;
            if oy0 >= oy1 {
                continue;
            }
            for (kj, mask) in masks.iter().enumerate() {
                let dx = kj as isize - p;
                if dx.unsigned_abs() >= w {
                    continue;
                }
                let r = (ci * k + ki) * k + kj;
                let len = (oy1 - oy0) * w;
                // The first and last unmasked positions; the masked ones between
                // land inside the plane (in a neighbouring row) and add zero.
                let (t0, t1) = ((-dx).max(0) as usize, len - dx.max(0) as usize);
                let src = &col[r * ld + oy0 * w..][t0..t1];
                let start = ((oy0 as isize + dy) * w as isize + dx + t0 as isize) as usize;
                let dst = &mut gc[start..start + (t1 - t0)];
                for ((g, v), m) in dst.iter_mut().zip(src).zip(&mask[t0..t1]) {
                    *g += v * m;
                }
            }
        }
    }
}

/// [`col2im_add`] with the stride `S` (0: read it from `d`).
#[inline(always)]
fn col2im_strided<const S: usize>(col: &[f32], d: ConvDims, gx: &mut [f32], ld: usize) {
    let (k, p) = (d.win.kernel, d.win.padding);
    let s = if S == 0 { d.win.stride } else { S };
    check_lens(gx.len(), col.len(), d, ld);
    for ci in 0..d.c {
        let gc = &mut gx[ci * d.h * d.w..(ci + 1) * d.h * d.w];
        for ki in 0..k {
            for kj in 0..k {
                let r = (ci * k + ki) * k + kj;
                let (lo, hi) = valid_range(d.w, d.wo, kj, d.win);
                if lo >= hi {
                    continue;
                }
                let ix0 = lo * s + kj - p;
                debug_assert!(ix0 + (hi - lo - 1) * s < d.w);
                for oy in 0..d.ho {
                    let iy = (oy * s + ki) as isize - p as isize;
                    if iy < 0 || iy >= d.h as isize {
                        continue;
                    }
                    let grow = gc[iy as usize * d.w..(iy as usize + 1) * d.w].as_mut_ptr();
                    // SAFETY: as in im2col_strided: the column run lies in `col`
                    // (check_lens), the gradient writes in the row (valid_range).
                    unsafe {
                        let src = col.as_ptr().add(r * ld + oy * d.wo + lo);
                        for j in 0..hi - lo {
                            *grow.add(ix0 + j * s) += *src.add(j);
                        }
                    }
                }
            }
        }
    }
}

/// The column-matrix path of [`super::conv_forward`].
pub(crate) fn conv_forward_im2col(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    let (ckk, howo, chw) = (d.ckk(), d.ho * d.wo, d.c * d.h * d.w);
    let g = d.group(thread_chunk(n));
    conv_forward_threads(x, n, d, |yc, xc| {
        let mut col = Scratch::new(ckk * (g * howo + LD_PAD));
        let mut tmp = Scratch::new(d.o * (g * howo + LD_PAD));
        for (yg, xg) in yc.chunks_mut(g * d.o * howo).zip(xc.chunks(g * chw)) {
            let ns = xg.len() / chw;
            let (cols, ld) = (ns * howo, padded_ld(ns * howo));
            for (s, xs) in xg.chunks(chw).enumerate() {
                im2col(xs, d, &mut col[s * howo..], ld);
            }
            if ns == 1 {
                // One sample: the product already has the output's layout.
                mm_rows(
                    (d.o, cols, ckk),
                    yg,
                    cols,
                    false,
                    (wt, ckk, 1),
                    (&col, ld),
                    d.own(),
                );
            } else {
                mm_rows(
                    (d.o, cols, ckk),
                    &mut tmp,
                    ld,
                    false,
                    (wt, ckk, 1),
                    (&col, ld),
                    d.own(),
                );
                for (s, ys) in yg.chunks_mut(d.o * howo).enumerate() {
                    unpack_sample(ys, &tmp, ld, s, howo);
                }
            }
            if let Some(b) = bias {
                for ys in yg.chunks_mut(d.o * howo) {
                    add_bias(ys, b, howo);
                }
            }
        }
    })
}

/// Sample `s`'s output planes `(o, ho·wo)` from a channel-major product: row `oc`
/// of `cm` (leading dimension `ld`) holds the sample's plane at column `s·ho·wo`.
pub(crate) fn unpack_sample(ys: &mut [f32], cm: &[f32], ld: usize, s: usize, howo: usize) {
    for (oc, plane) in ys.chunks_mut(howo).enumerate() {
        plane.copy_from_slice(&cm[oc * ld + s * howo..][..howo]);
    }
}

/// The inverse of [`unpack_sample`]: sample `s`'s planes `ys` (`(o, ho·wo)`) into
/// column `s·ho·wo` of each row of the channel-major `cm` (leading dimension `ld`).
pub(crate) fn pack_sample(cm: &mut [f32], ld: usize, s: usize, ys: &[f32], howo: usize) {
    for (oc, plane) in ys.chunks(howo).enumerate() {
        cm[oc * ld + s * howo..][..howo].copy_from_slice(plane);
    }
}

/// Adds `b[oc]` to every value of plane `oc` of one sample's output.
pub(crate) fn add_bias(ys: &mut [f32], b: &[f32], howo: usize) {
    for (oc, plane) in ys.chunks_mut(howo).enumerate() {
        plane.iter_mut().for_each(|v| *v += b[oc]);
    }
}

/// The column-matrix path of [`super::conv_backward`].
pub(crate) fn conv_backward_im2col(
    x: &[f32],
    wt: &[f32],
    gy: &[f32],
    gx: Option<&mut [f32]>,
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    let (ckk, howo, chw) = (d.ckk(), d.ho * d.wo, d.c * d.h * d.w);
    let g = d.group(thread_chunk(n));
    conv_backward_threads((x, gy, gx), n, d, |gxc, xc, gyc| {
        let mut dw = vec![0.0; d.o * ckk];
        let mut col = Scratch::new(ckk * (g * howo + LD_PAD));
        let mut dcol = Scratch::new(ckk * (g * howo + LD_PAD));
        let mut gyg = Scratch::new(d.o * (g * howo + LD_PAD));
        let mut gx_groups = gxc.map(|gxc| gxc.chunks_mut(g * chw));
        for (xg, gysrc) in xc.chunks(g * chw).zip(gyc.chunks(g * d.o * howo)) {
            let gxg = gx_groups.as_mut().and_then(|it| it.next());
            let ns = xg.len() / chw;
            let (cols, ld) = (ns * howo, padded_ld(ns * howo));
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
                (d.o, ckk, cols),
                &mut dw,
                ckk,
                (&gyg, ld),
                (&col, ld),
                d.own(),
            );
            let Some(gxg) = gxg else {
                continue;
            };
            // dcol (ckk×ld) = Wᵀ · gy
            mm_rows(
                (ckk, cols, d.o),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The same-size stride-1 col2im against the general one, on odd kernels with
    /// their "same" padding, rectangular and tiny planes, and a leading dimension
    /// wider than one sample's block.
    #[test]
    fn same_size_col2im_matches_the_general_loop() {
        // (c, h, w, kernel)
        for (c, h, w, k) in [
            (3, 8, 8, 3),
            (2, 4, 4, 3),
            (2, 1, 1, 3),
            (2, 2, 2, 3),
            (3, 5, 7, 3),
            (2, 6, 5, 5),
            (2, 3, 3, 7),
            (4, 4, 4, 1),
        ] {
            let win = Window::new(k, 1, (k - 1) / 2);
            let d = ConvDims {
                c,
                h,
                w,
                o: 1,
                ho: h,
                wo: w,
                win,
            };
            let ld = h * w + 3;
            let col: Vec<f32> = (0..d.ckk() * ld)
                .map(|i| ((i * 7919) % 89) as f32 / 89.0 - 0.5)
                .collect();
            let init: Vec<f32> = (0..c * h * w).map(|i| (i % 5) as f32 * 0.25).collect();
            let (mut fast, mut general) = (init.clone(), init);
            col2im_same(&col, d, &mut fast, ld);
            col2im_strided::<1>(&col, d, &mut general, ld);
            for (i, (a, b)) in fast.iter().zip(&general).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6,
                    "c{c} {h}x{w} k{k} at {i}: {a} vs {b}"
                );
            }
        }
    }
}
