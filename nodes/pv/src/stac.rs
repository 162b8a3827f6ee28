//! Imagery per installation from a STAC API (SpatioTemporal Asset Catalog: Sentinel-2, Landsat, NAIP).
//!
//! `[config.stac]` says what to look for ([`StacQuery`]); two nodes:
//! - [`stac_search`] first asks the API what it conforms to (its landing page's `conformsTo`), then asks
//!   its `/search` (POST, `intersects`, `collections`, `datetime`, a CQL2 `filter` and/or a `query`) once
//!   per installation (its bounding box), or once per H3 cell holding installations (`h3_resolution`: the
//!   box around the cell and its installations' boxes), and follows each answer's `next` link to the last
//!   page. `max_cloud_cover` goes as CQL2 where the server has the filter extension, else in `query`
//!   where it has that, and every item that arrives is checked against it again (a server may ignore
//!   both); a `filter` or `query` the server does not say it applies is an error. Its table is the
//!   distinct items found in the stac-geoparquet layout (`type`, `stac_version`, `id`, `geometry`,
//!   `collection`, the properties as columns, `assets`, `links`; the GeoParquet writer adds `bbox`; the
//!   file's `stac-geoparquet` metadata gives the version and the items' collections, fetched from
//!   `/collections/{id}`), so a `geoparquet` materialization of it is a stac-geoparquet file `rustac` and
//!   pyarrow read.
//! - [`stac_items`] joins items to installations: one row per (installation, item whose geometry meets
//!   the installation's bounding box), with the item's id, collection, datetime, cloud cover, geometry and
//!   one `asset_<key>` href column per asset the flow asks for.
//!
//! Requests run `concurrency` at a time (at most `--jobs`); a 429, a 5xx or a failed connection is retried
//! four times with backoff (0.25, 0.5, 1, 2 s, or the `Retry-After` the server sends, in seconds or as a
//! date, up to 30 s). Every page is kept on disk (`<cache>/stac/`, by the search's first request) for a day
//! after its search last fetched one, as downloads are kept: a rerun after a failure, with other `assets`,
//! or with installations of which only some changed asks only for the pages it does not have (`flowrun
//! cache clear` forgets them). A page the server broke (not JSON, no `features`, an item without an id or
//! with a geometry or datetime that does not parse) is not kept; one whose items lack an asset the flow
//! asks for is (the flow's to fix). A search ends at a page without `next` link or without items; a `next`
//! link back to a page
//! already read, or a search over `max_pages` pages, is an error. Errors name the query (the installation
//! or the cell) and the page. The node's note counts installations without a geometry (not searched) and
//! items left out for their cloud cover.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use flowrun_engine::{Table, Value, ctx, node};
use geo::{BoundingRect, Geometry, Intersects, Polygon, Rect};
use serde::{Deserialize, Serialize};
use serde_json::{Value as J, json};

use crate::geom::{self, column, geometries, wkb_array, wkb_field};

/// What [`stac_search`] looks for (`[config.stac]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StacQuery {
    /// The API's root (`https://earth-search.aws.element84.com/v1`); `/search` is appended.
    pub url: String,
    /// Collections to search (`["sentinel-2-l2a"]`); empty: all.
    #[serde(default)]
    pub collections: Vec<String>,
    /// An RFC 3339 instant or interval (`2023-01-01T00:00:00Z/2023-12-31T23:59:59Z`).
    #[serde(default)]
    pub datetime: Option<String>,
    /// Only items with `eo:cloud_cover` below this (a CQL2 filter).
    #[serde(default)]
    pub max_cloud_cover: Option<f64>,
    /// A CQL2-JSON filter, as a TOML table (`{ op = "=", args = [{ property = "platform" }, "sentinel-2b"] }`);
    /// with `max_cloud_cover`, both must hold.
    #[serde(default)]
    pub filter: Option<J>,
    /// The STAC query extension's `query` object (`{ "eo:cloud_cover" = { lt = 20 } }`), for APIs without CQL2.
    #[serde(default)]
    pub query: Option<J>,
    /// Asset keys whose hrefs [`stac_items`] gives (`["visual"]`); an item without one is an error.
    #[serde(default)]
    pub assets: Vec<String>,
    /// One query per H3 cell of this resolution holding installations, instead of one per installation.
    #[serde(default)]
    pub h3_resolution: Option<u8>,
    /// Items per page.
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// Requests at a time.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Pages one search may take before it is an error (a server whose `next` links never end).
    #[serde(default = "default_max_pages")]
    pub max_pages: usize,
}

fn default_limit() -> u32 {
    100
}

fn default_concurrency() -> usize {
    4
}

fn default_max_pages() -> usize {
    1000
}

