//! The `[lake]` section of a flow: which DuckLake catalog, where its data files go.
//!
//! ```toml
//! [lake]
//! catalog = "../lake/pv.ducklake"        # DuckDB-file catalog (the default kind), relative to the flow file
//! # catalog = "sqlite:../lake/pv.sqlite" # SQLite catalog
//! # catalog = "postgres:dbname=lake host=127.0.0.1 port=5432 user=postgres"  # PostgreSQL catalog
//! data_path = "../lake/data"             # Parquet data files (default: <catalog>.files next to a file catalog);
//! # data_path = "s3://bucket/lake"       # or object storage, reached as `[storage]` says (flowrun-storage)
//! exports = "../lake/files"              # where GeoParquet materializations with a relative path go
//!                                        #   (default: the flow file's directory; or s3://bucket/prefix)
//! alias = "lake"                         # the name SQL nodes use for it (default: lake)
//! extensions_dir = "/opt/duckdb-ext"     # where to find DuckDB extension files (see `extensions`)
//! commit_retries = 10                    # DuckLake's retries of a commit that conflicts with another writer's
//! commit_retry_wait_ms = 100             #   (ducklake_max_retry_count, ducklake_retry_wait_ms,
//! commit_retry_backoff = 1.5             #   ducklake_retry_backoff)
//! ```
//! Every key can be overridden on the command line with `--lake key=value`. The `ducklake:` prefix of
//! DuckDB's own syntax is accepted too.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use flowrun_engine::Flow;
use flowrun_storage::StorageConfig;

use crate::duck::{Duck, literal};
use crate::extensions::{self, ExtensionSources};
use crate::ident;

/// Where the DuckLake catalog lives.
#[derive(Debug, Clone, PartialEq)]
pub enum Catalog {
    /// A DuckDB database file.
    DuckDb(PathBuf),
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (a libpq connection string).
    Postgres(String),
}

/// DuckLake's commit retries unless `[lake]` says otherwise: count, wait (ms), backoff factor.
const RETRIES: (u32, u32, f64) = (10, 100, 1.5);

/// A resolved `[lake]` section.
#[derive(Debug, Clone)]
pub struct LakeConfig {
    /// The catalog.
    pub catalog: Catalog,
    /// Where data files are written: a local directory, or `s3://bucket/prefix`.
    pub data_path: DataPath,
    /// Where GeoParquet materializations with a relative `path` go (default: the flow file's directory).
    pub exports: Option<DataPath>,
    /// How to reach object storage (read when the data path is remote).
    pub storage: StorageConfig,
    /// Attach alias.
    pub alias: String,
    /// Extension sources.
    pub extensions: ExtensionSources,
    /// DuckLake's commit retries: count, wait (ms), backoff factor.
    pub retries: (u32, u32, f64),
    /// Wait for another process that holds the catalog (else fail at once: `--no-wait`).
    pub wait: bool,
    /// Set by a first Ctrl-C: a commit not yet made is not made (the lake stays where it was).
    pub interrupt: Option<&'static std::sync::atomic::AtomicBool>,
}

/// Where a lake's data files go.
#[derive(Debug, Clone, PartialEq)]
pub enum DataPath {
    /// A directory.
    Local(PathBuf),
    /// `s3://bucket/prefix`.
    Remote(String),
}

impl std::fmt::Display for DataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataPath::Local(p) => write!(f, "{}", p.display()),
            DataPath::Remote(u) => f.write_str(u),
        }
    }
}

