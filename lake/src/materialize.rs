//! The materializer contract and the run's materialization step.
//!
//! A `[materialize.NAME]` section names a node (`node = "..."`) and a `kind`:
//!
//! | kind | options | writes |
//! |---|---|---|
//! | `ducklake` | `table` (default: the section name; `{item}` is replaced by the fan-out item's label), `schema` (default `main`), `mode` = `replace` / `append` / `merge`, `key` (column or list, for `merge`) | a table of the flow's `[lake]` |
//! | `geoparquet` | `path` (relative to the flow file; `{item}` as above), `geometry` (primary column; default `geometry` or the first) | a GeoParquet 1.1 file |
//! | `lance` | `path` (a `.lance` directory, placed as for `geoparquet`; `s3://` too), `mode` = `overwrite` / `append` | a new version of a Lance dataset ([`crate::lance`]) |
//!
//! [`check`] validates every section before the run (so a typo does not cost a whole run), and
//! [`materialize`] writes after a successful run:
//! 1. GeoParquet files are written to temporary names first;
//! 2. all DuckLake tables, plus the run records, are written in one transaction (one snapshot);
//! 3. then the GeoParquet files are renamed into place, and each Lance dataset gets its new version (one
//!    atomic Lance commit each).
//!
//! A target whose value is unchanged since flowrun last wrote it there (same content hash, recorded in the
//! cache index) is skipped (a Lance dataset answers itself, from flowrun's record in it: see
//! [`crate::lance::recorded`]); when every target is unchanged the lake is not touched at all, so a fully
//! cached rerun creates no empty snapshot (its record stays in the local run log, `flowrun runs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use flowrun_cache::Store;
use flowrun_engine::flow::{Diagnostic, Diagnostics, Label, MaterializeDecl};
use flowrun_engine::schedule::{OutputItem, RunReport};
use flowrun_engine::{Flow, Table};
use serde::Serialize;

use crate::config::{DataPath, LakeConfig};
use crate::duck::{ArrowSource, Duck};
use crate::ducklake::{self, LakeTarget, Mode};
use crate::geoparquet;
use crate::ident;
use crate::lance::{self, LanceMode};

/// Materializer kinds this crate writes.
pub const MATERIALIZER_KINDS: &[&str] = &["ducklake", "geoparquet", "lance"];

/// What one target did.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// `[materialize.NAME]`.
    pub section: String,
    /// `ducklake`, `geoparquet` or `lance`.
    pub kind: String,
    /// `schema.table` or the file path.
    pub destination: String,
    /// Rows in the value.
    pub rows: u64,
    /// `written` or `unchanged`.
    pub status: String,
}

impl TargetReport {
    /// One line for the CLI.
    pub fn describe(&self) -> String {
        format!("{} {} ({} rows, {})", self.kind, self.destination, self.rows, self.status)
    }
}

/// What the materialization step did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MaterializeReport {
    /// Per target.
    pub targets: Vec<TargetReport>,
    /// The lake snapshot this run committed, if it wrote to the lake.
    pub snapshot: Option<i64>,
    /// How many times the lake's commit was planned again after conflicting with another writer's.
    pub replans: u32,
    /// The lake's catalog.
    pub lake: Option<String>,
    /// Seconds spent.
    pub seconds: f64,
}

enum Spec {
    Lake { schema: String, table: String, mode: Mode },
    File { path: String, geometry: Option<String> },
    Lance { path: String, mode: LanceMode },
}

fn opt_str(d: &MaterializeDecl, key: &str) -> Result<Option<String>, (String, Option<std::ops::Range<usize>>)> {
    match d.options.get(key) {
        None => Ok(None),
        Some((toml::Value::String(s), _)) => Ok(Some(s.clone())),
        Some((other, span)) => {
            Err((format!("`{key}` must be a string, found {}", other.type_str()), Some(span.clone())))
        }
    }
}

