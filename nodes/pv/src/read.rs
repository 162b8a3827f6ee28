//! Readers: GeoJSON (streamed), ESRI Shapefile (`.prj` CRS, `.cpg` encoding), GeoPackage, CSV points.
//!
//! Each reader returns the file's attributes as typed columns plus its geometries as WKB, in the file's
//! own CRS (recorded in the table's schema metadata under `flowrun.source_crs`; reprojection happens in
//! `standardized`). A dataset's files are concatenated by column name into its `raw` table, with a
//! `source_file` column. Every error names the dataset and the file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use flowrun_engine::{Table, ctx, node};
use geo::{Contains, Coord, Geometry, LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon};
use indexmap::IndexMap;

use super::crs::Crs;
use super::fetch::DatasetFiles;
use super::geom::{to_wkb, wkb_field};
use super::manifest::{Dataset, Format};

/// Schema metadata key holding the source CRS.
pub const SOURCE_CRS: &str = "flowrun.source_crs";

/// A typed attribute column being built.
#[derive(Debug, Clone)]
pub enum Column {
    /// Integers.
    Int(Vec<Option<i64>>),
    /// Floats.
    Float(Vec<Option<f64>>),
    /// Booleans.
    Bool(Vec<Option<bool>>),
    /// Text.
    Text(Vec<Option<String>>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Int(v) => v.len(),
            Column::Float(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Text(v) => v.len(),
        }
    }

    fn push_nulls(&mut self, n: usize) {
        match self {
            Column::Int(v) => v.extend(std::iter::repeat_n(None, n)),
            Column::Float(v) => v.extend(std::iter::repeat_n(None, n)),
            Column::Bool(v) => v.extend(std::iter::repeat_n(None, n)),
            Column::Text(v) => v.extend(std::iter::repeat_n(None, n)),
        }
    }

    fn into_text(self) -> Vec<Option<String>> {
        match self {
            Column::Int(v) => v.into_iter().map(|x| x.map(|x| x.to_string())).collect(),
            Column::Float(v) => v.into_iter().map(|x| x.map(|x| x.to_string())).collect(),
            Column::Bool(v) => v.into_iter().map(|x| x.map(|x| x.to_string())).collect(),
            Column::Text(v) => v,
        }
    }

    /// Appends `other`, widening Int -> Float and anything else mixed -> Text.
    fn append(self, other: Column) -> Column {
        match (self, other) {
            (Column::Int(mut a), Column::Int(b)) => {
                a.extend(b);
                Column::Int(a)
            }
            (Column::Float(mut a), Column::Float(b)) => {
                a.extend(b);
                Column::Float(a)
            }
            (Column::Int(a), Column::Float(b)) => {
                let mut a: Vec<Option<f64>> = a.into_iter().map(|x| x.map(|x| x as f64)).collect();
                a.extend(b);
                Column::Float(a)
            }
            (Column::Float(mut a), Column::Int(b)) => {
                a.extend(b.into_iter().map(|x| x.map(|x| x as f64)));
                Column::Float(a)
            }
            (Column::Bool(mut a), Column::Bool(b)) => {
                a.extend(b);
                Column::Bool(a)
            }
            (a, b) => {
                let mut t = a.into_text();
                t.extend(b.into_text());
                Column::Text(t)
            }
        }
    }

    fn to_arrow(&self) -> (DataType, ArrayRef) {
        match self {
            Column::Int(v) => (DataType::Int64, Arc::new(Int64Array::from(v.clone()))),
            Column::Float(v) => (DataType::Float64, Arc::new(Float64Array::from(v.clone()))),
            Column::Bool(v) => (DataType::Boolean, Arc::new(BooleanArray::from(v.clone()))),
            Column::Text(v) => (DataType::Utf8, Arc::new(v.iter().map(|s| s.as_deref()).collect::<StringArray>())),
        }
    }
}

/// One file, read.
pub struct FileTable {
    /// Attribute columns, in file order.
    pub attrs: IndexMap<String, Column>,
    /// WKB in the file's CRS (`None`: no geometry).
    pub geoms: Vec<Option<Vec<u8>>>,
    /// The file's CRS (as the file or manifest says it).
    pub crs: String,
    /// Rows left out (CSV rows without coordinates), for the warning.
    pub skipped: usize,
}

