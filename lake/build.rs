//! Where the DuckDB library comes from.
//!
//! By default flowrun links the official prebuilt DuckDB 1.5.5 C library (`libduckdb.so`, as DuckDB's own
//! Node.js package ships it on the npm registry) instead of compiling the bundled C++ sources (25-60 minutes
//! on 2 cores). This script finds it, in this order: `$FLOWRUN_LIBDUCKDB_DIR`; flowrun's cache
//! (`$XDG_CACHE_HOME` or `~/.cache`, `flowrun/libduckdb/<version>/`); else it downloads the npm tarball,
//! checks its SHA-256 and unpacks the library into that cache. The library is copied into the profile's
//! output directory (`target/release/libduckdb.so`), and the binaries' rpath is `$ORIGIN` (a binary copied
//! elsewhere finds a `libduckdb.so` beside it), `$ORIGIN/..` (test binaries in `deps/`), then the cache
//! directory. With `--features bundled`, and on targets other than x86_64 Linux (where `Cargo.toml` turns
//! `bundled` on), DuckDB is compiled from source instead and none of this runs.

use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGE: &str = "@duckdb/node-bindings-linux-x64";
const VERSION: &str = "1.5.5-r.5";
const TARBALL_SHA256: &str = "86d2bda909785550e8a14a57a8a4584827aff0e268d8f1a58c3fd48559f7020e";

fn main() {
    println!("cargo:rerun-if-env-changed=FLOWRUN_LIBDUCKDB_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if std::env::var_os("CARGO_FEATURE_BUNDLED").is_some() || target != "x86_64-unknown-linux-gnu" {
        return;
    }
    let dir = match std::env::var_os("FLOWRUN_LIBDUCKDB_DIR") {
        Some(d) => std::path::absolute(PathBuf::from(d)).expect("FLOWRUN_LIBDUCKDB_DIR is a path"),
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
    // a library supplied by hand must be the version the bindings were generated for
    let bytes = std::fs::read(&lib).expect("reading libduckdb.so");
    if !bytes.windows(7).any(|w| w == b"\0v1.5.5") {
        panic!("{} is not DuckDB 1.5.5 (flowrun's bindings are for 1.5.5)", lib.display());
    }
    println!("cargo:rerun-if-changed={}", lib.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    install(&lib, &out);
    // target/<profile>/build/flowrun-lake-<hash>/out -> target/<profile>, where the binaries go
    if let Some(profile_dir) = out.ancestors().nth(3) {
        install(&lib, profile_dir);
    }
    println!("cargo:rustc-link-search=native={}", out.display());
    let rpath = format!("$ORIGIN:$ORIGIN/..:{}", dir.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
    // for the binaries of packages that depend on this one (`DEP_FLOWRUN_DUCKDB_RPATH`)
    println!("cargo:rpath={rpath}");
}

/// Copies `lib` into `dir` through a file of this process renamed into place (two builds at once, say
/// rust-analyzer's and cargo's, never see a half-copied library).
fn install(lib: &Path, dir: &Path) {
    let tmp = dir.join(format!(".libduckdb.so.{}", std::process::id()));
    std::fs::copy(lib, &tmp).and_then(|_| std::fs::rename(&tmp, dir.join("libduckdb.so"))).unwrap_or_else(|e| {
        panic!("copying libduckdb.so into {}: {e}", dir.display());
    });
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
    // names of this process: two builds fetching at once do not write over each other
    let tgz = dir.join(format!("package-{}.tgz", std::process::id()));
    run(Command::new("curl")
        .args(["--fail", "--silent", "--show-error", "--location", "--retry", "3", "-o"])
        .arg(&tgz)
        .arg(&url))?;
    let sum = run(Command::new("sha256sum").arg(&tgz))?;
    if !sum.starts_with(TARBALL_SHA256) {
        let _ = std::fs::remove_file(&tgz);
        return Err(format!("{url} does not have the expected SHA-256 {TARBALL_SHA256} (got {sum})"));
    }
    let staging = dir.join(format!("staging-{}", std::process::id()));
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
