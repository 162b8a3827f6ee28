//! Geometry helpers shared by the PV nodes: WKB in Arrow columns, geodesic measures, repair.
//!
//! Geometry travels between nodes as WKB in an Arrow `Binary` column tagged `geoarrow.wkb` (the GeoArrow
//! extension type), so DuckDB, GeoPandas and the geoarrow crates all recognise it.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::builder::BinaryBuilder;
use arrow_array::{Array, ArrayRef, BinaryArray, BooleanArray, RecordBatch};
use arrow_schema::{DataType, Field};
use flowrun_engine::Table;
use geo::algorithm::bool_ops::FillRule;
use geo::orient::{Direction, Orient};
use geo::{
    Area, BooleanOps, BoundingRect, Centroid, Coord, GeodesicArea, Geometry, LineString, MultiPolygon, OpType, Point,
    Polygon, Rect, Validation,
};
use geo_traits::to_geo::ToGeoGeometry;
use rstar::{RTree, primitives::GeomWithData, primitives::Rectangle};

/// A WKB geometry field (`geoarrow.wkb`); `crs` is GeoArrow's CRS metadata (`None` for OGC:CRS84).
pub fn wkb_field(name: &str, nullable: bool, crs: Option<&str>) -> Field {
    let meta = match crs {
        Some(c) => serde_json::json!({ "crs": c }).to_string(),
        None => "{}".to_string(),
    };
    Field::new(name, DataType::Binary, nullable).with_metadata(HashMap::from([
        ("ARROW:extension:name".to_string(), "geoarrow.wkb".to_string()),
        ("ARROW:extension:metadata".to_string(), meta),
    ]))
}

/// Encodes a geometry as little-endian WKB.
pub fn to_wkb(g: &Geometry<f64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_wkb(&mut out, g);
    out
}

fn write_wkb(out: &mut impl std::io::Write, g: &Geometry<f64>) {
    wkb::writer::write_geometry(out, g, &wkb::writer::WriteOptions { endianness: wkb::Endianness::LittleEndian })
        .expect("writing WKB to memory does not fail");
}

/// Decodes WKB; Z and M are dropped. `None` for an empty geometry.
pub fn from_wkb(bytes: &[u8]) -> Result<Option<Geometry<f64>>> {
    let wkb = wkb::reader::read_wkb(bytes).map_err(|e| anyhow::anyhow!("invalid WKB: {e}"))?;
    Ok(wkb.try_to_geometry())
}

/// The geometry column of a table (the first `geoarrow.wkb` column, or one called `geometry`).
pub fn geometry_index(table: &Table) -> Result<usize> {
    let schema = table.schema();
    schema
        .fields()
        .iter()
        .position(|f| f.metadata().get("ARROW:extension:name").is_some_and(|n| n == "geoarrow.wkb"))
        .or_else(|| schema.index_of("geometry").ok())
        .context("the table has no geometry column")
}

/// All geometries of a column, in order (`None` for nulls and empty geometries).
pub fn geometries(column: &ArrayRef) -> Result<Vec<Option<Geometry<f64>>>> {
    let arr = column.as_any().downcast_ref::<BinaryArray>().context("the geometry column is not Binary (WKB)")?;
    (0..arr.len()).map(|i| if arr.is_null(i) { Ok(None) } else { from_wkb(arr.value(i)) }).collect()
}

/// A WKB column from geometries (each written straight into the column's buffer).
pub fn wkb_array(geoms: &[Option<Geometry<f64>>]) -> ArrayRef {
    // a polygon of 5 vertices is 93 bytes
    let mut column = BinaryBuilder::with_capacity(geoms.len(), geoms.len() * 96);
    for g in geoms {
        match g {
            Some(g) => {
                write_wkb(&mut column, g);
                column.append_value(b"");
            }
            None => column.append_null(),
        }
    }
    Arc::new(column.finish())
}

