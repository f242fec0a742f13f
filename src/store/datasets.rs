//! The `datasets` table: datasets the service knows, with what registration learned.

use super::{Store, now};
use crate::data::DatasetInfo;
use anyhow::{Context, Result};
use serde::Serialize;

/// A registered dataset.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DatasetRecord {
    pub name: String,
    pub format: String,
    pub root: String,
    pub num_labels: i64,
    pub info: DatasetInfo,
    pub registered_at: String,
}

type Row = (String, String, String, i64, String, String);

fn from_row((name, format, root, num_labels, info, registered_at): Row) -> Result<DatasetRecord> {
    Ok(DatasetRecord {
        info: serde_json::from_str(&info)
            .with_context(|| format!("dataset {name}: stored info"))?,
        name,
        format,
        root,
        num_labels,
        registered_at,
    })
}

impl Store {
    /// Registers a dataset or refreshes what is known about it.
    pub async fn upsert_dataset(&self, name: &str, info: &DatasetInfo) -> Result<()> {
        sqlx::query(
            "INSERT INTO datasets (name, format, root, num_labels, info, registered_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET format = excluded.format, root = excluded.root, \
                 num_labels = excluded.num_labels, info = excluded.info",
        )
        .bind(name)
        .bind(&info.source.format)
        .bind(info.source.root.display().to_string())
        .bind(info.num_labels as i64)
        .bind(serde_json::to_string(info)?)
        .bind(now())
        .execute(self.pool())
        .await
        .context("registering dataset")?;
        Ok(())
    }

    /// Every registered dataset, by name.
    pub async fn list_datasets(&self) -> Result<Vec<DatasetRecord>> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT name, format, root, num_labels, info, registered_at FROM datasets ORDER BY name",
        )
        .fetch_all(self.pool())
        .await
        .context("listing datasets")?;
        rows.into_iter().map(from_row).collect()
    }

    /// Names of the registered datasets, sorted.
    pub async fn dataset_names(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT name FROM datasets ORDER BY name")
            .fetch_all(self.pool())
            .await
            .context("listing datasets")
    }

    /// One dataset by name.
    pub async fn get_dataset(&self, name: &str) -> Result<Option<DatasetRecord>> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT name, format, root, num_labels, info, registered_at FROM datasets WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .context("reading dataset")?;
        row.map(from_row).transpose()
    }

    /// Forgets a dataset (its runs stay).
    pub async fn delete_dataset(&self, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM datasets WHERE name = $1")
            .bind(name)
            .execute(self.pool())
            .await
            .context("removing dataset")?;
        Ok(())
    }
}
