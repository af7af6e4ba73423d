//! The project's own differentiable ops (conv2d, pooling, batch norm, …).
//!
//! Every op exists in two forms:
//! - [`composed`]: a composition of dfdx's own ops (`gather`, `matmul`, reductions,
//!   broadcasts). It runs on any dfdx device, is the CUDA path, and is the plain
//!   reference the fast kernels are tested against.
//! - [`cpu`]: a multithreaded CPU kernel (rayon + gemm) registered on the tape with
//!   `split_tape` / `add_backward_op` / `put_tape`.
//!
//! Layers call the ops through [`EngineDevice`], which picks the fast kernel on
//! [`Cpu`] and the composed form on `Cuda`. The same trait carries the device half
//! of the optimiser update and of the gradient all-reduce ([`update`]), so no code
//! path anywhere picks a device by downcasting.
//!
//! Contract: the ops assume valid shapes (checked by the layers, which return errors);
//! a fast kernel moves its output's gradient out of the `Gradients` when its backward
//! runs, so the gradient of an op's *output* cannot be read after `backward()`.

pub mod bn_sync;
pub mod composed;
pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod kernels;
pub mod timing;
pub mod update;

/// Makes the CPU kernels use only their portable code paths (no AVX-512, no AVX2)
/// for the rest of the process; call it before any kernel runs. For tests and
/// comparisons: the portable paths are what a machine without either runs.
pub fn use_portable_kernels() {
    kernels::use_portable();
}

/// Makes the CPU kernels use their AVX2+FMA paths (the portable ones where the CPU
/// lacks AVX2) instead of AVX-512 for the rest of the process; call it before any
/// kernel runs. For tests and comparisons on AVX-512 machines.
pub fn use_avx2_kernels() {
    kernels::use_avx2();
}

/// Keeps the AVX-512 paths on (where the CPU has them) but lets the AVX2 products
/// serve the many-channel convolutions, the choice made on AMD Zen 4; call it
/// before any kernel runs. For tests of that mix on any AVX-512 machine.
pub fn use_split_kernels() {
    kernels::use_avx512(true);
}

/// Keeps the AVX-512 paths on (where the CPU has them) with the `gemm` crate
/// serving the many-channel convolutions, the choice made on AVX-512 CPUs other
/// than AMD Zen 4; call it before any kernel runs. For tests of that path on Zen 4.
pub fn use_avx512_kernels() {
    kernels::use_avx512(false);
}

use dfdx::prelude::*;

/// Shape of an NCHW activation.
pub type Shape4 = (usize, usize, usize, usize);
/// An NCHW activation tensor.
pub type T4<D, T> = Tensor<Shape4, f32, D, T>;
/// A `(batch, features)` tensor.
pub type T2<D, T> = Tensor<(usize, usize), f32, D, T>;
/// A 1-D tensor (bias, norm scale, …).
pub type T1<D, T> = Tensor<(usize,), f32, D, T>;

/// Square window geometry shared by convolution and pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero (conv) or -inf (max pool) padding on every side.
    pub padding: usize,
}

impl Window {
    /// A window of the given kernel, stride and padding.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Window {
            kernel,
            stride,
            padding,
        }
    }

    /// Output side for an input side, or `None` when the window does not fit.
    pub fn out_size(&self, input: usize) -> Option<usize> {
        if self.kernel == 0 || self.stride == 0 {
            return None;
        }
        (input + 2 * self.padding)
            .checked_sub(self.kernel)
            .map(|v| v / self.stride + 1)
    }
}

/// Batch-norm hyper-parameters (PyTorch defaults: momentum 0.1, eps 1e-5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnConfig {
    /// Weight of the new batch statistic in the running average.
    pub momentum: f32,
    /// Added to the variance before the square root.
    pub eps: f32,
}

impl Default for BnConfig {
    fn default() -> Self {
        BnConfig {
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// Running statistics of a batch-norm layer (one value per channel).
#[derive(Clone, Debug)]
pub struct BnRunning<D: Device<f32>> {
    /// Running mean.
    pub mean: T1<D, NoneTape>,
    /// Running (unbiased) variance.
    pub var: T1<D, NoneTape>,
}

/// Ops with a device-specific implementation: the fast CPU kernel on `Cpu`,
/// the composition of dfdx ops elsewhere.
///
/// Every device-specific operation of training is a method here: the ops, and the
/// per-entry optimiser update and gradient transfer of [`update`]. A method with a
/// default is the composed form (`composed.rs`); `Cpu` overrides it with its kernel,
/// `Cuda` keeps it. Code generic over `D: EngineDevice` therefore picks a device's
/// path by the type alone; a process's device is chosen once, by
/// [`DeviceChoice::dispatch`](crate::nn::device::DeviceChoice::dispatch).
pub trait EngineDevice: Device<f32> {
    /// 2-D convolution: `x` is `(n, c, h, w)`, `w` is `(o, c, k, k)`, `b` is `(o,)`.
    fn conv2d<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        w: T4<Self, T>,
        b: Option<T1<Self, T>>,
        win: Window,
    ) -> T4<Self, T>;
    /// [`conv2d`](EngineDevice::conv2d) on a data input (a network's first layer on
    /// images): `x` may get no gradient on the tape, which saves the input-gradient
    /// half of the backward where the device implements it (the CPU kernel does).
    fn conv2d_data<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        w: T4<Self, T>,
        b: Option<T1<Self, T>>,
        win: Window,
    ) -> T4<Self, T> {
        Self::conv2d(x, w, b, win)
    }
    /// Max pooling with -inf padding.
    fn max_pool2d<T: Tape<f32, Self>>(x: T4<Self, T>, win: Window) -> T4<Self, T>;
    /// Mean over the spatial axes: `(n, c, h, w)` → `(n, c)`.
    fn global_avg_pool<T: Tape<f32, Self>>(x: T4<Self, T>) -> T2<Self, T>;
    /// Batch norm over axes (0, 2, 3). In training mode normalises with the batch
    /// statistics and returns the updated running statistics; in eval mode uses
    /// `running` and returns `None`.
    fn batch_norm2d<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        gamma: T1<Self, T>,
        beta: T1<Self, T>,
        running: &BnRunning<Self>,
        train: bool,
        cfg: BnConfig,
    ) -> (T4<Self, T>, Option<BnRunning<Self>>);
    /// `max(x, 0)` on an NCHW tensor.
    fn relu4<T: Tape<f32, Self>>(x: T4<Self, T>) -> T4<Self, T>;
    /// `max(x, 0)` on a `(n, f)` tensor.
    fn relu2<T: Tape<f32, Self>>(x: T2<Self, T>) -> T2<Self, T>;
    /// `x · wᵀ + b` with `x` `(n, in)`, `w` `(out, in)`, `b` `(out,)`.
    fn linear<T: Tape<f32, Self>>(
        x: T2<Self, T>,
        w: T2<Self, T>,
        b: Option<T1<Self, T>>,
    ) -> T2<Self, T>;
    /// Rows divided by `max(‖row‖₂, eps)` (PyTorch's `F.normalize(x, dim=1)`).
    fn l2_normalize<T: Tape<f32, Self>>(x: T2<Self, T>, eps: f32) -> T2<Self, T>;

