//! The ops as compositions of dfdx's own ops: the device-generic (CUDA) path and the
//! reference the fast CPU kernels are tested against.
//!
//! Convolution and max pooling gather image patches with an index tensor built on the
//! host (an extra row of zeros, or of -inf, stands for the padding), then use one
//! `matmul` or one `max` over the window axis.

use dfdx::prelude::*;

use super::update::EntryUpdate;
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

/// The tensor-op form of [`EngineDevice::update_entry`](super::EngineDevice::update_entry):
/// every step of the formula is a dfdx op, so it runs on any device; it *replaces*
/// the parameter and the state tensors (new tensor ids), as `ParamStore::set_data`
/// does. An entry without a gradient gets a zero one first.
pub fn update_entry<D: Device<f32>>(
    u: &EntryUpdate,
    p: &mut T1<D, NoneTape>,
    grads: &mut Gradients<f32, D>,
    slots: &mut [T1<D, NoneTape>],
) -> Result<(), String> {
    u.check(p.shape().0, slots)?;
    grads.try_alloc_for(p).map_err(|err| format!("{err:?}"))?;
    let g = grads.get(p);
    match *u {
        EntryUpdate::Sgd {
            lr,
            momentum,
            nesterov,
            weight_decay,
        } => {
            let mut d = g;
            if weight_decay != 0.0 {
                d = d + p.clone() * weight_decay as f32;
            }
            let d = momentum_direction(slots, d, momentum, nesterov);
            *p = p.clone() - d * lr as f32;
        }
        EntryUpdate::Lars {
            lr,
            momentum,
            nesterov,
            trust,
        } => {
            let mut d = g;
            if let Some(t) = trust {
                let p_norm = norm(p);
                let g_norm = norm(&d);
                if p_norm > 0.0 && g_norm > 0.0 {
                    let wd = t.weight_decay as f32;
                    let mut ratio = t.eta as f32 * p_norm / (g_norm + p_norm * wd + t.eps as f32);
                    if t.clip_lr {
                        ratio = (ratio / lr as f32).min(1.0);
                    }
                    if wd != 0.0 {
                        d = d + p.clone() * wd;
                    }
                    d = d * ratio;
                }
            }
            let d = momentum_direction(slots, d, momentum, nesterov);
            *p = p.clone() - d * lr as f32;
        }
        EntryUpdate::AdamW {
            lr,
            step,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            if weight_decay != 0.0 {
                *p = p.clone() * (1.0 - lr * weight_decay) as f32;
            }
            // 1 − β in f64 then rounded, as PyTorch does with its Python scalars
            // (rounding β first makes 1 − β off by ~5e-5 relative for β2 = 0.999).
            let (b1, b2) = (beta1 as f32, beta2 as f32);
            let (c1, c2) = ((1.0 - beta1) as f32, (1.0 - beta2) as f32);
            let m = slots[0].clone() * b1 + g.clone() * c1;
            let v = slots[1].clone() * b2 + g.square() * c2;
            let bc1 = 1.0 - beta1.powf(step as f64);
            let bc2 = 1.0 - beta2.powf(step as f64);
            let denom = v.clone().sqrt() * (1.0 / bc2.sqrt()) as f32 + eps as f32;
            let upd = (m.clone() / denom) * (lr / bc1) as f32;
            *p = p.clone() - upd;
            slots[0] = m;
            slots[1] = v;
        }
    }
    Ok(())
}

/// `‖t‖₂`, summed by dfdx.
fn norm<D: Device<f32>>(t: &T1<D, NoneTape>) -> f32 {
    t.clone().square().sum::<Rank0, _>().as_vec()[0].sqrt()
}

/// The heavy-ball / Nesterov part shared by SGD and LARS (buffer `slots[0]` when
/// `momentum > 0`); returns the direction.
fn momentum_direction<D: Device<f32>>(
    slots: &mut [T1<D, NoneTape>],
    d: T1<D, NoneTape>,
    momentum: f64,
    nesterov: bool,
) -> T1<D, NoneTape> {
    if momentum == 0.0 {
        return d;
    }
    let mu = momentum as f32;
    let buf = slots[0].clone() * mu + d.clone();
    slots[0] = buf.clone();
    if nesterov { d + buf * mu } else { buf }
}

/// The tensor-op form of [`EngineDevice::gradient_to_host`](super::EngineDevice::gradient_to_host):
/// a copy of the gradient through a dfdx tensor.
pub fn gradient_to_host<D: Device<f32>>(
    p: &T1<D, NoneTape>,
    grads: &mut Gradients<f32, D>,
    host: &mut Vec<f32>,
) -> Result<(), String> {
    grads.try_alloc_for(p).map_err(|err| format!("{err:?}"))?;
    let g = grads.get(p);
    let at = host.len();
    host.resize(at + g.shape().0, 0.0);
    g.copy_into(&mut host[at..]);
    Ok(())
}

/// The tensor-op form of [`EngineDevice::gradient_from_host`](super::EngineDevice::gradient_from_host).
/// dfdx lends no gradient buffer of a generic device for writing, so a backward
/// pass of `Σ p·v` (with `v = scale·host`) computes the gradient `0 + 1·v` into
/// fresh `Gradients`, and that buffer moves into `grads` (equal to the CPU form's
/// values except that a `-0.0` comes back as `+0.0`).
pub fn gradient_from_host<D: Device<f32>>(
    p: &T1<D, NoneTape>,
    grads: &mut Gradients<f32, D>,
    host: &[f32],
    scale: f32,
) -> Result<(), String> {
    let n = p.shape().0;
    if host.len() < n {
        return Err(format!(
            "{} reduced values for a gradient of {n}",
            host.len()
        ));
    }
    let v: Vec<f32> = host[..n].iter().map(|s| s * scale).collect();
    let v = p.device().tensor_from_vec(v, (n,));
    let mut fresh = (p.clone().traced(Gradients::leaky()) * v)
        .sum::<Rank0, _>()
        .backward();
    let src = fresh
        .get_or_alloc_mut(p)
        .map_err(|err| format!("{err:?}"))?;
    let dst = grads
        .get_or_alloc_mut(p)
        .map_err(|err| format!("{err:?}"))?;
    std::mem::swap(dst, src);
    Ok(())
}
