//! The fast path of [`parse`](super::parse): a reader for the plain shape most flow files have, which
//! builds the [`RawFlow`] directly, with the same spans the `toml` crate gives.
//!
//! It reads `[flow]`, `[config]`, `[inputs]`, `[lake]`, `[nodes.NAME]` and `[materialize.NAME]` tables
//! whose keys are bare and whose values are single-line strings without escapes, decimal integers,
//! booleans, arrays and inline tables of those. Anything else (variants, `parameterize`, checks, dotted
//! or quoted keys, floats, dates, escapes, multi-line strings, unknown fields, duplicates, any syntax
//! error) makes it give up and return `None`; `parse` then reads the file with the `toml` crate, which
//! also produces every error message. So this reader never decides what a file means on its own: on the
//! files it accepts it must agree with the crate exactly, which `tests::agrees_with_the_toml_crate`
//! checks (RawFlow and every span), and everything else goes to the crate.
//!
//! Why it exists: the crate takes 2-3 us per node of a generated 100,000-node flow (its lexer alone
//! 0.7-0.9 us), more than resolving and validating the whole DAG; this reader takes a fraction of that
//! (`bench engine` prints both).
//!
//! A file of 1 MB or more (some 20,000 nodes) is read in two halves, on two threads: the second half
//! starts at a `[nodes.` header line near the middle, and its tables are appended to the first half's.
//! A table that may appear once but appears in both halves, or a node name in both, gives up as above.

use std::ops::Range;

use indexmap::IndexMap;
use smallvec::SmallVec;
use toml::Spanned;

use super::raw::{CacheMode, RawFlow, RawHeader, RawInput, RawMap, RawNode, RawNodes, SpannedTable, Str};

/// Files at least this long are read in two halves on two threads (see the module docs).
const SPLIT_LEN: usize = 1 << 20;

/// The flow file, or `None` when it is not of the plain shape this reader knows (see the module docs).
pub(crate) fn read(text: &str) -> Option<RawFlow> {
    read_split(text, SPLIT_LEN)
}

/// [`read`], in two halves when `text` is at least `split_len` long and has a node header past the middle.
fn read_split(text: &str, split_len: usize) -> Option<RawFlow> {
    // room for every node up front: a node is a few hundred bytes, and a growing list would move them all
    let nodes = |range: Range<usize>| memchr::memmem::find_iter(&text.as_bytes()[range], b"[nodes.").count();
    let middle = (text.len() >= split_len)
        .then(|| memchr::memmem::find(&text.as_bytes()[text.len() / 2..], b"\n[nodes."))
        .flatten()
        .map(|i| text.len() / 2 + i + 1);
    let doc = match middle {
        None => read_doc(text, 0..text.len(), nodes(0..text.len()), true)?,
        Some(middle) => {
            // the first half's list has room for the second's nodes, which are appended to it
            let (first, second) = (nodes(0..middle), nodes(middle..text.len()));
            // the second half's names are indexed once, when appended
            let (first, second) = rayon::join(
                || read_doc(text, 0..middle, first + second, true),
                || read_doc(text, middle..text.len(), second, false),
            );
            first?.append(second?)?
        }
    };
    doc.finish()
}

/// The tables of `text[range]`, which starts at the start of a line; spans are offsets in `text`. With
/// `index`, node names are indexed (and checked to be distinct) as they are read.
fn read_doc(text: &str, range: Range<usize>, nodes: usize, index: bool) -> Option<Doc> {
    let mut r = Reader { text, bytes: &text.as_bytes()[..range.end], at: range.start };
    let mut doc = Doc {
        nodes: if index { RawNodes::with_capacity(nodes) } else { RawNodes::unindexed(nodes) },
        index,
        node_seen: Vec::with_capacity(nodes),
        ..Doc::default()
    };
    let mut section = Section::None;
    loop {
        r.blank();
        match r.peek() {
            None => break,
            Some(b'\n') => r.at += 1,
            Some(b'\r') if r.bytes.get(r.at + 1) == Some(&b'\n') => r.at += 2,
            Some(b'#') => r.end_of_line()?,
            Some(b'[') => section = doc.open(r.header()?)?,
            Some(_) => {
                let (key, key_span) = r.key()?;
                r.blank();
                r.expect(b'=')?;
                r.blank();
                if let (Section::Node(i), "inputs", Some(b'{')) = (&section, key, r.peek()) {
                    // a node's inputs (strings), straight into the node: one per node of a big flow
                    let inputs =
                        r.inline_table(|r| if matches!(r.peek()?, b'"' | b'\'') { r.string() } else { None })?;
                    r.end_of_line()?;
                    doc.set_inputs(*i, inputs)?;
                    continue;
                }
                let value = r.value()?;
                r.end_of_line()?;
                doc.set(&section, key, key_span, value)?;
            }
        }
    }
    doc.index_nodes()?;
    Some(doc)
}

