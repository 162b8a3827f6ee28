//! The dataset manifest of the PV flow: one TOML table per dataset under `[config.manifest]`.
//!
//! ```toml
//! [config.manifest.chn_med_res_pv_2024]
//! repository = "github"                 # zenodo | figshare | github | sciencebase | direct
//! source = "qingfengxitu/ChinaPV"       # DOI, record id, owner/repo[/path], item id or URL(s)
//! format = "shp"                        # geojson | shp | gpkg | csv
//! include = ["re:PV_.*\\.shp$"]         # file filters: `re:` regex or glob (default), on file names
//! exclude = ["re:NPV_.*\\.shp$"]
//! id = "FID_PV_202"                     # source column -> unified columns
//! area = "Shape_Area"
//! crs = "EPSG:4326"                     # when the files do not say
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

/// One dataset of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Value)]
#[serde(deny_unknown_fields)]
#[value(label = "key")]
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
    /// CSV: latitude column.
    #[serde(default)]
    pub lat: Option<String>,
    /// CSV: longitude column.
    #[serde(default)]
    pub lon: Option<String>,
    /// CRS when the files do not say (GeoJSON defaults to OGC:CRS84).
    #[serde(default)]
    pub crs: Option<String>,
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

/// The manifest: dataset key -> dataset.
pub type Manifest = BTreeMap<String, Dataset>;

impl Dataset {
    /// Checks the entry's own consistency.
    pub fn validate(&self) -> Result<()> {
        if self.format == Format::Csv && (self.lat.is_none() || self.lon.is_none()) {
            bail!("dataset `{}`: format = \"csv\" needs `lat` and `lon` column names", self.key);
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

/// Whether the mirror holds dataset `key` (`None`: cannot tell, let `files` try and report).
fn mirror_has(mirror: &Mirror, key: &str) -> Option<bool> {
    match mirror {
        Mirror::None => Some(true),
        Mirror::Dir(root) => Some(root.join(key).is_dir()),
        Mirror::Http(base) => {
            let client =
                reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(10)).build().ok()?;
            match client.get(format!("{base}/{key}/")).send() {
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Some(false),
                Ok(r) if r.status().is_success() => Some(true),
                _ => None,
            }
        }
    }
}

/// The datasets of the manifest that are not skipped, in key order: the PV flow fans out over them.
///
/// With a mirror, a dataset the mirror does not hold at all (no `<mirror>/<key>/`) is left out with a
/// warning: a mirror is a snapshot of some datasets. A dataset whose directory is there but broken is an
/// error of that dataset's branch.
#[node(tags(stage = "source"))]
pub fn datasets(manifest: &BTreeMap<String, Dataset>, mirror: &Mirror) -> Result<Parallel<Dataset>> {
    if let Mirror::Dir(root) = mirror {
        // which datasets the mirror holds decides the fan-out: a dataset directory added or removed re-runs this
        ctx::track_listing(root).with_context(|| format!("cannot list the mirror {}", root.display()))?;
    }
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (key, d) in manifest {
        let mut d = d.clone();
        d.key = key.clone();
        d.validate()?;
        if d.skip {
            continue;
        }
        if mirror_has(mirror, key) == Some(false) {
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
