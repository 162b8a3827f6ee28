//! The code a node can call, as one digest: what `#[node]` adds to a node's code version so that fixing a
//! helper re-runs the nodes that call it.
//!
//! A node's code version (see `expand_node`) is the hash of its own tokens plus the *crate digest* of the
//! crate that defines it, computed here at compile time:
//! 1. every file under the crate's `src/`, its `Cargo.toml` and `build.rs` (path and content);
//! 2. from the workspace's `Cargo.lock`, every package the crate depends on, transitively: a registry or
//!    git package by name, version, source and checksum (a crate upgrade can change geometry results); a
//!    path package (no source) by its own digest of step 1, found by following the `path =` dependencies of
//!    the manifests (the crate's, its path dependencies', and their workspaces' `[workspace.dependencies]`).
//!
//! So editing any code of the crate, of a workspace crate it depends on, or upgrading any dependency in its
//! closure re-runs its nodes, and nothing else does: nodes of a crate that does not depend on the edited one
//! keep their results. It is coarse on purpose (a comment in a helper re-runs the crate's nodes too): a
//! stale result is a wrong result nobody notices, a re-run costs time. `#[node(code = "fn")]` opts a node
//! out, back to its own tokens only.
//!
//! Cargo recompiles a crate when one of its sources or dependencies changes, and proc macros are expanded
//! on every compilation, so the digest is never older than the code compiled next to it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The digest of the crate being compiled (`CARGO_MANIFEST_DIR`), or `None` when cargo did not say which
/// crate that is (a proc macro run outside cargo).
pub fn crate_digest() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let name = std::env::var("CARGO_PKG_NAME").ok()?;
    // one compilation expands many nodes of the same crate: compute once per crate
    static DIGESTS: OnceLock<Mutex<BTreeMap<PathBuf, String>>> = OnceLock::new();
    let cache = DIGESTS.get_or_init(Default::default);
    if let Some(d) = cache.lock().ok()?.get(&dir) {
        return Some(d.clone());
    }
    let digest = digest(&dir, &name);
    cache.lock().ok()?.insert(dir, digest.clone());
    Some(digest)
}

/// See the module documentation.
pub fn digest(dir: &Path, name: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"flowrun crate digest 1\0");
    h.update(own_digest(dir).as_bytes());
    if let Some(lock) = find_up(dir, "Cargo.lock") {
        let text = std::fs::read_to_string(&lock).unwrap_or_default();
        let packages = parse_lock(&text);
        let members = path_packages(dir);
        for pkg in closure(&packages, name) {
            match (&pkg.source, members.get(&pkg.name)) {
                (None, Some(member_dir)) if member_dir != dir => h.update(own_digest(member_dir).as_bytes()),
                (None, _) => h.update(format!("{} {}\n", pkg.name, pkg.version).as_bytes()),
                (Some(source), _) => {
                    h.update(format!("{} {} {source} {}\n", pkg.name, pkg.version, pkg.checksum).as_bytes())
                }
            };
        }
    }
    h.finalize().to_hex()[..16].to_string()
}

/// Step 1: the crate's own files.
fn own_digest(dir: &Path) -> String {
    let mut files = Vec::new();
    collect_files(&dir.join("src"), &mut files);
    files.extend(["Cargo.toml", "build.rs"].map(|f| dir.join(f)).into_iter().filter(|p| p.is_file()));
    files.sort();
    let mut h = blake3::Hasher::new();
    for f in files {
        h.update(f.strip_prefix(dir).unwrap_or(&f).to_string_lossy().as_bytes());
        h.update(b"\0");
        h.update(&std::fs::read(&f).unwrap_or_default());
        h.update(b"\0");
    }
    h.finalize().to_hex().to_string()
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn find_up(start: &Path, file: &str) -> Option<PathBuf> {
    start.ancestors().map(|d| d.join(file)).find(|p| p.is_file())
}

/// One `[[package]]` of a `Cargo.lock`.
#[derive(Debug, Default, Clone)]
struct LockPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: String,
    /// `"name"` or `"name version"` (or with ` (source)`), as the lock file writes them.
    dependencies: Vec<String>,
}