/// `a/b/../c` -> `a/c`, lexically (no file system access; the lake may not exist yet).
pub(crate) fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                // `..` of a relative path with nothing left to pop stays (`../x` is not `x`)
                let last_is_parent = matches!(out.components().next_back(), Some(Component::ParentDir));
                if last_is_parent || !out.pop() {
                    out.push("..");
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl Catalog {
    /// Parses a catalog string; relative paths are resolved against `base`.
    pub fn parse(s: &str, base: &Path) -> Result<Catalog> {
        let s = s.trim();
        let s = s.strip_prefix("ducklake:").unwrap_or(s);
        let resolve = |p: &str| normalize(&if Path::new(p).is_absolute() { PathBuf::from(p) } else { base.join(p) });
        if let Some(rest) = s.strip_prefix("sqlite:") {
            return Ok(Catalog::Sqlite(resolve(rest)));
        }
        if let Some(rest) = s.strip_prefix("postgres:") {
            if rest.trim().is_empty() {
                bail!("a PostgreSQL catalog needs a connection string, e.g. postgres:dbname=lake host=127.0.0.1");
            }
            return Ok(Catalog::Postgres(rest.to_string()));
        }
        if let Some((kind, _)) = s.split_once(':')
            && !kind.is_empty()
            && kind.chars().all(|c| c.is_ascii_alphanumeric())
            && kind.len() > 1
        {
            bail!(
                "unknown catalog kind `{kind}` in `{s}`: use a DuckDB file (lake.ducklake), sqlite:PATH or \
                     postgres:CONNECTION"
            );
        }
        if s.is_empty() {
            bail!("the catalog is empty");
        }
        Ok(Catalog::DuckDb(resolve(s)))
    }

    /// The extension DuckLake needs for this catalog, besides `ducklake` itself.
    pub fn extension(&self) -> Option<&'static str> {
        match self {
            Catalog::DuckDb(_) => None,
            Catalog::Sqlite(_) => Some("sqlite"),
            Catalog::Postgres(_) => Some("postgres"),
        }
    }

    /// The string after `ducklake:` in `ATTACH`.
    pub fn attach_target(&self) -> String {
        match self {
            Catalog::DuckDb(p) => p.display().to_string(),
            Catalog::Sqlite(p) => format!("sqlite:{}", p.display()),
            Catalog::Postgres(c) => format!("postgres:{c}"),
        }
    }

    /// For messages (the PostgreSQL password, if any, is hidden).
    pub fn describe(&self) -> String {
        match self {
            Catalog::Postgres(c) => {
                let shown: Vec<String> = c
                    .split_whitespace()
                    .map(|kv| if kv.starts_with("password=") { "password=***".to_string() } else { kv.to_string() })
                    .collect();
                // where libpq will connect when the string does not say (its PG* variables)
                let mut server = Vec::new();
                for (key, var) in [("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER")] {
                    if !c.split_whitespace().any(|kv| kv.starts_with(&format!("{key}=")))
                        && let Ok(v) = std::env::var(var)
                    {
                        server.push(format!("{key}={v} (from {var})"));
                    }
                }
                let server = if server.is_empty() { String::new() } else { format!("; {}", server.join(", ")) };
                format!("postgres:{}{server}", shown.join(" "))
            }
            other => other.attach_target(),
        }
    }
}

