//! Where a node is scheduled and run: block instances, tasks, cache lookups, execution, notification.
//!
//! A *task* is one member of one block instance. Running a task:
//! 1. gather its inputs (same-block slots, enclosing instances' slots, the item, collected child slots);
//!    if one failed, the task is skipped; the last reader of a same-block value (not an unstored output)
//!    takes it out of its slot;
//! 2. make its cache key from the identities of those inputs;
//! 3. look the key up (`cache = "default"`): a hit whose file dependencies are unchanged is reused without
//!    loading anything; a miss says why (see [`Reason`]);
//! 4. otherwise load the inputs, call the node (panics are caught and become errors), run its data checks,
//!    store the encoded result; its identity is then the hash of those bytes (so a re-run that produces
//!    the same bytes does not make its consumers run: early cut-off);
//! 5. notify: decrement the consumers' counters, spawn child blocks whose fan-out node and inputs are
//!    ready, release inputs nobody needs any more, complete the instance when all its members are done;
//!    after a long node, hand the heap's free memory back to the system.
//!
//! Running a task returns the tasks it made ready, so the drivers (a loop for one thread, rayon for
//! several) never recurse: a 100,000-node chain is 100,000 iterations, not 100,000 stack frames.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use flowrun_cache::{
    CacheKey, Entry, EntryMeta, FileDep, Hash, InputSource, Key, KeyChange, KeyInput, Messages, NodeState, Store,
    StoredKey,
};

use super::lazy::{Lazy, LoadError};
use super::plan::{PNode, Plan};
use super::{OutputItem, RunOptions};
use crate::Table;
use crate::ctx;
use crate::events::{CodeChange, Event, NodeReport, Reason, Status};
use crate::flow::{Binding, CacheMode, EdgeMode, FlowNode, LiteralSource, NodeImpl, OnItemError};
use crate::registry::{ArgValue, Args};
use crate::value::AnyValue;

pub(crate) type Task = (Arc<Instance>, usize);

/// The parameter name a node's data checks stand under in its key and its report.
const CHECKS: &str = "#checks";

#[derive(Clone)]
pub(crate) struct Done {
    /// `None` after the value was released or handed to its last reader, or in a dry run when it is not known.
    pub value: Option<Lazy>,
    /// `None` in a dry run when the node would run.
    pub identity: Option<Hash>,
    /// The content hash of the value when it is in the store (this run wrote it, or reused it): a target's
    /// result is then handed on as a pointer of its own into the store, and its memory freed with its
    /// consumers.
    pub stored: Option<Hash>,
}

#[derive(Clone)]
enum Slot {
    Empty,
    Ok(Done),
    Failed,
    /// Left to another run: a fan-in, or what depends on one, in a sharded run.
    Deferred,
}

pub(crate) struct Instance {
    block: usize,
    parent: Option<Arc<Instance>>,
    item: Option<Done>,
    label: Option<Arc<str>>,
    /// Item indexes from the outermost fan-out in.
    pub path: Vec<u32>,
    /// One per member of the block.
    members: Vec<Member>,
    /// One per child block.
    children: Vec<Child>,
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
#[derive(Default)]
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

impl Child {
    /// Its instances (none before they are made, or when there are none).
    fn instances(&self) -> &[Arc<Instance>] {
        self.instances.get().map_or(&[], Vec::as_slice)
    }
}

pub(crate) struct Exec<'p, 'f> {
    plan: &'p Plan<'f>,
    opts: &'p RunOptions,
    abort: AtomicBool,
    pub restart: Mutex<Option<String>>,
    /// The restart removed the cache entry that failed (so restarting again makes progress).
    pub progressed: AtomicBool,
    pub failed: AtomicBool,
    pub reports: Mutex<Vec<NodeReport>>,
    /// The pinned results, with their flow node and item path (to be sorted by).
    pub outputs: Mutex<Vec<(usize, Vec<u32>, OutputItem)>>,
    /// Node states after the flow's last run, by display name (empty without a cache).
    states: HashMap<String, NodeState>,
}

struct GArg<'a> {
    source: InputSource<'a>,
    value: GValue,
}

