//! The checks of `nn_ops.rs` again with the CPU kernels on their AVX2+FMA paths
//! (what a machine without AVX-512 runs; the portable paths where the CPU lacks
//! AVX2), in a process of their own because the choice is process-wide.

#[path = "nn_ops.rs"]
mod nn_ops;

fn before_kernels() {
    recipe::nn::ops::use_avx2_kernels();
}
