//! The `run_logs` table: what a run printed, for its page and its error message.

use super::{Store, now};
use anyhow::{Context, Result};
use serde::Serialize;

/// One stored log line.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LogLine {
    pub id: i64,
    pub time: String,
    /// `worker` (the job's log events), `stderr` (the process's stderr) or `system`.
    pub stream: String,
    pub line: String,
}

impl Store {
    /// Appends `(stream, line)` pairs to a run's log in one transaction, in order.
    pub async fn append_logs(&self, run_id: i64, lines: &[(&str, String)]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        append_logs_in(&mut tx, run_id, lines).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The last `n` lines of a run's log, oldest first.
    pub async fn log_tail(&self, run_id: i64, n: i64) -> Result<Vec<LogLine>> {
        let mut rows: Vec<LogLine> = sqlx::query_as(
            "SELECT id, time, stream, line FROM run_logs WHERE run_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(run_id)
        .bind(n)
        .fetch_all(self.pool())
        .await
        .context("reading run log")?;
        rows.reverse();
        Ok(rows)
    }
}

/// Appends log lines within a transaction the caller commits.
pub(super) async fn append_logs_in(
    conn: &mut sqlx::AnyConnection,
    run_id: i64,
    lines: &[(&str, String)],
) -> Result<()> {
    let time = now();
    for (stream, line) in lines {
        sqlx::query("INSERT INTO run_logs (run_id, time, stream, line) VALUES ($1, $2, $3, $4)")
            .bind(run_id)
            .bind(&time)
            .bind(stream)
            .bind(line)
            .execute(&mut *conn)
            .await
            .context("storing log lines")?;
    }
    Ok(())
}
