//! Past one machine, on loopback servers: moto's S3 server from the test virtualenv (the tests create it;
//! `pip install "moto[server]" boto3` into any venv and set `FLOWRUN_TEST_VENV` otherwise).
//! 1. the PV flow rerun on a fresh machine (empty local cache) from the remote cache;
//! 2. 1, 2 and 4 workers (`--shard`, one process each, own cache directory) on N synthetic rows in 8
//!    datasets, then the final run; the lake's row count against the single run's;
//! 3. N polygons to a DuckLake table with its data on S3 vs on local disk.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::doi_pv::{Measured, flow_copy, print, run};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> PathBuf {
    let venv = std::env::var_os("FLOWRUN_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/flowrun/test-venv")
    });
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "no virtualenv with moto at {} (run the tests once, or set FLOWRUN_TEST_VENV)",
        venv.display()
    );
    py
}

/// Starts moto on a free port, points this process (and the flowrun processes it starts) at it, and
/// creates the bucket `bench`.
fn start_moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(python())
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto.server starts");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "moto.server did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: set once, before any thread of this benchmark reads the environment
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
        std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let ok = Command::new(python())
        .args(["-c", "import boto3; boto3.client('s3').create_bucket(Bucket='bench')"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot create the bucket");
    Moto(child)
}

fn rows(m: &Measured, table: &str) -> u64 {
    let targets = m.json["materialized"]["targets"].as_array().expect("the run wrote the lake");
    targets.iter().find(|t| t["destination"] == table).and_then(|t| t["rows"].as_u64()).expect("the table")
}

pub fn run_all(n: usize) {
    let _moto = start_moto();
    let shared = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pv"))
        .expect("../shared/data/pv is there");
    let shared_s = shared.display().to_string();
    println!("flowrun past one machine (loopback S3: moto; {} cores)", crate::doi_pv::cores());

    // 1. a fresh machine reruns the PV flow from the remote cache
    let dir = tempfile::tempdir().unwrap();
    flow_copy(dir.path(), None);
    let remote = ["--remote-cache", "s3://bench/doi-pv"];
    let first = run(dir.path(), &[&["flows/doi_pv.toml", "--mirror", &shared_s][..], &remote].concat());
    print("doi_pv: first machine, cold", &first);
    let fresh = dir.path().join("fresh-cache").display().to_string();
    let second =
        run(dir.path(), &[&["--cache-dir", &fresh, "flows/doi_pv.toml", "--mirror", &shared_s][..], &remote].concat());
    print("doi_pv: second machine, remote hits", &second);

    // 2. workers on synthetic rows in 8 datasets
    let data = tempfile::tempdir().unwrap();
    let mirror = data.path().join("mirror");
    flowrun_pv::synthetic::write_mirror(&mirror, n, 8, 42).unwrap();
    std::os::unix::fs::symlink(shared.join("natural_earth_admin0"), mirror.join("natural_earth_admin0")).unwrap();
    let mirror = mirror.display().to_string();
    let manifest = flowrun_pv::synthetic::manifest(8);
    let mut single_rows = None;
    for workers in [1usize, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        flow_copy(dir.path(), Some(&manifest));
        let remote = format!("s3://bench/workers-{workers}");
        let cache = |name: &str| dir.path().join(name).display().to_string();
        let started = Instant::now();
        let shard_phase = (workers > 1).then(|| {
            let t = Instant::now();
            let shards: Vec<(String, String)> =
                (0..workers).map(|i| (cache(&format!("cache-{i}")), format!("{i}/{workers}"))).collect();
            std::thread::scope(|s| {
                let here = dir.path();
                for (cache, shard) in &shards {
                    let args = ["--cache-dir", cache, "flows/doi_pv.toml", "--mirror", &mirror];
                    let args = [&args[..], &["--remote-cache", &remote, "--shard", shard]].concat();
                    s.spawn(move || run(here, &args));
                }
            });
            t.elapsed()
        });
        let last = cache("cache-final");
        let fin = run(
            dir.path(),
            &["--cache-dir", &last, "flows/doi_pv.toml", "--mirror", &mirror, "--remote-cache", &remote],
        );
        let wall = started.elapsed();
        let got = rows(&fin, "prepared.prepared_pv_dedup");
        let same = *single_rows.get_or_insert(got) == got;
        match shard_phase {
            None => {
                println!("{n} rows, 8 datasets, 1 process:  {:>7.2} s  ({got} rows in the lake)", wall.as_secs_f64())
            }
            Some(p) => println!(
                "{n} rows, 8 datasets, {workers} workers: {:>7.2} s  (shards {:.2} s + final run {:.2} s, {} node runs; {got} rows, {})",
                wall.as_secs_f64(),
                p.as_secs_f64(),
                fin.wall.as_secs_f64(),
                fin.executed,
                if same { "equal to the single run" } else { "DIFFERENT from the single run" }
            ),
        }
    }

    // 3. 1M polygons to DuckLake: data on S3 vs local disk
    let polygons = 1_000_000;
    let table = crate::lake::polygons(polygons);
    let local = tempfile::tempdir().unwrap();
    let on_disk =
        crate::lake::ducklake_write(&table, local.path(), flowrun_lake::DataPath::Local(local.path().join("data")));
    let s3 = tempfile::tempdir().unwrap();
    let on_s3 =
        crate::lake::ducklake_write(&table, s3.path(), flowrun_lake::DataPath::Remote("s3://bench/lake".into()));
    println!(
        "{polygons} polygons -> DuckLake: local disk {on_disk:.2} s, loopback S3 {on_s3:.2} s ({:.2}x)",
        on_s3 / on_disk
    );
}
