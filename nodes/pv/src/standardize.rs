//! `standardized` (rows kept, reprojected to EPSG:4326, repaired, unified columns) and `measured`
//! (geodesic area, centroid): the per-dataset half of the pipeline.
//!
//! Unified columns, in order: `dataset_name, unified_id, source_id, geometry, area_m2_source, capacity_mw,
//! install_date, source_file, source_row, geometry_repaired, processed_at`; `measured` adds `area_m2,
//! centroid_lat, centroid_lon`, and `indexed` adds `h3_<res>`.
//!
//! Rows: a raw row is dropped, and counted by reason in the dataset's note, when the manifest's `filter`
//! does not keep it or when it has no geometry (a CSV row without coordinates). Every other row is kept.
//! A coordinate that lands outside lon [-180, 180] / lat [-90, 90] after reprojection is an error naming the
//! dataset, file and row (a wrong CRS, not a row to drop). Invalid polygons are repaired
//! (`geometry_repaired = true`); one that cannot be repaired is kept as it is and reported by id.
//!
//! `unified_id` is `<dataset>:<source id>`, the source id as written (`00123` stays `00123`). A dataset
//! read from several files (ChinaPV's train and test shapefiles number their features from 0 each) gets
//! the file stem in between: `<dataset>:<file stem>:<source id>`. A row without a source id (or a dataset
//! without an `id` column) gets `row<n>`, n being its position in its file. An id that still repeats gets
//! `@row<n>` appended, with a warning, so `unified_id` is always unique.
//!
//! `processed_at` is when `standardized` ran for the dataset (UTC). It is the one column that is not a
//! function of the inputs, so it is marked volatile (`flowrun_engine::table::VOLATILE`): a re-run that
//! changes nothing else does not re-run what is downstream, nor rewrite the lake.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::builder::StringBuilder;
use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Field, Schema};
use flowrun_engine::{Table, ctx, node};
use rayon::prelude::*;

use super::crs::Crs;
use super::geom::{self, Repair, geometries, geometry_index, wkb_array, wkb_field};
use super::manifest::{AxisOrder, Dataset, Format};
use super::read::{SOURCE_CRS, parse_number};

/// A column as text: itself when it is text (shared, not copied), else each value as Arrow displays it.
fn text_column(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    let col = batch.column_by_name(name).ok_or_else(|| {
        let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        anyhow!("no column `{name}` (columns: {})", names.join(", "))
    })?;
    if let Some(text) = col.as_any().downcast_ref::<StringArray>() {
        return Ok(text.clone());
    }
    let fmt = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default())?;
    let mut text = StringBuilder::with_capacity(col.len(), col.len() * 8);
    for i in 0..col.len() {
        if col.is_null(i) {
            text.append_null();
        } else {
            write!(text, "{}", fmt.value(i))?;
            text.append_value("");
        }
    }
    Ok(text.finish())
}

/// A number column (`area`, `capacity`) times `factor`. Text cells are parsed (with the manifest's
/// `thousands` separator); a cell that is not a number is null and counted, and the first one is quoted in
/// a warning: never silently null.
fn number_column(
    batch: &RecordBatch,
    name: &str,
    factor: f64,
    d: &Dataset,
    at: &dyn Fn(usize) -> String,
) -> Result<Vec<Option<f64>>> {
    let col = batch.column_by_name(name).ok_or_else(|| anyhow!("no column `{name}`"))?;
    if col.data_type().is_numeric() {
        let f = arrow_cast::cast(col, &DataType::Float64)?;
        let f = f.as_any().downcast_ref::<Float64Array>().context("a cast to Float64 gives Float64")?;
        return Ok(f.iter().map(|v| v.map(|v| v * factor)).collect());
    }
    let texts = text_column(batch, name)?;
    let mut bad = (0, None);
    let values = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let t = t?.trim();
            let v = parse_number(t, d.thousands.as_deref());
            if v.is_none() && !t.is_empty() {
                bad.0 += 1;
                bad.1.get_or_insert_with(|| format!("\"{t}\" at {}", at(i)));
            }
            v.map(|v| v * factor)
        })
        .collect();
    if let (n, Some(example)) = bad {
        let hint = if d.thousands.is_none() { " (if they use a thousands separator, set `thousands`)" } else { "" };
        ctx::warn(format!(
            "dataset `{}`: column `{name}`: {n} values are not numbers, e.g. {example}; they are null{hint}",
            d.key
        ));
    }
    Ok(values)
}

