//! The lakehouse: DuckLake tables and GeoParquet written by flowrun, read back by independent clients
//! (the stock `duckdb==1.5.5` Python package with the same extension files, GeoPandas, and
//! `geoparquet-validator`), for the three catalog kinds.

use std::path::{Path, PathBuf};

use crate::servers::Postgres;
use crate::util::{Scratch, TWO_DATASETS, flowrun_extension_dir, free_port, pv_data, python_json};

/// Two real datasets -> `consolidated` (polygons and points) -> a SQL model over it -> a guard that fails
/// when `fail` equals the SQL model's row count (to fail a run in its last node).
pub(crate) fn lake_flow(catalog: &str, data_path: &str) -> String {
    format!(
        r#"[flow]
name = "lake_test"
modules = ["flowrun_pv", "tables", "demo"]
outputs = ["guard"]

[inputs]
mirror = {{ default = "mirror" }}

[config]
fail = -1

{TWO_DATASETS}
[nodes.per_dataset]
sql = "SELECT dataset_name, count(*) AS n, sum(area_m2) AS area_m2 FROM consolidated GROUP BY dataset_name ORDER BY dataset_name"

[nodes.n_datasets]
fn = "row_count"
inputs = {{ table = "per_dataset" }}

[nodes.guard]
fn = "fail_on"
inputs = {{ x = "n_datasets", fail_on = "fail" }}
params = {{ message = "the guard failed on purpose" }}

[lake]
catalog = "{catalog}"
data_path = "{data_path}"

[materialize.pv]
node = "consolidated"
kind = "ducklake"
table = "pv"

[materialize.per_dataset]
node = "per_dataset"
kind = "ducklake"
schema = "stats"
mode = "merge"
key = ["dataset_name"]

[materialize.pv_parquet]
node = "consolidated"
kind = "geoparquet"
path = "out/pv.parquet"
"#
    )
}

/// A scratch directory with a mirror holding the given datasets of `../shared/data/pv` (symlinked).
fn scratch_with_mirror(datasets: &[&str]) -> Scratch {
    let s = Scratch::new();
    mirror(&s, "mirror", datasets);
    s
}

fn mirror(s: &Scratch, name: &str, datasets: &[&str]) -> PathBuf {
    let dir = s.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for d in datasets {
        std::os::unix::fs::symlink(pv_data().join(d), dir.join(d)).unwrap();
    }
    dir
}

/// Where flowrun provisioned the DuckDB extensions (the Python client loads the same files).
fn extension_dirs() -> Vec<String> {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap());
    vec![
        flowrun_extension_dir().display().to_string(),
        home.join(".duckdb/extensions/v1.5.5/linux_amd64").display().to_string(),
    ]
}

/// The stock DuckDB Python client: loads the extension files, attaches the lake, and answers questions.
const READ_LAKE: &str = r#"
import duckdb, json, os, sys
attach, data_path, ext_dirs, versions = sys.argv[1], sys.argv[2], sys.argv[3].split(','), json.loads(sys.argv[4])
con = duckdb.connect()
for name in ['ducklake', 'sqlite_scanner', 'postgres_scanner']:
    for d in ext_dirs:
        p = os.path.join(d, name + '.duckdb_extension')
        if os.path.exists(p):
            con.execute(f"LOAD '{p}'")
            break
con.execute(f"ATTACH '{attach}' AS lake (DATA_PATH '{data_path}', READ_ONLY)")
q = lambda sql: con.execute(sql).fetchall()
out = {
    'tables': sorted(f'{s}.{t}' for s, t in q("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'lake'")),
    'pv_rows': q('SELECT count(*) FROM lake.main.pv')[0][0],
    'pv_types': {c: t for c, t, *_ in q('DESCRIBE lake.main.pv')},
    'stats': q('SELECT dataset_name, n FROM lake.stats.per_dataset ORDER BY 1'),
    'snapshots': [r[0] for r in q('SELECT snapshot_id FROM lake.snapshots() ORDER BY 1')],
    'messages': [r[0] for r in q('SELECT commit_message FROM lake.snapshots() WHERE commit_message IS NOT NULL ORDER BY snapshot_id')],
    'runs': q('SELECT status, snapshot_id FROM lake.main.flowrun_runs ORDER BY snapshot_id'),
    'run_times': q('SELECT epoch(started_at), epoch(finished_at) FROM lake.main.flowrun_runs ORDER BY snapshot_id'),
    'node_runs': q("SELECT count(*), count(DISTINCT run_id) FROM lake.main.flowrun_node_runs"),
    'at': {str(v): q(f'SELECT count(*) FROM lake.main.pv AT (VERSION => {v})')[0][0] for v in versions},
}
first = q("SELECT case_id FROM read_csv_auto('" + sys.argv[5] + "') ORDER BY case_id LIMIT 1")[0][0]
out['uspvdb_first_id'] = str(first)
out['uspvdb_point'] = q(f"SELECT ST_AsText(geometry) FROM lake.main.pv WHERE unified_id = 'usa_uspvdb:{first}'")
out['uspvdb_distinct_points'] = q("SELECT count(DISTINCT (xlong, ylat)) FROM read_csv_auto('" + sys.argv[5] + "')")[0][0]
out['uspvdb_csv'] = q(f"SELECT xlong, ylat FROM read_csv_auto('" + sys.argv[5] + f"') WHERE case_id = {first}")
print(json.dumps(out, default=str))
"#;

