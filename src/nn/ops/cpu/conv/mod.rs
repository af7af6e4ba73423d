//! Convolution: the op, its geometry ([`ConvDims`]) and the choice of path.
//!
//! - 3×3 stride-1 padding-1 convolutions on even planes of 8×8 and up with 32
//!   channels or more take Winograd's F(2×2, 3×3) ([`winograd`]: 2.25× fewer
//!   multiplies) for the forward and both gradients; `RECIPE_NO_WINOGRAD=1`
//!   sends them to the paths below.
//! - The *wide* path ([`wide`]) applies when the discarded grid positions are at
//!   most 35% at stride 1 (3×3 on planes of 8×8 and up, every 1×1) and 10%
//!   strided (3×3 stride 2 on planes of 48×48 and up, a stride equal to the
//!   kernel). It zero-pads a group of samples once (at stride 1 neighbouring rows
//!   and planes share their zero gap, [`ConvDims::gap`]); for stride s it splits the padded image
//!   into s×s phase planes, so a tap's inputs are again a shifted view (layout:
//!   channel, phase, sample, phase plane). It computes every position of the grid
//!   and keeps the valid ones; the products read shifted views through a
//!   row-offset table instead of an im2col matrix nine times the size. Backward:
//!   dW is `gy · viewsᵀ`; the input gradient at stride 1 is the same product on gy
//!   padded by k−1−p with the kernel flipped and channels swapped; at stride s each
//!   view's gradient `Wᵀ·gy` is added back at its offset and the phases are
//!   interleaved back.
//! - Everything else (1×1 stride 2, small planes) goes through im2col ([`im2col`]).
//! - Small planes with many channels (ResNet late stages) take the whole-batch
//!   column path ([`batched`]) where it measured faster: one column matrix for the
//!   batch and one product per pass, split across threads by `gemm`, so the weight
//!   gradient's inner dimension is the whole batch and no per-thread copies of it
//!   are summed. Forward and backward choose separately
//!   ([`ConvDims::batched_forward`], [`ConvDims::batched_backward`]). Where the
//!   compact product applies ([`ConvDims::compact`]: AVX2 products, stride 1, rows a
//!   multiple of 8 or 4 wide) the forward stays on the wide path (ResNet-18's 8×8
//!   256-channel layers: 55–57 → 64–67 GFLOP/s), and so does the backward up to
//!   [`DOT_LIMIT`] channels ([`ConvDims::compact_dw`]: 65 → 68–69); above that the
//!   backward takes only its weight gradient from here and its input gradient
//!   from [`wide::input_grad_compact`] (no col2im). With runs of 4 (4×4 planes,
//!   which the wide path would not take for their 36% discarded grid) ResNet-18's
//!   512-channel 4×4 layers went 166–168 → 188 GFLOP/s forward on Zen 4.
//!
//! Products: see [`ConvDims::own`] for which run on the hand-written kernels.
//! Threads take contiguous ranges of samples. Matrices that `gemm` packs get a
//! leading dimension off multiples of 512 bytes ([`padded_ld`]). A network's first
//! layer ([`conv2d_data`]) computes no input gradient.

pub(crate) mod batched;
pub(crate) mod im2col;
pub(crate) mod wide;
pub(crate) mod winograd;

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::nn::ops::cpu::buffers::{view, zeros};
use crate::nn::ops::cpu::conv::wide::{conv_backward_wide, conv_forward_wide};
use crate::nn::ops::cpu::norm::channel_sums;
use crate::nn::ops::cpu::{add_assign, threads};
use crate::nn::ops::kernels;
use crate::nn::ops::kernels::Own;
use crate::nn::ops::timing;
use crate::nn::ops::{T1, T4, Window};

/// Input channels up to which the compact weight gradient takes the dot form
/// (measured up to 256: ResNet-18's 8×8 layers).
const DOT_LIMIT: usize = 256;

/// Geometry of one convolution call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvDims {
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) o: usize,
    pub(crate) ho: usize,
    pub(crate) wo: usize,
    pub(crate) win: Window,
}

