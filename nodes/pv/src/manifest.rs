//! The dataset manifest of the PV flow: one TOML table per dataset under `[config.manifest]`. Every key
//! is documented on [`Dataset`] and in the README ("Adding a dataset").
//!
//! ```toml
//! [config.manifest.gbr_renewables_register]
//! repository = "direct"                 # zenodo | figshare | github | sciencebase | direct
//! source = "https://example.org/repd.csv"
//! format = "csv"                        # geojson | shp | gpkg | csv
//! encoding = "windows-1252"             # CSV (and DBF without .cpg); default UTF-8
//! skip_rows = 1                         # lines before the CSV header
//! x = "X-coordinate"                    # CSV coordinate columns (or lat/lon)
//! y = "Y-coordinate"
//! crs = "EPSG:27700"                    # overrides what the files say
//! thousands = ","                       # "537,585" is a number
//! filter = { "Technology Type" = ["Solar Photovoltaics"] }
//! id = "Ref ID"                         # source column -> unified columns
//! capacity = "Installed Capacity (MWelec)"
//! ```

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use flowrun_engine::{Parallel, Value, ctx, node};

use super::fetch::Mirror;
use serde::{Deserialize, Serialize};

/// Where a dataset is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Repository {
    /// zenodo.org, by DOI `10.5281/zenodo.<id>` or record id.
    Zenodo,
    /// figshare.com, by DOI `10.6084/m9.figshare.<id>.v<version>`.
    Figshare,
    /// github.com, `owner/repo[/path]` (and `ref`).
    Github,
    /// sciencebase.gov, by item id.
    Sciencebase,
    /// Plain URLs.
    Direct,
}

/// Label file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// GeoJSON (`.geojson`, `.json`).
    Geojson,
    /// ESRI Shapefile (`.shp` with `.dbf`, `.shx`, `.prj`, `.cpg`).
    Shp,
    /// GeoPackage (`.gpkg`).
    Gpkg,
    /// CSV with point coordinates (`.csv`).
    Csv,
}

impl Format {
    /// File extensions read for this format.
    pub fn extensions(&self) -> &'static [&'static str] {
        match self {
            Format::Geojson => &["geojson", "json"],
            Format::Shp => &["shp"],
            Format::Gpkg => &["gpkg"],
            Format::Csv => &["csv"],
        }
    }
}

/// The order of the coordinates a dataset's files write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AxisOrder {
    /// x is the longitude or easting (the GIS order; what GeoJSON, shapefiles and GDAL write).
    #[default]
    LonLat,
    /// x is the latitude or northing (some exports write EPSG:4326 in its authority's order).
    LatLon,
}

