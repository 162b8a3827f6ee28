//! Getting a dataset's files: from a mirror (a directory, an HTTP base or an `s3://bucket/prefix`,
//! `<mirror>/<dataset key>/...`) or from the repository that publishes it (Zenodo, Figshare, GitHub,
//! ScienceBase, or plain URLs). An S3 mirror is reached as the flow's `[storage]` says (else the standard
//! AWS variables); its files are downloaded into the cache directory like a repository's, and reused while
//! their entity tag (the server's content tag) matches the listing's.
//!
//! The repository's public API gives the file list with sizes and checksums:
//! - Zenodo: `GET {zenodo}/records/{id}` -> `files[] {key, size, checksum: "md5:..", links.self}`;
//! - Figshare: `GET {figshare}/articles/{id}/versions/{v}` -> `files[] {name, size, supplied_md5 |
//!   computed_md5, download_url}`;
//! - GitHub: `GET {github}/repos/{owner}/{repo}/contents/{path}?ref=` -> `[{name, path, size, sha,
//!   download_url, type}]` (`sha` is the git blob hash, verified as such);
//! - ScienceBase: `GET {sciencebase}/item/{id}?format=json` -> `files[] {name, size, url, checksum {value,
//!   type}}`;
//! - direct: the URLs in the manifest.
//!
//! Downloads (blocking reqwest): a read timeout (`FLOWRUN_HTTP_TIMEOUT`, seconds, default 60), three
//! attempts with backoff for timeouts and 5xx answers (not for 4xx), resume of a partial file that has a
//! checksum with an HTTP `Range` request (restart when the server ignores it, or without a checksum),
//! checksum verified before the file is used, progress reported in bytes. Downloads are kept in the cache
//! directory (`downloads/<dataset>/<file name>`, side by side so a shapefile finds its sidecars) and reused
//! while they match the repository's checksum, so a file is fetched once. Zip archives are unpacked refusing any entry whose path would leave the target directory.
//!
//! Every file the node returns is fingerprinted with `ctx::track_file`, so a changed mirror file re-runs the
//! dataset's branch and nothing else.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use flowrun_engine::{CodecError, LiteralCx, Value, ctx, node};
use md5::Digest;
use serde::{Deserialize, Serialize};

use super::manifest::{Dataset, Format, Repository};

/// A file-name filter: `re:<regex>` or a glob.
pub enum Filter {
    /// Unanchored regular expression on the file name.
    Regex(regex::Regex),
    /// Glob on the file name.
    Glob(globset::GlobMatcher),
}

impl Filter {
    /// Parses `re:...` or a glob.
    pub fn parse(s: &str) -> Result<Filter> {
        match s.strip_prefix("re:") {
            Some(re) => Ok(Filter::Regex(regex::Regex::new(re).map_err(|e| anyhow!("bad regex filter `{s}`: {e}"))?)),
            None => Ok(Filter::Glob(
                globset::Glob::new(s).map_err(|e| anyhow!("bad glob filter `{s}`: {e}"))?.compile_matcher(),
            )),
        }
    }

    /// Whether `name` (a file name) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Filter::Regex(r) => r.is_match(name),
            Filter::Glob(g) => g.is_match(name),
        }
    }
}

/// Whether a file name passes the dataset's include/exclude filters.
pub fn keep(d: &Dataset, name: &str) -> Result<bool> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let includes = d.include.iter().map(|f| Filter::parse(f)).collect::<Result<Vec<_>>>()?;
    let excludes = d.exclude.iter().map(|f| Filter::parse(f)).collect::<Result<Vec<_>>>()?;
    let included = includes.is_empty() || includes.iter().any(|f| f.matches(base));
    Ok(included && !excludes.iter().any(|f| f.matches(base)))
}

fn has_ext(name: &str, exts: &[&str]) -> bool {
    let lower = name.to_ascii_lowercase();
    exts.iter().any(|e| lower.ends_with(&format!(".{e}")))
}

fn stem(name: &str) -> &str {
    name.rsplit_once('.').map(|(s, _)| s).unwrap_or(name)
}