impl LakeConfig {
    /// The flow's `[lake]` with `overrides` (`--lake key=value`) applied; `None` when the flow has none.
    pub fn from_flow(flow: &Flow, overrides: &[(String, String)]) -> Result<Option<LakeConfig>> {
        let mut values: Vec<(String, String)> = Vec::new();
        for (k, (v, _)) in &flow.lake {
            let s = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => bail!("[lake] {k} must be a string or a number, found {other}"),
            };
            values.push((k.clone(), s));
        }
        for (k, v) in overrides {
            values.retain(|(key, _)| key != k);
            values.push((k.clone(), v.clone()));
        }
        if values.is_empty() {
            return Ok(None);
        }
        // Absolute, normalized paths: DuckLake stores the data path in the catalog, and a relative one would
        // only mean something from the directory this run started in.
        let cwd = std::env::current_dir().unwrap_or_default();
        let base = normalize(&cwd.join(flow.base_dir()));
        let get = |key: &str| -> Option<(String, bool)> {
            let from_cli = overrides.iter().any(|(k, _)| k == key);
            values.iter().rev().find(|(k, _)| k == key).map(|(_, v)| (v.clone(), from_cli))
        };
        const KEYS: [&str; 8] = [
            "catalog",
            "data_path",
            "exports",
            "alias",
            "extensions_dir",
            "commit_retries",
            "commit_retry_wait_ms",
            "commit_retry_backoff",
        ];
        for (k, _) in &values {
            if !KEYS.contains(&k.as_str()) {
                bail!("[lake] has no key `{k}`; keys: {}", KEYS.join(", "));
            }
        }
        let (catalog, cli) = get("catalog").ok_or_else(|| anyhow!("[lake] needs `catalog`"))?;
        let catalog = Catalog::parse(&catalog, if cli { &cwd } else { &base })?;
        let location = |key: &str| -> Result<Option<DataPath>> {
            Ok(match get(key) {
                Some((p, _)) if flowrun_storage::is_remote(&p) => {
                    flowrun_storage::Bucket::parse_url(&p)?;
                    Some(DataPath::Remote(p.trim_end_matches('/').to_string()))
                }
                Some((p, cli)) => {
                    let p = PathBuf::from(p);
                    Some(DataPath::Local(normalize(&if p.is_absolute() {
                        p
                    } else if cli {
                        cwd.join(p)
                    } else {
                        base.join(p)
                    })))
                }
                None => None,
            })
        };
        let exports = location("exports")?;
        let data_path = match location("data_path")? {
            Some(p) => p,
            None => match &catalog {
                Catalog::DuckDb(p) | Catalog::Sqlite(p) => {
                    let mut s = p.as_os_str().to_owned();
                    s.push(".files");
                    DataPath::Local(PathBuf::from(s))
                }
                Catalog::Postgres(_) => bail!("[lake] data_path is required with a PostgreSQL catalog"),
            },
        };
        // a count, a wait and a factor: whole, whole and >= 1 (DuckLake would take a negative one as it is)
        let number = |key: &str, default: f64, whole: bool, least: f64| -> Result<f64> {
            let Some((v, _)) = get(key) else { return Ok(default) };
            match v.parse::<f64>() {
                Ok(n) if n.is_finite() && n >= least && (!whole || n.fract() == 0.0) && n <= u32::MAX as f64 => Ok(n),
                _ => {
                    let kind = if whole { "a whole number" } else { "a number" };
                    bail!("[lake] {key} is {kind} of at least {least}, not `{v}`")
                }
            }
        };
        let (tries, wait_ms, backoff) = RETRIES;
        let retries = (
            number("commit_retries", tries.into(), true, 0.0)? as u32,
            number("commit_retry_wait_ms", wait_ms.into(), true, 0.0)? as u32,
            number("commit_retry_backoff", backoff, false, 1.0)?,
        );
        let storage = crate::storage_config(flow)?;
        let alias = get("alias").map(|(a, _)| a).unwrap_or_else(|| "lake".to_string());
        ident::validate(&alias, "lake alias")?;
        let mut extensions = ExtensionSources::from_env();
        if let Some((dir, cli)) = get("extensions_dir") {
            let p = PathBuf::from(dir);
            extensions.user_dir = Some(if p.is_absolute() {
                p
            } else if cli {
                cwd.join(p)
            } else {
                base.join(p)
            });
        }
        Ok(Some(LakeConfig {
            catalog,
            data_path,
            exports,
            storage,
            alias,
            extensions,
            retries,
            wait: true,
            interrupt: None,
        }))
    }

    /// A lake with its catalog in the DuckDB file `catalog` and its data files under `data`, everything else
    /// as a flow's `[lake]` with only those two keys has it (for benchmarks and tests that write by hand).
    /// The paths are taken as they are (DuckLake records the data path in the catalog: give it absolute).
    pub fn local(catalog: PathBuf, data: PathBuf) -> LakeConfig {
        LakeConfig {
            catalog: Catalog::DuckDb(catalog),
            data_path: DataPath::Local(data),
            exports: None,
            storage: flowrun_storage::StorageConfig::from_table(None).expect("the default storage settings"),
            alias: "lake".into(),
            extensions: ExtensionSources::from_env(),
            retries: RETRIES,
            wait: true,
            interrupt: None,
        }
    }

    /// Loads the extensions this lake needs and attaches it to `duck` (read-only if asked).
    pub fn attach(&self, duck: &Duck, read_only: bool) -> Result<()> {
        extensions::ensure(duck, "ducklake", &self.extensions)?;
        if let Some(ext) = self.catalog.extension() {
            extensions::ensure(duck, ext, &self.extensions)?;
        }
        if let Catalog::DuckDb(p) | Catalog::Sqlite(p) = &self.catalog {
            if read_only && !p.exists() {
                bail!(
                    "the lake's catalog {} does not exist yet: run the flow that writes this lake first (or fix \
                     [lake] catalog)",
                    p.display()
                );
            }
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
            }
        }
        match &self.data_path {
            DataPath::Local(dir) if !read_only => std::fs::create_dir_all(dir)
                .map_err(|e| anyhow!("cannot create the lake's data path {}: {e}", dir.display()))?,
            DataPath::Local(_) => {}
            DataPath::Remote(url) => {
                extensions::ensure(duck, "httpfs", &self.extensions)?;
                crate::duck::create_s3_secret(duck, &self.storage)
                    .map_err(|e| anyhow!("the lake's data path {url} on {}: {e:#}", self.storage.describe()))?;
            }
        }
        let (count, wait, backoff) = self.retries;
        duck.execute(&format!(
            "SET ducklake_max_retry_count = {count}; SET ducklake_retry_wait_ms = {wait}; SET ducklake_retry_backoff = {backoff}"
        ))?;
        let mut data = self.data_path.to_string();
        if !data.ends_with('/') {
            data.push('/');
        }
        let mut options = vec![format!("DATA_PATH {}", literal(&data))];
        if read_only {
            options.push("READ_ONLY".to_string());
        }
        let sql = format!(
            "ATTACH {} AS {} ({})",
            literal(&format!("ducklake:{}", self.catalog.attach_target())),
            ident::quoted(&self.alias, "lake alias")?,
            options.join(", ")
        );
        // Two processes attaching a new PostgreSQL catalog at once both try to create its tables; the one
        // that loses sees a duplicate key. The catalog exists then: attaching again uses it.
        let mut attached = duck.execute_quiet(&sql);
        let (mut raced, mut said) = (0, false);
        loop {
            match &attached {
                Err(e) if creation_raced(&format!("{e:#}")) && raced < 3 => raced += 1,
                // another program took the catalog file (DuckDB's lock, or SQLite's) since the check before
                // the run: wait for it too
                Err(e)
                    if self.wait && {
                        let e = format!("{e:#}");
                        e.contains("Could not set lock") || e.contains("database is locked")
                    } =>
                {
                    if !said {
                        eprintln!("waiting for another process to release the lake catalog {}", self.describe());
                        said = true;
                    }
                }
                _ => break,
            }
            self.stop_if_interrupted()?;
            std::thread::sleep(std::time::Duration::from_millis(200));
            attached = duck.execute_quiet(&sql);
        }
        // no SQL in the error: a PostgreSQL connection string may hold a password
        attached.map_err(|e| {
            let hint = match &self.catalog {
                Catalog::Postgres(_) => {
                    " (is the PostgreSQL server running and reachable, and does the database exist?)"
                }
                _ => "",
            };
            anyhow!("cannot attach the DuckLake catalog {}{hint}: {e:#}", self.catalog.describe())
        })
    }

    /// Fails when a first Ctrl-C asked the run to stop: what has not been written is not.
    pub fn stop_if_interrupted(&self) -> Result<()> {
        if self.interrupt.is_some_and(|i| i.load(std::sync::atomic::Ordering::Relaxed)) {
            bail!("stopped by Ctrl-C");
        }
        Ok(())
    }

    /// `catalog` for messages and records.
    pub fn describe(&self) -> String {
        self.catalog.describe()
    }

    /// Whether this lake's commits take turns by its lock file ([`LakeConfig::lock`]): a catalog file's do.
    /// A PostgreSQL catalog's, from any machine, take turns inside DuckLake instead (`flowrun_commit_turn`).
    pub fn has_lock(&self) -> bool {
        !matches!(self.catalog, Catalog::Postgres(_))
    }

    /// Takes this process's turn at writing a catalog file (DuckDB keeps one writer per file; SQLite would
    /// answer "busy"): flowrun processes queue on `<catalog>.lock`, saying whom they wait for. `None` for a
    /// PostgreSQL catalog, which takes concurrent writers itself.
    pub fn lock(&self) -> Result<Option<flowrun_cache::lock::FileLock>> {
        let (Catalog::DuckDb(p) | Catalog::Sqlite(p)) = &self.catalog else { return Ok(None) };
        let path = flowrun_cache::lock::FileLock::beside(p);
        let holder = format!("flowrun writing the lake {} (pid {})", p.display(), std::process::id());
        let on_wait = |other: &str| eprintln!("waiting for {other} to release {}", path.display());
        Ok(Some(flowrun_cache::lock::FileLock::acquire(&path, &holder, self.wait, on_wait)?))
    }

    /// Before any node runs: a DuckDB catalog file that another program holds open for writing (DuckDB's
    /// CLI, a notebook), or a SQLite catalog in another program's write transaction, would fail the run at
    /// its end; it is found now (the program's lock on the file, asked with `fcntl(F_GETLK)`: no file is
    /// opened by DuckDB for it). With `wait`, this waits (saying so) until the file is free; otherwise it is
    /// an error.
    pub fn check_not_held(&self) -> Result<()> {
        // with --no-wait, another flowrun committing into this catalog is an error now, not at the commit
        if !self.wait {
            drop(self.lock()?);
        }
        // DuckDB and SQLite both lock the file with fcntl while writing (SQLite for a write transaction)
        let (Catalog::DuckDb(p) | Catalog::Sqlite(p)) = &self.catalog else { return Ok(()) };
        let mut said = false;
        while let Some(pid) = write_locked_by(p) {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let holder = format!("process {pid} ({})", name.trim());
            if !self.wait {
                bail!(
                    "the lake catalog {} is held by {holder}: close it there, or drop --no-wait to wait",
                    p.display()
                );
            }
            if !said {
                eprintln!("waiting for {holder} to release the lake catalog {}", p.display());
                said = true;
            }
            self.stop_if_interrupted()?;
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Ok(())
    }
}

