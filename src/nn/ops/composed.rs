//! The ops as compositions of dfdx's own ops: the device-generic (CUDA) path and the
//! reference the fast CPU kernels are tested against.
//!
//! Convolution and max pooling gather image patches with an index tensor built on the
//! host (an extra row of zeros, or of -inf, stands for the padding), then use one
//! `matmul` or one `max` over the window axis.

use dfdx::prelude::*;

use super::{BnConfig, BnRunning, T1, T2, T4, Window};

/// Rows of `(c·h·w + 1)`: the image positions `(ci, iy, ix)` a window covers, with
/// `c·h·w` (the padding row) for positions outside the image. Order: `outer` then
/// window offsets `(ki, kj)`, as chosen by `window_last`.
fn patch_index(c: usize, h: usize, w: usize, win: Window, window_last: bool) -> Vec<usize> {
    let ho = win.out_size(h).expect("window fits");
    let wo = win.out_size(w).expect("window fits");
    let k = win.kernel;
    let pad_row = c * h * w;
    let at = |ci: usize, oy: usize, ox: usize, ki: usize, kj: usize| {
        let iy = (oy * win.stride + ki) as isize - win.padding as isize;
        let ix = (ox * win.stride + kj) as isize - win.padding as isize;
        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
            pad_row
        } else {
            ci * h * w + iy as usize * w + ix as usize
        }
    };
    let mut idx = Vec::with_capacity(c * k * k * ho * wo);
    for ci in 0..c {
        if window_last {
            for oy in 0..ho {
                for ox in 0..wo {
                    for ki in 0..k {
                        for kj in 0..k {
                            idx.push(at(ci, oy, ox, ki, kj));
                        }
                    }
                }
            }
        } else {
            for ki in 0..k {
                for kj in 0..k {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            idx.push(at(ci, oy, ox, ki, kj));
                        }
                    }
                }
            }
        }
    }
    idx
}

/// `(n, c, h, w)` → `(c·h·w + 1, n)`, the last row filled with `fill`.
fn rows_with_pad<D: Device<f32>, T: Tape<f32, D>>(x: T4<D, T>, fill: f32) -> T2<D, T> {
    let (n, c, h, w) = *x.shape();
    let dev = x.device().clone();
    let xt = x
        .permute::<_, Axes4<1, 2, 3, 0>>()
        .reshape_like(&(c * h * w, n));
    let pad: T2<D, NoneTape> = dev.tensor_from_vec(vec![fill; n], (1usize, n));
    (xt, pad).concat_along(Axis::<0>)
}

/// Convolution as im2col (`gather`) + `matmul`.
pub fn conv2d<D: Device<f32>, T: Tape<f32, D>>(
    x: T4<D, T>,
    w: T4<D, T>,
    b: Option<T1<D, T>>,
    win: Window,
) -> T4<D, T> {
    let (n, c, h, wd) = *x.shape();
    let o = w.shape().0;
    let k = win.kernel;
    let ho = win.out_size(h).expect("window fits");
    let wo = win.out_size(wd).expect("window fits");
    let dev = x.device().clone();
    let idx = dev.tensor_from_vec(patch_index(c, h, wd, win, false), (c * k * k * ho * wo,));
    let rows = rows_with_pad(x, 0.0);
    let cols: T2<D, T> = rows.gather(idx);
    let cols = cols.reshape_like(&(c * k * k, ho * wo * n));
    let y = w.reshape_like(&(o, c * k * k)).matmul(cols);
    let y = y
        .reshape_like(&(o, ho, wo, n))
        .permute::<_, Axes4<3, 0, 1, 2>>();
    let shape = (n, o, ho, wo);
    match b {
        Some(b) => y + b.broadcast_like::<_, Axes3<0, 2, 3>>(&shape),
        None => y,
    }
}

/// Max pooling as a gather of windows and a `max` over the window axis.
pub fn max_pool2d<D: Device<f32>, T: Tape<f32, D>>(x: T4<D, T>, win: Window) -> T4<D, T> {
    let (n, c, h, w) = *x.shape();
    let kk = win.kernel * win.kernel;
    let ho = win.out_size(h).expect("window fits");
    let wo = win.out_size(w).expect("window fits");
    let dev = x.device().clone();
    let idx = dev.tensor_from_vec(patch_index(c, h, w, win, true), (c * ho * wo * kk,));
    let rows = rows_with_pad(x, f32::NEG_INFINITY);
    let windows: T2<D, T> = rows.gather(idx);
    let m = windows
        .reshape_like(&(c * ho * wo, kk, n))
        .max::<(usize, usize), Axis<1>>();
    m.reshape_like(&(c, ho, wo, n))
        .permute::<_, Axes4<3, 0, 1, 2>>()
}

