//! `consolidated`: the union of every dataset's measured table, exact duplicates removed.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use arrow_array::{Array, BinaryArray, RecordBatch, StringArray};
use flowrun_engine::{Collect, Table, ctx, node};
use rayon::prelude::*;

use super::geom::geometry_index;

/// Union by column name (columns missing in one table are null there) in item order. The tables' batches
/// are kept as they are (columns shared, not copied), only cast or filled with nulls where a column differs.
pub fn union_tables(tables: &[Table]) -> Result<Table> {
    let schemas: Vec<arrow_schema::Schema> = tables.iter().map(|t| t.schema().as_ref().clone()).collect();
    let merged = arrow_schema::Schema::try_merge(schemas).context("the datasets' columns have conflicting types")?;
    let merged = std::sync::Arc::new(merged);
    let mut out = Vec::new();
    for b in tables.iter().flat_map(|t| t.batches()) {
        let mut cols = Vec::new();
        for f in merged.fields() {
            cols.push(match b.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => c.clone(),
                Some(c) => arrow_cast::cast(c, f.data_type())?,
                None => arrow_array::new_null_array(f.data_type(), b.num_rows()),
            });
        }
        out.push(RecordBatch::try_new(merged.clone(), cols)?);
    }
    Ok(Table::try_new(merged, out)?)
}

/// Removes exact duplicates (the same geometry bytes): of each group the record of the dataset listed
/// first in `priority` is kept (then the first in table order). Returns the table and, per dataset, how many
/// of its records were removed.
pub fn drop_exact_duplicates(t: &Table, priority: &[String]) -> Result<(Table, BTreeMap<String, usize>)> {
    let gi = geometry_index(t)?;
    // (geometry's hash, the dataset's rank) of every row, in table order, each batch on every core
    let mut rows: Vec<Option<(blake3::Hash, usize)>> = Vec::with_capacity(t.num_rows());
    let mut names: Vec<StringArray> = Vec::new();
    for batch in t.batches() {
        let g = batch.column(gi).as_any().downcast_ref::<BinaryArray>().context("geometry is not WKB")?;
        let datasets: StringArray = super::geom::column(batch, "dataset_name")?;
        let rank = |i: usize| priority.iter().position(|p| p == datasets.value(i)).unwrap_or(usize::MAX);
        rows.par_extend(
            (0..g.len()).into_par_iter().map(|i| (!g.is_null(i)).then(|| (blake3::hash(g.value(i)), rank(i)))),
        );
        names.push(datasets);
    }
    // geometry -> the row kept so far
    let mut kept: HashMap<blake3::Hash, usize> = HashMap::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        if let Some((h, rank)) = row {
            kept.entry(*h)
                .and_modify(|k| {
                    if *rank < rows[*k].map_or(usize::MAX, |r| r.1) {
                        *k = i
                    }
                })
                .or_insert(i);
        }
    }
    let keep: Vec<bool> = rows.iter().enumerate().map(|(i, r)| r.is_none_or(|(h, _)| kept[&h] == i)).collect();
    let mut removed = BTreeMap::new();
    let datasets = names.iter().flat_map(|d| (0..d.len()).map(move |i| d.value(i)));
    for (_, d) in keep.iter().zip(datasets).filter(|(k, _)| !**k) {
        *removed.entry(d.to_string()).or_default() += 1;
    }
    Ok((super::geom::filter_rows(t.clone(), &arrow_array::BooleanArray::from(keep))?, removed))
}

/// The union of all datasets (by column name) without exact duplicates (same geometry bytes; the record of
/// the dataset first in `dataset_priority`, if the flow gives one, is kept): the `stg_pv_consolidated` table.
#[node(tags(stage = "staging"))]
pub fn consolidated(measured: Collect<Table>, dataset_priority: Option<Vec<String>>) -> Result<Table> {
    let all = union_tables(&measured)?;
    let (t, removed) = drop_exact_duplicates(&all, &dataset_priority.unwrap_or_default())?;
    if !removed.is_empty() {
        let per: Vec<String> = removed.iter().map(|(d, n)| format!("{n} of `{d}`")).collect();
        ctx::note(format!("exact duplicates (the same geometry as a record kept) removed: {}", per.join(", ")));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{measured, square, strings};

    #[test]
    fn union_by_column_name_then_exact_duplicates_removed() {
        let a = measured(&[("a", "a:1", square(0.0, 0.0, 0.01)), ("a", "a:2", square(1.0, 1.0, 0.01))]);
        // b repeats a:1's geometry exactly, and has its columns in another order
        let b = measured(&[("b", "b:1", square(0.0, 0.0, 0.01)), ("b", "b:2", square(2.0, 2.0, 0.01))]);
        let bb = b.concat().unwrap();
        let reordered = bb.project(&[1, 0, 2, 3]).unwrap();
        let union = union_tables(&[a, Table::from_batch(reordered)]).unwrap();
        assert_eq!(union.num_rows(), 4);
        assert_eq!(strings(&union, "dataset_name"), ["a", "a", "b", "b"].map(|s| Some(s.to_string())));
        let (deduped, removed) = drop_exact_duplicates(&union, &[]).unwrap();
        assert_eq!(removed, BTreeMap::from([("b".to_string(), 1)]));
        assert_eq!(strings(&deduped, "unified_id"), ["a:1", "a:2", "b:2"].map(|s| Some(s.to_string())));
        // the dataset listed first in the priority keeps its record
        let (deduped, removed) = drop_exact_duplicates(&union, &["b".into()]).unwrap();
        assert_eq!(removed, BTreeMap::from([("a".to_string(), 1)]));
        assert_eq!(strings(&deduped, "unified_id"), ["a:2", "b:1", "b:2"].map(|s| Some(s.to_string())));
    }
}
