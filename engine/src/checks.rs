//! Data checks on table results (Hamilton's `@check_output`, dbt's tests), declared per node:
//!
//! ```toml
//! [[nodes.prepared.checks]]
//! rows = [1, 1000000]            # table-level: row count within [min, max]
//! [[nodes.prepared.checks]]
//! column = "area_m2"
//! not_null = true                # no nulls
//! range = [0, 1e9]               # numeric values within [min, max]
//! type = "Float64"               # Arrow data type
//! severity = "warn"              # "error" (default): the node fails; "warn": reported only
//! [[nodes.prepared.checks]]
//! column = "dataset_name"
//! values = ["india", "china"]    # allowed values
//! unique = false
//! ```
//!
//! Checks run when the node executes. Their specification is part of the node's cache key, so a cached
//! result has passed exactly these checks; editing a check re-runs the node.

use std::borrow::Cow;
use std::collections::HashSet;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;

use crate::Table;
use crate::flow::RawCheck;

/// Checks that a check is well-formed (at build time).
pub fn validate(c: &RawCheck) -> Result<(), String> {
    let column_checks = c.not_null || c.unique || c.range.is_some() || c.values.is_some() || c.data_type.is_some();
    match (&c.column, c.rows, column_checks) {
        (None, None, _) => Err("a check needs `rows = [min, max]` or `column = \"...\"` with a condition".into()),
        (None, Some(_), true) => Err("column conditions (not_null, unique, range, values, type) need `column`".into()),
        (Some(col), _, false) => {
            Err(format!("check on column `{col}` has no condition; add not_null, unique, range, values or type"))
        }
        (_, Some([lo, hi]), _) if lo > hi => Err(format!("rows = [{lo}, {hi}]: min is larger than max")),
        _ => match c.range {
            Some([lo, hi]) if lo > hi => Err(format!("range = [{lo}, {hi}]: min is larger than max")),
            _ => Ok(()),
        },
    }
}

