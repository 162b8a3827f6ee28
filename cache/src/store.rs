//! The content-addressed result store: where a node result is written, found and verified.
//!
//! Layout of a cache directory:
//!
//! ```text
//! <root>/index.sqlite      entries (key -> content hash), small blobs inline, file fingerprints,
//!                          the last key of every node, and the run log
//! <root>/objects/ab/cd...  blobs larger than the inline limit, named by the blake3 of their bytes
//! <root>/tmp/              files being written; renamed into objects/ when complete
//! ```
//!
//! Guarantees:
//! - A value is stored once per content hash, however many keys point at it.
//! - A blob file is written to `tmp/` and renamed, so `objects/` never holds a partial file; a blob is
//!   hashed again on every read and a mismatch is reported as [`Blob::Corrupt`] (and removed), never served.
//!   Because of that check no `fsync` is needed for correctness: a torn write after a crash reads as corrupt.
//! - Index writes are buffered in memory and written in **one SQLite transaction** by [`Store::commit`],
//!   which the engine calls at the end of a run. A long run also commits every few seconds
//!   ([`Store::maybe_commit`]) so that a run killed after an hour keeps most of its work. A run killed before
//!   a commit leaves blob files nobody points at; `flowrun cache gc` removes them.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{CacheError, Result};
use crate::fingerprint::FileRecord;
use crate::key::{Hash, Key};
use crate::remote::{self, Remote};
use crate::runlog::{NodeRunRecord, RunRecord};

/// Blob files this large or larger are memory-mapped when read ([`Store::blob`]); smaller ones are read.
pub const MAP_BLOBS_FROM: u64 = 1 << 20;

/// Blobs up to this size live inside the index; larger ones are files under `objects/`.
pub const DEFAULT_INLINE_LIMIT: usize = 16 * 1024;

/// How often a long run commits its buffered index writes.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

const SCHEMA_VERSION: i64 = 3;

/// A cached node result, as the index knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// blake3 of the stored bytes.
    #[serde(serialize_with = "crate::key::hex")]
    pub content: Hash,
    /// Output type name, for `cache ls` and as a guard against decoding a value as the wrong type.
    pub type_name: String,
    /// The node that first stored it (for humans; not part of the key).
    pub node: String,
    /// Size of the stored bytes.
    pub size: u64,
    /// Row count when the value is a table.
    pub rows: Option<u64>,
    /// Files the node read while it ran; the entry is only valid while they are unchanged.
    pub deps: Vec<FileDep>,
    /// The value's identity when it is not `content` (a table with volatile columns: see
    /// `flowrun_engine::table`); consumers' keys use [`Entry::identity`].
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::key::hex_opt")]
    pub identity: Option<Hash>,
    /// The warnings and notes of the run that made it, shown again when it is reused.
    #[serde(skip_serializing_if = "Messages::is_empty")]
    pub messages: Messages,
}

/// What a node said while it made a result (its report's `warnings` and `notes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Messages {
    /// Warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Notes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Messages {
    /// No warning and no note.
    pub fn is_empty(&self) -> bool {
        self.warnings.is_empty() && self.notes.is_empty()
    }

    fn to_column(&self) -> Option<String> {
        if self.is_empty() { None } else { serde_json::to_string(self).ok() }
    }

    fn from_column(text: Option<String>) -> Messages {
        text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    }
}

impl Entry {
    /// What consumers' cache keys see of this value: its identity, or else its content hash.
    pub fn identity(&self) -> Hash {
        self.identity.unwrap_or(self.content)
    }
}

/// A file a node read while running, with the content hash it had then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDep {
    /// Path as the node named it.
    pub path: PathBuf,
    /// blake3 of the file's content (hex).
    pub hash: String,
}

/// A node's state after the last committed run of its flow (see [`Store::node_states`]).
#[derive(Debug, Clone)]
pub struct NodeState {
    /// The key it had.
    pub key: Key,
    /// That key as JSON ([`crate::StoredKey`]), for saying what changed.
    pub detail: String,
    /// The entry of that key, unless it has been removed since.
    pub entry: Option<Entry>,
}

/// What a blob read found.
#[derive(Debug)]
pub enum Blob {
    /// The bytes, verified against their hash: a blob file's are mapped, not copied (see [`Store::blob`]).
    Found(Bytes),
    /// No blob with that hash (never stored, or removed by `gc`).
    Missing,
    /// Stored bytes did not match their hash; the bad copy has been removed.
    Corrupt,
}

/// Metadata stored with a new entry.
#[derive(Debug, Clone, Default)]
pub struct EntryMeta {
    /// Output type name.
    pub type_name: String,
    /// Node name (informational).
    pub node: String,
    /// Row count for tables.
    pub rows: Option<u64>,
    /// Files read while running.
    pub deps: Vec<FileDep>,
    /// See [`Entry::identity`].
    pub identity: Option<Hash>,
    /// See [`Entry::messages`].
    pub messages: Messages,
}

/// One line of `flowrun cache ls`.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    /// The cache key.
    #[serde(serialize_with = "crate::key::hex")]
    pub key: Key,
    /// The entry itself.
    #[serde(flatten)]
    pub entry: Entry,
    /// When it was stored (milliseconds since the Unix epoch).
    pub created_ms: i64,
    /// Whether some flow's latest run of some node points at it.
    pub live: bool,
}

/// What `gc` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Index entries removed.
    pub entries: u64,
    /// Blobs removed (inline or files).
    pub blobs: u64,
    /// Bytes freed by removed blobs.
    pub bytes: u64,
    /// Abandoned temporary files removed.
    pub temp_files: u64,
}

#[derive(Default)]
struct Pending {
    entries: HashMap<Key, (Entry, i64)>,
    inline: HashMap<Hash, Vec<u8>>,
    file_blobs: Vec<(Hash, u64)>,
    files: HashMap<String, FileRecord>,
    node_state: Vec<(String, String, Key, String)>,
    runs: Vec<RunRecord>,
    node_runs: Vec<NodeRunRecord>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.inline.is_empty()
            && self.file_blobs.is_empty()
            && self.files.is_empty()
            && self.node_state.is_empty()
            && self.runs.is_empty()
            && self.node_runs.is_empty()
    }
}