/// Geodesic area on the WGS84 ellipsoid, m² (0 for points and lines). Coordinates are lon/lat degrees.
///
/// ```
/// use geo::{Rect, coord};
/// let cell = Rect::new(coord! { x: 0.0, y: 0.0 }, coord! { x: 1.0, y: 1.0 }).to_polygon();
/// let area = flowrun_pv::geom::geodesic_area(&cell.into());
/// assert!((area - 12_308_778_361.0).abs() / 12_308_778_361.0 < 1e-4);
/// ```
pub fn geodesic_area(g: &Geometry<f64>) -> f64 {
    // Per polygon, the absolute value of the signed area of its oriented rings (exterior counter-clockwise,
    // holes clockwise). Not `geodesic_area_unsigned`: it reads a ring that turns clockwise *on the
    // ellipsoid* as enclosing the rest of the globe, and a sliver whose planar and ellipsoidal orientations
    // disagree then measures 5.1e14 m2.
    let polygon = |p: &Polygon<f64>| p.orient(Direction::Default).geodesic_area_signed().abs();
    match g {
        Geometry::Polygon(p) => polygon(p),
        Geometry::MultiPolygon(mp) => mp.0.iter().map(polygon).sum(),
        Geometry::Rect(r) => polygon(&r.to_polygon()),
        Geometry::Triangle(t) => polygon(&t.to_polygon()),
        Geometry::GeometryCollection(c) => c.0.iter().map(geodesic_area).sum(),
        _ => 0.0,
    }
}

/// Centroid in degrees (area-weighted for polygons).
pub fn centroid(g: &Geometry<f64>) -> Option<Point<f64>> {
    g.centroid()
}

/// Bounding box.
pub fn bbox(g: &Geometry<f64>) -> Option<Rect<f64>> {
    g.bounding_rect()
}

/// What [`repair`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// The geometry was valid.
    Valid,
    /// It was invalid and has been made valid.
    Repaired,
    /// It is invalid and could not be made valid without losing it: kept as it is, for the caller to report.
    Unrepairable,
}

/// Repairs an invalid polygonal geometry: the area its rings enclose under the even-odd rule (each ring
/// crossed toggles inside and outside: a bow-tie becomes two triangles, a hole outside its shell a polygon
/// of its own, nested shells a shell with a hole), as GEOS's `make_valid` does, computed with i_overlay,
/// then put in a canonical ring order. Not geo's `make_valid`: it snaps vertices within 1e-4 coordinate units,
/// 11 m in degrees, and erases or reshapes small features. A repair that would lose the geometry (an empty
/// result), and a polygon without area (its points on one line, which geo's validation accepts), keep the
/// original and say so: nothing is silently dropped.
pub fn repair(g: Geometry<f64>) -> (Geometry<f64>, Repair) {
    // geo's validation compares every pair of segments: on a polygon of a million vertices it does not end.
    // A large one goes through the even-odd fill (n log n) instead, and counts as valid when the fill
    // encloses the same area as the polygon itself (crossing or misplaced rings change it).
    if geo::CoordsIter::coords_count(&g) > LARGE {
        return repair_large(g);
    }
    if g.is_valid() {
        let flat = matches!(g, Geometry::Polygon(_) | Geometry::MultiPolygon(_)) && g.unsigned_area() == 0.0;
        return (g, if flat { Repair::Unrepairable } else { Repair::Valid });
    }
    match polygonal(&g).and_then(even_odd_fill) {
        Some(mp) => (Geometry::MultiPolygon(canonical(mp)), Repair::Repaired),
        None => (g, Repair::Unrepairable),
    }
}

/// A polygon or multipolygon as a multipolygon; `None` for the other kinds.
pub fn polygonal(g: &Geometry<f64>) -> Option<MultiPolygon<f64>> {
    match g {
        Geometry::Polygon(p) => Some(MultiPolygon::new(vec![p.clone()])),
        Geometry::MultiPolygon(m) => Some(m.clone()),
        _ => None,
    }
}

