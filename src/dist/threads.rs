//! In-process ranks: a [`Collective`] whose ranks are threads of one process, for tests
//! of the data-parallel code without an MPI installation (`cargo test` runs the
//! equivalence of K ranks and one process with it; the MPI test repeats it across
//! processes).

use std::sync::{Arc, Barrier, Mutex};

use super::Collective;

struct Shared {
    world: usize,
    slots: Mutex<Vec<Vec<u64>>>,
    barrier: Barrier,
}

/// One thread's handle on a group of in-process ranks.
pub struct ThreadRanks {
    rank: usize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ThreadRanks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ThreadRanks {{ rank: {}, world: {} }}",
            self.rank, self.shared.world
        )
    }
}

/// `world` handles, one per rank; give each to its own thread. Every rank must make
/// the same sequence of collective calls, as with MPI.
pub fn group(world: usize) -> Vec<ThreadRanks> {
    let shared = Arc::new(Shared {
        world,
        slots: Mutex::new(vec![Vec::new(); world]),
        barrier: Barrier::new(world),
    });
    (0..world)
        .map(|rank| ThreadRanks {
            rank,
            shared: shared.clone(),
        })
        .collect()
}

impl ThreadRanks {
    /// Deposits `mine` (raw bits), waits for all, returns every rank's deposit in rank
    /// order.
    fn exchange(&self, mine: Vec<u64>) -> Vec<Vec<u64>> {
        let s = &self.shared;
        s.slots.lock().unwrap_or_else(|e| e.into_inner())[self.rank] = mine;
        s.barrier.wait();
        let all = s.slots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Nobody may overwrite a slot before every rank has read them all.
        s.barrier.wait();
        all
    }

    fn reduce(&self, buf: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
        let all = self.exchange(buf.iter().map(|x| x.to_bits()).collect());
        let mut out: Vec<f64> = all[0].iter().map(|&b| f64::from_bits(b)).collect();
        for other in &all[1..] {
            for (o, x) in out.iter_mut().zip(other) {
                *o = f(*o, f64::from_bits(*x));
            }
        }
        out
    }
}

fn bits(v: &[f32]) -> Vec<u64> {
    v.iter().map(|&x| u64::from(x.to_bits())).collect()
}

fn f(b: u64) -> f32 {
    f32::from_bits(b as u32)
}

impl Collective for ThreadRanks {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) {
        // Summed in f32 in rank order, as a 2-rank MPI reduction does.
        let all = self.exchange(bits(buf));
        for (i, b) in buf.iter_mut().enumerate() {
            *b = all.iter().fold(0.0f32, |s, r| s + f(r[i]));
        }
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        buf.copy_from_slice(&self.reduce(buf, |a, b| a + b));
    }
    fn all_reduce_max_f64(&self, buf: &mut [f64]) {
        buf.copy_from_slice(&self.reduce(buf, f64::max));
    }
    fn all_gather(&self, local: &[f32]) -> Vec<f32> {
        self.exchange(bits(local))
            .into_iter()
            .flatten()
            .map(f)
            .collect()
    }
    fn reduce_scatter_sum(&self, full: &[f32]) -> Vec<f32> {
        let all = self.exchange(bits(full));
        let block = full.len() / self.shared.world;
        (0..block)
            .map(|i| {
                all.iter()
                    .fold(0.0f32, |s, r| s + f(r[self.rank * block + i]))
            })
            .collect()
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) {
        let all = self.exchange(bits(buf));
        for (b, x) in buf.iter_mut().zip(&all[root]) {
            *b = f(*x);
        }
    }
    fn barrier(&self) {
        self.shared.barrier.wait();
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        format!("{} in-process ranks", self.shared.world)
    }
}
