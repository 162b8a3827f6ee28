//! Writing N synthetic polygons three ways, side by side: Arrow -> DuckLake table, GeoParquet through the
//! `geoparquet` crate, GeoParquet through DuckDB `COPY`.

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{BinaryArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use flowrun_engine::Table;

/// N squares of ~100 m spread over the globe, in batches of 64K, geometry as geoarrow.wkb.
pub fn polygons(n: usize) -> Table {
    let extension = [("ARROW:extension:name", "geoarrow.wkb"), ("ARROW:extension:metadata", "{}")];
    let geom = Field::new("geometry", DataType::Binary, false)
        .with_metadata(extension.map(|(k, v)| (k.to_string(), v.to_string())).into());
    let schema = Arc::new(Schema::new(vec![
        Field::new("unified_id", DataType::Int64, false),
        Field::new("dataset_name", DataType::Utf8, false),
        Field::new("area_m2", DataType::Float64, false),
        geom,
    ]));
    let mut batches = Vec::new();
    let mut state: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for start in (0..n).step_by(65_536) {
        let len = (n - start).min(65_536);
        let mut wkb: Vec<Vec<u8>> = Vec::with_capacity(len);
        let mut area = Vec::with_capacity(len);
        for _ in 0..len {
            let (x, y) = (next() * 340.0 - 170.0, next() * 140.0 - 70.0);
            let d = 0.0005 + next() * 0.002;
            let ring = [(x, y), (x + d, y), (x + d, y + d), (x, y + d), (x, y)];
            // little-endian WKB: byte order, type 3 (polygon), 1 ring, 5 points
            let mut b = vec![1u8];
            [3u32, 1, 5].iter().for_each(|v| b.extend(v.to_le_bytes()));
            ring.iter().flat_map(|&(px, py)| [px, py]).for_each(|v| b.extend(v.to_le_bytes()));
            wkb.push(b);
            area.push(d * d * 1.2e10);
        }
        let ids: Vec<i64> = (start as i64..(start + len) as i64).collect();
        let names: Vec<&str> = (0..len).map(|i| if i % 3 == 0 { "ind" } else { "chn" }).collect();
        batches.push(
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(names)),
                    Arc::new(Float64Array::from(area)),
                    Arc::new(BinaryArray::from_iter_values(wkb.iter())),
                ],
            )
            .unwrap(),
        );
    }
    Table::try_new(schema, batches).unwrap()
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries
        .map(|e| if e.file_type().unwrap().is_dir() { dir_size(&e.path()) } else { e.metadata().unwrap().len() })
        .sum()
}

/// A lake with its catalog in `dir` and its data files in `data` (a directory or an object store).
fn lake_config(dir: &std::path::Path, data: flowrun_lake::DataPath) -> flowrun_lake::LakeConfig {
    flowrun_lake::LakeConfig {
        data_path: data,
        ..flowrun_lake::LakeConfig::local(dir.join("bench.ducklake"), dir.into())
    }
}

/// Seconds to write `table` as one new DuckLake table (catalog in `dir`, data files in `data`), one commit.
pub fn ducklake_write(table: &Table, dir: &std::path::Path, data: flowrun_lake::DataPath) -> f64 {
    let cfg = lake_config(dir, data);
    let duck = flowrun_lake::duck::Duck::in_memory().unwrap();
    cfg.attach(&duck, false).unwrap();
    let t = Instant::now();
    // as a run's commit does: DuckDB scans the Arrow table straight into the lake (no staged copy)
    let source = flowrun_lake::duck::ArrowSource::from(table.clone());
    duck.with_views(vec![source], |views| {
        duck.execute(&format!("BEGIN; CREATE TABLE lake.main.polygons AS SELECT * FROM {}; COMMIT", views[0]))
    })
    .unwrap();
    t.elapsed().as_secs_f64()
}

/// Milliseconds of run `i`'s commit of a one-row table into the lake of `cfg`, as the materializer of a
/// rerun in the same directory makes it: the lake's lock taken, DuckDB opened, `ducklake` loaded (its file's
/// hash checked), the lake attached, one transaction (the table replaced without reading the ledger, as the
/// catalog is as this process left it; the run's records and the ledger's row), DuckDB closed. The first
/// (`i == 0`) makes the lake.
fn run_commit(cfg: &flowrun_lake::LakeConfig, one: &Table, i: usize) -> f64 {
    use flowrun_engine::schedule::RunReport;
    use flowrun_lake::ducklake::{LakeTarget, Mode, write};
    let t = Instant::now();
    let _turn = cfg.lock().unwrap();
    let duck = flowrun_lake::duck::Duck::in_memory().unwrap();
    cfg.attach(&duck, false).unwrap();
    // a new identity each time: the ledger does not hold it, so the table is written
    let target = LakeTarget {
        section: "t".into(),
        schema: "main".into(),
        table: "t".into(),
        mode: Mode::Replace,
        identity: format!("{i:064x}"),
        rows: 1,
        adopt: false,
        // as a run's materializer knows it, from its cache: this process made the last commit
        catalog_as_left: i > 0,
    };
    let report = RunReport::empty("bench");
    let source = |_| Ok(flowrun_lake::duck::ArrowSource::from(one.clone()));
    let done = write(&duck, cfg, &[target], source, "bench", "bench.toml", &report).unwrap();
    assert_eq!(done.written, [true]);
    drop(duck);
    t.elapsed().as_secs_f64() * 1e3
}

