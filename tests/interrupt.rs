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
