//! The `runs` table: the queue, run state, and the per-run summary leaderboards read.

use super::{Engine, Real, Store, now};
use crate::data::Source;
use crate::eval::Metric;
use crate::protocol::{StartTimings, Summary};
use crate::runs::{DatasetRef, ModelRef, QueueConfig, ResolvedRun, TrainConfig};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Life cycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a free slot.
    Queued,
    /// A worker process is training it.
    Running,
    /// Finished with a summary.
    Succeeded,
    /// The worker reported an error or died.
    Failed,
    /// Stopped by a user.
    Cancelled,
    /// Was running when the server stopped; will be started again.
    Interrupted,
}

impl RunStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Interrupted,
    ];

    /// The name stored in the database and used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }

    /// Whether the run can still change (queued, running or waiting to restart).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunStatus::Queued | RunStatus::Running | RunStatus::Interrupted
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = crate::data::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::data::UnknownName::find(s, "run status", &RunStatus::ALL, RunStatus::as_str)
    }
}

/// Where a run was trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunSource {
    /// Queued here and trained by this service's workers.
    Native,
    /// Trained elsewhere and logged here (the MLflow-compatible API, the metric batch
    /// endpoint); never claimed by the scheduler.
    External,
}

impl FromStr for RunSource {
    type Err = crate::data::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::data::UnknownName::find(s, "run source", &RunSource::ALL, RunSource::as_str)
    }
}

impl RunSource {
    /// Both sources.
    pub const ALL: [RunSource; 2] = [RunSource::Native, RunSource::External];

    /// The name stored in `runs.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunSource::Native => "native",
            RunSource::External => "external",
        }
    }
}

/// A run's configuration: the options of a native run, the logged parameters of an
/// external one.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RunConfig {
    Native(TrainConfig),
    External(BTreeMap<String, String>),
}

impl RunConfig {
    /// The training options, for a native run.
    pub fn native(&self) -> Option<&TrainConfig> {
        match self {
            RunConfig::Native(c) => Some(c),
            RunConfig::External(_) => None,
        }
    }
}

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Run {
    pub id: i64,
    pub status: RunStatus,
    /// `native` (trained here) or `external` (logged here).
    pub source: RunSource,
    pub model: String,
    pub dataset: String,
    pub config: RunConfig,
    /// The MLflow experiment and run name of an external run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiment_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_name: Option<String>,
    pub priority: i64,
    pub attempts: i64,
    pub device: Option<String>,
    /// Fraction of training steps done, while running.
    pub progress: Option<f64>,
    pub summary: Option<Summary>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// The study the run belongs to, if any.
    pub study_id: Option<i64>,
    /// The grid's option values of the run's cell in its study.
    pub grid: Option<serde_json::Map<String, serde_json::Value>>,
    /// When its worker began, finished loading and logged its first step (native runs that
    /// got that far; the latest attempt's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<StartTimings>,
    /// The checkpoint folder and dataset source the run was resolved to when submitted (not
    /// shown by the API: they are paths on the server).
    #[serde(skip)]
    pub resolution: Option<Resolution>,
    /// The server process that claimed the run while it runs (see [`Store::server_id`]).
    #[serde(skip)]
    pub owner: Option<String>,
}

/// What a run's names were resolved to when it was submitted: `runs.resolved`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    pub model_dir: PathBuf,
    pub dataset: Source,
    /// The queue options as resolved (the priority is also the `priority` column, which
    /// orders the queue); absent in runs stored before they were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueConfig>,
}

impl Run {
    /// The queue options of the run: as resolved at submission, with its priority.
    pub fn queue_config(&self) -> QueueConfig {
        let mut q = self
            .resolution
            .as_ref()
            .and_then(|r| r.queue.clone())
            .unwrap_or_default();
        q.priority = self.priority;
        q
    }

    /// The training options of a native run.
    pub fn train_config(&self) -> Option<&TrainConfig> {
        self.config.native()
    }

