//! flowrun's lakehouse side: DuckDB, DuckLake, GeoParquet, Lance.
//!
//! # Crate organization
//! - [`duck`]: an owned DuckDB database and the columnar Arrow bridge in and out of it;
//! - [`extensions`]: DuckDB extensions provisioned without DuckDB's download server (PyPI fallback);
//! - [`config`]: the flow's `[lake]` section (DuckDB, SQLite or PostgreSQL catalog);
//! - [`ducklake`]: **where DuckLake is written** (one transaction per run, modes, run history);
//! - [`geoparquet`]: GeoParquet 1.1 files;
//! - [`lance`]: Lance datasets (a version per run) through DuckDB's `lance` extension;
//! - [`materialize`]: the materializer contract: option checks before a run, writes after it;
//! - [`sql`]: SQL nodes on DuckDB;
//! - [`ident`]: identifiers from flow files, validated and quoted.
//!
//! The engine and cache crates do not depend on DuckDB (their tests build in seconds); this one does.
#![warn(missing_docs)]

pub mod config;
pub mod duck;
pub mod ducklake;
pub mod extensions;
pub mod geoparquet;
pub mod ident;
pub mod lance;
pub mod materialize;
pub mod sql;

pub use config::{DataPath, LakeConfig};

/// The flow's `[storage]` (with its target's keys): how to reach `s3://` locations.
pub fn storage_config(flow: &flowrun_engine::Flow) -> anyhow::Result<flowrun_storage::StorageConfig> {
    let table: toml::Table = flow.storage.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect();
    flowrun_storage::StorageConfig::from_table(Some(&table))
}

/// The flow's `[cache] remote` (with its target's keys): the `s3://bucket/prefix` of the shared cache, if any.
/// `remote` is `[cache]`'s one key.
pub fn remote_cache_url(flow: &flowrun_engine::Flow) -> anyhow::Result<Option<String>> {
    if let Some(k) = flow.cache.keys().find(|k| *k != "remote") {
        anyhow::bail!("[cache] has no key `{k}`; its one key is remote = \"s3://bucket/prefix\"");
    }
    match flow.cache.get("remote") {
        None => Ok(None),
        Some((toml::Value::String(url), _)) => {
            flowrun_storage::Bucket::parse_url(url)?;
            Ok(Some(url.clone()))
        }
        Some((other, _)) => anyhow::bail!("[cache] remote must be an s3:// URL, found {}", other.type_str()),
    }
}
pub use materialize::{MATERIALIZER_KINDS, MaterializeReport, TargetReport, check, destinations, materialize, reach};
pub use sql::DuckSql;
