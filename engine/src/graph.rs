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
use crate::flow::{Binding, EdgeMode, Flow, NodeImpl};

/// The status of each node in a run, for the overlay (a fan-out node's items are merged: failed beats
/// skipped beats executed beats reused).
pub fn overlay(reports: &[crate::NodeReport]) -> HashMap<String, Status> {
    fn rank(s: Status) -> u8 {
        match s {
            Status::Failed => 5,
            Status::Cancelled | Status::Skipped | Status::Deferred => 4,
            Status::Executed | Status::WouldRun => 3,
            Status::Reused | Status::WouldReuse => 2,
        }
    }
    let mut out: HashMap<String, Status> = HashMap::new();
    for r in reports {
        let e = out.entry(r.node.to_string()).or_insert(r.status);
        if rank(r.status) > rank(*e) {
            *e = r.status;
        }
    }
    out
}

fn status_colour(s: Status) -> &'static str {
    match s {
        Status::Executed | Status::WouldRun => "#a6d96a",
        Status::Reused | Status::WouldReuse => "#d9d9d9",
        Status::Failed => "#f46d43",
        Status::Skipped | Status::Cancelled | Status::Deferred => "#fee08b",
    }
}

fn kind_style(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "fanout" => ("invtrapezium", "#fff2cc"),
        "collect" => ("trapezium", "#fce5cd"),
        "sql" => ("component", "#e6d7f5"),
        _ => ("box", "#e8f0fe"),
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn function_label(flow: &Flow, i: usize) -> String {
    match &flow.nodes[i].imp {
        NodeImpl::Function(def) if def.name != &*flow.nodes[i].name => format!("{}()", def.name),
        NodeImpl::Function(_) => String::new(),
        NodeImpl::Sql(_) => "SQL".to_string(),
    }
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
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", esc(&flow.name));
    out.push_str("  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=11, style=filled];\n  edge [fontname=\"Helvetica\", fontsize=9];\n");
    // nodes grouped by fan-out scope (clusters)
    let mut by_block: Vec<Vec<usize>> = vec![Vec::new(); flow.blocks.len()];
    for (i, n) in flow.nodes.iter().enumerate() {
        by_block[n.block].push(i);
    }
    fn write_block(
        flow: &Flow,
        b: usize,
        by_block: &[Vec<usize>],
        run: Option<&HashMap<String, Status>>,
        out: &mut String,
        depth: usize,
    ) {
        let pad = "  ".repeat(depth);
        if b != 0 {
            let expand = flow.blocks[b].expand.map(|e| &*flow.nodes[e].name).unwrap_or("");
            let _ = writeln!(out, "{pad}subgraph \"cluster_{b}\" {{");
            let _ = writeln!(out, "{pad}  label=\"each item of {}\"; style=dashed; color=\"#999999\";", esc(expand));
        }
        for &i in &by_block[b] {
            let n = &flow.nodes[i];
            let (shape, fill) = kind_style(n.kind());
            let fill = run.and_then(|r| r.get(&*n.name)).map(|s| status_colour(*s)).unwrap_or(fill);
            let sub = function_label(flow, i);
            let label = if sub.is_empty() { esc(&n.name) } else { format!("{}\\n{}", esc(&n.name), esc(&sub)) };
            let _ =
                writeln!(out, "{pad}  \"{}\" [shape={shape}, fillcolor=\"{fill}\", label=\"{label}\"];", esc(&n.name));
        }
        for (c, blk) in flow.blocks.iter().enumerate() {
            if blk.parent == Some(b) {
                write_block(flow, c, by_block, run, out, depth + 1);
            }
        }
        if b != 0 {
            let _ = writeln!(out, "{pad}}}");
        }
    }
    write_block(flow, 0, &by_block, run, &mut out, 0);
    for (i, n) in flow.nodes.iter().enumerate() {
        for a in &n.args {
            if let Binding::Node { node, mode } = a.binding {
                let style = match mode {
                    EdgeMode::Direct => String::new(),
                    EdgeMode::Item => " [style=dashed, label=\"each\"]".to_string(),
                    EdgeMode::Collect => " [style=bold, label=\"collect\"]".to_string(),
                };
                let _ =
                    writeln!(out, "  \"{}\" -> \"{}\"{style};", esc(&flow.nodes[node].name), esc(&flow.nodes[i].name));
            }
        }
    }
    for m in &flow.materialize {
        let _ = writeln!(
            out,
            "  \"materialize:{}\" [shape=folder, fillcolor=\"#d0e0e3\", label=\"{}\\n{}\"];",
            esc(&m.name),
            esc(&m.name),
            esc(&m.kind)
        );
        let _ = writeln!(
            out,
            "  \"{}\" -> \"materialize:{}\" [style=dotted];",
            esc(&flow.nodes[m.node].name),
            esc(&m.name)
        );
    }
    out.push_str("}\n");
    out
}

/// Mermaid `flowchart`.
pub fn mermaid(flow: &Flow, run: Option<&HashMap<String, Status>>) -> String {
    let mut out = String::from("flowchart LR\n");
    let label = |i: usize| {
        let n = &flow.nodes[i];
        let sub = function_label(flow, i);
        let text = if sub.is_empty() { n.name.to_string() } else { format!("{}<br/>{}", n.name, sub) };
        text.replace('"', "#quot;")
    };
    let shape = |i: usize| {
        let l = label(i);
        match flow.nodes[i].kind() {
            "fanout" => format!("n{i}[/\"{l}\"\\]"),
            "collect" => format!("n{i}[\\\"{l}\"/]"),
            "sql" => format!("n{i}[(\"{l}\")]"),
            _ => format!("n{i}[\"{l}\"]"),
        }
    };
    fn block(flow: &Flow, b: usize, shape: &dyn Fn(usize) -> String, out: &mut String, depth: usize) {
        let pad = "    ".repeat(depth);
        if b != 0 {
            let expand = flow.blocks[b].expand.map(|e| flow.nodes[e].name.clone()).unwrap_or_default();
            let _ = writeln!(out, "{pad}subgraph b{b}[\"each item of {expand}\"]");
        }
        for (i, n) in flow.nodes.iter().enumerate() {
            if n.block == b {
                let _ = writeln!(out, "{pad}    {}", shape(i));
            }
        }
        for (c, blk) in flow.blocks.iter().enumerate() {
            if blk.parent == Some(b) {
                block(flow, c, shape, out, depth + 1);
            }
        }
        if b != 0 {
            let _ = writeln!(out, "{pad}end");
        }
    }
    block(flow, 0, &shape, &mut out, 0);
    for (i, n) in flow.nodes.iter().enumerate() {
        for a in &n.args {
            if let Binding::Node { node, mode } = a.binding {
                let arrow = match mode {
                    EdgeMode::Direct => "-->",
                    EdgeMode::Item => "-.->|each|",
                    EdgeMode::Collect => "==>|collect|",
                };
                let _ = writeln!(out, "    n{node} {arrow} n{i}");
            }
        }
    }
    for (k, m) in flow.materialize.iter().enumerate() {
        let _ = writeln!(out, "    m{k}[/\"{}<br/>{}\"/]", m.name, m.kind);
        let _ = writeln!(out, "    n{} -.-> m{k}", m.node);
    }
    out.push_str("    classDef executed fill:#a6d96a\n    classDef reused fill:#d9d9d9\n");
    out.push_str("    classDef failed fill:#f46d43\n    classDef skipped fill:#fee08b\n");
    if let Some(run) = run {
        for (i, n) in flow.nodes.iter().enumerate() {
            if let Some(s) = run.get(&*n.name) {
                let class = match s {
                    Status::Executed | Status::WouldRun => "executed",
                    Status::Reused | Status::WouldReuse => "reused",
                    Status::Failed => "failed",
                    Status::Skipped | Status::Cancelled | Status::Deferred => "skipped",
                };
                let _ = writeln!(out, "    class n{i} {class}");
            }
        }
    }
    out
}
