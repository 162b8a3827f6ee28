//! The node registry: every `#[node]` function of every linked crate, collected at link time.
//!
//! Why not a hand-kept list? A central list of nodes is an endless source of merge conflicts and of
//! "I wrote the node but forgot to register it". `#[node]` submits a [`NodeDef`] through `inventory`,
//! and [`Registry::global`] gathers them the first time it is asked. The order of submission is not
//! guaranteed; the registry sorts by name.
//!
//! A crate whose nodes should be available must be linked into the binary: depending on it is enough as
//! long as the binary uses at least one item of it (the `flowrun` binary calls `flowrun_nodes::link()`).

use std::sync::OnceLock;

use crate::value::{AnyValue, TypeDesc};

/// A registered node function, as `#[node]` describes it.
pub struct NodeDef {
    /// Node name: the function's name unless `#[node(name = "...")]` says otherwise.
    pub name: &'static str,
    /// `module_path!()` of the function.
    pub module: &'static str,
    /// `module::name`, the node's identity in cache keys.
    pub path: &'static str,
    /// The function's doc comment.
    pub doc: &'static str,
    /// Parameters, in order. Their names are the node's edges.
    pub params: &'static [ParamDef],
    /// What it returns.
    pub output: OutputKind,
    /// Hash of the function's tokens (signature and body), with the `version` bump folded in.
    pub code_version: &'static str,
    /// The explicit `#[node(version = N)]` (0 when absent).
    pub version: u64,
    /// `#[node(tags(k = "v"))]`.
    pub tags: &'static [(&'static str, &'static str)],
    /// Calls the function with downcast arguments.
    pub call: fn(&mut Args) -> NodeResult,
    /// Source file of the function.
    pub file: &'static str,
    /// Line of the function's name.
    pub line: u32,
}

inventory::collect!(NodeDef);

impl NodeDef {
    /// A one-line signature: `name(a: i64, b: &Table) -> Table`.
    pub fn signature(&self) -> String {
        let params: Vec<String> = (self.params.iter())
            .map(|p| match p.kind {
                ParamKind::Value(t) => format!("{}: {}{}", p.name, if p.by_ref { "&" } else { "" }, t.short_name()),
                ParamKind::Collect(t) => format!("{}: Collect<{}>", p.name, t.short_name()),
            })
            .collect();
        format!("{}({}) -> {}", self.name, params.join(", "), self.output.short_name())
    }
}

/// A node parameter.
#[derive(Debug, Clone, Copy)]
pub struct ParamDef {
    /// Its name, which is also the name of the node (or config value, or input) it reads by default.
    pub name: &'static str,
    /// Plain value or fan-in.
    pub kind: ParamKind,
    /// Taken as `&T` (no copy) rather than `T`.
    pub by_ref: bool,
}

/// What a parameter takes.
#[derive(Debug, Clone, Copy)]
pub enum ParamKind {
    /// One value of this type.
    Value(TypeDesc),
    /// `Collect<T>`: the results of a node inside a fan-out, one per item.
    Collect(TypeDesc),
}

/// What a node returns.
#[derive(Debug, Clone, Copy)]
pub enum OutputKind {
    /// One value.
    Value(TypeDesc),
    /// `Parallel<T>`: a list whose items fan out.
    Parallel {
        /// `Parallel<T>` itself.
        list: TypeDesc,
        /// `T`.
        item: TypeDesc,
    },
}

impl OutputKind {
    /// The type of the value the node returns (`Parallel<T>` itself for fan-out nodes).
    pub fn value_type(&self) -> TypeDesc {
        match *self {
            OutputKind::Value(t) => t,
            OutputKind::Parallel { list, .. } => list,
        }
    }

    /// Short type name.
    pub fn short_name(&self) -> String {
        self.value_type().short_name()
    }
}

/// What a node call returns.
pub type NodeResult = Result<AnyValue, anyhow::Error>;

/// One argument handed to a node call.
pub enum ArgValue {
    /// A single value.
    One(AnyValue),
    /// A fan-in: one value per item.
    Many(Vec<AnyValue>),
}

/// The arguments of one node call, in parameter order.
pub struct Args {
    values: Vec<Option<ArgValue>>,
}

