//! The code a node can call, as one digest: what `#[node]` adds to a node's code version so that fixing a
//! helper re-runs the nodes that call it.
//!
//! A node's code version (see `expand_node`) is the hash of its own tokens plus the *crate digest* of the
//! crate that defines it, computed here at compile time:
//! 1. every file under the crate's `src/`, its `Cargo.toml` and `build.rs` (path and content);
//! 2. from the workspace's `Cargo.lock`, every package the crate depends on, transitively: a registry or
//!    git package by name, version, source and checksum (a crate upgrade can change geometry results); a
//!    path package (no source) by its own digest of step 1, found by following the `path =` dependencies of
//!    the manifests (the crate's, its path dependencies', and their workspaces' `[workspace.dependencies]`);
//! 3. the crate's workspace's `[workspace.dependencies]` table itself: the features it turns on for every
//!    `x.workspace = true` dependency.
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
use std::sync::Mutex;

/// The digest of the crate being compiled (`CARGO_MANIFEST_DIR`), or `None` when cargo did not say which
/// crate that is (a proc macro run outside cargo).
pub fn crate_digest() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let name = std::env::var("CARGO_PKG_NAME").ok()?;
    // one compilation expands many nodes of the same crate: compute once per crate
    static DIGESTS: Mutex<BTreeMap<PathBuf, String>> = Mutex::new(BTreeMap::new());
    Some(DIGESTS.lock().ok()?.entry(dir).or_insert_with_key(|dir| digest(dir, &name)).clone())
}

/// See the module documentation.
pub fn digest(dir: &Path, name: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"flowrun crate digest 1\0");
    h.update(own_digest(dir).as_bytes());
    if let Some(deps) = workspace_root(dir).and_then(|(_, t)| t.get("workspace")?.get("dependencies").cloned()) {
        h.update(deps.to_string().as_bytes());
    }
    if let Some(lock) = find_up(dir, "Cargo.lock") {
        let lock = read_toml(&lock).unwrap_or_default();
        let listed = lock.get("package").and_then(|p| p.as_array()).into_iter().flatten();
        let packages: Vec<toml::Table> = listed.filter_map(|p| p.as_table().cloned()).collect();
        let paths = path_packages(dir);
        for pkg in closure(&packages, name) {
            let (n, v) = (text(pkg, "name"), text(pkg, "version"));
            match (pkg.get("source"), paths.get(n)) {
                (None, Some(path_dir)) if path_dir != dir => h.update(own_digest(path_dir).as_bytes()),
                (None, _) => h.update(format!("{n} {v}\n").as_bytes()),
                (Some(_), _) => {
                    h.update(format!("{n} {v} {} {}\n", text(pkg, "source"), text(pkg, "checksum")).as_bytes())
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
    for p in std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()) {
        if p.is_dir() { collect_files(&p, out) } else { out.push(p) }
    }
}

fn find_up(start: &Path, file: &str) -> Option<PathBuf> {
    start.ancestors().map(|d| d.join(file)).find(|p| p.is_file())
}

fn read_toml(path: &Path) -> Option<toml::Table> {
    std::fs::read_to_string(path).ok()?.parse().ok()
}

fn text<'t>(t: &'t toml::Table, key: &str) -> &'t str {
    t.get(key).and_then(|v| v.as_str()).unwrap_or_default()
}

/// Every package the `[[package]]` list of a `Cargo.lock` says `name` depends on, transitively (not `name`
/// itself), in a stable order. A dependency is written `"name"`, or `"name version"` when several versions
/// are locked.
fn closure<'a>(packages: &'a [toml::Table], name: &str) -> Vec<&'a toml::Table> {
    let deps = |p: &'a toml::Table| -> Vec<&'a toml::Table> {
        let listed = p.get("dependencies").and_then(|d| d.as_array()).into_iter().flatten();
        listed
            .filter_map(|d| {
                let mut parts = d.as_str()?.split(' ');
                let (n, v) = (parts.next().unwrap_or(""), parts.next());
                packages.iter().find(|q| text(q, "name") == n && v.is_none_or(|v| text(q, "version") == v))
            })
            .collect()
    };
    let Some(root) = packages.iter().find(|p| text(p, "name") == name && p.get("source").is_none()) else {
        return Vec::new();
    };
    let (mut seen, mut stack, mut out) = (BTreeSet::new(), deps(root), Vec::new());
    while let Some(p) = stack.pop() {
        if seen.insert((text(p, "name"), text(p, "version"))) {
            stack.extend(deps(p));
            out.push(p);
        }
    }
    out.sort_by_key(|p| (text(p, "name"), text(p, "version")));
    out
}

/// The packages reachable from the crate at `dir` through `path =` dependencies, by name: where the sources
/// of a path dependency are. Followed from each manifest's dependency tables (`[dependencies]`,
/// `[dev-dependencies]`, `[build-dependencies]`, their `[target.*]` forms), and for `x.workspace = true`
/// entries from the `[workspace.dependencies]` of that crate's workspace root, wherever they lead.
fn path_packages(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Some(manifest) = read_toml(&d.join("Cargo.toml")) else { continue };
        let Some(name) = manifest.get("package").and_then(|p| p.get("name")?.as_str()) else { continue };
        if out.insert(name.to_string(), d.clone()).is_some() {
            continue;
        }
        let root = workspace_root(&d);
        let targets = manifest.get("target").and_then(|t| t.as_table()).into_iter().flat_map(|t| t.values());
        for table in std::iter::once(&manifest).chain(targets.filter_map(|t| t.as_table())) {
            for kind in ["dependencies", "dev-dependencies", "build-dependencies"] {
                todo.extend(path_deps(table.get(kind), &d));
            }
        }
        if let Some((root_dir, root)) = root {
            todo.extend(path_deps(root.get("workspace").and_then(|w| w.get("dependencies")), &root_dir));
        }
    }
    out
}

/// The directory and manifest of the workspace `dir` belongs to (the nearest `Cargo.toml` with `[workspace]`).
fn workspace_root(dir: &Path) -> Option<(PathBuf, toml::Table)> {
    dir.ancestors().find_map(|a| {
        read_toml(&a.join("Cargo.toml")).filter(|t| t.contains_key("workspace")).map(|t| (a.to_path_buf(), t))
    })
}

/// The directories of the `path = "..."` entries of a dependency table, resolved against `base`.
fn path_deps(deps: Option<&toml::Value>, base: &Path) -> Vec<PathBuf> {
    let entries = deps.and_then(|d| d.as_table()).into_iter().flat_map(|t| t.values());
    entries.filter_map(|e| e.get("path")?.as_str().map(|p| base.join(p))).collect()
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

        // a feature turned on in [workspace.dependencies] (coarse: every crate of the workspace)
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        write(&root.join("Cargo.toml"), &format!("{manifest}geo = {{ version = \"0.33\", features = [\"serde\"] }}\n"));
        let (a4, _) = digests();
        assert_ne!(a4, a3, "the features of a workspace dependency changed");
        std::fs::remove_dir_all(&top).unwrap();
    }
}
