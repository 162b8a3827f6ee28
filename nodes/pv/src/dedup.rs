//! Spatial deduplication across datasets.
//!
//! Two records of *different* datasets are duplicates when their overlap ratio, the geodesic area of their
//! intersection divided by the smaller record's area, is above a threshold (default 0.5). The larger record
//! is kept; on equal areas, the dataset that comes first in `dataset_priority` (then the earlier row).
//! A point (CSV data) inside a polygon of another dataset is a duplicate of it (ratio 1); two points at
//! the same place are duplicates too.
//!
//! Candidate pairs come from one of two places, the two modes of the flow's `dedup_mode`:
//! - `overlap` (default): every pair whose bounding boxes intersect, found with an R-tree (rstar);
//! - `same_cell`: the thesis's original rule, only pairs whose centroids share an H3 cell (`h3_<res>`),
//!   which misses overlaps that straddle a cell border.
//!
//! `dedup_decisions` decides both from one list of candidate pairs (`dedup_pairs`), `deduplicated` keeps
//! the rows of the flow's mode, and `dedup_comparison` reports how many records each removes.
//!
//! A candidate pair whose intersection cannot be computed (the boolean operation fails on its geometry) is
//! counted and reported, with both ids, and both records are kept: it is never taken as "no overlap"
//! silently (`geometry_errors` in `dedup_comparison`).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::builder::NullBufferBuilder;
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use arrow_schema::{DataType, Field, Schema};
use flowrun_engine::{Table, ctx, node};
use geo::{BooleanOps, Contains, Geometry, MultiPolygon, Rect};
use rayon::prelude::*;
use rstar::AABB;

use super::geom::{self, geometry_index, polygonal};
use super::h3::h3_column;

/// How candidate pairs are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bounding boxes intersect (R-tree).
    Overlap,
    /// Centroids in the same H3 cell.
    SameCell,
}

/// Overlap ratio of two records (see the module documentation). `None` when the polygons cannot be
/// intersected (the boolean operation fails on their geometry): the caller counts and reports such pairs
/// instead of taking them as not overlapping.
pub fn overlap_ratio(a: &Geometry<f64>, area_a: f64, b: &Geometry<f64>, area_b: f64) -> Option<f64> {
    Some(match (polygonal(a), polygonal(b)) {
        (Some(pa), Some(pb)) => {
            let smaller = area_a.min(area_b);
            if smaller <= 0.0 {
                return Some(0.0);
            }
            let inter = std::panic::catch_unwind(|| pa.intersection(&pb)).ok()?;
            let ratio = geom::geodesic_area(&Geometry::MultiPolygon(inter)) / smaller;
            // an intersection larger than the smaller record (beyond rounding) is a failed operation
            (0.0..=1.0 + 1e-6).contains(&ratio).then_some(ratio)?
        }
        (Some(poly), None) => point_in(&poly, b),
        (None, Some(poly)) => point_in(&poly, a),
        (None, None) => match (a, b) {
            (Geometry::Point(p), Geometry::Point(q)) if p == q => 1.0,
            _ => 0.0,
        },
    })
}

fn point_in(poly: &MultiPolygon<f64>, g: &Geometry<f64>) -> f64 {
    match g {
        Geometry::Point(p) if poly.contains(p) => 1.0,
        _ => 0.0,
    }
}

/// The outcome of a dedup.
pub struct Dedup {
    /// Rows to keep.
    pub keep: Vec<bool>,
    /// Candidate pairs examined.
    pub pairs: usize,
    /// Candidate pairs whose overlap could not be computed (both records kept), by their ids.
    pub errors: Vec<(String, String)>,
}

