//! The rest of the command line: `nodes`, `--help` exit codes, the README's flows.

use crate::util::Scratch;

#[test]
fn nodes_lists_signatures_and_docs() {
    let s = Scratch::new();
    let out = s.run(&["nodes"]).ok();
    assert!(out.stdout.contains("add(a: i64, b: i64) -> i64  [flowrun_nodes::demo]"), "{}", out.stdout);
    assert!(out.stdout.contains("    `a + b`."), "{}", out.stdout);
    assert!(out.stdout.contains("row_count(table: &Table) -> i64"), "{}", out.stdout);
    let json = s.run(&["--json", "nodes", "range"]).ok().json();
    assert_eq!(json[0]["name"], "range");
    assert_eq!(json[0]["signature"], "range(n: i64) -> Parallel<i64>");
    // the function's own tokens, then `+` and the digest of the code it can call (`#[node]`)
    let code = json[0]["code_version"].as_str().unwrap();
    let (own, calls) = code.split_once('+').unwrap_or_else(|| panic!("{code}"));
    assert_eq!((own.len(), calls.len()), (16, 16), "{code}");
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let s = Scratch::new();
    assert_eq!(s.run(&["run"]).code, 2);
    assert_eq!(s.run(&["--help"]).code, 0);
    let help = s.run(&["--help"]).stdout;
    assert!(help.contains("Exit codes:"), "{help}");
    let missing = s.run(&["run", "nope.toml"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("cannot read flow file nope.toml"), "{}", missing.stderr);
}

#[test]
fn flows_in_the_repository_are_valid() {
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    let s = Scratch::new();
    for entry in std::fs::read_dir(&flows).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = s.run(&["graph", path.to_str().unwrap()]);
            assert_eq!(out.code, 0, "{}: {}", path.display(), out.stderr);
        }
    }
}

#[test]
fn a_closed_stdout_ends_quietly() {
    // `flowrun nodes | head -1`: the reader goes away; flowrun must not panic about the broken pipe
    let s = crate::util::Scratch::new();
    let mut child =
        s.cmd().arg("nodes").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
