//! Countries: Natural Earth admin-0 polygons (`ADM0_A3`, 1:50m by default), the centroid join, and
//! per-country statistics.
//!
//! The join (`country_method`):
//! - `"within"` (the default): the country whose polygon holds the installation's centroid. A centroid in
//!   no polygon (at sea, or outside a coastline the map simplifies) gets a **null country**: the join never
//!   guesses.
//! - `"nearest"`: the same, and a centroid in no polygon gets the nearest country whose border is within
//!   `country_max_distance_km` (geodesic distance to the nearest point of the polygon, found in
//!   lon/lat degrees); farther than that, null.
//!
//! Every row says how it was joined: `country_method` (`within`, `nearest`, or null) and
//! `country_distance_m` (0 for `within`, the distance for `nearest`, null when no country was given).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use flowrun_engine::{Table, Value, ctx, node};
use geo::algorithm::indexed::IntervalTreeMultiPolygon;
use geo::orient::{Direction, Orient};
use geo::{Closest, ClosestPoint, Contains, Distance, Geodesic, Geometry, MultiPolygon, Point};
use rayon::prelude::*;
use rstar::AABB;
use serde::{Deserialize, Serialize};

use super::fetch::{DatasetFiles, Mirror, Repositories, fetch};
use super::geom::{self, column, geometries, geometry_index, with_column};
use super::manifest::Dataset;
use super::read::raw_table;

/// How a centroid is joined to a country (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Value)]
#[serde(rename_all = "lowercase")]
pub enum CountryMethod {
    /// The polygon holding the centroid, else null.
    Within,
    /// The polygon holding the centroid, else the nearest within `country_max_distance_km`, else null.
    Nearest,
}

/// The country polygons' files (the `countries` dataset of the config; from the mirror when given).
#[node(tags(stage = "source"))]
pub fn country_files(countries: &Dataset, mirror: &Mirror, repositories: &Repositories) -> Result<DatasetFiles> {
    let mut d = countries.clone();
    if d.key.is_empty() {
        d.key = "natural_earth_admin0".into();
    }
    d.validate()?;
    fetch(&d, mirror, repositories)
}

/// Country polygons with `country_code` (ADM0_A3, which unlike ISO_A3 is never -99) and `country_name`.
#[node(tags(stage = "source"))]
pub fn country_polygons(country_files: &DatasetFiles) -> Result<Table> {
    let raw = raw_table(country_files)?;
    let batch = raw.concat()?;
    let pick = |names: &[&str]| -> Result<arrow_array::ArrayRef> {
        names
            .iter()
            .find_map(|n| batch.column_by_name(n).cloned())
            .with_context(|| format!("the country file has none of the columns {names:?}"))
    };
    let code = arrow_cast::cast(&pick(&["ADM0_A3", "adm0_a3"])?, &DataType::Utf8)?;
    let name = arrow_cast::cast(&pick(&["NAME", "ADMIN", "name"])?, &DataType::Utf8)?;
    let gi = geometry_index(&raw)?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("country_code", DataType::Utf8, true),
        Field::new("country_name", DataType::Utf8, true),
        raw.schema().field(gi).clone(),
    ]));
    Ok(Table::from_batch(RecordBatch::try_new(schema, vec![code, name, batch.column(gi).clone()])?))
}

