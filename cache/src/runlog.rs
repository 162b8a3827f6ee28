//! The run log: what each run did, node by node.
//!
//! Written in the same transaction as the cache index at the end of a run, so a run's record and the cache
//! entries it made appear together or not at all. (When a flow materializes into a DuckLake, the same
//! records are also appended to the lake's `flowrun_runs` / `flowrun_node_runs` tables.)

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::Store;

/// One run of one flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Unique id (time-ordered).
    pub run_id: String,
    /// The flow's name.
    pub flow: String,
    /// Path of the flow file.
    pub flow_path: String,
    /// Start, milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// End, milliseconds since the Unix epoch.
    pub finished_ms: i64,
    /// `ok`, `failed` or `interrupted`.
    pub status: String,
    /// Node runs in the plan (fan-out items count once per item).
    pub nodes: u64,
    /// Node runs that executed.
    pub executed: u64,
    /// Node runs served from the cache.
    pub reused: u64,
    /// Node runs that failed.
    pub failed: u64,
    /// Node runs skipped because something upstream failed.
    pub skipped: u64,
    /// Worker threads.
    pub jobs: u64,
}

/// One node run within a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRunRecord {
    /// The run.
    pub run_id: String,
    /// Node name; fan-out items are named `node[label]`.
    pub node: String,
    /// `executed`, `reused`, `failed` or `skipped`.
    pub status: String,
    /// Wall time spent on the node (loading it from the cache, for `reused`).
    pub duration_ms: f64,
    /// Row count when the value is a table.
    pub rows: Option<u64>,
    /// Cache key (hex).
    pub key: Option<String>,
    /// Parameter name -> identity of the value it got (JSON object).
    pub input_keys: Option<String>,
    /// The error chain, for `failed`.
    pub error: Option<String>,
}

impl Store {
    /// Buffers a run's records; they are written by the next [`Store::commit`].
    pub fn record_run(&self, run: RunRecord, nodes: Vec<NodeRunRecord>) {
        self.buffer_run(run, nodes);
    }

    /// The latest `limit` runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(
                "SELECT run_id, flow, flow_path, started_ms, finished_ms, status, nodes, executed, reused, failed,
                        skipped, jobs
                 FROM runs ORDER BY started_ms DESC, run_id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| {
                Ok(RunRecord {
                    run_id: r.get(0)?,
                    flow: r.get(1)?,
                    flow_path: r.get(2)?,
                    started_ms: r.get(3)?,
                    finished_ms: r.get(4)?,
                    status: r.get(5)?,
                    nodes: r.get::<_, i64>(6)? as u64,
                    executed: r.get::<_, i64>(7)? as u64,
                    reused: r.get::<_, i64>(8)? as u64,
                    failed: r.get::<_, i64>(9)? as u64,
                    skipped: r.get::<_, i64>(10)? as u64,
                    jobs: r.get::<_, i64>(11)? as u64,
                })
            })?;
            rows.collect()
        })
    }

    /// The node records of one run, in the order they finished.
    pub fn node_runs(&self, run_id: &str) -> Result<Vec<NodeRunRecord>> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(
                "SELECT run_id, node, status, duration_ms, rows, key, input_keys, error
                 FROM node_runs WHERE run_id = ?1 ORDER BY rowid",
            )?;
            let rows = stmt.query_map([run_id], |r| {
                Ok(NodeRunRecord {
                    run_id: r.get(0)?,
                    node: r.get(1)?,
                    status: r.get(2)?,
                    duration_ms: r.get(3)?,
                    rows: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                    key: r.get(5)?,
                    input_keys: r.get(6)?,
                    error: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }
}

pub(crate) fn write_runs(
    tx: &rusqlite::Transaction<'_>,
    runs: &[RunRecord],
    nodes: &[NodeRunRecord],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO runs(run_id, flow, flow_path, started_ms, finished_ms, status, nodes, executed,
                                     reused, failed, skipped, jobs)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for r in runs {
        stmt.execute(rusqlite::params![
            r.run_id,
            r.flow,
            r.flow_path,
            r.started_ms,
            r.finished_ms,
            r.status,
            r.nodes as i64,
            r.executed as i64,
            r.reused as i64,
            r.failed as i64,
            r.skipped as i64,
            r.jobs as i64
        ])?;
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO node_runs(run_id, node, status, duration_ms, rows, key, input_keys, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for n in nodes {
        stmt.execute(rusqlite::params![
            n.run_id,
            n.node,
            n.status,
            n.duration_ms,
            n.rows.map(|v| v as i64),
            n.key,
            n.input_keys,
            n.error
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (i, status) in ["ok", "failed"].iter().enumerate() {
            let run = RunRecord {
                run_id: format!("r{i}"),
                flow: "f".into(),
                flow_path: "flows/f.toml".into(),
                started_ms: 1000 + i as i64,
                finished_ms: 2000 + i as i64,
                status: status.to_string(),
                nodes: 2,
                executed: 1,
                reused: 1,
                failed: 0,
                skipped: 0,
                jobs: 1,
            };
            let node = NodeRunRecord {
                run_id: format!("r{i}"),
                node: "a".into(),
                status: "executed".into(),
                duration_ms: 1.5,
                rows: Some(3),
                key: Some("ab".into()),
                input_keys: Some("{}".into()),
                error: None,
            };
            store.record_run(run, vec![node]);
        }
        store.commit().unwrap();
        let runs = store.runs(10).unwrap();
        assert_eq!(runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["r1", "r0"]);
        assert_eq!(runs[0].status, "failed");
        let nodes = store.node_runs("r0").unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].rows, Some(3));
    }
}
