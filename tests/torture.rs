//! Kill it anywhere: the PV datasets flow (downloads from a mirror served on 127.0.0.1, node runs, cache
//! writes, the DuckLake commit, the GeoParquet write) killed with SIGKILL at random moments spread over a
//! whole run, then run again to completion. After each: no corrupt cache entry is served (the rerun's
//! results equal a clean run's), no partial file sits at the GeoParquet path, no temporary file is left
//! behind, and at the end every snapshot the lake ever had holds one whole run's rows. Every fifth kill is
//! a Ctrl-C instead (once, or twice), and two in five are aimed: one the moment the GeoParquet file's
//! temporary appears, one the moment the lake's commit writes its first data file. Only kills that find the
//! run still going count. `just torture` runs it with more kills (`FLOWRUN_TORTURE_KILLS`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::lake::lake_flow;
use crate::util::{Out, Scratch, flowrun_extension_dir, free_port, pv_data, python, python_json, wait_for_port};

/// `python -m http.server` over a directory with two mirrors: `full/` (India, USPVDB) and `india/`.
struct Mirror {
    child: Child,
    port: u16,
    /// Served while the mirror lives.
    _root: tempfile::TempDir,
}

impl Mirror {
    fn start() -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        for (mirror, datasets) in
            [("full", &["ind_pv_solar_farms_2022", "usa_uspvdb"][..]), ("india", &["ind_pv_solar_farms_2022"])]
        {
            std::fs::create_dir_all(dir.path().join(mirror)).unwrap();
            for d in datasets {
                std::os::unix::fs::symlink(pv_data().join(d), dir.path().join(mirror).join(d)).unwrap();
            }
        }
        let port = free_port();
        let child = Command::new(python())
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "http.server");
        Mirror { child, port, _root: dir }
    }

    fn url(&self, which: &str) -> String {
        format!("http://127.0.0.1:{}/{which}", self.port)
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `path` is a whole Parquet file (or absent): it begins and ends with `PAR1`.
fn whole_or_absent(path: &Path) -> bool {
    match std::fs::read(path) {
        Err(_) => true,
        Ok(b) => b.len() > 8 && b.starts_with(b"PAR1") && b.ends_with(b"PAR1"),
    }
}

/// Every file under `dir`, however deep.
fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| if e.path().is_dir() { files_in(&e.path()) } else { 1 })
        .sum()
}

/// Waits until `ready()` or the end of `child`, whichever is first; true for `ready()`.
fn wait_for(child: &mut Child, ready: impl Fn() -> bool) -> bool {
    loop {
        if ready() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Temporary files: a GeoParquet file's beside `out/pv.parquet`, the cache's `tmp/`, unfinished downloads.
fn temporaries(s: &Scratch) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs =
        vec![s.path().join("out"), s.path().join(".flowrun/cache/tmp"), s.path().join(".flowrun/cache/downloads")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                dirs.push(e.path());
            } else if dir.ends_with("tmp")
                || name.ends_with(".tmp")
                || name.ends_with(".part")
                || name.starts_with(".tmp")
            {
                out.push(format!("{}/{name}", dir.display()));
            }
        }
    }
    out
}

/// Every snapshot's row count of `pv`, and the data files no snapshot references (DuckLake's own answer).
const LAKE_HISTORY: &str = r#"
import duckdb, json, os, sys
con = duckdb.connect()
con.execute(f"LOAD '{os.path.join(sys.argv[3], 'ducklake.duckdb_extension')}'")
con.execute(f"ATTACH 'ducklake:{sys.argv[1]}' AS lake (DATA_PATH '{sys.argv[2]}')")
q = lambda sql: con.execute(sql).fetchall()
snapshots = [r[0] for r in q("SELECT snapshot_id FROM lake.snapshots() WHERE changes['tables_inserted_into'] IS NOT NULL ORDER BY 1")]
counts = []
for v in snapshots:
    try:
        counts.append(q(f'SELECT count(*) FROM lake.main.pv AT (VERSION => {v})')[0][0])
    except duckdb.Error:
        pass
orphans = q("CALL ducklake_delete_orphaned_files('lake', cleanup_all => true, dry_run => true)")
print(json.dumps({'counts': counts, 'orphans': [o[0] for o in orphans]}))
"#;

