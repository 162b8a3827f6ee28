//! Lance datasets (`kind = "lance"`): a node's table as a versioned Lance dataset, for model training
//! (LanceDB, `pylance`: fast random access, zero-copy to Arrow).
//!
//! Written by DuckDB's official `lance` extension (`COPY t TO 'x.lance' (FORMAT lance, MODE ...)`),
//! provisioned like the other extensions (`duckdb-extension-lance==1.5.5` from PyPI when nothing else has
//! it). Not the `lance` crate: it follows its own Arrow major (flowrun is on Arrow 58) and brings DataFusion
//! and a cloud SDK per provider into the build, where the extension is one file DuckDB already knows how
//! to load. The table goes in through DuckDB's Arrow scan, so a `geoarrow.wkb` column arrives as `GEOMETRY`
//! and leaves as WKB with its `geoarrow.wkb` field metadata, which `pylance` and GeoArrow readers see.
//!
//! Every write is one Lance commit, so one new version per committing run: `overwrite` replaces the rows,
//! `append` adds them. A commit is atomic: a write that fails (or is killed) leaves the previous version
//! the one readers open. On `s3://` the credentials and endpoint of `[storage]` are handed to the extension
//! as a scoped `TYPE lance` secret, never printed.

use anyhow::{Context, Result};
use flowrun_engine::Table;
use flowrun_storage::StorageConfig;

use crate::duck::{Duck, literal};
use crate::extensions::{self, ExtensionSources};

/// How a run's table is committed to the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LanceMode {
    /// The new version holds this run's rows only.
    Overwrite,
    /// The new version holds the previous rows and this run's.
    Append,
}

impl LanceMode {
    /// As written in a flow file.
    pub fn as_str(self) -> &'static str {
        match self {
            LanceMode::Overwrite => "overwrite",
            LanceMode::Append => "append",
        }
    }
}

/// Commits `table` to the Lance dataset at `dest` (a local directory or `s3://bucket/key.lance`) as one
/// new version; returns that version.
fn write(table: &Table, dest: &str, mode: LanceMode, storage: &StorageConfig) -> Result<u64> {
    let duck = Duck::in_memory()?;
    extensions::ensure(&duck, "lance", &ExtensionSources::from_env())?;
    if flowrun_storage::is_remote(dest) {
        give_credentials(&duck, dest, storage)?;
    } else if let Some(parent) = std::path::Path::new(dest).parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    duck.load_table("flowrun_lance", table)?;
    duck.execute(&format!("COPY flowrun_lance TO {} (FORMAT lance, MODE '{}')", literal(dest), mode.as_str()))
        .with_context(|| format!("cannot write the Lance dataset {dest}"))?;
    latest_version(dest, storage)?.with_context(|| format!("{dest} has no version after a successful write"))
}

/// The dataset's newest version, `None` if there is no dataset at `dest`. Read from the manifest names
/// under `_versions/`: `N.manifest`, or `u64::MAX - N` in 20 digits (Lance's newer naming, so that the
/// newest sorts first in a listing).
pub fn latest_version(dest: &str, storage: &StorageConfig) -> Result<Option<u64>> {
    let names: Vec<String> = if flowrun_storage::is_remote(dest) {
        let (bucket, key) = bucket_of(dest, storage)?;
        let prefix = format!("{key}/_versions/");
        bucket.list(&prefix)?.into_iter().filter_map(|o| o.key.rsplit('/').next().map(str::to_string)).collect()
    } else {
        match std::fs::read_dir(std::path::Path::new(dest).join("_versions")) {
            Ok(dir) => dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot list {dest}/_versions")),
        }
    };
    Ok(names.iter().filter_map(|n| version_of(n)).max())
}

/// The version the commit of value `identity` in `mode` made, as the dataset records it, if that commit's
/// rows are still in the dataset's newest version `latest`.
///
/// flowrun keeps this record in the dataset itself, `_flowrun/<mode>/<identity>` beside Lance's own
/// directories (Lance ignores it), written right after the commit: so any machine, working directory or
/// cache that writes the dataset sees what was committed, as DuckLake's ledger does for lake tables. An
/// overwrite holds only while it is the newest version; an append until flowrun overwrites the dataset
/// (`_flowrun/overwritten`, written before an overwrite commits). The records are not in Lance's commit:
/// a run killed between commit and record appends its value again on its rerun, and a run killed between
/// `_flowrun/overwritten` and the overwrite appends again what was appended before (an overwrite that fails
/// before committing puts the record back as it was). A dataset overwritten
/// by another tool is seen by `overwrite` (its newest version moved) but not by `append`.
pub fn recorded(
    dest: &str,
    mode: LanceMode,
    identity: &str,
    latest: u64,
    storage: &StorageConfig,
) -> Result<Option<u64>> {
    let Some(made) = read_record(dest, &record_key(mode, identity), storage)? else { return Ok(None) };
    let holds = match mode {
        LanceMode::Overwrite => latest == made,
        LanceMode::Append => latest >= made && made >= read_record(dest, OVERWRITTEN, storage)?.unwrap_or(0),
    };
    Ok(holds.then_some(made))
}