/// Reads the `[[package]]` tables of a `Cargo.lock` (a format cargo writes one way: `key = "value"` lines
/// and `dependencies = [` lists of one quoted string per line).
fn parse_lock(text: &str) -> Vec<LockPackage> {
    let mut out: Vec<LockPackage> = Vec::new();
    let mut in_deps = false;
    for line in text.lines().map(str::trim) {
        if line == "[[package]]" {
            out.push(LockPackage::default());
            in_deps = false;
            continue;
        }
        let Some(pkg) = out.last_mut() else { continue };
        if in_deps {
            match line.strip_prefix('"').and_then(|l| l.strip_suffix("\",")) {
                Some(dep) => pkg.dependencies.push(dep.to_string()),
                None => in_deps = false,
            }
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else { continue };
        let unquoted = value.trim_matches('"').to_string();
        match key {
            "name" => pkg.name = unquoted,
            "version" => pkg.version = unquoted,
            "source" => pkg.source = Some(unquoted),
            "checksum" => pkg.checksum = unquoted,
            "dependencies" if value == "[" => in_deps = true,
            "dependencies" => {
                // `dependencies = []` or a one-line list
                let inner = value.trim_start_matches('[').trim_end_matches(']');
                pkg.dependencies.extend(inner.split(',').map(|d| d.trim().trim_matches('"').to_string()));
                pkg.dependencies.retain(|d| !d.is_empty());
            }
            _ => {}
        }
    }
    out
}

/// Every package `name` depends on, transitively (not `name` itself), in a stable order.
fn closure<'a>(packages: &'a [LockPackage], name: &str) -> Vec<&'a LockPackage> {
    let find = |dep: &str| -> Option<&'a LockPackage> {
        let mut parts = dep.split(' ');
        let (n, v) = (parts.next().unwrap_or(""), parts.next());
        packages.iter().find(|p| p.name == n && v.is_none_or(|v| p.version == v))
    };
    let Some(root) = packages.iter().find(|p| p.name == name && p.source.is_none()) else { return Vec::new() };
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&LockPackage> = root.dependencies.iter().filter_map(|d| find(d)).collect();
    let mut out = Vec::new();
    while let Some(p) = stack.pop() {
        if seen.insert((p.name.as_str(), p.version.as_str())) {
            stack.extend(p.dependencies.iter().filter_map(|d| find(d)));
            out.push(p);
        }
    }
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    out
}

/// The packages reachable from the crate at `dir` through `path =` dependencies, by name: where the sources
/// of a path dependency are. Followed from each manifest's dependency tables, and for `x.workspace = true`
/// entries from the `[workspace.dependencies]` of that crate's workspace root, wherever they lead.
fn path_packages(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(text) = std::fs::read_to_string(d.join("Cargo.toml")) else { continue };
        let Some(name) = package_name(&text) else { continue };
        if out.insert(name, d.clone()).is_some() {
            continue;
        }
        todo.extend(path_deps(&text, &d));
        let root = d.ancestors().find(|a| {
            std::fs::read_to_string(a.join("Cargo.toml")).is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        });
        if let Some(root) = root
            && let Ok(root_text) = std::fs::read_to_string(root.join("Cargo.toml"))
        {
            todo.extend(path_deps(&root_text, root));
        }
    }
    out
}

/// The directories of the `path = "..."` dependencies a manifest declares, resolved against `base`.
fn path_deps(manifest: &str, base: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            let table = line.trim_matches(['[', ']']);
            in_deps = table.split('.').any(|part| part.ends_with("dependencies"));
            continue;
        }
        if !in_deps {
            continue;
        }
        // `x = { path = "..." }` or, inside `[dependencies.x]`, `path = "..."`
        if let Some(at) = line.find("path") {
            let rest = line[at + 4..].trim_start();
            if let Some(value) = rest.strip_prefix('=').and_then(|v| v.trim_start().strip_prefix('"'))
                && let Some(end) = value.find('"')
            {
                out.push(base.join(&value[..end]));
            }
        }
    }
    out
}

