//! Where the DuckDB library comes from.
//!
//! By default flowrun links the official prebuilt DuckDB 1.5.5 C library (`libduckdb.so`, as DuckDB's own
//! Node.js package ships it on the npm registry) instead of compiling the bundled C++ sources (25-60 minutes
//! on 2 cores). This script finds it, in this order: `$FLOWRUN_LIBDUCKDB_DIR`; flowrun's cache
//! (`$XDG_CACHE_HOME` or `~/.cache`, `flowrun/libduckdb/<version>/`); else it downloads the npm tarball,
//! checks its SHA-256 and unpacks the library into that cache. The library is copied next to this build's
//! outputs (so `cargo test` and `cargo run` find it) and its cache directory becomes the binaries' rpath (so
//! they find it wherever they are run from). With `--features bundled` DuckDB is compiled from source instead
//! and none of this runs.

use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGE: &str = "@duckdb/node-bindings-linux-x64";
const VERSION: &str = "1.5.5-r.5";
const TARBALL_SHA256: &str = "86d2bda909785550e8a14a57a8a4584827aff0e268d8f1a58c3fd48559f7020e";

fn main() {
    println!("cargo:rerun-if-env-changed=FLOWRUN_LIBDUCKDB_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_BUNDLED").is_some() {
        return;
    }
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" {
        panic!("the prebuilt DuckDB library is set up for x86_64 Linux only; build with --features bundled");
    }
    let dir = match std::env::var_os("FLOWRUN_LIBDUCKDB_DIR") {
        Some(d) => PathBuf::from(d),
        None => cache_dir().join("flowrun/libduckdb").join(VERSION),
    };
    let lib = dir.join("libduckdb.so");
    if !lib.is_file() {
        fetch(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot get the prebuilt DuckDB library ({e}). Put libduckdb.so of DuckDB 1.5.5 in a directory and \
                 set FLOWRUN_LIBDUCKDB_DIR to it (`npm pack {PACKAGE}@{VERSION}` has it), or build with \
                 --features bundled to compile DuckDB from source"
            )
        });
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy(&lib, out.join("libduckdb.so")).expect("copying libduckdb.so next to the build");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    // for the binaries of packages that depend on this one (`DEP_FLOWRUN_DUCKDB_LIB_DIR`)
    println!("cargo:lib_dir={}", dir.display());
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"),
    }
}

/// Downloads the npm tarball, checks it, and unpacks `libduckdb.so` into `dir`.
fn fetch(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = PACKAGE.rsplit('/').next().unwrap_or(PACKAGE);
    let url = format!("https://registry.npmjs.org/{PACKAGE}/-/{name}-{VERSION}.tgz");
    let tgz = dir.join("package.tgz");
    run(Command::new("curl")
        .args(["--fail", "--silent", "--show-error", "--location", "--retry", "3", "-o"])
        .arg(&tgz)
        .arg(&url))?;
    let sum = run(Command::new("sha256sum").arg(&tgz))?;
    if !sum.starts_with(TARBALL_SHA256) {
        let _ = std::fs::remove_file(&tgz);
        return Err(format!("{url} does not have the expected SHA-256 {TARBALL_SHA256} (got {sum})"));
    }
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
    run(Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(&staging).arg("package/libduckdb.so"))?;
    // renamed into place last: a killed build leaves no half-written library at the final path
    std::fs::rename(staging.join("package/libduckdb.so"), dir.join("libduckdb.so")).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_file(&tgz);
    Ok(())
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
