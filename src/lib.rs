//! `recipe`: declarative contrastive representation learning on images.
//!
//! A YAML *recipe* flows one way through the crate:
//!
//! ```text
//! YAML text --spec::load--> typed Recipe --spec::check--> validated Recipe
//!   --build--> { data loader, augment chain, model (nn), objective, optimiser }
//!   --train--> checkpoints + metrics --eval--> downstream results --report--> run dir
//! ```
//!
//! The language layer ([`spec`], [`diag`]) knows nothing about tensors; the engine
//! ([`nn`], [`optim`], [`objective`]) knows nothing about YAML; the binary is a thin
//! shell over this library. See `ARCHITECTURE.md` for the codemap.

pub mod alloc;
pub mod augment;
pub mod bench;
pub mod build;
pub mod checkpoint;
pub mod data;
pub mod device_check;
pub mod diag;
pub mod dist;
/// Downstream evaluation of an encoder: features, kNN, linear probe, fine-tuning, PCA.
pub mod eval;
pub mod experiment;
pub mod nn;
pub mod objective;
pub mod optim;
pub mod plan;
/// Run outputs for people: metrics files, charts, image grids and `report.md`.
pub mod report;
pub mod spec;
pub mod train;

/// Keeps freed large blocks in the process heap for reuse (glibc only).
///
/// The engine's CPU kernels allocate fresh multi-megabyte buffers for every op. glibc
/// serves blocks above 128 KiB with `mmap` and returns them with `munmap` on free, so
/// every op pays page faults and kernel page zeroing again; raising the mmap and trim
/// thresholds lets the heap recycle them. Measured on the 2-core development machine:
/// +25% training-step throughput for a small ResNet (414 → 518 images/s), peak RSS
/// unchanged. With mmap off altogether (blocks over 32 MiB, e.g. batch-512
/// activations, too): the shipped SimCLR recipe's step 780 → 1,220 images/s.
/// Call once at start-up, before threads allocate.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before the
    // program allocates from other threads, and the values are valid sizes.
    unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        // Blocks over the 32 MiB cap would still be mmap-ed and unmapped on every
        // step; on the VM we measure on, faulting their pages back in cost more
        // than the convolutions (batch-512 recipe: 780 → 1,220 images/s without).
        libc::mallopt(libc::M_MMAP_MAX, 0);
    }
}