/// A value with its span, before it is given a type.
enum V<'t> {
    Str(&'t str),
    Int(i64),
    Bool(bool),
    Array(Vec<(V<'t>, Range<usize>)>),
    Table(Vec<Entry<'t>>),
}

/// An inline table's entry: key, key span, value, value span.
type Entry<'t> = (&'t str, Range<usize>, V<'t>, Range<usize>);

/// An inline table's entries as [`Reader::inline_table`] reads them.
type Entries<'t, T> = SmallVec<[(&'t str, Range<usize>, T, Range<usize>); 2]>;

/// A header's bare keys with their spans: the headers this reader knows have one or two, kept on the stack.
type KeyPath<'t> = SmallVec<[(&'t str, Range<usize>); 2]>;

impl V<'_> {
    fn into_toml(self) -> toml::Value {
        match self {
            V::Str(s) => toml::Value::String(s.to_string()),
            V::Int(i) => toml::Value::Integer(i),
            V::Bool(b) => toml::Value::Boolean(b),
            V::Array(items) => toml::Value::Array(items.into_iter().map(|(v, _)| v.into_toml()).collect()),
            V::Table(entries) => {
                let mut map = toml::map::Map::new();
                for (k, _, v, _) in entries {
                    map.insert(k.to_string(), v.into_toml());
                }
                toml::Value::Table(map)
            }
        }
    }
}

/// The bytes of a bare key, by byte value (a table lookup per byte instead of five range tests).
static BARE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(b as u8, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-');
        b += 1;
    }
    table
};

struct Reader<'t> {
    text: &'t str,
    bytes: &'t [u8],
    at: usize,
}