/// The candidate pairs `(i, j)`, `i < j`, of records of different datasets, sorted, for one mode.
fn candidates(t: &Table, rows: &WkbRows, datasets: &[u32], mode: Mode, res: i64) -> Result<Vec<(u32, u32)>> {
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    match mode {
        Mode::Overlap => {
            // the R-tree of one dataset at a time (the largest first), queried with the boxes of the datasets
            // after it: each cross-dataset pair is found once, and one dataset's tree is in memory, not the
            // whole table's (at 10M rows that tree and its bulk load were 1.7 GB beside the table). Boxes come
            // straight from each row's WKB, in parallel; no decoded copy of the table is kept. The price: each
            // dataset's turn scans every row, and a row is decoded for its own tree and once per earlier tree
            // it is queried against (the largest dataset, first, once; the last one, never for its own).
            let bbox = |i: usize| -> Result<Option<Rect<f64>>> { Ok(rows.geometry(i)?.as_ref().and_then(geom::bbox)) };
            let mut size = vec![0usize; datasets.iter().max().map_or(0, |&m| m as usize + 1)];
            datasets.iter().for_each(|&d| size[d as usize] += 1);
            let mut order: Vec<usize> = (0..size.len()).collect();
            order.sort_by_key(|&d| std::cmp::Reverse(size[d]));
            let mut rank = vec![0; size.len()];
            order.iter().enumerate().for_each(|(r, &d)| rank[d] = r);
            for (r, &d) in order.iter().enumerate().take(size.len().saturating_sub(1)) {
                let boxes: Vec<(usize, Rect<f64>)> = (0..t.num_rows())
                    .into_par_iter()
                    .filter(|&i| datasets[i] as usize == d)
                    .filter_map(|i| bbox(i).transpose().map(|b| b.map(|b| (i, b))))
                    .collect::<Result<_>>()?;
                let tree = geom::bbox_tree(boxes);
                let later = (0..t.num_rows()).into_par_iter().filter(|&j| rank[datasets[j] as usize] > r);
                let found: Vec<(u32, u32)> = later
                    .flat_map_iter(|j| match bbox(j) {
                        Ok(Some(b)) => {
                            let env = AABB::from_corners([b.min().x, b.min().y], [b.max().x, b.max().y]);
                            let pair = |i: usize| Ok((i.min(j) as u32, i.max(j) as u32));
                            tree.locate_in_envelope_intersecting(&env).map(|o| pair(o.data)).collect()
                        }
                        Ok(None) => Vec::new(),
                        Err(e) => vec![Err(e)],
                    })
                    .collect::<Result<_>>()?;
                pairs.extend(found);
            }
        }
        Mode::SameCell => {
            let cells: Vec<StringArray> = (t.batches().iter())
                .map(|b| geom::column(b, &h3_column(res)))
                .collect::<Result<_>>()
                .context("the same_cell mode needs `indexed` at this resolution")?;
            // the rows sorted by cell, each cell's rows side by side (a map of cells to row lists was a small
            // allocation per cell: most rows have a cell of their own, so nearly 1 GB at 10M rows)
            let rows = cells.iter().flat_map(|c| (0..c.len()).map(move |k| c.is_valid(k).then(|| c.value(k))));
            let mut by_cell: Vec<(&str, u32)> =
                rows.enumerate().filter_map(|(i, cell)| Some((cell?, i as u32))).collect();
            by_cell.par_sort_unstable();
            for members in by_cell.chunk_by(|a, b| a.0 == b.0) {
                for (a, &(_, i)) in members.iter().enumerate() {
                    pairs.extend(
                        members[a + 1..]
                            .iter()
                            .filter(|&&(_, j)| datasets[i as usize] != datasets[j as usize])
                            .map(|&(_, j)| (i.min(j), i.max(j))),
                    );
                }
            }
        }
    }
    pairs.par_sort_unstable();
    pairs.dedup();
    Ok(pairs)
}

/// The geometry column of a table, row by row across its batches, decoded on demand.
struct WkbRows<'a> {
    arrays: Vec<&'a BinaryArray>,
    at: geom::RowIndex,
}

impl<'a> WkbRows<'a> {
    fn of(t: &'a Table) -> Result<Self> {
        let gi = geometry_index(t)?;
        let arrays = (t.batches().iter())
            .map(|b| b.column(gi).as_any().downcast_ref::<BinaryArray>())
            .collect::<Option<_>>()
            .context("the geometry column is not Binary (WKB)")?;
        Ok(WkbRows { arrays, at: geom::RowIndex::of(t) })
    }

    /// Row `i`'s geometry (`None`: null or empty).
    fn geometry(&self, i: usize) -> Result<Option<Geometry<f64>>> {
        let (b, k) = self.at.locate(i);
        let a = self.arrays[b];
        if a.is_null(k) { Ok(None) } else { geom::from_wkb(a.value(k)).with_context(|| format!("row {i}")) }
    }
}