    /// The run as it was resolved when submitted; `None` for a run queued before runs kept
    /// their resolution, and for external runs.
    pub fn resolved(&self) -> Option<ResolvedRun> {
        let r = self.resolution.as_ref()?;
        let config = self.train_config()?.clone();
        Some(ResolvedRun {
            model: ModelRef {
                name: self.model.clone(),
                dir: r.model_dir.clone(),
            },
            dataset: DatasetRef {
                name: self.dataset.clone(),
                source: r.dataset.clone(),
            },
            config,
            queue: self.queue_config(),
        })
    }
}

#[derive(FromRow)]
pub(super) struct RunRow {
    id: i64,
    status: String,
    model: String,
    dataset: String,
    config: String,
    priority: i64,
    attempts: i64,
    device: Option<String>,
    progress: Option<f64>,
    summary: Option<String>,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    error: Option<String>,
    resolved: Option<String>,
    study_id: Option<i64>,
    grid: Option<String>,
    source: String,
    experiment_id: Option<i64>,
    run_name: Option<String>,
    timings: Option<String>,
    owner: Option<String>,
}

impl TryFrom<RunRow> for Run {
    type Error = anyhow::Error;
    fn try_from(r: RunRow) -> Result<Run> {
        Ok(Run {
            id: r.id,
            status: r.status.parse()?,
            resolution: match r.resolved {
                Some(s) => Some(
                    serde_json::from_str(&s)
                        .with_context(|| format!("run {}: stored resolution", r.id))?,
                ),
                None => None,
            },
            source: match r.source.as_str() {
                "external" => RunSource::External,
                _ => RunSource::Native,
            },
            config: if r.source == "external" {
                RunConfig::External(
                    serde_json::from_str(&r.config)
                        .with_context(|| format!("run {}: stored parameters", r.id))?,
                )
            } else {
                RunConfig::Native(
                    serde_json::from_str(&r.config)
                        .with_context(|| format!("run {}: stored config", r.id))?,
                )
            },
            experiment_id: r.experiment_id,
            run_name: r.run_name,
            summary: match r.summary {
                Some(s) => Some(
                    serde_json::from_str(&s)
                        .with_context(|| format!("run {}: stored summary", r.id))?,
                ),
                None => None,
            },
            grid: match r.grid {
                Some(g) => Some(
                    serde_json::from_str(&g)
                        .with_context(|| format!("run {}: stored grid values", r.id))?,
                ),
                None => None,
            },
            timings: match r.timings {
                Some(t) => Some(
                    serde_json::from_str(&t)
                        .with_context(|| format!("run {}: stored start timings", r.id))?,
                ),
                None => None,
            },
            study_id: r.study_id,
            owner: r.owner,
            model: r.model,
            dataset: r.dataset,
            priority: r.priority,
            attempts: r.attempts,
            device: r.device,
            progress: r.progress,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            error: r.error,
        })
    }
}

pub(super) const RUN_COLUMNS: &str = "id, status, model, dataset, config, priority, attempts, device, \
     progress, summary, created_at, started_at, finished_at, error, resolved, study_id, grid, source, \
     experiment_id, run_name, timings, owner";

/// Filters of the run listing; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub dataset: Option<String>,
    pub model: Option<String>,
    pub status: Option<RunStatus>,
    pub source: Option<RunSource>,
    pub limit: i64,
    pub offset: i64,
}

/// Metrics a leaderboard can rank by: the summary columns of `runs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BoardMetric {
    Accuracy,
    F1,
    Auroc,
    Loss,
}

impl BoardMetric {
    /// Every metric a board ranks by.
    pub const ALL: [BoardMetric; 4] = [
        BoardMetric::Accuracy,
        BoardMetric::F1,
        BoardMetric::Auroc,
        BoardMetric::Loss,
    ];

    /// The metric it is.
    pub fn metric(self) -> Metric {
        match self {
            BoardMetric::Accuracy => Metric::Accuracy,
            BoardMetric::F1 => Metric::F1,
            BoardMetric::Auroc => Metric::Auroc,
            BoardMetric::Loss => Metric::Loss,
        }
    }