fn spec(d: &MaterializeDecl) -> Result<Spec, (String, Option<std::ops::Range<usize>>)> {
    let allowed: &[&str] = match d.kind.as_str() {
        "ducklake" => &["table", "schema", "mode", "key"],
        "geoparquet" => &["path", "geometry"],
        "lance" => &["path", "mode"],
        other => return Err((format!("unknown materializer kind `{other}`"), None)),
    };
    for (k, (_, span)) in &d.options {
        if !allowed.contains(&k.as_str()) {
            return Err((
                format!("`{}` materializers have no option `{k}`; options: {}", d.kind, allowed.join(", ")),
                Some(span.clone()),
            ));
        }
    }
    let span_of = |k: &str| d.options.get(k).map(|(_, s)| s.clone());
    match d.kind.as_str() {
        "ducklake" => {
            let table = opt_str(d, "table")?.unwrap_or_else(|| d.name.clone());
            let check_table = table.replace("{item}", "x");
            ident::validate(&check_table, "table").map_err(|e| (e.to_string(), span_of("table")))?;
            let schema = opt_str(d, "schema")?.unwrap_or_else(|| "main".into());
            ident::validate(&schema, "schema").map_err(|e| (e.to_string(), span_of("schema")))?;
            let keys: Vec<String> = match d.options.get("key") {
                None => Vec::new(),
                Some((toml::Value::String(s), _)) => vec![s.clone()],
                Some((toml::Value::Array(a), span)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| ("`key` lists column names".to_string(), Some(span.clone())))
                    })
                    .collect::<Result<_, _>>()?,
                Some((_, span)) => return Err(("`key` is a column name or a list of them".into(), Some(span.clone()))),
            };
            for k in &keys {
                ident::validate(k, "key column").map_err(|e| (e.to_string(), span_of("key")))?;
            }
            let mode = match opt_str(d, "mode")?.as_deref().unwrap_or("replace") {
                "replace" => Mode::Replace,
                "append" => Mode::Append,
                "merge" if keys.is_empty() => {
                    return Err(("mode = \"merge\" needs `key = [\"column\", ...]`".into(), span_of("mode")));
                }
                "merge" => Mode::Merge(keys.clone()),
                other => {
                    return Err((format!("unknown mode `{other}`; modes: replace, append, merge"), span_of("mode")));
                }
            };
            if !keys.is_empty() && !matches!(mode, Mode::Merge(_)) {
                return Err(("`key` is only used with mode = \"merge\"".into(), span_of("key")));
            }
            Ok(Spec::Lake { schema, table, mode })
        }
        "lance" => {
            let path = opt_str(d, "path")?
                .ok_or_else(|| ("a lance materialization needs `path = \"out/x.lance\"`".to_string(), None))?;
            let mode = match opt_str(d, "mode")?.as_deref().unwrap_or("overwrite") {
                "overwrite" => LanceMode::Overwrite,
                "append" => LanceMode::Append,
                other => {
                    return Err((format!("unknown mode `{other}`; modes: overwrite, append"), span_of("mode")));
                }
            };
            Ok(Spec::Lance { path, mode })
        }
        _ => {
            let path = opt_str(d, "path")?
                .ok_or_else(|| ("a geoparquet materialization needs `path = \"out/x.parquet\"`".to_string(), None))?;
            Ok(Spec::File { path, geometry: opt_str(d, "geometry")? })
        }
    }
}