/// `name = "..."` of a manifest's `[package]` table.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(v) = line.strip_prefix("name") {
            return Some(v.trim_start().strip_prefix('=')?.trim().trim_matches('"').to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A workspace of two crates, `a` (depends on `helpers`, a path crate outside the workspace, and a
    /// registry crate) and `b` (depends on neither): edits and upgrades change exactly the digests of the
    /// crates that can reach them.
    #[test]
    fn a_digest_covers_the_crate_its_path_dependencies_and_locked_versions() {
        let top = std::env::temp_dir().join(format!("flowrun-code-digest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let (root, helpers) = (top.join("ws"), top.join("elsewhere/deep/helpers"));
        write(
            &root.join("Cargo.toml"),
            "[workspace]\nmembers = [\"a\", \"b\"]\n\n[workspace.dependencies]\nhelpers = { path = \"../elsewhere/deep/helpers\" }\n",
        );
        write(&root.join("a/Cargo.toml"), "[package]\nname = \"a\"\n\n[dependencies]\nhelpers.workspace = true\n");
        write(&root.join("a/src/lib.rs"), "pub fn node() -> i64 { helpers::f() }\n");
        write(&root.join("b/Cargo.toml"), "[package]\nname = \"b\"\n");
        write(&root.join("b/src/lib.rs"), "pub fn node() -> i64 { 2 }\n");
        write(&helpers.join("Cargo.toml"), "[package]\nname = \"helpers\"\n");
        write(&helpers.join("src/lib.rs"), "pub fn f() -> i64 { 1 }\n");
        let lock = |geo: &str| {
            format!(
                "version = 4\n\n[[package]]\nname = \"a\"\nversion = \"0.1.0\"\ndependencies = [\n \"geo\",\n \"helpers\",\n]\n\n\
                 [[package]]\nname = \"b\"\nversion = \"0.1.0\"\n\n\
                 [[package]]\nname = \"geo\"\nversion = \"{geo}\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"00\"\n\n\
                 [[package]]\nname = \"helpers\"\nversion = \"0.1.0\"\n"
            )
        };
        write(&root.join("Cargo.lock"), &lock("0.33.1"));
        let digests = || (digest(&root.join("a"), "a"), digest(&root.join("b"), "b"));
        let (a0, b0) = digests();
        assert_eq!(digests(), (a0.clone(), b0.clone()), "stable");

        write(&helpers.join("src/lib.rs"), "pub fn f() -> i64 { 3 }\n");
        let (a1, b1) = digests();
        assert_ne!(a1, a0, "a helper in a path dependency changed");
        assert_eq!(b1, b0, "b does not depend on it");

        write(&root.join("a/src/util/mod.rs"), "pub fn g() {}\n");
        let (a2, b2) = digests();
        assert_ne!(a2, a1, "a file of the crate itself changed");
        assert_eq!(b2, b0);

        write(&root.join("Cargo.lock"), &lock("0.33.2"));
        let (a3, b3) = digests();
        assert_ne!(a3, a2, "a dependency was upgraded");
        assert_eq!(b3, b0, "not one of b's");
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn lock_files_are_read_as_cargo_writes_them() {
        let lock = "version = 4\n\n[[package]]\nname = \"x\"\nversion = \"1.0.0\"\nsource = \"registry+r\"\n\
                    checksum = \"ab\"\ndependencies = [\n \"y 0.2.0\",\n \"z\",\n]\n\n[[package]]\nname = \"y\"\n\
                    version = \"0.2.0\"\n";
        let p = parse_lock(lock);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].name.as_str(), p[0].source.as_deref(), p[0].checksum.as_str()),
            ("x", Some("registry+r"), "ab")
        );
        assert_eq!(p[0].dependencies, ["y 0.2.0", "z"]);
        assert_eq!(package_name("[workspace]\nname = \"no\"\n[package]\nname = \"yes\"\n").as_deref(), Some("yes"));
    }
}