impl<'t> Reader<'t> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    /// Spaces and tabs.
    fn blank(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// Blanks, an optional comment, then a newline (consumed) or the end of the text.
    fn end_of_line(&mut self) -> Option<()> {
        self.blank();
        if self.peek() == Some(b'#') {
            self.comment()?;
        }
        match self.peek() {
            None => {}
            Some(b'\n') => self.at += 1,
            Some(b'\r') if self.bytes.get(self.at + 1) == Some(&b'\n') => self.at += 2,
            Some(_) => return None,
        }
        Some(())
    }

    /// A comment up to (not including) the end of its line; control characters other than tab are errors.
    fn comment(&mut self) -> Option<()> {
        while let Some(b) = self.peek() {
            match b {
                b'\n' | b'\r' => break,
                b'\t' => {}
                0..0x20 | 0x7f => return None,
                _ => {}
            }
            self.at += 1;
        }
        Some(())
    }

    /// Blanks, newlines and comments between array items.
    fn gap(&mut self) -> Option<()> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n') => self.at += 1,
                Some(b'\r') if self.bytes.get(self.at + 1) == Some(&b'\n') => self.at += 2,
                Some(b'#') => self.comment()?,
                _ => return Some(()),
            }
        }
    }

    /// A bare key.
    fn key(&mut self) -> Option<(&'t str, Range<usize>)> {
        let start = self.at;
        self.at += self.bytes[start..].iter().take_while(|&&b| BARE[b as usize]).count();
        (self.at > start).then(|| (&self.text[start..self.at], start..self.at))
    }

    /// `[a.b]`: its bare keys and the span of the whole header.
    fn header(&mut self) -> Option<(KeyPath<'t>, Range<usize>)> {
        let start = self.at;
        self.expect(b'[')?;
        let mut path = KeyPath::new();
        path.push(self.key()?);
        while self.peek()? == b'.' {
            self.at += 1;
            if path.len() == 2 {
                return None; // `[nodes.a.variants]` and deeper go to the crate
            }
            path.push(self.key()?);
        }
        self.expect(b']')?;
        let span = start..self.at;
        self.end_of_line()?;
        Some((path, span))
    }

    fn value(&mut self) -> Option<(V<'t>, Range<usize>)> {
        let start = self.at;
        let v = match self.peek()? {
            b'"' | b'\'' => V::Str(self.string()?),
            b'[' => V::Array(self.array()?),
            b'{' => V::Table(self.inline_table(|r| r.value().map(|(v, _)| v))?.into_vec()),
            b't' | b'f' => V::Bool(self.boolean()?),
            _ => V::Int(self.integer()?),
        };
        Some((v, start..self.at))
    }

    /// A one-line basic string without escapes, or a one-line literal string.
    fn string(&mut self) -> Option<&'t str> {
        let quote = self.peek()?;
        self.at += 1;
        let start = self.at;
        loop {
            match self.peek()? {
                b if b == quote => break,
                b'\\' if quote == b'"' => return None,
                b'\t' => {}
                0..0x20 | 0x7f => return None,
                _ => {}
            }
            self.at += 1;
        }
        let s = &self.text[start..self.at];
        self.at += 1;
        // `""` followed by a quote is the start of a multi-line string
        (self.peek() != Some(quote)).then_some(s)
    }

    /// Whether the value ends here (what may follow a value).
    fn at_delimiter(&self) -> bool {
        matches!(self.peek(), None | Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b']' | b'}' | b'#'))
    }

    fn boolean(&mut self) -> Option<bool> {
        let rest = &self.bytes[self.at..];
        let (v, len) = if rest.starts_with(b"true") {
            (true, 4)
        } else if rest.starts_with(b"false") {
            (false, 5)
        } else {
            return None;
        };
        self.at += len;
        self.at_delimiter().then_some(v)
    }

    /// A decimal integer: optional sign, no leading zeros, no underscores (those go to the crate).
    fn integer(&mut self) -> Option<i64> {
        let start = self.at;
        if matches!(self.peek(), Some(b'+' | b'-')) {
            self.at += 1;
        }
        let digits = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        let n = self.at - digits;
        if n == 0 || (n > 1 && self.bytes[digits] == b'0') || !self.at_delimiter() {
            return None;
        }
        self.text[start..self.at].parse().ok()
    }

    fn array(&mut self) -> Option<Vec<(V<'t>, Range<usize>)>> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        loop {
            self.gap()?;
            if self.peek()? == b']' {
                self.at += 1;
                return Some(items);
            }
            items.push(self.value()?);
            self.gap()?;
            if self.separator(b']')? {
                return Some(items);
            }
        }
    }

    /// `{ k = v, .. }` with distinct keys, each value read by `value`; on the stack up to two entries.
    fn inline_table<T>(&mut self, mut value: impl FnMut(&mut Self) -> Option<T>) -> Option<Entries<'t, T>> {
        self.expect(b'{')?;
        let mut entries = Entries::new();
        self.blank();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(entries);
        }
        loop {
            self.blank();
            let (k, kspan) = self.key()?;
            self.blank();
            self.expect(b'=')?;
            self.blank();
            let vstart = self.at;
            let v = value(self)?;
            if entries.iter().any(|(other, ..)| *other == k) {
                return None;
            }
            entries.push((k, kspan, v, vstart..self.at));
            self.blank();
            if self.separator(b'}')? {
                return Some(entries);
            }
        }
    }

    /// After an array item or table entry: a comma (`false`: more follow) or `close` (`true`: done).
    fn separator(&mut self, close: u8) -> Option<bool> {
        let b = self.peek()?;
        self.at += 1;
        match b {
            b',' => Some(false),
            b if b == close => Some(true),
            _ => None,
        }
    }
}

/// Which table the following keys go to.
enum Section {
    /// Before the first header: top-level keys go to the crate.
    None,
    Flow,
    Config,
    Inputs,
    Lake,
    Node(usize),
    Materialize(usize),
}

