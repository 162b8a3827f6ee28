//! Running a [`Flow`]: sequentially on the calling thread or in parallel on a rayon pool, with the same
//! results either way (a node's result depends only on its inputs; fan-in gathers in item order).
//!
//! - [`plan`]: which nodes a run needs and how they wait for each other;
//! - [`exec`]: where a node is scheduled and run (gather, key, cache, call, notify);
//! - [`lazy`]: results that stay in the cache until something needs them.
//!
//! [`run`] returns a [`RunReport`] with one [`NodeReport`] per node run and the results of the flow's
//! targets. It also writes the run record and commits the cache index in one transaction.

mod exec;
mod lazy;
mod plan;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowrun_cache::{NodeRunRecord, RunRecord, Store};
use serde::Serialize;

pub use lazy::{Lazy, LoadError};

use crate::events::{Event, NoObserver, NodeReport, Observer, Status};
use crate::flow::{Flow, NodeId};
use crate::sql::SqlEngine;

/// How to run.
pub struct RunOptions {
    /// Worker threads; 1 runs everything on the calling thread.
    pub jobs: usize,
    /// Stop starting nodes after the first failure (default: independent branches still finish).
    pub fail_fast: bool,
    /// Decide what would run, run nothing (`flowrun explain`).
    pub dry_run: bool,
    /// The result cache; `None` runs every node and stores nothing.
    pub store: Option<Arc<Store>>,
    /// Receives events (progress bar, JSON lines).
    pub observer: Arc<dyn Observer>,
    /// Runs SQL nodes.
    pub sql: Option<Arc<dyn SqlEngine>>,
    /// Nodes to run even when cached (`--recompute`).
    pub recompute: Vec<String>,
    /// Run only shard `k` of `n` (`--shard k/n`): every `n`-th item of the outermost fan-outs from `k` on;
    /// fan-ins and what depends on them are [`Status::Deferred`] to a run without a shard.
    pub shard: Option<(usize, usize)>,
    /// Build only these nodes (and what they need) instead of the flow's targets.
    pub targets: Option<Vec<NodeId>>,
    /// Path of the flow file, for the run record.
    pub flow_path: String,
    /// Set from outside (a first Ctrl-C): no node starts after it; the running ones finish and are stored.
    pub interrupt: Option<&'static AtomicBool>,
    /// The run's id when the caller made it already (to name the run before it starts); else a new one.
    pub run_id: Option<String>,
}

impl RunOptions {
    /// Whether the run was asked to stop ([`RunOptions::interrupt`]).
    pub fn interrupted(&self) -> bool {
        self.interrupt.is_some_and(|i| i.load(Ordering::Relaxed))
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: 1,
            fail_fast: false,
            dry_run: false,
            store: None,
            observer: Arc::new(NoObserver),
            sql: None,
            recompute: Vec::new(),
            shard: None,
            targets: None,
            flow_path: String::new(),
            interrupt: None,
            run_id: None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every node ran or was reused.
    Ok,
    /// Some fan-out items failed, and every failure was left out by a collecting node with
    /// `on_item_error = "skip"`: the results are there, without those items (see
    /// [`RunReport::left_out`]).
    Partial,
    /// At least one node failed (or was skipped because of a failure) and nothing took its place.
    Failed,
}

/// The result of one target node (one per item for targets inside a fan-out).
#[derive(Clone)]
pub struct OutputItem {
    /// The node.
    pub node: Arc<str>,
    /// Item label inside a fan-out.
    pub item: Option<String>,
    /// The value (`None` only in a dry run when it would be computed). With a cache, a pointer into it
    /// (loaded on [`Lazy::get`] or [`Lazy::load`], so the run need not hold every target's result in
    /// memory): valid while the cache holds the blob; without one, the value itself.
    pub value: Option<Lazy>,
    /// Its identity (content hash when cached).
    pub identity: Option<blake3::Hash>,
}

/// Everything a run did.
pub struct RunReport {
    /// Time-ordered unique id.
    pub run_id: String,
    /// Flow name.
    pub flow: String,
    /// How it ended.
    pub status: RunStatus,
    /// One per node run, in the order they finished.
    pub nodes: Vec<NodeReport>,
    /// Results of the targets, in target order then item order.
    pub outputs: Vec<OutputItem>,
    /// Start time (ms since the epoch).
    pub started_ms: i64,
    /// End time (ms since the epoch).
    pub finished_ms: i64,
    /// Worker threads.
    pub jobs: usize,
    /// Warnings about the run itself (e.g. a corrupt cache entry that made it start again).
    pub warnings: Vec<String>,
}

impl RunReport {
    /// A run of `flow` on one thread that ran no node and ended now, with a new id: for records written
    /// by hand (a benchmark's or a test's lake commits).
    pub fn empty(flow: &str) -> RunReport {
        let now = now_ms();
        RunReport {
            run_id: new_run_id(),
            flow: flow.to_string(),
            status: RunStatus::Ok,
            nodes: Vec::new(),
            outputs: Vec::new(),
            started_ms: now,
            finished_ms: now,
            jobs: 1,
            warnings: Vec::new(),
        }
    }

