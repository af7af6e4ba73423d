//! Batch norm (fused with ReLU where asked) and the per-channel reductions.

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::nn::ops::cpu::add_assign;
use crate::nn::ops::cpu::buffers::{filled, read_vec, view};
use crate::nn::ops::kernels;
use crate::nn::ops::timing;
use crate::nn::ops::{BnConfig, BnRunning, T1, T4};

/// For each channel of data laid out `(n, c, plane)`, the two sums `f(ci, start)`
/// returns for each of the channel's planes (starting at `start`), accumulated in
/// f64 across planes.
pub(crate) fn channel_pair_sums(
    (n, c, plane): (usize, usize, usize),
    f: impl Fn(usize, usize) -> (f32, f32) + Sync,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ci| {
            (0..n).fold((0.0, 0.0), |(a, b), ni| {
                let (pa, pb) = f(ci, (ni * c + ci) * plane);
                (a + pa as f64, b + pb as f64)
            })
        })
        .collect()
}

/// Per-channel sums of `v` laid out `(n, c, plane)`, in f64 across planes.
pub(crate) fn channel_sums(v: &[f32], c: usize, plane: usize) -> Vec<f32> {
    let n = v.len() / (c * plane).max(1);
    channel_pair_sums((n, c, plane), |_, o| (kernels::sum(&v[o..o + plane]), 0.0))
        .into_iter()
        .map(|(s, _)| s as f32)
        .collect()
}

/// Per-channel batch mean and biased variance of `x` laid out `(n, c, plane)`: one
/// pass of shifted sums (shift = the channel's first value), combined in f64.
pub(crate) fn channel_moments(x: &[f32], c: usize, plane: usize) -> (Vec<f32>, Vec<f32>) {
    let n = x.len() / (c * plane).max(1);
    let m = (n * plane).max(1) as f64;
    let shift = |ci: usize| x[ci * plane];
    channel_pair_sums((n, c, plane), |ci, o| {
        kernels::moments(&x[o..o + plane], shift(ci))
    })
    .into_iter()
    .enumerate()
    .map(|(ci, (s, q))| {
        let d = s / m;
        (
            (shift(ci) as f64 + d) as f32,
            (q / m - d * d).max(0.0) as f32,
        )
    })
    .unzip()
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
    bn_impl(x, gamma, beta, running, train, cfg, false)
}

/// Batch norm followed by ReLU in one kernel: the ReLU mask is recomputed from the
/// saved input in backward, so nothing extra is stored.
pub fn batch_norm2d_relu<T: Tape<f32, Cpu>>(
    x: T4<Cpu, T>,
    gamma: T1<Cpu, T>,
    beta: T1<Cpu, T>,
    running: &BnRunning<Cpu>,
    train: bool,
    cfg: BnConfig,
) -> (T4<Cpu, T>, Option<BnRunning<Cpu>>) {
    bn_impl(x, gamma, beta, running, train, cfg, true)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_impl<T: Tape<f32, Cpu>>(
    x: T4<Cpu, T>,
    gamma: T1<Cpu, T>,
    beta: T1<Cpu, T>,
    running: &BnRunning<Cpu>,
    train: bool,
    cfg: BnConfig,
    relu: bool,
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
    let xv = view(&x);
    let (gv, bv) = (view(&g), view(&b));
    let (mean, var) = if train {
        channel_moments(xv, c, plane)
    } else {
        (read_vec(&running.mean), read_vec(&running.var))
    };
    // Synchronised batch norm (see `bn_sync`): moments and gradient sums over all ranks.
    let sync = if train {
        crate::nn::ops::bn_sync::current()
    } else {
        None
    };
    let (mut mean, mut var) = (mean, var);
    let m = match &sync {
        Some(h) => h.moments(&mut mean, &mut var, m),
        None => m,
    };
    let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + cfg.eps).sqrt()).collect();
    // Per channel, y = x·s + t.
    let scale: Vec<f32> = (0..c).map(|ci| gv[ci] * inv[ci]).collect();
    let shift: Vec<f32> = (0..c).map(|ci| bv[ci] - mean[ci] * scale[ci]).collect();
    // SAFETY: `affine_into` writes all of its output (it asserts equal lengths).
    let yv = unsafe {
        filled(xv.len(), plane.max(1), |i, yp| {
            let ci = i % c;
            let xp = &xv[i * plane..][..yp.len()];
            kernels::affine_into(xp, yp, scale[ci], shift[ci], relu);
        })
    };
    let new = train.then(|| {
        let mo = cfg.momentum;
        let unbias = m as f32 / (m as f32 - 1.0).max(1.0);
        let rm = read_vec(&running.mean);
        let rv = read_vec(&running.var);
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
        // Backward reads the input from its tensor (kept alive here).
        tape.add_backward_op(move |grads| {
            let _t = timing::start("batch_norm.bwd");
            let gy = take_grad!(grads, yg);
            let xv = view(&x);
            // Per channel: Σ g and Σ g·(x − mean), g masked by the fused ReLU.
            let (sum_gy, sum_gxc): (Vec<f32>, Vec<f32>) =
                channel_pair_sums((n, c, plane), |ci, o| {
                    kernels::bn_grad_sums(
                        &xv[o..o + plane],
                        &gy[o..o + plane],
                        mean[ci],
                        scale[ci],
                        shift[ci],
                        relu,
                    )
                })
                .into_iter()
                .map(|(a, b)| (a as f32, b as f32))
                .unzip();
            let sum_gyx: Vec<f32> = (0..c).map(|ci| sum_gxc[ci] * inv[ci]).collect();
            // Synchronised: the input gradient uses the sums over all ranks; γ and β
            // keep this rank's sums (the gradient average adds the ranks up).
            let (sum_gy_all, sum_gyx_all) = match &sync {
                Some(h) => {
                    let (mut a, mut b) = (sum_gy.clone(), sum_gxc.clone());
                    h.grad_sums(&mut a, &mut b);
                    let b = (0..c).map(|ci| b[ci] * inv[ci]).collect();
                    (a, b)
                }
                None => (Vec::new(), Vec::new()),
            };
            let (sgy, sgyx) = if sync.is_some() {
                (&sum_gy_all, &sum_gyx_all)
            } else {
                (&sum_gy, &sum_gyx)
            };
            {
                // gx = k·(g − Σg/m − x̂·Σg·x̂/m) with x̂ = (x − mean)·inv, written as
                // gx += k·g + c0 + c1·x.
                let coef: Vec<(f32, f32)> = (0..c)
                    .map(|ci| {
                        if !train {
                            return (0.0, 0.0);
                        }
                        let k = scale[ci];
                        let (a, bb) = (sgy[ci] / m as f32, sgyx[ci] / m as f32);
                        let c1 = -k * bb * inv[ci];
                        (-k * a - c1 * mean[ci], c1)
                    })
                    .collect();
                let gx = grads.get_or_alloc_mut(&xg)?;
                gx.par_chunks_mut(plane.max(1))
                    .zip(xv.par_chunks(plane.max(1)))
                    .zip(gy.par_chunks(plane.max(1)))
                    .enumerate()
                    .for_each(|(p, ((gp, xp), gyp))| {
                        let ci = p % c;
                        kernels::bn_grad_input(gp, xp, gyp, coef[ci], scale[ci], shift[ci], relu);
                    });
            }
            add_assign(grads.get_or_alloc_mut(&gg)?, &sum_gyx);
            add_assign(grads.get_or_alloc_mut(&bg)?, &sum_gy);
            Ok(())
        });
    }
    (y.put_tape(tape), new)
}
