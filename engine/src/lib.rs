//! flowrun's engine: declarative dataflows in TOML, nodes as plain Rust functions, resolved into a typed
//! DAG, validated before anything runs, then run sequentially or in parallel with every result cached by
//! content.
//!
//! # Crate organization
//! - [`registry`]: the nodes `#[node]` registers at link time ([`NodeDef`], [`Registry`]).
//! - [`value`]: what flows between nodes ([`Value`], [`Parallel`], [`Collect`], [`FilePath`]); [`table`]:
//!   Arrow tables ([`Table`]).
//! - [`flow`]: flow files: [`flow::raw`] mirrors the TOML, [`flow::build()`] resolves and validates it
//!   into a [`Flow`] (a petgraph DAG), reporting errors with `file:line:col`.
//! - [`schedule`]: **where a node is scheduled**: the plan, the task loop, the cache lookups, fan-out.
//! - [`events`]: what a run reports as it goes ([`Event`], [`Observer`], [`NodeReport`]).
//! - [`ctx`]: what a running node may ask of the engine (file dependencies, progress, warnings).
//! - [`checks`]: data checks; [`sql`]: SQL nodes; [`graph`]: DOT and Mermaid drawings.
//! - The cache key and the store are in the `flowrun-cache` crate.
//!
//! # Extension points
//! | to add | implement | example |
//! |---|---|---|
//! | a node | a function with [`macro@node`] | `flowrun_nodes::generic` |
//! | a value type | [`Value`] (or `#[derive(Value)]`) | [`Table`] |
//! | a SQL engine | [`sql::SqlEngine`] | `flowrun_lake::DuckSql` |
//! | a run observer | [`Observer`] | the CLI's progress bar |
//!
//! # Example
//! ```
//! use flowrun_engine::{node, flow, schedule, Registry};
//!
//! /// Numbers from 1 to n.
//! #[node]
//! fn first_n(n: i64) -> Vec<i64> { (1..=n).collect() }
//!
//! /// Their sum, scaled.
//! #[node]
//! fn scaled_sum(first_n: &Vec<i64>, scale: i64) -> i64 { first_n.iter().sum::<i64>() * scale }
//!
//! let src = flow::SourceFile::new("example.toml", r#"
//!     [flow]
//!     name = "example"
//!     outputs = ["scaled_sum"]
//!     [config]
//!     n = 4
//!     [nodes.scaled_sum]
//!     params = { scale = 10 }
//! "#);
//! let flow = flow::build(src, &flow::BuildOptions::default()).unwrap();
//! let report = schedule::run(&flow, &schedule::RunOptions::default()).unwrap();
//! let total = report.output("scaled_sum")[0].value.as_ref().unwrap().get().unwrap();
//! assert_eq!(total.downcast_ref::<i64>(), Some(&100));
//! ```
#![warn(missing_docs)]

extern crate self as flowrun_engine;

pub mod checks;
pub mod ctx;
pub mod events;
pub mod flow;
pub mod graph;
pub mod registry;
pub mod schedule;
pub mod sql;
mod suggest;
pub mod table;
pub mod value;

pub use events::{CodeChange, Event, NodeReport, Observer, Reason, Status};
pub use flow::{Flow, build, load};
pub use registry::{NodeDef, Registry};
pub use table::Table;
pub use value::{AnyValue, CodecError, Collect, DirPath, FilePath, LiteralCx, Parallel, TypeDesc, Value};

