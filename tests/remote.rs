//! Past one machine: a `prod` target with its DuckLake catalog on PostgreSQL, its data, GeoParquet and
//! remote cache on S3 (moto's server), several workers (`--shard`), and the faults of each piece. Every
//! server is real and started here on loopback; stock DuckDB, pyarrow and GeoPandas read the results.

use std::path::{Path, PathBuf};
use std::process::Child;

use crate::servers::{Postgres, S3Server, Slurm};
use crate::util::{Out, Scratch, TWO_DATASETS, finish, flowrun_extension_dir, free_port, pv_data, python_json, spawn};

const BUCKET: &str = "lake-bucket";

/// Two real datasets (one fan-out item each) -> `consolidated` -> a SQL model, written to two lake tables
/// and a GeoParquet file; `pause` waits `pause_ms` (to stop a server in the middle of a run). The default
/// target is local; `prod` puts the catalog on `postgres` and everything else in `bucket`.
fn remote_flow(name: &str, table: &str, postgres: &str, bucket: &str) -> String {
    format!(
        r#"[flow]
name = "{name}"
modules = ["flowrun_pv", "tables", "demo"]
outputs = ["pause"]

[inputs]
mirror = {{ default = "mirror" }}

[config]
pause_ms = 0

{TWO_DATASETS}
[nodes.per_dataset]
sql = "SELECT dataset_name, count(*) AS n FROM consolidated GROUP BY dataset_name ORDER BY dataset_name"

[nodes.n_datasets]
fn = "row_count"
inputs = {{ table = "per_dataset" }}

[nodes.pause]
fn = "sleep_ms"
inputs = {{ x = "n_datasets", ms = "pause_ms" }}

[lake]
catalog = "lake.ducklake"
data_path = "lake_data"

[materialize.pv]
node = "consolidated"
kind = "ducklake"
table = "{table}"

[materialize.per_dataset]
node = "per_dataset"
kind = "ducklake"
table = "{table}_per_dataset"

[materialize.pv_parquet]
node = "consolidated"
kind = "geoparquet"
path = "out/{table}.parquet"

[targets.prod.lake]
catalog = "postgres:{postgres}"
data_path = "s3://{bucket}/data"
exports = "s3://{bucket}/exports"

[targets.prod.cache]
remote = "s3://{bucket}/cache"
"#
    )
}

/// Another machine (a working directory and a `HOME` of its own): the flow, a mirror of the two datasets, and a mirror
/// of India only (`mirror_india`, to change what a run writes).
fn machine(flow: &str) -> Scratch {
    let s = Scratch::machine();
    s.write("flow.toml", flow);
    let dir = s.path().join("mirror");
    std::fs::create_dir_all(&dir).unwrap();
    for d in ["ind_pv_solar_farms_2022", "usa_uspvdb"] {
        std::os::unix::fs::symlink(pv_data().join(d), dir.join(d)).unwrap();
    }
    let india = s.path().join("mirror_india");
    std::fs::create_dir_all(&india).unwrap();
    std::os::unix::fs::symlink(pv_data().join("ind_pv_solar_farms_2022"), india.join("ind_pv_solar_farms_2022"))
        .unwrap();
    s
}

fn run_on(s: &Scratch, s3: &S3Server, args: &[&str]) -> Out {
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.run_env(args, &env)
}

fn spawn_on(s: &Scratch, s3: &S3Server, args: &[&str]) -> Child {
    spawn(s, args, &s3.env())
}

/// Stock DuckDB 1.5.5 (Python) with the extension files flowrun provisioned: attaches a lake, S3 secret
/// given, and returns every table's row count and the text of its run history.
const READ_LAKE: &str = r#"
import duckdb, json, os, sys
attach, data_path, ext_dir, s3 = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
con = duckdb.connect()
for name in ['httpfs', 'ducklake', 'postgres_scanner']:
    con.execute(f"LOAD '{os.path.join(ext_dir, name + '.duckdb_extension')}'")
if s3:
    con.execute(f"""CREATE SECRET lake_s3 (TYPE s3, KEY_ID '{s3['key']}', SECRET '{s3['secret']}', REGION 'us-east-1',
                    ENDPOINT '{s3['host']}', URL_STYLE 'path', USE_SSL false)""")
con.execute(f"ATTACH '{attach}' AS lake (DATA_PATH '{data_path}', READ_ONLY)")
q = lambda sql: con.execute(sql).fetchall()
tables = q("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'lake' ORDER BY 1, 2")
counts = {f'{s}.{t}': q(f'SELECT count(*) FROM lake.{s}.{t}')[0][0] for s, t in tables}
text = lambda t: q(f'SELECT COLUMNS(*)::VARCHAR FROM {t}')
history = [text('lake.main.flowrun_runs'), text('lake.main.flowrun_node_runs'), text('lake.snapshots()')]
files = q("SELECT data_file FROM ducklake_list_files('lake', 'pv')") if 'main.pv' in counts else []
runs = q('SELECT run_id, snapshot_id FROM lake.main.flowrun_runs ORDER BY 2') if 'main.flowrun_runs' in counts else []
# every row of `pv` but its time of processing, in one digest that ignores row order
rows = "SELECT concat_ws('~', COLUMNS(c -> c != 'processed_at')) AS r FROM lake.main.pv"
digest = q(f"SELECT md5(string_agg(r, '|' ORDER BY r)) FROM ({rows})")[0][0] if 'main.pv' in counts else None
print(json.dumps({'counts': counts, 'history': json.dumps(history, default=str), 'runs': runs,
                  'files': [f[0] for f in files], 'snapshots': len(history[2]), 'pv_digest': digest}))
