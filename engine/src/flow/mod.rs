//! [`Flow`]: a flow file resolved into a typed DAG, ready to run.
//!
//! - [`raw`]: the file as written ([`RawFlow`](raw::RawFlow), with spans);
//! - [`build()`](build::build): resolution and validation, collecting every error as a
//!   [`Diagnostic`](diagnostic::Diagnostic);
//! - this module: the resolved [`Flow`], which owns the petgraph of its nodes.

pub mod build;
pub mod diagnostic;
pub mod raw;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use indexmap::IndexMap;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};

use crate::registry::{NodeDef, OutputKind};
use crate::value::AnyValue;
pub use build::{BuildOptions, build, load, parse, resolve};
pub use diagnostic::{Diagnostic, Diagnostics, Label, SourceFile};
pub use raw::{CacheMode, OnItemError, RawCheck, Severity};

/// Index of a node in [`Flow::nodes`] (and of its vertex in [`Flow::graph`]).
pub type NodeId = usize;

/// A resolved, validated flow.
pub struct Flow {
    /// `[flow] name`.
    pub name: String,
    /// `[flow] description`.
    pub description: Option<String>,
    /// The flow file.
    pub source: Arc<SourceFile>,
    /// Every node: declared ones first, in file order, then the registered functions pulled in by name.
    pub nodes: Vec<FlowNode>,
    /// The DAG: vertex `i` is `nodes[i]`, an edge goes from producer to consumer and carries the edge's
    /// mode.
    ///
    /// ```
    /// use flowrun_engine::flow::{self, BuildOptions, SourceFile};
    /// # use flowrun_engine::node;
    /// # #[node] fn base() -> i64 { 1 }
    /// # #[node] fn doubled(base: i64) -> i64 { 2 * base }
    /// let src = SourceFile::new("two.toml", "[flow]\nname = \"two\"\n[nodes.base]\n[nodes.doubled]\n");
    /// let f = flow::build(src, &BuildOptions::default()).unwrap();
    /// assert_eq!((f.graph.node_count(), f.graph.edge_count()), (2, 1));
    /// // the edge goes from producer to consumer
    /// let e = f.graph.raw_edges()[0].clone();
    /// assert_eq!((f.graph[e.source()], f.graph[e.target()]), (f.id("base").unwrap(), f.id("doubled").unwrap()));
    /// ```
    pub graph: DiGraph<NodeId, EdgeMode>,
    /// Every node, producers before consumers (a topological order of [`Flow::graph`]).
    pub order: Vec<NodeId>,
    /// Node name -> id ([`Flow::id`] and [`Flow::node`] look names up).
    by_name: HashMap<Arc<str>, NodeId>,
    /// What to build: `[flow] outputs` (or every declared node), plus materialized nodes.
    pub targets: Vec<NodeId>,
    /// Fan-out scopes; `blocks[0]` is the whole flow.
    pub blocks: Vec<Block>,
    /// The config in effect (file values with command-line overrides).
    pub config: IndexMap<String, toml::Value>,
    /// `[materialize.*]`.
    pub materialize: Vec<MaterializeDecl>,
    /// `[lake]`, key by key with spans (with the target's keys, once [`Flow::apply_target`] chose one).
    pub lake: Settings,
    /// `[storage]`, the same way.
    pub storage: Settings,
    /// `[cache]`, the same way.
    pub cache: Settings,
    /// `[targets.NAME]`: each target's `lake`, `storage` and `cache` keys, in file order.
    pub targets_declared: IndexMap<String, [Settings; 3]>,
    /// The target applied, if any.
    pub target: Option<String>,
    /// Declared nodes left out because their `when` did not match the config.
    pub disabled: Vec<String>,
}

/// A settings section (`[lake]`, `[storage]`, `[cache]`): key -> value, with the value's span.
pub type Settings = IndexMap<String, (toml::Value, Range<usize>)>;

impl Flow {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&FlowNode> {
        self.id(name).map(|i| &self.nodes[i])
    }

