//! STAC imagery per installation (`flows/pv_imagery.toml`) against a real STAC API started here (rustac's
//! server over pgstac on PostgreSQL + PostGIS), loaded with items the test writes over India's
//! installations; `pystac-client` against the same server is the oracle for what each query returns, and
//! `rustac` reads the stac-geoparquet file back.

use std::path::Path;

use crate::servers::{RateLimiter, StacServer};
use crate::util::{Scratch, finish, flowrun_extension_dir, pv_data, python_json, spawn};

/// 300 of India's installations from the lake doi_pv.toml wrote: (unified_id, bbox) of each, and 300 items of
/// collection `s2-test` (1.5 degree squares centred on installations, dated 2022-2024, cloud cover 0-100,
/// platform sentinel-2a or -2b, assets `visual` and `B04`) plus 20 of collection `other`, from a fixed seed.
/// The flow asks for 2023, cloud cover below 20 and (a CQL2 filter of its own) sentinel-2b.
const MAKE_ITEMS: &str = r#"
import duckdb, json, os, random, shapely, sys
catalog, data_path, ext_dir = sys.argv[1:4]
con = duckdb.connect()
con.execute(f"LOAD '{os.path.join(ext_dir, 'ducklake.duckdb_extension')}'")
con.execute(f"ATTACH 'ducklake:{catalog}' AS lake (DATA_PATH '{data_path}/', READ_ONLY)")
# (DuckDB's core GEOMETRY comes to Python as WKB: the boxes from shapely, no spatial extension needed)
rows = [(u, *shapely.from_wkb(g).bounds, x, y) for u, g, x, y in con.execute(
    """SELECT unified_id, geometry, centroid_lon, centroid_lat FROM lake.prepared.prepared_pv_dedup
       WHERE country_code = 'IND' ORDER BY unified_id LIMIT 300""").fetchall()]
rng = random.Random(7)
def item(i, collection):
    r = rows[rng.randrange(len(rows))]
    x, y = r[5] + rng.uniform(-0.5, 0.5), r[6] + rng.uniform(-0.5, 0.5)
    h = 0.75
    return {"type": "Feature", "stac_version": "1.0.0", "id": f"{collection}-{i:03d}", "collection": collection,
            "geometry": {"type": "Polygon", "coordinates": [[[x - h, y - h], [x + h, y - h], [x + h, y + h], [x - h, y + h], [x - h, y - h]]]},
            "bbox": [x - h, y - h, x + h, y + h],
            "properties": {"datetime": f"{rng.choice([2022, 2023, 2023, 2024])}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T05:30:00Z",
                           "eo:cloud_cover": round(rng.uniform(0, 100), 2), "platform": rng.choice(["sentinel-2a", "sentinel-2b"])},
            "assets": {"visual": {"href": f"https://example.invalid/{collection}/{i}/TCI.tif", "type": "image/tiff; application=geotiff", "roles": ["visual"]},
                       "B04": {"href": f"https://example.invalid/{collection}/{i}/B04.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]}},
            "links": []}
collection = lambda c: {"type": "Collection", "stac_version": "1.0.0", "id": c, "description": "test imagery",
    "license": "CC0-1.0", "links": [], "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
    "temporal": {"interval": [["2022-01-01T00:00:00Z", None]]}}}
print(json.dumps({"installations": [[r[0], r[1:5]] for r in rows],
                  "collections": [collection("s2-test"), collection("other")],
                  "items": [item(i, "s2-test") for i in range(300)] + [item(i, "other") for i in range(20)]}))
"#;

/// pystac-client, per installation, the query flowrun makes (intersects its bounding box, or its point);
/// flowrun's (installation, item) pairs from the lake; the stac-geoparquet file read back by rustac.
const ORACLE: &str = r#"
import asyncio, duckdb, json, os, shapely, sys
import pyarrow.parquet as pq, pystac_client, rustac
url, catalog, data_path, ext_dir, parquet, installations = sys.argv[1:7]
installations = json.load(open(installations))
client = pystac_client.Client.open(url)
expected, shapes = set(), {}
for uid, (x0, y0, x1, y1) in installations:
    area = ({"type": "Point", "coordinates": [x0, y0]} if x0 == x1 and y0 == y1 else
            {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]})
    search = client.search(collections=["s2-test"], intersects=area, limit=10,
                           datetime="2023-01-01T00:00:00Z/2023-12-31T23:59:59Z",
                           filter={"op": "and", "args": [{"op": "<", "args": [{"property": "eo:cloud_cover"}, 20.0]},
                                   {"op": "=", "args": [{"property": "platform"}, "sentinel-2b"]}]}, filter_lang="cql2-json")
    for i in search.items():
        expected.add((uid, i.id))
        shapes[i.id] = (i.collection_id, shapely.geometry.shape(i.geometry))