/// The dataset of each row as a small number (rows of one dataset share it), and the datasets' names by
/// number; read batch by batch (no copy of the column).
fn dataset_numbers(t: &Table) -> Result<(Vec<u32>, Vec<String>)> {
    let mut numbers: HashMap<String, u32> = HashMap::new();
    let mut of_row = Vec::with_capacity(t.num_rows());
    for b in t.batches() {
        let names: StringArray = geom::column(b, "dataset_name")?;
        for name in names.iter() {
            let name = name.unwrap_or_default();
            let n = match numbers.get(name) {
                Some(&n) => n,
                None => {
                    let n = numbers.len() as u32;
                    numbers.insert(name.to_string(), n);
                    n
                }
            };
            of_row.push(n);
        }
    }
    let mut names = vec![String::new(); numbers.len()];
    numbers.into_iter().for_each(|(name, n)| names[n as usize] = name);
    Ok((of_row, names))
}

/// The candidate pairs of `modes` and each one's overlap ratio (see [`dedup_pairs`]).
///
/// Memory: the geometries are decoded from the table's WKB where they are needed (a row's box for the
/// R-tree, the two rows of a pair for its ratio) and dropped at once, so besides the input table the node
/// holds the tree and the pair lists, not a decoded copy of every geometry (at 10M rows that copy was
/// 1.5-2.5 GB). The price is a decode per pair (its `j`; its `i` is reused across the row's pairs), small
/// beside the pair's intersection.
fn pairs_of(t: &Table, modes: &[Mode], res: i64) -> Result<Table> {
    // rows are numbered in u32 (half the memory of the pair lists, the bulk of this node's at 10M rows)
    if u32::try_from(t.num_rows()).is_err() {
        anyhow::bail!("dedup handles at most {} rows, the table has {}", u32::MAX, t.num_rows());
    }
    let rows = WkbRows::of(t)?;
    let areas: Float64Array = geom::table_column(t, "area_m2").context("run `measured` first")?;
    let (datasets, _) = dataset_numbers(t)?;
    let of_mode: Vec<Vec<(u32, u32)>> =
        modes.iter().map(|&m| candidates(t, &rows, &datasets, m, res)).collect::<Result<_>>()?;
    // the union of the modes' sorted lists, each pair once, with which modes found it
    let (all, found) = union_of_sorted(&of_mode);
    drop(of_mode);
    let area = |i: u32| if areas.is_null(i as usize) { 0.0 } else { areas.value(i as usize) };
    let rows = &rows;
    // pairs are sorted by `i`: a chunk decodes its `i` once for all of that row's pairs
    let ratios: Vec<f64> = all
        .par_chunks(1 << 12)
        .flat_map_iter(|chunk| {
            let mut last: Option<(u32, Option<Geometry<f64>>)> = None;
            chunk.iter().map(move |&(i, j)| {
                if last.as_ref().is_none_or(|(r, _)| *r != i) {
                    last = Some((i, rows.geometry(i as usize)?));
                }
                Ok(match (&last.as_ref().expect("set above").1, rows.geometry(j as usize)?) {
                    (Some(a), Some(b)) => overlap_ratio(a, area(i), &b, area(j)).unwrap_or(f64::NAN),
                    _ => 0.0,
                })
            })
        })
        .collect::<Result<_>>()?;
    let mut fields = vec![Field::new("i", DataType::UInt32, false), Field::new("j", DataType::UInt32, false)];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(all.iter().map(|p| p.0))),
        Arc::new(UInt32Array::from_iter_values(all.iter().map(|p| p.1))),
    ];
    drop(all);
    for (m, mode) in modes.iter().enumerate() {
        fields.push(Field::new(mode.column(), DataType::Boolean, false));
        columns.push(Arc::new(BooleanArray::from_iter(found.iter().map(|f| Some(f & (1 << m) != 0)))));
    }
    fields.push(Field::new("ratio", DataType::Float64, true));
    // NaN marks a pair whose intersection could not be computed (a ratio is never NaN): null; the values
    // become the column without a copy
    let mut valid = NullBufferBuilder::new(ratios.len());
    ratios.iter().for_each(|r| valid.append(!r.is_nan()));
    columns.push(Arc::new(Float64Array::new(ratios.into(), valid.finish())));
    Ok(Table::from_batch(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?))
}

