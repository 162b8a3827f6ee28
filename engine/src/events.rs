//! Run events: what the scheduler reports as it goes. The progress bar, the run records, `--json` output
//! and the tests all read the same events, so what a test asserts is what a user sees.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::flow::CacheMode;

/// What happened to one node run (one per fan-out item for nodes inside a fan-out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The node ran.
    Executed,
    /// Its result came from the cache.
    Reused,
    /// It ran and failed (or its checks failed).
    Failed,
    /// Not run: something upstream failed.
    #[default]
    Skipped,
    /// Not run: `--fail-fast` stopped the run.
    Cancelled,
    /// Not run here: a sharded run (`--shard`) leaves fan-ins, and what depends on them, to the final run.
    Deferred,
    /// Dry run: it would run.
    WouldRun,
    /// Dry run: its result would come from the cache.
    WouldReuse,
}

impl Status {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Executed => "executed",
            Status::Reused => "reused",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::Cancelled => "cancelled",
            Status::Deferred => "deferred",
            Status::WouldRun => "would_run",
            Status::WouldReuse => "would_reuse",
        }
    }
}

/// Why a node ran (or would run) instead of coming from the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum Reason {
    /// Never run before under this flow and node name.
    NotCached,
    /// Same key as last time, but the stored result is gone (`cache gc`/`clear`, or it was corrupt).
    ResultMissing,
    /// The node's code changed: see [`CodeChange`].
    CodeChanged(CodeChange),
    /// A literal parameter changed.
    ParamChanged(String),
    /// A config value it reads changed.
    ConfigChanged(String),
    /// An external input changed.
    InputChanged(String),
    /// The result of an upstream node changed.
    UpstreamChanged(String),
    /// A file the node read last time has changed.
    FileChanged(String),
    /// `cache = "recompute"`, `cache = "disable"` or `--recompute`.
    Forced(CacheMode),
    /// Dry run: an upstream node will run, so this node's inputs are not known yet.
    UpstreamWillRun(String),
}

/// Which part of a node's code version changed (see `#[node]`: the function's own tokens, then `+` and
/// the digest of the code it can call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeChange {
    /// The function's own body or signature, or its `#[node(version = N)]`.
    Function,
    /// Code the function can call: its crate's sources, a workspace crate it depends on, or the version of
    /// a dependency in `Cargo.lock`.
    Calls,
    /// The node now uses another function, or its output type changed.
    Replaced,
}

impl CodeChange {
    /// What differs between an earlier code version and this one (both as `#[node]` makes them).
    pub fn between(before: &str, now: &str) -> CodeChange {
        let own = |v: &str| v.split('+').next().unwrap_or_default().to_string();
        if own(before) != own(now) { CodeChange::Function } else { CodeChange::Calls }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotCached => f.write_str("not cached (first run)"),
            Reason::ResultMissing => f.write_str("result no longer in the cache"),
            Reason::CodeChanged(CodeChange::Function) => f.write_str("code changed (the function)"),
            Reason::CodeChanged(CodeChange::Calls) => {
                f.write_str("code changed (code the function can call: its crate, or a dependency)")
            }
            Reason::CodeChanged(CodeChange::Replaced) => f.write_str("code changed (another function or output type)"),
            Reason::ParamChanged(p) => write!(f, "param `{p}` changed"),
            Reason::ConfigChanged(c) => write!(f, "config `{c}` changed"),
            Reason::InputChanged(i) => write!(f, "input `{i}` changed"),
            Reason::UpstreamChanged(n) => write!(f, "input changed (upstream `{n}`)"),
            Reason::FileChanged(p) => write!(f, "file changed: {p}"),
            Reason::Forced(CacheMode::Disable) => f.write_str("forced (cache = \"disable\")"),
            Reason::Forced(_) => f.write_str("forced (recompute)"),
            Reason::UpstreamWillRun(n) => write!(f, "upstream `{n}` will run"),
        }
    }
}

