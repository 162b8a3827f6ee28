//! A node's code version covers the code it can call: a real workspace of two node crates is built with
//! cargo, run, a *helper* of one crate is edited (not the node function), and the rebuilt binary re-runs
//! exactly that crate's node, saying why.
//!
//! The scratch workspace uses this repository's engine by path and its `Cargo.lock` (so it builds offline
//! with the same versions). Its target directory sits beside this test binary's, so only the first run on
//! a machine compiles the engine's dependencies (a few minutes; later runs take seconds).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::Scratch;

const APP: &str = r#"
use std::sync::Arc;
use flowrun_engine::flow::{self, BuildOptions, SourceFile};
use flowrun_engine::schedule::{self, RunOptions};

fn main() {
    helpers_crate::link();
    other_crate::link();
    let mut args = std::env::args().skip(1);
    let (cache, mode) = (args.next().unwrap(), args.next().unwrap());
    let src = "[flow]\nname = \"e2e\"\noutputs = [\"a_value\", \"b_value\"]\n[config]\nx = 20\n";
    let flow = flow::build(SourceFile::new("e2e.toml", src), &BuildOptions::default())
        .unwrap_or_else(|d| panic!("{}", d.render(false)));
    let store = Arc::new(flowrun_cache::Store::open(cache).unwrap());
    let opts = RunOptions { jobs: 1, store: Some(store), dry_run: mode == "explain", ..RunOptions::default() };
    let report = schedule::run(&flow, &opts).unwrap();
    for n in &report.nodes {
        let reasons: Vec<String> = n.reasons.iter().map(|r| r.to_string()).collect();
        println!("{}\t{}\t{}", n.name, n.status.as_str(), reasons.join("; "));
    }
}
"#;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The scratch workspace: `helpers_crate` (node `a_value`, which calls a helper in another module),
/// `other_crate` (node `b_value`) and `app` (runs the flow of both).
fn workspace(root: &Path, repo: &Path) {
    let engine = repo.join("engine").display().to_string();
    let cache = repo.join("cache").display().to_string();
    write(
        &root.join("Cargo.toml"),
        "[workspace]\nmembers = [\"helpers_crate\", \"other_crate\", \"app\"]\nresolver = \"3\"\n",
    );
    std::fs::copy(repo.join("Cargo.lock"), root.join("Cargo.lock")).unwrap();
    let manifest = |name: &str, deps: &str| {
        format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\n{deps}")
    };
    let engine_dep = format!("flowrun-engine = {{ path = \"{engine}\" }}\n");
    write(&root.join("helpers_crate/Cargo.toml"), &manifest("helpers_crate", &engine_dep));
    write(
        &root.join("helpers_crate/src/lib.rs"),
        "mod helper;\n\n#[flowrun_engine::node]\npub fn a_value(x: i64) -> i64 {\n    helper::adjust(x)\n}\n\npub fn link() {}\n",
    );
    write(&root.join("helpers_crate/src/helper.rs"), "pub fn adjust(x: i64) -> i64 {\n    x + 1\n}\n");
    write(&root.join("other_crate/Cargo.toml"), &manifest("other_crate", &engine_dep));
    write(
        &root.join("other_crate/src/lib.rs"),
        "#[flowrun_engine::node]\npub fn b_value(x: i64) -> i64 {\n    x * 2\n}\n\npub fn link() {}\n",
    );
    let app_deps = format!(
        "{engine_dep}flowrun-cache = {{ path = \"{cache}\" }}\nhelpers_crate = {{ path = \"../helpers_crate\" }}\nother_crate = {{ path = \"../other_crate\" }}\n"
    );
    write(&root.join("app/Cargo.toml"), &manifest("app", &app_deps));
    write(&root.join("app/src/main.rs"), APP);
}

fn build(root: &Path, target: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet", "-p", "app"])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "the scratch workspace did not build:\n{}", String::from_utf8_lossy(&out.stderr));
    target.join("debug/app")
}

/// `name -> (status, reasons)` of one run of the app.
fn run(app: &Path, cache: &Path, mode: &str) -> Vec<(String, String, String)> {
    let out = Command::new(app).arg(cache).arg(mode).output().expect("the app runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut p = l.split('\t').map(str::to_string);
            (p.next().unwrap(), p.next().unwrap(), p.next().unwrap_or_default())
        })
        .collect()
}

fn status<'a>(runs: &'a [(String, String, String)], node: &str) -> (&'a str, &'a str) {
    let r = runs.iter().find(|r| r.0 == node).unwrap_or_else(|| panic!("no {node} in {runs:?}"));
    (&r.1, &r.2)
}

#[test]
fn editing_a_helper_reruns_the_nodes_of_its_crate_and_no_other() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // beside the test binary's target directory: target/release/flowrun -> target/code-version-e2e
    let target = Path::new(env!("CARGO_BIN_EXE_flowrun")).parent().unwrap().parent().unwrap().join("code-version-e2e");
    let s = Scratch::new();
    let root = s.path().join("ws");
    workspace(&root, repo);
    let cache = s.path().join("cache");

    let app = build(&root, &target);
    let first = run(&app, &cache, "run");
    assert_eq!(status(&first, "a_value").0, "executed");
    assert_eq!(status(&first, "b_value").0, "executed");
    assert_eq!(status(&run(&app, &cache, "run"), "a_value").0, "reused", "nothing changed");

    // a fix in the helper, not in the node function
    write(&root.join("helpers_crate/src/helper.rs"), "pub fn adjust(x: i64) -> i64 {\n    x + 2\n}\n");
    let app = build(&root, &target);
    let explain = run(&app, &cache, "explain");
    let (a, why) = status(&explain, "a_value");
    assert_eq!(a, "would_run", "{explain:?}");
    assert!(why.starts_with("code changed") && why.contains("code the function can call"), "{why}");
    assert_eq!(status(&explain, "b_value").0, "would_reuse", "another crate's node keeps its result");
    let second = run(&app, &cache, "run");
    assert_eq!(status(&second, "a_value").0, "executed");
    assert_eq!(status(&second, "b_value").0, "reused");
}
