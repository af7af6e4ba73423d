//! Data-parallel communication: the [`Collective`] trait the training step and the
//! objectives use (rank, world size, all-reduce, all-gather, reduce-scatter,
//! broadcast), with a single-process implementation ([`Solo`]) and an MPI one
//! ([`mpi::Mpi`], behind the `mpi` cargo feature).
//!
//! Invariants:
//! - Callers branch on `world() == 1` and keep their single-process code path, so the
//!   non-distributed binary pays nothing (no copies, no calls) for this module.
//! - Every collective is called in the same order on every rank (the training step is
//!   the same program on every rank), so no tags or matching are needed.
//! - Gathered buffers are rank-major: rank 0's block, then rank 1's, …; the helpers in
//!   [`layout`] turn them into the view-major row order one process would have.
//! - `train.batch_size` is the global batch; rank `r` of `K` trains on images
//!   `[r·B/K, (r+1)·B/K)` of every global batch ([`shard_range`]).

pub mod grads;
pub mod layout;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod threads;

use std::rc::Rc;
use std::time::Instant;

use crate::data::{Batch, ViewBatch};
use crate::nn::ops::timing;

/// Collective communication between the ranks of one data-parallel job.
///
/// Buffers are host `f32`/`f64` slices. The single-process implementation never copies
/// where it can avoid it; callers skip it entirely when `world() == 1`.
pub trait Collective: std::fmt::Debug {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Element-wise sum over ranks, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    /// Element-wise sum over ranks of `f64` values, in place.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]);
    /// Element-wise maximum over ranks, in place.
    fn all_reduce_max_f64(&self, buf: &mut [f64]);
    /// Every rank's `local` (all of the same length), concatenated in rank order.
    fn all_gather(&self, local: &[f32]) -> Vec<f32>;
    /// `full` is `world()` equal blocks; returns the element-wise sum over ranks of
    /// block `rank()` (the backward of [`all_gather`](Self::all_gather)).
    fn reduce_scatter_sum(&self, full: &[f32]) -> Vec<f32>;
    /// Overwrites `buf` on every rank with rank `root`'s.
    fn broadcast(&self, buf: &mut [f32], root: usize);
    /// Waits for every rank.
    fn barrier(&self);
    /// Waits for every rank without spinning on a core (sleeps between polls): for
    /// ranks idle while rank 0 alone runs the downstream tasks.
    fn wait_for_all(&self) {
        self.barrier()
    }
    /// Stops every rank of the job with exit code `code` (a failed rank must not leave
    /// the others waiting in a collective).
    fn abort(&self, code: i32) -> !;
    /// The implementation's name, for logs (`single process`, `MPI (Open MPI …)`).
    fn describe(&self) -> String;
}

/// The collective of a single process: rank 0 of 1; every operation is the identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) {}
    fn all_reduce_max_f64(&self, _buf: &mut [f64]) {}
    fn all_gather(&self, local: &[f32]) -> Vec<f32> {
        local.to_vec()
    }
    fn reduce_scatter_sum(&self, full: &[f32]) -> Vec<f32> {
        full.to_vec()
    }
    fn broadcast(&self, _buf: &mut [f32], _root: usize) {}
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "single process".into()
    }
}

/// A shared handle to the job's collective. Not `Send`: Open MPI's communicator is a
/// pointer handle that stays on the thread that trains (each in-process test rank makes
/// its own on its thread).
pub type Dist = Rc<dyn Collective>;

/// The single-process collective as a [`Dist`].
pub fn solo() -> Dist {
    Rc::new(Solo)
}

/// Why a distributed job cannot start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistError(pub String);

impl std::fmt::Display for DistError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DistError {}

/// The images `[start, end)` of a global batch of `batch` images that rank `rank` of
/// `world` trains on; an error unless `batch` splits evenly.
pub fn shard_range(batch: usize, rank: usize, world: usize) -> Result<(usize, usize), DistError> {
    if world == 0 || rank >= world {
        return Err(DistError(format!("rank {rank} of a world of {world}")));
    }
    if batch == 0 || !batch.is_multiple_of(world) {
        return Err(DistError(format!(
            "train.batch_size {batch} is the global batch and must split evenly over {world} ranks \
             (use a multiple of {world})"
        )));
    }
    let per = batch / world;
    Ok((rank * per, (rank + 1) * per))
}

