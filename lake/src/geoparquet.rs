//! GeoParquet files: GeoParquet 1.1 with `geo` metadata and a bbox covering column, written to a temporary
//! name and renamed, so no partial file ever sits at the final path.
//!
//! Two writers exist; flowrun uses [`write`] (the `geoparquet` crate of geoarrow-rs) because DuckDB's
//! `COPY ... (FORMAT parquet, GEOPARQUET_VERSION ...)` writes GeoParquet 1.0 metadata without a bbox
//! covering column (checked with DuckDB 1.5.5), and because it writes straight from the Arrow batches
//! nodes produce. [`write_with_duckdb`] is kept for the benchmark that compares the two.
//!
//! The table's own schema metadata is written as file metadata too (stac-geoparquet's `stac-geoparquet`
//! key). The `geo` metadata lists, per geometry column: encoding `WKB`, `geometry_types` (found in the data),
//! `bbox`, `covering.bbox` (pointing at the `<column>_bbox` struct column), and `crs`: omitted when the
//! column's CRS is OGC:CRS84 / unspecified (which GeoParquet defines as OGC:CRS84), PROJJSON otherwise.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use flowrun_engine::Table;
use geoparquet::writer::{GeoParquetRecordBatchEncoder, GeoParquetWriterEncoding, GeoParquetWriterOptionsBuilder};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowLeafColumn, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use serde::Serialize;

use crate::duck::{Duck, literal};

/// What a GeoParquet write did.
#[derive(Debug, Clone, Serialize)]
pub struct GeoParquetWrite {
    /// Final path.
    pub path: PathBuf,
    /// Rows written.
    pub rows: u64,
    /// File size.
    pub bytes: u64,
    /// Seconds spent.
    pub seconds: f64,
}

/// Names of the `geoarrow.wkb` columns of a table.
pub fn geometry_columns(table: &Table) -> Vec<String> {
    table
        .schema()
        .fields()
        .iter()
        .filter(|f| f.metadata().get("ARROW:extension:name").is_some_and(|n| n == "geoarrow.wkb"))
        .map(|f| f.name().clone())
        .collect()
}

/// A temporary file beside `path`, named `.flowrun~<host>~<pid>~<random>~<name>.tmp` (see
/// [`remove_dead_temporaries`]).
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = dir_of(path);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".flowrun~{}~{}~", host(), std::process::id());
    tempfile::Builder::new().prefix(&prefix).suffix(&format!("~{name}.tmp")).tempfile_in(dir).map_err(Into::into)
}

/// The directory `path` is in (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().replace('~', "-")).unwrap_or_default()
}

/// Removes the temporaries of [`temp_beside`] in the directory of `beside` that a process of this host left
/// and that no longer runs (a killed run's), so that none stays forever. Only files named by `temp_beside`
/// are touched, and only this host's (a directory on a shared filesystem may hold another machine's running
/// export). Called before every GeoParquet materialization, written or unchanged.
pub fn remove_dead_temporaries(beside: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let here = host();
    for e in std::fs::read_dir(dir_of(beside)).into_iter().flatten().flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(".flowrun~").filter(|_| file.ends_with(".tmp")) else { continue };
        let mut parts = rest.split('~');
        let (Some(host), Some(pid)) = (parts.next(), parts.next().and_then(|p| p.parse::<u32>().ok())) else {
            continue;
        };
        if host == here && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Rows per row group.
const ROW_GROUP_ROWS: usize = 64 * 1024;

/// `batches` cut into row groups of `rows` rows (the last may be shorter), each a list of slices.
fn row_groups(batches: &[RecordBatch], rows: usize) -> Vec<Vec<RecordBatch>> {
    let mut groups: Vec<Vec<RecordBatch>> = Vec::new();
    let mut room = 0;
    for batch in batches {
        let mut at = 0;
        while at < batch.num_rows() {
            if room == 0 {
                groups.push(Vec::new());
                room = rows;
            }
            let n = room.min(batch.num_rows() - at);
            groups.last_mut().expect("a group was started").push(batch.slice(at, n));
            (at, room) = (at + n, room - n);
        }
    }
    groups
}

/// Parquet dictionaries only for the columns whose values repeat: Arrow dictionary columns, and text
/// columns with at most one value in ten distinct among the first 4,096 rows of the first batch that has
/// rows (a dataset's name, a country). For the others (ids, H3 cells, numbers, the WKB and its bbox) the
/// writer would fill a dictionary for each column chunk only to fall back to plain pages: on the PV flow's
/// 883K-row table that made the file 18% larger and its writing about 15% slower (BENCHMARKS.md).
fn dictionaries(props: WriterPropertiesBuilder, table: &Table) -> WriterPropertiesBuilder {
    let Some(first) = table.batches().iter().find(|b| b.num_rows() > 0) else { return props };
    let n = first.num_rows().min(4096);
    let repeats = |column: &ArrayRef| {
        let distinct: HashSet<Option<&str>> = match column.data_type() {
            DataType::Dictionary(..) => return true,
            DataType::Utf8 => column.as_string::<i32>().iter().take(n).collect(),
            DataType::LargeUtf8 => column.as_string::<i64>().iter().take(n).collect(),
            DataType::Utf8View => column.as_string_view().iter().take(n).collect(),
            _ => return false,
        };
        distinct.len() * 10 <= n
    };
    let fields = table.schema().fields().iter().zip(first.columns());
    fields.filter(|(_, column)| repeats(column)).fold(props.set_dictionary_enabled(false), |props, (field, _)| {
        props.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), true)
    })
}