/// GeoPandas and the GeoParquet validator on the file.
const READ_GEOPARQUET: &str = r#"
import json, sys
import geopandas, geoparquet_validator as gpv
df = geopandas.read_parquet(sys.argv[1])
report = gpv.check(sys.argv[1])
print(json.dumps({
    'rows': len(df),
    'crs': df.crs.to_string(),
    'bounds': [float(b) for b in df.total_bounds],
    'core': gpv.conformant(report, 'core'),
    'covering': gpv.conformant(report, 'covering'),
    'failed': gpv.failed(report),
    'passed': sorted(o['id'] for o in report['outcomes'] if o['status'] == 'pass'),
}))
"#;

fn read_lake(attach: &str, data_path: &Path, versions: &[i64]) -> serde_json::Value {
    let uspvdb_csv = pv_data().join("usa_uspvdb/uspvdb_v1_0_20231108.csv");
    python_json(
        READ_LAKE,
        &[
            attach,
            &format!("{}/", data_path.display()),
            &extension_dirs().join(","),
            &serde_json::to_string(versions).unwrap(),
            &uspvdb_csv.display().to_string(),
        ],
    )
}

fn snapshot_of(out: &crate::util::Out) -> i64 {
    out.json()["materialized"]["snapshot"].as_i64().unwrap_or_else(|| panic!("no snapshot: {}", out.stdout))
}

