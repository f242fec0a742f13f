//! The `cluster_jobs` table: runs handed to a cluster scheduler (Slurm), one row per attempt.
//! It keeps the job's id and what the scheduler last said of it (for the run page), the hash
//! of the token the attempt's worker reports with, and the sequence number of the last event
//! applied: a worker's events arrive over HTTP in numbered batches, and a batch sent again
//! after a lost answer is applied once.

use super::{Store, logs, metrics, now, predictions};
use crate::protocol::{Event, Summary};
use crate::store::metrics::NewPoint;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What the worker of a cluster job reported at its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerOutcome {
    Finished(Box<Summary>),
    Failed(String),
}

/// A run's job on the cluster, as last seen.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ClusterJob {
    pub run_id: i64,
    /// The run's attempt this job is.
    pub attempt: i64,
    /// The scheduler's job id.
    pub job_id: String,
    /// The scheduler's job state (`PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `NODE_FAIL`, ...).
    pub state: String,
    /// Why a pending job waits (`Resources`, `Priority`, ...).
    pub reason: Option<String>,
    /// A pending job's place among the pending jobs of its partition (1 = next).
    pub position: Option<i64>,
    /// The node it runs or ran on.
    pub node: Option<String>,
    /// `code:signal`, as Slurm writes it, once the job ended.
    pub exit_code: Option<String>,
    /// The sequence number of the last event of the worker that was applied.
    pub last_seq: i64,
    /// The service asked the scheduler to cancel it.
    #[sqlx(try_from = "crate::store::IntFlag")]
    pub cancel_requested: bool,
    pub submitted_at: String,
    pub updated_at: String,
    /// [`WorkerOutcome`] as JSON (see [`ClusterJob::outcome`]).
    #[serde(skip)]
    pub outcome: Option<String>,
}

impl ClusterJob {
    /// What the worker reported at its end, if it did.
    pub fn outcome(&self) -> Option<WorkerOutcome> {
        self.outcome
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok())
    }
}

const JOB_COLUMNS: &str = "run_id, attempt, job_id, state, reason, position, node, exit_code, \
     last_seq, cancel_requested, submitted_at, updated_at, outcome";

/// What the scheduler says of a job now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobState {
    pub state: String,
    pub reason: Option<String>,
    pub position: Option<i64>,
    pub node: Option<String>,
    pub exit_code: Option<String>,
}

/// Why a batch of worker events was not applied.
#[derive(Debug, thiserror::Error)]
pub enum BatchRefused {
    /// No job of this run has this token (or the run has none).
    #[error("the token is not this run's worker's")]
    Unauthorized,
    /// The token is of an attempt that is no longer the run's current one, or the run ended:
    /// its worker should stop.
    #[error("attempt {attempt} of run {run_id} is over: {why}")]
    Gone {
        run_id: i64,
        attempt: i64,
        why: String,
    },
    /// The batch starts after events the service has not seen.
    #[error("events from {expected} are missing; this batch starts at {first}")]
    Gap { expected: i64, first: i64 },
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

impl From<sqlx::Error> for BatchRefused {
    fn from(e: sqlx::Error) -> Self {
        BatchRefused::Store(e.into())
    }
}

/// A batch that was applied.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The attempt the token is of.
    pub attempt: i64,
    /// The last sequence number applied now (the service has every event up to it).
    pub last_seq: i64,
    /// How many of the batch's events were new (the rest had been applied before).
    pub new_events: usize,
    /// The worker's end, if this batch carried it.
    pub outcome: Option<WorkerOutcome>,
}

pub use crate::secret::token_hash;

