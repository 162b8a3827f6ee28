//! flowrun's content-addressed result cache.
//!
//! # Crate organization
//! - [`key`]: **where the cache key is made**: [`CacheKey`] (what decides reuse) and its digest.
//! - [`store`]: [`Store`], the blob store and its SQLite index: lookup, put, verified reads, `ls`, `gc`,
//!   `clear`, one transaction per run.
//! - [`fingerprint`]: content hashes of input files and directories, with a size+mtime fast path that never
//!   gives a wrong hit.
//! - [`runlog`]: the record of every run and every node run.
//! - [`lock`]: one writer at a time on a cache directory (or a lake catalog), with the holder's name.
//! - [`remote`]: the [`Remote`](remote::Remote) trait of a shared cache behind the local [`Store`]
//!   (read-through, write-through, verified on read); its object-store implementation is in
//!   `flowrun-storage`.
//!
//! The store knows nothing about node values: the engine encodes a value to bytes (Arrow IPC for tables,
//! a serde encoding for the rest) and hands the bytes over. That keeps this crate small and quick to test.
//!
//! # Example
//! ```
//! use flowrun_cache::{Blob, CacheKey, EntryMeta, InputSource, KeyInput, Store};
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path()).unwrap();
//! let key = CacheKey { function: "double", code_version: "1", output_type: "i64",
//!     inputs: &[KeyInput { param: "x", source: InputSource::Literal, identity: blake3::hash(b"21") }] }.hash();
//! assert!(store.lookup(&key).unwrap().is_none());             // miss: run the node
//! let content = store.put(key, b"42", EntryMeta::default()).unwrap();
//! store.commit().unwrap();                                   // end of run: one transaction
//! let hit = store.lookup(&key).unwrap().unwrap();            // next run: hit
//! assert!(matches!(store.blob(&hit.content).unwrap(), Blob::Found(b) if b[..] == b"42"[..]));
//! ```
#![warn(missing_docs)]

mod error;
pub mod fingerprint;
pub mod key;
pub mod lock;
pub mod remote;
pub mod runlog;
pub mod store;

pub use blake3;
pub use error::{CacheError, Result};
pub use key::{CacheKey, Hash, InputSource, KEY_FORMAT, Key, KeyChange, KeyInput, StoredKey};
pub use remote::Remote;
pub use runlog::{NodeRunRecord, RunRecord};
pub use store::{Blob, Entry, EntryInfo, EntryMeta, FileDep, GcReport, Messages, NodeState, Store};