/// Encodes row group `index` (its slices), each column chunk a parallel task.
fn encode_row_group(
    groups: &ArrowRowGroupWriterFactory,
    index: usize,
    schema: &SchemaRef,
    slices: &[RecordBatch],
) -> Result<Vec<ArrowColumnChunk>> {
    let writers = groups.create_column_writers(index)?;
    let mut leaves: Vec<Vec<ArrowLeafColumn>> = writers.iter().map(|_| Vec::new()).collect();
    for slice in slices {
        // a struct column (the bbox covering) has a leaf, and a writer, per field
        let mut k = 0;
        for (field, column) in schema.fields().iter().zip(slice.columns()) {
            for leaf in compute_leaves(field, column)? {
                leaves[k].push(leaf);
                k += 1;
            }
        }
    }
    writers
        .into_par_iter()
        .zip(leaves)
        .map(|(mut writer, leaves)| {
            leaves.iter().try_for_each(|leaf| writer.write(leaf))?;
            Ok(writer.close()?)
        })
        .collect()
}

/// Writes `table` as GeoParquet 1.1 to a temporary file beside `path`; [`commit`] renames it into place.
pub fn write_pending(
    table: &Table,
    path: &Path,
    primary: Option<&str>,
) -> Result<(tempfile::NamedTempFile, GeoParquetWrite)> {
    write_pending_on(table, path, primary, crate::duck::threads())
}

