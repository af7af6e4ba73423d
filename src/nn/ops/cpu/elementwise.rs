//! ReLU and the fused residual join `max(a + b, 0)`.

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::nn::ops::T4;
use crate::nn::ops::cpu::buffers::{filled, filled_with, view};
use crate::nn::ops::kernels;
use crate::nn::ops::timing;

/// Fast ReLU on any shape.
pub fn relu<S: Shape, T: Tape<f32, Cpu>>(x: Tensor<S, f32, Cpu, T>) -> Tensor<S, f32, Cpu, T> {
    let _t = timing::start("relu.fwd");
    let shape = *x.shape();
    let (x, mut tape) = x.contiguous().split_tape();
    let xv = view(&x);
    // SAFETY: the assert below holds after the loop wrote `c.len()` elements.
    let yv = unsafe {
        filled(xv.len(), 1 << 14, |i, c| {
            for (o, v) in c.iter_mut().zip(&xv[i << 14..]) {
                o.write(v.max(0.0));
            }
            assert!(
                xv.len() >= (i << 14) + c.len(),
                "relu: every output written"
            );
        })
    };
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

/// Fused residual join `max(a + b, 0)`.
pub fn add_relu<T: Tape<f32, Cpu>>(a: T4<Cpu, T>, b: T4<Cpu, T>) -> T4<Cpu, T> {
    let _t = timing::start("add_relu.fwd");
    let shape = *a.shape();
    let (a, ta) = a.contiguous().split_tape();
    let (b, tb) = b.contiguous().split_tape();
    let mut tape = ta.merge(tb);
    let (av, bv) = (view(&a), view(&b));
    let len = av.len();
    assert_eq!(len, bv.len());
    let mut mask = vec![false; len];
    // SAFETY: `add_relu_into` writes all of its `y` (it asserts that its four slices
    // have equal lengths; `av` and `bv` have `len` elements).
    let yv = unsafe {
        filled_with(len, 1 << 14, &mut mask, |i, y, m| {
            let at = i << 14;
            kernels::add_relu_into(&av[at..][..y.len()], &bv[at..][..y.len()], y, m)
        })
    };
    let y = a.device().tensor_from_vec(yv, shape);
    if T::OWNS_TAPE {
        let (ag, bg, yg) = (a.ghost(), b.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let _t = timing::start("add_relu.bwd");
            let gy = take_grad!(grads, yg);
            // Both input gradients in one pass: take one out of `grads` meanwhile.
            let mut ga = {
                grads.get_or_alloc_mut(&ag)?;
                take_grad!(grads, ag)
            };
            let gb = grads.get_or_alloc_mut(&bg)?;
            if gb.is_empty() && !ga.is_empty() {
                // `a` and `b` are one tensor: its gradient is the one taken out.
                ga.par_chunks_mut(1 << 14)
                    .zip(gy.par_chunks(1 << 14))
                    .zip(mask.par_chunks(1 << 14))
                    .for_each(|((a, g), m)| {
                        // a += g' into `a` and into a zeroed copy, then once more.
                        let mut once = vec![0.0; a.len()];
                        kernels::add_relu_bwd(a, &mut once, g, m);
                        kernels::add_to(a, &once);
                    });
                **grads.get_or_alloc_mut(&ag)? = ga;
                return Ok(());
            }
            ga.par_chunks_mut(1 << 14)
                .zip(gb.par_chunks_mut(1 << 14))
                .zip(gy.par_chunks(1 << 14))
                .zip(mask.par_chunks(1 << 14))
                .for_each(|(((a, b), g), m)| kernels::add_relu_bwd(a, b, g, m));
            **grads.get_or_alloc_mut(&ag)? = ga;
            Ok(())
        });
    }
    y.put_tape(tape)
}
