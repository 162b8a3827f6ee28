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
//! `dedup_comparison` runs both and reports how many records each removes.
//!
//! A candidate pair whose intersection cannot be computed (the boolean operation fails on its geometry) is
//! counted and reported, with both ids, and both records are kept: it is never taken as "no overlap"
//! silently (`geometry_errors` in `dedup_comparison`).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use flowrun_engine::{Table, ctx, node};
use geo::{BooleanOps, Contains, Geometry, MultiPolygon};
use rayon::prelude::*;
use rstar::AABB;

use super::geom::{self, geometries, geometry_index, polygonal};
use super::h3::h3_column;

/// How candidate pairs are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bounding boxes intersect (R-tree).
    Overlap,
    /// Centroids in the same H3 cell.
    SameCell,
}

struct Row {
    dataset: String,
    geom: Option<Geometry<f64>>,
    area: f64,
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

/// The records of a table as the dedup sees them.
struct Records {
    batch: RecordBatch,
    rows: Vec<Row>,
}

impl Records {
    fn of(t: &Table) -> Result<Records> {
        let batch = t.concat()?;
        let geoms = geometries(batch.column(geometry_index(t)?))?;
        let datasets: StringArray = geom::column(&batch, "dataset_name")?;
        let areas: Float64Array = geom::column(&batch, "area_m2").context("run `measured` first")?;
        let rows = geoms
            .into_iter()
            .enumerate()
            .map(|(i, g)| Row {
                dataset: datasets.value(i).to_string(),
                geom: g,
                area: if areas.is_null(i) { 0.0 } else { areas.value(i) },
            })
            .collect();
        Ok(Records { batch, rows })
    }

    /// The candidate pairs `(i, j)`, `i < j`, of different datasets, sorted.
    fn candidates(&self, mode: Mode, h3_res: i64) -> Result<Vec<(usize, usize)>> {
        let rows = &self.rows;
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        match mode {
            Mode::Overlap => {
                let tree = geom::bbox_tree(rows.iter().map(|r| r.geom.as_ref()));
                let boxes: Vec<_> = tree.iter().collect();
                pairs = boxes
                    .par_iter()
                    .flat_map_iter(|item| {
                        let i = item.data;
                        let env = AABB::from_corners(item.geom().lower(), item.geom().upper());
                        tree.locate_in_envelope_intersecting(&env)
                            .map(|o| o.data)
                            .filter(move |&j| j > i && rows[j].dataset != rows[i].dataset)
                            .map(move |j| (i, j))
                            .collect::<Vec<_>>()
                    })
                    .collect();
            }
            Mode::SameCell => {
                let col = h3_column(h3_res);
                let cells: StringArray =
                    geom::column(&self.batch, &col).context("the same_cell mode needs `indexed` at this resolution")?;
                let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
                for i in 0..cells.len() {
                    if !cells.is_null(i) {
                        groups.entry(cells.value(i)).or_default().push(i);
                    }
                }
                for members in groups.values() {
                    for (a, &i) in members.iter().enumerate() {
                        for &j in &members[a + 1..] {
                            if rows[i].dataset != rows[j].dataset {
                                pairs.push((i.min(j), i.max(j)));
                            }
                        }
                    }
                }
            }
        }
        pairs.sort_unstable();
        Ok(pairs)
    }

    /// Per pair: `Some(true)` a duplicate, `Some(false)` not, `None` the overlap could not be computed.
    fn verdicts(&self, pairs: &[(usize, usize)], threshold: f64) -> Vec<Option<bool>> {
        pairs
            .par_iter()
            .map(|&(i, j)| {
                let (a, b) = (&self.rows[i], &self.rows[j]);
                let (Some(ga), Some(gb)) = (&a.geom, &b.geom) else { return Some(false) };
                overlap_ratio(ga, a.area, gb, b.area).map(|ratio| ratio > threshold)
            })
            .collect()
    }