    /// The id of the node called `name`.
    pub fn id(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    /// Directory of the flow file (relative paths in the flow are relative to it).
    pub fn base_dir(&self) -> PathBuf {
        self.source.path.parent().map(|p| p.to_path_buf()).unwrap_or_default()
    }

    /// Nodes that `targets` need (themselves and everything upstream), as a mask over `nodes`. (A node
    /// inside a fan-out is downstream of the fan-out node that makes its items: a scope is entered through
    /// an item edge only.)
    pub fn needed(&self, targets: &[NodeId]) -> Vec<bool> {
        let mut needed = vec![false; self.nodes.len()];
        let mut upstream = Dfs::empty(&self.graph);
        upstream.stack.extend(targets.iter().map(|&t| NodeIndex::new(t)));
        while let Some(n) = upstream.next(Reversed(&self.graph)) {
            needed[n.index()] = true;
        }
        needed
    }

    /// Applies `[targets.NAME]`: its `lake`, `storage` and `cache` keys replace the file's own, key by key.
    /// The error lists the targets the flow has.
    ///
    /// ```
    /// # use flowrun_engine::flow::{self, BuildOptions, SourceFile};
    /// let src = "[flow]\nname = \"t\"\n[lake]\ncatalog = \"dev.ducklake\"\n[targets.prod.lake]\ncatalog = \"postgres:dbname=lake\"\n";
    /// let mut f = flow::build(SourceFile::new("t.toml", src), &BuildOptions::default()).ok().unwrap();
    /// f.apply_target("prod").unwrap();
    /// assert_eq!(f.lake["catalog"].0.as_str(), Some("postgres:dbname=lake"));
    /// assert!(f.apply_target("staging").unwrap_err().contains("targets: prod"));
    /// ```
    pub fn apply_target(&mut self, name: &str) -> Result<(), String> {
        let Some([lake, storage, cache]) = self.targets_declared.get(name).cloned() else {
            let known: Vec<&str> = self.targets_declared.keys().map(String::as_str).collect();
            return Err(if known.is_empty() {
                format!("--target {name}: the flow declares no targets (add a [targets.{name}] section)")
            } else {
                format!("--target {name}: the flow has no target `{name}`; targets: {}", known.join(", "))
            });
        };
        for (section, over) in [(&mut self.lake, lake), (&mut self.storage, storage), (&mut self.cache, cache)] {
            section.extend(over);
        }
        self.target = Some(name.to_string());
        Ok(())
    }
}

/// One node of a [`Flow`].
pub struct FlowNode {
    /// Unique name (shared with every report of this node, so a run does not copy it per node).
    pub name: Arc<str>,
    /// What runs.
    pub imp: NodeImpl,
    /// One per parameter, in order.
    pub args: Vec<Arg>,
    /// Cache behaviour.
    pub cache: CacheMode,
    /// Tags the flow file gives this node; [`FlowNode::tags`] adds the function's own (kept once, in the
    /// registry, rather than copied into every node).
    pub file_tags: Vec<(String, String)>,
    /// Doc comment or `doc =`.
    pub doc: Cow<'static, str>,
    /// Data checks on the result.
    pub checks: Vec<RawCheck>,
    /// What a node that collects a fan-out does when some items failed.
    pub on_item_error: OnItemError,
    /// Where it is declared (for registered functions pulled in by name: where it is first used).
    pub span: Range<usize>,
    /// Fan-out scope ([`Flow::blocks`] index).
    pub block: usize,
    /// Declared in the flow file (rather than pulled in from the registry by name).
    pub declared: bool,
    /// [`CacheKey::code_digest`](flowrun_cache::CacheKey::code_digest) of its function, code version and
    /// output type: the part of its cache key that is the same on every run.
    pub code_digest: blake3::Hash,
}

impl FlowNode {
    /// The registered function it runs (`None` for a SQL node).
    pub fn def(&self) -> Option<&'static NodeDef> {
        if let NodeImpl::Function(def) = self.imp { Some(def) } else { None }
    }

    /// What the node returns.
    pub fn output(&self) -> OutputKind {
        self.def().map_or(OutputKind::Value(crate::value::TypeDesc::of::<crate::Table>()), |def| def.output)
    }

    /// Its tags: the function's (`#[node(tags(...))]`), then the flow file's (a key may appear in both; the
    /// file's comes last, and [`FlowNode::tag`] gives it).
    ///
    /// ```
    /// # fn tags(node: &flowrun_engine::flow::FlowNode) {
    /// for (key, value) in node.tags() {
    ///     println!("{key} = {value}");
    /// }
    /// # }
    /// ```
    pub fn tags(&self) -> impl Iterator<Item = (&str, &str)> {
        let own: &[(&str, &str)] = self.def().map_or(&[], |def| def.tags);
        own.iter().copied().chain(self.file_tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// The value of tag `key`: the flow file's if it gives one, else the function's.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags().filter(|(k, _)| *k == key).last().map(|(_, v)| v)
    }

    /// `module::name` of the function, or `sql`.
    pub fn function_path(&self) -> &'static str {
        self.def().map_or("sql", |def| def.path)
    }

