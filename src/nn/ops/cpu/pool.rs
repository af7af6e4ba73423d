//! Max pooling (argmax kept for backward) and global average pooling.

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::nn::ops::cpu::buffers::{view, zeros};
use crate::nn::ops::timing;
use crate::nn::ops::{T2, T4, Window};

/// Fast max pooling (argmax kept for backward).
pub fn max_pool2d<T: Tape<f32, Cpu>>(x: T4<Cpu, T>, win: Window) -> T4<Cpu, T> {
    let _t = timing::start("max_pool.fwd");
    let (n, c, h, w) = *x.shape();
    let ho = win.out_size(h).expect("window fits");
    let wo = win.out_size(w).expect("window fits");
    let (x, mut tape) = x.contiguous().split_tape();
    let xv = view(&x);
    let mut yv = zeros(n * c * ho * wo);
    let mut arg = vec![0u32; n * c * ho * wo];
    yv.par_chunks_mut(ho * wo)
        .zip(arg.par_chunks_mut(ho * wo))
        .zip(xv.par_chunks(h * w))
        .for_each(|((yp, ap), xp)| {
            // Outputs whose window lies inside the plane read their taps without
            // bounds arithmetic (same tap order and tie rule as the general loop
            // below, which takes the borders).
            let (k, st, p) = (win.kernel, win.stride, win.padding);
            let inner = |n: usize, no: usize| {
                let end = (n + p).checked_sub(k).map_or(0, |v| v / st + 1).min(no);
                p.div_ceil(st).min(end)..end
            };
            let (inner_y, inner_x) = (inner(h, ho), inner(w, wo));
            for oy in inner_y.clone() {
                let y0 = oy * st - p;
                for ox in inner_x.clone() {
                    let x0 = ox * st - p;
                    let mut at = y0 * w + x0;
                    let mut best = xp[at];
                    for ki in 0..k {
                        let r0 = (y0 + ki) * w + x0;
                        for (kj, &v) in xp[r0..r0 + k].iter().enumerate() {
                            if v > best {
                                best = v;
                                at = r0 + kj;
                            }
                        }
                    }
                    yp[oy * wo + ox] = best;
                    ap[oy * wo + ox] = at as u32;
                }
            }
            for oy in 0..ho {
                for ox in 0..wo {
                    if inner_y.contains(&oy) && inner_x.contains(&ox) {
                        continue;
                    }
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
    let xv = view(&x);
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
