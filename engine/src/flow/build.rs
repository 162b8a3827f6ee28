//! Resolution and validation: [`RawFlow`] -> [`Flow`], reporting every error with its place in the file.
//!
//! The steps, in order:
//! 1. parse the TOML into [`RawFlow`] (syntax errors, unknown fields and wrong TOML types stop here);
//! 2. apply command-line `--set` / `--input` overrides to `[config]` / `[inputs]`;
//! 3. turn `[nodes.*]` into node declarations: drop nodes whose `when` does not match, pick the variant the
//!    config selects, expand `parameterize` into one node per instance; check names are unique;
//! 4. resolve every declared node (and, on demand, every registered function a parameter names): find its
//!    function, bind each parameter to a literal, a config value, an input, another node or a default;
//! 5. type-check every edge, find cycles (printed as `a -> b -> a`), place every node in its fan-out scope;
//! 6. check materialize sections, data checks and that every config key is read by something.
//!
//! Errors do not stop the steps that can still run, so one pass reports them all.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use flowrun_cache::CacheKey;
use indexmap::IndexMap;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::NodeFiltered;
use toml::Spanned;

use super::diagnostic::{Diagnostic, Diagnostics, Label, SourceFile, read_source};
use super::raw::{Bindings, CacheMode, OnItemError, RawCheck, RawFlow, RawInstance, RawNode, RawVariant, SpannedTable};
use super::{
    Arg, Binding, Block, EdgeMode, Flow, FlowNode, Literal, LiteralSource, MaterializeDecl, NodeId, NodeImpl, SqlQuery,
};
use crate::registry::{Lookup, OutputKind, ParamKind, Registry};
use crate::suggest::{closest, did_you_mean};
use crate::value::{LiteralCx, TypeDesc, encode_value};
use crate::{Table, sql};

/// What `build` needs besides the file.
pub struct BuildOptions<'a> {
    /// Where node functions are looked up.
    pub registry: &'a Registry,
    /// `--set key=value` overrides of `[config]` (values parsed as TOML, else taken as strings).
    pub set_config: Vec<(String, String)>,
    /// `--input name=value` values of `[inputs]`.
    pub set_inputs: Vec<(String, String)>,
    /// Overrides `[flow] outputs`, and selects (like dbt's `--select`): only the `[materialize]` sections
    /// of these nodes are kept. Without it (and without `tags`), every section's node is a target too.
    pub outputs: Option<Vec<String>>,
    /// `--tag KEY=VALUE`: the nodes carrying any of these tags are selected too, as if in `outputs`.
    pub tags: Vec<(String, String)>,
    /// Materializer kinds the caller can write; empty accepts any kind.
    pub materializer_kinds: Vec<String>,
}

impl Default for BuildOptions<'_> {
    fn default() -> Self {
        BuildOptions {
            registry: Registry::global(),
            set_config: Vec::new(),
            set_inputs: Vec::new(),
            outputs: None,
            tags: Vec::new(),
            materializer_kinds: Vec::new(),
        }
    }
}

/// Reads and builds the flow at `path`.
pub fn load(path: &Path, opts: &BuildOptions<'_>) -> Result<Flow, Diagnostics> {
    build(read_source(path)?, opts)
}

/// Parses a command-line value: TOML if it parses (`3`, `true`, `[1, 2]`, `"x"`), else a plain string.
pub fn parse_cli_value(raw: &str) -> toml::Value {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}")).ok().and_then(|mut t| t.remove("v"));
    parsed.unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Builds a flow from its source text: [`parse`], then [`resolve`].
pub fn build(src: Arc<SourceFile>, opts: &BuildOptions<'_>) -> Result<Flow, Diagnostics> {
    let raw = parse(&src)?;
    resolve(src, &raw, opts)
}

/// Step 1: the TOML as written, with spans (syntax errors, unknown fields and wrong TOML types stop here).
pub fn parse(src: &Arc<SourceFile>) -> Result<RawFlow, Diagnostics> {
    toml::from_str(&src.text).map_err(|e| {
        let message = e.message();
        let wrong_value = ["unknown field", "invalid type", "unknown variant"].iter().any(|m| message.contains(m));
        let help = message
            .contains("duplicate key")
            .then(|| "each table may appear once; give the second node another name".to_string());
        let code = if wrong_value { "bad-value" } else { "toml-syntax" };
        let d = Diagnostic::new(code, format!("invalid flow file: {message}"))
            .at(Label::new(src, e.span().unwrap_or(0..0), "here"))
            .help(help);
        Diagnostics(vec![d])
    })
}

/// Steps 2 to 6: resolution and validation of a parsed flow file (`src` is where `raw` came from).
pub fn resolve(src: Arc<SourceFile>, raw: &RawFlow, opts: &BuildOptions<'_>) -> Result<Flow, Diagnostics> {
    let mut b = Builder {
        cx: LiteralCx { base_dir: src.path.parent().map(Path::to_path_buf).unwrap_or_default() },
        scope: raw.flow.get_ref().modules.iter().map(|m| m.get_ref().clone()).collect(),
        src,
        opts,
        errors: Vec::new(),
        config: IndexMap::new(),
        inputs: IndexMap::new(),
        decls: Vec::new(),
        nodes: Vec::new(),
        by_name: HashMap::new(),
        edges: Vec::new(),
        disabled: Vec::new(),
    };
    b.run(raw);
    b.finish(raw)
}

/// A node declaration after `when`, variants and `parameterize` were applied: the node's table, then the
/// variant the config selects, then the instance it is, each overriding the parameters and bindings
/// before it. It borrows the parsed file (`'r`).
#[derive(Default)]
struct Decl<'r> {
    /// Shared with the node and every report of it.
    name: Arc<str>,
    span: Range<usize>,
    function: Option<(&'r str, Range<usize>)>,
    sql: Option<(&'r str, Range<usize>)>,
    params: IndexMap<&'r str, (&'r toml::Value, Range<usize>)>,
    inputs: IndexMap<&'r str, (&'r str, Range<usize>)>,
    cache: CacheMode,
    tags: Vec<(&'r str, &'r str)>,
    doc: Option<&'r str>,
    checks: Vec<(&'r RawCheck, Range<usize>)>,
    on_item_error: Option<(OnItemError, Range<usize>)>,
    declared: bool,
}

impl<'r> Decl<'r> {
    /// A registered function pulled in by name: no table of its own.
    fn auto(name: &str, span: Range<usize>) -> Self {
        Decl { name: name.into(), span, ..Decl::default() }
    }

