//! [`Table`]: the value nodes exchange for tabular data: Arrow record batches sharing one schema.
//!
//! Geometry columns are Arrow binary columns holding WKB with the `geoarrow.wkb` extension type in their
//! field metadata, so any Arrow consumer (DuckDB, GeoPandas through pyarrow, the geoarrow crates) knows
//! what they are. A table is cached as an Arrow IPC stream, which keeps schema and field metadata.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};

use crate::value::{CodecError, Value};

/// Arrow record batches with one schema. Cloning is cheap (columns are reference-counted).
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{Int64Array, RecordBatch};
/// use arrow_schema::{DataType, Field, Schema};
/// use flowrun_engine::{Table, Value};
/// let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
/// let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
/// let table = Table::from_batch(batch);
/// assert_eq!(table.num_rows(), 3);
/// let mut bytes = Vec::new();
/// table.encode(&mut bytes).unwrap();
/// assert_eq!(Table::decode(&bytes).unwrap(), table);
/// ```
#[derive(Debug, Clone)]
pub struct Table {
    schema: SchemaRef,
    batches: Arc<[RecordBatch]>,
}

impl PartialEq for Table {
    /// Same schema and same rows (batch boundaries do not matter).
    fn eq(&self, other: &Self) -> bool {
        if self.schema != other.schema || self.num_rows() != other.num_rows() {
            return false;
        }
        match (self.concat(), other.concat()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

impl Table {
    /// A table of `batches`, which must all have `schema`.
    pub fn try_new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Table, ArrowError> {
        for b in &batches {
            if b.schema() != schema {
                return Err(ArrowError::SchemaError(format!(
                    "batch schema {:?} differs from table schema {:?}",
                    b.schema(),
                    schema
                )));
            }
        }
        Ok(Table { schema, batches: batches.into() })
    }

    /// A table of one batch.
    pub fn from_batch(batch: RecordBatch) -> Table {
        Table { schema: batch.schema(), batches: Arc::from(vec![batch]) }
    }

    /// An empty table with `schema`.
    pub fn empty(schema: SchemaRef) -> Table {
        Table { schema, batches: Arc::from(Vec::new()) }
    }

    /// The schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The batches.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    /// Total row count.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// All rows as one batch.
    pub fn concat(&self) -> Result<RecordBatch, ArrowError> {
        arrow_select::concat::concat_batches(&self.schema, self.batches.iter())
    }

    /// Writes the table as an Arrow IPC stream.
    pub fn write_ipc(&self, out: &mut Vec<u8>) -> Result<(), ArrowError> {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(out, &self.schema)?;
        for b in self.batches.iter() {
            w.write(b)?;
        }
        w.finish()
    }

    /// Reads an Arrow IPC stream.
    pub fn read_ipc(bytes: &[u8]) -> Result<Table, ArrowError> {
        let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        Table::try_new(schema, batches)
    }
}

impl Value for Table {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.write_ipc(out).map_err(CodecError::new)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        Table::read_ipc(bytes).map_err(CodecError::new)
    }
    fn rows(&self) -> Option<u64> {
        Some(self.num_rows() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{BinaryArray, Int64Array};
    use arrow_schema::{DataType, Field, Schema};
    use std::collections::HashMap;

    #[test]
    fn ipc_keeps_field_metadata_and_batches() {
        let field = Field::new("geometry", DataType::Binary, true)
            .with_metadata(HashMap::from([("ARROW:extension:name".to_string(), "geoarrow.wkb".to_string())]));
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), field]));
        let b1 = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1])), Arc::new(BinaryArray::from(vec![Some(&b"\x01"[..])]))],
        )
        .unwrap();
        let t = Table::try_new(schema, vec![b1.clone(), b1]).unwrap();
        let mut bytes = Vec::new();
        t.encode(&mut bytes).unwrap();
        let back = Table::decode(&bytes).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.batches().len(), 2);
        assert_eq!(back.schema().field(1).metadata()["ARROW:extension:name"], "geoarrow.wkb");
        assert_eq!(back.rows(), Some(2));
    }

    #[test]
    fn mismatched_batch_is_refused() {
        let s1 = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let s2 = Arc::new(Schema::new(vec![Field::new("b", DataType::Int64, false)]));
        let b = RecordBatch::try_new(s2, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        assert!(Table::try_new(s1, vec![b]).is_err());
    }
}
