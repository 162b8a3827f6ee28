//! "Did you mean ...?" for unknown names.

/// Up to three candidates close to `name`, best first: Jaro-Winkler similarity for long names, edit
/// distance for short ones (`m` is one edit from `n`, but Jaro-Winkler scores them 0).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let max_edits = (name.chars().count() / 4).max(1);
    let mut scored: Vec<(f64, &str)> = candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| {
            let edits = strsim::levenshtein(name, c);
            let score = if edits <= max_edits { 1.0 + 1.0 / (1 + edits) as f64 } else { strsim::jaro_winkler(name, c) };
            (score, c)
        })
        .filter(|(s, _)| *s >= 0.8)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, c)| c.to_string()).collect()
}

/// "did you mean `a`?" / "did you mean one of `a`, `b`?" or `None`.
pub fn did_you_mean(options: &[String]) -> Option<String> {
    match options {
        [] => None,
        [one] => Some(format!("did you mean `{one}`?")),
        many => Some(format!("did you mean one of `{}`?", many.join("`, `"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_names_get_suggestions() {
        assert_eq!(closest("m", ["n", "offset"]), vec!["n"]);
        assert_eq!(closest("squre", ["square", "sum", "range"]), vec!["square"]);
        assert!(closest("h3_resolution", ["dedup_mode", "countries"]).is_empty());
    }
}