    /// Node `name` of table `key`, with its chosen variant and, for `parameterize`, its instance.
    fn new(
        (name, span): (&str, Range<usize>),
        key: &'r Spanned<String>,
        n: &'r RawNode,
        variant: Option<&'r RawVariant>,
        instance: Option<&'r RawInstance>,
    ) -> Self {
        let mut d = Decl {
            function: n.function.as_ref().map(str_span),
            sql: n.sql.as_ref().map(str_span),
            cache: n.cache.as_ref().map(|c| *c.get_ref()).unwrap_or_default(),
            tags: n.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            doc: n.doc.as_deref(),
            checks: n.checks.iter().map(|c| (c.get_ref(), c.span())).collect(),
            on_item_error: n.on_item_error.as_ref().map(|o| (*o.get_ref(), o.span())),
            declared: true,
            ..Decl::auto(name, span)
        };
        d.merge(&n.params, &n.inputs);
        if let Some(v) = variant {
            // a variant's `sql` replaces the node's function, its `fn` the node's query (both: an error)
            if v.function.is_some() || v.sql.is_some() {
                (d.function, d.sql) = (v.function.as_ref().map(str_span), v.sql.as_ref().map(str_span));
            }
            d.merge(&v.params, &v.inputs);
        }
        if let Some(inst) = instance {
            // an instance's function is its table's name unless the table says otherwise
            d.function = d.function.or_else(|| Some(str_span(key)));
            d.doc = inst.doc.as_deref().or(d.doc);
            d.merge(&inst.params, &inst.inputs);
            d.tags.extend(inst.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        d
    }

    /// A parameter given again replaces what it was given before, literal or binding.
    fn merge(&mut self, params: &'r SpannedTable, inputs: &'r Bindings) {
        for (k, v) in params {
            self.inputs.shift_remove(k.get_ref().as_str());
            self.params.insert(k.get_ref(), (v.get_ref(), v.span()));
        }
        for (k, v) in inputs {
            self.params.shift_remove(k.get_ref().as_str());
            self.inputs.insert(k.get_ref(), str_span(v));
        }
    }
}

fn str_span(s: &Spanned<String>) -> (&str, Range<usize>) {
    (s.get_ref(), s.span())
}

struct ConfigEntry {
    value: toml::Value,
    span: Option<Range<usize>>,
    used: bool,
}

struct InputEntry {
    value: Option<(toml::Value, Option<Range<usize>>)>,
    span: Range<usize>,
}

/// A node-to-node binding waiting for its type check.
struct PendingEdge {
    consumer: NodeId,
    arg: usize,
    producer: NodeId,
    span: Range<usize>,
}

struct Builder<'a> {
    src: Arc<SourceFile>,
    opts: &'a BuildOptions<'a>,
    cx: LiteralCx,
    scope: Vec<String>,
    errors: Vec<Diagnostic>,
    config: IndexMap<String, ConfigEntry>,
    inputs: IndexMap<String, InputEntry>,
    /// Declarations in file order, then the functions pulled in by name; each is taken when resolved.
    decls: Vec<Option<Decl<'a>>>,
    /// Resolved nodes, pushed in declaration order (`None`: the declaration had errors).
    nodes: Vec<Option<FlowNode>>,
    /// Every declaration's name -> its id.
    by_name: HashMap<Arc<str>, NodeId>,
    edges: Vec<PendingEdge>,
    disabled: Vec<String>,
}

impl<'a> Builder<'a> {
    /// The declaration called `name`.
    fn id_of(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    /// Every declaration's name, for "did you mean" hints.
    fn all_names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(|k| &**k)
    }

    fn label(&self, span: Range<usize>, text: impl Into<String>) -> Label {
        Label::new(&self.src, span, text)
    }

    /// Reports an error about node `node`, pointing at `span` of the file, with a help line if any.
    fn node_error(
        &mut self,
        node: &str,
        code: &'static str,
        message: String,
        span: Range<usize>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        let d = Diagnostic::new(code, message).node(node).at(self.label(span, label));
        self.errors.push(d.help(help));
    }

    fn run(&mut self, raw: &'a RawFlow) {
        self.load_config_and_inputs(raw);
        self.declare(raw);
        self.resolve_targets_early(raw);
        // resolving a node may pull in registered functions its parameters name: they are resolved in turn
        while let Some(decl) = self.decls.get_mut(self.nodes.len()).and_then(Option::take) {
            let node = self.resolve(self.nodes.len(), &decl);
            self.nodes.push(node);
        }
    }

    // -- step 2: config and inputs ------------------------------------------------------------------------

    /// `[config]` and `[inputs]`, with the command line's `--set` and `--input` values over the file's.
    fn load_config_and_inputs(&mut self, raw: &'a RawFlow) {
        for (k, v) in &raw.config {
            let entry = ConfigEntry { value: v.get_ref().clone(), span: Some(v.span()), used: false };
            self.config.insert(k.get_ref().to_string(), entry);
        }
        for (k, v) in &raw.inputs {
            let value = v.get_ref().default.as_ref().map(|d| (d.get_ref().clone(), Some(d.span())));
            self.inputs.insert(k.get_ref().clone(), InputEntry { value, span: k.span() });
        }
        for (k, v) in &self.opts.set_config {
            match self.config.get_mut(k) {
                Some(entry) => (entry.value, entry.span) = (parse_cli_value(v), None),
                None => {
                    let help = did_you_mean(&closest(k, self.config.keys().map(String::as_str)))
                        .unwrap_or_else(|| format!("declare it in [config] of {} first", self.src.path.display()));
                    let message = format!("--set {k}={v}: the flow has no config key `{k}`");
                    self.errors.push(Diagnostic::new("unknown-config-key", message).help(help));
                }
            }
        }
        for (k, v) in &self.opts.set_inputs {
            match self.inputs.get_mut(k) {
                // Command-line paths are relative to the current directory, not the flow file.
                Some(entry) => entry.value = Some((cli_input_value(v), None)),
                None => {
                    let help = did_you_mean(&closest(k, self.inputs.keys().map(String::as_str)))
                        .unwrap_or_else(|| "declare it in [inputs] of the flow file".to_string());
                    let message = format!("--input {k}={v}: the flow has no input `{k}`");
                    self.errors.push(Diagnostic::new("unknown-input", message).help(help));
                }
            }
        }
    }

