//! Several processes on one machine: runs on one cache, runs on one DuckDB lake catalog, `cache gc` during
//! a run, a catalog held open by another program. Each either succeeds or waits and says for whom; never a
//! corrupted cache or an error at the end of a run.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use crate::util::{Scratch, finish, python, spawn};

/// `slow` sleeps `ms` in each of 4 fan-out items, then a lake table of the results.
fn flow(catalog: &str, data: &str) -> String {
    format!(
        r#"[flow]
name = "busy"
modules = ["demo", "tables"]
outputs = ["total"]

[config]
n = 4
ms = 400

[nodes.items]
fn = "range"

[nodes.slow]
fn = "sleep_ms"
inputs = {{ x = "items" }}

[nodes.total]
fn = "sum"
inputs = {{ values = "slow" }}

[nodes.table]
sql = "SELECT 1 AS one"

[lake]
catalog = "{catalog}"
data_path = "{data}"

[materialize.table]
node = "table"
kind = "ducklake"
"#
    )
}

#[test]
fn two_runs_on_one_cache_take_turns_and_say_so() {
    let s = Scratch::new();
    s.write("flow.toml", &flow("lake.ducklake", "lake_data"));
    let first = spawn(&s, &["--json", "run", "flow.toml"], &[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // --no-wait: refused at once, naming the holder; nothing ran
    let refused = s.run(&["--json", "--no-wait", "run", "flow.toml", "--set", "ms=401"]);
    assert_eq!(refused.code, 3, "{}\n{}", refused.stdout, refused.stderr);
    assert!(refused.stderr.contains("is held by run "), "{}", refused.stderr);
    assert!(refused.stderr.contains(" (`flowrun run flow.toml`, pid "), "{}", refused.stderr);
    // the default waits, and says for whom (the run's id); both runs succeed, and `cache gc` waits its turn
    let second = spawn(&s, &["--json", "run", "flow.toml", "--set", "ms=402"], &[]);
    let gc = spawn(&s, &["cache", "gc"], &[]);
    let (first, second, gc) = (finish(first).ok(), finish(second).ok(), finish(gc).ok());
    let first_id = first.json()["run_id"].as_str().unwrap().to_string();
    assert!(
        second.stderr.contains(&format!("waiting for run {first_id} (`flowrun run flow.toml`, pid")),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains(".flowrun/cache/lock"), "{}", second.stderr);
    assert!(gc.stderr.contains("waiting for"), "{}", gc.stderr);
    assert_eq!(first.json()["status"], "ok");
    assert_eq!(second.json()["status"], "ok");
    let again = s.run(&["--json", "run", "flow.toml", "--set", "ms=402"]).ok();
    assert!(again.nodes("executed").is_empty(), "the cache is whole: {}", again.stdout);

    // `cache clear` during a run waits for it, then clears; the run is not broken by it
    let running = spawn(&s, &["--json", "run", "flow.toml", "--set", "ms=403"], &[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let clear = spawn(&s, &["cache", "clear"], &[]);
    let (running, clear) = (finish(running).ok(), finish(clear).ok());
    assert_eq!(running.json()["status"], "ok");
    assert!(clear.stderr.contains("waiting for run "), "{}", clear.stderr);
    let after = s.run(&["--json", "run", "flow.toml", "--set", "ms=403"]).ok();
    assert!(!after.nodes("executed").is_empty(), "cleared after the run: {}", after.stdout);
}

#[test]
fn two_caches_committing_into_one_duckdb_catalog_both_land() {
    two_caches_committing_into_one_catalog("lake.ducklake", "");
}

#[test]
fn two_caches_committing_into_one_sqlite_catalog_both_land() {
    two_caches_committing_into_one_catalog("lake.sqlite", "sqlite:");
}

fn two_caches_committing_into_one_catalog(file: &str, kind: &str) {
    let lake = Scratch::new();
    let catalog = format!("{kind}{}", lake.path().join(file).display());
    let data = lake.path().join("data").display().to_string();
    let (a, b) = (Scratch::new(), Scratch::new());
    for (s, table) in [(&a, "from_a"), (&b, "from_b")] {
        s.write(
            "flow.toml",
            &flow(&catalog, &data).replace("kind = \"ducklake\"", &format!("kind = \"ducklake\"\ntable = \"{table}\"")),
        );
    }
    let runs = [spawn(&a, &["--json", "run", "flow.toml"], &[]), spawn(&b, &["--json", "run", "flow.toml"], &[])];
    for out in runs.map(finish) {
        let out = out.ok();
        assert!(out.json()["materialized"]["snapshot"].is_i64(), "{}", out.stdout);
    }
    // stock DuckDB finds both tables, each with its row
    let script = "import duckdb, os, sys\ncon = duckdb.connect()\n\
         for e in ['ducklake', 'sqlite_scanner']:\n    con.execute(f\"LOAD '{os.path.join(sys.argv[3], e + '.duckdb_extension')}'\")\n\
         con.execute(f\"ATTACH 'ducklake:{sys.argv[1]}' AS lake (DATA_PATH '{sys.argv[2]}/', READ_ONLY)\")\n\
         print([con.execute(f'SELECT count(*) FROM lake.main.{t}').fetchall()[0][0] for t in ['from_a', 'from_b']])";
    let ext = crate::util::flowrun_extension_dir().display().to_string();
    assert_eq!(crate::util::python_json(script, &[&catalog, &data, &ext]), serde_json::json!([1, 1]));
}

/// Two working directories append the same value to one catalog file at the same moment (each commit held
/// open for a while): their commits take turns by the catalog's lock, and the later one finds the value
/// in the lake's ledger and adds nothing. Commits into a catalog file do not take `flowrun_commit_turn`.
#[test]
fn two_caches_appending_the_same_value_to_one_catalog_file_add_it_once() {
    for (file, kind) in [("lake.ducklake", ""), ("lake.sqlite", "sqlite:")] {
        let lake = Scratch::new();
        let catalog = format!("{kind}{}", lake.path().join(file).display());
        let data = lake.path().join("data").display().to_string();
        let (a, b) = (Scratch::new(), Scratch::new());
        for s in [&a, &b] {
            s.write(
                "flow.toml",
                &flow(&catalog, &data)
                    .replace("kind = \"ducklake\"", "kind = \"ducklake\"\ntable = \"same\"\nmode = \"append\""),
            );
        }
        let hold = [("FLOWRUN_TEST_HOLD_COMMIT_MS", "1500".to_string())];
        let runs =
            [spawn(&a, &["--json", "run", "flow.toml"], &hold), spawn(&b, &["--json", "run", "flow.toml"], &hold)];
        let mut snapshots: Vec<serde_json::Value> =
            runs.map(finish).into_iter().map(|o| o.ok().json()["materialized"]["snapshot"].clone()).collect();
        snapshots.sort_by_key(|s| s.is_null());
        assert!(
            snapshots[0].is_i64() && snapshots[1].is_null(),
            "{catalog}: one commit, one with nothing to add: {snapshots:?}"
        );
        let script = "import duckdb, os, sys\ncon = duckdb.connect()\n\
             for e in ['ducklake', 'sqlite_scanner']:\n    con.execute(f\"LOAD '{os.path.join(sys.argv[3], e + '.duckdb_extension')}'\")\n\
             con.execute(f\"ATTACH 'ducklake:{sys.argv[1]}' AS lake (DATA_PATH '{sys.argv[2]}/', READ_ONLY)\")\n\
             print(con.execute('SELECT count(*) FROM lake.main.same').fetchall()[0][0])";
        let ext = crate::util::flowrun_extension_dir().display().to_string();
        assert_eq!(crate::util::python_json(script, &[&catalog, &data, &ext]), serde_json::json!(1), "{catalog}");
    }
}

/// A Python program holding something open (`script` prints `ready` once it does), killed on drop.
struct Holder(Child);

impl Holder {
    fn start(script: &str, args: &[&std::path::Path]) -> Holder {
        let mut child = Command::new(python()).arg("-c").arg(script).args(args).stdout(Stdio::piped()).spawn().unwrap();
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready", "the holder did not start");
        Holder(child)
    }

    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Another flowrun committing into `lake.ducklake` (its `<catalog>.lock` held).
fn committing_flowrun(s: &Scratch) -> Holder {
    Holder::start(
        "import fcntl, sys, time\nf = open(sys.argv[1], 'w')\nfcntl.flock(f, fcntl.LOCK_EX)\n\
         f.write('flowrun writing the lake (pid 1)'); f.flush()\nprint('ready', flush=True)\ntime.sleep(120)",
        &[&s.path().join("lake.ducklake.lock")],
    )
}

/// In `s`: a first run of the flow, then another flowrun committing into its lake, and a second run (its
/// nodes cached, `--json`) that waits for that commit.
fn waiting_behind_a_commit(s: &Scratch) -> (Holder, std::process::Child) {
    s.write("flow.toml", &flow("lake.ducklake", "lake_data"));
    s.run(&["run", "flow.toml", "--set", "ms=1"]).ok();
    let committing = committing_flowrun(s);
    let mut waiting = spawn(s, &["--json", "run", "flow.toml", "--set", "ms=1"], &[]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(waiting.try_wait().unwrap().is_none(), "the run waits for the lake's lock");
    (committing, waiting)
}

/// A program in a write transaction on the SQLite catalog `lake.sqlite`.
fn sqlite_writer(s: &Scratch) -> Holder {
    Holder::start(
        "import sqlite3, sys, time\ncon = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
         con.execute('BEGIN EXCLUSIVE')\nprint('ready', flush=True)\ntime.sleep(120)",
        &[&s.path().join("lake.sqlite")],
    )
}

/// A run with --no-wait: refused at once (exit 3) with `says`, before any node ran.
fn refused(s: &Scratch, ms: &str, says: &str) {
    let out = s.run(&["--json", "--no-wait", "run", "flow.toml", "--set", &format!("ms={ms}")]);
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(says), "{}", out.stderr);
    assert!(out.stdout.contains("\"status\":\"error\""), "no node ran: {}", out.stdout);
}

#[test]
fn a_catalog_held_by_another_program_is_found_before_any_node_runs() {
    let s = Scratch::new();
    s.write("flow.toml", &flow("lake.ducklake", "lake_data"));
    s.run(&["run", "flow.toml"]).ok();
    // stock DuckDB opens the catalog file for writing and keeps it
    let catalog = s.path().join("lake.ducklake");
    let holder = Holder::start(
        "import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1])\nprint('ready', flush=True)\ntime.sleep(120)",
        &[&catalog],
    );
    refused(&s, "1", &format!("is held by process {}", holder.id()));
    // waiting: the run goes on once the program lets the catalog go
    let waiting = spawn(&s, &["--json", "run", "flow.toml", "--set", "ms=1"], &[]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(holder);
    let out = finish(waiting).ok();
    assert!(out.stderr.contains("waiting for process"), "{}", out.stderr);

    // a reader counts too: DuckLake attached read-only (the README's lineage query) holds a shared lock
    let reader = Holder::start(
        "import duckdb, os, sys, time\ncon = duckdb.connect()\n\
         con.execute(f\"LOAD '{os.path.join(sys.argv[2], 'ducklake.duckdb_extension')}'\")\n\
         con.execute(f\"ATTACH 'ducklake:{sys.argv[1]}' AS lake (READ_ONLY)\")\nprint('ready', flush=True)\ntime.sleep(120)",
        &[&catalog, &crate::util::flowrun_extension_dir()],
    );
    refused(&s, "2", &format!("is held by process {}", reader.id()));
    drop(reader);

    // another flowrun committing into the catalog (its `<catalog>.lock` held): --no-wait says so before
    // any node runs, not at its own commit
    let _committing = committing_flowrun(&s);
    refused(&s, "3", "is held by flowrun writing the lake (pid 1)");
}

/// A SQL node reading the lake while another program holds its catalog file waits for it (a flow that
/// writes nothing to the lake has no check before its nodes run: the node's read-only attach waits).
#[test]
fn a_sql_node_reading_a_held_lake_waits_for_it() {
    let s = Scratch::new();
    s.write("flow.toml", &flow("lake.ducklake", "lake_data"));
    s.run(&["run", "flow.toml"]).ok();
    let reads = flow("lake.ducklake", "lake_data")
        .replace("outputs = [\"total\"]", "outputs = [\"from_lake\"]")
        .replace("[materialize.table]\nnode = \"table\"\nkind = \"ducklake\"\n", "")
        + "\n[nodes.from_lake]\nsql = 'SELECT count(*) AS n FROM lake.main.\"table\"'\n";
    s.write("reads.toml", &reads);
    let holder = Holder::start(
        "import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1])\nprint('ready', flush=True)\ntime.sleep(120)",
        &[&s.path().join("lake.ducklake")],
    );
    let mut waiting = spawn(&s, &["--json", "run", "reads.toml"], &[]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(waiting.try_wait().unwrap().is_none(), "the run did not wait for the catalog");
    drop(holder);
    let out = finish(waiting).ok();
    assert!(out.stderr.contains("waiting for another process to release the lake catalog"), "{}", out.stderr);
    assert_eq!(out.json()["outputs"][0]["rows"], 1, "{}", out.stdout);
}

/// A run that waits for the lake's lock looks at the catalog only once it has the lock: a table someone
/// emptied in the meantime (stock DuckDB) is written back, by this run and not by some later one.
#[test]
fn a_table_emptied_while_a_run_waits_is_written_back() {
    let s = Scratch::new();
    let (committing, waiting) = waiting_behind_a_commit(&s);
    let rows = |sql: &str| {
        let script = "import duckdb, os, sys\ncon = duckdb.connect()\n\
             con.execute(f\"LOAD '{os.path.join(sys.argv[2], 'ducklake.duckdb_extension')}'\")\n\
             con.execute(f\"ATTACH 'ducklake:{sys.argv[1]}' AS lake\")\ncon.execute(sys.argv[3])\n\
             print(con.execute('SELECT count(*) FROM lake.main.\"table\"').fetchall()[0][0])";
        let ext = crate::util::flowrun_extension_dir().display().to_string();
        let catalog = s.path().join("lake.ducklake").display().to_string();
        crate::util::python_json(script, &[&catalog, &ext, sql]).as_i64().unwrap()
    };
    assert_eq!(rows("DELETE FROM lake.main.\"table\""), 0);
    drop(committing);
    let out = finish(waiting).ok();
    assert!(out.json()["materialized"]["snapshot"].is_i64(), "{}", out.stdout);
    assert_eq!(rows("SELECT 1"), 1, "the emptied table is written back");
}

/// A first Ctrl-C ends a run that waits for the cache's lock (exit 130, saying for whom it waited); the
/// run that holds the lock goes on.
#[test]
fn ctrl_c_ends_a_wait_for_the_cache() {
    let s = Scratch::new();
    s.write("flow.toml", &flow("lake.ducklake", "lake_data"));
    let first = spawn(&s, &["--json", "run", "flow.toml", "--set", "ms=600"], &[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut waiting = spawn(&s, &["run", "flow.toml", "--set", "ms=601"], &[]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(waiting.try_wait().unwrap().is_none(), "the second run waits");
    Command::new("kill").args(["-INT", &waiting.id().to_string()]).status().unwrap();
    let out = finish(waiting);
    assert_eq!(out.code, 130, "{}", out.stderr);
    assert!(out.stderr.contains("stopped waiting for run "), "{}", out.stderr);
    finish(first).ok();
}

/// A SQLite catalog in another program's write transaction is found before any node runs (refused with
/// --no-wait, else waited for), as a held DuckDB catalog is.
#[test]
fn a_sqlite_catalog_another_program_writes_is_found_before_any_node_runs() {
    let s = Scratch::new();
    s.write("flow.toml", &flow("sqlite:lake.sqlite", "lake_data"));
    s.run(&["run", "flow.toml", "--set", "ms=1"]).ok();
    let holder = sqlite_writer(&s);
    refused(&s, "2", &format!("is held by process {}", holder.id()));
    let mut waiting = spawn(&s, &["--json", "run", "flow.toml", "--set", "ms=3"], &[]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(waiting.try_wait().unwrap().is_none(), "the run waits for the catalog");
    drop(holder);
    let out = finish(waiting).ok();
    assert!(out.stderr.contains("waiting for process"), "{}", out.stderr);
    assert_eq!(out.json()["status"], "ok", "{}", out.stdout);

    // taken while the nodes run (after the check), and held past the end of the nodes: waited for too (the
    // table changes, so that the run has something to commit)
    let changed =
        std::fs::read_to_string(s.path().join("flow.toml")).unwrap().replace("SELECT 1 AS one", "SELECT 2 AS one");
    s.write("flow.toml", &changed);
    let running = spawn(&s, &["--json", "run", "flow.toml", "--set", "ms=700"], &[]);
    std::thread::sleep(std::time::Duration::from_millis(400));
    let late = sqlite_writer(&s);
    // longer than SQLite's own busy wait in DuckDB's sqlite extension (about 5 s)
    std::thread::sleep(std::time::Duration::from_millis(7000));
    drop(late);
    let out = finish(running).ok();
    assert!(out.stderr.contains("waiting for another process to release the lake catalog"), "{}", out.stderr);
    assert_eq!(out.json()["status"], "ok", "{}", out.stdout);
}

/// The same for a wait for the lake's lock (another flowrun committing into the catalog), after the nodes.
#[test]
fn ctrl_c_ends_a_wait_for_the_lake() {
    let s = Scratch::new();
    let (_committing, waiting) = waiting_behind_a_commit(&s);
    Command::new("kill").args(["-INT", &waiting.id().to_string()]).status().unwrap();
    let out = finish(waiting);
    assert_eq!(out.code, 130, "{}", out.stderr);
    assert!(out.stderr.contains("stopped waiting for flowrun writing the lake (pid 1)"), "{}", out.stderr);
    assert_eq!(out.stderr.matches("stopped waiting").count(), 1, "{}", out.stderr);
    // the run's report says so, with nothing materialized
    let report: serde_json::Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["status"], "interrupted", "{}", out.stdout);
    assert!(report["materialized"].is_null(), "{}", out.stdout);
}