    /// The `runs` column, also the API name (the metric's name).
    pub fn column(self) -> &'static str {
        self.metric().as_str()
    }

    /// `ASC` where lower is better (the loss), else `DESC`.
    pub fn order(self) -> &'static str {
        if self == BoardMetric::Loss {
            "ASC"
        } else {
            "DESC"
        }
    }
}

impl FromStr for BoardMetric {
    type Err = crate::data::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::data::UnknownName::find(s, "leaderboard metric", &BoardMetric::ALL, Self::column)
    }
}

/// Computed leaderboards by (dataset, metric), each with its `board_generation`.
pub(super) type BoardCache = std::collections::HashMap<
    (Option<String>, BoardMetric),
    (i64, std::sync::Arc<Vec<BoardGroup>>),
>;

/// One group of a leaderboard: the succeeded runs of one model with one configuration (every
/// option but the seed) on one dataset. Each quality metric comes as its mean, sample variance
/// (`None` below two values) and count over the runs that have it; the caller turns them into
/// spreads and intervals.
#[derive(Debug, Clone, FromRow)]
pub struct BoardGroup {
    pub dataset: String,
    pub model: String,
    /// The options without the seed, as JSON (`runs.config_key`).
    pub config_key: Option<String>,
    /// Succeeded runs in the group.
    pub runs: i64,
    /// The group's best run by the board's metric.
    pub run_id: i64,
    pub accuracy: Option<f64>,
    pub accuracy_var: Option<f64>,
    pub accuracy_n: i64,
    pub f1: Option<f64>,
    pub f1_var: Option<f64>,
    pub f1_n: i64,
    pub auroc: Option<f64>,
    pub auroc_var: Option<f64>,
    pub auroc_n: i64,
    pub loss: Option<f64>,
    pub loss_var: Option<f64>,
    pub loss_n: i64,
    /// Means over the runs.
    pub train_seconds: Option<f64>,
    pub samples_per_second: Option<f64>,
    pub num_parameters: Option<i64>,
    /// Peak memory of the runs' workers (GPU memory where they had GPUs, else host memory).
    pub peak_memory_bytes: Option<i64>,
    /// Wall time × devices held, in hours, summed over the runs.
    pub device_hours: Option<f64>,
    /// How many of the group's runs were logged from elsewhere (external runs).
    pub external_runs: i64,
}

impl StatusCounts {
    /// The counts of `runs`' statuses.
    pub fn of(runs: &[Run]) -> StatusCounts {
        let mut rows: std::collections::BTreeMap<String, i64> = Default::default();
        for r in runs {
            *rows.entry(r.status.to_string()).or_default() += 1;
        }
        StatusCounts::from_rows(rows.into_iter().collect())
    }

    /// The counts of `(status, count)` rows.
    pub(super) fn from_rows(rows: Vec<(String, i64)>) -> StatusCounts {
        let mut c = StatusCounts::default();
        for (status, n) in rows {
            match status.parse() {
                Ok(RunStatus::Queued) => c.queued = n,
                Ok(RunStatus::Running) => c.running = n,
                Ok(RunStatus::Succeeded) => c.succeeded = n,
                Ok(RunStatus::Failed) => c.failed = n,
                Ok(RunStatus::Cancelled) => c.cancelled = n,
                Ok(RunStatus::Interrupted) => c.interrupted = n,
                Err(_) => {}
            }
        }
        c
    }

    /// Runs not yet ended.
    pub fn active(&self) -> i64 {
        self.queued + self.running + self.interrupted
    }
}

/// Inserts `run` as queued, in the study `study` (its id and the cell's grid values) if given.
pub(super) async fn insert_queued<'c, E: sqlx::Executor<'c, Database = sqlx::Any>>(
    executor: E,
    run: &ResolvedRun,
    study: Option<(i64, &serde_json::Map<String, serde_json::Value>)>,
) -> Result<Run> {
    let resolution = Resolution {
        model_dir: run.model.dir.clone(),
        dataset: run.dataset.source.clone(),
        queue: Some(run.queue.clone()),
    };
    let row: RunRow = sqlx::query_as(&format!(
        "INSERT INTO runs (status, model, dataset, config, priority, resolved, created_at, \
             study_id, grid) \
         VALUES ('queued', $1, $2, $3, $4, $5, $6, $7, $8) RETURNING {RUN_COLUMNS}"
    ))
    .bind(&run.model.name)
    .bind(&run.dataset.name)
    .bind(serde_json::to_string(&run.config)?)
    .bind(run.queue.priority)
    .bind(serde_json::to_string(&resolution)?)
    .bind(now())
    .bind(study.map(|(id, _)| id))
    .bind(study.map(|(_, g)| serde_json::to_string(g)).transpose()?)
    .fetch_one(executor)
    .await
    .context("inserting run")?;
    row.try_into()
}