impl ConvDims {
    pub(crate) fn ckk(&self) -> usize {
        self.c * self.win.kernel * self.win.kernel
    }
    /// Whether the forward of `n` samples takes the whole-batch column path
    /// ([`batched`]): 3×3-like kernels with many channels on small planes. Measured
    /// per shape (`conv_speed`, AVX2, 2 threads, best of three alternating runs):
    /// ResNet-18's 8² and 4² 3×3 layers 55–56 → 62–63 GFLOP/s, ResNet-50's 8² 3×3
    /// 44 → 53 (in ResNet-18's whole step the change was within the noise); a 1×1
    /// forward was as fast or faster per thread (no columns to build), as were
    /// planes with over 4096 columns in the batch.
    pub(crate) fn batched_forward(&self, n: usize) -> bool {
        self.win.kernel > 1 && n * self.ho * self.wo <= 4096 && self.c.min(self.o) >= 128
    }
    /// Whether the backward of `n` samples takes the whole-batch column path: up to
    /// 2048 columns in the batch (4096 with a kernel over 1×1), where the per-thread
    /// weight gradients (`o·c·k²` each, summed at the end) cost as much as their
    /// products. ResNet-50's 2² and 4² layers went from 25–45 to 45–59 GFLOP/s.
    pub(crate) fn batched_backward(&self, n: usize) -> bool {
        let limit = if self.win.kernel > 1 { 4096 } else { 2048 };
        n * self.ho * self.wo <= limit && self.c.min(self.o) >= 64
    }
    /// Samples per gemm: enough output columns (about 1024) to keep gemm efficient on
    /// the small late-stage maps, while the column buffer stays small.
    pub(crate) fn group(&self, n: usize) -> usize {
        (1024 / (self.ho * self.wo).max(1)).clamp(1, n.max(1))
    }
}

impl ConvDims {
    /// Whether the "wide" path applies: the image is zero-padded once (for stride
    /// `s`, split into `s×s` phase planes, so a tap's inputs are again a shifted
    /// view) and every position of the phase grid is computed (the extra columns
    /// are discarded). The kernel then reads shifted views of the padded image
    /// instead of a column matrix nine times its size. Worth it while the discarded
    /// share is small; a kernel smaller than the stride (1×1, stride 2) would copy
    /// phases it never reads.
    pub(crate) fn wide(&self) -> bool {
        // Without the own kernels each tap is a `gemm` with the channels as inner
        // dimension, which needs enough channels to run well.
        (self.wide_geometry() && (self.own().hand_written() || self.c.min(self.o) >= 16))
            || self.compact()
    }
    /// The geometric half of [`ConvDims::wide`]: phase planes cover every tap and
    /// the discarded share is small.
    pub(crate) fn wide_geometry(&self) -> bool {
        let (k, p, s) = (self.win.kernel, self.win.padding, self.win.stride);
        // A strided convolution's column matrix is only k²/s² times the input, so
        // im2col is cheap there and the wide path's discarded columns cost more: on
        // the quick recipes' 28² → 14² → 7² stride-2 layers (15% and 31% discarded)
        // im2col ran 11% faster over all convolutions (`conv_speed`, AVX2, 2 threads),
        // on ResNet-18's stride-2 layers it was even.
        let limit = if s == 1 { 1.35 } else { 1.1 };
        (s == 1 || k >= s)
            && p < k
            && (self.hph() * self.wph()) as f64 <= limit * (self.ho * self.wo) as f64
    }
    /// Rows of one phase plane of the padded image. At stride 1 neighbouring planes
    /// share their zero rows ([`ConvDims::gap`]).
    pub(crate) fn hph(&self) -> usize {
        if self.win.stride == 1 {
            self.h + self.gap()
        } else {
            self.hp().div_ceil(self.win.stride)
        }
    }
    /// Columns of one phase plane of the padded image. At stride 1 neighbouring rows
    /// share their zero columns ([`ConvDims::gap`]).
    pub(crate) fn wph(&self) -> usize {
        if self.win.stride == 1 {
            self.w + self.gap()
        } else {
            self.wp().div_ceil(self.win.stride)
        }
    }
    /// Zeros between neighbouring image rows (and planes) at stride 1. A view reads
    /// up to `p` columns left of a row and `k − 1 − p` right of it, so one run of
    /// `max(p, k − 1 − p)` zeros serves as one row's right border and the next
    /// row's left border (the image sits at `(p, p)` of its plane): a 16² plane
    /// with a 3×3 kernel is laid out 17×17 instead of 18×18, and the product
    /// computes 11% discarded positions instead of 21%. The same holds for the
    /// input gradient's correlation, whose padding is `k − 1 − p`.
    pub(crate) fn gap(&self) -> usize {
        let (k, p) = (self.win.kernel, self.win.padding);
        p.max((k - 1).saturating_sub(p))
    }
    /// Which products serve this convolution (`Own::Gemm`: the `gemm` crate). AVX-512: up to 32
    /// channels, where `gemm`'s packing costs as much as its multiply; with more
    /// channels `gemm` is as fast or faster (measured on ResNet-18 layers: equal at
    /// 64, slower dW at 128 and up), except where the AVX2 products serve beside
    /// AVX-512 ([`kernels::avx2_products`], AMD Zen 4). AVX2: forward and input
    /// gradient of wide-path
    /// convolutions with a kernel over 1×1 and from 16 channels (one product over
    /// all taps instead of a `gemm` per tap: 5–20% faster forward on ResNet-18's
    /// 32² and 16² layers in `conv_speed`), and the weight gradient up to 64
    /// channels (dot products along the views, `wide::wide_dw`); 1×1 kernels, the
    /// column-matrix path and the 3-channel stem stay on `gemm`, which measured as
    /// fast or faster there.
    pub(crate) fn own(&self) -> Own {
        if kernels::avx512() && self.c.max(self.o) <= 32 {
            Own::Avx512
        } else if kernels::avx2_products()
            && self.win.kernel > 1
            && self.c.min(self.o) >= 16
            && (self.wide_geometry() || self.compact_geometry())
        {
            Own::Avx2
        } else {
            Own::Gemm
        }
    }
    /// Whether the wide path's forward and input-gradient products skip the
    /// discarded grid positions (the AVX2 products serve, [`Own::Avx2`], and
    /// [`ConvDims::compact_geometry`] holds): the valid outputs come in runs of
    /// [`ConvDims::run`], which the product's column table ([`wide::valid_chunks`])
    /// picks out while packing, so no flop goes to a discarded position. The weight
    /// gradient does the same where [`ConvDims::compact_dw`] holds.
    pub(crate) fn compact(&self) -> bool {
        self.own() == Own::Avx2 && self.compact_geometry()
    }
    /// The geometric half of [`ConvDims::compact`]: stride 1, padding under the
    /// kernel, and runs of valid outputs ([`ConvDims::run`]). The discarded share
    /// of the grid does not matter here (no flop goes to it), so planes too small
    /// for [`ConvDims::wide_geometry`] (4×4 with a 3×3 kernel: 25 grid positions for
    /// 16 outputs) qualify too.
    pub(crate) fn compact_geometry(&self) -> bool {
        self.win.stride == 1 && self.win.padding < self.win.kernel && self.run() > 0
    }
    /// Valid outputs per run of the compact products' column table: 8 where the
    /// output and input rows are a multiple of 8 wide, else 4 where they are a
    /// multiple of 4 (ResNet's 4×4 late stages), else 0 (no compact form).
    pub(crate) fn run(&self) -> usize {
        [8, 4]
            .into_iter()
            .find(|&r| self.wo.is_multiple_of(r) && self.w.is_multiple_of(r))
            .unwrap_or(0)
    }
    /// Whether the wide path's weight gradient also runs over the valid positions
    /// only: [`ConvDims::compact`] and the dot-product form (`wide::wide_dw`) whose
    /// `B` rows the chunk table gathers, up to [`DOT_LIMIT`] channels.
    pub(crate) fn compact_dw(&self) -> bool {
        // The dot product's rows (a group's valid positions) must be whole vectors.
        self.compact() && self.c <= DOT_LIMIT && (self.ho * self.wo).is_multiple_of(8)
    }
    /// Whether the weight gradient uses the own narrow-row product (AVX-512 only:
    /// with many channels its transposed result cost as much to add back as the
    /// product itself).
    pub(crate) fn own_dw(&self) -> bool {
        self.own() == Own::Avx512
    }
    pub(crate) fn hp(&self) -> usize {
        self.h + 2 * self.win.padding
    }
    pub(crate) fn wp(&self) -> usize {
        self.w + 2 * self.win.padding
    }
    /// Zeros after the last phase plane, so the shifted views of the last rows
    /// stay inside the buffer.
    pub(crate) fn tail(&self) -> usize {
        ((self.win.kernel - 1) / self.win.stride) * (self.wph() + 1)
    }
    /// Samples per wide product: about 1.5k columns.
    pub(crate) fn wide_group(&self, n: usize) -> usize {
        (1536 / (self.hph() * self.wph()).max(1)).clamp(1, n.max(1))
    }
}

