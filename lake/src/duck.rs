//! [`Duck`]: an owned DuckDB database, and the bridge that moves Arrow tables in and out of it.
//!
//! Tables go **in** through DuckDB's own Arrow scanner (the C API's `duckdb_arrow_scan`): DuckDB reads
//! the Arrow buffers column by column, vector at a time, and recognises `geoarrow.wkb` fields as
//! `GEOMETRY` (with their CRS). Nothing is converted row by row. Results come **out** with
//! `query_arrow`, DuckDB's Arrow export, which writes `GEOMETRY` as `geoarrow.wkb`.
//!
//! The scanner needs a raw C-API connection, and SQL runs there too ([`Duck::execute`], [`Duck::scalar`],
//! [`Duck::rows`]), so that a transaction reads the scanner's views on the connection that made them. Only
//! [`Duck::query`] uses the safe `duckdb::Connection` on the same database (duckdb-rs has the Arrow
//! export): it sees the same tables, attached databases, secrets and extensions, not the other
//! connection's open transaction nor its session settings (the `SET`s of the lake's attach and of extension
//! installs apply where they are used: on the raw connection).

use std::ffi::{CStr, CString};
use std::mem::ManuallyDrop;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use arrow::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_schema::{ArrowError, SchemaRef};
use duckdb::{Connection, ffi};
use flowrun_engine::Table;

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The most threads each DuckDB database of this process may use (`--jobs`); 0, the default, leaves
/// DuckDB's own choice (every core).
pub fn limit_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// The threads the lake's own parallel work (a GeoParquet file's encoding, an extension's hash) may use:
/// the limit of [`limit_threads`], else every core.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// An owned DuckDB database with a raw connection for SQL and Arrow scans, and a safe one for Arrow results.
pub struct Duck {
    conn: ManuallyDrop<Connection>,
    raw: ffi::duckdb_connection,
    db: ffi::duckdb_database,
    scans: AtomicUsize,
    /// DuckDB checks extension signatures on `LOAD` itself (see [`Duck::checking_signatures`]).
    pub(crate) checks_signatures: bool,
}

// SAFETY: DuckDB database and connection handles may be moved between threads; `Duck` is not `Sync`.
unsafe impl Send for Duck {}

impl Duck {
    /// An in-memory database for flowrun's own SQL (the lake's commit, exports). It loads extension files
    /// without DuckDB's signature check, and autoloads none: flowrun loads each extension itself, from a
    /// file whose contents it has seen DuckDB check (see [`crate::extensions`]).
    pub fn in_memory() -> Result<Duck> {
        Self::open(None)
    }

    /// An in-memory database with DuckDB's defaults: every extension's signature checked on `LOAD`,
    /// installed extensions autoloaded. For SQL a flow's author wrote (which may `LOAD` anything).
    pub fn checking_signatures() -> Result<Duck> {
        Self::open_with(None, false)
    }

    /// A database file, or in-memory for `None` (extensions as for [`Duck::in_memory`]).
    pub fn open(path: Option<&Path>) -> Result<Duck> {
        Self::open_with(path, true)
    }