/// The whole materialization story for one catalog: write, read back independently, a second run, time
/// travel, a run failing in its last node, a type change the lake cannot take.
fn materialization_suite(catalog_in_flow: &str, python_attach: &str) {
    let s = scratch_with_mirror(&["ind_pv_solar_farms_2022", "usa_uspvdb"]);
    let data = s.path().join("lake_data");
    s.write("flow.toml", &lake_flow(catalog_in_flow, &data.display().to_string()));

    // run 1: two datasets, on a machine whose clock is not in UTC (the run history's times are instants)
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let first = s.run_env(&["--json", "run", "flow.toml"], &[("TZ", "America/New_York")]).ok();
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let v1 = snapshot_of(&first);
    let lake = read_lake(python_attach, &data, &[v1]);
    // commits into a catalog file take turns by its lock; into PostgreSQL's, by `flowrun_commit_turn`
    let turn = catalog_in_flow.starts_with("postgres:").then_some("main.flowrun_commit_turn");
    let tables = turn.into_iter().chain(["main.flowrun_materializations", "main.flowrun_node_runs"]);
    let tables: Vec<&str> = tables.chain(["main.flowrun_runs", "main.pv", "stats.per_dataset"]).collect();
    assert_eq!(lake["tables"], serde_json::json!(tables));
    // `consolidated` drops exact duplicates (same geometry): two USPVDB rows share a point
    let uspvdb = lake["uspvdb_distinct_points"].as_i64().unwrap();
    assert_eq!(uspvdb, 3698);
    assert_eq!(lake["pv_rows"], 1363 + uspvdb, "{lake}");
    assert_eq!(lake["stats"], serde_json::json!([["ind_pv_solar_farms_2022", 1363], ["usa_uspvdb", uspvdb]]));
    let types = &lake["pv_types"];
    assert!(types["geometry"].as_str().unwrap().starts_with("GEOMETRY"), "{types}");
    assert_eq!(types["area_m2"], "DOUBLE");
    assert_eq!(types["unified_id"], "VARCHAR");
    assert_eq!(types["geometry_repaired"], "BOOLEAN");
    // one geometry, checked against the source CSV read by DuckDB itself
    let csv = &lake["uspvdb_csv"][0];
    let wkt = lake["uspvdb_point"][0][0].as_str().unwrap().to_string();
    let coords: Vec<f64> =
        wkt.trim_start_matches("POINT (").trim_end_matches(')').split(' ').map(|c| c.parse().unwrap()).collect();
    assert!((coords[0] - csv[0].as_f64().unwrap()).abs() < 1e-9 && (coords[1] - csv[1].as_f64().unwrap()).abs() < 1e-9);
    // one snapshot for the whole run, with the flow and run id in its message
    let run_id = first.json()["run_id"].as_str().unwrap().to_string();
    let messages: Vec<String> =
        lake["messages"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().into()).collect();
    assert_eq!(messages, vec![format!("flowrun: flow lake_test, run {run_id}")]);
    assert_eq!(lake["runs"], serde_json::json!([["ok", v1]]));
    let times = &lake["run_times"][0];
    for t in [times[0].as_f64().unwrap(), times[1].as_f64().unwrap()] {
        assert!(t >= before.floor() - 1.0 && t <= after + 1.0, "run times {times} outside [{before}, {after}]");
    }

    // GeoParquet: GeoPandas and the validator
    let gp = python_json(READ_GEOPARQUET, &[&s.path().join("out/pv.parquet").display().to_string()]);
    assert_eq!(gp["rows"], 1363 + uspvdb);
    assert_eq!(gp["crs"], "OGC:CRS84");
    assert!(gp["core"].as_bool().unwrap() && gp["covering"].as_bool().unwrap(), "{gp}");
    assert_eq!(gp["failed"], serde_json::json!([]));
    assert!(gp["passed"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().contains("covering")), "{gp}");
    let b: Vec<f64> = gp["bounds"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // India and the US: west of -60 and east of 60, all in the northern hemisphere
    assert!(b[0] < -60.0 && b[2] > 60.0 && b[1] > 0.0 && b[3] < 72.0, "{b:?}");

    // an unchanged rerun writes no snapshot; nor does one after `cache clear` (the lake's ledger knows)
    let again = s.run(&["--json", "run", "flow.toml"]).ok();
    assert!(again.json()["materialized"]["snapshot"].is_null(), "{}", again.stdout);
    s.run(&["cache", "clear"]).ok();
    let cleared = s.run(&["--json", "run", "flow.toml"]).ok();
    assert!(!cleared.nodes("executed").is_empty());
    assert!(cleared.json()["materialized"]["snapshot"].is_null(), "{}", cleared.stdout);

    // run 2: the mirror now holds only India -> a second snapshot; time travel still sees run 1
    let only_india = mirror(&s, "mirror2", &["ind_pv_solar_farms_2022"]);
    let second = s.run(&["--json", "run", "flow.toml", "--mirror", &only_india.display().to_string()]).ok();
    let v2 = snapshot_of(&second);
    assert!(v2 > v1);
    let lake = read_lake(python_attach, &data, &[v1, v2]);
    assert_eq!(lake["pv_rows"], 1363);
    assert_eq!(lake["at"][v1.to_string()], 1363 + uspvdb, "time travel to the first run: {lake}");
    assert_eq!(lake["at"][v2.to_string()], 1363);
    // `per_dataset` is merged on dataset_name: the USPVDB row of run 1 stays, India's is updated
    assert_eq!(lake["stats"], serde_json::json!([["ind_pv_solar_farms_2022", 1363], ["usa_uspvdb", uspvdb]]));
    let snapshots = lake["snapshots"].clone();

    // a run failing in its last node leaves the lake where it was
    let failed = s.run(&["--json", "run", "flow.toml", "--mirror", "mirror", "--set", "fail=2"]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(failed.stdout.contains("the guard failed on purpose"), "{}", failed.stdout);
    let lake = read_lake(python_attach, &data, &[]);
    assert_eq!(lake["snapshots"], snapshots, "no new snapshot after a failed run");
    assert_eq!(lake["pv_rows"], 1363);

    // a column type the lake cannot promote (BIGINT -> VARCHAR) in a merged table: clear error, nothing
    // written (with mode = "replace" the table would simply be rewritten)
    let flow = std::fs::read_to_string(s.path().join("flow.toml")).unwrap();
    s.write("flow.toml", &flow.replace("count(*) AS n", "CAST(count(*) AS VARCHAR) || ' rows' AS n"));
    let changed = s.run(&["run", "flow.toml", "--mirror", "mirror"]);
    assert_eq!(changed.code, 3, "{}", changed.stderr);
    assert!(changed.stderr.contains("column `n`"), "{}", changed.stderr);
    assert!(changed.stderr.contains("stays at its previous snapshot"), "{}", changed.stderr);
    let lake = read_lake(python_attach, &data, &[]);
    assert_eq!(lake["snapshots"], snapshots, "nothing was written");
    assert_eq!(lake["pv_rows"], 1363, "the first table of that run was not written either");

    // `lake gc`: nothing orphaned here; a catalog without a lock file (PostgreSQL) keeps the newest hour
    let gc = s.run(&["--json", "lake", "gc", "flow.toml", "--older-than-hours", "0", "--dry-run"]);
    if catalog_in_flow.starts_with("postgres:") {
        assert_eq!(gc.code, 3, "{}", gc.stderr);
        assert!(gc.stderr.contains("--older-than-hours 1 or more"), "{}", gc.stderr);
    } else {
        assert_eq!(gc.ok().json()["files"], serde_json::json!([]));
    }
    let gc = s.run(&["--json", "lake", "gc", "flow.toml", "--dry-run"]).ok();
    assert_eq!(gc.json()["files"], serde_json::json!([]));
}

#[test]
fn duckdb_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("lake.ducklake");
    materialization_suite(&catalog.display().to_string(), &format!("ducklake:{}", catalog.display()));
}

#[test]
fn sqlite_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("lake.sqlite");
    materialization_suite(&format!("sqlite:{}", catalog.display()), &format!("ducklake:sqlite:{}", catalog.display()));
}

