//! The process's resources: the one rule for how many threads a rank uses, the sizing
//! of the kernels' thread pool, and peak memory and CPU time for reports.
//!
//! Every command that computes (`run`, `eval`, `bench`, `plan`, `preview`) sizes its
//! threads through [`threads`] and [`configure_threads`], so a rank under `mpirun`
//! shares the machine's cores the same way whichever command it runs.

use std::time::Duration;

/// Threads for one process of a job of `ranks` processes: `requested` when positive;
/// for 0 ("every core"), the cores this process may use, divided by the ranks the
/// launcher placed on this machine when there are several.
pub fn threads(requested: usize, ranks: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if ranks <= 1 {
        return cores;
    }
    (cores / crate::dist::local_ranks().unwrap_or(1).max(1)).max(1)
}

/// The processes a launcher (`mpirun`, `srun`) started for this job (1 without one).
pub fn launcher_ranks() -> usize {
    crate::dist::launcher_world_size().map_or(1, |(n, _)| n.max(1))
}

/// Sizes the kernels' and the loader's thread pool to `threads` (0: every core). Sizes
/// rayon's global pool (the kernels') once; a pool that already exists with another
/// size is reported, not silently kept.
///
/// Called on the process's main thread with two or more threads, the main thread
/// becomes one of the pool's workers: the training step runs there, so a kernel's
/// first half starts at once on the calling thread instead of waking a worker while
/// the caller sleeps, and the pool spawns one thread fewer. (Not from other threads: a
/// worker that exits, like a test's thread, would leave the pool a worker short.)
/// Afterwards [`crate::alloc::ParallelZero`] may clear large blocks on the pool.
pub fn configure_threads(threads: usize) -> Result<usize, String> {
    let n = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let mut builder = rayon::ThreadPoolBuilder::new().num_threads(n);
    if n >= 2 && std::thread::current().name() == Some("main") {
        builder = builder.use_current_thread();
    }
    let sized = match builder.build_global() {
        Ok(()) => Ok(n),
        Err(_) if rayon::current_num_threads() == n => Ok(n),
        Err(e) => Err(format!(
            "cannot size the thread pool to {n} threads ({e}); it already has {}",
            rayon::current_num_threads()
        )),
    };
    if sized.is_ok() {
        crate::alloc::enable_parallel_zeroing();
    }
    sized
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time (user + system) of all this process's threads so far.
pub fn cpu_time() -> Option<Duration> {
    // SAFETY: `getrusage` fills the zeroed struct it is given and reads nothing else.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut u) != 0 {
            return None;
        }
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Some(tv(u.ru_utime) + tv(u.ru_stime))
}

/// This machine's name as it may appear in a file name: characters other than ASCII
/// letters, digits, `-`, `_` and `.` become `_` (`localhost` when unknown). The
/// TensorBoard events file names carry it; `status.json` records it.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at most
    // that many and we read up to the first NUL within the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name: String = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end])
            .chars()
            .map(
                |c| match c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    true => c,
                    false => '_',
                },
            )
            .collect()
    } else {
        String::new()
    };
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_positive_request_is_kept_and_zero_means_every_core() {
        assert_eq!(threads(3, 1), 3);
        assert_eq!(threads(3, 4), 3);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(threads(0, 1), cores);
        assert!((1..=cores).contains(&threads(0, 4)));
    }

    #[test]
    fn memory_and_cpu_time_are_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mib().is_some_and(|m| m > 0.0));
            assert!(cpu_time().is_some());
        }
    }
}
