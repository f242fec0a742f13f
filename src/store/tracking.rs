//! Experiments and external runs: runs trained elsewhere and logged here, through the
//! MLflow-compatible API (`http::mlflow`) or the native metric batch endpoint. An external run
//! is a row of `runs` (`source = 'external'`) whose `config` holds its parameters; its tags are
//! in `run_tags`, its metric points packed in `external_metric_chunks` ([`chunks`]) with the
//! latest of each key in `external_latest`.

use super::runs::RunStatus;
use super::{Engine, Real};
use super::{Store, format_time, now, parse_time};
use sqlx::{Any, Transaction};
use std::collections::BTreeMap;
use time::OffsetDateTime;

mod chunks;
mod group;
pub(crate) use chunks::convert_legacy;
pub(crate) use group::GroupWriter;

/// What a tracking call can fail with; the HTTP layers map each to their error shapes.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(String),
    /// The database refused for now ([`super::is_busy`]); a retry may succeed.
    #[error("the database is busy: {0}")]
    Busy(String),
    #[error(transparent)]
    Database(sqlx::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type TrackingResult<T> = Result<T, TrackingError>;

impl From<sqlx::Error> for TrackingError {
    fn from(e: sqlx::Error) -> Self {
        if super::is_busy(&e) {
            TrackingError::Busy(e.to_string())
        } else {
            TrackingError::Database(e)
        }
    }
}

impl TrackingError {
    /// The same refusal again, for a second caller it answers (a busy database too; any other
    /// error as its text).
    fn again(&self) -> TrackingError {
        match self {
            TrackingError::NotFound(s) => TrackingError::NotFound(s.clone()),
            TrackingError::AlreadyExists(s) => TrackingError::AlreadyExists(s.clone()),
            TrackingError::Invalid(s) => TrackingError::Invalid(s.clone()),
            TrackingError::Busy(s) => TrackingError::Busy(s.clone()),
            other => TrackingError::Other(anyhow::anyhow!("{other}")),
        }
    }
}

/// An experiment: a named group of external runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub id: i64,
    pub name: String,
    pub artifact_location: String,
    pub lifecycle_stage: String,
    pub creation_time: i64,
    pub last_update_time: i64,
    pub tags: BTreeMap<String, String>,
}

/// One metric point as MLflow carries it; `value` NaN is allowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoggedPoint<'a> {
    pub key: &'a str,
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub step: i64,
}

/// A stored metric point of an external run.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub key: String,
    pub value: f64,
    pub timestamp: i64,
    pub step: i64,
}

/// An external run with everything MLflow shows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalRun {
    pub id: i64,
    pub experiment_id: i64,
    pub run_name: String,
    pub user_id: String,
    pub status: RunStatus,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub lifecycle_stage: String,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    /// The latest point of each metric.
    pub metrics: Vec<MetricPoint>,
}

/// A run to create.
#[derive(Debug, Clone, Default)]
pub struct NewExternalRun {
    pub experiment_id: i64,
    pub run_name: Option<String>,
    pub user_id: Option<String>,
    /// Milliseconds since the Unix epoch; now if absent.
    pub start_time: Option<i64>,
    pub tags: BTreeMap<String, String>,
    pub params: BTreeMap<String, String>,
}

/// The tag MLflow keeps a run's name in (beside `run_name`).
pub const RUN_NAME_TAG: &str = "mlflow.runName";

/// The parameter or tag that names an external run's model on leaderboards (else "external").
pub const MODEL_KEYS: [&str; 3] = ["modalbench.model", "model", "model_name"];
/// The parameter or tag that names its dataset (else the experiment's name).
pub const DATASET_KEYS: [&str; 3] = ["modalbench.dataset", "dataset", "dataset_name"];

