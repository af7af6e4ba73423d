//! Ctrl-C and SIGTERM as a request to stop at the next step boundary.
//!
//! The handler only sets an atomic flag (the one thing a signal handler may safely
//! do); the training loop polls it after every step, writes a checkpoint and returns.
//! A second signal while stopping is left to the default action again, so a stuck
//! process can still be killed.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    // SAFETY: restoring the default disposition is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
}

/// Installs the handlers for SIGINT and SIGTERM (no-op off Unix).
pub fn install() {
    #[cfg(unix)]
    // SAFETY: the handler only touches an atomic and calls `signal`, both
    // async-signal-safe; the function pointer has the C ABI `signal` expects.
    unsafe {
        let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Requests a stop as a signal would (tests, embedding programs).
pub fn request() {
    STOP.store(true, Ordering::SeqCst);
}

/// Clears a request (tests that run several trainings in one process).
pub fn clear() {
    STOP.store(false, Ordering::SeqCst);
}
