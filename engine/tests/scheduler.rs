//! The scheduler on real flows: sequential == parallel, fan-out/fan-in (nested), caching and its reasons,
//! failures and their isolation, a 100,000-node chain.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flowrun_cache::Store;
use flowrun_engine::flow::{self, BuildOptions, SourceFile};
use flowrun_engine::schedule::{self, RunOptions, RunReport, RunStatus};
use flowrun_engine::{Collect, Parallel, Reason, Status, Value, node};

mod common;

static SLOW_CALLS: AtomicUsize = AtomicUsize::new(0);

#[node]
fn offset(square: i64, shift: i64) -> anyhow::Result<i64> {
    if square == 49 && shift == 666 {
        anyhow::bail!("seven squared is unlucky");
    }
    Ok(square + shift)
}

#[node]
fn total(offset: Collect<i64>) -> i64 {
    offset.iter().sum()
}

/// Nested fan-out: for each number, the letters of `word`, each repeated `number` times.
#[node]
fn letters(numbers: i64, word: &String) -> Parallel<String> {
    word.chars().map(|c| c.to_string().repeat(numbers as usize)).collect()
}

#[node]
fn upper(letters: String) -> String {
    letters.to_uppercase()
}

#[node]
fn word_of(upper: Collect<String>) -> String {
    upper.concat()
}

#[node]
fn words(word_of: Collect<String>) -> Vec<String> {
    word_of.into_inner()
}

#[node]
fn slow_double(x: i64) -> i64 {
    SLOW_CALLS.fetch_add(1, Ordering::SeqCst);
    x * 2
}

#[node(tags(layer = "staging", owner = "engine"))]
fn tagged(x: i64) -> i64 {
    x
}

#[node]
fn independent(x: i64) -> i64 {
    x + 1
}

#[node]
fn panics(x: i64) -> i64 {
    if x > 0 {
        panic!("boom at {x}");
    }
    x
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, Value)]
#[value(label = "name")]
struct Site {
    name: String,
    size: i64,
}

#[node]
fn sites() -> Parallel<Site> {
    vec![Site { name: "alpha".into(), size: 3 }, Site { name: "beta".into(), size: 5 }].into()
}

#[node]
fn site_size(sites: &Site) -> i64 {
    sites.size
}

#[node]
fn sizes(site_size: Collect<i64>) -> Vec<i64> {
    site_size.into_inner()
}

fn build(src: &str, set: &[(&str, &str)]) -> flowrun_engine::Flow {
    let set_config = set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    build_with(src, BuildOptions { set_config, ..BuildOptions::default() })
}

fn build_with(src: &str, opts: BuildOptions<'_>) -> flowrun_engine::Flow {
    flow::build(SourceFile::new("test.toml", src), &opts).unwrap_or_else(|d| panic!("{}", d.render(false)))
}

/// A store in a directory of its own, removed when the directory is dropped.
fn store() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    (dir, store)
}

fn run(f: &flowrun_engine::Flow, jobs: usize, store: Option<Arc<Store>>) -> RunReport {
    schedule::run(f, &RunOptions { jobs, store, ..RunOptions::default() }).unwrap()
}

fn out<T: Value + Clone>(r: &RunReport, node: &str) -> T {
    r.output(node)[0].value.as_ref().unwrap().get().unwrap().downcast_ref::<T>().unwrap().clone()
}

const FANOUT: &str = r#"
[flow]
name = "fanout"
outputs = ["total"]
[config]
n = 10
shift = 1
"#;

#[test]
fn fan_out_and_in_sequential_equals_parallel() {
    let f = build(FANOUT, &[]);
    let seq = run(&f, 1, None);
    let par = run(&f, 4, None);
    let expected: i64 = (1..=10).map(|i| i * i + 1).sum();
    assert_eq!(out::<i64>(&seq, "total"), expected);
    assert_eq!(out::<i64>(&par, "total"), expected);
    assert_eq!(seq.count(Status::Executed), 1 + 10 + 10 + 1);
    assert_eq!(seq.names(Status::Executed), par.names(Status::Executed));
    assert!(seq.names(Status::Executed).contains(&"square[9]".to_string()), "items are named by 0-based index");
}