/// Commits `table` (see [`write`]) and records the commit (see [`recorded`]); returns the new version.
pub fn commit(table: &Table, dest: &str, mode: LanceMode, identity: &str, storage: &StorageConfig) -> Result<u64> {
    // (the record before this overwrite, and the newest version then)
    let overwritten_before = if mode == LanceMode::Overwrite {
        // the version this overwrite makes (versions count up by one): every append before it is gone
        let before = read_record(dest, OVERWRITTEN, storage)?.unwrap_or(0);
        let latest = latest_version(dest, storage)?;
        write_record(dest, OVERWRITTEN, latest.map_or(1, |v| v + 1), storage)?;
        Some((before, latest))
    } else {
        None
    };
    let version = write(table, dest, mode, storage).inspect_err(|_| {
        // an overwrite that provably did not commit (the newest version has not moved) left every append in
        // place: the record says so again; if it may have committed, the record stays (at worst an append
        // is made again, never one lost)
        if let Some((before, latest)) = overwritten_before
            && latest_version(dest, storage).ok() == Some(latest)
        {
            let _ = write_record(dest, OVERWRITTEN, before, storage);
        }
    })?;
    write_record(dest, &record_key(mode, identity), version, storage)?;
    Ok(version)
}

/// The record of the last overwrite flowrun made (see [`recorded`]).
const OVERWRITTEN: &str = "_flowrun/overwritten";

fn read_record(dest: &str, key: &str, storage: &StorageConfig) -> Result<Option<u64>> {
    let text = if flowrun_storage::is_remote(dest) {
        let (bucket, path) = bucket_of(dest, storage)?;
        bucket.get(&format!("{path}/{key}"))?.map(|b| String::from_utf8_lossy(&b).into_owned())
    } else {
        std::fs::read_to_string(std::path::Path::new(dest).join(key)).ok()
    };
    Ok(text.and_then(|t| t.trim().parse().ok()))
}

fn write_record(dest: &str, key: &str, version: u64, storage: &StorageConfig) -> Result<()> {
    if flowrun_storage::is_remote(dest) {
        let (bucket, path) = bucket_of(dest, storage)?;
        bucket.put(&format!("{path}/{key}"), version.to_string().into_bytes())
    } else {
        let file = std::path::Path::new(dest).join(key);
        std::fs::create_dir_all(file.parent().unwrap_or(std::path::Path::new(dest)))?;
        std::fs::write(&file, version.to_string()).with_context(|| format!("cannot write {}", file.display()))
    }
}

fn record_key(mode: LanceMode, identity: &str) -> String {
    format!("_flowrun/{}/{identity}", mode.as_str())
}

/// `s3://bucket/a/b.lance` -> the bucket and `a/b.lance`.
fn bucket_of(dest: &str, storage: &StorageConfig) -> Result<(flowrun_storage::Bucket, String)> {
    let (bucket, key) = flowrun_storage::Bucket::parse_url(dest)?;
    Ok((flowrun_storage::Bucket::open(&format!("s3://{bucket}"), storage)?, key.trim_end_matches('/').to_string()))
}

/// A manifest's file name -> its version.
fn version_of(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".manifest")?;
    let n: u64 = stem.parse().ok()?;
    Some(if stem.len() == 20 { u64::MAX - n } else { n })
}

/// Gives the extension the object storage settings for `dest`'s bucket (a secret scoped to it).
fn give_credentials(duck: &Duck, dest: &str, cfg: &StorageConfig) -> Result<()> {
    let (bucket, _) = flowrun_storage::Bucket::parse_url(dest)?;
    let (key, secret, token) = cfg.credentials()?;
    let mut opts = vec![
        "TYPE lance".to_string(),
        "PROVIDER config".to_string(),
        format!("SCOPE {}", literal(&format!("s3://{bucket}/"))),
        format!("ACCESS_KEY_ID {}", literal(&key)),
        format!("SECRET_ACCESS_KEY {}", literal(secret.expose())),
        format!("REGION {}", literal(&cfg.region)),
        format!("VIRTUAL_HOSTED_STYLE_REQUEST {}", !cfg.path_style),
        format!("ALLOW_HTTP {}", cfg.allow_http),
    ];
    if let Some(endpoint) = &cfg.endpoint {
        opts.push(format!("ENDPOINT {}", literal(endpoint)));
    }
    if let Some(t) = token {
        opts.push(format!("SESSION_TOKEN {}", literal(t.expose())));
    }
    duck.execute_quiet(&format!("CREATE OR REPLACE SECRET flowrun_lance ({})", opts.join(", ")))
        .map_err(|e| anyhow::anyhow!("cannot give DuckDB's lance extension the S3 credentials: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_give_versions() {
        assert_eq!(version_of("3.manifest"), Some(3));
        assert_eq!(version_of("18446744073709551614.manifest"), Some(1));
        assert_eq!(version_of("18446744073709551612.manifest"), Some(3));
        assert_eq!(version_of("_latest.manifest"), None);
        assert_eq!(version_of("x.txn"), None);
    }
}
