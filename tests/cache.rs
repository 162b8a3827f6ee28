//! Cache behaviour through the CLI: reruns, exact downstream sets, recompute/disable, corruption,
//! explain, `cache ls|gc|clear`, run records.

use crate::util::{FANOUT, Scratch};

#[test]
fn second_run_executes_nothing() {
    let s = Scratch::new();
    s.write("flow.toml", FANOUT);
    let first = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(first.nodes("executed").len(), 42);
    let second = s.run(&["--json", "run", "flow.toml"]).ok();
    assert!(second.nodes("executed").is_empty(), "{:?}", second.nodes("executed"));
    assert_eq!(second.nodes("reused").len(), 42);
    assert_eq!(first.json()["outputs"][0]["identity"], second.json()["outputs"][0]["identity"]);
}

#[test]
fn a_parameter_change_reruns_exactly_its_downstream() {
    let s = Scratch::new();
    s.write("flow.toml", FANOUT);
    s.run(&["--json", "run", "flow.toml"]).ok();
    // b only feeds `plus`: the squares are reused
    s.write("flow.toml", &FANOUT.replace("params = { b = 1 }", "params = { b = 2 }"));
    let out = s.run(&["--json", "run", "flow.toml"]).ok();
    let mut expected: Vec<String> = (0..20).map(|i| format!("plus[{i}]")).collect();
    expected.push("total".into());
    expected.sort();
    assert_eq!(out.nodes("executed"), expected);
    let plus = out.json()["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "plus[3]").unwrap().clone();
    assert_eq!(plus["reasons"], serde_json::json!([{"reason": "param_changed", "detail": "b"}]));
    // a config change that reaches everything
    let out = s.run(&["--json", "run", "flow.toml", "--set", "n=21"]).ok();
    assert_eq!(out.nodes("executed"), vec!["items", "plus[20]", "sq[20]", "total"], "only the new item's branch");
}

#[test]
fn explain_says_what_would_run_and_why_without_running() {
    let s = Scratch::new();
    s.write("flow.toml", FANOUT);
    s.run(&["run", "flow.toml"]).ok();
    s.write("flow.toml", &FANOUT.replace("params = { b = 1 }", "params = { b = 5 }"));
    let out = s.run(&["explain", "flow.toml"]).ok();
    assert!(out.stdout.contains("flow `fan`: 21 would run, 21 cached"), "{}", out.stdout);
    assert!(out.stdout.contains("would run plus[0]  (param `b` changed)"), "{}", out.stdout);
    assert!(out.stdout.contains("would run total  (upstream `plus` will run)"), "{}", out.stdout);
    // explain ran nothing: the real run still executes those nodes
    let run = s.run(&["--json", "run", "flow.toml", "--dry-run"]).ok();
    assert_eq!(run.nodes("would_run").len(), 21);
    let real = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(real.nodes("executed").len(), 21);
    let vv = s.run(&["explain", "flow.toml", "-vv", "--set", "n=3"]).ok();
    assert!(vv.stdout.contains("would run items  (config `n` changed)"), "{}", vv.stdout);
    assert!(vv.stdout.contains("      n = "), "-vv prints input identities: {}", vv.stdout);
}

#[test]
fn recompute_and_disable() {
    let flow = "[flow]\nname = \"modes\"\noutputs = [\"sum2\"]\n\n[nodes.base]\nfn = \"square\"\nparams = { x = 3 }\ncache = \"recompute\"\n\n[nodes.cheap]\nfn = \"noop\"\ninputs = { x = \"base\" }\ncache = \"disable\"\n\n[nodes.sum2]\nfn = \"add\"\ninputs = { a = \"cheap\", b = \"base\" }\n";
    let s = Scratch::new();
    s.write("flow.toml", flow);
    s.run(&["--json", "run", "flow.toml"]).ok();
    let out = s.run(&["--json", "run", "flow.toml"]).ok();
    // recompute and disable always run; sum2's inputs did not change, so it is reused
    assert_eq!(out.nodes("executed"), vec!["base", "cheap"]);
    assert_eq!(out.nodes("reused"), vec!["sum2"]);
    let ls = s.run(&["--json", "cache", "ls"]).ok();
    let nodes: Vec<String> =
        ls.json().as_array().unwrap().iter().map(|e| e["node"].as_str().unwrap().to_string()).collect();
    assert!(nodes.contains(&"base".to_string()) && !nodes.contains(&"cheap".to_string()), "{nodes:?}");
    let forced = s.run(&["--json", "run", "flow.toml", "--recompute", "sum2"]).ok();
    assert_eq!(forced.nodes("executed"), vec!["base", "cheap", "sum2"]);
}

fn big_csv(s: &Scratch) {
    let mut csv = String::from("id,name,value\n");
    for i in 0..5000 {
        csv.push_str(&format!("{i},site_{i},{}\n", i * 3));
    }
    s.write("data.csv", &csv);
}

#[test]
fn a_corrupted_cache_file_is_recomputed_never_served() {
    let s = Scratch::new();
    big_csv(&s);
    let flow = |n: i64| {
        format!(
            "[flow]\nname = \"corrupt\"\noutputs = [\"first\"]\n\n[nodes.sites]\nfn = \"read_csv\"\nparams = {{ path = \"data.csv\" }}\n\n[nodes.first]\nfn = \"head\"\ninputs = {{ table = \"sites\" }}\nparams = {{ n = {n} }}\n"
        )
    };
    s.write("flow.toml", &flow(10));
    s.run(&["run", "flow.toml"]).ok();
    // corrupt every blob file (the CSV table is larger than the inline limit, so it is a file)
    let mut corrupted = 0;
    for shard in std::fs::read_dir(s.path().join(".flowrun/cache/objects")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut bytes = std::fs::read(&p).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(&p, bytes).unwrap();
            corrupted += 1;
        }
    }
    assert!(corrupted >= 1);
    // `first` must run (n changed) and so must read `sites` from the cache: the corrupt blob is detected,
    // `sites` is computed again, and the result is right
    s.write("flow.toml", &flow(20));
    let out = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(out.nodes("executed"), vec!["first", "sites"]);
    assert!(out.json()["warnings"][0].as_str().unwrap().contains("was corrupt"), "{}", out.stdout);
    assert_eq!(out.json()["outputs"][0]["rows"], 20);
    let again = s.run(&["--json", "run", "flow.toml"]).ok();
    assert!(again.nodes("executed").is_empty());
}