    fn open_with(path: Option<&Path>, unsigned: bool) -> Result<Duck> {
        let path_c = CString::new(path.map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|| ":memory:".into()))?;
        // SAFETY: plain C API calls; every handle is checked and released in `Drop` or below on error.
        unsafe {
            let mut db: ffi::duckdb_database = std::ptr::null_mut();
            let mut err: *mut std::os::raw::c_char = std::ptr::null_mut();
            let mut config: ffi::duckdb_config = std::ptr::null_mut();
            if ffi::duckdb_create_config(&mut config) != ffi::DuckDBSuccess {
                bail!("cannot create a DuckDB configuration");
            }
            // flowrun provisions extensions itself (see `extensions`); no silent network access.
            let (unsigned_ok, autoload) = if unsigned { ("true", "false") } else { ("false", "true") };
            let threads = match THREADS.load(Ordering::Relaxed) {
                0 => None,
                n => Some(n.to_string()),
            };
            for (k, v) in [
                ("autoinstall_known_extensions", "false"),
                ("autoload_known_extensions", autoload),
                ("allow_unsigned_extensions", unsigned_ok),
            ]
            .into_iter()
            .chain(threads.as_deref().map(|n| ("threads", n)))
            {
                let (k, v) = (CString::new(k)?, CString::new(v)?);
                ffi::duckdb_set_config(config, k.as_ptr(), v.as_ptr());
            }
            let rc = ffi::duckdb_open_ext(path_c.as_ptr(), &mut db, config, &mut err);
            ffi::duckdb_destroy_config(&mut config);
            if rc != ffi::DuckDBSuccess {
                let msg = if err.is_null() {
                    "unknown error".to_string()
                } else {
                    CStr::from_ptr(err).to_string_lossy().into_owned()
                };
                if !err.is_null() {
                    ffi::duckdb_free(err as *mut _);
                }
                bail!(
                    "cannot open DuckDB database {}: {msg}",
                    path.map(|p| p.display().to_string()).unwrap_or(":memory:".into())
                );
            }
            let mut raw: ffi::duckdb_connection = std::ptr::null_mut();
            if ffi::duckdb_connect(db, &mut raw) != ffi::DuckDBSuccess {
                ffi::duckdb_close(&mut db);
                bail!("cannot connect to DuckDB");
            }
            let conn = match Connection::open_from_raw(db) {
                Ok(c) => c,
                Err(e) => {
                    ffi::duckdb_disconnect(&mut raw);
                    ffi::duckdb_close(&mut db);
                    return Err(e.into());
                }
            };
            Ok(Duck {
                conn: ManuallyDrop::new(conn),
                raw,
                db,
                scans: AtomicUsize::new(0),
                checks_signatures: !unsigned,
            })
        }
    }

    /// Runs statements that return nothing.
    pub fn execute(&self, sql: &str) -> Result<()> {
        self.raw_result(sql, |_| ()).with_context(|| format!("DuckDB failed on: {}", abbreviate(sql)))
    }

    /// Runs statements that hold a credential: the error names neither the statement nor a password.
    pub fn execute_quiet(&self, sql: &str) -> Result<()> {
        self.raw_result(sql, |_| ()).map_err(|e| anyhow::anyhow!("{}", redact(&e.to_string())))
    }

    /// One value of the first row, parsed from its text (`i64`, `String`...); NULL or no row is an error.
    pub fn scalar<T: std::str::FromStr>(&self, sql: &str) -> Result<T> {
        let text = self.rows(sql)?.into_iter().next().and_then(|row| row.into_iter().next().flatten());
        let text = text.with_context(|| format!("DuckDB gave no value for: {}", abbreviate(sql)))?;
        text.parse()
            .map_err(|_| anyhow::anyhow!("DuckDB gave `{text}`, not the expected type, for: {}", abbreviate(sql)))
    }

    /// Every row of a (small) result as text, NULL as `None`.
    pub fn rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.raw_result(sql, |res| {
            // SAFETY: `res` is a live materialized result; every index is below its counts, and each string
            // DuckDB allocates is copied, then freed with `duckdb_free`.
            unsafe {
                let (cols, rows) = (ffi::duckdb_column_count(res), ffi::duckdb_row_count(res));
                (0..rows)
                    .map(|r| {
                        (0..cols)
                            .map(|c| {
                                let p = ffi::duckdb_value_varchar(res, c, r);
                                if p.is_null() || ffi::duckdb_value_is_null(res, c, r) {
                                    if !p.is_null() {
                                        ffi::duckdb_free(p as *mut _);
                                    }
                                    return None;
                                }
                                let text = CStr::from_ptr(p).to_string_lossy().into_owned();
                                ffi::duckdb_free(p as *mut _);
                                Some(text)
                            })
                            .collect()
                    })
                    .collect()
            }
        })
        .with_context(|| format!("DuckDB failed on: {}", abbreviate(sql)))
    }

    /// Runs `sql` on the connection that scans Arrow tables (so SQL, views and one transaction all live on
    /// one connection) and hands its result to `read`.
    fn raw_result<R>(&self, sql: &str, read: impl FnOnce(&mut ffi::duckdb_result) -> R) -> Result<R> {
        let c = CString::new(sql)?;
        // SAFETY: `self.raw` is a live connection; the result is destroyed on every path.
        unsafe {
            let mut res: ffi::duckdb_result = std::mem::zeroed();
            let out = if ffi::duckdb_query(self.raw, c.as_ptr(), &mut res) == ffi::DuckDBSuccess {
                Ok(read(&mut res))
            } else {
                let p = ffi::duckdb_result_error(&mut res);
                Err(if p.is_null() { "unknown error".into() } else { CStr::from_ptr(p).to_string_lossy().into_owned() })
            };
            ffi::duckdb_destroy_result(&mut res);
            out.map_err(|e: String| anyhow::anyhow!("{e}"))
        }
    }

    /// Copies `table` into DuckDB as `target` (an already quoted, possibly qualified name), replacing it.
    pub fn load_table(&self, target: &str, table: &Table) -> Result<()> {
        self.with_views(vec![ArrowSource::from(table.clone())], |views| {
            self.execute(&format!("CREATE OR REPLACE TABLE {target} AS SELECT * FROM {}", views[0]))
        })
        .with_context(|| format!("cannot load an Arrow table into DuckDB as {target}"))
    }

    /// Runs `f` with each source readable as a view, whose quoted names `f` gets in order. Columnar: a
    /// statement that reads a view makes DuckDB scan the Arrow buffers directly, with no copy. Each view can
    /// be read **once** (the scan consumes it). The views are made before `f` runs, so a transaction `f`
    /// opens can read them (DuckDB makes them in the default database, and a transaction may write to one
    /// database only); they are dropped when `f` returns.
    pub fn with_views<R>(&self, sources: Vec<ArrowSource>, f: impl FnOnce(&[String]) -> Result<R>) -> Result<R> {
        let mut views = Views { duck: self, names: Vec::new(), streams: Vec::new() };
        for source in sources {
            let view = format!("__flowrun_arrow_{}", self.scans.fetch_add(1, Ordering::Relaxed));
            let view_c = CString::new(view.clone())?;
            let mut stream = Box::new(FFI_ArrowArrayStream::new(Box::new(source)));
            // SAFETY: the stream (boxed, so it does not move) outlives the view: `Views` drops the views first
            let rc = unsafe {
                ffi::duckdb_arrow_scan(
                    self.raw,
                    view_c.as_ptr(),
                    stream.as_mut() as *mut FFI_ArrowArrayStream as ffi::duckdb_arrow_stream,
                )
            };
            views.streams.push(stream);
            if rc != ffi::DuckDBSuccess {
                bail!("DuckDB could not scan an Arrow table");
            }
            views.names.push(format!("\"{view}\""));
        }
        f(&views.names)
    }

    /// The column names of `catalog.schema.table` as this connection's open transaction sees it, or `None`
    /// when there is no such table. A lookup in the catalog (the C API's table description), not a query:
    /// `duckdb_tables()` or `duckdb_columns()` would load every DuckLake table's statistics first (about
    /// 20 ms in a fresh transaction).
    pub fn table_columns(&self, catalog: &str, schema: &str, table: &str) -> Result<Option<Vec<String>>> {
        let (c, s, t) = (CString::new(catalog)?, CString::new(schema)?, CString::new(table)?);
        // SAFETY: `self.raw` is a live connection; the description is destroyed on every path, and each name
        // DuckDB allocates is copied, then freed with `duckdb_free`.
        unsafe {
            let mut desc: ffi::duckdb_table_description = std::ptr::null_mut();
            let rc = ffi::duckdb_table_description_create_ext(self.raw, c.as_ptr(), s.as_ptr(), t.as_ptr(), &mut desc);
            let out = if rc == ffi::DuckDBSuccess {
                let names = (0..ffi::duckdb_table_description_get_column_count(desc))
                    .map(|i| {
                        let p = ffi::duckdb_table_description_get_column_name(desc, i);
                        if p.is_null() {
                            return String::new();
                        }
                        let name = CStr::from_ptr(p).to_string_lossy().into_owned();
                        ffi::duckdb_free(p as *mut _);
                        name
                    })
                    .collect();
                Ok(Some(names))
            } else {
                let p = ffi::duckdb_table_description_error(desc);
                let e =
                    if p.is_null() { "unknown error".into() } else { CStr::from_ptr(p).to_string_lossy().into_owned() };
                // the C API's words for a missing table (or schema, or catalog); anything else is an error
                if e.starts_with("No table with that schema+name") {
                    Ok(None)
                } else {
                    Err(anyhow::anyhow!("DuckDB cannot describe table {catalog}.{schema}.{table}: {e}"))
                }
            };
            ffi::duckdb_table_description_destroy(&mut desc);
            out
        }
    }

    /// Runs a query and returns its result as a table (geometry as `geoarrow.wkb`).
    pub fn query(&self, sql: &str) -> Result<Table> {
        let mut stmt = self.conn.prepare(sql).with_context(|| format!("DuckDB cannot prepare: {}", abbreviate(sql)))?;
        let arrow = stmt.query_arrow([]).with_context(|| format!("DuckDB failed on: {}", abbreviate(sql)))?;
        let schema = arrow.get_schema();
        let batches: Vec<RecordBatch> = arrow.collect();
        Ok(Table::try_new(schema, batches)?)
    }
}

