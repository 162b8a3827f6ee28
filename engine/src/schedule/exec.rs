//! Where a node is scheduled and run: block instances, tasks, cache lookups, execution, notification.
//!
//! A *task* is one member of one block instance. Running a task:
//! 1. gather its inputs (same-block slots, enclosing instances' slots, the item, collected child slots);
//!    if one failed, the task is skipped;
//! 2. make its cache key from the identities of those inputs;
//! 3. look the key up (`cache = "default"`): a hit whose file dependencies are unchanged is reused without
//!    loading anything; a miss says why (see [`Reason`]);
//! 4. otherwise load the inputs, call the node (panics are caught and become errors), run its data checks,
//!    store the encoded result; its identity is then the hash of those bytes (so a re-run that produces
//!    the same bytes does not make its consumers run: early cut-off);
//! 5. notify: decrement the consumers' counters, spawn child blocks whose fan-out node and inputs are
//!    ready, release inputs nobody needs any more, complete the instance when all its members are done.
//!
//! Running a task returns the tasks it made ready, so the drivers (a loop for one thread, rayon for
//! several) never recurse: a 100,000-node chain is 100,000 iterations, not 100,000 stack frames.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use smallvec::{SmallVec, smallvec};

use flowrun_cache::{
    CacheKey, Entry, EntryMeta, Hash, InputSource, Key, KeyChange, KeyInput, Messages, NodeState, Store, StoredKey,
};

use super::RunOptions;
use super::lazy::Lazy;
use super::plan::{PArg, Plan};
use crate::Table;
use crate::ctx::{self, NodeCx};
use crate::events::{CodeChange, Event, InputKeys, NodeReport, Reason, Reasons, Status};
use crate::flow::{CacheMode, FlowNode, LiteralSource, NodeImpl, OnItemError};
use crate::registry::{ArgValue, Args};
use crate::value::{AnyValue, encode_value};

pub(crate) type Task = (Arc<Instance>, usize);

/// Item indexes from the outermost fan-out in; inline up to four levels of nesting.
pub(crate) type ItemPath = SmallVec<[u32; 4]>;

/// Stands in for an identity that is not known (dry run); such a key is never looked up or stored.
const UNKNOWN: Hash = Hash::from_bytes([0; 32]);

/// The parameter name a node's data checks stand under in its key and its report.
static CHECKS: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("#checks"));

#[derive(Clone)]
pub(crate) struct Done {
    /// `None` after the value was released, or in a dry run when it is not known.
    pub value: Option<Lazy>,
    /// `None` in a dry run when the node would run.
    pub identity: Option<Hash>,
}

#[derive(Clone)]
enum Slot {
    Empty,
    Ok(Done),
    Failed,
}

pub(crate) struct Instance {
    block: usize,
    parent: Option<Arc<Instance>>,
    item: Option<Done>,
    label: Option<Arc<str>>,
    pub path: ItemPath,
    /// One per member of the block; inline when the block has one member, the common fan-out body (a
    /// fan-out of 100,000 items then makes one allocation per item for its instance, not two).
    members: SmallVec<[Member; 1]>,
    /// One per child block; empty (no allocation) for the innermost blocks.
    children: Box<[Child]>,
    /// Members and child blocks not yet complete.
    remaining: AtomicUsize,
}

/// A member's run-time state inside one instance.
struct Member {
    slot: Mutex<Slot>,
    /// Producers (and collected child blocks) not yet done.
    pending: AtomicU32,
    /// Consumers that have not yet released the value.
    uses: AtomicU32,
}

/// A child block's run-time state inside one instance of its parent.
struct Child {
    /// Values the child block waits for before its instances are made.
    spawn_pending: AtomicU32,
    instances: OnceLock<Vec<Arc<Instance>>>,
    /// The child block could not be instantiated (its fan-out node failed): its collectors are skipped.
    failed: AtomicBool,
    /// Dry run: the child block's items are unknown.
    unknown: AtomicBool,
    /// Instances not yet complete.
    remaining: AtomicUsize,
}

/// A pinned result, reported to the caller.
pub(crate) struct Output {
    pub node: usize,
    pub path: ItemPath,
    pub label: Option<Arc<str>>,
    pub done: Done,
}