    /// Code version (function token hash, or normalized-SQL hash).
    pub fn code_version(&self) -> &str {
        match &self.imp {
            NodeImpl::Function(def) => def.code_version,
            NodeImpl::Sql(q) => &q.code_version,
        }
    }

    /// `fanout`, `collect`, `sql` or `node`: what `graph` draws it as.
    pub fn kind(&self) -> &'static str {
        if matches!(self.output(), OutputKind::Parallel { .. }) {
            "fanout"
        } else if self.args.iter().any(|a| matches!(a.binding, Binding::Node { mode: EdgeMode::Collect, .. })) {
            "collect"
        } else if matches!(self.imp, NodeImpl::Sql(_)) {
            "sql"
        } else {
            "node"
        }
    }
}

/// What a node runs.
pub enum NodeImpl {
    /// A registered `#[node]` function.
    Function(&'static NodeDef),
    /// A SQL query over upstream tables.
    Sql(SqlQuery),
}

/// A SQL node's query.
pub struct SqlQuery {
    /// The query as written.
    pub sql: String,
    /// Hash of the normalized query.
    pub code_version: String,
}

/// A parameter and what it is bound to.
pub struct Arg {
    /// Parameter name (for SQL nodes: the table name); shared with the reports that list it.
    pub param: Arc<str>,
    /// Its value's origin.
    pub binding: Binding,
}

/// Where a parameter's value comes from.
pub enum Binding {
    /// Another node's result.
    Node {
        /// The producer.
        node: NodeId,
        /// How it is consumed.
        mode: EdgeMode,
    },
    /// A value known before the run.
    Literal(Literal),
}

/// A parameter's value known before the run: a `params` literal, a config value, an input, a default.
pub struct Literal {
    /// The value.
    pub value: AnyValue,
    /// Its identity in cache keys (content hash for files, else the hash of its encoding).
    pub identity: blake3::Hash,
    /// Where it came from.
    pub source: LiteralSource,
}

/// How a consumer uses a producer's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeMode {
    /// The value as is.
    Direct,
    /// One item of a fan-out node's list (the consumer runs once per item).
    Item,
    /// All items' values of a node inside a fan-out (the consumer is a fan-in).
    Collect,
}

/// Origin of a literal binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiteralSource {
    /// `params = { .. }`.
    Param,
    /// `[config]` key.
    Config(String),
    /// `[inputs]` key.
    Input(String),
    /// The parameter type's default (`Option<T>`: `None`).
    Default,
}

/// A fan-out scope: the nodes that run once per item of one fan-out node.
#[derive(Debug, Clone)]
pub struct Block {
    /// Enclosing scope (`None` for the whole flow).
    pub parent: Option<usize>,
    /// The fan-out node whose items instantiate this scope.
    pub expand: Option<NodeId>,
}

/// A `[materialize.NAME]` section.
#[derive(Debug, Clone)]
pub struct MaterializeDecl {
    /// Section name.
    pub name: String,
    /// The node whose result is written.
    pub node: NodeId,
    /// Materializer kind (`ducklake`, `geoparquet`, ...).
    pub kind: String,
    /// Every other key, with its span.
    pub options: IndexMap<String, (toml::Value, Range<usize>)>,
    /// Where the section is.
    pub span: Range<usize>,
}

/// The DAG of `nodes`: one vertex per node, one edge per argument bound to a node.
pub(crate) fn dag(nodes: &[FlowNode]) -> DiGraph<NodeId, EdgeMode> {
    let mut graph = DiGraph::with_capacity(nodes.len(), nodes.iter().map(|n| n.args.len()).sum());
    for i in 0..nodes.len() {
        graph.add_node(i);
    }
    for (i, n) in nodes.iter().enumerate() {
        for a in &n.args {
            if let Binding::Node { node, mode } = a.binding {
                graph.add_edge(NodeIndex::new(node), NodeIndex::new(i), mode);
            }
        }
    }
    graph
}
