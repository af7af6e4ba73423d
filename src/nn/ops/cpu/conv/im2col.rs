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
        1 => col2im_strided::<1>(col, d, gx, ld),
        2 => col2im_strided::<2>(col, d, gx, ld),
        _ => col2im_strided::<0>(col, d, gx, ld),
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
