//! `flows/doi_pv.toml` end to end on the real data in `../shared/data/pv` (as a mirror directory), read back
//! with the stock DuckDB Python client.

use std::path::{Path, PathBuf};

use crate::util::{Scratch, flowrun_extension_dir, pv_data, python_json};

/// A scratch directory holding a copy of `flows/doi_pv.toml` under `flows/`, so that the flow's lake and
/// GeoParquet outputs (relative to the flow file) land in the scratch directory.
pub fn pv_scratch() -> (Scratch, PathBuf) {
    let s = Scratch::new();
    let flow = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/doi_pv.toml")).unwrap();
    let path = s.write("flows/doi_pv.toml", &flow);
    (s, path)
}

fn run_pv(s: &Scratch, extra: &[&str]) -> crate::util::Out {
    let mirror = pv_data().display().to_string();
    let mut args = vec!["--json", "run", "flows/doi_pv.toml", "--mirror", &mirror];
    args.extend_from_slice(extra);
    s.run(&args)
}

const QUERY_LAKE: &str = r#"
import duckdb, json, os, sys
catalog, data_path, ext_dir = sys.argv[1], sys.argv[2], sys.argv[3]
con = duckdb.connect()
con.execute(f"LOAD '{os.path.join(ext_dir, 'ducklake.duckdb_extension')}'")
con.execute(f"ATTACH 'ducklake:{catalog}' AS lake (DATA_PATH '{data_path}/', READ_ONLY)")
q = lambda sql: con.execute(sql).fetchall()
raw = {t: q(f'SELECT count(*) FROM lake.raw.{t}')[0][0] for (t,) in q("SELECT table_name FROM duckdb_tables() WHERE database_name = 'lake' AND schema_name = 'raw'")}
china_files = q('SELECT source_file, count(*) FROM lake.raw.raw_chn_med_res_pv_2024 GROUP BY 1 ORDER BY 1') if 'raw_chn_med_res_pv_2024' in raw else []
countries = q("SELECT dataset_name, source_file, source_row, coalesce(country_code, 'null'), area_m2 FROM lake.prepared.prepared_pv_dedup")
ids = q('SELECT count(*), count(DISTINCT unified_id) FROM lake.prepared.prepared_pv_dedup')[0]
stats = q('SELECT sum(installations) FROM lake.prepared.prepared_country_pv_stats')[0][0]
areas = q("SELECT dataset_name, area_basis, sum(total_area_m2), sum(area_m2_source), sum(rows_without_area) FROM lake.prepared.prepared_country_pv_stats GROUP BY ALL ORDER BY ALL")
print(json.dumps({'raw': raw, 'china_files': china_files, 'countries': countries, 'ids': ids, 'stats_total': stats,
                  'areas': areas,
                  'staging': q('SELECT count(*) FROM lake.staging.stg_pv_consolidated')[0][0],
                  'prepared': q('SELECT count(*) FROM lake.prepared.prepared_pv_dedup')[0][0],
                  'row_ids': q("SELECT unified_id FROM lake.staging.stg_pv_consolidated WHERE unified_id LIKE 'usa_cali_usgs_pv_2016:row%'")},
                 default=str))
"#;

/// The country of every row read, as GeoPandas gives it: the centroid `within` a Natural Earth 1:50m polygon.
/// Per row, keyed by dataset, file and row (flowrun's `source_file`, `source_row`); and the source areas of
/// the point datasets.
const GEOPANDAS_COUNTRIES: &str = r#"
import json, sys, warnings
import geopandas as gpd, pandas as pd, pyproj, shapely
warnings.filterwarnings("ignore")  # centroids of lon/lat geometries: planar in degrees, as flowrun's
geod = pyproj.Geod(ellps="WGS84")
def geodesic_area(g):  # geodesic area of the polygons GEOS's make_valid makes of it
    g = shapely.make_valid(g)
    parts = [p for p in getattr(g, "geoms", [g]) if p.geom_type == "Polygon"]
    parts += [q for p in getattr(g, "geoms", [g]) if p.geom_type == "MultiPolygon" for q in p.geoms]
    return sum(abs(geod.geometry_area_perimeter(shapely.geometry.polygon.orient(p))[0]) for p in parts)
