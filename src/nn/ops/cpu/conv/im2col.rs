//! The column-matrix convolution path: im2col, one product per group of samples,
//! col2im for the input gradient.

use crate::nn::ops::Window;
use crate::nn::ops::cpu::buffers::Scratch;
use crate::nn::ops::cpu::conv::{
    ConvDims, conv_backward_threads, conv_forward_threads, thread_chunk,
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
pub(crate) fn col2im_add(col: &[f32], d: ConvDims, gx: &mut [f32], ld: usize) {
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

/// The column-matrix path of [`super::conv_backward`].
pub(crate) fn conv_backward_im2col(
    x: &[f32],
    wt: &[f32],
    gy: &[f32],
    gx: &mut [f32],
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
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
