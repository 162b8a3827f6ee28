//! Where DuckLake is written: every table of a run in **one** transaction, so one run is one snapshot.
//!
//! Each target's table is a view over its Arrow data, read from the cache only when DuckDB starts reading
//! it (see [`Duck::with_views`]). Inside `BEGIN ... COMMIT` DuckDB scans each straight into the lake: no
//! copy is staged in DuckDB (but for `merge`, below), and a commit holds one table in memory, not all of
//! them. Per target:
//! - **replace**: create the table, or empty and refill it when its columns are unchanged, or drop and
//!   re-create it when they changed;
//! - **append**: add new columns, widen column types DuckLake can widen (int8 -> int64, float -> double...),
//!   refuse other type changes with a message naming the column; then `INSERT ... BY NAME`;
//! - **merge**: the same schema evolution, then `MERGE INTO ... ON (key columns)`: matching rows are
//!   updated, new rows inserted. The key must be unique in the node's result. The table is read twice (the
//!   key check, then the merge), so it is copied once into a temporary table.
//!
//! The run's records are appended to `flowrun_runs` and `flowrun_node_runs` in the same transaction, with
//! the lake's ledger `flowrun_materializations` (destination, mode, value identity, rows, run id): what the
//! lake holds, whichever machine, directory or cache wrote it (see [`already_written`]). The commit
//! message names the flow and the run id. Any error rolls the transaction back: the lake stays at its
//! previous snapshot. Every row's snapshot is DuckLake's virtual `snapshot_id` column.

use anyhow::{Context, Result, bail};
use flowrun_engine::Table;
use flowrun_engine::schedule::{RunReport, node_records, run_record};
use serde::Serialize;

use crate::config::LakeConfig;
use crate::duck::{ArrowSource, Duck, literal};
use crate::ident::quoted;

/// How a node result lands in its table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The table holds exactly the node's result.
    Replace,
    /// The node's rows are added.
    Append,
    /// Rows are upserted on these key columns.
    Merge(Vec<String>),
}

/// One table to write.
pub struct LakeTarget {
    /// `[materialize.NAME]`.
    pub section: String,
    /// DuckLake schema.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// How.
    pub mode: Mode,
    /// The rows' identity (hex), recorded in the lake's ledger.
    pub identity: String,
    /// Its rows (recorded in the ledger).
    pub rows: usize,
    /// The lake holds this value by a record from before the ledger (a cache state an older flowrun
    /// wrote): if its table is there, only the ledger is told; otherwise it is written.
    pub adopt: bool,
    /// The catalog file is as this cache left it when it last wrote this table, and this is another value:
    /// for `replace` and `merge` the ledger (whose last value here is the one this cache wrote) is not read.
    pub catalog_as_left: bool,
}

/// What a lake write did.
#[derive(Debug, Clone, Serialize)]
pub struct LakeWrite {
    /// The snapshot the run committed (for a DuckDB catalog file, the one after the transaction's; for
    /// others, read back after the commit); `None` when the ledger showed every target already in the lake,
    /// so nothing was committed.
    pub snapshot: Option<i64>,
    /// Per target, in order: whether this run wrote it (`false`: the ledger showed its value already there).
    pub written: Vec<bool>,
    /// How many times the transaction was planned again after a conflict with another writer.
    pub replans: u32,
}

const TYPE_FAMILIES: &[&[&str]] = &[
    &["TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT"],
    &["UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"],
    &["FLOAT", "DOUBLE"],
];

fn base_type(t: &str) -> String {
    let t = t.trim().to_ascii_uppercase();
    match t.find('(') {
        Some(i) if t.starts_with("GEOMETRY") => t[..i].to_string(),
        _ => t,
    }
}

/// `Some(true)`: `to` widens `from` within a family; `Some(false)`: narrower or equal; `None`: other family.
fn widening(from: &str, to: &str) -> Option<bool> {
    for fam in TYPE_FAMILIES {
        if let (Some(a), Some(b)) = (fam.iter().position(|t| *t == from), fam.iter().position(|t| *t == to)) {
            return Some(b > a);
        }
    }
    None
}

/// The names and types of a relation's columns (a table, or a view read only as far as its schema).
fn columns(duck: &Duck, relation: &str) -> Result<Vec<(String, String)>> {
    let rows = duck.rows(&format!("DESCRIBE SELECT * FROM {relation}"))?;
    Ok(rows.into_iter().map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default())).collect())
}

