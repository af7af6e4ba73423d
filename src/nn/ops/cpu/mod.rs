//! Fast CPU kernels: rayon over samples (or channels), gemm 0.19 for the matrix
//! products, registered on dfdx's tape as custom backward ops.
//!
//! Kernels read dfdx storage in place ([`buffers::view`]: a borrowed slice of a
//! row-major tensor) and hand results over with `tensor_from_vec` (no copy either).
//! Backward closures keep the input tensors they read (an `Arc`, not a copy), and
//! only when the tape records (`T::OWNS_TAPE`).
//!
//! One file per job: [`buffers`] (views of dfdx storage, pooled buffers, scratch), [`products`] (matrix
//! products), [`conv`] (the op and its two paths), [`norm`] (batch norm),
//! [`pool`], [`dense`] (linear, L2 normalisation), [`elementwise`] (ReLU, residual
//! join), [`bank`] (the memory bank's log-softmax), [`update`] (the fused optimiser
//! update and the gradient transfer of the all-reduce). The SIMD loops and products
//! live in `super::kernels`.
//!
//! Memory: the memory bank's large buffers ([`buffers::HostBuf`]) go back to a
//! bounded process-wide pool keyed by length, so the next step skips allocation and
//! zeroing; per-thread scratch ([`buffers::Scratch`]) does the same for im2col,
//! product and panel buffers. Batch-norm, ReLU and residual outputs are written
//! into uninitialised storage.
//!
//! Invariants: the output's layout never depends on the path; pooled and scratch
//! buffers are fully written before they are read; uninitialised storage is exposed
//! only after kernels that assert they wrote every element; every unsafe kernel call
//! is preceded by bounds asserts covering each offset.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::kernels;
use super::{BnConfig, BnRunning, EngineDevice, T1, T2, T4, Window};

/// Takes a gradient buffer out of `Gradients` (leaving an empty one): the output
/// gradient of an op is read by that op's backward only, so moving it saves a copy
/// and frees its memory early.
macro_rules! take_grad {
    ($grads:expr, $ghost:expr) => {
        std::mem::take(&mut **$grads.get_or_alloc_mut(&$ghost)?)
    };
}

mod bank;
mod buffers;
mod conv;
mod dense;
mod elementwise;
mod norm;
mod pool;
mod products;
mod update;

pub use bank::bank_log_softmax;
pub use conv::{conv2d, conv2d_data};
pub use dense::{l2_normalize, linear};
pub use elementwise::{add_relu, relu};
pub use norm::{batch_norm2d, batch_norm2d_relu};
pub use pool::{global_avg_pool, max_pool2d};

/// Threads of the rayon pool the kernels run on.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `dst += src`, in parallel chunks.
pub(crate) fn add_assign(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(d, s)| kernels::add_to(d, s));
}

impl EngineDevice for Cpu {
    fn conv2d<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        w: T4<Self, T>,
        b: Option<T1<Self, T>>,
        win: Window,
    ) -> T4<Self, T> {
        conv2d(x, w, b, win)
    }
    fn conv2d_data<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        w: T4<Self, T>,
        b: Option<T1<Self, T>>,
        win: Window,
    ) -> T4<Self, T> {
        conv2d_data(x, w, b, win)
    }
    fn max_pool2d<T: Tape<f32, Self>>(x: T4<Self, T>, win: Window) -> T4<Self, T> {
        max_pool2d(x, win)
    }
    fn global_avg_pool<T: Tape<f32, Self>>(x: T4<Self, T>) -> T2<Self, T> {
        global_avg_pool(x)
    }
    fn batch_norm2d<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        gamma: T1<Self, T>,
        beta: T1<Self, T>,
        running: &BnRunning<Self>,
        train: bool,
        cfg: BnConfig,
    ) -> (T4<Self, T>, Option<BnRunning<Self>>) {
        batch_norm2d(x, gamma, beta, running, train, cfg)
    }
    fn batch_norm2d_relu<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        gamma: T1<Self, T>,
        beta: T1<Self, T>,
        running: &BnRunning<Self>,
        train: bool,
        cfg: BnConfig,
    ) -> (T4<Self, T>, Option<BnRunning<Self>>) {
        batch_norm2d_relu(x, gamma, beta, running, train, cfg)
    }
    fn relu4<T: Tape<f32, Self>>(x: T4<Self, T>) -> T4<Self, T> {
        relu(x)
    }
    fn add_relu<T: Tape<f32, Self>>(a: T4<Self, T>, b: T4<Self, T>) -> T4<Self, T> {
        add_relu(a, b)
    }
    fn relu2<T: Tape<f32, Self>>(x: T2<Self, T>) -> T2<Self, T> {
        relu(x)
    }
    fn linear<T: Tape<f32, Self>>(
        x: T2<Self, T>,
        w: T2<Self, T>,
        b: Option<T1<Self, T>>,
    ) -> T2<Self, T> {
        linear(x, w, b)
    }
    fn l2_normalize<T: Tape<f32, Self>>(x: T2<Self, T>, eps: f32) -> T2<Self, T> {
        l2_normalize(x, eps)
    }
    fn bank_log_softmax<T: Tape<f32, Self>>(
        f: T2<Self, T>,
        bank: &[f32],
        idx: &[usize],
        scale: f32,
    ) -> T2<Self, T> {
        bank_log_softmax(f, bank, idx, scale)
    }
    fn update_entry(
        u: &super::update::EntryUpdate,
        p: &mut T1<Self, NoneTape>,
        grads: &mut Gradients<f32, Self>,
        slots: &mut [T1<Self, NoneTape>],
    ) -> Result<(), String> {
        update::update_entry(u, p, grads, slots)
    }
    fn gradient_to_host(
        p: &T1<Self, NoneTape>,
        grads: &mut Gradients<f32, Self>,
        host: &mut Vec<f32>,
    ) -> Result<(), String> {
        update::gradient_to_host(p, grads, host)
    }
    fn gradient_from_host(
        p: &T1<Self, NoneTape>,
        grads: &mut Gradients<f32, Self>,
        host: &[f32],
        scale: f32,
    ) -> Result<(), String> {
        update::gradient_from_host(p, grads, host, scale)
    }
}