enum GValue {
    /// A value whose identity is known.
    One(Done),
    /// A collector's values, each with a known identity.
    Many(Vec<Done>),
    /// Dry run: the named upstream node would run, so the value is not known.
    Unknown(String),
}

impl<'p, 'f> Exec<'p, 'f> {
    pub fn new(plan: &'p Plan<'f>, opts: &'p RunOptions) -> Self {
        // Unreadable states only cost speed: every lookup then asks the index.
        let states = opts.store.as_ref().and_then(|s| s.node_states(&plan.flow.name).ok()).unwrap_or_default();
        Exec {
            states,
            plan,
            opts,
            abort: AtomicBool::new(false),
            restart: Mutex::new(None),
            progressed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            // one report per node of the plan at least
            reports: Mutex::new(Vec::with_capacity(plan.nodes.len())),
            outputs: Mutex::new(Vec::new()),
        }
    }

    fn new_instance(
        &self,
        block: usize,
        parent: Option<Arc<Instance>>,
        item: Option<Done>,
        label: Option<Arc<str>>,
        path: Vec<u32>,
    ) -> Arc<Instance> {
        let b = &self.plan.blocks[block];
        let member = |&p: &usize| Member {
            slot: Mutex::new(Slot::Empty),
            pending: AtomicU32::new(self.plan.nodes[p].n_deps),
            uses: AtomicU32::new(self.plan.nodes[p].n_uses),
        };
        let child =
            |&c: &usize| Child { spawn_pending: AtomicU32::new(self.plan.blocks[c].spawn_deps), ..Child::default() };
        Arc::new(Instance {
            block,
            parent,
            item,
            label,
            path,
            members: b.members.iter().map(member).collect(),
            children: b.children.iter().map(child).collect(),
            remaining: AtomicUsize::new(b.members.len() + b.children.len()),
        })
    }

    /// The root instance and its ready tasks.
    pub fn start(&self) -> Vec<Task> {
        let root = self.new_instance(0, None, None, None, Vec::new());
        let mut ready = Vec::new();
        ready_members(&root, &mut ready);
        ready
    }