#[test]
fn nested_fan_out_collects_in_item_order() {
    let src = r#"
[flow]
name = "nested"
outputs = ["words"]
[config]
n = 2
word = "abc"
"#;
    let f = build(src, &[]);
    for jobs in [1, 3] {
        let r = run(&f, jobs, None);
        assert_eq!(r.status, RunStatus::Ok);
        // letters fan out inside numbers' fan-out: each number gets each letter repeated number times
        assert_eq!(out::<Vec<String>>(&r, "words"), vec!["ABC".to_string(), "AABBCC".to_string()]);
        // items without a label are named by index; strings by themselves
        assert!(r.names(Status::Executed).contains(&"upper[1/cc]".to_string()));
        assert_eq!(r.count(Status::Executed), 1 + 2 + 6 + 2 + 1);
    }
}

#[test]
fn labelled_items_and_struct_values() {
    let src = "[flow]\nname = \"sites\"\noutputs = [\"sizes\"]\n";
    let f = build(src, &[]);
    let r = run(&f, 2, None);
    assert_eq!(out::<Vec<i64>>(&r, "sizes"), vec![3, 5]);
    assert!(r.names(Status::Executed).contains(&"site_size[beta]".to_string()));
}

#[test]
fn a_stored_target_is_handed_on_from_the_store_and_one_without_a_store_from_memory() {
    // `square` is a target that `offset` reads: its results, once stored, are pointers into the store (the
    // memory goes with the consumers), loaded back when asked for
    let src = FANOUT.replace(r#"outputs = ["total"]"#, r#"outputs = ["square", "total"]"#);
    let f = build(&src, &[]);
    let (_dir, store) = store();
    let r = run(&f, 2, Some(store.clone()));
    let squares = r.output("square");
    assert_eq!(squares.len(), 10);
    let third = squares[2].value.as_ref().unwrap();
    assert_eq!(*third.load().unwrap().downcast_ref::<i64>().unwrap(), 9);
    // the proof that it is read from the store: gone from there, it cannot be loaded
    let content = store.lookup(&r.nodes.iter().find(|n| &*n.name == "square[2]").unwrap().key.unwrap()).unwrap();
    store.evict(&content.unwrap().content).unwrap();
    assert!(third.load().is_err(), "a pointer into the store, not a copy in memory");
    // a rerun reuses every target but the evicted one: each output is a pointer of its own, and loads
    let again = run(&f, 2, Some(store.clone()));
    assert_eq!(again.names(Status::Executed), ["square[2]"]);
    assert_eq!(out::<i64>(&again, "total"), out::<i64>(&r, "total"));
    assert_eq!(*again.output("square")[3].value.as_ref().unwrap().load().unwrap().downcast_ref::<i64>().unwrap(), 16);
    // without a store, the value is kept in memory
    let r = run(&f, 2, None);
    assert_eq!(*r.output("square")[2].value.as_ref().unwrap().load().unwrap().downcast_ref::<i64>().unwrap(), 9);
}

#[test]
fn second_run_executes_nothing_and_changes_rerun_exactly_downstream() {
    let (_dir, store) = store();
    let f = build(FANOUT, &[]);
    let first = run(&f, 2, Some(store.clone()));
    assert_eq!(first.count(Status::Reused), 0);
    let second = run(&f, 2, Some(store.clone()));
    assert_eq!(second.count(Status::Executed), 0, "{:?}", second.names(Status::Executed));
    assert_eq!(out::<i64>(&second, "total"), out::<i64>(&first, "total"));

    // shift only feeds `offset`: squares are reused, offsets and total re-run
    let f2 = build(FANOUT, &[("shift", "2")]);
    let third = run(&f2, 2, Some(store.clone()));
    let executed = third.names(Status::Executed);
    assert_eq!(executed.len(), 11, "{executed:?}");
    assert!(executed.iter().all(|n| n.starts_with("offset[") || n == "total"), "{executed:?}");
    let why = third.nodes.iter().find(|n| &*n.name == "offset[2]").unwrap();
    assert_eq!(why.reasons[..], [Reason::ConfigChanged("shift".into())]);
    let total = third.nodes.iter().find(|n| &*n.name == "total").unwrap();
    assert_eq!(total.reasons[..], [Reason::UpstreamChanged("offset".into())]);

    // more items: only the new item's branch and the fan-in run
    let f3 = build(FANOUT, &[("shift", "2"), ("n", "11")]);
    let fourth = run(&f3, 1, Some(store.clone()));
    let executed = fourth.names(Status::Executed);
    assert_eq!(executed, vec!["numbers", "offset[10]", "square[10]", "total"], "{executed:?}");
}

#[test]
fn forced_nodes_run_every_time_but_downstream_of_the_same_result_is_reused() {
    for (mode, forced) in [("recompute", flow::CacheMode::Recompute), ("disable", flow::CacheMode::Disable)] {
        let (_dir, store) = store();
        let src = format!(
            r#"
[flow]
name = "{mode}"
outputs = ["independent"]
[nodes.independent]
inputs = {{ x = "slow_double" }}
[nodes.slow_double]
cache = "{mode}"
params = {{ x = 4 }}
"#
        );
        let f = build(&src, &[]);
        run(&f, 1, Some(store.clone()));
        let r = run(&f, 1, Some(store.clone()));
        // slow_double is forced to run, produces the same bytes, so its consumer is reused (early cutoff)
        assert_eq!(r.names(Status::Executed), vec!["slow_double"]);
        assert_eq!(r.nodes.iter().find(|n| &*n.name == "slow_double").unwrap().reasons[..], [Reason::Forced(forced)]);
        assert_eq!(r.names(Status::Reused), vec!["independent"]);
        // recomputed results are stored, disabled ones are not
        let stored = store.entries().unwrap().iter().any(|e| e.entry.node == "slow_double");
        assert_eq!(stored, mode == "recompute", "{mode}");
    }
}

#[test]
fn failure_skips_downstream_and_lets_independent_branches_finish() {
    let src = r#"
[flow]
name = "failing"
outputs = ["total", "independent"]
[config]
n = 8
shift = 666
[nodes.independent]
params = { x = 1 }
"#;
    let f = build(src, &[]);
    for jobs in [1, 2] {
        let r = run(&f, jobs, None);
        assert_eq!(r.status, RunStatus::Failed);
        assert_eq!(r.names(Status::Failed), vec!["offset[6]"]);
        let failed = r.nodes.iter().find(|n| &*n.name == "offset[6]").unwrap();
        assert_eq!(failed.error, vec!["seven squared is unlucky"]);
        assert!(failed.inputs.iter().any(|(p, _)| &**p == "square"), "failure report lists input keys");
        assert_eq!(r.names(Status::Skipped), vec!["total"]);
        assert_eq!(out::<i64>(&r, "independent"), 2);
        // the other items completed
        assert_eq!(r.count(Status::Executed), 1 + 8 + 7 + 1);
    }
}

#[test]
fn a_collector_with_on_item_error_skip_takes_the_items_that_succeeded() {
    let src = format!("{FANOUT}[nodes.total]\non_item_error = \"skip\"\n");
    let f = build(&src, &[("n", "8"), ("shift", "666")]);
    let (_dir, store) = store();
    for jobs in [1, 2] {
        let r = run(&f, jobs, Some(store.clone()));
        assert_eq!(r.status, RunStatus::Partial, "{:?}", r.names(Status::Failed));
        assert_eq!(r.names(Status::Failed), vec!["offset[6]"]);
        assert_eq!(r.left_out(), vec!["offset[6]"]);
        // 1..=8 squared plus 666, without 7 (item 6)
        let expected: i64 = (1..=8).filter(|i| *i != 7).map(|i| i * i + 666).sum();
        assert_eq!(out::<i64>(&r, "total"), expected);
        let total = r.nodes.iter().find(|n| &*n.name == "total").unwrap();
        assert!(total.warnings.iter().any(|w| w.contains("left out 1 failed item result(s): offset[6]")), "{total:?}");
    }
    // every item failing leaves nothing to take: the collector is skipped and the run failed
    let none = r#"
[flow]
name = "none"
outputs = ["total"]
[config]
n = 8
shift = 666
[nodes.square]
fn = "offset"
inputs = { square = "numbers" }
[nodes.offset]
fn = "panics"
inputs = { x = "square" }
[nodes.total]
on_item_error = "skip"
"#;
    let r = run(&build(none, &[]), 1, None);
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(r.names(Status::Skipped), vec!["total"]);
}

#[test]
fn on_item_error_on_a_node_that_collects_nothing_is_an_error() {
    let src = "[flow]\nname = \"x\"\n[config]\nx = 1\n[nodes.independent]\non_item_error = \"skip\"\n";
    let Err(err) = flow::build(SourceFile::new("test.toml", src), &BuildOptions::default()) else { panic!("built") };
    let err = err.render(false);
    assert!(err.contains("node `independent` collects no fan-out, so `on_item_error` has nothing to do"), "{err}");
    assert!(err.contains("test.toml:6:17"), "{err}");
}

/// The threads a node's own parallel loops would use.
#[node]
fn loop_threads(x: i64) -> i64 {
    let _ = x;
    rayon::current_num_threads() as i64
}

#[test]
fn jobs_bound_the_threads_of_the_nodes_own_parallel_loops() {
    let f = build("[flow]\nname = \"t\"\noutputs = [\"loop_threads\"]\n[config]\nx = 1\n", &[]);
    for jobs in [1, 2] {
        assert_eq!(out::<i64>(&run(&f, jobs, None), "loop_threads"), jobs as i64);
    }
}

#[test]
fn shards_compute_every_item_once_and_the_final_run_only_the_fan_in() {
    let f = build(FANOUT, &[]);
    let (_dir, store) = store();
    let shard = |k| {
        let opts = RunOptions { jobs: 2, store: Some(store.clone()), shard: Some((k, 2)), ..RunOptions::default() };
        schedule::run(&f, &opts).unwrap()
    };
    let (a, b) = (shard(0), shard(1));
    for (r, first) in [(&a, 0), (&b, 1)] {
        assert_eq!(r.status, RunStatus::Ok);
        assert_eq!(r.names(Status::Deferred), vec!["total"], "the fan-in is left to the final run");
        // items 0, 2, 4, ... in shard 0; 1, 3, ... in shard 1
        let squares: Vec<i64> = r
            .names(Status::Executed)
            .iter()
            .filter(|n| n.starts_with("square["))
            .map(|n| n[7..n.len() - 1].parse().unwrap())
            .collect();
        assert_eq!(squares.len(), 5);
        assert!(squares.iter().all(|i| (i - first) % 2 == 0), "{squares:?}");
    }
    let last = run(&f, 2, Some(store.clone()));
    assert_eq!(last.names(Status::Executed), vec!["total"], "every item came from the shards");
    assert_eq!(out::<i64>(&last, "total"), (1..=10).map(|i| i * i + 1).sum::<i64>());
}

#[test]
fn panics_are_node_failures() {
    let src = "[flow]\nname = \"p\"\noutputs = [\"panics\"]\n[config]\nx = 3\n";
    let r = run(&build(src, &[]), 1, None);
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(r.nodes[0].error, vec!["node panicked: boom at 3"]);
}

/// A value type whose own code panics when it is hashed or encoded (a bug in a user's `Value` impl).
#[derive(Clone, Debug)]
struct Fragile(i64);

impl Value for Fragile {
    fn encode(&self, _out: &mut Vec<u8>) -> Result<(), flowrun_engine::CodecError> {
        panic!("cannot encode {}", self.0)
    }
    fn decode(_bytes: &[u8]) -> Result<Self, flowrun_engine::CodecError> {
        unreachable!("never encoded")
    }
    fn identity(&self) -> Option<Result<blake3::Hash, String>> {
        panic!("no identity for {}", self.0)
    }
}

#[node]
fn fragile(x: i64) -> Fragile {
    Fragile(x)
}

#[test]
fn a_panic_in_a_value_types_own_code_is_a_warning_of_its_node() {
    let src = "[flow]\nname = \"v\"\noutputs = [\"fragile\"]\n[config]\nx = 3\n";
    let (_dir, store) = store();
    let r = run(&build(src, &[]), 1, Some(store));
    assert_eq!(r.status, RunStatus::Ok, "the run goes on");
    let w = &r.nodes[0].warnings;
    assert!(w.iter().any(|w| w.contains("the result's identity panicked: no identity for 3")), "{w:?}");
    assert!(w.iter().any(|w| w.contains("result not cached (encoding it panicked: cannot encode 3)")), "{w:?}");
}

/// A value type that encodes, but whose decoder and row count panic.
#[derive(Clone, Debug)]
struct Brittle(i64);

impl Value for Brittle {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), flowrun_engine::CodecError> {
        out.extend(self.0.to_le_bytes());
        Ok(())
    }
    fn decode(_bytes: &[u8]) -> Result<Self, flowrun_engine::CodecError> {
        panic!("bytes it does not expect")
    }
    fn rows(&self) -> Option<u64> {
        panic!("no rows")
    }
}