"#;

fn read_lake(attach: &str, data_path: &str, s3: Option<&S3Server>) -> serde_json::Value {
    let s3 = s3.map(|s| {
        serde_json::json!({"key": s.key_id, "secret": s.secret, "host": format!("127.0.0.1:{}", s.port)}).to_string()
    });
    // (flowrun's prebuilt DuckDB has httpfs built in, so a run caches no file of it: the client needs one)
    for name in ["httpfs", "ducklake", "postgres"] {
        let sources = flowrun_lake::extensions::ExtensionSources::from_env();
        flowrun_lake::extensions::provision(name, &sources).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
    let ext = flowrun_extension_dir().display().to_string();
    python_json(READ_LAKE, &[attach, data_path, &ext, s3.as_deref().unwrap_or("null")])
}

/// GeoPandas on a GeoParquet object in S3 (through pyarrow's S3 filesystem).
const READ_S3_GEOPARQUET: &str = r#"
import geopandas, json, sys, pyarrow.fs
port, key, secret, path = sys.argv[1:5]
fs = pyarrow.fs.S3FileSystem(access_key=key, secret_key=secret, endpoint_override=f'127.0.0.1:{port}',
                             scheme='http', region='us-east-1')
df = geopandas.read_parquet(path, filesystem=fs)
print(json.dumps({'rows': len(df), 'crs': df.crs.to_string(), 'geometry': df.geometry.geom_type.unique().tolist()}))
"#;

/// Every file under `dir`, for a byte search.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() { todo.push(p) } else { out.push(p) }
        }
    }
    out
}

/// The node runs that executed (rather than came from a cache).
fn ran(out: &Out) -> Vec<String> {
    out.nodes("executed")
}

#[test]
fn prod_target_writes_postgres_and_s3_and_a_second_machine_runs_nothing() {
    let (s3, pg) = (S3Server::start(), Postgres::start());
    s3.create_bucket(BUCKET);
    let flow = remote_flow("remote_test", "pv", &pg.conninfo(), BUCKET);
    let a = machine(&flow);

    // the default target: local, no service
    let local = a.run(&["--json", "run", "flow.toml"]).ok();
    let local_lake = read_lake(
        &format!("ducklake:{}", a.path().join("lake.ducklake").display()),
        &format!("{}/", a.path().join("lake_data").display()),
        None,
    );
    let counts = local_lake["counts"].clone();
    assert_eq!(counts["main.pv"], 1363 + 3698, "{local_lake}");
    assert_eq!(counts["main.pv_per_dataset"], 2);

    // explain says where prod writes, and runs nothing
    let explain = run_on(&a, &s3, &["explain", "flow.toml", "--target", "prod"]).ok();
    for place in [
        "postgres:dbname=lake",
        "s3://lake-bucket/data",
        "s3://lake-bucket/exports/out/pv.parquet",
        "s3://lake-bucket/cache",
    ] {
        assert!(explain.stdout.contains(place), "explain does not name {place}:\n{}", explain.stdout);
    }
    let explain_json = run_on(&a, &s3, &["--json", "explain", "flow.toml", "--target", "prod"]).ok();
    assert_eq!(explain_json.json()["target"], "prod", "{}", explain_json.stdout);

    // prod: the same tables, read by stock DuckDB from PostgreSQL + S3
    let prod = run_on(&a, &s3, &["--json", "run", "flow.toml", "--target", "prod"]).ok();
    assert!(!ran(&local).is_empty());
    assert_eq!(ran(&prod), Vec::<String>::new(), "the local run's results serve prod too (and are shared)");
    let attach = format!("ducklake:postgres:{}", pg.conninfo());
    let lake = read_lake(&attach, "s3://lake-bucket/data/", Some(&s3));
    assert_eq!(without_turn(&lake["counts"]), counts, "prod and local hold the same tables and rows");
    let data_files = lake["files"].as_array().unwrap();
    assert!(
        !data_files.is_empty() && data_files.iter().all(|f| f.as_str().unwrap().starts_with("s3://lake-bucket/data/"))
    );
    let objects = s3.list(BUCKET, "");
    assert!(
        objects.keys().any(|k| k.starts_with("cache/blobs/")) && objects.keys().any(|k| k.starts_with("cache/keys/"))
    );
    assert!(
        !objects.keys().any(|k| k.contains(".tmp") || k.contains("tmp-")),
        "no temporary object is left: {objects:?}"
    );
    let gp = python_json(
        READ_S3_GEOPARQUET,
        &[&s3.port.to_string(), &s3.key_id, &s3.secret, "lake-bucket/exports/out/pv.parquet"],
    );
    assert_eq!(gp["rows"], counts["main.pv"]);
    assert_eq!(gp["crs"], "OGC:CRS84");

    // a second machine: another working directory and an empty local cache; nothing runs again
    let b = machine(&flow);
    let second = run_on(&b, &s3, &["--json", "run", "flow.toml", "--target", "prod"]).ok();
    assert_eq!(ran(&second), Vec::<String>::new(), "{}", second.stderr);
    assert_eq!(second.nodes("reused").len(), ran(&local).len());

    // the datasets from an S3 mirror: the same results (identities) as from the directory
    for d in ["ind_pv_solar_farms_2022", "usa_uspvdb"] {
        for f in files_under(&pv_data().join(d)) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            s3.put(BUCKET, &format!("mirror/{d}/{name}"), &f);
        }
    }
    let c = Scratch::machine();
    c.write("flow.toml", &flow);
    let from_s3 = run_on(&c, &s3, &["--json", "run", "flow.toml", "--mirror", "s3://lake-bucket/mirror"]).ok();
    let outputs = |o: &Out| o.json()["outputs"].clone();
    assert_eq!(outputs(&from_s3), outputs(&local), "{}", from_s3.stderr);

    // the secret is printed nowhere: output, errors, --json, explain, the run log, the caches, the lake
    let runs = run_on(&a, &s3, &["runs"]).ok();
    let wrong = run_on(&a, &s3, &["run", "flow.toml", "--target", "prod", "--lake", "data_path=s3://no-such-bucket/x"]);
    let mut said = String::new();
    for out in [&local, &explain, &explain_json, &prod, &second, &from_s3, &runs, &wrong] {
        said.push_str(&out.stdout);
        said.push_str(&out.stderr);
    }
    assert!(!said.contains(&s3.secret), "the secret was printed");
    assert!(!lake["history"].as_str().unwrap().contains(&s3.secret), "the secret is in the lake's run history");
    for f in [a.path(), b.path(), c.path()].into_iter().flat_map(files_under) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!bytes.windows(s3.secret.len()).any(|w| w == s3.secret.as_bytes()), "the secret is in {}", f.display());
    }
}

