//! [`Lazy`]: a node result that may still be in the cache.
//!
//! A fully cached rerun does not load anything: a reused node's result is a `Lazy` pointing at its blob,
//! and only a consumer that actually runs (or a materializer that actually writes) loads it.

use std::sync::{Arc, OnceLock};

use flowrun_cache::{Blob, Hash, Store};

use crate::Table;
use crate::value::{AnyValue, TypeDesc};

/// A node result, loaded or still in the cache. Cloning it clones an `Arc`.
#[derive(Clone)]
pub struct Lazy(Repr);

#[derive(Clone)]
enum Repr {
    /// In memory (a node that ran): no allocation beyond the value's own.
    Ready(AnyValue),
    /// In the store; loaded at most once, by the first consumer that needs it.
    Cached(Arc<Cached>),
}

struct Cached {
    value: OnceLock<AnyValue>,
    content: Hash,
    ty: TypeDesc,
    store: Arc<Store>,
    rows: Option<u64>,
}

/// Why a cached value could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The blob is gone (removed by `gc` or `clear` while the run was going).
    #[error("cached result {0} is missing from the cache")]
    Missing(String),
    /// The blob did not match its hash and was removed.
    #[error("cached result {0} was corrupt and has been removed")]
    Corrupt(String),
    /// The bytes did not decode as the expected type.
    #[error("cached result {0} could not be decoded: {1}")]
    Decode(String, String),
    /// The cache itself failed.
    #[error("cache error: {0}")]
    Cache(String),
}

impl Lazy {
    /// An in-memory value.
    pub fn ready(value: AnyValue) -> Lazy {
        Lazy(Repr::Ready(value))
    }

    /// A value in `store` under content hash `content`.
    pub fn cached(content: Hash, ty: TypeDesc, store: Arc<Store>, rows: Option<u64>) -> Lazy {
        Lazy(Repr::Cached(Arc::new(Cached { value: OnceLock::new(), content, ty, store, rows })))
    }

    /// Row count, without loading.
    pub fn rows(&self) -> Option<u64> {
        match &self.0 {
            Repr::Ready(v) => v.dyn_rows(),
            Repr::Cached(c) => c.rows,
        }
    }

    /// A table result's Arrow schema without loading its rows: read from the head of its blob. `None` for
    /// another type, or a blob not on this machine (then [`Lazy::load`] tells).
    pub fn table_schema(&self) -> Option<arrow_schema::SchemaRef> {
        let table_schema = |v: &AnyValue| v.downcast_ref::<Table>().map(|t| t.schema().clone());
        match &self.0 {
            Repr::Ready(v) => table_schema(v),
            Repr::Cached(c) => match c.value.get() {
                Some(v) => table_schema(v),
                None if c.ty.name() == TypeDesc::of::<Table>().name() => {
                    let head = c.store.blob_reader(&c.content).ok()??;
                    Some(arrow_ipc::reader::StreamReader::try_new(head, None).ok()?.schema())
                }
                None => None,
            },
        }
    }

    /// The value, loading and verifying it if needed; once loaded, it stays in memory with this `Lazy`.
    pub fn get(&self) -> Result<AnyValue, LoadError> {
        match &self.0 {
            Repr::Cached(c) if c.value.get().is_none() => {
                Self::load_value(c).map(|v| c.value.get_or_init(|| v).clone())
            }
            _ => self.load(),
        }
    }

    /// The value, as [`Lazy::get`], but one still in the store is loaded for this caller only and not kept:
    /// a materializer that writes a run's tables one after the other holds one at a time.
    pub fn load(&self) -> Result<AnyValue, LoadError> {
        match &self.0 {
            Repr::Ready(v) => Ok(v.clone()),
            Repr::Cached(c) => c.value.get().cloned().map_or_else(|| Self::load_value(c), Ok),
        }
    }

    fn load_value(c: &Cached) -> Result<AnyValue, LoadError> {
        let hex = c.content.to_hex().to_string();
        let bytes = match c.store.blob(&c.content).map_err(|e| LoadError::Cache(e.to_string()))? {
            Blob::Found(bytes) => bytes,
            Blob::Missing => return Err(LoadError::Missing(hex)),
            Blob::Corrupt => return Err(LoadError::Corrupt(hex)),
        };
        // a decoder's panic (bytes it does not expect) is a decode error: the entry is evicted and recomputed
        super::exec::guarded("decoding", || c.ty.decode(bytes))
            .map_err(|w| LoadError::Decode(hex.clone(), w))?
            .map_err(|e| LoadError::Decode(hex, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;
    use arrow_array::{Int64Array, RecordBatch};
    use flowrun_cache::EntryMeta;

    #[test]
    fn a_stored_tables_schema_is_read_without_loading_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        // inline limit 0: every blob in a file of its own
        let store = Arc::new(Store::open_with(dir.path(), 0).unwrap());
        let batch = RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(vec![1, 2, 3])) as _)]).unwrap();
        let table = Table::from_batch(batch);
        let mut bytes = Vec::new();
        table.encode(&mut bytes).unwrap();
        let content = store.put(blake3::hash(b"t"), &bytes, EntryMeta::default()).unwrap();
        store.commit().unwrap();
        let lazy = Lazy::cached(content, TypeDesc::of::<Table>(), store.clone(), Some(3));
        assert_eq!(lazy.table_schema().unwrap(), table.schema().clone());
        assert_eq!(lazy.load().unwrap().downcast_ref::<Table>().unwrap().num_rows(), 3);
        // the rows are not read for it: with the blob's tail cut off, the schema is still there (and a load
        // finds the blob corrupt)
        let hex = content.to_hex();
        let file = dir.path().join("objects").join(&hex[..2]).join(&hex[2..]);
        std::fs::write(&file, &bytes[..bytes.len() - 16]).unwrap();
        assert_eq!(lazy.table_schema().unwrap(), table.schema().clone());
        assert!(matches!(lazy.load(), Err(LoadError::Corrupt(_))));
        // another type has no table schema, in memory or stored
        assert!(Lazy::ready(Arc::new(7i64)).table_schema().is_none());
        assert!(Lazy::cached(content, TypeDesc::of::<i64>(), store, None).table_schema().is_none());
    }
}
