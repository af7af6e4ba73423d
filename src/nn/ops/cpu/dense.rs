//! Linear layers and row-wise L2 normalisation.

use dfdx::prelude::*;
use gemm::Parallelism;

use crate::nn::ops::cpu::buffers::{read_vec, view};
use crate::nn::ops::cpu::products::mm;
use crate::nn::ops::timing;
use crate::nn::ops::{T1, T2};

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
    let mut yv = vec![0.0; n * out];
    if let Some(b) = &b {
        let bv = view(b);
        yv.chunks_mut(out.max(1))
            .for_each(|r| r.copy_from_slice(bv));
    }
    mm(
        (n, out, fin),
        &mut yv,
        out,
        b.is_some(),
        (view(&x), fin, 1),
        (view(&w), 1, fin),
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
                (view(&w), fin, 1),
                Parallelism::Rayon(0),
            );
            mm(
                (out, fin, n),
                grads.get_or_alloc_mut(&wg)?,
                fin,
                true,
                (&gy, 1, out),
                (view(&x), fin, 1),
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
    let mut yv = read_vec(&x);
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
