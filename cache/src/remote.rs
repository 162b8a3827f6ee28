//! A remote cache, shared by machines (Bazel's remote cache, for node results).
//!
//! The [`Store`](crate::Store) stays the local cache every run uses; a [`Remote`] plugged into it with
//! [`Store::with_remote`](crate::Store::with_remote) makes it:
//! - **read-through**: a key the local index does not hold is looked up remotely; a remote entry whose blob
//!   arrives whole and with its content hash is copied into the local cache and served from there. A blob
//!   that does not match its hash is a miss: the node runs again, nothing corrupt is served;
//! - **write-through**: a result stored locally is put remotely too, blob first, then the entry that points
//!   at it, so a reader never finds an entry whose blob is not there yet. A local hit the remote lacks
//!   (computed before the remote was set up) is put remotely too, so a first run with a remote shares
//!   everything it used.
//!
//! The remote layout is content-addressed: `blobs/<blake3 of the bytes>` and `keys/<cache key>` (a small JSON
//! record: the content hash, identity, type, rows, files read and messages). A remote that fails (down,
//! refusing the credentials) is used no more for the rest of the process, with one warning: the run goes on
//! with the local cache.
//!
//! The contract of an implementation (the object-store one is `flowrun_storage::RemoteCache`):
//! 1. `get` returns the bytes stored at a path, `Ok(None)` when there are none;
//! 2. `put` stores bytes at a path so that a reader sees all of them or none (a single PUT does);
//! 3. neither ever puts a credential into its error text.

use serde::{Deserialize, Serialize};

use crate::key::{Hash, Key};
use crate::store::{Entry, FileDep, Messages};

/// Where cache entries are shared between machines (see the [module documentation](self)).
pub trait Remote: Send + Sync {
    /// The bytes at `path`, or `None` when there are none.
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, String>;
    /// Stores `bytes` at `path`, all or nothing.
    fn put(&self, path: &str, bytes: &[u8]) -> Result<(), String>;
    /// The remote, for messages (`s3://bucket/cache`).
    fn describe(&self) -> String;
}

/// The remote path of an entry record.
pub(crate) fn key_path(key: &Key) -> String {
    format!("keys/{}", key.to_hex())
}

/// The remote path of a blob.
pub(crate) fn blob_path(content: &Hash) -> String {
    format!("blobs/{}", content.to_hex())
}

/// An entry as the remote stores it.
#[derive(Serialize, Deserialize)]
struct Record {
    content: String,
    identity: Option<String>,
    type_name: String,
    node: String,
    size: u64,
    rows: Option<u64>,
    deps: Vec<FileDep>,
    #[serde(default)]
    messages: Messages,
}

pub(crate) fn encode(entry: &Entry) -> Vec<u8> {
    let record = Record {
        content: entry.content.to_hex().to_string(),
        identity: entry.identity.map(|i| i.to_hex().to_string()),
        type_name: entry.type_name.clone(),
        node: entry.node.clone(),
        size: entry.size,
        rows: entry.rows,
        deps: entry.deps.clone(),
        messages: entry.messages.clone(),
    };
    serde_json::to_vec(&record).unwrap_or_default()
}

pub(crate) fn decode(bytes: &[u8]) -> Option<Entry> {
    let r: Record = serde_json::from_slice(bytes).ok()?;
    Some(Entry {
        content: Hash::from_hex(&r.content).ok()?,
        identity: match r.identity {
            Some(i) => Some(Hash::from_hex(&i).ok()?),
            None => None,
        },
        type_name: r.type_name,
        node: r.node,
        size: r.size,
        rows: r.rows,
        deps: r.deps,
        messages: r.messages,
    })
}
