//! Ctrl-C: the first one lets the running nodes finish (their results are cached) and starts no other; the
//! second one exits at once. Either way the cache stays whole: its index commits are SQLite transactions
//! and its blob files are renamed into place, and the lake is written only by a run that was not stopped.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the SIGINT handler (once) and gives the flag the engine watches.
pub fn watch() -> &'static AtomicBool {
    #[cfg(unix)]
    {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        // SAFETY: `on_sigint` only touches an atomic and calls async-signal-safe `write` and `_exit`.
        INSTALLED.call_once(|| unsafe {
            libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        });
    }
    &INTERRUPTED
}

/// Whether a Ctrl-C came.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: `_exit` is async-signal-safe; nothing is flushed, which is the point of a second Ctrl-C
        unsafe { libc::_exit(130) };
    }
    let msg = b"\ninterrupted: finishing the running nodes (Ctrl-C again to stop now)\n";
    // SAFETY: `write` is async-signal-safe; the buffer is static
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}
