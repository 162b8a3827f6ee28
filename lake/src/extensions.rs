//! DuckDB extensions (`ducklake`, `spatial`, `sqlite`, `postgres`, `httpfs`, `lance`), provisioned without help.
//!
//! DuckDB normally downloads extensions from extensions.duckdb.org; many research machines cannot reach
//! it. [`ensure`] tries, in order, and stops at the first that loads:
//! 1. `LOAD name`: already installed in DuckDB's extension directory (or built in);
//! 2. a directory the user names: `FLOWRUN_DUCKDB_EXTENSIONS` or `[lake] extensions_dir`, holding
//!    `name.duckdb_extension` or `v1.5.5/linux_amd64/name.duckdb_extension` (`name` as DuckDB loads it:
//!    `sqlite_scanner`, `postgres_scanner`; a file named as in the PyPI wheel, `sqlite.duckdb_extension`, is
//!    copied into the cache under that name);
//! 3. flowrun's own cache, `~/.cache/flowrun/duckdb-extensions/v1.5.5/<platform>/name.duckdb_extension`
//!    (filled by step 5 on an earlier run);
//! 4. DuckDB's own `INSTALL name` (bounded by a short HTTP timeout);
//! 5. `python3 -m pip download --no-deps duckdb-extension-<name>==1.5.5`: the official extension binaries
//!    are published on PyPI; the wheel is unpacked into the cache of step 3.
//!
//! If all fail, the error names the extension, says what each step answered, and how to supply the file
//! by hand. A found path is remembered for the rest of the process.
//!
//! **Signatures, once per file's contents.** DuckDB checks an extension's signature on every `LOAD`: 0.1 s
//! for `ducklake` and 0.2 s for `spatial` on every run, most of a lake commit's fixed cost. The databases
//! flowrun opens for its own SQL (the lake's commit, exports) skip that check (`allow_unsigned_extensions`)
//! and autoload nothing; instead every extension file flowrun loads into them is hashed (blake3: 5-10 ms
//! for `ducklake` on 2 cores) and loaded only if DuckDB, in a database that checks signatures, has once
//! loaded a file with those contents (recorded under `<cache>/verified/<hash>`). A changed or tampered file is checked
//! again, and refused as DuckDB would refuse it. SQL nodes, whose SQL the flow's author wrote, run in
//! databases with DuckDB's own defaults (signatures checked on every `LOAD`).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::duck::{Duck, literal};

/// The DuckDB version the bundled library is (extensions must match it exactly).
pub const DUCKDB_VERSION: &str = "v1.5.5";

/// Where extensions may come from.
#[derive(Debug, Clone)]
pub struct ExtensionSources {
    /// A directory the user supplies (step 2).
    pub user_dir: Option<PathBuf>,
    /// flowrun's cache (steps 3 and 5).
    pub cache_dir: PathBuf,
    /// Try DuckDB's `INSTALL` (step 4).
    pub try_install: bool,
    /// Try PyPI through pip (step 5).
    pub try_pip: bool,
    /// Bound for steps 4 and 5 each.
    pub timeout: Duration,
}

impl ExtensionSources {
    /// From the environment: `FLOWRUN_DUCKDB_EXTENSIONS`, `XDG_CACHE_HOME` or `HOME`,
    /// `FLOWRUN_DUCKDB_NO_INSTALL=1`, `FLOWRUN_DUCKDB_NO_PIP=1`.
    pub fn from_env() -> ExtensionSources {
        let cache_root = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        let flag = |name: &str| std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        ExtensionSources {
            user_dir: std::env::var_os("FLOWRUN_DUCKDB_EXTENSIONS").filter(|v| !v.is_empty()).map(PathBuf::from),
            cache_dir: cache_root.join("flowrun").join("duckdb-extensions"),
            try_install: !flag("FLOWRUN_DUCKDB_NO_INSTALL"),
            try_pip: !flag("FLOWRUN_DUCKDB_NO_PIP"),
            timeout: Duration::from_secs(120),
        }
    }
}

fn remembered() -> &'static Mutex<HashMap<String, PathBuf>> {
    static FOUND: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    FOUND.get_or_init(Default::default)
}

/// Serialises provisioning within the process (parallel materializers must not download twice).
fn provisioning_lock() -> &'static Mutex<()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(Default::default)
}

