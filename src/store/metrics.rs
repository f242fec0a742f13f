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
    /// The run's attempt that reported it (1 unless the run was resumed).
    pub attempt: i64,
}

impl Store {
    /// Stores points of a run's `attempt` in one transaction; a point the same attempt repeats
    /// at a step replaces the old one, another attempt's stays.
    pub async fn insert_metric_points(
        &self,
        run_id: i64,
        attempt: i64,
        points: &[NewPoint],
    ) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let time = now();
        let mut tx = self.write_tx().await?;
        for p in points {
            sqlx::query(
                "INSERT INTO metrics (run_id, key, step, attempt, epoch, value, time) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (run_id, key, step, attempt) DO UPDATE \
                 SET epoch = excluded.epoch, value = excluded.value, time = excluded.time",
            )
            .bind(run_id)
            .bind(p.key.to_string())
            .bind(p.step)
            .bind(attempt)
            .bind(p.epoch)
            .bind(p.value)
            .bind(&time)
            .execute(&mut *tx)
            .await
            .context("storing metric points")?;
        }
        tx.commit().await?;
        self.count_points(false, points.len());
        Ok(())
    }

    /// A run's series by key, each in step order; only `key` if given. Each step's point is
    /// its latest attempt's, or with `all_attempts` every attempt's (by step, then attempt).
    pub async fn metric_series(
        &self,
        run_id: i64,
        key: Option<MetricKey>,
        all_attempts: bool,
    ) -> Result<BTreeMap<MetricKey, Vec<Point>>> {
        let key = key.map(|k| k.to_string());
        // SQLite takes the bare columns of a MAX() aggregate from the row with the maximum
        let sql = if all_attempts {
            "SELECT key, step, epoch, value, time, attempt FROM metrics \
             WHERE run_id = ? AND (? IS NULL OR key = ?) ORDER BY key, step, attempt"
        } else {
            "SELECT key, step, epoch, value, time, MAX(attempt) FROM metrics \
             WHERE run_id = ? AND (? IS NULL OR key = ?) GROUP BY key, step ORDER BY key, step"
        };
        let rows: Vec<(String, i64, Option<f64>, f64, String, i64)> = sqlx::query_as(sql)
            .bind(run_id)
            .bind(&key)
            .bind(&key)
            .fetch_all(self.pool())
            .await
            .context("reading metric series")?;
        let mut out: BTreeMap<MetricKey, Vec<Point>> = BTreeMap::new();
        for (key, step, epoch, value, time, attempt) in rows {
            let key = key
                .parse()
                .with_context(|| format!("run {run_id}: stored metric key"))?;
            out.entry(key).or_default().push(Point {
                step,
                epoch,
                value,
                time,
                attempt,
            });
        }
        Ok(out)
    }
}