pub(crate) struct Exec<'p, 'f> {
    plan: &'p Plan<'f>,
    opts: &'p RunOptions,
    abort: AtomicBool,
    pub restart: Mutex<Option<String>>,
    pub failed: AtomicBool,
    pub reports: Mutex<Vec<NodeReport>>,
    pub outputs: Mutex<Vec<Output>>,
    /// Node states after the flow's last run, by display name (empty without a cache).
    states: HashMap<String, NodeState>,
}

/// A node's gathered arguments: inline for up to two (they live only while the node runs).
type GArgs<'a> = SmallVec<[GArg<'a>; 2]>;

enum Gathered<'a> {
    /// The arguments, and the items a collector with `on_item_error = "skip"` left out.
    Ready(GArgs<'a>, Vec<String>),
    UpstreamFailed(String),
}

struct GArg<'a> {
    source: ArgSource<'a>,
    value: GValue,
}

enum GValue {
    One(Done),
    Many(Vec<Done>),
    Unknown(String),
}

#[derive(Clone, Copy)]
enum ArgSource<'a> {
    Node(usize),
    Item(usize),
    Collect(usize),
    Literal(&'a LiteralSource),
}

impl<'p, 'f> Exec<'p, 'f> {
    pub fn new(plan: &'p Plan<'f>, opts: &'p RunOptions) -> Self {
        // Unreadable states only cost speed: every lookup then asks the index.
        let states = match &opts.store {
            Some(store) => store.node_states(&plan.flow.name).unwrap_or_default(),
            None => HashMap::new(),
        };
        Exec {
            states,
            plan,
            opts,
            abort: AtomicBool::new(false),
            restart: Mutex::new(None),
            failed: AtomicBool::new(false),
            reports: Mutex::new(Vec::with_capacity(plan.nodes.len())),
            // reserved: a flow whose every node is a target keeps 100,000 outputs
            outputs: Mutex::new(Vec::with_capacity(plan.targets)),
        }
    }

    fn new_instance(
        &self,
        block: usize,
        parent: Option<Arc<Instance>>,
        item: Option<Done>,
        label: Option<Arc<str>>,
        path: ItemPath,
    ) -> Arc<Instance> {
        let b = &self.plan.blocks[block];
        let member = |&p: &usize| Member {
            slot: Mutex::new(Slot::Empty),
            pending: AtomicU32::new(self.plan.nodes[p].n_deps),
            uses: AtomicU32::new(self.plan.nodes[p].n_uses),
        };
        // through a `Vec` when they spill: its exact size (a `SmallVec` rounds up to a power of two)
        let members = match b.members.len() {
            0 | 1 => b.members.iter().map(member).collect(),
            _ => SmallVec::from_vec(b.members.iter().map(member).collect()),
        };
        Arc::new(Instance {
            block,
            parent,
            item,
            label,
            path,
            members,
            children: b
                .children
                .iter()
                .map(|&c| Child {
                    spawn_pending: AtomicU32::new(self.plan.blocks[c].spawn_deps),
                    instances: OnceLock::new(),
                    failed: AtomicBool::new(false),
                    unknown: AtomicBool::new(false),
                    remaining: AtomicUsize::new(0),
                })
                .collect(),
            remaining: AtomicUsize::new(b.members.len() + b.children.len()),
        })
    }

    /// The root instance and its ready tasks.
    pub fn start(&self) -> Vec<Task> {
        let root = self.new_instance(0, None, None, None, ItemPath::new());
        let mut ready = Vec::new();
        ready_members(&root, &mut ready);
        ready
    }

