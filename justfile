# flowrun's tasks. `just` is optional: every recipe is a plain cargo/python command you can copy.
# One cargo profile everywhere (release), one target directory outside the clone: everything is compiled
# once, not once per profile or per clone (with --features bundled, DuckDB alone takes 25+ minutes).

export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", env_var("HOME") + "/.cache/flowrun-target")

# run the main job: the PV pipeline on ../shared/data/pv
run *ARGS:
    cargo run --release -- flows/doi_pv.toml {{ARGS}}

# all tests (engine and cache tests build in seconds; the rest link DuckDB)
test *ARGS:
    cargo test --release --workspace {{ARGS}}

# engine benchmarks: chain / wide / fan-out, per-node figures
bench:
    cargo run --release --bin bench -- engine

# a lake commit's fixed cost, then 1M synthetic polygons written three ways: DuckLake, GeoParquet (crate), DuckDB COPY
bench-lake N="1000000":
    cargo run --release --bin bench -- lake --sizes {{N}}

# the PV flow: cold, cached, one-parameter rerun; then synthetic rows (100000,1000000,10000000 for the
# scale case: about 4 minutes and 22 GB of temporary disk for 10M)
bench-doi-pv SIZES="100000,1000000":
    cargo build --release --bin flowrun
    cargo run --release --bin bench -- doi-pv --sizes {{SIZES}}

# one core: the readers' MB/s (GeoJSON, shapefile, CSV) and each per-row stage against the bare library call
bench-stages N="200000":
    cargo bench --workspace --bench stages -- --sizes {{N}}

# flowrun vs Apache Hamilton on the same synthetic flows, side by side (installs sf-hamilton in a venv)
bench-vs-hamilton:
    cargo build --release --bin bench
    python3 bench/vs_hamilton.py --bench "$CARGO_TARGET_DIR/release/bench"

# flowrun vs GeoPandas on the PV flow: shared data, then 150K and 1M synthetic rows (uses ~/.cache/flowrun/test-venv)
bench-vs-geopandas *ARGS:
    cargo build --release --bin flowrun
    python3 bench/vs_geopandas.py --flowrun "$CARGO_TARGET_DIR/release/flowrun" {{ARGS}}

# two bench binaries interleaved phase by phase (paired ratios; this machine's timings drift by a third)
bench-compare OLD NEW *ARGS:
    python3 bench/compare.py {{OLD}} {{NEW}} {{ARGS}}

# draw the PV flow (DOT; add --mermaid for Mermaid)
graph *ARGS:
    cargo run --release -- graph flows/doi_pv.toml {{ARGS}}

fmt:
    cargo fmt --all

lint:
    cargo fmt --all -- --check
    cargo clippy --release --workspace --all-targets -- -D warnings

# what CI runs
ci:
    .ci/run

# past one machine on loopback S3 (moto): remote-cache rerun, 1/2/4 workers on N synthetic rows, DuckLake on S3
bench-remote N="400000":
    cargo build --release --bin flowrun
    cargo run --release --bin bench -- remote --sizes {{N}}

# kill the PV datasets flow at 200 random moments (SIGKILL), rerunning to completion after each
torture KILLS="200":
    FLOWRUN_TORTURE_KILLS={{KILLS}} cargo test --release --test tests -- torture --nocapture

# the property tests of the flow parser and the readers with many more cases than the test suite's 256
fuzz CASES="20000":
    PROPTEST_CASES={{CASES}} cargo test --release --workspace --test fuzz
