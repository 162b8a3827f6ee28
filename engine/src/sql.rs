//! SQL nodes: finding the upstream tables a query reads, and the query's code version.
//!
//! A SQL node (`sql = "SELECT ... FROM stg_a JOIN stg_b ..."`) reads the results of the nodes it names in
//! `FROM` and `JOIN` clauses (dbt-style models without `ref()`). Names are matched after `FROM`, `JOIN` and
//! the commas of a `FROM` list, outside string literals and comments; quoted identifiers count too. A
//! table name that is not a node (a lake table, a file function) is left to the SQL engine.
//!
//! The engine does not run SQL itself: the binary provides a [`SqlEngine`] (DuckDB, in `flowrun-lake`).

use crate::Table;

/// Runs SQL over named tables. Implemented by `flowrun-lake` with DuckDB.
pub trait SqlEngine: Send + Sync {
    /// Runs `sql` where each `(name, table)` is visible as a table called `name`; returns the result.
    fn query(&self, sql: &str, tables: &[(&str, &Table)]) -> anyhow::Result<Table>;
}

/// The tokens of `sql`, verbatim: string literals and quoted identifiers whole (quotes included), any
/// other token as long as `word_len` says (given the text from its first byte on, it answers at least 1).
/// Whitespace and comments are left out.
fn lex(sql: &str, word_len: fn(&[u8]) -> usize) -> impl Iterator<Item = &str> {
    let b = sql.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        loop {
            let rest = &b[i..];
            let (len, token) = match rest {
                [] => return None,
                [c, ..] if c.is_ascii_whitespace() => (1, false),
                [b'-', b'-', ..] => (rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len()), false),
                [b'/', b'*', ..] => {
                    (rest[2..].windows(2).position(|w| w == b"*/").map_or(rest.len(), |p| p + 4), false)
                }
                [q @ (b'\'' | b'"'), ..] => {
                    // up to the closing quote (a doubled quote is one quote character)
                    let mut j = 1;
                    while j < rest.len() && (rest[j] != *q || rest.get(j + 1) == Some(q)) {
                        j += if rest[j] == *q { 2 } else { 1 };
                    }
                    ((j + 1).min(rest.len()), true)
                }
                _ => (word_len(rest), true),
            };
            i += len;
            if token {
                return Some(&sql[i - len..i]);
            }
        }
    })
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Keywords that end a `FROM` list.
const END_OF_FROM: &str = "WHERE GROUP ORDER LIMIT HAVING ON USING UNION EXCEPT INTERSECT SELECT QUALIFY WINDOW";

/// Table names read by `sql` (in order of first use) for which `is_node` is true.
///
/// ```
/// let names = flowrun_engine::sql::referenced_tables(
///     "SELECT a.x, 'from c' FROM stg_a a JOIN \"stg b\" USING (id), other -- FROM d",
///     |n| n != "other",
/// );
/// assert_eq!(names, ["stg_a", "stg b"]);
/// ```
pub fn referenced_tables(sql: &str, is_node: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut in_from = false; // inside a FROM list, where commas separate tables
    let mut expect_table = false;
    let mut in_from_outside: Vec<bool> = Vec::new(); // per open parenthesis
    // tokens: words (names, keywords) and single punctuation characters
    for tok in lex(sql, |rest| rest.iter().position(|&c| !is_word(c)).unwrap_or(rest.len()).max(1)) {
        let first = tok.as_bytes()[0];
        if tok.eq_ignore_ascii_case("FROM") || tok.eq_ignore_ascii_case("JOIN") {
            (in_from, expect_table) = (true, true);
        } else if END_OF_FROM.split(' ').any(|k| tok.eq_ignore_ascii_case(k)) {
            (in_from, expect_table) = (false, false);
        } else if first == b',' {
            expect_table = in_from;
        } else if first == b'(' {
            in_from_outside.push(in_from);
            (in_from, expect_table) = (false, false);
        } else if first == b')' {
            in_from = in_from_outside.pop().unwrap_or(false);
            expect_table = false;
        } else if expect_table && (first == b'"' || is_word(first)) {
            expect_table = false;
            let unquote = |q: &str| q.strip_suffix('"').unwrap_or(q).replace("\"\"", "\"");
            let name = tok.strip_prefix('"').map_or(tok.to_string(), unquote);
            if is_node(&name) && !out.contains(&name) {
                out.push(name);
            }
        } else {
            expect_table = false;
        }
    }
    out
}

/// The SQL with comments removed and whitespace collapsed: the text a SQL node's code version hashes, so
/// reformatting a query does not re-run it.
pub fn normalize(sql: &str) -> String {
    // a token runs to whitespace, a quote or a `--` comment
    let token_len = |rest: &[u8]| {
        (0..rest.len())
            .find(|&j| {
                rest[j].is_ascii_whitespace() || rest[j] == b'\'' || rest[j] == b'"' || rest[j..].starts_with(b"--")
            })
            .unwrap_or(rest.len())
    };
    lex(sql, token_len).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tables_in_from_join_and_lists() {
        let sql = "select * from a, b join c on a.id = c.id where x in (select y from d) order by e";
        assert_eq!(referenced_tables(sql, |_| true), ["a", "b", "c", "d"]);
    }

    #[test]
    fn ignores_literals_comments_and_columns() {
        let sql = "SELECT a, 'FROM b' AS s /* FROM c */ FROM t -- JOIN d\n WHERE a > 1";
        assert_eq!(referenced_tables(sql, |_| true), ["t"]);
    }

    #[test]
    fn normalize_ignores_layout_but_not_literals() {
        assert_eq!(normalize("SELECT  a\n  FROM t -- note\n"), normalize("SELECT a FROM t"));
        assert_ne!(normalize("SELECT 'a  b'"), normalize("SELECT 'a b'"));
    }
}
