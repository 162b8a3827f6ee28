//! The download path, without the internet: a local HTTP server on 127.0.0.1 answers with fixture API
//! responses in the documented JSON shapes of Zenodo (records API), Figshare (articles API), GitHub
//! (contents API) and ScienceBase (item JSON), and serves the real files of `../shared/data/pv`. Broken
//! datasets sit next to good ones: each fails its own branch with an error naming dataset and file.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::{Scratch, pv_data};

#[derive(Clone)]
enum Route {
    Body(Vec<u8>, &'static str),
    Status(u16),
    /// Accept the request, then say nothing for this long.
    Stall(Duration),
}

/// A tiny HTTP/1.1 server: exact path (with query) -> route; anything else is a 404. A file body honours
/// `Range: bytes=N-` (206, or 416 from its length on), as Zenodo's file server does; the ranges asked are
/// kept in `ranges`.
struct Server {
    base: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    ranges: Arc<Mutex<Vec<u64>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let ranges: Arc<Mutex<Vec<u64>>> = Arc::default();
        let (table, asked) = (routes.clone(), ranges.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (table, asked) = (table.clone(), asked.clone());
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let route = table.lock().unwrap().get(&path).cloned();
                    let range = text
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(str::to_string))
                        .and_then(|r| r.trim_end_matches('-').parse::<u64>().ok());
                    if let Some(from) = range {
                        asked.lock().unwrap().push(from);
                    }
                    let (status, body, ctype) = match (route, range) {
                        (Some(Route::Body(b, t)), Some(from)) if from >= b.len() as u64 => (416, Vec::new(), t),
                        (Some(Route::Body(b, t)), Some(from)) => (206, b[from as usize..].to_vec(), t),
                        (route, _) => match route {
                            Some(Route::Body(b, t)) => (200, b, t),
                            Some(Route::Status(s)) => (s, b"fixture error".to_vec(), "text/plain"),
                            Some(Route::Stall(d)) => {
                                std::thread::sleep(d);
                                return;
                            }
                            None => (404, b"not found".to_vec(), "text/plain"),
                        },
                    };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: {ctype}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                });
            }
        });
        Server { base, routes, ranges }
    }

    fn route(&self, path: &str, r: Route) {
        self.routes.lock().unwrap().insert(path.to_string(), r);
    }

    fn json(&self, path: &str, v: serde_json::Value) {
        self.route(path, Route::Body(v.to_string().into_bytes(), "application/json"));
    }

    /// Serves `bytes` at `/files/<name>`; returns its URL.
    fn file(&self, name: &str, bytes: Vec<u8>) -> String {
        self.route(&format!("/files/{name}"), Route::Body(bytes, "application/octet-stream"));
        format!("{}/files/{name}", self.base)
    }
}

