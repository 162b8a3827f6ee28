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
china_files = q('SELECT source_file, count(*) FROM lake.raw.raw_chn_med_res_pv_2024 GROUP BY 1 ORDER BY 1')
joined = q('''SELECT dataset_name, count(*) AS n,
                     count(*) FILTER (WHERE country_code = CASE dataset_name WHEN 'ind_pv_solar_farms_2022' THEN 'IND'
                                                          WHEN 'chn_med_res_pv_2024' THEN 'CHN' ELSE 'USA' END) AS home,
                     count(*) FILTER (WHERE country_code IS NOT NULL AND country_code <> CASE dataset_name
                                        WHEN 'ind_pv_solar_farms_2022' THEN 'IND' WHEN 'chn_med_res_pv_2024' THEN 'CHN'
                                        ELSE 'USA' END) AS elsewhere
              FROM lake.prepared.prepared_pv_dedup GROUP BY 1 ORDER BY 1''')
ids = q('SELECT count(*), count(DISTINCT unified_id) FROM lake.prepared.prepared_pv_dedup')[0]
stats = q('SELECT sum(installations) FROM lake.prepared.prepared_country_pv_stats')[0][0]
print(json.dumps({'raw': raw, 'china_files': china_files, 'joined': joined, 'ids': ids, 'stats_total': stats,
                  'staging': q('SELECT count(*) FROM lake.staging.stg_pv_consolidated')[0][0],
                  'prepared': q('SELECT count(*) FROM lake.prepared.prepared_pv_dedup')[0][0],
                  'row_ids': q("SELECT unified_id FROM lake.staging.stg_pv_consolidated WHERE unified_id LIKE 'usa_cali_usgs_pv_2016:row%'")},
                 default=str))
"#;

#[test]
fn the_pipeline_on_the_shared_data() {
    let (s, _) = pv_scratch();
    let out = run_pv(&s, &[]).ok();
    let json = out.json();
    // the mirror holds four of the seven datasets; the others are left out with a warning
    assert!(json.to_string().contains("the mirror has no global_harmonized_large_solar_farms_2020"), "{json}");
    let lake_dir = s.path().join(".flowrun/lake");
    let lake = python_json(
        QUERY_LAKE,
        &[
            &lake_dir.join("doi_pv.ducklake").display().to_string(),
            &lake_dir.join("doi_pv_data").display().to_string(),
            &flowrun_extension_dir().display().to_string(),
        ],
    );
    assert_eq!(
        lake["raw"],
        serde_json::json!({
            "raw_ind_pv_solar_farms_2022": 1363,
            "raw_chn_med_res_pv_2024": 817 + 1852,
            "raw_usa_cali_usgs_pv_2016": 19433,   // 19,435 rows, two without a centroid
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
    // >= 99% of each dataset joins to its own country, and none to a wrong one
    for row in lake["joined"].as_array().unwrap() {
        let (name, n, home, elsewhere) =
            (row[0].as_str().unwrap(), row[1].as_f64().unwrap(), row[2].as_f64().unwrap(), row[3].as_i64().unwrap());
        assert!(home / n >= 0.99, "{name}: only {home} of {n} rows join to the home country");
        assert!(elsewhere as f64 / n < 0.005, "{name}: {elsewhere} rows join to another country");
    }
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
        vec!["country_stats", "dedup_comparison", "deduplicated", "indexed", "located"],
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