con = duckdb.connect()
con.execute(f"LOAD '{os.path.join(ext_dir, 'ducklake.duckdb_extension')}'")
con.execute(f"ATTACH 'ducklake:{catalog}' AS lake (DATA_PATH '{data_path}/', READ_ONLY)")
ours = con.execute("""SELECT unified_id, item_id, asset_visual, cloud_cover, CAST(datetime AS VARCHAR), collection,
                      geometry FROM lake.imagery.pv_stac_items""").fetchall()
found = {(u, i) for u, i, *_ in ours}
async def read():
    return await rustac.read(parquet)
items = asyncio.run(read())["features"]
print(json.dumps({
    "expected": len(expected), "found": len(found), "pairs": len(ours),
    "missing": sorted(expected - found)[:5], "extra": sorted(found - expected)[:5],
    "hrefs_ok": all(r[2] == f"https://example.invalid/s2-test/{int(r[1].split('-')[-1])}/TCI.tif" for r in ours),
    "cloud_max": max((r[3] for r in ours), default=None),
    "years": sorted({str(r[4])[:4] for r in ours}),
    # each row's collection and geometry are its item's, as pystac-client got it (where it asked for it)
    "items_as_served": all(shapes[r[1]][0] == r[5] and shapes[r[1]][1].equals_exact(shapely.from_wkb(r[6]), 1e-12)
                           for r in ours if r[1] in shapes),
    "parquet_items": sorted(i["id"] for i in items),
    "parquet_assets": sorted({k for i in items for k in i["assets"]}),
    "every_item_has_both": all(sorted(i["assets"]) == ["B04", "visual"] for i in items),
    "pyarrow_rows": pq.read_table(parquet).num_rows,
    "stac_geoparquet": json.loads(pq.read_metadata(parquet).metadata[b"stac-geoparquet"]),
    "item_ids": sorted({i for _, i in found}),
    "snapshots": con.execute("SELECT count(*) FROM lake.snapshots()").fetchone()[0],
}))
"#;

fn imagery_flow(s: &Scratch, server: &StacServer, h3: Option<u8>, extra: &str) {
    let flow = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/pv_imagery.toml")).unwrap();
    let flow = flow
        .replace("https://earth-search.aws.element84.com/v1", &server.url())
        .replace("[\"sentinel-2-l2a\"]", "[\"s2-test\"]")
        .replace(
            "assets = [\"visual\"]",
            "filter = { op = \"=\", args = [{ property = \"platform\" }, \"sentinel-2b\"] }\nassets = [\"visual\"]",
        )
        .replace("limit = 100 ", "limit = 10 ")
        .replace("ORDER BY unified_id\"", "ORDER BY unified_id LIMIT 300\"")
        .replace("h3_resolution = 5 ", &h3.map(|r| format!("h3_resolution = {r} ")).unwrap_or_default())
        .replace("[nodes.stac_search]\n", &format!("[nodes.stac_search]\n{extra}"));
    s.write("flows/pv_imagery.toml", &flow);
}

