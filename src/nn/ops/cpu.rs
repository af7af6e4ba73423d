//! Fast CPU kernels: rayon over samples (or channels), gemm 0.19 for the matrix
//! products, registered on dfdx's tape as custom backward ops.
//!
//! Data moves in and out of dfdx storage with `copy_into` (a memcpy of a contiguous
//! tensor) and `tensor_from_vec` (no copy). A kernel keeps the host copies it needs
//! for backward only when the tape records (`T::OWNS_TAPE`).

use dfdx::prelude::*;
use gemm::Parallelism;
use rayon::prelude::*;

use super::timing;
use super::{BnConfig, BnRunning, EngineDevice, T1, T2, T4, Window};

/// Takes a gradient buffer out of `Gradients` (leaving an empty one): the output
/// gradient of an op is read by that op's backward only, so moving it saves a copy
/// and frees its memory early.
macro_rules! take_grad {
    ($grads:expr, $ghost:expr) => {
        std::mem::take(&mut **$grads.get_or_alloc_mut(&$ghost)?)
    };
}

/// A host copy of a contiguous tensor.
fn read<S: Shape, T>(t: &Tensor<S, f32, Cpu, T>) -> Vec<f32> {
    let mut v = vec![0.0; t.shape().num_elements()];
    t.copy_into(&mut v);
    v
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `dst (m×n, row stride ldd) = [dst +] a·b`, with `a` and `b` given by row and
/// column strides so transposes cost nothing.
#[allow(clippy::too_many_arguments)]
fn mm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    acc: bool,
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(dst.len() > last(ldd, 1, m, n));
    if k == 0 {
        if !acc {
            for r in 0..m {
                dst[r * ldd..r * ldd + n].fill(0.0);
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
            1,
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

/// Output columns `ox` whose input column `ox·s + kj - p` lies inside `[0, w)`.
fn valid_range(w: usize, wo: usize, kj: usize, win: Window) -> (usize, usize) {
    let (s, p) = (win.stride, win.padding);
    let lo = if kj >= p { 0 } else { (p - kj).div_ceil(s) };
    let hi = if w + p > kj {
        ((w - 1 + p - kj) / s + 1).min(wo)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Geometry of one convolution call.
#[derive(Clone, Copy)]
struct ConvDims {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    ho: usize,
    wo: usize,
    win: Window,
}

impl ConvDims {
    fn ckk(&self) -> usize {
        self.c * self.win.kernel * self.win.kernel
    }
    fn direct(&self) -> bool {
        self.win.kernel == 1 && self.win.stride == 1 && self.win.padding == 0
    }
}

/// One sample `(c, h, w)` → columns `(c·k·k, ho·wo)`.
fn im2col(x: &[f32], d: ConvDims, col: &mut [f32]) {
    let k = d.win.kernel;
    let howo = d.ho * d.wo;
    for ci in 0..d.c {
        let xc = &x[ci * d.h * d.w..(ci + 1) * d.h * d.w];
        for ki in 0..k {
            for kj in 0..k {
                let row = &mut col[((ci * k + ki) * k + kj) * howo..][..howo];
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

/// Adds columns `(c·k·k, ho·wo)` back into one sample's gradient `(c, h, w)`.
fn col2im_add(col: &[f32], d: ConvDims, gx: &mut [f32]) {
    let k = d.win.kernel;
    let howo = d.ho * d.wo;
    for ci in 0..d.c {
        let gc = &mut gx[ci * d.h * d.w..(ci + 1) * d.h * d.w];
        for ki in 0..k {
            for kj in 0..k {
                let row = &col[((ci * k + ki) * k + kj) * howo..][..howo];
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

fn conv_forward(x: &[f32], wt: &[f32], bias: Option<&[f32]>, n: usize, d: ConvDims) -> Vec<f32> {
    let (ckk, howo, chw) = (d.ckk(), d.ho * d.wo, d.c * d.h * d.w);
    let mut y = vec![0.0; n * d.o * howo];
    let chunk = n.div_ceil(threads()).max(1);
    y.par_chunks_mut(chunk * d.o * howo)
        .zip(x.par_chunks(chunk * chw))
        .for_each(|(yc, xc)| {
            let mut col = if d.direct() {
                Vec::new()
            } else {
                vec![0.0; ckk * howo]
            };
            for (ys, xs) in yc.chunks_mut(d.o * howo).zip(xc.chunks(chw)) {
                let cols: &[f32] = if d.direct() {
                    xs
                } else {
                    im2col(xs, d, &mut col);
                    &col
                };
                mm(
                    (d.o, howo, ckk),
                    ys,
                    howo,
                    false,
                    (wt, ckk, 1),
                    (cols, howo, 1),
                    Parallelism::None,
                );
                if let Some(b) = bias {
                    for (oc, plane) in ys.chunks_mut(howo).enumerate() {
                        plane.iter_mut().for_each(|v| *v += b[oc]);
                    }
                }
            }
        });
    y
}

/// Accumulates the input gradient into `gx` and returns the weight gradient.
fn conv_backward(
    x: &[f32],
    wt: &[f32],
    gy: &[f32],
    gx: &mut [f32],
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    let (ckk, howo, chw) = (d.ckk(), d.ho * d.wo, d.c * d.h * d.w);
    let chunk = n.div_ceil(threads()).max(1);
    let wlen = d.o * ckk;
    gx.par_chunks_mut(chunk * chw)
        .zip(x.par_chunks(chunk * chw))
        .zip(gy.par_chunks(chunk * d.o * howo))
        .map(|((gxc, xc), gyc)| {
            let mut dw = vec![0.0; wlen];
            let (mut col, mut dcol) = if d.direct() {
                (Vec::new(), Vec::new())
            } else {
                (vec![0.0; ckk * howo], vec![0.0; ckk * howo])
            };
            for ((gxs, xs), gys) in gxc
                .chunks_mut(chw)
                .zip(xc.chunks(chw))
                .zip(gyc.chunks(d.o * howo))
            {
                let cols: &[f32] = if d.direct() {
                    xs
                } else {
                    im2col(xs, d, &mut col);
                    &col
                };
                // dW (o×ckk) += gy (o×howo) · colsᵀ
                mm(
                    (d.o, ckk, howo),
                    &mut dw,
                    ckk,
                    true,
                    (gys, howo, 1),
                    (cols, 1, howo),
                    Parallelism::None,
                );
                // dcols (ckk×howo) = Wᵀ · gy
                if d.direct() {
                    mm(
                        (ckk, howo, d.o),
                        gxs,
                        howo,
                        true,
                        (wt, 1, ckk),
                        (gys, howo, 1),
                        Parallelism::None,
                    );
                } else {
                    mm(
                        (ckk, howo, d.o),
                        &mut dcol,
                        howo,
                        false,
                        (wt, 1, ckk),
                        (gys, howo, 1),
                        Parallelism::None,
                    );
                    col2im_add(&dcol, d, gxs);
                }
            }
            dw
        })
        .reduce(
            || vec![0.0; wlen],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

fn add_assign(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(a, b)| *a += b));
}

/// Per-channel sums of `v` laid out `(n, c, plane)`.
fn channel_sums(
    v: &[f32],
    c: usize,
    plane: usize,
    f: impl Fn(usize, usize) -> f32 + Sync,
) -> Vec<f32> {
    let n = v.len() / (c * plane).max(1);
    (0..c)
        .into_par_iter()
        .map(|ci| {
            let mut s = 0.0f64;
            for ni in 0..n {
                let base = (ni * c + ci) * plane;
                let mut acc = 0.0f32;
                for i in base..base + plane {
                    acc += f(i, ci);
                }
                s += acc as f64;
            }
            s as f32
        })
        .collect()
}

/// Fast conv2d (im2col + gemm per sample, rayon over samples).
pub fn conv2d<T: Tape<f32, Cpu>>(
    x: T4<Cpu, T>,
    w: T4<Cpu, T>,
    b: Option<T1<Cpu, T>>,
    win: Window,
) -> T4<Cpu, T> {
    let _t = timing::start("conv2d.fwd");
    let (n, c, h, wd) = *x.shape();
    let o = w.shape().0;
    let d = ConvDims {
        c,
        h,
        w: wd,
        o,
        ho: win.out_size(h).expect("window fits"),
        wo: win.out_size(wd).expect("window fits"),
        win,
    };
    let (x, tx) = x.contiguous().split_tape();
    let (w, tw) = w.contiguous().split_tape();
    let mut tape = tx.merge(tw);
    let b = b.map(|b| {
        let (b, tb) = b.split_tape();
        tape = std::mem::take(&mut tape).merge(tb);
        b
    });
    let xv = read(&x);
    let wv = read(&w);
    let bv = b.as_ref().map(read);
    let yv = conv_forward(&xv, &wv, bv.as_deref(), n, d);
    let y = x.device().tensor_from_vec(yv, (n, o, d.ho, d.wo));
    if T::OWNS_TAPE {
        let (xg, wg, bg, yg) = (
            x.ghost(),
            w.ghost(),
            b.as_ref().map(|b| b.ghost()),
            y.ghost(),
        );
        tape.add_backward_op(move |grads| {
            let _t = timing::start("conv2d.bwd");
            let gy = take_grad!(grads, yg);
            let dw = {
                let gx = grads.get_or_alloc_mut(&xg)?;
                conv_backward(&xv, &wv, &gy, gx, n, d)
            };
            add_assign(grads.get_or_alloc_mut(&wg)?, &dw);
            if let Some(bg) = bg {
                let db = channel_sums(&gy, o, d.ho * d.wo, |i, _| gy[i]);
                add_assign(grads.get_or_alloc_mut(&bg)?, &db);
            }
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// Fast max pooling (argmax kept for backward).
pub fn max_pool2d<T: Tape<f32, Cpu>>(x: T4<Cpu, T>, win: Window) -> T4<Cpu, T> {
    let _t = timing::start("max_pool.fwd");
    let (n, c, h, w) = *x.shape();
    let ho = win.out_size(h).expect("window fits");
    let wo = win.out_size(w).expect("window fits");
    let (x, mut tape) = x.contiguous().split_tape();
    let xv = read(&x);
    let mut yv = vec![0.0; n * c * ho * wo];
    let mut arg = vec![0u32; n * c * ho * wo];
    yv.par_chunks_mut(ho * wo)
        .zip(arg.par_chunks_mut(ho * wo))
        .zip(xv.par_chunks(h * w))
        .for_each(|((yp, ap), xp)| {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut best = f32::NEG_INFINITY;
                    let mut at = u32::MAX;
                    for ki in 0..win.kernel {
                        let iy = (oy * win.stride + ki) as isize - win.padding as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kj in 0..win.kernel {
                            let ix = (ox * win.stride + kj) as isize - win.padding as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let i = iy as usize * w + ix as usize;
                            if at == u32::MAX || xp[i] > best {
                                best = xp[i];
                                at = i as u32;
                            }
                        }
                    }
                    yp[oy * wo + ox] = best;
                    ap[oy * wo + ox] = at;
                }
            }
        });
    drop(xv);
    let y = x.device().tensor_from_vec(yv, (n, c, ho, wo));
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let _t = timing::start("max_pool.bwd");
            let gy = take_grad!(grads, yg);
            let gx = grads.get_or_alloc_mut(&xg)?;
            gx.par_chunks_mut(h * w)
                .zip(gy.par_chunks(ho * wo))
                .zip(arg.par_chunks(ho * wo))
                .for_each(|((gp, gyp), ap)| {
                    for (g, &a) in gyp.iter().zip(ap) {
                        if a != u32::MAX {
                            gp[a as usize] += g;
                        }
                    }
                });
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// Fast global average pooling.
pub fn global_avg_pool<T: Tape<f32, Cpu>>(x: T4<Cpu, T>) -> T2<Cpu, T> {
    let _t = timing::start("avg_pool.fwd");
    let (n, c, h, w) = *x.shape();
    let hw = h * w;
    let (x, mut tape) = x.contiguous().split_tape();
    let xv = read(&x);
    let yv: Vec<f32> = xv
        .par_chunks(hw.max(1))
        .map(|p| p.iter().sum::<f32>() / hw as f32)
        .collect();
    let y = x.device().tensor_from_vec(yv, (n, c));
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let gy = take_grad!(grads, yg);
            let gx = grads.get_or_alloc_mut(&xg)?;
            gx.par_chunks_mut(hw.max(1))
                .zip(gy.par_iter())
                .for_each(|(p, g)| p.iter_mut().for_each(|v| *v += g / hw as f32));
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// Fast fused batch norm (statistics, normalisation and affine in two passes).
pub fn batch_norm2d<T: Tape<f32, Cpu>>(
    x: T4<Cpu, T>,
    gamma: T1<Cpu, T>,
    beta: T1<Cpu, T>,
    running: &BnRunning<Cpu>,
    train: bool,
    cfg: BnConfig,
) -> (T4<Cpu, T>, Option<BnRunning<Cpu>>) {
    let _t = timing::start("batch_norm.fwd");
    let shape = *x.shape();
    let (n, c, h, w) = shape;
    let plane = h * w;
    let m = n * plane;
    let (x, tx) = x.contiguous().split_tape();
    let (g, tg) = gamma.split_tape();
    let (b, tb) = beta.split_tape();
    let mut tape = tx.merge(tg).merge(tb);
    let xv = read(&x);
    let gv = read(&g);
    let bv = read(&b);
    let (mean, var) = if train {
        let mean: Vec<f32> = channel_sums(&xv, c, plane, |i, _| xv[i])
            .into_iter()
            .map(|s| s / m as f32)
            .collect();
        let var: Vec<f32> = channel_sums(&xv, c, plane, |i, ci| {
            let d = xv[i] - mean[ci];
            d * d
        })
        .into_iter()
        .map(|s| s / m as f32)
        .collect();
        (mean, var)
    } else {
        (read(&running.mean), read(&running.var))
    };
    let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + cfg.eps).sqrt()).collect();
    let mut yv = vec![0.0; xv.len()];
    yv.par_chunks_mut(plane.max(1))
        .zip(xv.par_chunks(plane.max(1)))
        .enumerate()
        .for_each(|(i, (yp, xp))| {
            let ci = i % c;
            let s = gv[ci] * inv[ci];
            let t = bv[ci] - mean[ci] * s;
            yp.iter_mut().zip(xp).for_each(|(y, x)| *y = x * s + t);
        });
    let new = train.then(|| {
        let mo = cfg.momentum;
        let unbias = m as f32 / (m as f32 - 1.0).max(1.0);
        let rm = read(&running.mean);
        let rv = read(&running.var);
        let nm: Vec<f32> = rm
            .iter()
            .zip(&mean)
            .map(|(r, v)| r * (1.0 - mo) + v * mo)
            .collect();
        let nv: Vec<f32> = rv
            .iter()
            .zip(&var)
            .map(|(r, v)| r * (1.0 - mo) + v * unbias * mo)
            .collect();
        BnRunning {
            mean: x.device().tensor_from_vec(nm, (c,)),
            var: x.device().tensor_from_vec(nv, (c,)),
        }
    });
    let y = x.device().tensor_from_vec(yv, shape);
    if T::OWNS_TAPE {
        let (xg, gg, bg, yg) = (x.ghost(), g.ghost(), b.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let _t = timing::start("batch_norm.bwd");
            let gy = take_grad!(grads, yg);
            let xhat = |i: usize, ci: usize| (xv[i] - mean[ci]) * inv[ci];
            let sum_gy = channel_sums(&gy, c, plane, |i, _| gy[i]);
            let sum_gyx = channel_sums(&gy, c, plane, |i, ci| gy[i] * xhat(i, ci));
            {
                let gx = grads.get_or_alloc_mut(&xg)?;
                gx.par_chunks_mut(plane.max(1))
                    .enumerate()
                    .for_each(|(p, gp)| {
                        let ci = p % c;
                        let base = p * plane;
                        let k = gv[ci] * inv[ci];
                        if train {
                            let (a, bb) = (sum_gy[ci] / m as f32, sum_gyx[ci] / m as f32);
                            for (j, g) in gp.iter_mut().enumerate() {
                                let i = base + j;
                                *g += k * (gy[i] - a - xhat(i, ci) * bb);
                            }
                        } else {
                            for (j, g) in gp.iter_mut().enumerate() {
                                *g += k * gy[base + j];
                            }
                        }
                    });
            }
            add_assign(grads.get_or_alloc_mut(&gg)?, &sum_gyx);
            add_assign(grads.get_or_alloc_mut(&bg)?, &sum_gy);
            Ok(())
        });
    }
    (y.put_tape(tape), new)
}

/// Fast ReLU on any shape.
pub fn relu<S: Shape, T: Tape<f32, Cpu>>(x: Tensor<S, f32, Cpu, T>) -> Tensor<S, f32, Cpu, T> {
    let _t = timing::start("relu.fwd");
    let shape = *x.shape();
    let (x, mut tape) = x.contiguous().split_tape();
    let mut yv = read(&x);
    yv.par_chunks_mut(1 << 14)
        .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
    let mask: Vec<bool> = if T::OWNS_TAPE {
        yv.par_iter().map(|v| *v > 0.0).collect()
    } else {
        Vec::new()
    };
    let y = x.device().tensor_from_vec(yv, shape);
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let _t = timing::start("relu.bwd");
            let gy = take_grad!(grads, yg);
            let gx = grads.get_or_alloc_mut(&xg)?;
            gx.par_chunks_mut(1 << 14)
                .zip(gy.par_chunks(1 << 14))
                .zip(mask.par_chunks(1 << 14))
                .for_each(|((g, gyc), mc)| {
                    for ((g, gy), m) in g.iter_mut().zip(gyc).zip(mc) {
                        if *m {
                            *g += gy;
                        }
                    }
                });
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// Fast linear layer (gemm, multithreaded by gemm itself).
pub fn linear<T: Tape<f32, Cpu>>(
    x: T2<Cpu, T>,
    w: T2<Cpu, T>,
    b: Option<T1<Cpu, T>>,
) -> T2<Cpu, T> {
    let _t = timing::start("linear.fwd");
    let (n, fin) = *x.shape();
    let out = w.shape().0;
    let (x, tx) = x.contiguous().split_tape();
    let (w, tw) = w.contiguous().split_tape();
    let mut tape = tx.merge(tw);
    let b = b.map(|b| {
        let (b, tb) = b.split_tape();
        tape = std::mem::take(&mut tape).merge(tb);
        b
    });
    let xv = read(&x);
    let wv = read(&w);
    let mut yv = vec![0.0; n * out];
    if let Some(b) = &b {
        let bv = read(b);
        yv.chunks_mut(out.max(1))
            .for_each(|r| r.copy_from_slice(&bv));
    }
    mm(
        (n, out, fin),
        &mut yv,
        out,
        b.is_some(),
        (&xv, fin, 1),
        (&wv, 1, fin),
        Parallelism::Rayon(0),
    );
    let y = x.device().tensor_from_vec(yv, (n, out));
    if T::OWNS_TAPE {
        let (xg, wg, bg, yg) = (
            x.ghost(),
            w.ghost(),
            b.as_ref().map(|b| b.ghost()),
            y.ghost(),
        );
        tape.add_backward_op(move |grads| {
            let _t = timing::start("linear.bwd");
            let gy = take_grad!(grads, yg);
            mm(
                (n, fin, out),
                grads.get_or_alloc_mut(&xg)?,
                fin,
                true,
                (&gy, out, 1),
                (&wv, fin, 1),
                Parallelism::Rayon(0),
            );
            mm(
                (out, fin, n),
                grads.get_or_alloc_mut(&wg)?,
                fin,
                true,
                (&gy, 1, out),
                (&xv, fin, 1),
                Parallelism::Rayon(0),
            );
            if let Some(bg) = bg {
                let gb = grads.get_or_alloc_mut(&bg)?;
                for r in gy.chunks(out.max(1)) {
                    gb.iter_mut().zip(r).for_each(|(a, v)| *a += v);
                }
            }
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// Fast row-wise L2 normalisation.
pub fn l2_normalize<T: Tape<f32, Cpu>>(x: T2<Cpu, T>, eps: f32) -> T2<Cpu, T> {
    let (n, f) = *x.shape();
    let (x, mut tape) = x.contiguous().split_tape();
    let mut yv = read(&x);
    let norms: Vec<f32> = yv
        .chunks_mut(f.max(1))
        .map(|r| {
            let nrm = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(eps);
            r.iter_mut().for_each(|v| *v /= nrm);
            nrm
        })
        .collect();
    let y = x.device().tensor_from_vec(yv.clone(), (n, f));
    if T::OWNS_TAPE {
        let (xg, yg) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let gy = take_grad!(grads, yg);
            let gx = grads.get_or_alloc_mut(&xg)?;
            for (r, nrm) in norms.iter().enumerate() {
                let (ys, gys) = (&yv[r * f..(r + 1) * f], &gy[r * f..(r + 1) * f]);
                let gxs = &mut gx[r * f..(r + 1) * f];
                // Below eps the norm is a constant, so only the direct term remains.
                let dot = if *nrm > eps {
                    ys.iter().zip(gys).map(|(a, b)| a * b).sum::<f32>()
                } else {
                    0.0
                };
                for ((g, gyv), yv) in gxs.iter_mut().zip(gys).zip(ys) {
                    *g += (gyv - yv * dot) / nrm;
                }
            }
            Ok(())
        });
    }
    y.put_tape(tape)
}

impl EngineDevice for Cpu {
    fn conv2d<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        w: T4<Self, T>,
        b: Option<T1<Self, T>>,
        win: Window,
    ) -> T4<Self, T> {
        conv2d(x, w, b, win)
    }
    fn max_pool2d<T: Tape<f32, Self>>(x: T4<Self, T>, win: Window) -> T4<Self, T> {
        max_pool2d(x, win)
    }
    fn global_avg_pool<T: Tape<f32, Self>>(x: T4<Self, T>) -> T2<Self, T> {
        global_avg_pool(x)
    }
    fn batch_norm2d<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        gamma: T1<Self, T>,
        beta: T1<Self, T>,
        running: &BnRunning<Self>,
        train: bool,
        cfg: BnConfig,
    ) -> (T4<Self, T>, Option<BnRunning<Self>>) {
        batch_norm2d(x, gamma, beta, running, train, cfg)
    }
    fn relu4<T: Tape<f32, Self>>(x: T4<Self, T>) -> T4<Self, T> {
        relu(x)
    }
    fn relu2<T: Tape<f32, Self>>(x: T2<Self, T>) -> T2<Self, T> {
        relu(x)
    }
    fn linear<T: Tape<f32, Self>>(
        x: T2<Self, T>,
        w: T2<Self, T>,
        b: Option<T1<Self, T>>,
    ) -> T2<Self, T> {
        linear(x, w, b)
    }
    fn l2_normalize<T: Tape<f32, Self>>(x: T2<Self, T>, eps: f32) -> T2<Self, T> {
        l2_normalize(x, eps)
    }
}