    /// How many node runs ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.nodes.iter().filter(|n| n.status == status).count()
    }

    /// Display names of the node runs that ended with `status`, sorted.
    pub fn names(&self, status: Status) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.iter().filter(|n| n.status == status).map(|n| n.name.to_string()).collect();
        v.sort();
        v
    }

    /// The items collecting nodes left out (`on_item_error = "skip"`), by display name, sorted.
    pub fn left_out(&self) -> Vec<String> {
        self.nodes.iter().flat_map(|n| &n.left_out).collect::<BTreeSet<_>>().into_iter().cloned().collect()
    }

    /// Why each left-out item is missing: `<item>: <node>[<item>] failed: <its error>` (or was cancelled), one
    /// per item, for reports and the lake's commit message.
    pub fn left_out_causes(&self) -> Vec<String> {
        self.left_out()
            .iter()
            .filter_map(|d| item_label(d))
            .map(|item| {
                let failed = self.nodes.iter().find(|n| {
                    n.item.as_deref() == Some(item) && matches!(n.status, Status::Failed | Status::Cancelled)
                });
                match failed {
                    Some(n) => format!("{item}: {} {}: {}", n.name, n.status.as_str(), n.error.join(": ")),
                    None => format!("{item}: an upstream node failed"),
                }
            })
            .collect()
    }

    /// The results of target `node`.
    pub fn output(&self, node: &str) -> Vec<&OutputItem> {
        self.outputs.iter().filter(|o| *o.node == *node).collect()
    }
}

/// Runs `flow`. Returns `Err` only when the cache itself fails; node failures are in the report.
pub fn run(flow: &Flow, opts: &RunOptions) -> Result<RunReport, flowrun_cache::CacheError> {
    let started_ms = now_ms();
    let run_id = opts.run_id.clone().unwrap_or_else(new_run_id);
    let targets = opts.targets.clone().unwrap_or_else(|| flow.targets.clone());
    let plan = plan::Plan::new(flow, &targets, &opts.recompute);
    let jobs = opts.jobs.max(1);
    let mut warnings = Vec::new();
    let mut warn = |message: String| {
        opts.observer.event(&Event::Warning { node: None, message: &message });
        warnings.push(message);
    };
    let mut attempt = 0;
    let exec = loop {
        attempt += 1;
        opts.observer.event(&Event::RunStarted { flow: &flow.name, tasks: plan.root_tasks(), jobs });
        let exec = exec::Exec::new(&plan, opts);
        let initial = exec.start();
        // in a pool of `jobs` threads, so the nodes' own parallel loops (rayon) run on it too: `--jobs`
        // bounds every rayon thread a run uses. A machine that cannot start them runs on this thread.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(jobs).thread_name(|i| format!("flowrun-worker-{i}"));
        // one job: the calling thread is the pool's one thread (no thread to start, nothing moves over)
        let pool = if jobs == 1 { pool.use_current_thread() } else { pool };
        match pool.build() {
            Ok(pool) if jobs > 1 => pool.scope(|s| initial.into_iter().for_each(|task| spawn(s, &exec, task))),
            Ok(pool) => pool.install(|| drive_sequential(&exec, initial)),
            Err(_) => drive_sequential(&exec, initial),
        }
        let restart = exec.restart.lock().unwrap().take();
        // a restart that evicted what failed makes progress (the cache holds finitely many entries); one that
        // did not is tried at most 4 times
        let progressed = exec.progressed.load(Ordering::Relaxed);
        match restart {
            Some(why) if (attempt < 4 || (progressed && attempt < 1000)) && !opts.interrupted() => {
                warn(format!("{why} (attempt {attempt})"))
            }
            _ => break exec,
        }
    };
    let nodes = exec.reports.into_inner().unwrap();
    let status = run_status(&nodes, exec.failed.load(Ordering::Relaxed));
    opts.store.iter().flat_map(|s| s.take_remote_warnings()).for_each(warn);
    let mut outputs = exec.outputs.into_inner().unwrap();
    // outputs in the order the targets were asked for, items in item order
    let mut rank = vec![usize::MAX; flow.nodes.len()];
    for (i, &t) in targets.iter().enumerate().rev() {
        rank[t] = i;
    }
    outputs.sort_by(|a, b| (rank[a.0], &a.1).cmp(&(rank[b.0], &b.1)));
    let report = RunReport {
        run_id,
        flow: flow.name.clone(),
        status,
        nodes,
        outputs: outputs.into_iter().map(|(_, _, o)| o).collect(),
        started_ms,
        finished_ms: now_ms(),
        jobs,
        warnings,
    };
    if let (Some(store), false) = (&opts.store, opts.dry_run) {
        store.record_run(run_record(&report, &opts.flow_path), node_records(&report));
        store.commit()?;
    }
    Ok(report)
}

