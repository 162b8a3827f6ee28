//! `indexed`: the H3 cell (h3o) of each installation's centroid, as a hex string column `h3_<res>`.

use std::sync::Arc;

use anyhow::{Result, bail};
use arrow_array::{Array, Float64Array, StringArray};
use arrow_schema::{DataType, Field};
use flowrun_engine::{Table, node};
use h3o::{LatLng, Resolution};
use rayon::prelude::*;

use super::geom::with_column;

/// Name of the H3 column at `res`.
pub fn h3_column(res: i64) -> String {
    format!("h3_{res}")
}

/// H3 resolution from an integer, with a clear error.
pub fn resolution(res: i64) -> Result<Resolution> {
    if !(0..=15).contains(&res) {
        bail!("h3_resolution must be between 0 and 15, got {res}");
    }
    Ok(Resolution::try_from(res as u8)?)
}

/// Adds `h3_<res>`: the cell of the centroid.
pub fn index_table(t: &Table, res: i64) -> Result<Table> {
    let r = resolution(res)?;
    let batch = t.concat()?;
    let col = |n: &str| super::geom::column::<Float64Array>(&batch, n);
    let (lat, lon) = (col("centroid_lat")?, col("centroid_lon")?);
    let cells: Vec<Option<String>> = (0..batch.num_rows())
        .into_par_iter()
        .map(|i| {
            if lat.is_null(i) || lon.is_null(i) {
                return None;
            }
            LatLng::new(lat.value(i), lon.value(i)).ok().map(|ll| ll.to_cell(r).to_string())
        })
        .collect();
    let arr = cells.iter().map(|c| c.as_deref()).collect::<StringArray>();
    Ok(Table::from_batch(with_column(&batch, Field::new(h3_column(res), DataType::Utf8, true), Arc::new(arr))?))
}

/// Indexes every installation with the H3 cell of its centroid at `h3_resolution` (default 12).
#[node(tags(stage = "prepared"))]
pub fn indexed(consolidated: &Table, h3_resolution: i64) -> Result<Table> {
    index_table(consolidated, h3_resolution)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bad_resolution_is_refused() {
        assert!(super::resolution(16).is_err());
        assert!(super::resolution(12).is_ok());
    }
}
