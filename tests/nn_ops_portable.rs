//! The checks of `nn_ops.rs` again with the CPU kernels on their portable paths
//! (what a machine without AVX-512 runs), in a process of their own because the
//! choice is process-wide.

#[path = "nn_ops.rs"]
mod nn_ops;

fn before_kernels() {
    recipe::nn::ops::use_portable_kernels();
}
