//! The PV-installation pipeline of `flows/doi_pv.toml`: solar-PV datasets published under DOIs,
//! harmonised into one deduplicated, H3-indexed, country-joined lakehouse.
//!
//! Nodes, in flow order (each a plain function, unit-tested on its own):
//! 1. [`manifest::datasets`]: the manifest's datasets, fanned out;
//! 2. [`fetch::files`]: a dataset's files, from a mirror or its repository (download, unzip, filter);
//! 3. [`read::raw`]: the files read into one table in their own CRS (`raw_<dataset>`);
//! 4. [`standardize::standardized`]: EPSG:4326, no Z, unified columns, repaired geometries;
//! 5. [`standardize::measured`]: geodesic area and centroid;
//! 6. [`consolidate::consolidated`]: all datasets in one table, exact duplicates removed
//!    (`stg_pv_consolidated`);
//! 7. [`h3::indexed`]: the H3 cell of each centroid;
//! 8. [`dedup::dedup_pairs`]: the candidate pairs of both modes and their overlap ratios;
//!    [`dedup::dedup_decisions`]: the rows each mode keeps; then [`dedup::dedup_overlap`] /
//!    [`dedup::dedup_same_cell`]: cross-dataset dedup (the flow's `dedup_mode` picks one), and
//!    [`dedup::dedup_comparison`];
//! 9. [`country::country_files`], [`country::country_polygons`], [`country::located`]: the country of each
//!    installation (`prepared_pv_dedup`), and [`country::country_stats`] (`prepared_country_pv_stats`).
//!
//! Supporting modules: [`geom`] (WKB, geodesic measures, repair), [`crs`] (reprojection) and
//! [`synthetic`] (generated datasets for benchmarks).

pub mod consolidate;
pub mod country;
pub mod crs;
pub mod dedup;
pub mod fetch;
pub mod geom;
pub mod h3;
pub mod manifest;
pub mod read;
pub mod stac;
pub mod standardize;
pub mod synthetic;

/// Makes sure this crate is linked into a binary (so its nodes are registered). Call it once from `main`.
pub fn link() {}

/// Small tables for the nodes' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use flowrun_engine::Table;
    use geo::{Geometry, Rect, coord};

    use super::geom;

    /// A square of side `d` degrees with its south-west corner at (x, y).
    pub fn square(x: f64, y: f64, d: f64) -> Geometry<f64> {
        Rect::new(coord! { x: x, y: y }, coord! { x: x + d, y: y + d }).to_polygon().into()
    }

    /// A `measured`-like table: dataset_name, unified_id, geometry, area_m2 (geodesic).
    pub fn measured(rows: &[(&str, &str, Geometry<f64>)]) -> Table {
        let geoms: Vec<Option<Geometry<f64>>> = rows.iter().map(|r| Some(r.2.clone())).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("dataset_name", DataType::Utf8, false),
            Field::new("unified_id", DataType::Utf8, false),
            geom::wkb_field("geometry", true, None),
            Field::new("area_m2", DataType::Float64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            geom::wkb_array(&geoms),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| geom::geodesic_area(&r.2)))),
        ];
        Table::from_batch(RecordBatch::try_new(schema, columns).unwrap())
    }

    /// The values of a string column.
    pub fn strings(t: &Table, column: &str) -> Vec<Option<String>> {
        let b = t.concat().unwrap();
        let a = arrow_cast::cast(b.column_by_name(column).unwrap(), &DataType::Utf8).unwrap();
        let a = a.as_any().downcast_ref::<StringArray>().unwrap();
        (0..a.len()).map(|i| (!a.is_null(i)).then(|| a.value(i).to_string())).collect()
    }

    use arrow_array::Array;
}