impl Value for StacQuery {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), flowrun_engine::CodecError> {
        flowrun_engine::value::serde_encode(self, out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, flowrun_engine::CodecError> {
        flowrun_engine::value::serde_decode(bytes)
    }
    fn from_toml(value: &toml::Value, _cx: &flowrun_engine::LiteralCx) -> Result<Self, String> {
        let q: StacQuery = flowrun_engine::value::serde_from_toml(value)?;
        if !(q.url.starts_with("http://") || q.url.starts_with("https://")) {
            return Err(format!("stac url `{}` is not an http(s) URL", q.url));
        }
        if q.h3_resolution.is_some_and(|r| r > 15) {
            return Err("stac h3_resolution is 0 to 15".into());
        }
        if q.limit == 0 || q.concurrency == 0 || q.max_pages == 0 {
            return Err("stac limit, concurrency and max_pages are at least 1".into());
        }
        Ok(q)
    }
    /// Everything but `concurrency` and `max_pages`, which say how to ask, not what (a search over
    /// `max_pages` fails, it is never cut short): changing them re-runs no search.
    fn identity(&self) -> Option<Result<blake3::Hash, String>> {
        let mut out = Vec::new();
        let what = StacQuery { concurrency: 0, max_pages: 0, ..self.clone() };
        Some(
            flowrun_engine::value::serde_encode(&what, &mut out)
                .map(|()| blake3::hash(&out))
                .map_err(|e| e.to_string()),
        )
    }
}

/// One search: where, and what it is called in messages.
struct Query {
    label: String,
    area: Geometry<f64>,
}

/// The distinct items over the installations, in the stac-geoparquet layout (see the module documentation).
#[node(tags(stage = "imagery"))]
pub fn stac_search(installations: &Table, stac: StacQuery) -> Result<Table> {
    let boxes = installation_boxes(installations)?;
    let queries = queries(&boxes, stac.h3_resolution)?;
    let dir = ctx::cache_dir("stac");
    remove_old_pages(&dir);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("cannot build an HTTP client")?;
    let mut retried = 0;
    let dialect = Dialect::of(&client, &stac, &mut retried)?;
    // `--jobs N` bounds every thread of a run: requests too
    let at_once = stac.concurrency.min(rayon::current_num_threads().max(1));
    let results = run_bounded(&queries, at_once, |q| search(&client, &stac, dialect, q, &dir));
    // the first failure in query order; a search is left out (`None`) only after another failed, so without a
    // failure every search ran
    let results: Vec<Found> = results.into_iter().flatten().collect::<Result<_>>()?;
    let mut items: BTreeMap<(String, String), (J, String)> = BTreeMap::new();
    let (mut pages, mut fetched, mut cloudy) = (0, 0, BTreeSet::new());
    for found in results {
        pages += found.pages;
        fetched += found.fetched;
        retried += found.retried;
        for (item, at) in found.items {
            // the server may not apply `max_cloud_cover` (no CQL2 nor query extension, or one it ignores)
            if stac
                .max_cloud_cover
                .is_some_and(|max| item["properties"]["eo:cloud_cover"].as_f64().is_none_or(|c| c >= max))
            {
                cloudy.insert(text(&item["id"]).to_string());
                continue;
            }
            let key = (text(&item["collection"]).to_string(), text(&item["id"]).to_string());
            items.entry(key).or_insert((item, at));
        }
    }
    // the collections the items belong to, for the file's metadata
    let mut collections = serde_json::Map::new();
    for id in items.keys().map(|(c, _)| c).collect::<BTreeSet<_>>() {
        let url = format!("{}/collections/{id}", stac.url.trim_end_matches('/'));
        let text =
            fetch(&client, &url, None, &mut retried).with_context(|| format!("STAC collection `{id}` ({url})"))?;
        let collection: J = serde_json::from_str(&text).with_context(|| format!("STAC collection `{id}` ({url})"))?;
        collections.insert(id.clone(), collection);
    }
    let table = stac_geoparquet(items.into_values().collect(), collections)?;
    let no_geometry = boxes.iter().filter(|(_, b)| b.is_none()).count();
    ctx::note(format!(
        "{} queries, {pages} pages ({fetched} fetched, the others kept from an earlier run or an identical query; \
         {retried} requests retried), {} distinct items{}{}{}",
        queries.len(),
        table.num_rows(),
        if !cloudy.is_empty() {
            format!(
                "; {} items at or over max_cloud_cover (or without eo:cloud_cover) left out (the server did not apply \
                 it)",
                cloudy.len()
            )
        } else {
            String::new()
        },
        if no_geometry > 0 {
            format!("; {no_geometry} installations without a geometry not searched")
        } else {
            String::new()
        },
        if at_once < stac.concurrency {
            format!("; {at_once} requests at a time (concurrency = {}, bounded by --jobs)", stac.concurrency)
        } else {
            String::new()
        },
    ));
    Ok(table)
}

/// One row per (installation, item whose geometry meets its bounding box); see the module documentation.
#[node(tags(stage = "imagery"))]
pub fn stac_items(installations: &Table, stac_search: &Table, stac: StacQuery) -> Result<Table> {
    let boxes = installation_boxes(installations)?;
    let items = stac_search.concat()?;
    let geometry = items.column(geom::geometry_index(stac_search)?);
    let geoms = geometries(geometry)?;
    let tree = geom::bbox_tree(geom::boxes(&geoms));
    let ids: StringArray = column(&items, "id")?;
    let collections: StringArray = column(&items, "collection")?;
    let cloud = items
        .column_by_name("eo:cloud_cover")
        .map(|c| arrow_cast::cast(c, &DataType::Float64))
        .transpose()?
        .unwrap_or_else(|| Arc::new(Float64Array::new_null(items.num_rows())));
    let datetime = items.column_by_name("datetime").context("the items have no datetime column")?;
    let assets = items.column_by_name("assets").and_then(|a| a.as_any().downcast_ref::<arrow_array::StructArray>());
    let hrefs: Vec<ArrayRef> = stac
        .assets
        .iter()
        .map(|k| {
            if items.num_rows() == 0 {
                return Ok(Arc::new(StringArray::from(Vec::<Option<&str>>::new())) as ArrayRef);
            }
            let href = assets
                .and_then(|a| a.column_by_name(k))
                .and_then(|a| a.as_any().downcast_ref::<arrow_array::StructArray>())
                .and_then(|a| a.column_by_name("href"))
                .with_context(|| format!("the items have no asset `{k}`"))?;
            anyhow::ensure!(href.data_type() == &DataType::Utf8, "the hrefs of asset `{k}` are not text");
            Ok(href.clone())
        })
        .collect::<Result<_>>()?;
    // (installation, item), sorted by installation then item
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for (i, (_, b)) in boxes.iter().enumerate() {
        let Some(b) = b else { continue };
        let env = rstar::AABB::from_corners([b.min().x, b.min().y], [b.max().x, b.max().y]);
        let poly: Polygon<f64> = b.to_polygon();
        let mut found: Vec<usize> = tree
            .locate_in_envelope_intersecting(&env)
            .map(|c| c.data)
            .filter(|&j| geoms[j].as_ref().is_some_and(|g| g.intersects(&poly)))
            .collect();
        found.sort_by(|a, b| (ids.value(*a), collections.value(*a)).cmp(&(ids.value(*b), collections.value(*b))));
        pairs.extend(found.into_iter().map(|j| (i, j)));
    }
    let rows = arrow_array::UInt32Array::from(pairs.iter().map(|p| p.1 as u32).collect::<Vec<_>>());
    let take = |a: &dyn Array| arrow_select::take::take(a, &rows, None);
    let unified: StringArray = pairs.iter().map(|(i, _)| Some(boxes[*i].0.as_str())).collect();
    let mut fields = vec![
        Field::new("unified_id", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, true),
        Field::new("collection", DataType::Utf8, true),
        Field::new("datetime", datetime.data_type().clone(), true),
        Field::new("cloud_cover", DataType::Float64, true),
    ];
    let mut columns: Vec<ArrayRef> =
        vec![Arc::new(unified), take(&ids)?, take(&collections)?, take(datetime)?, take(&cloud)?];
    for (k, h) in stac.assets.iter().zip(&hrefs) {
        fields.push(Field::new(format!("asset_{k}"), DataType::Utf8, true));
        columns.push(take(h)?);
    }
    fields.push(wkb_field("geometry", true, None));
    columns.push(take(geometry)?);
    Ok(Table::from_batch(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?))
}

/// `unified_id` and bounding box of every installation.
/// A box outside longitude/latitude (a table in a projected CRS) is an error naming the installation.
fn installation_boxes(t: &Table) -> Result<Vec<(String, Option<Rect<f64>>)>> {
    let batch = t.concat()?;
    let ids: StringArray = column(&batch, "unified_id")?;
    let geoms = geometries(batch.column(geom::geometry_index(t)?))?;
    (0..batch.num_rows())
        .map(|i| {
            let b = geoms[i].as_ref().and_then(|g| g.bounding_rect());
            if let Some(b) = b
                && !(lon_lat(b.min()) && lon_lat(b.max()))
            {
                bail!(
                    "installation {}: its box ({:?}, {:?}) is not in longitude/latitude; the installations must be \
                     in EPSG:4326",
                    ids.value(i),
                    b.min().x_y(),
                    b.max().x_y()
                );
            }
            Ok((ids.value(i).to_string(), b))
        })
        .collect()
}

fn lon_lat(c: geo::Coord<f64>) -> bool {
    (-180.0..=180.0).contains(&c.x) && (-90.0..=90.0).contains(&c.y)
}

/// One query per installation (its bounding box), or per H3 cell holding installations' box centres.
fn queries(boxes: &[(String, Option<Rect<f64>>)], resolution: Option<u8>) -> Result<Vec<Query>> {
    let Some(r) = resolution else {
        return Ok(boxes
            .iter()
            .filter_map(|(id, b)| {
                let b = (*b)?;
                let area = if b.width() == 0.0 && b.height() == 0.0 {
                    Geometry::Point(geo::Point(b.min()))
                } else {
                    Geometry::Polygon(b.to_polygon())
                };
                Some(Query { label: format!("installation {id}"), area })
            })
            .collect());
    };
    let res = h3o::Resolution::try_from(r).map_err(|e| anyhow!("h3_resolution {r}: {e}"))?;
    // each cell's area covers the cell and the whole box of every installation in it, so an item meeting
    // an installation only outside its cell is still found
    let mut cells: BTreeMap<h3o::CellIndex, Rect<f64>> = BTreeMap::new();
    for (id, b) in boxes.iter().filter_map(|(id, b)| Some((id, (*b)?))) {
        let (x, y) = b.center().x_y();
        // (every box is in longitude/latitude, see `installation_boxes`)
        let p = h3o::LatLng::new(y, x).map_err(|e| anyhow!("installation {id}: its box centre ({x}, {y}): {e}"))?;
        let cell = p.to_cell(res);
        let area = cells.entry(cell).or_insert_with(|| {
            let ring: Vec<geo::Coord<f64>> =
                cell.boundary().iter().map(|p| geo::coord! { x: p.lng(), y: p.lat() }).collect();
            Polygon::new(ring.into(), vec![]).bounding_rect().unwrap_or(b)
        });
        *area = Rect::new(
            geo::coord! { x: area.min().x.min(b.min().x), y: area.min().y.min(b.min().y) },
            geo::coord! { x: area.max().x.max(b.max().x), y: area.max().y.max(b.max().y) },
        );
    }
    Ok(cells
        .into_iter()
        .map(|(c, area)| Query { label: format!("H3 cell {c}"), area: Geometry::Polygon(area.to_polygon()) })
        .collect())
}

/// Runs `f` over `items`, `n` at a time, results in item order; once one fails, no other starts (`None`).
fn run_bounded<T: Sync, R: Send>(items: &[T], n: usize, f: impl Fn(&T) -> Result<R> + Sync) -> Vec<Option<Result<R>>> {
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let mut out: Vec<(usize, Result<R>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..n.min(items.len()).max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i).filter(|_| !failed.load(Ordering::Relaxed)) else {
                            return mine;
                        };
                        let r = f(item);
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        mine.push((i, r));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a STAC worker panicked")).collect()
    });
    let mut all: Vec<Option<Result<R>>> = items.iter().map(|_| None).collect();
    for (i, r) in out.drain(..) {
        all[i] = Some(r);
    }
    all
}

