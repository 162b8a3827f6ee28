//! What a running node may ask of the engine, through free functions (nodes stay plain functions):
//!
//! - [`track_file`] / [`track_dir`]: fingerprint a file the node reads *and* record it as a dependency of
//!   the node's result. Next run, the cached result is only reused if the file is unchanged (checked with
//!   the size+mtime fast path). Use it for files a node discovers at run time (a download mirror, the files
//!   of a directory).
//! - [`progress`]: report progress (bytes, rows) to the progress bar.
//! - [`warn`]: a warning, shown after the run and kept in the run record.
//! - [`cache_dir`]: a directory inside the cache for a node's own caches (downloads).
//!
//! Outside a run (unit tests calling a node function directly) they still work: files are hashed without
//! the fast path, progress and warnings go nowhere.

use std::cell::RefCell;
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flowrun_cache::{FileDep, Store};

use crate::events::{Event, Observer};

/// The context of a running node: what it may use, and what it records.
pub(crate) struct NodeCx {
    pub store: Option<Arc<Store>>,
    pub observer: Arc<dyn Observer>,
    /// Display name (`node[item]`).
    pub node: Arc<str>,
    pub deps: Vec<FileDep>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

thread_local! {
    /// The context of the node running on this thread, set by [`enter`] for the length of its call.
    static CURRENT: RefCell<Option<NodeCx>> = const { RefCell::new(None) };
}

/// Runs a node's call `f` with a context for node `node` (its display name) as this thread's; gives back
/// the call's result (`Err` if it panicked) and the context, with what the node recorded.
pub(crate) fn enter<R>(
    store: Option<Arc<Store>>,
    observer: Arc<dyn Observer>,
    node: Arc<str>,
    f: impl FnOnce() -> R,
) -> (std::thread::Result<R>, NodeCx) {
    let cx = NodeCx { store, observer, node, deps: Vec::new(), warnings: Vec::new(), notes: Vec::new() };
    let previous = CURRENT.replace(Some(cx));
    let out = std::panic::catch_unwind(AssertUnwindSafe(f));
    // contexts nest: while a node waits for its own rayon work, the thread may run another node's call
    (out, CURRENT.replace(previous).expect("the context set above"))
}

fn with_current<R>(f: impl FnOnce(Option<&mut NodeCx>) -> R) -> R {
    CURRENT.with_borrow_mut(|cx| f(cx.as_mut()))
}

/// The running node's observer and display name, if any (taken out, so the observer runs unborrowed).
fn observer() -> Option<(Arc<dyn Observer>, Arc<str>)> {
    with_current(|cx| cx.map(|cx| (cx.observer.clone(), cx.node.clone())))
}

/// Content hash of a file (fast path when a run's cache is available). Does not record a dependency.
pub fn fingerprint_file(path: &Path) -> io::Result<blake3::Hash> {
    let store = with_current(|cx| cx.and_then(|cx| cx.store.clone()));
    store.map_or_else(|| flowrun_cache::fingerprint::hash_path(path), |store| store.fingerprint_file(path))
}

/// Content hash of a directory tree. Does not record a dependency.
pub fn fingerprint_dir(path: &Path) -> io::Result<blake3::Hash> {
    flowrun_cache::fingerprint::hash_dir(path, fingerprint_file)
}

/// Fingerprints `path` and records it as a dependency of the running node's result.
pub fn track_file(path: &Path) -> io::Result<blake3::Hash> {
    let hash = fingerprint_file(path)?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    with_current(|cx| cx.map(|cx| cx.deps.push(FileDep { path: abs, hash: hash.to_hex().to_string() })));
    Ok(hash)
}

/// Records the listing of `dir` (the names in it, not their contents) as a dependency: the result is
/// recomputed when an entry appears or disappears.
pub fn track_listing(dir: &Path) -> io::Result<blake3::Hash> {
    track_file(dir)
}

/// Fingerprints every file below `dir`, recording each as a dependency; returns the tree's hash.
pub fn track_dir(dir: &Path) -> io::Result<blake3::Hash> {
    flowrun_cache::fingerprint::hash_dir(dir, track_file)
}

/// Reports progress of the running node.
pub fn progress(done: u64, total: Option<u64>) {
    if let Some((obs, node)) = observer() {
        obs.event(&Event::Progress { node: &node, done, total });
    }
}

/// Says something about the node's result that a user wants to see on every run, not only when it is
/// computed: which CRS a dataset was read in, how many rows were kept and why others were dropped. Notes
/// are shown in the run's summary and `--json` (`notes`), and stored with the cached result, so a rerun
/// that reuses it shows them again. Outside a node run, printed to stderr.
pub fn note(message: impl Into<String>) {
    let message = message.into();
    with_current(|cx| match cx {
        Some(cx) => cx.notes.push(message),
        None => eprintln!("note: {message}"),
    });
}

/// Records a warning for the running node.
pub fn warn(message: impl Into<String>) {
    let message = message.into();
    if let Some((obs, node)) = observer() {
        obs.event(&Event::Warning { node: Some(&node), message: &message });
    }
    with_current(|cx| match cx {
        Some(cx) => cx.warnings.push(message),
        None => eprintln!("warning: {message}"),
    });
}

/// A directory for a node's own caches (e.g. downloads), inside the run's cache directory. Without a
/// cache, a directory of this process's own under the system temp dir (`flowrun-nocache-<pid>`); those of
/// processes that have ended are removed when the next one is made.
pub fn cache_dir(name: &str) -> PathBuf {
    let root = with_current(|cx| cx.and_then(|cx| cx.store.as_ref().map(|s| s.root().to_path_buf())));
    let dir = root.unwrap_or_else(no_cache_dir).join(name);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn no_cache_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("flowrun-nocache-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        tmp.join(format!("flowrun-nocache-{}", std::process::id()))
    })
    .clone()
}

/// Display name of the running node (`node[item]`), if any.
pub fn node_name() -> Option<String> {
    with_current(|cx| cx.map(|cx| cx.node.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_a_cache_each_process_downloads_into_its_own_directory() {
        // a directory an ended process left (no pid is this large)
        let stale = std::env::temp_dir().join("flowrun-nocache-4000000000");
        std::fs::create_dir_all(stale.join("downloads")).unwrap();
        let dir = super::cache_dir("downloads");
        assert_eq!(dir, std::env::temp_dir().join(format!("flowrun-nocache-{}", std::process::id())).join("downloads"));
        assert!(dir.is_dir());
        assert!(!stale.exists(), "the ended process's directory is removed");
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