/// The issue's "done when": `flows/doi_pv.toml --target prod` against S3 and PostgreSQL on loopback, its
/// datasets from an S3 mirror, and stock DuckDB reads the same tables as from the local target.
#[test]
fn doi_pv_prod_target_holds_what_the_local_target_holds() {
    let (s3, pg) = (S3Server::start(), Postgres::start());
    s3.create_bucket("doi-pv");
    pg.createdb("doi_pv");
    assert!(s3.upload("doi-pv", "mirror", &pv_data()) > 10);
    let m = Scratch::machine();
    let flow = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/doi_pv.toml")).unwrap();
    m.write("flows/doi_pv.toml", &flow);
    let pg_env = [("PGHOST", "127.0.0.1".to_string()), ("PGPORT", pg.port.to_string()), ("PGUSER", "postgres".into())];
    let mut env = s3.env();
    env.extend(pg_env);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mirror = pv_data().display().to_string();

    let local = m.run_env(&["--json", "run", "flows/doi_pv.toml", "--mirror", &mirror], &env).ok();
    let prod_args = ["--json", "run", "flows/doi_pv.toml", "--target", "prod", "--mirror", "s3://doi-pv/mirror"];
    let prod = m.run_env(&prod_args, &env).ok();
    assert_eq!(prod.json()["outputs"], local.json()["outputs"], "the same results from the S3 mirror");
    let local_lake = read_lake(
        &format!("ducklake:{}", m.path().join(".flowrun/lake/doi_pv.ducklake").display()),
        &format!("{}/", m.path().join(".flowrun/lake/doi_pv_data").display()),
        None,
    );
    let prod_lake = read_lake(
        &format!("ducklake:postgres:dbname=doi_pv host=127.0.0.1 port={} user=postgres", pg.port),
        "s3://doi-pv/lake/",
        Some(&s3),
    );
    assert_eq!(without_turn(&prod_lake["counts"]), local_lake["counts"]);
    assert!(prod_lake["counts"]["prepared.prepared_pv_dedup"].as_i64().unwrap() > 20_000, "{prod_lake}");
    let gp = python_json(
        READ_S3_GEOPARQUET,
        &[&s3.port.to_string(), &s3.key_id, &s3.secret, "doi-pv/exports/prepared_pv_dedup.parquet"],
    );
    assert_eq!(gp["rows"], prod_lake["counts"]["prepared.prepared_pv_dedup"]);

    // a rerun writes nothing: neither a snapshot nor the GeoParquet object again
    let again = m.run_env(&prod_args, &env).ok();
    assert!(again.json()["materialized"]["snapshot"].is_null(), "{}", again.stdout);
    let report = again.json();
    let statuses: Vec<&str> =
        report["materialized"]["targets"].as_array().unwrap().iter().map(|t| t["status"].as_str().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == "unchanged"), "{statuses:?}");

    // explain on a machine with an empty cache reads the remote cache and changes nothing, here or there
    let fresh = Scratch::machine();
    fresh.write("flows/doi_pv.toml", &flow);
    let before = s3.list("doi-pv", "cache/");
    let explained = fresh
        .run_env(
            &["--json", "explain", "flows/doi_pv.toml", "--target", "prod", "--mirror", "s3://doi-pv/mirror"],
            &env,
        )
        .ok();
    assert!(explained.json()["counts"]["would_reuse"].as_i64().unwrap() > 0, "{}", explained.stdout);
    assert_eq!(s3.list("doi-pv", "cache/"), before, "explain put nothing in the remote cache");
    let blobs = before.keys().filter(|k| k.starts_with("cache/blobs/")).count();
    let fetched = files_under(&fresh.path().join(".flowrun/cache/objects")).len();
    assert!(fetched < blobs / 2, "explain fetches only the values it reads ({fetched} of {blobs})");
}