#[test]
fn imagery_per_installation_is_what_pystac_client_finds() {
    // the lake of doi_pv.toml, then items over India's installations, served by a STAC API
    let s = Scratch::new();
    let flows = Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    // before the lake exists: the imagery flow says which flow to run first
    s.write("flows/pv_imagery.toml", &std::fs::read_to_string(flows.join("pv_imagery.toml")).unwrap());
    let early = s.run(&["run", "flows/pv_imagery.toml"]);
    let said = format!("{}{}", early.stdout, early.stderr);
    assert!(early.code != 0 && said.contains("does not exist yet: run the flow that writes this lake first"), "{said}");
    s.write("flows/doi_pv.toml", &std::fs::read_to_string(flows.join("doi_pv.toml")).unwrap());
    s.run(&["run", "flows/doi_pv.toml", "--mirror", &pv_data().display().to_string()]).ok();
    let lake = s.path().join(".flowrun/lake");
    let (catalog, data) = (lake.join("doi_pv.ducklake"), lake.join("doi_pv_data"));
    let ext = flowrun_extension_dir().display().to_string();
    let made = python_json(MAKE_ITEMS, &[&catalog.display().to_string(), &data.display().to_string(), &ext]);
    let installations = s.write("installations.json", &made["installations"].to_string()).display().to_string();
    assert_eq!(made["installations"].as_array().unwrap().len(), 300, "300 of India's installations in the lake");
    let mut server = StacServer::start(made["collections"].as_array().unwrap(), made["items"].as_array().unwrap());

    // one query per installation: exactly the pairs pystac-client finds, query by query
    imagery_flow(&s, &server, None, "");
    let run = s.run(&["--json", "run", "flows/pv_imagery.toml"]).ok();
    let parquet = lake.join("pv_stac_items.parquet").display().to_string();
    let url = server.url();
    let oracle_of = |installations: &str| {
        python_json(
            ORACLE,
            &[&url, &catalog.display().to_string(), &data.display().to_string(), &ext, &parquet, installations],
        )
    };
    let oracle = |_: &Scratch| oracle_of(&installations);
    let o = oracle(&s);
    assert!(o["expected"].as_u64().unwrap() > 200, "the fixture gives many pairs: {o}");
    assert_eq!((o["missing"].clone(), o["extra"].clone()), (serde_json::json!([]), serde_json::json!([])), "{o}");
    assert_eq!(o["expected"], o["found"]);
    assert_eq!(o["pairs"], o["found"], "no pair twice");
    assert_eq!(o["hrefs_ok"], true, "{o}");
    assert_eq!(o["items_as_served"], true, "{o}");
    assert!(o["cloud_max"].as_f64().unwrap() < 20.0, "{o}");
    assert_eq!(o["years"], serde_json::json!(["2023"]), "{o}");
    // the stac-geoparquet file: rustac reads every distinct item back, assets and all
    assert_eq!(o["parquet_items"], o["item_ids"], "{o}");
    assert_eq!(o["parquet_assets"], serde_json::json!(["B04", "visual"]), "{o}");
    assert_eq!(o["every_item_has_both"], true, "{o}");
    // the file says what it is, and the items' collection as the server has it
    assert_eq!(o["stac_geoparquet"]["version"], "1.0.0", "{o}");
    let collections = o["stac_geoparquet"]["collections"].as_object().unwrap();
    assert_eq!(collections.keys().collect::<Vec<_>>(), ["s2-test"], "{o}");
    assert_eq!(collections["s2-test"]["id"], "s2-test");
    assert_eq!(collections["s2-test"]["description"], "test imagery");
    assert_eq!(o["pyarrow_rows"], serde_json::json!(o["item_ids"].as_array().unwrap().len()), "pyarrow reads it too");
    let note = run.stdout.split("queries, ").nth(1).unwrap_or_default().split('"').next().unwrap().to_string();
    assert!(note.contains("pages (") && note.contains("fetched"), "{note}");

    // another asset: the same searches, every page read from disk (pages are kept a day), one more column
    let flow = std::fs::read_to_string(s.path().join("flows/pv_imagery.toml")).unwrap();
    s.write("flows/pv_imagery.toml", &flow.replace("assets = [\"visual\"]", "assets = [\"visual\", \"B04\"]"));
    let more = s.run(&["--json", "run", "flows/pv_imagery.toml"]).ok();
    assert!(more.stdout.contains(" pages (0 fetched"), "{}", more.stdout);
    assert_eq!(oracle(&s)["found"], o["found"]);

    // one query per H3 cell (the flow's default): the same pairs, with fewer queries
    imagery_flow(&s, &server, Some(5), "");
    let by_cell = s.run(&["--json", "run", "flows/pv_imagery.toml"]).ok();
    let queries = by_cell.stdout.split(" queries, ").next().unwrap().rsplit(|c: char| !c.is_ascii_digit()).next();
    let queries: usize = queries.unwrap().parse().expect("the search's note");
    assert!(queries > 1 && queries < 300, "one query per cell, fewer than the 300 installations: {queries}");
    let cells = oracle(&s);
    assert_eq!((cells["missing"].clone(), cells["extra"].clone()), (serde_json::json!([]), serde_json::json!([])));

    // behind a gateway that lets 2 requests a second through and answers the others 429 with `Retry-After: 1`
    // (nginx), one request at a time, 8 installations: every 429 is retried after the second the gateway asks,
    // and the run finds what pystac-client finds (directly); a change of concurrency alone re-runs no search
    let gateway = RateLimiter::start(&server.url(), 2);
    imagery_flow(&s, &server, None, "");
    let flow = std::fs::read_to_string(s.path().join("flows/pv_imagery.toml")).unwrap();
    let flow = flow.replace(&server.url(), &gateway.url()).replace("LIMIT 300\"", "LIMIT 8\"");
    s.write("flows/pv_imagery.toml", &flow.replace("concurrency = 4 ", "concurrency = 1 "));
    let eight = serde_json::Value::from(made["installations"].as_array().unwrap()[..8].to_vec());
    let eight = s.write("installations8.json", &eight.to_string()).display().to_string();
    let started = std::time::Instant::now();
    let limited = s.run(&["--json", "run", "flows/pv_imagery.toml"]).ok();
    let took = started.elapsed().as_secs_f64();
    let o = oracle_of(&eight);
    assert!(o["expected"].as_u64().unwrap() > 0, "{o}");
    assert_eq!((o["missing"].clone(), o["extra"].clone()), (serde_json::json!([]), serde_json::json!([])), "{o}");
    let statuses = gateway.statuses();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert!(refused > 0 && statuses.iter().all(|&s| s == 200 || s == 429), "{statuses:?}");
    let note = limited.stdout.split("requests retried").next().unwrap().rsplit("; ").next().unwrap().to_string();
    assert_eq!(note.trim().parse::<usize>().ok(), Some(refused), "one retry per 429: {statuses:?}");
    assert!(took >= refused as f64, "each 429 waited the second the gateway asked for: {refused} in {took:.1} s");
    s.write("flows/pv_imagery.toml", &flow.replace("concurrency = 4 ", "concurrency = 3 "));
    let again = s.run(&["--json", "run", "flows/pv_imagery.toml"]).ok();
    assert_eq!(gateway.statuses().len(), statuses.len(), "no request: {}", again.stdout);
    drop(gateway);

    // servers that misbehave, answered for by a gateway in front of the real one (nginx `return`; the landing
    // page and collections still come from the real one): `next` links that never end (a new token on every
    // page) fail at max_pages, naming the query and the page; an empty page ends a search whatever link it
    // carries; a server that ignores the cloud filter has its cloudy items left out as they arrive; a page 2
    // that is not JSON, and a 500 on page 7 (every time), fail naming the query and the page, and keep the
    // pages before it (not the broken one)
    let item = |id: &str, cloud: f64| {
        let ring = [[60.0, 0.0], [100.0, 0.0], [100.0, 40.0], [60.0, 40.0], [60.0, 0.0]];
        serde_json::json!({"type": "Feature", "stac_version": "1.0.0", "id": id, "collection": "s2-test",
            "geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": [60.0, 0.0, 100.0, 40.0],
            "properties": {"datetime": "2023-06-01T05:30:00Z", "eo:cloud_cover": cloud, "platform": "sentinel-2b"},
            "assets": {"visual": {"href": format!("https://example.invalid/{id}.tif")}}, "links": []})
    };
    let page = |features: Vec<serde_json::Value>, next: &str| {
        let links: Vec<_> =
            [next].iter().filter(|n| !n.is_empty()).map(|n| serde_json::json!({"rel": "next", "href": n})).collect();
        serde_json::json!({"type": "FeatureCollection", "features": features, "links": links}).to_string()
    };
    let answer = |name: &str, body: String| {
        format!("location = /{name}/search {{ default_type application/json; return 200 '{body}'; }}\n")
    };
    let locations = [
        answer(
            "endless",
            page(vec![item("gateway-900", 5.0)], "http://127.0.0.1:{port}/endless/search?token=$request_id"),
        ),
        answer("hollow", page(vec![], "http://127.0.0.1:{port}/hollow/search?token=$request_id")),
        answer("cloudy", page(vec![item("gateway-901", 5.0), item("gateway-902", 50.0)], "")),
        answer("broken", page(vec![item("gateway-903", 5.0)], "http://127.0.0.1:{port}/broken/search?page=2"))
            .replace("{ default_type application/json;", "{ default_type application/json; if ($arg_page = 2) { return 200 '{\"features\": [{'; }"),
        // page n links to page n + 1 as `?p=` and n `x`s; page 7 answers 500
        answer("failing", page(vec![item("gateway-904", 5.0)], "http://127.0.0.1:{port}/failing/search?p=${arg_p}x"))
            .replace("{ default_type application/json;", "{ default_type application/json; if ($arg_p = xxxxxx) { return 500; }"),
        format!(
            "location ~ ^/(endless|hollow|cloudy|broken|failing) {{ rewrite ^/[a-z]+/?(.*)$ /$1 break; proxy_pass {}; }}",
            server.url()
        ),
    ]
    .concat();
    let gateway = RateLimiter::with_locations(&server.url(), 1000, &locations);
    imagery_flow(&s, &server, Some(5), "");
    let flow = std::fs::read_to_string(s.path().join("flows/pv_imagery.toml")).unwrap();
    let flow = flow.replace("LIMIT 300\"", "LIMIT 8\"").replace("concurrency = 4 ", "max_pages = 5\nconcurrency = 4 ");
    let at = |name: &str| flow.replace(&server.url(), &format!("{}/{name}", gateway.url()));
    s.write("flows/pv_imagery.toml", &at("endless"));
    let out = s.run(&["run", "flows/pv_imagery.toml"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains("STAC search `H3 cell ") && said.contains("page 6"), "{said}");
    assert!(said.contains("more than 5 pages") && said.contains("max_pages"), "{said}");
    s.write("flows/pv_imagery.toml", &at("hollow"));
    let hollow = s.run(&["--json", "run", "flows/pv_imagery.toml"]).ok();
    let (before, after) = hollow.stdout.split_once(" queries, ").expect("the search's note");
    let queries = before.rsplit(|c: char| !c.is_ascii_digit()).next().unwrap();
    let pages = after.split(' ').next().unwrap();
    assert_eq!(queries, pages, "one page a query: {}", hollow.stdout);
    assert!(after.split('"').next().unwrap().contains(", 0 distinct items"), "{}", hollow.stdout);
    s.write("flows/pv_imagery.toml", &at("cloudy"));
    let cloudy = s.run(&["--json", "run", "flows/pv_imagery.toml"]).ok();
    assert!(cloudy.stdout.contains("1 items at or over max_cloud_cover (or without"), "{}", cloudy.stdout);
    assert_eq!(oracle_of(&eight)["item_ids"], serde_json::json!(["gateway-901"]));
    let pages = s.path().join(".flowrun/cache/stac");
    let kept = || -> std::collections::BTreeSet<String> {
        let files = std::fs::read_dir(&pages).into_iter().flatten().flatten().flat_map(|d| {
            let dir = d.file_name().to_string_lossy().into_owned();
            std::fs::read_dir(d.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(move |f| format!("{dir}/{}", f.file_name().to_string_lossy()))
        });
        files.collect()
    };
    let new_pages = |before: &std::collections::BTreeSet<String>| -> Vec<String> {
        let mut names: Vec<String> =
            kept().difference(before).map(|p| p.rsplit('/').next().unwrap().to_string()).collect();
        names.sort();
        names.dedup();
        names
    };
    let before = kept();
    s.write("flows/pv_imagery.toml", &at("broken"));
    let out = s.run(&["run", "flows/pv_imagery.toml"]);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(out.code == 1 && said.contains("page 2") && said.contains("the answer is not JSON"), "{said}");
    assert!(said.contains("STAC search `H3 cell "), "{said}");
    assert_eq!(new_pages(&before), ["1.json"], "page 1 kept, the broken page 2 not");
    let before = kept();
    s.write("flows/pv_imagery.toml", &at("failing").replace("max_pages = 5", "max_pages = 50"));
    let out = s.run(&["run", "flows/pv_imagery.toml"]);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(out.code == 1 && said.contains("page 7") && said.contains("HTTP 500"), "{said}");
    assert!(said.contains("STAC search `H3 cell ") && said.contains("after 4 retries"), "{said}");
    assert_eq!(new_pages(&before), ["1.json", "2.json", "3.json", "4.json", "5.json", "6.json"], "pages 1-6 kept");
    drop(gateway);

    // the server stopped after page 2 of a search (one request at a time, one item a page): the run fails
    // naming the query and page 3, the lake keeps its snapshot, and the rerun asks only for the pages it lacks
    let snapshots = oracle(&s)["snapshots"].clone();
    imagery_flow(&s, &server, Some(5), "");
    let flow = std::fs::read_to_string(s.path().join("flows/pv_imagery.toml")).unwrap();
    let flow = flow.replace("limit = 10 ", "limit = 1 ").replace("concurrency = 4 ", "concurrency = 1 ");
    s.write("flows/pv_imagery.toml", &flow);
    // (without the pages the endless search above left)
    std::fs::remove_dir_all(&pages).unwrap();
    let child = spawn(&s, &["--json", "run", "flows/pv_imagery.toml"], &[("FLOWRUN_TEST_STAC_PAUSE", "2:4000".into())]);
    let started = std::time::Instant::now();
    // a search paused after its page 2 (which links to a page 3)
    let second_page = || {
        std::fs::read_dir(&pages)
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| std::fs::read_to_string(d.path().join("2.json")).is_ok_and(|t| t.contains("\"next\"")))
    };
    while !second_page() {
        assert!(started.elapsed().as_secs() < 60, "no search reached its second page");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    server.stop();
    let failed = finish(child);
    assert_eq!(failed.code, 1, "{}\n{}", failed.stdout, failed.stderr);
    let said = format!("{}{}", failed.stdout, failed.stderr);
    assert!(said.contains("STAC search `H3 cell ") && said.contains("page 3"), "{said}");
    assert!(said.contains("cannot reach the server") && said.contains("after 4 retries"), "{said}");
    server.start_again();
    assert_eq!(oracle(&s)["snapshots"], snapshots, "the failed run wrote nothing");
    let rerun = s.run(&["--json", "run", "flows/pv_imagery.toml"]).ok();
    let note = rerun.stdout.split("queries, ").nth(1).unwrap().split('"').next().unwrap().to_string();
    let n: Vec<u64> = note.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    assert!(n[1] < n[0], "pages 1 and 2 of the stopped search (and the searches before it) came from disk: {note}");
    let after = oracle(&s);
    assert_eq!((after["missing"].clone(), after["extra"].clone()), (serde_json::json!([]), serde_json::json!([])));

    // the server answering 500 (its database lost a table pgstac needs) for a second: retried, and the run
    // succeeds; for good: the run fails naming the query, the page and the answer
    imagery_flow(&s, &server, Some(5), "");
    let flow = std::fs::read_to_string(s.path().join("flows/pv_imagery.toml")).unwrap();
    s.write("flows/pv_imagery.toml", &flow.replace("2023-12-31T23:59:59Z", "2023-12-31T23:59:57Z"));
    server.sql("ALTER TABLE pgstac.searches RENAME TO searches_away");
    let child = spawn(&s, &["--json", "run", "flows/pv_imagery.toml"], &[]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    server.sql("ALTER TABLE pgstac.searches_away RENAME TO searches");
    let survived = finish(child).ok();
    let note = survived.stdout.split("requests retried").next().unwrap().rsplit("; ").next().unwrap().to_string();
    assert!(note.trim().parse::<u64>().is_ok_and(|n| n > 0), "some requests were retried: {note}");
    s.write("flows/pv_imagery.toml", &flow.replace("2023-12-31T23:59:59Z", "2023-12-31T23:59:56Z"));
    server.sql("ALTER TABLE pgstac.searches RENAME TO searches_away");
    let out = s.run(&["run", "flows/pv_imagery.toml"]);
    server.sql("ALTER TABLE pgstac.searches_away RENAME TO searches");
    assert_eq!(out.code, 1, "{}", out.stderr);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains("page 1") && said.contains("HTTP 500") && said.contains("after 4 retries"), "{said}");

    // nothing found (imagery from 2030): empty outputs, not an error
    imagery_flow(&s, &server, Some(5), "");
    let flow = std::fs::read_to_string(s.path().join("flows/pv_imagery.toml")).unwrap();
    s.write(
        "flows/pv_imagery.toml",
        &flow.replace("2023-01-01T00:00:00Z/2023-12-31T23:59:59Z", "2030-01-01T00:00:00Z/2030-12-31T23:59:59Z"),
    );
    let none = s.run(&["--json", "run", "flows/pv_imagery.toml"]).ok();
    assert!(none.stdout.contains(", 0 distinct items"), "{}", none.stdout);
    let empty = oracle(&s);
    assert_eq!((empty["pairs"].as_u64(), empty["pyarrow_rows"].as_u64()), (Some(0), Some(0)), "{empty}");
    let snapshots = empty["snapshots"].clone();

    // an asset the items do not have (an error naming the query and the page), and a server nobody answers at
    imagery_flow(&s, &server, Some(5), "");
    let flow = std::fs::read_to_string(s.path().join("flows/pv_imagery.toml")).unwrap();
    s.write("flows/pv_imagery.toml", &flow.replace("assets = [\"visual\"]", "assets = [\"visual\", \"nir\"]"));
    let before = kept();
    let out = s.run(&["run", "flows/pv_imagery.toml"]);
    assert!(!new_pages(&before).is_empty(), "the pages whose items lack the asset are kept (the flow's mistake)");
    assert_eq!(out.code, 1, "{}", out.stderr);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("has no asset `nir` (it has: B04, visual)") && said.contains("STAC search `H3 cell "),
        "{said}"
    );
    assert!(said.contains(" page 1 "), "{said}");
    let nobody = format!("http://127.0.0.1:{}", crate::util::free_port());
    s.write("flows/pv_imagery.toml", &flow.replace(&server.url(), &nobody));
    let out = s.run(&["run", "flows/pv_imagery.toml"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let said = format!("{}{}", out.stdout, out.stderr);
    // (the first request asks the server what it conforms to)
    let first = format!("STAC API {nobody} (what it conforms to)");
    assert!(said.contains(&first) && said.contains("cannot reach the server"), "{said}");
    assert_eq!(oracle(&s)["snapshots"], snapshots, "nor did these");
}