/// Validates every `[materialize.*]` section and the `[lake]` section (with its `--lake` overrides) before
/// anything runs; gives the resolved `[lake]`, which the run then uses as it is.
pub fn check(flow: &Flow, lake_overrides: &[(String, String)]) -> Result<Option<LakeConfig>, Diagnostics> {
    let mut errors = Vec::new();
    let mut needs_lake = None;
    for d in &flow.materialize {
        match spec(d) {
            Ok(Spec::Lake { .. }) => needs_lake = Some(d),
            Ok(Spec::File { .. } | Spec::Lance { .. }) => {}
            Err((message, span)) => {
                let mut diag = Diagnostic::new("bad-materialize", format!("materialize `{}`: {message}", d.name));
                diag = diag.at(Label::new(&flow.source, span.unwrap_or(d.span.clone()), "here"));
                errors.push(diag);
            }
        }
    }
    let lake = match LakeConfig::from_flow(flow, lake_overrides) {
        Ok(None) if needs_lake.is_some() => {
            let d = needs_lake.unwrap();
            errors.push(
                Diagnostic::new(
                    "bad-materialize",
                    format!("materialize `{}` writes to DuckLake, but the flow has no [lake]", d.name),
                )
                .at(Label::new(&flow.source, d.span.clone(), "ducklake materialization"))
                .help(Some("add [lake] with catalog = \"lake/flow.ducklake\" (see the README)".to_string())),
            );
            None
        }
        Ok(lake) => lake,
        Err(e) => {
            let span = flow.lake.get("catalog").map(|(_, s)| s.clone());
            let mut d = Diagnostic::new("bad-lake", format!("[lake]: {e:#}"));
            if let Some(span) = span {
                d = d.at(Label::new(&flow.source, span, "here"));
            }
            errors.push(d);
            None
        }
    };
    let sections = [
        ("bad-storage", "[storage]", &flow.storage, crate::storage_config(flow).err()),
        ("bad-cache", "[cache]", &flow.cache, crate::remote_cache_url(flow).err()),
    ];
    for (code, section, keys, err) in sections {
        if let Some(e) = err {
            let mut d = Diagnostic::new(code, format!("{e:#}"));
            let at = keys
                .iter()
                .find(|(k, _)| e.to_string().contains(&format!("`{k}`")) || e.to_string().contains(k.as_str()));
            if let Some((_, (_, span))) = at.or(keys.first()) {
                d = d.at(Label::new(&flow.source, span.clone(), "here"));
            }
            let target = flow.target.as_deref().map(|t| format!(" (target `{t}`)")).unwrap_or_default();
            errors
                .push(d.help(Some(format!("fix {section}{target}; the README's \"Targets\" section lists its keys"))));
        }
    }
    if errors.is_empty() { Ok(lake) } else { Err(Diagnostics(errors)) }
}

/// Where a run of `flow` would write, for `explain`: the lake's catalog and data files, then each
/// materialization (`{item}` left as written), as (what, where) pairs. Nothing is contacted.
pub fn destinations(flow: &Flow, lake: Option<&LakeConfig>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(l) = lake {
        out.push(("lake catalog".to_string(), l.describe()));
        out.push(("lake data files".to_string(), l.data_path.to_string()));
        if matches!(l.data_path, DataPath::Remote(_)) || matches!(l.exports, Some(DataPath::Remote(_))) {
            let style = if l.storage.path_style { "path-style" } else { "virtual-hosted" };
            out.push(("object storage".to_string(), format!("{} ({style} URLs)", l.storage.describe())));
        }
    }
    for d in &flow.materialize {
        let at = match spec(d) {
            Ok(Spec::Lake { schema, table, mode }) => {
                let alias = lake.map(|l| l.alias.as_str()).unwrap_or("lake");
                let mode = match mode {
                    Mode::Replace => "replace".to_string(),
                    Mode::Append => "append".to_string(),
                    Mode::Merge(keys) => format!("merge on {}", keys.join(", ")),
                };
                format!("{alias}.{schema}.{table} ({mode})")
            }
            Ok(Spec::File { path, .. }) => FileDest::resolve(flow, lake, &path).to_string(),
            Ok(Spec::Lance { path, mode }) => {
                format!(
                    "{} ({}, a new version per run that changes it)",
                    FileDest::resolve(flow, lake, &path),
                    mode.as_str()
                )
            }
            Err((m, _)) => m,
        };
        out.push((format!("{} `{}`", d.kind, d.name), at));
    }
    out
}

/// The size and modification time of a catalog file (and of its write-ahead log): changed by any process
/// that writes the lake. `None` for a PostgreSQL catalog (or a missing file): then the lake itself is asked.
fn catalog_stamp(lake: &LakeConfig) -> Option<String> {
    let (crate::config::Catalog::DuckDb(p) | crate::config::Catalog::Sqlite(p)) = &lake.catalog else { return None };
    let stamp = |p: &std::path::Path| -> Option<String> {
        let m = std::fs::metadata(p).ok()?;
        let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(format!("{}.{}", m.len(), t.as_nanos()))
    };
    let wal = p.with_file_name(format!("{}.wal", p.file_name()?.to_string_lossy()));
    Some(format!("{}+{}", stamp(p)?, stamp(&wal).unwrap_or_default()))
}

