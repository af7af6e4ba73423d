//! The MPI collective (`mpi` feature): rsmpi over `MPI_COMM_WORLD`.
//!
//! [`init`] initialises MPI once per process and returns a guard that finalises it when
//! dropped; keep it alive for the whole program (the binary holds it in `main`). A
//! collective called with MPI's default error handler aborts the whole job on a
//! communication failure, and a rank that exits early makes `mpirun`/`srun` stop the
//! others, so a dead rank never leaves the job hanging in a collective.

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use super::{Collective, Dist, DistError};

/// Keeps MPI initialised; finalises it on drop.
pub struct MpiGuard {
    _universe: Universe,
}

/// The collective over `MPI_COMM_WORLD`.
pub struct Mpi {
    comm: SimpleCommunicator,
    rank: usize,
    world: usize,
}

/// Initialises MPI (threads funnelled: only the training thread communicates), checks
/// the launcher (see [`super::check_launcher`]) and returns the guard and the world's
/// collective.
pub fn init() -> Result<(MpiGuard, Dist), DistError> {
    let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
        .ok_or_else(|| DistError("MPI is already initialised in this process".into()))?;
    let comm = universe.world();
    let world = comm.size() as usize;
    super::check_launcher(world, true)?;
    let m = Mpi {
        rank: comm.rank() as usize,
        world,
        comm,
    };
    Ok((
        MpiGuard {
            _universe: universe,
        },
        std::rc::Rc::new(m),
    ))
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi {{ rank: {}, world: {} }}", self.rank, self.world)
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) {
        // rsmpi 0.8 has no MPI_IN_PLACE: reduce from a copy.
        let send = buf.to_vec();
        self.comm
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        super::count_bytes(buf.len() * 4);
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        let send = buf.to_vec();
        self.comm
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
    }

    fn all_reduce_max_f64(&self, buf: &mut [f64]) {
        let send = buf.to_vec();
        self.comm
            .all_reduce_into(&send[..], buf, SystemOperation::max());
    }

    fn all_gather(&self, local: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; local.len() * self.world];
        self.comm.all_gather_into(local, &mut out[..]);
        super::count_bytes(local.len() * 4);
        out
    }

    fn reduce_scatter_sum(&self, full: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; full.len() / self.world];
        self.comm
            .reduce_scatter_block_into(full, &mut out[..], SystemOperation::sum());
        super::count_bytes(full.len() * 4);
        out
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) {
        self.comm.process_at_rank(root as i32).broadcast_into(buf);
    }

    fn barrier(&self) {
        self.comm.barrier();
    }

    fn wait_for_all(&self) {
        let mut req = self.comm.immediate_barrier();
        loop {
            match req.test() {
                Ok(_) => return,
                Err(r) => {
                    req = r;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
    }

    fn abort(&self, code: i32) -> ! {
        self.comm.abort(code)
    }

    fn describe(&self) -> String {
        let v = mpi::environment::library_version().unwrap_or_default();
        let first = v.split([',', '\n']).next().unwrap_or("").trim().to_string();
        format!("MPI, {} ranks ({first})", self.world)
    }
}