/// Infers a column from JSON values: all integers -> Int, numbers -> Float, booleans -> Bool, else Text.
fn json_column(values: Vec<serde_json::Value>) -> Column {
    use serde_json::Value as J;
    if values.iter().all(|v| v.is_null() || v.is_i64() || v.is_u64()) {
        return Column::Int(values.iter().map(|v| v.as_i64()).collect());
    }
    if values.iter().all(|v| v.is_null() || v.is_number()) {
        return Column::Float(values.iter().map(|v| v.as_f64()).collect());
    }
    if values.iter().all(|v| v.is_null() || v.is_boolean()) {
        return Column::Bool(values.iter().map(|v| v.as_bool()).collect());
    }
    Column::Text(
        values
            .into_iter()
            .map(|v| match v {
                J::Null => None,
                J::String(s) => Some(s),
                other => Some(other.to_string()),
            })
            .collect(),
    )
}

/// Reads a GeoJSON FeatureCollection, streaming features (large files are not loaded as one document).
pub fn read_geojson(path: &Path, crs: Option<&str>) -> Result<FileTable> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).ok();
    let counting = ProgressReader { inner: BufReader::with_capacity(1 << 20, file), done: 0, total: size };
    let reader = geojson::FeatureReader::from_reader(counting);
    let mut columns: IndexMap<String, Vec<serde_json::Value>> = IndexMap::new();
    let mut geoms = Vec::new();
    for (i, feature) in reader.features().enumerate() {
        let feature =
            feature.map_err(|e| anyhow!("{}: feature {i}: {e} (truncated or invalid GeoJSON?)", path.display()))?;
        let row = geoms.len();
        if let Some(props) = feature.properties {
            for (k, v) in props {
                let col = columns.entry(k).or_insert_with(|| vec![serde_json::Value::Null; row]);
                col.push(v);
            }
        }
        for col in columns.values_mut() {
            if col.len() == row {
                col.push(serde_json::Value::Null);
            }
        }
        let g = match feature.geometry {
            Some(g) => {
                let geo: Geometry<f64> = Geometry::try_from(&g.value)
                    .map_err(|e| anyhow!("{}: feature {i}: unsupported geometry: {e}", path.display()))?;
                Some(to_wkb(&geo))
            }
            None => None,
        };
        geoms.push(g);
    }
    let attrs = columns.into_iter().map(|(k, v)| (k, json_column(v))).collect();
    Ok(FileTable { attrs, geoms, crs: crs.unwrap_or("OGC:CRS84").to_string(), skipped: 0 })
}

struct ProgressReader<R> {
    inner: R,
    done: u64,
    total: Option<u64>,
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let before = self.done;
        self.done += n as u64;
        if self.done >> 22 != before >> 22 {
            ctx::progress(self.done, self.total);
        }
        Ok(n)
    }
}

/// A sidecar of `shp` with another extension, matched case-insensitively (`.DBF`, `.CPG`...).
fn sidecar(shp: &Path, ext: &str) -> Option<PathBuf> {
    let stem = shp.file_stem()?.to_string_lossy().to_string();
    let dir = shp.parent()?;
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_stem().is_some_and(|s| s.to_string_lossy() == stem)
            && p.extension().is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case(ext))
    })
}

fn points_to_coords<P: shapefile::record::traits::HasXY>(pts: &[P]) -> Vec<Coord<f64>> {
    pts.iter().map(|p| Coord { x: p.x(), y: p.y() }).collect()
}