/// Brings an existing lake table's columns in line with the incoming ones before an append or merge.
fn evolve(duck: &Duck, t: &LakeTarget, target: &str, incoming: &[(String, String)]) -> Result<()> {
    let existing = columns(duck, target)?;
    for (name, ty) in incoming {
        match existing.iter().find(|(n, _)| n == name) {
            None => duck
                .execute(&format!("ALTER TABLE {target} ADD COLUMN {} {ty}", quoted(name, "column")?))
                .with_context(|| format!("adding column `{name}` to lake table `{}`", t.table))?,
            Some((_, old)) => {
                let (old_b, new_b) = (base_type(old), base_type(ty));
                if old_b == new_b {
                    continue;
                }
                match widening(&old_b, &new_b) {
                    Some(false) => {} // narrower values fit the existing column
                    Some(true) => duck
                        .execute(&format!(
                            "ALTER TABLE {target} ALTER COLUMN {} SET DATA TYPE {ty}",
                            quoted(name, "column")?
                        ))
                        .with_context(|| {
                            format!("widening column `{name}` of lake table `{}` from {old} to {ty}", t.table)
                        })?,
                    None => bail!(
                        "column `{name}` of lake table `{}` is {old}, but materialization `{}` now gives {ty}: DuckLake \
                         can only widen a column's type (e.g. INTEGER -> BIGINT, FLOAT -> DOUBLE). Nothing was written. \
                         Cast the column in the node, or use mode = \"replace\" to rewrite the table.",
                        t.table,
                        t.section
                    ),
                }
            }
        }
    }
    Ok(())
}

fn table_exists(duck: &Duck, lake: &str, schema: &str, table: &str) -> Result<bool> {
    Ok(duck.table_columns(lake, schema, table)?.is_some())
}

/// Writes the rows of `view` (read once) into `t`'s lake table, inside the open transaction.
fn write_target(duck: &Duck, lake: &str, t: &LakeTarget, view: &str) -> Result<()> {
    let lake_q = quoted(lake, "lake alias")?;
    let schema_q = quoted(&t.schema, "schema")?;
    let target = format!("{lake_q}.{schema_q}.{}", quoted(&t.table, "table")?);
    if t.schema != "main" {
        duck.execute(&format!("CREATE SCHEMA IF NOT EXISTS {lake_q}.{schema_q}"))?;
    }
    if !table_exists(duck, lake, &t.schema, &t.table)? {
        return duck.execute(&format!("CREATE TABLE {target} AS SELECT * FROM {view}"));
    }
    let incoming = columns(duck, view)?;
    match &t.mode {
        Mode::Replace => {
            let same = columns(duck, &target)?
                .into_iter()
                .map(|(n, ty)| (n, base_type(&ty)))
                .eq(incoming.iter().map(|(n, ty)| (n.clone(), base_type(ty))));
            if same {
                duck.execute(&format!("DELETE FROM {target}; INSERT INTO {target} SELECT * FROM {view}"))
            } else {
                duck.execute(&format!("DROP TABLE {target}; CREATE TABLE {target} AS SELECT * FROM {view}"))
            }
        }
        Mode::Append => {
            evolve(duck, t, &target, &incoming)?;
            duck.execute(&format!("INSERT INTO {target} BY NAME SELECT * FROM {view}"))
        }
        Mode::Merge(keys) => {
            evolve(duck, t, &target, &incoming)?;
            for k in keys {
                if !incoming.iter().any(|(n, _)| n == k) {
                    bail!("merge key `{k}` of materialization `{}` is not a column of the node's result", t.section);
                }
            }
            // read twice (the key check, then the merge): copied once into a temporary table
            duck.execute(&format!("CREATE OR REPLACE TEMP TABLE __flowrun_merge AS SELECT * FROM {view}"))?;
            let source = "temp.main.__flowrun_merge";
            let key_list = keys.iter().map(|k| quoted(k, "column")).collect::<Result<Vec<_>>>()?.join(", ");
            let dups: i64 = duck.scalar(&format!(
                "SELECT count(*) FROM (SELECT {key_list} FROM {source} GROUP BY ALL HAVING count(*) > 1)"
            ))?;
            if dups > 0 {
                bail!(
                    "merge key ({key_list}) of materialization `{}` is not unique in the node's result ({dups} duplicated keys)",
                    t.section
                );
            }
            let on = keys
                .iter()
                .map(|k| Ok(format!("t.{q} = s.{q}", q = quoted(k, "column")?)))
                .collect::<Result<Vec<_>>>()?
                .join(" AND ");
            let cols: Vec<String> = incoming.iter().map(|(n, _)| quoted(n, "column")).collect::<Result<_>>()?;
            let set = cols.iter().map(|c| format!("{c} = s.{c}")).collect::<Vec<_>>().join(", ");
            let values = cols.iter().map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", ");
            duck.execute(&format!(
                "MERGE INTO {target} AS t USING {source} AS s ON ({on}) \
                 WHEN MATCHED THEN UPDATE SET {set} \
                 WHEN NOT MATCHED THEN INSERT ({}) VALUES ({values}); DROP TABLE {source}",
                cols.join(", ")
            ))
        }
    }
}

