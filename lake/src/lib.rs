//! flowrun's lakehouse side: DuckDB, DuckLake, GeoParquet.
//!
//! # Crate organization
//! - [`duck`]: an owned DuckDB database and the columnar Arrow bridge in and out of it;
//! - [`extensions`]: DuckDB extensions provisioned without DuckDB's download server (PyPI fallback);
//! - [`config`]: the flow's `[lake]` section (DuckDB, SQLite or PostgreSQL catalog);
//! - [`ducklake`]: **where DuckLake is written** (one transaction per run, modes, run history);
//! - [`geoparquet`]: GeoParquet 1.1 files;
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
pub mod materialize;
pub mod sql;

pub use config::LakeConfig;
pub use materialize::{MATERIALIZER_KINDS, MaterializeReport, TargetReport, check, materialize};
pub use sql::DuckSql;