/// Makes extension `name` loaded in `duck`, provisioning it if needed (see the module documentation).
pub fn ensure(duck: &Duck, name: &str, sources: &ExtensionSources) -> Result<()> {
    check_name(name)?;
    if let Some(path) = remembered().lock().unwrap().get(name).cloned()
        && load_file(duck, &path, sources).is_ok()
    {
        return Ok(());
    }
    let _guard = provisioning_lock().lock().unwrap();
    let mut tried: Vec<String> = Vec::new();
    // 1. already installed or built in
    match load_installed(duck, name, sources) {
        Ok(()) => return Ok(()),
        Err(e) => tried.push(format!("LOAD {name}: {}", first_line(&e))),
    }
    let platform: String = duck.scalar("PRAGMA platform").unwrap_or_else(|_| "linux_amd64".into());
    // the file must carry the extension's canonical name: DuckDB derives the entry point from it
    let file = format!("{}.duckdb_extension", canonical(name));
    let wheel_file = format!("{name}.duckdb_extension");
    // 2. the user's directory
    match &sources.user_dir {
        Some(dir) => {
            let found = [&file, &wheel_file]
                .into_iter()
                .flat_map(|f| [dir.join(f), dir.join(DUCKDB_VERSION).join(&platform).join(f)])
                .find(|p| p.is_file());
            match found {
                Some(p) => {
                    // a file named as in the PyPI wheel (`sqlite.duckdb_extension`) only loads under its
                    // canonical name: it is copied into flowrun's cache as that
                    let loadable = if p.file_name() == Some(file.as_ref()) {
                        Ok(p.clone())
                    } else {
                        let cached = cached_path(sources, &platform, name);
                        std::fs::File::open(&p)
                            .map_err(anyhow::Error::from)
                            .and_then(|mut f| write_atomically(&cached, &mut f))
                            .map(|()| cached)
                    };
                    match loadable.and_then(|l| load_file(duck, &l, sources).map(|()| l)) {
                        Ok(l) => return remember(name, &l),
                        Err(e) => tried.push(format!("{}: {}", p.display(), first_line(&e))),
                    }
                }
                None => tried.push(format!("{}: no {file} there", dir.display())),
            }
        }
        None => tried.push("FLOWRUN_DUCKDB_EXTENSIONS: not set".to_string()),
    }
    // 3. flowrun's cache
    let cached = cached_path(sources, &platform, name);
    if cached.is_file() {
        match load_file(duck, &cached, sources) {
            Ok(()) => return remember(name, &cached),
            Err(e) => tried.push(format!("{}: {}", cached.display(), first_line(&e))),
        }
    } else {
        tried.push(format!("{}: not cached yet", cached.display()));
    }
    // 4. DuckDB's INSTALL
    if sources.try_install {
        let secs = sources.timeout.as_secs().clamp(1, 30);
        let _ = duck.execute(&format!("SET http_timeout = {secs}; SET http_retries = 0"));
        match duck.execute(&format!("INSTALL {name}")).and_then(|()| load_installed(duck, name, sources)) {
            Ok(()) => return Ok(()),
            Err(e) => tried.push(format!("INSTALL {name}: {}", first_line(&e))),
        }
    }
    // 5. PyPI
    if sources.try_pip {
        match pip_fetch(name, &platform, &cached, sources.timeout) {
            Ok(()) => match load_file(duck, &cached, sources) {
                Ok(()) => return remember(name, &cached),
                Err(e) => tried.push(format!("{}: {}", cached.display(), first_line(&e))),
            },
            Err(e) => tried.push(format!(
                "pip download duckdb-extension-{name}=={}: {}",
                &DUCKDB_VERSION[1..],
                first_line(&e)
            )),
        }
    }
    Err(anyhow!(
        "DuckDB extension `{name}` ({DUCKDB_VERSION}, {platform}) is not available. Tried:\n  - {}\n\
         To supply it by hand: on a machine with internet, run `pip download --no-deps duckdb-extension-{name}=={}`, \
         unzip the wheel, and put extensions/{DUCKDB_VERSION}/{wheel_file} into a directory named by \
         FLOWRUN_DUCKDB_EXTENSIONS (or, renamed to {file}, into {})",
        tried.join("\n  - "),
        &DUCKDB_VERSION[1..],
        cached.parent().map(|p| p.display().to_string()).unwrap_or_default()
    ))
}

/// The file of extension `name` in flowrun's cache, fetched from PyPI (step 5) if it is not there yet, for
/// another DuckDB that must load the very same file (the tests' Python client): [`ensure`] caches nothing
/// for an extension the library has built in (the prebuilt one has `httpfs`).
///
/// ```no_run
/// use flowrun_lake::extensions::{ExtensionSources, provision};
/// let file = provision("httpfs", &ExtensionSources::from_env())?;
/// assert!(file.ends_with("httpfs.duckdb_extension"));
/// # anyhow::Ok(())
/// ```
pub fn provision(name: &str, sources: &ExtensionSources) -> Result<PathBuf> {
    check_name(name)?;
    let platform: String = Duck::in_memory()?.scalar("PRAGMA platform")?;
    let cached = cached_path(sources, &platform, name);
    let _guard = provisioning_lock().lock().unwrap();
    if !cached.is_file() {
        pip_fetch(name, &platform, &cached, sources.timeout)
            .with_context(|| format!("pip download duckdb-extension-{name}=={}", &DUCKDB_VERSION[1..]))?;
    }
    Ok(cached)
}

/// An extension's name is a word: it goes into a path and a pip requirement.
fn check_name(name: &str) -> Result<()> {
    anyhow::ensure!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "invalid extension name `{name}`");
    Ok(())
}

