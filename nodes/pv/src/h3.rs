//! `indexed`: the H3 cell (h3o) of each installation's centroid, as a hex string column `h3_<res>`.

use std::sync::Arc;

use anyhow::{Result, bail};
use std::fmt::Write as _;

use arrow_array::builder::StringBuilder;
use arrow_array::{Array, Float64Array};
use arrow_schema::{DataType, Field};
use flowrun_engine::{Table, node};
use h3o::{CellIndex, LatLng, Resolution};
use rayon::prelude::*;

use super::geom::{map_batches, with_column};

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

/// Adds `h3_<res>`: the cell of the centroid (batch by batch, the other columns shared, not copied).
pub fn index_table(t: &Table, res: i64) -> Result<Table> {
    let r = resolution(res)?;
    let field = Field::new(h3_column(res), DataType::Utf8, true);
    map_batches(t, |batch| {
        let col = |n: &str| super::geom::column::<Float64Array>(batch, n);
        let (lat, lon) = (col("centroid_lat")?, col("centroid_lon")?);
        let cells: Vec<Option<CellIndex>> = (0..batch.num_rows())
            .into_par_iter()
            .map(|i| {
                let ll = (lat.is_valid(i) && lon.is_valid(i)).then(|| LatLng::new(lat.value(i), lon.value(i)));
                Some(ll?.ok()?.to_cell(r))
            })
            .collect();
        // a cell's string is its index in lower-case hex (15 characters), written straight into the column
        let mut hex = StringBuilder::with_capacity(cells.len(), cells.len() * 15);
        for c in &cells {
            match c {
                Some(c) => {
                    write!(hex, "{c}")?;
                    hex.append_value("");
                }
                None => hex.append_null(),
            }
        }
        with_column(batch, field.clone(), Arc::new(hex.finish()))
    })
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