#[test]
fn a_cache_entry_whose_blob_is_gone_is_evicted_and_recomputed() {
    let s = Scratch::new();
    big_csv(&s);
    let flow = |n: i64| {
        format!(
            "[flow]\nname = \"gone\"\noutputs = [\"first\"]\n\n[nodes.sites]\nfn = \"read_csv\"\nparams = {{ path = \"data.csv\" }}\n\n[nodes.most]\nfn = \"head\"\ninputs = {{ table = \"sites\" }}\nparams = {{ n = 4000 }}\n\n[nodes.first]\nfn = \"head\"\ninputs = {{ table = \"most\" }}\nparams = {{ n = {n} }}\n"
        )
    };
    s.write("flow.toml", &flow(10));
    s.run(&["run", "flow.toml"]).ok();
    // every blob file removed behind the cache's back (the CSV table is larger than the inline limit)
    let objects = s.path().join(".flowrun/cache/objects");
    std::fs::remove_dir_all(&objects).unwrap();
    s.write("flow.toml", &flow(20));
    let out = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(out.nodes("executed"), vec!["first", "most", "sites"]);
    // one restart: the first missing blob makes the cache forget every entry whose blob is gone
    let warnings = out.json()["warnings"].as_array().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].as_str().unwrap().contains("is missing from the cache"), "{}", out.stdout);
    // evicted: the next runs neither fail on it nor warn
    let again = s.run(&["--json", "run", "flow.toml"]).ok();
    assert!(again.nodes("executed").is_empty(), "{}", again.stdout);
    assert_eq!(again.json()["warnings"], serde_json::json!([]));
}

#[test]
fn cache_ls_gc_clear() {
    let s = Scratch::new();
    s.write("flow.toml", FANOUT);
    s.run(&["run", "flow.toml"]).ok();
    let ls = s.run(&["cache", "ls"]).ok();
    assert!(ls.stdout.contains("entries"), "{}", ls.stdout);
    assert!(ls.stdout.contains("total"), "{}", ls.stdout);
    s.write("flow.toml", &FANOUT.replace("params = { b = 1 }", "params = { b = 2 }"));
    s.run(&["run", "flow.toml"]).ok();
    let gc = s.run(&["--json", "cache", "gc", "--keep-days", "0"]).ok();
    assert_eq!(gc.json()["entries"], 21, "the superseded plus[*] and total results: {}", gc.stdout);
    let rerun = s.run(&["--json", "run", "flow.toml"]).ok();
    assert!(rerun.nodes("executed").is_empty(), "gc keeps what the latest run uses");
    s.run(&["cache", "clear"]).ok();
    let after = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(after.nodes("executed").len(), 42);
}

#[test]
fn runs_are_recorded() {
    let s = Scratch::new();
    s.write("flow.toml", FANOUT);
    let first = s.run(&["--json", "run", "flow.toml"]).ok();
    s.run(&["run", "flow.toml"]).ok();
    let runs = s.run(&["--json", "runs"]).ok();
    let runs = runs.json();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    assert_eq!(runs[0]["reused"], 42);
    assert_eq!(runs[1]["executed"], 42);
    let id = first.json()["run_id"].as_str().unwrap().to_string();
    let nodes = s.run(&["--json", "runs", "--run", &id]).ok();
    let nodes = nodes.json();
    assert_eq!(nodes.as_array().unwrap().len(), 42);
    let total = nodes.as_array().unwrap().iter().find(|n| n["node"] == "total").unwrap();
    assert_eq!(total["status"], "executed");
    assert!(total["key"].as_str().unwrap().len() == 64);
}
