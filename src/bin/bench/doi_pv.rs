//! The PV flow, end to end through the `flowrun` binary: a cold run, a fully cached rerun and a
//! one-parameter rerun on `../shared/data/pv`, then cold runs on synthetic datasets of N polygons. Prints
//! wall time, peak RSS of the flowrun process (VmHWM, sampled from /proc while it runs) and per-stage
//! time (the sum of the stage's node runs, so parallel stages can add up to more than the wall time).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Measured {
    pub wall: Duration,
    peak_rss_mb: f64,
    stages: BTreeMap<String, f64>,
    pub executed: usize,
    /// The run's `--json` report.
    pub json: serde_json::Value,
}

fn flowrun_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench binary knows where it is");
    let p = exe.parent().unwrap().join("flowrun");
    assert!(p.exists(), "build the flowrun binary first: cargo build --release (looked for {})", p.display());
    p
}

pub(crate) fn run(dir: &Path, args: &[&str]) -> Measured {
    let started = Instant::now();
    let mut child = Command::new(flowrun_exe())
        .current_dir(dir)
        .args(["--json", "run"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("flowrun starts");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    // read stdout on a thread so a large JSON report cannot block the child
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(line) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            peak_kb = peak_kb.max(line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0));
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = started.elapsed();
    let out = reader.join().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("flowrun printed no JSON ({e}): {out}"));
    assert_eq!(json["status"], "ok", "the flow failed: {out}");
    let nodes = json["nodes"].as_array().unwrap();
    let executed = nodes.iter().filter(|n| n["status"] == "executed").count();
    let mut stages = BTreeMap::new();
    for n in nodes {
        *stages.entry(n["node"].as_str().unwrap().to_string()).or_insert(0.0) += n["duration"].as_f64().unwrap_or(0.0);
    }
    Measured { wall, peak_rss_mb: peak_kb as f64 / 1024.0, stages, executed, json }
}

pub(crate) fn print(label: &str, m: &Measured) {
    println!(
        "{label:<34} {:>9.3} s  peak RSS {:>7.1} MiB  {:>3} node runs executed",
        m.wall.as_secs_f64(),
        m.peak_rss_mb,
        m.executed
    );
}

fn print_stages(m: &Measured) {
    let mut stages: Vec<(&String, &f64)> = m.stages.iter().filter(|(_, s)| **s >= 0.0005).collect();
    stages.sort_by(|a, b| b.1.total_cmp(a.1));
    let shown: Vec<String> = stages.iter().map(|(n, s)| format!("{n} {:.1}", *s)).collect();
    println!("    stages (ms, summed over node runs): {}", shown.join(", "));
}

/// The repository's flow, copied under `<dir>/flows/` so its outputs land in `<dir>`; with `manifest`, the
/// dataset manifest is replaced.
pub(crate) fn flow_copy(dir: &Path, manifest: Option<&str>) {
    let mut text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/doi_pv.toml")).unwrap();
    if let Some(m) = manifest {
        let start = text.find("[config.manifest.").unwrap();
        let end = text[..text.find("# Nodes.").unwrap()].rfind("# ----").unwrap();
        text.replace_range(start..end, &format!("{m}\n"));
    }
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::write(dir.join("flows/doi_pv.toml"), text).unwrap();
}

pub fn run_all(sizes: &[usize]) {
    let shared = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pv"))
        .expect("../shared/data/pv is there");
    let mirror = shared.display().to_string();
    println!("flowrun doi_pv benchmark (the flowrun binary, {} cores)", cores());
    let dir = tempfile::tempdir().unwrap();
    flow_copy(dir.path(), None);
    let args = ["flows/doi_pv.toml", "--mirror", &mirror];
    let cold = run(dir.path(), &args);
    print("shared data: cold run", &cold);
    print_stages(&cold);
    let cached = run(dir.path(), &args);
    print("shared data: fully cached rerun", &cached);
    let mut one = args.to_vec();
    one.extend(["--set", "h3_resolution=11"]);
    let param = run(dir.path(), &one);
    print("shared data: h3_resolution changed", &param);
    print_stages(&param);

    for &n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let mirror = dir.path().join("mirror");
        let t = Instant::now();
        flowrun_pv::synthetic::write_mirror(&mirror, n, 2, 42).unwrap();
        std::os::unix::fs::symlink(shared.join("natural_earth_admin0"), mirror.join("natural_earth_admin0")).unwrap();
        let generated = t.elapsed();
        flow_copy(dir.path(), Some(&flowrun_pv::synthetic::manifest(2)));
        let mirror_s = mirror.display().to_string();
        let m = run(dir.path(), &["flows/doi_pv.toml", "--mirror", &mirror_s]);
        print(&format!("synthetic {n} polygons: cold run"), &m);
        println!(
            "    {:.2} us per row; GeoJSON generated in {:.1} s",
            m.wall.as_secs_f64() * 1e6 / n as f64,
            generated.as_secs_f64()
        );
        print_stages(&m);
    }
}

/// The cores this machine offers, for the benchmarks' headers.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
