//! MLflow-compatible tracking under `/api/2.0/mlflow/` (and `/ajax-api/2.0/mlflow/`, as
//! MLflow's own server serves it), so that a notebook using the stock `mlflow` client
//! (`mlflow.set_tracking_uri("http://host:port")`) logs runs trained anywhere into modalbench.
//! Such runs are external runs (`store::tracking`): they show in run lists, comparisons and
//! leaderboards beside the runs trained here.
//!
//! Requests and answers follow MLflow's REST API 2.0: GET endpoints read the query string,
//! POST endpoints a JSON body; int64 fields are accepted as numbers or strings and answered as
//! numbers; errors are `{"error_code", "message"}` with MLflow's codes and statuses. Artifacts
//! are not stored (their endpoints answer `ENDPOINT_NOT_FOUND`).

mod search;

use crate::http::AppState;
use crate::store::runs::RunStatus;
use crate::store::tracking::{
    Experiment, ExternalRun, LoggedPoint, MetricPoint, NewExternalRun, TrackingError, millis_now,
};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// MLflow's limits on one `log-batch` request.
pub const MAX_BATCH_METRICS: usize = 1000;
pub const MAX_BATCH_PARAMS: usize = 100;
pub const MAX_BATCH_TAGS: usize = 100;
/// MLflow's limits on names and values.
const MAX_KEY_LENGTH: usize = 250;
const MAX_PARAM_VALUE_LENGTH: usize = 6000;
const MAX_TAG_VALUE_LENGTH: usize = 8000;
/// Largest page of a search or a metric history.
const MAX_RESULTS: i64 = 50_000;
const MAX_HISTORY_RESULTS: i64 = 25_000;

/// The routes, mounted under both prefixes.
pub fn router() -> Router<AppState> {
    let routes = Router::new()
        .route("/experiments/create", post(create_experiment))
        .route("/experiments/get", get(get_experiment))
        .route("/experiments/get-by-name", get(get_experiment_by_name))
        .route(
            "/experiments/search",
            post(search_experiments).get(search_experiments),
        )
        .route("/experiments/update", post(update_experiment))
        .route("/experiments/delete", post(delete_experiment))
        .route("/experiments/restore", post(restore_experiment))
        .route("/experiments/set-experiment-tag", post(set_experiment_tag))
        .route("/runs/create", post(create_run))
        .route("/runs/update", post(update_run))
        .route("/runs/get", get(get_run))
        .route("/runs/search", post(search_runs))
        .route("/runs/delete", post(delete_run))
        .route("/runs/restore", post(restore_run))
        .route("/runs/log-metric", post(log_metric))
        .route("/runs/log-parameter", post(log_parameter))
        .route("/runs/set-tag", post(set_tag))
        .route("/runs/delete-tag", post(delete_tag))
        .route("/runs/log-batch", post(log_batch))
        .route("/metrics/get-history", get(get_history))
        .fallback(|req: Request| async move {
            MlflowError::new(
                StatusCode::NOT_FOUND,
                "ENDPOINT_NOT_FOUND",
                format!(
                    "no MLflow endpoint {} {} here (modalbench serves the tracking API; \
                     artifacts are not stored)",
                    req.method(),
                    req.uri().path()
                ),
            )
        });
    Router::new()
        .nest("/api/2.0/mlflow", routes.clone())
        .nest("/ajax-api/2.0/mlflow", routes)
}

/// An error in MLflow's shape.
#[derive(Debug)]
pub struct MlflowError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl MlflowError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        MlflowError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `INVALID_PARAMETER_VALUE`.
    fn invalid(message: impl Into<String>) -> Self {
        MlflowError::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)
    }
}

impl From<TrackingError> for MlflowError {
    fn from(e: TrackingError) -> Self {
        match e {
            TrackingError::NotFound(_) => MlflowError::new(
                StatusCode::NOT_FOUND,
                "RESOURCE_DOES_NOT_EXIST",
                capitalised(&e.to_string()),
            ),
            TrackingError::AlreadyExists(_) => MlflowError::new(
                StatusCode::BAD_REQUEST,
                "RESOURCE_ALREADY_EXISTS",
                capitalised(&e.to_string()),
            ),
            TrackingError::Invalid(m) => MlflowError::invalid(m),
            TrackingError::Busy(cause) => busy(cause),
            TrackingError::Database(e) => internal(anyhow::Error::from(e)),
            TrackingError::Other(e) => internal(e),
        }
    }
}

