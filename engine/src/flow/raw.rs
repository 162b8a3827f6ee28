//! [`RawFlow`]: the flow file exactly as written, with a span for everything an error may point at.
//!
//! Nothing here is resolved or checked beyond TOML types and field names (unknown fields are errors).
//! [`Flow`](crate::Flow) is what the engine runs; [`crate::flow::build`] turns one into the other.
//!
//! ```toml
//! [flow]
//! name = "example"                    # required
//! description = "what it builds"
//! modules = ["generic"]              # node modules in scope (default: every linked node)
//! outputs = ["total"]                # what to build (default: every node declared below)
//!
//! [config]                           # typed values; a parameter with the same name reads one
//! n = 10
//! mode = "fast"
//!
//! [inputs]                           # values given at run time: --input data=path
//! data = { default = "data/in.csv", doc = "the input file" }
//!
//! [nodes.total]                      # a node; its function is `total` unless `fn` says otherwise
//! fn = "sum"
//! params = { scale = 2 }             # literals for parameters
//! inputs = { values = "squares" }    # parameter -> the node/config/input it reads (default: same name)
//! cache = "default"                  # or "recompute" (always run, store) or "disable" (run, never store)
//! tags = { layer = "prepared" }
//! when = { mode = "fast" }           # the node exists only when config matches
//!
//! [[nodes.square.variants]]          # config variants: one implementation chosen by config
//! when = { mode = "fast" }
//! fn = "square_fast"
//! [[nodes.square.variants]]          # a variant without `when` is the fallback
//! fn = "square_exact"
//!
//! [nodes.read.parameterize.read_a]   # one function, many named nodes
//! params = { path = "a.csv" }
//! [nodes.read.parameterize.read_b]
//! params = { path = "b.csv" }
//!
//! [[nodes.total.checks]]             # data checks on the node's result
//! rows = [1, 1000]
//! severity = "warn"
//!
//! [nodes.joined]                     # a SQL node: upstream node names are tables
//! sql = "SELECT * FROM read_a JOIN read_b USING (id)"
//!
//! [lake]                             # the DuckLake catalog materializations write to
//! catalog = "lake/example.ducklake"
//!
//! [materialize.lake_total]           # where results go after a successful run
//! node = "total"
//! kind = "ducklake"
//! ```

use std::borrow::Borrow;
use std::fmt;

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

use super::names::NameIndex;

/// A spanned map of names to spanned TOML values.
pub type SpannedTable = RawMap<Spanned<Str>, Spanned<toml::Value>>;

/// A name as written (a node, a function, a parameter, a key): `compact_str` keeps up to 24 bytes inline,
/// so the names a flow is made of take no allocation of their own.
pub type Str = compact_str::CompactString;

/// A TOML table's entries in file order: a vector searched linearly, for the small tables of a flow file
/// (a node's `params` and `inputs`, `[config]`, a `[materialize.*]` section).
///
/// A hash map per table cost two allocations and 72 bytes each, more than all its lookups save: a table
/// has a handful of keys, and a generated flow has 100,000 nodes with one or two tables each. A key
/// given twice is an error, as in TOML.
///
/// ```
/// use flowrun_engine::flow::raw::RawMap;
/// let mut m = RawMap::new();
/// assert!(m.insert("b".to_string(), 1).is_none());
/// m.insert("a".to_string(), 2);
/// assert_eq!(m.insert("b".to_string(), 3), Some(1)); // replaced in place
/// assert_eq!(m.get("b"), Some(&3));
/// assert_eq!(m.keys().map(String::as_str).collect::<Vec<_>>(), ["b", "a"]);
/// ```
#[derive(Clone, PartialEq)]
pub struct RawMap<K, V>(Vec<(K, V)>);

/// [`RawMap::iter`]: its entries in file order.
pub type RawMapIter<'a, K, V> = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&(K, V)) -> (&K, &V)>;

impl<K, V> Default for RawMap<K, V> {
    fn default() -> Self {
        RawMap(Vec::new())
    }
}

