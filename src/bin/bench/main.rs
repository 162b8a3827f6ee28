//! flowrun's benchmarks: a binary that prints figures (timings belong here, not in tests).
//!
//! ```text
//! cargo run --release --bin bench -- engine            # chain / wide / fan-out, per-node figures
//! cargo run --release --bin bench -- engine --json     # the same, machine-readable (bench-vs-hamilton)
//! cargo run --release --bin bench -- lake              # 1M polygons: DuckLake vs GeoParquet (crate) vs DuckDB COPY
//! cargo run --release --bin bench -- doi-pv            # the PV flow: cold, cached, one parameter; synthetic 100K, 1M
//! cargo run --release --bin bench -- remote            # loopback S3: remote-cache rerun, 1/2/4 workers, DuckLake on S3
//! ```
//! Every figure is a median of a few repetitions, measured in this process, side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowrun_cache::Store;
use flowrun_engine::flow::{self, BuildOptions, SourceFile};
use flowrun_engine::schedule::{self, RunOptions, RunStatus};

fn main() {
    flowrun_nodes::link();
    flowrun_pv::link();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let value_of = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    // `--profile parse|build|seq|par|cache`: loop on one phase (for `perf record`), print nothing else
    let profile = value_of("--profile");
    let sizes: Option<Vec<usize>> =
        value_of("--sizes").map(|s| s.split(',').map(|n| n.trim().parse().expect("--sizes takes numbers")).collect());
    match args.first().map(String::as_str) {
        Some("engine") | None => match profile {
            Some(phase) => profile_phase(phase, sizes.as_deref().unwrap_or(&[100_000])),
            None => engine(sizes, json),
        },
        Some("lake") => lake::run(sizes.and_then(|s| s.first().copied()).unwrap_or(1_000_000)),
        Some("doi-pv") => doi_pv::run_all(&sizes.unwrap_or_else(|| vec![100_000, 1_000_000])),
        Some("remote") => remote::run_all(sizes.and_then(|s| s.first().copied()).unwrap_or(400_000)),
        Some(other) => {
            eprintln!("unknown benchmark `{other}`; benchmarks: engine, lake, doi-pv, remote");
            std::process::exit(2);
        }
    }
}

fn chain(n: usize) -> String {
    let mut s = format!(
        "[flow]\nname = \"chain{n}\"\noutputs = [\"n{}\"]\n\n[nodes.n0]\nfn = \"noop\"\nparams = {{ x = 0 }}\n",
        n - 1
    );
    s.extend((1..n).map(|i| format!("[nodes.n{i}]\nfn = \"noop\"\ninputs = {{ x = \"n{}\" }}\n", i - 1)));
    s
}

fn wide(n: usize) -> String {
    let mut s = format!("[flow]\nname = \"wide{n}\"\n\n[nodes.w0]\nfn = \"noop\"\nparams = {{ x = 0 }}\n");
    s.extend((1..n).map(|i| format!("[nodes.w{i}]\nfn = \"noop\"\ninputs = {{ x = \"w0\" }}\n")));
    s
}

