//! Running the binary in a scratch directory.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Scratch {
    pub dir: tempfile::TempDir,
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
        Scratch { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
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
        c
    }

    pub fn run(&self, args: &[&str]) -> Out {
        let out = self.cmd().args(args).output().expect("flowrun runs");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

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
