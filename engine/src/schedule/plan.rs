//! The plan: the part of a [`Flow`] a run needs, laid out for the scheduler.
//!
//! Every needed node gets a plan id and a *local* index inside its fan-out scope (block). At run time a
//! block has one *instance* per item of its fan-out node (the root block has exactly one), and each
//! instance keeps one slot, one dependency counter and one use counter per member, indexed by local index.
//!
//! What a member waits for (`n_deps`): each distinct producer in the same block, plus each child block
//! it collects from. What a child block waits for before its instances are created (`spawn_deps`): its
//! fan-out node and every node of the enclosing block that its members (or their nested blocks) read.
//! When a value can be dropped (`n_uses`): after each same-block consumer has started, each child block
//! reading it has completed, and each collector has gathered it.

use std::ops::Range;

use flowrun_cache::{CacheKey, Hash};
use smallvec::SmallVec;

use super::lazy::Lazy;
use crate::flow::{Binding, CacheMode, EdgeMode, Flow, LiteralSource, NodeId, NodeImpl};

pub(crate) struct Plan<'f> {
    pub flow: &'f Flow,
    pub nodes: Vec<PNode>,
    pub blocks: Vec<PBlock>,
    /// Every node's arguments, node after node ([`PNode::args`] is a node's range).
    args: Vec<PArg>,
    /// The functions the nodes run, each once ([`PNode::function`]).
    pub functions: Vec<PFunction>,
    /// How many nodes are targets ([`PNode::pinned`]): the run keeps at least this many outputs.
    pub targets: usize,
}

/// A function as a node's cache key names it; one per registered function the plan uses (100,000 nodes
/// of one function share one), one per SQL node.
pub(crate) struct PFunction {
    /// Registered path, or `sql`.
    pub path: &'static str,
    /// `std::any::type_name` of the output.
    pub output_type: &'static str,
    /// [`flowrun_cache::CacheKey::code_digest`] of the path, its code version and the output type.
    pub code: Hash,
}

/// A few plan ids or local indexes: most nodes have one or two producers and consumers, kept inline (a
/// 100,000-node flow then makes no allocation per node for them).
pub(crate) type Few = SmallVec<[usize; 2]>;

pub(crate) struct PNode {
    /// Flow node id.
    pub id: NodeId,
    pub block: usize,
    pub local: usize,
    /// Its arguments in [`Plan::args`], in parameter order.
    args: Range<usize>,
    /// Same-block consumers (local indexes, distinct).
    pub consumers: Few,
    /// Child blocks (indexes into the block's `children`) whose instances wait for this node.
    pub spawn_for: Few,
    /// Distinct same-block producers this node releases when it starts.
    pub producers: Few,
    pub n_deps: u32,
    pub n_uses: u32,
    pub pinned: bool,
    pub cache: CacheMode,
    /// Index into [`Plan::functions`].
    pub function: u32,
    /// Hash of the node's data checks, part of its key (boxed: most nodes have none).
    pub checks: Option<Box<Hash>>,
}

pub(crate) enum PArg {
    /// A node of the same block or of an enclosing block.
    Node { node: usize },
    /// The current item of the fan-out node `expand` (plan id).
    Item { expand: usize },
    /// The results of `node` in every instance of child block `child` (index into `children`).
    Collect { node: usize, child: usize },
    /// Boxed: literals are rare next to edges, which then take 24 bytes instead of 80.
    Literal(Box<PLiteral>),
}

pub(crate) struct PLiteral {
    /// Made once per run, shared by every instance.
    pub value: Lazy,
    pub identity: Hash,
    pub source: LiteralSource,
}

pub(crate) struct PBlock {
    pub parent: Option<usize>,
    /// Plan id of the fan-out node.
    pub expand: Option<usize>,
    /// Plan ids, in topological order.
    pub members: Vec<usize>,
    /// Child blocks (plan block ids).
    pub children: Vec<usize>,
    /// Index of this block in its parent's `children`.
    pub index_in_parent: usize,
    pub spawn_deps: u32,
    /// Parent-block members (local) waiting for this block to complete.
    pub collectors: Vec<usize>,
    /// Parent-block members (local) released when this block completes (its fan-out node and the
    /// values its members read).
    pub releases: Vec<usize>,
}