impl Drop for Duck {
    fn drop(&mut self) {
        // SAFETY: drop the safe connection first, then the raw one, then the database we own.
        unsafe {
            ManuallyDrop::drop(&mut self.conn);
            ffi::duckdb_disconnect(&mut self.raw);
            ffi::duckdb_close(&mut self.db);
        }
    }
}

/// The views of [`Duck::with_views`] and the streams they read: the views are dropped first, then the
/// streams, however `with_views` ends (an error or a panic in its closure included).
struct Views<'d> {
    duck: &'d Duck,
    names: Vec<String>,
    // boxed: DuckDB holds each stream's address, which must not move when the vector grows
    #[allow(clippy::vec_box)]
    streams: Vec<Box<FFI_ArrowArrayStream>>,
}

impl Drop for Views<'_> {
    fn drop(&mut self) {
        for view in &self.names {
            let drop_view = format!("DROP VIEW IF EXISTS {view}");
            // a transaction left open (a panic before its COMMIT) cannot drop them: it is rolled back first
            if self.duck.execute(&drop_view).is_err() {
                let _ = self.duck.execute("ROLLBACK");
                let _ = self.duck.execute(&drop_view);
            }
        }
    }
}

/// A table for [`Duck::with_views`], loaded only when DuckDB starts reading it, and released batch by batch
/// as DuckDB goes: views over many tables hold one table in memory at a time.
pub struct ArrowSource {
    schema: SchemaRef,
    load: Option<Box<dyn FnOnce() -> Result<Table> + Send>>,
    batches: std::vec::IntoIter<RecordBatch>,
}