/// Joins each installation's centroid to a country (see the module documentation).
pub fn locate(t: &Table, countries: &Table, method: CountryMethod, max_distance_km: f64) -> Result<Table> {
    let cb = countries.concat()?;
    let cgeoms = geometries(cb.column(geometry_index(countries)?))?;
    let codes: StringArray = column(&cb, "country_code")?;
    let names: StringArray = column(&cb, "country_name")?;
    let tree = geom::bbox_tree(geom::boxes(&cgeoms));
    // each country's edges in an interval tree on y (geo's `IntervalTreeMultiPolygon`): a point is tested
    // against the edges at its latitude only, not every vertex of the country; rings are oriented first
    // (exteriors counter-clockwise, holes clockwise) so that the winding number puts a hole's points outside
    let indexed: Vec<Option<IntervalTreeMultiPolygon<f64>>> = cgeoms
        .par_iter()
        .map(|g| match g {
            Some(Geometry::Polygon(p)) => {
                Some(IntervalTreeMultiPolygon::new(&MultiPolygon(vec![p.orient(Direction::Default)])))
            }
            Some(Geometry::MultiPolygon(mp)) => Some(IntervalTreeMultiPolygon::new(&mp.orient(Direction::Default))),
            _ => None,
        })
        .collect();
    let within = |p: &Point<f64>| {
        tree.locate_in_envelope_intersecting(&AABB::from_point([p.x(), p.y()]))
            .map(|c| c.data)
            .filter(|&c| indexed[c].as_ref().is_some_and(|poly| poly.contains(p)))
            .min()
    };
    let nearest = |p: &Point<f64>| -> Option<(usize, f64)> {
        // candidates: polygons whose bounding box is within the distance, in degrees (wider near the poles)
        let dlat = max_distance_km / 110.5;
        let dlon = (max_distance_km / (111.3 * p.y().to_radians().cos().max(0.01))).min(180.0);
        let env = AABB::from_corners([p.x() - dlon, p.y() - dlat], [p.x() + dlon, p.y() + dlat]);
        tree.locate_in_envelope_intersecting(&env)
            .filter_map(|c| {
                let closest = match cgeoms[c.data].as_ref()?.closest_point(p) {
                    Closest::Intersection(q) | Closest::SinglePoint(q) => q,
                    Closest::Indeterminate => return None,
                };
                Some((c.data, Geodesic.distance(*p, closest)))
            })
            .filter(|(_, d)| *d <= max_distance_km * 1000.0)
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
    };
    fn text(a: &StringArray, c: usize) -> Option<&str> {
        (!a.is_null(c)).then(|| a.value(c))
    }
    // batch by batch: the output shares the input's columns and adds four (no copy of the table)
    let (mut counts, mut farthest) = (BTreeMap::new(), 0.0f64);
    let out = geom::map_batches(t, |batch| {
        let (lat, lon): (Float64Array, Float64Array) = (column(batch, "centroid_lat")?, column(batch, "centroid_lon")?);
        // (country index, method, distance in m)
        let found: Vec<Option<(usize, &str, f64)>> = (0..batch.num_rows())
            .into_par_iter()
            .map(|i| {
                if lat.is_null(i) || lon.is_null(i) {
                    return None;
                }
                let p = Point::new(lon.value(i), lat.value(i));
                match (within(&p), method) {
                    (Some(c), _) => Some((c, "within", 0.0)),
                    (None, CountryMethod::Nearest) => nearest(&p).map(|(c, d)| (c, "nearest", d)),
                    (None, CountryMethod::Within) => None,
                }
            })
            .collect();
        for f in &found {
            *counts.entry(f.map(|f| f.1)).or_insert(0usize) += 1;
            farthest = f.map_or(farthest, |f| farthest.max(f.2));
        }
        let code: StringArray = found.iter().map(|f| f.and_then(|(c, _, _)| text(&codes, c))).collect();
        let name: StringArray = found.iter().map(|f| f.and_then(|(c, _, _)| text(&names, c))).collect();
        let how: StringArray = found.iter().map(|f| f.map(|(_, m, _)| m)).collect();
        let distance: Float64Array = found.iter().map(|f| f.map(|(_, _, d)| d)).collect();
        let b = with_column(batch, Field::new("country_code", DataType::Utf8, true), Arc::new(code))?;
        let b = with_column(&b, Field::new("country_name", DataType::Utf8, true), Arc::new(name))?;
        let b = with_column(&b, Field::new("country_method", DataType::Utf8, true), Arc::new(how))?;
        with_column(&b, Field::new("country_distance_m", DataType::Float64, true), Arc::new(distance))
    })?;
    let by = |m: Option<&str>| counts.get(&m).copied().unwrap_or(0);
    let nearest_note = match method {
        CountryMethod::Nearest => format!(", {} by the nearest border (at most {farthest:.0} m)", by(Some("nearest"))),
        CountryMethod::Within => String::new(),
    };
    ctx::note(format!(
        "countries: {} rows within a country{nearest_note}, {} without a country",
        by(Some("within")),
        by(None)
    ));
    Ok(out)
}

/// The deduplicated installations with their country: the `prepared_pv_dedup` table.
#[node(tags(stage = "prepared"))]
pub fn located(
    deduplicated: &Table,
    country_polygons: &Table,
    country_method: CountryMethod,
    country_max_distance_km: f64,
) -> Result<Table> {
    locate(deduplicated, country_polygons, country_method, country_max_distance_km)
}

