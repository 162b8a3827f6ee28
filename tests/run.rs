//! Running flows: sequential == parallel, fan-out/fan-in, variants, parameterize, failures, checks.

use crate::util::{FANOUT, Scratch};

fn total(out: &crate::util::Out) -> serde_json::Value {
    out.json()["outputs"][0].clone()
}

#[test]
fn parallel_equals_sequential_on_a_fan_out() {
    let s = Scratch::new();
    s.write("flow.toml", FANOUT);
    let seq = s.run(&["--json", "run", "flow.toml", "--jobs", "1", "--no-cache"]).ok();
    let par = s.run(&["--json", "run", "flow.toml", "--jobs", "4", "--no-cache"]).ok();
    assert_eq!(seq.nodes("executed"), par.nodes("executed"));
    assert_eq!(seq.nodes("executed").len(), 1 + 20 + 20 + 1);
    // identical result identity (hash of the same key chain) and the same value
    assert_eq!(total(&seq)["identity"], total(&par)["identity"]);
    let s2 = Scratch::new();
    s2.write("flow.toml", FANOUT);
    let a = s2.run(&["--json", "run", "flow.toml", "--jobs", "1"]).ok();
    let s3 = Scratch::new();
    s3.write("flow.toml", FANOUT);
    let b = s3.run(&["--json", "run", "flow.toml", "--jobs", "3"]).ok();
    assert_eq!(total(&a)["identity"], total(&b)["identity"], "same content hash with the cache on");
}