/// Rank `rank`'s slice of a global batch `b`: images `[rank·n, (rank+1)·n)` of every
/// view (n = B / world), with their dataset indices and labels. What a sharded loader
/// yields; used by `recipe bench` and the equivalence test on synthetic batches.
pub fn slice_batch(b: &Batch, rank: usize, world: usize) -> Result<Batch, DistError> {
    let (lo, hi) = shard_range(b.indices.len(), rank, world)?;
    Ok(Batch {
        views: b
            .views
            .iter()
            .map(|v| {
                let per = v.data.len() / v.shape[0].max(1);
                ViewBatch {
                    data: v.data[lo * per..hi * per].to_vec(),
                    shape: [hi - lo, v.shape[1], v.shape[2], v.shape[3]],
                }
            })
            .collect(),
        indices: b.indices[lo..hi].to_vec(),
        labels: b.labels.as_ref().map(|l| l[lo..hi].to_vec()),
    })
}

/// The world size the launcher announces in the environment, if any: Open MPI's
/// `OMPI_COMM_WORLD_SIZE`, MPICH/Hydra's and Intel MPI's `PMI_SIZE`, or SLURM's
/// `SLURM_STEP_NUM_TASKS` (set inside an `srun` step, not in the batch script itself).
pub fn launcher_world_size() -> Option<(usize, &'static str)> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .iter()
        .find_map(|k| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .map(|n| (n, *k))
        })
}

/// Ranks of this job on this machine, as the launcher announces them (Open MPI's
/// `OMPI_COMM_WORLD_LOCAL_SIZE`, MPICH's `MPI_LOCALNRANKS`, SLURM's
/// `SLURM_NTASKS_PER_NODE`): `train.threads: 0` gives each rank its share of the cores.
pub fn local_ranks() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_NTASKS_PER_NODE",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.trim().parse::<usize>().ok())
}

/// Errors when the launcher started more processes than the communicator holds: a
/// binary built against one MPI and launched by another's `mpirun` (or a binary built
/// without the `mpi` feature under `mpirun`) would otherwise train `K` independent
/// copies that overwrite each other's run directory.
pub fn check_launcher(world: usize, built_with_mpi: bool) -> Result<(), DistError> {
    launcher_mismatch(world, built_with_mpi, launcher_world_size())
}

/// [`check_launcher`] with the launcher's announcement given: `(size, variable)`.
pub fn launcher_mismatch(
    world: usize,
    built_with_mpi: bool,
    launcher: Option<(usize, &str)>,
) -> Result<(), DistError> {
    match launcher {
        Some((n, var)) if n > 1 && world != n => Err(DistError(if built_with_mpi {
            format!(
                "the launcher started {n} processes ({var}={n}) but MPI sees a world of {world}: \
                 this binary was built against a different MPI than the `mpirun` that launched it \
                 (e.g. Open MPI vs MPICH); launch it with the matching `mpirun`, or rebuild \
                 (`MPICC=...` picks the MPI at build time)"
            )
        } else {
            format!(
                "the launcher started {n} processes ({var}={n}) but this binary was built without \
                 the `mpi` feature, so each would train alone; rebuild with `cargo build --release \
                 --features mpi`"
            )
        })),
        _ => Ok(()),
    }
}

/// Runs `f` and records its time under `name` in `recipe bench`'s breakdown.
pub(crate) fn timed<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    if !timing::enabled() {
        return f();
    }
    let t = Instant::now();
    let r = f();
    timing::record(name, t.elapsed());
    r
}

