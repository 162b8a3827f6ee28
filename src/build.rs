//! The binaries and tests of this package find the prebuilt DuckDB library through the rpath that
//! `flowrun-lake`'s build script chose (`$ORIGIN`, `$ORIGIN/..`, its cache directory; see `lake/build.rs`;
//! nothing to do with `--features bundled`).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_FLOWRUN_DUCKDB_RPATH");
    if let Ok(rpath) = std::env::var("DEP_FLOWRUN_DUCKDB_RPATH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
    }
}
