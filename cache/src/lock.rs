//! One writer at a time: an advisory lock on a file (`flock`, released by the kernel when its process
//! dies, even by SIGKILL). The holder writes who it is into the file, so a second process can say what it
//! waits for. Runs take their cache directory's lock; `cache gc` and `cache clear` take it too, so they
//! never pull a blob from under a run.
//!
//! ```
//! use flowrun_cache::lock::FileLock;
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("lock");
//! let held = FileLock::acquire(&path, "run A", false, |_| {}).unwrap();
//! let busy = FileLock::acquire(&path, "run B", false, |_| {}).unwrap_err();
//! assert!(busy.to_string().contains("run A"));
//! drop(held);
//! FileLock::acquire(&path, "run B", false, |_| {}).unwrap();
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{CacheError, Result};

static STOP: OnceLock<&'static AtomicBool> = OnceLock::new();

/// A flag (the CLI's Ctrl-C) that ends every wait for a lock: [`FileLock::acquire`] then fails with an
/// `Interrupted` error instead of waiting on.
pub fn stop_waiting_when(flag: &'static AtomicBool) {
    let _ = STOP.set(flag);
}

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Takes the lock on `path` (created if needed) for `holder` (e.g. "`flowrun run flow.toml` (pid 12)").
    /// When another process holds it: with `wait`, calls `on_wait` with that holder's words once and waits
    /// until it is released (or the flag of [`stop_waiting_when`] is set); without, fails with
    /// [`CacheError::Busy`].
    pub fn acquire(path: &Path, holder: &str, wait: bool, on_wait: impl FnOnce(&str)) -> Result<FileLock> {
        let io = |source| CacheError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut other = String::new();
                let _ = file.read_to_string(&mut other);
                let other = if other.trim().is_empty() { "another flowrun process".to_string() } else { other };
                if !wait {
                    return Err(CacheError::Busy { path: path.to_path_buf(), holder: other.trim().to_string() });
                }
                on_wait(other.trim());
                // polled, so that a Ctrl-C ends the wait
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    if STOP.get().is_some_and(|f| f.load(Ordering::Relaxed)) {
                        let holder = other.trim().to_string();
                        return Err(CacheError::Interrupted { path: path.to_path_buf(), holder });
                    }
                    match file.try_lock() {
                        Ok(()) => break,
                        Err(TryLockError::WouldBlock) => {}
                        Err(TryLockError::Error(e)) => return Err(io(e)),
                    }
                }
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(holder.as_bytes())).map_err(io)?;
        Ok(FileLock { _file: file })
    }

    /// Where a lock for `target` lives: `<target>.lock` beside it.
    pub fn beside(target: &Path) -> PathBuf {
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        target.with_file_name(name)
    }
}
