//! The whole-batch column path for small planes: one column matrix for the whole
//! batch (`c·k·k` rows, `n·ho·wo` columns, channel-major), one product per pass
//! split across the threads by `gemm` itself.
//!
//! On late-stage planes (8×8 and below) the per-thread paths give each thread
//! products with few columns: the weights (up to 2048×512) are streamed once per
//! thread and group, and every thread's weight gradient is a full `o·c·k·k` buffer
//! summed at the end. Here the weight gradient is one product whose inner dimension
//! is the whole batch, and no thread sums anything. The price is the layout change
//! (gathering the columns, scattering the product back into `(n, o, ho, wo)`),
//! small on small planes.

use rayon::prelude::*;

use gemm::Parallelism;

use crate::nn::ops::cpu::buffers::{Scratch, zeros};
use crate::nn::ops::cpu::conv::ConvDims;
use crate::nn::ops::cpu::conv::im2col::{add_bias, col2im_add, im2col, unpack_sample};
use crate::nn::ops::cpu::products::mm;
use crate::nn::ops::cpu::threads;

/// The column matrix of the whole batch: row `r = (ci·k + ki)·k + kj` at `r·ld`,
/// column `s·ho·wo + q` (sample `s`, output position `q`; `ld` from
/// [`super::padded_ld`]). Threads take channels.
fn batch_columns(x: &[f32], n: usize, d: ConvDims, ld: usize) -> Scratch {
    let (kk, howo, hw) = (d.win.kernel * d.win.kernel, d.ho * d.wo, d.h * d.w);
    let mut col = Scratch::new(d.ckk() * ld);
    let one = ConvDims { c: 1, ..d };
    col.par_chunks_mut(kk * ld)
        .enumerate()
        .for_each(|(ci, rows)| {
            for s in 0..n {
                let plane = &x[(s * d.c + ci) * hw..][..hw];
                im2col(plane, one, &mut rows[s * howo..], ld);
            }
        });
    col
}

/// The output gradient in the columns' layout: `(o, n·ho·wo)`, rows `ld` apart.
fn channel_major(gy: &[f32], n: usize, o: usize, howo: usize, ld: usize) -> Scratch {
    let mut g = Scratch::new(o * ld);
    g.par_chunks_mut(ld).enumerate().for_each(|(oc, row)| {
        for (s, dst) in row[..n * howo].chunks_mut(howo).enumerate() {
            dst.copy_from_slice(&gy[(s * o + oc) * howo..][..howo]);
        }
    });
    g
}

/// The forward of [`super::conv_forward`] on this path.
pub(crate) fn conv_forward_batched(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    let (ckk, howo) = (d.ckk(), d.ho * d.wo);
    let cols = n * howo;
    let ld = super::padded_ld(cols);
    let col = batch_columns(x, n, d, ld);
    let mut ycm = Scratch::new(d.o * ld);
    mm(
        (d.o, cols, ckk),
        &mut ycm,
        ld,
        false,
        (wt, ckk, 1),
        (&col, ld, 1),
        Parallelism::Rayon(threads()),
    );
    let mut y = zeros(n * d.o * howo);
    y.par_chunks_mut(d.o * howo)
        .enumerate()
        .for_each(|(s, ys)| {
            unpack_sample(ys, &ycm, ld, s, howo);
            if let Some(b) = bias {
                add_bias(ys, b, howo);
            }
        });
    y
}

/// The backward of [`super::conv_backward`] on this path: accumulates the input
/// gradient into `gx` (when given) and returns the weight gradient.
pub(crate) fn conv_backward_batched(
    x: &[f32],
    wt: &[f32],
    gy: &[f32],
    gx: Option<&mut [f32]>,
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    let (ckk, howo, chw) = (d.ckk(), d.ho * d.wo, d.c * d.h * d.w);
    let cols = n * howo;
    let ld = super::padded_ld(cols);
    let col = batch_columns(x, n, d, ld);
    let gycm = channel_major(gy, n, d.o, howo, ld);
    // dW (o×ckk) = gy (o×cols) · colᵀ: the batch is the inner dimension.
    let mut dw = zeros(d.o * ckk);
    mm(
        (d.o, ckk, cols),
        &mut dw,
        ckk,
        false,
        (&gycm, ld, 1),
        (&col, 1, ld),
        Parallelism::Rayon(threads()),
    );
    drop(col);
    let Some(gx) = gx else {
        return dw;
    };
    #[cfg(target_arch = "x86_64")]
    if d.compact() {
        super::wide::input_grad_compact(wt, gy, gx, n, d);
        return dw;
    }
    // dcol (ckk×cols) = Wᵀ · gy, added back into each sample's gradient.
    let mut dcol = Scratch::new(ckk * ld);
    mm(
        (ckk, cols, d.o),
        &mut dcol,
        ld,
        false,
        (wt, 1, ckk),
        (&gycm, ld, 1),
        Parallelism::Rayon(threads()),
    );
    gx.par_chunks_mut(chw)
        .enumerate()
        .for_each(|(s, gxs)| col2im_add(&dcol[s * howo..], d, gxs, ld));
    dw
}
