//! The `metrics` table: one row per (run, key, step) point of a metric series.

use super::{Store, now};
use crate::eval::MetricKey;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// A point to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPoint {
    pub key: MetricKey,
    pub step: i64,
    pub epoch: f64,
    pub value: f64,
}

/// A stored point as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Point {
    pub step: i64,
    pub epoch: Option<f64>,
    pub value: f64,
    /// When the service stored it (RFC 3339, UTC): the wall-clock axis of curves.
    pub time: String,
}

impl Store {
    /// Deletes a run's metric points after `step`: those of an earlier attempt that a resumed
    /// (or restarted, `step` 0) worker will report again.
    pub async fn delete_metrics_after(&self, run_id: i64, step: i64) -> Result<()> {
        sqlx::query("DELETE FROM metrics WHERE run_id = ? AND step > ?")
            .bind(run_id)
            .bind(step)
            .execute(self.pool())
            .await
            .context("deleting metric points of an earlier attempt")?;
        Ok(())
    }

    /// Stores points in one transaction; a point repeated at the same step replaces the old one.
    pub async fn insert_metric_points(&self, run_id: i64, points: &[NewPoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let time = now();
        let mut tx = self.write().await?;
        for p in points {
            sqlx::query(
                "INSERT INTO metrics (run_id, key, step, epoch, value, time) \
                 VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (run_id, key, step) DO UPDATE \
                 SET epoch = excluded.epoch, value = excluded.value, time = excluded.time",
            )
            .bind(run_id)
            .bind(p.key.to_string())
            .bind(p.step)
            .bind(p.epoch)
            .bind(p.value)
            .bind(&time)
            .execute(&mut *tx)
            .await
            .context("storing metric points")?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A run's series by key, each in step order; only `key` if given.
    pub async fn metric_series(
        &self,
        run_id: i64,
        key: Option<MetricKey>,
    ) -> Result<BTreeMap<MetricKey, Vec<Point>>> {
        let key = key.map(|k| k.to_string());
        let rows: Vec<(String, i64, Option<f64>, f64, String)> = sqlx::query_as(
            "SELECT key, step, epoch, value, time FROM metrics \
             WHERE run_id = ? AND (? IS NULL OR key = ?) ORDER BY key, step",
        )
        .bind(run_id)
        .bind(&key)
        .bind(&key)
        .fetch_all(self.pool())
        .await
        .context("reading metric series")?;
        let mut out: BTreeMap<MetricKey, Vec<Point>> = BTreeMap::new();
        for (key, step, epoch, value, time) in rows {
            let key = key
                .parse()
                .with_context(|| format!("run {run_id}: stored metric key"))?;
            out.entry(key).or_default().push(Point {
                step,
                epoch,
                value,
                time,
            });
        }
        Ok(out)
    }
}