/// Columns added to a column matrix's leading dimension by [`padded_ld`].
pub(crate) const LD_PAD: usize = 16;

/// The leading dimension for a matrix of `cols` columns that `gemm` packs: rows
/// a multiple of 512 bytes apart fall into a few of the L1 cache's 64 sets (4 KiB
/// apart: all into one), so packing a panel of them evicts its own lines. One
/// cache line more per row spreads them over every set. On Zen 4 the backward of
/// ResNet-18's 16² stride-2 layer (4096 batch columns) went 40 → 32 ms, a
/// ResNet-50 1×1 8² layer's 7.0 → 4.6 ms (`shape_speed`, medians of 9).
pub(crate) fn padded_ld(cols: usize) -> usize {
    if cols.is_multiple_of(128) {
        cols + LD_PAD
    } else {
        cols
    }
}

/// Samples per thread: each thread takes one contiguous range of the batch.
pub(crate) fn thread_chunk(n: usize) -> usize {
    n.div_ceil(threads()).max(1)
}

/// The output of a convolution forward: `body(ys, xs)` fills the outputs of one
/// thread's range of samples from their inputs.
pub(crate) fn conv_forward_threads(
    x: &[f32],
    n: usize,
    d: ConvDims,
    body: impl Fn(&mut [f32], &[f32]) + Sync,
) -> Vec<f32> {
    let (howo, chw) = (d.ho * d.wo, d.c * d.h * d.w);
    let chunk = thread_chunk(n);
    let mut y = zeros(n * d.o * howo);
    y.par_chunks_mut(chunk * d.o * howo)
        .zip(x.par_chunks(chunk * chw))
        .for_each(|(yc, xc)| body(yc, xc));
    y
}

