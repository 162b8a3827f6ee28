//! Drawings of a flow: Graphviz DOT and Mermaid.
//!
//! Shapes say what a node is: a box for a function, an inverted trapezium for a fan-out node (its items
//! run the nodes in the dashed cluster below it), a trapezium for a collect node, a component for a SQL
//! node, a folder for a materialization. Edges into a fan-out scope are dashed (`each`), fan-in edges
//! bold (`collect`). With a run overlay, colours say what happened: green ran, grey came from the cache,
//! red failed, yellow skipped.

use std::collections::HashMap;
use std::fmt::Write;

use crate::events::Status;
use crate::flow::{EdgeMode, Flow, NodeId, NodeImpl};

/// How the overlay shows a status: (Mermaid class, fill colour), from least to most important.
const SHOWN: [(&str, &str); 4] =
    [("reused", "#d9d9d9"), ("executed", "#a6d96a"), ("skipped", "#fee08b"), ("failed", "#f46d43")];

/// Index of `s` in [`SHOWN`].
fn shown(s: Status) -> usize {
    match s {
        Status::Reused | Status::WouldReuse => 0,
        Status::Executed | Status::WouldRun => 1,
        Status::Skipped | Status::Cancelled | Status::Deferred => 2,
        Status::Failed => 3,
    }
}