    /// The instance of block `block` that encloses `inst` (or is it).
    fn instance_of<'a>(&self, inst: &'a Arc<Instance>, block: usize) -> &'a Arc<Instance> {
        std::iter::successors(Some(inst), |i| i.parent.as_ref()).find(|i| i.block == block).expect("enclosing instance")
    }

    /// The item of the instance of `expand`'s child block that encloses `inst` (or is it).
    fn item_of<'a>(&self, inst: &'a Arc<Instance>, expand: usize) -> &'a Done {
        let mut enclosing = std::iter::successors(Some(inst), |i| i.parent.as_ref());
        let owner = enclosing.find(|i| self.plan.blocks[i.block].expand == Some(expand)).expect("enclosing instance");
        owner.item.as_ref().expect("fan-out instances have an item")
    }

    fn node_name(&self, pid: usize) -> &'p Arc<str> {
        &self.plan.flow.nodes[self.plan.nodes[pid].id].name
    }

    /// The state, inside `inst`, of the child block that node `pid` belongs to.
    fn child_of<'i>(&self, inst: &'i Instance, pid: usize) -> &'i Child {
        &inst.children[self.plan.blocks[self.plan.nodes[pid].block].index_in_parent]
    }

    /// Step 1: the values of node `pid`'s arguments in instance `inst`, and the items a collector with
    /// `on_item_error = "skip"` left out. `Err(Some(up))`: upstream `up` failed; `Err(None)`: an input is
    /// deferred (a sharded run leaves fan-ins, and what depends on them, to the final run).
    fn gather(&self, inst: &Arc<Instance>, pid: usize) -> Result<(Vec<GArg<'p>>, Vec<String>), Option<String>> {
        let fnode = &self.plan.flow.nodes[self.plan.nodes[pid].id];
        let collects = fnode.args.iter().any(|a| matches!(a.binding, Binding::Node { mode: EdgeMode::Collect, .. }));
        if collects && self.opts.shard.is_some() {
            return Err(None);
        }
        let skip_failed = fnode.on_item_error == OnItemError::Skip;
        let mut left_out = Vec::new();
        let mut out = Vec::new();
        for arg in &fnode.args {
            let (source, value) = match &arg.binding {
                Binding::Literal(lit) => {
                    let source = match &lit.source {
                        LiteralSource::Config(c) => InputSource::Config(c),
                        LiteralSource::Input(i) => InputSource::Input(i),
                        LiteralSource::Param | LiteralSource::Default => InputSource::Literal,
                    };
                    let value = Some(Lazy::ready(lit.value.clone()));
                    (source, GValue::One(Done { value, identity: Some(lit.identity), stored: None }))
                }
                &Binding::Node { node, mode } => {
                    let node = self.plan.pid(node);
                    let name = self.node_name(node);
                    match mode {
                        EdgeMode::Direct => {
                            let owner = self.instance_of(inst, self.plan.nodes[node].block);
                            let member = &owner.members[self.plan.nodes[node].local];
                            let mut slot = member.slot.lock().unwrap();
                            // its last reader takes the value out of the slot (every other use is over): a
                            // node that takes it by value then holds the only reference, and can free it
                            // batch by batch while it makes its result
                            let last_reader = owner.block == inst.block && member.uses.load(Ordering::Acquire) == 1;
                            let done = match &mut *slot {
                                Slot::Ok(done)
                                    if last_reader && (!self.plan.nodes[node].pinned || done.stored.is_some()) =>
                                {
                                    let value = done.value.take();
                                    Done { value, ..done.clone() }
                                }
                                Slot::Ok(done) => done.clone(),
                                Slot::Deferred => return Err(None),
                                _ => return Err(Some(name.to_string())),
                            };
                            (InputSource::Node(name), known(done, name))
                        }
                        EdgeMode::Item => (InputSource::Item(name), known(self.item_of(inst, node).clone(), name)),
                        EdgeMode::Collect => match self.collected(inst, node, skip_failed, &mut left_out) {
                            Ok(value) => (InputSource::Collect(name), value),
                            Err(failed) => return Err(Some(failed)),
                        },
                    }
                }
            };
            out.push(GArg { source, value });
        }
        Ok((out, left_out))
    }

    /// The results of `node` in every instance of its block inside `inst`, for a collector; the failed
    /// ones are left out with `skip_failed` (`on_item_error = "skip"`), else `Err` names one.
    fn collected(
        &self,
        inst: &Instance,
        node: usize,
        skip_failed: bool,
        left_out: &mut Vec<String>,
    ) -> Result<GValue, String> {
        let name = self.node_name(node);
        let child = self.child_of(inst, node);
        if child.failed.load(Ordering::Acquire) {
            return Err(self.node_name(self.plan.blocks[self.plan.nodes[node].block].expand.unwrap()).to_string());
        }
        if child.unknown.load(Ordering::Acquire) {
            return Ok(GValue::Unknown(name.to_string()));
        }
        let local = self.plan.nodes[node].local;
        let instances = child.instances();
        let mut all = Vec::new();
        for c in instances {
            match c.members[local].slot.lock().unwrap().clone() {
                Slot::Ok(done) => all.push(done),
                _ => {
                    let failed = format!("{name}[{}]", c.label.as_deref().unwrap_or(""));
                    if !skip_failed {
                        return Err(failed);
                    }
                    left_out.push(failed);
                }
            }
        }
        if all.is_empty() && !instances.is_empty() {
            return Err(format!("{name} (every item)"));
        }
        let unknown = all.iter().any(|d| d.identity.is_none());
        Ok(if unknown { GValue::Unknown(name.to_string()) } else { GValue::Many(all) })
    }

    /// Runs one task (steps 1 to 5) and appends the tasks it made ready to `ready`.
    pub fn run_task(&self, task: Task, ready: &mut Vec<Task>) {
        let start = Instant::now();
        let (inst, local) = task;
        let pid = self.plan.blocks[inst.block].members[local];
        let pn = &self.plan.nodes[pid];
        let fnode: &FlowNode = &self.plan.flow.nodes[pn.id];
        let display = inst.label.as_ref().map_or_else(|| fnode.name.clone(), |l| format!("{}[{l}]", fnode.name).into());
        let mut report = NodeReport::new(display, fnode.name.clone(), inst.label.clone(), Status::Skipped);
        let outcome = if self.abort.load(Ordering::Relaxed) || self.opts.interrupted() {
            report.status = Status::Cancelled;
            Slot::Failed
        } else {
            // 1. gather
            match self.gather(&inst, pid) {
                Err(Some(up)) => {
                    report.error.push(format!("skipped: upstream `{up}` failed"));
                    Slot::Failed
                }
                Err(None) => {
                    report.status = Status::Deferred;
                    Slot::Deferred
                }
                Ok((args, left_out)) => {
                    let slot = self.evaluate(pn, fnode, args, &mut report);
                    // after `evaluate`: said of this run, not stored with the result
                    if !left_out.is_empty() {
                        let (n, items) = (left_out.len(), left_out.join(", "));
                        let warning = format!("on_item_error = \"skip\": left out {n} failed item result(s): {items}");
                        report.warnings.push(warning);
                        report.left_out = left_out;
                    }
                    slot
                }
            }
        };
        report.duration = start.elapsed();
        if let (Slot::Ok(done), true) = (&outcome, pn.pinned) {
            let item = inst.label.as_deref().map(String::from);
            // a result this run stored is handed on from the store (a materializer loads it when it writes
            // it), so its memory goes when its consumers are done, not at the end of the run
            let value = match (done.stored, &self.opts.store) {
                (Some(content), Some(store)) => {
                    Some(Lazy::cached(content, fnode.output().value_type(), store.clone(), report.rows))
                }
                _ => done.value.clone(),
            };
            let output = OutputItem { node: fnode.name.clone(), item, value, identity: done.identity };
            self.outputs.lock().unwrap().push((pn.id, inst.path.clone(), output));
        }
        let long = report.status == Status::Executed && report.duration >= super::LONG_NODE;
        self.report(report);
        self.finish(&inst, local, outcome, ready);
        if long {
            super::return_free_memory();
        }
    }

    /// A node run is over: the observer hears of it, the run's report keeps it.
    fn report(&self, report: NodeReport) {
        self.opts.observer.event(&Event::NodeFinished(&report));
        self.reports.lock().unwrap().push(report);
    }

    /// Steps 2 to 4 for a task whose inputs are gathered: key, lookup, run, store.
    fn evaluate(&self, pn: &PNode, fnode: &FlowNode, args: Vec<GArg<'p>>, report: &mut NodeReport) -> Slot {
        let inputs = match self.key_inputs(pn, fnode, &args) {
            Ok(inputs) => inputs,
            Err(upstream) => {
                report.status = Status::WouldRun;
                report.reasons = vec![Reason::UpstreamWillRun(upstream)];
                return Slot::Ok(Done { value: None, identity: None, stored: None });
            }
        };
        let cache_key = CacheKey {
            function: fnode.function_path(),
            code_version: fnode.code_version(),
            output_type: fnode.output().value_type().name(),
            inputs: &inputs,
        };
        let key = cache_key.hash_with_code(&fnode.code_digest);
        report.key = Some(key);
        // the flow's parameter names, shared (`#checks` stands for the data checks)
        let params = fnode.args.iter().map(|a| a.param.clone()).chain(pn.checks.map(|_| Arc::from(CHECKS)));
        report.inputs = params.zip(inputs.iter().map(|i| i.identity)).collect();
        if let Some(done) = self.reuse(pn, fnode, key, &cache_key, report) {
            return Slot::Ok(done);
        }
        if self.opts.dry_run {
            report.status = Status::WouldRun;
            return Slot::Ok(Done { value: None, identity: None, stored: None });
        }
        let Some(values) = self.load_args(&args, report) else { return Slot::Failed };
        // the call holds the only references it was given (see `gather`)
        drop(args);
        let (result, deps) = self.execute(fnode, values, report);
        let outcome = match result {
            Ok(value) => {
                report.status = Status::Executed;
                report.rows = ask(report, "counting the result's rows", || value.dyn_rows());
                let (identity, stored) = self.store(pn, fnode, key, &value, deps, report);
                Slot::Ok(Done { value: Some(Lazy::ready(value)), identity: Some(identity), stored })
            }
            Err(e) => {
                report.status = Status::Failed;
                report.error = e.chain().map(|c| c.to_string()).collect();
                self.failed.store(true, Ordering::Relaxed);
                if self.opts.fail_fast {
                    self.abort.store(true, Ordering::Relaxed);
                }
                Slot::Failed
            }
        };
        self.record_state(&report.name, key, &cache_key);
        if let (Slot::Ok(_), Some(store)) = (&outcome, &self.opts.store)
            && let Err(e) = store.maybe_commit()
        {
            report.warnings.push(format!("cache commit failed: {e}"));
        }
        outcome
    }

    /// Step 2: what goes into the key, one input per argument (then the data checks); `Err` names the
    /// upstream node whose value a dry run does not know.
    fn key_inputs<'s>(
        &'s self,
        pn: &PNode,
        fnode: &'s FlowNode,
        args: &[GArg<'p>],
    ) -> Result<Vec<KeyInput<'s>>, String> {
        let known = |d: &Done| d.identity.expect("gathered values have known identities");
        let mut inputs = Vec::new();
        for (garg, arg) in args.iter().zip(&fnode.args) {
            let identity = match &garg.value {
                GValue::One(d) => known(d),
                GValue::Many(all) => {
                    // the hash of the concatenated identities
                    let mut h = blake3::Hasher::new();
                    for d in all {
                        h.update(known(d).as_bytes());
                    }
                    h.finalize()
                }
                GValue::Unknown(up) => return Err(up.clone()),
            };
            inputs.push(KeyInput { param: &arg.param, source: garg.source, identity });
        }
        if let Some(checks) = pn.checks {
            inputs.push(KeyInput { param: CHECKS, source: InputSource::Literal, identity: checks });
        }
        Ok(inputs)
    }

    /// Step 3: the stored result for `key`, when the node may reuse one and the files it read are
    /// unchanged; otherwise the report says why the node runs.
    fn reuse(
        &self,
        pn: &PNode,
        fnode: &FlowNode,
        key: Key,
        cache_key: &CacheKey<'_>,
        report: &mut NodeReport,
    ) -> Option<Done> {
        let store = match (pn.cache, &self.opts.store) {
            (CacheMode::Default, Some(store)) => store,
            (mode, store) => {
                report.reasons = vec![Reason::Forced(if store.is_none() { CacheMode::Disable } else { mode })];
                return None;
            }
        };
        let entry = match self.lookup(store, &report.name, &key) {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                report.reasons = self.reasons(&report.name, key, cache_key);
                return None;
            }
            Err(e) => {
                report.warnings.push(format!("cache lookup failed, running the node: {e}"));
                return None;
            }
        };
        if let Some(path) = changed_dep(store, &entry.deps) {
            report.reasons = vec![Reason::FileChanged(path)];
            return None;
        }
        report.status = if self.opts.dry_run { Status::WouldReuse } else { Status::Reused };
        report.rows = entry.rows;
        report.warnings.extend(entry.messages.warnings.iter().cloned());
        report.notes.extend(entry.messages.notes.iter().cloned());
        self.record_state(&report.name, key, cache_key);
        let identity = entry.identity();
        let value = Lazy::cached(entry.content, fnode.output().value_type(), store.clone(), entry.rows);
        Some(Done { value: Some(value), identity: Some(identity), stored: Some(entry.content) })
    }

    /// Step 4, the inputs: loaded from the cache where they are still there; `None` when a reused result
    /// cannot be read back, and the run starts again without it.
    fn load_args(&self, args: &[GArg<'p>], report: &mut NodeReport) -> Option<Vec<ArgValue>> {
        let load = |d: &Done| d.value.as_ref().expect("a value is not released before its consumers ran").get();
        let loaded: Result<Vec<ArgValue>, LoadError> = args
            .iter()
            .map(|garg| match &garg.value {
                GValue::One(d) => load(d).map(ArgValue::One),
                GValue::Many(all) => all.iter().map(load).collect::<Result<_, _>>().map(ArgValue::Many),
                GValue::Unknown(_) => unreachable!("not a dry run"),
            })
            .collect();
        loaded
            .inspect_err(|e| {
                self.restart_without(e);
                report.status = Status::Cancelled;
            })
            .ok()
    }

    /// A reused result cannot be read back: the run stops, and starts again without it.
    fn restart_without(&self, e: &LoadError) {
        // a blob that is gone or does not decode is evicted with its entries: the next attempt (and every
        // later run) computes it again instead of failing on it
        if let (Some(store), LoadError::Missing(hex) | LoadError::Decode(hex, _)) = (&self.opts.store, e)
            && let Ok(content) = blake3::Hash::from_hex(hex)
        {
            let _ = store.evict(&content);
            if matches!(e, LoadError::Missing(_)) {
                let _ = store.evict_missing();
            }
        }
        // each such restart removed what failed: the next attempt cannot fail on it again
        if !matches!(e, LoadError::Cache(_)) {
            self.progressed.store(true, Ordering::Relaxed);
        }
        self.restart.lock().unwrap().get_or_insert(format!("{e}; running again without it"));
        self.abort.store(true, Ordering::Relaxed);
    }

    /// Step 4, the call: the node runs with its context (a panic is its failure), then its data checks.
    /// Gives the result and the files the node read.
    fn execute(
        &self,
        fnode: &FlowNode,
        values: Vec<ArgValue>,
        report: &mut NodeReport,
    ) -> (anyhow::Result<AnyValue>, Vec<FileDep>) {
        self.opts.observer.event(&Event::NodeStarted(&report.name));
        let (store, observer) = (self.opts.store.clone(), self.opts.observer.clone());
        let (result, cx) = ctx::enter(store, observer, report.name.clone(), || self.call(fnode, values));
        let result = result.unwrap_or_else(|panic| Err(anyhow::anyhow!("node panicked: {}", panic_message(&panic))));
        report.warnings.extend(cx.warnings);
        report.notes.extend(cx.notes);
        // the data checks, too, run under a guard: a panic in one is the node's failure, not the run's end
        let checked = result.and_then(|v| {
            guarded("a data check", || self.check(fnode, &v, report)).map_err(anyhow::Error::msg)?.map(|()| v)
        });
        (checked, cx.deps)
    }

    /// Step 4, the result: stored (unless the node's cache is disabled), with the identity its consumers
    /// see: the value's own (a table without its volatile columns), else the hash of its bytes (so a re-run
    /// that makes the same bytes does not re-run them), else (not stored) the key; and the stored bytes' hash.
    fn store(
        &self,
        pn: &PNode,
        fnode: &FlowNode,
        key: Key,
        value: &AnyValue,
        deps: Vec<FileDep>,
        report: &mut NodeReport,
    ) -> (Hash, Option<Hash>) {
        // a value type's own code (identity, encoding) runs under a guard: its panic leaves the result
        // uncached, with a warning naming the node, and the run goes on
        let own_identity = ask(report, "the result's identity", || value.dyn_identity()).and_then(Result::ok);
        let Some(store) = self.opts.store.as_ref().filter(|_| pn.cache != CacheMode::Disable) else {
            return (key, None);
        };
        let meta = EntryMeta {
            type_name: fnode.output().value_type().name().to_string(),
            node: report.name.to_string(),
            rows: report.rows,
            deps,
            identity: own_identity,
            messages: Messages { warnings: report.warnings.clone(), notes: report.notes.clone() },
        };
        // the encoding streams into the store (a large table into its blob file, hashed on the way)
        let mut codec = None;
        let put = guarded("encoding it", || {
            store.put_with(key, meta, |out| {
                value.dyn_encode_to(out).map_err(|e| {
                    let io = std::io::Error::other(e.to_string());
                    codec = Some(e);
                    io
                })
            })
        });
        let why = match (put, codec) {
            (Ok(Ok(content)), _) => return (own_identity.unwrap_or(content), Some(content)),
            (Err(panic), _) => panic,
            (Ok(Err(_)), Some(e)) => format!("cannot encode it: {e}"),
            (Ok(Err(e)), None) => e.to_string(),
        };
        report.warnings.push(format!("result not cached ({why})"));
        // as for a node whose cache is disabled: its consumers see the key
        (own_identity.unwrap_or(key), None)
    }

    fn call(&self, fnode: &FlowNode, values: Vec<ArgValue>) -> anyhow::Result<AnyValue> {
        match &fnode.imp {
            NodeImpl::Function(def) => (def.call)(&mut Args::new(values)),
            NodeImpl::Sql(q) => {
                let engine = self.opts.sql.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("SQL node `{}` needs a SQL engine (the flowrun binary provides DuckDB)", fnode.name)
                })?;
                let tables = fnode.args.iter().zip(&values).map(|(arg, v)| {
                    let ArgValue::One(v) = v else { anyhow::bail!("SQL inputs are single tables") };
                    let t = v.downcast_ref::<Table>().ok_or_else(|| {
                        anyhow::anyhow!("input `{}` of SQL node `{}` is not a table", arg.param, fnode.name)
                    })?;
                    Ok((&*arg.param, t))
                });
                let tables = tables.collect::<anyhow::Result<Vec<_>>>()?;
                Ok(Arc::new(engine.query(&q.sql, &tables)?))
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
            Some(NodeState { key: k, entry: Some(entry), .. }) if k == key => {
                store.share(key, entry);
                Ok(Some(entry.clone()))
            }
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

    /// Why a node whose key is not in the cache runs, from what its key was after the last run.
    fn reasons(&self, name: &str, key: Key, now: &CacheKey<'_>) -> Vec<Reason> {
        let Some(state) = self.states.get(name) else { return vec![Reason::NotCached] };
        if state.key == key {
            return vec![Reason::ResultMissing];
        }
        let Some(prev) = StoredKey::parse(&state.detail) else { return vec![Reason::NotCached] };
        let reasons: Vec<Reason> = prev
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
        if reasons.is_empty() { vec![Reason::NotCached] } else { reasons }
    }

    // 5. notification ---------------------------------------------------------------------------------

    fn finish(&self, inst: &Arc<Instance>, local: usize, mut outcome: Slot, ready: &mut Vec<Task>) {
        let pid = self.plan.blocks[inst.block].members[local];
        let pn = &self.plan.nodes[pid];
        // a stored target nobody reads (nor spawns items from) is handed on by its output pointer alone
        if let Slot::Ok(done) = &mut outcome
            && done.stored.is_some()
            && pn.n_uses == 0
            && pn.spawn_for.is_empty()
        {
            done.value = None;
        }
        *inst.members[local].slot.lock().unwrap() = outcome;
        one_less_to_wait_for(inst, &pn.consumers, ready);
        for &child in &pn.spawn_for {
            if inst.children[child].spawn_pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.spawn(inst, child, ready);
            }
        }
        // release what this node read: same-block producers, and what it collected
        for arg in &self.plan.flow.nodes[pn.id].args {
            let Binding::Node { node, mode } = arg.binding else { continue };
            let pid = self.plan.pid(node);
            let q = &self.plan.nodes[pid];
            match mode {
                EdgeMode::Direct if q.block == inst.block => self.release(inst, q.local),
                EdgeMode::Collect => self.child_of(inst, pid).instances().iter().for_each(|c| self.release(c, q.local)),
                _ => {}
            }
        }
        self.complete_one(inst, ready);
    }

    fn release(&self, inst: &Instance, local: usize) {
        if inst.members[local].uses.fetch_sub(1, Ordering::AcqRel) == 1 {
            let pid = self.plan.blocks[inst.block].members[local];
            if let Slot::Ok(done) = &mut *inst.members[local].slot.lock().unwrap()
                && (!self.plan.nodes[pid].pinned || done.stored.is_some())
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
        one_less_to_wait_for(inst, &b.collectors, ready);
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
            Slot::Ok(Done { value: Some(lazy), identity: Some(_), .. }) => (lazy.get())
                .inspect_err(|e| self.restart_without(e))
                .map_err(|e| e.to_string())
                .and_then(|v| guarded(&format!("listing the items of `{expand_name}`"), || v.dyn_items()))
                .and_then(|items| items.ok_or_else(|| format!("`{expand_name}` did not return a Parallel list"))),
            Slot::Ok(_) => {
                // dry run: the fan-out node would run, so its items are unknown
                inst.children[child].unknown.store(true, Ordering::Release);
                for &m in &b.members {
                    let name = self.node_name(m);
                    let report =
                        NodeReport::new(format!("{name}[*]").into(), name.clone(), Some("*".into()), Status::WouldRun);
                    self.report(NodeReport { reasons: vec![Reason::UpstreamWillRun(expand_name.clone())], ..report });
                }
                return self.block_complete(inst, child, ready);
            }
            _ => Err(format!("upstream `{expand_name}` failed")),
        };
        let items = match items {
            Ok(items) => items,
            Err(why) => {
                inst.children[child].failed.store(true, Ordering::Release);
                let status = if self.abort.load(Ordering::Relaxed) { Status::Cancelled } else { Status::Skipped };
                for &m in &b.members {
                    let name = self.node_name(m);
                    let report = NodeReport::new(name.clone(), name.clone(), None, status);
                    self.report(NodeReport { error: vec![format!("skipped: {why}")], ..report });
                }
                return self.block_complete(inst, child, ready);
            }
        };
        let mut instances = Vec::with_capacity(items.len());
        // a sharded run takes every n-th item of the outermost fan-outs, from its own index on
        let mine = |i: usize| inst.parent.is_some() || self.opts.shard.is_none_or(|(k, n)| i % n == k);
        for (i, item) in items.into_iter().enumerate().filter(|(i, _)| mine(*i)) {
            let identity = guarded("an item's identity", || crate::flow::build::identity_of(&*item)).and_then(|id| id);
            let identity = identity.unwrap_or_else(|_| blake3::hash(format!("{expand_name}#{i}").as_bytes()));
            let own = guarded("an item's label", || item.dyn_label()).ok().flatten().unwrap_or_else(|| i.to_string());
            let label = inst.label.as_ref().map(|outer| format!("{outer}/{own}")).unwrap_or(own);
            let path = [&inst.path[..], &[i as u32]].concat();
            let done = Done { value: Some(Lazy::ready(item)), identity: Some(identity), stored: None };
            instances.push(self.new_instance(block, Some(inst.clone()), Some(done), Some(label.into()), path));
        }
        let n = instances.len();
        self.opts.observer.event(&Event::TasksAdded(n * b.members.len()));
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

/// Members `members` of `inst` wait for one thing less; those that now wait for nothing are ready.
fn one_less_to_wait_for(inst: &Arc<Instance>, members: &[usize], ready: &mut Vec<Task>) {
    for &m in members {
        if inst.members[m].pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            ready.push((inst.clone(), m));
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

fn known(done: Done, name: &str) -> GValue {
    if done.identity.is_none() { GValue::Unknown(name.to_string()) } else { GValue::One(done) }
}

/// The first file dependency that no longer has its recorded content.
fn changed_dep(store: &Store, deps: &[FileDep]) -> Option<String> {
    deps.iter()
        .find(|d| store.fingerprint_file(&d.path).map(|h| h.to_hex().as_str() != d.hash).unwrap_or(true))
        .map(|d| d.path.display().to_string())
}

/// Runs a value type's or a check's own code: its panic becomes `Err("<what> panicked: <message>")`, for
/// the node's report, instead of the end of the run.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|p| format!("{what} panicked: {}", panic_message(&p)))
}

/// [`guarded`] for a value type's optional answer: a panic is a warning of the node's, and no answer.
fn ask<T>(report: &mut NodeReport, what: &str, f: impl FnOnce() -> Option<T>) -> Option<T> {
    guarded(what, f).unwrap_or_else(|w| {
        report.warnings.push(w);
        None
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str));
    text.unwrap_or("(no message)").to_string()
}