/// The area `rings` enclose under the even-odd rule, as valid polygons; `None` when the boolean operation
/// fails (panics) or encloses nothing.
fn even_odd_fill(rings: MultiPolygon<f64>) -> Option<MultiPolygon<f64>> {
    std::panic::catch_unwind(|| {
        rings.boolean_op_with_fill_rule(&MultiPolygon::new(vec![]), OpType::Xor, FillRule::EvenOdd)
    })
    .ok()
    .filter(|mp| mp.unsigned_area() > 0.0)
}

/// Vertices above which a geometry is checked by its even-odd fill rather than by geo's validation.
const LARGE: usize = 20_000;

fn repair_large(g: Geometry<f64>) -> (Geometry<f64>, Repair) {
    let Some(rings) = polygonal(&g) else { return (g, Repair::Valid) };
    match even_odd_fill(rings) {
        Some(mp) => {
            let (before, after) = (g.unsigned_area(), mp.unsigned_area());
            if (before - after).abs() <= 1e-9 * after.max(f64::MIN_POSITIVE) {
                (g, Repair::Valid)
            } else {
                (Geometry::MultiPolygon(canonical(mp)), Repair::Repaired)
            }
        }
        None => (g, Repair::Unrepairable),
    }
}

/// A deterministic form of a multipolygon: exteriors counter-clockwise and holes clockwise, every ring
/// starting at its smallest vertex, holes and polygons sorted. `make_valid` walks hash sets, so the same
/// input can come back with rings starting elsewhere or polygons in another order; without this, two runs
/// (or a sequential and a parallel one) would write different bytes and slightly different areas.
pub fn canonical(mp: MultiPolygon<f64>) -> MultiPolygon<f64> {
    fn rotate(ring: &LineString<f64>) -> LineString<f64> {
        let mut pts: Vec<Coord<f64>> = ring.0.clone();
        if pts.len() > 1 && pts.first() == pts.last() {
            pts.pop();
        }
        let start = (0..pts.len())
            .min_by(|&a, &b| pts[a].x.total_cmp(&pts[b].x).then(pts[a].y.total_cmp(&pts[b].y)))
            .unwrap_or(0);
        pts.rotate_left(start);
        if let Some(&first) = pts.first() {
            pts.push(first);
        }
        LineString::new(pts)
    }
    // rings compared vertex by vertex (ties on the first vertex happen: polygons touching at a corner)
    fn cmp_rings(a: &LineString<f64>, b: &LineString<f64>) -> std::cmp::Ordering {
        for (p, q) in a.0.iter().zip(&b.0) {
            let o = p.x.total_cmp(&q.x).then(p.y.total_cmp(&q.y));
            if o.is_ne() {
                return o;
            }
        }
        a.0.len().cmp(&b.0.len())
    }
    let mut polys: Vec<Polygon<f64>> = mp
        .orient(Direction::Default)
        .0
        .into_iter()
        .map(|p| {
            let (ext, holes) = p.into_inner();
            let mut holes: Vec<LineString<f64>> = holes.iter().map(rotate).collect();
            holes.sort_by(cmp_rings);
            Polygon::new(rotate(&ext), holes)
        })
        .collect();
    polys.sort_by(|a, b| {
        cmp_rings(a.exterior(), b.exterior()).then_with(|| {
            let (ha, hb) = (a.interiors(), b.interiors());
            ha.iter().zip(hb).map(|(x, y)| cmp_rings(x, y)).find(|o| o.is_ne()).unwrap_or(ha.len().cmp(&hb.len()))
        })
    });
    MultiPolygon::new(polys)
}

/// Column `name` of `batch` as `T` (`Float64Array`, `StringArray`, ...); the error names the column and what
/// was expected.
pub fn column<T: Array + Clone + 'static>(batch: &RecordBatch, name: &str) -> Result<T> {
    downcast(batch.column_by_name(name).with_context(|| format!("no `{name}` column"))?, name)
}

/// Column `name` of a whole table as `T`: the column alone, concatenated when the table has several batches.
pub fn table_column<T: Array + Clone + 'static>(t: &Table, name: &str) -> Result<T> {
    downcast(&whole_column(t, name)?, name)
}