/// Milliseconds of one-row commit `i` into the lake in `dir` by DuckDB and DuckLake alone, as a minimal
/// client makes it (open, `LOAD` the extension file, `ATTACH`, `DELETE` + `INSERT`, `COMMIT`, close): the
/// floor under a run's commit. Its table has two plain columns (an id and a name), where a run's has the
/// four of [`polygons`] (a WKB geometry among them). The first (`i == 0`) makes the lake.
fn bare_commit(ducklake: &std::path::Path, dir: &std::path::Path, i: usize) -> f64 {
    let t = Instant::now();
    let duck = flowrun_lake::duck::Duck::in_memory().unwrap();
    duck.execute(&format!("LOAD '{}'", ducklake.display())).unwrap();
    let (catalog, data) = (dir.join("bare.ducklake"), dir.join("bare_data"));
    duck.execute(&format!("ATTACH 'ducklake:{}' AS lake (DATA_PATH '{}/')", catalog.display(), data.display()))
        .unwrap();
    let write = match i {
        0 => "CREATE TABLE lake.main.t AS SELECT 1 AS id, 'x' AS name",
        _ => "DELETE FROM lake.main.t; INSERT INTO lake.main.t VALUES (2, 'y')",
    };
    duck.execute(&format!("BEGIN; {write}; COMMIT")).unwrap();
    drop(duck);
    t.elapsed().as_secs_f64() * 1e3
}

/// `median, min-max` of `ms`.
fn spread(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!("median {:.0} ms, {:.0}-{:.0} ms", ms[ms.len() / 2], ms[0], ms[ms.len() - 1])
}

pub fn run(n: usize) {
    let t = Instant::now();
    let table = polygons(n);
    let mb = table.batches().iter().map(|b| b.get_array_memory_size()).sum::<usize>() as f64 / 1e6;
    println!("{n} synthetic polygons, {mb:.1} MB of Arrow data (generated in {:.2} s)", t.elapsed().as_secs_f64());
    let dir = tempfile::tempdir().unwrap();
    // a run's fixed cost of a lake commit, first in the process as in a run: DuckDB opened, its extensions
    // loaded, the lake attached, a one-row table committed
    let fixed = dir.path().join("fixed");
    let t = Instant::now();
    ducklake_write(&polygons(1), &fixed, flowrun_lake::DataPath::Local(fixed.join("data")));
    println!("  fixed cost of a lake commit (open, load, attach, 1 row) {:>6.0} ms", t.elapsed().as_secs_f64() * 1e3);
    // a run's commit into a lake that exists, and DuckLake's own floor, taking turns (15 each, after one
    // each that makes its lake); the floor needs `ducklake` in flowrun's extension cache
    let runs = dir.path().join("runs");
    let cfg = lake_config(&runs, flowrun_lake::DataPath::Local(runs.join("data")));
    let platform: String = flowrun_lake::duck::Duck::in_memory().unwrap().scalar("PRAGMA platform").unwrap();
    let ducklake = flowrun_lake::extensions::cached_path(&cfg.extensions, &platform, "ducklake");
    let (one, mut run_ms, mut bare_ms) = (polygons(1), Vec::new(), Vec::new());
    for i in 0..=15 {
        run_ms.push(run_commit(&cfg, &one, i));
        if ducklake.is_file() {
            bare_ms.push(bare_commit(&ducklake, dir.path(), i));
        }
    }
    println!("  a run's commit into its lake (1 row changed, the run's records), 15: {}", spread(run_ms.split_off(1)));
    if bare_ms.len() > 1 {
        println!(
            "  the same by DuckDB + DuckLake alone (LOAD, ATTACH, DELETE + INSERT), 15: {}",
            spread(bare_ms.split_off(1))
        );
    }
    let line = |what: &str, secs: f64, out_bytes: u64| {
        println!(
            "  {what:<36} {secs:>7.2} s {:>12.0} rows/s {:>8.1} MB/s (Arrow in) {:>8.1} MB on disk",
            n as f64 / secs,
            mb / secs,
            out_bytes as f64 / 1e6
        )
    };
    // (a) DuckLake
    let data = dir.path().join("lake_data");
    let secs = ducklake_write(&table, dir.path(), flowrun_lake::DataPath::Local(data.clone()));
    line("(a) Arrow -> DuckLake table", secs, dir_size(&data));
    // (b) geoparquet crate
    let p = dir.path().join("b.parquet");
    let t = Instant::now();
    let w = flowrun_lake::geoparquet::write(&table, &p, None).unwrap();
    line("(b) GeoParquet 1.1, geoparquet crate", t.elapsed().as_secs_f64(), w.bytes);
    // (c) DuckDB COPY
    let p = dir.path().join("c.parquet");
    let t = Instant::now();
    let w = flowrun_lake::geoparquet::write_with_duckdb(&table, &p).unwrap();
    line("(c) GeoParquet 1.0, DuckDB COPY", t.elapsed().as_secs_f64(), w.bytes);
}