#[derive(Default)]
struct Doc {
    flow: Option<(Range<usize>, Option<Spanned<String>>, RawHeader)>,
    config: Option<SpannedTable>,
    inputs: Option<IndexMap<Spanned<String>, Spanned<RawInput>>>,
    lake: Option<SpannedTable>,
    nodes: RawNodes,
    /// Whether node names are indexed, and how many are.
    index: bool,
    indexed: usize,
    materialize: IndexMap<Spanned<String>, Spanned<SpannedTable>>,
    /// Keys already given in `[flow]` and in each node (one bit per field): a key given twice is an error
    /// the crate reports.
    flow_seen: u8,
    node_seen: Vec<u8>,
}

/// Sets `key`'s bit in `seen`; `None` when it was set already or the key is not one of `keys`.
fn first_time(seen: &mut u8, keys: &[&str], key: &str) -> Option<()> {
    let bit = 1u8 << keys.iter().position(|k| *k == key)?;
    (*seen & bit == 0).then(|| *seen |= bit)
}

const FLOW_KEYS: [&str; 4] = ["name", "description", "modules", "outputs"];
const NODE_KEYS: [&str; 8] = ["fn", "sql", "doc", "cache", "params", "when", "inputs", "tags"];

impl Doc {
    /// Indexes the node names read since the last call; `None` when one is taken. A name is indexed when
    /// the next table starts: its slot is fetched meanwhile (`RawNodes::push_unindexed`).
    fn index_nodes(&mut self) -> Option<()> {
        if self.index {
            self.nodes.index_from(self.indexed)?;
            self.indexed = self.nodes.len();
        }
        Some(())
    }