/// A convolution backward: `body(gxs, xs, gys)` accumulates the input gradient of
/// one thread's range of samples (when `gx` is given) and returns its weight
/// gradient; the sum of those is returned.
pub(crate) fn conv_backward_threads(
    (x, gy, gx): (&[f32], &[f32], Option<&mut [f32]>),
    n: usize,
    d: ConvDims,
    body: impl Fn(Option<&mut [f32]>, &[f32], &[f32]) -> Vec<f32> + Sync,
) -> Vec<f32> {
    let (howo, chw) = (d.ho * d.wo, d.c * d.h * d.w);
    let chunk = thread_chunk(n);
    let sum = |mut a: Vec<f32>, b: Vec<f32>| {
        kernels::add_to(&mut a, &b);
        a
    };
    let zero = || vec![0.0; d.o * d.ckk()];
    let pairs = x
        .par_chunks(chunk * chw)
        .zip(gy.par_chunks(chunk * d.o * howo));
    match gx {
        Some(gx) => gx
            .par_chunks_mut(chunk * chw)
            .zip(pairs)
            .map(|(gxc, (xc, gyc))| body(Some(gxc), xc, gyc))
            .reduce(zero, sum),
        None => pairs.map(|(xc, gyc)| body(None, xc, gyc)).reduce(zero, sum),
    }
}

/// Forward: per thread a contiguous range of samples, processed in groups whose
/// columns sit side by side so one gemm covers the whole group.
pub(crate) fn conv_forward(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    if winograd::applies(&d) {
        winograd::forward(x, wt, bias, n, d)
    } else if d.batched_forward(n) && !d.compact() {
        batched::conv_forward_batched(x, wt, bias, n, d)
    } else if d.wide() {
        conv_forward_wide(x, wt, bias, n, d)
    } else {
        im2col::conv_forward_im2col(x, wt, bias, n, d)
    }
}

/// Accumulates the input gradient into `gx` (none when the input is data) and
/// returns the weight gradient.
pub(crate) fn conv_backward(
    x: &[f32],
    wt: &[f32],
    gy: &[f32],
    gx: Option<&mut [f32]>,
    n: usize,
    d: ConvDims,
) -> Vec<f32> {
    if winograd::applies(&d) {
        winograd::backward(x, wt, gy, gx, n, d)
    } else if d.batched_backward(n) && !d.compact_dw() {
        batched::conv_backward_batched(x, wt, gy, gx, n, d)
    } else if d.wide() {
        conv_backward_wide(x, wt, gy, gx, n, d)
    } else {
        im2col::conv_backward_im2col(x, wt, gy, gx, n, d)
    }
}

/// Fast conv2d on the paths of this module, threads over samples.
pub fn conv2d<T: Tape<f32, Cpu>>(
    x: T4<Cpu, T>,
    w: T4<Cpu, T>,
    b: Option<T1<Cpu, T>>,
    win: Window,
) -> T4<Cpu, T> {
    conv2d_op(x, w, b, win, true)
}

/// [`conv2d`] on a data input (a network's first layer on images): the backward
/// computes no gradient for `x`, which then gets none on the tape. PyTorch skips
/// it the same way for inputs that do not require a gradient; it is half the
/// first layer's backward.
pub fn conv2d_data<T: Tape<f32, Cpu>>(
    x: T4<Cpu, T>,
    w: T4<Cpu, T>,
    b: Option<T1<Cpu, T>>,
    win: Window,
) -> T4<Cpu, T> {
    conv2d_op(x, w, b, win, false)
}

fn conv2d_op<T: Tape<f32, Cpu>>(
    x: T4<Cpu, T>,
    w: T4<Cpu, T>,
    b: Option<T1<Cpu, T>>,
    win: Window,
    input_grad: bool,
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
    let yv = conv_forward(view(&x), view(&w), b.as_ref().map(view), n, d);
    let y = x.device().tensor_from_vec(yv, (n, o, d.ho, d.wo));
    if T::OWNS_TAPE {
        let (xg, wg, bg, yg) = (
            x.ghost(),
            w.ghost(),
            b.as_ref().map(|b| b.ghost()),
            y.ghost(),
        );
        // Backward reads the input and weights from their tensors (kept alive here).
        tape.add_backward_op(move |grads| {
            let _t = timing::start("conv2d.bwd");
            let gy = take_grad!(grads, yg);
            let (xv, wv) = (view(&x), view(&w));
            let dw = if input_grad {
                let gx = grads.get_or_alloc_mut(&xg)?;
                conv_backward(xv, wv, &gy, Some(gx), n, d)
            } else {
                conv_backward(xv, wv, &gy, None, n, d)
            };
            add_assign(grads.get_or_alloc_mut(&wg)?, &dw);
            if let Some(bg) = bg {
                let db = channel_sums(&gy, o, d.ho * d.wo);
                add_assign(grads.get_or_alloc_mut(&bg)?, &db);
            }
            Ok(())
        });
    }
    y.put_tape(tape)
}