/// Where flowrun's cache keeps extension `name` for `platform` (`PRAGMA platform`), provisioned or not
/// (steps 3 and 5), under its canonical name.
pub fn cached_path(sources: &ExtensionSources, platform: &str, name: &str) -> PathBuf {
    sources.cache_dir.join(DUCKDB_VERSION).join(platform).join(format!("{}.duckdb_extension", canonical(name)))
}

/// The name DuckDB loads an extension by (`LOAD sqlite` loads `sqlite_scanner`).
fn canonical(name: &str) -> &str {
    match name {
        "sqlite" | "sqlite3" => "sqlite_scanner",
        "postgres" => "postgres_scanner",
        other => other,
    }
}

/// Writes `from` to `to` through a temporary file in the same directory: no half-written extension is
/// ever at `to`, even with two processes provisioning at once.
fn write_atomically(to: &Path, from: &mut impl Read) -> Result<()> {
    let dir = to.parent().expect("extension path has a parent");
    std::fs::create_dir_all(dir)?;
    let mut out = tempfile::NamedTempFile::new_in(dir)?;
    std::io::copy(from, &mut out)?;
    out.persist(to).map_err(|e| e.error)?;
    Ok(())
}

fn first_line(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    s.lines().next().unwrap_or_default().chars().take(300).collect()
}

/// Loads `name` as DuckDB has it: from the file in DuckDB's own extension directory (through
/// [`load_file`]), or a built-in one with `LOAD name` (which also says when it is not installed).
fn load_installed(duck: &Duck, name: &str, sources: &ExtensionSources) -> Result<()> {
    // NULL (not installed) is an error of `scalar`, so `None`
    let path: Option<String> = duck
        .scalar(&format!(
            "SELECT any_value(install_path) FROM duckdb_extensions() WHERE extension_name = {}",
            literal(canonical(name))
        ))
        .ok();
    match path.filter(|p| !p.is_empty() && !p.starts_with('(')).map(PathBuf::from) {
        Some(p) => load_file(duck, &p, sources).and_then(|()| remember(name, &p)),
        None => duck.execute(&format!("LOAD {name}")),
    }
}

/// Loads an extension file. Into a database that skips DuckDB's signature check, only a file whose
/// contents (blake3) DuckDB has checked once, in a database that does not skip it (see the module
/// documentation).
fn load_file(duck: &Duck, path: &Path, sources: &ExtensionSources) -> Result<()> {
    let load = format!("LOAD {}", literal(&path.to_string_lossy()));
    if !duck.checks_signatures {
        // 36 MB (ducklake) to 254 MB (lance), on every database that loads one: memory-mapped (a file
        // rewritten in place while it is hashed would stop the process, as it would while DuckDB maps it)
        // and hashed on `duck::threads()` threads when there are several
        let (mut hasher, threads) = (blake3::Hasher::new(), crate::duck::threads());
        match (threads > 1).then(|| rayon::ThreadPoolBuilder::new().num_threads(threads).build().ok()).flatten() {
            Some(pool) => pool.install(|| hasher.update_mmap_rayon(path))?,
            None => hasher.update_mmap(path)?,
        };
        let contents = hasher.finalize().to_hex().to_string();
        let record = sources.cache_dir.join("verified").join(&contents[..32]);
        if std::fs::read_to_string(&record).ok().as_deref() != Some(contents.as_str()) {
            Duck::checking_signatures()?.execute(&load).context("DuckDB checked its signature")?;
            write_atomically(&record, &mut contents.as_bytes())?;
        }
    }
    duck.execute(&load)
}

fn remember(name: &str, path: &Path) -> Result<()> {
    remembered().lock().unwrap().insert(name.to_string(), path.to_path_buf());
    Ok(())
}

/// Downloads the extension's wheel from PyPI and unpacks the extension into `target` (atomically).
fn pip_fetch(name: &str, platform: &str, target: &Path, timeout: Duration) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let python = std::env::var("FLOWRUN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let package = format!("duckdb-extension-{name}=={}", &DUCKDB_VERSION[1..]);
    let wheel_platform = match platform {
        "linux_amd64" => Some("manylinux2014_x86_64"),
        "linux_arm64" => Some("manylinux2014_aarch64"),
        _ => None,
    };
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d"])
        .arg(tmp.path())
        .arg(&package);
    if let Some(p) = wheel_platform {
        cmd.args(["--platform", p]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {python} -m pip"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(anyhow!("timed out after {} s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        let mut err = String::new();
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        return Err(anyhow!("{}", err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("pip failed")));
    }
    let wheel = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| anyhow!("pip downloaded no wheel"))?;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&wheel)?)?;
    // the wheel names the file after the package (`sqlite`); `target` carries the canonical name
    let suffix = format!("extensions/{DUCKDB_VERSION}/{name}.duckdb_extension");
    let index = (0..zip.len())
        .find(|&i| zip.by_index(i).map(|f| f.name().ends_with(&suffix)).unwrap_or(false))
        .ok_or_else(|| anyhow!("{} holds no {suffix}", wheel.display()))?;
    write_atomically(target, &mut zip.by_index(index)?)
}