/// What one search found.
struct Found {
    /// Each item and where it came from (the search and the page), for messages.
    items: Vec<(J, String)>,
    pages: usize,
    fetched: usize,
    /// Requests that failed and were sent again.
    retried: usize,
}

/// The directory of a search's pages.
fn query_dir(stac: &StacQuery, dialect: Dialect, q: &Query) -> String {
    let key = json!({"url": stac.url, "body": first_body(stac, dialect, q)});
    blake3::hash(key.to_string().as_bytes()).to_hex()[..24].to_string()
}

/// What the server says it understands: its landing page's (or `/conformance`'s) `conformsTo`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Dialect {
    /// The filter extension: CQL2 `filter`.
    cql2: bool,
    /// The query extension: `query`.
    query: bool,
}

impl Dialect {
    /// Asks the server; a `filter` or `query` of the flow the server does not say it applies is an error
    /// (it would be ignored, and every item returned).
    fn of(client: &reqwest::blocking::Client, stac: &StacQuery, retried: &mut usize) -> Result<Dialect> {
        let root = stac.url.trim_end_matches('/');
        let mut classes = Vec::new();
        for url in [root.to_string(), format!("{root}/conformance")] {
            let at = || format!("STAC API {url} (what it conforms to)");
            let page: J =
                serde_json::from_str(&fetch(client, &url, None, retried).with_context(at)?).with_context(at)?;
            classes = page["conformsTo"].as_array().cloned().unwrap_or_default();
            if !classes.is_empty() {
                break;
            }
        }
        let has = |class: &str| classes.iter().any(|c| c.as_str().is_some_and(|c| c.ends_with(class)));
        let dialect = Dialect { cql2: has("item-search#filter"), query: has("item-search#query") };
        if stac.filter.is_some() && !dialect.cql2 {
            bail!(
                "the STAC API at {root} does not conform to item-search#filter, so it would ignore [config.stac] \
                 filter; use `query` if it has the query extension ({}), or filter in a SQL node",
                if dialect.query { "it has" } else { "it has not either" }
            );
        }
        if stac.query.is_some() && !dialect.query {
            bail!(
                "the STAC API at {root} does not conform to item-search#query, so it would ignore [config.stac] query; use a CQL2 `filter`"
            );
        }
        Ok(dialect)
    }
}

