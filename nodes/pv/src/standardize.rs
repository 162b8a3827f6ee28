//! `standardized` (reproject to EPSG:4326, unified columns, repair) and `measured` (geodesic area,
//! centroid): the per-dataset half of the pipeline.
//!
//! Unified columns, in order: `dataset_name, unified_id, source_id, geometry, source_area_m2, capacity_mw,
//! install_date, source_file, geometry_repaired, processed_at`; `measured` adds `area_m2, centroid_lat,
//! centroid_lon`, and `indexed` adds `h3_<res>`.
//!
//! `unified_id` is `<dataset>:<source id>`, or `<dataset>:row<n>` when the source row has no id (the
//! California CSV has one such row: it is kept, with a warning). A dataset read from several files
//! (ChinaPV's train and test shapefiles number their features from 0 each) gets the file stem in
//! between: `<dataset>:<file stem>:<source id>`. An id that still repeats gets `@row<n>` appended, with a
//! warning, so `unified_id` is always unique. `processed_at` is when `standardized` ran
//! for that dataset (UTC); it is the one column that is not a function of the inputs, and the cache keeps
//! it stable across reruns.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Field, Schema};
use flowrun_engine::{Table, ctx, node};
use rayon::prelude::*;

use super::crs::Crs;
use super::geom::{self, geometries, geometry_index, wkb_array, wkb_field};
use super::manifest::Dataset;
use super::read::SOURCE_CRS;

fn text_column(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
    let col = batch.column_by_name(name).ok_or_else(|| {
        let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        anyhow!("no column `{name}` (columns: {})", names.join(", "))
    })?;
    let fmt = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default())?;
    Ok((0..col.len()).map(|i| if col.is_null(i) { None } else { Some(fmt.value(i).to_string()) }).collect())
}

fn number_column(batch: &RecordBatch, name: &str, factor: f64) -> Result<Vec<Option<f64>>> {
    let col = batch.column_by_name(name).ok_or_else(|| anyhow!("no column `{name}`"))?;
    let f = arrow_cast::cast(col, &DataType::Float64).with_context(|| format!("column `{name}` is not numeric"))?;
    let f = f.as_any().downcast_ref::<Float64Array>().expect("cast to Float64");
    Ok(f.iter().map(|v| v.map(|v| v * factor)).collect())
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

/// The standardization of one raw table (see the module documentation).
/// `unified_id` per row (see the module doc for the rules).
fn unified_ids(dataset: &str, source_ids: &[Option<String>], files: &[Option<String>]) -> Vec<String> {
    let stem = |f: &Option<String>| {
        let f = f.as_deref().unwrap_or("");
        std::path::Path::new(f).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    };
    let several_files = files.iter().any(|f| f != &files[0]);
    let mut ids: Vec<String> = source_ids
        .iter()
        .zip(files)
        .enumerate()
        .map(|(i, (s, f))| match (s, several_files) {
            (Some(s), false) => format!("{dataset}:{s}"),
            (Some(s), true) => format!("{dataset}:{}:{s}", stem(f)),
            (None, _) => format!("{dataset}:row{i}"),
        })
        .collect();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for id in &ids {
        *seen.entry(id.clone()).or_default() += 1;
    }
    let repeated = ids.iter().filter(|id| seen[*id] > 1).count();
    if repeated > 0 {
        ctx::warn(format!("dataset `{dataset}`: {repeated} rows share a source id; they get `@row<n>` appended"));
        for (i, id) in ids.iter_mut().enumerate() {
            if seen[id.as_str()] > 1 {
                id.push_str(&format!("@row{i}"));
            }
        }
    }
    ids
}

pub fn standardize_table(raw: &Table, d: &Dataset, processed_at: &str) -> Result<Table> {
    let batch = raw.concat()?;
    let crs_text = raw.schema().metadata().get(SOURCE_CRS).cloned().unwrap_or_else(|| "OGC:CRS84".into());
    let crs = Crs::parse(&crs_text).with_context(|| format!("dataset `{}`", d.key))?;
    let gi = geometry_index(raw)?;
    let n = batch.num_rows();
    let files = text_column(&batch, "source_file")?;
    let mut geoms = geometries(batch.column(gi)).with_context(|| format!("dataset `{}`", d.key))?;
    let results: Vec<Result<bool>> = geoms
        .par_iter_mut()
        .enumerate()
        .map(|(i, g)| {
            let Some(geo) = g.take() else { return Ok(false) };
            let mut geo = geo;
            crs.to_wgs84(&mut geo).map_err(|e| {
                anyhow!("dataset `{}`, file {}, row {i}: {e}", d.key, files[i].as_deref().unwrap_or("?"))
            })?;
            let (fixed, repaired) = geom::repair(geo);
            *g = Some(fixed);
            Ok(repaired)
        })
        .collect();
    let repaired: Vec<bool> = results.into_iter().collect::<Result<_>>()?;
    let n_repaired = repaired.iter().filter(|r| **r).count();
    if n_repaired > 0 {
        ctx::warn(format!(
            "dataset `{}`: {n_repaired} invalid geometries were repaired (geometry_repaired = true)",
            d.key
        ));
    }
    let empty = geoms.iter().filter(|g| g.is_none()).count();
    if empty > 0 {
        ctx::warn(format!("dataset `{}`: {empty} rows have no geometry (kept, geometry is null)", d.key));
    }
    let source_ids: Vec<Option<String>> = match &d.id {
        Some(col) => text_column(&batch, col).with_context(|| format!("dataset `{}`: `id`", d.key))?,
        None => vec![None; n],
    };
    let missing = source_ids.iter().filter(|s| s.is_none()).count();
    if d.id.is_some() && missing > 0 {
        ctx::warn(format!(
            "dataset `{}`: {missing} rows have no `{}`; their unified_id is `<dataset>:row<n>`",
            d.key,
            d.id.as_deref().unwrap_or("")
        ));
    }
    let unified = unified_ids(&d.key, &source_ids, &files);
    let area = match &d.area {
        Some(c) => number_column(&batch, c, d.area_factor.unwrap_or(1.0))
            .with_context(|| format!("dataset `{}`: `area`", d.key))?,
        None => vec![None; n],
    };
    let capacity = match &d.capacity {
        Some(c) => number_column(&batch, c, d.capacity_factor.unwrap_or(1.0))
            .with_context(|| format!("dataset `{}`: `capacity`", d.key))?,
        None => vec![None; n],
    };
    let install = match &d.install_date {
        Some(c) => text_column(&batch, c).with_context(|| format!("dataset `{}`: `install_date`", d.key))?,
        None => vec![None; n],
    };
    let fields = vec![
        Field::new("dataset_name", DataType::Utf8, false),
        Field::new("unified_id", DataType::Utf8, false),
        Field::new("source_id", DataType::Utf8, true),
        wkb_field("geometry", true, None),
        Field::new("source_area_m2", DataType::Float64, true),
        Field::new("capacity_mw", DataType::Float64, true),
        Field::new("install_date", DataType::Utf8, true),
        Field::new("source_file", DataType::Utf8, true),
        Field::new("geometry_repaired", DataType::Boolean, false),
        Field::new("processed_at", DataType::Utf8, false),
    ];
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![d.key.as_str(); n])),
        Arc::new(StringArray::from(unified)),
        Arc::new(source_ids.iter().map(|s| s.as_deref()).collect::<StringArray>()),
        wkb_array(&geoms),
        Arc::new(Float64Array::from(area)),
        Arc::new(Float64Array::from(capacity)),
        Arc::new(install.iter().map(|s| s.as_deref()).collect::<StringArray>()),
        Arc::new(files.iter().map(|s| s.as_deref()).collect::<StringArray>()),
        Arc::new(BooleanArray::from(repaired)),
        Arc::new(StringArray::from(vec![processed_at; n])),
    ];
    Ok(Table::from_batch(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?))
}

