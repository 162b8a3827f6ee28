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

#[derive(Default)]
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

#[derive(Default)]
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
        targets.iter().for_each(|&t| is_target[t] = true);
        let mut plan = Plan { flow, nodes: Vec::new(), blocks: Vec::new(), plan_of: vec![None; flow.nodes.len()] };
        // plan blocks: flow blocks that have needed members, root first
        let mut block_of = vec![None; flow.blocks.len()];
        plan.block(0, &mut block_of);
        for &id in flow.order.iter().filter(|&&id| needed[id]) {
            let fnode = &flow.nodes[id];
            let block = plan.block(fnode.block, &mut block_of);
            let local = plan.blocks[block].members.len();
            let pid = plan.nodes.len();
            plan.blocks[block].members.push(pid);
            plan.plan_of[id] = Some(pid);
            let forced = fnode.cache == CacheMode::Default && recompute.iter().any(|r| **r == *fnode.name);
            let cache = if forced { CacheMode::Recompute } else { fnode.cache };
            let checks = (!fnode.checks.is_empty())
                .then(|| blake3::hash(serde_json::to_string(&fnode.checks).unwrap_or_default().as_bytes()));
            plan.nodes.push(PNode { id, block, local, pinned: is_target[id], cache, checks, ..PNode::default() });
        }
        let Plan { nodes, blocks, plan_of, .. } = &mut plan;
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
                        add_release(blocks, nodes, c, q);
                    }
                }
            }
        }
        // every child block waits for (and releases) its fan-out node
        for b in 0..blocks.len() {
            if let Some(e) = blocks[b].expand {
                add_release(blocks, nodes, b, e);
            }
        }
        plan
    }

    /// The plan block of flow block `fb` (`block_of` maps them), made with the blocks that enclose it
    /// when it is first needed. A fan-out node comes before the nodes of its block in the flow's order,
    /// so it has its plan id by then.
    fn block(&mut self, fb: usize, block_of: &mut [Option<usize>]) -> usize {
        if let Some(pb) = block_of[fb] {
            return pb;
        }
        let parent = self.flow.blocks[fb].parent.map(|p| self.block(p, block_of));
        let pb = self.blocks.len();
        let index_in_parent = parent.map_or(0, |p| {
            self.blocks[p].children.push(pb);
            self.blocks[p].children.len() - 1
        });
        let expand =
            self.flow.blocks[fb].expand.map(|e| self.plan_of[e].expect("fan-out nodes of needed blocks are needed"));
        self.blocks.push(PBlock { parent, expand, index_in_parent, ..PBlock::default() });
        block_of[fb] = Some(pb);
        pb
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
    let (ql, child) = (nodes[q].local, &mut blocks[child_block]);
    if !child.releases.contains(&ql) {
        child.releases.push(ql);
        child.spawn_deps += 1;
        nodes[q].spawn_for.push(child.index_in_parent);
        nodes[q].n_uses += 1;
    }
}
