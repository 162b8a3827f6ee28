//! `flowrun graph`: DOT (checked with Graphviz's `dot`, which must be installed) and Mermaid, with the
//! run overlay.

use crate::util::{FANOUT, Scratch};

#[test]
fn dot_output_has_clusters_shapes_and_parses() {
    let s = Scratch::new();
    s.write("flow.toml", FANOUT);
    let out = s.run(&["graph", "flow.toml", "--dot"]).ok();
    let dot = out.stdout;
    assert!(dot.starts_with("digraph \"fan\" {"), "{dot}");
    assert!(dot.contains("\"items\" [shape=invtrapezium"), "{dot}");
    assert!(dot.contains("\"total\" [shape=trapezium"), "{dot}");
    assert!(dot.contains("subgraph \"cluster_1\""), "{dot}");
    assert!(dot.contains("\"items\" -> \"sq\" [style=dashed, label=\"each\"]"), "{dot}");
    assert!(dot.contains("\"plus\" -> \"total\" [style=bold, label=\"collect\"]"), "{dot}");
    // Graphviz must accept it (`.ci/run` installs it; without `dot` this test fails rather than pass unchecked)
    let mut child = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("Graphviz's `dot` is needed by this test: apt-get install graphviz");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(dot.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "dot rejected the graph: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
}

#[test]
fn mermaid_output_and_last_run_overlay() {
    let s = Scratch::new();
    s.write("flow.toml", FANOUT);
    let m = s.run(&["graph", "flow.toml", "--mermaid"]).ok().stdout;
    assert!(m.starts_with("flowchart LR\n"), "{m}");
    assert!(m.contains("subgraph b1[\"each item of items\"]"), "{m}");
    assert!(m.contains("n0[/\"items<br/>range()\"\\]"), "fan-out shape: {m}");
    assert!(m.contains("n3[\\\"total<br/>sum()\"/]"), "collect shape: {m}");
    assert!(m.contains("n0 -.->|each| n1"), "{m}");
    assert!(m.contains("n2 ==>|collect| n3"), "{m}");
    let none = s.run(&["graph", "flow.toml", "--last-run"]);
    assert_eq!(none.code, 3);
    assert!(none.stderr.contains("has no recorded run"), "{}", none.stderr);
    s.run(&["run", "flow.toml"]).ok();
    s.write("flow.toml", &FANOUT.replace("params = { b = 1 }", "params = { b = 2 }"));
    s.run(&["run", "flow.toml"]).ok();
    let m = s.run(&["graph", "flow.toml", "--mermaid", "--last-run"]).ok().stdout;
    assert!(m.contains("class n0 reused"), "{m}");
    assert!(m.contains("class n2 executed"), "{m}");
    let d = s.run(&["graph", "flow.toml", "--last-run"]).ok().stdout;
    assert!(d.contains("\"items\" [shape=invtrapezium, fillcolor=\"#d9d9d9\""), "{d}");
    assert!(d.contains("\"plus\" [shape=box, fillcolor=\"#a6d96a\""), "{d}");
}