/// Checks, before any node runs, that a DuckDB catalog file is not held by another program, and that every
/// object-store location the flow writes can be used (one listing request per bucket): an unreachable endpoint, refused credentials or a missing bucket are
/// said at once rather than after the run, and before a new DuckLake catalog records a data path that
/// cannot work. The catalog itself is reached when the results are written.
pub fn reach(flow: &Flow, lake: Option<&LakeConfig>) -> Result<()> {
    if let Some(l) = lake {
        l.check_not_held()?;
    }
    let mut urls: Vec<String> = Vec::new();
    if let Some(DataPath::Remote(url)) = lake.map(|l| &l.data_path) {
        urls.push(url.clone());
    }
    for d in &flow.materialize {
        if let Ok(Spec::File { path, .. } | Spec::Lance { path, .. }) = spec(d)
            && let FileDest::Remote(url) = FileDest::resolve(flow, lake, &path)
        {
            let (bucket, _) = flowrun_storage::Bucket::parse_url(&url)?;
            urls.push(format!("s3://{bucket}"));
        }
    }
    urls.sort();
    urls.dedup();
    if urls.is_empty() {
        return Ok(());
    }
    let storage = crate::storage_config(flow)?;
    for url in urls {
        flowrun_storage::Bucket::open(&url, &storage)?.check()?;
    }
    Ok(())
}

/// Where a GeoParquet file goes: a local path (written beside it, then renamed) or an object
/// (`s3://bucket/key`: written locally, then uploaded in one multipart upload completed at the end, so a
/// reader sees the old object or the new one, never a part).
enum FileDest {
    Local(PathBuf),
    Remote(String),
}

impl std::fmt::Display for FileDest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileDest::Local(p) => write!(f, "{}", p.display()),
            FileDest::Remote(u) => f.write_str(u),
        }
    }
}

impl FileDest {
    /// A materialization's `path`: an `s3://` object or an absolute path as written; a relative path under
    /// the lake's `exports`, else the flow's directory.
    fn resolve(flow: &Flow, lake: Option<&LakeConfig>, path: &str) -> FileDest {
        if flowrun_storage::is_remote(path) {
            return FileDest::Remote(path.to_string());
        }
        let p = PathBuf::from(path);
        if p.is_absolute() {
            return FileDest::Local(crate::config::normalize(&p));
        }
        match lake.and_then(|l| l.exports.as_ref()) {
            Some(DataPath::Remote(root)) => FileDest::Remote(format!("{root}/{}", path.trim_start_matches("./"))),
            Some(DataPath::Local(root)) => FileDest::Local(crate::config::normalize(&root.join(p))),
            None => FileDest::Local(crate::config::normalize(&flow.base_dir().join(p))),
        }
    }

    /// `s3://bucket/a/b.parquet` -> the bucket `s3://bucket` and the key `a/b.parquet`.
    fn object(url: &str, storage: &flowrun_storage::StorageConfig) -> Result<(flowrun_storage::Bucket, String)> {
        let (bucket, key) = flowrun_storage::Bucket::parse_url(url)?;
        Ok((flowrun_storage::Bucket::open(&format!("s3://{bucket}"), storage)?, key))
    }

    fn exists(&self, storage: &flowrun_storage::StorageConfig) -> Result<bool> {
        match self {
            FileDest::Local(p) => Ok(p.exists()),
            FileDest::Remote(url) => {
                let (bucket, key) = Self::object(url, storage)?;
                bucket.exists(&key)
            }
        }
    }

    /// Where the file is written before it is committed.
    fn staging_path(&self) -> PathBuf {
        match self {
            FileDest::Local(p) => p.clone(),
            // the temporary is made beside this path, with O_EXCL and mode 0600 (`tempfile`), named as flowrun's
            FileDest::Remote(url) => std::env::temp_dir().join(url.rsplit('/').next().unwrap_or("flowrun.parquet")),
        }
    }