#[test]
fn kill_it_anywhere_and_run_again() {
    let kills: usize = std::env::var("FLOWRUN_TORTURE_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mirror = Mirror::start();
    let s = Scratch::new();
    let (catalog, data) = (s.path().join("lake.ducklake"), s.path().join("lake_data"));
    s.write("flow.toml", &lake_flow(&catalog.display().to_string(), &data.display().to_string()));
    let run = |which: &str| -> Vec<String> {
        vec!["--json".into(), "run".into(), "flow.toml".into(), "--mirror".into(), mirror.url(which)]
    };
    let outputs = |o: &Out| o.json()["outputs"].clone();

    // the clean references, and how long a cold run takes (the kills are spread over that)
    let reference = Scratch::new();
    reference.write("flow.toml", &lake_flow(&reference.path().join("l.ducklake").display().to_string(), "ld"));
    let t = Instant::now();
    let full = reference.run(&run("full").iter().map(String::as_str).collect::<Vec<_>>()).ok();
    let cold = t.elapsed();
    let india = reference.run(&run("india").iter().map(String::as_str).collect::<Vec<_>>()).ok();
    let (full, india) = (outputs(&full), outputs(&india));

    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("torture seed {seed}, cold run {cold:?}");
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let (mut recovered, mut hit, mut interrupts, mut i) = (0, 0, 0, 0);
    let (mut in_geoparquet, mut in_commit) = (0, 0);
    while hit < kills {
        assert!(i < kills * 4, "only {hit} of {i} kills found the run still going");
        // alternate the mirror so that every run changes the lake; three runs in four start from an empty cache
        let which = if i % 2 == 0 { "india" } else { "full" };
        if i % 4 != 3 {
            s.run(&["cache", "clear"]).ok();
        }
        let args = run(which);
        let data_files = files_in(&data);
        let started = Instant::now();
        let mut child = s.cmd().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // aimed: the GeoParquet temporary beside out/pv.parquet, or the commit's first new data file
        let aimed = match i % 5 {
            2 => wait_for(&mut child, || temporaries(&s).iter().any(|t| t.contains("out/")))
                .then_some(&mut in_geoparquet),
            3 => wait_for(&mut child, || files_in(&data) > data_files).then_some(&mut in_commit),
            // a Ctrl-C needs the process to have reached `main` (before that, SIGINT's default action applies)
            4 => {
                std::thread::sleep(cold.mul_f64(random() * 1.1).max(Duration::from_millis(100)));
                None
            }
            _ => {
                std::thread::sleep(cold.mul_f64(random() * 1.1));
                None
            }
        };
        let at = started.elapsed();
        // a kill only counts when it finds the run still going; every fifth is Ctrl-C (once, or twice)
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            hit += 1;
            if let Some(count) = aimed {
                *count += 1;
            }
            if i % 5 == 4 {
                interrupts += 1;
                let pid = child.id().to_string();
                let sigint = || Command::new("kill").args(["-INT", &pid]).status().unwrap();
                sigint();
                if i % 10 == 9 {
                    std::thread::sleep(Duration::from_millis(30));
                    sigint();
                }
                let code = child.wait().unwrap().code();
                assert!(matches!(code, Some(0) | Some(130)), "Ctrl-C {i} at {at:?}: exit {code:?}");
            } else {
                let _ = child.kill();
                child.wait().unwrap();
            }
        } else {
            child.wait().unwrap();
        }
        assert!(
            whole_or_absent(&s.path().join("out/pv.parquet")),
            "kill {i} at {at:?}: a partial file at the final path"
        );

        let rerun = s.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(rerun.code, 0, "kill {i} at {at:?}: the rerun failed\n{}\n{}", rerun.stdout, rerun.stderr);
        let expected = if which == "full" { &full } else { &india };
        assert_eq!(&outputs(&rerun), expected, "kill {i} at {at:?}: the rerun's results differ from a clean run's");
        assert!(whole_or_absent(&s.path().join("out/pv.parquet")));
        assert_eq!(temporaries(&s), Vec::<String>::new(), "kill {i} at {at:?}: temporary files left behind");
        recovered += usize::from(killed);
        i += 1;
    }
    let kills = hit;
    println!(
        "kills: {kills}, recovered: {recovered} ({interrupts} of them Ctrl-C, {in_geoparquet} aimed at the GeoParquet \
         write, {in_commit} at the lake's commit; {} runs ended before their kill)",
        i - hit
    );
    assert_eq!(recovered, kills);
    assert!(in_geoparquet > 0 && in_commit > 0, "no kill hit the GeoParquet write or the lake's commit");

    // every snapshot the lake had holds one whole run's rows; no data file is left unreferenced
    let ext = flowrun_extension_dir().display().to_string();
    let history = python_json(LAKE_HISTORY, &[&catalog.display().to_string(), &format!("{}/", data.display()), &ext]);
    let (whole_full, whole_india) = (1363 + 3698, 1363);
    for c in history["counts"].as_array().unwrap() {
        assert!(c == whole_full || c == whole_india, "a snapshot with {c} rows: {history}");
    }
    // data files a killed commit wrote stay unreferenced in the lake's data path (flowrun does not delete files
    // in a data path another lake may share); DuckLake's own `ducklake_delete_orphaned_files` removes them
    for f in history["orphans"].as_array().unwrap() {
        assert!(f.as_str().unwrap().starts_with(&data.display().to_string()), "{f}");
    }
    let orphans = history["orphans"].as_array().unwrap().len();
    // `flowrun lake gc` deletes them (all of them here: none is younger than 0 hours); the lake reads as before
    let gc = s.run(&["--json", "lake", "gc", "flow.toml", "--older-than-hours", "0"]).ok();
    assert_eq!(gc.json()["files"].as_array().unwrap().len(), orphans, "{}", gc.stdout);
    let after = python_json(LAKE_HISTORY, &[&catalog.display().to_string(), &format!("{}/", data.display()), &ext]);
    assert_eq!(after["orphans"], serde_json::json!([]), "{after}");
    assert_eq!(after["counts"], history["counts"], "every snapshot still reads");
    println!("orphaned data files of killed commits: {orphans}, deleted by `flowrun lake gc`");
}