/// Column `name` of a whole table (see [`table_column`]).
pub fn whole_column(t: &Table, name: &str) -> Result<ArrayRef> {
    let field = t.schema().field_with_name(name).map_err(|_| anyhow::anyhow!("no `{name}` column"))?;
    let parts: Vec<&ArrayRef> = t.batches().iter().filter_map(|b| b.column_by_name(name)).collect();
    Ok(match parts.as_slice() {
        [] => arrow_array::new_empty_array(field.data_type()),
        [one] => (*one).clone(),
        _ => arrow_select::concat::concat(&parts.iter().map(|a| a.as_ref()).collect::<Vec<_>>())?,
    })
}

fn downcast<T: Array + Clone + 'static>(col: &ArrayRef, name: &str) -> Result<T> {
    col.as_any().downcast_ref::<T>().cloned().with_context(|| {
        format!(
            "column `{name}` is {}, not {}",
            col.data_type(),
            std::any::type_name::<T>().rsplit("::").next().unwrap_or("")
        )
    })
}

/// Where each row of a table is among its batches, for reading a row by its number without a concatenated
/// copy of the column.
///
/// ```
/// # use std::sync::Arc;
/// # use arrow_array::{Int64Array, RecordBatch};
/// let batch = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1, 2, 3])) as _)]).unwrap();
/// let t = flowrun_engine::Table::try_new(batch.schema(), vec![batch.slice(0, 2), batch.slice(2, 1)]).unwrap();
/// assert_eq!(flowrun_pv::geom::RowIndex::of(&t).locate(2), (1, 0)); // row 2: the second batch's first
/// ```
pub struct RowIndex {
    /// The first row of each batch.
    starts: Vec<usize>,
}

impl RowIndex {
    /// The batches of `t`.
    pub fn of(t: &Table) -> Self {
        let starts = t.batches().iter().scan(0, |next, b| Some(std::mem::replace(next, *next + b.num_rows())));
        RowIndex { starts: starts.collect() }
    }

    /// Row `i` of the table as (batch, row within that batch).
    pub fn locate(&self, i: usize) -> (usize, usize) {
        let b = self.starts.partition_point(|&s| s <= i) - 1;
        (b, i - self.starts[b])
    }
}

/// The rows of `t` whose `keep` is true, batch by batch (`keep` has one entry per row, in order); `t`
/// itself when every row is kept. Taken by value: a table nobody else holds frees each batch once its kept
/// rows are copied ([`Table::into_batches`]), so the input and the result need not both be held whole.
pub fn filter_rows(t: Table, keep: &BooleanArray) -> Result<Table> {
    if keep.false_count() == 0 {
        return Ok(t);
    }
    let (schema, mut start) = (t.schema().clone(), 0);
    let mut out = Vec::with_capacity(t.batches().len());
    for b in t.into_batches() {
        out.push(arrow_select::filter::filter_record_batch(&b, &keep.slice(start, b.num_rows()))?);
        start += b.num_rows();
    }
    Ok(Table::try_new(schema, out)?)
}

/// An R-tree of bounding boxes, each with its row.
///
/// ```
/// use geo::{Rect, coord};
/// let tree = flowrun_pv::geom::bbox_tree([(7, Rect::new(coord! { x: 0.0, y: 0.0 }, coord! { x: 1.0, y: 1.0 }))]);
/// assert_eq!(tree.locate_at_point(&[0.5, 0.5]).map(|b| b.data), Some(7));
/// ```
pub fn bbox_tree(
    boxes: impl IntoIterator<Item = (usize, Rect<f64>)>,
) -> RTree<GeomWithData<Rectangle<[f64; 2]>, usize>> {
    let boxes = boxes
        .into_iter()
        .map(|(i, b)| GeomWithData::new(Rectangle::from_corners([b.min().x, b.min().y], [b.max().x, b.max().y]), i))
        .collect();
    RTree::bulk_load(boxes)
}

