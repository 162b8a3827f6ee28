//! The readers and geometry code on input nobody planned: arbitrary bytes, and valid files (GeoJSON, a
//! shapefile with its `.dbf` and `.shx`, a CSV, a GeoPackage, WKB) with bytes cut, repeated or flipped.
//! Never a panic: an error, or rows. Bounded here (a few seconds); `just fuzz` runs more (`PROPTEST_CASES`).

use std::path::Path;

use flowrun_pv::geom;
use flowrun_pv::manifest::Dataset;
use flowrun_pv::read;
use geo::polygon;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
}

/// Cuts, repeats and flips bytes (positions modulo the length).
fn mutate(seed: &[u8], edits: &[(u8, usize, usize)]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for &(kind, at, len) in edits {
        let at = if b.is_empty() { 0 } else { at % (b.len() + 1) };
        let end = (at + len % 48).min(b.len());
        match kind % 4 {
            0 => drop(b.drain(at..end)),
            1 => {
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece);
            }
            2 if at < b.len() => b[at] ^= 1 << (len % 8),
            _ if at < b.len() => b[at] = len as u8,
            _ => {}
        }
    }
    b
}

fn edits() -> impl Strategy<Value = Vec<(u8, usize, usize)>> {
    proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>()), 1..5)
}

/// Whatever came back, the geometry code downstream takes it too.
fn geometry_code_takes<'a>(geoms: impl IntoIterator<Item = Option<&'a [u8]>>) {
    for wkb in geoms.into_iter().flatten() {
        if let Ok(Some(g)) = geom::from_wkb(wkb) {
            let (g, _) = geom::repair(g);
            let _ = (geom::geodesic_area(&g), geom::centroid(&g), geom::bbox(&g), geom::to_wkb(&g));
        }
    }
}

const GEOJSON: &str = r#"{"type":"FeatureCollection","crs":{"type":"name","properties":{"name":"urn:ogc:def:crs:EPSG::3857"}},
"features":[{"type":"Feature","properties":{"fid":1,"name":"a","area":12.5},"geometry":{"type":"Polygon","coordinates":[[[0,0],[10,0],[10,10],[0,10],[0,0]],[[2,2],[3,2],[3,3],[2,2]]]}},
{"type":"Feature","properties":{"fid":2,"name":null},"geometry":{"type":"MultiPolygon","coordinates":[[[[20,20],[30,20],[25,30],[20,20]]]]}},
{"type":"Feature","properties":{"fid":3},"geometry":{"type":"Point","coordinates":[1.5,2.5]}},
{"type":"Feature","properties":{"fid":4},"geometry":null}]}"#;

const CSV: &str = "id;lat;lon;capacity\n1;48.1;11.5;1.000,5\n2;-33.9;151.2;7\n3;;;\n4;91;200;x\n";

fn csv_dataset() -> Dataset {
    toml::from_str("repository = \"direct\"\nsource = \"x\"\nformat = \"csv\"\nlat = \"lat\"\nlon = \"lon\"\nid = \"id\"\ndelimiter = \";\"\nthousands = \".\"")
        .unwrap()
}

/// A small shapefile written with the `shapefile` crate: (shp, shx, dbf) bytes.
fn shapefile() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    use shapefile::dbase::{FieldValue, Record, TableWriterBuilder};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pv.shp");
    let table = TableWriterBuilder::new()
        .add_numeric_field("fid".try_into().unwrap(), 10, 0)
        .add_character_field("name".try_into().unwrap(), 20);
    let mut w = shapefile::Writer::from_path(&path, table).unwrap();
    for i in 0..3 {
        let x = i as f64 * 10.0;
        let ring = vec![
            shapefile::Point::new(x, 0.0),
            shapefile::Point::new(x, 5.0),
            shapefile::Point::new(x + 5.0, 5.0),
            shapefile::Point::new(x, 0.0),
        ];
        let polygon = shapefile::Polygon::new(shapefile::PolygonRing::Outer(ring));
        let mut r = Record::default();
        r.insert("fid".into(), FieldValue::Numeric(Some(i as f64)));
        r.insert("name".into(), FieldValue::Character(Some(format!("farm {i}"))));
        w.write_shape_and_record(&polygon, &r).unwrap();
    }
    drop(w);
    let read = |ext: &str| std::fs::read(path.with_extension(ext)).unwrap();
    (read("shp"), read("shx"), read("dbf"))
}