#[test]
fn default_command_and_human_summary() {
    let s = Scratch::new();
    s.write("flow.toml", FANOUT);
    let out = s.run(&["flow.toml", "-j", "2"]).ok();
    assert!(
        out.stdout.contains("ok flow `fan`: 42 node runs: 42 ran, 0 cached, 0 failed, 0 skipped"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains('\x1b') && !out.stderr.contains('\x1b'), "NO_COLOR: no escape codes");
}

#[test]
fn config_variants_pick_the_implementation() {
    let flow = r#"[flow]
name = "variants"
outputs = ["result"]

[config]
mode = "square"

[[nodes.result.variants]]
when = { mode = "square" }
fn = "square"
params = { x = 7 }

[[nodes.result.variants]]
when = { mode = "add" }
fn = "add"
params = { a = 7, b = 7 }
"#;
    let s = Scratch::new();
    s.write("flow.toml", flow);
    let sq = s.run(&["--json", "run", "flow.toml"]).ok();
    let add = s.run(&["--json", "run", "flow.toml", "--set", "mode=\"add\""]).ok();
    assert_ne!(total(&sq)["identity"], total(&add)["identity"]);
    let none = s.run(&["run", "flow.toml", "--set", "mode=\"cube\""]);
    assert_eq!(none.code, 2);
    assert!(
        none.stderr.contains("error[no-variant]: no variant of node `result` matches the config"),
        "{}",
        none.stderr
    );
    // a variant with both `fn` and `sql` says so; neither silently wins
    s.write("flow.toml", &flow.replace("fn = \"square\"", "fn = \"square\"\nsql = \"SELECT 49 AS x\""));
    let both = s.run(&["run", "flow.toml"]);
    assert_eq!(both.code, 2, "{}", both.stderr);
    assert!(both.stderr.contains("node `result` has both `fn` and `sql`"), "{}", both.stderr);
}

#[test]
fn parameterize_makes_one_node_per_instance() {
    let flow = r#"[flow]
name = "param"

[nodes.square.parameterize.two]
params = { x = 2 }

[nodes.square.parameterize.three]
params = { x = 3 }
"#;
    let s = Scratch::new();
    s.write("flow.toml", flow);
    let out = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(out.nodes("executed"), vec!["three", "two"]);
}

#[test]
fn a_failing_item_skips_its_downstream_and_lets_the_rest_finish() {
    let flow = r#"[flow]
name = "failing"
outputs = ["total", "other"]

[config]
n = 6

[nodes.items]
fn = "range"

[nodes.checked]
fn = "fail_on"
inputs = { x = "items" }
params = { fail_on = 4, message = "four is not allowed" }

[nodes.total]
fn = "sum"
inputs = { values = "checked" }

[nodes.other]
fn = "square"
params = { x = 9 }
"#;
    let s = Scratch::new();
    s.write("flow.toml", flow);
    for jobs in ["1", "2"] {
        let out = s.run(&["--json", "run", "flow.toml", "--no-cache", "-j", jobs]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert_eq!(out.nodes("failed"), vec!["checked[4]"]);
        assert_eq!(out.nodes("skipped"), vec!["total"]);
        assert!(out.nodes("executed").contains(&"other".to_string()));
        assert!(out.nodes("executed").contains(&"checked[5]".to_string()));
        let failed =
            out.json()["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "checked[4]").unwrap().clone();
        assert_eq!(failed["error"][0], "four is not allowed (x = 4)");
        assert!(failed["inputs"].as_array().unwrap().iter().any(|i| i[0] == "x"), "input keys are reported");
    }
    let human = s.run(&["run", "flow.toml", "--no-cache", "-j", "1"]);
    assert!(human.stderr.contains("error: node `checked[4]` failed"), "{}", human.stderr);
    assert!(human.stderr.contains("four is not allowed (x = 4)"), "{}", human.stderr);
    assert!(human.stderr.contains("inputs: x="), "{}", human.stderr);
    assert!(human.stderr.contains("skipped (upstream failed): total"), "{}", human.stderr);
}

#[test]
fn fail_fast_cancels_the_rest() {
    let flow = "[flow]\nname = \"ff\"\noutputs = [\"total\"]\n[config]\nn = 50\n[nodes.items]\nfn = \"range\"\n[nodes.checked]\nfn = \"fail_on\"\ninputs = { x = \"items\" }\nparams = { fail_on = 0, message = \"no\" }\n[nodes.total]\nfn = \"sum\"\ninputs = { values = \"checked\" }\n";
    let s = Scratch::new();
    s.write("flow.toml", flow);
    let out = s.run(&["--json", "run", "flow.toml", "--fail-fast", "-j", "1"]);
    assert_eq!(out.code, 1);
    assert!(!out.nodes("cancelled").is_empty());
}

#[test]
fn data_checks_fail_or_warn() {
    let s = Scratch::new();
    let mut csv = String::from("id,area\n");
    for i in 0..10 {
        csv.push_str(&format!("{i},{}\n", i * 10));
    }
    s.write("data.csv", &csv);
    let flow = |severity: &str| {
        format!(
            "[flow]\nname = \"checks\"\noutputs = [\"sites\"]\n\n[nodes.sites]\nfn = \"read_csv\"\nparams = {{ path = \"data.csv\" }}\n\n[[nodes.sites.checks]]\ncolumn = \"area\"\nrange = [0, 50]\nseverity = \"{severity}\"\n\n[[nodes.sites.checks]]\nrows = [1, 100]\n"
        )
    };
    s.write("flow.toml", &flow("error"));
    let out = s.run(&["run", "flow.toml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("check failed: `sites` column `area` has 4 values outside [0, 50] (e.g. 60)"),
        "{}",
        out.stderr
    );
    s.write("flow.toml", &flow("warn"));
    let out = s.run(&["run", "flow.toml"]).ok();
    assert!(
        out.stderr.contains("warning: sites: check failed: `sites` column `area` has 4 values outside"),
        "{}",
        out.stderr
    );
}

#[test]
fn file_inputs_are_identified_by_content() {
    let s = Scratch::new();
    s.write("data.csv", "id\n1\n2\n");
    s.write("flow.toml", "[flow]\nname = \"files\"\noutputs = [\"n\"]\n\n[nodes.sites]\nfn = \"read_csv\"\nparams = { path = \"data.csv\" }\n\n[nodes.n]\nfn = \"row_count\"\ninputs = { table = \"sites\" }\n");
    s.run(&["--json", "run", "flow.toml"]).ok();
    // touch without change: nothing runs
    let f = std::fs::File::options().write(true).open(s.path().join("data.csv")).unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    let out = s.run(&["--json", "run", "flow.toml"]).ok();
    assert!(out.nodes("executed").is_empty(), "{:?}", out.nodes("executed"));
    // change the content: both run
    s.write("data.csv", "id\n1\n2\n3\n");
    let out = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(out.nodes("executed"), vec!["n", "sites"]);
    let sites = out.json()["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "sites").unwrap().clone();
    assert_eq!(sites["reasons"][0]["reason"], "param_changed");
}

#[test]
fn tag_selects_the_tagged_nodes_and_what_they_need() {
    let flow = r#"[flow]
name = "tags"
outputs = ["total"]

[nodes.a]
fn = "add"
params = { a = 1, b = 2 }
tags = { layer = "staging" }

[nodes.b]
fn = "add"
params = { a = 3, b = 4 }
tags = { kind = "mine" }

[nodes.c]
fn = "add"
inputs = { a = "a", b = "a" }
tags = { layer = "prepared" }

[nodes.total]
fn = "add"
inputs = { a = "b", b = "c" }
"#;
    let s = Scratch::new();
    s.write("flow.toml", flow);
    let staging = s.run(&["--json", "run", "flow.toml", "--tag", "layer=staging", "--no-cache"]).ok();
    assert_eq!(staging.nodes("executed"), ["a"]);
    // a tagged node brings what it needs; repeated tags select nodes with any of them
    let both =
        s.run(&["--json", "run", "flow.toml", "--tag", "layer=prepared", "--tag", "kind=mine", "--no-cache"]).ok();
    assert_eq!(both.nodes("executed"), ["a", "b", "c"]);
    // `add` is tagged kind=demo by its #[node]; the file's kind = "mine" overrides it on `b`, which is
    // not selected, only run because `total` needs it
    let demo = s.run(&["--json", "run", "flow.toml", "--tag", "kind=demo", "--tag", "layer=none", "--no-cache"]).ok();
    assert_eq!(demo.nodes("executed"), ["a", "b", "c", "total"]);
    let mine = s.run(&["--json", "run", "flow.toml", "--tag", "kind=mine", "--no-cache"]).ok();
    assert_eq!(mine.nodes("executed"), ["b"], "kind=demo of `b`'s function is overridden");
    let none = s.run(&["run", "flow.toml", "--tag", "layer=gold", "--no-cache"]);
    assert_eq!(none.code, 2, "a command-line error: nothing ran");
    assert!(none.stderr.contains("--tag layer=gold: no node of the flow has it"), "{}", none.stderr);
    assert!(none.stderr.contains("layer=prepared, layer=staging"), "{}", none.stderr);
}