/// The first page's request body. `max_cloud_cover` goes as CQL2 when the server has the filter extension,
/// else in `query` when it has that; the items are checked against it again when they arrive.
fn first_body(stac: &StacQuery, dialect: Dialect, q: &Query) -> J {
    let mut body = json!({ "limit": stac.limit, "intersects": geojson::Geometry::from(&q.area) });
    if !stac.collections.is_empty() {
        body["collections"] = json!(stac.collections);
    }
    if let Some(d) = &stac.datetime {
        body["datetime"] = json!(d);
    }
    let cloud = stac.max_cloud_cover.filter(|_| dialect.cql2);
    let cloud = cloud.map(|max| json!({"op": "<", "args": [{"property": "eo:cloud_cover"}, max]}));
    let filter = match (cloud, stac.filter.clone()) {
        (Some(a), Some(b)) => Some(json!({"op": "and", "args": [a, b]})),
        (a, b) => a.or(b),
    };
    if let Some(f) = filter {
        body["filter-lang"] = json!("cql2-json");
        body["filter"] = f;
    }
    if let Some(q) = &stac.query {
        body["query"] = q.clone();
    }
    if let Some(max) = stac.max_cloud_cover.filter(|_| dialect.query && !dialect.cql2) {
        body["query"]["eo:cloud_cover"]["lt"] = json!(max);
    }
    body
}

/// One search, page after page (see the module documentation).
fn search(
    client: &reqwest::blocking::Client,
    stac: &StacQuery,
    dialect: Dialect,
    q: &Query,
    cache: &Path,
) -> Result<Found> {
    let dir = cache.join(query_dir(stac, dialect, q));
    let mut request: Request =
        (format!("{}/search", stac.url.trim_end_matches('/')), Some(first_body(stac, dialect, q)));
    let mut found = Found { items: Vec::new(), pages: 0, fetched: 0, retried: 0 };
    let mut asked = std::collections::HashSet::new();
    loop {
        if !asked.insert(format!("{} {}", request.0, request.1.as_ref().map(J::to_string).unwrap_or_default())) {
            bail!("STAC search `{}`: page {} links back to a page already read ({})", q.label, found.pages, request.0);
        }
        let page = found.pages + 1;
        let at = || format!("STAC search `{}` page {page} ({})", q.label, request.0);
        if page > stac.max_pages {
            return Err(anyhow!(
                "the search has more than {} pages (a server whose `next` links never end?); raise [config.stac] \
                 max_pages or narrow the search",
                stac.max_pages
            ))
            .with_context(at);
        }
        let file = dir.join(format!("{page}.json"));
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(_) => {
                let t = fetch(client, &request.0, request.1.as_ref(), &mut found.retried).with_context(at)?;
                keep(&file, &t).with_context(at)?;
                found.fetched += 1;
                pause_for_tests(page, &t);
                t
            }
        };
        found.pages = page;
        // a page the server broke (not JSON, no `features`, an item without an id, a geometry or a valid
        // datetime) is not kept: a fixed server is asked again; a missing asset is the flow's to fix, the page stays
        let answer = well_formed(&text)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&file);
            })
            .with_context(at)?;
        let features = answer["features"].as_array().map_or(&[][..], Vec::as_slice);
        for item in features {
            has_assets(item, &stac.assets).with_context(at)?;
        }
        found.items.extend(features.iter().map(|f| (f.clone(), format!("STAC search `{}` page {page}", q.label))));
        // an empty page ends the search, whatever link it carries
        let next = answer["links"].as_array().and_then(|l| l.iter().find(|l| l["rel"] == "next"));
        let Some(next) = next.filter(|_| !features.is_empty()) else { return Ok(found) };
        request = next_request(next, &request).with_context(at)?;
    }
}

