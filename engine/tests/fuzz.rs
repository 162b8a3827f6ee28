//! The flow parser and builder on input nobody planned: arbitrary bytes, and valid flows mutated (ranges cut,
//! repeated, tokens inserted). Never a panic; every error points inside the file. Bounded here (a few seconds);
//! `just fuzz` runs many more cases (`PROPTEST_CASES`).

use std::sync::Arc;

use flowrun_engine::flow::{self, BuildOptions, Diagnostics, SourceFile};
use flowrun_engine::{Collect, node};
use proptest::prelude::*;

mod common;

#[node]
fn total(square: Collect<i64>) -> i64 {
    square.iter().sum()
}

/// Valid flows to mutate: the repository's (their functions are unknown here: those errors count too) and
/// one over this file's nodes.
fn seeds() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut v: Vec<String> = ["flows/demo.toml", "flows/doi_pv.toml"]
        .iter()
        .map(|f| std::fs::read_to_string(root.join(f)).unwrap())
        .collect();
    v.push(
        "[flow]\nname = \"f\"\noutputs = [\"total\"]\n\n[config]\nn = 5\n\n[nodes.numbers]\n[nodes.square]\n\
         [nodes.total]\ncheck = { rows = { min = 0 } }\n\n[materialize.t]\nnode = \"total\"\nkind = \"geoparquet\"\n"
            .to_string(),
    );
    v
}

const TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    "{",
    "}",
    ",",
    ".",
    "\n",
    "#",
    "\\",
    "\u{feff}",
    "é",
    "\0",
    "[nodes.x]",
    "[flow]",
    "fn = \"total\"",
    "inputs = { a = \"b\" }",
    "params = {",
    "outputs = [\"",
    "9e999",
    "-0",
    "true",
    "when = { n = 1 }",
    "parameterize = { n = [1, 2] }",
    "[materialize.y]",
    "node = \"square\"",
    "[targets.prod.lake]",
    "on_item_error = \"skip\"",
    "\"\"\"",
    "'''",
    "inf",
    "nan",
    "1979-05-27T07:32:00Z",
];

/// Builds `text` as a flow file; checks what must hold whatever the text.
fn check(text: &str) {
    let src = SourceFile::new("fuzz.toml", text);
    let built = flow::build(Arc::clone(&src), &BuildOptions::default());
    if let Err(Diagnostics(diags)) = built {
        assert!(!diags.is_empty(), "an error without a diagnostic");
        for d in &diags {
            // every error points into the file (a line and column for the editor)
            assert!(d.primary.is_some(), "{}: an error without a place: {}", d.code, d.message);
            for label in d.primary.iter().chain(&d.secondary) {
                if Arc::ptr_eq(&label.file, &src) {
                    let s = &label.span;
                    assert!(s.start <= s.end && s.end <= text.len(), "{}: span {s:?} outside the file", d.code);
                    assert!(text.is_char_boundary(s.start) && text.is_char_boundary(s.end), "{}: span {s:?}", d.code);
                }
            }
            // rendering it never panics either
            let _ = Diagnostics(vec![d.clone()]).render(false);
        }
    }
}

/// One edit: (kind, where, how long, which token), positions taken modulo the text's length.
fn mutate(seed: &str, edits: &[(u8, usize, usize, usize)]) -> String {
    let mut b = seed.as_bytes().to_vec();
    for &(kind, at, len, token) in edits {
        let at = if b.is_empty() { 0 } else { at % (b.len() + 1) };
        let end = (at + len % 64).min(b.len());
        match kind % 4 {
            0 => drop(b.drain(at..end)),
            1 => {
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece);
            }
            2 => {
                b.splice(at..at, TOKENS[token % TOKENS.len()].bytes());
            }
            _ => {
                if at < b.len() {
                    b[at] = b[at].wrapping_add(len as u8 | 1);
                }
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_flows_never_panic(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>(), any::<usize>()), 1..6),
    ) {
        let seeds = seeds();
        check(&mutate(&seeds[which % seeds.len()], &edits));
    }
}