fn now_utc() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A `source_file` label (the file's path within the dataset) without its extension: `PV_Train.shp` ->
/// `PV_Train`, `2019/plants.csv` -> `2019/plants`, `x.gpkg#layer` -> `x#layer`. Distinct files keep distinct
/// labels (one dataset has one format).
fn stem(label: &str) -> String {
    let (file, layer) = label.split_once('#').map(|(f, l)| (f, Some(l))).unwrap_or((label, None));
    let path = std::path::Path::new(file);
    let s = path.with_extension("").to_string_lossy().into_owned();
    match layer {
        Some(l) => format!("{s}#{l}"),
        None => s,
    }
}

/// `unified_id` per row (see the module documentation). `rows` are the rows' positions in their files.
fn unified_ids(
    dataset: &str,
    source_ids: &StringArray,
    files: &StringArray,
    rows: &[i64],
    several_files: bool,
) -> StringArray {
    // a file's stem once per file, not per row
    let mut stems: HashMap<&str, String> = HashMap::new();
    let mut write_ids = |suffix: &dyn Fn(usize) -> bool| -> StringArray {
        let mut ids = StringBuilder::with_capacity(rows.len(), rows.len() * (dataset.len() + 12));
        for (i, row) in rows.iter().enumerate() {
            let _ = write!(ids, "{dataset}:");
            if several_files {
                let file = text(files, i).unwrap_or("");
                let _ = write!(ids, "{}:", stems.entry(file).or_insert_with(|| stem(file)));
            }
            let _ = match text(source_ids, i) {
                Some(own) => write!(ids, "{own}"),
                None => write!(ids, "row{row}"),
            };
            if suffix(i) {
                let _ = write!(ids, "@row{row}");
            }
            ids.append_value("");
        }
        ids.finish()
    };
    let ids = write_ids(&|_| false);
    let mut seen = HashMap::<&str, u32>::with_capacity(ids.len());
    for id in ids.iter().flatten() {
        *seen.entry(id).or_default() += 1;
    }
    let repeated: Vec<bool> = ids.iter().map(|id| id.is_some_and(|id| seen[id] > 1)).collect();
    let n = repeated.iter().filter(|r| **r).count();
    if n == 0 {
        return ids;
    }
    ctx::warn(format!("dataset `{dataset}`: {n} rows share a source id; they get `@row<n>` appended"));
    write_ids(&|i| repeated[i])
}

/// The text at `i`, `None` when null.
fn text(a: &StringArray, i: usize) -> Option<&str> {
    a.is_valid(i).then(|| a.value(i))
}

/// Which rows of `batch` to keep, and how many were dropped for which reason.
fn kept_rows(batch: &RecordBatch, d: &Dataset, has_geometry: &[bool]) -> Result<(Vec<bool>, BTreeMap<String, usize>)> {
    let n = batch.num_rows();
    let mut keep = vec![true; n];
    let mut dropped = BTreeMap::new();
    for (column, allowed) in &d.filter {
        let values = text_column(batch, column).with_context(|| format!("dataset `{}`: `filter`", d.key))?;
        for (kept, value) in keep.iter_mut().zip(values.iter()) {
            let ok = value.is_some_and(|v| allowed.values().iter().any(|a| a == v));
            if *kept && !ok {
                *kept = false;
                *dropped.entry(format!("not kept by the filter on `{column}`")).or_default() += 1;
            }
        }
    }
    let missing = if d.format == Format::Csv { "without coordinates" } else { "without geometry" };
    for i in 0..n {
        if keep[i] && !has_geometry[i] {
            keep[i] = false;
            *dropped.entry(missing.to_string()).or_default() += 1;
        }
    }
    Ok((keep, dropped))
}

/// Each file's CRS (resolved) and where it was learned, from the raw table's metadata.
fn source_crs(raw: &Table, d: &Dataset) -> Result<HashMap<String, (Crs, String)>> {
    let meta = raw.schema().metadata().get(SOURCE_CRS).map(String::as_str).unwrap_or("{}");
    let by_file: BTreeMap<String, (String, String)> =
        serde_json::from_str(meta).with_context(|| format!("dataset `{}`: the raw table's CRS metadata", d.key))?;
    by_file
        .into_iter()
        .map(|(file, (spec, origin))| {
            let crs = Crs::parse(&spec)
                .with_context(|| format!("dataset `{}`, file {file}: its CRS (from {origin})", d.key))?;
            Ok((file, (crs, origin)))
        })
        .collect()
}

/// `CRS <label> (from <origin>; datum shift <shift>)`, once per distinct CRS, with its files when there are
/// several.
fn crs_text(crs_of: &HashMap<String, (Crs, String)>) -> String {
    let mut by_crs: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (file, (crs, origin)) in crs_of {
        let what = format!("{} (from {origin}; datum shift: {})", crs.label(), crs.datum_shift());
        by_crs.entry(what).or_default().push(file);
    }
    match by_crs.len() {
        0 => "CRS WGS 84 lon/lat assumed (the raw table records none)".to_string(),
        1 => format!("CRS {}", by_crs.into_keys().next().unwrap_or_default()),
        _ => {
            let parts: Vec<String> = by_crs
                .into_iter()
                .map(|(what, mut files)| {
                    files.sort();
                    format!("{what} for {}", files.join(", "))
                })
                .collect();
            format!("CRSs {}", parts.join("; "))
        }
    }
}

/// Reprojects every geometry to WGS84 with its file's CRS and repairs it (`geoms` are the rows from `first`
/// on). A coordinate that cannot be a WGS84 position fails the dataset, naming the file, the row, the CRS used
/// and the fix.
fn reproject_and_repair(
    geoms: &mut [Option<geo::Geometry<f64>>],
    first: usize,
    files: &StringArray,
    crs_of: &HashMap<String, (Crs, String)>,
    d: &Dataset,
    at: &(dyn Fn(usize) -> String + Sync),
) -> Result<Vec<Repair>> {
    // a raw table from a reader that records no CRS at all is read as WGS84 (and the note says so); one that
    // records CRSs but not this row's file is a reader's bug, not a guess to make silently
    let wgs84 = (Crs::wgs84(), "an assumption: the raw table records no CRS".to_string());
    geoms
        .par_iter_mut()
        .enumerate()
        .map(|(k, g)| {
            let i = first + k;
            let Some(mut geo) = g.take() else { return Ok(Repair::Valid) };
            let (crs, origin) = match text(files, i).and_then(|f| crs_of.get(f)) {
                Some(known) => known,
                None if crs_of.is_empty() => &wgs84,
                None => bail!(
                    "dataset `{}`, {}: the raw table records no CRS for file {}; give the dataset crs = \"EPSG:<code>\"",
                    d.key,
                    at(i),
                    text(files, i).unwrap_or("(none)")
                ),
            };
            let crs = crs.clone().with_lat_lon_order(d.axis_order == AxisOrder::LatLon);
            crs.to_wgs84(&mut geo).map_err(|e| {
                anyhow!(
                    "dataset `{}`, {}: {e:#}; the coordinates were read as {} (from {origin}): if they are in \
                     another CRS, give the dataset crs = \"EPSG:<code>\"",
                    d.key,
                    at(i),
                    crs.label()
                )
            })?;
            let (fixed, repair) = geom::repair(geo);
            *g = Some(fixed);
            Ok(repair)
        })
        .collect()
}

/// Warns about the repaired geometries, and names those that could not be repaired.
fn report_repairs(d: &Dataset, repairs: &[Repair], ids: &StringArray) {
    let repaired = repairs.iter().filter(|r| **r == Repair::Repaired).count();
    if repaired > 0 {
        ctx::warn(format!(
            "dataset `{}`: {repaired} invalid geometries were repaired (geometry_repaired = true)",
            d.key
        ));
    }
    let unrepairable: Vec<&str> =
        repairs.iter().zip(ids).filter(|(r, _)| **r == Repair::Unrepairable).filter_map(|(_, id)| id).collect();
    if !unrepairable.is_empty() {
        let shown: Vec<&str> = unrepairable.iter().take(10).copied().collect();
        ctx::warn(format!(
            "dataset `{}`: {} invalid geometries could not be repaired and are kept as they are (their area and \
             overlaps are unreliable): {}{}",
            d.key,
            unrepairable.len(),
            shown.join(", "),
            if unrepairable.len() > shown.len() { ", ..." } else { "" }
        ));
    }
}

/// The standardization of one raw table (see the module documentation): the rows kept, reprojected and
/// repaired, their ids, the unified columns, and the dataset's note.
pub fn standardize_table(raw: &Table, d: &Dataset, processed_at: &str) -> Result<Table> {
    let all = raw.concat()?;
    let crs_of = source_crs(raw, d)?;
    let gi = geometry_index(raw)?;
    let has_geometry: Vec<bool> = (0..all.num_rows()).map(|i| !all.column(gi).is_null(i)).collect();
    let several_files = {
        let files = text_column(&all, "source_file")?;
        files.iter().any(|f| f != files.iter().next().flatten())
    };
    let (keep, dropped) = kept_rows(&all, d, &has_geometry)?;
    let read = all.num_rows();
    let batch = match keep.iter().all(|k| *k) {
        true => all,
        false => arrow_select::filter::filter_record_batch(&all, &BooleanArray::from(keep))?,
    };
    let n = batch.num_rows();
    let files = text_column(&batch, "source_file")?;
    let rows: Vec<i64> = match batch.column_by_name("source_row").and_then(|c| c.as_any().downcast_ref::<Int64Array>())
    {
        Some(r) => r.values().to_vec(),
        None => (0..n as i64).collect(),
    };
    let at = |i: usize| format!("file {}, row {} (counting from 0)", text(&files, i).unwrap_or("?"), rows[i]);

    // decoded, reprojected, repaired and written back as WKB a chunk of rows at a time: the dataset's
    // geometries are never all decoded at once (at 5M rows they were about 1 GB)
    let mut repairs = Vec::with_capacity(n);
    let mut wkb = Vec::new();
    for first in (0..n).step_by(CHUNK) {
        let mut geoms = geometries(&batch.column(gi).slice(first, CHUNK.min(n - first)))
            .with_context(|| format!("dataset `{}`", d.key))?;
        repairs.extend(reproject_and_repair(&mut geoms, first, &files, &crs_of, d, &at)?);
        wkb.push(wkb_array(&geoms));
    }
    let source_ids = match &d.id {
        Some(col) => text_column(&batch, col).with_context(|| format!("dataset `{}`: `id`", d.key))?,
        None => StringArray::new_null(n),
    };
    let missing_ids = source_ids.null_count();
    if let (Some(col), true) = (&d.id, missing_ids > 0) {
        ctx::warn(format!("dataset `{}`: {missing_ids} rows have no `{col}`; their id is `row<n>`", d.key));
    }
    let unified = unified_ids(&d.key, &source_ids, &files, &rows, several_files);
    report_repairs(d, &repairs, &unified);
    let numbers = |col: &Option<String>, factor: Option<f64>, what: &str| -> Result<Vec<Option<f64>>> {
        match col {
            Some(c) => number_column(&batch, c, factor.unwrap_or(1.0), d, &at)
                .with_context(|| format!("dataset `{}`: `{what}`", d.key)),
            None => Ok(vec![None; n]),
        }
    };
    let area = numbers(&d.area, d.area_factor, "area")?;
    let capacity = numbers(&d.capacity, d.capacity_factor, "capacity")?;
    let install = match &d.install_date {
        Some(c) => text_column(&batch, c).with_context(|| format!("dataset `{}`: `install_date`", d.key))?,
        None => StringArray::new_null(n),
    };

    let dropped_text: String = dropped.iter().map(|(why, k)| format!(", {k} dropped ({why})")).collect();
    ctx::note(format!("dataset `{}`: {}; {read} rows read, {n} kept{dropped_text}", d.key, crs_text(&crs_of)));

    let volatile = HashMap::from([(flowrun_engine::table::VOLATILE.to_string(), "true".to_string())]);
    let fields = vec![
        Field::new("dataset_name", DataType::Utf8, false),
        Field::new("unified_id", DataType::Utf8, false),
        Field::new("source_id", DataType::Utf8, true),
        wkb_field("geometry", true, None),
        Field::new("area_m2_source", DataType::Float64, true),
        Field::new("capacity_mw", DataType::Float64, true),
        Field::new("install_date", DataType::Utf8, true),
        Field::new("source_file", DataType::Utf8, true),
        Field::new("source_row", DataType::Int64, false),
        Field::new("geometry_repaired", DataType::Boolean, false),
        Field::new("processed_at", DataType::Utf8, false).with_metadata(volatile),
    ];
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![d.key.as_str(); n])),
        Arc::new(unified),
        Arc::new(source_ids),
        arrow_array::new_null_array(&DataType::Binary, n), // the chunks' WKB, below
        Arc::new(Float64Array::from(area)),
        Arc::new(Float64Array::from(capacity)),
        Arc::new(install),
        Arc::new(files),
        Arc::new(Int64Array::from(rows)),
        Arc::new(repairs.iter().map(|r| Some(*r == Repair::Repaired)).collect::<BooleanArray>()),
        Arc::new(StringArray::from(vec![processed_at; n])),
    ];
    let whole = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    // one batch per chunk: the other columns sliced (shared, not copied), the chunk's WKB put in
    let chunks = (wkb.into_iter().enumerate())
        .map(|(c, w)| geom::with_column(&whole.slice(c * CHUNK, w.len()), wkb_field("geometry", true, None), w));
    Ok(Table::try_new(whole.schema(), chunks.collect::<Result<_>>()?)?)
}