    /// Evaluates a `when` table: `true` if every key matches. Unknown keys are errors.
    fn when_matches(&mut self, node: &str, when: &SpannedTable) -> bool {
        let mut all = true;
        for (k, v) in when {
            match self.config.get_mut(k.get_ref().as_str()) {
                Some(entry) => {
                    entry.used = true;
                    all &= entry.value == *v.get_ref();
                }
                None => {
                    let key = k.get_ref();
                    let help = did_you_mean(&closest(key, self.config.keys().map(String::as_str)))
                        .unwrap_or_else(|| format!("add `{key}` to [config]"));
                    let message =
                        format!("node `{node}`: `when` reads config key `{key}`, which [config] does not have");
                    self.node_error(node, "unknown-config-key", message, k.span(), "not in [config]", Some(help));
                    all = false;
                }
            }
        }
        all
    }

    // -- step 3: declarations -----------------------------------------------------------------------------

    fn declare(&mut self, raw: &'a RawFlow) {
        for (key, node) in &raw.nodes {
            let (name, span, n) = (key.get_ref(), key.span(), node.get_ref());
            if let Some(when) = &n.when
                && !self.when_matches(name, when)
            {
                self.disabled.push(name.clone());
                continue;
            }
            let Some(variant) = self.choose_variant(name, span.clone(), n) else { continue };
            if n.parameterize.is_empty() {
                self.add_decl(Decl::new((name, span), key, n, variant, None));
            }
            for (inst_name, inst) in &n.parameterize {
                let inst_name = (inst_name.get_ref().as_str(), inst_name.span());
                self.add_decl(Decl::new(inst_name, key, n, variant, Some(inst.get_ref())));
            }
        }
    }

    /// Parameter names of every function a declaration could use (any variant, even one the config does
    /// not select): a config key one of them reads is not "unused". Only asked when some key looks unused.
    fn known_params(&self, raw: &RawFlow) -> HashSet<&'static str> {
        let mut known = HashSet::new();
        for (name, node) in &raw.nodes {
            let n = node.get_ref();
            let functions = std::iter::once(n.function.as_ref().map(|f| f.get_ref()).unwrap_or(name.get_ref()))
                .chain(n.variants.iter().filter_map(|v| v.get_ref().function.as_ref().map(|f| f.get_ref())));
            for function in functions {
                if let Lookup::Found(def) = self.opts.registry.lookup(function, &self.scope) {
                    known.extend(def.params.iter().map(|p| p.name));
                }
            }
        }
        known
    }