#[test]
fn remote_cache_faults_are_warnings_and_nothing_corrupt_is_served() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let remote = format!("s3://{BUCKET}/shared");
    let args = ["--json", "run", "flow.toml", "--remote-cache", remote.as_str()];
    let a = Scratch::machine();
    a.write("flow.toml", crate::util::FANOUT);
    let first = run_on(&a, &s3, &args).ok();
    let result = |o: &Out| o.json()["outputs"][0]["identity"].clone();

    // every blob in the remote damaged: a new machine recomputes everything, says why, and repairs them
    let junk = a.write("junk", "not a cached value");
    let blobs: Vec<String> = s3.list(BUCKET, "shared/blobs/").into_keys().collect();
    assert!(!blobs.is_empty());
    for key in &blobs {
        s3.put(BUCKET, key, &junk);
    }
    let b = Scratch::machine();
    b.write("flow.toml", crate::util::FANOUT);
    let repaired = run_on(&b, &s3, &args).ok();
    // sq[1] = 1 = plus[0]: one blob, which plus[0]'s write-through may have repaired before sq[1] looked
    let served: Vec<String> = ran(&first).into_iter().filter(|n| !ran(&repaired).contains(n)).collect();
    assert!(served.iter().all(|n| n == "sq[1]" || n == "plus[0]"), "nothing corrupt is served: {served:?}");
    assert_eq!(result(&repaired), result(&first));
    assert!(repaired.stdout.contains("holds a corrupt copy"), "{}", repaired.stdout);
    let c = Scratch::machine();
    c.write("flow.toml", crate::util::FANOUT);
    assert_eq!(ran(&run_on(&c, &s3, &args).ok()), Vec::<String>::new(), "the write-through repaired the blobs");

    // a remote that cannot be reached, or refuses the credentials: a warning, and the run goes on locally
    let d = Scratch::machine();
    d.write("flow.toml", crate::util::FANOUT);
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let down = d
        .run_env(&args, &[("AWS_ENDPOINT_URL", &nowhere), ("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")])
        .ok();
    assert_eq!(ran(&down), ran(&first));
    // a worker whose remote cache failed has not shared its items: that is its failure (exit 3, and
    // `--json` says so on stdout)
    let worker_args = [&args[..], &["--shard", "0/2"]].concat();
    let worker = d.run_env(
        &worker_args,
        &[("AWS_ENDPOINT_URL", &nowhere), ("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")],
    );
    assert_eq!(worker.code, 3, "{}\n{}", worker.stdout, worker.stderr);
    assert!(worker.stderr.contains("--shard: the remote cache failed"), "{}", worker.stderr);
    assert_eq!(worker.json()["status"], "error", "{}", worker.stdout);
    assert!(down.stdout.contains("the remote cache s3://lake-bucket/shared failed"), "{}", down.stdout);
    assert!(down.stdout.contains("cannot reach"), "{}", down.stdout);
    let e = Scratch::machine();
    e.write("flow.toml", crate::util::FANOUT);
    let endpoint = s3.endpoint();
    let refused = e
        .run_env(
            &args,
            &[
                ("AWS_ENDPOINT_URL", &endpoint),
                ("AWS_ACCESS_KEY_ID", &s3.key_id),
                ("AWS_SECRET_ACCESS_KEY", "not-the-secret-42"),
            ],
        )
        .ok();
    assert!(refused.stdout.contains("refused the credentials"), "{}", refused.stdout);
    assert!(!refused.stderr.contains("not-the-secret-42") && !refused.stdout.contains("not-the-secret-42"));
}

