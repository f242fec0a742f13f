//! The `predictions` table: per-example outputs of a run on an evaluation split, the raw
//! material of paired comparisons between runs.

use super::Store;
use crate::data::Split;
use crate::protocol::Prediction;
use anyhow::{Context, Result};
use serde::Serialize;

/// A stored prediction.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredPrediction {
    pub example_id: String,
    pub label: Option<i64>,
    pub pred: i64,
    pub probs: Vec<f64>,
}

impl Store {
    /// Stores a split's predictions in one transaction (replacing earlier ones for the same ids).
    pub async fn insert_predictions(
        &self,
        run_id: i64,
        split: Split,
        rows: &[Prediction],
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        insert_predictions_in(&mut tx, run_id, split, rows).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of a run's predictions on `split`, in example-id order.
    pub async fn predictions(
        &self,
        run_id: i64,
        split: Split,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<StoredPrediction>> {
        let rows: Vec<(String, Option<i64>, i64, String)> = sqlx::query_as(
            "SELECT example_id, label, pred, probs FROM predictions \
             WHERE run_id = $1 AND split = $2 ORDER BY example_id LIMIT $3 OFFSET $4",
        )
        .bind(run_id)
        .bind(split.as_str())
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await
        .context("reading predictions")?;
        rows.into_iter()
            .map(|(example_id, label, pred, probs)| {
                Ok(StoredPrediction {
                    example_id,
                    label,
                    pred,
                    probs: serde_json::from_str(&probs).context("stored probabilities")?,
                })
            })
            .collect()
    }
}

/// Stores predictions within a transaction the caller commits.
pub(super) async fn insert_predictions_in(
    conn: &mut sqlx::AnyConnection,
    run_id: i64,
    split: Split,
    rows: &[Prediction],
) -> Result<()> {
    for p in rows {
        sqlx::query(
            "INSERT INTO predictions (run_id, split, example_id, label, pred, probs) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (run_id, split, example_id) DO UPDATE \
             SET label = excluded.label, pred = excluded.pred, probs = excluded.probs",
        )
        .bind(run_id)
        .bind(split.as_str())
        .bind(&p.example_id)
        .bind(p.label.map(|l| l as i64))
        .bind(p.pred as i64)
        .bind(serde_json::to_string(&p.probs)?)
        .execute(&mut *conn)
        .await
        .context("storing predictions")?;
    }
    Ok(())
}