/// The result store. Cheap to share between threads (`&Store` is `Sync`).
///
/// ```
/// use flowrun_cache::{Store, EntryMeta, Blob};
/// let dir = tempfile::tempdir().unwrap();
/// let store = Store::open(dir.path()).unwrap();
/// let key = blake3::hash(b"some cache key");
/// let content = store.put(key, b"42", EntryMeta { type_name: "i64".into(), ..Default::default() }).unwrap();
/// store.commit().unwrap();
/// let entry = store.lookup(&key).unwrap().unwrap();
/// assert_eq!(entry.content, content);
/// assert!(matches!(store.blob(&content).unwrap(), Blob::Found(b) if b[..] == b"42"[..]));
/// ```
pub struct Store {
    root: PathBuf,
    conn: Mutex<Connection>,
    pending: Mutex<Pending>,
    last_commit: Mutex<Instant>,
    inline_limit: usize,
    /// The shared cache behind this one, until it fails once (see [`crate::remote`]).
    remote: Mutex<Option<Arc<dyn Remote>>>,
    /// What the remote did that a run should say: its first failure, corrupt blobs.
    remote_warnings: Mutex<Vec<String>>,
    /// Only look the remote up (`explain`): no blob is fetched, nothing is put.
    remote_read_only: bool,
}

