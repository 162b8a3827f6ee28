//! Generic table nodes.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::sync::Arc;

use anyhow::Context;
use arrow_csv::reader::Format;
use flowrun_engine::{Collect, FilePath, Table, ctx, node};

/// Reads a CSV file with a header row into a table; column types are inferred from the first 1,000 rows.
/// A UTF-8 byte-order mark before the header is ignored.
#[node(tags(kind = "io"))]
pub fn read_csv(path: FilePath) -> anyhow::Result<Table> {
    let open = || -> anyhow::Result<BufReader<File>> {
        let mut f = File::open(&*path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut bom = [0u8; 3];
        let n = f.read(&mut bom)?;
        if n < 3 || bom != [0xEF, 0xBB, 0xBF] {
            f.rewind()?;
        }
        Ok(BufReader::new(f))
    };
    let format = Format::default().with_header(true);
    let (schema, _) = format
        .infer_schema(open()?, Some(1000))
        .with_context(|| format!("cannot infer the columns of {}", path.display()))?;
    let schema = Arc::new(schema);
    let reader = arrow_csv::ReaderBuilder::new(schema.clone()).with_format(format).build(open()?)?;
    let batches = reader.collect::<Result<Vec<_>, _>>().with_context(|| format!("cannot read {}", path.display()))?;
    ctx::progress(batches.iter().map(|b| b.num_rows() as u64).sum(), None);
    Ok(Table::try_new(schema, batches)?)
}

/// Concatenates collected tables that share a schema.
#[node(tags(kind = "table"))]
pub fn concat_tables(tables: Collect<Table>) -> anyhow::Result<Table> {
    let first = tables.first().context("nothing to concatenate")?;
    let schema = first.schema().clone();
    let mut batches = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        anyhow::ensure!(t.schema() == &schema, "table {i} has another schema than table 0");
        batches.extend(t.batches().iter().cloned());
    }
    Ok(Table::try_new(schema, batches)?)
}

/// Number of rows of a table.
#[node(tags(kind = "table"))]
pub fn row_count(table: &Table) -> i64 {
    table.num_rows() as i64
}

/// The first `n` rows of a table.
#[node(tags(kind = "table"))]
pub fn head(table: &Table, n: i64) -> anyhow::Result<Table> {
    let all = table.concat()?;
    let n = (n.max(0) as usize).min(all.num_rows());
    Ok(Table::from_batch(all.slice(0, n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_csv_with_bom_and_head() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "\u{feff}id,name\n1,a\n2,b\n3,c\n").unwrap();
        let t = read_csv(FilePath(p)).unwrap();
        assert_eq!(t.num_rows(), 3);
        assert_eq!(t.schema().field(0).name(), "id");
        assert_eq!(row_count(&head(&t, 2).unwrap()), 2);
        let both = concat_tables(Collect(vec![t.clone(), t])).unwrap();
        assert_eq!(both.num_rows(), 6);
    }
}