    fn commit(&self, tmp: tempfile::NamedTempFile, storage: &flowrun_storage::StorageConfig) -> Result<()> {
        match self {
            FileDest::Local(p) => geoparquet::commit(tmp, p),
            FileDest::Remote(url) => {
                let (bucket, key) = Self::object(url, storage)?;
                bucket.put_file(&key, tmp.path())
            }
        }
    }
}

fn state_key(kind: &str, where_: &str) -> String {
    format!("materialized:{kind}:{where_}")
}

fn expand(template: &str, item: &Option<String>) -> String {
    match item {
        Some(label) => template.replace("{item}", &ident::sanitize(label)),
        None => template.replace("{item}", "all"),
    }
}

fn rows_of(o: &OutputItem) -> u64 {
    o.value.as_ref().and_then(|v| v.rows()).unwrap_or(0)
}

fn table_of(o: &OutputItem, section: &str) -> Result<Table> {
    let value =
        o.value.as_ref().ok_or_else(|| anyhow!("materialization `{section}`: node `{}` has no value", o.node))?;
    // loaded for this write only: a run's tables are written one at a time, not all held at once
    let v = value.load().with_context(|| format!("loading the result of `{}`", o.node))?;
    v.downcast_ref::<Table>().cloned().ok_or_else(|| {
        anyhow!("materialization `{section}`: node `{}` returns a `{}`, not a table", o.node, v.dyn_type_name())
    })
}

/// After a Ctrl-C, stops before writing `section`, saying whether the lake's commit happened (`snapshot`) and
/// that `section` and the `what` after it were not written.
fn stop_if_interrupted(lake: Option<&LakeConfig>, snapshot: Option<i64>, section: &str, what: &str) -> Result<()> {
    let Some(l) = lake else { return Ok(()) };
    l.stop_if_interrupted().with_context(|| match snapshot {
        Some(snapshot) => {
            format!(
                "the lake was committed (snapshot {snapshot}); `{section}` and the {what} after it were not written"
            )
        }
        None => format!("`{section}` and the {what} after it were not written"),
    })
}