impl<K, V> RawMap<K, V> {
    /// An empty map (allocates nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        RawMap(Vec::with_capacity(n))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in file order.
    pub fn iter(&self) -> RawMapIter<'_, K, V> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Keys in file order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    /// Values in file order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    /// The value of `key`.
    pub fn get<Q: ?Sized + Eq>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.0.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v)
    }

    /// Whether `key` is there.
    pub fn contains_key<Q: ?Sized + Eq>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, in place if it is there (returning the old value), else at the end.
    pub fn insert(&mut self, key: K, value: V) -> Option<V>
    where
        K: Eq,
    {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                self.0.push((key, value));
                None
            }
        }
    }
}

impl<'a, K, V> IntoIterator for &'a RawMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = RawMapIter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K, V> IntoIterator for RawMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<K: Eq, V> FromIterator<(K, V)> for RawMap<K, V> {
    /// Later duplicates replace earlier ones, as with `insert`.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut m = RawMap::with_capacity(iter.size_hint().0);
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for RawMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'de, K: Deserialize<'de> + Eq + fmt::Debug, V: Deserialize<'de>> Deserialize<'de> for RawMap<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de> + Eq + fmt::Debug, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<K, V> {
            type Value = RawMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut m = RawMap::with_capacity(access.size_hint().unwrap_or(0));
                while let Some((k, v)) = access.next_entry::<K, V>()? {
                    if m.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    m.0.push((k, v));
                }
                Ok(m)
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// `[nodes.*]`: the node tables in file order, with an index of their names.
///
/// A generated flow may have 100,000 nodes. The index is a [`NameIndex`], whose probes can be prefetched,
/// and the builder starts from it when every table declares one node (no `when`, variants or
/// `parameterize`) instead of indexing the same names again.
///
/// ```
/// use flowrun_engine::flow::raw::{RawNode, RawNodes};
/// use toml::Spanned;
/// let mut nodes = RawNodes::default();
/// assert_eq!(nodes.push(Spanned::new(0..1, "a".into()), Spanned::new(0..1, RawNode::default())).ok(), Some(0));
/// assert!(nodes.push(Spanned::new(2..3, "a".into()), Spanned::new(2..3, RawNode::default())).is_err());
/// assert_eq!(nodes.position("a"), Some(0));
/// assert_eq!(nodes.len(), 1);
/// ```
#[derive(Default)]
pub struct RawNodes {
    entries: Vec<(Spanned<Str>, Spanned<RawNode>)>,
    /// Name -> position in `entries`; the last entries may be waiting for [`RawNodes::index_from`].
    index: NameIndex,
}

impl RawNodes {
    /// None yet, with room for `n`.
    pub fn with_capacity(n: usize) -> Self {
        RawNodes { entries: Vec::with_capacity(n), index: NameIndex::with_capacity(n) }
    }

    /// Room for `n` tables whose names are indexed later, by [`RawNodes::append`] to another.
    pub(crate) fn unindexed(n: usize) -> Self {
        RawNodes { entries: Vec::with_capacity(n), index: NameIndex::default() }
    }

    /// Number of node tables.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tables in file order.
    pub fn iter(&self) -> RawMapIter<'_, Spanned<Str>, Spanned<RawNode>> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The `i`th table in file order.
    pub fn get_index(&self, i: usize) -> Option<(&Spanned<Str>, &Spanned<RawNode>)> {
        self.entries.get(i).map(|(k, v)| (k, v))
    }

    /// The position of the table called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name, |i| self.entries[i].0.get_ref())
    }

    /// Node name -> position.
    pub fn names(&self) -> &NameIndex {
        &self.index
    }

    /// Appends a table and gives its position, or gives it back when the name is taken.
    #[allow(clippy::result_large_err)] // the table is handed back, not dropped
    pub fn push(&mut self, name: Spanned<Str>, node: Spanned<RawNode>) -> Result<usize, Spanned<RawNode>> {
        let (at, entries) = (self.entries.len(), &self.entries);
        if self.index.insert(name.get_ref(), at, |j| entries[j].0.get_ref()).is_err() {
            return Err(node);
        }
        self.entries.push((name, node));
        Ok(at)
    }

    /// Appends a table without indexing its name yet (the fast reader does so when the table is read,
    /// its slot fetched meanwhile); [`RawNodes::index_from`] must follow before any lookup.
    pub(crate) fn push_unindexed(&mut self, name: Spanned<Str>, node: Spanned<RawNode>) -> usize {
        self.index.prefetch(name.get_ref());
        self.entries.push((name, node));
        self.entries.len() - 1
    }

    /// Indexes the names of the tables from position `start` on; `None` when one is taken.
    pub(crate) fn index_from(&mut self, start: usize) -> Option<()> {
        let entries = &self.entries;
        for (i, (name, _)) in entries.iter().enumerate().skip(start) {
            // a few tables ahead: one insert is too short to cover a wait for memory
            if let Some((next, _)) = entries.get(i + 8) {
                self.index.prefetch(next.get_ref());
            }
            self.index.insert(name.get_ref(), i, |j| entries[j].0.get_ref()).ok()?;
        }
        Some(())
    }

    /// The `i`th table, to fill in.
    pub(crate) fn get_index_mut(&mut self, i: usize) -> Option<&mut Spanned<RawNode>> {
        self.entries.get_mut(i).map(|(_, v)| v)
    }

    /// `other`'s tables after these; `None` when a name is in both.
    pub(crate) fn append(&mut self, other: RawNodes) -> Option<()> {
        let start = self.entries.len();
        self.entries.extend(other.entries);
        self.index_from(start)
    }
}

impl<'a> IntoIterator for &'a RawNodes {
    type Item = (&'a Spanned<Str>, &'a Spanned<RawNode>);
    type IntoIter = RawMapIter<'a, Spanned<Str>, Spanned<RawNode>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Debug for RawNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'de> Deserialize<'de> for RawNodes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawNodes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of node tables")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut nodes = RawNodes::with_capacity(access.size_hint().unwrap_or(0));
                while let Some((name, node)) = access.next_entry::<Spanned<Str>, Spanned<RawNode>>()? {
                    let shown = name.get_ref().clone();
                    if nodes.push(name, node).is_err() {
                        return Err(serde::de::Error::custom(format!("duplicate node `{shown}`")));
                    }
                }
                Ok(nodes)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// The whole flow file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlow {
    /// `[flow]`.
    pub flow: Spanned<RawHeader>,
    /// `[config]`.
    #[serde(default)]
    pub config: SpannedTable,
    /// `[inputs]`.
    #[serde(default)]
    pub inputs: IndexMap<Spanned<String>, Spanned<RawInput>>,
    /// `[nodes.*]`.
    #[serde(default)]
    pub nodes: RawNodes,
    /// `[materialize.*]`: options are checked by the materializer of that `kind`.
    #[serde(default)]
    pub materialize: IndexMap<Spanned<String>, Spanned<SpannedTable>>,
    /// `[lake]`: where DuckLake materializations go (checked by `flowrun-lake`).
    #[serde(default)]
    pub lake: SpannedTable,
}

/// `[flow]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeader {
    /// Flow name (cache state and run records are per flow name).
    pub name: Spanned<String>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Node modules in scope for names that are not declared nodes.
    #[serde(default)]
    pub modules: Vec<Spanned<String>>,
    /// Nodes to build; default: all declared nodes and materialized nodes.
    #[serde(default)]
    pub outputs: Option<Vec<Spanned<String>>>,
}