/// One dataset of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// The manifest key; filled from the table name.
    #[serde(default)]
    pub key: String,
    /// Repository kind.
    pub repository: Repository,
    /// DOI, record id, `owner/repo[/path]`, item id, or URL (see [`Repository`]).
    pub source: String,
    /// Extra URLs for `direct`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Git ref for `github` (default `HEAD`).
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    /// `zip` when the published files are zip archives to unpack.
    #[serde(default)]
    pub compression: Option<String>,
    /// Label format.
    pub format: Format,
    /// File-name filters: `re:<regex>` or a glob; a file is kept if it matches any include (or there are
    /// none) and no exclude.
    #[serde(default)]
    pub include: Vec<String>,
    /// See `include`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Source column holding the record id.
    #[serde(default)]
    pub id: Option<String>,
    /// Source column holding an area.
    #[serde(default)]
    pub area: Option<String>,
    /// Factor turning `area` into m² (e.g. 1e6 for km²).
    #[serde(default)]
    pub area_factor: Option<f64>,
    /// Source column holding a capacity.
    #[serde(default)]
    pub capacity: Option<String>,
    /// Factor turning `capacity` into MW (e.g. 0.001 for kW).
    #[serde(default)]
    pub capacity_factor: Option<f64>,
    /// Source column holding an installation date or year.
    #[serde(default)]
    pub install_date: Option<String>,
    /// CSV: latitude column (degrees; with `lon`).
    #[serde(default)]
    pub lat: Option<String>,
    /// CSV: longitude column (degrees; with `lat`).
    #[serde(default)]
    pub lon: Option<String>,
    /// CSV: x column (easting, or longitude) in `crs`; with `y`, instead of `lat`/`lon`.
    #[serde(default)]
    pub x: Option<String>,
    /// CSV: y column (northing, or latitude) in `crs`.
    #[serde(default)]
    pub y: Option<String>,
    /// The CRS of the coordinates: `EPSG:<code>`, a PROJ string or WKT. It overrides whatever the files
    /// declare (GeoJSON `crs` member, `.prj`, GeoPackage SRS); without it, what the files declare, then the
    /// format's default (GeoJSON and CSV: WGS84 lon/lat).
    #[serde(default)]
    pub crs: Option<String>,
    /// The order the files write coordinates in (`lon_lat` unless a file writes latitude first).
    #[serde(default)]
    pub axis_order: AxisOrder,
    /// GeoPackage: the layer to read, or `"*"` for every feature layer. Required when there are several.
    #[serde(default)]
    pub layer: Option<String>,
    /// Text encoding of CSV files and of DBF files without a `.cpg` (an encoding label such as
    /// `windows-1252`, `latin1`, `utf-8`). Default UTF-8.
    #[serde(default)]
    pub encoding: Option<String>,
    /// CSV: lines before the header line (a title, a notice).
    #[serde(default)]
    pub skip_rows: usize,
    /// CSV: the field delimiter (default `,`; `;` and a tab are common).
    #[serde(default)]
    pub delimiter: Option<char>,
    /// Thousands separator inside numbers (`","` reads `"537,585"` as 537585); numbers that still do not
    /// parse are counted and reported, never silently null.
    #[serde(default)]
    pub thousands: Option<String>,
    /// Keep only rows whose column value (as text) is one of the listed values, e.g.
    /// `filter = { "Technology Type" = ["Solar Photovoltaics"] }`; the others are dropped and counted.
    #[serde(default)]
    pub filter: BTreeMap<String, OneOrMany>,
    /// The count the publication states (informational).
    #[serde(default)]
    pub count: Option<u64>,
    /// Leave this dataset out.
    #[serde(default)]
    pub skip: bool,
    /// Free text.
    #[serde(default)]
    pub note: Option<String>,
}

/// A filter's values: one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values.
    pub fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
}

/// The manifest: dataset key -> dataset. Each entry is checked when the flow is validated, before anything
/// runs: an unknown key, an unknown encoding or a bad filter is an error of the flow file (exit 2), not a
/// failure of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest(pub BTreeMap<String, Dataset>);

