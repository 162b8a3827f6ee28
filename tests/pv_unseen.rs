//! Six kinds of dataset the PV flow was not written for, added to its manifest as the README says, checked
//! row by row against GeoPandas (`tests/fixtures/unseen_datasets.py`: it writes the datasets, then reads
//! them independently and compares ids, areas, centroids and countries with flowrun's GeoParquet).

use std::path::Path;
use std::process::Command;

use crate::pv::pv_scratch;
use crate::util::{pv_data, python};

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unseen_datasets.py")
}

fn script(args: &[&str]) -> std::process::Output {
    Command::new(python()).arg(fixtures()).args(args).output().expect("python runs")
}

#[test]
fn unseen_datasets_come_out_as_geopandas_reads_them() {
    let (s, flow_path) = pv_scratch();
    let mirror = s.path().join("mirror");
    let made = script(&["make", &mirror.display().to_string(), "--data", &pv_data().display().to_string()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let countries = mirror.join("natural_earth_admin0");
    std::fs::create_dir_all(&countries).unwrap();
    let ne = pv_data().join("natural_earth_admin0/ne_50m_admin_0_countries.json");
    std::fs::copy(&ne, countries.join("ne_50m_admin_0_countries.json")).unwrap();

    // the flow with the fixtures' manifest in place of the thesis's
    let flow = std::fs::read_to_string(&flow_path).unwrap();
    let (head, rest) = flow.split_once("[config.manifest.").unwrap();
    let tail = &rest[rest.find("\n# -----").unwrap()..];
    let manifest = std::fs::read_to_string(mirror.join("manifest.toml")).unwrap();
    std::fs::write(&flow_path, format!("{head}{manifest}{tail}")).unwrap();

    // overlap_threshold = 2: no record is removed as a cross-dataset duplicate, so every kept row is compared
    let mirror_arg = mirror.display().to_string();
    let out = s.run(&["--json", "run", "flows/doi_pv.toml", "--mirror", &mirror_arg, "--set", "overlap_threshold=2"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let json = out.json();
    let notes: Vec<String> = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["notes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()))
        .collect();
    // per dataset: the CRS identified, where it came from, and the rows kept and dropped
    for (dataset, expected) in [
        (
            "deu_open_space_register",
            ["CRS EPSG:3035 (ETRS89 / LAEA Europe) (from the .prj file;", "; 3000 rows read, 3000 kept"],
        ),
        (
            "gbr_renewables_register",
            [
                "CRS EPSG:27700 (OSGB 1936 / British National Grid) (from the manifest's `crs`; datum shift: +datum=OSGB36)",
                "; 1500 rows read, 818 kept",
            ],
        ),
        ("osm_solar", ["CRS OGC:CRS84 (WGS 84, lon/lat) (from the GeoJSON `crs` member;", "; 100000 rows read"]),
        (
            "usa_rooftop_panels",
            [
                "CRS EPSG:2163 (US National Atlas Equal Area) (from the .prj file; datum shift: none (coordinates on a sphere",
                "; 2003 rows read, 2003 kept",
            ],
        ),
        ("chn_z_shapefile", ["CRS EPSG:4326 (WGS 84) (from the .prj file;", "; 273 rows read, 273 kept"]),
        (
            "multi_layer_gpkg",
            ["CRS EPSG:32633 (WGS 84 / UTM zone 33N) (from the GeoPackage layer's SRS;", "; 545 rows read, 505 kept"],
        ),
    ] {
        let note = notes
            .iter()
            .find(|n| n.starts_with(&format!("dataset `{dataset}`")))
            .unwrap_or_else(|| panic!("no note for {dataset}: {notes:#?}"));
        for e in expected {
            assert!(note.contains(e), "{dataset}: `{e}` not in `{note}`");
        }
    }
    // the register's null commissioning dates, written by GDAL as `00000000`, are nulls, not unreadable cells
    // (pyogrio reads the same 23 nulls; the oracle compares every date)
    assert!(!out.stdout.contains("`Inbetriebn`: 23 values cannot be read"), "{}", out.stdout);
    assert!(
        notes.iter().any(|n| n.ends_with("column `Inbetriebn`: 23 dates of month 00 (`00000000`: no date) are null"))
    );
    let gbr = notes.iter().find(|n| n.starts_with("dataset `gbr_renewables_register`")).unwrap();
    assert!(gbr.contains("dropped (not kept by the filter on `Technology Type`)"), "{gbr}");
    assert!(gbr.contains("8 dropped (without coordinates)"), "{gbr}");

    let parquet = s.path().join(".flowrun/lake/prepared_pv_dedup.parquet");
    let oracle = script(&["oracle", &mirror_arg, &parquet.display().to_string(), &ne.display().to_string()]);
    let report = String::from_utf8_lossy(&oracle.stdout);
    println!("oracle: {report}");
    assert!(
        oracle.status.success(),
        "flowrun and GeoPandas differ:\n{report}\n{}",
        String::from_utf8_lossy(&oracle.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["worst"]["missing"], 0);
    assert_eq!(report["worst"]["country_mismatches"], 0);

    // `layer = "*"`: every feature layer of the GeoPackage (four, in two CRSs), as pyogrio counts them
    let manifest = "[config.manifest.multi_layer_gpkg]\nrepository = \"direct\"\nsource = \"local fixture\"\n\
                    format = \"gpkg\"\nlayer = \"*\"\nid = \"farm_id\"\n";
    std::fs::write(&flow_path, format!("{head}{manifest}{tail}")).unwrap();
    let out = s.run(&["--json", "run", "flows/doi_pv.toml", "--mirror", &mirror_arg]).ok();
    let gpkg = mirror.join("multi_layer_gpkg/energy_infrastructure.gpkg");
    let layers = crate::util::python_json(
        "import json, sys, pyogrio\n\
         p = sys.argv[1]\n\
         print(json.dumps({l: pyogrio.read_info(p, layer=l)['features'] for l, _ in pyogrio.list_layers(p)}))",
        &[&gpkg.display().to_string()],
    );
    let layers = layers.as_object().unwrap();
    assert_eq!(layers.len(), 4, "{layers:?}");
    let total: i64 = layers.values().map(|n| n.as_i64().unwrap()).sum();
    assert!(out.stdout.contains(&format!("; {total} rows read")), "{total} rows in {layers:?}: {}", out.stdout);
}