    fn open(&mut self, (path, span): (KeyPath<'_>, Range<usize>)) -> Option<Section> {
        self.index_nodes()?;
        let names: SmallVec<[&str; 2]> = path.iter().map(|(k, _)| *k).collect();
        let fresh = |taken: bool| (!taken).then_some(());
        Some(match names.as_slice() {
            ["flow"] => {
                fresh(self.flow.is_some())?;
                let header = RawHeader {
                    name: Spanned::new(0..0, String::new()),
                    description: None,
                    modules: Vec::new(),
                    outputs: None,
                };
                self.flow = Some((span, None, header));
                Section::Flow
            }
            ["config"] => {
                fresh(self.config.is_some())?;
                self.config = Some(SpannedTable::new());
                Section::Config
            }
            ["inputs"] => {
                fresh(self.inputs.is_some())?;
                self.inputs = Some(IndexMap::new());
                Section::Inputs
            }
            ["lake"] => {
                fresh(self.lake.is_some())?;
                self.lake = Some(SpannedTable::new());
                Section::Lake
            }
            ["nodes", name] => {
                let key = Spanned::new(path[1].1.clone(), Str::from(*name));
                let i = self.nodes.push_unindexed(key, Spanned::new(span, RawNode::default()));
                self.node_seen.push(0);
                Section::Node(i)
            }
            ["materialize", name] => {
                let key = Spanned::new(path[1].1.clone(), name.to_string());
                fresh(self.materialize.contains_key(&key))?;
                let (i, _) = self.materialize.insert_full(key, Spanned::new(span, SpannedTable::new()));
                Section::Materialize(i)
            }
            _ => return None,
        })
    }

    fn set(
        &mut self,
        section: &Section,
        key: &str,
        kspan: Range<usize>,
        (v, vspan): (V<'_>, Range<usize>),
    ) -> Option<()> {
        match section {
            Section::None => None,
            Section::Flow => {
                let (_, name, h) = self.flow.as_mut()?;
                first_time(&mut self.flow_seen, &FLOW_KEYS, key)?;
                match key {
                    "name" => *name = Some(Spanned::new(vspan, string(v)?)),
                    "description" => h.description = Some(string(v)?),
                    "modules" => h.modules = strings(v)?,
                    _ => h.outputs = Some(strings(v)?),
                }
                Some(())
            }
            Section::Config => insert(self.config.as_mut()?, key, kspan, v.into_toml(), vspan),
            Section::Lake => insert(self.lake.as_mut()?, key, kspan, v.into_toml(), vspan),
            Section::Materialize(i) => {
                let (_, table) = self.materialize.get_index_mut(*i)?;
                insert(table.get_mut(), key, kspan, v.into_toml(), vspan)
            }
            Section::Inputs => {
                let V::Table(entries) = v else { return None };
                let mut input = RawInput { default: None, doc: None };
                for (k, _, v, span) in entries {
                    match k {
                        "default" => input.default = Some(Spanned::new(span, v.into_toml())),
                        "doc" => input.doc = Some(string(v)?),
                        _ => return None,
                    }
                }
                let inputs = self.inputs.as_mut()?;
                inputs.insert(Spanned::new(kspan, key.to_string()), Spanned::new(vspan, input)).is_none().then_some(())
            }
            Section::Node(i) => {
                first_time(self.node_seen.get_mut(*i)?, &NODE_KEYS, key)?;
                set_node(self.nodes.get_index_mut(*i)?.get_mut(), key, v, vspan)
            }
        }
    }

    /// `inputs = { .. }` of node `i`, read by the fast path of [`read`].
    fn set_inputs(&mut self, i: usize, entries: Entries<'_, &str>) -> Option<()> {
        first_time(self.node_seen.get_mut(i)?, &NODE_KEYS, "inputs")?;
        self.nodes.get_index_mut(i)?.get_mut().inputs = node_inputs(entries);
        Some(())
    }

    /// The tables of the text that follows this document's, appended (in file order).
    fn append(mut self, next: Doc) -> Option<Doc> {
        /// A table that may appear once: from whichever half has it, not both.
        fn once<T>(first: &mut Option<T>, next: Option<T>) -> Option<()> {
            match (first.is_some(), next) {
                (true, Some(_)) => None,
                (_, None) => Some(()),
                (false, next) => {
                    *first = next;
                    Some(())
                }
            }
        }
        if next.flow.is_some() {
            self.flow_seen = next.flow_seen;
        }
        once(&mut self.flow, next.flow)?;
        once(&mut self.config, next.config)?;
        once(&mut self.inputs, next.inputs)?;
        once(&mut self.lake, next.lake)?;
        self.nodes.append(next.nodes)?;
        self.indexed = self.nodes.len();
        for (name, table) in next.materialize {
            let indexmap::map::Entry::Vacant(slot) = self.materialize.entry(name) else { return None };
            slot.insert(table);
        }
        Some(self)
    }

    fn finish(self) -> Option<RawFlow> {
        let (span, name, mut header) = self.flow?;
        header.name = name?;
        Some(RawFlow {
            flow: Spanned::new(span, header),
            config: self.config.unwrap_or_default(),
            inputs: self.inputs.unwrap_or_default(),
            nodes: self.nodes,
            materialize: self.materialize,
            lake: self.lake.unwrap_or_default(),
        })
    }
}

fn set_node(n: &mut RawNode, key: &str, v: V<'_>, vspan: Range<usize>) -> Option<()> {
    match key {
        "fn" => n.function = Some(Spanned::new(vspan, string(v)?)),
        "sql" => n.sql = Some(Box::new(Spanned::new(vspan, string(v)?))),
        "doc" => n.doc = Some(string(v)?),
        "cache" => {
            let V::Str(mode) = v else { return None };
            let mode = match mode {
                "default" => CacheMode::Default,
                "recompute" => CacheMode::Recompute,
                "disable" => CacheMode::Disable,
                _ => return None,
            };
            n.cache = Some(Spanned::new(vspan, mode));
        }
        "params" => n.params = table(v)?,
        "when" => n.when = Some(Box::new(table(v)?)),
        // a table of inputs is read by `Doc::set_inputs`; anything else is an error the crate reports
        "inputs" => return None,
        "tags" => {
            let V::Table(entries) = v else { return None };
            let mut tags = IndexMap::with_capacity(entries.len());
            for (k, _, v, _) in entries {
                tags.insert(k.to_string(), string(v)?);
            }
            n.tags = Some(Box::new(tags));
        }
        _ => return None,
    }
    Some(())
}

/// A node's `inputs` from its entries: exactly as many slots as entries (a map grown one by one keeps
/// room for three).
fn node_inputs(entries: Entries<'_, &str>) -> RawMap<Spanned<Str>, Spanned<Str>> {
    let mut inputs = RawMap::with_capacity(entries.len());
    for (k, kspan, v, span) in entries {
        inputs.insert(Spanned::new(kspan, Str::from(k)), Spanned::new(span, Str::from(v)));
    }
    inputs
}

fn insert(t: &mut SpannedTable, key: &str, kspan: Range<usize>, v: toml::Value, vspan: Range<usize>) -> Option<()> {
    t.insert(Spanned::new(kspan, Str::from(key)), Spanned::new(vspan, v)).is_none().then_some(())
}

/// A string value, as a `String` or a [`Str`].
fn string<S: for<'s> From<&'s str>>(v: V<'_>) -> Option<S> {
    match v {
        V::Str(s) => Some(S::from(s)),
        _ => None,
    }
}

fn strings(v: V<'_>) -> Option<Vec<Spanned<String>>> {
    let V::Array(items) = v else { return None };
    items.into_iter().map(|(v, span)| Some(Spanned::new(span, string(v)?))).collect()
}

fn table(v: V<'_>) -> Option<SpannedTable> {
    let V::Table(entries) = v else { return None };
    Some(
        entries
            .into_iter()
            .map(|(k, kspan, v, vspan)| (Spanned::new(kspan, Str::from(k)), Spanned::new(vspan, v.into_toml())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::{read, read_split};
    use crate::flow::raw::RawFlow;

    /// What the crate makes of `text` (the reference), as comparable text with every span.
    fn by_crate(text: &str) -> Result<String, String> {
        toml::from_str::<RawFlow>(text).map(|raw| format!("{raw:#?}")).map_err(|e| e.to_string())
    }

    /// The fast reader either gives up or agrees with the crate exactly; returns whether it read `text`.
    fn check(text: &str) -> bool {
        match read(text) {
            None => false,
            Some(fast) => {
                let reference = by_crate(text)
                    .unwrap_or_else(|e| panic!("fast reader accepted a file the crate rejects ({e}):\n{text}"));
                assert_eq!(format!("{fast:#?}"), reference, "fast reader disagrees with the crate on:\n{text}");
                true
            }
        }
    }

    const PLAIN: &str = r#"# a flow
[flow]
name = "demo"   # trailing comment
description = 'literal string'
modules = ["generic", 'pv']
outputs = [
  "total", # the sum
  "n-1",
]

[config]
n = 10
neg = -3
plus = +7
zero = 0
flag = true
off = false
list = [1, "two", [3], { four = 4 }]
nested = { a = { b = [true, false] }, c = "" }
empty_list = []
empty_table = {}

[inputs]
data = { default = "data/in.csv", doc = "the input" }
required = { doc = "no default" }

[nodes.n-1]
fn = "noop"
params = { x = 0, label = "a # not a comment" }
[nodes.total]
fn = "sum"
inputs = { values = "n-1" }
cache = "recompute"
tags = { layer = "prepared" }
doc = "the total"
when = { flag = true }

[nodes.q]
sql = "SELECT 1 AS x"
inputs = {}

[nodes.pair]
fn = "add"
inputs = { a = "n-1", b = 'total' }

[lake]
catalog = "lake/demo.ducklake"

[materialize.lake_total]
node = "total"
kind = "ducklake"
"#;

    #[test]
    fn agrees_with_the_toml_crate() {
        assert!(check(PLAIN), "the plain shape is read by the fast path");
        assert!(check(&PLAIN.replace('\n', "\r\n")), "CRLF line ends too");
        // the benchmark's generated flows
        let mut chain = String::from(
            "[flow]\nname = \"chain\"\noutputs = [\"n99\"]\n[nodes.n0]\nfn = \"noop\"\nparams = { x = 0 }\n",
        );
        for i in 1..100 {
            chain.push_str(&format!("[nodes.n{i}]\nfn = \"noop\"\ninputs = {{ x = \"n{}\" }}\n", i - 1));
        }
        assert!(check(&chain));
        // the project's own flows: read fast or handed to the crate, never read differently
        let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../flows");
        for entry in std::fs::read_dir(&flows).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                check(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }

    #[test]
    fn gives_up_on_what_it_does_not_know() {
        let base = "[flow]\nname = \"x\"\n";
        for extra in [
            // valid TOML the fast path leaves to the crate
            "[nodes.a]\nfn = \"f\"\n[[nodes.a.variants]]\nfn = \"g\"\n",
            "[nodes.a.parameterize.b]\nparams = { x = 1 }\n",
            "[nodes.a]\nfn = \"f\"\n[[nodes.a.checks]]\nrows = [1, 2]\n",
            "[config]\nx = 1.5\n",
            "[config]\nx = 1_000\n",
            "[config]\nx = 0x10\n",
            "[config]\nd = 1979-05-27\n",
            "[config]\ns = \"tab\\there\"\n",
            "[config]\ns = \"\"\"multi\nline\"\"\"\n",
            "[config]\na.b = 1\n",
            "[config]\n\"quoted\" = 1\n",
            "[ config ]\nx = 1\n",
            "[nodes]\n[nodes.a]\nfn = \"f\"\n",
            // errors: the crate must report them
            "[config]\nx = 1\nx = 2\n",
            "[config]\nx = 01\n",
            "[config]\nx = { a = 1, }\n",
            "[config]\nx = { a = 1,\n b = 2 }\n",
            "[config]\nx = \n",
            "[config]\nx = \"open\n",
            "[config]\nx = 99999999999999999999\n",
            "[config]\nx = truely\n",
            "[config]\n[config]\n",
            "[nodes.a]\nfn = \"f\"\n[nodes.a]\nfn = \"g\"\n",
            "[nodes.a]\nfn = \"f\"\nfn = \"g\"\n",
            "[nodes.a]\nparams = {}\nparams = { x = 1 }\n",
            "[nodes.a]\nfnn = \"f\"\n",
            "[nodes.a]\nfn = 3\n",
            "[nodes.a]\ncache = \"sometimes\"\n",
            "[nodes.a]\ninputs = { x = 1 }\n",
            "[nodes.a]\ninputs = { x = \"b\", y = [\"c\"] }\n",
            "[nodes.a]\ninputs = { x = \"b\", x = \"c\" }\n",
            "[nodes.a]\ninputs = { x = \"b\" }\ninputs = { y = \"c\" }\n",
            "[nodes.a]\ninputs = { x = \"b\" } junk\n",
            "[nodes.a]\ninputs = \"b\"\n",
            "[inputs]\nd = \"not a table\"\n",
            "[inputs]\nd = { default = 1, other = 2 }\n",
            "top = 1\n",
        ] {
            let text = format!("{base}{extra}");
            assert!(!check(&text), "the fast path should leave this to the crate:\n{text}");
        }
        assert!(!check("[config]\nx = 1\n"), "no [flow]: the crate says so");
        assert!(!check("[flow]\ndescription = \"no name\"\n"));
        assert!(!check("[flow]\nname = \"x\"\nname = \"y\"\n"));
        assert!(!check("[flow]\nmodules = []\nmodules = [\"a\"]\nname = \"x\"\n"));
    }

    /// Reads `text` in two halves (any length splits) and whole: both must agree with each other and
    /// with the crate, or both give up.
    fn check_split(text: &str) -> bool {
        let halves = read_split(text, 0);
        let whole = read_split(text, usize::MAX);
        assert_eq!(format!("{halves:#?}"), format!("{whole:#?}"), "halves and whole differ on:\n{text}");
        halves.is_some() && check(text)
    }

    #[test]
    fn a_file_read_in_two_halves_is_the_file_read_whole() {
        let mut nodes = String::new();
        for i in 0..40 {
            nodes.push_str(&format!("[nodes.n{i}]\nfn = \"noop\"\ninputs = {{ x = \"n{}\" }}\n", i.max(1) - 1));
        }
        let head = "[flow]\nname = \"halves\"\n[config]\nn = 1\n";
        let tail = "[materialize.m]\nnode = \"n3\"\n";
        assert!(check_split(&format!("{head}{nodes}{tail}")));
        // tables that may appear once, in the second half only
        assert!(check_split(&format!("{nodes}{head}{tail}")));
        assert!(check_split(&format!("{nodes}{head}").replace('\n', "\r\n")));
        // in both halves: the crate reports them
        for twice in [
            format!("{head}{nodes}[nodes.n1]\nfn = \"noop\"\n"),
            format!("{head}{nodes}[config]\nm = 2\n"),
            format!("{head}{tail}{nodes}{tail}"),
            format!("{head}{nodes}[flow]\nname = \"again\"\n"),
        ] {
            assert!(!check_split(&twice), "should give up:\n{twice}");
        }
    }
}
