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

use std::cell::{Cell, RefCell};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flowrun_cache::{FileDep, Store};

use crate::events::{Event, Observer};

/// The context of the node running on this thread: borrowed from the scheduler for the node's call.
pub(crate) struct NodeCx<'a> {
    pub store: Option<&'a Arc<Store>>,
    pub observer: Option<&'a Arc<dyn Observer>>,
    pub node: &'a str,
    pub deps: RefCell<Vec<FileDep>>,
    pub warnings: RefCell<Vec<String>>,
    pub notes: RefCell<Vec<String>>,
}

impl<'a> NodeCx<'a> {
    pub fn new(store: Option<&'a Arc<Store>>, observer: Option<&'a Arc<dyn Observer>>, node: &'a str) -> Self {
        NodeCx {
            store,
            observer,
            node,
            deps: RefCell::new(Vec::new()),
            warnings: RefCell::new(Vec::new()),
            notes: RefCell::new(Vec::new()),
        }
    }
}

thread_local! {
    /// The current context, set by [`enter`] for the duration of a node's call (null outside one). A
    /// pointer, not an owned context: entering a node then moves and clones nothing (it is done 100,000
    /// times in a big flow).
    static CURRENT: Cell<*const NodeCx<'static>> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with `cx` as the current context (the scoped thread-local pattern of the `scoped-tls` crate).
pub(crate) fn enter<R>(cx: &NodeCx<'_>, f: impl FnOnce() -> R) -> R {
    /// Puts the previous context back, also when `f` unwinds.
    struct Restore(*const NodeCx<'static>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    // the lifetime is erased only while `cx` is borrowed by this call: `with_current` hands it out for
    // the length of a closure, and `Restore` clears it before `cx` can go away
    let erased = std::ptr::from_ref(cx).cast::<NodeCx<'static>>();
    let _restore = Restore(CURRENT.with(|c| c.replace(erased)));
    f()
}

fn with_current<R>(f: impl FnOnce(Option<&NodeCx<'_>>) -> R) -> R {
    let current = CURRENT.with(Cell::get);
    // SAFETY: a non-null pointer was set by `enter`, whose borrowed context outlives its call, and is
    // reset when that call returns or unwinds; the reference given to `f` cannot outlive `f`
    f(unsafe { current.as_ref() })
}

/// Content hash of a file (fast path when a run's cache is available). Does not record a dependency.
pub fn fingerprint_file(path: &Path) -> io::Result<blake3::Hash> {
    let store = with_current(|cx| cx.and_then(|cx| cx.store.cloned()));
    match store {
        Some(store) => store.fingerprint_file(path),
        None => flowrun_cache::fingerprint::hash_path(path),
    }
}

/// Content hash of a directory tree. Does not record a dependency.
pub fn fingerprint_dir(path: &Path) -> io::Result<blake3::Hash> {
    flowrun_cache::fingerprint::hash_dir(path, fingerprint_file)
}

/// Fingerprints `path` and records it as a dependency of the running node's result.
pub fn track_file(path: &Path) -> io::Result<blake3::Hash> {
    let hash = fingerprint_file(path)?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    with_current(|cx| {
        if let Some(cx) = cx {
            cx.deps.borrow_mut().push(FileDep { path: abs, hash: hash.to_hex().to_string() });
        }
    });
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
    with_current(|cx| {
        if let Some(cx) = cx
            && let Some(obs) = &cx.observer
        {
            obs.event(&Event::Progress { node: cx.node, done, total });
        }
    });
}

/// Says something about the node's result that a user wants to see on every run, not only when it is
/// computed: which CRS a dataset was read in, how many rows were kept and why others were dropped. Notes
/// are shown in the run's summary and `--json` (`notes`), and stored with the cached result, so a rerun
/// that reuses it shows them again. Outside a node run, printed to stderr.
pub fn note(message: impl Into<String>) {
    let message = message.into();
    with_current(|cx| match cx {
        Some(cx) => cx.notes.borrow_mut().push(message),
        None => eprintln!("note: {message}"),
    });
}

/// Records a warning for the running node.
pub fn warn(message: impl Into<String>) {
    let message = message.into();
    with_current(|cx| match cx {
        Some(cx) => {
            if let Some(obs) = &cx.observer {
                obs.event(&Event::Warning { node: Some(cx.node), message: &message });
            }
            cx.warnings.borrow_mut().push(message);
        }
        None => eprintln!("warning: {message}"),
    });
}

/// A directory for a node's own caches (e.g. downloads), inside the run's cache directory; a directory
/// under the system temp dir when no cache is in use.
pub fn cache_dir(name: &str) -> PathBuf {
    let root = with_current(|cx| cx.and_then(|cx| cx.store.as_ref().map(|s| s.root().to_path_buf())));
    let dir = root.unwrap_or_else(|| std::env::temp_dir().join("flowrun-cache")).join(name);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Display name of the running node (`node[item]`), if any.
pub fn node_name() -> Option<String> {
    with_current(|cx| cx.map(|cx| cx.node.to_string()))
}