/// Reprojects a dataset's raw table to EPSG:4326, drops Z, repairs invalid geometries and maps its columns
/// to the unified schema.
#[node(tags(stage = "staging"))]
pub fn standardized(raw: &Table, datasets: &Dataset) -> Result<Table> {
    standardize_table(raw, datasets, &now_utc())
}

/// Adds geodesic area (m², WGS84 ellipsoid; 0 for points) and centroid (degrees) to a standardized table.
pub fn measure_table(t: &Table) -> Result<Table> {
    let batch = t.concat()?;
    let gi = geometry_index(t)?;
    let geoms = geometries(batch.column(gi))?;
    let stats: Vec<(Option<f64>, Option<f64>, Option<f64>)> = geoms
        .par_iter()
        .map(|g| match g {
            Some(g) => {
                let c = geom::centroid(g);
                (Some(geom::geodesic_area(g)), c.map(|p| p.y()), c.map(|p| p.x()))
            }
            None => (None, None, None),
        })
        .collect();
    let batch = geom::with_column(
        &batch,
        Field::new("area_m2", DataType::Float64, true),
        Arc::new(stats.iter().map(|s| s.0).collect::<Float64Array>()),
    )?;
    let batch = geom::with_column(
        &batch,
        Field::new("centroid_lat", DataType::Float64, true),
        Arc::new(stats.iter().map(|s| s.1).collect::<Float64Array>()),
    )?;
    let batch = geom::with_column(
        &batch,
        Field::new("centroid_lon", DataType::Float64, true),
        Arc::new(stats.iter().map(|s| s.2).collect::<Float64Array>()),
    )?;
    Ok(Table::from_batch(batch))
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
        let s = |v: &str| Some(v.to_string());
        // one file: <dataset>:<id>; a missing id: <dataset>:row<n>
        let ids = unified_ids("d", &[s("7"), None], &[s("x.csv"), s("x.csv")]);
        assert_eq!(ids, ["d:7", "d:row1"]);
        // several files numbering from 0 each: the file stem in between; a repeat gets @row<n>
        let ids = unified_ids(
            "c",
            &[s("0"), s("0"), s("0")],
            &[s("dir/PV_Test.shp"), s("dir/PV_Train.shp"), s("dir/PV_Train.shp")],
        );
        assert_eq!(ids, ["c:PV_Test:0", "c:PV_Train:0@row1", "c:PV_Train:0@row2"]);
    }
}
