//! [`Duck`]: an owned DuckDB database, and the bridge that moves Arrow tables in and out of it.
//!
//! Tables go **in** through DuckDB's own Arrow scanner (the C API's `duckdb_arrow_scan`): DuckDB reads
//! the Arrow buffers column by column, vector at a time, and recognises `geoarrow.wkb` fields as
//! `GEOMETRY` (with their CRS). Nothing is converted row by row. Results come **out** with
//! `query_arrow`, DuckDB's Arrow export, which writes `GEOMETRY` as `geoarrow.wkb`.
//!
//! The scanner needs a raw C-API connection; everything else uses the safe `duckdb::Connection` on the
//! same database. Tables created through the raw connection live in the in-memory `memory.main` schema,
//! visible to both.

use std::ffi::{CStr, CString};
use std::mem::ManuallyDrop;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use arrow::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::{RecordBatch, RecordBatchIterator};
use duckdb::{Connection, ffi};
use flowrun_engine::Table;

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The most threads each DuckDB database of this process may use (`--jobs`); 0, the default, leaves
/// DuckDB's own choice (every core).
pub fn limit_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// An owned DuckDB database with one safe connection and one raw connection for Arrow scans.
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

    /// The safe connection.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Runs statements that return nothing.
    pub fn execute(&self, sql: &str) -> Result<()> {
        self.conn.execute_batch(sql).with_context(|| format!("DuckDB failed on: {}", abbreviate(sql)))
    }

    /// Runs statements that hold a credential: the error names neither the statement nor a password.
    pub fn execute_quiet(&self, sql: &str) -> Result<()> {
        self.conn.execute_batch(sql).map_err(|e| anyhow::anyhow!("{}", redact(&e.to_string())))
    }

    fn raw_query(&self, sql: &str) -> Result<()> {
        let c = CString::new(sql)?;
        // SAFETY: `self.raw` is a live connection; the result is destroyed on every path.
        unsafe {
            let mut res: ffi::duckdb_result = std::mem::zeroed();
            let rc = ffi::duckdb_query(self.raw, c.as_ptr(), &mut res);
            let err = if rc != ffi::DuckDBSuccess {
                let p = ffi::duckdb_result_error(&mut res);
                Some(if p.is_null() {
                    "unknown error".into()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                })
            } else {
                None
            };
            ffi::duckdb_destroy_result(&mut res);
            match err {
                Some(e) => bail!("{e}"),
                None => Ok(()),
            }
        }
    }

    /// Copies `table` into DuckDB as `target` (an already quoted, possibly qualified name), replacing it.
    /// Columnar: DuckDB scans the Arrow buffers directly.
    pub fn load_table(&self, target: &str, table: &Table) -> Result<()> {
        let view = format!("__flowrun_arrow_{}", self.scans.fetch_add(1, Ordering::Relaxed));
        let batches: Vec<Result<RecordBatch, arrow_schema::ArrowError>> =
            table.batches().iter().cloned().map(Ok).collect();
        let reader = RecordBatchIterator::new(batches, table.schema().clone());
        let mut stream = FFI_ArrowArrayStream::new(Box::new(reader));
        let view_c = CString::new(view.clone())?;
        // SAFETY: the stream outlives the view, which is dropped below before the stream goes out of scope.
        let rc = unsafe {
            ffi::duckdb_arrow_scan(
                self.raw,
                view_c.as_ptr(),
                &mut stream as *mut FFI_ArrowArrayStream as ffi::duckdb_arrow_stream,
            )
        };
        if rc != ffi::DuckDBSuccess {
            bail!("DuckDB could not scan the Arrow table for {target}");
        }
        let result = self.raw_query(&format!("CREATE OR REPLACE TABLE {target} AS SELECT * FROM \"{view}\""));
        let _ = self.raw_query(&format!("DROP VIEW IF EXISTS \"{view}\""));
        drop(stream);
        result.with_context(|| format!("cannot load an Arrow table into DuckDB as {target}"))
    }

    /// Runs a query and returns its result as a table (geometry as `geoarrow.wkb`).
    pub fn query(&self, sql: &str) -> Result<Table> {
        let mut stmt = self.conn.prepare(sql).with_context(|| format!("DuckDB cannot prepare: {}", abbreviate(sql)))?;
        let arrow = stmt.query_arrow([]).with_context(|| format!("DuckDB failed on: {}", abbreviate(sql)))?;
        let schema = arrow.get_schema();
        let batches: Vec<RecordBatch> = arrow.collect();
        Ok(Table::try_new(schema, batches)?)
    }

    /// One value of the first row.
    pub fn scalar<T: duckdb::types::FromSql>(&self, sql: &str) -> Result<T> {
        self.conn.query_row(sql, [], |r| r.get(0)).with_context(|| format!("DuckDB failed on: {}", abbreviate(sql)))
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

    pub(crate) fn point_table() -> Table {
        let wkb: Vec<u8> = [1u8, 1, 0, 0, 0].into_iter().chain(1f64.to_le_bytes()).chain(2f64.to_le_bytes()).collect();
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
    fn errors_name_the_statement() {
        let duck = Duck::in_memory().unwrap();
        let err = duck.query("SELECT * FROM nowhere").unwrap_err();
        assert!(format!("{err:#}").contains("nowhere"), "{err:#}");
    }
}