#[cfg(test)]
impl ConvDims {
    /// `c → o` channels on an `h × h` input (the tests' shapes).
    fn square(c: usize, o: usize, h: usize, win: Window) -> ConvDims {
        let ho = win.out_size(h).expect("the window fits");
        ConvDims {
            c,
            h,
            w: h,
            o,
            ho,
            wo: ho,
            win,
        }
    }
}

#[cfg(test)]
mod paths_agree {
    use super::*;

    type Forward = fn(&[f32], &[f32], Option<&[f32]>, usize, ConvDims) -> Vec<f32>;
    type Backward = fn(&[f32], &[f32], &[f32], Option<&mut [f32]>, usize, ConvDims) -> Vec<f32>;

    /// `path` must compute what im2col computes (which the op tests check against
    /// the reference and finite differences) on each `(n, c, o, h, kernel, stride,
    /// padding)`: output with bias, input gradient accumulated onto 0.5, weights'.
    fn equals_im2col(
        name: &str,
        (forward, backward): (Forward, Backward),
        shapes: &[(usize, usize, usize, usize, usize, usize, usize)],
    ) {
        for &(n, c, o, h, k, s, p) in shapes {
            let d = ConvDims::square(c, o, h, Window::new(k, s, p));
            let ho = d.ho;
            let val = |i: usize, m: usize| ((i * 7919) % m) as f32 / m as f32 - 0.5;
            let x: Vec<f32> = (0..n * c * h * h).map(|i| val(i, 97)).collect();
            let wt: Vec<f32> = (0..o * c * k * k).map(|i| val(i, 89)).collect();
            let bias: Vec<f32> = (0..o).map(|i| val(i, 13)).collect();
            let gy: Vec<f32> = (0..n * o * ho * ho).map(|i| val(i, 83)).collect();
            let close = |what: &str, a: &[f32], b: &[f32]| {
                assert_eq!(a.len(), b.len(), "{what} lengths");
                let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (i, (u, v)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (u - v).abs() <= 1e-5 * scale,
                        "{what} of n{n} c{c} o{o} {h}² k{k} s{s} p{p} at {i}: {name} {u} im2col {v}"
                    );
                }
            };
            let yw = forward(&x, &wt, Some(&bias), n, d);
            let yi = im2col::conv_forward_im2col(&x, &wt, Some(&bias), n, d);
            close("forward", &yw, &yi);
            let (mut gxw, mut gxi) = (vec![0.5; x.len()], vec![0.5; x.len()]);
            let dww = backward(&x, &wt, &gy, Some(&mut gxw), n, d);
            let dwi = im2col::conv_backward_im2col(&x, &wt, &gy, Some(&mut gxi), n, d);
            close("input gradient", &gxw, &gxi);
            close("weight gradient", &dww, &dwi);
            // Without an input gradient (a data input) the weight gradient is the same.
            close(
                "weight gradient alone",
                &backward(&x, &wt, &gy, None, n, d),
                &dwi,
            );
        }
    }

    /// The wide path on every shape it can take, including the strided ones
    /// [`ConvDims::wide_geometry`] now sends to im2col by its waste limit and the
    /// channel counts that switch products.
    #[test]
    fn wide_equals_im2col() {
        let shapes = [
            (3, 1, 32, 28, 3, 1, 1),
            (2, 32, 64, 28, 3, 2, 1),
            (2, 64, 40, 14, 3, 2, 1),
            (3, 3, 5, 16, 3, 2, 1),
            (2, 2, 3, 17, 5, 2, 2),
            (2, 36, 40, 16, 3, 2, 1),
            (2, 4, 6, 18, 3, 3, 0),
            (2, 3, 8, 10, 7, 2, 3),
            (2, 1, 5, 9, 3, 1, 2),
            (2, 2, 4, 7, 2, 1, 0),
            // Stride 1 with the shared zero gap of other widths than the padding.
            (2, 3, 4, 9, 5, 1, 1),
            (2, 3, 4, 8, 5, 1, 2),
            (3, 2, 3, 6, 3, 1, 0),
            (2, 3, 5, 7, 1, 1, 0),
            (2, 2, 3, 6, 4, 1, 2),
            (2, 20, 18, 9, 3, 1, 0),
            // The own products (AVX2: from 16 channels; dW's dot form up to 64).
            (2, 16, 20, 16, 3, 1, 1),
            (1, 24, 16, 20, 3, 1, 1),
            (2, 72, 32, 16, 3, 1, 1),
            // Compact products (AVX2: rows a multiple of 8 wide).
            (3, 32, 16, 8, 3, 1, 1),
            (2, 16, 24, 8, 5, 1, 2),
            (1, 16, 17, 24, 3, 1, 1),
            // Runs of four (rows 4 and 12 wide), and over DOT_LIMIT input channels
            // (the weight gradient on the full grid).
            (3, 20, 24, 4, 3, 1, 1),
            (2, 17, 16, 12, 3, 1, 1),
            (2, 260, 16, 4, 3, 1, 1),
            // Channel strides padded by `padded_ld` (256 positions per group: a
            // 1×1 16² plane, a 3×3 15² plane's 16² grid; 2×2 stride-2 phases of
            // 64 positions, two samples per thread).
            (2, 8, 12, 16, 1, 1, 0),
            (2, 16, 20, 15, 3, 1, 1),
            (2, 36, 40, 15, 3, 1, 1),
            (4, 4, 6, 16, 2, 2, 0),
        ];
        for &(_, _, _, _, k, s, _) in &shapes {
            assert!(s == 1 || k >= s, "the wide path cannot take {k}x{k}/{s}");
        }
        let path: (Forward, Backward) = (wide::conv_forward_wide, wide::conv_backward_wide);
        equals_im2col("wide", path, &shapes);
    }

    /// Winograd's F(2×2, 3×3): forward, input and weight gradients, on even
    /// planes from 2×2 up, one and several samples per group and thread, tile
    /// counts off the vector width, channel counts off it too.
    #[test]
    fn winograd_equals_im2col() {
        let shapes = [
            (2, 3, 4, 8, 3, 1, 1),
            (3, 5, 7, 2, 3, 1, 1),
            (1, 16, 9, 6, 3, 1, 1),
            (4, 9, 17, 4, 3, 1, 1),
            (2, 8, 8, 32, 3, 1, 1),
            (5, 33, 20, 12, 3, 1, 1),
        ];
        let path: (Forward, Backward) = (winograd::forward, winograd::backward);
        equals_im2col("winograd", path, &shapes);
    }

    /// The whole-batch path on the late-stage kinds of shape it serves (3×3 stride
    /// 1 and 2, 1×1 stride 1 and 2, planes down to 1×1) and on odd ones (a 7×7
    /// stride-2 stem, padding larger than the plane, one sample).
    #[test]
    fn batched_equals_im2col() {
        let shapes = [
            (3, 20, 24, 4, 3, 1, 1),
            (2, 16, 12, 8, 3, 2, 1),
            (3, 24, 40, 2, 1, 1, 0),
            (2, 12, 20, 4, 1, 2, 0),
            (2, 8, 8, 1, 3, 1, 1),
            (1, 5, 7, 6, 3, 1, 1),
            (2, 3, 8, 10, 7, 2, 3),
            (2, 4, 6, 3, 3, 1, 2),
            // The input gradient by the compact correlation (AVX2, 8-wide rows,
            // and 4-wide).
            (3, 16, 24, 8, 3, 1, 1),
            (2, 32, 16, 16, 3, 1, 1),
            (3, 20, 24, 4, 3, 1, 1),
            // Padded leading dimensions (`padded_ld`): 128 and 256 batch columns
            // here, against im2col's 64 per thread; and im2col's two-sample
            // groups of 64 columns padded against this path's 192.
            (2, 16, 12, 8, 3, 1, 1),
            (4, 24, 40, 8, 1, 1, 0),
            (3, 8, 8, 16, 3, 2, 1),
        ];
        let path: (Forward, Backward) = (
            batched::conv_forward_batched,
            batched::conv_backward_batched,
        );
        equals_im2col("batched", path, &shapes);
    }
}