    fn instance_of<'a>(&self, mut inst: &'a Arc<Instance>, block: usize) -> &'a Arc<Instance> {
        while inst.block != block {
            inst = inst.parent.as_ref().expect("enclosing instance exists");
        }
        inst
    }

    fn item_of<'a>(&self, mut inst: &'a Arc<Instance>, expand: usize) -> &'a Done {
        loop {
            if self.plan.blocks[inst.block].expand == Some(expand) {
                return inst.item.as_ref().expect("fan-out instances have an item");
            }
            inst = inst.parent.as_ref().expect("enclosing fan-out instance exists");
        }
    }

    fn node_name(&self, pid: usize) -> &Arc<str> {
        &self.plan.flow.nodes[self.plan.nodes[pid].id].name
    }

    fn gather(&self, inst: &Arc<Instance>, pid: usize) -> Gathered<'p> {
        let args = self.plan.args(pid);
        let skip_failed = self.plan.flow.nodes[self.plan.nodes[pid].id].on_item_error == OnItemError::Skip;
        let mut left_out = Vec::new();
        let mut out = GArgs::new();
        for arg in args {
            let (source, value) = match arg {
                PArg::Literal(lit) => (
                    ArgSource::Literal(&lit.source),
                    GValue::One(Done { value: Some(lit.value.clone()), identity: Some(lit.identity) }),
                ),
                PArg::Node { node, .. } => {
                    let owner = self.instance_of(inst, self.plan.nodes[*node].block);
                    let slot = owner.members[self.plan.nodes[*node].local].slot.lock().unwrap().clone();
                    match slot {
                        Slot::Ok(done) => (ArgSource::Node(*node), known(done, self.node_name(*node))),
                        _ => return Gathered::UpstreamFailed(self.node_name(*node).to_string()),
                    }
                }
                PArg::Item { expand } => {
                    let done = self.item_of(inst, *expand).clone();
                    (ArgSource::Item(*expand), known(done, self.node_name(*expand)))
                }
                PArg::Collect { node, child } => {
                    let name = self.node_name(*node);
                    if inst.children[*child].failed.load(Ordering::Acquire) {
                        return Gathered::UpstreamFailed(
                            self.node_name(self.plan.blocks[self.plan.nodes[*node].block].expand.unwrap()).to_string(),
                        );
                    }
                    if inst.children[*child].unknown.load(Ordering::Acquire) {
                        (ArgSource::Collect(*node), GValue::Unknown(name.to_string()))
                    } else {
                        let local = self.plan.nodes[*node].local;
                        let children = inst.children[*child].instances.get().map(Vec::as_slice).unwrap_or(&[]);
                        let mut all = Vec::with_capacity(children.len());
                        let mut unknown = false;
                        for c in children {
                            match c.members[local].slot.lock().unwrap().clone() {
                                Slot::Ok(done) => {
                                    unknown |= done.identity.is_none();
                                    all.push(done);
                                }
                                _ => {
                                    let failed = format!("{name}[{}]", c.label.as_deref().unwrap_or(""));
                                    if !skip_failed {
                                        return Gathered::UpstreamFailed(failed);
                                    }
                                    left_out.push(failed);
                                }
                            }
                        }
                        if all.is_empty() && !children.is_empty() {
                            return Gathered::UpstreamFailed(format!("{name} (every item)"));
                        }
                        let v = if unknown { GValue::Unknown(name.to_string()) } else { GValue::Many(all) };
                        (ArgSource::Collect(*node), v)
                    }
                }
            };
            out.push(GArg { source, value });
        }
        Gathered::Ready(out, left_out)
    }

    fn source(&self, s: ArgSource<'p>) -> InputSource<'_> {
        match s {
            ArgSource::Node(n) => InputSource::Node(self.node_name(n)),
            ArgSource::Item(n) => InputSource::Item(self.node_name(n)),
            ArgSource::Collect(n) => InputSource::Collect(self.node_name(n)),
            ArgSource::Literal(LiteralSource::Config(c)) => InputSource::Config(c),
            ArgSource::Literal(LiteralSource::Input(i)) => InputSource::Input(i),
            ArgSource::Literal(_) => InputSource::Literal,
        }
    }

    /// Runs one task, appends the tasks it made ready to `ready` and returns when it ended (the clock is
    /// read once per task).
    ///
    /// `start` is when the task began: the drivers pass the end of the previous task on the same thread,
    /// so a node's reported duration also holds the scheduler's bookkeeping between the two (tens of
    /// nanoseconds: notifying consumers, popping the next task).
    pub fn run_task(&self, task: Task, ready: &mut Vec<Task>, start: Instant) -> Instant {
        let (inst, local) = task;
        let pid = self.plan.blocks[inst.block].members[local];
        let pn = &self.plan.nodes[pid];
        let fnode: &FlowNode = &self.plan.flow.nodes[pn.id];
        let display: Arc<str> = match &inst.label {
            Some(l) => arc_str(format_args!("{}[{l}]", fnode.name)),
            None => fnode.name.clone(),
        };
        let mut report = NodeReport {
            name: display,
            node: fnode.name.clone(),
            item: inst.label.clone(),
            status: Status::Skipped,
            reasons: Reasons::new(),
            duration: Duration::ZERO,
            rows: None,
            key: None,
            inputs: InputKeys::new(),
            error: Vec::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
            left_out: Vec::new(),
        };
        let outcome = if self.abort.load(Ordering::Relaxed) {
            report.status = Status::Cancelled;
            Slot::Failed
        } else {
            match self.gather(&inst, pid) {
                Gathered::UpstreamFailed(up) => {
                    report.error.push(format!("skipped: upstream `{up}` failed"));
                    Slot::Failed
                }
                Gathered::Ready(args, left_out) => {
                    let slot = self.evaluate(&inst, pid, fnode, args, &mut report);
                    // after `evaluate`: said of this run, not stored with the result
                    if !left_out.is_empty() {
                        report.warnings.push(format!(
                            "on_item_error = \"skip\": left out {} failed item result(s): {}",
                            left_out.len(),
                            left_out.join(", ")
                        ));
                        report.left_out = left_out;
                    }
                    slot
                }
            }
        };
        let end = Instant::now();
        report.duration = end.duration_since(start);
        self.opts.observer.event(&Event::NodeFinished(&report));
        if let (Slot::Ok(done), true) = (&outcome, pn.pinned) {
            self.outputs.lock().unwrap().push(Output {
                node: pn.id,
                path: inst.path.clone(),
                label: inst.label.clone(),
                done: done.clone(),
            });
        }
        self.reports.lock().unwrap().push(report);
        self.finish(&inst, local, outcome, ready);
        end
    }

    fn evaluate(
        &self,
        inst: &Arc<Instance>,
        pid: usize,
        fnode: &FlowNode,
        args: GArgs,
        report: &mut NodeReport,
    ) -> Slot {
        let pn = &self.plan.nodes[pid];
        let store = self.opts.store.as_ref();
        // 2. the key
        // on the stack: the key only lives while the node runs
        let mut inputs: SmallVec<[KeyInput; 3]> = SmallVec::new();
        let mut unknown: Option<String> = None;
        for (garg, arg) in args.iter().zip(&fnode.args) {
            let identity = match &garg.value {
                // `One` and `Many` hold known identities (see `known`); unknown ones never make a key
                GValue::One(d) => d.identity.unwrap_or(UNKNOWN),
                GValue::Many(all) => {
                    // the hash of the concatenated identities, streamed (a collect may gather 100,000)
                    let mut h = blake3::Hasher::new();
                    for d in all {
                        h.update(d.identity.unwrap_or(UNKNOWN).as_bytes());
                    }
                    h.finalize()
                }
                GValue::Unknown(up) => {
                    unknown.get_or_insert(up.clone());
                    UNKNOWN
                }
            };
            inputs.push(KeyInput { param: &arg.param, source: self.source(garg.source), identity });
        }
        if let Some(checks) = &pn.checks {
            inputs.push(KeyInput { param: "#checks", source: InputSource::Literal, identity: **checks });
        }
        if let Some(up) = unknown {
            report.status = Status::WouldRun;
            report.reasons = smallvec![Reason::UpstreamWillRun(up)];
            return Slot::Ok(Done { value: None, identity: None });
        }
        let func = &self.plan.functions[pn.function as usize];
        let cache_key = CacheKey {
            function: func.path,
            code_version: fnode.code_version(),
            output_type: func.output_type,
            inputs: &inputs,
        };
        let key = cache_key.hash_with_code(&func.code);
        report.key = Some(key);
        // parameter names are shared with the flow (`#checks` stands for the node's data checks)
        let params = fnode.args.iter().map(|a| &a.param).chain(pn.checks.as_ref().map(|_| &*CHECKS));
        report.inputs.reserve_exact(cache_key.inputs.len());
        for (param, input) in params.zip(cache_key.inputs) {
            report.inputs.push((param.clone(), input.identity));
        }

        // 3. the cache
        match (pn.cache, store) {
            (CacheMode::Default, Some(store)) => match self.lookup(store, &report.name, &key) {
                Ok(Some(entry)) => match changed_dep(store, &entry.deps) {
                    None => {
                        report.status = if self.opts.dry_run { Status::WouldReuse } else { Status::Reused };
                        report.rows = entry.rows;
                        report.warnings.extend(entry.messages.warnings.iter().cloned());
                        report.notes.extend(entry.messages.notes.iter().cloned());
                        self.record_state(&report.name, key, &cache_key);
                        let ty = fnode.output().value_type();
                        let identity = entry.identity();
                        let lazy = Lazy::cached(entry.content, ty, store.clone(), entry.rows);
                        return Slot::Ok(Done { value: Some(lazy), identity: Some(identity) });
                    }
                    Some(path) => report.reasons = smallvec![Reason::FileChanged(path)],
                },
                Ok(None) => report.reasons = self.reasons(&report.name, key, &cache_key),
                Err(e) => report.warnings.push(format!("cache lookup failed, running the node: {e}")),
            },
            (mode, _) => {
                report.reasons = smallvec![Reason::Forced(if store.is_none() { CacheMode::Disable } else { mode })]
            }
        }
        if self.opts.dry_run {
            report.status = Status::WouldRun;
            return Slot::Ok(Done { value: None, identity: None });
        }

        // 4. run
        let mut values: SmallVec<[ArgValue; 2]> = SmallVec::with_capacity(args.len());
        for garg in &args {
            let loaded = match &garg.value {
                GValue::One(d) => load(d).map(ArgValue::One),
                GValue::Many(all) => {
                    let mut many = Vec::with_capacity(all.len());
                    all.iter().try_for_each(|d| load(d).map(|v| many.push(v))).map(|()| ArgValue::Many(many))
                }
                GValue::Unknown(_) => unreachable!("not a dry run"),
            };
            match loaded {
                Ok(v) => values.push(v),
                Err(e) => {
                    // A reused upstream result cannot be read back: the whole run restarts without it.
                    let mut restart = self.restart.lock().unwrap();
                    restart.get_or_insert(format!("{e}; running again without it"));
                    self.abort.store(true, Ordering::Relaxed);
                    report.status = Status::Cancelled;
                    return Slot::Failed;
                }
            }
        }
        self.opts.observer.event(&Event::NodeStarted(&report.name));
        // the context borrows the store, the observer and the display name while the node runs
        let cx = NodeCx::new(store, Some(&self.opts.observer), &report.name);
        let result = ctx::enter(&cx, || {
            std::panic::catch_unwind(AssertUnwindSafe(|| self.call(fnode, values)))
                .unwrap_or_else(|panic| Err(anyhow::anyhow!("node panicked: {}", panic_message(&panic))))
        });
        let (warnings, notes, deps) = (cx.warnings.into_inner(), cx.notes.into_inner(), cx.deps.into_inner());
        report.warnings.extend(warnings);
        report.notes.extend(notes);
        let value = match result.and_then(|v| self.check(fnode, &v, report).map(|()| v)) {
            Ok(v) => v,
            Err(e) => {
                report.status = Status::Failed;
                report.error = e.chain().map(|c| c.to_string()).collect();
                self.failed.store(true, Ordering::Relaxed);
                if self.opts.fail_fast {
                    self.abort.store(true, Ordering::Relaxed);
                }
                self.record_state(&report.name, key, &cache_key);
                return Slot::Failed;
            }
        };
        report.status = Status::Executed;
        report.rows = value.dyn_rows();
        // store; the identity consumers see is the value's own (a table without its volatile columns) or
        // the hash of its bytes
        let own_identity = value.dyn_identity().and_then(Result::ok);
        let identity = match (pn.cache, store) {
            (CacheMode::Disable, _) | (_, None) => key,
            (_, Some(store)) => match encode_value(&*value) {
                Ok(bytes) => {
                    let meta = EntryMeta {
                        type_name: func.output_type.to_string(),
                        node: report.name.to_string(),
                        rows: report.rows,
                        deps,
                        identity: own_identity,
                        messages: Messages { warnings: report.warnings.clone(), notes: report.notes.clone() },
                    };
                    match store.put(key, &bytes, meta) {
                        Ok(content) => own_identity.unwrap_or(content),
                        Err(e) => {
                            report.warnings.push(format!("result not cached: {e}"));
                            own_identity.unwrap_or_else(|| blake3::hash(&bytes))
                        }
                    }
                }
                Err(e) => {
                    report.warnings.push(format!("result not cached (cannot encode it: {e})"));
                    key
                }
            },
        };
        self.record_state(&report.name, key, &cache_key);
        if let Some(store) = store
            && let Err(e) = store.maybe_commit()
        {
            report.warnings.push(format!("cache commit failed: {e}"));
        }
        let _ = inst;
        Slot::Ok(Done { value: Some(Lazy::ready(value)), identity: Some(identity) })
    }

    fn call(&self, fnode: &FlowNode, values: SmallVec<[ArgValue; 2]>) -> anyhow::Result<AnyValue> {
        match &fnode.imp {
            NodeImpl::Function(def) => (def.call)(&mut Args::new(values)),
            NodeImpl::Sql(q) => {
                let engine = self.opts.sql.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("SQL node `{}` needs a SQL engine (the flowrun binary provides DuckDB)", fnode.name)
                })?;
                let mut tables: Vec<(&str, &Table)> = Vec::new();
                for (arg, v) in fnode.args.iter().zip(&values) {
                    let ArgValue::One(v) = v else { anyhow::bail!("SQL inputs are single tables") };
                    let t = v.downcast_ref::<Table>().ok_or_else(|| {
                        anyhow::anyhow!("input `{}` of SQL node `{}` is not a table", arg.param, fnode.name)
                    })?;
                    tables.push((&arg.param, t));
                }
                let t = engine.query(&q.sql, &tables)?;
                Ok(Arc::new(t))
            }
        }
    }

    fn check(&self, fnode: &FlowNode, value: &AnyValue, report: &mut NodeReport) -> anyhow::Result<()> {
        if fnode.checks.is_empty() {
            return Ok(());
        }
        let table = value.downcast_ref::<Table>().ok_or_else(|| anyhow::anyhow!("checks need a table result"))?;
        for c in &fnode.checks {
            if let Err(problem) = crate::checks::run(c, table) {
                let message = format!("check failed: `{}` {problem}", fnode.name);
                match c.severity {
                    crate::flow::Severity::Error => anyhow::bail!(message),
                    crate::flow::Severity::Warn => {
                        self.opts.observer.event(&Event::Warning { node: Some(&report.name), message: &message });
                        report.warnings.push(message);
                    }
                }
            }
        }
        Ok(())
    }

    /// The entry for `key`: from the states loaded at the start of the run when the node's key did not
    /// change (no index query), else from the index.
    fn lookup(&self, store: &Store, name: &str, key: &Key) -> flowrun_cache::Result<Option<Entry>> {
        match self.states.get(name) {
            Some(NodeState { key: k, entry: Some(entry), .. }) if k == key => Ok(Some(entry.clone())),
            _ => store.lookup(key),
        }
    }

    /// Buffers the node's key as its state for `explain`, unless the last run left the same key.
    fn record_state(&self, name: &str, key: Key, cache_key: &CacheKey<'_>) {
        if self.opts.dry_run || self.states.get(name).is_some_and(|s| s.key == key) {
            return;
        }
        if let Some(store) = &self.opts.store {
            let detail = serde_json::to_string(cache_key).unwrap_or_default();
            store.record_node_state(&self.plan.flow.name, name, key, detail);
        }
    }

    fn reasons(&self, name: &str, key: Key, now: &CacheKey<'_>) -> Reasons {
        let Some(state) = self.states.get(name) else { return smallvec![Reason::NotCached] };
        if state.key == key {
            return smallvec![Reason::ResultMissing];
        }
        let Some(prev) = StoredKey::parse(&state.detail) else { return smallvec![Reason::NotCached] };
        let reasons: Reasons = prev
            .diff(now)
            .into_iter()
            .map(|c| match c {
                KeyChange::Code if prev.function != now.function || prev.output_type != now.output_type => {
                    Reason::CodeChanged(CodeChange::Replaced)
                }
                KeyChange::Code => Reason::CodeChanged(CodeChange::between(&prev.code_version, now.code_version)),
                KeyChange::Input { param, kind, name } => match kind.as_str() {
                    "literal" => Reason::ParamChanged(param),
                    "config" => Reason::ConfigChanged(name.unwrap_or(param)),
                    "input" => Reason::InputChanged(name.unwrap_or(param)),
                    _ => Reason::UpstreamChanged(name.unwrap_or(param)),
                },
            })
            .collect();
        if reasons.is_empty() { smallvec![Reason::NotCached] } else { reasons }
    }

    // 5. notification ---------------------------------------------------------------------------------

    fn finish(&self, inst: &Arc<Instance>, local: usize, outcome: Slot, ready: &mut Vec<Task>) {
        let pid = self.plan.blocks[inst.block].members[local];
        let pn = &self.plan.nodes[pid];
        *inst.members[local].slot.lock().unwrap() = outcome;
        for &c in &pn.consumers {
            if inst.members[c].pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                ready.push((inst.clone(), c));
            }
        }
        for &child in &pn.spawn_for {
            if inst.children[child].spawn_pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.spawn(inst, child, ready);
            }
        }
        for &p in &pn.producers {
            self.release(inst, p);
        }
        for arg in self.plan.args(pid) {
            if let PArg::Collect { node, child } = arg {
                let l = self.plan.nodes[*node].local;
                for c in inst.children[*child].instances.get().map(Vec::as_slice).unwrap_or(&[]) {
                    self.release(c, l);
                }
            }
        }
        self.complete_one(inst, ready);
    }

    fn release(&self, inst: &Instance, local: usize) {
        if inst.members[local].uses.fetch_sub(1, Ordering::AcqRel) == 1 {
            let pid = self.plan.blocks[inst.block].members[local];
            if !self.plan.nodes[pid].pinned
                && let Slot::Ok(done) = &mut *inst.members[local].slot.lock().unwrap()
            {
                done.value = None;
            }
        }
    }

    /// One member or child block of `inst` is complete.
    fn complete_one(&self, inst: &Arc<Instance>, ready: &mut Vec<Task>) {
        if inst.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some(parent) = &inst.parent else { return };
        let idx = self.plan.blocks[inst.block].index_in_parent;
        if parent.children[idx].remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.block_complete(parent, idx, ready);
        }
    }

    /// Every instance of child block `child` of `inst` is complete (or there were none).
    fn block_complete(&self, inst: &Arc<Instance>, child: usize, ready: &mut Vec<Task>) {
        let b = &self.plan.blocks[self.plan.blocks[inst.block].children[child]];
        for &c in &b.collectors {
            if inst.members[c].pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                ready.push((inst.clone(), c));
            }
        }
        for &r in &b.releases {
            self.release(inst, r);
        }
        self.complete_one(inst, ready);
    }

    /// Creates the instances of child block `child` of `inst`, one per item of its fan-out node.
    fn spawn(&self, inst: &Arc<Instance>, child: usize, ready: &mut Vec<Task>) {
        let block = self.plan.blocks[inst.block].children[child];
        let b = &self.plan.blocks[block];
        let expand = b.expand.expect("child blocks have a fan-out node");
        let slot = inst.members[self.plan.nodes[expand].local].slot.lock().unwrap().clone();
        let expand_name = self.node_name(expand).to_string();
        let items: Result<Vec<AnyValue>, String> = match slot {
            Slot::Ok(Done { value: Some(lazy), identity: Some(_) }) => match lazy.get() {
                Ok(v) => v.dyn_items().ok_or_else(|| format!("`{expand_name}` did not return a Parallel list")),
                Err(e) => {
                    let mut restart = self.restart.lock().unwrap();
                    restart.get_or_insert(format!("{e}; running again without it"));
                    self.abort.store(true, Ordering::Relaxed);
                    Err(e.to_string())
                }
            },
            Slot::Ok(_) => {
                // dry run: the fan-out node would run, so its items are unknown
                inst.children[child].unknown.store(true, Ordering::Release);
                for &m in &b.members {
                    let name = self.node_name(m);
                    let report = NodeReport {
                        name: format!("{name}[*]").into(),
                        node: name.clone(),
                        item: Some("*".into()),
                        status: Status::WouldRun,
                        reasons: smallvec![Reason::UpstreamWillRun(expand_name.clone())],
                        duration: Duration::ZERO,
                        rows: None,
                        key: None,
                        inputs: InputKeys::new(),
                        error: Vec::new(),
                        warnings: Vec::new(),
                        notes: Vec::new(),
                        left_out: Vec::new(),
                    };
                    self.opts.observer.event(&Event::NodeFinished(&report));
                    self.reports.lock().unwrap().push(report);
                }
                return self.block_complete(inst, child, ready);
            }
            _ => Err(format!("upstream `{expand_name}` failed")),
        };
        let items = match items {
            Ok(items) => items,
            Err(why) => {
                inst.children[child].failed.store(true, Ordering::Release);
                for &m in &b.members {
                    let name = self.node_name(m);
                    let report = NodeReport {
                        name: name.clone(),
                        node: name.clone(),
                        item: None,
                        status: if self.abort.load(Ordering::Relaxed) { Status::Cancelled } else { Status::Skipped },
                        reasons: Reasons::new(),
                        duration: Duration::ZERO,
                        rows: None,
                        key: None,
                        inputs: InputKeys::new(),
                        error: vec![format!("skipped: {why}")],
                        warnings: Vec::new(),
                        notes: Vec::new(),
                        left_out: Vec::new(),
                    };
                    self.opts.observer.event(&Event::NodeFinished(&report));
                    self.reports.lock().unwrap().push(report);
                }
                return self.block_complete(inst, child, ready);
            }
        };
        let mut instances = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let identity = match crate::flow::build::identity_of(&*item) {
                Ok(h) => h,
                Err(_) => blake3::hash(format!("{expand_name}#{i}").as_bytes()),
            };
            let label = match (&inst.label, item.dyn_label()) {
                (Some(outer), Some(own)) => arc_str(format_args!("{outer}/{own}")),
                (Some(outer), None) => arc_str(format_args!("{outer}/{i}")),
                (None, Some(own)) => own.into(),
                (None, None) => arc_str(format_args!("{i}")),
            };
            let mut path = ItemPath::with_capacity(inst.path.len() + 1);
            path.extend_from_slice(&inst.path);
            path.push(i as u32);
            let done = Done { value: Some(Lazy::ready(item)), identity: Some(identity) };
            instances.push(self.new_instance(block, Some(inst.clone()), Some(done), Some(label), path));
        }
        let n = instances.len();
        self.opts.observer.event(&Event::TasksAdded(n * b.members.len()));
        self.reports.lock().unwrap().reserve(n * b.members.len());
        ready.reserve(n * b.members.len());
        inst.children[child].remaining.store(n, Ordering::Release);
        for instance in &instances {
            ready_members(instance, ready);
        }
        let _ = inst.children[child].instances.set(instances);
        if n == 0 {
            self.block_complete(inst, child, ready);
        }
    }
}

