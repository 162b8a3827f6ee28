//! SQL nodes run in DuckDB: [`DuckSql`] implements the engine's [`SqlEngine`].
//!
//! Each query gets a fresh in-memory DuckDB. The upstream tables are copied in through DuckDB's Arrow
//! scanner under their node names; the flow's lake, if it has one, is attached read-only under its alias
//! (`lake` by default), so a query may join node results with lake tables. The `spatial` extension is
//! loaded on demand when the query calls a function core DuckDB does not have.
//!
//! Caching: a SQL node's key covers its normalized SQL and its input tables, not lake tables it reads.
//! Give such nodes `cache = "recompute"`.

use anyhow::{Context, Result};
use flowrun_engine::Table;
use flowrun_engine::sql::SqlEngine;

use crate::config::LakeConfig;
use crate::duck::Duck;
use crate::extensions::{self, ExtensionSources};
use crate::ident::quote_any;

/// DuckDB as the engine of SQL nodes.
pub struct DuckSql {
    lake: Option<LakeConfig>,
    extensions: ExtensionSources,
}

impl DuckSql {
    /// Without a lake.
    pub fn new() -> DuckSql {
        DuckSql { lake: None, extensions: ExtensionSources::from_env() }
    }

    /// With the flow's lake attached read-only for queries that name it.
    pub fn with_lake(lake: Option<LakeConfig>) -> DuckSql {
        let extensions = lake.as_ref().map(|l| l.extensions.clone()).unwrap_or_else(ExtensionSources::from_env);
        DuckSql { lake, extensions }
    }
}

impl Default for DuckSql {
    fn default() -> Self {
        Self::new()
    }
}

impl SqlEngine for DuckSql {
    fn query(&self, sql: &str, tables: &[(&str, &Table)]) -> Result<Table> {
        // the flow's SQL may LOAD any extension: DuckDB's own signature checks (see `extensions`)
        let duck = Duck::checking_signatures()?;
        for (name, table) in tables {
            duck.load_table(&quote_any(name), table).with_context(|| format!("loading input table `{name}`"))?;
        }
        if let Some(lake) = &self.lake {
            let alias = format!("{}.", lake.alias.to_ascii_lowercase());
            if sql.to_ascii_lowercase().contains(&alias) {
                lake.attach(&duck, true)?;
            }
        }
        match duck.query(sql) {
            Ok(t) => Ok(t),
            Err(e) if needs_spatial(&e) => {
                extensions::ensure(&duck, "spatial", &self.extensions)?;
                duck.query(sql)
            }
            Err(e) => Err(e),
        }
    }
}

fn needs_spatial(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}").to_ascii_lowercase();
    s.contains("st_") && (s.contains("does not exist") || s.contains("spatial"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    fn table(ids: Vec<i64>, names: Vec<&str>) -> Table {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        Table::from_batch(
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(names))])
                .unwrap(),
        )
    }

    #[test]
    fn joins_upstream_tables_by_node_name() {
        let a = table(vec![1, 2, 3], vec!["a", "b", "c"]);
        let b = table(vec![2, 3, 4], vec!["x", "y", "z"]);
        let out = DuckSql::new()
            .query(
                "SELECT stg_a.id, stg_a.name || \"stg-b\".name AS both FROM stg_a JOIN \"stg-b\" USING (id) ORDER BY id",
                &[("stg_a", &a), ("stg-b", &b)],
            )
            .unwrap();
        assert_eq!(out.num_rows(), 2);
        let batch = out.concat().unwrap();
        let both = batch.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(both.value(0), "bx");
    }
}