/// Runs one check; `Err` says what failed, with counts and examples.
pub fn run(c: &RawCheck, table: &Table) -> Result<(), String> {
    if let Some([lo, hi]) = c.rows {
        let n = table.num_rows() as u64;
        if n < lo || n > hi {
            return Err(format!("has {n} rows, expected between {lo} and {hi}"));
        }
    }
    let Some(col) = &c.column else { return Ok(()) };
    let Ok(idx) = table.schema().index_of(col) else {
        let names: Vec<&str> = table.schema().fields().iter().map(|f| f.name().as_str()).collect();
        return Err(format!("has no column `{col}` (columns: {})", names.join(", ")));
    };
    let arrays: Vec<&ArrayRef> = table.batches().iter().map(|b| b.column(idx)).collect();
    let dt = table.schema().field(idx).data_type();
    if let Some(want) = &c.data_type
        && format!("{dt}") != *want
        && format!("{dt:?}") != *want
    {
        return Err(format!("column `{col}` is {dt}, expected {want}"));
    }
    if c.not_null {
        let nulls: usize = arrays.iter().map(|a| a.null_count()).sum();
        if nulls > 0 {
            return Err(format!("column `{col}` has {nulls} null values"));
        }
    }
    if let Some([lo, hi]) = c.range {
        let (mut bad, mut example) = (0usize, None);
        for a in &arrays {
            if !a.data_type().is_numeric() {
                return Err(format!("range needs a numeric column, found {}", a.data_type()));
            }
            let floats = arrow_cast::cast(a, &DataType::Float64).map_err(|e| e.to_string())?;
            for v in floats.as_primitive::<Float64Type>().iter().flatten().filter(|v| !(lo..=hi).contains(v)) {
                bad += 1;
                example.get_or_insert(v);
            }
        }
        if let Some(example) = example {
            return Err(format!("column `{col}` has {bad} values outside [{lo}, {hi}] (e.g. {example})"));
        }
    }
    if c.unique || c.values.is_some() {
        let allowed: Option<HashSet<&str>> = c.values.as_ref().map(|v| v.iter().map(String::as_str).collect());
        // text is borrowed from the column, other types are compared as they display: at ten million rows an
        // owned copy of each value was over a gigabyte
        let mut seen: HashSet<Cow<str>> = HashSet::with_capacity(if c.unique { table.num_rows() } else { 0 });
        for a in &arrays {
            for i in (0..a.len()).filter(|&i| a.is_valid(i)) {
                let s = match a.data_type() {
                    DataType::Utf8 => Cow::Borrowed(a.as_string::<i32>().value(i)),
                    DataType::LargeUtf8 => Cow::Borrowed(a.as_string::<i64>().value(i)),
                    DataType::Utf8View => Cow::Borrowed(a.as_string_view().value(i)),
                    _ => Cow::Owned(arrow_cast::display::array_value_to_string(a, i).map_err(|e| e.to_string())?),
                };
                if allowed.as_ref().is_some_and(|allowed| !allowed.contains(&*s)) {
                    return Err(format!("column `{col}` has value `{s}`, which is not in `values`"));
                }
                if c.unique && !seen.insert(s.clone()) {
                    return Err(format!("column `{col}` has duplicate value `{s}`"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, RecordBatch, StringArray};
    use arrow_schema::{Field, Schema};
    use std::sync::Arc;

    fn table() -> Table {
        let schema = Arc::new(Schema::new(vec![
            Field::new("area", DataType::Float64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        Table::from_batch(
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Float64Array::from(vec![Some(1.0), None, Some(5.0)])),
                    Arc::new(StringArray::from(vec!["a", "b", "a"])),
                ],
            )
            .unwrap(),
        )
    }

    /// A check of column `name`, its conditions to be added.
    fn col(name: &str) -> RawCheck {
        RawCheck { column: Some(name.into()), ..RawCheck::default() }
    }

    #[test]
    fn checks_pass_and_fail_with_reasons() {
        let t = table();
        let rows = |rows| RawCheck { rows: Some(rows), ..RawCheck::default() };
        assert!(run(&rows([1, 3]), &t).is_ok());
        assert_eq!(run(&rows([4, 9]), &t).unwrap_err(), "has 3 rows, expected between 4 and 9");
        let nn = RawCheck { not_null: true, ..col("area") };
        assert_eq!(run(&nn, &t).unwrap_err(), "column `area` has 1 null values");
        let range = RawCheck { range: Some([0.0, 2.0]), ..col("area") };
        assert!(run(&range, &t).unwrap_err().contains("1 values outside [0, 2] (e.g. 5)"));
        let uniq = RawCheck { unique: true, ..col("name") };
        assert_eq!(run(&uniq, &t).unwrap_err(), "column `name` has duplicate value `a`");
        // numbers are compared as they display, a null is no value, and a duplicate may be in another batch
        let uniq_area = RawCheck { unique: true, ..col("area") };
        assert!(run(&uniq_area, &t).is_ok());
        let twice = Table::try_new(t.schema().clone(), [t.batches(), t.batches()].concat()).unwrap();
        assert_eq!(run(&uniq_area, &twice).unwrap_err(), "column `area` has duplicate value `1.0`");
        let large: ArrayRef = Arc::new(arrow_array::LargeStringArray::from(vec!["x", "y", "x"]));
        let large = Table::from_batch(RecordBatch::try_from_iter([("name", large)]).unwrap());
        assert_eq!(run(&uniq, &large).unwrap_err(), "column `name` has duplicate value `x`");
        let values = RawCheck { values: Some(vec!["a".into(), "b".into()]), ..col("name") };
        assert!(run(&values, &t).is_ok());
        let ty = RawCheck { data_type: Some("Float64".into()), ..col("name") };
        assert_eq!(run(&ty, &t).unwrap_err(), "column `name` is Utf8, expected Float64");
        let missing = RawCheck { not_null: true, ..col("nope") };
        assert!(run(&missing, &t).unwrap_err().starts_with("has no column `nope`"));
    }

    #[test]
    fn malformed_checks_are_refused() {
        assert!(validate(&RawCheck::default()).is_err());
        assert!(validate(&col("a")).is_err());
        assert!(validate(&RawCheck { rows: Some([5, 1]), ..RawCheck::default() }).is_err());
        assert!(validate(&RawCheck { not_null: true, ..RawCheck::default() }).is_err());
    }
}
