//! [`Table`]: the value nodes exchange for tabular data: Arrow record batches sharing one schema.
//!
//! Geometry columns are Arrow binary columns holding WKB with the `geoarrow.wkb` extension type in their
//! field metadata, so any Arrow consumer (DuckDB, GeoPandas through pyarrow, the geoarrow crates) knows
//! what they are. A table is cached as an Arrow IPC stream, which keeps schema and field metadata.
//!
//! A column whose field metadata has [`VOLATILE`] = `"true"` (a processing timestamp, say) is stored and
//! passed on like any other, but left out of the table's identity: a node that re-runs and produces the
//! same table up to its volatile columns does not make its consumers run (early cut-off), and a lake table
//! that differs only there is not rewritten.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};

use crate::value::{CodecError, Value};

/// Field metadata key that marks a column as volatile (see the [module documentation](self)).
pub const VOLATILE: &str = "flowrun.volatile";

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
        self.schema == other.schema
            && self.num_rows() == other.num_rows()
            && matches!((self.concat(), other.concat()), (Ok(a), Ok(b)) if a == b)
    }
}

impl Table {
    /// A table of `batches`, which must all have `schema`.
    pub fn try_new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Table, ArrowError> {
        if let Some(b) = batches.iter().find(|b| b.schema() != schema) {
            let message = format!("batch schema {:?} differs from table schema {schema:?}", b.schema());
            return Err(ArrowError::SchemaError(message));
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

    /// The batches, each handed over once: a table nobody else holds gives them away, so that a batch's memory
    /// can go when the caller drops it (a node that takes its input by value can filter or transform it
    /// batch by batch in place of holding it whole beside its result); a shared table's are cloned. A column
    /// buffer shared by several batches (one table sliced into batches, or a table loaded from the cache,
    /// whose batches point into one buffer) goes with the last of them. The run hands a node its input when
    /// the node is the input's last reader, in the fan-out scope of the node that made it (not in a branch
    /// below), and the input is not a run's output left unstored; readers that run at the same time each get
    /// a clone.
    pub fn into_batches(mut self) -> impl Iterator<Item = RecordBatch> {
        let empty = RecordBatch::new_empty(self.schema.clone());
        (0..self.batches.len()).map(move |k| match Arc::get_mut(&mut self.batches) {
            Some(batches) => std::mem::replace(&mut batches[k], empty.clone()),
            None => self.batches[k].clone(),
        })
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
    pub fn write_ipc(&self, out: impl std::io::Write) -> Result<(), ArrowError> {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(out, &self.schema)?;
        self.batches.iter().try_for_each(|b| w.write(b))?;
        w.finish()
    }
}

impl Value for Table {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.encode_to(out)
    }
    fn encode_to(&self, out: &mut dyn std::io::Write) -> Result<(), CodecError> {
        self.write_ipc(out).map_err(CodecError::new)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        Table::decode_owned(bytes::Bytes::copy_from_slice(bytes))
    }
    /// Zero-copy: the columns point into `bytes` (arrow's stream decoder copies only a buffer that is not
    /// aligned for its type).
    fn decode_owned(bytes: bytes::Bytes) -> Result<Self, CodecError> {
        let mut bytes = arrow_buffer::Buffer::from(bytes);
        let mut decoder = arrow_ipc::reader::StreamDecoder::new();
        let mut batches = Vec::new();
        while !bytes.is_empty() {
            batches.extend(decoder.decode(&mut bytes).map_err(CodecError::new)?);
        }
        decoder.finish().map_err(CodecError::new)?;
        let schema = decoder.schema().ok_or_else(|| CodecError::new("an Arrow IPC stream without a schema"))?;
        Table::try_new(schema, batches).map_err(CodecError::new)
    }
    fn rows(&self) -> Option<u64> {
        Some(self.num_rows() as u64)
    }
    /// The hash of the table without its volatile columns, when it has any (else the encoding's hash).
    fn identity(&self) -> Option<Result<blake3::Hash, String>> {
        let fields = self.schema.fields();
        let stable: Vec<usize> =
            (0..fields.len()).filter(|&i| fields[i].metadata().get(VOLATILE).is_none_or(|v| v != "true")).collect();
        if stable.len() == fields.len() {
            return None;
        }
        let project = || -> Result<blake3::Hash, ArrowError> {
            let schema = Arc::new(self.schema.project(&stable)?);
            let batches = self.batches.iter().map(|b| b.project(&stable)).collect::<Result<Vec<_>, _>>()?;
            // the stream goes straight into the hasher: no second copy of the table in memory
            let mut hasher = blake3::Hasher::new();
            Table::try_new(schema, batches)?.write_ipc(&mut hasher)?;
            Ok(hasher.finalize())
        };
        Some(project().map_err(|e| e.to_string()))
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
        assert_eq!(Table::decode_owned(bytes.clone().into()).unwrap(), t, "zero-copy from an owned buffer");
        assert_eq!(back.batches().len(), 2);
        assert_eq!(back.schema().field(1).metadata()["ARROW:extension:name"], "geoarrow.wkb");
        assert_eq!(back.rows(), Some(2));
    }

    #[test]
    fn volatile_columns_are_left_out_of_the_identity() {
        let volatile = Field::new("at", DataType::Utf8, false)
            .with_metadata(HashMap::from([(VOLATILE.to_string(), "true".to_string())]));
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), volatile]));
        let table = |id: i64, at: &str| {
            let cols: Vec<arrow_array::ArrayRef> =
                vec![Arc::new(Int64Array::from(vec![id])), Arc::new(arrow_array::StringArray::from(vec![at]))];
            Table::from_batch(RecordBatch::try_new(schema.clone(), cols).unwrap())
        };
        let id = |t: &Table| t.identity().unwrap().unwrap();
        assert_eq!(id(&table(1, "09:00")), id(&table(1, "10:00")), "only the volatile column differs");
        assert_ne!(id(&table(1, "09:00")), id(&table(2, "09:00")));
        let plain = Table::from_batch(
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
                vec![Arc::new(Int64Array::from(vec![1]))],
            )
            .unwrap(),
        );
        assert!(plain.identity().is_none(), "no volatile column: the encoding's hash is the identity");
    }

    #[test]
    fn mismatched_batch_is_refused() {
        let s1 = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let s2 = Arc::new(Schema::new(vec![Field::new("b", DataType::Int64, false)]));
        let b = RecordBatch::try_new(s2, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        assert!(Table::try_new(s1, vec![b]).is_err());
    }
}