impl<'f> Plan<'f> {
    pub fn new(flow: &'f Flow, targets: &[NodeId], recompute: &[String]) -> Plan<'f> {
        let needed = flow.needed(targets);
        let mut is_target = vec![false; flow.nodes.len()];
        for &t in targets {
            is_target[t] = true;
        }
        // plan blocks: flow blocks that have needed members, root first
        let mut block_map: Vec<Option<usize>> = vec![None; flow.blocks.len()];
        let mut blocks: Vec<PBlock> = Vec::new();
        let mut plan_of: Vec<Option<usize>> = vec![None; flow.nodes.len()];
        let mut nodes: Vec<PNode> = Vec::with_capacity(flow.nodes.len());
        let ensure_block = |fb: usize, blocks: &mut Vec<PBlock>, block_map: &mut Vec<Option<usize>>| -> usize {
            if let Some(pb) = block_map[fb] {
                return pb;
            }
            // create the chain of plan blocks from the root down to `fb`
            let mut chain = vec![fb];
            while let Some(p) = flow.blocks[*chain.last().unwrap()].parent {
                chain.push(p);
            }
            let mut last = None;
            for &b in chain.iter().rev() {
                last = Some(match block_map[b] {
                    Some(pb) => pb,
                    None => {
                        let pb = blocks.len();
                        blocks.push(PBlock {
                            parent: last,
                            expand: None,
                            members: Vec::new(),
                            children: Vec::new(),
                            index_in_parent: 0,
                            spawn_deps: 0,
                            collectors: Vec::new(),
                            releases: Vec::new(),
                        });
                        if let Some(parent) = last {
                            blocks[pb].index_in_parent = blocks[parent].children.len();
                            blocks[parent].children.push(pb);
                        }
                        block_map[b] = Some(pb);
                        pb
                    }
                });
            }
            last.unwrap()
        };
        ensure_block(0, &mut blocks, &mut block_map);
        // room for every needed node in the root block, where most are (growing it copies it 17 times
        // on the way to 100,000); nested blocks grow
        blocks[0].members.reserve_exact(needed.iter().filter(|&&n| n).count());
        // code digests, made once per registered function (a flow may run one function in many nodes)
        let mut functions: Vec<PFunction> = Vec::new();
        let mut function_of: foldhash::HashMap<*const crate::registry::NodeDef, u32> = Default::default();
        for &id in &flow.order {
            if !needed[id] {
                continue;
            }
            let fnode = &flow.nodes[id];
            let block = ensure_block(fnode.block, &mut blocks, &mut block_map);
            let local = blocks[block].members.len();
            let pid = nodes.len();
            blocks[block].members.push(pid);
            plan_of[id] = Some(pid);
            let mut add = |path: &'static str, code_version: &str, output_type: &'static str| {
                let code = CacheKey::code_digest(path, code_version, output_type);
                functions.push(PFunction { path, output_type, code });
                (functions.len() - 1) as u32
            };
            let function = match &fnode.imp {
                NodeImpl::Function(def) => *function_of
                    .entry(std::ptr::from_ref(*def))
                    .or_insert_with(|| add(def.path(), def.code_version, def.output_type().name())),
                NodeImpl::Sql(q) => add("sql", &q.code_version, std::any::type_name::<crate::Table>()),
            };
            let cache = if recompute.iter().any(|r| **r == *fnode.name) && fnode.cache == CacheMode::Default {
                CacheMode::Recompute
            } else {
                fnode.cache
            };
            let checks = (!fnode.checks.is_empty())
                .then(|| Box::new(blake3::hash(serde_json::to_string(&fnode.checks).unwrap_or_default().as_bytes())));
            nodes.push(PNode {
                id,
                block,
                local,
                args: 0..0,
                consumers: Few::new(),
                spawn_for: Few::new(),
                producers: Few::new(),
                n_deps: 0,
                n_uses: 0,
                pinned: is_target[id],
                cache,
                function,
                checks,
            });
        }
        for (b, block) in blocks.iter_mut().enumerate() {
            let fb = block_map.iter().position(|m| *m == Some(b)).unwrap();
            block.expand =
                flow.blocks[fb].expand.map(|e| plan_of[e].expect("fan-out nodes of needed blocks are needed"));
        }
        // arguments and counters
        let mut args = Vec::with_capacity(nodes.iter().map(|n| flow.nodes[n.id].args.len()).sum());
        for pid in 0..nodes.len() {
            let id = nodes[pid].id;
            let block = nodes[pid].block;
            let start = args.len();
            for arg in &flow.nodes[id].args {
                let parg = match &arg.binding {
                    Binding::Literal(lit) => PArg::Literal(Box::new(PLiteral {
                        value: Lazy::ready(lit.value.clone()),
                        identity: lit.identity,
                        source: lit.source.clone(),
                    })),
                    Binding::Node { node, mode: EdgeMode::Item } => PArg::Item { expand: plan_of[*node].unwrap() },
                    Binding::Node { node, mode: EdgeMode::Collect } => {
                        let q = plan_of[*node].unwrap();
                        let child_block = nodes[q].block;
                        let child = blocks[child_block].index_in_parent;
                        if !blocks[child_block].collectors.contains(&nodes[pid].local) {
                            blocks[child_block].collectors.push(nodes[pid].local);
                            nodes[pid].n_deps += 1;
                        }
                        nodes[q].n_uses += 1;
                        PArg::Collect { node: q, child }
                    }
                    Binding::Node { node, mode: EdgeMode::Direct } => {
                        let q = plan_of[*node].unwrap();
                        let qb = nodes[q].block;
                        if qb == block {
                            let ql = nodes[q].local;
                            if !nodes[pid].producers.contains(&ql) {
                                nodes[pid].producers.push(ql);
                                nodes[pid].n_deps += 1;
                                let local = nodes[pid].local;
                                nodes[q].consumers.push(local);
                                nodes[q].n_uses += 1;
                            }
                            PArg::Node { node: q }
                        } else {
                            // q is in an enclosing block: the child of q's block on the way down to ours
                            // waits for q before spawning, and releases q when it completes.
                            let mut c = block;
                            while blocks[c].parent != Some(qb) {
                                c = blocks[c].parent.expect("producer block encloses consumer block");
                            }
                            add_release(&mut blocks, &mut nodes, c, q);
                            PArg::Node { node: q }
                        }
                    }
                };
                args.push(parg);
            }
            nodes[pid].args = start..args.len();
        }
        // every child block waits for (and releases) its fan-out node
        for b in 0..blocks.len() {
            if let Some(e) = blocks[b].expand {
                add_release(&mut blocks, &mut nodes, b, e);
            }
        }
        Plan { flow, nodes, blocks, args, functions, targets: targets.len() }
    }

    /// Node `pid`'s arguments, in parameter order.
    pub fn args(&self, pid: usize) -> &[PArg] {
        &self.args[self.nodes[pid].args.clone()]
    }

    /// Node runs known before any fan-out has produced items.
    pub fn root_tasks(&self) -> usize {
        self.blocks[0].members.len()
    }
}

fn add_release(blocks: &mut [PBlock], nodes: &mut [PNode], child_block: usize, q: usize) {
    let ql = nodes[q].local;
    if !blocks[child_block].releases.contains(&ql) {
        blocks[child_block].releases.push(ql);
        blocks[child_block].spawn_deps += 1;
        let idx = blocks[child_block].index_in_parent;
        nodes[q].spawn_for.push(idx);
        nodes[q].n_uses += 1;
    }
}