impl ArrowSource {
    /// A table of `schema` that `load` gives when it is read (a table of another schema is an error there).
    pub fn deferred(schema: SchemaRef, load: impl FnOnce() -> Result<Table> + Send + 'static) -> ArrowSource {
        ArrowSource { schema, load: Some(Box::new(load)), batches: Vec::new().into_iter() }
    }
}

impl From<Table> for ArrowSource {
    fn from(table: Table) -> ArrowSource {
        ArrowSource { schema: table.schema().clone(), load: None, batches: table.batches().to_vec().into_iter() }
    }
}

impl Iterator for ArrowSource {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(load) = self.load.take() {
            match load() {
                Ok(t) if t.schema().fields() == self.schema.fields() => self.batches = t.batches().to_vec().into_iter(),
                Ok(_) => {
                    return Some(Err(ArrowError::SchemaError("the table's columns changed since its view".into())));
                }
                // the whole chain: the cause (a blob missing or corrupt) says what to do
                Err(e) => return Some(Err(ArrowError::ExternalError(format!("{e:#}").into()))),
            }
        }
        self.batches.next().map(Ok)
    }
}

impl RecordBatchReader for ArrowSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// The first 200 characters of a statement, for error messages.
pub fn abbreviate(sql: &str) -> String {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        format!("{}...", one_line.chars().take(200).collect::<String>())
    } else {
        one_line
    }
}

