//! The bad-input corpus: `tests/corpus/*.toml`, one case per file. A case's first lines say what it
//! expects (`# expect: <exit code> <message fragment>`), which data it needs (`# data: <file> <generator>`,
//! written here into the mirror's `bad/` dataset: large or binary inputs are made, not stored) and any
//! environment (`# env: NAME=VALUE`). A case without a `[flow]` table is a manifest entry: it runs in the
//! PV flow's first stages (`datasets` -> `files` -> `raw` -> `standardized`). Each must end with its exit
//! code and a message holding the fragment, and never a panic.

use std::io::Write;
use std::path::Path;

use crate::util::Scratch;

const PV_PRELUDE: &str = r#"[flow]
name = "corpus"
modules = ["flowrun_pv"]
outputs = ["standardized"]

[inputs]
mirror = { default = "mirror" }

[nodes.datasets]
[nodes.files]
[nodes.raw]
[nodes.standardized]

"#;

fn geojson(features: &str) -> String {
    format!(r#"{{"type":"FeatureCollection","features":[{features}]}}"#)
}

fn square(x: f64) -> String {
    format!(r#"{{"type":"Polygon","coordinates":[[[{x},0],[{x},1],[{},1],[{x},0]]]}}"#, x + 1.0)
}

/// A shapefile of two polygons (`.shp`, `.shx`, `.dbf`) at `path`.
fn write_shapefile(path: &Path) {
    let shp = path.to_path_buf();
    // the three files by hand (the ESRI whitepaper's layout): two polygons, one numeric field `fid`
    let polys: Vec<Vec<(f64, f64)>> = (0..2)
        .map(|i| {
            let x = i as f64 * 2.0;
            vec![(x, 0.0), (x, 1.0), (x + 1.0, 1.0), (x, 0.0)]
        })
        .collect();
    let mut records = Vec::new();
    for (i, ring) in polys.iter().enumerate() {
        let mut c = Vec::new();
        c.extend_from_slice(&5i32.to_le_bytes()); // polygon
        for v in [0.0f64, 0.0, 3.0, 1.0] {
            c.extend_from_slice(&v.to_le_bytes());
        }
        c.extend_from_slice(&1i32.to_le_bytes());
        c.extend_from_slice(&(ring.len() as i32).to_le_bytes());
        c.extend_from_slice(&0i32.to_le_bytes());
        for (x, y) in ring {
            c.extend_from_slice(&x.to_le_bytes());
            c.extend_from_slice(&y.to_le_bytes());
        }
        let mut r = Vec::new();
        r.extend_from_slice(&(i as i32 + 1).to_be_bytes());
        r.extend_from_slice(&((c.len() / 2) as i32).to_be_bytes());
        r.extend_from_slice(&c);
        records.push(r);
    }
    let header = |len_words: i32| {
        let mut h = Vec::new();
        h.extend_from_slice(&9994i32.to_be_bytes());
        h.extend_from_slice(&[0u8; 20]);
        h.extend_from_slice(&len_words.to_be_bytes());
        h.extend_from_slice(&1000i32.to_le_bytes());
        h.extend_from_slice(&5i32.to_le_bytes());
        for v in [0.0f64, 0.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    };
    let body: Vec<u8> = records.concat();
    let mut shp_bytes = header(((100 + body.len()) / 2) as i32);
    shp_bytes.extend_from_slice(&body);
    std::fs::write(&shp, shp_bytes).unwrap();
    let mut shx = header(((100 + 8 * records.len()) / 2) as i32);
    let mut offset = 50i32;
    for r in &records {
        shx.extend_from_slice(&offset.to_be_bytes());
        shx.extend_from_slice(&(((r.len() - 8) / 2) as i32).to_be_bytes());
        offset += (r.len() / 2) as i32;
    }
    std::fs::write(shp.with_extension("shx"), shx).unwrap();
    // dBASE III: header, one field descriptor (fid, N, 4), records
    let mut dbf = vec![0x03, 126, 11, 30];
    dbf.extend_from_slice(&(records.len() as u32).to_le_bytes());
    dbf.extend_from_slice(&(32u16 + 32 + 1).to_le_bytes());
    dbf.extend_from_slice(&(1u16 + 4).to_le_bytes());
    dbf.extend_from_slice(&[0u8; 20]);
    let mut field = b"fid".to_vec();
    field.resize(11, 0);
    field.push(b'N');
    field.extend_from_slice(&[0u8; 4]);
    field.push(4);
    field.push(0);
    field.extend_from_slice(&[0u8; 14]);
    dbf.extend_from_slice(&field);
    dbf.push(0x0d);
    for i in 0..records.len() {
        dbf.push(b' ');
        dbf.extend_from_slice(format!("{:>4}", i + 1).as_bytes());
    }
    dbf.push(0x1a);
    std::fs::write(shp.with_extension("dbf"), dbf).unwrap();
}

/// Writes the data a case asks for at `path` (inside the mirror's `bad/` directory).
fn generate(generator: &str, path: &Path, outside: &Path) {
    match generator {
        "empty" => std::fs::write(path, b"").unwrap(),
        "truncated_geojson" => {
            let full = geojson(&format!(r#"{{"type":"Feature","properties":{{}},"geometry":{}}}"#, square(0.0)));
            std::fs::write(path, &full[..full.len() / 2]).unwrap()
        }
        "null_geometry" => std::fs::write(
            path,
            geojson(&format!(
                r#"{{"type":"Feature","properties":{{"fid":1}},"geometry":null}},{{"type":"Feature","properties":{{"fid":2}},"geometry":{}}}"#,
                square(0.0)
            )),
        )
        .unwrap(),
        "shapefile_without_shx" => {
            write_shapefile(path);
            std::fs::remove_file(path.with_extension("shx")).unwrap();
        }
        "dbf_wrong_record_count" => {
            write_shapefile(path);
            let dbf = path.with_extension("dbf");
            let mut b = std::fs::read(&dbf).unwrap();
            b[4..8].copy_from_slice(&1000u32.to_le_bytes());
            std::fs::write(dbf, b).unwrap();
        }
        "nan_inf" => std::fs::write(path, "id,lat,lon\n1,NaN,10\n2,45,inf\n3,-inf,1e999\n").unwrap(),
        "million_vertices" => {
            let n = 1_000_000;
            let mut ring: Vec<String> = (0..n)
                .map(|i| {
                    let a = i as f64 / n as f64 * std::f64::consts::TAU;
                    format!("[{:.9},{:.9}]", 10.0 + 0.01 * a.cos(), 50.0 + 0.01 * a.sin())
                })
                .collect();
            ring.push(ring[0].clone());
            let g = format!(r#"{{"type":"Polygon","coordinates":[[{}]]}}"#, ring.join(","));
            std::fs::write(path, geojson(&format!(r#"{{"type":"Feature","properties":{{}},"geometry":{g}}}"#))).unwrap()
        }
        "sparse_2gb" => std::fs::File::create(path).unwrap().set_len(2 << 30).unwrap(),
        "ten_thousand_columns" => {
            let mut header: Vec<String> = (0..9_998).map(|i| format!("c{i}")).collect();
            header.extend(["lat".to_string(), "lon".to_string()]);
            let row = |lat: f64| {
                let mut r: Vec<String> = (0..9_998).map(|i| i.to_string()).collect();
                r.extend([lat.to_string(), "10".to_string()]);
                r.join(",")
            };
            std::fs::write(path, format!("{}\n{}\n{}\n", header.join(","), row(45.0), row(46.0))).unwrap()
        }
        "zip_bomb" => {
            // 64 MB of zeros compress to a few tens of KB; the case caps unpacking at 1 MB
            let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
            let options =
                zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            zip.start_file("points.csv", options).unwrap();
            let zeros = vec![b'0'; 1 << 20];
            for _ in 0..64 {
                zip.write_all(&zeros).unwrap();
            }
            zip.finish().unwrap();
        }
        "symlink_out" => {
            std::fs::write(outside, geojson("")).unwrap();
            std::os::unix::fs::symlink(outside, path).unwrap();
        }
        other => panic!("no generator `{other}`"),
    }
}

#[test]
fn every_bad_input_gives_a_clear_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut cases: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    let (mut clear, mut panics, mut wrong) = (0, 0, Vec::new());
    for case in &cases {
        let text = std::fs::read_to_string(case).unwrap();
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let header = |key: &str| -> Vec<String> {
            text.lines().filter_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_string)).collect()
        };
        let expect = header("expect").pop().unwrap_or_else(|| panic!("{name}: no `# expect:` line"));
        let (code, fragment) = expect.split_once(' ').unwrap();
        let s = Scratch::new();
        let flow = if text.contains("[flow]") { text.clone() } else { format!("{PV_PRELUDE}{text}") };
        s.write("flow.toml", &flow);
        let bad = s.path().join("mirror/bad");
        std::fs::create_dir_all(&bad).unwrap();
        for data in header("data") {
            let (file, generator) = data.split_once(' ').unwrap();
            generate(generator, &bad.join(file), &s.path().join("outside.geojson"));
        }
        let env: Vec<(String, String)> = header("env")
            .iter()
            .map(|e| e.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap())
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let started = std::time::Instant::now();
        let out = s.run_env(&["run", "flow.toml", "--jobs", "1"], &env);
        println!("  {name}: exit {} in {:.1} s", out.code, started.elapsed().as_secs_f64());
        let said = format!("{}{}", out.stdout, out.stderr);
        if said.contains("panicked") {
            panics += 1;
            wrong.push(format!("{name}: a panic\n{said}"));
        } else if out.code.to_string() == code && said.contains(fragment) {
            clear += 1;
        } else {
            wrong.push(format!("{name}: expected exit {code} and `{fragment}`, got exit {}:\n{said}", out.code));
        }
    }
    println!("corpus: {} cases, {clear} clear errors, {panics} panics", cases.len());
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    assert!(cases.len() >= 16);
}