#[node]
fn brittle(x: i64) -> Brittle {
    Brittle(x)
}

#[node]
fn unbrittle(brittle: Brittle) -> i64 {
    brittle.0
}

#[test]
fn a_decoder_that_panics_is_a_decode_error_and_the_result_is_recomputed() {
    let src =
        "[flow]\nname = \"b\"\noutputs = [\"unbrittle\"]\n[config]\nx = 3\n[nodes.unbrittle]\ncache = \"recompute\"\n";
    let (_dir, store) = store();
    let first = run(&build(src, &[]), 1, Some(store.clone()));
    assert_eq!(first.status, RunStatus::Ok);
    let w = &first.nodes.iter().find(|n| &*n.name == "brittle").unwrap().warnings;
    assert!(w.iter().any(|w| w.contains("counting the result's rows panicked: no rows")), "{w:?}");
    // the rerun loads `brittle` from the cache for `unbrittle`: its decoder panics, so it is computed again
    let again = run(&build(src, &[]), 1, Some(store));
    assert_eq!(again.status, RunStatus::Ok, "the run goes on");
    let brittle = again.nodes.iter().rfind(|n| &*n.name == "brittle").unwrap();
    assert_eq!(brittle.status, Status::Executed);
}

#[test]
fn fail_fast_cancels_what_has_not_started() {
    let f = build(FANOUT, &[("n", "20"), ("shift", "666")]);
    let r = schedule::run(&f, &RunOptions { fail_fast: true, ..RunOptions::default() }).unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    assert!(r.count(Status::Cancelled) > 0);
    assert!(r.count(Status::Executed) < 1 + 20 + 20);
}

