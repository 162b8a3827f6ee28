use std::path::PathBuf;

/// Errors of the cache store. Each names the file it was about.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file or directory of the cache could not be read or written.
    #[error("cache I/O error on {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The SQLite index failed.
    #[error("cache index {path} failed: {source} (if it is damaged, `flowrun cache clear` starts afresh)")]
    Db {
        /// The index file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A wait for a lock ended by Ctrl-C.
    #[error("stopped waiting for {holder} to release {path} (Ctrl-C)")]
    Interrupted {
        /// The lock file.
        path: std::path::PathBuf,
        /// Who held it.
        holder: String,
    },
    /// Another process holds a lock this one was told not to wait for (`--no-wait`).
    #[error("{path} is held by {holder}: wait for it (drop --no-wait), or stop it")]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, in its own words.
        holder: String,
    },
}

/// Result with a [`CacheError`].
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
