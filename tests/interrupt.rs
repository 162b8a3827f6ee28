//! A run killed half-way leaves a cache the next run uses or ignores, but never misreads.

use std::time::{Duration, Instant};

use crate::util::Scratch;

#[test]
fn kill_during_a_run_then_rerun() {
    // a chain of 14 nodes of 600 ms: the run commits its cache every 5 s, so a kill at ~6.5 s leaves
    // committed work behind (and blob files of uncommitted work)
    let mut flow = String::from(
        "[flow]\nname = \"slow\"\noutputs = [\"s13\"]\n\n[nodes.s0]\nfn = \"sleep_ms\"\nparams = { x = 1, ms = 600 }\n",
    );
    for i in 1..14 {
        flow.push_str(&format!(
            "\n[nodes.s{i}]\nfn = \"sleep_ms\"\ninputs = {{ x = \"s{}\" }}\nparams = {{ ms = 600 }}\n",
            i - 1
        ));
    }
    let s = Scratch::new();
    s.write("flow.toml", &flow);
    let mut child = s.cmd().args(["run", "flow.toml", "-q"]).spawn().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(6500) {
        if child.try_wait().unwrap().is_some() {
            panic!("the run finished before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup at all
    child.wait().unwrap();
    let out = s.run(&["--json", "run", "flow.toml"]).ok();
    let reused = out.nodes("reused").len();
    let executed = out.nodes("executed").len();
    assert_eq!(reused + executed, 14);
    assert!(reused >= 5, "work committed before the kill is used: {reused} reused");
    assert!(executed >= 1);
    let again = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(again.nodes("reused").len(), 14);
}

fn chain(n: usize, ms: u64) -> String {
    let mut flow = format!(
        "[flow]\nname = \"chain\"\noutputs = [\"s{}\"]\n\n[nodes.s0]\nfn = \"sleep_ms\"\nparams = {{ x = 1, ms = {ms} }}\n",
        n - 1
    );
    for i in 1..n {
        flow.push_str(&format!(
            "\n[nodes.s{i}]\nfn = \"sleep_ms\"\ninputs = {{ x = \"s{}\" }}\nparams = {{ ms = {ms} }}\n",
            i - 1
        ));
    }
    flow
}

fn sigint(child: &std::process::Child) {
    let ok = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

#[test]
fn a_first_ctrl_c_finishes_the_running_nodes_and_a_second_stops_at_once() {
    let s = Scratch::new();
    s.write("flow.toml", &chain(8, 500));
    // first Ctrl-C: the node running then finishes and is cached, no other starts, exit 130
    let child = s
        .cmd()
        .args(["--json", "run", "flow.toml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    sigint(&child);
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(t.elapsed() < Duration::from_millis(1500), "it stopped after the running node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("finishing the running nodes") && stderr.contains("run again to go on"), "{stderr}");
    let rerun = s.run(&["--json", "run", "flow.toml"]).ok();
    let reused = rerun.nodes("reused").len();
    assert!((2..=4).contains(&reused), "the nodes finished before and during the Ctrl-C are cached: {reused}");

    // a second Ctrl-C exits at once, and the cache is still whole
    let s = Scratch::new();
    s.write("flow.toml", &chain(8, 800));
    let child = s.cmd().args(["run", "flow.toml", "-q"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    sigint(&child);
    std::thread::sleep(Duration::from_millis(100));
    sigint(&child);
    let t = Instant::now();
    let mut child = child;
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(t.elapsed() < Duration::from_millis(500), "the second Ctrl-C does not wait for the node");
    let rerun = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(rerun.nodes("reused").len() + rerun.nodes("executed").len(), 8);
}