#[test]
fn hundred_thousand_node_chain_runs() {
    let mut src = String::from(
        "[flow]\nname = \"chain\"\noutputs = [\"n99999\"]\n[nodes.n0]\nfn = \"independent\"\nparams = { x = 0 }\n",
    );
    for i in 1..100_000 {
        src.push_str(&format!("[nodes.n{i}]\nfn = \"independent\"\ninputs = {{ x = \"n{}\" }}\n", i - 1));
    }
    let f = build(&src, &[]);
    for jobs in [1, 2] {
        let r = run(&f, jobs, None);
        assert_eq!(out::<i64>(&r, "n99999"), 100_000);
    }
}

#[test]
fn dry_run_says_what_would_run() {
    let (_dir, store) = store();
    let f = build(FANOUT, &[]);
    run(&f, 1, Some(store.clone()));
    let f2 = build(FANOUT, &[("n", "3")]);
    let dry =
        schedule::run(&f2, &RunOptions { dry_run: true, store: Some(store.clone()), ..RunOptions::default() }).unwrap();
    let numbers = dry.nodes.iter().find(|n| &*n.name == "numbers").unwrap();
    assert_eq!(numbers.status, Status::WouldRun);
    assert_eq!(numbers.reasons[..], [Reason::ConfigChanged("n".into())]);
    let sq = dry.nodes.iter().find(|n| &*n.node == "square").unwrap();
    assert_eq!(&*sq.name, "square[*]");
    assert_eq!(sq.reasons[..], [Reason::UpstreamWillRun("numbers".into())]);
    // nothing ran, nothing was stored: a real run still executes `numbers`
    let real = run(&f2, 1, Some(store.clone()));
    assert!(real.names(Status::Executed).contains(&"numbers".to_string()));
    // and squares 1..3 were cached by the first run
    assert!(real.names(Status::Reused).contains(&"square[2]".to_string()));
    assert_eq!(real.names(Status::Executed), vec!["numbers", "total"], "squares and offsets of items 0..2 are reused");
}