    /// Batch norm then ReLU (fused where the device has a kernel for it).
    fn batch_norm2d_relu<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        gamma: T1<Self, T>,
        beta: T1<Self, T>,
        running: &BnRunning<Self>,
        train: bool,
        cfg: BnConfig,
    ) -> (T4<Self, T>, Option<BnRunning<Self>>) {
        let (y, r) = Self::batch_norm2d(x, gamma, beta, running, train, cfg);
        (Self::relu4(y), r)
    }

    /// `max(a + b, 0)` (a residual join), fused where the device has a kernel.
    fn add_relu<T: Tape<f32, Self>>(a: T4<Self, T>, b: T4<Self, T>) -> T4<Self, T> {
        Self::relu4(a + b)
    }

    /// Batch norm 1-D on `(n, c)`: the 2-D op on `(n, c, 1, 1)`.
    fn batch_norm1d<T: Tape<f32, Self>>(
        x: T2<Self, T>,
        gamma: T1<Self, T>,
        beta: T1<Self, T>,
        running: &BnRunning<Self>,
        train: bool,
        cfg: BnConfig,
    ) -> (T2<Self, T>, Option<BnRunning<Self>>) {
        let (n, c) = *x.shape();
        let x4 = x.reshape_like(&(n, c, 1usize, 1usize));
        let (y, r) = Self::batch_norm2d(x4, gamma, beta, running, train, cfg);
        (y.reshape_like(&(n, c)), r)
    }

    /// Row-wise log-softmax of `f`'s logits against rows of a constant table (the
    /// memory bank's non-parametric softmax): `f` is `(n, d)`, `bank` is `rows × d`
    /// row-major, `idx` holds `m` table rows per row of `f` (`n × m`, row-major), and
    /// the result is `(n, m)`, the log-softmax over `j` of the logits
    /// `scale · f_r · bank[idx[r·m + j]]`. The table is a constant: only `f` gets a
    /// gradient. Contract: `bank.len()` is a multiple of `d`, `idx.len()` of `n`, and
    /// every index is below `rows` (checked by the caller).
    fn bank_log_softmax<T: Tape<f32, Self>>(
        f: T2<Self, T>,
        bank: &[f32],
        idx: &[usize],
        scale: f32,
    ) -> T2<Self, T> {
        composed::bank_logits(f, bank, idx, scale).log_softmax::<Axis<1>>()
    }

    /// One optimiser step of one trainable entry `p` (flat): `u` says how (see
    /// [`update::EntryUpdate`]), `grads` holds `p`'s gradient (a zero one is
    /// allocated when it has none) and `slots` are the entry's state tensors in
    /// `u`'s slot order, each as long as `p`. The parameter and slots may be updated
    /// in place or replaced by new tensors. Errors (a failed allocation, buffers of
    /// the wrong length) can leave the entry half-updated.
    fn update_entry(
        u: &update::EntryUpdate,
        p: &mut T1<Self, NoneTape>,
        grads: &mut Gradients<f32, Self>,
        slots: &mut [T1<Self, NoneTape>],
    ) -> Result<(), String> {
        composed::update_entry(u, p, grads, slots)
    }

    /// Appends the gradient of `p` to `host` (a zero gradient is allocated first
    /// when `p` has none): the gather half of the gradient all-reduce.
    fn gradient_to_host(
        p: &T1<Self, NoneTape>,
        grads: &mut Gradients<f32, Self>,
        host: &mut Vec<f32>,
    ) -> Result<(), String> {
        composed::gradient_to_host(p, grads, host)
    }

    /// Sets the gradient of `p` to `scale · host[..n]` (`n` = `p`'s length): the
    /// scatter half of the gradient all-reduce.
    fn gradient_from_host(
        p: &T1<Self, NoneTape>,
        grads: &mut Gradients<f32, Self>,
        host: &[f32],
        scale: f32,
    ) -> Result<(), String> {
        composed::gradient_from_host(p, grads, host, scale)
    }
}
