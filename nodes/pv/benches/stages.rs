//! The PV readers' throughput, and each per-row stage against the bare library call it is
//! built on, all on one core (a one-thread rayon pool: the nodes' parallel loops run on it), so every
//! figure is per core.
//!
//! - Readers: `read_geojson`, `read_shapefile` and `read_csv_points` on a synthetic GeoJSON of N polygons
//!   and on the shared data's files, against the crate each one is built on, doing the least a reader must
//!   (parse the file; the GeoJSON parse also without keeping anything). Both sides read the file from the
//!   page cache.
//! - Stages: the node's table function (WKB in, Arrow out, as in a run) and the bare library calls on
//!   geometries or coordinates already decoded: proj4rs for the reprojection, geo for area and centroid,
//!   h3o for the cell, rstar + geo `Contains` for the country.
//!
//! Each figure is the median of 3 to 15 repetitions (as many as fit in about a second, at least 3).
//!
//! ```text
//! cargo bench --workspace --bench stages                      # 200,000 synthetic polygons
//! cargo bench --workspace --bench stages -- --sizes 1000000
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow_array::{ArrayRef, Float64Array, RecordBatch};
use flowrun_engine::Table;
use flowrun_pv::country::{self, CountryMethod};
use flowrun_pv::fetch::{DatasetFiles, LocalFile};
use flowrun_pv::manifest::Dataset;
use flowrun_pv::{crs::Crs, geom, h3, read, standardize};
use geo::{Centroid, Contains, GeodesicArea, Geometry, MapCoordsInPlace, Point, Validation};
use proj4rs::Proj;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` adds `--bench`; `--sizes N` picks the number of synthetic polygons
    let n = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map_or(200_000, |n| n.parse().expect("--sizes takes a number"));
    let one_core = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool");
    if let Err(e) = one_core.install(|| stages(n)) {
        eprintln!("bench stages: {e:#}");
        std::process::exit(1);
    }
}

fn stages(n: usize) -> Result<()> {
    let shared = fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/pv"))
        .context("../shared/data/pv is there")?;
    let dir = tempfile::tempdir()?;
    flowrun_pv::synthetic::write_mirror(dir.path(), n, 1, 7)?;
    let synthetic = dir.path().join("synthetic_a/pv.geojson");
    println!("flowrun PV readers and stages, one core; {n} synthetic polygons; ratio = flowrun / bare (time)");
    readers(&synthetic, n, &shared)?;
    per_row(&synthetic, &shared)
}

fn readers(synthetic: &Path, n: usize, shared: &Path) -> Result<()> {
    println!(
        "\n{:<46} {:>7} {:>9} {:>9} {:>6}  bare library call",
        "reader (file read included)", "MB", "MB/s", "bare MB/s", "ratio"
    );
    let geojson_bare = |p: &Path| -> Vec<Bare> {
        let (p1, p2) = (p.to_path_buf(), p.to_path_buf());
        vec![
            (
                "serde_json, parse only (IgnoredAny)",
                Box::new(move || {
                    serde_json::from_slice::<serde::de::IgnoredAny>(&fs::read(&p1)?)?;
                    Ok(())
                }),
            ),
            (
                "geojson::FeatureCollection (serde_json values)",
                Box::new(move || {
                    std::hint::black_box(serde_json::from_slice::<geojson::FeatureCollection>(&fs::read(&p2)?)?);
                    Ok(())
                }),
            ),
        ]
    };
    let what = format!("GeoJSON, synthetic ({n} polygons)");
    reader(&what, &[synthetic], || read::read_geojson(synthetic, Some("fid")).map(drop), geojson_bare(synthetic))?;
    let india = shared.join("ind_pv_solar_farms_2022/solar_farms_india_2021_merged_simplified.geojson");
    reader("GeoJSON, India (1,363 multipolygons)", &[&india], || read::read_geojson(&india, None).map(drop), {
        geojson_bare(&india)
    })?;
    let china = shared.join("chn_med_res_pv_2024/PV_Train_2020.shp");
    let dbf = china.with_extension("dbf");
    let shp_bare = {
        let china = china.clone();
        move || -> Result<()> {
            let shapes = shapefile::read(&china)?;
            std::hint::black_box(shapes.len());
            Ok(())
        }
    };
    reader(
        "Shapefile, China PV_Train (1,852 polygons)",
        &[&china, &dbf],
        || read::read_shapefile(&china, None).map(drop),
        vec![("shapefile::read (shapes and dbf records)", Box::new(shp_bare))],
    )?;
    let cali = shared.join("usa_cali_usgs_pv_2016/polygonDataExceptVertices.csv");
    let d = dataset(serde_json::json!({
        "format": "csv", "lat": "centroid_latitude", "lon": "centroid_longitude", "id": "polygon_id"
    }))?;
    let cali_arrow = cali.clone();
    let csv_bare = {
        let cali = cali.clone();
        move || -> Result<()> {
            let mut r = csv::Reader::from_path(&cali)?;
            let mut record = csv::StringRecord::new();
            while r.read_record(&mut record)? {
                std::hint::black_box(&record);
            }
            Ok(())
        }
    };
    // a reader that types its columns as this one does: arrow-csv, its schema inferred from every row
    let arrow_bare = move || -> Result<()> {
        let bytes = fs::read(&cali_arrow)?;
        let format = arrow_csv::reader::Format::default().with_header(true);
        let (schema, _) = format.infer_schema(&bytes[..], None)?;
        let reader = arrow_csv::ReaderBuilder::new(Arc::new(schema)).with_format(format).build(&bytes[..])?;
        for batch in reader {
            std::hint::black_box(batch?);
        }
        Ok(())
    };
    reader(
        "CSV points, California (19,435 rows)",
        &[&cali],
        || read::read_csv_points(&cali, &d).map(drop),
        vec![
            ("csv::Reader, every record as strings", Box::new(csv_bare)),
            ("arrow-csv, schema inferred, typed columns", Box::new(arrow_bare)),
        ],
    )
}

/// A bare library call: what it is, and the call.
type Bare = (&'static str, Box<dyn Fn() -> Result<()>>);

/// One reader's line, then one per bare call.
fn reader(what: &str, files: &[&Path], ours: impl Fn() -> Result<()>, bare: Vec<Bare>) -> Result<()> {
    let mb = files.iter().map(|f| fs::metadata(f).map(|m| m.len())).sum::<std::io::Result<u64>>()? as f64 / 1e6;
    let t = measure(&ours)?;
    for (i, (name, call)) in bare.iter().enumerate() {
        let b = measure(call)?;
        let (label, size, rate) = if i == 0 {
            (what.to_string(), format!("{mb:.1}"), format!("{:.0}", mb / t.as_secs_f64()))
        } else {
            (String::new(), String::new(), String::new())
        };
        println!(
            "{label:<46} {size:>7} {rate:>9} {:>9.0} {:>6.1}  {name}",
            mb / b.as_secs_f64(),
            t.as_secs_f64() / b.as_secs_f64()
        );
    }
    Ok(())
}

fn per_row(synthetic: &Path, shared: &Path) -> Result<()> {
    let d = dataset(serde_json::json!({ "format": "geojson", "id": "fid" }))?;
    let raw = read::raw_table(&files(&d, synthetic)?)?;
    let gi = geom::geometry_index(&raw)?;
    let lonlat = geom::geometries(raw.concat()?.column(gi))?;
    let rows = lonlat.len();

    // the same polygons in web mercator, as a raw table that says so
    let (wgs84, mercator) = (proj("+proj=longlat +datum=WGS84 +no_defs"), proj("EPSG:3857"));
    let projected: Vec<Option<Geometry<f64>>> = lonlat
        .iter()
        .map(|g| {
            let mut g = g.clone()?;
            g.map_coords_in_place(|c| {
                let mut p = (c.x.to_radians(), c.y.to_radians());
                proj4rs::transform::transform(&wgs84, &mercator, &mut p).expect("in range");
                geo::Coord { x: p.0, y: p.1 }
            });
            Some(g)
        })
        .collect();
    let raw3857 = replace_geometry(&raw, gi, geom::wkb_array(&projected), "EPSG:3857")?;
    let crs = Crs::parse("EPSG:3857")?;
    let coords: Vec<Vec<(f64, f64)>> = projected
        .iter()
        .map(|g| g.iter().flat_map(geo::CoordsIter::coords_iter).map(|c| (c.x, c.y)).collect())
        .collect();

    println!(
        "\n{:<46} {:>8} {:>8} {:>6}  bare library call ({rows} synthetic polygons)",
        "stage, per row (us)", "flowrun", "bare", "ratio"
    );
    // both sides reproject a fresh copy of their input each time; the copy's own time is taken off
    let proj4rs_bare = on_a_copy(&coords, |fresh| {
        for c in fresh.iter_mut() {
            proj4rs::transform::transform(&mercator, &wgs84, c.as_mut_slice())?;
        }
        Ok(())
    })?;
    let ours = on_a_copy(&projected, |fresh| fresh.iter_mut().flatten().try_for_each(|g| crs.to_wgs84(g)))?;
    stage("reproject (Crs::to_wgs84, EPSG:3857)", ours, proj4rs_bare, rows, "proj4rs::transform on the coordinates");
    let polygons: Vec<geo::Polygon<f64>> =
        lonlat.iter().flatten().filter_map(|g| geo::Polygon::try_from(g.clone()).ok()).collect();
    let valid_bare = measure(|| {
        polygons.iter().for_each(|p| {
            std::hint::black_box(p.is_valid());
        });
        Ok(())
    })?;
    let node = measure(|| standardize::standardize_table(&raw3857, &d, "now").map(drop))?;
    stage("standardized (node: + validity, repair, ids)", node, proj4rs_bare + valid_bare, rows, {
        "proj4rs::transform + geo is_valid"
    });

    let area_bare = measure(|| {
        polygons.iter().for_each(|p| {
            std::hint::black_box(p.geodesic_area_signed());
        });
        Ok(())
    })?;
    let area = measure(|| {
        lonlat.iter().flatten().for_each(|g| {
            std::hint::black_box(geom::geodesic_area(g));
        });
        Ok(())
    })?;
    stage("geodesic area (geom::geodesic_area)", area, area_bare, rows, "geo geodesic_area_signed");
    let centroid_bare = measure(|| {
        polygons.iter().for_each(|p| {
            std::hint::black_box(p.centroid());
        });
        Ok(())
    })?;
    let standardized = standardize::standardize_table(&raw, &d, "now")?;
    let measured = measure(|| standardize::measure_table(&standardized).map(drop))?;
    stage("measured (node: WKB in, area + centroid)", measured, area_bare + centroid_bare, rows, {
        "geo geodesic_area_signed + centroid"
    });

    let t = standardize::measure_table(&standardized)?;
    let b = t.concat()?;
    let (lat, lon) =
        (geom::column::<Float64Array>(&b, "centroid_lat")?, geom::column::<Float64Array>(&b, "centroid_lon")?);
    let res = h3::resolution(12)?;
    let h3_bare = measure(|| {
        for i in 0..lat.len() {
            std::hint::black_box(h3o::LatLng::new(lat.value(i), lon.value(i))?.to_cell(res));
        }
        Ok(())
    })?;
    let indexed = measure(|| h3::index_table(&t, 12).map(drop))?;
    stage("indexed (node: the cell as hex text)", indexed, h3_bare, rows, "h3o LatLng::to_cell");

    let ne = dataset(serde_json::json!({ "format": "geojson" }))?;
    let countries =
        country::country_polygons(&files(&ne, &shared.join("natural_earth_admin0/ne_50m_admin_0_countries.json"))?)?;
    let cb = countries.concat()?;
    let shapes = geom::geometries(cb.column(geom::geometry_index(&countries)?))?;
    let tree = geom::bbox_tree(geom::boxes(&shapes));
    let points: Vec<Point<f64>> = (0..lat.len()).map(|i| Point::new(lon.value(i), lat.value(i))).collect();
    let country_bare = measure(|| {
        for p in &points {
            let hit = tree
                .locate_in_envelope_intersecting(&rstar::AABB::from_point([p.x(), p.y()]))
                .find(|c| shapes[c.data].as_ref().is_some_and(|s| s.contains(p)));
            std::hint::black_box(hit.map(|c| c.data));
        }
        Ok(())
    })?;
    let located = measure(|| country::locate(&t, &countries, CountryMethod::Within, 0.0).map(drop))?;
    // the node builds its indexes (R-tree, each country's edge tree) on every call; the bare loop's tree is built once
    stage("located (node: within, indexes built)", located, country_bare, rows, "rstar + geo Contains, 1:50m");
    Ok(())
}

fn stage(what: &str, ours: Duration, bare: Duration, rows: usize, call: &str) {
    let us = |d: Duration| d.as_secs_f64() * 1e6 / rows as f64;
    println!("{what:<46} {:>8.3} {:>8.3} {:>6.1}  {call}", us(ours), us(bare), ours.as_secs_f64() / bare.as_secs_f64());
}

/// The time of `f` on a fresh copy of `input`, without the copy's own time.
fn on_a_copy<T: Clone>(input: &T, mut f: impl FnMut(&mut T) -> Result<()>) -> Result<Duration> {
    let mut fresh = input.clone();
    let copying = measure(|| {
        fresh.clone_from(input);
        Ok(())
    })?;
    let both = measure(|| {
        fresh.clone_from(input);
        f(&mut fresh)
    })?;
    Ok(both.saturating_sub(copying))
}

/// The median of 3 to 15 runs of `f`: as many as fit in about a second.
fn measure(mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut once = || -> Result<Duration> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed())
    };
    let first = once()?;
    let reps = (Duration::from_secs(1).as_secs_f64() / first.as_secs_f64().max(1e-9)).clamp(3.0, 15.0) as usize;
    let mut times = (0..reps).map(|_| once()).collect::<Result<Vec<_>>>()?;
    times.sort();
    Ok(times[times.len() / 2])
}

fn dataset(extra: serde_json::Value) -> Result<Dataset> {
    let mut d = serde_json::json!({ "key": "bench", "repository": "direct", "source": "bench" });
    d.as_object_mut().expect("an object").extend(extra.as_object().cloned().unwrap_or_default());
    Ok(serde_json::from_value(d)?)
}

fn files(d: &Dataset, path: &Path) -> Result<DatasetFiles> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file").to_string();
    let file = LocalFile {
        path: PathBuf::from(path),
        name,
        size: fs::metadata(path)?.len(),
        blake3: String::new(),
        sidecars: Vec::new(),
    };
    Ok(DatasetFiles { key: d.key.clone(), dataset: d.clone(), files: vec![file], origin: "bench".into() })
}

fn proj(spec: &str) -> Proj {
    let spec = if spec == "EPSG:3857" {
        "+proj=merc +a=6378137 +b=6378137 +lat_ts=0 +lon_0=0 +x_0=0 +y_0=0 +k=1 +units=m +nadgrids=@null +no_defs"
    } else {
        spec
    };
    Proj::from_proj_string(spec).expect("a valid PROJ string")
}

/// `raw` with its geometry column replaced and every file's CRS set to `crs`.
fn replace_geometry(raw: &Table, gi: usize, column: ArrayRef, crs: &str) -> Result<Table> {
    let b = raw.concat()?;
    let mut columns = b.columns().to_vec();
    columns[gi] = column;
    let mut meta = raw.schema().metadata().clone();
    let files: std::collections::BTreeMap<String, (String, String)> =
        serde_json::from_str(meta.get(read::SOURCE_CRS).map(String::as_str).unwrap_or("{}"))?;
    let files: std::collections::BTreeMap<_, _> =
        files.into_keys().map(|f| (f, (crs.to_string(), "bench".to_string()))).collect();
    meta.insert(read::SOURCE_CRS.to_string(), serde_json::to_string(&files)?);
    let schema = Arc::new(b.schema().as_ref().clone().with_metadata(meta));
    Ok(Table::from_batch(RecordBatch::try_new(schema, columns)?))
}