/// Registers a plain function as a node.
///
/// The function's parameter names are its edges: a parameter `stg_pv` reads the node called `stg_pv` (or
/// the config value or input of that name), as in Hamilton. The flow file can rename an edge with
/// `inputs = { param = "other_node" }` or give a literal with `params = { param = 3 }`.
///
/// ```
/// use flowrun_engine::{node, Table};
///
/// /// Keeps rows whose area is at least `min_area`.
/// #[node(tags(layer = "staging"))]
/// fn large_sites(raw_sites: &Table, min_area: f64) -> anyhow::Result<Table> {
///     # let _ = min_area;
///     Ok(raw_sites.clone())
/// }
/// ```
///
/// - Parameters are taken by reference (`&T`, no copy) or by value (`T: Clone`; moved when the run hands the
///   value over, see [`Table::into_batches`], else cloned). `Option<T>` parameters are optional (`None` when
///   nothing binds them).
/// - `Collect<T>` parameters gather a node inside a fan-out; returning `Parallel<T>` fans out.
/// - Return `T` or `Result<T, E>` with `E` convertible to `anyhow::Error`. Panics are caught and reported
///   as the node's failure.
/// - Options: `name = "other_name"`, `version = 2`, `tags(key = "value", ...)`, `code = "fn"`.
///
/// **Code version.** A node's results are reused only while its code version is the same. `#[node]` makes
/// it at compile time from (1) the function's own tokens (signature and body, not comments or attributes)
/// and its `version = N`, and (2) a digest of the code the function can call: every source file of its
/// crate, every workspace crate that crate depends on, and the version of every dependency it reaches in
/// `Cargo.lock`. Fixing a helper (or upgrading a crate) therefore re-runs the nodes that may call it and
/// not the nodes of crates that cannot; `explain` says which part changed. It is coarse on purpose: a
/// comment edited in a helper re-runs the crate's nodes too. `code = "fn"` narrows a node to (1) only,
/// for a node that calls nothing that may change; then bump `version` after changing what it calls.
pub use flowrun_macros::node;

/// Implements [`Value`] for a serde type (`Serialize + Deserialize + Clone`), encoding it as CBOR.
/// `#[value(label = "field")]` names fan-out items by that field.
pub use flowrun_macros::Value;

#[doc(hidden)]
pub mod __private {
    pub use crate::registry::{ArgValue, Args, NodeDef, NodeResult, OutputKind, ParamDef, ParamKind};
    pub use crate::value::{TypeDesc, serde_decode, serde_encode, serde_from_toml};
    pub use inventory;
    pub use toml;

    use std::sync::Arc;

    use crate::value::{AnyValue, Collect, Value};

    fn wrong(param: &str, expected: &str) -> anyhow::Error {
        anyhow::anyhow!("internal error: argument `{param}` is not a `{expected}` (flowrun bug)")
    }

    /// Borrows an argument as `&T`.
    pub fn arg_ref<'a, T: Value>(arg: &'a ArgValue, param: &str) -> Result<&'a T, anyhow::Error> {
        let value = if let ArgValue::One(v) = arg { v.downcast_ref::<T>() } else { None };
        value.ok_or_else(|| wrong(param, std::any::type_name::<T>()))
    }

    /// Takes an argument as `T` (moved when no one else holds it, else cloned).
    pub fn arg_owned<T: Value + Clone>(arg: ArgValue, param: &str) -> Result<T, anyhow::Error> {
        let arc = if let ArgValue::One(v) = arg { v.into_any_arc().downcast::<T>().ok() } else { None };
        let arc = arc.ok_or_else(|| wrong(param, std::any::type_name::<T>()))?;
        Ok(Arc::try_unwrap(arc).unwrap_or_else(|shared| (*shared).clone()))
    }

    /// Takes a fan-in argument as `Collect<T>`.
    pub fn arg_collect<T: Value + Clone>(arg: ArgValue, param: &str) -> Result<Collect<T>, anyhow::Error> {
        let ArgValue::Many(vs) = arg else { return Err(wrong(param, "Collect")) };
        vs.into_iter().map(|v| arg_owned(ArgValue::One(v), param)).collect::<Result<_, _>>().map(Collect)
    }

    /// Wraps a node's output (an infallible node's in `Result<T, Infallible>`).
    pub fn finish<T: Value, E: Into<anyhow::Error>>(out: Result<T, E>) -> NodeResult {
        out.map(|v| Arc::new(v) as AnyValue).map_err(Into::into)
    }
}
