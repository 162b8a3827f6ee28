//! Content fingerprints of files and directories, with a fast path that never gives a wrong answer.
//!
//! A file's fingerprint is the blake3 of its bytes. Hashing a large download on every run is wasteful, so
//! the store remembers, per path, the `(size, mtime, ctime, inode)` it saw and the hash it computed. The
//! remembered hash is reused only when all four still match **and** the file was last modified well before
//! the hash was recorded. The second condition closes the classic "racy" hole (the one git's index has):
//! a file rewritten within the same timestamp tick as it was hashed would otherwise keep its old mtime and
//! size and be trusted. Such files are simply hashed again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::OptionalExtension;

use crate::key::Hash;
use crate::store::{Store, hash_from_bytes};

/// How long after its last modification a file's recorded hash starts to be trusted.
const RACY_WINDOW_NS: i64 = 2_000_000_000;

#[derive(Debug, Clone)]
pub(crate) struct FileRecord {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub hash: Hash,
    pub recorded_ns: i64,
}

struct Stat {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
}

fn stat(meta: &fs::Metadata) -> Stat {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Stat {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            inode: meta.ino(),
        }
    }
    #[cfg(not(unix))]
    {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(i64::MAX);
        Stat { size: meta.len(), mtime_ns, ctime_ns: mtime_ns, inode: 0 }
    }
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// What [`Store::fingerprint_file`] computes, without the store's fast path: a directory's listing
/// ([`hash_listing`]), else the file's bytes.
pub fn hash_path(path: &Path) -> io::Result<Hash> {
    if fs::metadata(path)?.is_dir() { hash_listing(path) } else { hash_file(path) }
}

/// blake3 of a file's bytes, computed without the store (no fast path).
pub fn hash_file(path: &Path) -> io::Result<Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(fs::File::open(path)?)?;
    Ok(hasher.finalize())
}

impl Store {
    /// The content hash of the file at `path`, reusing a recorded hash when it is provably still right.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = flowrun_cache::Store::open(dir.path().join("cache")).unwrap();
    /// let file = dir.path().join("data.csv");
    /// std::fs::write(&file, "a,b\n1,2\n").unwrap();
    /// assert_eq!(store.fingerprint_file(&file).unwrap(), blake3::hash(b"a,b\n1,2\n"));
    /// ```
    pub fn fingerprint_file(&self, path: &Path) -> io::Result<Hash> {
        let meta = fs::metadata(path)?;
        if meta.is_dir() {
            return hash_listing(path);
        }
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a file", path.display())));
        }
        let st = stat(&meta);
        let key = path.to_string_lossy().into_owned();
        let pending = self.pending_file_record(&key).map(|f| {
            (f.size as i64, f.mtime_ns, f.ctime_ns, f.inode as i64, f.hash.as_bytes().to_vec(), f.recorded_ns)
        });
        let recorded = pending.or_else(|| {
            self.with_conn(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT size, mtime_ns, ctime_ns, inode, hash, recorded_ns FROM files WHERE path = ?1",
                )?;
                stmt.query_row([&key], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                })
                .optional()
            })
            .ok()
            .flatten()
        });
        if let Some((size, mtime, ctime, inode, hash, recorded_ns)) = recorded {
            let same =
                size as u64 == st.size && mtime == st.mtime_ns && ctime == st.ctime_ns && inode as u64 == st.inode;
            let settled = recorded_ns - st.mtime_ns.max(st.ctime_ns) > RACY_WINDOW_NS;
            if same
                && settled
                && let Some(hash) = hash_from_bytes(&hash)
            {
                return Ok(hash);
            }
        }
        let recorded_ns = now_ns();
        let hash = hash_file(path)?;
        // Re-stat: if the file changed while it was read, do not record anything for the fast path.
        let after = stat(&fs::metadata(path)?);
        if after.size == st.size && after.mtime_ns == st.mtime_ns && after.ctime_ns == st.ctime_ns {
            self.buffer_file_record(FileRecord {
                path: key,
                size: st.size,
                mtime_ns: st.mtime_ns,
                ctime_ns: st.ctime_ns,
                inode: st.inode,
                hash,
                recorded_ns,
            });
        }
        Ok(hash)
    }

    /// The content hash of a directory tree (see [`hash_dir`]), with the fast path for every file.
    pub fn fingerprint_dir(&self, dir: &Path) -> io::Result<Hash> {
        hash_dir(dir, |f| self.fingerprint_file(f))
    }
}