    /// The variant of node `name` the config selects (`Some(None)`: it has none); `None` after an error.
    fn choose_variant(&mut self, name: &str, span: Range<usize>, n: &'a RawNode) -> Option<Option<&'a RawVariant>> {
        if n.variants.is_empty() {
            return Some(None);
        }
        let matched: Vec<_> = n
            .variants
            .iter()
            .filter(|v| v.get_ref().when.as_ref().is_some_and(|w| self.when_matches(name, w)))
            .collect();
        let fallback: Vec<_> = n.variants.iter().filter(|v| v.get_ref().when.is_none()).collect();
        let describe = |v: &&Spanned<RawVariant>| {
            let v = v.get_ref();
            let when: Vec<String> =
                v.when.iter().flatten().map(|(k, x)| format!("{} = {}", k.get_ref(), x.get_ref())).collect();
            let when = if v.when.is_some() { when.join(", ") } else { "fallback".to_string() };
            format!("{} (when {when})", v.function.as_ref().map_or("sql", |f| f.get_ref()))
        };
        let (code, message, span, label, help) = match (matched.as_slice(), fallback.as_slice()) {
            ([one], _) | ([], [one]) => return Some(Some(one.get_ref())),
            ([], []) => {
                let options: Vec<String> = n.variants.iter().map(|v| describe(&v)).collect();
                let current: Vec<String> = self.config.iter().map(|(k, e)| format!("{k} = {}", e.value)).collect();
                let help = format!(
                    "variants: {}; config: {}; add a variant without `when` as the fallback",
                    options.join("; "),
                    if current.is_empty() { "(empty)".to_string() } else { current.join(", ") }
                );
                let message = format!("no variant of node `{name}` matches the config");
                ("no-variant", message, span, "variants declared here", help)
            }
            (many, _) if many.len() > 1 => {
                let options: Vec<String> = many.iter().map(describe).collect();
                let message = format!("{} variants of node `{name}` match the config", many.len());
                let help = format!("matching: {}; make their `when` tables exclusive", options.join("; "));
                ("ambiguous-variant", message, many[1].span(), "this variant matches too", help)
            }
            (_, many) => {
                let message = format!("node `{name}` has {} fallback variants", many.len());
                let help = "only one variant may omit `when`".to_string();
                ("ambiguous-variant", message, many[1].span(), "second variant without `when`", help)
            }
        };
        self.node_error(name, code, message, span, label, Some(help));
        None
    }

    /// Adds a declaration, or reports it when another has its name.
    fn add_decl(&mut self, d: Decl<'a>) {
        // declarations are only added before any is resolved, so the first one is still there
        let Some(first) = self.id_of(&d.name).and_then(|i| self.decls[i].as_ref()).map(|f| f.span.clone()) else {
            self.push_decl(d);
            return;
        };
        let diag = Diagnostic::new("duplicate-node", format!("two nodes are called `{}`", d.name))
            .node(&d.name)
            .at(self.label(d.span.clone(), "second node with this name"))
            .also(self.label(first, "first defined here"))
            .help("node names must be unique; rename one of the parameterized instances".to_string());
        self.errors.push(diag);
    }

    /// Adds a declaration whose name is new, giving its id.
    fn push_decl(&mut self, d: Decl<'a>) -> NodeId {
        let id = self.decls.len();
        self.by_name.insert(d.name.clone(), id);
        self.decls.push(Some(d));
        id
    }

    /// `[flow] outputs` and materialize targets may name registered functions that are not declared.
    fn resolve_targets_early(&mut self, raw: &'a RawFlow) {
        let mut names = self.outputs(raw).unwrap_or_default();
        let nodes = raw.materialize.values().filter_map(|s| s.get_ref().iter().find(|(k, _)| k.get_ref() == "node"));
        names.extend(nodes.filter_map(|(_, node)| Some((node.get_ref().as_str()?, node.span()))));
        for (name, span) in names {
            if self.id_of(name).is_none() && self.registered(name) {
                self.push_decl(Decl::auto(name, span));
            }
        }
    }

    // -- step 4: resolve one node -------------------------------------------------------------------------

    fn resolve(&mut self, id: NodeId, decl: &Decl<'a>) -> Option<FlowNode> {
        if let Some((sql_text, sql_span)) = decl.sql.clone() {
            if let Some((_, fspan)) = &decl.function {
                let message = format!("node `{}` has both `fn` and `sql`", decl.name);
                self.node_error(&decl.name, "bad-value", message, fspan.clone(), "remove `fn` or `sql`", None);
                return None;
            }
            return Some(self.resolve_sql(id, decl, sql_text, sql_span));
        }
        let (fname, fspan) = decl.function.clone().unwrap_or((&decl.name, decl.span.clone()));
        let def = match self.opts.registry.lookup(fname, &self.scope) {
            Lookup::Found(def) => def,
            Lookup::Ambiguous(defs) => {
                let paths = defs.iter().map(|d| format!("`{}`", d.path)).collect::<Vec<_>>().join(", ");
                let message = format!("node `{}`: several registered functions are called `{fname}`", decl.name);
                let path = defs[0].path.rsplit_once("::");
                let example =
                    path.map(|(m, n)| format!("{}::{n}", m.rsplit("::").next().unwrap_or(m))).unwrap_or_default();
                let help = format!("write the module too, e.g. fn = \"{example}\" (candidates: {paths})");
                self.node_error(&decl.name, "ambiguous-function", message, fspan, "ambiguous", Some(help));
                return None;
            }
            Lookup::NotFound(suggestions) => {
                // registered, but outside the flow's `modules`?
                let outside: Vec<String> = match self.opts.registry.lookup(fname, &[]) {
                    Lookup::Found(def) => vec![format!("`{}`", def.module)],
                    Lookup::Ambiguous(defs) => defs.iter().map(|d| format!("`{}`", d.module)).collect(),
                    Lookup::NotFound(_) => Vec::new(),
                };
                let help = if outside.is_empty() {
                    did_you_mean(&suggestions).unwrap_or_else(|| {
                        "`flowrun nodes` lists the registered functions; a new one needs #[node] and its crate linked"
                            .to_string()
                    })
                } else {
                    format!(
                        "`{fname}` is in module {}, which [flow] modules does not list: add it there, or write fn = \"<module>::{fname}\"",
                        outside.join(", ")
                    )
                };
                let what = if decl.declared { "node" } else { "name" };
                let message = format!("{what} `{}` uses function `{fname}`, which is not a registered node", decl.name);
                self.node_error(&decl.name, "unknown-function", message, fspan, "unknown function", Some(help));
                return None;
            }
        };
        // parameters named in the flow must exist
        let given = decl.params.iter().map(|(k, (_, s))| (k, s)).chain(decl.inputs.iter().map(|(k, (_, s))| (k, s)));
        for (key, span) in given.filter(|(key, _)| !def.params.iter().any(|p| p.name == **key)) {
            let help = did_you_mean(&closest(key, def.params.iter().map(|p| p.name)))
                .unwrap_or_else(|| format!("its parameters are: {}", def.signature()));
            let message = format!("node `{}`: function `{}` has no parameter `{key}`", decl.name, def.name);
            self.node_error(&decl.name, "unknown-parameter", message, span.clone(), "no such parameter", Some(help));
        }
        let args = (def.params.iter().enumerate())
            .map(|(i, p)| Arg {
                param: p.name.into(),
                binding: self.bind(id, decl, i, p.name, p.kind).unwrap_or_else(placeholder),
            })
            .collect();
        let collects = def.params.iter().any(|p| matches!(p.kind, ParamKind::Collect(_)));
        let code_digest = CacheKey::code_digest(def.path, def.code_version, def.output.value_type().name());
        Some(self.node(decl, NodeImpl::Function(def), args, def.doc, collects, code_digest))
    }

    /// The node `decl` resolves to, once its data checks are checked against what it returns, and its
    /// `on_item_error` against whether it `collects` a fan-out. `doc` is used when the file gives none.
    fn node(
        &mut self,
        decl: &Decl<'a>,
        imp: NodeImpl,
        args: Vec<Arg>,
        doc: &'static str,
        collects: bool,
        code_digest: blake3::Hash,
    ) -> FlowNode {
        let node = FlowNode {
            name: decl.name.clone(),
            imp,
            args,
            cache: decl.cache,
            file_tags: decl.tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            doc: decl.doc.map_or(Cow::Borrowed(doc), |d| Cow::Owned(d.to_string())),
            checks: decl.checks.iter().map(|(c, _)| (*c).clone()).collect(),
            on_item_error: decl.on_item_error.as_ref().map(|(o, _)| *o).unwrap_or_default(),
            span: decl.span.clone(),
            block: 0,
            declared: decl.declared,
            code_digest,
        };
        self.check_checks(decl, node.output());
        if let Some((_, span)) = &decl.on_item_error
            && !collects
        {
            let message = format!("node `{}` collects no fan-out, so `on_item_error` has nothing to do", decl.name);
            let label = "only for a node with a Collect<T> parameter";
            let help = "put on_item_error on the node that gathers the fan-out's items (its fan-in)".to_string();
            self.node_error(&decl.name, "on-item-error", message, span.clone(), label, Some(help));
        }
        node
    }

    fn resolve_sql(&mut self, id: NodeId, decl: &Decl<'a>, sql_text: &str, sql_span: Range<usize>) -> FlowNode {
        // its tables: those `inputs` binds (alias -> node), then the nodes the query names
        let named = sql::referenced_tables(sql_text, |n| self.id_of(n).is_some() || self.registered(n));
        let mut tables: Vec<(&str, &str, Range<usize>)> =
            decl.inputs.iter().map(|(alias, (source, span))| (*alias, *source, span.clone())).collect();
        for t in &named {
            if !tables.iter().any(|(alias, ..)| *alias == t.as_str()) {
                tables.push((t, t, sql_span.clone()));
            }
        }
        if let Some((k, (_, span))) = decl.params.first() {
            let message = format!("SQL node `{}` takes no `params` (`{k}`)", decl.name);
            let help = "write literals into the query, or bind tables with inputs = { alias = \"node\" }".to_string();
            self.node_error(&decl.name, "unknown-parameter", message, span.clone(), "not used by SQL", Some(help));
        }
        let args = (tables.into_iter().enumerate())
            .map(|(i, (table, source, span))| {
                let binding = match self.node_ref(source, span.clone()) {
                    Some(producer) => self.edge(id, i, producer, span),
                    None => {
                        let message = format!(
                            "SQL node `{}` binds table `{table}` to `{source}`, which is not a node",
                            decl.name
                        );
                        let help = did_you_mean(&closest(source, self.all_names()));
                        self.node_error(&decl.name, "missing-input", message, span, "unknown node", help);
                        placeholder()
                    }
                };
                Arg { param: table.into(), binding }
            })
            .collect();
        let code_version = blake3::hash(sql::normalize(sql_text).as_bytes()).to_hex()[..32].to_string();
        let code_digest = CacheKey::code_digest("sql", &code_version, TypeDesc::of::<Table>().name());
        let query = SqlQuery { sql: sql_text.to_string(), code_version };
        self.node(decl, NodeImpl::Sql(query), args, "", false, code_digest)
    }

    /// A binding to `producer`'s result, whose type is checked once every node is resolved.
    fn edge(&mut self, consumer: NodeId, arg: usize, producer: NodeId, span: Range<usize>) -> Binding {
        self.edges.push(PendingEdge { consumer, arg, producer, span });
        Binding::Node { node: producer, mode: EdgeMode::Direct }
    }

    /// The node called `name`: declared, already pulled in, or a registered function pulled in now.
    fn node_ref(&mut self, name: &str, span: Range<usize>) -> Option<NodeId> {
        if let Some(id) = self.id_of(name) {
            return Some(id);
        }
        let config_or_input = self.config.contains_key(name) || self.inputs.contains_key(name);
        (!config_or_input && self.registered(name)).then(|| self.push_decl(Decl::auto(name, span)))
    }

    /// Is `name` a registered function in the flow's modules?
    fn registered(&self, name: &str) -> bool {
        matches!(self.opts.registry.lookup(name, &self.scope), Lookup::Found(_))
    }

    /// The place in the file of the entry of config table `key` that `message` names first in backticks, for
    /// a table of tables (a manifest of datasets); `None` for anything else (a table of plain values, whose
    /// errors name field names).
    fn entry_span(&self, key: &str, value: &toml::Value, message: &str) -> Option<Range<usize>> {
        let toml::Value::Table(t) = value else { return None };
        if !t.values().all(toml::Value::is_table) {
            return None;
        }
        let entry = t.keys().filter_map(|k| Some((message.find(&format!("`{k}`"))?, k))).min()?.1;
        let doc = toml::de::DeTable::parse(&self.src.text).ok()?;
        let config = doc.get_ref().iter().find(|(k, _)| k.get_ref() == "config")?.1.get_ref().as_table()?;
        let table = config.iter().find(|(k, _)| k.get_ref() == key)?.1.get_ref().as_table()?;
        table.iter().find(|(k, _)| k.get_ref() == entry.as_str()).map(|(k, _)| k.span())
    }

    /// `value` as the literal of parameter `param` (of type `ty`) of `node`; an error points at `span`.
    fn literal(
        &mut self,
        node: &str,
        param: &str,
        ty: TypeDesc,
        value: &toml::Value,
        span: Option<Range<usize>>,
        source: LiteralSource,
    ) -> Option<Binding> {
        let value = match ty.from_toml(value, &self.cx) {
            Ok(v) => v,
            Err(e) => {
                let (origin, entry) = match &source {
                    // a config table whose entry the error names (`dataset `b`: ...`): point at that entry
                    LiteralSource::Config(k) => (format!("config `{k}`"), self.entry_span(k, value, &e.to_string())),
                    LiteralSource::Input(k) => (format!("input `{k}`"), None),
                    _ => ("the literal".to_string(), None),
                };
                let short = ty.short_name();
                let (value, help) = (describe_toml(value), format!("write a value of type `{short}`"));
                let message =
                    format!("node `{node}`: parameter `{param}` is a `{short}`, but {origin} is {value} ({e})");
                let at = entry.or(span).map(|span| self.label(span, format!("expected `{short}`")));
                self.errors.push(Diagnostic::new("bad-value", message).node(node).at(at).help(help));
                return None;
            }
        };
        let identity = identity_of(&*value).map_err(|e| {
            let d = Diagnostic::new("bad-value", format!("node `{node}`: parameter `{param}`: {e}")).node(node);
            self.errors.push(d.at(span.map(|span| self.label(span, "here"))));
        });
        Some(Binding::Literal(Literal { value, identity: identity.ok()?, source }))
    }

    /// Binds parameter `index` (`param`) of `decl`: to its literal, else to what `inputs` names or (without
    /// one) to what has the parameter's name, a node before a config value or an input, else to the type's
    /// default.
    fn bind(&mut self, id: NodeId, decl: &Decl<'a>, index: usize, param: &str, kind: ParamKind) -> Option<Binding> {
        let (ParamKind::Value(ty) | ParamKind::Collect(ty)) = kind;
        let collect = matches!(kind, ParamKind::Collect(_));
        if let Some((value, span)) = decl.params.get(param) {
            if collect {
                let message =
                    format!("node `{}`: parameter `{param}` collects a fan-out and cannot be a literal", decl.name);
                let label = "literal for a Collect parameter";
                self.node_error(&decl.name, "bad-value", message, span.clone(), label, None);
                return None;
            }
            return self.literal(&decl.name, param, ty, value, Some(span.clone()), LiteralSource::Param);
        }
        let (source, span, explicit): (&str, _, _) = match decl.inputs.get(param) {
            Some((s, span)) => (s, span.clone(), true),
            None => (param, decl.span.clone(), false),
        };
        if let Some(producer) = self.id_of(source) {
            return Some(self.edge(id, index, producer, span));
        }
        if !collect {
            if let Some(entry) = self.config.get_mut(source) {
                entry.used = true;
                let (value, cspan) = (entry.value.clone(), entry.span.clone());
                return self.literal(&decl.name, param, ty, &value, cspan, LiteralSource::Config(source.to_string()));
            }
            if let Some(entry) = self.inputs.get(source) {
                let ispan = entry.span.clone();
                let Some((value, vspan)) = entry.value.clone() else {
                    let message = format!("node `{}` reads input `{source}`, which has no value", decl.name);
                    let help = format!("pass --input {source}=VALUE, or give it a default");
                    let label = "declared without a default";
                    self.node_error(&decl.name, "missing-input", message, ispan, label, Some(help));
                    return None;
                };
                let input = LiteralSource::Input(source.to_string());
                return self.literal(&decl.name, param, ty, &value, vspan.or(Some(ispan)), input);
            }
        }
        if let Some(producer) = self.node_ref(source, span.clone()) {
            return Some(self.edge(id, index, producer, span));
        }
        if !explicit
            && !collect
            && let Some(value) = ty.default_value()
        {
            let identity = identity_of(&*value).ok()?;
            return Some(Binding::Literal(Literal { value, identity, source: LiteralSource::Default }));
        }
        let names = self
            .all_names()
            .chain(self.config.keys().map(String::as_str))
            .chain(self.inputs.keys().map(String::as_str));
        let help = did_you_mean(&closest(source, names)).unwrap_or_else(|| {
            let producers: Vec<String> = (self.opts.registry.all().iter())
                .filter(|d| d.output.value_type() == ty && crate::registry::in_scope(d.module, &self.scope))
                .map(|d| format!("`{}`", d.name))
                .take(5)
                .collect();
            if producers.is_empty() {
                format!(
                    "add `{source}` to [config] or [inputs], declare a node called `{source}`, or bind `{param}` with inputs = {{ {param} = \"...\" }}"
                )
            } else {
                format!(
                    "registered nodes returning `{}`: {}; bind one with inputs = {{ {param} = \"...\" }}, or add `{source}` to [config]",
                    ty.short_name(),
                    producers.join(", ")
                )
            }
        });
        let what = if explicit { format!("is bound to `{source}`, which") } else { "needs a value, but".to_string() };
        let message = format!(
            "node `{}`: parameter `{param}` ({}) {what} no node, config value or input is called `{source}`",
            decl.name,
            ty.short_name()
        );
        let label = format!("`{source}` is not defined");
        self.node_error(&decl.name, "missing-input", message, span, label, Some(help));
        None
    }

    fn check_checks(&mut self, decl: &Decl<'a>, output: OutputKind) {
        let is_table = matches!(output, OutputKind::Value(t) if t == TypeDesc::of::<Table>());
        let not_table = (!is_table)
            .then(|| format!("checks need a table result; `{}` returns `{}`", decl.name, output.short_name()));
        for (check, span) in &decl.checks {
            if let Some(problem) = not_table.clone().or_else(|| crate::checks::validate(check).err()) {
                let message = format!("node `{}`: {problem}", decl.name);
                self.node_error(&decl.name, "bad-check", message, span.clone(), "this check", None);
            }
        }
    }

    // -- steps 5 and 6 ------------------------------------------------------------------------------------

    fn finish(mut self, raw: &'a RawFlow) -> Result<Flow, Diagnostics> {
        self.type_check_edges();
        self.report_unused_config(raw);
        let mut materialize = self.materialize_decls(raw);
        let targets = self.targets(raw, &materialize);
        if self.selects() {
            materialize.retain(|m| targets.contains(&m.node));
        }
        let nodes: Option<Vec<FlowNode>> = self.nodes.into_iter().collect();
        let (Some(mut nodes), true) = (nodes, self.errors.is_empty()) else {
            if self.errors.is_empty() {
                self.errors.push(Diagnostic::new("internal", "a node could not be resolved (flowrun bug)"));
            }
            return Err(Diagnostics(self.errors));
        };
        let graph = super::dag(&nodes);
        let order = order(&self.src, &nodes, &graph)?;
        let blocks = scopes(&self.src, &mut nodes, &order)?;
        Ok(Flow {
            name: raw.flow.get_ref().name.get_ref().clone(),
            description: raw.flow.get_ref().description.clone(),
            source: self.src,
            nodes,
            graph,
            order,
            by_name: self.by_name,
            targets,
            blocks,
            config: self.config.into_iter().map(|(k, e)| (k, e.value)).collect(),
            materialize,
            lake: settings(&raw.lake),
            storage: settings(&raw.storage),
            cache: settings(&raw.cache),
            targets_declared: (raw.targets.iter().map(|(k, t)| (k, t.get_ref())))
                .map(|(k, t)| (k.get_ref().clone(), [&t.lake, &t.storage, &t.cache].map(settings)))
                .collect(),
            target: None,
            disabled: self.disabled,
        })
    }

    /// The type of every node-to-node binding, which gives its mode (a fan-out's items, a fan-in).
    fn type_check_edges(&mut self) {
        for e in std::mem::take(&mut self.edges) {
            let (Some(consumer), Some(producer)) = (&self.nodes[e.consumer], &self.nodes[e.producer]) else { continue };
            let expected =
                consumer.def().map_or(ParamKind::Value(TypeDesc::of::<Table>()), |def| def.params[e.arg].kind);
            let produced = producer.output();
            let mode = match (expected, produced) {
                (ParamKind::Value(t), OutputKind::Value(u)) if t == u => Some(EdgeMode::Direct),
                (ParamKind::Value(t), OutputKind::Parallel { item, .. }) if t == item => Some(EdgeMode::Item),
                (ParamKind::Value(t), OutputKind::Parallel { list, .. }) if t == list => Some(EdgeMode::Direct),
                (ParamKind::Collect(t), OutputKind::Value(u)) if t == u => Some(EdgeMode::Collect),
                _ => None,
            };
            if let Some(mode) = mode {
                if let Some(consumer) = &mut self.nodes[e.consumer] {
                    consumer.args[e.arg].binding = Binding::Node { node: e.producer, mode };
                }
                continue;
            }
            let (want, hint) = match (expected, produced) {
                (ParamKind::Value(t), _) => (t.short_name(), ""),
                (ParamKind::Collect(t), OutputKind::Parallel { .. }) => (
                    format!("Collect<{}>", t.short_name()),
                    " (collect the results of a node inside the fan-out, not the fan-out node itself)",
                ),
                (ParamKind::Collect(t), OutputKind::Value(_)) => (format!("Collect<{}>", t.short_name()), ""),
            };
            let got = produced.short_name();
            let param = &consumer.args[e.arg].param;
            let message = format!(
                "type mismatch: node `{}` parameter `{param}` expects `{want}`, but node `{}` returns `{got}`{hint}",
                consumer.name, producer.name
            );
            let expects = format!("expects `{want}`");
            let returns = self.label(producer.span.clone(), format!("`{}` returns `{got}`", producer.name));
            let help = format!(
                "change one of the two types, or bind `{param}` to another node with inputs = {{ {param} = \"...\" }}"
            );
            let d =
                Diagnostic::new("type-mismatch", message).node(&*consumer.name).at(self.label(e.span.clone(), expects));
            self.errors.push(d.also(returns).help(help));
        }
    }

    /// Config keys no parameter reads (not reported when functions could not be resolved: that cascades).
    fn report_unused_config(&mut self, raw: &'a RawFlow) {
        let unresolved = self.errors.iter().any(|e| matches!(e.code, "unknown-function" | "ambiguous-function"));
        if unresolved || self.config.values().all(|e| e.used) {
            return;
        }
        let known_params = self.known_params(raw);
        let unused: Vec<Diagnostic> = (self.config.iter())
            .filter(|(k, e)| !e.used && !known_params.contains(k.as_str()))
            .map(|(key, e)| {
                let help = did_you_mean(&closest(key, known_params.iter().copied()))
                    .map(|h| format!("{h} (a config key is read by the parameters with its name)"))
                    .unwrap_or_else(|| "remove it, or add a node parameter with this name".to_string());
                Diagnostic::new("unknown-config-key", format!("config key `{key}` is not read by any node"))
                    .at(e.span.clone().map(|span| self.label(span, "unused")))
                    .help(help)
            })
            .collect();
        self.errors.extend(unused);
    }

    fn materialize_decls(&mut self, raw: &'a RawFlow) -> Vec<MaterializeDecl> {
        let mut out = Vec::new();
        for (name, section) in &raw.materialize {
            let (name, span) = (name.get_ref(), name.span());
            let mut options = settings(section.get_ref());
            let node = match options.shift_remove("node") {
                Some((toml::Value::String(n), nspan)) => self.id_of(&n).or_else(|| {
                    let d = Diagnostic::new("unknown-node", format!("materialize `{name}`: no node is called `{n}`"))
                        .at(self.label(nspan, "unknown node"))
                        .help(did_you_mean(&closest(&n, self.all_names())));
                    self.errors.push(d);
                    None
                }),
                _ => {
                    let message = format!("materialize `{name}` needs `node = \"<node name>\"`");
                    self.errors.push(Diagnostic::new("bad-value", message).at(self.label(span.clone(), "no `node`")));
                    None
                }
            };
            let kind = match options.shift_remove("kind") {
                Some((toml::Value::String(k), kspan)) => {
                    let kinds = &self.opts.materializer_kinds;
                    if !kinds.is_empty() && !kinds.contains(&k) {
                        let message = format!("materialize `{name}`: unknown kind `{k}`");
                        let d = Diagnostic::new("unknown-materializer", message).at(self.label(kspan, "unknown kind"));
                        self.errors.push(d.help(format!("kinds: {}", kinds.join(", "))));
                    }
                    k
                }
                _ => {
                    let message = format!("materialize `{name}` needs `kind = \"ducklake\"` (or another kind)");
                    self.errors.push(Diagnostic::new("bad-value", message).at(self.label(span.clone(), "no `kind`")));
                    String::new()
                }
            };
            if let Some(node) = node {
                out.push(MaterializeDecl { name: name.clone(), node, kind, options, span });
            }
        }
        out
    }

    /// Whether the command line selects what to build (`outputs` or `tags`).
    fn selects(&self) -> bool {
        self.opts.outputs.is_some() || !self.opts.tags.is_empty()
    }

    /// The outputs the command line or `[flow] outputs` asks for (a name given on the command line is placed
    /// at `[flow]`); `None` when neither does.
    fn outputs(&self, raw: &'a RawFlow) -> Option<Vec<(&'a str, Range<usize>)>> {
        let in_file = raw.flow.get_ref().outputs.as_ref();
        match &self.opts.outputs {
            Some(outs) => Some(outs.iter().map(|o| (o.as_str(), raw.flow.span())).collect()),
            None => in_file.map(|o| o.iter().map(|s| (s.get_ref().as_str(), s.span())).collect()),
        }
    }

    /// What to build: the requested outputs (or every declared node), the tagged nodes, and (unless the
    /// command line selects) the materialized ones.
    fn targets(&mut self, raw: &'a RawFlow, materialize: &[MaterializeDecl]) -> Vec<NodeId> {
        let only_tags = self.opts.outputs.is_none() && self.selects();
        let requested = if only_tags { Some(Vec::new()) } else { self.outputs(raw) };
        let mut targets: Vec<NodeId> = match requested {
            None => (0..self.nodes.len()).filter(|&i| self.nodes[i].as_ref().is_some_and(|n| n.declared)).collect(),
            Some(list) => (list.into_iter())
                .filter_map(|(name, span)| {
                    self.id_of(name).or_else(|| {
                        // a name given on the command line has no place in the file
                        let at = (!self.selects()).then(|| self.label(span, "unknown node"));
                        let d = Diagnostic::new("unknown-node", format!("output `{name}` is not a node of this flow"))
                            .at(at)
                            .help(did_you_mean(&closest(name, self.all_names())));
                        self.errors.push(d);
                        None
                    })
                })
                .collect(),
        };
        if !self.opts.tags.is_empty() {
            targets.extend(self.tagged());
        }
        if !self.selects() {
            for m in materialize {
                if !targets.contains(&m.node) {
                    targets.push(m.node);
                }
            }
        }
        targets
    }

    /// The nodes carrying any of `tags` (a node's value for a key is the last its tags give: the flow
    /// file's over its function's); an error naming the flow's tags when none does.
    fn tagged(&mut self) -> Vec<NodeId> {
        let wanted = &self.opts.tags;
        let nodes = || self.nodes.iter().enumerate().filter_map(|(i, n)| Some((i, n.as_ref()?)));
        let ids: Vec<NodeId> =
            nodes().filter(|(_, n)| wanted.iter().any(|(k, v)| n.tag(k) == Some(v.as_str()))).map(|(i, _)| i).collect();
        if ids.is_empty() {
            let present: BTreeSet<String> = nodes()
                .flat_map(|(_, n)| n.tags().map(move |(k, _)| format!("{k}={}", n.tag(k).unwrap_or_default())))
                .collect();
            let asked: Vec<String> = wanted.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let have = if present.is_empty() { "none".to_string() } else { Vec::from_iter(present).join(", ") };
            let message =
                format!("--tag {}: no node of the flow has it (its nodes' tags: {have})", asked.join(", --tag "));
            self.errors.push(Diagnostic::new("bad-argument", message));
        }
        ids
    }
}

fn placeholder() -> Binding {
    Binding::Literal(Literal { value: Arc::new(()), identity: blake3::hash(b""), source: LiteralSource::Default })
}

/// A TOML value for an error message, e.g. `a string "ten"` (long values cut after 40 bytes).
fn describe_toml(v: &toml::Value) -> String {
    let mut shown = v.to_string();
    if shown.len() > 40 {
        shown.truncate((0..=40).rev().find(|&i| shown.is_char_boundary(i)).unwrap_or(0));
        shown.push_str("...");
    }
    let t = v.type_str();
    format!("{} {t} {shown}", if t.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" })
}

/// A command-line `--input` value: relative paths are relative to the current directory (URLs are not paths).
fn cli_input_value(raw: &str) -> toml::Value {
    let value = parse_cli_value(raw);
    let Some(s) = value.as_str() else { return value };
    let p = Path::new(s);
    // a scheme as RFC 3986 has it: a letter, then letters, digits, `+`, `-`, `.` (`s3://`, `http://`)
    let url = s.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    match std::env::current_dir() {
        Ok(cwd) if p.is_relative() && !url && (p.exists() || s.contains('/')) => {
            toml::Value::String(cwd.join(p).to_string_lossy().into_owned())
        }
        _ => value,
    }
}

/// A settings section of the file, key -> (value, span).
fn settings(table: &SpannedTable) -> super::Settings {
    table.iter().map(|(k, v)| (k.get_ref().to_string(), (v.get_ref().clone(), v.span()))).collect()
}

/// The identity of a literal: its content fingerprint for files, else the hash of its encoding.
pub(crate) fn identity_of(value: &dyn crate::value::DynValue) -> Result<blake3::Hash, String> {
    value
        .dyn_identity()
        .unwrap_or_else(|| encode_value(value).map(|bytes| blake3::hash(&bytes)).map_err(|e| e.to_string()))
}

/// Every node, producers first: the file's order when every node comes after what it reads (so a run
/// follows the file), else a topological order; an error per cycle (printed as `a -> b -> a`).
fn order(
    src: &Arc<SourceFile>,
    nodes: &[FlowNode],
    graph: &DiGraph<NodeId, EdgeMode>,
) -> Result<Vec<NodeId>, Diagnostics> {
    if graph.raw_edges().iter().all(|e| e.source() < e.target()) {
        return Ok((0..nodes.len()).collect());
    }
    if let Ok(order) = petgraph::algo::toposort(graph, None) {
        return Ok(order.into_iter().map(NodeIndex::index).collect());
    }
    let errors = cycles(graph).map(|cycle| {
        let names: Vec<&str> = cycle.iter().map(|&i| &*nodes[i].name).collect();
        let first = &nodes[cycle[0]];
        let message = format!("cycle: {} -> {} (each node feeds the next)", names.join(" -> "), names[0]);
        let help = "a node cannot depend on itself; rename a parameter or bind it elsewhere with inputs = { .. }";
        let d = Diagnostic::new("cycle", message)
            .node(&*first.name)
            .at(Label::new(src, first.span.clone(), format!("`{}` is part of the cycle", first.name)))
            .help(help.to_string());
        cycle[1..]
            .iter()
            .fold(d, |d, &i| d.also(Label::new(src, nodes[i].span.clone(), format!("`{}`", nodes[i].name))))
    });
    Err(Diagnostics(errors.collect()))
}

/// One cycle per strongly connected component that has one, as node ids in path order: from the
/// component's first node, the shortest way back to it through its first successor in the component.
fn cycles(graph: &DiGraph<NodeId, EdgeMode>) -> impl Iterator<Item = Vec<NodeId>> {
    petgraph::algo::tarjan_scc(graph).into_iter().filter_map(move |scc| {
        let members: HashSet<NodeIndex> = scc.iter().copied().collect();
        let start = *scc.iter().min().expect("a component has a node");
        // none in a component of one node that does not read itself
        let next = graph.neighbors(start).find(|n| members.contains(n))?;
        let component = NodeFiltered::from_fn(graph, |n| members.contains(&n));
        let (_, path) = petgraph::algo::astar(&component, next, |n| n == start, |_| 1, |_| 0)
            .expect("the nodes of a component reach each other");
        let mut cycle: Vec<NodeId> = std::iter::once(start).chain(path).map(NodeIndex::index).collect();
        cycle.pop(); // `start` again
        Some(cycle)
    })
}

/// Places every node in its fan-out scope: the deepest of its inputs' (a fan-out's items open a scope, a
/// fan-in closes one). The scopes, `[0]` the whole flow.
fn scopes(src: &Arc<SourceFile>, nodes: &mut [FlowNode], order: &[NodeId]) -> Result<Vec<Block>, Diagnostics> {
    let mut blocks = vec![Block { parent: None, expand: None }];
    let mut child_of: HashMap<NodeId, usize> = HashMap::new();
    let mut errors = Vec::new();
    let error = |n: &FlowNode, message: String, label: &str| {
        Diagnostic::new("fanout", message).node(&*n.name).at(Label::new(src, n.span.clone(), label))
    };
    for &n in order {
        let (node, mut deepest, mut from) = (&nodes[n], 0, None);
        for a in &node.args {
            let Binding::Node { node: m, mode } = a.binding else { continue };
            let b = match mode {
                EdgeMode::Direct => nodes[m].block,
                EdgeMode::Item => *child_of.entry(m).or_insert_with(|| {
                    blocks.push(Block { parent: Some(nodes[m].block), expand: Some(m) });
                    blocks.len() - 1
                }),
                EdgeMode::Collect => match blocks[nodes[m].block].parent {
                    Some(p) => p,
                    None => {
                        let (name, other) = (&node.name, &nodes[m].name);
                        let message =
                            format!("node `{name}` collects `{other}`, but `{other}` is not inside a fan-out");
                        errors.push(error(node, message, "collects here").help(format!(
                            "take `{}` as a plain parameter, or make it depend on a node returning Parallel<T>",
                            a.param
                        )));
                        continue;
                    }
                },
            };
            if within(&blocks, b, deepest) {
                (deepest, from) = (b, Some(m));
            } else if !within(&blocks, deepest, b) {
                let other = from.map(|f| nodes[f].name.clone()).unwrap_or_default();
                let message = format!(
                    "node `{}` combines items of two different fan-outs (through `{other}` and `{}`)",
                    node.name, nodes[m].name
                );
                errors.push(error(node, message, "mixes fan-outs").help(
                    "collect one of them first (a Collect<T> parameter), or nest one fan-out in the other".to_string(),
                ));
            }
        }
        for a in &node.args {
            if let Binding::Node { node: m, mode: EdgeMode::Collect } = a.binding
                && let Some(parent) = blocks[nodes[m].block].parent
                && parent != deepest
            {
                let (name, other) = (&node.name, &nodes[m].name);
                let message = format!("node `{name}` collects `{other}` but also uses values from inside that fan-out");
                errors.push(error(node, message, "here"));
            }
        }
        nodes[n].block = deepest;
    }
    if errors.is_empty() { Ok(blocks) } else { Err(Diagnostics(errors)) }
}

/// Is scope `b` equal to or nested inside `ancestor`?
fn within(blocks: &[Block], b: usize, ancestor: usize) -> bool {
    std::iter::successors(Some(b), |&b| blocks[b].parent).any(|b| b == ancestor)
}

#[cfg(test)]
mod tests {
    use super::identity_of;
    use crate::value::{AnyValue, encode_value};
    use std::sync::Arc;

    #[test]
    fn identity_is_the_hash_of_the_encoding() {
        let values: Vec<AnyValue> = vec![Arc::new(7i64), Arc::new("a string value".to_string())];
        for v in &values {
            assert_eq!(identity_of(&**v).unwrap(), blake3::hash(&encode_value(&**v).unwrap()));
        }
    }
}