/// 503 `TEMPORARILY_UNAVAILABLE`, which MLflow's client retries.
fn busy(cause: impl std::fmt::Display) -> MlflowError {
    tracing::warn!(error = %cause, "the database is busy");
    MlflowError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "TEMPORARILY_UNAVAILABLE",
        format!("The database is busy ({cause}); try again"),
    )
}

fn internal(e: anyhow::Error) -> MlflowError {
    if let Some(cause) = crate::store::busy_cause(&e) {
        return busy(cause);
    }
    tracing::error!(error = format!("{e:#}"), "internal error in the MLflow API");
    MlflowError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL_ERROR",
        "internal server error",
    )
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        crate::http::error::retry_later(
            (
                self.status,
                Json(json!({"error_code": self.code, "message": self.message})),
            )
                .into_response(),
        )
    }
}

type MlResult<T> = Result<T, MlflowError>;

/// A request message: the query string of a GET, the JSON body of a POST.
struct Msg<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Msg<T> {
    type Rejection = MlflowError;

    async fn from_request(req: Request, state: &S) -> Result<Self, MlflowError> {
        if req.method() == Method::GET {
            let query = req.uri().query().unwrap_or("");
            return serde_urlencoded::from_str(query)
                .map(Msg)
                .map_err(|e| MlflowError::invalid(format!("invalid query: {e}")));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| MlflowError::new(e.status(), "INVALID_PARAMETER_VALUE", e.body_text()))?;
        let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let depth = crate::http::extract::json_depth(body);
        if depth > crate::http::extract::MAX_JSON_DEPTH {
            return Err(MlflowError::new(
                StatusCode::BAD_REQUEST,
                "MALFORMED_REQUEST",
                format!("the request body nests {depth} levels deep"),
            ));
        }
        // straight from the bytes, no `Value` tree in between: building and dropping that
        // tree (a map of four owned keys per metric) took about a tenth of the server's time
        // on 1,000-metric `log-batch` requests; tracking the path of every value took another
        // 4%, so the path is only traced to explain a body that failed
        let malformed = |e: &serde_json::Error| {
            MlflowError::new(
                StatusCode::BAD_REQUEST,
                "MALFORMED_REQUEST",
                format!("the request body is not valid JSON: {e}"),
            )
        };
        match serde_json::from_slice(body) {
            Ok(msg) => Ok(Msg(msg)),
            Err(e) if !e.is_data() => Err(malformed(&e)),
            Err(e) => {
                let mut de = serde_json::Deserializer::from_slice(body);
                Err(match serde_path_to_error::deserialize::<_, T>(&mut de) {
                    Err(e) => MlflowError::invalid(format!(
                        "invalid value for `{}`: {}",
                        e.path(),
                        e.inner()
                    )),
                    Ok(_) => MlflowError::invalid(format!("invalid value: {e}")),
                })
            }
        }
    }
}

/// An int64 given as a number or a string, as MLflow's protobuf JSON allows.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| de::Error::custom(format!("{n} is not an int64"))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("`{s}` is not an int64"))),
        Some(other) => Err(de::Error::custom(format!("{other} is not an int64"))),
    }
}

/// A double given as a number or a string (`"NaN"`, `"Infinity"`, `"-Infinity"`, digits).
fn double<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => match s.as_str() {
            "NaN" | "nan" => Ok(Some(f64::NAN)),
            "Infinity" | "inf" => Ok(Some(f64::INFINITY)),
            "-Infinity" | "-inf" => Ok(Some(f64::NEG_INFINITY)),
            s => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| de::Error::custom(format!("`{s}` is not a number"))),
        },
        Some(other) => Err(de::Error::custom(format!("{other} is not a number"))),
    }
}

/// A list given as a JSON array, or (in a query string) as one value.
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(de::Error::custom(format!("{other} is not a string"))),
            })
            .collect(),
        Some(other) => Err(de::Error::custom(format!("{other} is not a list"))),
    }
}

/// A double as MLflow's JSON writes it: a number, or `"NaN"`/`"Infinity"`/`"-Infinity"`.
fn json_double(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v == f64::INFINITY {
        json!("Infinity")
    } else if v == f64::NEG_INFINITY {
        json!("-Infinity")
    } else {
        json!(v)
    }
}