/// Rows per chunk of [`standardize_table`]: how many geometries are decoded at once.
const CHUNK: usize = 1 << 16;

/// Keeps the dataset's rows that have a geometry and pass its `filter`, reprojects them to EPSG:4326,
/// drops Z, repairs invalid polygons and maps the columns to the unified schema.
#[node(tags(stage = "staging"))]
pub fn standardized(raw: &Table, datasets: &Dataset) -> Result<Table> {
    standardize_table(raw, datasets, &now_utc())
}

/// Adds geodesic area (m², WGS84 ellipsoid; 0 for points) and centroid (degrees) to a standardized table,
/// batch by batch (the columns are shared, not copied; geometries are decoded a batch at a time).
pub fn measure_table(t: &Table) -> Result<Table> {
    let gi = geometry_index(t)?;
    geom::map_batches(t, |batch| {
        let geoms = geometries(batch.column(gi))?;
        // per row: area, centroid latitude, centroid longitude
        let stats: Vec<[Option<f64>; 3]> = geoms
            .par_iter()
            .map(|g| match g {
                Some(g) => {
                    let c = geom::centroid(g);
                    [Some(geom::geodesic_area(g)), c.map(|p| p.y()), c.map(|p| p.x())]
                }
                None => [None; 3],
            })
            .collect();
        let column = |k: usize| -> ArrayRef { Arc::new(stats.iter().map(|s| s[k]).collect::<Float64Array>()) };
        let b = geom::with_column(batch, Field::new("area_m2", DataType::Float64, true), column(0))?;
        let b = geom::with_column(&b, Field::new("centroid_lat", DataType::Float64, true), column(1))?;
        geom::with_column(&b, Field::new("centroid_lon", DataType::Float64, true), column(2))
    })
}