/// The outcome of one node run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeReport {
    /// Display name: `node`, or `node[item]` inside a fan-out.
    #[serde(serialize_with = "ser_str")]
    pub name: Arc<str>,
    /// The flow node's name.
    #[serde(serialize_with = "ser_str")]
    pub node: Arc<str>,
    /// Item label inside a fan-out (`outer/inner` when nested).
    #[serde(serialize_with = "ser_opt_str")]
    pub item: Option<Arc<str>>,
    /// What happened.
    pub status: Status,
    /// Why it ran (empty when reused).
    pub reasons: Vec<Reason>,
    /// Wall time of the node run (gathering its inputs, the cache lookup, the call, storing the result).
    #[serde(serialize_with = "ser_ms")]
    pub duration: Duration,
    /// Row count, for tables.
    pub rows: Option<u64>,
    /// Cache key (serialized as hex).
    #[serde(serialize_with = "ser_hex")]
    pub key: Option<blake3::Hash>,
    /// Parameter -> identity of its value (serialized as hex).
    #[serde(serialize_with = "ser_inputs")]
    pub inputs: Vec<(Arc<str>, blake3::Hash)>,
    /// Error chain, outermost first.
    pub error: Vec<String>,
    /// Warnings (failed `warn` checks, node warnings). A reused result brings back the warnings of the run
    /// that made it.
    pub warnings: Vec<String>,
    /// The fan-out items a collecting node with `on_item_error = "skip"` left out, by the display name of
    /// the item result it did not get (`measured[usa_uspvdb]`).
    pub left_out: Vec<String>,
    /// What the node said about its result ([`crate::ctx::note`]: the CRS it used, rows kept and dropped);
    /// brought back with a reused result, like its warnings.
    pub notes: Vec<String>,
}

impl NodeReport {
    /// A report of node `node` run as `name`, with nothing more to say yet.
    pub fn new(name: Arc<str>, node: Arc<str>, item: Option<Arc<str>>, status: Status) -> NodeReport {
        NodeReport { name, node, item, status, ..NodeReport::default() }
    }
}

fn ser_str<S: serde::Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

fn ser_opt_str<S: serde::Serializer>(s: &Option<Arc<str>>, ser: S) -> Result<S::Ok, S::Error> {
    s.as_deref().serialize(ser)
}

fn ser_hex<S: serde::Serializer>(h: &Option<blake3::Hash>, s: S) -> Result<S::Ok, S::Error> {
    h.map(|h| h.to_hex()).as_deref().serialize(s)
}

fn ser_inputs<S: serde::Serializer>(inputs: &[(Arc<str>, blake3::Hash)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(inputs.iter().map(|(param, id)| (&**param, id.to_hex().to_string())))
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Something the scheduler reports.
#[derive(Debug)]
pub enum Event<'a> {
    /// A run (or dry run) starts with this many node runs known (fan-outs add more later).
    RunStarted {
        /// Flow name.
        flow: &'a str,
        /// Node runs known now.
        tasks: usize,
        /// Worker threads.
        jobs: usize,
    },
    /// A fan-out added node runs.
    TasksAdded(usize),
    /// A node starts executing (not sent for cache hits).
    NodeStarted(&'a str),
    /// A node run is over.
    NodeFinished(&'a NodeReport),
    /// A node reports progress (bytes downloaded, rows read).
    Progress {
        /// Display name.
        node: &'a str,
        /// Done so far.
        done: u64,
        /// Total, if known.
        total: Option<u64>,
    },
    /// A warning.
    Warning {
        /// Display name of the node, if any.
        node: Option<&'a str>,
        /// Text.
        message: &'a str,
    },
}

/// Receives [`Event`]s; must be cheap, it is called from worker threads.
pub trait Observer: Send + Sync {
    /// Handles one event.
    fn event(&self, event: &Event<'_>);
}

/// Ignores everything.
pub struct NoObserver;

impl Observer for NoObserver {
    fn event(&self, _: &Event<'_>) {}
}
