//! The plan: the part of a [`Flow`] a run needs, laid out for the scheduler.
//!
//! Every needed node gets a plan id and a *local* index inside its fan-out scope (block). At run time a
//! block has one *instance* per item of its fan-out node (the root block has exactly one), and each
//! instance keeps one slot, one dependency counter and one use counter per member, indexed by local index.
//!
//! What a member waits for (`n_deps`): each argument bound to a producer in the same block, plus each
//! child block it collects from. What a child block waits for before its instances are created
//! (`spawn_deps`): its fan-out node and every node of the enclosing block that its members (or their
//! nested blocks) read. When a value can be dropped (`n_uses`): after each same-block argument bound to it
//! has been used, each child block reading it has completed, and each collector has gathered it.

use flowrun_cache::Hash;

use crate::flow::{Binding, CacheMode, EdgeMode, Flow, NodeId};

pub(crate) struct Plan<'f> {
    pub flow: &'f Flow,
    pub nodes: Vec<PNode>,
    pub blocks: Vec<PBlock>,
    /// Flow node id -> plan id (`None`: not needed).
    plan_of: Vec<Option<usize>>,
}

pub(crate) struct PNode {
    /// Flow node id.
    pub id: NodeId,
    pub block: usize,
    pub local: usize,
    /// Same-block consumers (local indexes), once per argument bound to this node.
    pub consumers: Vec<usize>,
    /// Child blocks (indexes into the block's `children`) whose instances wait for this node.
    pub spawn_for: Vec<usize>,
    pub n_deps: u32,
    pub n_uses: u32,
    pub pinned: bool,
    pub cache: CacheMode,
    /// Hash of the node's data checks, part of its key.
    pub checks: Option<Hash>,
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
        let mut nodes: Vec<PNode> = Vec::new();
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
            let cache = if recompute.iter().any(|r| **r == *fnode.name) && fnode.cache == CacheMode::Default {
                CacheMode::Recompute
            } else {
                fnode.cache
            };
            let checks = (!fnode.checks.is_empty())
                .then(|| blake3::hash(serde_json::to_string(&fnode.checks).unwrap_or_default().as_bytes()));
            nodes.push(PNode {
                id,
                block,
                local,
                consumers: Vec::new(),
                spawn_for: Vec::new(),
                n_deps: 0,
                n_uses: 0,
                pinned: is_target[id],
                cache,
                checks,
            });
        }
        for (b, block) in blocks.iter_mut().enumerate() {
            let fb = block_map.iter().position(|m| *m == Some(b)).unwrap();
            block.expand =
                flow.blocks[fb].expand.map(|e| plan_of[e].expect("fan-out nodes of needed blocks are needed"));
        }
        // counters
        for pid in 0..nodes.len() {
            let (id, block, local) = (nodes[pid].id, nodes[pid].block, nodes[pid].local);
            for arg in &flow.nodes[id].args {
                let Binding::Node { node, mode } = arg.binding else { continue };
                let q = plan_of[node].expect("a needed node's producers are needed");
                let qb = nodes[q].block;
                match mode {
                    EdgeMode::Item => {}
                    EdgeMode::Collect => {
                        if !blocks[qb].collectors.contains(&local) {
                            blocks[qb].collectors.push(local);
                            nodes[pid].n_deps += 1;
                        }
                        nodes[q].n_uses += 1;
                    }
                    EdgeMode::Direct if qb == block => {
                        nodes[pid].n_deps += 1;
                        nodes[q].consumers.push(local);
                        nodes[q].n_uses += 1;
                    }
                    EdgeMode::Direct => {
                        // q is in an enclosing block: the child of q's block on the way down to ours
                        // waits for q before spawning, and releases q when it completes.
                        let mut c = block;
                        while blocks[c].parent != Some(qb) {
                            c = blocks[c].parent.expect("producer block encloses consumer block");
                        }
                        add_release(&mut blocks, &mut nodes, c, q);
                    }
                }
            }
        }
        // every child block waits for (and releases) its fan-out node
        for b in 0..blocks.len() {
            if let Some(e) = blocks[b].expand {
                add_release(&mut blocks, &mut nodes, b, e);
            }
        }
        Plan { flow, nodes, blocks, plan_of }
    }

    /// The plan id of needed flow node `id`.
    pub fn pid(&self, id: NodeId) -> usize {
        self.plan_of[id].expect("a needed node's producers are needed")
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