/// Where datasets come from instead of their repositories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Mirror {
    /// No mirror: use the repositories.
    None,
    /// A local directory.
    Dir(PathBuf),
    /// An HTTP base URL.
    Http(String),
    /// An object store location, `s3://bucket/prefix`.
    S3(String),
}

impl Value for Mirror {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        flowrun_engine::value::serde_encode(self, out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        flowrun_engine::value::serde_decode(bytes)
    }
    /// `""`: none; `http(s)://...`: an HTTP base; `s3://...`: object storage; anything else: a directory
    /// (relative to the flow file).
    fn from_toml(value: &toml::Value, cx: &LiteralCx) -> Result<Self, String> {
        let s = value.as_str().ok_or_else(|| format!("a mirror is a string, found {}", value.type_str()))?.trim();
        Ok(if s.is_empty() {
            Mirror::None
        } else if s.starts_with("http://") || s.starts_with("https://") {
            Mirror::Http(s.trim_end_matches('/').to_string())
        } else if flowrun_storage::is_remote(s) {
            flowrun_storage::Bucket::parse_url(s).map_err(|e| e.to_string())?;
            Mirror::S3(s.trim_end_matches('/').to_string())
        } else {
            Mirror::Dir(cx.resolve(s))
        })
    }
    fn default_value() -> Option<Self> {
        Some(Mirror::None)
    }
}

/// API endpoints of the repositories (overridable for testing or for a proxy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Repositories {
    /// Zenodo API base.
    pub zenodo: String,
    /// Figshare API base.
    pub figshare: String,
    /// GitHub API base.
    pub github: String,
    /// ScienceBase catalog base.
    pub sciencebase: String,
}

impl Default for Repositories {
    fn default() -> Self {
        Repositories {
            zenodo: "https://zenodo.org/api".into(),
            figshare: "https://api.figshare.com/v2".into(),
            github: "https://api.github.com".into(),
            sciencebase: "https://www.sciencebase.gov/catalog".into(),
        }
    }
}

impl Value for Repositories {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        flowrun_engine::value::serde_encode(self, out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        flowrun_engine::value::serde_decode(bytes)
    }
    fn from_toml(value: &toml::Value, _cx: &LiteralCx) -> Result<Self, String> {
        flowrun_engine::value::serde_from_toml(value)
    }
    fn default_value() -> Option<Self> {
        Some(Repositories::default())
    }
}

/// A file of a dataset on local disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its name within the dataset (relative path).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of its content (hex).
    pub blake3: String,
    /// Files read with it (a shapefile's `.dbf`, `.prj`, `.cpg`, `.shx`): name and blake3, so that a
    /// changed sidecar changes this value and re-runs what reads it.
    #[serde(default)]
    pub sidecars: Vec<(String, String)>,
}

/// The label files of one dataset, ready to read.
///
/// Its identity (what the cache keys of the nodes reading it see) is its content: the dataset's entry and
/// each file's name, size and hash, not where the files are on this machine nor where they came from. A
/// second machine that downloads the same files into another directory reuses the results computed from
/// them (through a remote cache).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetFiles {
    /// Dataset key.
    pub key: String,
    /// The dataset's manifest entry.
    pub dataset: Dataset,
    /// The files to read (sidecars of shapefiles sit next to them).
    pub files: Vec<LocalFile>,
    /// Where they came from (mirror path, API URL).
    pub origin: String,
}

impl Value for DatasetFiles {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        flowrun_engine::value::serde_encode(self, out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        flowrun_engine::value::serde_decode(bytes)
    }
    fn label(&self) -> Option<String> {
        Some(self.key.clone())
    }
    fn identity(&self) -> Option<Result<blake3::Hash, String>> {
        let files: Vec<_> = self.files.iter().map(|f| (&f.name, f.size, &f.blake3, &f.sidecars)).collect();
        Some(
            serde_json::to_vec(&(&self.key, &self.dataset, files)).map(|b| blake3::hash(&b)).map_err(|e| e.to_string()),
        )
    }
}