    /// Which rows to keep, given each candidate pair's verdict (pairs in order; the first duplicate pair
    /// of a row decides).
    fn resolve(&self, pairs: &[(usize, usize)], verdicts: &[Option<bool>], priority: &[String]) -> Result<Dedup> {
        let rank = |d: &str| priority.iter().position(|p| p == d).unwrap_or(usize::MAX);
        let ids: StringArray = geom::column(&self.batch, "unified_id")?;
        let errors: Vec<(String, String)> = pairs
            .iter()
            .zip(verdicts)
            .filter(|(_, v)| v.is_none())
            .map(|(&(i, j), _)| (ids.value(i).to_string(), ids.value(j).to_string()))
            .collect();
        let mut keep = vec![true; self.rows.len()];
        for (&(i, j), _) in pairs.iter().zip(verdicts).filter(|(_, v)| **v == Some(true)) {
            if !keep[i] || !keep[j] {
                continue;
            }
            let (a, b) = (&self.rows[i], &self.rows[j]);
            let loser = if a.area > b.area {
                j
            } else if b.area > a.area {
                i
            } else if rank(&a.dataset) <= rank(&b.dataset) {
                j
            } else {
                i
            };
            keep[loser] = false;
        }
        Ok(Dedup { keep, pairs: pairs.len(), errors })
    }
}

/// Decides which rows to keep.
pub fn dedup_rows(t: &Table, mode: Mode, threshold: f64, priority: &[String], h3_res: i64) -> Result<Dedup> {
    let records = Records::of(t)?;
    let pairs = records.candidates(mode, h3_res)?;
    let verdicts = records.verdicts(&pairs, threshold);
    records.resolve(&pairs, &verdicts, priority)
}

fn apply(t: &Table, d: &Dedup) -> Result<Table> {
    let batch = t.concat()?;
    let mask: BooleanArray = d.keep.iter().map(|k| Some(*k)).collect();
    Ok(Table::from_batch(arrow_select::filter::filter_record_batch(&batch, &mask)?))
}

fn run(t: &Table, mode: Mode, threshold: f64, priority: &[String], res: i64) -> Result<Table> {
    let d = dedup_rows(t, mode, threshold, priority, res)?;
    let removed = d.keep.iter().filter(|k| !**k).count();
    ctx::note(format!("{mode:?} dedup: {removed} cross-dataset duplicates removed ({} candidate pairs)", d.pairs));
    if !d.errors.is_empty() {
        let shown: Vec<String> = d.errors.iter().take(5).map(|(a, b)| format!("{a} / {b}")).collect();
        ctx::warn(format!(
            "{mode:?} dedup: {} candidate pairs could not be intersected (a geometry error); both records of each \
             are kept: {}{}",
            d.errors.len(),
            shown.join(", "),
            if d.errors.len() > shown.len() { ", ..." } else { "" }
        ));
    }
    apply(t, &d)
}

/// Cross-dataset dedup, candidates from an R-tree of bounding boxes (`dedup_mode = "overlap"`).
#[node(tags(stage = "prepared"))]
pub fn dedup_overlap(indexed: &Table, overlap_threshold: f64, dataset_priority: &Vec<String>) -> Result<Table> {
    run(indexed, Mode::Overlap, overlap_threshold, dataset_priority, 0)
}

/// Cross-dataset dedup, candidates only within an H3 cell (`dedup_mode = "same_cell"`, the thesis rule).
#[node(tags(stage = "prepared"))]
pub fn dedup_same_cell(
    indexed: &Table,
    h3_resolution: i64,
    overlap_threshold: f64,
    dataset_priority: &Vec<String>,
) -> Result<Table> {
    run(indexed, Mode::SameCell, overlap_threshold, dataset_priority, h3_resolution)
}

/// How many records each mode removes, side by side.
#[node(tags(stage = "prepared"))]
pub fn dedup_comparison(
    indexed: &Table,
    h3_resolution: i64,
    overlap_threshold: f64,
    dataset_priority: &Vec<String>,
) -> Result<Table> {
    let mut modes = Vec::new();
    let mut pairs = Vec::new();
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    let mut errors = Vec::new();
    // a pair both modes examine is intersected once
    let records = Records::of(indexed)?;
    let candidates =
        [records.candidates(Mode::Overlap, h3_resolution)?, records.candidates(Mode::SameCell, h3_resolution)?];
    let mut all: Vec<(usize, usize)> = candidates.concat();
    all.sort_unstable();
    all.dedup();
    let verdict_of = records.verdicts(&all, overlap_threshold);
    for (name, pairs_of_mode) in ["overlap", "same_cell"].into_iter().zip(&candidates) {
        let verdicts: Vec<Option<bool>> = pairs_of_mode
            .iter()
            .map(|p| verdict_of[all.binary_search(p).expect("every pair is in the union")])
            .collect();
        let d = records.resolve(pairs_of_mode, &verdicts, dataset_priority)?;
        let r = d.keep.iter().filter(|k| !**k).count();
        modes.push(name);
        pairs.push(d.pairs as i64);
        removed.push(r as i64);
        kept.push((d.keep.len() - r) as i64);
        errors.push(d.errors.len() as i64);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("mode", DataType::Utf8, false),
        Field::new("candidate_pairs", DataType::Int64, false),
        Field::new("removed", DataType::Int64, false),
        Field::new("kept", DataType::Int64, false),
        Field::new("geometry_errors", DataType::Int64, false),
    ]));
    Ok(Table::from_batch(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(modes)),
            Arc::new(Int64Array::from(pairs)),
            Arc::new(Int64Array::from(removed)),
            Arc::new(Int64Array::from(kept)),
            Arc::new(Int64Array::from(errors)),
        ],
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
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
    }
}