/// A registry like the global one, but with `name`'s code version changed: what a rebuilt binary with an
/// edited node body looks like to the cache.
fn registry_with_edited(name: &str) -> &'static flowrun_engine::Registry {
    use flowrun_engine::registry::NodeDef;
    let defs: Vec<&'static NodeDef> = flowrun_engine::Registry::global()
        .all()
        .iter()
        .map(|d| {
            if d.name != name {
                return *d;
            }
            &*Box::leak(Box::new(NodeDef { code_version: "an-edited-body", ..**d }))
        })
        .collect();
    Box::leak(Box::new(flowrun_engine::Registry::from_defs(defs)))
}

#[test]
fn a_code_version_change_reruns_that_node_and_its_downstream_only() {
    let (_dir, store) = store();
    run(&build(FANOUT, &[]), 2, Some(store.clone()));
    let opts = BuildOptions { registry: registry_with_edited("square"), ..BuildOptions::default() };
    let report = run(&build_with(FANOUT, opts), 2, Some(store.clone()));
    let executed = report.names(Status::Executed);
    // every square re-runs; their results are equal, so early cutoff spares `offset` and `total`
    assert_eq!(executed.len(), 10, "{executed:?}");
    assert!(executed.iter().all(|n| n.starts_with("square[")), "{executed:?}");
    let why = report.nodes.iter().find(|n| &*n.name == "square[3]").unwrap();
    assert_eq!(why.reasons[..], [Reason::CodeChanged(flowrun_engine::CodeChange::Function)]);
    assert_eq!(report.names(Status::Reused).len(), 1 + 10 + 1, "numbers, the offsets and total come from the cache");
}

