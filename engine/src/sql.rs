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

#[derive(Debug, PartialEq)]
enum Tok<'a> {
    Word(&'a str),
    Quoted(String),
    Punct(char),
}

fn tokens(sql: &str) -> Vec<Tok<'_>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if c == b'\'' {
            i += 1;
            while i < b.len() {
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Punct('\''));
        } else if c == b'"' {
            let mut s = String::new();
            i += 1;
            while i < b.len() {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        s.push('"');
                        i += 2;
                        continue;
                    }
                    break;
                }
                let ch = sql[i..].chars().next().unwrap();
                s.push(ch);
                i += ch.len_utf8();
            }
            i += 1;
            out.push(Tok::Quoted(s));
        } else if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            out.push(Tok::Word(&sql[start..i]));
        } else {
            out.push(Tok::Punct(c as char));
            i += 1;
        }
    }
    out
}

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
    let toks = tokens(sql);
    let mut out: Vec<String> = Vec::new();
    let mut in_from = false; // inside a FROM list, where commas separate tables
    let mut expect_table = false;
    let mut depth_at_from: Vec<bool> = Vec::new();
    for tok in &toks {
        let name = match tok {
            Tok::Word(w) => {
                let upper = w.to_ascii_uppercase();
                match upper.as_str() {
                    "FROM" | "JOIN" => {
                        in_from = true;
                        expect_table = true;
                        continue;
                    }
                    "WHERE" | "GROUP" | "ORDER" | "LIMIT" | "HAVING" | "ON" | "USING" | "UNION" | "EXCEPT"
                    | "INTERSECT" | "SELECT" | "QUALIFY" | "WINDOW" => {
                        in_from = false;
                        expect_table = false;
                        continue;
                    }
                    _ => {}
                }
                if !expect_table {
                    continue;
                }
                (*w).to_string()
            }
            Tok::Quoted(q) => {
                if !expect_table {
                    continue;
                }
                q.clone()
            }
            Tok::Punct(',') => {
                expect_table = in_from;
                continue;
            }
            Tok::Punct('(') => {
                depth_at_from.push(in_from);
                in_from = false;
                expect_table = false;
                continue;
            }
            Tok::Punct(')') => {
                in_from = depth_at_from.pop().unwrap_or(false);
                expect_table = false;
                continue;
            }
            Tok::Punct(_) => {
                expect_table = false;
                continue;
            }
        };
        expect_table = false;
        if is_node(&name) && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The SQL with comments removed and whitespace collapsed: the text a SQL node's code version hashes, so
/// reformatting a query does not re-run it.
pub fn normalize(sql: &str) -> String {
    let mut out = String::new();
    for tok in tokens_with_literals(sql) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&tok);
    }
    out
}

fn tokens_with_literals(sql: &str) -> Vec<String> {
    // Like `tokens`, but keeps string literals verbatim.
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i = (i + 2).min(b.len());
        } else if c == b'\'' || c == b'"' {
            let start = i;
            i += 1;
            while i < b.len() {
                if b[i] == c {
                    if b.get(i + 1) == Some(&c) {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
            out.push(sql[start..i].to_string());
        } else {
            let start = i;
            while i < b.len()
                && !b[i].is_ascii_whitespace()
                && b[i] != b'\''
                && b[i] != b'"'
                && !(b[i] == b'-' && b.get(i + 1) == Some(&b'-'))
            {
                i += 1;
            }
            out.push(sql[start..i].to_string());
        }
    }
    out
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