fn rings_to_multipolygon<P: shapefile::record::traits::HasXY>(
    rings: &[shapefile::PolygonRing<P>],
) -> MultiPolygon<f64> {
    let mut polys: Vec<(LineString<f64>, Vec<LineString<f64>>)> = Vec::new();
    let mut holes = Vec::new();
    for r in rings {
        match r {
            shapefile::PolygonRing::Outer(pts) => polys.push((LineString::new(points_to_coords(pts)), Vec::new())),
            shapefile::PolygonRing::Inner(pts) => holes.push(LineString::new(points_to_coords(pts))),
        }
    }
    for hole in holes {
        let first = hole.0.first().copied();
        let owner = first
            .and_then(|c| {
                polys.iter().position(|(outer, _)| Polygon::new(outer.clone(), vec![]).contains(&Point::from(c)))
            })
            .or(if polys.is_empty() { None } else { Some(polys.len() - 1) });
        match owner {
            Some(i) => polys[i].1.push(hole),
            None => polys.push((hole, Vec::new())),
        }
    }
    MultiPolygon::new(polys.into_iter().map(|(o, h)| Polygon::new(o, h)).collect())
}

fn shape_to_geo(shape: shapefile::Shape) -> Option<Geometry<f64>> {
    use shapefile::Shape as S;
    let line = |parts: &Vec<Vec<Coord<f64>>>| {
        Geometry::MultiLineString(MultiLineString::new(parts.iter().map(|p| LineString::new(p.clone())).collect()))
    };
    Some(match shape {
        S::NullShape => return None,
        S::Point(p) => Geometry::Point(Point::new(p.x, p.y)),
        S::PointM(p) => Geometry::Point(Point::new(p.x, p.y)),
        S::PointZ(p) => Geometry::Point(Point::new(p.x, p.y)),
        S::Multipoint(m) => {
            Geometry::MultiPoint(MultiPoint::new(points_to_coords(m.points()).into_iter().map(Point::from).collect()))
        }
        S::MultipointM(m) => {
            Geometry::MultiPoint(MultiPoint::new(points_to_coords(m.points()).into_iter().map(Point::from).collect()))
        }
        S::MultipointZ(m) => {
            Geometry::MultiPoint(MultiPoint::new(points_to_coords(m.points()).into_iter().map(Point::from).collect()))
        }
        S::Polyline(l) => line(&l.parts().iter().map(|p| points_to_coords(p)).collect()),
        S::PolylineM(l) => line(&l.parts().iter().map(|p| points_to_coords(p)).collect()),
        S::PolylineZ(l) => line(&l.parts().iter().map(|p| points_to_coords(p)).collect()),
        S::Polygon(p) => Geometry::MultiPolygon(rings_to_multipolygon(p.rings())),
        S::PolygonM(p) => Geometry::MultiPolygon(rings_to_multipolygon(p.rings())),
        S::PolygonZ(p) => Geometry::MultiPolygon(rings_to_multipolygon(p.rings())),
        S::Multipatch(_) => return None,
    })
}