/// A checksum a repository states.
#[derive(Debug, Clone, PartialEq)]
pub enum Checksum {
    /// MD5 (hex).
    Md5(String),
    /// Git blob SHA-1 (hex): sha1("blob <len>\0" + content).
    GitSha1(String),
}

impl Checksum {
    fn verify(&self, path: &Path) -> Result<()> {
        let mut f = fs::File::open(path)?;
        let (want, got) = match self {
            Checksum::Md5(h) => {
                let mut d = md5::Md5::new();
                std::io::copy(&mut f, &mut d)?;
                (h.to_ascii_lowercase(), hex(&d.finalize()))
            }
            Checksum::GitSha1(h) => {
                let len = f.metadata()?.len();
                let mut d = sha1::Sha1::new();
                d.update(format!("blob {len}\0").as_bytes());
                std::io::copy(&mut f, &mut d)?;
                (h.to_ascii_lowercase(), hex(&d.finalize()))
            }
        };
        if want != got {
            let kind = match self {
                Checksum::Md5(_) => "md5",
                Checksum::GitSha1(_) => "git blob sha1",
            };
            bail!("{kind} checksum mismatch: the repository says {want}, the download has {got}");
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file as a repository lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteFile {
    /// File name (relative path).
    pub name: String,
    /// Download URL.
    pub url: String,
    /// Size, if stated.
    pub size: Option<u64>,
    /// Checksum, if stated.
    pub checksum: Option<Checksum>,
}

fn client() -> Result<reqwest::blocking::Client> {
    let secs = std::env::var("FLOWRUN_HTTP_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(60u64);
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(secs))
        .connect_timeout(Duration::from_secs(secs.min(15)))
        .user_agent(concat!("flowrun/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// GET with retries (timeouts, connection errors and 5xx are retried; 4xx are not).
fn get(client: &reqwest::blocking::Client, url: &str, range_from: u64) -> Result<reqwest::blocking::Response> {
    let mut delay = Duration::from_millis(500);
    let mut last = None;
    for attempt in 1..=3 {
        let mut req = client.get(url);
        if range_from > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={range_from}-"));
        }
        match req.send() {
            Ok(r) if r.status().is_success() => return Ok(r),
            Ok(r) if r.status().is_client_error() => bail!("GET {url}: HTTP {}", r.status()),
            Ok(r) => last = Some(anyhow!("GET {url}: HTTP {} (after {attempt} attempts)", r.status())),
            Err(e) => {
                let what = if e.is_timeout() { "timed out" } else { "failed" };
                last = Some(anyhow!("GET {url} {what} (after {attempt} attempts): {e}"));
            }
        }
        if attempt < 3 {
            std::thread::sleep(delay);
            delay *= 2;
        }
    }
    Err(last.unwrap())
}

fn get_json(client: &reqwest::blocking::Client, url: &str) -> Result<serde_json::Value> {
    let r = get(client, url, 0)?;
    r.json().with_context(|| format!("GET {url}: the answer is not the JSON the API documents"))
}

/// Lists a dataset's files through its repository's API.
pub fn list_remote(d: &Dataset, repos: &Repositories, client: &reqwest::blocking::Client) -> Result<Vec<RemoteFile>> {
    let src = d.source.trim();
    let tail_number = |prefix: &str| -> Result<String> {
        let s = src.rsplit(prefix).next().unwrap_or(src);
        let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() { bail!("cannot find the record number in `{src}`") } else { Ok(digits) }
    };
    let field = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    match d.repository {
        Repository::Zenodo => {
            let id = tail_number("zenodo.")?;
            let url = format!("{}/records/{id}", repos.zenodo);
            let v = get_json(client, &url)?;
            let files = v["files"].as_array().with_context(|| format!("{url}: no `files` list"))?;
            files
                .iter()
                .map(|f| {
                    let name =
                        field(f, "key").or_else(|| field(f, "filename")).context("a Zenodo file without `key`")?;
                    let link =
                        f["links"]["self"].as_str().or_else(|| f["links"]["download"].as_str()).map(str::to_string);
                    let checksum =
                        field(f, "checksum").and_then(|c| c.strip_prefix("md5:").map(|h| Checksum::Md5(h.into())));
                    Ok(RemoteFile {
                        url: link.unwrap_or_else(|| format!("{}/records/{id}/files/{name}/content", repos.zenodo)),
                        size: f["size"].as_u64(),
                        checksum,
                        name,
                    })
                })
                .collect()
        }
        Repository::Figshare => {
            let id = tail_number("figshare.")?;
            let version =
                src.rsplit_once(".v").map(|(_, v)| v.to_string()).filter(|v| v.chars().all(|c| c.is_ascii_digit()));
            let url = match version {
                Some(v) => format!("{}/articles/{id}/versions/{v}", repos.figshare),
                None => format!("{}/articles/{id}", repos.figshare),
            };
            let v = get_json(client, &url)?;
            let files = v["files"].as_array().with_context(|| format!("{url}: no `files` list"))?;
            files
                .iter()
                .map(|f| {
                    Ok(RemoteFile {
                        name: field(f, "name").context("a Figshare file without `name`")?,
                        url: field(f, "download_url").context("a Figshare file without `download_url`")?,
                        size: f["size"].as_u64(),
                        checksum: field(f, "supplied_md5")
                            .filter(|s| !s.is_empty())
                            .or_else(|| field(f, "computed_md5"))
                            .map(Checksum::Md5),
                    })
                })
                .collect()
        }
        Repository::Github => {
            let mut parts = src.trim_start_matches("https://github.com/").splitn(3, '/');
            let (owner, repo) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let path = parts.next().unwrap_or("");
            if owner.is_empty() || repo.is_empty() {
                bail!("a GitHub source is owner/repo[/path], got `{src}`");
            }
            let git_ref = d.git_ref.clone().unwrap_or_else(|| "HEAD".into());
            let url = format!("{}/repos/{owner}/{repo}/contents/{path}?ref={git_ref}", repos.github);
            let v = get_json(client, &url)?;
            let entries = match &v {
                serde_json::Value::Array(a) => a.clone(),
                obj => vec![obj.clone()],
            };
            Ok(entries
                .iter()
                .filter(|e| e["type"].as_str().unwrap_or("file") == "file")
                .filter_map(|e| {
                    Some(RemoteFile {
                        name: field(e, "name")?,
                        url: field(e, "download_url")?,
                        size: e["size"].as_u64(),
                        checksum: field(e, "sha").map(Checksum::GitSha1),
                    })
                })
                .collect())
        }
        Repository::Sciencebase => {
            let id = src.rsplit('/').next().unwrap_or(src);
            let url = format!("{}/item/{id}?format=json", repos.sciencebase);
            let v = get_json(client, &url)?;
            let files = v["files"].as_array().with_context(|| format!("{url}: no `files` list"))?;
            files
                .iter()
                .map(|f| {
                    let checksum = match (f["checksum"]["type"].as_str(), f["checksum"]["value"].as_str()) {
                        (Some(t), Some(h)) if t.eq_ignore_ascii_case("md5") => Some(Checksum::Md5(h.to_string())),
                        _ => None,
                    };
                    Ok(RemoteFile {
                        name: field(f, "name").context("a ScienceBase file without `name`")?,
                        url: field(f, "url")
                            .or_else(|| field(f, "downloadUri"))
                            .context("a ScienceBase file without `url`")?,
                        size: f["size"].as_u64(),
                        checksum,
                    })
                })
                .collect()
        }
        Repository::Direct => {
            let mut urls = vec![src.to_string()];
            urls.extend(d.urls.iter().cloned());
            Ok(urls
                .into_iter()
                .map(|u| RemoteFile {
                    name: u
                        .rsplit('/')
                        .next()
                        .unwrap_or("download")
                        .split('?')
                        .next()
                        .unwrap_or("download")
                        .to_string(),
                    url: u,
                    size: None,
                    checksum: None,
                })
                .collect())
        }
    }
}

/// Lists `<base>/` of an HTTP mirror: a JSON array of names, or the links of an HTML index page.
fn list_http_dir(client: &reqwest::blocking::Client, base: &str) -> Result<Vec<RemoteFile>> {
    let url = format!("{}/", base.trim_end_matches('/'));
    let body = get(client, &url, 0)?.text()?;
    let names: Vec<String> = match serde_json::from_str::<Vec<String>>(&body) {
        Ok(names) => names,
        Err(_) => body
            .split("href=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .filter(|h| {
                !h.is_empty()
                    && !h.starts_with('?')
                    && !h.starts_with('/')
                    && !h.contains("..")
                    && !h.ends_with('/')
                    && !h.contains("://")
            })
            .map(percent_decode)
            .collect(),
    };
    Ok(names
        .into_iter()
        .map(|n| RemoteFile { url: format!("{url}{n}"), name: n, size: None, checksum: None })
        .collect())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Downloads `f` into `dir` (resuming a partial download of a file with a checksum), verifies its checksum,
/// returns the path.
pub fn download(client: &reqwest::blocking::Client, f: &RemoteFile, dir: &Path) -> Result<PathBuf> {
    let safe_name = f.name.replace(['/', '\\'], "_");
    // One directory per dataset, files under their own names: a shapefile's sidecars must sit side by side.
    // A file already there is reused when it matches the repository's checksum (or, without one, its size).
    let final_dir = dir.to_path_buf();
    fs::create_dir_all(&final_dir)?;
    let target = final_dir.join(&safe_name);
    if target.exists() {
        match &f.checksum {
            Some(c) if c.verify(&target).is_ok() => return Ok(target),
            None if f.size.is_none_or(|s| fs::metadata(&target).map(|m| m.len() == s).unwrap_or(false)) => {
                return Ok(target);
            }
            _ => {
                fs::remove_file(&target)?;
            }
        }
    }
    let part = final_dir.join(format!("{safe_name}.part"));
    // a partial download is resumed only when the repository gives a checksum, which catches a file that
    // changed upstream in the meantime (the old part and the new rest); otherwise it starts over
    let have = if f.checksum.is_some() { fs::metadata(&part).map(|m| m.len()).unwrap_or(0) } else { 0 };
    let resp = match get(client, &f.url, have) {
        // a part the server cannot continue (complete already, longer than the file, or the file changed):
        // started over
        Err(_) if have > 0 => {
            let _ = fs::remove_file(&part);
            get(client, &f.url, 0)?
        }
        r => r?,
    };
    let resumed = have > 0 && resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    let total = resp.content_length().map(|l| if resumed { l + have } else { l }).or(f.size);
    let mut out = if resumed { fs::OpenOptions::new().append(true).open(&part)? } else { fs::File::create(&part)? };
    let mut done = if resumed { have } else { 0 };
    let mut resp = resp;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = resp.read(&mut buf).with_context(|| format!("reading {}", f.url))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        done += n as u64;
        ctx::progress(done, total);
    }
    out.flush()?;
    drop(out);
    if let Some(size) = f.size
        && done != size
    {
        let _ = fs::remove_file(&part);
        bail!("{}: got {done} bytes, the repository says {size}", f.url);
    }
    if let Some(c) = &f.checksum
        && let Err(e) = c.verify(&part)
    {
        let _ = fs::remove_file(&part);
        bail!("{} ({}): {e}", f.name, f.url);
    }
    fs::rename(&part, &target)?;
    Ok(target)
}

/// Unpacks a zip archive into `dir`, refusing entries that would escape it. Returns the unpacked files.
/// The most an archive may unpack to: `FLOWRUN_MAX_UNPACKED` bytes (default 16 GiB). A zip bomb is refused
/// when it reaches it, whatever its headers claim; a partial unpacking is removed.
fn unpack_limit() -> u64 {
    std::env::var("FLOWRUN_MAX_UNPACKED").ok().and_then(|v| v.parse().ok()).unwrap_or(16 << 30)
}

pub fn unzip(archive: &Path, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let unpacked = unzip_within(archive, dir, unpack_limit());
    if unpacked.is_err() {
        let _ = fs::remove_dir_all(dir);
    }
    unpacked
}

fn unzip_within(archive: &Path, dir: &Path, limit: u64) -> Result<Vec<(String, PathBuf)>> {
    let mut zip = zip::ZipArchive::new(fs::File::open(archive)?)
        .with_context(|| format!("{} is not a zip archive", archive.display()))?;
    let mut out = Vec::new();
    let mut total = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let Some(rel) = entry.enclosed_name() else {
            bail!(
                "zip entry `{}` of {} escapes the target directory; refusing the archive",
                entry.name(),
                archive.display()
            );
        };
        if entry.is_dir() {
            continue;
        }
        let target = dir.join(&rel);
        if let Some(p) = target.parent() {
            fs::create_dir_all(p)?;
        }
        let mut f = fs::File::create(&target)?;
        // read one byte past what is left: more means over the limit
        let left = limit.saturating_sub(total);
        let copied = std::io::copy(&mut std::io::Read::take(&mut entry, left + 1), &mut f)?;
        total += copied;
        if copied > left {
            bail!(
                "{} unpacks to more than {limit} bytes (FLOWRUN_MAX_UNPACKED): refusing it as a zip bomb",
                archive.display()
            );
        }
        out.push((rel.to_string_lossy().replace('\\', "/"), target));
    }
    Ok(out)
}

/// The files to read among `available` (name, path): those of the format that pass the filters.
fn select(d: &Dataset, available: &[(String, PathBuf)]) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for (name, path) in available {
        if has_ext(name, d.format.extensions()) && keep(d, name)? {
            out.push((name.clone(), path.clone()));
        }
    }
    out.sort();
    Ok(out)
}

fn local_file(name: String, path: PathBuf, sidecars: Vec<(String, String)>) -> Result<LocalFile> {
    let hash = ctx::track_file(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let size = fs::metadata(&path)?.len();
    Ok(LocalFile { path, name, size, blake3: hash.to_hex().to_string(), sidecars })
}

fn walk(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    // the dataset's directory itself may be a link (a mirror of links to the data); what is in it stays in it
    let root = fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = e?.path();
            // a file may be a link, but not to a place outside its dataset's directory
            let real = fs::canonicalize(&p).with_context(|| format!("cannot resolve {}", p.display()))?;
            if !real.starts_with(&root) {
                bail!("{} is a link leaving the dataset's directory (to {}): refusing it", p.display(), real.display());
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().replace('\\', "/");
                out.push((rel, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Resolves, downloads (or finds in the mirror), unpacks and filters one dataset's files.
pub fn fetch(d: &Dataset, mirror: &Mirror, repos: &Repositories) -> Result<DatasetFiles> {
    let cache = ctx::cache_dir("downloads").join(&d.key);
    let (mut available, origin): (Vec<(String, PathBuf)>, String) = match mirror {
        Mirror::Dir(root) => {
            let dir = root.join(&d.key);
            if !dir.is_dir() {
                bail!("dataset `{}`: the mirror has no directory {}", d.key, dir.display());
            }
            let files = walk(&dir)?;
            // a file added to the dataset's directory may pass the filters: track the listings too (each once)
            let mut listed: std::collections::BTreeSet<&Path> = files.iter().filter_map(|(_, p)| p.parent()).collect();
            listed.insert(&dir);
            for d in listed {
                ctx::track_listing(d)?;
            }
            (files, dir.display().to_string())
        }
        Mirror::Http(base) => {
            let client = client()?;
            let url = format!("{base}/{}", d.key);
            let listed =
                list_http_dir(&client, &url).with_context(|| format!("dataset `{}`: listing the mirror", d.key))?;
            let wanted = wanted(d, &listed)?;
            let mut files = Vec::new();
            for f in wanted {
                let p = download(&client, &f, &cache)
                    .with_context(|| format!("dataset `{}`: downloading {}", d.key, f.name))?;
                files.push((f.name.clone(), p));
            }
            (files, url)
        }
        Mirror::S3(url) => {
            let bucket = s3_mirror(url)?;
            let listed =
                list_s3_dir(&bucket, &d.key).with_context(|| format!("dataset `{}`: listing the mirror", d.key))?;
            let tags: std::collections::HashMap<String, String> =
                listed.iter().map(|(f, tag)| (f.name.clone(), tag.clone())).collect();
            let listed: Vec<RemoteFile> = listed.into_iter().map(|(f, _)| f).collect();
            let mut files = Vec::new();
            for f in wanted(d, &listed)? {
                // a download is reused while the object's entity tag (its content's, on S3) is the one it had
                let p = cache.join(f.name.replace(['/', '\\'], "_"));
                let tag_file = cache.join(format!(".{}.etag", f.name.replace(['/', '\\'], "_")));
                let tag = &tags[&f.name];
                if p.exists() && fs::read_to_string(&tag_file).is_ok_and(|t| t == *tag) {
                    files.push((f.name.clone(), p));
                    continue;
                }
                bucket
                    .download(&format!("{}/{}", d.key, f.name), &p)
                    .with_context(|| format!("dataset `{}`: downloading {}", d.key, f.name))?;
                fs::write(&tag_file, tag)?;
                files.push((f.name.clone(), p));
            }
            (files, format!("{url}/{}", d.key))
        }
        Mirror::None => {
            let client = client()?;
            let listed = list_remote(d, repos, &client)
                .with_context(|| format!("dataset `{}`: listing files in {:?}", d.key, d.repository))?;
            let wanted = wanted(d, &listed)?;
            if wanted.is_empty() {
                bail!("dataset `{}`: no file of the repository's list passes the filters", d.key);
            }
            let mut files = Vec::new();
            for f in wanted {
                let p = download(&client, &f, &cache)
                    .with_context(|| format!("dataset `{}`: downloading {}", d.key, f.name))?;
                files.push((f.name.clone(), p));
            }
            (files, format!("{:?} {}", d.repository, d.source))
        }
    };
    if d.compression.as_deref() == Some("zip") {
        let mut unpacked = Vec::new();
        for (name, path) in &available {
            if has_ext(name, &["zip"]) {
                ctx::track_file(path)?;
                let hash = ctx::fingerprint_file(path)?;
                let dir = ctx::cache_dir("unpacked").join(&hash.to_hex()[..24]);
                let files = unzip(path, &dir).with_context(|| format!("dataset `{}`: unpacking {name}", d.key))?;
                unpacked.extend(files);
            } else {
                unpacked.push((name.clone(), path.clone()));
            }
        }
        available = unpacked;
    }
    let selected = select(d, &available)?;
    if selected.is_empty() {
        let names: Vec<&str> = available.iter().map(|(n, _)| n.as_str()).take(10).collect();
        bail!(
            "dataset `{}`: no {:?} file passes the filters among: {}",
            d.key,
            d.format,
            if names.is_empty() { "(no files)".to_string() } else { names.join(", ") }
        );
    }
    // a shapefile's sidecars are read with it: tracked, and their hashes part of the value
    let sidecars_of = |shp: &str| -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (name, path) in &available {
            if d.format == Format::Shp && !has_ext(name, &["shp"]) && stem(shp).eq_ignore_ascii_case(stem(name)) {
                out.push((name.clone(), ctx::track_file(path)?.to_hex().to_string()));
            }
        }
        Ok(out)
    };
    let files = selected
        .into_iter()
        .map(|(n, p)| {
            let s = sidecars_of(&n)?;
            local_file(n, p, s)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(DatasetFiles { key: d.key.clone(), dataset: d.clone(), files, origin })
}

/// The bucket of an S3 mirror, reached as the process's storage settings say.
pub(crate) fn s3_mirror(url: &str) -> Result<flowrun_storage::Bucket> {
    flowrun_storage::Bucket::open(url, &flowrun_storage::process_config()?)
}

/// The files under `<mirror>/<key>/`, as a repository would list them, each with its entity tag (or, when
/// the server gives none, its size).
pub(crate) fn list_s3_dir(bucket: &flowrun_storage::Bucket, key: &str) -> Result<Vec<(RemoteFile, String)>> {
    let listed = bucket.list(&format!("{key}/"))?;
    Ok(listed
        .into_iter()
        .map(|o| {
            let name = o.key.strip_prefix(&format!("{key}/")).unwrap_or(&o.key).to_string();
            let tag = o.e_tag.unwrap_or_else(|| format!("size {}", o.size));
            (RemoteFile { url: format!("{}/{}", bucket.url(), o.key), name, size: Some(o.size), checksum: None }, tag)
        })
        .collect())
}

/// The remote files worth downloading: zips when compressed, else the format's files (plus shapefile
/// sidecars) that pass the filters.
fn wanted(d: &Dataset, listed: &[RemoteFile]) -> Result<Vec<RemoteFile>> {
    // a zipped dataset: its archives, or (a mirror of it, unpacked) the files themselves
    if d.compression.as_deref() == Some("zip") {
        let zips: Vec<RemoteFile> = listed.iter().filter(|f| has_ext(&f.name, &["zip"])).cloned().collect();
        if !zips.is_empty() {
            return Ok(zips);
        }
    }
    let mut primary = Vec::new();
    for f in listed {
        if has_ext(&f.name, d.format.extensions()) && keep(d, &f.name)? {
            primary.push(f.clone());
        }
    }
    if d.format == Format::Shp {
        let stems: Vec<String> = primary.iter().map(|f| stem(&f.name).to_ascii_lowercase()).collect();
        for f in listed {
            if !has_ext(&f.name, &["shp"]) && stems.contains(&stem(&f.name).to_ascii_lowercase()) {
                primary.push(f.clone());
            }
        }
    }
    Ok(primary)
}

/// The files of one dataset: from the mirror when one is given, else from its repository.
#[node(tags(stage = "source"))]
pub fn files(datasets: &Dataset, mirror: &Mirror, repositories: &Repositories) -> Result<DatasetFiles> {
    fetch(datasets, mirror, repositories)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(include: &[&str], exclude: &[&str]) -> Dataset {
        let mut d: Dataset = toml::from_str("repository = \"github\"\nsource = \"a/b\"\nformat = \"shp\"").unwrap();
        d.key = "k".into();
        d.include = include.iter().map(|s| s.to_string()).collect();
        d.exclude = exclude.iter().map(|s| s.to_string()).collect();
        d
    }

    #[test]
    fn filters_regex_and_glob() {
        let d = dataset(&["re:PV_.*\\.shp$"], &["re:NPV_.*\\.shp$"]);
        assert!(keep(&d, "PV_Test_2020.shp").unwrap());
        assert!(!keep(&d, "NPV_Test_2020.shp").unwrap());
        let g = dataset(&["*.geojson"], &["*.csv"]);
        assert!(keep(&g, "dir/uk.geojson").unwrap());
        assert!(!keep(&g, "uk.csv").unwrap());
        assert!(Filter::parse("re:(").is_err());
    }

    #[test]
    fn zip_slip_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zpath = dir.path().join("evil.zip");
        {
            let mut w = zip::ZipWriter::new(fs::File::create(&zpath).unwrap());
            w.start_file("../escape.txt", zip::write::SimpleFileOptions::default()).unwrap();
            w.write_all(b"x").unwrap();
            w.finish().unwrap();
        }
        let out = dir.path().join("out");
        let err = unzip(&zpath, &out).unwrap_err().to_string();
        assert!(err.contains("escapes the target directory"), "{err}");
        assert!(!dir.path().join("escape.txt").exists());
    }

    #[test]
    fn git_blob_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"hello\n").unwrap();
        // `git hash-object` of "hello\n"
        Checksum::GitSha1("ce013625030ba8dba906f756967f9e9ca394464a".into()).verify(&p).unwrap();
        assert!(Checksum::Md5("00".into()).verify(&p).is_err());
    }
}