#[derive(Debug, Deserialize)]
struct KeyValue {
    key: Option<String>,
    value: Option<String>,
}

fn key_values(
    items: Vec<KeyValue>,
    what: &str,
    max_value: usize,
) -> MlResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for kv in items {
        let key = required(kv.key, &format!("{what} key"))?;
        let value = kv.value.unwrap_or_default();
        check_key(&key, what)?;
        check_value(&key, &value, what, max_value)?;
        out.insert(key, value);
    }
    Ok(out)
}

fn required<T>(v: Option<T>, name: &str) -> MlResult<T> {
    v.ok_or_else(|| MlflowError::invalid(format!("Missing value for required parameter '{name}'.")))
}

/// MLflow's rule for metric, parameter and tag names: alphanumerics, underscores, dashes,
/// periods, spaces and slashes, at most 250 characters, not a path that leaves its folder.
fn check_key(key: &str, what: &str) -> MlResult<()> {
    let ok_chars = key
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '/' | ':'));
    if key.is_empty() || !ok_chars {
        return Err(MlflowError::invalid(format!(
            "Invalid {what} name: '{key}'. Names may only contain alphanumerics, underscores \
             (_), dashes (-), periods (.), spaces ( ), colons (:) and slashes (/)."
        )));
    }
    if key.starts_with('/') || key.split('/').any(|part| part == "..") {
        return Err(MlflowError::invalid(format!(
            "Invalid {what} name: '{key}'. Names may not be absolute paths or contain `..`."
        )));
    }
    if key.chars().count() > MAX_KEY_LENGTH {
        return Err(MlflowError::invalid(format!(
            "{} name '{}...' exceeds the maximum length of {MAX_KEY_LENGTH}",
            capitalised(what),
            key.chars().take(20).collect::<String>()
        )));
    }
    Ok(())
}

fn check_value(key: &str, value: &str, what: &str, max: usize) -> MlResult<()> {
    if value.chars().count() > max {
        return Err(MlflowError::invalid(format!(
            "{} value for '{key}' exceeds the maximum length of {max} characters",
            capitalised(what)
        )));
    }
    Ok(())
}

/// The run id of a request (`run_id`, or the older `run_uuid`).
fn run_id(run_id: Option<String>, run_uuid: Option<String>) -> MlResult<i64> {
    let raw = required(run_id.filter(|s| !s.is_empty()).or(run_uuid), "run_id")?;
    raw.parse()
        .map_err(|_| TrackingError::NotFound(format!("run with id '{raw}'")).into())
}

fn experiment_id(raw: Option<String>) -> MlResult<i64> {
    let raw = required(raw, "experiment_id")?;
    raw.parse()
        .map_err(|_| TrackingError::NotFound(format!("experiment with id '{raw}'")).into())
}

/// MLflow's run status name of a status.
pub fn mlflow_status(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Queued => "SCHEDULED",
        RunStatus::Running | RunStatus::Interrupted => "RUNNING",
        RunStatus::Succeeded => "FINISHED",
        RunStatus::Failed => "FAILED",
        RunStatus::Cancelled => "KILLED",
    }
}

fn status_of(name: &str) -> MlResult<RunStatus> {
    Ok(match name {
        "RUNNING" => RunStatus::Running,
        "SCHEDULED" => RunStatus::Queued,
        "FINISHED" => RunStatus::Succeeded,
        "FAILED" => RunStatus::Failed,
        "KILLED" => RunStatus::Cancelled,
        other => {
            return Err(MlflowError::invalid(format!(
                "Invalid value '{other}' for parameter 'status': one of RUNNING, SCHEDULED, \
                 FINISHED, FAILED, KILLED"
            )));
        }
    })
}

fn tag_list(tags: &BTreeMap<String, String>) -> Vec<Value> {
    tags.iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect()
}

fn experiment_json(e: &Experiment) -> Value {
    json!({
        "experiment_id": e.id.to_string(),
        "name": e.name,
        "artifact_location": e.artifact_location,
        "lifecycle_stage": e.lifecycle_stage,
        "creation_time": e.creation_time,
        "last_update_time": e.last_update_time,
        "tags": tag_list(&e.tags),
    })
}

fn metric_json(m: &MetricPoint) -> Value {
    json!({"key": m.key, "value": json_double(m.value), "timestamp": m.timestamp, "step": m.step})
}