/// Reads an ESRI Shapefile with its `.dbf` (required), `.prj` (CRS) and `.cpg` (text encoding).
pub fn read_shapefile(path: &Path, crs: Option<&str>) -> Result<FileTable> {
    use shapefile::dbase::{self, FieldValue};
    let dbf =
        sidecar(path, "dbf").ok_or_else(|| anyhow!("{}: the shapefile has no .dbf file beside it", path.display()))?;
    let crs = match sidecar(path, "prj") {
        Some(prj) => {
            std::fs::read_to_string(&prj).with_context(|| format!("cannot read {}", prj.display()))?.trim().to_string()
        }
        None => crs
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{}: no .prj file and no `crs` in the manifest", path.display()))?,
    };
    let encoding = sidecar(path, "cpg")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|label| dbase::encoding::DynEncoding::from_name(label.trim().trim_start_matches('\u{feff}')));
    let dbf_file = BufReader::new(File::open(&dbf).with_context(|| format!("cannot open {}", dbf.display()))?);
    let dbf_reader = match encoding {
        Some(e) => dbase::ReaderBuilder::new().with_encoding(e).build(dbf_file),
        None => dbase::Reader::new(dbf_file),
    }
    .map_err(|e| anyhow!("{}: {e}", dbf.display()))?;
    let field_names: Vec<String> = dbf_reader.fields().iter().map(|f| f.name().to_string()).collect();
    let shp = BufReader::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
    let shape_reader = shapefile::ShapeReader::new(shp).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut reader = shapefile::Reader::new(shape_reader, dbf_reader);
    let mut values: IndexMap<String, Vec<serde_json::Value>> =
        field_names.iter().map(|n| (n.clone(), Vec::new())).collect();
    let mut geoms = Vec::new();
    for (i, item) in reader.iter_shapes_and_records().enumerate() {
        let (shape, record) = item.map_err(|e| anyhow!("{}: record {i}: {e}", path.display()))?;
        geoms.push(shape_to_geo(shape).map(|g| to_wkb(&g)));
        let mut record: HashMap<String, FieldValue> = record.into();
        for name in &field_names {
            use serde_json::Value as J;
            let v = match record.remove(name) {
                Some(FieldValue::Character(s)) => s.map(J::String).unwrap_or(J::Null),
                Some(FieldValue::Memo(s)) => J::String(s),
                Some(FieldValue::Numeric(n)) => n
                    .map(|n| if n.fract() == 0.0 && n.abs() < 9e15 { J::from(n as i64) } else { J::from(n) })
                    .unwrap_or(J::Null),
                Some(FieldValue::Float(f)) => f.map(|f| J::from(f as f64)).unwrap_or(J::Null),
                Some(FieldValue::Double(f)) | Some(FieldValue::Currency(f)) => J::from(f),
                Some(FieldValue::Integer(n)) => J::from(n),
                Some(FieldValue::Logical(b)) => b.map(J::from).unwrap_or(J::Null),
                Some(FieldValue::Date(d)) => {
                    d.map(|d| J::String(format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()))).unwrap_or(J::Null)
                }
                Some(FieldValue::DateTime(dt)) => {
                    let d = dt.date();
                    J::String(format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()))
                }
                _ => J::Null,
            };
            values.get_mut(name).expect("field listed").push(v);
        }
    }
    let attrs = values.into_iter().map(|(k, v)| (k, json_column(v))).collect();
    Ok(FileTable { attrs, geoms, crs, skipped: 0 })
}

/// Reads the first feature table of a GeoPackage (strips the GeoPackage geometry header to plain WKB).
pub fn read_gpkg(path: &Path) -> Result<FileTable> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open GeoPackage {}", path.display()))?;
    let (table, column, srs_id): (String, String, i64) = conn
        .query_row(
            "SELECT c.table_name, g.column_name, g.srs_id FROM gpkg_contents c \
             JOIN gpkg_geometry_columns g ON g.table_name = c.table_name \
             WHERE c.data_type = 'features' ORDER BY c.table_name LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .with_context(|| format!("{}: not a GeoPackage with a feature table", path.display()))?;
    let crs: String = conn
        .query_row(
            "SELECT organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys WHERE srs_id = ?1",
            [srs_id],
            |r| {
                let org: String = r.get(0)?;
                let code: i64 = r.get(1)?;
                let def: String = r.get(2)?;
                Ok(if org.eq_ignore_ascii_case("EPSG") { format!("EPSG:{code}") } else { def })
            },
        )
        .with_context(|| format!("{}: srs_id {srs_id} is not in gpkg_spatial_ref_sys", path.display()))?;
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut stmt = conn.prepare(&format!("SELECT * FROM {}", quote(&table)))?;
    let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let geom_idx = names.iter().position(|n| n == &column).context("geometry column missing")?;
    let mut values: IndexMap<String, Vec<serde_json::Value>> =
        names.iter().enumerate().filter(|(i, _)| *i != geom_idx).map(|(_, n)| (n.clone(), Vec::new())).collect();
    let mut geoms = Vec::new();
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        for (i, name) in names.iter().enumerate() {
            use rusqlite::types::ValueRef as V;
            let v = row.get_ref(i)?;
            if i == geom_idx {
                geoms.push(match v {
                    V::Blob(b) => {
                        Some(gpkg_to_wkb(b).with_context(|| format!("{}: bad geometry blob", path.display()))?)
                    }
                    _ => None,
                });
                continue;
            }
            let j = match v {
                V::Null => serde_json::Value::Null,
                V::Integer(n) => serde_json::Value::from(n),
                V::Real(f) => serde_json::Value::from(f),
                V::Text(t) => serde_json::Value::String(String::from_utf8_lossy(t).into_owned()),
                V::Blob(_) => serde_json::Value::Null,
            };
            values.get_mut(name).expect("column listed").push(j);
        }
    }
    let attrs = values.into_iter().map(|(k, v)| (k, json_column(v))).collect();
    Ok(FileTable { attrs, geoms, crs, skipped: 0 })
}