impl Args {
    /// Arguments in parameter order.
    pub fn new(values: impl IntoIterator<Item = ArgValue>) -> Args {
        Args { values: values.into_iter().map(Some).collect() }
    }

    /// Takes argument `i` (each is taken once by the generated call).
    pub fn take(&mut self, i: usize) -> ArgValue {
        self.values.get_mut(i).and_then(Option::take).expect("flowrun: argument taken twice or missing (engine bug)")
    }
}

/// Looks up node functions by name.
pub struct Registry {
    /// Sorted by name, then module.
    defs: Vec<&'static NodeDef>,
}

/// The result of a registry lookup.
pub enum Lookup {
    /// Exactly one function.
    Found(&'static NodeDef),
    /// Several functions have that name in different modules.
    Ambiguous(Vec<&'static NodeDef>),
    /// None; the closest names.
    NotFound(Vec<String>),
}

impl Registry {
    /// Every node linked into this program.
    pub fn global() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| Registry::from_defs(inventory::iter::<NodeDef>.into_iter().collect()))
    }

    /// A registry of the given definitions.
    pub fn from_defs(mut defs: Vec<&'static NodeDef>) -> Registry {
        defs.sort_by_key(|d| (d.name, d.module));
        Registry { defs }
    }

    /// All definitions, sorted by name.
    pub fn all(&self) -> &[&'static NodeDef] {
        &self.defs
    }

    /// Finds `name`, which is either a plain node name or `module::name` (any tail of the module path).
    /// `scope`, when not empty, restricts plain names to functions whose module path contains one of
    /// its entries as a `::`-separated part.
    pub fn lookup(&self, name: &str, scope: &[String]) -> Lookup {
        let (module_tail, base) = name.rsplit_once("::").map_or((None, name), |(m, b)| (Some(m), b));
        let matches = |d: &&&'static NodeDef| match module_tail {
            Some(tail) => d.module == tail || d.module.strip_suffix(tail).is_some_and(|m| m.ends_with("::")),
            None => in_scope(d.module, scope),
        };
        let named = self.defs[self.defs.partition_point(|d| d.name < base)..].iter().take_while(|d| d.name == base);
        let candidates: Vec<&'static NodeDef> = named.filter(matches).copied().collect();
        match candidates.len() {
            1 => Lookup::Found(candidates[0]),
            0 => Lookup::NotFound(crate::suggest::closest(base, self.defs.iter().map(|d| d.name))),
            _ => Lookup::Ambiguous(candidates),
        }
    }
}

/// Whether `module` is selected by `scope` (an empty scope selects everything).
/// An entry selects `module` when it is a `::`-separated run of the path's parts: `pv`, `pv::read` and
/// `flowrun_nodes::pv` select `flowrun_nodes::pv::read`; `nodes::pv` and `read::x` do not.
pub fn in_scope(module: &str, scope: &[String]) -> bool {
    scope.is_empty()
        || scope.iter().any(|s| {
            module.match_indices(s.as_str()).any(|(i, _)| {
                let (before, after) = (&module[..i], &module[i + s.len()..]);
                (before.is_empty() || before.ends_with("::")) && (after.is_empty() || after.starts_with("::"))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_matches_module_parts() {
        assert!(in_scope("flowrun_nodes::generic", &[]));
        assert!(in_scope("flowrun_nodes::generic", &["generic".into()]));
        assert!(in_scope("flowrun_nodes::pv::read", &["pv".into()]));
        assert!(in_scope("flowrun_nodes::generic", &["flowrun_nodes".into()]));
        assert!(!in_scope("flowrun_nodes::generic", &["gen".into()]));
        assert!(in_scope("flowrun_nodes::pv::read", &["pv::read".into()]));
        assert!(in_scope("flowrun_nodes::pv::read", &["flowrun_nodes::pv".into()]));
        assert!(!in_scope("flowrun_nodes::pv::read", &["nodes::pv".into()]));
        assert!(!in_scope("flowrun_nodes::pv::read", &["read::x".into()]));
        assert!(in_scope("flowrun_nodes::pv::read", &["x".into(), "read".into()]));
    }
}
