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
            // ResNet's 3×3 stride-2 stem pool: outputs whose window lies inside the
            // plane read their nine taps without bounds arithmetic (same tap order
            // and tie rule as the general loop below, which takes the borders).
            let (inner_y, inner_x) = if (win.kernel, win.stride, win.padding) == (3, 2, 1) {
                let last = |n: usize, no: usize| (n.saturating_sub(2) / 2 + 1).min(no);
                (1..last(h, ho), 1..last(w, wo))
            } else {
                (0..0, 0..0)
            };
            for oy in inner_y.clone() {
                let rows = [
                    &xp[(2 * oy - 1) * w..][..w],
                    &xp[2 * oy * w..][..w],
                    &xp[(2 * oy + 1) * w..][..w],
                ];
                for ox in inner_x.clone() {
                    let mut best = rows[0][2 * ox - 1];
                    let mut at = (2 * oy - 1) * w + 2 * ox - 1;
                    for (dy, row) in rows.iter().enumerate() {
                        for dx in 0..3 {
                            let v = row[2 * ox - 1 + dx];
                            if v > best {
                                best = v;
                                at = (2 * oy - 1 + dy) * w + 2 * ox - 1 + dx;
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