/// `flowrun: flow NAME, run ID`, and for a partial run (`on_item_error = "skip"`) which items are missing.
fn commit_message(flow: &str, report: &RunReport) -> String {
    let left_out = report.left_out_causes();
    if left_out.is_empty() {
        format!("flowrun: flow {flow}, run {}", report.run_id)
    } else {
        format!("flowrun: flow {flow}, run {} (partial, missing {})", report.run_id, left_out.join("; "))
    }
}

/// Appends the run to `flowrun_runs` and its node runs to `flowrun_node_runs`. Which snapshot a row belongs
/// to is DuckLake's own virtual column `snapshot_id` (the snapshot that inserted it): the one that was
/// actually committed, even when a concurrent writer took the id this transaction saw next. Lakes created
/// by earlier versions have a real `snapshot_id` column, which hides the virtual one: it is kept (older
/// flowruns still write into it) and filled with the id this transaction expects, as before.
fn history(duck: &Duck, lake: &str, flow_path: &str, report: &RunReport, node_runs: &str) -> Result<()> {
    let l = quoted(lake, "lake alias")?;
    duck.execute(&format!(
        "CREATE TABLE IF NOT EXISTS {l}.main.flowrun_runs (run_id VARCHAR, flow VARCHAR, flow_path VARCHAR, \
           started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, status VARCHAR, nodes BIGINT, executed BIGINT, \
           reused BIGINT, failed BIGINT, skipped BIGINT, jobs BIGINT);
         CREATE TABLE IF NOT EXISTS {l}.main.flowrun_node_runs (run_id VARCHAR, node VARCHAR, status VARCHAR, \
           cached BOOLEAN, duration_ms DOUBLE, rows BIGINT, cache_key VARCHAR, input_keys VARCHAR, error VARCHAR);"
    ))?;
    // lakes written before this version keep their `snapshot_id` column (older flowruns still write it):
    // it gets the snapshot this transaction expects to commit, as it always did
    let stored = |table: &str| -> Result<bool> {
        Ok(duck.table_columns(lake, "main", table)?.is_some_and(|c| c.iter().any(|c| c == "snapshot_id")))
    };
    let runs_extra = if stored("flowrun_runs")? { format!(", {}", next_snapshot(duck, lake)?) } else { String::new() };
    let nodes_extra =
        if stored("flowrun_node_runs")? { format!(", {}", next_snapshot(duck, lake)?) } else { String::new() };
    let r = run_record(report, flow_path);
    duck.execute(&format!(
        "INSERT INTO {l}.main.flowrun_runs VALUES ({}, {}, {}, to_timestamp({}::BIGINT / 1000.0), \
         to_timestamp({}::BIGINT / 1000.0), {}, {}, {}, {}, {}, {}, {}{runs_extra})",
        literal(&r.run_id),
        literal(&r.flow),
        literal(&r.flow_path),
        r.started_ms,
        r.finished_ms,
        literal(&r.status),
        r.nodes,
        r.executed,
        r.reused,
        r.failed,
        r.skipped,
        r.jobs
    ))?;
    duck.execute(&format!("INSERT INTO {l}.main.flowrun_node_runs SELECT *{nodes_extra} FROM {node_runs}"))
}

