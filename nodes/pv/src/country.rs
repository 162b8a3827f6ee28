//! Countries: Natural Earth admin-0 polygons (`ADM0_A3`), the centroid join, per-country statistics.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use flowrun_engine::{Table, node};
use geo::{Contains, Geometry, Point};
use rayon::prelude::*;
use rstar::{AABB, RTree, primitives::GeomWithData, primitives::Rectangle};

use super::fetch::{DatasetFiles, Mirror, Repositories, fetch};
use super::geom::{self, geometries, geometry_index, with_column};
use super::manifest::Dataset;
use super::read::raw_table;

/// The country polygons' files (the `countries` dataset of the config; from the mirror when given).
#[node(tags(stage = "source"))]
pub fn country_files(countries: &Dataset, mirror: &Mirror, repositories: &Repositories) -> Result<DatasetFiles> {
    let mut d = countries.clone();
    if d.key.is_empty() {
        d.key = "natural_earth_admin0".into();
    }
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

/// Joins each installation's centroid to the country polygon containing it (null outside every polygon:
/// coastal points may fall outside the coarse 1:110m coastline; they are not given a wrong country).
pub fn locate(t: &Table, countries: &Table) -> Result<Table> {
    let cb = countries.concat()?;
    let cgeoms = geometries(cb.column(geometry_index(countries)?))?;
    let codes = cb.column(0).as_any().downcast_ref::<StringArray>().context("country_code")?.clone();
    let names = cb.column(1).as_any().downcast_ref::<StringArray>().context("country_name")?.clone();
    let items: Vec<GeomWithData<Rectangle<[f64; 2]>, usize>> = cgeoms
        .iter()
        .enumerate()
        .filter_map(|(i, g)| {
            let b = geom::bbox(g.as_ref()?)?;
            Some(GeomWithData::new(Rectangle::from_corners([b.min().x, b.min().y], [b.max().x, b.max().y]), i))
        })
        .collect();
    let tree = RTree::bulk_load(items);
    let batch = t.concat()?;
    let col = |n: &str| -> Result<Float64Array> {
        batch
            .column_by_name(n)
            .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned())
            .with_context(|| format!("no `{n}` column"))
    };
    let (lat, lon) = (col("centroid_lat")?, col("centroid_lon")?);
    let found: Vec<Option<usize>> = (0..batch.num_rows())
        .into_par_iter()
        .map(|i| {
            if lat.is_null(i) || lon.is_null(i) {
                return None;
            }
            let p = Point::new(lon.value(i), lat.value(i));
            tree.locate_in_envelope_intersecting(&AABB::from_point([p.x(), p.y()]))
                .map(|c| c.data)
                .filter(|&c| match &cgeoms[c] {
                    Some(Geometry::Polygon(poly)) => poly.contains(&p),
                    Some(Geometry::MultiPolygon(mp)) => mp.contains(&p),
                    _ => false,
                })
                .min()
        })
        .collect();
    let code: StringArray = found.iter().map(|f| f.and_then(|c| (!codes.is_null(c)).then(|| codes.value(c)))).collect();
    let name: StringArray = found.iter().map(|f| f.and_then(|c| (!names.is_null(c)).then(|| names.value(c)))).collect();
    let batch = with_column(&batch, Field::new("country_code", DataType::Utf8, true), Arc::new(code))?;
    let batch = with_column(&batch, Field::new("country_name", DataType::Utf8, true), Arc::new(name))?;
    Ok(Table::from_batch(batch))
}

/// The deduplicated installations with their country: the `prepared_pv_dedup` table.
#[node(tags(stage = "prepared"))]
pub fn located(deduplicated: &Table, country_polygons: &Table) -> Result<Table> {
    locate(deduplicated, country_polygons)
}

/// Per country and dataset: installations, total and mean area (m²): `prepared_country_pv_stats`.
#[node(tags(stage = "prepared"))]
pub fn country_stats(located: &Table) -> Result<Table> {
    let batch = located.concat()?;
    let s = |n: &str| -> Result<StringArray> {
        batch
            .column_by_name(n)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
            .with_context(|| format!("no `{n}` column"))
    };
    let (country, dataset) = (s("country_code")?, s("dataset_name")?);
    let name = s("country_name")?;
    let area = batch
        .column_by_name("area_m2")
        .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned())
        .context("no `area_m2` column")?;
    // (country code, dataset) -> (country name, count, total area)
    type Group = (Option<String>, i64, f64);
    let mut groups: BTreeMap<(Option<String>, String), Group> = BTreeMap::new();
    for i in 0..batch.num_rows() {
        let key = ((!country.is_null(i)).then(|| country.value(i).to_string()), dataset.value(i).to_string());
        let e = groups.entry(key).or_insert(((!name.is_null(i)).then(|| name.value(i).to_string()), 0, 0.0));
        e.1 += 1;
        e.2 += if area.is_null(i) { 0.0 } else { area.value(i) };
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("country_code", DataType::Utf8, true),
        Field::new("country_name", DataType::Utf8, true),
        Field::new("dataset_name", DataType::Utf8, false),
        Field::new("installations", DataType::Int64, false),
        Field::new("total_area_m2", DataType::Float64, false),
        Field::new("mean_area_m2", DataType::Float64, false),
    ]));
    let rows: Vec<_> = groups.into_iter().collect();
    Ok(Table::from_batch(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(rows.iter().map(|((c, _), _)| c.as_deref()).collect::<StringArray>()),
            Arc::new(rows.iter().map(|(_, (n, _, _))| n.as_deref()).collect::<StringArray>()),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|((_, d), _)| d.as_str()))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, (_, n, _))| *n))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|(_, (_, _, a))| *a))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|(_, (_, n, a))| a / *n as f64))),
        ],
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geom;
    use crate::testing::{measured, square, strings};

    #[test]
    fn centroids_join_to_the_polygon_holding_them_or_to_null() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("country_code", DataType::Utf8, true),
            Field::new("country_name", DataType::Utf8, true),
            geom::wkb_field("geometry", true, None),
        ]));
        let countries = Table::from_batch(
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from(vec!["AAA", "BBB"])),
                    Arc::new(StringArray::from(vec!["Aland", "Beland"])),
                    geom::wkb_array(&[Some(square(0.0, 0.0, 10.0)), Some(square(10.0, 0.0, 10.0))]),
                ],
            )
            .unwrap(),
        );
        let sites = measured(&[
            ("d", "d:1", square(1.0, 1.0, 0.01)),
            ("d", "d:2", square(15.0, 5.0, 0.01)),
            ("d", "d:3", square(50.0, 50.0, 0.01)), // at sea
        ]);
        let sites = crate::standardize::measure_table(&sites).unwrap(); // adds the centroids
        let located = locate(&sites, &countries).unwrap();
        assert_eq!(strings(&located, "country_code"), vec![Some("AAA".into()), Some("BBB".into()), None]);
        assert_eq!(strings(&located, "country_name")[1], Some("Beland".into()));
    }
}