data, ne = sys.argv[1], sys.argv[2]
countries = gpd.read_file(ne)[["ADM0_A3", "geometry"]]
def files(name, parts):
    return [(f, gpd.read_file(f"{data}/{name}/{f}")) for f in parts]
cal = pd.read_csv(f"{data}/usa_cali_usgs_pv_2016/polygonDataExceptVertices.csv", encoding="utf-8-sig")
cal = cal.dropna(subset=["centroid_latitude", "centroid_longitude"])
cal = gpd.GeoDataFrame(cal, geometry=gpd.points_from_xy(cal.centroid_longitude, cal.centroid_latitude), crs="EPSG:4269").to_crs(4326)
usp = pd.read_csv(f"{data}/usa_uspvdb/uspvdb_v1_0_20231108.csv", encoding="utf-8-sig")
usp = gpd.GeoDataFrame(usp, geometry=gpd.points_from_xy(usp.xlong, usp.ylat), crs="EPSG:4326")
datasets = [
    ("chn_med_res_pv_2024", files("chn_med_res_pv_2024", ["PV_Test_2020.shp", "PV_Train_2020.shp"])),
    ("ind_pv_solar_farms_2022", files("ind_pv_solar_farms_2022", ["solar_farms_india_2021_merged_simplified.geojson"])),
    ("usa_cali_usgs_pv_2016", [("polygonDataExceptVertices.csv", cal)]),
    ("usa_uspvdb", [("uspvdb_v1_0_20231108.csv", usp)]),
]
rows, read, source_area = [], {}, {}
for name, parts in datasets:
    for file, g in parts:
        pts = gpd.GeoDataFrame(geometry=g.geometry.centroid, crs="EPSG:4326")
        joined = gpd.sjoin(pts, countries, predicate="within", how="left")
        code = joined[~joined.index.duplicated(keep="first")].ADM0_A3.fillna("null")
        polygons = name in ("chn_med_res_pv_2024", "ind_pv_solar_farms_2022")
        for row, c in code.items():
            rows.append([name, file, int(row), c, geodesic_area(g.geometry[row]) if polygons else 0.0])
            read[(name, c)] = read.get((name, c), 0) + 1
    area = {"usa_cali_usgs_pv_2016": "area_meters", "usa_uspvdb": "p_area"}.get(name)
    if area:
        g = parts[0][1]
        source_area[name] = float(g[~g.geometry.to_wkb().duplicated()][area].sum())
print(json.dumps({"rows": rows, "read": sorted([d, c, n] for (d, c), n in read.items()), "source_area": source_area}))
"#;

fn query_lake(s: &Scratch) -> serde_json::Value {
    let lake_dir = s.path().join(".flowrun/lake");
    python_json(
        QUERY_LAKE,
        &[
            &lake_dir.join("doi_pv.ducklake").display().to_string(),
            &lake_dir.join("doi_pv_data").display().to_string(),
            &flowrun_extension_dir().display().to_string(),
        ],
    )
}

