//! Memory budgets of the engine's per-node bookkeeping, counted by a global allocator.
//!
//! On a 100,000-node flow the engine's time is mostly spent touching fresh memory (BENCHMARKS.md), so the
//! bytes allocated per node are what keep parse, build and run under a microsecond per node. These tests pin
//! them with some room: a change that makes every node heavier fails here, with the figures, instead of
//! showing up later as a slower benchmark on a noisy machine. Counts are per thread (the test harness runs
//! other tests on other threads) and deterministic, unlike timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use flowrun_engine::flow::{self, BuildOptions, SourceFile};
use flowrun_engine::schedule::{self, RunOptions, RunStatus};
use flowrun_engine::{Collect, Parallel, node};

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with`: an allocation while the thread's locals are torn down is not counted
    let _ = ALLOCATED.try_with(|a| a.set(a.get() + bytes));
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

/// What `f` returns and the bytes it allocated on this thread (freed ones included: fresh memory is the
/// cost, whether or not it is kept).
fn allocated<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (out, ALLOCATED.with(Cell::get) - before)
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
fn a_chain_node_costs_about_a_kilobyte_to_parse_build_and_run() {
    let (parse, build, run, runs) = per_node(chain(10_000));
    assert_eq!(runs, 10_000);
    let figures = format!("bytes per node: parse {parse:.0}, build {build:.0}, run {run:.0}");
    eprintln!("{figures}"); // `cargo test --release -p flowrun-engine --test memory -- --nocapture`
    // measured when written: parse 366, build 365, run 562 (before the `NameIndex` of 8-byte slots, which
    // can be prefetched, and node tables without an `IndexMap`: parse 376, build 360; before a node's
    // inputs read without a
    // temporary list, the DAG made on demand, reserved edge and member lists and a report's reasons and
    // input keys inline: parse 696, build 451, run 636; before exact reservations, the boxed `sql`
    // and `tags` of a raw node and declarations made one at a time: parse 1535, build 1137; before boxed
    // literal bindings and SQL queries and the fan-out scope pass's candidates on the stack: build 750;
    // before `RawMap` tables and inline names: parse 1059; before a declaration's lists on the stack and
    // shared parameter names: build 590; before the `NameIndex` of ids: build 468; before the plan's
    // flat arguments, inline producer/consumer lists, a key's inputs on the stack, per-function key data
    // shared and boxed literals: run 1076)
    assert!(parse < 420.0, "{figures}");
    assert!(build < 400.0, "{figures}");
    assert!(run < 620.0, "{figures}");
}

#[test]
fn a_fan_out_item_costs_about_a_kilobyte_and_a_half_to_run() {
    let text = "[flow]\nname = \"fan\"\noutputs = [\"total\"]\n[config]\nn = 10000\n[nodes.spread]\n\
                [nodes.step]\ninputs = { x = \"spread\" }\n[nodes.total]\n";
    let (_, _, run, runs) = per_node(text.to_string());
    assert_eq!(runs, 10_002);
    eprintln!("bytes per fan-out item run: {run:.0}");
    // measured when written: 1272 (1240 before a report's reasons and input keys were inline: a
    // report is bigger, and this flow's list of them grows by doubling; 1468 before the plan's flat
    // arguments and the other changes named there)
    assert!(run < 1_350.0, "bytes per node run: {run:.0}");
}