/// Appends the members of `inst` that wait for nothing, last member first (the drivers pop from the end,
/// so the first member runs first).
fn ready_members(inst: &Arc<Instance>, out: &mut Vec<Task>) {
    for m in (0..inst.members.len()).rev() {
        if inst.members[m].pending.load(Ordering::Acquire) == 0 {
            out.push((inst.clone(), m));
        }
    }
}

/// Formats into a stack buffer and makes the shared string with one allocation (a fan-out makes one label
/// and one display name per item).
fn arc_str(args: std::fmt::Arguments<'_>) -> Arc<str> {
    use std::fmt::Write;
    struct Buf {
        bytes: [u8; 128],
        len: usize,
        spill: Option<String>,
    }
    impl Write for Buf {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if let Some(spill) = &mut self.spill {
                spill.push_str(s);
            } else if self.len + s.len() <= self.bytes.len() {
                self.bytes[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
                self.len += s.len();
            } else {
                let mut spill = String::with_capacity(self.len + s.len() + 64);
                spill.push_str(std::str::from_utf8(&self.bytes[..self.len]).expect("whole str pieces"));
                spill.push_str(s);
                self.spill = Some(spill);
            }
            Ok(())
        }
    }
    let mut buf = Buf { bytes: [0; 128], len: 0, spill: None };
    let _ = buf.write_fmt(args);
    match &buf.spill {
        Some(s) => Arc::from(s.as_str()),
        None => Arc::from(std::str::from_utf8(&buf.bytes[..buf.len]).expect("whole str pieces")),
    }
}

fn known(done: Done, name: &str) -> GValue {
    if done.identity.is_none() { GValue::Unknown(name.to_string()) } else { GValue::One(done) }
}

fn load(d: &Done) -> Result<AnyValue, super::lazy::LoadError> {
    d.value.as_ref().expect("a value needed by a consumer is not released before it runs").get()
}

/// The first file dependency that no longer has its recorded content.
fn changed_dep(store: &Store, deps: &[flowrun_cache::FileDep]) -> Option<String> {
    deps.iter()
        .find(|d| store.fingerprint_file(&d.path).map(|h| h.to_hex().as_str() != d.hash).unwrap_or(true))
        .map(|d| d.path.display().to_string())
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::arc_str;

    #[test]
    fn arc_str_formats_short_and_long_strings() {
        assert_eq!(&*arc_str(format_args!("{}[{}]", "square", 3)), "square[3]");
        // longer than the stack buffer: the pieces written before the spill are kept, in order
        let long = "x".repeat(200);
        assert_eq!(&*arc_str(format_args!("{}[{long}]/{}", "node", 7)), format!("node[{long}]/7"));
        let edge = "y".repeat(127);
        assert_eq!(&*arc_str(format_args!("{edge}{}", "zz")), format!("{edge}zz"));
    }
}