#[test]
fn the_pipeline_on_the_shared_data() {
    let (s, _) = pv_scratch();
    // overlap_threshold = 2 removes no cross-dataset duplicate (a ratio is at most 1): every row read is in
    // the prepared table, as the country oracle counts them
    let out = run_pv(&s, &["--set", "overlap_threshold=2"]).ok();
    let json = out.json();
    // the mirror holds four of the seven datasets; the others are left out with a warning
    assert!(json.to_string().contains("the mirror has no global_harmonized_large_solar_farms_2020"), "{json}");
    // per dataset: the CRS used and where it came from, rows read / kept / dropped with reasons
    let notes: Vec<String> = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["notes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()))
        .collect();
    for expected in [
        "dataset `usa_cali_usgs_pv_2016`: CRS EPSG:4269 (NAD83) (from the manifest's `crs`; datum shift: none",
        "; 19435 rows read, 19433 kept, 2 dropped (without coordinates)",
        "dataset `ind_pv_solar_farms_2022`: CRS OGC:CRS84 (WGS 84, lon/lat) (from the GeoJSON `crs` member;",
        "; 1363 rows read, 1363 kept",
    ] {
        assert!(notes.iter().any(|n| n.contains(expected)), "no note with `{expected}` in {notes:#?}");
    }
    let lake = query_lake(&s);
    assert_eq!(
        lake["raw"],
        serde_json::json!({
            "raw_ind_pv_solar_farms_2022": 1363,
            "raw_chn_med_res_pv_2024": 817 + 1852,
            "raw_usa_cali_usgs_pv_2016": 19435,   // every row of the file; two have no centroid
            "raw_usa_uspvdb": 3699,
        }),
        "{lake}"
    );
    // ChinaPV: the train and test files, never the NPV (negative sample) files
    let files: Vec<(String, i64)> = lake["china_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().rsplit('/').next().unwrap().to_string(), r[1].as_i64().unwrap()))
        .collect();
    assert_eq!(files, vec![("PV_Test_2020.shp".to_string(), 817), ("PV_Train_2020.shp".to_string(), 1852)]);
    // the California row without polygon_id is kept, with a positional id
    assert_eq!(lake["row_ids"].as_array().unwrap().len(), 1, "{}", lake["row_ids"]);
    // ids are unique; the country stats count every located row
    assert_eq!(lake["ids"][0], lake["ids"][1]);
    assert_eq!(lake["stats_total"].as_f64().unwrap() as i64, lake["prepared"].as_i64().unwrap());
    // the country join counts its outcome: `countries: N rows within a country, K without a country`
    let countries = notes.iter().find(|n| n.starts_with("countries: ")).expect("a note on the country join");
    let counts: Vec<i64> = countries.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    assert_eq!(counts.len(), 2, "{countries}");
    assert_eq!(counts[0] + counts[1], lake["prepared"].as_i64().unwrap(), "{countries}");
    assert!(counts[1] > 0 && counts[1] < 100, "{countries}");
    // the country of every row read: exactly what GeoPandas gives, and the issue's figures
    let oracle = python_json(
        GEOPANDAS_COUNTRIES,
        &[
            &pv_data().display().to_string(),
            &pv_data().join("natural_earth_admin0/ne_50m_admin_0_countries.json").display().to_string(),
        ],
    );
    // over the rows read (the issue's figures) GeoPandas gives these countries; and flowrun gives every row it
    // keeps (all but the exact duplicates: 31 of ChinaPV's test polygons are in its train file too, one USPVDB
    // point is listed twice) the country GeoPandas gives that row
    let expected = serde_json::json!([
        ["chn_med_res_pv_2024", "CHN", 2620],
        ["chn_med_res_pv_2024", "TWN", 7],
        ["chn_med_res_pv_2024", "null", 42],
        ["ind_pv_solar_farms_2022", "IND", 1360],
        ["ind_pv_solar_farms_2022", "null", 3],
        ["usa_cali_usgs_pv_2016", "USA", 19423],
        ["usa_cali_usgs_pv_2016", "null", 10],
        ["usa_uspvdb", "USA", 3687],
        ["usa_uspvdb", "null", 12],
    ]);
    assert_eq!(oracle["read"], expected, "GeoPandas over the rows read");
    let key = |r: &serde_json::Value| (r[0].to_string(), r[1].to_string(), r[2].as_i64().unwrap());
    let truth: std::collections::HashMap<_, _> =
        oracle["rows"].as_array().unwrap().iter().map(|r| (key(r), r[3].as_str().unwrap().to_string())).collect();
    let ours = lake["countries"].as_array().unwrap();
    assert_eq!(ours.len(), 27164 - 32, "every row read but the exact duplicates");
    let wrong: Vec<String> = ours
        .iter()
        .filter(|r| truth.get(&key(r)).map(String::as_str) != r[3].as_str())
        .map(|r| format!("{r} (GeoPandas: {:?})", truth.get(&key(r))))
        .collect();
    assert!(wrong.is_empty(), "{} rows differ from GeoPandas, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    // and the geodesic area of every row, invalid polygons repaired, as GEOS repairs them (India has 78)
    let areas: std::collections::HashMap<_, _> =
        oracle["rows"].as_array().unwrap().iter().map(|r| (key(r), r[4].as_f64().unwrap())).collect();
    let worst = ours
        .iter()
        .map(|r| {
            let (theirs, mine) = (areas[&key(r)], r[4].as_f64().unwrap());
            if theirs == 0.0 { mine.abs() } else { (mine - theirs).abs() / theirs }
        })
        .fold(0.0, f64::max);
    assert!(worst < 1e-6, "an area differs from GeoPandas by {worst:e} of itself");
    // the point datasets count their source areas (their rows have no geodesic area), the polygon ones their
    // geodesic areas
    for row in lake["areas"].as_array().unwrap() {
        let (dataset, basis) = (row[0].as_str().unwrap(), row[1].as_str().unwrap());
        let expected = if dataset.starts_with("usa_") { "source" } else { "geodesic" };
        assert_eq!(basis, expected, "{row}");
    }
    for (dataset, area) in oracle["source_area"].as_object().unwrap() {
        let total: f64 = lake["areas"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r[0] == dataset.as_str())
            .map(|r| r[2].as_f64().unwrap())
            .sum();
        let area = area.as_f64().unwrap();
        assert!((total - area).abs() <= 1e-9 * area, "{dataset}: flowrun sums {total} m2, the source column {area}");
    }

    // country_method = "nearest": the rows within a country keep it; most of the others get the nearest
    // country within country_max_distance_km (10 km by default), each flagged with its distance
    let nearest = run_pv(&s, &["--set", "overlap_threshold=2", "--set", "country_method=nearest"]).ok();
    let note = nearest.stdout.split("countries: ").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    let n: Vec<f64> = note.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    assert_eq!(n.len(), 4, "within, nearest, at most (m), without: {note}");
    assert_eq!(n[0] as i64, counts[0], "{note}");
    assert!(n[1] > 0.0 && n[1] as i64 + n[3] as i64 == counts[1], "{note}");
    assert!(n[2] > 0.0 && n[2] <= 10_000.0, "{note}");
}

#[test]
fn rerun_runs_nothing_and_h3_resolution_reruns_exactly_its_downstream() {
    let (s, _) = pv_scratch();
    run_pv(&s, &[]).ok();
    let again = run_pv(&s, &[]).ok();
    assert!(again.nodes("executed").is_empty(), "{:?}", again.nodes("executed"));
    assert!(again.json()["materialized"]["snapshot"].is_null(), "an unchanged rerun writes no snapshot");
    let changed = run_pv(&s, &["--set", "h3_resolution=9"]).ok();
    assert_eq!(
        changed.nodes("executed"),
        vec![
            "country_stats",
            "dedup_comparison",
            "dedup_decisions",
            "dedup_pairs",
            "deduplicated",
            "indexed",
            "located"
        ],
        "only the H3 node and what is downstream of it"
    );
}

#[test]
fn sequential_and_parallel_runs_give_identical_tables() {
    let (s, _) = pv_scratch();
    let seq = run_pv(&s, &["--jobs", "1", "--no-cache"]).ok();
    std::fs::rename(s.path().join(".flowrun/lake/prepared_pv_dedup.parquet"), s.path().join("seq.parquet")).unwrap();
    let par = run_pv(&s, &["--jobs", "4", "--no-cache"]).ok();
    assert_eq!(seq.nodes("executed"), par.nodes("executed"));
    let cmp = python_json(
        r#"
import duckdb, json, sys
a, b = sys.argv[1], sys.argv[2]
q = lambda sql: duckdb.sql(sql).fetchall()
cols = "* EXCLUDE (processed_at)"
print(json.dumps({
  'rows': [q(f"SELECT count(*) FROM '{a}'")[0][0], q(f"SELECT count(*) FROM '{b}'")[0][0]],
  'a_not_b': q(f"SELECT count(*) FROM (SELECT {cols} FROM '{a}' EXCEPT ALL SELECT {cols} FROM '{b}')")[0][0],
  'b_not_a': q(f"SELECT count(*) FROM (SELECT {cols} FROM '{b}' EXCEPT ALL SELECT {cols} FROM '{a}')")[0][0],
  'same_order': q(f"SELECT count(*) FROM (SELECT unified_id, row_number() OVER () r FROM '{a}') x JOIN (SELECT unified_id, row_number() OVER () r FROM '{b}') y USING (r) WHERE x.unified_id <> y.unified_id")[0][0],
}))
"#,
        &[
            &s.path().join("seq.parquet").display().to_string(),
            &s.path().join(".flowrun/lake/prepared_pv_dedup.parquet").display().to_string(),
        ],
    );
    assert_eq!(cmp["rows"][0], cmp["rows"][1]);
    assert_eq!(cmp["a_not_b"], 0, "{cmp}");
    assert_eq!(cmp["b_not_a"], 0, "{cmp}");
    assert_eq!(cmp["same_order"], 0, "rows come out in the same order too: {cmp}");
}

/// A mirror in the scratch directory holding copies of some shared datasets (the test may change them).
fn scratch_mirror(s: &Scratch, datasets: &[&str]) -> PathBuf {
    let mirror = s.path().join("mirror");
    for d in datasets.iter().chain(&["natural_earth_admin0"]) {
        let (from, to) = (pv_data().join(d), mirror.join(d));
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&from).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    mirror
}

fn run_mirror(s: &Scratch, mirror: &Path, extra: &[&str]) -> crate::util::Out {
    let mirror = mirror.display().to_string();
    let mut args = vec!["--json", "run", "flows/doi_pv.toml", "--mirror", &mirror];
    args.extend_from_slice(extra);
    s.run(&args)
}

#[test]
fn a_changed_sidecar_reruns_raw_and_a_recomputed_standardized_cuts_off() {
    let (s, _) = pv_scratch();
    let mirror = scratch_mirror(&s, &["chn_med_res_pv_2024"]);
    run_mirror(&s, &mirror, &[]).ok();
    // the .dbf's header date changes: `files` hands `raw` another value, so `raw` reads the file again
    let dbf = mirror.join("chn_med_res_pv_2024/PV_Test_2020.dbf");
    let mut bytes = std::fs::read(&dbf).unwrap();
    bytes[3] = bytes[3].wrapping_add(1);
    std::fs::write(&dbf, bytes).unwrap();
    let again = run_mirror(&s, &mirror, &[]).ok();
    assert_eq!(again.nodes("executed"), vec!["files[chn_med_res_pv_2024]", "raw[chn_med_res_pv_2024]"]);

    // standardized re-runs with a new processed_at, and nothing downstream of it does (early cutoff)
    let forced = run_mirror(&s, &mirror, &["--recompute", "standardized"]).ok();
    assert_eq!(forced.nodes("executed"), vec!["standardized[chn_med_res_pv_2024]"]);
    assert!(forced.json()["materialized"]["snapshot"].is_null(), "the lake is not rewritten: {}", forced.stdout);
}

#[test]
fn a_broken_dataset_is_left_out_and_the_others_reach_the_lake() {
    let (s, _) = pv_scratch();
    let mirror = scratch_mirror(&s, &["ind_pv_solar_farms_2022", "chn_med_res_pv_2024"]);
    // a truncated shapefile: ChinaPV's branch fails
    let shp = mirror.join("chn_med_res_pv_2024/PV_Test_2020.shp");
    let bytes = std::fs::read(&shp).unwrap();
    std::fs::write(&shp, &bytes[..bytes.len() / 2]).unwrap();
    let out = run_mirror(&s, &mirror, &[]);
    assert_eq!(out.code, 1, "a partial run exits 1\n{}\n{}", out.stdout, out.stderr);
    let json = out.json();
    assert_eq!(json["status"], "partial");
    assert_eq!(json["left_out"], serde_json::json!(["measured[chn_med_res_pv_2024]"]));
    let lake = query_lake(&s);
    assert_eq!(lake["prepared"], 1363, "India alone is written: {lake}");
    let lake_dir = s.path().join(".flowrun/lake");
    let message = python_json(
        r#"
import duckdb, json, os, sys
con = duckdb.connect()
con.execute(f"LOAD '{os.path.join(sys.argv[3], 'ducklake.duckdb_extension')}'")
con.execute(f"ATTACH 'ducklake:{sys.argv[1]}' AS lake (DATA_PATH '{sys.argv[2]}/', READ_ONLY)")
print(json.dumps(con.execute("SELECT commit_message FROM lake.snapshots() ORDER BY snapshot_id DESC LIMIT 1").fetchall()[0][0]))
"#,
        &[
            &lake_dir.join("doi_pv.ducklake").display().to_string(),
            &lake_dir.join("doi_pv_data").display().to_string(),
            &flowrun_extension_dir().display().to_string(),
        ],
    );
    let message = message.as_str().unwrap();
    assert!(message.contains("(partial, missing chn_med_res_pv_2024: raw[chn_med_res_pv_2024] failed: "), "{message}");
    // the whole cause, down to what was wrong with the file
    assert!(message.contains("PV_Test_2020.shp") && message.matches(": ").count() >= 4, "{message}");
}

#[test]
fn bad_values_unrepairable_polygons_and_impossible_coordinates_are_reported() {
    let (s, flow_path) = pv_scratch();
    let mirror = scratch_mirror(&s, &[]);
    // a GeoJSON whose area column has a value that is not a number, and a polygon with no area at all
    let square = "[[[10.0, 50.0], [10.001, 50.0], [10.001, 50.001], [10.0, 50.001], [10.0, 50.0]]]";
    let line = "[[[11.0, 50.0], [11.5, 50.5], [12.0, 51.0], [11.0, 50.0]]]";
    s.write(
        "mirror/odd_register/odd.geojson",
        &format!(
            r#"{{"type": "FeatureCollection", "features": [
{{"type": "Feature", "properties": {{"pid": "a-1", "area": "12,5"}}, "geometry": {{"type": "Polygon", "coordinates": {square}}}}},
{{"type": "Feature", "properties": {{"pid": "a-2", "area": "99"}}, "geometry": {{"type": "Polygon", "coordinates": {line}}}}}
]}}"#
        ),
    );
    // a CSV in degrees whose latitude and longitude columns were swapped: the second row cannot be a position
    s.write("mirror/swapped_points/points.csv", "id,lat,lon\n1,10.5,50.1\n2,120.25,40.0\n");
    // a GeoJSON that writes latitude first: read with axis_order = "lat_lon" (else latitude 120 fails)
    s.write(
        "mirror/latlon_points/p.geojson",
        r#"{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"id": "p1"}, "geometry": {"type": "Point", "coordinates": [55.0, 120.0]}}]}"#,
    );
    let flow = std::fs::read_to_string(&flow_path).unwrap();
    let (head, rest) = flow.split_once("[config.manifest.").unwrap();
    let tail = &rest[rest.find("\n# -----").unwrap()..];
    let manifest = r#"[config.manifest.odd_register]
repository = "direct"
source = "local"
format = "geojson"
id = "pid"
area = "area"

[config.manifest.latlon_points]
repository = "direct"
source = "local"
format = "geojson"
axis_order = "lat_lon"
id = "id"

[config.manifest.swapped_points]
repository = "direct"
source = "local"
format = "csv"
lat = "lat"
lon = "lon"
id = "id"
"#;
    std::fs::write(&flow_path, format!("{head}{manifest}{tail}")).unwrap();
    let out = run_mirror(&s, &mirror, &[]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let json = out.json();
    assert_eq!(json["status"], "partial", "the odd register still reaches the lake");
    let status =
        |name: &str| json["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name).unwrap()["status"].clone();
    assert_eq!(status("measured[latlon_points]"), "executed", "lat/lon order read as such");
    let text = json.to_string();
    for expected in [
        r#"column `area`: 1 values are not numbers, e.g. \"12,5\" at file odd.geojson, row 0 (counting from 0); they are null (if they use a thousands separator, set `thousands`)"#,
        "1 invalid geometries could not be repaired and are kept as they are",
        "odd_register:a-2",
        "dataset `swapped_points`, file points.csv, row 1 (counting from 0): coordinate #1: coordinate (40, 120.25) in EPSG:4326",
        "the coordinates were read as EPSG:4326 (WGS 84) (from the CSV default (lon/lat in degrees)): if they are in another CRS, give the dataset crs",
        "not a WGS84 position",
    ] {
        assert!(
            text.contains(expected),
            "`{expected}` not reported:\n{}",
            serde_json::to_string_pretty(&json).unwrap()
        );
    }
}

/// Every manifest mistake, in `[config.manifest]` or in `[config.countries]`, is an error of the flow file
/// (exit 2, nothing runs) naming the dataset and the fix, for `explain` as for `run`.
#[test]
fn manifest_mistakes_are_flow_errors() {
    let (s, flow_path) = pv_scratch();
    let flow = std::fs::read_to_string(&flow_path).unwrap();
    let cases = [
        ("crs = \"EPSG:4326\"", "crs = \"EPSG:999999\"", "unknown CRS EPSG:999999"),
        ("crs = \"EPSG:4326\"", "crs = \"garbage\"", "crs = \"garbage\""),
        ("format = \"csv\"", "format = \"csv\"\nencoding = \"klingon\"", "unknown encoding `klingon`"),
        ("format = \"csv\"", "format = \"csv\"\ncompression = \"rar\"", "unknown compression `rar`"),
        ("format = \"csv\"", "format = \"csv\"\ncolour = \"red\"", "unknown field `colour`"),
    ];
    for (from, to, expected) in cases {
        assert!(flow.contains(from), "the flow has {from}");
        let changed = flow.replacen(from, to, 1);
        s.write("flows/doi_pv.toml", &changed);
        for cmd in ["explain", "run"] {
            let out = s.run(&[cmd, "flows/doi_pv.toml", "--mirror", &pv_data().display().to_string()]);
            assert_eq!(out.code, 2, "{to}: {cmd} exits 2\n{}\n{}", out.stdout, out.stderr);
            assert!(out.stderr.contains(expected) && out.stderr.contains("dataset `"), "{to}: {}", out.stderr);
            // the error points at that dataset's table, not at the first of the manifest
            let dataset = out.stderr.split("dataset `").nth(1).and_then(|r| r.split('`').next()).unwrap();
            let header = format!("[config.manifest.{dataset}]");
            let line = changed.lines().position(|l| l.trim() == header).expect("the dataset's table");
            let at = format!("doi_pv.toml:{}:", line + 1);
            assert!(out.stderr.contains(&at), "{to}: not at {at}: {}", out.stderr);
        }
    }
    // the countries dataset is checked the same way
    let countries = flow.replacen("[config.countries]\n", "[config.countries]\nencoding = \"klingon\"\n", 1);
    assert_ne!(countries, flow);
    s.write("flows/doi_pv.toml", &countries);
    let out = s.run(&["explain", "flows/doi_pv.toml", "--mirror", &pv_data().display().to_string()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("unknown encoding `klingon`"), "{}", out.stderr);
    // an unknown field of that one table (its error names the table's fields too) points at the table
    let header = countries.lines().position(|l| l.trim() == "[config.countries]").unwrap();
    let countries = flow.replacen("[config.countries]\n", "[config.countries]\ncolour = \"red\"\n", 1);
    s.write("flows/doi_pv.toml", &countries);
    let out = s.run(&["explain", "flows/doi_pv.toml", "--mirror", &pv_data().display().to_string()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("unknown field `colour`"), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("doi_pv.toml:{}:", header + 1)), "{}", out.stderr);
}
