//! The `studies` table and the runs of a study.

use super::runs::{RUN_COLUMNS, Run, RunRow, StatusCounts, insert_queued};
use super::{Store, now};
use crate::runs::ResolvedRun;
use crate::studies::StudyRequest;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

/// A stored study.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Study {
    pub id: i64,
    pub name: String,
    /// The request it was made from.
    pub spec: StudyRequest,
    pub created_at: String,
    pub cancelled_at: Option<String>,
    /// Its runs per status.
    pub counts: StatusCounts,
}

#[derive(sqlx::FromRow)]
struct StudyRow {
    id: i64,
    name: String,
    spec: String,
    created_at: String,
    cancelled_at: Option<String>,
}

impl Store {
    /// Stores a study and queues its runs, each with its cell's grid values, in one
    /// transaction: all of them or none.
    pub async fn insert_study(
        &self,
        spec: &StudyRequest,
        runs: &[(ResolvedRun, Map<String, Value>)],
    ) -> Result<(Study, Vec<Run>)> {
        let mut tx = self.write_tx().await?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO studies (name, spec, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(spec.name.trim())
        .bind(serde_json::to_string(spec)?)
        .bind(now())
        .fetch_one(&mut *tx)
        .await
        .context("inserting study")?;
        let mut stored = Vec::with_capacity(runs.len());
        for (run, grid) in runs {
            stored.push(insert_queued(&mut *tx, run, Some((id, grid))).await?);
        }
        tx.commit().await?;
        let study = self.get_study(id).await?.context("the study just stored")?;
        Ok((study, stored))
    }

    async fn study_of(&self, row: StudyRow) -> Result<Study> {
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM runs WHERE study_id = $1 GROUP BY status")
                .bind(row.id)
                .fetch_all(self.pool())
                .await
                .context("counting a study's runs")?;
        Ok(Study {
            spec: serde_json::from_str(&row.spec)
                .with_context(|| format!("study {}: stored request", row.id))?,
            id: row.id,
            name: row.name,
            created_at: row.created_at,
            cancelled_at: row.cancelled_at,
            counts: StatusCounts::from_rows(counts),
        })
    }

    /// One study by id.
    pub async fn get_study(&self, id: i64) -> Result<Option<Study>> {
        let row: Option<StudyRow> = sqlx::query_as(
            "SELECT id, name, spec, created_at, cancelled_at FROM studies WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .context("reading study")?;
        match row {
            Some(r) => Ok(Some(self.study_of(r).await?)),
            None => Ok(None),
        }
    }

    /// Studies, newest first.
    pub async fn list_studies(&self, limit: i64, offset: i64) -> Result<Vec<Study>> {
        let rows: Vec<StudyRow> = sqlx::query_as(
            "SELECT id, name, spec, created_at, cancelled_at FROM studies \
             ORDER BY id DESC LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await
        .context("listing studies")?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.study_of(r).await?);
        }
        Ok(out)
    }

    /// The runs of a study, in the order it queued them.
    pub async fn study_runs(&self, id: i64) -> Result<Vec<Run>> {
        let rows: Vec<RunRow> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE study_id = $1 ORDER BY id"
        ))
        .bind(id)
        .fetch_all(self.pool())
        .await
        .context("reading a study's runs")?;
        rows.into_iter().map(Run::try_from).collect()
    }

    /// Notes that a study was cancelled.
    pub async fn mark_study_cancelled(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE studies SET cancelled_at = $1 WHERE id = $2 AND cancelled_at IS NULL")
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await
            .context("cancelling study")?;
        Ok(())
    }
}