fn md5(path: &Path) -> String {
    let out = Command::new("md5sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// Git's blob SHA-1, what GitHub's contents API calls `sha`.
fn git_sha(path: &Path) -> String {
    let out = Command::new("git").arg("hash-object").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A zip with the given (entry name, bytes), made with Python's zipfile (entry names taken as given).
fn zip_bytes(dir: &Path, name: &str, entries: &[(&str, &Path)]) -> Vec<u8> {
    let out = dir.join(name);
    let mut script =
        format!("import zipfile\nz = zipfile.ZipFile({:?}, 'w', zipfile.ZIP_DEFLATED)\n", out.display().to_string());
    for (entry, file) in entries {
        script.push_str(&format!("z.write({:?}, {:?})\n", file.display().to_string(), entry));
    }
    script.push_str("z.close()\n");
    assert!(Command::new("python3").arg("-c").arg(&script).status().unwrap().success());
    std::fs::read(out).unwrap()
}

const FLOW_HEAD: &str = r#"[flow]
name = "downloads"
modules = ["flowrun_pv"]
outputs = ["measured"]

[inputs]
mirror = { default = "" }

[nodes.datasets]
[nodes.files]
[nodes.raw]
[nodes.standardized]
[nodes.measured]
"#;

#[test]
fn every_repository_kind_through_its_api_and_broken_datasets_fail_alone() {
    let srv = Server::start();
    let b = &srv.base;
    let pv = pv_data();
    let s = Scratch::new();

    // Zenodo: India (records API: files[].key, size, checksum "md5:...", links.self)
    let india = pv.join("ind_pv_solar_farms_2022/solar_farms_india_2021_merged_simplified.geojson");
    let india_url = srv.file("india.geojson", std::fs::read(&india).unwrap());
    srv.json(
        "/zenodo/records/4059881",
        serde_json::json!({"id": 4059881, "files": [{"key": "solar_farms_india_2021_merged_simplified.geojson",
            "size": std::fs::metadata(&india).unwrap().len(), "checksum": format!("md5:{}", md5(&india)),
            "links": {"self": india_url}}]}),
    );
    // Figshare: California (articles API, a version: files[].name, download_url, size, computed_md5)
    let cali = pv.join("usa_cali_usgs_pv_2016/polygonDataExceptVertices.csv");
    let cali_url = srv.file("cali.csv", std::fs::read(&cali).unwrap());
    srv.json(
        "/figshare/articles/3385780/versions/4",
        serde_json::json!({"id": 3385780, "files": [{"id": 1, "name": "polygonDataExceptVertices.csv",
            "download_url": cali_url, "size": std::fs::metadata(&cali).unwrap().len(),
            "supplied_md5": "", "computed_md5": md5(&cali)}]}),
    );
    // GitHub: ChinaPV (contents API: a directory listing with name, type, size, sha, download_url)
    let mut listing = Vec::new();
    for entry in std::fs::read_dir(pv.join("chn_med_res_pv_2024")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let url = srv.file(&format!("china/{name}"), std::fs::read(&p).unwrap());
        listing.push(
            serde_json::json!({"name": name, "path": name, "type": "file", "size": std::fs::metadata(&p).unwrap().len(),
            "sha": git_sha(&p), "download_url": url}),
        );
    }
    listing.push(serde_json::json!({"name": "docs", "path": "docs", "type": "dir", "sha": "0", "download_url": null}));
    srv.json("/github/repos/qingfengxitu/ChinaPV/contents/?ref=HEAD", serde_json::Value::Array(listing));
    // ScienceBase: USPVDB, zipped (item JSON: files[].name, url, size, checksum {type, value})
    let uspvdb = pv.join("usa_uspvdb/uspvdb_v1_0_20231108.csv");
    let zip = zip_bytes(s.path(), "uspvdb.zip", &[("uspvdb_v1_0_20231108.csv", &uspvdb)]);
    let zip_path = s.path().join("uspvdb.zip");
    let zip_url = srv.file("uspvdb.zip", zip.clone());
    srv.json(
        "/sciencebase/item/5e8f3c1ae4b01d50924f2c63?format=json",
        serde_json::json!({"id": "5e8f3c1ae4b01d50924f2c63", "files": [{"name": "uspvdb.zip", "url": zip_url,
            "size": zip.len(), "checksum": {"type": "MD5", "value": md5(&zip_path)}}]}),
    );

    // the broken ones
    let truncated: Vec<u8> = std::fs::read(&india).unwrap()[..20_000].to_vec();
    let truncated_url = srv.file("truncated.geojson", truncated);
    let mut no_dbf = Vec::new();
    for ext in ["shp", "shx", "prj"] {
        let p = pv.join(format!("chn_med_res_pv_2024/PV_Test_2020.{ext}"));
        let url = srv.file(&format!("nodbf/PV_Test_2020.{ext}"), std::fs::read(&p).unwrap());
        no_dbf.push(serde_json::json!({"name": format!("PV_Test_2020.{ext}"), "type": "file",
            "size": std::fs::metadata(&p).unwrap().len(), "sha": git_sha(&p), "download_url": url}));
    }
    srv.json("/github/repos/someone/no-dbf/contents/?ref=HEAD", serde_json::Value::Array(no_dbf));
    let no_lat_url = srv.file("no_lat.csv", b"id,lon\n1,10.5\n2,11.5\n".to_vec());
    let points_url = srv.file("points.csv", b"id,lat,lon\n1,50.1,10.5\n2,50.2,11.5\n".to_vec());
    srv.json(
        "/zenodo/records/111",
        serde_json::json!({"files": [{"key": "points.csv", "size": 35, "checksum": "md5:00000000000000000000000000000000",
            "links": {"self": points_url}}]}),
    );
    srv.route("/figshare/articles/500", Route::Status(500));
    srv.route("/files/slow.csv", Route::Stall(Duration::from_secs(30)));
    let points = s.write("points_for_zip.csv", "id,lat,lon\n1,50.1,10.5\n");
    let evil_url = srv.file("evil.zip", zip_bytes(s.path(), "evil.zip", &[("../evil.csv", &points)]));

    let flow = format!(
        r#"{FLOW_HEAD}
[config.repositories]
zenodo = "{b}/zenodo"
figshare = "{b}/figshare"
github = "{b}/github"
sciencebase = "{b}/sciencebase"

[config.manifest.ind_pv_solar_farms_2022]
repository = "zenodo"
source = "10.5281/zenodo.4059881"
format = "geojson"
include = ["*.geojson"]
id = "fid"

[config.manifest.usa_cali_usgs_pv_2016]
repository = "figshare"
source = "10.6084/m9.figshare.3385780.v4"
format = "csv"
lat = "centroid_latitude"
lon = "centroid_longitude"
crs = "EPSG:4269"
id = "polygon_id"

[config.manifest.chn_med_res_pv_2024]
repository = "github"
source = "qingfengxitu/ChinaPV"
format = "shp"
include = ["re:PV_.*\\.shp$"]
exclude = ["re:NPV_.*\\.shp$"]
id = "FID_PV_202"

[config.manifest.usa_uspvdb]
repository = "sciencebase"
source = "https://www.sciencebase.gov/catalog/item/5e8f3c1ae4b01d50924f2c63"
compression = "zip"
format = "csv"
lat = "ylat"
lon = "xlong"
id = "case_id"

[config.manifest.bad_truncated_geojson]
repository = "direct"
source = "{truncated_url}"
format = "geojson"

[config.manifest.bad_shp_without_dbf]
repository = "github"
source = "someone/no-dbf"
format = "shp"

[config.manifest.bad_csv_without_lat]
repository = "direct"
source = "{no_lat_url}"
format = "csv"
lat = "lat"
lon = "lon"

[config.manifest.bad_checksum]
repository = "zenodo"
source = "10.5281/zenodo.111"
format = "csv"
lat = "lat"
lon = "lon"

[config.manifest.bad_http_404]
repository = "zenodo"
source = "10.5281/zenodo.404"
format = "geojson"

[config.manifest.bad_http_500]
repository = "figshare"
source = "10.6084/m9.figshare.500"
format = "geojson"

[config.manifest.bad_timeout]
repository = "direct"
source = "{b}/files/slow.csv"
format = "csv"
lat = "lat"
lon = "lon"

[config.manifest.bad_zip_escape]
repository = "direct"
source = "{evil_url}"
compression = "zip"
format = "csv"
lat = "lat"
lon = "lon"
"#
    );
    s.write("flow.toml", &flow);
    let out = s.run_env(&["--json", "run", "flow.toml", "--jobs", "4"], &[("FLOWRUN_HTTP_TIMEOUT", "1")]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let json = out.json();
    let nodes = json["nodes"].as_array().unwrap();
    let node = |name: &str| nodes.iter().find(|n| n["name"] == name).unwrap_or_else(|| panic!("no node run {name}"));

    // the good datasets complete, with the same rows as from the mirror
    for (key, rows) in [
        ("ind_pv_solar_farms_2022", 1363),
        ("usa_cali_usgs_pv_2016", 19433),
        ("chn_med_res_pv_2024", 817 + 1852),
        ("usa_uspvdb", 3699),
    ] {
        let n = node(&format!("measured[{key}]"));
        let failures: Vec<String> = nodes
            .iter()
            .filter(|n| n["status"] == "failed" && n["item"] == key)
            .map(|n| format!("{}: {}", n["name"], n["error"]))
            .collect();
        assert_eq!(n["status"], "executed", "{failures:?}");
        assert_eq!(n["rows"], rows, "{key}");
    }
    // each broken dataset fails its own branch, and says which dataset and file
    let error_of = |key: &str| -> String {
        let failed: Vec<&serde_json::Value> = nodes
            .iter()
            .filter(|n| n["status"] == "failed" && n["name"].as_str().unwrap().ends_with(&format!("[{key}]")))
            .collect();
        assert_eq!(failed.len(), 1, "{key}: {failed:?}");
        failed[0]["error"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect::<Vec<_>>().join(": ")
    };
    let expect = [
        ("bad_truncated_geojson", vec!["truncated.geojson"]),
        ("bad_shp_without_dbf", vec!["PV_Test_2020.shp", ".dbf"]),
        ("bad_csv_without_lat", vec!["no_lat.csv", "`lat`"]),
        ("bad_checksum", vec!["points.csv", "md5"]),
        ("bad_http_404", vec!["404"]),
        ("bad_http_500", vec!["500"]),
        ("bad_timeout", vec!["slow.csv", "timed out"]),
        ("bad_zip_escape", vec!["../evil.csv", "escapes the target directory"]),
    ];
    for (key, needles) in expect {
        let e = error_of(key);
        assert!(e.contains(key), "the error names the dataset: {e}");
        for needle in needles {
            assert!(e.contains(needle), "{key}: `{needle}` not in: {e}");
        }
    }

    // downloads are cached: a second run downloads nothing and the good branches come from the cache
    srv.routes.lock().unwrap().retain(|k, _| !k.starts_with("/files/"));
    let again = s.run_env(&["--json", "run", "flow.toml"], &[("FLOWRUN_HTTP_TIMEOUT", "1")]);
    let again = again.json();
    let reused: Vec<&str> = again["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "reused")
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert!(reused.contains(&"measured[usa_uspvdb]") && reused.contains(&"files[chn_med_res_pv_2024]"), "{reused:?}");
}

#[test]
fn a_mirror_over_http() {
    let srv = Server::start();
    let india = pv_data().join("ind_pv_solar_farms_2022/solar_farms_india_2021_merged_simplified.geojson");
    srv.route(
        "/mirror/ind_pv_solar_farms_2022/",
        Route::Body(
            b"<html><a href=\"../\">..</a> <a href=\"solar_farms_india_2021_merged_simplified.geojson\">x</a> <a href=\"LICENSE\">LICENSE</a></html>".to_vec(),
            "text/html",
        ),
    );
    srv.route(
        "/mirror/ind_pv_solar_farms_2022/solar_farms_india_2021_merged_simplified.geojson",
        Route::Body(std::fs::read(&india).unwrap(), "application/geo+json"),
    );
    let s = Scratch::new();
    s.write(
        "flow.toml",
        &format!(
            "{FLOW_HEAD}\n[config.manifest.ind_pv_solar_farms_2022]\nrepository = \"github\"\nsource = \"microsoft/solar-farms-mapping/data\"\nformat = \"geojson\"\nid = \"fid\"\n"
        ),
    );
    let out = s.run(&["--json", "run", "flow.toml", "--mirror", &format!("{}/mirror", srv.base)]).ok();
    let json = out.json();
    let measured =
        json["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "measured[ind_pv_solar_farms_2022]").unwrap();
    assert_eq!(measured["rows"], 1363);
}

/// A partial download of a file with a checksum (Zenodo's md5) is resumed with a `Range` request; a part
/// the server cannot continue (as long as the file already: HTTP 416) is started over. Both end with the
/// whole file, checked.
#[test]
fn a_partial_download_with_a_checksum_is_resumed_and_one_that_cannot_be_is_started_over() {
    let srv = Server::start();
    let india = pv_data().join("ind_pv_solar_farms_2022/solar_farms_india_2021_merged_simplified.geojson");
    let bytes = std::fs::read(&india).unwrap();
    let url = srv.file("india.geojson", bytes.clone());
    srv.json(
        "/zenodo/records/4059881",
        serde_json::json!({"id": 4059881, "files": [{"key": "solar_farms_india_2021_merged_simplified.geojson",
            "size": bytes.len(), "checksum": format!("md5:{}", md5(&india)), "links": {"self": url}}]}),
    );
    let s = Scratch::new();
    s.write(
        "flow.toml",
        &format!(
            "{FLOW_HEAD}\n[config.repositories]\nzenodo = \"{}/zenodo\"\n\n[config.manifest.ind_pv_solar_farms_2022]\n\
             repository = \"zenodo\"\nsource = \"10.5281/zenodo.4059881\"\nformat = \"geojson\"\nid = \"fid\"\n",
            srv.base
        ),
    );
    let dir = s.path().join(".flowrun/cache/downloads/ind_pv_solar_farms_2022");
    let part = dir.join("solar_farms_india_2021_merged_simplified.geojson.part");
    for (have, asked) in [(bytes.len() / 2, "resumed"), (bytes.len(), "started over")] {
        s.run(&["cache", "clear"]).ok();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&part, &bytes[..have]).unwrap();
        let out = s.run(&["--json", "run", "flow.toml"]).ok();
        assert_eq!(srv.ranges.lock().unwrap().pop(), Some(have as u64), "asked from the part's end, {asked}");
        assert_eq!(std::fs::read(dir.join("solar_farms_india_2021_merged_simplified.geojson")).unwrap(), bytes);
        assert!(!part.exists());
        let measured = out.json()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "measured[ind_pv_solar_farms_2022]" && n["rows"] == 1363);
        assert!(measured, "{asked}: {}", out.stdout);
    }
}