/// Bytes each rank has sent through collectives since the last [`take_bytes_sent`]
/// (counted as the payload it contributes: its block of a gather, its buffer of an
/// all-reduce), for `recipe bench`'s communication rows.
static BYTES_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Adds `n` bytes to the running count of [`take_bytes_sent`] (for `Collective`
/// implementations that move data between ranks).
pub fn count_bytes(n: usize) {
    BYTES_SENT.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Payload bytes this rank contributed to collectives since the last call; resets.
pub fn take_bytes_sent() -> u64 {
    BYTES_SENT.swap(0, std::sync::atomic::Ordering::Relaxed)
}

/// Digest of a parameter vector (FNV-1a over the bits), to check that every rank
/// holds the same parameters.
pub fn digest(values: impl IntoIterator<Item = f32>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Synchronised batch norm over the ranks of a job: the hook the batch-norm kernel
/// calls while [`crate::nn::ops::bn_sync::with_bn_sync`] has it installed.
#[derive(Debug)]
pub struct SyncBatchNorm(pub Dist);

impl crate::nn::ops::bn_sync::BnSync for SyncBatchNorm {
    fn moments(&self, mean: &mut [f32], var: &mut [f32], count: usize) -> usize {
        let c = mean.len();
        let mut local = Vec::with_capacity(2 * c + 1);
        local.extend_from_slice(mean);
        local.extend_from_slice(var);
        local.push(count as f32);
        let all = timed("comm.sync_bn", || self.0.all_gather(&local));
        // Chan et al.'s parallel combination, in rank order (the same on every rank).
        let blocks: Vec<&[f32]> = all.chunks(2 * c + 1).collect();
        let total: f64 = blocks.iter().map(|b| b[2 * c] as f64).sum();
        for ci in 0..c {
            let mu: f64 = blocks
                .iter()
                .map(|b| b[2 * c] as f64 * b[ci] as f64)
                .sum::<f64>()
                / total;
            let v: f64 = blocks
                .iter()
                .map(|b| {
                    let d = b[ci] as f64 - mu;
                    b[2 * c] as f64 * (b[c + ci] as f64 + d * d)
                })
                .sum::<f64>()
                / total;
            mean[ci] = mu as f32;
            var[ci] = v as f32;
        }
        total as usize
    }

    fn grad_sums(&self, sum_gy: &mut [f32], sum_gxc: &mut [f32]) {
        let c = sum_gy.len();
        let mut both = [&*sum_gy, &*sum_gxc].concat();
        timed("comm.sync_bn", || self.0.all_reduce_sum(&mut both));
        sum_gy.copy_from_slice(&both[..c]);
        sum_gxc.copy_from_slice(&both[c..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_global_batch_in_rank_order() {
        assert_eq!(shard_range(8, 0, 2).unwrap(), (0, 4));
        assert_eq!(shard_range(8, 1, 2).unwrap(), (4, 8));
        assert_eq!(shard_range(9, 0, 1).unwrap(), (0, 9));
        assert!(
            shard_range(9, 0, 2)
                .unwrap_err()
                .0
                .contains("multiple of 2")
        );
        assert!(shard_range(8, 2, 2).is_err());
    }

    #[test]
    fn solo_is_the_identity() {
        let s = Solo;
        let mut b = [1.0f32, 2.0];
        s.all_reduce_sum(&mut b);
        assert_eq!(b, [1.0, 2.0]);
        assert_eq!(s.all_gather(&b), vec![1.0, 2.0]);
        assert_eq!(s.reduce_scatter_sum(&b), vec![1.0, 2.0]);
        assert_eq!((s.rank(), s.world()), (0, 1));
    }

    #[test]
    fn a_launcher_announcing_more_ranks_than_mpi_sees_is_an_error() {
        assert!(launcher_mismatch(2, true, Some((2, "OMPI_COMM_WORLD_SIZE"))).is_ok());
        assert!(launcher_mismatch(1, true, None).is_ok());
        assert!(launcher_mismatch(1, true, Some((1, "PMI_SIZE"))).is_ok());
        let e = launcher_mismatch(1, true, Some((4, "PMI_SIZE"))).unwrap_err();
        assert!(
            e.0.contains("PMI_SIZE=4") && e.0.contains("different MPI"),
            "{e}"
        );
        let e = launcher_mismatch(1, false, Some((2, "SLURM_STEP_NUM_TASKS"))).unwrap_err();
        assert!(e.0.contains("--features mpi"), "{e}");
    }

    #[test]
    fn digests_differ_on_one_bit() {
        assert_eq!(digest([1.0, 2.0]), digest([1.0, 2.0]));
        assert_ne!(
            digest([1.0, 2.0]),
            digest([1.0, f32::from_bits(2.0f32.to_bits() + 1)])
        );
    }
}