/// The WKB inside a GeoPackage geometry blob ("GP", version, flags, srs id, envelope, WKB).
pub fn gpkg_to_wkb(b: &[u8]) -> Result<Vec<u8>> {
    if b.len() < 8 || &b[..2] != b"GP" {
        bail!("not a GeoPackage geometry (no GP header)");
    }
    let flags = b[3];
    let envelope = match (flags >> 1) & 0b111 {
        0 => 0,
        1 => 32,
        2 | 3 => 48,
        4 => 64,
        other => bail!("invalid envelope indicator {other}"),
    };
    let start = 8 + envelope;
    if b.len() < start {
        bail!("truncated GeoPackage geometry");
    }
    Ok(b[start..].to_vec())
}

/// Reads a CSV of points (`lat`/`lon` columns named in the manifest); a UTF-8 BOM is ignored. Rows whose
/// coordinates are missing or not numbers are left out and counted (reported as a warning).
pub fn read_csv_points(path: &Path, lat: &str, lon: &str, crs: Option<&str>) -> Result<FileTable> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let headers: Vec<String> =
        rdr.headers()?.iter().map(|h| h.trim_start_matches('\u{feff}').trim().to_string()).collect();
    let find = |name: &str, what: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow!("{}: no {what} column `{name}` (columns: {})", path.display(), headers.join(", ")))
    };
    let (ilat, ilon) = (find(lat, "latitude")?, find(lon, "longitude")?);
    let mut raw: Vec<Vec<Option<String>>> = vec![Vec::new(); headers.len()];
    let mut geoms = Vec::new();
    let mut skipped = 0;
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        let num = |j: usize| rec.get(j).and_then(|s| s.trim().parse::<f64>().ok()).filter(|v| v.is_finite());
        let (Some(y), Some(x)) = (num(ilat), num(ilon)) else {
            skipped += 1;
            continue;
        };
        geoms.push(Some(to_wkb(&Geometry::Point(Point::new(x, y)))));
        for (j, col) in raw.iter_mut().enumerate() {
            col.push(rec.get(j).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string));
        }
    }
    let attrs = headers
        .into_iter()
        .zip(raw)
        .map(|(h, values)| {
            let all_int = values.iter().flatten().all(|v| v.parse::<i64>().is_ok());
            let all_num = values.iter().flatten().all(|v| v.parse::<f64>().is_ok());
            let col = if all_int {
                Column::Int(values.iter().map(|v| v.as_ref().and_then(|s| s.parse().ok())).collect())
            } else if all_num {
                Column::Float(values.iter().map(|v| v.as_ref().and_then(|s| s.parse().ok())).collect())
            } else {
                Column::Text(values)
            };
            (h, col)
        })
        .collect();
    Ok(FileTable { attrs, geoms, crs: crs.unwrap_or("EPSG:4326").to_string(), skipped })
}

/// Reads one file of a dataset.
pub fn read_file(d: &Dataset, path: &Path) -> Result<FileTable> {
    let crs = d.crs.as_deref();
    match d.format {
        Format::Geojson => read_geojson(path, crs),
        Format::Shp => read_shapefile(path, crs),
        Format::Gpkg => read_gpkg(path),
        Format::Csv => {
            let (lat, lon) = (d.lat.as_deref().unwrap_or("lat"), d.lon.as_deref().unwrap_or("lon"));
            read_csv_points(path, lat, lon, crs)
        }
    }
}

