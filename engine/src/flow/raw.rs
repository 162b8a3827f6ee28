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

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

/// A spanned map of names to spanned TOML values (`params`, `[config]`, a `when`, a `[materialize.*]`).
pub type SpannedTable = IndexMap<Spanned<String>, Spanned<toml::Value>>;

/// `inputs = { param = "source" }`: parameter -> the node, config value or input it reads.
pub type Bindings = IndexMap<Spanned<String>, Spanned<String>>;

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
    /// `[nodes.*]` (a table given twice is a TOML error).
    #[serde(default)]
    pub nodes: IndexMap<Spanned<String>, Spanned<RawNode>>,
    /// `[materialize.*]`: options are checked by the materializer of that `kind`.
    #[serde(default)]
    pub materialize: IndexMap<Spanned<String>, Spanned<SpannedTable>>,
    /// `[lake]`: where DuckLake materializations go (checked by `flowrun-lake`).
    #[serde(default)]
    pub lake: SpannedTable,
    /// `[storage]`: how to reach object storage (`s3://` paths): endpoint, region, which variables hold the
    /// credentials (checked by `flowrun-storage`).
    #[serde(default)]
    pub storage: SpannedTable,
    /// `[cache]`: the shared remote cache (`remote = "s3://..."`).
    #[serde(default)]
    pub cache: SpannedTable,
    /// `[targets.NAME]`: named sets of `lake`, `storage` and `cache` settings over the file's own (dbt's
    /// profiles: `--target prod`).
    #[serde(default)]
    pub targets: IndexMap<Spanned<String>, Spanned<RawTarget>>,
}

/// `[targets.NAME]`: what a target changes.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTarget {
    /// Keys of `[lake]` to replace.
    pub lake: SpannedTable,
    /// Keys of `[storage]` to replace.
    pub storage: SpannedTable,
    /// Keys of `[cache]` to replace.
    pub cache: SpannedTable,
}

/// `[flow]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeader {
    /// Flow name (cache state and run records are per flow name).
    pub name: Spanned<String>,
    /// Free text.
    pub description: Option<String>,
    /// Node modules in scope for names that are not declared nodes.
    #[serde(default)]
    pub modules: Vec<Spanned<String>>,
    /// Nodes to build; default: all declared nodes and materialized nodes.
    pub outputs: Option<Vec<Spanned<String>>>,
}

/// An `[inputs]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInput {
    /// Value when none is given on the command line; without it the input is required.
    pub default: Option<Spanned<toml::Value>>,
    /// Free text.
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
#[serde(default, deny_unknown_fields)]
pub struct RawNode {
    /// Registered function; default: the node's name.
    #[serde(rename = "fn")]
    pub function: Option<Spanned<String>>,
    /// A SQL query instead of a function.
    pub sql: Option<Spanned<String>>,
    /// Literal parameter values.
    pub params: SpannedTable,
    /// Parameter -> name of the node, config value or input it reads.
    pub inputs: Bindings,
    /// Cache behaviour.
    pub cache: Option<Spanned<CacheMode>>,
    /// Free-form tags, kept on the flow node after the function's own (`FlowNode::tags`), selectable with
    /// `--tag KEY=VALUE`.
    pub tags: IndexMap<String, String>,
    /// Free text.
    pub doc: Option<String>,
    /// The node exists only when every listed config value matches.
    pub when: Option<SpannedTable>,
    /// Alternative implementations chosen by config.
    pub variants: Vec<Spanned<RawVariant>>,
    /// Named instances of this function.
    pub parameterize: IndexMap<Spanned<String>, Spanned<RawInstance>>,
    /// Data checks on the result.
    pub checks: Vec<Spanned<RawCheck>>,
    /// For a node that collects a fan-out: take the items that succeeded (`"skip"`) or none (`"fail"`).
    pub on_item_error: Option<Spanned<OnItemError>>,
}

/// `[[nodes.NAME.variants]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawVariant {
    /// Config values that select this variant; absent: the fallback.
    pub when: Option<SpannedTable>,
    /// Function of this variant.
    #[serde(rename = "fn")]
    pub function: Option<Spanned<String>>,
    /// SQL of this variant.
    pub sql: Option<Spanned<String>>,
    /// Extra or overriding literal parameters.
    pub params: SpannedTable,
    /// Extra or overriding parameter bindings.
    pub inputs: Bindings,
}

/// `[nodes.FN.parameterize.INSTANCE]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawInstance {
    /// Literal parameters of this instance.
    pub params: SpannedTable,
    /// Parameter bindings of this instance.
    pub inputs: Bindings,
    /// Extra tags.
    pub tags: IndexMap<String, String>,
    /// Free text.
    pub doc: Option<String>,
}

/// `[[nodes.NAME.checks]]`: a data check on a table result (see [`crate::checks`]).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCheck {
    /// Column the check is about; absent for table-level checks.
    pub column: Option<String>,
    /// `[min, max]` rows (table-level).
    pub rows: Option<[u64; 2]>,
    /// The column has no nulls.
    pub not_null: bool,
    /// The column's values are distinct.
    pub unique: bool,
    /// `[min, max]` of a numeric column, inclusive.
    pub range: Option<[f64; 2]>,
    /// Allowed values of a string column.
    pub values: Option<Vec<String>>,
    /// Required Arrow data type of the column, e.g. "Float64", "Utf8".
    #[serde(rename = "type")]
    pub data_type: Option<String>,
    /// `error` (default: the node fails) or `warn` (reported, the run goes on).
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