/// A run that ended, as [`Store::insert_finished_runs`] takes it.
#[derive(Debug, Clone)]
pub struct FinishedRun {
    pub model: String,
    pub dataset: String,
    pub status: RunStatus,
    pub config: TrainConfig,
    pub summary: Summary,
}

/// Run counts per status.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct StatusCounts {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub interrupted: i64,
}

impl Store {
    /// Queues a resolved run.
    pub async fn insert_run(&self, run: &ResolvedRun) -> Result<Run> {
        insert_queued(self.pool(), run, None).await
    }

    /// Stores a run that starts at once outside the queue (`modalbench train` in the
    /// foreground) as running on `device`.
    pub async fn insert_foreground_run(&self, run: &ResolvedRun, device: &str) -> Result<Run> {
        let resolution = Resolution {
            model_dir: run.model.dir.clone(),
            dataset: run.dataset.source.clone(),
            queue: Some(run.queue.clone()),
        };
        let time = now();
        let row: RunRow = sqlx::query_as(&format!(
            "INSERT INTO runs (status, model, dataset, config, priority, resolved, created_at, \
                 started_at, device, attempts, progress) \
             VALUES ('running', $1, $2, $3, $4, $5, $6, $7, $8, 1, 0) RETURNING {RUN_COLUMNS}"
        ))
        .bind(&run.model.name)
        .bind(&run.dataset.name)
        .bind(serde_json::to_string(&run.config)?)
        .bind(run.queue.priority)
        .bind(serde_json::to_string(&resolution)?)
        .bind(&time)
        .bind(&time)
        .bind(device)
        .fetch_one(self.pool())
        .await
        .context("inserting a foreground run")?;
        row.try_into()
    }

    /// Stores when a run's worker began, finished loading and logged its first step.
    pub async fn set_start_timings(&self, id: i64, timings: &StartTimings) -> Result<()> {
        sqlx::query("UPDATE runs SET timings = $1 WHERE id = $2")
            .bind(serde_json::to_string(timings)?)
            .bind(id)
            .execute(self.pool())
            .await
            .context("storing start timings")?;
        Ok(())
    }