/// Ok when nothing failed; Partial when every failed or skipped node run belongs to a fan-out item that a
/// collector left out (`on_item_error = "skip"`); else Failed.
fn run_status(reports: &[NodeReport], any_failed: bool) -> RunStatus {
    let bad = |r: &&NodeReport| matches!(r.status, Status::Failed | Status::Cancelled | Status::Skipped);
    if !any_failed && !reports.iter().any(|r| bad(&r)) {
        return RunStatus::Ok;
    }
    let left_out: Vec<&str> = reports.iter().flat_map(|r| &r.left_out).filter_map(|d| item_label(d)).collect();
    let tolerated = |r: &NodeReport| {
        r.status != Status::Cancelled
            && r.item.as_deref().is_some_and(|item| {
                left_out.iter().any(|l| item == *l || item.strip_prefix(*l).is_some_and(|rest| rest.starts_with('/')))
            })
    };
    if !left_out.is_empty() && reports.iter().filter(bad).all(tolerated) {
        RunStatus::Partial
    } else {
        RunStatus::Failed
    }
}

/// The item's label in a display name: `measured[a/b]` -> `a/b`.
fn item_label(display: &str) -> Option<&str> {
    display.split_once('[').and_then(|(_, rest)| rest.strip_suffix(']'))
}

fn drive_sequential(exec: &exec::Exec<'_, '_>, initial: Vec<exec::Task>) {
    let mut stack = initial;
    while let Some(task) = stack.pop() {
        // the first task made ready runs next
        let start = stack.len();
        exec.run_task(task, &mut stack);
        stack[start..].reverse();
    }
}

fn spawn<'s>(s: &rayon::Scope<'s>, exec: &'s exec::Exec<'_, '_>, task: exec::Task) {
    s.spawn(move |s| {
        let mut ready = Vec::new();
        exec.run_task(task, &mut ready);
        // keep one ready task on this thread (a chain never pays for a spawn), hand out the rest
        while let Some(next) = ready.pop() {
            ready.drain(..).for_each(|other| spawn(s, exec, other));
            exec.run_task(next, &mut ready);
        }
    });
}

/// The run record of a report.
pub fn run_record(report: &RunReport, flow_path: &str) -> RunRecord {
    RunRecord {
        run_id: report.run_id.clone(),
        flow: report.flow.clone(),
        flow_path: flow_path.to_string(),
        started_ms: report.started_ms,
        finished_ms: report.finished_ms,
        // "ok", "partial", "failed"
        status: format!("{:?}", report.status).to_lowercase(),
        nodes: report.nodes.len() as u64,
        executed: report.count(Status::Executed) as u64,
        reused: report.count(Status::Reused) as u64,
        failed: report.count(Status::Failed) as u64,
        skipped: (report.count(Status::Skipped) + report.count(Status::Cancelled)) as u64,
        jobs: report.jobs as u64,
    }
}

/// The node records of a report.
pub fn node_records(report: &RunReport) -> Vec<NodeRunRecord> {
    report
        .nodes
        .iter()
        .map(|n| NodeRunRecord {
            run_id: report.run_id.clone(),
            node: n.name.to_string(),
            status: n.status.as_str().to_string(),
            duration_ms: n.duration.as_secs_f64() * 1000.0,
            rows: n.rows,
            key: n.key.map(|k| k.to_hex().to_string()),
            input_keys: (!n.inputs.is_empty()).then(|| {
                let map: serde_json::Map<_, _> =
                    n.inputs.iter().map(|(k, v)| (k.to_string(), v.to_hex().as_str().into())).collect();
                serde_json::Value::Object(map).to_string()
            }),
            error: (!n.error.is_empty()).then(|| n.error.join(": ")),
        })
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `20261122T181530Z-3fa9c1`: UTC time, then 6 hex digits of randomness (time-ordered, unique enough).
pub fn new_run_id() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let salt = blake3::hash(format!("{:?}{}{:?}", now, std::process::id(), Instant::now()).as_bytes());
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z-{}", rem / 3600, rem % 3600 / 60, rem % 60, &salt.to_hex()[..6])
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A node that ran at least this long is followed by [`return_free_memory`]: such a node allocates and frees
/// in bulk. The call runs on the node's thread before the tasks it made ready are handed out; its own cost
/// (a walk over the heap's free blocks) is not measured apart from the run's.
const LONG_NODE: Duration = Duration::from_millis(500);

/// Hands the free memory of the process's heap back to the system (glibc's `malloc_trim`; elsewhere
/// nothing). glibc keeps freed blocks for reuse when they are smaller than its (dynamic) mmap threshold, and
/// a node that works batch by batch or decodes row by row frees gigabytes of them: kept, they count in the
/// process's memory through every later node. The run calls it after each long node, and the lake before
/// it loads the run's tables again.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_779), (2026, 11, 22));
        let id = super::new_run_id();
        assert_eq!(id.len(), 23, "{id}");
    }
}