fn fanout(n: usize) -> String {
    format!(
        "[flow]\nname = \"fanout{n}\"\noutputs = [\"total\"]\n[config]\nn = {n}\n[nodes.items]\nfn = \"range\"\n\
         [nodes.each]\nfn = \"noop\"\ninputs = {{ x = \"items\" }}\n[nodes.total]\nfn = \"sum\"\ninputs = {{ values = \"each\" }}\n"
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut once = || {
        let t = Instant::now();
        std::hint::black_box(f());
        t.elapsed()
    };
    median((0..reps).map(|_| once()).collect())
}

#[derive(serde::Serialize)]
struct Row {
    shape: &'static str,
    n: usize,
    node_runs: usize,
    /// TOML text -> spanned file model (`flow::parse`, the toml crate), per flow node.
    parse_us: f64,
    /// Parsed file -> validated DAG (resolution, type checks, cycles, fan-out scopes), per flow node.
    build_us: f64,
    sequential_us: f64,
    parallel_us: f64,
    first_cached_us: f64,
    rerun_cached_us: f64,
}

fn engine(sizes: Option<Vec<usize>>, json: bool) {
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut cases = Vec::new();
    for &n in sizes.as_deref().unwrap_or(&[1_000, 10_000, 100_000]) {
        cases.push(("chain", n, chain(n)));
        cases.push(("wide", n, wide(n)));
    }
    for &n in sizes.as_deref().unwrap_or(&[1_000, 5_000, 100_000]) {
        cases.push(("fanout", n, fanout(n)));
    }
    let mut rows = Vec::new();
    if !json {
        println!(
            "flowrun engine benchmark: no-op nodes, {jobs} worker threads for the parallel runs; microseconds per node run"
        );
        println!(
            "parse: TOML -> file model (flow::parse), build: file model -> validated DAG (flow::resolve); both per flow node"
        );
        println!(
            "{:<8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12}",
            "shape", "n", "node runs", "parse", "build", "seq", "par", "first+cache", "cached rerun"
        );
    }
    for (shape, n, text) in cases {
        // medians of several runs: this machine's timings vary by a quarter from one run to the next
        let reps = if n >= 100_000 { 5 } else { 9 };
        let src = SourceFile::new(format!("{shape}{n}.toml"), text);
        let opts = BuildOptions::default();
        let parse = time(reps, || flow::parse(&src).expect("valid TOML"));
        let raw = flow::parse(&src).unwrap();
        let build = time(reps, || flow::resolve(src.clone(), &raw, &opts).expect("valid flow"));
        let f = flow::build(src.clone(), &opts).unwrap();
        let mut runs = 0;
        let seq = time(reps, || {
            let r = schedule::run(&f, &RunOptions { jobs: 1, ..RunOptions::default() }).unwrap();
            assert_eq!(r.status, RunStatus::Ok);
            runs = r.nodes.len();
        });
        let par = time(reps, || schedule::run(&f, &RunOptions { jobs, ..RunOptions::default() }).unwrap());
        let mut first = Vec::new();
        let mut rerun = Vec::new();
        for _ in 0..reps.min(3) {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let o = RunOptions { jobs, store: Some(store), ..RunOptions::default() };
            first.push(time(1, || schedule::run(&f, &o).unwrap()));
            let t = Instant::now();
            let r = schedule::run(&f, &o).unwrap();
            rerun.push(t.elapsed());
            assert_eq!(r.count(flowrun_engine::Status::Executed), 0);
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / runs as f64;
        let row = Row {
            shape,
            n,
            node_runs: runs,
            parse_us: parse.as_secs_f64() * 1e6 / f.nodes.len() as f64,
            build_us: build.as_secs_f64() * 1e6 / f.nodes.len() as f64,
            sequential_us: per(seq),
            parallel_us: per(par),
            first_cached_us: per(median(first)),
            rerun_cached_us: per(median(rerun)),
        };
        if !json {
            println!(
                "{:<8} {:>8} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>12.2} {:>12.2}   (total seq {:.1} ms)",
                row.shape,
                row.n,
                row.node_runs,
                row.parse_us,
                row.build_us,
                row.sequential_us,
                row.parallel_us,
                row.first_cached_us,
                row.rerun_cached_us,
                seq.as_secs_f64() * 1e3
            );
        }
        rows.push(row);
    }
    if json {
        println!("{}", serde_json::to_string(&rows).unwrap());
    }
}

/// Runs one phase of the 100K-node chain (or `--sizes`) in a loop, for a profiler; prints the median and
/// the minimum of the repetitions (`bench/compare.py` reads them).
fn profile_phase(phase: &str, sizes: &[usize]) {
    const REPS: usize = 7;
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    for &n in sizes {
        let src = SourceFile::new(format!("chain{n}.toml"), chain(n));
        let opts = BuildOptions::default();
        let f = flow::build(src.clone(), &opts).expect("valid flow");
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let cached = RunOptions { jobs, store: Some(store), ..RunOptions::default() };
        let mut times = Vec::with_capacity(REPS);
        for _ in 0..REPS {
            let t = Instant::now();
            match phase {
                "parse" => drop(std::hint::black_box(flow::parse(&src).unwrap())),
                "build" => drop(std::hint::black_box(flow::build(src.clone(), &opts).unwrap())),
                "seq" => drop(schedule::run(&f, &RunOptions { jobs: 1, ..RunOptions::default() }).unwrap()),
                "par" => drop(schedule::run(&f, &RunOptions { jobs, ..RunOptions::default() }).unwrap()),
                "cache" => drop(schedule::run(&f, &cached).unwrap()),
                other => panic!("unknown phase {other}: parse, build, seq, par, cache"),
            }
            times.push(t.elapsed());
        }
        times.sort();
        let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        // the minimum too: on a shared machine, interference only ever adds time
        eprintln!("{phase} chain {n}: {:.3} us/node median, {:.3} min", per(times[REPS / 2]), per(times[0]));
    }
}

mod doi_pv;
mod lake;
mod remote;