/// Mean over the spatial axes.
pub fn global_avg_pool<D: Device<f32>, T: Tape<f32, D>>(x: T4<D, T>) -> T2<D, T> {
    x.mean::<(usize, usize), Axes2<2, 3>>()
}

/// Batch norm from reductions and broadcasts.
pub fn batch_norm2d<D: Device<f32>, T: Tape<f32, D>>(
    x: T4<D, T>,
    gamma: T1<D, T>,
    beta: T1<D, T>,
    running: &BnRunning<D>,
    train: bool,
    cfg: BnConfig,
) -> (T4<D, T>, Option<BnRunning<D>>) {
    let shape = *x.shape();
    let (n, _, h, w) = shape;
    if !train {
        let inv = (running.var.clone() + cfg.eps).sqrt().recip();
        let scale = gamma * inv;
        let xc = x - running
            .mean
            .clone()
            .broadcast_like::<_, Axes3<0, 2, 3>>(&shape);
        let y = xc * scale.broadcast_like::<_, Axes3<0, 2, 3>>(&shape)
            + beta.broadcast_like::<_, Axes3<0, 2, 3>>(&shape);
        return (y, None);
    }
    let m = (n * h * w) as f32;
    // Running statistics from an untaped copy: they carry no gradient.
    let xd = x.retaped::<NoneTape>();
    let mean_d = xd.clone().mean::<(usize,), Axes3<0, 2, 3>>();
    let var_d = (xd - mean_d.clone().broadcast_like::<_, Axes3<0, 2, 3>>(&shape))
        .square()
        .mean::<(usize,), Axes3<0, 2, 3>>();
    let unbiased = var_d * (m / (m - 1.0).max(1.0));
    let new = BnRunning {
        mean: running.mean.clone() * (1.0 - cfg.momentum) + mean_d * cfg.momentum,
        var: running.var.clone() * (1.0 - cfg.momentum) + unbiased * cfg.momentum,
    };

    let mean = x.retaped::<T>().mean::<(usize,), Axes3<0, 2, 3>>();
    let xc = x - mean.broadcast_like::<_, Axes3<0, 2, 3>>(&shape);
    let var = xc
        .retaped::<T>()
        .square()
        .mean::<(usize,), Axes3<0, 2, 3>>();
    let inv = (var + cfg.eps).sqrt().recip();
    let xhat = xc * inv.broadcast_like::<_, Axes3<0, 2, 3>>(&shape);
    let y = xhat * gamma.broadcast_like::<_, Axes3<0, 2, 3>>(&shape)
        + beta.broadcast_like::<_, Axes3<0, 2, 3>>(&shape);
    (y, Some(new))
}

/// `x · wᵀ + b`.
pub fn linear<D: Device<f32>, T: Tape<f32, D>>(
    x: T2<D, T>,
    w: T2<D, T>,
    b: Option<T1<D, T>>,
) -> T2<D, T> {
    let n = x.shape().0;
    let out = w.shape().0;
    let y = x.matmul(w.permute::<_, Axes2<1, 0>>());
    match b {
        Some(b) => y + b.broadcast_like::<_, Axis<0>>(&(n, out)),
        None => y,
    }
}

/// Rows divided by `max(‖row‖₂, eps)`.
pub fn l2_normalize<D: Device<f32>, T: Tape<f32, D>>(x: T2<D, T>, eps: f32) -> T2<D, T> {
    let shape = *x.shape();
    let norm = x
        .retaped::<T>()
        .square()
        .sum::<(usize,), Axis<1>>()
        .sqrt()
        .clamp(eps, f32::MAX);
    x / norm.broadcast_like::<_, Axis<1>>(&shape)
}

/// `max(x, 0)`.
pub fn relu<S: Shape, D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor<S, f32, D, T>,
) -> Tensor<S, f32, D, T> {
    x.relu()
}

/// Logits against a constant table: the product with the whole table, then a gather
/// of each row's `m` columns. The table enters untaped, so it gets no gradient.
pub fn bank_logits<D: Device<f32>, T: Tape<f32, D>>(
    f: T2<D, T>,
    bank: &[f32],
    idx: &[usize],
    scale: f32,
) -> T2<D, T> {
    let (n, d) = *f.shape();
    let rows = bank.len() / d.max(1);
    let m = idx.len().checked_div(n).unwrap_or(0);
    let dev = f.device().clone();
    let table: T2<D, NoneTape> = dev.tensor_from_vec(bank.to_vec(), (rows, d));
    let all = (f * scale).matmul(table.permute::<_, Axes2<1, 0>>());
    all.gather(dev.tensor_from_vec(idx.to_vec(), (n, m)))
}