    /// Inserts finished runs in bulk, in transactions of a thousand, without resolution: a
    /// database of many runs for benchmarks and tests of what reads them. Returns the ids in
    /// order.
    pub async fn insert_finished_runs(&self, runs: &[FinishedRun]) -> Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(runs.len());
        for chunk in runs.chunks(1000) {
            let mut tx = self.write_tx().await?;
            let time = now();
            for FinishedRun {
                model,
                dataset,
                status,
                config,
                summary: s,
            } in chunk
            {
                let config = serde_json::to_string(config)?;
                let (id,): (i64,) = sqlx::query_as(
                    "INSERT INTO runs (status, model, dataset, config, created_at, finished_at, \
                         progress, accuracy, f1, auroc, loss, train_seconds, samples_per_second, \
                         num_parameters, peak_memory_bytes, device_hours, train_flops, summary) \
                     VALUES ($1, $2, $3, $4, $5, $6, 1.0, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) RETURNING id",
                )
                .bind(status.as_str())
                .bind(model)
                .bind(dataset)
                .bind(&config)
                .bind(&time)
                .bind(&time)
                .bind(s.accuracy)
                .bind(s.f1)
                .bind(Real(s.auroc))
                .bind(s.loss)
                .bind(s.train_seconds)
                .bind(s.samples_per_second)
                .bind(s.num_parameters)
                .bind(s.cost.peak_memory_bytes())
                .bind(s.cost.device_hours)
                .bind(s.cost.train_flops)
                .bind(serde_json::to_string(s)?)
                .fetch_one(&mut *tx)
                .await
                .context("inserting finished runs")?;
                ids.push(id);
            }
            tx.commit().await?;
        }
        Ok(ids)
    }

    /// One run by id.
    pub async fn get_run(&self, id: i64) -> Result<Option<Run>> {
        let row: Option<RunRow> =
            sqlx::query_as(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"))
                .bind(id)
                .fetch_optional(self.pool())
                .await
                .context("reading run")?;
        row.map(Run::try_from).transpose()
    }

    /// The runs of `ids` that exist, in the order of `ids`, read in one statement.
    pub async fn get_runs(&self, ids: &[i64]) -> Result<Vec<Run>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let rows: Vec<RunRow> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN ({list})"
        ))
        .fetch_all(self.pool())
        .await
        .context("reading runs")?;
        let mut runs = rows
            .into_iter()
            .map(Run::try_from)
            .collect::<Result<Vec<Run>>>()?;
        runs.sort_by_key(|r| ids.iter().position(|&i| i == r.id));
        Ok(runs)
    }

    /// Runs matching the filter, newest first.
    pub async fn list_runs(&self, f: &RunFilter) -> Result<Vec<Run>> {
        let rows: Vec<RunRow> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM runs \
             WHERE ($1 IS NULL OR dataset = $1) AND ($2 IS NULL OR model = $2) \
               AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR source = $4) \
               AND lifecycle_stage = 'active' \
             ORDER BY id DESC LIMIT $5 OFFSET $6"
        ))
        .bind(&f.dataset)
        .bind(&f.model)
        .bind(f.status.map(RunStatus::as_str))
        .bind(f.source.map(RunSource::as_str))
        .bind(if f.limit > 0 { f.limit } else { 100 })
        .bind(f.offset.max(0))
        .fetch_all(self.pool())
        .await
        .context("listing runs")?;
        rows.into_iter().map(Run::try_from).collect()
    }

    /// Runs per status.
    pub async fn status_counts(&self) -> Result<StatusCounts> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM runs GROUP BY status")
                .fetch_all(self.pool())
                .await
                .context("counting runs")?;
        Ok(StatusCounts::from_rows(rows))
    }

    /// Claims the next runnable run (highest priority, then oldest) for `device` and marks it
    /// running, in one statement. Output of an earlier attempt (metrics, predictions) is cleared.
    pub async fn claim_next_run(&self, device: &str) -> Result<Option<Run>> {
        self.claim_next_run_within(1, |_| device.to_string()).await
    }

    /// Claims the next waiting run if it needs at most `free` devices (its `gpus`): the run
    /// first in line waits for its devices rather than letting later runs pass. `device`
    /// names the devices of a run that needs `n` of them.
    pub async fn claim_next_run_within(
        &self,
        free: usize,
        device: impl Fn(usize) -> String,
    ) -> Result<Option<Run>> {
        let mut tx = self.write_tx().await?;
        // on PostgreSQL the row is locked until the claim commits, and a row another server is
        // claiming is passed over: two servers never claim one run
        let next: Option<(i64, Option<i64>)> = sqlx::query_as(&format!(
            "SELECT id, {} FROM runs \
             WHERE status IN ('queued', 'interrupted') AND source = 'native' \
             ORDER BY priority DESC, id LIMIT 1{}",
            self.engine().json_integer("config", "gpus"),
            self.engine().lock_row(true)
        ))
        .fetch_optional(&mut *tx)
        .await
        .context("finding the next queued run")?;
        let Some((id, gpus)) = next else {
            return Ok(None);
        };
        let gpus = gpus.unwrap_or(1).max(1) as usize;
        if gpus > free {
            return Ok(None);
        }
        let row: Option<RunRow> = sqlx::query_as(&format!(
            "UPDATE runs SET status = 'running', device = $1, started_at = $2, finished_at = NULL, \
                 attempts = attempts + 1, error = NULL, progress = 0, timings = NULL, \
                 owner = $4, cancel_requested = 0 \
             WHERE id = $3 AND status IN ('queued', 'interrupted') \
             RETURNING {RUN_COLUMNS}"
        ))
        .bind(device(gpus))
        .bind(now())
        .bind(id)
        .bind(self.server_id())
        .fetch_optional(&mut *tx)
        .await
        .context("claiming the next queued run")?;
        if let Some(r) = &row
            && r.attempts > 1
        {
            // the metric points up to a resumed worker's checkpoint stay: its `started` event
            // says which (`delete_metrics_after`)
            sqlx::query("DELETE FROM predictions WHERE run_id = $1")
                .bind(r.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        row.map(Run::try_from).transpose()
    }

    /// Records the end of a running run. Returns false if the run was not running (for
    /// instance cancelled meanwhile), in which case nothing changes.
    pub async fn finish_run(
        &self,
        id: i64,
        status: RunStatus,
        error: Option<&str>,
        summary: Option<&Summary>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE runs SET status = $1, error = $2, finished_at = $3, \
                 progress = CASE WHEN $1 = 'succeeded' THEN 1.0 ELSE progress END, \
                 accuracy = $4, f1 = $5, auroc = $6, loss = $7, train_seconds = $8, \
                 samples_per_second = $9, num_parameters = $10, peak_memory_bytes = $11, \
                 device_hours = $12, train_flops = $13, summary = $14 \
             WHERE id = $15 AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(now())
        .bind(Real(summary.map(|s| s.accuracy)))
        .bind(Real(summary.map(|s| s.f1)))
        .bind(Real(summary.and_then(|s| s.auroc)))
        .bind(Real(summary.map(|s| s.loss)))
        .bind(Real(summary.map(|s| s.train_seconds)))
        .bind(Real(summary.map(|s| s.samples_per_second)))
        .bind(summary.map(|s| s.num_parameters))
        .bind(summary.and_then(|s| s.cost.peak_memory_bytes()))
        .bind(Real(summary.map(|s| s.cost.device_hours)))
        .bind(Real(summary.map(|s| s.cost.train_flops)))
        .bind(summary.map(serde_json::to_string).transpose()?)
        .bind(id)
        .execute(self.pool())
        .await
        .context("finishing run")?;
        Ok(done.rows_affected() == 1)
    }

    /// Cancels a run that has not started (queued or waiting to restart). Returns false if it
    /// was in any other state.
    pub async fn cancel_waiting_run(&self, id: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE runs SET status = 'cancelled', finished_at = $1 \
             WHERE id = $2 AND status IN ('queued', 'interrupted')",
        )
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await
        .context("cancelling run")?;
        Ok(done.rows_affected() == 1)
    }

    /// Stores the training progress (0..1) of a running run.
    pub async fn set_progress(&self, id: i64, progress: f64) -> Result<()> {
        sqlx::query("UPDATE runs SET progress = $1 WHERE id = $2 AND status = 'running'")
            .bind(progress)
            .bind(id)
            .execute(self.pool())
            .await
            .context("recording progress")?;
        Ok(())
    }

    /// Fails runs `modalbench train` trained in the foreground (device `cli:<pid>`) whose
    /// process is gone without recording their end; runs of live processes are theirs.
    pub async fn fail_abandoned_foreground_runs(&self) -> Result<()> {
        let foreground: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, device FROM runs WHERE status = 'running' AND device LIKE 'cli:%'",
        )
        .fetch_all(self.pool())
        .await
        .context("finding foreground runs")?;
        for (id, device) in foreground {
            let alive = device
                .strip_prefix("cli:")
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                self.finish_run(
                    id,
                    RunStatus::Failed,
                    Some("the `modalbench train` process that ran it ended without recording its end"),
                    None,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Running runs whose server is gone, with the server that had claimed them. On SQLite
    /// (one server process) that is every running run another process claimed. On
    /// PostgreSQL, the runs of servers without a heartbeat for `lease` (see
    /// [`Store::heartbeat`]), and at once those of a server on this host whose process is
    /// gone (or, within this process, an earlier store's: a process has one scheduler).
    /// Foreground runs are their `modalbench train` process's, never orphans.
    pub async fn orphaned_runs(
        &self,
        lease: std::time::Duration,
    ) -> Result<Vec<(i64, Option<String>)>> {
        type Row = (
            i64,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT r.id, r.owner, s.host, s.pid, s.heartbeat_at \
             FROM runs r LEFT JOIN servers s ON s.id = r.owner \
             WHERE r.status = 'running' AND r.source = 'native' \
                 AND (r.device IS NULL OR r.device NOT LIKE 'cli:%') \
                 AND r.owner IS DISTINCT FROM $1 ORDER BY r.id",
        )
        .bind(self.server_id())
        .fetch_all(self.pool())
        .await
        .context("finding runs of stopped servers")?;
        let cutoff = super::format_time(time::OffsetDateTime::now_utc() - lease);
        let here = self.host();
        let me = i64::from(std::process::id());
        Ok(rows
            .into_iter()
            .filter(|(_, _, host, pid, heartbeat)| {
                let (Some(host), Some(pid), Some(heartbeat)) = (host, pid, heartbeat) else {
                    return true;
                };
                self.engine() == Engine::Sqlite
                    || *heartbeat <= cutoff
                    || (*host == here
                        && (*pid == me || !std::path::Path::new(&format!("/proc/{pid}")).exists()))
            })
            .map(|(id, owner, ..)| (id, owner))
            .collect())
    }

    /// Takes over a running run from `from` (its server, gone): with `interrupt`, the run
    /// becomes `interrupted` (the scheduler starts it again); without, it stays running and
    /// this server follows it (a cluster job that runs on). False if another server took it
    /// first, or it ended meanwhile.
    pub async fn take_over_run(
        &self,
        id: i64,
        from: Option<&str>,
        interrupt: bool,
    ) -> Result<bool> {
        let status = if interrupt { "interrupted" } else { "running" };
        let done = sqlx::query(
            "UPDATE runs SET status = $1, owner = $2 \
             WHERE id = $3 AND status = 'running' AND owner IS NOT DISTINCT FROM $4",
        )
        .bind(status)
        .bind(self.server_id())
        .bind(id)
        .bind(from)
        .execute(self.pool())
        .await
        .context("taking over a run")?;
        Ok(done.rows_affected() == 1)
    }

    /// Asks the server running a run to cancel it (for a run another server holds).
    pub async fn request_cancel(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = $1 AND status = 'running'")
            .bind(id)
            .execute(self.pool())
            .await
            .context("requesting a cancel")?;
        Ok(())
    }

    /// This server's running runs that a cancel was asked of (through another server).
    pub async fn cancel_requests(&self) -> Result<Vec<i64>> {
        let ids: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM runs WHERE status = 'running' AND owner = $1 AND cancel_requested = 1",
        )
        .bind(self.server_id())
        .fetch_all(self.pool())
        .await
        .context("reading cancel requests")?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// Fails waiting runs that were already started `max_attempts` times, so a run that takes
    /// the server down cannot do so forever. Returns their ids.
    pub async fn fail_exhausted_runs(&self, max_attempts: i64) -> Result<Vec<i64>> {
        let ids: Vec<(i64,)> = sqlx::query_as(
            "UPDATE runs SET status = 'failed', finished_at = $1, \
                 error = 'interrupted ' || attempts || ' times; not restarted again' \
             WHERE status = 'interrupted' AND attempts >= $2 RETURNING id",
        )
        .bind(now())
        .bind(max_attempts)
        .fetch_all(self.pool())
        .await
        .context("failing exhausted runs")?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// The leaderboard's groups: succeeded runs by (dataset, model, options but the seed),
    /// each with its metrics' means, variances and counts, its cost means, and its best run by
    /// `metric`; in no particular order. One pass over the `runs_groups` covering index,
    /// never the table or the metric points.
    ///
    /// Computed boards are kept while the `board_generation` counter (moved on by triggers at
    /// every change of a run that a board reads) stays where it was: the query took ~110 ms
    /// over 100k runs, reading the counter takes a few microseconds.
    pub async fn leaderboard(
        &self,
        dataset: Option<&str>,
        metric: BoardMetric,
    ) -> Result<Vec<BoardGroup>> {
        // read before the query: a change in between makes the kept board look older than it
        // is, so the next request computes it again (never the other way round)
        let (generation,): (i64,) =
            sqlx::query_as("SELECT generation FROM board_generation WHERE id = 1")
                .fetch_one(self.pool())
                .await
                .context("reading the leaderboard's generation")?;
        let key = (dataset.map(str::to_string), metric);
        if let Some((g, groups)) = self.boards.lock().expect("board cache").get(&key)
            && *g == generation
        {
            return Ok(groups.as_ref().clone());
        }
        let groups = std::sync::Arc::new(self.leaderboard_query(dataset, metric).await?);
        let mut cache = self.boards.lock().expect("board cache");
        // boards of older generations are useless from now on
        cache.retain(|_, (g, _)| *g == generation);
        cache.insert(key, (generation, groups.clone()));
        Ok(groups.as_ref().clone())
    }

    /// The leaderboard's query itself, never from the kept boards (what `bench leaderboard`
    /// times).
    pub async fn leaderboard_query(
        &self,
        dataset: Option<&str>,
        metric: BoardMetric,
    ) -> Result<Vec<BoardGroup>> {
        // a literal dataset condition (not `$1 IS NULL OR ...`) keeps the index usable
        let only = if dataset.is_some() {
            "AND dataset = $1"
        } else {
            ""
        };
        let engine = self.engine();
        // the one MIN/MAX aggregate makes SQLite take the bare `id` from the row it picks (so
        // no other aggregate here may be a MIN or MAX);
        // without INDEXED BY the planner prefers `runs_board` for all datasets and reads the
        // table for every run (545 ms instead of 95 ms over 100k runs)
        let best = if metric.order() == "ASC" {
            "MIN"
        } else {
            "MAX"
        };
        let stats: String = BoardMetric::ALL
            .iter()
            .map(|m| {
                let c = m.column();
                let var = format!(
                    "(SUM({c} * {c}) - SUM({c}) * SUM({c}) / COUNT({c})) \
                         / NULLIF(COUNT({c}) - 1, 0)"
                );
                // none below two values (PostgreSQL's GREATEST would turn a NULL into 0)
                format!(
                    "AVG({c}) AS {c}, CASE WHEN COUNT({c}) > 1 THEN {} END AS {c}_var, \
                     COUNT({c}) AS {c}_n, ",
                    engine.greatest("0.0", &var)
                )
            })
            .collect();
        let col = metric.column();
        // the group's best run: on SQLite the bare `id` of the row the MIN/MAX picked, on
        // PostgreSQL the first id in the metric's order (ties to the oldest run, NULLs last)
        let (best_run, from) = match engine {
            Engine::Sqlite => (
                format!("{best}({col}) AS best, id AS run_id"),
                "runs INDEXED BY runs_groups",
            ),
            Engine::Postgres => (
                format!(
                    "(ARRAY_AGG(id ORDER BY {col} {} NULLS LAST, id))[1] AS run_id",
                    metric.order()
                ),
                "runs",
            ),
        };
        let sql = format!(
            "SELECT dataset, model, config_key, COUNT(*) AS runs, {best_run}, {stats} \
                    AVG(train_seconds) AS train_seconds, \
                    AVG(samples_per_second) AS samples_per_second, \
                    CAST(AVG(num_parameters) AS BIGINT) AS num_parameters, \
                    CAST(AVG(peak_memory_bytes) AS BIGINT) AS peak_memory_bytes, \
                    SUM(device_hours) AS device_hours, \
                    SUM(CASE WHEN source = 'external' THEN 1 ELSE 0 END) AS external_runs \
             FROM {from} \
             WHERE status = 'succeeded' AND lifecycle_stage = 'active' {only} \
             GROUP BY dataset, model, config_key"
        );
        let mut query = sqlx::query_as(&sql);
        if let Some(d) = dataset {
            query = query.bind(d);
        }
        let rows = query
            .fetch_all(self.pool())
            .await
            .context("reading leaderboard")?;
        Ok(rows)
    }
}