/// Workers with `--shard I/N` in their own directories (caches), then a final run: each item is computed
/// once, the final run computes only the fan-ins, and the lake holds what one run writes. A worker killed
/// in the middle of its items is simply started again.
#[test]
fn workers_split_the_items_and_the_lake_gets_one_runs_rows() {
    let (s3, pg) = (S3Server::start(), Postgres::start());
    s3.create_bucket(BUCKET);
    let flow = remote_flow("workers", "pv", &pg.conninfo(), BUCKET);
    let prod = ["--json", "run", "flow.toml", "--target", "prod"];

    // a worker killed (SIGKILL) in the middle of its items, once it has shared its first results: what it
    // shared is used by the worker that takes its shard over; nothing it half-wrote is
    let killed_machine = machine(&flow);
    let mut killed = spawn_on(&killed_machine, &s3, &[&prod[..], &["--shard", "0/2"]].concat());
    let started = std::time::Instant::now();
    while s3.list(BUCKET, "cache/keys/").is_empty() {
        assert!(started.elapsed().as_secs() < 60, "the worker shared nothing");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    killed.kill().unwrap();
    let finished_anyway = killed.wait().unwrap().success();

    let workers: Vec<Scratch> = (0..2).map(|_| machine(&flow)).collect();
    let children: Vec<Child> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| spawn_on(w, &s3, &[&prod[..], &["--shard", &format!("{i}/2")]].concat()))
        .collect();
    let outs: Vec<Out> = children.into_iter().map(|c| finish(c).ok()).collect();
    let item_runs = |o: &Out| -> Vec<String> { ran(o).into_iter().filter(|n| n.contains('[')).collect() };
    let (w0, w1) = (item_runs(&outs[0]), item_runs(&outs[1]));
    assert!(w0.iter().all(|n| !w1.contains(n)), "no item is computed twice: {w0:?} {w1:?}");
    // shard 0 takes the first dataset (the killed worker may have computed some of it already)
    assert!(w0.iter().all(|n| n.contains("[ind_pv_solar_farms_2022]")), "{w0:?}");
    assert!(!w1.is_empty() && w1.iter().all(|n| n.contains("[usa_uspvdb]")), "{w1:?}");
    if !finished_anyway {
        assert!(!outs[0].nodes("reused").is_empty(), "the killed worker's shared results are used: {}", outs[0].stdout);
    }
    for o in &outs {
        assert!(o.json()["materialized"].is_null(), "a shard run leaves the lake to the final run");
        assert!(o.nodes("deferred").contains(&"consolidated".to_string()), "{}", o.stdout);
    }

    let last = machine(&flow);
    let fin = run_on(&last, &s3, &prod).ok();
    assert!(item_runs(&fin).is_empty(), "the final run finds every item in the remote cache: {:?}", ran(&fin));
    let lake = read_lake(&format!("ducklake:postgres:{}", pg.conninfo()), "s3://lake-bucket/data/", Some(&s3));
    assert_eq!(lake["counts"]["main.pv"], 1363 + 3698, "{lake}");
    assert_eq!(lake["counts"]["main.pv_per_dataset"], 2);
    // the very rows one sequential run writes, on a machine of its own with the local target
    let alone = machine(&flow);
    run_on(&alone, &s3, &["run", "flow.toml"]).ok();
    let sequential = read_lake(
        &format!("ducklake:{}", alone.path().join("lake.ducklake").display()),
        &format!("{}/", alone.path().join("lake_data").display()),
        None,
    );
    assert!(lake["pv_digest"].is_string(), "{lake}");
    assert_eq!(lake["pv_digest"], sequential["pv_digest"], "the workers' lake holds one sequential run's rows");
}

