//! Memory budgets of the engine's per-node bookkeeping, counted by a global allocator; and a table handed to
//! its last reader, never before its other readers are done.
//!
//! Each budget is about twice what a node takes when it was set: the test fails on a change that makes
//! every node much heavier (a copy of the flow per node, a table per edge), not on ordinary changes. The
//! count covers every thread (a run's nodes run on its worker pool), so the tests of this file take turns
//! (`ONE_AT_A_TIME`); it is deterministic, unlike timings.
//! `cargo test -p flowrun-engine --test memory -- --nocapture` prints the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use flowrun_cache::Store;
use flowrun_engine::flow::{self, BuildOptions, SourceFile};
use flowrun_engine::schedule::{self, RunOptions, RunStatus};
use flowrun_engine::{Collect, Parallel, Table, node};

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn count(bytes: usize) {
    ALLOCATED.fetch_add(bytes, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting only reads the layout.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated per node (freed ones included: fresh memory is the cost, whether or not it is kept).
const PARSE_BUDGET: f64 = 10_000.0;
const BUILD_BUDGET: f64 = 5_000.0;
const RUN_BUDGET: f64 = 3_500.0;
/// Per node run of a fan-out item.
const ITEM_BUDGET: f64 = 4_500.0;

/// What `f` returns and the bytes allocated while it ran, on every thread (freed ones included: fresh
/// memory is the cost, whether or not it is kept).
fn allocated<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.load(Ordering::Relaxed);
    let out = f();
    (out, ALLOCATED.load(Ordering::Relaxed) - before)
}

#[node]
fn step(x: i64) -> i64 {
    x + 1
}

#[node]
fn spread(n: i64) -> Parallel<i64> {
    (0..n).collect()
}

#[node]
fn total(step: Collect<i64>) -> i64 {
    step.iter().sum()
}

fn chain(n: usize) -> String {
    let mut s = format!(
        "[flow]\nname = \"chain\"\noutputs = [\"n{}\"]\n[nodes.n0]\nfn = \"step\"\nparams = {{ x = 0 }}\n",
        n - 1
    );
    for i in 1..n {
        s.push_str(&format!("[nodes.n{i}]\nfn = \"step\"\ninputs = {{ x = \"n{}\" }}\n", i - 1));
    }
    s
}

/// Bytes per node for parsing, building and running (one thread) the flow in `text`.
fn per_node(text: String) -> (f64, f64, f64, usize) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let src = SourceFile::new("memory.toml", text);
    let (raw, parse) = allocated(|| flow::parse(&src).expect("valid TOML"));
    let (f, build) = allocated(|| flow::resolve(src.clone(), &raw, &BuildOptions::default()).expect("valid flow"));
    let nodes = f.nodes.len() as f64;
    let (report, run) = allocated(|| schedule::run(&f, &RunOptions { jobs: 1, ..RunOptions::default() }).unwrap());
    assert_eq!(report.status, RunStatus::Ok);
    let runs = report.nodes.len();
    (parse as f64 / nodes, build as f64 / nodes, run as f64 / runs as f64, runs)
}

#[test]
fn a_chain_node_stays_within_its_memory_budget() {
    let (parse, build, run, runs) = per_node(chain(10_000));
    assert_eq!(runs, 10_000);
    let figures = format!("bytes per node: parse {parse:.0}, build {build:.0}, run {run:.0}");
    eprintln!("{figures}");
    assert!(parse < PARSE_BUDGET, "{figures}");
    assert!(build < BUILD_BUDGET, "{figures}");
    assert!(run < RUN_BUDGET, "{figures}");
}

#[test]
fn a_fan_out_item_stays_within_its_memory_budget() {
    let text = "[flow]\nname = \"fan\"\noutputs = [\"total\"]\n[config]\nn = 10000\n[nodes.spread]\n\
                [nodes.step]\ninputs = { x = \"spread\" }\n[nodes.total]\n";
    let (_, _, run, runs) = per_node(text.to_string());
    assert_eq!(runs, 10_002);
    eprintln!("bytes per fan-out item run: {run:.0}");
    assert!(run < ITEM_BUDGET, "bytes per fan-out item run: {run:.0}");
}

#[node]
fn numbers_table(n: i64) -> Table {
    let column: ArrayRef = std::sync::Arc::new(Int64Array::from_iter_values(0..n));
    Table::from_batch(RecordBatch::try_from_iter([("x", column)]).unwrap())
}

#[node]
fn rows(numbers_table: &Table) -> i64 {
    numbers_table.num_rows() as i64
}

/// The most references any column of the table has once its batches are taken: 1 when the engine handed
/// the table over (its slot and the first reader no longer hold it).
#[node]
fn owners(numbers_table: Table, rows: i64) -> i64 {
    assert_eq!(rows, 10);
    numbers_table.into_batches().map(|b| std::sync::Arc::strong_count(b.column(0)) as i64).max().unwrap()
}

#[test]
fn the_last_reader_of_a_table_is_given_it() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let text = "[flow]\nname = \"owned\"\noutputs = [\"owners\"]\n[config]\nn = 10\n[nodes.numbers_table]\n\
                [nodes.rows]\n[nodes.owners]\n";
    let f = flow::build(SourceFile::new("owned.toml", text.to_string()), &BuildOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (jobs, store) in [(1, None), (2, None), (2, Some(std::sync::Arc::new(Store::open(dir.path()).unwrap())))] {
        let report = schedule::run(&f, &RunOptions { jobs, store, ..RunOptions::default() }).unwrap();
        assert_eq!(report.status, RunStatus::Ok);
        let owners = report.output("owners")[0].value.as_ref().unwrap().load().unwrap();
        assert_eq!(owners.downcast_ref::<i64>(), Some(&1), "jobs {jobs}: the table was not handed over");
    }
}

/// Reads the root block's table from inside a fan-out branch.
#[node]
fn branch_rows(spread: i64, numbers_table: &Table) -> i64 {
    spread + numbers_table.num_rows() as i64
}

#[node]
fn branch_total(branch_rows: Collect<i64>) -> i64 {
    branch_rows.iter().sum()
}

#[test]
fn a_table_is_not_handed_over_while_a_fan_out_branch_still_reads_it() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let text = "[flow]\nname = \"branches\"\noutputs = [\"owners\", \"branch_total\"]\n[config]\nn = 10\n\
                [nodes.numbers_table]\n[nodes.rows]\n[nodes.owners]\n[nodes.spread]\n[nodes.branch_rows]\n\
                [nodes.branch_total]\n";
    let f = flow::build(SourceFile::new("branches.toml", text.to_string()), &BuildOptions::default()).unwrap();
    for jobs in [1, 2] {
        let report = schedule::run(&f, &RunOptions { jobs, ..RunOptions::default() }).unwrap();
        assert_eq!(report.status, RunStatus::Ok, "jobs {jobs}");
        let total = report.output("branch_total")[0].value.as_ref().unwrap().load().unwrap();
        // every branch read all 10 rows: (0 + ... + 9) + 10 * 10
        assert_eq!(total.downcast_ref::<i64>(), Some(&145), "jobs {jobs}");
    }
}