/// [`write_pending`], its row groups encoded on `threads` threads (the file is the same for any number).
fn write_pending_on(
    table: &Table,
    path: &Path,
    primary: Option<&str>,
    threads: usize,
) -> Result<(tempfile::NamedTempFile, GeoParquetWrite)> {
    let started = Instant::now();
    let geoms = geometry_columns(table);
    if geoms.is_empty() {
        bail!("the table has no geometry column (a Binary column with the geoarrow.wkb extension type)");
    }
    let primary = match primary {
        Some(p) if geoms.iter().any(|g| g == p) => p.to_string(),
        Some(p) => bail!("`{p}` is not a geometry column; geometry columns: {}", geoms.join(", ")),
        None => geoms.iter().find(|g| *g == "geometry").unwrap_or(&geoms[0]).clone(),
    };
    let options = GeoParquetWriterOptionsBuilder::default()
        .set_primary_column(primary)
        .set_encoding(GeoParquetWriterEncoding::WKB)
        .set_generate_covering(true)
        .build();
    let mut encoder = GeoParquetRecordBatchEncoder::try_new(table.schema(), &options)
        .map_err(|e| anyhow!("cannot prepare GeoParquet encoding: {e}"))?;
    let tmp = temp_beside(path)?;
    // zstd level 1: 10-20% less time than level 3 for the same size (BENCHMARKS.md, lake writers)
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    let props = dictionaries(props, table).build();
    let file: File = tmp.reopen()?;
    let schema = encoder.target_schema();
    // ArrowWriter for the file's layout and its Arrow schema metadata; row groups are encoded below
    let (mut writer, groups) = ArrowWriter::try_new(file, schema.clone(), Some(props))?.into_serialized_writer()?;
    let slices = row_groups(table.batches(), ROW_GROUP_ROWS);
    // as many row groups at a time as there are threads, every column chunk of them a task of its own (the
    // geometry column is most of the work, so one row group's columns alone would not keep two cores busy);
    // the chunks are appended in order, so the file is the same whatever the number of threads
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    for (w, window) in slices.chunks(pool.current_num_threads()).enumerate() {
        // the bbox covering column added a window at a time, not to the whole table at once
        let window = window
            .iter()
            .map(|group| group.iter().map(|b| encoder.encode_record_batch(b)).collect::<Result<Vec<_>, _>>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("cannot encode a batch: {e}"))?;
        let first = w * pool.current_num_threads();
        let chunks: Vec<Vec<ArrowColumnChunk>> = pool.install(|| {
            window
                .par_iter()
                .enumerate()
                .map(|(i, group)| encode_row_group(&groups, first + i, &schema, group))
                .collect::<Result<_>>()
        })?;
        for group in chunks {
            let mut rg = writer.next_row_group()?;
            for chunk in group {
                chunk.append_to_row_group(&mut rg)?;
            }
            rg.close()?;
        }
    }
    let mut geo = encoder.into_keyvalue().map_err(|e| anyhow!("GeoParquet metadata: {e}"))?;
    // a table without rows has no extent: its columns' `bbox` is left out (the crate writes nulls, which
    // GeoParquet does not allow and readers such as rustac refuse)
    if let Some(text) = geo.value.as_mut()
        && let Ok(mut meta) = serde_json::from_str::<serde_json::Value>(text)
        && let Some(columns) = meta["columns"].as_object_mut()
    {
        for c in columns.values_mut().filter_map(|c| c.as_object_mut()) {
            let no_extent = |b: &serde_json::Value| b.as_array().is_none_or(|a| a.iter().any(|x| !x.is_number()));
            if c.get("bbox").is_some_and(no_extent) {
                c.remove("bbox");
            }
        }
        *text = meta.to_string();
    }
    writer.append_key_value_metadata(geo);
    // the table's own file metadata (stac-geoparquet's `stac-geoparquet` key, say), beside `geo`
    for (k, v) in table.schema().metadata() {
        if k != "geo" && !k.starts_with("ARROW:") {
            writer.append_key_value_metadata(parquet::file::metadata::KeyValue::new(k.clone(), v.clone()));
        }
    }
    writer.close()?;
    let bytes = std::fs::metadata(tmp.path())?.len();
    let info = GeoParquetWrite {
        path: path.to_path_buf(),
        rows: table.num_rows() as u64,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((tmp, info))
}

/// Renames a pending file into place.
pub fn commit(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    tmp.persist(path).map_err(|e| anyhow!("cannot move the GeoParquet file into {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Writes `table` as GeoParquet 1.1 at `path` (temporary file, then rename).
///
/// ```no_run
/// # fn demo(table: &flowrun_engine::Table) -> anyhow::Result<()> {
/// flowrun_lake::geoparquet::write(table, std::path::Path::new("out/sites.parquet"), None)?;
/// # Ok(()) }
/// ```
pub fn write(table: &Table, path: &Path, primary: Option<&str>) -> Result<GeoParquetWrite> {
    let (tmp, info) = write_pending(table, path, primary)?;
    commit(tmp, path)?;
    Ok(info)
}

/// The same file through DuckDB's `COPY` (GeoParquet 1.0, no covering column): for comparison only.
pub fn write_with_duckdb(table: &Table, path: &Path) -> Result<GeoParquetWrite> {
    let started = Instant::now();
    let duck = Duck::in_memory()?;
    duck.load_table("t", table)?;
    let tmp = temp_beside(path)?;
    duck.execute(&format!(
        "COPY t TO {} (FORMAT parquet, COMPRESSION zstd, GEOPARQUET_VERSION 'V1')",
        literal(&tmp.path().to_string_lossy())
    ))?;
    let bytes = std::fs::metadata(tmp.path())?.len();
    commit(tmp, path)?;
    Ok(GeoParquetWrite {
        path: path.into(),
        rows: table.num_rows() as u64,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_temporaries_of_ended_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (me, here) = (std::process::id(), host());
        let ended = format!(".flowrun~{here}~4000000000~a1B2~pv.v1.parquet.tmp");
        let running = format!(".flowrun~{here}~{me}~x~pv.parquet.tmp");
        let elsewhere = ".flowrun~another-host~4000000000~a1B2~pv.parquet.tmp".to_string();
        let names = [ended, running.clone(), elsewhere.clone(), ".backup.2024.01.tmp".into(), "pv.parquet".into()];
        for n in &names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        remove_dead_temporaries(&dir.path().join("pv.parquet"));
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut expected = vec![running, elsewhere, ".backup.2024.01.tmp".into(), "pv.parquet".into()];
        expected.sort();
        assert_eq!(left, expected, "only this host's ended processes' temporaries go");
    }

    #[test]
    fn writes_geoparquet_1_1_with_covering_and_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/points.parquet");
        let t = crate::duck::tests::point_table();
        let info = write(&t, &path, None).unwrap();
        assert_eq!(info.rows, 1);
        let file = File::open(&path).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
        use parquet::file::reader::FileReader;
        let kv = reader.metadata().file_metadata().key_value_metadata().unwrap().clone();
        let geo = kv.iter().find(|k| k.key == "geo").unwrap().value.clone().unwrap();
        let geo: serde_json::Value = serde_json::from_str(&geo).unwrap();
        assert_eq!(geo["version"], "1.1.0");
        assert_eq!(geo["primary_column"], "geometry");
        let col = &geo["columns"]["geometry"];
        assert_eq!(col["encoding"], "WKB");
        assert_eq!(col["geometry_types"], serde_json::json!(["Point"]));
        assert_eq!(col["bbox"], serde_json::json!([1.0, 2.0, 1.0, 2.0]));
        assert_eq!(col["covering"]["bbox"]["xmin"], serde_json::json!(["bbox", "xmin"]));
        assert!(col.get("crs").is_none(), "CRS84 is written by omission: {col}");
        let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["points.parquet"], "no temporary file is left behind");
    }

    #[test]
    fn row_groups_across_batches_keep_every_row_in_order_on_any_number_of_threads() {
        use arrow_array::{BinaryArray, Int64Array};
        let geometry = crate::duck::tests::point_table().schema().field(1).clone();
        let schema = Arc::new(arrow_schema::Schema::new(vec![
            arrow_schema::Field::new("id", arrow_schema::DataType::Int64, false),
            geometry,
        ]));
        let (mut batches, mut next) = (Vec::new(), 0i64);
        for len in [50_000, 70_001, 30_000] {
            let ids: Vec<i64> = (next..next + len).collect();
            let wkb: Vec<Vec<u8>> = ids.iter().map(|&i| crate::duck::tests::point_wkb(i as f64, 0.0)).collect();
            let columns: Vec<arrow_array::ArrayRef> =
                vec![Arc::new(Int64Array::from(ids)), Arc::new(BinaryArray::from_iter_values(wkb.iter()))];
            batches.push(RecordBatch::try_new(schema.clone(), columns).unwrap());
            next += len;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("points.parquet");
        write(&Table::try_new(schema.clone(), batches.clone()).unwrap(), &path, None).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        let sizes: Vec<i64> = reader.metadata().row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(sizes, [65_536, 65_536, 150_001 - 2 * 65_536]);
        let mut ids = Vec::new();
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let column = batch.column_by_name("id").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
            ids.extend(column.values().iter().copied());
            let bbox = batch.column_by_name("bbox").unwrap().as_any().downcast_ref::<arrow_array::StructArray>();
            let xmin = bbox.unwrap().column(0).as_any().downcast_ref::<arrow_array::Float64Array>().unwrap();
            // the covering column lines up with its rows
            assert!(column.values().iter().zip(xmin.values()).all(|(&id, &x)| (id as f64 - x).abs() < 1.0));
        }
        assert_eq!(ids, (0..150_001).collect::<Vec<i64>>());
        // the same bytes on one thread and on three
        let table = Table::try_new(schema.clone(), batches.clone()).unwrap();
        let bytes = |threads| {
            let (tmp, _) = write_pending_on(&table, &path, None, threads).unwrap();
            std::fs::read(tmp.path()).unwrap()
        };
        assert_eq!(bytes(1), bytes(3));
    }

    #[test]
    fn dictionaries_only_for_text_that_repeats() {
        use arrow_array::{BinaryArray, LargeStringArray, StringArray};
        let geometry = crate::duck::tests::point_table().schema().field(1).clone();
        let text = |name: &str, ty| arrow_schema::Field::new(name, ty, false);
        let (large, small) = (arrow_schema::DataType::LargeUtf8, arrow_schema::DataType::Utf8);
        let schema = Arc::new(arrow_schema::Schema::new(vec![text("dataset", large), text("id", small), geometry]));
        let n = 10_000;
        let wkb: Vec<Vec<u8>> = (0..n).map(|i| crate::duck::tests::point_wkb(i as f64, 0.0)).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(LargeStringArray::from_iter_values((0..n).map(|i| ["india", "china"][i % 2]))),
            Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("id-{i}")))),
            Arc::new(BinaryArray::from_iter_values(wkb.iter())),
        ];
        // an empty first batch says nothing: the sample is taken from the first batch with rows
        let batches =
            vec![RecordBatch::new_empty(schema.clone()), RecordBatch::try_new(schema.clone(), columns).unwrap()];
        let table = Table::try_new(schema, batches).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        write(&table, &path, None).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        use parquet::file::reader::FileReader;
        let group = reader.metadata().row_group(0).clone();
        let with_dictionary: Vec<String> = group
            .columns()
            .iter()
            .filter(|c| c.dictionary_page_offset().is_some())
            .map(|c| c.column_path().string())
            .collect();
        assert_eq!(with_dictionary, ["dataset"], "ids, the WKB and its bbox are written plain");
        // and every value reads back
        let back = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap());
        let rows: usize = back.unwrap().build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, n);
    }

    #[test]
    fn refuses_tables_without_geometry() {
        let schema = std::sync::Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "x",
            arrow_schema::DataType::Int64,
            false,
        )]));
        let err = write(&Table::empty(schema), Path::new("/tmp/never.parquet"), None).unwrap_err();
        assert!(err.to_string().contains("no geometry column"));
        assert!(!Path::new("/tmp/never.parquet").exists());
    }
}