/// The hash of a directory's listing: the sorted names of its entries, each marked file or directory.
/// Contents are not read. This is what a dependency on "which datasets does the mirror hold" needs.
pub fn hash_listing(dir: &Path) -> io::Result<Hash> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = if entry.file_type()?.is_dir() { b'd' } else { b'f' };
        names.push((entry.file_name().to_string_lossy().into_owned(), kind));
    }
    names.sort();
    let mut h = blake3::Hasher::new();
    for (name, kind) in names {
        h.update(&[kind]);
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
    }
    Ok(h.finalize())
}

/// The content hash of a directory tree: blake3 over the sorted list of (relative path, file hash), with
/// `file_hash` hashing each file. Empty directories and file modes are not part of it.
pub fn hash_dir(dir: &Path, mut file_hash: impl FnMut(&Path) -> io::Result<Hash>) -> io::Result<Hash> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            if fs::metadata(&path)?.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().replace('\\', "/");
                files.push((rel, path));
            }
        }
    }
    files.sort();
    let mut h = blake3::Hasher::new();
    for (rel, path) in files {
        h.update(&(rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update(file_hash(&path)?.as_bytes());
    }
    Ok(h.finalize())
}

#[cfg(test)]
mod listing_tests {
    use super::*;

    #[test]
    fn a_directory_fingerprint_is_its_listing() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path().join("cache")).unwrap();
        let d = dir.path().join("mirror");
        fs::create_dir_all(d.join("a")).unwrap();
        let before = store.fingerprint_file(&d).unwrap();
        fs::write(d.join("a/data.csv"), "x").unwrap();
        assert_eq!(store.fingerprint_file(&d).unwrap(), before, "contents below are not part of it");
        fs::create_dir(d.join("b")).unwrap();
        assert_ne!(store.fingerprint_file(&d).unwrap(), before, "a new entry changes it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn set_mtime(path: &Path, t: SystemTime) {
        fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn fast_path_is_used_for_settled_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("c")).unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"one").unwrap();
        set_mtime(&file, SystemTime::now() - Duration::from_secs(60));
        let h = store.fingerprint_file(&file).unwrap();
        store.commit().unwrap();
        // Forge the record: same stat, different hash, recorded long after the file last changed (setting
        // the mtime above moved the ctime to now). A settled file must be served from the record, proving the
        // fast path is taken (the forged value is never produced by hashing).
        let forged = blake3::hash(b"forged");
        store
            .with_conn(|c| {
                c.execute(
                    "UPDATE files SET hash = ?1, recorded_ns = recorded_ns + 60000000000",
                    [forged.as_bytes().as_slice()],
                )
            })
            .unwrap();
        assert_eq!(store.fingerprint_file(&file).unwrap(), forged);
        assert_eq!(h, blake3::hash(b"one"));
    }

    #[test]
    fn racy_files_are_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("c")).unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"one").unwrap();
        store.fingerprint_file(&file).unwrap();
        store.commit().unwrap();
        let forged = blake3::hash(b"forged");
        store.with_conn(|c| c.execute("UPDATE files SET hash = ?1", [forged.as_bytes().as_slice()])).unwrap();
        // Modified just now: the record is not trusted.
        assert_eq!(store.fingerprint_file(&file).unwrap(), blake3::hash(b"one"));
    }

    #[test]
    fn same_size_rewrite_with_restored_mtime_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("c")).unwrap();
        let file = dir.path().join("f");
        let old = SystemTime::now() - Duration::from_secs(60);
        fs::write(&file, b"aaaa").unwrap();
        set_mtime(&file, old);
        assert_eq!(store.fingerprint_file(&file).unwrap(), blake3::hash(b"aaaa"));
        store.commit().unwrap();
        // Same size, mtime put back: ctime still moves, so the change is seen.
        fs::write(&file, b"bbbb").unwrap();
        set_mtime(&file, old);
        assert_eq!(store.fingerprint_file(&file).unwrap(), blake3::hash(b"bbbb"));
    }

    #[test]
    fn dir_fingerprint_depends_on_names_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("c")).unwrap();
        let d = dir.path().join("d");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("a"), b"1").unwrap();
        fs::write(d.join("sub/b"), b"2").unwrap();
        let h1 = store.fingerprint_dir(&d).unwrap();
        assert_eq!(h1, store.fingerprint_dir(&d).unwrap());
        fs::write(d.join("sub/b"), b"3").unwrap();
        let h2 = store.fingerprint_dir(&d).unwrap();
        assert_ne!(h1, h2);
        fs::rename(d.join("a"), d.join("c")).unwrap();
        assert_ne!(h2, store.fingerprint_dir(&d).unwrap());
    }
}