/// The union of sorted, duplicate-free lists, sorted, and per pair a bit mask of the lists that hold it
/// (merged in one pass, without a concatenated copy of the lists).
fn union_of_sorted(lists: &[Vec<(u32, u32)>]) -> (Vec<(u32, u32)>, Vec<u8>) {
    let capacity = lists.iter().map(Vec::len).max().unwrap_or(0);
    let (mut all, mut found) = (Vec::with_capacity(capacity), Vec::with_capacity(capacity));
    let mut at = vec![0usize; lists.len()];
    while let Some(&p) = lists.iter().zip(&at).filter_map(|(list, &a)| list.get(a)).min() {
        let mut mask = 0u8;
        for (m, list) in lists.iter().enumerate() {
            if list.get(at[m]) == Some(&p) {
                mask |= 1 << m;
                at[m] += 1;
            }
        }
        all.push(p);
        found.push(mask);
    }
    (all, found)
}

impl Mode {
    /// Its column in [`dedup_pairs`]'s table.
    fn column(self) -> &'static str {
        match self {
            Mode::Overlap => "overlap",
            Mode::SameCell => "same_cell",
        }
    }
}

/// Which rows of `t` each of `modes` keeps, given the candidate pairs and ratios of [`dedup_pairs`] (pairs in
/// order; the first duplicate pair of a row decides). What the modes share is read once.
pub fn decide(t: &Table, pairs: &Table, modes: &[Mode], threshold: f64, priority: &[String]) -> Result<Vec<Dedup>> {
    let (datasets, names) = dataset_numbers(t)?;
    let ranks: Vec<usize> = names.iter().map(|n| priority.iter().position(|p| p == n).unwrap_or(usize::MAX)).collect();
    let areas: Float64Array = geom::table_column(t, "area_m2").context("run `measured` first")?;
    // ids are only read for a pair that cannot be intersected: row by row, not as a copy of the column
    let ids: Vec<StringArray> = t.batches().iter().map(|b| geom::column(b, "unified_id")).collect::<Result<_>>()?;
    let at = geom::RowIndex::of(t);
    let id = |r: usize| {
        let (b, k) = at.locate(r);
        ids[b].value(k).to_string()
    };
    let (i, j): (UInt32Array, UInt32Array) = (geom::table_column(pairs, "i")?, geom::table_column(pairs, "j")?);
    let ratio: Float64Array = geom::table_column(pairs, "ratio")?;
    let rank = |r: usize| ranks[datasets[r] as usize];
    let area = |r: usize| if areas.is_null(r) { 0.0 } else { areas.value(r) };
    let mut decided = Vec::with_capacity(modes.len());
    for mode in modes {
        let of_mode: BooleanArray = geom::table_column(pairs, mode.column())?;
        let mut d = Dedup { keep: vec![true; t.num_rows()], pairs: 0, errors: Vec::new() };
        for k in (0..of_mode.len()).filter(|&k| of_mode.value(k)) {
            let (a, b) = (i.value(k) as usize, j.value(k) as usize);
            d.pairs += 1;
            if ratio.is_null(k) {
                d.errors.push((id(a), id(b)));
            } else if ratio.value(k) > threshold && d.keep[a] && d.keep[b] {
                // the larger record stays; on equal areas, the dataset first in the priority
                let loser = if area(a) > area(b) {
                    b
                } else if area(b) > area(a) {
                    a
                } else if rank(a) <= rank(b) {
                    b
                } else {
                    a
                };
                d.keep[loser] = false;
            }
        }
        decided.push(d);
    }
    Ok(decided)
}

/// Decides which rows to keep (one mode's pairs, computed for this call).
pub fn dedup_rows(t: &Table, mode: Mode, threshold: f64, priority: &[String], h3_res: i64) -> Result<Dedup> {
    let mut decided = decide(t, &pairs_of(t, &[mode], h3_res)?, &[mode], threshold, priority)?;
    Ok(decided.remove(0))
}