impl Store {
    /// Opens (creating if needed) the cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        Self::open_with(root, DEFAULT_INLINE_LIMIT)
    }

    /// Opens the cache with a custom inline limit (tests use 0 to force blob files).
    pub fn open_with(root: impl Into<PathBuf>, inline_limit: usize) -> Result<Store> {
        let root = root.into();
        for dir in [root.clone(), root.join("objects"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(|source| CacheError::Io { path: dir.clone(), source })?;
        }
        let db_path = root.join("index.sqlite");
        let conn = Connection::open(&db_path).map_err(|source| CacheError::Db { path: db_path.clone(), source })?;
        init_schema(&conn).map_err(|source| CacheError::Db { path: db_path, source })?;
        Ok(Store {
            root,
            conn: Mutex::new(conn),
            pending: Mutex::new(Pending::default()),
            last_commit: Mutex::new(Instant::now()),
            inline_limit,
            remote: Mutex::new(None),
            remote_warnings: Mutex::new(Vec::new()),
            remote_read_only: false,
        })
    }

    /// This cache, read-through and write-through to `remote` (see [`crate::remote`]).
    pub fn with_remote(self, remote: Arc<dyn Remote>) -> Store {
        *self.remote.lock().unwrap() = Some(remote);
        self
    }

    /// This cache, looking `remote` up without changing anything (for `explain`): a remote entry counts as
    /// a hit without its blob being fetched, and nothing is put remotely.
    pub fn with_remote_read_only(mut self, remote: Arc<dyn Remote>) -> Store {
        self.remote_read_only = true;
        self.with_remote(remote)
    }

    /// Whether a remote is still in use (none was given, or it failed and was dropped: `false`).
    pub fn has_remote(&self) -> bool {
        self.remote().is_some()
    }

    /// What the remote cache did that the run should report (taken: each is reported once).
    pub fn take_remote_warnings(&self) -> Vec<String> {
        std::mem::take(&mut self.remote_warnings.lock().unwrap())
    }

    /// A warning the next run reports (a remote cache that could not be opened).
    pub fn warn(&self, message: String) {
        self.remote_warnings.lock().unwrap().push(message);
    }

    fn remote(&self) -> Option<Arc<dyn Remote>> {
        self.remote.lock().unwrap().clone()
    }

    /// A remote that failed is used no more in this process: the run goes on with the local cache.
    fn remote_failed(&self, remote: &dyn Remote, error: String) {
        let mut r = self.remote.lock().unwrap();
        if r.take().is_some() {
            self.remote_warnings.lock().unwrap().push(format!(
                "the remote cache {} failed, this run goes on with the local cache only: {error}",
                remote.describe()
            ));
        }
    }

    /// Step 1 of read-through: the remote entry for `key`, its blob checked and copied into this cache.
    fn lookup_remote(&self, key: &Key) -> Option<Entry> {
        let remote = self.remote()?;
        if self.remote_read_only {
            return match remote.get(&remote::key_path(key)) {
                Ok(record) => record.as_deref().and_then(remote::decode),
                Err(e) => {
                    self.remote_failed(remote.as_ref(), e);
                    None
                }
            };
        }
        let fetched = (|| -> Result<Option<(Entry, Vec<u8>)>, String> {
            let Some(record) = remote.get(&remote::key_path(key))? else { return Ok(None) };
            let Some(entry) = remote::decode(&record) else { return Ok(None) };
            let Some(bytes) = remote.get(&remote::blob_path(&entry.content))? else { return Ok(None) };
            Ok(Some((entry, bytes)))
        })();
        match fetched {
            Ok(Some((entry, bytes))) if blake3::hash(&bytes) == entry.content => {
                self.put_blob(entry.content, &bytes).ok()?;
                self.mark_shared(remote.as_ref(), key);
                self.pending.lock().unwrap().entries.insert(*key, (entry.clone(), now_ms()));
                Some(entry)
            }
            Ok(Some((entry, _))) => {
                self.remote_warnings.lock().unwrap().push(format!(
                    "the remote cache {} holds a corrupt copy of {} (its content does not match its hash): it is \
                     not used, the node runs again",
                    remote.describe(),
                    remote::blob_path(&entry.content)
                ));
                None
            }
            Ok(None) => None,
            Err(e) => {
                self.remote_failed(remote.as_ref(), e);
                None
            }
        }
    }

    /// Write-through: the blob, then the entry that points at it.
    fn put_remote(&self, key: &Key, entry: &Entry, bytes: &[u8]) {
        let Some(remote) = self.remote().filter(|_| !self.remote_read_only) else { return };
        let done = remote
            .put(&remote::blob_path(&entry.content), bytes)
            .and_then(|()| remote.put(&remote::key_path(key), &remote::encode(entry)));
        match done {
            Ok(()) => self.mark_shared(remote.as_ref(), key),
            Err(e) => self.remote_failed(remote.as_ref(), e),
        }
    }

    /// Where this cache notes that `remote` holds `key` (so a later hit does not ask it again).
    fn shared_state(remote: &dyn Remote, key: &Key) -> String {
        format!("shared {} {}", remote.describe(), key.to_hex())
    }

    fn mark_shared(&self, remote: &dyn Remote, key: &Key) {
        let _ = self.set_state(&Self::shared_state(remote, key), "1");
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn db_err(&self, source: rusqlite::Error) -> CacheError {
        CacheError::Db { path: self.root.join("index.sqlite"), source }
    }

    /// Finds the entry for `key`, including entries written earlier in this run but not yet committed.
    pub fn lookup(&self, key: &Key) -> Result<Option<Entry>> {
        if let Some((entry, _)) = self.pending.lock().unwrap().entries.get(key) {
            return Ok(Some(entry.clone()));
        }
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn
            .prepare_cached(
                "SELECT content, type_name, node, size, rows, deps, identity, messages FROM entries WHERE key = ?1",
            )
            .map_err(|e| self.db_err(e))?;
        let row = stmt
            .query_row([key.as_bytes().as_slice()], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<Vec<u8>>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ))
            })
            .optional()
            .map_err(|e| self.db_err(e))?;
        drop(stmt);
        drop(conn);
        let Some((content, type_name, node, size, rows, deps, identity, messages)) = row else {
            return Ok(self.lookup_remote(key));
        };
        let Some(content) = hash_from_bytes(&content) else { return Ok(None) };
        let deps = parse_deps(deps);
        let identity = identity.as_deref().and_then(hash_from_bytes);
        let (size, rows, messages) = (size as u64, rows.map(|r| r as u64), Messages::from_column(messages));
        let entry = Entry { content, type_name, node, size, rows, deps, identity, messages };
        self.share(key, &entry);
        Ok(Some(entry))
    }

    /// A local hit the remote does not hold yet (computed before the remote was configured) is uploaded:
    /// one small read per hit checks. [`Store::lookup`] does it; a caller that found `entry` by other means
    /// calls it.
    pub fn share(&self, key: &Key, entry: &Entry) {
        let Some(remote) = self.remote().filter(|_| !self.remote_read_only) else { return };
        if self.state(&Self::shared_state(remote.as_ref(), key)).ok().flatten().is_some() {
            return;
        }
        match remote.get(&remote::key_path(key)) {
            Ok(Some(_)) => self.mark_shared(remote.as_ref(), key),
            Ok(None) => {
                if let Ok(Blob::Found(bytes)) = self.blob(&entry.content) {
                    self.put_remote(key, entry, &bytes);
                }
            }
            Err(e) => self.remote_failed(remote.as_ref(), e),
        }
    }

    /// Stores `bytes` as the result for `key` and returns their content hash (see [`Store::put_with`]).
    pub fn put(&self, key: Key, bytes: &[u8], meta: EntryMeta) -> Result<Hash> {
        self.put_with(key, meta, |w| w.write_all(bytes))
    }

    /// Stores what `write` writes as the result for `key` and returns its content hash. The bytes are
    /// hashed as they come and never held whole in memory past the inline limit: a large value (a table of
    /// a million rows) streams into its blob file. The blob is complete when this returns; the index entry
    /// is buffered until [`Store::commit`]. When `write` fails, nothing is stored and its error comes back
    /// as [`CacheError::Io`] on the temporary file.
    pub fn put_with(
        &self,
        key: Key,
        meta: EntryMeta,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<Hash> {
        let mut spill = Spill { store: self, hasher: blake3::Hasher::new(), memory: Vec::new(), file: None, size: 0 };
        let tmp = self.root.join("tmp");
        write(&mut spill).map_err(|source| CacheError::Io { path: tmp.clone(), source })?;
        let Spill { hasher, memory, file, size, .. } = spill;
        let content = hasher.finalize();
        match file {
            None => {
                self.pending.lock().unwrap().inline.entry(content).or_insert_with(|| memory.clone());
            }
            Some(file) => {
                let file =
                    file.into_inner().map_err(|e| CacheError::Io { path: tmp.clone(), source: e.into_error() })?;
                let path = self.object_path(&content);
                // the same bytes stored before are replaced all the same (atomically): a copy torn by a crash
                // must not outlive the good one just written
                let new = !path.exists();
                let parent = path.parent().expect("object paths have a parent");
                fs::create_dir_all(parent).map_err(|source| CacheError::Io { path: parent.to_path_buf(), source })?;
                file.persist(&path).map_err(|e| CacheError::Io { path: path.clone(), source: e.error })?;
                if new {
                    self.pending.lock().unwrap().file_blobs.push((content, size));
                }
            }
        }
        let entry = Entry {
            content,
            type_name: meta.type_name,
            node: meta.node,
            size,
            rows: meta.rows,
            deps: meta.deps,
            identity: meta.identity.filter(|i| *i != content),
            messages: meta.messages,
        };
        if let Some(remote) = self.remote().filter(|_| !self.remote_read_only) {
            // a file blob is read back for the upload; failing that is the remote's failure, not the store's
            match memory.is_empty() && size > 0 {
                true => match fs::read(self.object_path(&content)) {
                    Ok(bytes) => self.put_remote(&key, &entry, &bytes),
                    Err(e) => self.remote_failed(remote.as_ref(), format!("reading the blob to upload: {e}")),
                },
                false => self.put_remote(&key, &entry, &memory),
            }
        }
        self.pending.lock().unwrap().entries.insert(key, (entry, now_ms()));
        Ok(content)
    }

    /// Writes a blob fetched from the remote (already verified against `content`).
    fn put_blob(&self, content: Hash, bytes: &[u8]) -> Result<()> {
        if bytes.len() <= self.inline_limit {
            self.pending.lock().unwrap().inline.entry(content).or_insert_with(|| bytes.to_vec());
            return Ok(());
        }
        let path = self.object_path(&content);
        if path.exists() {
            return Ok(());
        }
        let parent = path.parent().expect("object paths have a parent");
        fs::create_dir_all(parent).map_err(|source| CacheError::Io { path: parent.to_path_buf(), source })?;
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(|source| CacheError::Io { path: tmp_dir.clone(), source })?;
        tmp.write_all(bytes).map_err(|source| CacheError::Io { path: tmp.path().to_path_buf(), source })?;
        tmp.persist(&path).map_err(|e| CacheError::Io { path: path.clone(), source: e.error })?;
        self.pending.lock().unwrap().file_blobs.push((content, bytes.len() as u64));
        Ok(())
    }

    fn object_path(&self, content: &Hash) -> PathBuf {
        let hex = content.to_hex();
        self.root.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    /// A small blob kept in the index (or not written out yet), if `content` is one.
    fn inline_blob(&self, content: &Hash) -> Result<Option<Vec<u8>>> {
        if let Some(bytes) = self.pending.lock().unwrap().inline.get(content) {
            return Ok(Some(bytes.clone()));
        }
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached("SELECT data FROM blobs WHERE content = ?1").map_err(|e| self.db_err(e))?;
        let data: Option<Option<Vec<u8>>> =
            stmt.query_row([content.as_bytes().as_slice()], |r| r.get(0)).optional().map_err(|e| self.db_err(e))?;
        Ok(data.flatten())
    }

    /// A blob's bytes as a reader, **not verified**: for a look at a header (a table's schema) before
    /// [`Store::blob`] reads and verifies the whole. `None` when the blob is not on this machine.
    pub fn blob_reader(&self, content: &Hash) -> Result<Option<Box<dyn std::io::Read>>> {
        if let Some(bytes) = self.inline_blob(content)? {
            return Ok(Some(Box::new(std::io::Cursor::new(bytes))));
        }
        let path = self.object_path(content);
        match fs::File::open(&path) {
            Ok(f) => Ok(Some(Box::new(std::io::BufReader::new(f)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CacheError::Io { path, source }),
        }
    }

    /// Reads a blob and verifies it against its hash. A blob file of [`MAP_BLOBS_FROM`] bytes or more is
    /// memory-mapped, not read into a new buffer: its pages are the page cache's, so a large table (a
    /// materializer's, a cached input's) costs no fresh memory to zero and fill. flowrun never writes a
    /// blob file in place (a new one is renamed over an old one; `gc` and eviction unlink), so a mapping
    /// stays as it was verified while the value lives. A file changed in place by another program, or a
    /// read error of the disk under a mapping, stops the process (SIGBUS) instead of failing the read.
    pub fn blob(&self, content: &Hash) -> Result<Blob> {
        let bytes = match self.inline_blob(content)? {
            Some(data) => Bytes::from(data),
            None => {
                let path = self.object_path(content);
                let io = |source| CacheError::Io { path: path.clone(), source };
                let mut file = match fs::File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self.blob_from_remote(content)),
                    Err(source) => return Err(io(source)),
                };
                // SAFETY: see above: blob files are only ever replaced or unlinked, never changed in place
                let mapped = (file.metadata().map_err(io)?.len() >= MAP_BLOBS_FROM)
                    .then(|| unsafe { memmap2::Mmap::map(&file) }.ok())
                    .flatten();
                match mapped {
                    Some(map) => Bytes::from_owner(map),
                    // small, or not mappable (the process's mappings used up): read
                    None => {
                        let mut bytes = Vec::new();
                        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io)?;
                        Bytes::from(bytes)
                    }
                }
            }
        };
        if blake3::hash(&bytes) != *content {
            self.remove_blob(content)?;
            return Ok(Blob::Corrupt);
        }
        Ok(Blob::Found(bytes))
    }

    /// Forgets a result that cannot be used (its blob is gone, or does not decode as its type): the blob
    /// and every entry pointing at it, so the nodes that made it run again instead of failing on it.
    pub fn evict(&self, content: &Hash) -> Result<()> {
        {
            let mut pending = self.pending.lock().unwrap();
            pending.entries.retain(|_, (e, _)| e.content != *content);
            pending.inline.remove(content);
        }
        self.remove_blob(content)
    }

    /// A read-only remote's hits come without their blobs (`explain` needs few values: a fan-out's items):
    /// one is fetched, verified and kept here when it is read.
    fn blob_from_remote(&self, content: &Hash) -> Blob {
        let Some(remote) = self.remote().filter(|_| self.remote_read_only) else { return Blob::Missing };
        match remote.get(&remote::blob_path(content)) {
            Ok(Some(bytes)) if blake3::hash(&bytes) == *content && self.put_blob(*content, &bytes).is_ok() => {
                Blob::Found(bytes.into())
            }
            Ok(Some(_)) => Blob::Corrupt,
            Ok(None) => Blob::Missing,
            Err(e) => {
                self.remote_failed(remote.as_ref(), e);
                Blob::Missing
            }
        }
    }

    /// Forgets every entry whose blob file is gone (a cache directory cleaned by hand): one sweep, so that a
    /// run finding one missing blob does not find the others one restart at a time. Gives how many blobs.
    pub fn evict_missing(&self) -> Result<u64> {
        let candidates: Vec<Vec<u8>> = self.with_conn(|conn| {
            let mut stmt = conn.prepare(
                "SELECT DISTINCT e.content FROM entries e LEFT JOIN blobs b ON b.content = e.content \
                 WHERE b.data IS NULL",
            )?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            rows.collect()
        })?;
        let mut gone = 0;
        for c in candidates {
            if let Some(content) = hash_from_bytes(&c)
                && !self.object_path(&content).exists()
            {
                self.evict(&content)?;
                gone += 1;
            }
        }
        Ok(gone)
    }

    fn remove_blob(&self, content: &Hash) -> Result<()> {
        let path = self.object_path(content);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(CacheError::Io { path, source }),
        }
        let conn = self.conn.lock().unwrap();
        conn.execute("DELETE FROM blobs WHERE content = ?1", [content.as_bytes().as_slice()])
            .map_err(|e| self.db_err(e))?;
        conn.execute("DELETE FROM entries WHERE content = ?1", [content.as_bytes().as_slice()])
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Every node of `flow` as its last committed run left it: its key, the key's JSON form, and the entry
    /// that key points at (if it is still there). One query per run instead of one per node: a rerun
    /// compares each node's new key with this and only asks the index about the nodes that changed.
    pub fn node_states(&self, flow: &str) -> Result<HashMap<String, NodeState>> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT s.node, s.key, s.detail, e.content, e.type_name, e.node, e.size, e.rows, e.deps, e.identity,
                        e.messages
                 FROM node_state s LEFT JOIN entries e ON e.key = s.key WHERE s.flow = ?1",
            )?;
            let rows = stmt.query_map([flow], |r| {
                let key: Vec<u8> = r.get(1)?;
                let content: Option<Vec<u8>> = r.get(3)?;
                let entry = match content.as_deref().and_then(hash_from_bytes) {
                    Some(content) => Some(Entry {
                        content,
                        type_name: r.get(4)?,
                        node: r.get(5)?,
                        size: r.get::<_, i64>(6)? as u64,
                        rows: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                        deps: parse_deps(r.get(8)?),
                        identity: r.get::<_, Option<Vec<u8>>>(9)?.as_deref().and_then(hash_from_bytes),
                        messages: Messages::from_column(r.get(10)?),
                    }),
                    None => None,
                };
                Ok((r.get::<_, String>(0)?, hash_from_bytes(&key), r.get::<_, String>(2)?, entry))
            })?;
            let mut out = HashMap::new();
            for row in rows {
                let (node, key, detail, entry) = row?;
                if let Some(key) = key {
                    out.insert(node, NodeState { key, detail, entry });
                }
            }
            Ok(out)
        })
    }

    /// Buffers "node `node` of flow `flow` last had key `key`" (with the key spelled out as JSON), which
    /// `explain` compares against to say why a node would run.
    pub fn record_node_state(&self, flow: &str, node: &str, key: Key, detail: String) {
        self.pending.lock().unwrap().node_state.push((flow.to_string(), node.to_string(), key, detail));
    }

    pub(crate) fn buffer_file_record(&self, record: FileRecord) {
        self.pending.lock().unwrap().files.insert(record.path.clone(), record);
    }

    pub(crate) fn pending_file_record(&self, path: &str) -> Option<FileRecord> {
        self.pending.lock().unwrap().files.get(path).cloned()
    }

    pub(crate) fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap();
        f(&conn).map_err(|e| self.db_err(e))
    }

    pub(crate) fn buffer_run(&self, run: RunRecord, nodes: Vec<NodeRunRecord>) {
        let mut p = self.pending.lock().unwrap();
        p.runs.push(run);
        p.node_runs.extend(nodes);
    }

    /// A small piece of state other crates keep beside the cache (e.g. what was last materialized where).
    pub fn state(&self, key: &str) -> Result<Option<String>> {
        self.with_conn(|conn| conn.query_row("SELECT value FROM state WHERE key = ?1", [key], |r| r.get(0)).optional())
    }

    /// Sets a piece of state (written at once, not buffered).
    pub fn set_state(&self, key: &str, value: &str) -> Result<()> {
        self.with_conn(|conn| {
            conn.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?1, ?2)", params![key, value]).map(|_| ())
        })
    }

    /// Commits if [`COMMIT_INTERVAL`] has passed since the last commit. Called by the engine after each node.
    pub fn maybe_commit(&self) -> Result<()> {
        let due = self.last_commit.lock().unwrap().elapsed() >= COMMIT_INTERVAL;
        if due { self.commit() } else { Ok(()) }
    }

    /// Writes every buffered index change in one transaction.
    pub fn commit(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap());
        *self.last_commit.lock().unwrap() = Instant::now();
        if pending.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction().map_err(|e| self.db_err(e))?;
        write_pending(&tx, pending).map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Every entry, newest first.
    pub fn entries(&self) -> Result<Vec<EntryInfo>> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(
                "SELECT e.key, e.content, e.type_name, e.node, e.size, e.rows, e.deps, e.created_ms,
                        EXISTS(SELECT 1 FROM node_state s WHERE s.key = e.key), e.identity, e.messages
                 FROM entries e ORDER BY e.created_ms DESC, e.node",
            )?;
            let rows = stmt.query_map([], |r| {
                let key: Vec<u8> = r.get(0)?;
                let content: Vec<u8> = r.get(1)?;
                let deps: Option<String> = r.get(6)?;
                Ok(EntryInfo {
                    key: hash_from_bytes(&key).unwrap_or(blake3::hash(b"")),
                    entry: Entry {
                        content: hash_from_bytes(&content).unwrap_or(blake3::hash(b"")),
                        type_name: r.get(2)?,
                        node: r.get(3)?,
                        size: r.get::<_, i64>(4)? as u64,
                        rows: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                        deps: parse_deps(deps),
                        identity: r.get::<_, Option<Vec<u8>>>(9)?.as_deref().and_then(hash_from_bytes),
                        messages: Messages::from_column(r.get(10)?),
                    },
                    created_ms: r.get(7)?,
                    live: r.get(8)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Removes entries that no flow's latest run points at and that are older than `keep`, then every blob
    /// no entry points at, then temporary files older than an hour (left by killed runs).
    pub fn gc(&self, keep: Duration) -> Result<GcReport> {
        self.commit()?;
        let cutoff = now_ms() - keep.as_millis() as i64;
        let mut report = GcReport::default();
        let live_blobs: std::collections::HashSet<Vec<u8>> = self.with_conn(|conn| {
            report.entries = conn.execute(
                "DELETE FROM entries WHERE created_ms <= ?1 AND key NOT IN (SELECT key FROM node_state)",
                [cutoff],
            )? as u64;
            let (n, bytes): (i64, i64) = conn.query_row(
                "SELECT count(*), coalesce(sum(size), 0) FROM blobs
                 WHERE data IS NOT NULL AND content NOT IN (SELECT content FROM entries)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            report.blobs = n as u64;
            report.bytes = bytes as u64;
            conn.execute("DELETE FROM blobs WHERE content NOT IN (SELECT content FROM entries)", [])?;
            let mut stmt = conn.prepare("SELECT DISTINCT content FROM entries")?;
            let set = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?.collect::<rusqlite::Result<_>>()?;
            Ok(set)
        })?;
        // Blob files no entry points at (including files of runs killed before their commit).
        let objects = self.root.join("objects");
        for shard in read_dir_or_empty(&objects)? {
            for file in read_dir_or_empty(&shard)? {
                let name = format!(
                    "{}{}",
                    shard.file_name().unwrap_or_default().to_string_lossy(),
                    file.file_name().unwrap_or_default().to_string_lossy()
                );
                let referenced =
                    blake3::Hash::from_hex(&name).is_ok_and(|h| live_blobs.contains(h.as_bytes().as_slice()));
                if !referenced {
                    let size = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                    if fs::remove_file(&file).is_ok() {
                        report.blobs += 1;
                        report.bytes += size;
                    }
                }
            }
        }
        report.temp_files = self.remove_temporaries(Duration::from_secs(3600))?;
        self.with_conn(|conn| conn.execute_batch("VACUUM"))?;
        Ok(report)
    }

    /// Removes the files in `tmp/` (and `.tmp*` files under `downloads/`) older than `age`: what a killed
    /// process was writing. A run that holds
    /// the cache's lock (`crate::lock`) removes them all (age zero); `gc` those older than an hour.
    pub fn remove_temporaries(&self, age: Duration) -> Result<u64> {
        let before = SystemTime::now() - age;
        let mut removed = 0;
        // and the `.tmp*` files of downloads a process did not finish (nodes' `downloads/` directories: with
        // the cache's lock held, no other run is downloading into them), and `.part` files a day old (a
        // younger one may be resumed)
        let mut temporaries = read_dir_or_empty(&self.root.join("tmp"))?;
        let mut dirs = vec![self.root.join("downloads")];
        while let Some(dir) = dirs.pop() {
            for p in read_dir_or_empty(&dir)? {
                if p.is_dir() {
                    dirs.push(p);
                } else if p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(".tmp") || n.ends_with(".part")
                }) {
                    temporaries.push(p);
                }
            }
        }
        let day_before = SystemTime::now() - age.max(Duration::from_secs(86_400));
        for tmp in temporaries {
            let before = if tmp.extension().is_some_and(|e| e == "part") { day_before } else { before };
            let old = fs::metadata(&tmp).and_then(|m| m.modified()).map(|t| t <= before).unwrap_or(false);
            if old && fs::remove_file(&tmp).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every entry, blob, fingerprint, node state and run record, and the nodes' own directories
    /// (downloads, unpacked archives, STAC pages).
    pub fn clear(&self) -> Result<()> {
        *self.pending.lock().unwrap() = Pending::default();
        self.with_conn(|conn| {
            conn.execute_batch(
                "DELETE FROM entries; DELETE FROM blobs; DELETE FROM files; DELETE FROM node_state;
                 DELETE FROM runs; DELETE FROM node_runs; DELETE FROM state; VACUUM;",
            )
        })?;
        // the nodes' own directories (`flowrun_engine::ctx::cache_dir`), only those: the cache's root may
        // be a directory the user also keeps other things in
        for dir in ["downloads", "unpacked", "stac"] {
            let path = self.root.join(dir);
            if path.exists() {
                fs::remove_dir_all(&path).map_err(|source| CacheError::Io { path: path.clone(), source })?;
            }
        }
        for dir in ["objects", "tmp"] {
            let path = self.root.join(dir);
            fs::remove_dir_all(&path).map_err(|source| CacheError::Io { path: path.clone(), source })?;
            fs::create_dir_all(&path).map_err(|source| CacheError::Io { path, source })?;
        }
        Ok(())
    }
}

/// A result's bytes on their way into the store ([`Store::put_with`]): hashed as they come, kept in memory
/// up to the inline limit, then written to a temporary file of the cache. A large write (a column of a
/// table) is hashed on every thread of the run's pool (blake3's `update_rayon`: below about 128 KiB one
/// thread is faster).
struct Spill<'a> {
    store: &'a Store,
    hasher: blake3::Hasher,
    memory: Vec<u8>,
    file: Option<std::io::BufWriter<tempfile::NamedTempFile>>,
    size: u64,
}

impl Write for Spill<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.file.is_none() && self.memory.len() + buf.len() > self.store.inline_limit {
            let tmp = tempfile::NamedTempFile::new_in(self.store.root.join("tmp"))?;
            let mut file = std::io::BufWriter::with_capacity(1 << 20, tmp);
            file.write_all(&std::mem::take(&mut self.memory))?;
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all(buf)?,
            None => self.memory.extend_from_slice(buf),
        }
        // hashed once stored (a write that fails is not hashed, so a retried one is hashed once)
        if buf.len() < 1 << 20 {
            self.hasher.update(buf);
        } else {
            self.hasher.update_rayon(buf);
        }
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

fn read_dir_or_empty(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd.filter_map(|e| e.ok().map(|e| e.path())).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CacheError::Io { path: dir.to_path_buf(), source }),
    }
}

fn init_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // 64 MB of page cache (the default is 2 MB): a run's one commit of 100,000 nodes then writes each page
    // once instead of spilling dirty pages to the WAL in the middle of the transaction
    conn.pragma_update(None, "cache_size", -65536)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version != 0 {
        // An index from another flowrun version: its entries are not trusted. Start afresh.
        conn.execute_batch(
            "DROP TABLE IF EXISTS entries; DROP TABLE IF EXISTS blobs; DROP TABLE IF EXISTS files;
             DROP TABLE IF EXISTS node_state; DROP TABLE IF EXISTS runs; DROP TABLE IF EXISTS node_runs;
             DROP TABLE IF EXISTS state;",
        )?;
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS entries(
            key BLOB PRIMARY KEY, content BLOB NOT NULL, type_name TEXT NOT NULL, node TEXT NOT NULL,
            size INTEGER NOT NULL, rows INTEGER, deps TEXT, created_ms INTEGER NOT NULL, identity BLOB,
            messages TEXT) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS entries_content ON entries(content);
         CREATE TABLE IF NOT EXISTS blobs(content BLOB PRIMARY KEY, size INTEGER NOT NULL, data BLOB) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS files(
            path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
            inode INTEGER NOT NULL, hash BLOB NOT NULL, recorded_ns INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS node_state(
            flow TEXT NOT NULL, node TEXT NOT NULL, key BLOB NOT NULL, detail TEXT NOT NULL,
            PRIMARY KEY(flow, node)) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS node_state_key ON node_state(key);
         CREATE TABLE IF NOT EXISTS runs(
            run_id TEXT PRIMARY KEY, flow TEXT NOT NULL, flow_path TEXT NOT NULL, started_ms INTEGER NOT NULL,
            finished_ms INTEGER NOT NULL, status TEXT NOT NULL, nodes INTEGER NOT NULL, executed INTEGER NOT NULL,
            reused INTEGER NOT NULL, failed INTEGER NOT NULL, skipped INTEGER NOT NULL, jobs INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS node_runs(
            run_id TEXT NOT NULL, node TEXT NOT NULL, status TEXT NOT NULL, duration_ms REAL NOT NULL,
            rows INTEGER, key TEXT, input_keys TEXT, error TEXT);
         CREATE INDEX IF NOT EXISTS node_runs_run ON node_runs(run_id);
         CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;",
    )?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
}

fn write_pending(tx: &rusqlite::Transaction<'_>, p: Pending) -> rusqlite::Result<()> {
    {
        let mut stmt = tx.prepare_cached("INSERT OR IGNORE INTO blobs(content, size, data) VALUES (?1, ?2, ?3)")?;
        for (content, data) in &p.inline {
            stmt.execute(params![content.as_bytes().as_slice(), data.len() as i64, data])?;
        }
        for (content, size) in &p.file_blobs {
            stmt.execute(params![content.as_bytes().as_slice(), *size as i64, Option::<Vec<u8>>::None])?;
        }
    }
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO entries(key, content, type_name, node, size, rows, deps, created_ms, identity,
                                        messages)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for (key, (e, created)) in &p.entries {
            let deps = if e.deps.is_empty() { None } else { serde_json::to_string(&e.deps).ok() };
            stmt.execute(params![
                key.as_bytes().as_slice(),
                e.content.as_bytes().as_slice(),
                e.type_name,
                e.node,
                e.size as i64,
                e.rows.map(|r| r as i64),
                deps,
                created,
                e.identity.map(|i| i.as_bytes().to_vec()),
                e.messages.to_column()
            ])?;
        }
    }
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO files(path, size, mtime_ns, ctime_ns, inode, hash, recorded_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for f in p.files.values() {
            stmt.execute(params![
                f.path,
                f.size as i64,
                f.mtime_ns,
                f.ctime_ns,
                f.inode as i64,
                f.hash.as_bytes().as_slice(),
                f.recorded_ns
            ])?;
        }
    }
    {
        let mut stmt =
            tx.prepare_cached("INSERT OR REPLACE INTO node_state(flow, node, key, detail) VALUES (?1, ?2, ?3, ?4)")?;
        for (flow, node, key, detail) in &p.node_state {
            stmt.execute(params![flow, node, key.as_bytes().as_slice(), detail])?;
        }
    }
    crate::runlog::write_runs(tx, &p.runs, &p.node_runs)
}

fn parse_deps(json: Option<String>) -> Vec<FileDep> {
    json.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or_default()
}

pub(crate) fn hash_from_bytes(bytes: &[u8]) -> Option<Hash> {
    <[u8; 32]>::try_from(bytes).ok().map(Hash::from)
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(node: &str) -> EntryMeta {
        EntryMeta { type_name: "bytes".into(), node: node.into(), ..Default::default() }
    }

    #[test]
    fn node_states_join_the_entry_their_key_points_at() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (ka, kb) = (blake3::hash(b"a"), blake3::hash(b"b"));
        let content = store.put(ka, b"value of a", meta("a")).unwrap();
        store.record_node_state("f", "a", ka, "{}".into());
        store.record_node_state("f", "b", kb, "{}".into()); // b failed: a state, no entry
        store.record_node_state("other", "a", kb, "{}".into());
        store.commit().unwrap();
        let states = store.node_states("f").unwrap();
        assert_eq!(states.len(), 2);
        assert_eq!(states["a"].key, ka);
        assert_eq!(states["a"].entry.as_ref().map(|e| e.content), Some(content));
        assert_eq!(states["b"].key, kb);
        assert!(states["b"].entry.is_none());
        // a removed result is no longer joined
        store.remove_blob(&content).unwrap();
        assert!(store.node_states("f").unwrap()["a"].entry.is_none());
    }

    #[test]
    fn put_then_lookup_before_and_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = blake3::hash(b"k");
        let content = store.put(key, b"value", meta("a")).unwrap();
        assert_eq!(store.lookup(&key).unwrap().unwrap().content, content);
        store.commit().unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let entry = store.lookup(&key).unwrap().unwrap();
        assert_eq!(entry.content, content);
        assert_eq!(entry.node, "a");
        assert!(matches!(store.blob(&content).unwrap(), Blob::Found(b) if b[..] == b"value"[..]));
    }

    #[test]
    fn a_streamed_value_is_hashed_and_stored_as_its_bytes_and_a_failed_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // 3 MiB in pieces of every size: some under the inline limit, one over 1 MiB (hashed on the pool)
        let bytes: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        let key = blake3::hash(b"streamed");
        let content = store
            .put_with(key, meta("a"), |w| {
                let (a, rest) = bytes.split_at(10);
                let (b, c) = rest.split_at(2 << 20);
                w.write_all(a)?;
                w.write_all(b)?;
                w.write_all(c)
            })
            .unwrap();
        assert_eq!(content, blake3::hash(&bytes));
        assert_eq!(store.lookup(&key).unwrap().unwrap().size, bytes.len() as u64);
        assert!(matches!(store.blob(&content).unwrap(), Blob::Found(b) if b == bytes));
        // a writer that fails half-way: no entry, no blob, no temporary file
        let failed = blake3::hash(b"failed");
        let err = store
            .put_with(failed, meta("b"), |w| {
                w.write_all(&bytes)?;
                Err(std::io::Error::other("the encoder gave up"))
            })
            .unwrap_err();
        assert!(err.to_string().contains("the encoder gave up"), "{err}");
        assert!(store.lookup(&failed).unwrap().is_none());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let objects: usize = fs::read_dir(dir.path().join("objects"))
            .unwrap()
            .map(|d| fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(objects, 1, "only the first value's blob is there");
    }

    #[test]
    fn storing_bytes_again_replaces_a_torn_copy_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), 0).unwrap();
        let content = store.put(blake3::hash(b"k1"), b"a value in a file", meta("a")).unwrap();
        // a crash tore the file (no fsync): the next run computes the same bytes
        let path = store.object_path(&content);
        fs::write(&path, b"a value").unwrap();
        assert_eq!(store.put(blake3::hash(b"k2"), b"a value in a file", meta("b")).unwrap(), content);
        assert!(matches!(store.blob(&content).unwrap(), Blob::Found(b) if b[..] == b"a value in a file"[..]));
    }

    #[test]
    fn a_mapped_blob_keeps_its_bytes_when_the_file_is_replaced_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), 0).unwrap();
        let value: Vec<u8> = (0..MAP_BLOBS_FROM as usize + 1000).map(|i| (i % 251) as u8).collect();
        let content = store.put(blake3::hash(b"k1"), &value, meta("a")).unwrap();
        let Blob::Found(mapped) = store.blob(&content).unwrap() else { panic!("stored above") };
        // the same bytes stored again (a new file renamed over the mapped one), then the blob evicted
        assert_eq!(store.put(blake3::hash(b"k2"), &value, meta("b")).unwrap(), content);
        store.evict(&content).unwrap();
        assert!(!store.object_path(&content).exists());
        assert_eq!(mapped[..], value[..], "the mapping still holds what was verified");
        assert!(matches!(store.blob(&content).unwrap(), Blob::Missing));
    }

    #[test]
    fn uncommitted_entries_are_lost_but_never_misread() {
        let dir = tempfile::tempdir().unwrap();
        let key = blake3::hash(b"k");
        {
            let store = Store::open_with(dir.path(), 0).unwrap();
            store.put(key, b"large value", meta("a")).unwrap();
            // dropped without commit, as if killed
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.lookup(&key).unwrap().is_none());
        // the orphan blob file is collected
        let report = store.gc(Duration::ZERO).unwrap();
        assert_eq!(report.blobs, 1);
    }

    #[test]
    fn same_content_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), 0).unwrap();
        let c1 = store.put(blake3::hash(b"k1"), b"same", meta("a")).unwrap();
        let c2 = store.put(blake3::hash(b"k2"), b"same", meta("b")).unwrap();
        assert_eq!(c1, c2);
        store.commit().unwrap();
        let files: Vec<_> = walk(&dir.path().join("objects"));
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(store.entries().unwrap().len(), 2);
    }

    #[test]
    fn corrupt_blob_file_is_reported_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), 0).unwrap();
        let key = blake3::hash(b"k");
        let content = store.put(key, b"precious bytes", meta("a")).unwrap();
        store.commit().unwrap();
        let file = walk(&dir.path().join("objects")).pop().unwrap();
        fs::write(&file, b"precious bytez").unwrap();
        assert!(matches!(store.blob(&content).unwrap(), Blob::Corrupt));
        assert!(matches!(store.blob(&content).unwrap(), Blob::Missing));
        assert!(store.lookup(&key).unwrap().is_none(), "entries pointing at a corrupt blob are dropped");
    }

    #[test]
    fn corrupt_inline_blob_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let content = store.put(blake3::hash(b"k"), b"small", meta("a")).unwrap();
        store.commit().unwrap();
        store
            .with_conn(|c| {
                c.execute("UPDATE blobs SET data = x'00' WHERE content = ?1", [content.as_bytes().as_slice()])
            })
            .unwrap();
        assert!(matches!(store.blob(&content).unwrap(), Blob::Corrupt));
    }

    #[test]
    fn gc_keeps_what_node_state_points_at() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = blake3::hash(b"old");
        let new = blake3::hash(b"new");
        store.put(old, b"1", meta("a")).unwrap();
        store.put(new, b"2", meta("a")).unwrap();
        store.record_node_state("flow", "a", new, "{}".into());
        store.commit().unwrap();
        let report = store.gc(Duration::ZERO).unwrap();
        assert_eq!(report.entries, 1);
        assert!(store.lookup(&old).unwrap().is_none());
        assert!(store.lookup(&new).unwrap().is_some());
        assert_eq!(store.node_states("flow").unwrap()["a"].key, new);
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.state("k").unwrap(), None);
        store.set_state("k", "v1").unwrap();
        store.set_state("k", "v2").unwrap();
        assert_eq!(store.state("k").unwrap().as_deref(), Some("v2"));
    }

    #[test]
    fn clear_removes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), 0).unwrap();
        let key = blake3::hash(b"k");
        store.put(key, b"v", meta("a")).unwrap();
        store.commit().unwrap();
        // a node's download, and something else of the user's beside the cache's own directories
        fs::create_dir_all(dir.path().join("downloads/ds")).unwrap();
        fs::write(dir.path().join("downloads/ds/a.zip"), b"zip").unwrap();
        fs::create_dir_all(dir.path().join("mine")).unwrap();
        store.clear().unwrap();
        assert!(store.lookup(&key).unwrap().is_none());
        assert!(walk(&dir.path().join("objects")).is_empty());
        assert!(!dir.path().join("downloads").exists());
        assert!(dir.path().join("mine").exists());
    }

    #[test]
    fn unfinished_downloads_are_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ds = dir.path().join("downloads/ds");
        fs::create_dir_all(&ds).unwrap();
        for f in ["a.zip.part", "young.zip.part", ".tmpXYZ", "b.zip"] {
            fs::write(ds.join(f), b"x").unwrap();
        }
        let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
        fs::File::options().write(true).open(ds.join("a.zip.part")).unwrap().set_modified(two_days_ago).unwrap();
        assert_eq!(store.remove_temporaries(Duration::ZERO).unwrap(), 2);
        let mut left = walk(&ds);
        left.sort();
        assert_eq!(left, vec![ds.join("b.zip"), ds.join("young.zip.part")], "a young part may be resumed");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() { stack.push(p) } else { out.push(p) }
            }
        }
        out
    }
}