#[cfg(test)]
mod conv_speed {
    use super::*;
    use crate::nn::ops::cpu::products::mm;
    use gemm::Parallelism;
    use std::time::Instant;

    /// `(c, o, h, kernel, stride, padding, layers)`: a convolution shape on an
    /// `h × h` input and how many layers of the network have it.
    type ConvShape = (usize, usize, usize, usize, usize, usize, usize);

    /// The quick recipes' `small_cnn` (channels [32, 64, 128]) on 28×28 Fashion-MNIST.
    const SMALL_CNN: &[ConvShape] = &[
        (1, 32, 28, 3, 1, 1, 1),
        (32, 64, 28, 3, 2, 1, 1),
        (64, 128, 14, 3, 2, 1, 1),
    ];

    /// ResNet-18 with the CIFAR stem on 32×32.
    const RESNET18: &[ConvShape] = &[
        (3, 64, 32, 3, 1, 1, 1),
        (64, 64, 32, 3, 1, 1, 4),
        (64, 128, 32, 3, 2, 1, 1),
        (64, 128, 32, 1, 2, 0, 1),
        (128, 128, 16, 3, 1, 1, 3),
        (128, 256, 16, 3, 2, 1, 1),
        (128, 256, 16, 1, 2, 0, 1),
        (256, 256, 8, 3, 1, 1, 3),
        (256, 512, 8, 3, 2, 1, 1),
        (256, 512, 8, 1, 2, 0, 1),
        (512, 512, 4, 3, 1, 1, 3),
    ];