/// Whether the lake's ledger (`flowrun_materializations`) shows `identity` already in `destination`
/// (`schema.table`): for `replace` and `merge`, as the last value written there; for `append`, as any value
/// appended there (so appending is idempotent: a rerun after `cache clear`, from another directory or
/// machine, adds nothing twice). A lake without a ledger has seen nothing.
pub fn already_written(duck: &Duck, lake: &str, destination: &str, mode: &Mode, identity: &str) -> Result<bool> {
    let l = quoted(lake, "lake alias")?;
    // the table must still be there (someone may have dropped it outside flowrun)
    let (schema, table) = destination.split_once('.').unwrap_or(("main", destination));
    if !table_exists(duck, lake, "main", "flowrun_materializations")? || !table_exists(duck, lake, schema, table)? {
        return Ok(false);
    }
    let (dest, id) = (literal(destination), literal(identity));
    let sql = match mode {
        Mode::Append => {
            format!(
                "SELECT count(*) FROM {l}.main.flowrun_materializations WHERE destination = {dest} AND identity = {id}"
            )
        }
        // a replaced table must still hold the rows that were written (not emptied or cut by hand)
        Mode::Replace => format!(
            "SELECT count(*) FROM (SELECT identity, rows FROM {l}.main.flowrun_materializations \
             WHERE destination = {dest} ORDER BY snapshot_id DESC LIMIT 1) \
             WHERE identity = {id} AND rows = (SELECT count(*) FROM {l}.{}.{})",
            quoted(schema, "schema")?,
            quoted(table, "table")?
        ),
        Mode::Merge(_) => format!(
            "SELECT count(*) FROM (SELECT identity FROM {l}.main.flowrun_materializations WHERE destination = {dest} \
             ORDER BY snapshot_id DESC LIMIT 1) WHERE identity = {id}"
        ),
    };
    Ok(duck.scalar::<i64>(&sql)? > 0)
}

/// Makes a flowrun commit into a PostgreSQL lake update the one row of `flowrun_commit_turn`, so that two
/// commits that overlap in time conflict in DuckLake (both delete from one table) and the one that loses is
/// planned again on the snapshot that won, where the ledger shows what the other wrote. Without it, two runs
/// appending the same value at the same instant would both land: DuckLake commits concurrent inserts.
/// Commits into a catalog file never overlap (they take turns by its lock), so they skip it (20 ms).
fn take_turn(duck: &Duck, lake: &str) -> Result<()> {
    let turn = format!("{}.main.flowrun_commit_turn", quoted(lake, "lake alias")?);
    duck.execute(&format!(
        "CREATE TABLE IF NOT EXISTS {turn} (commits BIGINT); \
         UPDATE {turn} SET commits = commits + 1; \
         INSERT INTO {turn} SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM {turn})"
    ))
}

/// Records what this transaction writes in the ledger [`already_written`] reads.
fn ledger<'a>(
    duck: &Duck,
    lake: &str,
    targets: impl Iterator<Item = &'a LakeTarget>,
    report: &RunReport,
) -> Result<()> {
    let l = quoted(lake, "lake alias")?;
    duck.execute(&format!(
        "CREATE TABLE IF NOT EXISTS {l}.main.flowrun_materializations (destination VARCHAR, mode VARCHAR, \
           identity VARCHAR, rows BIGINT, run_id VARCHAR)"
    ))?;
    for t in targets {
        let mode = match &t.mode {
            Mode::Replace => "replace",
            Mode::Append => "append",
            Mode::Merge(_) => "merge",
        };
        duck.execute(&format!(
            "INSERT INTO {l}.main.flowrun_materializations (destination, mode, identity, rows, run_id) \
             VALUES ({}, '{mode}', {}, {}, {})",
            literal(&format!("{}.{}", t.schema, t.table)),
            literal(&t.identity),
            t.rows,
            literal(&report.run_id)
        ))?;
    }
    Ok(())
}