/// A request: URL and, for a POST, its body.
type Request = (String, Option<J>);

/// The request a `next` link asks for (STAC API item search, "Paging"): a GET of its `href` unless its
/// `method` is POST; a POST sends the link's `body`, or with `"merge": true` the previous request's body
/// with the link's members put over it.
fn next_request(link: &J, previous: &Request) -> Result<Request> {
    let href = link["href"].as_str().ok_or_else(|| anyhow!("a `next` link without href"))?.to_string();
    if link["method"].as_str().is_none_or(|m| m.eq_ignore_ascii_case("GET")) {
        return Ok((href, None));
    }
    if !link["method"].as_str().is_some_and(|m| m.eq_ignore_ascii_case("POST")) {
        bail!("a `next` link with method {} (a STAC API pages with GET or POST)", link["method"]);
    }
    let mut body = if link["merge"] == true { previous.1.clone().unwrap_or_else(|| json!({})) } else { json!({}) };
    if let (Some(b), Some(extra)) = (body.as_object_mut(), link["body"].as_object()) {
        b.extend(extra.clone());
    }
    Ok((href, Some(body)))
}

/// One request: POST with `body`, else GET; retried on 429, 5xx and failed connections.
fn fetch(client: &reqwest::blocking::Client, url: &str, body: Option<&J>, retried: &mut usize) -> Result<String> {
    let mut attempt = 0;
    loop {
        let mut wait = None;
        let sent = match body {
            Some(b) => client.post(url).json(b).send(),
            None => client.get(url).send(),
        };
        let retry = match sent {
            Ok(mut r) if r.status().is_success() => {
                let mut text = String::new();
                r.read_to_string(&mut text).context("reading the answer")?;
                return Ok(text);
            }
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                // a server that says when to come back is believed, up to 30 s
                wait = r.headers().get("retry-after").and_then(|v| retry_after(v.to_str().ok()?));
                format!("HTTP {}: {}", r.status(), r.text().unwrap_or_default().chars().take(200).collect::<String>())
            }
            Ok(r) => {
                let status = r.status();
                bail!("HTTP {status}: {}", r.text().unwrap_or_default().chars().take(300).collect::<String>());
            }
            Err(e) => format!("cannot reach the server: {e}"),
        };
        attempt += 1;
        if attempt > 4 {
            bail!("{retry} (after 4 retries)");
        }
        *retried += 1;
        std::thread::sleep(wait.unwrap_or(Duration::from_millis(250 << (attempt - 1))));
    }
}

/// A `Retry-After` header's wait, in seconds or as an HTTP date, at most 30 s.
fn retry_after(header: &str) -> Option<Duration> {
    let header = header.trim();
    let wait = match header.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => {
            httpdate::parse_http_date(header).ok()?.duration_since(std::time::SystemTime::now()).unwrap_or_default()
        }
    };
    Some(wait.min(Duration::from_secs(30)))
}

/// Removes the pages of searches that fetched nothing for more than a day (their answers may have changed).
fn remove_old_pages(dir: &Path) {
    let day = Duration::from_secs(24 * 3600);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|a| a > day));
        if old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Writes a page whole or not at all.
fn keep(file: &Path, text: &str) -> Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(file)?;
    Ok(())
}

/// `FLOWRUN_TEST_STAC_PAUSE=page:ms`: the tests' way to stop the server between two pages of a search (after
/// page `page` of a search that has a next page).
fn pause_for_tests(page: usize, answer: &str) {
    if let Some((p, ms)) = std::env::var("FLOWRUN_TEST_STAC_PAUSE").ok().as_deref().and_then(|v| v.split_once(':'))
        && p.parse() == Ok(page)
        && answer.contains("\"next\"")
    {
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
    }
}

fn text(v: &J) -> &str {
    v.as_str().unwrap_or_default()
}

/// A page as a server should send it: JSON with a `features` list of items that each have an id, a GeoJSON
/// geometry and RFC 3339 instants.
fn well_formed(text: &str) -> Result<J> {
    let answer: J = serde_json::from_str(text)
        .map_err(|e| anyhow!("the answer is not JSON ({e}): {}", text.chars().take(200).collect::<String>()))?;
    let features = answer["features"].as_array().ok_or_else(|| anyhow!("the answer has no `features` list"))?;
    features.iter().try_for_each(check_item)?;
    Ok(answer)
}

