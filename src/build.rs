//! The binaries and tests of this package find the prebuilt DuckDB library through an rpath to the directory
//! `flowrun-lake`'s build script got it into (see `lake/build.rs`; nothing to do with `--features bundled`).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_FLOWRUN_DUCKDB_LIB_DIR");
    if let Ok(dir) = std::env::var("DEP_FLOWRUN_DUCKDB_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
