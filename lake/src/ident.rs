//! SQL identifiers from flow files: validated, then always quoted. Nothing a user writes in TOML reaches
//! SQL unquoted, so a table name like `x; DROP TABLE y` is refused with a clear message instead.

use anyhow::{Result, bail};

/// Checks that `name` is a plain identifier (letters, digits, `_`, not starting with a digit, at most 63
/// characters) and returns it double-quoted.
///
/// ```
/// assert_eq!(flowrun_lake::ident::quoted("pv_stats", "table").unwrap(), "\"pv_stats\"");
/// assert!(flowrun_lake::ident::quoted("x\"; DROP TABLE y; --", "table").is_err());
/// ```
pub fn quoted(name: &str, what: &str) -> Result<String> {
    validate(name, what)?;
    Ok(format!("\"{name}\""))
}

/// See [`quoted`].
pub fn validate(name: &str, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        bail!(
            "{what} name `{name}` is not allowed: use letters, digits and `_` (not starting with a digit, at most 63 \
             characters)"
        );
    }
    Ok(())
}

/// Turns any label (a dataset key, an item label) into an identifier part: lower case, other characters
/// replaced by `_`.
pub fn sanitize(label: &str) -> String {
    let mut s: String =
        label.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) || s.is_empty() {
        s.insert(0, '_');
    }
    s
}

/// Quotes any name (node names used as table names inside SQL nodes), doubling embedded quotes.
pub fn quote_any(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_injection_and_odd_names() {
        for bad in ["", "1abc", "a b", "a;b", "a\"b", "a'b", "a-b", &"x".repeat(64)] {
            assert!(validate(bad, "table").is_err(), "{bad}");
        }
        for good in ["a", "_a", "raw_ind_pv_2022", "T1"] {
            assert!(validate(good, "table").is_ok(), "{good}");
        }
        assert_eq!(sanitize("ind-pv.2022"), "ind_pv_2022");
        assert_eq!(sanitize("2022"), "_2022");
        assert_eq!(quote_any("we\"ird"), "\"we\"\"ird\"");
    }
}