/// Writes the flow's materializations for a successful run (see the module documentation).
pub fn materialize(
    flow: &Flow,
    report: &RunReport,
    store: Option<&Store>,
    lake: Option<&LakeConfig>,
    flow_path: &str,
) -> Result<MaterializeReport> {
    let started = Instant::now();
    // the nodes' freed memory goes back to the system before tables are loaded again
    flowrun_engine::schedule::return_free_memory();
    let mut out = MaterializeReport { lake: lake.map(|l| l.describe()), ..Default::default() };
    // values are loaded from the cache only for targets that changed: an unchanged rerun reads no table
    let mut lake_targets: Vec<(LakeTarget, &OutputItem, String, blake3::Hash)> = Vec::new();
    // (section, path, geometry column, value, destination, identity)
    type FileTarget<'a> = (String, FileDest, Option<String>, &'a OutputItem, String, blake3::Hash);
    let mut files: Vec<FileTarget> = Vec::new();
    // (section, dataset, mode, value, identity)
    let mut datasets: Vec<(String, FileDest, LanceMode, &OutputItem, blake3::Hash)> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for d in &flow.materialize {
        let spec = spec(d).map_err(|(m, _)| anyhow!("materialize `{}`: {m}", d.name))?;
        let node = &flow.nodes[d.node].name;
        let items = report.output(node);
        if items.is_empty() {
            bail!("materialization `{}`: node `{node}` produced no result in this run", d.name);
        }
        for o in items {
            let identity = o.identity.ok_or_else(|| anyhow!("node `{node}` has no result identity"))?;
            match &spec {
                Spec::Lake { schema, table, mode } => {
                    let table = expand(table, &o.item);
                    ident::validate(&table, "table")?;
                    let where_ = format!("{}#{schema}.{table}", lake.map(|l| l.describe()).unwrap_or_default());
                    if let Some(other) = seen.insert(where_.clone(), d.name.clone()) {
                        bail!("materializations `{other}` and `{}` both write lake table {schema}.{table}", d.name);
                    }
                    let t = LakeTarget {
                        section: d.name.clone(),
                        schema: schema.clone(),
                        table,
                        mode: mode.clone(),
                        identity: identity.to_hex().to_string(),
                        // a cache entry that does not record its rows (an older one): counted by loading it
                        rows: match o.value.as_ref().and_then(|v| v.rows()) {
                            Some(rows) => rows as usize,
                            None => table_of(o, &d.name)?.num_rows(),
                        },
                        adopt: false,
                        catalog_as_left: false,
                    };
                    lake_targets.push((t, o, where_, identity));
                }
                Spec::File { path, geometry } => {
                    let p = FileDest::resolve(flow, lake, &expand(path, &o.item));
                    let where_ = p.to_string();
                    if let Some(other) = seen.insert(where_.clone(), d.name.clone()) {
                        bail!("materializations `{other}` and `{}` both write {where_}", d.name);
                    }
                    files.push((d.name.clone(), p, geometry.clone(), o, where_, identity));
                }
                Spec::Lance { path, mode } => {
                    let p = FileDest::resolve(flow, lake, &expand(path, &o.item));
                    if let Some(other) = seen.insert(p.to_string(), d.name.clone()) {
                        bail!("materializations `{other}` and `{}` both write {p}", d.name);
                    }
                    datasets.push((d.name.clone(), p, *mode, o, identity));
                }
            }
        }
    }
    let unchanged = |kind: &str, where_: &str, identity: &blake3::Hash, exists: bool| -> bool {
        exists
            && store
                .and_then(|s| s.state(&state_key(kind, where_)).ok().flatten())
                .is_some_and(|v| v == identity.to_hex().as_str())
    };

    // 1. GeoParquet to temporary files
    let storage = crate::storage_config(flow)?;
    let mut pending_files = Vec::new();
    for (section, path, geometry, o, where_, identity) in files {
        geoparquet::remove_dead_temporaries(&path.staging_path());
        if unchanged("geoparquet", &where_, &identity, path.exists(&storage)?) {
            out.targets.push(TargetReport {
                section,
                kind: "geoparquet".into(),
                destination: where_,
                rows: rows_of(o),
                status: "unchanged".into(),
            });
            continue;
        }
        let value = table_of(o, &section)?;
        let (tmp, info) = geoparquet::write_pending(&value, &path.staging_path(), geometry.as_deref())
            .with_context(|| format!("materialization `{section}` ({path})"))?;
        pending_files.push((tmp, path, section, where_, identity, info.rows));
    }

    // 2. the lake, in one transaction, under the lake's lock (for a catalog file) from the first look at it
    // to the last. The local cache may answer "unchanged" only for a catalog file that nobody changed since
    // this cache last wrote or checked it; otherwise the lake's ledger answers.
    let _turn = match lake {
        Some(l) if !lake_targets.is_empty() => l.lock()?,
        _ => None,
    };
    let stamp = lake.and_then(catalog_stamp);
    let with_stamp = |identity: &str| stamp.as_ref().map(|st| format!("{identity}@{st}"));
    let mut changed = Vec::new();
    for (mut t, o, where_, _) in lake_targets {
        let recorded = store.and_then(|s| s.state(&state_key("ducklake", &where_)).ok().flatten());
        // a state from before the ledger (no `@`): the lake holds the value by that record; the ledger is told
        t.adopt = recorded.as_deref().is_some_and(|r| !r.contains('@') && r == t.identity);
        // the catalog as this cache left it after writing this table: the ledger's last value there is known
        t.catalog_as_left =
            stamp.as_ref().is_some_and(|st| recorded.as_deref().is_some_and(|r| r.ends_with(&format!("@{st}"))));
        if t.adopt || recorded.is_none() || recorded != with_stamp(&t.identity) {
            changed.push((t, o, where_));
            continue;
        }
        out.targets.push(TargetReport {
            section: t.section.clone(),
            kind: "ducklake".into(),
            destination: format!("{}.{}", t.schema, t.table),
            rows: rows_of(o),
            status: "unchanged".into(),
        });
    }
    // what the transaction saw: recorded with the catalog's stamp after the commit
    let mut lake_states: Vec<(String, String)> = Vec::new();
    if !changed.is_empty() {
        let lake = lake.ok_or_else(|| anyhow!("DuckLake materializations need a [lake] section"))?;
        let duck = Duck::in_memory()?;
        lake.attach(&duck, false)?;
        // the lake's own ledger answers (inside the transaction) for what another machine, working directory
        // or a cleared cache wrote
        let (mut targets, mut values, mut places) = (Vec::new(), Vec::new(), Vec::new());
        for (t, o, where_) in changed {
            targets.push(t);
            values.push(o);
            places.push(where_);
        }
        // each table is read from the cache only when DuckDB starts writing it, one at a time
        let source = |i: usize| -> Result<ArrowSource> {
            let (o, section) = (values[i], &targets[i].section);
            let schema = match o.value.as_ref().and_then(|v| v.table_schema()) {
                Some(schema) => schema,
                None => return Ok(ArrowSource::from(table_of(o, section)?)),
            };
            let (o, section) = (o.clone(), section.clone());
            Ok(ArrowSource::deferred(schema, move || table_of(&o, &section)))
        };
        let done = ducklake::write(&duck, lake, &targets, source, &flow.name, flow_path, report)?;
        (out.snapshot, out.replans) = (done.snapshot, done.replans);
        for ((t, where_), written) in targets.iter().zip(places).zip(done.written) {
            out.targets.push(TargetReport {
                section: t.section.clone(),
                kind: "ducklake".into(),
                destination: format!("{}.{}", t.schema, t.table),
                rows: t.rows as u64,
                status: match (written, done.snapshot) {
                    (true, Some(snapshot)) => format!("written, snapshot {snapshot}"),
                    _ => "unchanged".into(),
                },
            });
            lake_states.push((where_, t.identity.clone()));
        }
    }
    // the catalog as this run leaves it (its connection closed, the lock still held); a catalog without a
    // stamp (PostgreSQL) records `identity@`, which never matches: the ledger always answers there
    if let Some(s) = store {
        let stamp = lake.and_then(catalog_stamp).unwrap_or_default();
        for (where_, identity) in lake_states {
            s.set_state(&state_key("ducklake", &where_), &format!("{identity}@{stamp}"))?;
        }
    }

    // 3. files into place
    for (tmp, path, section, where_, identity, rows) in pending_files {
        stop_if_interrupted(lake, out.snapshot, &section, "files")?;
        path.commit(tmp, &storage).with_context(|| format!("materialization `{section}`"))?;
        if let Some(s) = store {
            s.set_state(&state_key("geoparquet", &where_), &identity.to_hex())?;
        }
        out.targets.push(TargetReport {
            section,
            kind: "geoparquet".into(),
            destination: where_,
            rows,
            status: "written".into(),
        });
    }

    // 4. Lance datasets: one commit (a new version) each
    for (section, dest, mode, o, identity) in datasets {
        stop_if_interrupted(lake, out.snapshot, &section, "datasets")?;
        let where_ = dest.to_string();
        let identity = identity.to_hex().to_string();
        let in_dataset = |what: &str| format!("materialization `{section}` ({what} {where_})");
        let latest = lance::latest_version(&where_, &storage).with_context(|| in_dataset("listing"))?;
        let made = match latest {
            Some(latest) => {
                lance::recorded(&where_, mode, &identity, latest, &storage).with_context(|| in_dataset("reading"))?
            }
            None => None,
        };
        let status = if made.is_some() {
            "unchanged".to_string()
        } else {
            let value = table_of(o, &section)?;
            let version =
                lance::commit(&value, &where_, mode, &identity, &storage).with_context(|| in_dataset("writing"))?;
            format!("written, version {version}")
        };
        out.targets.push(TargetReport { section, kind: "lance".into(), destination: where_, rows: rows_of(o), status });
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}
