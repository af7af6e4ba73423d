//! A cheap registry of time spent per op, for `recipe bench`'s breakdown.
//!
//! Disabled by default: a kernel then pays one relaxed atomic load. When enabled,
//! kernels add their forward and backward wall time under names like `conv2d.fwd`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

/// Turns recording on or off.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether recording is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Clears all recorded times.
pub fn reset() {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// A running measurement; records its elapsed time under `name` when finished.
pub struct Timer {
    name: &'static str,
    start: Option<Instant>,
}

/// Starts timing `name` (a no-op when recording is off).
pub fn start(name: &'static str) -> Timer {
    Timer {
        name,
        start: enabled().then(Instant::now),
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(s) = self.start {
            let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            let e = t.entry(self.name).or_default();
            e.0 += s.elapsed();
            e.1 += 1;
        }
    }
}

/// Adds `d` to `name` (used for work measured outside a kernel, e.g. the optimiser).
pub fn record(name: &'static str, d: Duration) {
    if enabled() {
        let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        let e = t.entry(name).or_default();
        e.0 += d;
        e.1 += 1;
    }
}

/// `(name, total time, calls)` for every recorded name, slowest first.
pub fn snapshot() -> Vec<(&'static str, Duration, u64)> {
    let t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = t.iter().map(|(k, (d, c))| (*k, *d, *c)).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}