/// The status of each node in a run, for the overlay (a fan-out node's items are merged: failed beats
/// skipped beats executed beats reused).
pub fn overlay(reports: &[crate::NodeReport]) -> HashMap<String, Status> {
    let mut out: HashMap<String, Status> = HashMap::new();
    for r in reports {
        let e = out.entry(r.node.to_string()).or_insert(r.status);
        *e = std::cmp::max_by_key(r.status, *e, |s| shown(*s));
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The node's name, then (after `sep`) its function when that has another name, or `SQL`.
fn label(flow: &Flow, i: NodeId, sep: &str) -> String {
    let n = &flow.nodes[i];
    match &n.imp {
        NodeImpl::Function(def) if def.name != &*n.name => format!("{}{sep}{}()", n.name, def.name),
        NodeImpl::Function(_) => n.name.to_string(),
        NodeImpl::Sql(_) => format!("{}{sep}SQL", n.name),
    }
}

/// One line of a drawing's nesting, at a depth: a fan-out scope opens (its number and fan-out node), a
/// node, or the scope closes.
enum Step<'f> {
    Open(usize, &'f str),
    Node(NodeId),
    Close,
}

/// The nodes of scope `b`, each child scope nested after them.
fn steps(flow: &Flow, b: usize, depth: usize) -> Vec<(usize, Step<'_>)> {
    let mut out = Vec::new();
    if b != 0 {
        let expand = flow.blocks[b].expand.map(|e| &*flow.nodes[e].name).unwrap_or("");
        out.push((depth, Step::Open(b, expand)));
    }
    out.extend(flow.nodes.iter().enumerate().filter(|(_, n)| n.block == b).map(|(i, _)| (depth, Step::Node(i))));
    let children = flow.blocks.iter().enumerate().filter(|(_, blk)| blk.parent == Some(b));
    out.extend(children.flat_map(|(c, _)| steps(flow, c, depth + 1)));
    if b != 0 {
        out.push((depth, Step::Close));
    }
    out
}

/// Every node-to-node edge: (producer, consumer, mode).
fn edges(flow: &Flow) -> impl Iterator<Item = (NodeId, NodeId, EdgeMode)> + '_ {
    flow.graph.raw_edges().iter().map(|e| (flow.graph[e.source()], flow.graph[e.target()], e.weight))
}

/// Graphviz DOT.
///
/// ```
/// # use flowrun_engine::{node, flow};
/// # #[node] fn one() -> i64 { 1 }
/// # #[node] fn two(one: i64) -> i64 { one + 1 }
/// let src = flow::SourceFile::new("f.toml", "[flow]\nname = \"f\"\noutputs = [\"two\"]\n");
/// let f = flow::build(src, &flow::BuildOptions::default()).unwrap();
/// let dot = flowrun_engine::graph::dot(&f, None);
/// assert!(dot.contains("\"one\" -> \"two\""));
/// ```
pub fn dot(flow: &Flow, run: Option<&HashMap<String, Status>>) -> String {
    let mut out = format!("digraph \"{}\" {{\n", esc(&flow.name));
    out.push_str("  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=11, style=filled];\n  edge [fontname=\"Helvetica\", fontsize=9];\n");
    for (depth, step) in steps(flow, 0, 0) {
        let pad = "  ".repeat(depth);
        let _ = match step {
            Step::Open(b, expand) => writeln!(
                out,
                "{pad}subgraph \"cluster_{b}\" {{\n{pad}  label=\"each item of {}\"; style=dashed; color=\"#999999\";",
                esc(expand)
            ),
            Step::Node(i) => {
                let n = &flow.nodes[i];
                let (shape, fill) = match n.kind() {
                    "fanout" => ("invtrapezium", "#fff2cc"),
                    "collect" => ("trapezium", "#fce5cd"),
                    "sql" => ("component", "#e6d7f5"),
                    _ => ("box", "#e8f0fe"),
                };
                let fill = run.and_then(|r| r.get(&*n.name)).map_or(fill, |s| SHOWN[shown(*s)].1);
                let label = esc(&label(flow, i, "\n")).replace('\n', "\\n");
                writeln!(out, "{pad}  \"{}\" [shape={shape}, fillcolor=\"{fill}\", label=\"{label}\"];", esc(&n.name))
            }
            Step::Close => writeln!(out, "{pad}}}"),
        };
    }
    for (from, to, mode) in edges(flow) {
        let style = match mode {
            EdgeMode::Direct => "",
            EdgeMode::Item => " [style=dashed, label=\"each\"]",
            EdgeMode::Collect => " [style=bold, label=\"collect\"]",
        };
        let _ = writeln!(out, "  \"{}\" -> \"{}\"{style};", esc(&flow.nodes[from].name), esc(&flow.nodes[to].name));
    }
    for m in &flow.materialize {
        let (name, node, kind) = (esc(&m.name), esc(&flow.nodes[m.node].name), esc(&m.kind));
        let _ =
            writeln!(out, "  \"materialize:{name}\" [shape=folder, fillcolor=\"#d0e0e3\", label=\"{name}\\n{kind}\"];");
        let _ = writeln!(out, "  \"{node}\" -> \"materialize:{name}\" [style=dotted];");
    }
    out.push_str("}\n");
    out
}

/// Mermaid `flowchart`.
pub fn mermaid(flow: &Flow, run: Option<&HashMap<String, Status>>) -> String {
    let mut out = String::from("flowchart LR\n");
    for (depth, step) in steps(flow, 0, 0) {
        let pad = "    ".repeat(depth);
        let _ = match step {
            Step::Open(b, expand) => writeln!(out, "{pad}subgraph b{b}[\"each item of {expand}\"]"),
            Step::Node(i) => {
                let (open, close) = match flow.nodes[i].kind() {
                    "fanout" => ("[/\"", "\"\\]"),
                    "collect" => ("[\\\"", "\"/]"),
                    "sql" => ("[(\"", "\")]"),
                    _ => ("[\"", "\"]"),
                };
                let l = label(flow, i, "<br/>").replace('"', "#quot;");
                writeln!(out, "{pad}    n{i}{open}{l}{close}")
            }
            Step::Close => writeln!(out, "{pad}end"),
        };
    }
    for (from, to, mode) in edges(flow) {
        let arrow = match mode {
            EdgeMode::Direct => "-->",
            EdgeMode::Item => "-.->|each|",
            EdgeMode::Collect => "==>|collect|",
        };
        let _ = writeln!(out, "    n{from} {arrow} n{to}");
    }
    for (k, m) in flow.materialize.iter().enumerate() {
        let _ = writeln!(out, "    m{k}[/\"{}<br/>{}\"/]\n    n{} -.-> m{k}", m.name, m.kind, m.node);
    }
    for (class, fill) in SHOWN {
        let _ = writeln!(out, "    classDef {class} fill:{fill}");
    }
    for (i, n) in flow.nodes.iter().enumerate() {
        if let Some(s) = run.and_then(|r| r.get(&*n.name)) {
            let _ = writeln!(out, "    class n{i} {}", SHOWN[shown(*s)].0);
        }
    }
    out
}