fn check_item(item: &J) -> Result<()> {
    let id = item["id"].as_str().ok_or_else(|| anyhow!("an item without an `id`: {}", abbreviated(item)))?;
    if !item["geometry"].is_object() {
        bail!("item `{id}` has no geometry");
    }
    serde_json::from_value::<geojson::Geometry>(item["geometry"].clone())
        .map_err(|e| e.to_string())
        .and_then(|g| Geometry::<f64>::try_from(g).map_err(|e| e.to_string()))
        .map_err(|e| anyhow!("item `{id}` has a geometry that is not GeoJSON ({e})"))?;
    for key in ["datetime", "start_datetime", "end_datetime"] {
        if let Some(d) = item["properties"][key].as_str() {
            arrow_cast::parse::string_to_timestamp_nanos(d)
                .map_err(|_| anyhow!("item `{id}` has a {key} that is not an RFC 3339 instant: `{d}`"))?;
        }
    }
    Ok(())
}

/// Every asset the flow asks for has an href in `item`.
fn has_assets(item: &J, assets: &[String]) -> Result<()> {
    for k in assets {
        if item["assets"].get(k).and_then(|a| a["href"].as_str()).is_none() {
            let has: Vec<&str> =
                item["assets"].as_object().map(|a| a.keys().map(String::as_str).collect()).unwrap_or_default();
            bail!(
                "item `{}` has no asset `{k}` (it has: {}); fix [config.stac] assets",
                text(&item["id"]),
                has.join(", ")
            );
        }
    }
    Ok(())
}

fn abbreviated(v: &J) -> String {
    v.to_string().chars().take(200).collect()
}

/// Items -> the stac-geoparquet layout: properties and the item's top-level members as columns (arrow-json
/// infers their types, objects as structs), `geometry` as WKB, `datetime` as a timestamp. The `bbox`
/// struct column (`xmin`, `ymin`, `xmax`, `ymax`) is the GeoParquet writer's covering column. Each item
/// comes with where it was found; a property whose type differs between items (beyond numbers and text,
/// which become text) is an error naming the first item that does not fit, and where it came from.
fn stac_geoparquet(items: Vec<(J, String)>, collections: serde_json::Map<String, J>) -> Result<Table> {
    if items.is_empty() {
        // nothing found: the columns every item has, without rows
        let text = |n: &str| Field::new(n, DataType::Utf8, true);
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
        let fields =
            vec![text("type"), text("stac_version"), text("id"), text("collection"), Field::new("datetime", ts, true)];
        let mut schema_fields = fields;
        schema_fields.push(wkb_field("geometry", true, None));
        return Ok(Table::from_batch(RecordBatch::new_empty(Arc::new(stac_schema(schema_fields, collections)))));
    }
    let mut geoms = Vec::with_capacity(items.len());
    let (items, found_at): (Vec<J>, Vec<String>) = items.into_iter().unzip();
    let rows: Vec<J> = items
        .into_iter()
        .map(|item| {
            let g: Option<Geometry<f64>> = serde_json::from_value::<geojson::Geometry>(item["geometry"].clone())
                .ok()
                .and_then(|g| Geometry::try_from(g).ok());
            geoms.push(g);
            let mut row = item["properties"].as_object().cloned().unwrap_or_default();
            for k in ["type", "stac_version", "stac_extensions", "id", "collection", "assets", "links"] {
                if let Some(v) = item.get(k) {
                    row.insert(k.to_string(), v.clone());
                }
            }
            J::Object(row)
        })
        .collect();
    let infer = |rows: &[J]| arrow_json::reader::infer_json_schema_from_iterator(rows.iter().map(Ok));
    let decoder =
        |schema: &Schema| arrow_json::ReaderBuilder::new(Arc::new(schema.clone())).with_coerce_primitive(true);
    let decode = |schema: &Schema, rows: &[J]| -> Result<Option<RecordBatch>, arrow_schema::ArrowError> {
        let mut d = decoder(schema).build_decoder()?;
        d.serialize(rows)?;
        d.flush()
    };
    // the first item that does not fit the others: the shortest failing prefix (inferring), or the first
    // item that fails alone (decoding)
    let misfit = |e: arrow_schema::ArrowError, i: usize| {
        anyhow!("{}: item `{}`: {e}", found_at[i], text(&rows[i]["id"]))
            .context("the STAC items' properties do not have one type each")
    };
    let schema = match infer(&rows) {
        Ok(schema) => schema,
        Err(e) => {
            let i = (1..=rows.len()).collect::<Vec<_>>().partition_point(|&n| infer(&rows[..n]).is_ok());
            return Err(misfit(e, i.min(rows.len() - 1)));
        }
    };
    let batch = match decode(&schema, &rows) {
        Ok(batch) => batch.unwrap_or_else(|| RecordBatch::new_empty(Arc::new(schema.clone()))),
        Err(e) => {
            let i = (0..rows.len()).find(|&i| decode(&schema, &rows[i..=i]).is_err()).unwrap_or(0);
            return Err(misfit(e, i));
        }
    };
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if ["datetime", "start_datetime", "end_datetime"].contains(&f.name().as_str()) {
            let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
            let strict = arrow_cast::CastOptions { safe: false, ..Default::default() };
            columns.push(
                arrow_cast::cast_with_options(c, &ts, &strict)
                    .context("an item's datetime is not an RFC 3339 instant")?,
            );
            fields.push(Field::new(f.name(), ts, true));
        } else {
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
        }
    }
    fields.push(wkb_field("geometry", true, None));
    columns.push(wkb_array(&geoms));
    Ok(Table::from_batch(RecordBatch::try_new(Arc::new(stac_schema(fields, collections)), columns)?))
}