/// The metric keys whose latest value becomes a finished external run's leaderboard column,
/// first present wins: the test split's score, then the evaluation's, then the bare name, as
/// training scripts (and the transformers `Trainer`, `eval_accuracy`) name them.
fn summary_keys(column: &str) -> [String; 5] {
    [
        format!("test/{column}"),
        format!("test_{column}"),
        format!("eval/{column}"),
        format!("eval_{column}"),
        column.to_string(),
    ]
}

/// Milliseconds since the Unix epoch.
pub fn millis_now() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A point's timestamp as the stored `time` columns write times (RFC 3339); the epoch when
/// out of range.
pub fn millis_time(ms: i64) -> String {
    from_millis(ms).unwrap_or_else(|_| format_time(OffsetDateTime::UNIX_EPOCH))
}

/// Whether `ms` (milliseconds since 1970) is a time the store can write (years -9999 to 9999).
pub fn millis_in_range(ms: i64) -> bool {
    from_millis(ms).is_ok()
}

fn from_millis(ms: i64) -> TrackingResult<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .map_err(|_| TrackingError::Invalid(format!("timestamp {ms} ms is out of range")))?;
    Ok(format_time(t))
}

fn to_millis(s: &str) -> Option<i64> {
    parse_time(s).map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// NaN is stored as NULL (SQLite has no NaN).
fn stored(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

type ExperimentRow = (i64, String, String, String, i64, i64);

/// How an experiment is looked up: by id or by name.
#[derive(Debug, Clone, Copy)]
enum Key<'a> {
    Id(i64),
    Name(&'a str),
}

impl Store {
    /// Creates an experiment; its name must be new.
    pub async fn create_experiment(
        &self,
        name: &str,
        artifact_location: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> TrackingResult<i64> {
        let mut tx = self.write_tx().await?;
        let taken: Option<(i64,)> = sqlx::query_as("SELECT id FROM experiments WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(TrackingError::AlreadyExists(format!("experiment '{name}'")));
        }
        let t = millis_now();
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO experiments (name, artifact_location, creation_time, last_update_time) \
             VALUES ($1, '', $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(t)
        .bind(t)
        .fetch_one(&mut *tx)
        .await?;
        let location = artifact_location
            .filter(|l| !l.is_empty())
            .map_or_else(|| format!("mlflow-artifacts:/{id}"), str::to_string);
        sqlx::query("UPDATE experiments SET artifact_location = $1 WHERE id = $2")
            .bind(location)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for (k, v) in tags {
            set_experiment_tag(&mut tx, id, k, v).await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Every experiment (the caller filters, orders and pages).
    pub async fn experiments(&self) -> TrackingResult<Vec<Experiment>> {
        let rows: Vec<ExperimentRow> = sqlx::query_as(
            "SELECT id, name, artifact_location, lifecycle_stage, creation_time, \
                 last_update_time FROM experiments ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        let tags: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT experiment_id, key, value FROM experiment_tags")
                .fetch_all(self.pool())
                .await?;
        let mut by_id: BTreeMap<i64, BTreeMap<String, String>> = BTreeMap::new();
        for (id, k, v) in tags {
            by_id.entry(id).or_default().insert(k, v);
        }
        Ok(rows
            .into_iter()
            .map(|r| {
                let tags = by_id.remove(&r.0).unwrap_or_default();
                experiment(r, tags)
            })
            .collect())
    }

    /// One experiment by id.
    pub async fn experiment(&self, id: i64) -> TrackingResult<Experiment> {
        self.experiment_where("id = $1", Key::Id(id))
            .await?
            .ok_or_else(|| TrackingError::NotFound(format!("experiment with id '{id}'")))
    }

    /// One experiment by name.
    pub async fn experiment_by_name(&self, name: &str) -> TrackingResult<Experiment> {
        self.experiment_where("name = $1", Key::Name(name))
            .await?
            .ok_or_else(|| TrackingError::NotFound(format!("experiment '{name}'")))
    }

    async fn experiment_where(
        &self,
        condition: &str,
        value: Key<'_>,
    ) -> TrackingResult<Option<Experiment>> {
        let sql = format!(
            "SELECT id, name, artifact_location, lifecycle_stage, creation_time, \
                 last_update_time FROM experiments WHERE {condition}"
        );
        let query = sqlx::query_as(&sql);
        let query = match value {
            Key::Id(id) => query.bind(id),
            Key::Name(name) => query.bind(name),
        };
        let row: Option<ExperimentRow> = query.fetch_optional(self.pool()).await?;
        let Some(row) = row else { return Ok(None) };
        let tags: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM experiment_tags WHERE experiment_id = $1")
                .bind(row.0)
                .fetch_all(self.pool())
                .await?;
        Ok(Some(experiment(row, tags.into_iter().collect())))
    }

    /// Renames an experiment (to a name no other has).
    pub async fn rename_experiment(&self, id: i64, name: &str) -> TrackingResult<()> {
        self.experiment(id).await?;
        let taken: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM experiments WHERE name = $1 AND id != $2")
                .bind(name)
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        if taken.is_some() {
            return Err(TrackingError::AlreadyExists(format!("experiment '{name}'")));
        }
        sqlx::query("UPDATE experiments SET name = $1, last_update_time = $2 WHERE id = $3")
            .bind(name)
            .bind(millis_now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Marks an experiment deleted or active again (MLflow's soft deletion), with its runs.
    pub async fn set_experiment_stage(&self, id: i64, active: bool) -> TrackingResult<()> {
        if id == 0 && !active {
            return Err(TrackingError::Invalid(
                "the default experiment (id 0) cannot be deleted".into(),
            ));
        }
        self.experiment(id).await?;
        let stage = if active { "active" } else { "deleted" };
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE experiments SET lifecycle_stage = $1, last_update_time = $2 WHERE id = $3",
        )
        .bind(stage)
        .bind(millis_now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE runs SET lifecycle_stage = $1 WHERE experiment_id = $2")
            .bind(stage)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets one tag of an experiment.
    pub async fn set_experiment_tag(&self, id: i64, key: &str, value: &str) -> TrackingResult<()> {
        self.experiment(id).await?;
        let mut tx = self.write_tx().await?;
        set_experiment_tag(&mut tx, id, key, value).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Creates an external run, `running` from its start time.
    pub async fn create_external_run(&self, run: &NewExternalRun) -> TrackingResult<i64> {
        let exp = self.experiment(run.experiment_id).await?;
        if exp.lifecycle_stage != "active" {
            return Err(TrackingError::Invalid(format!(
                "experiment {} is deleted",
                exp.id
            )));
        }
        let start = from_millis(run.start_time.unwrap_or_else(millis_now))?;
        let mut tx = self.write_tx().await?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO runs (status, source, model, dataset, config, created_at, started_at, \
                 experiment_id, run_name, user_id, progress) \
             VALUES ('running', 'external', 'external', $1, '{}', $2, $3, $4, $5, $6, NULL) \
             RETURNING id",
        )
        .bind(&exp.name)
        .bind(now())
        .bind(&start)
        .bind(exp.id)
        .bind(run.run_name.as_deref().unwrap_or(""))
        .bind(run.user_id.as_deref().unwrap_or(""))
        .fetch_one(&mut *tx)
        .await?;
        // the name comes as `run_name` or as the run-name tag, each filling the other; MLflow
        // names unnamed runs, here with a stable readable name from the id
        let name = run
            .run_name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| run.tags.get(RUN_NAME_TAG).cloned())
            .unwrap_or_else(|| format!("run-{id}"));
        let mut tags = run.tags.clone();
        tags.insert(RUN_NAME_TAG.into(), name);
        log_in(&mut tx, self.engine(), id, &[], &run.params, &tags).await?;
        refresh_names(&mut tx, id).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The id of an external run, checked to exist (deleted ones too when `deleted_ok`).
    async fn external_run_id(&self, id: i64, deleted_ok: bool) -> TrackingResult<i64> {
        external_run_in(self.pool(), id, deleted_ok).await
    }

    /// One external run with its parameters, tags and latest metrics.
    pub async fn external_run(&self, id: i64) -> TrackingResult<ExternalRun> {
        self.external_run_id(id, true).await?;
        Ok(self
            .external_runs_where("id = $1", &[id])
            .await?
            .pop()
            .expect("the run exists"))
    }

    /// The external runs of some experiments, with their data (the caller filters, orders
    /// and pages).
    pub async fn external_runs_in(&self, experiments: &[i64]) -> TrackingResult<Vec<ExternalRun>> {
        if experiments.is_empty() {
            return Ok(Vec::new());
        }
        let marks = self.engine().placeholders(1, experiments.len());
        self.external_runs_where(
            &format!("source = 'external' AND experiment_id IN ({marks})"),
            experiments,
        )
        .await
    }

    async fn external_runs_where(
        &self,
        condition: &str,
        binds: &[i64],
    ) -> TrackingResult<Vec<ExternalRun>> {
        type Row = (
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
            String,
            Option<String>,
            Option<String>,
            String,
            String,
        );
        let sql = format!(
            "SELECT id, experiment_id, run_name, user_id, status, started_at, finished_at, \
                 lifecycle_stage, config FROM runs WHERE {condition} ORDER BY id"
        );
        let mut q = sqlx::query_as::<_, Row>(&sql);
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(self.pool()).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let (lo, hi) = (rows[0].0, rows[rows.len() - 1].0);
        let tags: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT run_id, key, value FROM run_tags WHERE run_id BETWEEN $1 AND $2",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(self.pool())
        .await?;
        let latest: Vec<(i64, String, Option<f64>, i64, i64)> = sqlx::query_as(
            "SELECT run_id, key, value, timestamp, step FROM external_latest \
             WHERE run_id BETWEEN $1 AND $2 ORDER BY run_id, key",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(self.pool())
        .await?;
        let mut tags_of: BTreeMap<i64, BTreeMap<String, String>> = BTreeMap::new();
        for (id, k, v) in tags {
            tags_of.entry(id).or_default().insert(k, v);
        }
        let mut metrics_of: BTreeMap<i64, Vec<MetricPoint>> = BTreeMap::new();
        for (id, key, value, timestamp, step) in latest {
            metrics_of.entry(id).or_default().push(MetricPoint {
                key,
                value: value.unwrap_or(f64::NAN),
                timestamp,
                step,
            });
        }
        rows.into_iter()
            .map(
                |(id, exp, name, user, status, started, finished, stage, config)| {
                    Ok(ExternalRun {
                        id,
                        experiment_id: exp.unwrap_or(0),
                        run_name: name.unwrap_or_default(),
                        user_id: user.unwrap_or_default(),
                        status: status.parse().map_err(anyhow::Error::from)?,
                        start_time: started.as_deref().and_then(to_millis),
                        end_time: finished.as_deref().and_then(to_millis),
                        lifecycle_stage: stage,
                        params: serde_json::from_str(&config).map_err(anyhow::Error::from)?,
                        tags: tags_of.remove(&id).unwrap_or_default(),
                        metrics: metrics_of.remove(&id).unwrap_or_default(),
                    })
                },
            )
            .collect()
    }

    /// Updates an external run's status, end time and name. A run that ends gets its
    /// leaderboard columns from its latest metrics (see [`summary_keys`]).
    pub async fn update_external_run(
        &self,
        id: i64,
        status: Option<RunStatus>,
        end_time: Option<i64>,
        run_name: Option<&str>,
    ) -> TrackingResult<()> {
        self.external_run_id(id, false).await?;
        let mut tx = self.write_tx().await?;
        if let Some(name) = run_name.filter(|n| !n.is_empty()) {
            sqlx::query("UPDATE runs SET run_name = $1 WHERE id = $2")
                .bind(name)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            upsert_tag(&mut tx, id, RUN_NAME_TAG, name).await?;
        }
        if let Some(status) = status {
            let ended = !status.is_active();
            let finished = match (ended, end_time) {
                (false, _) => None,
                (true, Some(ms)) => Some(from_millis(ms)?),
                (true, None) => Some(now()),
            };
            sqlx::query(
                "UPDATE runs SET status = $1, finished_at = $2, \
                     progress = CASE WHEN $1 = 'succeeded' THEN 1.0 ELSE NULL END \
                 WHERE id = $3",
            )
            .bind(status.as_str())
            .bind(&finished)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if ended {
                summarise(&mut tx, id).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Logs metric points, parameters and tags of an external run in one transaction; on
    /// SQLite, in the transaction of the group it is written with (see [`GroupWriter`]).
    /// Parameters cannot change once logged (as in MLflow); logging the same value again is
    /// fine.
    pub async fn log_external(
        &self,
        id: i64,
        metrics: &[LoggedPoint<'_>],
        params: &BTreeMap<String, String>,
        tags: &BTreeMap<String, String>,
    ) -> TrackingResult<()> {
        let grouped = match &self.group {
            Some(group) => group.log(id, metrics, params, tags).await.ok(),
            None => None,
        };
        match grouped {
            Some(answer) => answer?,
            None => {
                let mut tx = self.write_tx().await?;
                log_checked(&mut tx, self.engine(), id, metrics, params, tags).await?;
                tx.commit().await?;
            }
        }
        self.count_points(true, metrics.len());
        if !metrics.is_empty() {
            self.count_series_writes([id]);
        }
        Ok(())
    }

    /// On SQLite, the logged batches of external runs taken so far and the transactions
    /// they were written in (see [`GroupWriter`]); `None` on PostgreSQL, where each batch is
    /// a transaction of its own.
    pub fn logged_batches(&self) -> Option<(u64, u64)> {
        self.group.as_ref().map(GroupWriter::counts)
    }

    /// Deletes one tag of an external run.
    pub async fn delete_run_tag(&self, id: i64, key: &str) -> TrackingResult<()> {
        self.external_run_id(id, false).await?;
        let done = sqlx::query("DELETE FROM run_tags WHERE run_id = $1 AND key = $2")
            .bind(id)
            .bind(key)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(TrackingError::NotFound(format!(
                "tag '{key}' of run '{id}'"
            )));
        }
        let mut tx = self.write_tx().await?;
        refresh_names(&mut tx, id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks an external run deleted or active again.
    pub async fn set_external_run_stage(&self, id: i64, active: bool) -> TrackingResult<()> {
        self.external_run_id(id, true).await?;
        sqlx::query("UPDATE runs SET lifecycle_stage = $1 WHERE id = $2")
            .bind(if active { "active" } else { "deleted" })
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The points of one metric of an external run in (step, timestamp) order, from
    /// `offset`, at most `limit`.
    pub async fn external_history(
        &self,
        id: i64,
        key: &str,
        offset: i64,
        limit: i64,
    ) -> TrackingResult<Vec<MetricPoint>> {
        self.external_run_id(id, true).await?;
        let series = chunks::read(self.pool(), id, Some(key)).await?;
        let skip = usize::try_from(offset).unwrap_or(0);
        let take = usize::try_from(limit).unwrap_or(0);
        Ok(series
            .into_values()
            .flatten()
            .skip(skip)
            .take(take)
            .collect())
    }

    /// Every point of an external run by key (one key if given), in (step, timestamp) order.
    pub async fn external_series(
        &self,
        id: i64,
        key: Option<&str>,
    ) -> anyhow::Result<BTreeMap<String, Vec<MetricPoint>>> {
        chunks::read(self.pool(), id, key).await
    }
}

/// The id of an external run, checked to exist (deleted ones too when `deleted_ok`), read
/// through `executor` (the pool, or the transaction that writes to the run).
async fn external_run_in<'c, E: sqlx::Executor<'c, Database = Any>>(
    executor: E,
    id: i64,
    deleted_ok: bool,
) -> TrackingResult<i64> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT source, lifecycle_stage FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(executor)
            .await?;
    match row {
        None => Err(TrackingError::NotFound(format!("run with id '{id}'"))),
        Some((source, _)) if source != "external" => Err(TrackingError::Invalid(format!(
            "run {id} was trained by modalbench itself; only external runs take logged data"
        ))),
        Some((_, stage)) if stage != "active" && !deleted_ok => Err(TrackingError::Invalid(
            format!("run {id} is deleted; restore it first"),
        )),
        Some(_) => Ok(id),
    }
}

fn experiment(r: ExperimentRow, tags: BTreeMap<String, String>) -> Experiment {
    let (id, name, artifact_location, lifecycle_stage, creation_time, last_update_time) = r;
    Experiment {
        id,
        name,
        artifact_location,
        lifecycle_stage,
        creation_time,
        last_update_time,
        tags,
    }
}

/// Whose tags: an experiment's (`experiment_tags`) or a run's (`run_tags`).
#[derive(Debug, Clone, Copy)]
enum TagsOf {
    Experiment,
    Run,
}

/// Sets one tag, replacing its value.
async fn upsert_tag_of(
    tx: &mut Transaction<'_, Any>,
    of: TagsOf,
    id: i64,
    key: &str,
    value: &str,
) -> TrackingResult<()> {
    let (table, owner) = match of {
        TagsOf::Experiment => ("experiment_tags", "experiment_id"),
        TagsOf::Run => ("run_tags", "run_id"),
    };
    sqlx::query(&format!(
        "INSERT INTO {table} ({owner}, key, value) VALUES ($1, $2, $3) \
         ON CONFLICT ({owner}, key) DO UPDATE SET value = excluded.value"
    ))
    .bind(id)
    .bind(key)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn set_experiment_tag(
    tx: &mut Transaction<'_, Any>,
    id: i64,
    key: &str,
    value: &str,
) -> TrackingResult<()> {
    upsert_tag_of(tx, TagsOf::Experiment, id, key, value).await
}

async fn upsert_tag(
    tx: &mut Transaction<'_, Any>,
    id: i64,
    key: &str,
    value: &str,
) -> TrackingResult<()> {
    upsert_tag_of(tx, TagsOf::Run, id, key, value).await
}

/// Rows of latest points per INSERT statement (5 parameters each; SQLite takes up to 32,766).
const POINTS_PER_STATEMENT: usize = 1000;

/// Checks in `tx` that run `id` takes logged data, then logs its points, parameters and
/// tags. The check is inside the write transaction: one pool round trip fewer per batch.
async fn log_checked(
    tx: &mut Transaction<'static, Any>,
    engine: Engine,
    id: i64,
    metrics: &[LoggedPoint<'_>],
    params: &BTreeMap<String, String>,
    tags: &BTreeMap<String, String>,
) -> TrackingResult<()> {
    external_run_in(&mut **tx, id, false).await?;
    log_in(tx, engine, id, metrics, params, tags).await?;
    if !params.is_empty() || !tags.is_empty() {
        refresh_names(tx, id).await?;
    }
    Ok(())
}

async fn log_in(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    id: i64,
    metrics: &[LoggedPoint<'_>],
    params: &BTreeMap<String, String>,
    tags: &BTreeMap<String, String>,
) -> TrackingResult<()> {
    if !params.is_empty() {
        let (config,): (String,) = sqlx::query_as("SELECT config FROM runs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
        let mut stored: BTreeMap<String, String> =
            serde_json::from_str(&config).map_err(anyhow::Error::from)?;
        for (k, v) in params {
            match stored.get(k) {
                Some(old) if old != v => {
                    return Err(TrackingError::Invalid(format!(
                        "Changing param values is not allowed. Param with key='{k}' was already \
                         logged with value='{old}' for run ID='{id}'. Attempted logging new \
                         value '{v}'."
                    )));
                }
                _ => {
                    stored.insert(k.clone(), v.clone());
                }
            }
        }
        sqlx::query("UPDATE runs SET config = $1 WHERE id = $2")
            .bind(serde_json::to_string(&stored).map_err(anyhow::Error::from)?)
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    for (k, v) in tags {
        upsert_tag(tx, id, k, v).await?;
        if k == RUN_NAME_TAG {
            sqlx::query("UPDATE runs SET run_name = $1 WHERE id = $2")
                .bind(v)
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
    }
    chunks::insert(tx, engine, id, metrics).await?;
    // the latest point of each key in this batch, against the stored latest
    let mut latest: BTreeMap<&str, &LoggedPoint> = BTreeMap::new();
    for p in metrics {
        let e = latest.entry(p.key).or_insert(p);
        if (p.step, p.timestamp) >= (e.step, e.timestamp) {
            *e = p;
        }
    }
    // one statement for every key of the batch, not one per key
    let latest: Vec<&LoggedPoint> = latest.into_values().collect();
    for chunk in latest.chunks(POINTS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO external_latest (run_id, key, value, timestamp, step) {} \
             ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, \
                 timestamp = excluded.timestamp, step = excluded.step \
             WHERE excluded.step > external_latest.step \
                 OR (excluded.step = external_latest.step \
                     AND excluded.timestamp >= external_latest.timestamp)",
            engine.values_rows(chunk.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for p in chunk {
            q = q
                .bind(id)
                .bind(p.key)
                .bind(Real(stored(p.value)))
                .bind(p.timestamp)
                .bind(p.step);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Sets an external run's model and dataset names from its parameters and tags
/// ([`MODEL_KEYS`], [`DATASET_KEYS`]; tags first).
async fn refresh_names(tx: &mut Transaction<'_, Any>, id: i64) -> TrackingResult<()> {
    let (config, exp_name): (String, String) = sqlx::query_as(
        "SELECT r.config, e.name FROM runs r JOIN experiments e ON e.id = r.experiment_id \
         WHERE r.id = $1",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    let params: BTreeMap<String, String> =
        serde_json::from_str(&config).map_err(anyhow::Error::from)?;
    let tags: BTreeMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT key, value FROM run_tags WHERE run_id = $1")
            .bind(id)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
    let pick = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| tags.get(*k).or_else(|| params.get(*k)))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let model = pick(&MODEL_KEYS).unwrap_or_else(|| "external".into());
    let dataset = pick(&DATASET_KEYS).unwrap_or(exp_name);
    sqlx::query("UPDATE runs SET model = $1, dataset = $2 WHERE id = $3")
        .bind(model)
        .bind(dataset)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Fills a finished external run's leaderboard columns from its latest metrics, and its
/// training time from its start and end.
async fn summarise(tx: &mut Transaction<'_, Any>, id: i64) -> TrackingResult<()> {
    let latest: BTreeMap<String, Option<f64>> = sqlx::query_as::<_, (String, Option<f64>)>(
        "SELECT key, value FROM external_latest WHERE run_id = $1",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    let column = |c: &str| {
        summary_keys(c)
            .iter()
            .find_map(|k| latest.get(k).copied())
            .flatten()
    };
    let (started, finished): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT started_at, finished_at FROM runs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
    let seconds = match (
        started.as_deref().and_then(to_millis),
        finished.as_deref().and_then(to_millis),
    ) {
        (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / 1000.0),
        _ => None,
    };
    sqlx::query(
        "UPDATE runs SET accuracy = $1, f1 = $2, auroc = $3, loss = $4, train_seconds = $5 \
         WHERE id = $6",
    )
    .bind(Real(column("accuracy")))
    .bind(Real(column("f1")))
    .bind(Real(column("auroc")))
    .bind(Real(column("loss")))
    .bind(Real(seconds))
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