/// The bounding box of each geometry, with its index (empty geometries left out): what [`bbox_tree`] takes.
pub fn boxes<'a>(
    geoms: impl IntoIterator<Item = &'a Option<Geometry<f64>>>,
) -> impl Iterator<Item = (usize, Rect<f64>)> {
    geoms.into_iter().enumerate().filter_map(|(i, g)| Some((i, bbox(g.as_ref()?)?)))
}

/// A table made batch by batch from `t`'s: `f` gets each batch in order (a table without batches gives it
/// one empty batch, so the result has `f`'s columns all the same).
pub fn map_batches(t: &Table, mut f: impl FnMut(&RecordBatch) -> Result<RecordBatch>) -> Result<Table> {
    let empty = [RecordBatch::new_empty(t.schema().clone())];
    let batches = if t.batches().is_empty() { &empty[..] } else { t.batches() };
    let out = batches.iter().map(&mut f).collect::<Result<Vec<_>>>()?;
    Ok(Table::try_new(out[0].schema(), out)?)
}

/// Replaces (or appends) column `name` of `batch`.
pub fn with_column(batch: &RecordBatch, field: Field, array: ArrayRef) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    match fields.iter().position(|f| f.name() == field.name()) {
        Some(i) => {
            fields[i] = field;
            columns[i] = array;
        }
        None => {
            fields.push(field);
            columns.push(array);
        }
    }
    let schema = Arc::new(arrow_schema::Schema::new_with_metadata(fields, schema.metadata().clone()));
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::polygon;

    #[test]
    fn a_table_without_batches_is_mapped_to_the_new_columns() {
        let t = Table::try_new(Arc::new(arrow_schema::Schema::new(vec![wkb_field("g", true, None)])), vec![]).unwrap();
        let added = Field::new("n", DataType::Float64, true);
        let out =
            map_batches(&t, |b| with_column(b, added.clone(), arrow_array::new_null_array(&DataType::Float64, 0)));
        let out = out.unwrap();
        assert_eq!((out.num_rows(), out.schema().fields().len()), (0, 2));
    }

    #[test]
    fn a_row_is_found_in_its_batch_past_empty_ones() {
        let b = RecordBatch::try_from_iter([("x", Arc::new(arrow_array::Int64Array::from(vec![1, 2, 3])) as ArrayRef)])
            .unwrap();
        let parts = vec![b.slice(0, 0), b.slice(0, 0), b.slice(0, 2), b.slice(0, 0), b.slice(2, 1), b.slice(0, 0)];
        let at = RowIndex::of(&Table::try_new(b.schema(), parts).unwrap());
        assert_eq!([0, 1, 2].map(|i| at.locate(i)), [(2, 0), (2, 1), (4, 0)]);
    }

    use crate::testing::square as cell;

    #[test]
    fn geodesic_area_matches_known_values() {
        let a = geodesic_area(&cell(0.0, 0.0, 1.0));
        assert!((a - 12_308_778_361.0).abs() / 12_308_778_361.0 < 1e-4, "{a}");
        let b = geodesic_area(&cell(10.0, 50.0, 0.01));
        assert!((b - 797_383.0).abs() / 797_383.0 < 1e-4, "{b}");
        assert_eq!(geodesic_area(&Geometry::Point(Point::new(1.0, 2.0))), 0.0);
    }

    #[test]
    fn canonical_form_does_not_depend_on_ring_start_or_order() {
        let a =
            Polygon::new(LineString::from(vec![(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.0, 0.0)]), vec![]);
        let b = Polygon::new(LineString::from(vec![(5.0, 5.0), (6.0, 5.0), (6.0, 6.0), (5.0, 5.0)]), vec![]);
        // the same shapes, rings starting elsewhere and turning the other way, polygons swapped
        let a2 =
            Polygon::new(LineString::from(vec![(1.0, 1.0), (1.0, 0.0), (0.0, 0.0), (0.0, 1.0), (1.0, 1.0)]), vec![]);
        let b2 = Polygon::new(LineString::from(vec![(6.0, 6.0), (5.0, 5.0), (6.0, 5.0), (6.0, 6.0)]), vec![]);
        let one = canonical(MultiPolygon::new(vec![a, b]));
        let two = canonical(MultiPolygon::new(vec![b2, a2]));
        assert_eq!(to_wkb(&one.into()), to_wkb(&two.into()));
    }

    #[test]
    fn a_sliver_measures_next_to_nothing_not_the_rest_of_the_globe() {
        // from India's polygons in Kalianpur 1975, reprojected: planar area 2e-20, ellipsoidal -3.9e-6 m2
        let sliver = Polygon::new(
            LineString::from(vec![
                (72.94579041724302, 27.89987420212488),
                (72.94579041721391, 27.899874202066673),
                (72.94579041792696, 27.899874202066673),
                (72.94579041724302, 27.89987420212488),
            ]),
            vec![],
        );
        assert!(geodesic_area(&sliver.into()) < 1e-3);
    }

    #[test]
    fn clockwise_rings_measure_the_same_as_counter_clockwise_ones() {
        let Geometry::Polygon(p) = cell(10.0, 50.0, 0.01) else { unreachable!() };
        let mut exterior = p.exterior().clone();
        exterior.0.reverse();
        let clockwise = Geometry::Polygon(geo::Polygon::new(exterior, vec![]));
        let b = geodesic_area(&clockwise);
        assert!((b - 797_383.0).abs() / 797_383.0 < 1e-4, "{b}");
    }

    #[test]
    fn wkb_round_trip_drops_z() {
        let g = cell(1.0, 2.0, 0.5);
        assert_eq!(from_wkb(&to_wkb(&g)).unwrap().unwrap(), g);
        // a PointZ
        let mut z = vec![1u8];
        z.extend_from_slice(&1001u32.to_le_bytes());
        for v in [1.0f64, 2.0, 3.0] {
            z.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(from_wkb(&z).unwrap().unwrap(), Geometry::Point(Point::new(1.0, 2.0)));
    }

    #[test]
    fn bow_tie_is_repaired_not_dropped() {
        let bow: Polygon<f64> =
            polygon![(x: 0.0, y: 0.0), (x: 1.0, y: 1.0), (x: 1.0, y: 0.0), (x: 0.0, y: 1.0), (x: 0.0, y: 0.0)];
        let (fixed, changed) = repair(bow.into());
        assert_eq!(changed, Repair::Repaired);
        assert!(fixed.is_valid());
        assert!((fixed.unsigned_area() - 0.5).abs() < 1e-9);
        let (same, changed) = repair(cell(0.0, 0.0, 1.0));
        assert_eq!(changed, Repair::Valid);
        // a hole outside its shell becomes a polygon of its own (as GEOS makes it), not dropped
        let outside_hole = Polygon::new(
            LineString::from(vec![(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.0, 0.0)]),
            vec![LineString::from(vec![(2.0, 0.0), (2.0, 1.0), (3.0, 1.0), (3.0, 0.0), (2.0, 0.0)])],
        );
        let (fixed, changed) = repair(outside_hole.into());
        assert_eq!(changed, Repair::Repaired);
        assert!((fixed.unsigned_area() - 2.0).abs() < 1e-9, "{fixed:?}");
        // points on one line: no area to keep
        let flat = Polygon::new(LineString::from(vec![(11.0, 50.0), (11.5, 50.5), (12.0, 51.0), (11.0, 50.0)]), vec![]);
        assert_eq!(repair(flat.into()).1, Repair::Unrepairable);
        let spike =
            Polygon::new(LineString::from(vec![(11.0, 50.0), (11.5, 50.5), (11.0, 50.0), (11.0, 50.0)]), vec![]);
        assert_eq!(repair(spike.into()).1, Repair::Unrepairable);
        assert_eq!(same, cell(0.0, 0.0, 1.0));
    }
}