/// `indexed` without the rows `mode` removes (its column of [`dedup_decisions`]). The table is taken by value:
/// when the run hands it over (this is its last reader), each batch's memory can go as soon as its kept rows
/// are copied, so the input and the result need not both be held whole.
fn run(indexed: Table, decisions: &Table, mode: Mode) -> Result<Table> {
    let keep: BooleanArray = geom::table_column(decisions, mode.column())?;
    ctx::note(format!("{mode:?} dedup: {} cross-dataset duplicates removed", keep.false_count()));
    geom::filter_rows(indexed, &keep)
}

/// The candidate pairs of both modes and the overlap ratio of each, computed once for [`dedup_decisions`]
/// (and not again when only `overlap_threshold` or `dataset_priority` change). Columns:
/// `i`, `j` (rows of `indexed`, `i < j`), `overlap` (bounding boxes intersect), `same_cell` (centroids in
/// one H3 cell), `ratio` (null: the intersection could not be computed).
#[node(tags(stage = "prepared"))]
pub fn dedup_pairs(indexed: &Table, h3_resolution: i64) -> Result<Table> {
    pairs_of(indexed, &[Mode::Overlap, Mode::SameCell], h3_resolution)
}

/// Which rows each mode keeps: columns `overlap` and `same_cell`, one boolean per row of `indexed` (in its
/// order), decided once for `deduplicated` and `dedup_comparison` (and not again when only `dedup_mode`
/// changes). A candidate pair that could not be intersected is warned of here, with both ids.
#[node(tags(stage = "prepared"))]
pub fn dedup_decisions(
    indexed: &Table,
    dedup_pairs: &Table,
    overlap_threshold: f64,
    dataset_priority: &Vec<String>,
) -> Result<Table> {
    let (mut errors, mut per_mode) = (Vec::new(), Vec::new());
    let mut columns: Vec<(&str, ArrayRef, bool)> = Vec::new();
    let modes = [Mode::Overlap, Mode::SameCell];
    for (mode, d) in modes.into_iter().zip(decide(indexed, dedup_pairs, &modes, overlap_threshold, dataset_priority)?) {
        ctx::note(format!("{mode:?}: {} candidate pairs", d.pairs));
        per_mode.push(format!("{} {}", mode.column(), d.errors.len()));
        errors.extend(d.errors);
        columns.push((mode.column(), Arc::new(BooleanArray::from(d.keep)), false));
    }
    // a pair of both modes is one pair
    errors.sort();
    errors.dedup();
    if !errors.is_empty() {
        let shown: Vec<String> = errors.iter().take(5).map(|(a, b)| format!("{a} / {b}")).collect();
        ctx::warn(format!(
            "{} candidate pairs could not be intersected (a geometry error; of each mode: {}); both records of each \
             are kept: {}{}",
            errors.len(),
            per_mode.join(", "),
            shown.join(", "),
            if errors.len() > shown.len() { ", ..." } else { "" }
        ));
    }
    Ok(Table::from_batch(RecordBatch::try_from_iter_with_nullable(columns)?))
}

/// Cross-dataset dedup, candidates from an R-tree of bounding boxes (`dedup_mode = "overlap"`).
#[node(tags(stage = "prepared"))]
pub fn dedup_overlap(indexed: Table, dedup_decisions: &Table) -> Result<Table> {
    run(indexed, dedup_decisions, Mode::Overlap)
}

/// Cross-dataset dedup, candidates only within an H3 cell (`dedup_mode = "same_cell"`, the thesis rule).
#[node(tags(stage = "prepared"))]
pub fn dedup_same_cell(indexed: Table, dedup_decisions: &Table) -> Result<Table> {
    run(indexed, dedup_decisions, Mode::SameCell)
}

