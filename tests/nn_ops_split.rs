//! The checks of `nn_ops.rs` again with the AVX-512 paths on and the AVX2 products
//! serving the many-channel convolutions (the mix AMD Zen 4 runs by default),
//! whatever the CPU; on a CPU without AVX-512 this is its default AVX2 set. In a
//! process of its own because the choice is process-wide.

#[path = "nn_ops.rs"]
mod nn_ops;

fn before_kernels() {
    recipe::nn::ops::use_split_kernels();
}