/// A schema carrying stac-geoparquet's file metadata (`stac-geoparquet`: its version and the items'
/// collections by id), which a `geoparquet` materialization writes into the file's key-value metadata.
fn stac_schema(fields: Vec<Field>, collections: serde_json::Map<String, J>) -> Schema {
    let meta = json!({"version": "1.0.0", "collections": collections}).to_string();
    Schema::new(fields).with_metadata([("stac-geoparquet".to_string(), meta)].into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, datetime: &str) -> J {
        json!({"type": "Feature", "stac_version": "1.0.0", "id": id, "collection": "c",
               "geometry": {"type": "Point", "coordinates": [1.0, 2.0]},
               "properties": {"datetime": datetime, "eo:cloud_cover": 3.5},
               "assets": {"visual": {"href": "https://x/v.tif"}}, "links": []})
    }

    #[test]
    fn items_the_flow_cannot_use_are_named() {
        assert!(has_assets(&item("a", "2023-01-01T00:00:00Z"), &["visual".into()]).is_ok());
        let err = has_assets(&item("a", "2023-01-01T00:00:00Z"), &["nir".into()]).unwrap_err().to_string();
        assert!(err.contains("item `a` has no asset `nir` (it has: visual)"), "{err}");
        assert!(check_item(&item("a", "2023-01-01T00:00:00Z")).is_ok());
        let err = check_item(&json!({"geometry": null})).unwrap_err().to_string();
        assert!(err.contains("an item without an `id`"), "{err}");
        let err = check_item(&json!({"id": "b", "geometry": null})).unwrap_err().to_string();
        assert!(err.contains("item `b` has no geometry"), "{err}");
        let mut bad = item("c", "2023-01-01T00:00:00Z");
        bad["geometry"] = json!({"type": "Polygon", "coordinates": "nonsense"});
        let err = check_item(&bad).unwrap_err().to_string();
        assert!(err.contains("item `c` has a geometry that is not GeoJSON"), "{err}");
        let err = check_item(&item("d", "yesterday")).unwrap_err().to_string();
        assert!(err.contains("item `d` has a datetime that is not an RFC 3339 instant: `yesterday`"), "{err}");
        let err = well_formed("{\"features\": [{").unwrap_err().to_string();
        assert!(err.starts_with("the answer is not JSON"), "{err}");
        let err = well_formed("{\"type\": \"FeatureCollection\"}").unwrap_err().to_string();
        assert!(err.contains("no `features` list"), "{err}");
    }

    #[test]
    fn installations_outside_longitude_latitude_are_named() {
        let table = |x: f64, y: f64| {
            let schema =
                Schema::new(vec![Field::new("unified_id", DataType::Utf8, false), wkb_field("geometry", true, None)]);
            let geometry = wkb_array(&[Some(Geometry::Point(geo::Point::new(x, y)))]);
            let batch =
                RecordBatch::try_new(Arc::new(schema), vec![Arc::new(StringArray::from(vec!["a:1"])), geometry])
                    .unwrap();
            Table::from_batch(batch)
        };
        assert_eq!(installation_boxes(&table(77.5, 12.9)).unwrap().len(), 1);
        let err = installation_boxes(&table(500000.0, 5000000.0)).unwrap_err().to_string();
        assert!(err.contains("installation a:1") && err.contains("not in longitude/latitude"), "{err}");
    }

    #[test]
    fn searches_run_n_at_a_time_and_stop_after_a_failure() {
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let items: Vec<usize> = (0..12).collect();
        let out = run_bounded(&items, 3, |&i| {
            most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            now.fetch_sub(1, Ordering::SeqCst);
            Ok(i * 2)
        });
        assert_eq!(most.load(Ordering::SeqCst), 3, "three at a time, never more");
        let doubled: Vec<usize> = out.into_iter().map(|r| r.unwrap().unwrap()).collect();
        assert_eq!(doubled, (0..12).map(|i| i * 2).collect::<Vec<_>>(), "results in item order");
        // one at a time: after item 4 fails, nothing else starts
        let out = run_bounded(&items, 1, |&i| if i == 4 { Err(anyhow!("no")) } else { Ok(i) });
        assert!(out[..4].iter().all(|r| r.as_ref().is_some_and(|r| r.is_ok())) && out[4].as_ref().unwrap().is_err());
        assert!(out[5..].iter().all(Option::is_none));
    }

    #[test]
    fn a_search_body_says_everything_the_flow_asks() {
        let toml: toml::Value = toml::from_str(
            "url = \"http://x\"\ncollections = [\"s2\"]\ndatetime = \"2023-01-01T00:00:00Z/..\"\nmax_cloud_cover = 20.0\n\
             filter = { op = \"=\", args = [{ property = \"platform\" }, \"sentinel-2b\"] }\n\
             query = { \"eo:cloud_cover\" = { lt = 20 } }\nlimit = 7",
        )
        .unwrap();
        let stac = StacQuery::from_toml(&toml, &flowrun_engine::LiteralCx::default()).unwrap();
        let q = Query { label: "x".into(), area: Geometry::Point(geo::Point::new(1.0, 2.0)) };
        let both = Dialect { cql2: true, query: true };
        let body = first_body(&stac, both, &q);
        assert_eq!(body["limit"], 7);
        assert_eq!(body["collections"], json!(["s2"]));
        assert_eq!(body["intersects"], json!({"type": "Point", "coordinates": [1.0, 2.0]}));
        assert_eq!(body["filter-lang"], "cql2-json");
        assert_eq!(body["filter"]["op"], "and");
        assert_eq!(body["filter"]["args"][1], json!({"op": "=", "args": [{"property": "platform"}, "sentinel-2b"]}));
        assert_eq!(body["query"], json!({"eo:cloud_cover": {"lt": 20}}));
        // max_cloud_cover where the server can take it: CQL2, else the query extension, else nowhere (the
        // items are checked when they arrive)
        let stac = StacQuery { filter: None, query: None, ..stac };
        let cloud = json!({"op": "<", "args": [{"property": "eo:cloud_cover"}, 20.0]});
        assert_eq!(first_body(&stac, both, &q)["filter"], cloud);
        let query_only = first_body(&stac, Dialect { cql2: false, query: true }, &q);
        assert_eq!((query_only.get("filter"), &query_only["query"]), (None, &json!({"eo:cloud_cover": {"lt": 20.0}})));
        let neither = first_body(&stac, Dialect { cql2: false, query: false }, &q);
        assert_eq!((neither.get("filter"), neither.get("query")), (None, None));
    }

    #[test]
    fn next_links_as_the_stac_api_pages() {
        let previous: Request = ("http://x/search".into(), Some(json!({"limit": 10, "collections": ["s2"]})));
        // GET (the default): the href carries everything
        let get = next_request(&json!({"rel": "next", "href": "http://x/search?token=2"}), &previous).unwrap();
        assert_eq!(get, ("http://x/search?token=2".to_string(), None));
        // POST: the link's body alone
        let link = json!({"rel": "next", "href": "http://x/search", "method": "POST", "body": {"token": "2"}});
        assert_eq!(next_request(&link, &previous).unwrap().1, Some(json!({"token": "2"})));
        // POST with merge: the previous body, the link's members over it
        let link = json!({"rel": "next", "href": "http://x/search", "method": "POST", "merge": true,
                          "body": {"token": "2", "limit": 5}});
        let merged = next_request(&link, &previous).unwrap().1.unwrap();
        assert_eq!(merged, json!({"limit": 5, "collections": ["s2"], "token": "2"}));
        let err = next_request(&json!({"rel": "next"}), &previous).unwrap_err().to_string();
        assert!(err.contains("a `next` link without href"), "{err}");
        let err = next_request(&json!({"href": "http://x", "method": "PUT"}), &previous).unwrap_err().to_string();
        assert!(err.contains("method \"PUT\""), "{err}");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(retry_after("3600"), Some(Duration::from_secs(30)));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(10));
        assert!(retry_after(&soon).is_some_and(|w| w > Duration::from_secs(8) && w <= Duration::from_secs(10)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO), "a date gone by");
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn concurrency_is_not_part_of_what_is_searched() {
        let stac = |extra: &str| {
            let toml: toml::Value = toml::from_str(&format!("url = \"http://x\"\n{extra}")).unwrap();
            let q = StacQuery::from_toml(&toml, &flowrun_engine::LiteralCx::default()).unwrap();
            q.identity().unwrap().unwrap()
        };
        assert_eq!(stac("concurrency = 1"), stac("concurrency = 8"));
        assert_ne!(stac("limit = 1"), stac("limit = 8"));
        assert_ne!(stac("assets = [\"visual\"]"), stac(""));
    }

    #[test]
    fn the_stac_geoparquet_layout() {
        let c = json!({"type": "Collection", "id": "c"});
        let collections = serde_json::Map::from_iter([("c".to_string(), c.clone())]);
        let at = |i: J| (i, "STAC search `x` page 1".to_string());
        let items = vec![at(item("a", "2023-01-01T05:30:00Z")), at(item("b", "2023-02-01T00:00:00Z"))];
        let t = stac_geoparquet(items, collections).unwrap();
        let b = t.concat().unwrap();
        let schema = b.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        for c in ["id", "collection", "datetime", "eo:cloud_cover", "assets", "geometry", "stac_version"] {
            assert!(names.contains(&c), "{c} in {names:?}");
        }
        assert!(matches!(b.schema().field_with_name("datetime").unwrap().data_type(), DataType::Timestamp(..)));
        let meta: J = serde_json::from_str(&schema.metadata()["stac-geoparquet"]).unwrap();
        assert_eq!(meta, json!({"version": "1.0.0", "collections": {"c": c}}));
        let err = stac_geoparquet(vec![at(item("c", "yesterday"))], Default::default()).unwrap_err().to_string();
        assert!(err.contains("datetime is not an RFC 3339 instant"), "{err}");
        // a property that is a number in one item and text in another becomes text; an object in one and a
        // number in another is an error naming the item and where it was found
        let mut text_cloud = item("t", "2023-01-01T00:00:00Z");
        text_cloud["properties"]["eo:cloud_cover"] = json!("low");
        let t = stac_geoparquet(vec![at(item("n", "2023-01-01T00:00:00Z")), at(text_cloud)], Default::default());
        let b = t.unwrap().concat().unwrap();
        assert_eq!(b.schema().field_with_name("eo:cloud_cover").unwrap().data_type(), &DataType::Utf8);
        let mut odd = item("odd", "2023-01-01T00:00:00Z");
        odd["properties"]["eo:cloud_cover"] = json!({"value": 3});
        let found = (odd, "STAC search `installation 7` page 3".to_string());
        let items = vec![at(item("a", "2023-01-01T00:00:00Z")), at(item("b", "2023-01-01T00:00:00Z")), found];
        let err = format!("{:#}", stac_geoparquet(items, Default::default()).unwrap_err());
        assert!(err.contains("STAC search `installation 7` page 3: item `odd`"), "{err}");
        assert!(err.contains("do not have one type each"), "{err}");
        // nothing found: the columns without rows
        let empty = stac_geoparquet(Vec::new(), Default::default()).unwrap();
        assert_eq!((empty.num_rows(), empty.schema().fields().len()), (0, 6));
    }
}