/// An `[inputs]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInput {
    /// Value when none is given on the command line; without it the input is required.
    #[serde(default)]
    pub default: Option<Spanned<toml::Value>>,
    /// Free text.
    #[serde(default)]
    pub doc: Option<String>,
}

/// How a node uses the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Reuse a stored result when the key matches; store new results.
    #[default]
    Default,
    /// Always run; store the result (downstream may still be reused if it is unchanged).
    Recompute,
    /// Always run; never store (for values that are cheap to make or must not be written to disk).
    Disable,
}

/// What a node that collects a fan-out does when some of its items failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnItemError {
    /// The node is skipped, like any node whose input failed (all or nothing).
    #[default]
    Fail,
    /// The node takes the items that succeeded; the run reports the others and ends as
    /// [`RunStatus::Partial`](crate::schedule::RunStatus::Partial).
    Skip,
}

/// `[nodes.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// Registered function; default: the node's name.
    #[serde(rename = "fn", default)]
    pub function: Option<Spanned<Str>>,
    /// A SQL query instead of a function (boxed: most nodes are functions; see `when`).
    #[serde(default)]
    pub sql: Option<Box<Spanned<String>>>,
    /// Literal parameter values.
    #[serde(default)]
    pub params: SpannedTable,
    /// Parameter -> name of the node, config value or input it reads.
    #[serde(default)]
    pub inputs: RawMap<Spanned<Str>, Spanned<Str>>,
    /// Cache behaviour.
    #[serde(default)]
    pub cache: Option<Spanned<CacheMode>>,
    /// Free-form tags, kept on the flow node after the function's own (`FlowNode::tags`), selectable with
    /// `--tag KEY=VALUE` (boxed, see `when`).
    #[serde(default)]
    pub tags: Option<Box<IndexMap<String, String>>>,
    /// Free text.
    #[serde(default)]
    pub doc: Option<String>,
    /// The node exists only when every listed config value matches (boxed, like `sql`, `tags` and
    /// `parameterize`: most nodes have none of them, a generated flow may have 100,000 nodes, and parsing
    /// such a flow costs mostly the fresh memory its nodes take).
    #[serde(default)]
    pub when: Option<Box<SpannedTable>>,
    /// Alternative implementations chosen by config.
    #[serde(default)]
    pub variants: Vec<Spanned<RawVariant>>,
    /// Named instances of this function.
    #[serde(default)]
    pub parameterize: Option<Box<IndexMap<Spanned<String>, Spanned<RawInstance>>>>,
    /// Data checks on the result.
    #[serde(default)]
    pub checks: Vec<Spanned<RawCheck>>,
    /// For a node that collects a fan-out: take the items that succeeded (`"skip"`) or none (`"fail"`).
    #[serde(default)]
    pub on_item_error: Option<Spanned<OnItemError>>,
}

