//! [`Lazy`]: a node result that may still be in the cache.
//!
//! A fully cached rerun does not load anything: a reused node's result is a `Lazy` pointing at its blob,
//! and only a consumer that actually runs (or a materializer that actually writes) loads it.

use std::sync::{Arc, OnceLock};

use flowrun_cache::{Blob, Hash, Store};

use crate::value::{AnyValue, TypeDesc};

/// A node result, loaded or still in the cache.
#[derive(Clone)]
pub struct Lazy(Arc<Inner>);

struct Inner {
    value: OnceLock<AnyValue>,
    cached: Option<(Hash, TypeDesc, Arc<Store>)>,
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
        let rows = value.dyn_rows();
        let cell = OnceLock::new();
        let _ = cell.set(value);
        Lazy(Arc::new(Inner { value: cell, cached: None, rows }))
    }

    /// A value in `store` under content hash `content`.
    pub fn cached(content: Hash, ty: TypeDesc, store: Arc<Store>, rows: Option<u64>) -> Lazy {
        Lazy(Arc::new(Inner { value: OnceLock::new(), cached: Some((content, ty, store)), rows }))
    }

    /// Row count, without loading.
    pub fn rows(&self) -> Option<u64> {
        self.0.rows
    }

    /// Whether the value is in memory.
    pub fn is_loaded(&self) -> bool {
        self.0.value.get().is_some()
    }

    /// Content hash of a cached value.
    pub fn content(&self) -> Option<Hash> {
        self.0.cached.as_ref().map(|(h, _, _)| *h)
    }

    /// The value, loading and verifying it if needed.
    pub fn get(&self) -> Result<AnyValue, LoadError> {
        if let Some(v) = self.0.value.get() {
            return Ok(v.clone());
        }
        let (content, ty, store) = self.0.cached.as_ref().expect("a Lazy is either loaded or cached");
        let hex = content.to_hex().to_string();
        let bytes = match store.blob(content).map_err(|e| LoadError::Cache(e.to_string()))? {
            Blob::Found(bytes) => bytes,
            Blob::Missing => return Err(LoadError::Missing(hex)),
            Blob::Corrupt => return Err(LoadError::Corrupt(hex)),
        };
        let value = ty.decode(&bytes).map_err(|e| LoadError::Decode(hex, e.to_string()))?;
        Ok(self.0.value.get_or_init(|| value).clone())
    }
}