    /// ResNet-50 (torchvision layout) on 64×64.
    const RESNET50: &[ConvShape] = &[
        (3, 64, 64, 7, 2, 3, 1),
        (64, 64, 16, 1, 1, 0, 1),
        (64, 64, 16, 3, 1, 1, 3),
        (64, 256, 16, 1, 1, 0, 4),
        (256, 64, 16, 1, 1, 0, 2),
        (256, 128, 16, 1, 1, 0, 1),
        (128, 128, 16, 3, 2, 1, 1),
        (128, 512, 8, 1, 1, 0, 4),
        (256, 512, 16, 1, 2, 0, 1),
        (512, 128, 8, 1, 1, 0, 3),
        (128, 128, 8, 3, 1, 1, 3),
        (512, 256, 8, 1, 1, 0, 1),
        (256, 256, 8, 3, 2, 1, 1),
        (256, 1024, 4, 1, 1, 0, 6),
        (512, 1024, 8, 1, 2, 0, 1),
        (1024, 256, 4, 1, 1, 0, 5),
        (256, 256, 4, 3, 1, 1, 5),
        (1024, 512, 4, 1, 1, 0, 1),
        (512, 512, 4, 3, 2, 1, 1),
        (512, 2048, 2, 1, 1, 0, 3),
        (1024, 2048, 4, 1, 2, 0, 1),
        (2048, 512, 2, 1, 1, 0, 2),
        (512, 512, 2, 3, 1, 1, 2),
    ];