fn run_info(r: &ExternalRun) -> Value {
    let mut info = json!({
        "run_id": r.id.to_string(),
        "run_uuid": r.id.to_string(),
        "run_name": r.run_name,
        "experiment_id": r.experiment_id.to_string(),
        "user_id": r.user_id,
        "status": mlflow_status(r.status),
        "artifact_uri": format!("mlflow-artifacts:/{}/{}/artifacts", r.experiment_id, r.id),
        "lifecycle_stage": r.lifecycle_stage,
    });
    if let Some(t) = r.start_time {
        info["start_time"] = json!(t);
    }
    if let Some(t) = r.end_time {
        info["end_time"] = json!(t);
    }
    info
}

fn run_json(r: &ExternalRun) -> Value {
    json!({
        "info": run_info(r),
        "data": {
            "metrics": r.metrics.iter().map(metric_json).collect::<Vec<_>>(),
            "params": tag_list(&r.params),
            "tags": tag_list(&r.tags),
        },
        "inputs": {},
    })
}

/// `max_results` within `1..=max`, `default` when absent.
fn page_size(given: Option<i64>, default: i64, max: i64) -> MlResult<i64> {
    let n = given.unwrap_or(default);
    if (1..=max).contains(&n) {
        Ok(n)
    } else {
        Err(MlflowError::invalid(format!(
            "Invalid value {n} for parameter 'max_results' supplied: it must be between 1 and {max}"
        )))
    }
}

/// A page token is the offset of the page it starts.
fn page_offset(token: Option<&str>) -> MlResult<usize> {
    match token.filter(|t| !t.is_empty()) {
        None => Ok(0),
        Some(t) => t
            .parse()
            .map_err(|_| MlflowError::invalid(format!("Invalid page token '{t}'"))),
    }
}

/// The page of `items` from `offset`, with the token of the next page if there is one.
fn page<T>(items: Vec<T>, offset: usize, size: i64) -> (Vec<T>, Option<String>) {
    let size = size as usize;
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(offset).take(size).collect();
    let next = (offset + size < total).then(|| (offset + size).to_string());
    (page, next)
}

/// `ACTIVE_ONLY` (default), `DELETED_ONLY` or `ALL`.
fn view_allows(view: Option<&str>, stage: &str) -> MlResult<bool> {
    match view.unwrap_or("ACTIVE_ONLY") {
        "ACTIVE_ONLY" | "1" => Ok(stage == "active"),
        "DELETED_ONLY" | "2" => Ok(stage == "deleted"),
        "ALL" | "3" => Ok(true),
        other => Err(MlflowError::invalid(format!(
            "Invalid view type '{other}': ACTIVE_ONLY, DELETED_ONLY or ALL"
        ))),
    }
}

// --- experiments ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct CreateExperiment {
    name: Option<String>,
    artifact_location: Option<String>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

async fn create_experiment(
    State(state): State<AppState>,
    Msg(req): Msg<CreateExperiment>,
) -> MlResult<Json<Value>> {
    let name = required(req.name.filter(|n| !n.trim().is_empty()), "name")?;
    if name.chars().count() > 500 {
        return Err(MlflowError::invalid(
            "Experiment name exceeds 500 characters",
        ));
    }
    let tags = key_values(req.tags, "tag", MAX_TAG_VALUE_LENGTH)?;
    let id = state
        .store
        .create_experiment(&name, req.artifact_location.as_deref(), &tags)
        .await?;
    Ok(Json(json!({"experiment_id": id.to_string()})))
}

#[derive(Deserialize)]
struct ExperimentQuery {
    experiment_id: Option<String>,
}

async fn get_experiment(
    State(state): State<AppState>,
    Msg(q): Msg<ExperimentQuery>,
) -> MlResult<Json<Value>> {
    let e = state
        .store
        .experiment(experiment_id(q.experiment_id)?)
        .await?;
    Ok(Json(json!({"experiment": experiment_json(&e)})))
}

#[derive(Deserialize)]
struct ByName {
    experiment_name: Option<String>,
}

async fn get_experiment_by_name(
    State(state): State<AppState>,
    Msg(q): Msg<ByName>,
) -> MlResult<Json<Value>> {
    let name = required(q.experiment_name, "experiment_name")?;
    let e = state.store.experiment_by_name(&name).await?;
    Ok(Json(json!({"experiment": experiment_json(&e)})))
}