/// `text` with the value of every `password=...` (a libpq connection string) replaced by `***`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("password=") {
        out.push_str(&rest[..at + "password=".len()]);
        out.push_str("***");
        rest = &rest[at + "password=".len()..];
        rest = &rest[rest.find(|c: char| c.is_whitespace() || c == '\'' || c == '"').unwrap_or(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// Gives DuckDB (httpfs) the object storage credentials of `cfg` as its default S3 secret. Neither the
/// statement nor an error of it is ever printed.
pub fn create_s3_secret(duck: &Duck, cfg: &flowrun_storage::StorageConfig) -> Result<()> {
    let (key, secret, token) = cfg.credentials()?;
    let mut opts = vec![
        "TYPE s3".to_string(),
        format!("KEY_ID {}", literal(&key)),
        format!("SECRET {}", literal(secret.expose())),
        format!("REGION {}", literal(&cfg.region)),
        format!("URL_STYLE {}", literal(if cfg.path_style { "path" } else { "vhost" })),
        format!("USE_SSL {}", !cfg.allow_http || cfg.endpoint.as_deref().is_some_and(|e| e.starts_with("https://"))),
    ];
    if let Some(host) = cfg.endpoint_host() {
        opts.push(format!("ENDPOINT {}", literal(host)));
    }
    if let Some(t) = token {
        opts.push(format!("SESSION_TOKEN {}", literal(t.expose())));
    }
    duck.execute_quiet(&format!("CREATE OR REPLACE SECRET flowrun_s3 ({})", opts.join(", ")))
        .map_err(|e| anyhow::anyhow!("cannot give DuckDB the S3 credentials: {e}"))
}

/// A SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow_array::{BinaryArray, Int64Array};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    /// Little-endian WKB of the point (x, y).
    pub(crate) fn point_wkb(x: f64, y: f64) -> Vec<u8> {
        [1u8, 1, 0, 0, 0].into_iter().chain(x.to_le_bytes()).chain(y.to_le_bytes()).collect()
    }

    pub(crate) fn point_table() -> Table {
        let wkb = point_wkb(1.0, 2.0);
        let geom = Field::new("geometry", DataType::Binary, true).with_metadata(
            [
                ("ARROW:extension:name".to_string(), "geoarrow.wkb".to_string()),
                ("ARROW:extension:metadata".to_string(), "{}".to_string()),
            ]
            .into(),
        );
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), geom]));
        Table::from_batch(
            RecordBatch::try_new(
                schema,
                vec![Arc::new(Int64Array::from(vec![7])), Arc::new(BinaryArray::from(vec![Some(wkb.as_slice())]))],
            )
            .unwrap(),
        )
    }

    #[test]
    fn arrow_in_geometry_out() {
        let duck = Duck::in_memory().unwrap();
        duck.load_table("t", &point_table()).unwrap();
        let ty: String = duck.scalar("SELECT typeof(geometry) FROM t").unwrap();
        assert!(ty.starts_with("GEOMETRY"), "{ty}");
        let wkt: String = duck.scalar("SELECT ST_AsText(geometry) FROM t").unwrap();
        assert_eq!(wkt, "POINT (1 2)");
        let back = duck.query("SELECT id, geometry FROM t").unwrap();
        assert_eq!(back.num_rows(), 1);
        let field = back.schema().field(1);
        assert_eq!(field.metadata().get("ARROW:extension:name").map(String::as_str), Some("geoarrow.wkb"), "{field:?}");
        assert_eq!(back.concat().unwrap().column(1), point_table().concat().unwrap().column(1));
    }

    #[test]
    fn table_columns_sees_the_open_transaction() {
        let duck = Duck::in_memory().unwrap();
        duck.execute("ATTACH ':memory:' AS other").unwrap();
        assert_eq!(duck.table_columns("other", "main", "t").unwrap(), None);
        duck.execute("BEGIN; CREATE TABLE other.t (a INTEGER, \"b c\" VARCHAR)").unwrap();
        assert_eq!(duck.table_columns("other", "main", "t").unwrap(), Some(vec!["a".to_string(), "b c".to_string()]));
        duck.execute("ROLLBACK").unwrap();
        assert_eq!(duck.table_columns("other", "main", "t").unwrap(), None);
        assert_eq!(duck.table_columns("other", "nope", "t").unwrap(), None);
        assert_eq!(duck.table_columns("nope", "main", "t").unwrap(), None);
    }

    #[test]
    fn a_deferred_table_is_loaded_when_read_inside_a_transaction_writing_another_database() {
        use std::sync::atomic::AtomicBool;
        static LOADED: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];
        let duck = Duck::in_memory().unwrap();
        duck.execute("ATTACH ':memory:' AS other").unwrap();
        let schema = point_table().schema().clone();
        let sources = (0..2)
            .map(|i| {
                ArrowSource::deferred(schema.clone(), move || {
                    LOADED[i].store(true, Ordering::SeqCst);
                    Ok(point_table())
                })
            })
            .collect();
        duck.with_views(sources, |views| {
            assert!(!LOADED[0].load(Ordering::SeqCst), "not loaded before it is read");
            duck.execute(&format!("BEGIN; CREATE TABLE other.t AS SELECT * FROM {}; COMMIT", views[0]))
        })
        .unwrap();
        assert!(LOADED[0].load(Ordering::SeqCst));
        assert!(!LOADED[1].load(Ordering::SeqCst), "a view nobody reads loads nothing");
        let wkt: String = duck.scalar("SELECT ST_AsText(geometry) FROM other.t").unwrap();
        assert_eq!(wkt, "POINT (1 2)");
        // a table that is not what its view promised fails the statement that reads it
        let wrong = ArrowSource::deferred(schema, || {
            let batch = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1])) as _)]).unwrap();
            Ok(Table::from_batch(batch))
        });
        let err = duck
            .with_views(vec![wrong], |views| {
                duck.execute(&format!("CREATE TABLE other.u AS SELECT * FROM {}", views[0]))
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("columns changed"), "{err:#}");
        // a table that cannot be loaded fails the statement with the whole reason
        let failing = ArrowSource::deferred(point_table().schema().clone(), || {
            Err(anyhow::anyhow!("cached result 1234 is missing from the cache")).context("loading the result of `x`")
        });
        let err = duck
            .with_views(vec![failing], |views| {
                duck.execute(&format!("CREATE TABLE other.v AS SELECT * FROM {}", views[0]))
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("is missing from the cache"), "{err:#}");
    }

    #[test]
    fn errors_name_the_statement() {
        let duck = Duck::in_memory().unwrap();
        let err = duck.query("SELECT * FROM nowhere").unwrap_err();
        assert!(format!("{err:#}").contains("nowhere"), "{err:#}");
    }
}