#[test]
fn a_node_has_its_function_tags_then_the_flow_files() {
    let f = build(
        "[flow]\nname = \"tags\"\n[nodes.t]\nfn = \"tagged\"\nparams = { x = 1 }\ntags = { owner = \"lab\", pii = \"no\" }\n",
        &[],
    );
    let t = f.nodes.iter().find(|n| &*n.name == "t").unwrap();
    let tags: Vec<(&str, &str)> = t.tags().collect();
    assert_eq!(tags, [("layer", "staging"), ("owner", "engine"), ("owner", "lab"), ("pii", "no")]);
    // the file's value of a key both give comes last, so it is the one a lookup by key keeps
    assert_eq!(t.tag("owner"), Some("lab"));
    assert_eq!(t.tag("layer"), Some("staging"));
    assert_eq!(t.tag("nope"), None);
    assert_eq!(*t.file_tags, [("owner".to_string(), "lab".to_string()), ("pii".to_string(), "no".to_string())]);
}

#[test]
fn selected_outputs_keep_only_their_materializations() {
    let src = "[flow]\nname = \"sel\"\noutputs = [\"b\"]\n\
               [nodes.a]\nfn = \"tagged\"\nparams = { x = 1 }\n\
               [nodes.b]\nfn = \"tagged\"\ninputs = { x = \"a\" }\n\
               [nodes.c]\nfn = \"tagged\"\nparams = { x = 2 }\n\
               [materialize.a_out]\nnode = \"a\"\nkind = \"geoparquet\"\npath = \"a.parquet\"\n\
               [materialize.c_out]\nnode = \"c\"\nkind = \"ducklake\"\ntable = \"c\"\n";
    let names = |f: &flowrun_engine::Flow, ids: &[usize]| -> Vec<String> {
        let mut v: Vec<String> = ids.iter().map(|&i| f.nodes[i].name.to_string()).collect();
        v.sort();
        v
    };
    let all = build(src, &[]);
    assert_eq!(names(&all, &all.targets), ["a", "b", "c"], "the flow's outputs and every materialized node");
    assert_eq!(all.materialize.len(), 2);
    // `--output a` (or `--tag`): that node and its section only, like dbt's --select
    let opts = BuildOptions { outputs: Some(vec!["a".into()]), ..BuildOptions::default() };
    let one = build_with(src, opts);
    assert_eq!(names(&one, &one.targets), ["a"]);
    let kept: Vec<&str> = one.materialize.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(kept, ["a_out"]);
    assert_eq!(run(&one, 1, None).names(Status::Executed), ["a"]);
}