impl Store {
    /// Records the job of a run's attempt just submitted to the scheduler.
    pub async fn insert_cluster_job(
        &self,
        run_id: i64,
        attempt: i64,
        job_id: &str,
        token_hash: &str,
    ) -> Result<()> {
        let t = now();
        sqlx::query(
            "INSERT INTO cluster_jobs (run_id, attempt, job_id, token_hash, submitted_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (run_id, attempt) DO UPDATE SET job_id = excluded.job_id, \
                 token_hash = excluded.token_hash, state = 'PENDING', reason = NULL, \
                 position = NULL, node = NULL, exit_code = NULL, last_seq = 0, outcome = NULL, \
                 cancel_requested = 0, submitted_at = excluded.submitted_at, \
                 updated_at = excluded.updated_at",
        )
        .bind(run_id)
        .bind(attempt)
        .bind(job_id)
        .bind(token_hash)
        .bind(&t)
        .bind(&t)
        .execute(self.pool())
        .await
        .context("recording a cluster job")?;
        Ok(())
    }

    /// The job of a run's latest attempt, if it ran on a cluster.
    pub async fn cluster_job(&self, run_id: i64) -> Result<Option<ClusterJob>> {
        sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM cluster_jobs WHERE run_id = $1 ORDER BY attempt DESC LIMIT 1"
        ))
        .bind(run_id)
        .fetch_optional(self.pool())
        .await
        .context("reading a cluster job")
    }

    /// Every attempt's job of a run, oldest first.
    pub async fn cluster_jobs(&self, run_id: i64) -> Result<Vec<ClusterJob>> {
        sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM cluster_jobs WHERE run_id = $1 ORDER BY attempt"
        ))
        .bind(run_id)
        .fetch_all(self.pool())
        .await
        .context("reading cluster jobs")
    }

    /// The jobs of the current attempts of the running runs this server holds (what a
    /// restarted service follows again, after taking them over).
    pub async fn running_cluster_jobs(&self) -> Result<Vec<ClusterJob>> {
        sqlx::query_as(&format!(
            "SELECT {} FROM cluster_jobs j JOIN runs r ON r.id = j.run_id AND r.attempts = j.attempt \
             WHERE r.status = 'running' AND r.owner = $1 ORDER BY j.run_id",
            JOB_COLUMNS
                .split(", ")
                .map(|c| format!("j.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(self.server_id())
        .fetch_all(self.pool())
        .await
        .context("reading running cluster jobs")
    }

    /// Stores what the scheduler says of a job; true if anything changed.
    pub async fn update_cluster_job(
        &self,
        run_id: i64,
        attempt: i64,
        s: &JobState,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE cluster_jobs SET state = $1, reason = $2, position = $3, node = $4, \
                 exit_code = $5, updated_at = $6 \
             WHERE run_id = $7 AND attempt = $8 AND NOT (state = $1 \
                 AND reason IS NOT DISTINCT FROM $2 AND position IS NOT DISTINCT FROM $3 \
                 AND node IS NOT DISTINCT FROM $4 AND exit_code IS NOT DISTINCT FROM $5)",
        )
        .bind(&s.state)
        .bind(&s.reason)
        .bind(s.position)
        .bind(&s.node)
        .bind(&s.exit_code)
        .bind(now())
        .bind(run_id)
        .bind(attempt)
        .execute(self.pool())
        .await
        .context("recording a cluster job's state")?;
        Ok(done.rows_affected() == 1)
    }

    /// Notes that the service asked the scheduler to cancel a job.
    pub async fn mark_cluster_cancel(&self, run_id: i64, attempt: i64) -> Result<()> {
        sqlx::query(
            "UPDATE cluster_jobs SET cancel_requested = 1, updated_at = $1 \
             WHERE run_id = $2 AND attempt = $3",
        )
        .bind(now())
        .bind(run_id)
        .bind(attempt)
        .execute(self.pool())
        .await
        .context("recording a cancel request")?;
        Ok(())
    }

    /// Applies a batch of a cluster worker's events, numbered from `first_seq`, in one
    /// transaction: the events up to the last one applied before are skipped, the rest are
    /// stored (metric points under the attempt, log lines, progress, predictions, start
    /// timings, the worker's end) and the last sequence number moves on. So a batch sent
    /// twice (its answer lost) is stored once, and a batch that would leave a hole is refused.
    pub async fn apply_worker_events(
        &self,
        run_id: i64,
        token_hash: &str,
        first_seq: i64,
        events: &[Event],
    ) -> std::result::Result<Applied, BatchRefused> {
        let mut tx = self.write_tx().await?;
        // looked up by the token's hash: what is compared is a digest, not the secret
        // (on PostgreSQL the job's row stays locked until the batch commits: a batch sent
        // twice at once is applied by one transaction, then skipped by the other)
        let job: Option<(i64, i64, String, i64)> = sqlx::query_as(&format!(
            "SELECT j.attempt, j.last_seq, r.status, r.attempts \
             FROM cluster_jobs j JOIN runs r ON r.id = j.run_id \
             WHERE j.run_id = $1 AND j.token_hash = $2{}",
            self.engine().lock_row(false)
        ))
        .bind(run_id)
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((attempt, last_seq, status, attempts)) = job else {
            return Err(BatchRefused::Unauthorized);
        };
        if attempts != attempt || status != "running" {
            let why = if attempts != attempt {
                format!("the run is at attempt {attempts}")
            } else {
                format!("the run is {status}")
            };
            return Err(BatchRefused::Gone {
                run_id,
                attempt,
                why,
            });
        }
        if first_seq > last_seq + 1 {
            return Err(BatchRefused::Gap {
                expected: last_seq + 1,
                first: first_seq,
            });
        }
        let skip = usize::try_from(last_seq + 1 - first_seq).unwrap_or(0);
        let new = events.get(skip..).unwrap_or(&[]);
        let mut points = Vec::new();
        let mut lines = Vec::new();
        let mut progress = None;
        let mut outcome = None;
        for ev in new {
            if let Some(line) = ev.log_line(attempt) {
                lines.push(line);
            }
            match ev {
                Event::Metric {
                    key,
                    step,
                    epoch,
                    value,
                } => points.push(NewPoint {
                    key: *key,
                    step: *step as i64,
                    epoch: *epoch,
                    value: *value,
                }),
                Event::Progress {
                    step, total_steps, ..
                } => progress = Some(*step as f64 / (*total_steps).max(1) as f64),
                Event::Predictions { split, rows } => {
                    predictions::insert_predictions_in(&mut tx, run_id, *split, rows).await?;
                }
                Event::Timings { timings } => {
                    sqlx::query("UPDATE runs SET timings = $1 WHERE id = $2")
                        .bind(serde_json::to_string(timings).context("start timings")?)
                        .bind(run_id)
                        .execute(&mut *tx)
                        .await?;
                }
                Event::Finished { summary } => {
                    outcome = Some(WorkerOutcome::Finished(summary.clone()));
                }
                Event::Failed { error } => outcome = Some(WorkerOutcome::Failed(error.clone())),
                Event::Started { .. } | Event::Log { .. } | Event::Checkpoint { .. } => {}
            }
        }
        if !points.is_empty() {
            metrics::insert_points_in(&mut tx, self.engine(), &[(run_id, attempt, &points)])
                .await?;
        }
        logs::append_logs_in(&mut tx, run_id, &lines).await?;
        if let Some(p) = progress {
            sqlx::query("UPDATE runs SET progress = $1 WHERE id = $2 AND status = 'running'")
                .bind(p)
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
        }
        let applied_to = last_seq.max(first_seq + events.len() as i64 - 1);
        sqlx::query(
            "UPDATE cluster_jobs SET last_seq = $1, updated_at = $2, \
                 outcome = COALESCE($3, outcome) \
             WHERE run_id = $4 AND attempt = $5",
        )
        .bind(applied_to)
        .bind(now())
        .bind(
            outcome
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .context("the worker's outcome")?,
        )
        .bind(run_id)
        .bind(attempt)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if !points.is_empty() {
            self.count_points(false, points.len());
            self.count_series_writes([run_id]);
        }
        Ok(Applied {
            attempt,
            last_seq: applied_to,
            new_events: new.len(),
            outcome,
        })
    }
}