/// Concatenates files of one dataset into its raw table (columns by name, then `geometry`, `source_file`).
pub fn raw_table(files: &DatasetFiles) -> Result<Table> {
    let d = &files.dataset;
    let mut attrs: IndexMap<String, Column> = IndexMap::new();
    let mut geoms: Vec<Option<Vec<u8>>> = Vec::new();
    let mut sources: Vec<String> = Vec::new();
    let mut crs: Option<(String, String)> = None;
    let mut skipped = 0;
    for f in &files.files {
        let t = read_file(d, &f.path).with_context(|| format!("dataset `{}`, file {}", d.key, f.name))?;
        Crs::parse(&t.crs).with_context(|| format!("dataset `{}`, file {}", d.key, f.name))?;
        match &crs {
            None => crs = Some((t.crs.clone(), f.name.clone())),
            Some((c, first)) if *c != t.crs => {
                bail!(
                    "dataset `{}`: files {first} and {} have different CRSs; split them into two datasets",
                    d.key,
                    f.name
                )
            }
            _ => {}
        }
        let before = geoms.len();
        let n = t.geoms.len();
        for (name, col) in t.attrs {
            let name = if name == "geometry" || name == "source_file" { format!("{name}_attr") } else { name };
            let existing = attrs.shift_remove(&name);
            let mut base = existing.unwrap_or_else(|| {
                let mut c = Column::Int(Vec::new());
                c.push_nulls(before);
                c
            });
            if base.len() < before {
                base.push_nulls(before - base.len());
            }
            attrs.insert(name, base.append(col));
        }
        for col in attrs.values_mut() {
            let len = col.len();
            if len < before + n {
                col.push_nulls(before + n - len);
            }
        }
        geoms.extend(t.geoms);
        sources.extend(std::iter::repeat_n(f.name.clone(), n));
        skipped += t.skipped;
    }
    if skipped > 0 {
        ctx::warn(format!("dataset `{}`: {skipped} rows without valid coordinates were left out", d.key));
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (name, col) in &attrs {
        let (dt, arr) = col.to_arrow();
        fields.push(Field::new(name, dt, true));
        columns.push(arr);
    }
    fields.push(wkb_field("geometry", true, None));
    columns.push(Arc::new(geoms.iter().map(|g| g.as_deref()).collect::<arrow_array::BinaryArray>()));
    fields.push(Field::new("source_file", DataType::Utf8, false));
    columns.push(Arc::new(StringArray::from(sources)));
    let mut meta = HashMap::new();
    meta.insert(SOURCE_CRS.to_string(), crs.map(|(c, _)| c).unwrap_or_else(|| "OGC:CRS84".into()));
    meta.insert("flowrun.dataset".to_string(), d.key.clone());
    let schema = Arc::new(Schema::new_with_metadata(fields, meta));
    Ok(Table::from_batch(RecordBatch::try_new(schema, columns)?))
}

/// A dataset's label files as one table, in their own CRS: the `raw_<dataset>` layer of the lake.
#[node(tags(stage = "raw"))]
pub fn raw(files: &DatasetFiles) -> Result<Table> {
    raw_table(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpkg_header_is_stripped() {
        let wkb = to_wkb(&Geometry::Point(Point::new(1.0, 2.0)));
        let mut blob = vec![b'G', b'P', 0, 0b0000_0011];
        blob.extend_from_slice(&4326i32.to_le_bytes());
        blob.extend_from_slice(&[0u8; 32]);
        blob.extend_from_slice(&wkb);
        assert_eq!(gpkg_to_wkb(&blob).unwrap(), wkb);
        assert!(gpkg_to_wkb(b"XX").is_err());
    }

    #[test]
    fn column_widening() {
        let c = Column::Int(vec![Some(1)]).append(Column::Float(vec![Some(2.5)]));
        assert!(matches!(c, Column::Float(ref v) if v == &vec![Some(1.0), Some(2.5)]));
        let t = Column::Int(vec![Some(1)]).append(Column::Text(vec![Some("a".into())]));
        assert!(matches!(t, Column::Text(ref v) if v == &vec![Some("1".to_string()), Some("a".to_string())]));
    }

    #[test]
    fn csv_missing_lat_column_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "\u{feff}id,y,x\n1,2,3\n").unwrap();
        let err = read_csv_points(&p, "lat", "x", None).err().unwrap().to_string();
        assert!(err.contains("no latitude column `lat` (columns: id, y, x)"), "{err}");
        let ok = read_csv_points(&p, "y", "x", None).unwrap();
        assert_eq!(ok.geoms.len(), 1);
        assert!(ok.attrs.contains_key("id"), "the BOM is not part of the first header");
    }
}