/// A process holding a POSIX lock on `path`, if any: DuckDB takes a write lock on a database file it opens
/// for writing and a read lock on one it opens read-only; this process's write would conflict with either.
#[cfg(unix)]
fn write_locked_by(path: &Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: a zeroed `flock` is a valid value of that plain C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    // asking for a write lock: any lock another process holds conflicts with it and is described back
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: `fcntl(F_GETLK)` only reads the descriptor (open for the whole call) and writes into `lock`.
    let asked = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    (asked == 0 && lock.l_type != libc::F_UNLCK as libc::c_short).then_some(lock.l_pid)
}

#[cfg(not(unix))]
fn write_locked_by(_path: &Path) -> Option<i32> {
    None
}

/// Whether an ATTACH failed because another process was creating the same catalog at that moment.
fn creation_raced(error: &str) -> bool {
    error.contains("duplicate key value violates unique constraint")
        || (error.contains("Failed to initialize DuckLake") && error.contains("already exists"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical_and_keeps_leading_parents() {
        assert_eq!(normalize(Path::new("/a/flows/../lake/x")), PathBuf::from("/a/lake/x"));
        assert_eq!(normalize(Path::new("flows/../.flowrun/x")), PathBuf::from(".flowrun/x"));
        assert_eq!(normalize(Path::new("../x")), PathBuf::from("../x"));
        assert_eq!(normalize(Path::new("a/../../x")), PathBuf::from("../x"));
        assert_eq!(normalize(Path::new("../../x/./y")), PathBuf::from("../../x/y"));
    }

    #[test]
    fn catalog_kinds() {
        let base = Path::new("/flows");
        assert_eq!(
            Catalog::parse("lake/pv.ducklake", base).unwrap(),
            Catalog::DuckDb("/flows/lake/pv.ducklake".into())
        );
        assert_eq!(Catalog::parse("ducklake:/x/pv.ducklake", base).unwrap(), Catalog::DuckDb("/x/pv.ducklake".into()));
        assert_eq!(Catalog::parse("sqlite:pv.sqlite", base).unwrap(), Catalog::Sqlite("/flows/pv.sqlite".into()));
        assert_eq!(
            Catalog::parse("ducklake:postgres:dbname=x host=h", base).unwrap(),
            Catalog::Postgres("dbname=x host=h".into())
        );
        let err = Catalog::parse("ducklake:mysql:db=x", base).unwrap_err().to_string();
        assert!(err.contains("unknown catalog kind `mysql`"), "{err}");
        assert_eq!(Catalog::Postgres("dbname=x password=secret".into()).describe(), "postgres:dbname=x password=***");
    }
}
