//! Running the binary in a scratch directory.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Scratch {
    pub dir: tempfile::TempDir,
    /// Variables every command run here gets (another machine's `HOME`).
    env: Vec<(&'static str, PathBuf)>,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }

    /// Display names of the node runs with `status`, sorted (from `--json` output).
    pub fn nodes(&self, status: &str) -> Vec<String> {
        let mut v: Vec<String> = self.json()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["status"] == status)
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "expected success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().unwrap(), env: Vec::new() }
    }

    /// Another machine: a scratch directory with a `HOME` of its own (no flowrun cache, no record of
    /// checked extension signatures, no pip or DuckDB directories), given DuckDB's extension files in
    /// `FLOWRUN_DUCKDB_EXTENSIONS` as an administrator would (the files this user's runs provisioned), so
    /// that nothing is downloaded again.
    pub fn machine() -> Scratch {
        let mut s = Scratch::new();
        let home = s.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        s.env = vec![
            ("XDG_CACHE_HOME", home.join(".cache")),
            ("HOME", home),
            ("FLOWRUN_DUCKDB_EXTENSIONS", flowrun_extension_dir()),
        ];
        s
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The variables every command run here gets (for a command started another way, such as `sbatch`).
    pub fn envs(&self) -> impl Iterator<Item = (&'static str, &PathBuf)> {
        self.env.iter().map(|(k, v)| (*k, v))
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flowrun"));
        c.current_dir(self.path()).env("NO_COLOR", "1").env_remove("FLOWRUN_CACHE_DIR");
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[])
    }
}

/// The PV flow's first stages on two real datasets, one fan-out item each (India's GeoJSON polygons and
/// USPVDB's CSV points, from a mirror) up to `consolidated`: the start of the lake and remote flows.
pub const TWO_DATASETS: &str = r#"[config.manifest.ind_pv_solar_farms_2022]
repository = "github"
source = "microsoft/solar-farms-mapping/data"
format = "geojson"
include = ["*.geojson"]
id = "fid"
area = "Area"

[config.manifest.usa_uspvdb]
repository = "direct"
source = "https://example.invalid/uspvdb.zip"
format = "csv"
lat = "ylat"
lon = "xlong"
crs = "EPSG:4326"
id = "case_id"
capacity = "p_cap_ac"

[nodes.datasets]
[nodes.files]
[nodes.raw]
[nodes.standardized]
[nodes.measured]
[nodes.consolidated]
"#;

/// A fan-out flow over the demo nodes: total = sum over i in 0..n of (i*i + b).
pub const FANOUT: &str = r#"[flow]
name = "fan"
outputs = ["total"]

[config]
n = 20

[nodes.items]
fn = "range"

[nodes.sq]
fn = "square"
inputs = { x = "items" }

[nodes.plus]
fn = "add"
inputs = { a = "sq" }
params = { b = 1 }

[nodes.total]
fn = "sum"
inputs = { values = "plus" }
"#;

impl Scratch {
    /// Like [`Scratch::run`], with extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut c = self.cmd();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("flowrun runs");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `../shared/data/pv`, the real PV datasets (never copied into the repository).
pub fn pv_data() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pv");
    assert!(p.is_dir(), "the shared PV data is expected at {}", p.display());
    std::fs::canonicalize(p).unwrap()
}

/// A Python with `duckdb==1.5.5`, GeoPandas, pyarrow, `geoparquet-validator`, `pylance`, `pystac-client` and
/// `rustac` (with `pypgstac`, the STAC server's loader): the independent clients
/// the lake and GeoParquet tests check flowrun's output with. Created once per machine in
/// `$FLOWRUN_TEST_VENV` (default `~/.cache/flowrun/test-venv`) with `python3 -m venv` and pip.
pub fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let dir = std::env::var_os("FLOWRUN_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/flowrun/test-venv")
            });
            let py = dir.join("bin/python");
            let ready = || {
                Command::new(&py)
                    .args([
                        "-c",
                        "import duckdb, geopandas, pyarrow, geoparquet_validator, boto3, moto.server, lance, pypgstac, psycopg, rustac, pystac_client; assert duckdb.__version__ == '1.5.5'",
                    ])
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            if !ready() {
                let ok = Command::new("python3").args(["-m", "venv"]).arg(&dir).status().is_ok_and(|s| s.success());
                assert!(ok, "python3 -m venv {} failed", dir.display());
                let out = Command::new(&py)
                    .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                    .args(["duckdb==1.5.5", "geopandas", "pyarrow", "geoparquet-validator==0.2.*", "boto3", "moto[server]==5.*", "pylance==14.*", "pypgstac[psycopg]==0.10.*", "rustac==0.9.*", "pystac-client==0.9.*"])
                    .output()
                    .expect("pip runs");
                assert!(out.status.success(), "pip install failed: {}", String::from_utf8_lossy(&out.stderr));
                assert!(ready(), "the test virtualenv at {} is not usable", dir.display());
            }
            py
        })
        .clone()
}

/// Runs a Python script with [`python`]; returns its stdout parsed as JSON.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python()).arg("-c").arg(script).args(args).output().expect("python runs");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("python printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Starts the binary in `s` with `args` and `env`, its output captured (see [`finish`]).
pub fn spawn(s: &Scratch, args: &[&str], env: &[(&str, String)]) -> std::process::Child {
    let mut c = s.cmd();
    c.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("flowrun starts")
}

/// Waits for a [`spawn`]ed run and gives what it said.
pub fn finish(child: std::process::Child) -> Out {
    let o = child.wait_with_output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Waits (at most a minute) until something listens on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "{what} did not listen on {port}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Where flowrun provisions DuckDB extensions for this user (the Python client loads the same files).
pub fn flowrun_extension_dir() -> PathBuf {
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
    let cache = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
    cache.unwrap_or(home.join(".cache")).join("flowrun/duckdb-extensions/v1.5.5/linux_amd64")
}