#[derive(Deserialize)]
struct SearchExperiments {
    #[serde(default, deserialize_with = "int64")]
    max_results: Option<i64>,
    page_token: Option<String>,
    filter: Option<String>,
    #[serde(default, deserialize_with = "list")]
    order_by: Vec<String>,
    view_type: Option<String>,
}

async fn search_experiments(
    State(state): State<AppState>,
    Msg(q): Msg<SearchExperiments>,
) -> MlResult<Json<Value>> {
    let size = page_size(q.max_results, 1000, MAX_RESULTS)?;
    let offset = page_offset(q.page_token.as_deref())?;
    let clauses = search::experiment_filter(q.filter.as_deref().unwrap_or(""))
        .map_err(|e| MlflowError::invalid(format!("Invalid filter: {e}")))?;
    let order = search::experiment_order(&q.order_by)
        .map_err(|e| MlflowError::invalid(format!("Invalid order_by: {e}")))?;
    let mut found = Vec::new();
    for e in state.store.experiments().await? {
        if view_allows(q.view_type.as_deref(), &e.lifecycle_stage)?
            && search::experiment_matches(&e, &clauses)
        {
            found.push(e);
        }
    }
    search::sort_experiments(&mut found, &order);
    let (items, next) = page(found, offset, size);
    let mut out = json!({"experiments": items.iter().map(experiment_json).collect::<Vec<_>>()});
    if let Some(t) = next {
        out["next_page_token"] = json!(t);
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct UpdateExperiment {
    experiment_id: Option<String>,
    new_name: Option<String>,
}

async fn update_experiment(
    State(state): State<AppState>,
    Msg(req): Msg<UpdateExperiment>,
) -> MlResult<Json<Value>> {
    let id = experiment_id(req.experiment_id)?;
    if let Some(name) = req.new_name.filter(|n| !n.trim().is_empty()) {
        state.store.rename_experiment(id, &name).await?;
    }
    Ok(Json(json!({})))
}

async fn delete_experiment(
    State(state): State<AppState>,
    Msg(req): Msg<ExperimentQuery>,
) -> MlResult<Json<Value>> {
    let id = experiment_id(req.experiment_id)?;
    state.store.set_experiment_stage(id, false).await?;
    Ok(Json(json!({})))
}

async fn restore_experiment(
    State(state): State<AppState>,
    Msg(req): Msg<ExperimentQuery>,
) -> MlResult<Json<Value>> {
    let id = experiment_id(req.experiment_id)?;
    state.store.set_experiment_stage(id, true).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct ExperimentTag {
    experiment_id: Option<String>,
    key: Option<String>,
    value: Option<String>,
}

async fn set_experiment_tag(
    State(state): State<AppState>,
    Msg(req): Msg<ExperimentTag>,
) -> MlResult<Json<Value>> {
    let id = experiment_id(req.experiment_id)?;
    let key = required(req.key, "key")?;
    let value = req.value.unwrap_or_default();
    check_key(&key, "tag")?;
    check_value(&key, &value, "tag", MAX_TAG_VALUE_LENGTH)?;
    state.store.set_experiment_tag(id, &key, &value).await?;
    Ok(Json(json!({})))
}

// --- runs ----------------------------------------------------------------------------------

#[derive(Deserialize)]
struct CreateRun {
    experiment_id: Option<String>,
    user_id: Option<String>,
    run_name: Option<String>,
    #[serde(default, deserialize_with = "int64")]
    start_time: Option<i64>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

async fn create_run(
    State(state): State<AppState>,
    Msg(req): Msg<CreateRun>,
) -> MlResult<Json<Value>> {
    let experiment_id = match req.experiment_id {
        None => 0,
        some => experiment_id(some)?,
    };
    let tags = key_values(req.tags, "tag", MAX_TAG_VALUE_LENGTH)?;
    let id = state
        .store
        .create_external_run(&NewExternalRun {
            experiment_id,
            run_name: req.run_name,
            user_id: req.user_id.or_else(|| tags.get("mlflow.user").cloned()),
            start_time: req.start_time,
            tags,
            params: BTreeMap::new(),
        })
        .await?;
    let run = state.store.external_run(id).await?;
    Ok(Json(json!({"run": run_json(&run)})))
}

#[derive(Deserialize)]
struct UpdateRun {
    run_id: Option<String>,
    run_uuid: Option<String>,
    status: Option<String>,
    #[serde(default, deserialize_with = "int64")]
    end_time: Option<i64>,
    run_name: Option<String>,
}

async fn update_run(
    State(state): State<AppState>,
    Msg(req): Msg<UpdateRun>,
) -> MlResult<Json<Value>> {
    let id = run_id(req.run_id, req.run_uuid)?;
    let status = req.status.as_deref().map(status_of).transpose()?;
    state
        .store
        .update_external_run(id, status, req.end_time, req.run_name.as_deref())
        .await?;
    let run = state.store.external_run(id).await?;
    Ok(Json(json!({"run_info": run_info(&run)})))
}

#[derive(Deserialize)]
struct RunRef {
    run_id: Option<String>,
    run_uuid: Option<String>,
}

async fn get_run(State(state): State<AppState>, Msg(q): Msg<RunRef>) -> MlResult<Json<Value>> {
    let id = run_id(q.run_id, q.run_uuid)?;
    let run = state.store.external_run(id).await?;
    Ok(Json(json!({"run": run_json(&run)})))
}

async fn delete_run(State(state): State<AppState>, Msg(q): Msg<RunRef>) -> MlResult<Json<Value>> {
    let id = run_id(q.run_id, q.run_uuid)?;
    state.store.set_external_run_stage(id, false).await?;
    Ok(Json(json!({})))
}

async fn restore_run(State(state): State<AppState>, Msg(q): Msg<RunRef>) -> MlResult<Json<Value>> {
    let id = run_id(q.run_id, q.run_uuid)?;
    state.store.set_external_run_stage(id, true).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct SearchRuns {
    #[serde(default, deserialize_with = "list")]
    experiment_ids: Vec<String>,
    filter: Option<String>,
    run_view_type: Option<String>,
    #[serde(default, deserialize_with = "int64")]
    max_results: Option<i64>,
    #[serde(default, deserialize_with = "list")]
    order_by: Vec<String>,
    page_token: Option<String>,
}

async fn search_runs(
    State(state): State<AppState>,
    Msg(q): Msg<SearchRuns>,
) -> MlResult<Json<Value>> {
    let size = page_size(q.max_results, 1000, MAX_RESULTS)?;
    let offset = page_offset(q.page_token.as_deref())?;
    let clauses = search::run_filter(q.filter.as_deref().unwrap_or(""))
        .map_err(|e| MlflowError::invalid(format!("Invalid filter: {e}")))?;
    let order = search::run_order(&q.order_by)
        .map_err(|e| MlflowError::invalid(format!("Invalid order_by: {e}")))?;
    let ids = q
        .experiment_ids
        .into_iter()
        .map(|e| experiment_id(Some(e)))
        .collect::<MlResult<Vec<i64>>>()?;
    let mut found = Vec::new();
    for r in state.store.external_runs_in(&ids).await? {
        if view_allows(q.run_view_type.as_deref(), &r.lifecycle_stage)?
            && search::run_matches(&r, &clauses)
        {
            found.push(r);
        }
    }
    search::sort_runs(&mut found, &order);
    let (items, next) = page(found, offset, size);
    let mut out = json!({});
    if !items.is_empty() {
        out["runs"] = json!(items.iter().map(run_json).collect::<Vec<_>>());
    }
    if let Some(t) = next {
        out["next_page_token"] = json!(t);
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct Metric {
    key: Option<String>,
    #[serde(default, deserialize_with = "double")]
    value: Option<f64>,
    #[serde(default, deserialize_with = "int64")]
    timestamp: Option<i64>,
    #[serde(default, deserialize_with = "int64")]
    step: Option<i64>,
}

/// A checked metric point (the timestamp defaults to now, the step to 0, as in MLflow).
fn point(m: &Metric) -> MlResult<LoggedPoint<'_>> {
    let key = required(m.key.as_deref(), "key")?;
    check_key(key, "metric")?;
    Ok(LoggedPoint {
        key,
        value: required(m.value, "value")?,
        timestamp: m.timestamp.unwrap_or_else(millis_now),
        step: m.step.unwrap_or(0),
    })
}

#[derive(Deserialize)]
struct LogMetric {
    run_id: Option<String>,
    run_uuid: Option<String>,
    #[serde(flatten)]
    metric: Metric,
}

async fn log_metric(
    State(state): State<AppState>,
    Msg(req): Msg<LogMetric>,
) -> MlResult<Json<Value>> {
    let id = run_id(req.run_id, req.run_uuid)?;
    let p = point(&req.metric)?;
    state
        .store
        .log_external(id, &[p], &BTreeMap::new(), &BTreeMap::new())
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct LogKeyValue {
    run_id: Option<String>,
    run_uuid: Option<String>,
    key: Option<String>,
    value: Option<String>,
}

async fn log_parameter(
    State(state): State<AppState>,
    Msg(req): Msg<LogKeyValue>,
) -> MlResult<Json<Value>> {
    let id = run_id(req.run_id, req.run_uuid)?;
    let params = key_values(
        vec![KeyValue {
            key: req.key,
            value: req.value,
        }],
        "param",
        MAX_PARAM_VALUE_LENGTH,
    )?;
    state
        .store
        .log_external(id, &[], &params, &BTreeMap::new())
        .await?;
    Ok(Json(json!({})))
}

async fn set_tag(
    State(state): State<AppState>,
    Msg(req): Msg<LogKeyValue>,
) -> MlResult<Json<Value>> {
    let id = run_id(req.run_id, req.run_uuid)?;
    let tags = key_values(
        vec![KeyValue {
            key: req.key,
            value: req.value,
        }],
        "tag",
        MAX_TAG_VALUE_LENGTH,
    )?;
    state
        .store
        .log_external(id, &[], &BTreeMap::new(), &tags)
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct DeleteTag {
    run_id: Option<String>,
    key: Option<String>,
}

async fn delete_tag(
    State(state): State<AppState>,
    Msg(req): Msg<DeleteTag>,
) -> MlResult<Json<Value>> {
    let id = run_id(req.run_id, None)?;
    let key = required(req.key, "key")?;
    state.store.delete_run_tag(id, &key).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct LogBatch {
    run_id: Option<String>,
    #[serde(default)]
    metrics: Vec<Metric>,
    #[serde(default)]
    params: Vec<KeyValue>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

async fn log_batch(
    State(state): State<AppState>,
    Msg(req): Msg<LogBatch>,
) -> MlResult<Json<Value>> {
    let id = run_id(req.run_id, None)?;
    let (m, p, t) = (req.metrics.len(), req.params.len(), req.tags.len());
    if m > MAX_BATCH_METRICS || p > MAX_BATCH_PARAMS || t > MAX_BATCH_TAGS || m + p + t > 1000 {
        return Err(MlflowError::invalid(format!(
            "A batch logging request can contain at most {MAX_BATCH_METRICS} metrics, \
             {MAX_BATCH_PARAMS} params, {MAX_BATCH_TAGS} tags and 1000 items in all; got {m} \
             metrics, {p} params and {t} tags"
        )));
    }
    let points = req
        .metrics
        .iter()
        .map(point)
        .collect::<MlResult<Vec<_>>>()?;
    let params = key_values(req.params, "param", MAX_PARAM_VALUE_LENGTH)?;
    let tags = key_values(req.tags, "tag", MAX_TAG_VALUE_LENGTH)?;
    state
        .store
        .log_external(id, &points, &params, &tags)
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct GetHistory {
    run_id: Option<String>,
    run_uuid: Option<String>,
    metric_key: Option<String>,
    page_token: Option<String>,
    #[serde(default, deserialize_with = "int64")]
    max_results: Option<i64>,
}

async fn get_history(
    State(state): State<AppState>,
    Msg(q): Msg<GetHistory>,
) -> MlResult<Json<Value>> {
    let id = run_id(q.run_id, q.run_uuid)?;
    let key = required(q.metric_key, "metric_key")?;
    let size = page_size(q.max_results, MAX_HISTORY_RESULTS, MAX_HISTORY_RESULTS)?;
    let offset = page_offset(q.page_token.as_deref())?;
    // one more than the page tells whether another page follows
    let mut points = state
        .store
        .external_history(id, &key, offset as i64, size + 1)
        .await?;
    let next = (points.len() as i64 > size).then(|| (offset + size as usize).to_string());
    points.truncate(size as usize);
    let mut out = json!({"metrics": points.iter().map(metric_json).collect::<Vec<_>>()});
    if let Some(t) = next {
        out["next_page_token"] = json!(t);
    }
    Ok(Json(out))
}