    /// GFLOP/s of one `gemm` per thread on every thread of the pool (the matmul
    /// rate the convolutions are measured against).
    fn matmul_peak() -> f64 {
        let (m, n, k) = (256, 512, 2304);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let t = threads();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            (0..t).into_par_iter().for_each(|_| {
                let mut c = vec![0.0; m * n];
                mm(
                    (m, n, k),
                    &mut c,
                    n,
                    false,
                    (&a, k, 1),
                    (&b, n, 1),
                    Parallelism::None,
                );
            });
            best = best.min(start.elapsed().as_secs_f64());
        }
        2.0 * (m * n * k * t) as f64 / best / 1e9
    }

    /// Best-of-three seconds of the forward and the backward of one shape.
    fn time_shape(&(c, o, h, k, s, p, _): &ConvShape, n: usize) -> (f64, f64, f64) {
        let d = ConvDims::square(c, o, h, Window::new(k, s, p));
        let ho = d.ho;
        let x: Vec<f32> = (0..n * c * h * h).map(|i| (i % 13) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..o * c * k * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let gy: Vec<f32> = (0..n * o * ho * ho).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut gx = vec![0.0; x.len()];
        let (mut fwd, mut bwd) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let t = Instant::now();
            std::hint::black_box(conv_forward(&x, &w, None, n, d));
            fwd = fwd.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            std::hint::black_box(conv_backward(&x, &w, &gy, Some(&mut gx), n, d));
            bwd = bwd.min(t.elapsed().as_secs_f64());
        }
        let flops = 2.0 * (n * o * ho * ho * c * k * k) as f64;
        (flops, fwd, bwd)
    }

    /// `CONV_SHAPE=c,o,h,k,s,p[,n] cargo test --release --lib shape_speed --
    /// --ignored --nocapture`: the median forward and backward time of one shape
    /// over `CONV_REPS` (default 15) runs on the default paths, for A/B checks of
    /// one layer on a noisy machine.
    #[test]
    #[ignore]
    fn shape_speed() {
        let Ok(spec) = std::env::var("CONV_SHAPE") else {
            println!("set CONV_SHAPE=c,o,h,k,s,p[,n]");
            return;
        };
        let v: Vec<usize> = spec
            .split(',')
            .map(|t| t.trim().parse().expect("a number"))
            .collect();
        assert!(v.len() >= 6, "CONV_SHAPE=c,o,h,k,s,p[,n]");
        let n = v.get(6).copied().unwrap_or(64);
        let reps: usize = std::env::var("CONV_REPS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(15);
        let ab = std::env::var("CONV_AB").unwrap_or_else(|_| "-".into());
        let variants: Vec<Vec<String>> = ab
            .split(';')
            .map(|v| {
                v.split_whitespace()
                    .filter(|t| *t != "-")
                    .map(String::from)
                    .collect()
            })
            .collect();
        let mut times = vec![(Vec::new(), Vec::new()); variants.len()];
        let mut flops = 0.0;
        for _ in 0..reps {
            for (vi, vars) in variants.iter().enumerate() {
                // SAFETY (test only): no other thread reads the environment here.
                vars.iter()
                    .for_each(|k| unsafe { std::env::set_var(k, "1") });
                let (fl, f, b) = time_shape(&(v[0], v[1], v[2], v[3], v[4], v[5], 1), n);
                vars.iter().for_each(|k| unsafe { std::env::remove_var(k) });
                times[vi].0.push(f);
                times[vi].1.push(b);
                flops = fl;
            }
        }
        for (vars, (fs, bs)) in variants.iter().zip(&mut times) {
            fs.sort_by(f64::total_cmp);
            bs.sort_by(f64::total_cmp);
            let (f, b) = (fs[reps / 2], bs[reps / 2]);
            println!(
                "{spec} n{n} [{}]: fwd {:.2} ms (min {:.2}, {:.1} GFLOP/s)  bwd {:.2} ms (min {:.2}, {:.1} GFLOP/s)",
                vars.join(" "),
                f * 1e3,
                fs[0] * 1e3,
                flops / f / 1e9,
                b * 1e3,
                bs[0] * 1e3,
                2.0 * flops / b / 1e9
            );
        }
    }

    /// `cargo test --release --lib conv_speed -- --ignored --nocapture`: for each
    /// conv shape of ResNet-18 (CIFAR, 2×32 images) and ResNet-50 (64×64, 2×16),
    /// forward and backward, the GFLOP/s reached on the rayon pool and the fraction
    /// of the pool's matmul rate; then the whole network's convolutions. Every
    /// path family the CPU has is timed, best first: AVX-512, the AVX2 products
    /// ([`kernels::use_avx2`]) and the `gemm`-crate paths (portable mode). The
    /// rates count a direct convolution's flops, so layers on the Winograd path
    /// can pass the matmul rate.
    #[test]
    #[ignore]
    fn kernel_speed() {
        let peak = matmul_peak();
        println!("matmul peak on {} threads: {peak:.1} GFLOP/s", threads());
        println!("(GFLOP/s count a direct convolution's flops; Winograd layers do 2.25x fewer)");
        let modes: &[(&str, fn())] = if kernels::avx512() {
            &[
                ("avx512", || kernels::use_avx512(false)),
                ("avx512 + avx2 products", || kernels::use_avx512(true)),
                ("avx2", kernels::use_avx2),
                ("gemm", kernels::use_portable),
            ]
        } else if kernels::avx2() {
            &[("avx2", kernels::use_avx2), ("gemm", kernels::use_portable)]
        } else {
            &[("own", || {})]
        };
        // `CONV_SPEED_NET=resnet18 CONV_SPEED_MODE=avx2` narrow the run (substrings).
        let only = |var: &str, name: &str| std::env::var(var).is_ok_and(|v| !name.contains(&v));
        for (net, shapes, n) in [
            ("small_cnn", SMALL_CNN, 512),
            ("resnet18", RESNET18, 64),
            ("resnet50", RESNET50, 32),
        ] {
            if only("CONV_SPEED_NET", net) {
                continue;
            }
            for &(mode, set) in modes {
                if only("CONV_SPEED_MODE", mode) {
                    continue;
                }
                set();
                let (mut tf, mut tt) = (0.0, 0.0);
                println!("{net} ({mode}), batch {n}:");
                for sh in shapes {
                    let (fl, f, b) = time_shape(sh, n);
                    let (gf, gb) = (fl / f / 1e9, 2.0 * fl / b / 1e9);
                    println!(
                        "  c{:5} o{:5} {:3}² k{} s{} ×{}: fwd {gf:6.1} GFLOP/s ({:3.0}%)  bwd {gb:6.1} GFLOP/s ({:3.0}%)  {:5.1} ms",
                        sh.0,
                        sh.1,
                        sh.2,
                        sh.3,
                        sh.4,
                        sh.6,
                        100.0 * gf / peak,
                        100.0 * gb / peak,
                        (f + b) * sh.6 as f64 * 1e3
                    );
                    tf += 3.0 * fl * sh.6 as f64;
                    tt += (f + b) * sh.6 as f64;
                }
                let g = tf / tt / 1e9;
                println!(
                    "  all convolutions: {g:.1} GFLOP/s ({:.0}% of the matmul rate), {:.0} ms per step",
                    100.0 * g / peak,
                    tt * 1e3
                );
            }
            modes[0].1();
        }
    }
}