/// `[[nodes.NAME.variants]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    /// Config values that select this variant; absent: the fallback.
    #[serde(default)]
    pub when: Option<SpannedTable>,
    /// Function of this variant.
    #[serde(rename = "fn", default)]
    pub function: Option<Spanned<Str>>,
    /// SQL of this variant.
    #[serde(default)]
    pub sql: Option<Spanned<String>>,
    /// Extra or overriding literal parameters.
    #[serde(default)]
    pub params: SpannedTable,
    /// Extra or overriding parameter bindings.
    #[serde(default)]
    pub inputs: RawMap<Spanned<Str>, Spanned<Str>>,
}

/// `[nodes.FN.parameterize.INSTANCE]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstance {
    /// Literal parameters of this instance.
    #[serde(default)]
    pub params: SpannedTable,
    /// Parameter bindings of this instance.
    #[serde(default)]
    pub inputs: RawMap<Spanned<Str>, Spanned<Str>>,
    /// Extra tags.
    #[serde(default)]
    pub tags: IndexMap<String, String>,
    /// Free text.
    #[serde(default)]
    pub doc: Option<String>,
}

/// `[[nodes.NAME.checks]]`: a data check on a table result (see [`crate::checks`]).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    /// Column the check is about; absent for table-level checks.
    #[serde(default)]
    pub column: Option<String>,
    /// `[min, max]` rows (table-level).
    #[serde(default)]
    pub rows: Option<[u64; 2]>,
    /// The column has no nulls.
    #[serde(default)]
    pub not_null: bool,
    /// The column's values are distinct.
    #[serde(default)]
    pub unique: bool,
    /// `[min, max]` of a numeric column, inclusive.
    #[serde(default)]
    pub range: Option<[f64; 2]>,
    /// Allowed values of a string column.
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// Required Arrow data type of the column, e.g. "Float64", "Utf8".
    #[serde(default, rename = "type")]
    pub data_type: Option<String>,
    /// `error` (default: the node fails) or `warn` (reported, the run goes on).
    #[serde(default)]
    pub severity: Severity,
}

/// What a failed check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The node fails.
    #[default]
    Error,
    /// A warning; the node's result stands.
    Warn,
}