#[test]
fn postgres_catalog() {
    let pg = Postgres::start();
    materialization_suite(&format!("postgres:{}", pg.conninfo()), &format!("ducklake:postgres:{}", pg.conninfo()));
}

#[test]
fn unreachable_postgres_is_a_clear_error_and_the_results_stay_cached() {
    let s = scratch_with_mirror(&["ind_pv_solar_farms_2022"]);
    let port = free_port(); // nothing listens there
    let flow = lake_flow(
        &format!("postgres:dbname=lake host=127.0.0.1 port={port} user=postgres connect_timeout=3"),
        &s.path().join("data").display().to_string(),
    );
    s.write("flow.toml", &flow);
    let out = s.run(&["run", "flow.toml"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("cannot attach the DuckLake catalog postgres:"), "{}", out.stderr);
    assert!(out.stderr.contains("is the PostgreSQL server running"), "{}", out.stderr);
    assert!(!s.path().join("out/pv.parquet").exists(), "nothing is materialized when the lake is unreachable");
    // the node results are kept: a dry run finds everything cached
    let explain = s.run(&["--json", "explain", "flow.toml"]).ok();
    assert!(explain.nodes("would_run").is_empty(), "{}", explain.stdout);
}

#[test]
fn unknown_catalog_kind_and_bad_table_names_are_refused_before_running() {
    let s = scratch_with_mirror(&["ind_pv_solar_farms_2022"]);
    s.write("flow.toml", &lake_flow("mysql:db=lake", "data"));
    let out = s.run(&["run", "flow.toml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("unknown catalog kind `mysql`"), "{}", out.stderr);

    let flow = lake_flow("lake.ducklake", "data").replace(r#"table = "pv""#, r#"table = "pv\"; DROP TABLE x; --""#);
    s.write("flow.toml", &flow);
    let out = s.run(&["run", "flow.toml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("table name `pv\"; DROP TABLE x; --` is not allowed"), "{}", out.stderr);
    assert!(out.stderr.contains("flow.toml:"), "the error points into the flow: {}", out.stderr);
    assert!(!s.path().join("lake.ducklake").exists(), "nothing ran, nothing was created");

    s.write("flow.toml", &lake_flow("lake.ducklake", "data"));
    for (setting, says) in [
        ("commit_retries=-5", "commit_retries is a whole number of at least 0, not `-5`"),
        ("commit_retry_wait_ms=2.5", "commit_retry_wait_ms is a whole number"),
        ("commit_retry_backoff=0.5", "commit_retry_backoff is a number of at least 1"),
    ] {
        let out = s.run(&["run", "flow.toml", "--lake", setting]);
        assert_eq!(out.code, 2, "{setting}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{setting}: {}", out.stderr);
    }
    assert!(!s.path().join("lake.ducklake").exists(), "nothing ran, nothing was created");
}

#[test]
fn extensions_are_provisioned_from_an_empty_cache() {
    // a fresh HOME: no DuckDB extension directory, no flowrun cache; DuckDB's own INSTALL cannot reach
    // its repository here, so the extension comes from PyPI through pip
    let home = tempfile::tempdir().unwrap();
    let s = scratch_with_mirror(&["ind_pv_solar_farms_2022"]);
    s.write("flow.toml", &lake_flow("lake.ducklake", "data"));
    let home_s = home.path().display().to_string();
    let out = s.run_env(
        &["--json", "run", "flow.toml"],
        &[("HOME", &home_s), ("XDG_CACHE_HOME", ""), ("FLOWRUN_DUCKDB_EXTENSIONS", ""), ("PIP_NO_CACHE_DIR", "1")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let cached = home.path().join(".cache/flowrun/duckdb-extensions/v1.5.5/linux_amd64/ducklake.duckdb_extension");
    let installed = home.path().join(".duckdb/extensions/v1.5.5/linux_amd64/ducklake.duckdb_extension");
    assert!(cached.is_file() || installed.is_file(), "ducklake was provisioned under the fresh HOME");
    assert!(out.json()["materialized"]["snapshot"].as_i64().is_some());
}

/// flowrun's DuckDB loads extension files without DuckDB's per-LOAD signature check (0.1-0.2 s each): the
/// contents of each file are checked once by an instance that enforces signatures, and checked again when
/// they change. A file changed after its check (same size, same modification time) is refused.
#[test]
fn extension_signatures_are_checked_once_per_file() {
    let (home, user) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = user.path().join("ducklake.duckdb_extension");
    std::fs::copy(flowrun_extension_dir().join("ducklake.duckdb_extension"), &file).unwrap();
    let s = scratch_with_mirror(&["ind_pv_solar_farms_2022"]);
    s.write("flow.toml", &lake_flow("lake.ducklake", "data"));
    let (home_s, user_s) = (home.path().display().to_string(), user.path().display().to_string());
    let env = [
        ("HOME", home_s.as_str()),
        ("XDG_CACHE_HOME", ""),
        ("FLOWRUN_DUCKDB_EXTENSIONS", user_s.as_str()),
        ("FLOWRUN_DUCKDB_NO_INSTALL", "1"),
        ("FLOWRUN_DUCKDB_NO_PIP", "1"),
    ];
    let run = || s.run_env(&["--json", "run", "flow.toml", "--no-cache"], &env);
    let first = run();
    assert_eq!(first.code, 0, "{}", first.stderr);
    let verified = home.path().join(".cache/flowrun/duckdb-extensions/verified");
    let records = || std::fs::read_dir(&verified).map(|d| d.count()).unwrap_or(0);
    assert_eq!(records(), 1, "one checked file recorded");
    assert_eq!(run().code, 0);
    assert_eq!(records(), 1, "unchanged contents are not checked again");
    // one byte changed in the middle of the file: same size, and its modification time put back
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    std::fs::File::options().write(true).open(&file).unwrap().set_modified(modified).unwrap();
    let refused = run();
    assert_ne!(refused.code, 0, "a changed extension file was loaded");
    assert!(refused.stderr.contains("signature"), "{}", refused.stderr);
    assert!(refused.stderr.contains("ducklake"), "{}", refused.stderr);
}

/// A cache whose records predate the lake's ledger (an older flowrun: states without `@`, a lake without
/// `flowrun_materializations`): the tables it wrote are not written again, and the ledger is told, so a
/// cleared cache afterwards appends nothing twice either.
#[test]
fn records_from_before_the_ledger_are_adopted_not_appended_again() {
    let s = scratch_with_mirror(&["ind_pv_solar_farms_2022", "usa_uspvdb"]);
    let flow = lake_flow("lake.ducklake", "data").replace(
        "[materialize.pv_parquet]",
        "[materialize.history]\nnode = \"per_dataset\"\nkind = \"ducklake\"\ntable = \"history\"\nmode = \"append\"\n\n[materialize.pv_parquet]",
    );
    s.write("flow.toml", &flow);
    s.run(&["run", "flow.toml"]).ok();
    let lake = |sql: &str| -> i64 {
        let q = "import duckdb, os, sys\ncon = duckdb.connect()\ncon.execute(f\"LOAD '{os.path.join(sys.argv[3], 'ducklake.duckdb_extension')}'\")\n\
                 con.execute(f\"ATTACH 'ducklake:{sys.argv[1]}' AS lake (DATA_PATH '{sys.argv[2]}')\")\n\
                 con.execute(sys.argv[4])\nprint(con.execute('SELECT count(*) FROM lake.main.history').fetchall()[0][0])";
        let ext = flowrun_extension_dir().display().to_string();
        let catalog = s.path().join("lake.ducklake").display().to_string();
        python_json(q, &[&catalog, &format!("{}/data/", s.path().display()), &ext, sql]).as_i64().unwrap()
    };
    // make it look older: no ledger in the lake, and the cache's states without the catalog's stamp; and
    // someone emptied `pv` (a replaced table), which the old record cannot know
    assert_eq!(lake("DROP TABLE lake.main.flowrun_materializations"), 2);
    assert_eq!(lake("DELETE FROM lake.main.pv"), 2);
    let legacy = "import sqlite3, sys\ncon = sqlite3.connect(sys.argv[1])\n\
                  con.execute(\"UPDATE state SET value = substr(value, 1, instr(value, '@') - 1) WHERE instr(value, '@') > 0\")\n\
                  con.commit()\nprint(con.execute(\"SELECT count(*) FROM state WHERE value LIKE '%@%'\").fetchone()[0])";
    let index = s.path().join(".flowrun/cache/index.sqlite").display().to_string();
    assert_eq!(python_json(legacy, &[&index]), 0);
    let adopted = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(lake("SELECT 1"), 2, "nothing appended again: {}", adopted.stdout);
    let report = adopted.json();
    let written: Vec<&str> = report["materialized"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"].as_str().unwrap().starts_with("written"))
        .map(|t| t["destination"].as_str().unwrap())
        .collect();
    assert_eq!(written, vec!["main.pv"], "the emptied table is written back, the appended one is not");
    let old_states = "import sqlite3, sys\ncon = sqlite3.connect(sys.argv[1])\n\
                      print(con.execute(\"SELECT count(*) FROM state WHERE key LIKE 'materialized:ducklake:%' AND instr(value, '@') = 0\").fetchone()[0])";
    assert_eq!(python_json(old_states, &[&index]), 0, "no state is from before the ledger any more");
    s.run(&["cache", "clear"]).ok();
    let cleared = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(lake("SELECT 1"), 2, "the ledger knows the adopted rows: {}", cleared.stdout);
}

/// The lake's ledger: `append` adds the same rows once, whatever the local cache knows (cleared, or another
/// working directory); a table another directory replaced is written again by a run that wants it back.
#[test]
fn the_lake_ledger_answers_for_every_directory() {
    let catalog_dir = tempfile::tempdir().unwrap();
    let catalog = catalog_dir.path().join("lake.ducklake");
    let data = catalog_dir.path().join("data");
    let flow = lake_flow(&catalog.display().to_string(), &data.display().to_string()).replace(
        "[materialize.pv_parquet]",
        "[materialize.history]\nnode = \"per_dataset\"\nkind = \"ducklake\"\ntable = \"history\"\nmode = \"append\"\n\n[materialize.pv_parquet]",
    );
    let count = |table: &str| -> i64 {
        let q = "import duckdb, os, sys\ncon = duckdb.connect()\ncon.execute(f\"LOAD '{os.path.join(sys.argv[3], 'ducklake.duckdb_extension')}'\")\n\
                 con.execute(f\"ATTACH 'ducklake:{sys.argv[1]}' AS lake (DATA_PATH '{sys.argv[2]}', READ_ONLY)\")\n\
                 print(con.execute(f'SELECT count(*) FROM lake.main.{sys.argv[4]}').fetchall()[0][0])";
        let ext = flowrun_extension_dir().display().to_string();
        python_json(q, &[&catalog.display().to_string(), &format!("{}/", data.display()), &ext, table])
            .as_i64()
            .unwrap()
    };
    let full = 1363 + 3698;
    let a = scratch_with_mirror(&["ind_pv_solar_farms_2022", "usa_uspvdb"]);
    a.write("flow.toml", &flow);
    a.run(&["run", "flow.toml"]).ok();
    assert_eq!((count("history"), count("pv")), (2, full));
    a.run(&["cache", "clear"]).ok();
    a.run(&["run", "flow.toml"]).ok();
    assert_eq!(count("history"), 2, "the same rows are not appended again after `cache clear`");
    let b = scratch_with_mirror(&["ind_pv_solar_farms_2022", "usa_uspvdb"]);
    b.write("flow.toml", &flow);
    let other = b.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(count("history"), 2, "nor from another working directory: {}", other.stdout);
    let india = mirror(&b, "india", &["ind_pv_solar_farms_2022"]).display().to_string();
    let b_india = b.run(&["--json", "run", "flow.toml", "--mirror", &india]).ok();
    assert_eq!((count("history"), count("pv")), (3, 1363), "new rows are appended: {}", b_india.stdout);
    // `a` still remembers writing the full table; the catalog changed since, so the ledger decides
    let back = a.run(&["--json", "run", "flow.toml"]).ok();
    assert!(back.json()["materialized"]["snapshot"].is_i64(), "{}", back.stdout);
    assert_eq!((count("history"), count("pv")), (3, full), "pv is full again; history was appended before");
    let settled = a.run(&["--json", "run", "flow.toml"]).ok();
    assert!(settled.json()["materialized"]["snapshot"].is_null(), "{}", settled.stdout);
    // a table dropped outside flowrun (stock DuckDB) is written back by the next run
    let drop = "import duckdb, os, sys\ncon = duckdb.connect()\ncon.execute(f\"LOAD '{os.path.join(sys.argv[3], 'ducklake.duckdb_extension')}'\")\n\
                con.execute(f\"ATTACH 'ducklake:{sys.argv[1]}' AS lake (DATA_PATH '{sys.argv[2]}')\")\n\
                con.execute('DROP TABLE lake.main.pv')\nprint('{}')";
    let ext = flowrun_extension_dir().display().to_string();
    python_json(drop, &[&catalog.display().to_string(), &format!("{}/", data.display()), &ext]);
    let restored = a.run(&["--json", "run", "flow.toml"]).ok();
    assert!(restored.json()["materialized"]["snapshot"].is_i64(), "{}", restored.stdout);
    assert_eq!(count("pv"), full);
    // `a` made the catalog's last change: its new value for the replaced table is written, and the
    // appended one is not appended again (`b` appended these rows before: the ledger is asked for appends)
    let a_india = a.run(&["--json", "run", "flow.toml", "--mirror", &india]).ok();
    assert!(a_india.json()["materialized"]["snapshot"].is_i64(), "{}", a_india.stdout);
    assert_eq!((count("history"), count("pv")), (3, 1363), "{}", a_india.stdout);
}

#[test]
fn runs_lists_recent_runs() {
    let s = scratch_with_mirror(&["ind_pv_solar_farms_2022"]);
    s.write("flow.toml", &lake_flow(&s.path().join("lake.ducklake").display().to_string(), "data"));
    let run = s.run(&["--json", "run", "flow.toml"]).ok();
    let run_id = run.json()["run_id"].as_str().unwrap().to_string();
    let out = s.run(&["runs"]).ok();
    assert!(out.stdout.contains(&run_id), "{}", out.stdout);
    assert!(out.stdout.contains("lake_test"), "{}", out.stdout);
    let nodes = s.run(&["runs", "--run", &run_id]).ok();
    assert!(nodes.stdout.contains("consolidated"), "{}", nodes.stdout);
}

#[test]
fn sql_nodes_load_spatial_when_a_query_needs_it() {
    let s = scratch_with_mirror(&["ind_pv_solar_farms_2022"]);
    let catalog = s.path().join("lake.ducklake");
    let flow = lake_flow(&catalog.display().to_string(), &s.path().join("data").display().to_string()).replace(
        "sum(area_m2) AS area_m2 FROM",
        "sum(area_m2) AS area_m2, max(abs(ST_X(ST_Centroid(geometry)) - centroid_lon)) AS centroid_gap FROM",
    );
    s.write("flow.toml", &flow);
    s.run(&["run", "flow.toml"]).ok();
    let out = python_json(
        r#"
import duckdb, json, os, sys
con = duckdb.connect()
con.execute(f"LOAD '{os.path.join(sys.argv[3], 'ducklake.duckdb_extension')}'")
con.execute(f"ATTACH 'ducklake:{sys.argv[1]}' AS lake (DATA_PATH '{sys.argv[2]}/', READ_ONLY)")
print(json.dumps(con.execute('SELECT n, centroid_gap FROM lake.stats.per_dataset').fetchall()))
"#,
        &[&catalog.display().to_string(), &s.path().join("data").display().to_string(), &extension_dirs()[0]],
    );
    // DuckDB spatial's planar centroid and flowrun's agree closely on small polygons
    assert_eq!(out[0][0], 1363);
    assert!(out[0][1].as_f64().unwrap() < 0.01, "{out}");
}

/// `--jobs N` gives DuckDB N threads too (a SQL node reads DuckDB's `threads` setting).
#[test]
fn jobs_bound_duckdbs_threads() {
    let s = Scratch::new();
    s.write(
        "flow.toml",
        "[flow]\nname = \"threads\"\noutputs = [\"threads\", \"one\", \"two\"]\n\n\
         [nodes.threads]\nsql = \"SELECT current_setting('threads')::BIGINT AS t\"\n\n\
         [nodes.one]\nsql = \"SELECT 1::BIGINT AS t\"\n\n[nodes.two]\nsql = \"SELECT 2::BIGINT AS t\"\n",
    );
    for (jobs, same_as) in [("1", "one"), ("2", "two")] {
        let out = s.run(&["--json", "run", "flow.toml", "--jobs", jobs, "--recompute", "threads"]).ok();
        let identity = |node: &str| {
            out.json()["outputs"].as_array().unwrap().iter().find(|o| o["node"] == node).unwrap()["identity"].clone()
        };
        assert_eq!(identity("threads"), identity(same_as), "--jobs {jobs}: {}", out.stdout);
    }
}

/// `pylance` on a Lance dataset: its versions, rows at each, column types, the geometry field's extension
/// and the geometries' bounds (decoded from WKB by shapely).
const READ_LANCE: &str = r#"
import json, sys, lance, shapely
path = sys.argv[1]
ds = lance.dataset(path)
versions = [v['version'] for v in ds.versions()]
out = {
    'latest': ds.version,
    'versions': versions,
    'rows': ds.count_rows(),
    'at': {str(v): lance.dataset(path, version=v).count_rows() for v in versions},
    'types': {f.name: str(f.type) for f in ds.schema},
}
if 'geometry' in ds.schema.names:
    field = ds.schema.field('geometry')
    out['geometry_extension'] = (field.metadata or {}).get(b'ARROW:extension:name', b'').decode()
    geoms = shapely.from_wkb(ds.to_table(columns=['geometry']).column('geometry').to_numpy(zero_copy_only=False))
    out['bounds'] = [float(b) for b in shapely.total_bounds(geoms)]
    out['distinct_ids'] = len(set(ds.to_table(columns=['unified_id']).column('unified_id').to_pylist()))
print(json.dumps(out))
"#;

#[test]
fn lance_datasets_get_one_version_per_committing_run() {
    let s = scratch_with_mirror(&["ind_pv_solar_farms_2022", "usa_uspvdb"]);
    let only_india = mirror(&s, "mirror2", &["ind_pv_solar_farms_2022"]);
    let flow = format!(
        r#"[flow]
name = "lance_test"
modules = ["flowrun_pv"]

[inputs]
mirror = {{ default = "mirror" }}

{TWO_DATASETS}
[nodes.per_dataset]
sql = "SELECT dataset_name, count(*) AS n FROM consolidated GROUP BY dataset_name ORDER BY dataset_name"

[materialize.pv]
node = "consolidated"
kind = "lance"
path = "out/pv.lance"

[materialize.counts]
node = "per_dataset"
kind = "lance"
path = "out/counts.lance"
mode = "append"
"#
    );
    s.write("flow.toml", &flow);
    let read = |name: &str| python_json(READ_LANCE, &[&s.path().join("out").join(name).display().to_string()]);
    let statuses = |out: &crate::util::Out| -> Vec<String> {
        out.json()["materialized"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| format!("{} {}", t["section"].as_str().unwrap(), t["status"].as_str().unwrap()))
            .collect()
    };

    let first = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(statuses(&first), ["pv written, version 1", "counts written, version 1"]);
    let pv = read("pv.lance");
    let both = 1363 + 3698;
    assert_eq!((pv["versions"].clone(), pv["rows"].as_i64()), (serde_json::json!([1]), Some(both)), "{pv}");
    assert_eq!(pv["distinct_ids"].as_i64(), Some(both));
    assert_eq!(pv["geometry_extension"], "geoarrow.wkb", "{pv}");
    assert_eq!(pv["types"]["geometry"], "binary");
    assert_eq!(pv["types"]["unified_id"], "string");
    assert_eq!(pv["types"]["area_m2"], "double");
    let b: Vec<f64> = pv["bounds"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // India and the US, as the GeoParquet test sees them
    assert!(b[0] < -60.0 && b[2] > 60.0 && b[1] > 0.0 && b[3] < 72.0, "{b:?}");

    // an unchanged rerun commits nothing: no new version of either dataset
    let again = s.run(&["--json", "run", "flow.toml"]).ok();
    assert_eq!(statuses(&again), ["pv unchanged", "counts unchanged"]);
    assert_eq!(read("counts.lance")["versions"], serde_json::json!([1]));

    // new values: overwrite makes version 2 with India only (version 1 still readable); append adds a row
    let second = s.run(&["--json", "run", "flow.toml", "--mirror", &only_india.display().to_string()]).ok();
    assert_eq!(statuses(&second), ["pv written, version 2", "counts written, version 2"]);
    let pv = read("pv.lance");
    assert_eq!(pv["at"], serde_json::json!({"1": both, "2": 1363}), "{pv}");
    let counts = read("counts.lance");
    assert_eq!(counts["at"], serde_json::json!({"1": 2, "2": 3}), "{counts}");

    // a commit the dataset refuses (appending other columns) fails the run, naming the section and the
    // dataset; readers still open the previous version
    s.write("flow.toml", &flow.replace("count(*) AS n", "count(*) AS rows_read"));
    let refused = s.run(&["run", "flow.toml", "--mirror", &only_india.display().to_string()]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(refused.stderr.contains("materialization `counts`"), "{}", refused.stderr);
    assert!(refused.stderr.contains("counts.lance"), "{}", refused.stderr);
    let counts = read("counts.lance");
    assert_eq!((counts["latest"].as_i64(), counts["rows"].as_i64()), (Some(2), Some(3)), "{counts}");
    assert_eq!(counts["types"]["n"], "int64");

    // the dataset keeps flowrun's record of what was committed: after `cache clear` (as from another
    // directory or machine) the same values commit nothing, and the appended row is not appended again
    s.write("flow.toml", &flow);
    s.run(&["cache", "clear"]).ok();
    let cleared = s.run(&["--json", "run", "flow.toml", "--mirror", &only_india.display().to_string()]).ok();
    assert_eq!(statuses(&cleared), ["pv unchanged", "counts unchanged"]);
    assert_eq!(read("counts.lance")["at"], serde_json::json!({"1": 2, "2": 3}));
    // a mode changed is a change: the same value, now overwriting, makes version 3 with its one row
    s.write("flow.toml", &flow.replace("mode = \"append\"", "mode = \"overwrite\""));
    let overwritten = s.run(&["--json", "run", "flow.toml", "--mirror", &only_india.display().to_string()]).ok();
    assert_eq!(statuses(&overwritten), ["pv unchanged", "counts written, version 3"]);
    assert_eq!(read("counts.lance")["at"], serde_json::json!({"1": 2, "2": 3, "3": 1}));
    // and back to append: the row appended in version 2 went with the overwrite, so it is appended again
    s.write("flow.toml", &flow);
    let appended = s.run(&["--json", "run", "flow.toml", "--mirror", &only_india.display().to_string()]).ok();
    assert_eq!(statuses(&appended), ["pv unchanged", "counts written, version 4"]);
    assert_eq!(read("counts.lance")["at"], serde_json::json!({"1": 2, "2": 3, "3": 1, "4": 2}));
}
