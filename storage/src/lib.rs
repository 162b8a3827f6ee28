//! Object storage wherever flowrun takes a path: `s3://bucket/prefix` on AWS S3 or any S3-compatible server
//! (MinIO, Cloudflare R2, Ceph, moto), through the `object_store` crate.
//!
//! - [`StorageConfig`]: where the endpoint and the credentials come from: the standard AWS variables
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//!   `AWS_ALLOW_HTTP`), or a flow's `[storage]` section, which names the variables to read (a flow file
//!   never holds a secret) and may set the endpoint, region and URL style.
//! - [`Bucket`]: one `s3://bucket/prefix`, with the few blocking operations flowrun needs (get, put, a
//!   file put as a multipart upload, list, download). A `put` is one PUT request, a file put a multipart
//!   upload completed at the end: S3 shows an object only once it is complete, so a reader never sees part
//!   of one (S3 has no rename; this is what makes a write atomic).
//! - [`RemoteCache`]: the object-store side of the cache's [`flowrun_cache::Remote`].
//!
//! Secrets are held in [`Secret`], which prints as `***` everywhere (`Debug`, `Display`), and no error
//! message of this crate includes one.
//!
//! ```
//! use flowrun_storage::{Bucket, StorageConfig};
//! let cfg = StorageConfig::from_table(None).unwrap();
//! assert!(Bucket::parse_url("s3://lake/pv/data").is_ok());
//! assert!(Bucket::parse_url("/local/path").is_err());
//! # let _ = cfg;
//! ```

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// Whether `s` names an object store location rather than a local path.
pub fn is_remote(s: &str) -> bool {
    s.starts_with("s3://")
}

/// A secret read from the environment: prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that must send it (a request signer, a DuckDB secret).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a bucket is and how to sign requests to it (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// `http(s)://host:port` of an S3-compatible server; `None` for AWS.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` unless told otherwise; S3-compatible servers mostly ignore it).
    pub region: String,
    /// Allow plain HTTP (a server on loopback, a test).
    pub allow_http: bool,
    /// Path-style URLs (`endpoint/bucket/key`), as MinIO-like servers want; AWS uses virtual-hosted ones.
    pub path_style: bool,
    /// The variable holding the access key id.
    pub key_id_var: String,
    /// The variable holding the secret access key.
    pub secret_var: String,
    /// The variable holding a session token, if any.
    pub token_var: String,
}

/// The keys a `[storage]` section may have.
const STORAGE_KEYS: [&str; 7] = [
    "endpoint",
    "region",
    "allow_http",
    "url_style",
    "access_key_id_env",
    "secret_access_key_env",
    "session_token_env",
];

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl StorageConfig {
    /// The AWS variables, then `[storage]` (`table`) over them. An endpoint other than AWS's defaults to
    /// path-style URLs.
    ///
    /// ```
    /// let t: toml::Table = toml::from_str("endpoint = \"http://127.0.0.1:9000\"\naccess_key_id_env = \"LAB_KEY\"").unwrap();
    /// let c = flowrun_storage::StorageConfig::from_table(Some(&t)).unwrap();
    /// assert!(c.allow_http && c.path_style);
    /// assert_eq!(c.key_id_var, "LAB_KEY");
    /// ```
    pub fn from_table(table: Option<&toml::Table>) -> Result<StorageConfig> {
        let empty = toml::Table::new();
        let t = table.unwrap_or(&empty);
        if let Some(k) = t.keys().find(|k| !STORAGE_KEYS.contains(&k.as_str())) {
            bail!("[storage] has no key `{k}`; keys: {}", STORAGE_KEYS.join(", "));
        }
        let text = |k: &str| -> Result<Option<String>> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => bail!("[storage] {k} must be a string, found {}", other.type_str()),
            }
        };
        for k in ["access_key_id_env", "secret_access_key_env", "session_token_env"] {
            // a variable name is upper case: a secret pasted here by mistake (mixed or lower case, or an
            // access key id) is refused without being printed
            if let Some(v) = text(k)?
                && (v.is_empty()
                    || v.starts_with(|c: char| c.is_ascii_digit())
                    || !v.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    || ["AKIA", "ASIA"].iter().any(|p| v.starts_with(p)))
            {
                bail!(
                    "[storage] {k} names an environment variable in upper case (like AWS_ACCESS_KEY_ID); its value is not one (a secret never goes in a flow file)"
                );
            }
        }
        let endpoint = text("endpoint")?.or_else(|| env("AWS_ENDPOINT_URL_S3")).or_else(|| env("AWS_ENDPOINT_URL"));
        let allow_http = match t.get("allow_http") {
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => bail!("[storage] allow_http must be true or false, found {}", other.type_str()),
            None => {
                env("AWS_ALLOW_HTTP").is_some_and(|v| v == "true" || v == "1")
                    || endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))
            }
        };
        let path_style = match text("url_style")?.as_deref() {
            Some("path") => true,
            Some("vhost") | Some("virtual") => false,
            Some(other) => bail!("[storage] url_style is \"path\" or \"vhost\", not `{other}`"),
            None => endpoint.is_some(),
        };
        Ok(StorageConfig {
            endpoint,
            region: text("region")?
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            allow_http,
            path_style,
            key_id_var: text("access_key_id_env")?.unwrap_or_else(|| "AWS_ACCESS_KEY_ID".into()),
            secret_var: text("secret_access_key_env")?.unwrap_or_else(|| "AWS_SECRET_ACCESS_KEY".into()),
            token_var: text("session_token_env")?.unwrap_or_else(|| "AWS_SESSION_TOKEN".into()),
        })
    }

    /// The access key id, the secret and the session token, from their variables.
    pub fn credentials(&self) -> Result<(String, Secret, Option<Secret>)> {
        // a name is echoed only when it has an `_`, as variable names do and keys (all capitals and digits,
        // such as a MinIO access key put in `[storage]` by mistake) do not
        let say = |name: &str, key: &str| match name.contains('_') {
            true => name.to_string(),
            false => format!("the variable [storage] {key} names"),
        };
        let key = env(&self.key_id_var).ok_or_else(|| {
            anyhow!(
                "no access key: set {} (and {})",
                say(&self.key_id_var, "access_key_id_env"),
                say(&self.secret_var, "secret_access_key_env")
            )
        })?;
        let secret = env(&self.secret_var)
            .ok_or_else(|| anyhow!("no secret key: set {}", say(&self.secret_var, "secret_access_key_env")))?;
        Ok((key, Secret(secret), env(&self.token_var).map(Secret)))
    }

    /// `host:port` of the endpoint, as DuckDB's S3 secret wants it.
    pub fn endpoint_host(&self) -> Option<&str> {
        self.endpoint
            .as_deref()
            .map(|e| e.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/'))
    }

    /// For messages: the endpoint, or AWS.
    pub fn describe(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| format!("AWS S3 ({})", self.region))
    }
}