/// Geometry statistics: geodesic area and centroid.
#[node(tags(stage = "staging"))]
pub fn measured(standardized: &Table) -> Result<Table> {
    measure_table(standardized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_ids_are_unique_and_say_where_they_come_from() {
        let texts = |v: &[Option<&str>]| StringArray::from(v.to_vec());
        let strings = |a: StringArray| a.iter().map(|s| s.unwrap().to_string()).collect::<Vec<_>>();
        // one file: <dataset>:<id>; a missing id: <dataset>:row<n>, n its row in the file
        let ids = unified_ids("d", &texts(&[Some("00123"), None]), &texts(&[Some("x.csv"); 2]), &[0, 5], false);
        assert_eq!(strings(ids), ["d:00123", "d:row5"]);
        // several files numbering from 0 each: the file stem in between; a repeat gets @row<n>
        let ids = unified_ids(
            "c",
            &texts(&[Some("0"), Some("0"), Some("0"), None, Some("1"), Some("1")]),
            &texts(&[
                Some("PV_Test.shp"),
                Some("PV_Train.shp"),
                Some("PV_Train.shp"),
                Some("x.gpkg#farms"),
                Some("2019/a.csv"),
                Some("2020/a.csv"),
            ]),
            &[0, 0, 1, 7, 0, 0],
            true,
        );
        assert_eq!(
            strings(ids),
            ["c:PV_Test:0", "c:PV_Train:0@row0", "c:PV_Train:0@row1", "c:x#farms:row7", "c:2019/a:1", "c:2020/a:1"]
        );
    }
}