/// The run's node records as one Arrow table (DuckDB scans it; not inserted row by row).
fn node_runs(report: &RunReport) -> Result<Table> {
    let nodes = node_records(report);
    use arrow_array::{BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;
    let schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("node", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("cached", DataType::Boolean, false),
        Field::new("duration_ms", DataType::Float64, false),
        Field::new("rows", DataType::Int64, true),
        Field::new("cache_key", DataType::Utf8, true),
        Field::new("input_keys", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(nodes.iter().map(|n| n.run_id.as_str()))),
            Arc::new(StringArray::from_iter_values(nodes.iter().map(|n| n.node.as_str()))),
            Arc::new(StringArray::from_iter_values(nodes.iter().map(|n| n.status.as_str()))),
            Arc::new(BooleanArray::from(nodes.iter().map(|n| n.status == "reused").collect::<Vec<_>>())),
            Arc::new(Float64Array::from_iter_values(nodes.iter().map(|n| n.duration_ms))),
            Arc::new(Int64Array::from(nodes.iter().map(|n| n.rows.map(|r| r as i64)).collect::<Vec<_>>())),
            Arc::new(StringArray::from(nodes.iter().map(|n| n.key.clone()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(nodes.iter().map(|n| n.input_keys.clone()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(nodes.iter().map(|n| n.error.clone()).collect::<Vec<_>>())),
        ],
    )?;
    Ok(Table::from_batch(batch))
}

/// Writes `targets` and the run's records to the lake in one transaction (one snapshot), leaving out the
/// targets the lake's ledger shows already written (checked inside the transaction, so a concurrent run that
/// commits the same value first makes this one conflict, re-plan and leave it out).
///
/// For a catalog file (DuckDB, SQLite) the caller holds the lake's lock ([`LakeConfig::lock`]) from its
/// first look at the lake to the end: commits into a catalog file take turns by it, not by
/// `flowrun_commit_turn`.
pub fn write(
    duck: &Duck,
    lake: &LakeConfig,
    targets: &[LakeTarget],
    source: impl Fn(usize) -> Result<ArrowSource>,
    flow: &str,
    flow_path: &str,
    report: &RunReport,
) -> Result<LakeWrite> {
    let alias = &lake.alias;
    // DuckLake itself retries a commit whose changes do not overlap another writer's; one that does (two
    // runs creating the same table in a new lake) is planned again here, on the snapshot that won
    let (max_replans, wait_ms, backoff) = lake.retries;
    let mut attempt = 0;
    // a SQLite catalog another program writes into (its lock taken after the check before the run): waited
    // for, as a held DuckDB catalog is
    let mut said = false;
    let mut wait_for_sqlite = |e: &anyhow::Error| -> Result<bool> {
        if !(lake.wait && format!("{e:#}").contains("database is locked")) {
            return Ok(false);
        }
        let _ = duck.execute("ROLLBACK");
        if !std::mem::replace(&mut said, true) {
            eprintln!("waiting for another program to release the lake catalog {}", lake.describe());
        }
        lake.stop_if_interrupted()?;
        std::thread::sleep(std::time::Duration::from_millis(200));
        Ok(true)
    };
    loop {
        // views made afresh for each attempt (a view is read once); the run's node records last
        let mut sources = (0..targets.len()).map(&source).collect::<Result<Vec<_>>>()?;
        sources.push(ArrowSource::from(node_runs(report).context("the run's node records")?));
        let done = duck.with_views(sources, |views| {
            let tried = transaction(duck, lake, targets, views, flow, flow_path, report).and_then(|w| {
                lake.stop_if_interrupted()?;
                Ok(w)
            });
            match tried {
                Ok(None) => {
                    duck.execute("ROLLBACK")?;
                    Ok(Some(LakeWrite { snapshot: None, written: vec![false; targets.len()], replans: attempt }))
                }
                Ok(Some((written, next))) => match duck.execute("COMMIT") {
                    Ok(()) => {
                        // else the snapshot this connection committed (a concurrent writer may have taken the
                        // next id), from DuckLake's bookkeeping (which reloads a catalog whose tables changed)
                        let snapshot = match next {
                            Some(id) => id,
                            None => duck
                                .scalar(&format!(
                                    "SELECT id FROM {}.last_committed_snapshot()",
                                    quoted(alias, "lake alias")?
                                ))
                                .context("reading back the committed snapshot")?,
                        };
                        Ok(Some(LakeWrite { snapshot: Some(snapshot), written, replans: attempt }))
                    }
                    Err(e) if attempt < max_replans && format!("{e:#}").contains("Transaction conflict") => {
                        let _ = duck.execute("ROLLBACK");
                        attempt += 1;
                        let wait = f64::from(wait_ms) * backoff.max(1.0).powi(attempt as i32 - 1);
                        std::thread::sleep(std::time::Duration::from_millis(wait as u64));
                        Ok(None)
                    }
                    Err(e) if wait_for_sqlite(&e)? => Ok(None),
                    Err(e) => bail!("the lake transaction could not commit (nothing was written): {e:#}"),
                },
                Err(e) if wait_for_sqlite(&e)? => Ok(None),
                Err(e) => {
                    let _ = duck.execute("ROLLBACK");
                    Err(e.context(format!(
                        "nothing was written to the lake {}; it stays at its previous snapshot",
                        lake.describe()
                    )))
                }
            }
        })?;
        if let Some(done) = done {
            return Ok(done);
        }
    }
}

/// The snapshot after the open transaction's: the one it commits unless another writer commits first.
fn next_snapshot(duck: &Duck, lake: &str) -> Result<i64> {
    Ok(duck.scalar::<i64>(&format!("SELECT id FROM {}.current_snapshot()", quoted(lake, "lake alias")?))? + 1)
}

/// The snapshot the open transaction will commit, when no other process can commit before it: a DuckDB
/// catalog file is this process's alone while it is open. `None` for other catalogs.
fn committed_next(duck: &Duck, lake: &LakeConfig) -> Result<Option<i64>> {
    match lake.catalog {
        crate::config::Catalog::DuckDb(_) => next_snapshot(duck, &lake.alias).map(Some),
        _ => Ok(None),
    }
}

/// Whether the lake has `t`'s table, and for `replace` with `t`'s number of rows (what an older flowrun's
/// record says the lake holds).
fn holds(duck: &Duck, alias: &str, t: &LakeTarget) -> Result<bool> {
    if !table_exists(duck, alias, &t.schema, &t.table)? {
        return Ok(false);
    }
    if t.mode != Mode::Replace {
        return Ok(true);
    }
    let rows: i64 = duck.scalar(&format!(
        "SELECT count(*) FROM {}.{}.{}",
        quoted(alias, "lake alias")?,
        quoted(&t.schema, "schema")?,
        quoted(&t.table, "table")?
    ))?;
    Ok(rows as usize == t.rows)
}

/// Deletes (or with `dry_run` lists) the data files in the lake's data path that no snapshot references
/// and that were last modified at least `older_than` ago: the Parquet files of commits that were killed.
/// DuckLake's `ducklake_delete_orphaned_files` decides; the lake's lock is held meanwhile. The data path
/// must be this lake's alone (another lake's files there would count as orphans).
pub fn delete_orphaned_files(lake: &LakeConfig, older_than: std::time::Duration, dry_run: bool) -> Result<Vec<String>> {
    let turn = lake.lock()?;
    // a catalog without a lock file (PostgreSQL) may be in another machine's commit right now: its newest
    // data files are not orphans yet
    if turn.is_none() && older_than < std::time::Duration::from_secs(3600) {
        bail!(
            "the lake {} has no lock a commit takes: give --older-than-hours 1 or more, so that a commit in \
             progress elsewhere keeps its files",
            lake.describe()
        );
    }
    let duck = Duck::in_memory()?;
    lake.attach(&duck, false)?;
    let files = duck.query(&format!(
        "CALL ducklake_delete_orphaned_files({}, dry_run => {dry_run}, older_than => now() - to_seconds({}))",
        literal(&lake.alias),
        older_than.as_secs()
    ))?;
    let mut out = Vec::new();
    for batch in files.batches() {
        let paths = batch.column(0).as_any().downcast_ref::<arrow_array::StringArray>();
        out.extend(paths.into_iter().flat_map(|a| a.iter().flatten().map(str::to_string)));
    }
    Ok(out)
}

/// For tests of concurrent commits: `FLOWRUN_TEST_HOLD_COMMIT_MS` keeps the transaction open that long
/// before its COMMIT, so that the commits of processes started together overlap for certain.
fn hold_commit() {
    if let Some(ms) = std::env::var("FLOWRUN_TEST_HOLD_COMMIT_MS").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Opens the transaction and writes into it (`views`: one per target, then the run's node records) (not committed) every target whose value the ledger, read at
/// this transaction's snapshot, does not show in the lake yet, and the run's records. Says which it wrote,
/// and the snapshot the commit will be if it is known ([`committed_next`]), or `None` when the ledger
/// already shows every target (nothing to commit).
fn transaction(
    duck: &Duck,
    lake: &LakeConfig,
    targets: &[LakeTarget],
    views: &[String],
    flow: &str,
    flow_path: &str,
    report: &RunReport,
) -> Result<Option<(Vec<bool>, Option<i64>)>> {
    let alias = lake.alias.as_str();
    duck.execute("BEGIN TRANSACTION")?;
    // commits into a catalog file take turns by its lock already
    if !lake.has_lock() {
        take_turn(duck, alias).context("taking the lake's commit turn (flowrun_commit_turn)")?;
    }
    let (mut written, mut recorded) = (Vec::new(), Vec::new());
    for (i, t) in targets.iter().enumerate() {
        let destination = format!("{}.{}", t.schema, t.table);
        let fresh = (t.catalog_as_left && t.mode != Mode::Append)
            || !already_written(duck, alias, &destination, &t.mode, &t.identity)?;
        let write = fresh && !(t.adopt && holds(duck, alias, t)?);
        if write {
            write_target(duck, alias, t, &views[i])
                .with_context(|| format!("materialization `{}` (lake table {destination})", t.section))?;
        }
        recorded.push(fresh);
        written.push(write);
    }
    if !recorded.contains(&true) {
        return Ok(None);
    }
    history(duck, alias, flow_path, report, &views[targets.len()]).context("recording the run in flowrun_runs")?;
    let fresh = targets.iter().zip(&recorded).filter(|(_, r)| **r).map(|(t, _)| t);
    ledger(duck, alias, fresh, report).context("recording the run in flowrun_materializations")?;
    duck.execute(&format!(
        "CALL {}.set_commit_message('flowrun', {})",
        quoted(alias, "lake alias")?,
        literal(&commit_message(flow, report))
    ))?;
    hold_commit();
    Ok(Some((written, committed_next(duck, lake)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `write` did, for a one-row `point_table` committed into a DuckDB-file lake as `t`.
    fn commit(lake: &LakeConfig, mode: Mode, identity: &str, catalog_as_left: bool) -> LakeWrite {
        let _turn = lake.lock().unwrap();
        let duck = Duck::in_memory().unwrap();
        lake.attach(&duck, false).unwrap();
        let target = LakeTarget {
            section: "t".into(),
            schema: "main".into(),
            table: "t".into(),
            mode,
            identity: identity.into(),
            rows: 1,
            adopt: false,
            catalog_as_left,
        };
        let report = RunReport::empty("f");
        let source = |_| Ok(ArrowSource::from(crate::duck::tests::point_table()));
        write(&duck, lake, &[target], source, "f", "f.toml", &report).unwrap()
    }

    #[test]
    fn the_ledger_is_not_read_for_a_replaced_table_of_a_catalog_as_left_but_is_for_an_append() {
        let dir = tempfile::tempdir().unwrap();
        let lake = LakeConfig::local(dir.path().join("lake.ducklake"), dir.path().join("data"));
        let first = commit(&lake, Mode::Replace, "a", false);
        assert_eq!(first.written, [true]);
        assert_eq!(commit(&lake, Mode::Replace, "a", false).snapshot, None, "the ledger shows it: nothing to commit");
        // told the catalog is as this cache left it (after another value): the ledger is not asked
        let again = commit(&lake, Mode::Replace, "a", true);
        assert_eq!(again.written, [true]);
        // an append asks it all the same
        assert_eq!(commit(&lake, Mode::Append, "b", false).written, [true]);
        let appended = commit(&lake, Mode::Append, "b", true);
        assert_eq!((appended.written, appended.snapshot), (vec![false], None));
        // the snapshots said are the ones committed (for a DuckDB file: the transaction's next)
        let duck = Duck::in_memory().unwrap();
        lake.attach(&duck, true).unwrap();
        let last: i64 = duck.scalar("SELECT max(snapshot_id) FROM lake.snapshots()").unwrap();
        assert_eq!((first.snapshot, again.snapshot), (Some(last - 2), Some(last - 1)));
    }

    #[test]
    fn widening_rules() {
        assert_eq!(widening("INTEGER", "BIGINT"), Some(true));
        assert_eq!(widening("BIGINT", "INTEGER"), Some(false));
        assert_eq!(widening("FLOAT", "DOUBLE"), Some(true));
        assert_eq!(widening("INTEGER", "VARCHAR"), None);
        assert_eq!(base_type("GEOMETRY('OGC:CRS84')"), "GEOMETRY");
        assert_eq!(base_type("decimal(10,2)"), "DECIMAL(10,2)");
    }
}