/// The README's Slurm recipe, its two commands as written there (the flow, bucket and array size aside), on
/// a real one-node Slurm cluster: an array job of workers (each with its own cache directory, as on
/// separate nodes) against the `prod` target and an S3 mirror, then the final run as a job that depends on
/// the array.
#[test]
fn slurm_array_workers_then_a_dependent_final_job() {
    let (s3, pg, slurm) = (S3Server::start(), Postgres::start(), Slurm::start());
    s3.create_bucket(BUCKET);
    let m = machine(&remote_flow("slurm", "pv", &pg.conninfo(), BUCKET));
    assert!(s3.upload(BUCKET, "mirror", &m.path().join("mirror")) >= 2);
    let exe = env!("CARGO_BIN_EXE_flowrun");
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    // the README's commands: `flowrun --cache-dir ... run flows/doi_pv.toml --target prod --mirror ...`
    let command = |marker: &str| -> String {
        let line = readme.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("README: no `{marker}`"));
        let start = line.find("'flowrun").unwrap() + 1;
        line[start..start + line[start..].find('\'').unwrap()]
            .replacen("flowrun", &format!("{exe} --json"), 1)
            .replace("flows/doi_pv.toml", "flow.toml")
            .replace("s3://doi-pv/mirror", &format!("s3://{BUCKET}/mirror"))
    };
    let sbatch = |args: &[&str], wrap: &str| -> String {
        let out = slurm
            .cmd("sbatch")
            .args(["--parsable", "--chdir", &m.path().display().to_string()])
            .args(args)
            .args(["--wrap", wrap])
            .envs(s3.env())
            .envs(m.envs())
            .env("TMPDIR", m.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "sbatch: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let workers = sbatch(&["--array=0-1", "--output=worker-%a.json"], &command("--shard $SLURM_ARRAY_TASK_ID"));
    let last =
        sbatch(&[&format!("--dependency=afterok:{workers}"), "--output=final.json"], &command("flowrun-cache-final"));
    let state = slurm.wait(&last, std::time::Duration::from_secs(240));
    let report = |name: &str| -> Out {
        let stdout = std::fs::read_to_string(m.path().join(name)).unwrap_or_default();
        Out { code: 0, stdout, stderr: state.clone() }
    };
    assert!(state.contains("JobState=COMPLETED"), "{state}\n{}", report("final.json").stdout);
    let (w0, w1, fin) = (report("worker-0.json"), report("worker-1.json"), report("final.json"));
    assert!(ran(&w0).iter().any(|n| n.contains("[ind_pv_solar_farms_2022]")), "{}", w0.stdout);
    assert!(ran(&w1).iter().any(|n| n.contains("[usa_uspvdb]")), "{}", w1.stdout);
    assert!(!ran(&fin).iter().any(|n| n.contains('[')), "the final job computes no item: {:?}", ran(&fin));
    for cache in ["flowrun-cache-0", "flowrun-cache-1", "flowrun-cache-final"] {
        assert!(m.path().join(cache).is_dir(), "each task has its own cache in $TMPDIR: {cache}");
    }
    let lake = read_lake(&format!("ducklake:postgres:{}", pg.conninfo()), "s3://lake-bucket/data/", Some(&s3));
    assert_eq!(lake["counts"]["main.pv"], 1363 + 3698, "{lake}");
}

/// Two people run different flows into one new lake (one PostgreSQL catalog, one bucket) at the same moment,
/// and a third the first one's flow: every commit lands (the catalog is created once).
#[test]
fn two_flows_commit_into_one_lake_at_once() {
    let (s3, pg) = (S3Server::start(), Postgres::start());
    s3.create_bucket(BUCKET);
    let first = machine(&remote_flow("first", "pv_first", &pg.conninfo(), BUCKET));
    let second = machine(&remote_flow("second", "pv_second", &pg.conninfo(), BUCKET));
    // and a third process replacing the very tables of the first (a colleague running the same flow)
    let third = machine(&remote_flow("first", "pv_first", &pg.conninfo(), BUCKET));
    // compute the flows' nodes first, so that the runs below meet in their commits (a new catalog, too)
    for m in [&first, &second, &third] {
        run_on(m, &s3, &["run", "flow.toml"]).ok();
    }
    let runs: Vec<Child> = [&first, &second, &third]
        .iter()
        .map(|m| spawn_on(m, &s3, &["--json", "run", "flow.toml", "--target", "prod"]))
        .collect();
    // each run's history holds the snapshot it actually committed (not the one it saw next when it began);
    // the third run commits too, or finds in the lake's ledger that the first already wrote its tables
    let mut committed: Vec<(String, i64)> = Vec::new();
    for c in runs {
        let out = finish(c).ok();
        match out.json()["materialized"]["snapshot"].as_i64() {
            Some(snapshot) => committed.push((out.json()["run_id"].as_str().unwrap().to_string(), snapshot)),
            None => assert!(out.stdout.contains("\"status\":\"unchanged\""), "{}", out.stdout),
        }
    }
    committed.sort_by_key(|(_, s)| *s);
    assert!(committed.len() >= 2 && committed.windows(2).all(|w| w[0].1 < w[1].1), "{committed:?}");
    let lake = read_lake(&format!("ducklake:postgres:{}", pg.conninfo()), "s3://lake-bucket/data/", Some(&s3));
    assert_eq!(lake["counts"]["main.pv_first"], 1363 + 3698, "{lake}");
    assert_eq!(lake["counts"]["main.pv_second"], 1363 + 3698, "{lake}");
    assert_eq!(lake["counts"]["main.flowrun_runs"], committed.len(), "{lake}");
    assert_eq!(lake["runs"], serde_json::json!(committed), "{lake}");
}

/// A PostgreSQL lake's row counts without `flowrun_commit_turn`, the table its commits take turns by (a
/// catalog file's commits take turns by its lock file, and its lake has no such table).
fn without_turn(counts: &serde_json::Value) -> serde_json::Value {
    let mut counts = counts.clone();
    let turn = counts.as_object_mut().and_then(|c| c.remove("main.flowrun_commit_turn"));
    assert_eq!(turn, Some(serde_json::json!(1)), "{counts}");
    counts
}

/// Three machines append the same value to one PostgreSQL lake at the same moment: their commits overlap,
/// DuckLake makes all but one conflict (`flowrun_commit_turn`), and those re-plan, find the value in the
/// ledger and add nothing. The rows are in the table once.
#[test]
fn two_machines_appending_the_same_value_at_once_add_it_once() {
    let (s3, pg) = (S3Server::start(), Postgres::start());
    s3.create_bucket(BUCKET);
    let flow = remote_flow("same", "pv_same", &pg.conninfo(), BUCKET).replacen(
        "table = \"pv_same\"\n",
        "table = \"pv_same\"\nmode = \"append\"\n",
        1,
    );
    assert!(flow.contains("mode = \"append\""));
    let machines: Vec<Scratch> = (0..3).map(|_| machine(&flow)).collect();
    // each computes its nodes first (its own cache), so that the runs below meet in their commits
    for m in &machines {
        run_on(m, &s3, &["run", "flow.toml"]).ok();
    }
    // each holds its transaction open for a second before its COMMIT, so that the commits overlap for certain
    let mut env = s3.env();
    env.push(("FLOWRUN_TEST_HOLD_COMMIT_MS", "1000".to_string()));
    let runs: Vec<Child> =
        machines.iter().map(|m| spawn(m, &["--json", "run", "flow.toml", "--target", "prod"], &env)).collect();
    let outs: Vec<Out> = runs.into_iter().map(|c| finish(c).ok()).collect();
    let replans: i64 = outs.iter().map(|o| o.json()["materialized"]["replans"].as_i64().unwrap()).sum();
    assert!(replans >= 2, "the two later commits conflicted and were planned again: {replans}");
    let appended: Vec<&Out> = outs
        .iter()
        .filter(|o| {
            o.json()["materialized"]["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["destination"] == "main.pv_same" && t["status"].as_str().unwrap().starts_with("written"))
        })
        .collect();
    assert_eq!(appended.len(), 1, "{:?}", outs.iter().map(|o| &o.stdout).collect::<Vec<_>>());
    let lake = read_lake(&format!("ducklake:postgres:{}", pg.conninfo()), "s3://lake-bucket/data/", Some(&s3));
    assert_eq!(lake["counts"]["main.pv_same"], 1363 + 3698, "{lake}");

    // `commit_retries = 0`: the same meeting of two commits (a new value now) is not planned again; the
    // later one fails with exit 3 and the value is appended once, by the other
    let args =
        ["--json", "run", "flow.toml", "--target", "prod", "--mirror", "mirror_india", "--lake", "commit_retries=0"];
    for m in &machines[..2] {
        run_on(m, &s3, &["run", "flow.toml", "--mirror", "mirror_india"]).ok();
    }
    let runs: Vec<Child> = machines[..2].iter().map(|m| spawn(m, &args, &env)).collect();
    let outs: Vec<Out> = runs.into_iter().map(finish).collect();
    let mut codes: Vec<i32> = outs.iter().map(|o| o.code).collect();
    codes.sort();
    assert_eq!(codes, [0, 3], "{:?}", outs.iter().map(|o| &o.stderr).collect::<Vec<_>>());
    let failed = outs.iter().find(|o| o.code == 3).unwrap();
    assert!(failed.stderr.contains("maximum retry count of 0"), "{}", failed.stderr);
    let lake = read_lake(&format!("ducklake:postgres:{}", pg.conninfo()), "s3://lake-bucket/data/", Some(&s3));
    assert_eq!(lake["counts"]["main.pv_same"], 1363 + 3698 + 1363, "{lake}");
}

/// A DuckDB-file catalog with its data files on S3, the target's own `[storage]` naming the variables that
/// hold the key (no AWS_* variable set), with path-style URLs and plain HTTP said outright; stock DuckDB reads
/// the lake back from the bucket.
#[test]
fn a_catalog_file_with_its_data_on_s3_and_a_targets_own_storage() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let flow = format!(
        "{}\n[targets.mixed.lake]\ncatalog = \"mixed.ducklake\"\ndata_path = \"s3://{BUCKET}/mixed\"\n\
         exports = \"s3://{BUCKET}/mixed-exports\"\n\n[targets.mixed.storage]\nendpoint = \"{}\"\n\
         url_style = \"path\"\nallow_http = true\naccess_key_id_env = \"LAB_KEY\"\n\
         secret_access_key_env = \"LAB_SECRET\"\n",
        remote_flow("mixed", "pv", "unused", BUCKET),
        s3.endpoint()
    );
    let m = machine(&flow);
    let env = [("LAB_KEY", s3.key_id.as_str()), ("LAB_SECRET", s3.secret.as_str())];
    let out = m.run_env(&["--json", "run", "flow.toml", "--target", "mixed"], &env).ok();
    assert!(!out.stdout.contains(&s3.secret) && !out.stderr.contains(&s3.secret));
    assert!(s3.list(BUCKET, "mixed/").keys().any(|k| k.ends_with(".parquet")), "the data files are in the bucket");
    assert!(s3.list(BUCKET, "mixed-exports/").contains_key("mixed-exports/out/pv.parquet"));
    let lake = read_lake(
        &format!("ducklake:{}", m.path().join("mixed.ducklake").display()),
        &format!("s3://{BUCKET}/mixed/"),
        Some(&s3),
    );
    assert_eq!(lake["counts"]["main.pv"], 1363 + 3698, "{lake}");
}

/// What cannot work says so, names the target and what failed (exit 3), keeps the node results, and a rerun
/// finishes the job once the fault is gone.
#[test]
fn faults_name_the_target_and_a_rerun_finishes() {
    let (s3, pg) = (S3Server::start(), Postgres::start());
    s3.create_bucket(BUCKET);
    let m = machine(&remote_flow("faults", "pv", &pg.conninfo(), BUCKET));
    let prod = ["--json", "run", "flow.toml", "--target", "prod"];
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    // (what, the variable changed, its value, what the error says)
    let cases = [
        ("unreachable endpoint", "AWS_ENDPOINT_URL", nowhere.as_str(), "cannot reach"),
        ("wrong credentials", "AWS_SECRET_ACCESS_KEY", "wrong-secret-77", "refused the credentials"),
        ("missing bucket", "", "", "does not exist"),
    ];
    for (what, var, value, says) in cases {
        let mut env: Vec<(&str, String)> = s3.env();
        env.retain(|(k, _)| *k != var);
        if !var.is_empty() {
            env.push((var, value.to_string()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut args = prod.to_vec();
        if what == "missing bucket" {
            args.extend(["--lake", "data_path=s3://no-such-bucket/data"]);
        }
        let out = m.run_env(&args, &env);
        assert_eq!(out.code, 3, "{what}: {}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("target `prod`"), "{what}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{what}: expected `{says}` in {}", out.stderr);
        assert!(!out.stderr.contains("wrong-secret-77"));
    }
    // they were said before any node ran; with the fault gone the run goes through
    run_on(&m, &s3, &prod).ok();

    // PostgreSQL stops while the nodes of a run that changes the tables run: exit 3 naming the target, the
    // lake keeps its last snapshot; with PostgreSQL back, a rerun writes without computing anything again
    let before = read_lake(&format!("ducklake:postgres:{}", pg.conninfo()), "s3://lake-bucket/data/", Some(&s3));
    let india =
        ["--json", "run", "flow.toml", "--target", "prod", "--mirror", "mirror_india", "--set", "pause_ms=3000"];
    let child = spawn_on(&m, &s3, &india);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    pg.stop();
    let out = finish(child);
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("target `prod`") && out.stderr.contains("PostgreSQL"), "{}", out.stderr);
    pg.start_again();
    let after = read_lake(&format!("ducklake:postgres:{}", pg.conninfo()), "s3://lake-bucket/data/", Some(&s3));
    assert_eq!(after["snapshots"], before["snapshots"], "the lake keeps its last snapshot");
    assert_eq!(after["counts"]["main.pv"], 1363 + 3698);
    let rerun = run_on(&m, &s3, &india).ok();
    assert_eq!(ran(&rerun), Vec::<String>::new(), "{}", rerun.stderr);
    assert!(rerun.json()["materialized"]["snapshot"].is_i64(), "{}", rerun.stdout);
    let india_only = read_lake(&format!("ducklake:postgres:{}", pg.conninfo()), "s3://lake-bucket/data/", Some(&s3));
    assert_eq!(india_only["counts"]["main.pv"], 1363);
}

/// `pylance` on a Lance dataset in the S3 server: its versions and row count.
const READ_S3_LANCE: &str = r#"
import json, sys, lance
port, key, secret, path = sys.argv[1:5]
opts = {'aws_endpoint': f'http://127.0.0.1:{port}', 'aws_access_key_id': key, 'aws_secret_access_key': secret,
        'aws_region': 'us-east-1', 'allow_http': 'true'}
ds = lance.dataset(path, storage_options=opts)
print(json.dumps({'versions': [v['version'] for v in ds.versions()], 'rows': ds.count_rows()}))
"#;

#[test]
fn lance_dataset_on_s3_with_credentials_from_storage_variables() {
    let s3 = S3Server::start();
    s3.create_bucket("lance-bucket");
    // no AWS_* variable anywhere: the credentials reach DuckDB's lance extension only through [storage]
    let flow = format!(
        r#"[flow]
name = "lance_s3"
modules = ["flowrun_pv"]

[inputs]
mirror = {{ default = "mirror" }}

{TWO_DATASETS}
[storage]
endpoint = "{}"
access_key_id_env = "LAB_KEY"
secret_access_key_env = "LAB_SECRET"

[materialize.labels]
node = "consolidated"
kind = "lance"
path = "s3://lance-bucket/labels/pv.lance"
"#,
        s3.endpoint()
    );
    let s = machine(&flow);
    let env = [("LAB_KEY", s3.key_id.as_str()), ("LAB_SECRET", s3.secret.as_str())];
    let first = s.run_env(&["--json", "run", "flow.toml"], &env).ok();
    let target = &first.json()["materialized"]["targets"][0];
    assert_eq!(target["status"], "written, version 1", "{}", first.stdout);
    assert!(!first.stdout.contains(&s3.secret) && !first.stderr.contains(&s3.secret));
    let port = s3.port.to_string();
    let read = || python_json(READ_S3_LANCE, &[&port, &s3.key_id, &s3.secret, "s3://lance-bucket/labels/pv.lance"]);
    assert_eq!(read(), serde_json::json!({"versions": [1], "rows": 1363 + 3698}));
    // the version is looked up in the bucket: an unchanged rerun commits nothing
    let again = s.run_env(&["--json", "run", "flow.toml"], &env).ok();
    assert_eq!(again.json()["materialized"]["targets"][0]["status"], "unchanged", "{}", again.stdout);
    let india = s.run_env(&["--json", "run", "flow.toml", "--mirror", "mirror_india"], &env).ok();
    assert_eq!(india.json()["materialized"]["targets"][0]["status"], "written, version 2", "{}", india.stdout);
    assert_eq!(read(), serde_json::json!({"versions": [1, 2], "rows": 1363}));
}