/// A GeoPackage with one polygon layer, written with SQLite.
fn geopackage(dir: &Path) -> Vec<u8> {
    let path = dir.join("seed.gpkg");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA synchronous = OFF; PRAGMA journal_mode = MEMORY;
         CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT, srs_id INTEGER PRIMARY KEY, organization TEXT,
           organization_coordsys_id INTEGER, definition TEXT, description TEXT);
         INSERT INTO gpkg_spatial_ref_sys VALUES ('WGS 84', 4326, 'EPSG', 4326, 'GEOGCS[\"WGS 84\"]', NULL);
         CREATE TABLE gpkg_contents (table_name TEXT PRIMARY KEY, data_type TEXT, identifier TEXT,
           description TEXT, last_change TEXT, min_x REAL, min_y REAL, max_x REAL, max_y REAL, srs_id INTEGER);
         INSERT INTO gpkg_contents VALUES ('farms', 'features', 'farms', '', '', 0, 0, 1, 1, 4326);
         CREATE TABLE gpkg_geometry_columns (table_name TEXT, column_name TEXT, geometry_type_name TEXT,
           srs_id INTEGER, z TINYINT, m TINYINT);
         INSERT INTO gpkg_geometry_columns VALUES ('farms', 'geom', 'POLYGON', 4326, 0, 0);
         CREATE TABLE farms (fid INTEGER PRIMARY KEY, geom BLOB, name TEXT);",
    )
    .unwrap();
    let wkb = geom::to_wkb(&geo::Geometry::Polygon(polygon![(x: 0.0, y: 0.0), (x: 1.0, y: 0.0), (x: 1.0, y: 1.0)]));
    let mut blob = vec![b'G', b'P', 0, 1];
    blob.extend_from_slice(&4326i32.to_le_bytes());
    blob.extend_from_slice(&wkb);
    conn.execute("INSERT INTO farms (geom, name) VALUES (?1, 'a')", [&blob]).unwrap();
    drop(conn);
    std::fs::read(path).unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn wkb_and_geopackage_blobs(bytes in proptest::collection::vec(any::<u8>(), 0..300), e in edits()) {
        let polygon = geom::to_wkb(&geo::Geometry::Polygon(polygon![(x: 0.0, y: 0.0), (x: 4.0, y: 0.0), (x: 4.0, y: 4.0)]));
        for b in [bytes.clone(), mutate(&polygon, &e)] {
            geometry_code_takes([Some(b.as_slice())]);
            if let Ok(wkb) = read::gpkg_to_wkb(&b) {
                geometry_code_takes([Some(wkb.as_slice())]);
            }
        }
    }

    #[test]
    fn geojson_files(e in edits(), text in "\\PC{0,200}") {
        let dir = tempfile::tempdir().unwrap();
        for (i, bytes) in [mutate(GEOJSON.as_bytes(), &e), text.into_bytes()].into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.geojson"));
            std::fs::write(&path, bytes).unwrap();
            if let Ok(t) = read::read_geojson(&path, Some("fid")) {
                geometry_code_takes(&t.geoms);
            }
        }
    }

    #[test]
    fn csv_files(e in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("points.csv");
        std::fs::write(&path, mutate(CSV.as_bytes(), &e)).unwrap();
        if let Ok(t) = read::read_csv_points(&path, &csv_dataset()) {
            geometry_code_takes(&t.geoms);
        }
    }

    #[test]
    fn shapefiles(which in 0usize..3, e in edits()) {
        let (shp, shx, dbf) = shapefile();
        let mut files = [shp, shx, dbf];
        files[which] = mutate(&files[which], &e);
        let dir = tempfile::tempdir().unwrap();
        for (ext, bytes) in ["shp", "shx", "dbf"].iter().zip(&files) {
            std::fs::write(dir.path().join(format!("pv.{ext}")), bytes).unwrap();
        }
        if let Ok(t) = read::read_shapefile(&dir.path().join("pv.shp"), None) {
            geometry_code_takes(&t.geoms);
        }
    }

    #[test]
    fn geopackages(e in edits()) {
        // the seed is made once (SQLite's writes are most of a case's time otherwise)
        static SEED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let seed = SEED.get_or_init(|| geopackage(tempfile::tempdir().unwrap().path()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mutated.gpkg");
        std::fs::write(&path, mutate(seed, &e)).unwrap();
        if let Ok(layers) = read::read_gpkg(&path, None) {
            for (_, t) in layers {
                geometry_code_takes(&t.geoms);
            }
        }
    }
}

/// Found by `geojson_files`: a position with one coordinate made the `geojson` crate index out of bounds
/// (a panic inside the reader); it is an error naming the feature now.
#[test]
fn a_position_with_one_coordinate_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.geojson");
    std::fs::write(
        &path,
        r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1],[1,1],[0,0]]]}}]}"#,
    )
    .unwrap();
    let err = read::read_geojson(&path, None).err().expect("an error");
    assert!(format!("{err:#}").contains("feature 0: a position with fewer than two coordinates"), "{err:#}");
}