/// Per country and dataset (`prepared_country_pv_stats`): installations (`polygons` of them with a
/// geodesic area, `points` without), `area_m2_geodesic` (the polygons' geodesic areas), `area_m2_source`
/// (the source's own area column, where the dataset has one), and `total_area_m2` / `mean_area_m2` over
/// every installation: its geodesic area when it is a polygon, else its source area, else nothing (the mean
/// is over the installations that have an area).
/// `area_basis` says which of the two the total sums (`geodesic`, `source`, `geodesic+source`, `none`),
/// and `rows_without_area` counts the installations that add nothing.
#[node(tags(stage = "prepared"))]
pub fn country_stats(located: &Table) -> Result<Table> {
    #[derive(Default)]
    struct Group {
        name: Option<String>,
        installations: i64,
        polygons: i64,
        geodesic: f64,
        source: f64,
        total: f64,
        from_geodesic: i64,
        from_source: i64,
    }
    let mut groups: BTreeMap<(Option<String>, String), Group> = BTreeMap::new();
    // batch by batch (no concatenated copy of the table)
    for batch in located.batches() {
        let s = |n: &str| column::<StringArray>(batch, n);
        let (country, dataset, name) = (s("country_code")?, s("dataset_name")?, s("country_name")?);
        let geodesic: Float64Array = column(batch, "area_m2")?;
        let source: Float64Array = column(batch, "area_m2_source")?;
        for i in 0..batch.num_rows() {
            let key = ((!country.is_null(i)).then(|| country.value(i).to_string()), dataset.value(i).to_string());
            let g = groups.entry(key).or_default();
            if g.name.is_none() && !name.is_null(i) {
                g.name = Some(name.value(i).to_string());
            }
            g.installations += 1;
            let a = (!geodesic.is_null(i)).then(|| geodesic.value(i)).filter(|a| *a > 0.0);
            let src = (!source.is_null(i)).then(|| source.value(i));
            g.source += src.unwrap_or(0.0);
            match (a, src) {
                (Some(a), _) => {
                    g.polygons += 1;
                    g.geodesic += a;
                    g.total += a;
                    g.from_geodesic += 1;
                }
                (None, Some(src)) => {
                    g.total += src;
                    g.from_source += 1;
                }
                (None, None) => {}
            }
        }
    }
    let rows: Vec<_> = groups.into_iter().collect();
    let basis = |g: &Group| match (g.from_geodesic > 0, g.from_source > 0) {
        (true, true) => "geodesic+source",
        (true, false) => "geodesic",
        (false, true) => "source",
        (false, false) => "none",
    };
    let ints = |f: &dyn Fn(&Group) -> i64| Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, g)| f(g))));
    let floats = |f: &dyn Fn(&Group) -> f64| Arc::new(Float64Array::from_iter_values(rows.iter().map(|(_, g)| f(g))));
    let schema = Arc::new(Schema::new(vec![
        Field::new("country_code", DataType::Utf8, true),
        Field::new("country_name", DataType::Utf8, true),
        Field::new("dataset_name", DataType::Utf8, false),
        Field::new("installations", DataType::Int64, false),
        Field::new("polygons", DataType::Int64, false),
        Field::new("points", DataType::Int64, false),
        Field::new("area_m2_geodesic", DataType::Float64, false),
        Field::new("area_m2_source", DataType::Float64, false),
        Field::new("total_area_m2", DataType::Float64, false),
        Field::new("mean_area_m2", DataType::Float64, false),
        Field::new("area_basis", DataType::Utf8, false),
        Field::new("rows_without_area", DataType::Int64, false),
    ]));
    Ok(Table::from_batch(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(rows.iter().map(|((c, _), _)| c.as_deref()).collect::<StringArray>()),
            Arc::new(rows.iter().map(|(_, g)| g.name.as_deref()).collect::<StringArray>()),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|((_, d), _)| d.as_str()))),
            ints(&|g| g.installations),
            ints(&|g| g.polygons),
            ints(&|g| g.installations - g.polygons),
            floats(&|g| g.geodesic),
            floats(&|g| g.source),
            floats(&|g| g.total),
            floats(&|g| g.total / (g.from_geodesic + g.from_source).max(1) as f64),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, g)| basis(g)))),
            ints(&|g| g.installations - g.from_geodesic - g.from_source),
        ],
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geom;
    use crate::testing::{measured, square, strings};

    /// A country table: (code, name, polygon) per row.
    fn countries_of(rows: &[(&str, &str, Geometry<f64>)]) -> Table {
        let schema = Arc::new(Schema::new(vec![
            Field::new("country_code", DataType::Utf8, true),
            Field::new("country_name", DataType::Utf8, true),
            geom::wkb_field("geometry", true, None),
        ]));
        let geometries: Vec<Option<Geometry<f64>>> = rows.iter().map(|r| Some(r.2.clone())).collect();
        Table::from_batch(
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                    geom::wkb_array(&geometries),
                ],
            )
            .unwrap(),
        )
    }

    fn countries() -> Table {
        countries_of(&[("AAA", "Aland", square(0.0, 0.0, 10.0)), ("BBB", "Beland", square(10.0, 0.0, 10.0))])
    }

    #[test]
    fn centroids_join_to_the_polygon_holding_them_or_to_null() {
        let sites = measured(&[
            ("d", "d:1", square(1.0, 1.0, 0.01)),
            ("d", "d:2", square(15.0, 5.0, 0.01)),
            ("d", "d:3", square(50.0, 50.0, 0.01)), // at sea
            ("d", "d:4", square(20.02, 5.0, 0.01)), // 2.7 km east of BBB's border
        ]);
        let sites = crate::standardize::measure_table(&sites).unwrap(); // adds the centroids
        let located = locate(&sites, &countries(), CountryMethod::Within, 10.0).unwrap();
        assert_eq!(strings(&located, "country_code"), vec![Some("AAA".into()), Some("BBB".into()), None, None]);
        assert_eq!(strings(&located, "country_name")[1], Some("Beland".into()));
        assert_eq!(strings(&located, "country_method")[0], Some("within".into()));

        let near = locate(&sites, &countries(), CountryMethod::Nearest, 10.0).unwrap();
        assert_eq!(strings(&near, "country_code")[3], Some("BBB".into()), "within 10 km of BBB");
        assert_eq!(strings(&near, "country_method")[3], Some("nearest".into()));
        assert_eq!(strings(&near, "country_code")[2], None, "far at sea stays null");
        let d: Float64Array = column(&near.concat().unwrap(), "country_distance_m").unwrap();
        assert!((d.value(3) - 2_770.0).abs() < 50.0, "{}", d.value(3));
        assert_eq!(d.value(0), 0.0);
        let near1 = locate(&sites, &countries(), CountryMethod::Nearest, 1.0).unwrap();
        assert_eq!(strings(&near1, "country_code")[3], None, "not within 1 km");
    }

    /// A country with a hole (an enclave) whose rings turn the same way, and one of two islands: a point
    /// in the hole is not in the country, whatever the file's ring orientation; each island counts.
    #[test]
    fn holes_and_islands_whatever_the_ring_orientation() {
        use geo::{LineString, MultiPolygon, Polygon};
        let ring = |x0: f64, y0: f64, s: f64| {
            LineString::from(vec![(x0, y0), (x0 + s, y0), (x0 + s, y0 + s), (x0, y0 + s), (x0, y0)])
        };
        let holed = Polygon::new(ring(0.0, 0.0, 10.0), vec![ring(4.0, 4.0, 2.0)]); // both counter-clockwise
        let islands =
            MultiPolygon(vec![Polygon::new(ring(20.0, 0.0, 2.0), vec![]), Polygon::new(ring(30.0, 0.0, 2.0), vec![])]);
        let countries = countries_of(&[
            ("HOL", "Holed", Geometry::Polygon(holed)),
            ("ISL", "Islands", Geometry::MultiPolygon(islands)),
        ]);
        let sites = measured(&[
            ("d", "d:1", square(1.0, 1.0, 0.01)),
            ("d", "d:2", square(5.0, 5.0, 0.01)), // in the hole
            ("d", "d:3", square(31.0, 1.0, 0.01)),
            ("d", "d:4", square(25.0, 1.0, 0.01)), // between the islands
        ]);
        let sites = crate::standardize::measure_table(&sites).unwrap();
        let located = locate(&sites, &countries, CountryMethod::Within, 10.0).unwrap();
        assert_eq!(strings(&located, "country_code"), vec![Some("HOL".into()), None, Some("ISL".into()), None]);
    }
}