/// How many records each mode removes, side by side.
#[node(tags(stage = "prepared"))]
pub fn dedup_comparison(dedup_decisions: &Table, dedup_pairs: &Table) -> Result<Table> {
    let modes = [Mode::Overlap, Mode::SameCell];
    let ratio: Float64Array = geom::table_column(dedup_pairs, "ratio")?;
    // per mode: candidate pairs, rows removed, rows kept, pairs without a ratio
    let mut counts: [Vec<i64>; 4] = Default::default();
    for m in modes {
        let of_mode: BooleanArray = geom::table_column(dedup_pairs, m.column())?;
        let keep: BooleanArray = geom::table_column(dedup_decisions, m.column())?;
        let errors = (0..of_mode.len()).filter(|&k| of_mode.value(k) && ratio.is_null(k)).count();
        let row = [of_mode.true_count(), keep.false_count(), keep.true_count(), errors];
        counts.iter_mut().zip(row).for_each(|(c, n)| c.push(n as i64));
    }
    let names = ["candidate_pairs", "removed", "kept", "geometry_errors"];
    let mode_names: ArrayRef = Arc::new(StringArray::from_iter_values(modes.map(Mode::column)));
    let mut columns: Vec<(&str, ArrayRef, bool)> = vec![("mode", mode_names, false)];
    columns.extend(names.into_iter().zip(counts).map(|(n, c)| (n, Arc::new(Int64Array::from(c)) as ArrayRef, false)));
    Ok(Table::from_batch(RecordBatch::try_from_iter_with_nullable(columns)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_union_of_sorted_pair_lists_says_which_list_holds_each_pair() {
        let a = vec![(0, 1), (0, 3), (2, 5)];
        let b = vec![(0, 3), (1, 2), (2, 5), (4, 9)];
        let (all, found) = union_of_sorted(&[a, b]);
        assert_eq!(all, [(0, 1), (0, 3), (1, 2), (2, 5), (4, 9)]);
        assert_eq!(found, [0b01, 0b11, 0b10, 0b11, 0b10]);
    }
    use crate::testing::{measured, square, square as sq};
    use geo::Point;

    #[test]
    fn ratios() {
        let a = sq(0.0, 0.0, 0.01);
        let b = sq(0.005, 0.0, 0.01); // half overlaps
        let (aa, ab) = (geom::geodesic_area(&a), geom::geodesic_area(&b));
        let r = overlap_ratio(&a, aa, &b, ab).unwrap();
        assert!((r - 0.5).abs() < 0.01, "{r}");
        let inner = sq(0.001, 0.001, 0.002);
        assert!((overlap_ratio(&a, aa, &inner, geom::geodesic_area(&inner)).unwrap() - 1.0).abs() < 1e-6);
        assert_eq!(overlap_ratio(&a, aa, &Geometry::Point(Point::new(0.005, 0.005)), 0.0), Some(1.0));
        assert_eq!(overlap_ratio(&a, aa, &sq(1.0, 1.0, 0.01), aa), Some(0.0));
    }

    #[test]
    fn overlapping_records_of_two_datasets_keep_the_larger() {
        let t = measured(&[
            ("a", "a:big", square(0.0, 0.0, 0.010)),
            ("b", "b:small", square(0.001, 0.001, 0.008)), // inside a:big: ratio 1
            ("b", "b:apart", square(5.0, 5.0, 0.01)),
            ("a", "a:half", square(10.0, 10.0, 0.01)),
            ("b", "b:half", square(10.007, 10.0, 0.01)), // overlaps a:half by 30%: kept
            ("a", "a:same", square(20.0, 20.0, 0.01)),
            ("a", "a:same2", square(20.0, 20.0, 0.01)), // same dataset: never a cross-dataset duplicate
        ]);
        let d = dedup_rows(&t, Mode::Overlap, 0.5, &["b".into(), "a".into()], 0).unwrap();
        assert_eq!(d.keep, vec![true, false, true, true, true, true, true]);
        // equal areas: the dataset listed first in the priority wins
        let t = measured(&[("a", "a:x", square(0.0, 0.0, 0.01)), ("b", "b:x", square(0.0, 0.0, 0.01))]);
        let d = dedup_rows(&t, Mode::Overlap, 0.5, &["b".into(), "a".into()], 0).unwrap();
        assert_eq!(d.keep, vec![false, true]);
    }

    #[test]
    fn both_modes_from_one_set_of_pairs_over_a_table_of_several_batches() {
        let t = measured(&[
            ("a", "a:big", square(0.0, 0.0, 0.010)),
            ("b", "b:in", square(0.001, 0.001, 0.008)), // inside a:big, in another cell: overlap mode only
            ("a", "a:twin", square(10.0, 10.0, 0.01)),
            ("b", "b:twin", square(10.0, 10.0, 0.01)), // a:twin's twin, same cell: both modes
            ("b", "b:far", square(5.0, 5.0, 0.01)),    // a:big's cell, no overlap: same_cell mode only, ratio 0
        ])
        .concat()
        .unwrap();
        let cells = Arc::new(StringArray::from(vec!["c1", "c2", "c3", "c3", "c1"]));
        let b = geom::with_column(&t, Field::new("h3_9", DataType::Utf8, true), cells).unwrap();
        let t = Table::try_new(b.schema(), vec![b.slice(0, 3), b.slice(3, 2)]).unwrap();
        let pairs = dedup_pairs(&t, 9).unwrap().concat().unwrap();
        let col = |n: &str| format!("{:?}", pairs.column_by_name(n).unwrap());
        assert!(col("i").contains("0,\n  0,\n  2,") && col("j").contains("1,\n  4,\n  3,"), "{pairs:?}");
        assert!(col("overlap").contains("true,\n  false,\n  true,"), "{}", col("overlap"));
        assert!(col("same_cell").contains("false,\n  true,\n  true,"), "{}", col("same_cell"));
        let pairs = Table::from_batch(pairs);
        let priority = ["b".to_string()];
        let decided = decide(&t, &pairs, &[Mode::Overlap, Mode::SameCell], 0.5, &priority).unwrap();
        let keep_and_pairs: Vec<_> = decided.into_iter().map(|d| (d.keep, d.pairs)).collect();
        assert_eq!(
            keep_and_pairs,
            [(vec![true, false, false, true, true], 2), (vec![true, true, false, true, true], 2)]
        );
        // the nodes: both modes decided once, each mode's rows kept batch by batch, and the comparison
        let decisions = dedup_decisions(&t, &pairs, 0.5, &priority.to_vec()).unwrap();
        let ids = |kept: Table| crate::testing::strings(&kept, "unified_id");
        let some = |ids: &[&str]| ids.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        assert_eq!(ids(dedup_same_cell(t.clone(), &decisions).unwrap()), some(&["a:big", "b:in", "b:twin", "b:far"]));
        assert_eq!(ids(dedup_overlap(t.clone(), &decisions).unwrap()), some(&["a:big", "b:twin", "b:far"]));
        let cmp = dedup_comparison(&decisions, &pairs).unwrap().concat().unwrap();
        let removed: Int64Array = geom::column(&cmp, "removed").unwrap();
        assert_eq!(removed.values().to_vec(), vec![2, 1]);
        let kept: Int64Array = geom::column(&cmp, "kept").unwrap();
        assert_eq!(kept.values().to_vec(), vec![3, 4]);
        let candidates: Int64Array = geom::column(&cmp, "candidate_pairs").unwrap();
        assert_eq!(candidates.values().to_vec(), vec![2, 2]);
    }

    #[test]
    fn ratios_decoded_on_demand_match_the_geometries_over_many_batches_and_chunks() {
        // 3,000 squares of three datasets, two at each of 1,500 places of a 50 x 30 grid, each overlapping its
        // neighbours: more pairs than one chunk of the ratio loop (4,096), rows in batches of 7 (and an empty
        // batch) so a pair's rows are often in different batches, and every 97th row without a geometry
        let rows: Vec<(String, Option<Geometry<f64>>)> = (0..3000)
            .map(|k| {
                let (x, y) = ((k % 50) as f64 * 0.006 + (k % 3) as f64 * 0.002, (k / 100) as f64 * 0.006);
                let d = ["a", "b", "c"][k % 3];
                (d.to_string(), (k % 97 != 5).then(|| square(x, y, 0.01)))
            })
            .collect();
        let named: Vec<(&str, &str, Geometry<f64>)> =
            rows.iter().map(|r| (&*r.0, "x", r.1.clone().unwrap_or_else(|| square(0.0, 0.0, 0.0)))).collect();
        let whole = measured(&named).concat().unwrap();
        let geometries: Vec<Option<Geometry<f64>>> = rows.iter().map(|r| r.1.clone()).collect();
        let field = geom::wkb_field("geometry", true, None);
        let whole = geom::with_column(&whole, field, geom::wkb_array(&geometries)).unwrap();
        let mut parts: Vec<RecordBatch> = (0..3000).step_by(7).map(|o| whole.slice(o, 7.min(3000 - o))).collect();
        parts.insert(3, whole.slice(0, 0));
        let t = Table::try_new(whole.schema(), parts).unwrap();
        let pairs = pairs_of(&t, &[Mode::Overlap], 0).unwrap().concat().unwrap();
        assert!(pairs.num_rows() > 4096, "{} pairs", pairs.num_rows());
        let (i, j): (UInt32Array, UInt32Array) =
            (geom::column(&pairs, "i").unwrap(), geom::column(&pairs, "j").unwrap());
        let ratio: Float64Array = geom::column(&pairs, "ratio").unwrap();
        let geometry = |r: usize| rows[r].1.as_ref().unwrap();
        let area = |r: usize| geom::geodesic_area(geometry(r));
        for k in 0..pairs.num_rows() {
            let (a, b) = (i.value(k) as usize, j.value(k) as usize);
            let expected = overlap_ratio(geometry(a), area(a), geometry(b), area(b));
            assert_eq!(Some(ratio.value(k)), expected, "pair {a}, {b}");
        }
        // and the pairs are every pair of rows of different datasets whose boxes meet (brute force)
        let boxes: Vec<Option<Rect<f64>>> = rows.iter().map(|r| r.1.as_ref().and_then(geom::bbox)).collect();
        let meet = |p: &Rect<f64>, q: &Rect<f64>| {
            p.min().x <= q.max().x && q.min().x <= p.max().x && p.min().y <= q.max().y && q.min().y <= p.max().y
        };
        let expected: Vec<(u32, u32)> = (0..3000)
            .flat_map(|a| (a + 1..3000).map(move |b| (a, b)))
            .filter(|&(a, b)| rows[a].0 != rows[b].0)
            .filter(|&(a, b)| matches!((&boxes[a], &boxes[b]), (Some(p), Some(q)) if meet(p, q)))
            .map(|(a, b)| (a as u32, b as u32))
            .collect();
        let found: Vec<(u32, u32)> = (0..pairs.num_rows()).map(|k| (i.value(k), j.value(k))).collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn a_pair_whose_overlap_cannot_be_computed_is_reported_and_both_kept() {
        // b's area is wrong (1 m2 for a polygon of 1.2 km2): the intersection, larger than the "smaller" record,
        // is not a ratio, and such a pair is an error, not "no overlap" and not a duplicate
        let schema = Arc::new(Schema::new(vec![
            Field::new("dataset_name", DataType::Utf8, false),
            Field::new("unified_id", DataType::Utf8, false),
            geom::wkb_field("geometry", true, None),
            Field::new("area_m2", DataType::Float64, false),
        ]));
        let columns: Vec<arrow_array::ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(StringArray::from(vec!["a:ok", "b:odd"])),
            geom::wkb_array(&[Some(square(0.0, 0.0, 0.01)), Some(square(0.0, 0.0, 0.01))]),
            Arc::new(Float64Array::from(vec![1.2e6, 1.0])),
        ];
        let t = Table::from_batch(RecordBatch::try_new(schema, columns).unwrap());
        let d = dedup_rows(&t, Mode::Overlap, 0.5, &[], 0).unwrap();
        assert_eq!(d.errors, vec![("a:ok".to_string(), "b:odd".to_string())]);
        assert_eq!(d.keep, vec![true, true]);
        // the nodes: one pair of both modes (one cell), counted as a geometry error of each
        let cells = Arc::new(StringArray::from(vec!["c", "c"]));
        let t = geom::with_column(&t.concat().unwrap(), Field::new("h3_9", DataType::Utf8, true), cells).unwrap();
        let t = Table::from_batch(t);
        let pairs = dedup_pairs(&t, 9).unwrap();
        let cmp = dedup_comparison(&dedup_decisions(&t, &pairs, 0.5, &Vec::new()).unwrap(), &pairs).unwrap();
        let errors: Int64Array = geom::table_column(&cmp, "geometry_errors").unwrap();
        assert_eq!(errors.values().to_vec(), vec![1, 1]);
    }
}