static PROCESS_CONFIG: OnceLock<StorageConfig> = OnceLock::new();

/// Sets how this process reaches `s3://` locations that no section names otherwise (a node's `--mirror
/// s3://...`): the command line sets it once from the flow's `[storage]` (and target). The first call wins.
pub fn set_process_config(cfg: StorageConfig) {
    let _ = PROCESS_CONFIG.set(cfg);
}

/// What [`set_process_config`] set, else the standard AWS variables.
pub fn process_config() -> Result<StorageConfig> {
    match PROCESS_CONFIG.get() {
        Some(c) => Ok(c.clone()),
        None => StorageConfig::from_table(None),
    }
}

/// The runtime that drives every request, with one thread of its own; callers block on it.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flowrun-storage")
            .enable_all()
            .build()
            .expect("cannot start the object storage runtime")
    })
}

/// An object's key (relative to the bucket's prefix) and size.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    /// Key below the prefix, `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The server's entity tag (changes with the content), if it gives one.
    pub e_tag: Option<String>,
}

/// One `s3://bucket/prefix` (see the module documentation).
#[derive(Clone)]
pub struct Bucket {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    endpoint: String,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bucket({})", self.url())
    }
}

impl Bucket {
    /// `s3://bucket/prefix` -> (bucket, prefix without slashes at its ends).
    pub fn parse_url(url: &str) -> Result<(String, String)> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| anyhow!("`{url}` is not an s3:// location"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("`{url}` names no bucket: write s3://BUCKET/PREFIX");
        }
        Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
    }

    /// Opens `url` with `cfg`'s endpoint and credentials. Nothing is sent yet.
    pub fn open(url: &str, cfg: &StorageConfig) -> Result<Bucket> {
        let (bucket, prefix) = Self::parse_url(url)?;
        let (key, secret, token) = cfg.credentials().with_context(|| format!("{url} on {}", cfg.describe()))?;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(&cfg.region)
            .with_access_key_id(key)
            .with_secret_access_key(secret.expose())
            // Client options first: they replace the whole set, `allow_http` included.
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_timeout(std::time::Duration::from_secs(60))
                    .with_connect_timeout(std::time::Duration::from_secs(5)),
            )
            .with_allow_http(cfg.allow_http)
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout: std::time::Duration::from_secs(10),
                ..Default::default()
            });
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(t) = token {
            b = b.with_token(t.expose());
        }
        let store = b.build().map_err(|e| anyhow!("{url}: {}", clean(&e.to_string())))?;
        Ok(Bucket { store: Arc::new(store), bucket, prefix, endpoint: cfg.describe() })
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn path(&self, key: &str) -> ObjectPath {
        let key = key.trim_matches('/');
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => ObjectPath::from(key),
            (false, true) => ObjectPath::from(self.prefix.as_str()),
            (false, false) => ObjectPath::from(format!("{}/{key}", self.prefix)),
        }
    }

    /// What went wrong with `what` on `key`, in words a user can act on.
    fn error(&self, what: &str, key: &str, e: object_store::Error) -> anyhow::Error {
        let target = format!("{}/{}", self.url(), key.trim_matches('/'));
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let words = cause.to_string();
            if !text.contains(&words) {
                text = format!("{text}: {words}");
            }
            source = cause.source();
        }
        let text = clean(&text);
        let hint = if text.contains("NoSuchBucket") {
            format!("the bucket `{}` does not exist on {}", self.bucket, self.endpoint)
        } else if matches!(
            e,
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
        ) || refused(&text)
        {
            format!("{} refused the credentials: check the access key and secret variables", self.endpoint)
        } else if ["onnect", "dns error", "timed out", "error sending request"].iter().any(|c| text.contains(c)) {
            format!("cannot reach {}", self.endpoint)
        } else {
            text.clone()
        };
        if hint == text {
            return anyhow!("{what} {target}: {text}");
        }
        // the server's own words, cut: a missing bucket's XML answer runs on for lines
        let said: String = text.chars().take(240).collect();
        let more = if said.len() < text.len() { "..." } else { "" };
        anyhow!("{what} {target}: {hint} ({said}{more})")
    }

    /// Answers whether the bucket can be used, in one request (a listing of one level under the prefix):
    /// an unreachable endpoint, refused credentials and a missing bucket each give their own error.
    pub fn check(&self) -> Result<()> {
        let path = self.path("");
        let prefix = (!self.prefix.is_empty()).then_some(&path);
        runtime()
            .block_on(self.store.list_with_delimiter(prefix))
            .map(|_| ())
            .map_err(|e| self.error("reaching", "", e))
    }

    /// Whether there is an object at `key` (one HEAD request).
    pub fn exists(&self, key: &str) -> Result<bool> {
        match runtime().block_on(self.store.head(&self.path(key))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("checking", key, e)),
        }
    }

    /// The object at `key`, or `None` when there is none.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key);
        let got = runtime().block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|b| b.map(|b| b.to_vec())).map_err(|e| self.error("reading", key, e))
    }

    /// Writes `bytes` at `key` in one PUT: readers see the old object or the new one.
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(key);
        runtime()
            .block_on(self.store.put(&path, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.error("writing", key, e))
    }

    /// Writes `bytes` at `key` unless an object is there already; `false` when one was.
    pub fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<bool> {
        let path = self.path(key);
        let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
        match runtime().block_on(self.store.put_opts(&path, PutPayload::from(bytes), opts)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.error("writing", key, e)),
        }
    }

    /// Uploads the file at `local` to `key` as a multipart upload completed at the end: the object appears
    /// whole or not at all.
    pub fn put_file(&self, key: &str, local: &Path) -> Result<()> {
        use std::io::Read;
        let path = self.path(key);
        let mut file = std::fs::File::open(local).with_context(|| format!("cannot read {}", local.display()))?;
        runtime()
            .block_on(async {
                let upload = self.store.put_multipart(&path).await?;
                let mut writer = WriteMultipart::new(upload);
                let mut buf = vec![0u8; 8 << 20];
                loop {
                    let n = file
                        .read(&mut buf)
                        .map_err(|e| object_store::Error::Generic { store: "local file", source: Box::new(e) })?;
                    if n == 0 {
                        break;
                    }
                    writer.wait_for_capacity(4).await?;
                    writer.write(&buf[..n]);
                }
                writer.finish().await
            })
            .map(|_| ())
            .map_err(|e| self.error("uploading", key, e))
    }

    /// Downloads `key` to `dest`, through a temporary file beside it renamed into place (removed if the
    /// download fails).
    pub fn download(&self, key: &str, dest: &Path) -> Result<()> {
        let bytes = self.get(key)?.ok_or_else(|| anyhow!("{}/{key} does not exist", self.url()))?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
        std::io::Write::write_all(&mut tmp, &bytes)
            .with_context(|| format!("cannot write {}", tmp.path().display()))?;
        tmp.persist(dest).with_context(|| format!("cannot write {}", dest.display()))?;
        Ok(())
    }

    /// Every object under `prefix` (relative to the bucket's prefix), sorted by key.
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let path = self.path(prefix);
        let strip = format!("{}/", self.path("").as_ref().trim_end_matches('/'));
        let listed: Vec<object_store::ObjectMeta> = runtime()
            .block_on(self.store.list(Some(&path)).try_collect())
            .map_err(|e| self.error("listing", prefix, e))?;
        let mut out: Vec<ObjectInfo> = listed
            .into_iter()
            .map(|m| {
                let full = m.location.to_string();
                let key =
                    if self.prefix.is_empty() { full } else { full.strip_prefix(&strip).unwrap_or(&full).to_string() };
                ObjectInfo { key, size: m.size, e_tag: m.e_tag }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// An error text without what must not be printed (a signed URL's query string).
fn clean(text: &str) -> String {
    text.split_whitespace()
        .map(|w| if w.contains("X-Amz-Signature") || w.contains("X-Amz-Credential") { "<signed url>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The cache's remote store on a [`Bucket`]: entry records under `keys/`, blobs under `blobs/`.
pub struct RemoteCache(pub Bucket);

impl flowrun_cache::Remote for RemoteCache {
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.get(path).map_err(|e| format!("{e:#}"))
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<(), String> {
        self.0.put(path, bytes.to_vec()).map_err(|e| format!("{e:#}"))
    }
    fn describe(&self) -> String {
        self.0.url()
    }
}

/// Whether an S3 error's text says the credentials were refused (the code, or the status with its reason:
/// a bare "403" also occurs in a request's duration, "in 250.403714ms").
fn refused(text: &str) -> bool {
    ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403 Forbidden"].iter().any(|c| text.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_told_from_a_connection_error() {
        let unreachable = "Generic S3 error: Error performing list request: Error performing GET \
            http://127.0.0.1:38085/lake-bucket?list-type=2 in 250.403714ms, after 2 retries - HTTP error: error \
            sending request: client error (Connect)";
        assert!(!refused(unreachable));
        assert!(refused("Client error with status 403 Forbidden: <Code>SignatureDoesNotMatch</Code>"));
        assert!(refused("<Error><Code>InvalidAccessKeyId</Code></Error>"));
    }

    #[test]
    fn secrets_print_as_stars() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }

    #[test]
    fn storage_sections_name_variables_not_values() {
        let t: toml::Table = toml::from_str("secret_access_key_env = \"wJalrXUtnFEMI/K7MDENG\"").unwrap();
        let err = StorageConfig::from_table(Some(&t)).unwrap_err().to_string();
        assert!(err.contains("names an environment variable"), "{err}");
        assert!(!err.contains("K7MDENG"), "the value is not repeated: {err}");
        let t: toml::Table = toml::from_str("access_key_id_env = \"AKIAIOSFODNN7EXAMPLE\"").unwrap();
        let err = StorageConfig::from_table(Some(&t)).unwrap_err().to_string();
        assert!(err.contains("names an environment variable") && !err.contains("IOSFODNN7"), "{err}");
        // secrets without `/` or `+` (a third of AWS's), and MinIO's lower-case ones, are refused too
        for secret in ["wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY", "minioadmin"] {
            let t: toml::Table = toml::from_str(&format!("secret_access_key_env = \"{secret}\"")).unwrap();
            let err = StorageConfig::from_table(Some(&t)).unwrap_err().to_string();
            assert!(err.contains("names an environment variable") && !err.contains(secret), "{err}");
        }
        // an all-capitals key passes as a name, but is never echoed: it has no `_`
        let t: toml::Table = toml::from_str("secret_access_key_env = \"Q3AM3UQ867SPQQA43P2F\"").unwrap();
        let err = StorageConfig::from_table(Some(&t)).unwrap().credentials().unwrap_err().to_string();
        assert!(!err.contains("Q3AM3UQ867SPQQA43P2F") && err.contains("secret_access_key_env names"), "{err}");
        let t: toml::Table = toml::from_str("secret_access_key_env = \"LAB_SECRET_2\"").unwrap();
        assert_eq!(StorageConfig::from_table(Some(&t)).unwrap().secret_var, "LAB_SECRET_2");
        let t: toml::Table = toml::from_str("bucket = \"x\"").unwrap();
        assert!(StorageConfig::from_table(Some(&t)).unwrap_err().to_string().contains("has no key `bucket`"));
    }

    #[test]
    fn urls() {
        assert_eq!(Bucket::parse_url("s3://b/p/q/").unwrap(), ("b".to_string(), "p/q".to_string()));
        assert_eq!(Bucket::parse_url("s3://b").unwrap(), ("b".to_string(), String::new()));
        assert!(Bucket::parse_url("s3:///x").is_err());
    }
}