impl Value for Manifest {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), flowrun_engine::CodecError> {
        flowrun_engine::value::serde_encode(self, out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, flowrun_engine::CodecError> {
        flowrun_engine::value::serde_decode(bytes)
    }
    fn from_toml(value: &toml::Value, _cx: &flowrun_engine::LiteralCx) -> Result<Self, String> {
        let table = value
            .as_table()
            .ok_or_else(|| format!("the manifest is a table of datasets, found {}", value.type_str()))?;
        let mut out = BTreeMap::new();
        for (key, entry) in table {
            let mut d: Dataset =
                flowrun_engine::value::serde_from_toml(entry).map_err(|e| format!("dataset `{key}`: {e}"))?;
            d.key = key.clone();
            d.validate().map_err(|e| e.to_string())?;
            out.insert(key.clone(), d);
        }
        Ok(Manifest(out))
    }
}

/// A dataset written in a flow file (`[config.countries]`) is checked like a manifest entry, when the
/// flow is validated.
impl Value for Dataset {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), flowrun_engine::CodecError> {
        flowrun_engine::value::serde_encode(self, out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, flowrun_engine::CodecError> {
        flowrun_engine::value::serde_decode(bytes)
    }
    fn from_toml(value: &toml::Value, _cx: &flowrun_engine::LiteralCx) -> Result<Self, String> {
        let d: Dataset = flowrun_engine::value::serde_from_toml(value)?;
        d.validate().map_err(|e| e.to_string())?;
        Ok(d)
    }
    fn label(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

impl Dataset {
    /// Checks the entry's own consistency.
    pub fn validate(&self) -> Result<()> {
        if let Some(c) = &self.crs {
            crate::crs::Crs::parse(c).map_err(|e| anyhow::anyhow!("dataset `{}`: crs = {c:?}: {e:#}", self.key))?;
        }
        if self.format == Format::Csv {
            self.coordinate_columns()?;
        }
        if let Some(e) = &self.encoding
            && encoding_rs::Encoding::for_label(e.as_bytes()).is_none()
        {
            bail!("dataset `{}`: unknown encoding `{e}` (try \"utf-8\", \"windows-1252\", \"latin1\")", self.key);
        }
        if let Some(c) = self.delimiter
            && !c.is_ascii()
        {
            bail!("dataset `{}`: the delimiter {c:?} is not a single ASCII character", self.key);
        }
        if let Some(c) = &self.compression
            && c != "zip"
        {
            bail!("dataset `{}`: unknown compression `{c}` (only \"zip\")", self.key);
        }
        for f in self.include.iter().chain(&self.exclude) {
            crate::fetch::Filter::parse(f).map_err(|e| anyhow::anyhow!("dataset `{}`: {e}", self.key))?;
        }
        Ok(())
    }
}

impl Dataset {
    /// CSV: the (x, y) columns: `x`/`y`, or `lon`/`lat`.
    pub fn coordinate_columns(&self) -> Result<(&str, &str)> {
        match (&self.x, &self.y, &self.lon, &self.lat) {
            (Some(_), Some(_), None, None) if self.crs.is_none() => bail!(
                "dataset `{}`: `x` and `y` are coordinates in the dataset's `crs`, which it does not give; add \
                 crs = \"EPSG:<code>\" (or use `lat` and `lon` for degrees)",
                self.key
            ),
            (Some(x), Some(y), None, None) => Ok((x, y)),
            (None, None, Some(lon), Some(lat)) => Ok((lon, lat)),
            _ => bail!(
                "dataset `{}`: a CSV needs its coordinate columns: `lat` and `lon` (degrees), or `x` and `y` \
                 (with `crs`)",
                self.key
            ),
        }
    }
}

/// Whether the mirror holds dataset `key` (`None`: the server would not say, let `files` try and report).
/// A mirror that cannot be reached is an error: a listing made then would be cached as the truth.
fn mirror_has(mirror: &Mirror, key: &str) -> Result<Option<bool>> {
    Ok(match mirror {
        Mirror::None => Some(true),
        Mirror::Dir(root) => Some(root.join(key).is_dir()),
        Mirror::S3(url) => {
            let bucket = crate::fetch::s3_mirror(url)?;
            Some(!crate::fetch::list_s3_dir(&bucket, key)?.is_empty())
        }
        Mirror::Http(base) => {
            let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(10)).build()?;
            let r = client
                .get(format!("{base}/{key}/"))
                .send()
                .with_context(|| format!("cannot reach the mirror {base}"))?;
            match r.status() {
                reqwest::StatusCode::NOT_FOUND => Some(false),
                s if s.is_success() => Some(true),
                _ => None,
            }
        }
    })
}

/// The datasets of the manifest that are not skipped, in key order: the PV flow fans out over them.
///
/// With a mirror, a dataset the mirror does not hold at all (no `<mirror>/<key>/`) is left out with a
/// warning: a mirror is a snapshot of some datasets. A dataset whose directory is there but broken is an
/// error of that dataset's branch.
#[node(tags(stage = "source"))]
pub fn datasets(manifest: &Manifest, mirror: &Mirror) -> Result<Parallel<Dataset>> {
    if let Mirror::Dir(root) = mirror {
        // which datasets the mirror holds decides the fan-out: a dataset directory added or removed re-runs this
        ctx::track_listing(root).with_context(|| format!("cannot list the mirror {}", root.display()))?;
    }
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (key, d) in &manifest.0 {
        let d = d.clone();
        if d.skip {
            continue;
        }
        if mirror_has(mirror, key)? == Some(false) {
            missing.push(key.clone());
            continue;
        }
        out.push(d);
    }
    if !missing.is_empty() {
        ctx::warn(format!("the mirror has no {}: left out of this run", missing.join(", ")));
    }
    if out.is_empty() {
        bail!("the manifest has no dataset to process (all are skipped or it is empty)");
    }
    Ok(Parallel(out))
}
