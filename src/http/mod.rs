//! The HTTP service: JSON API under `/api/v1`, HTML pages, static assets.

pub mod api;
pub mod auth;
pub mod error;
pub mod extract;
mod guard;
pub mod mlflow;
pub mod pages;
pub mod serve;
pub mod telemetry;

use crate::config::Settings;
use crate::live::Hub;
use crate::models::registry::Registry;
use crate::queue::Scheduler;
use crate::store::Store;
use axum::Router;
use axum::http::Request;
use std::ops::Deref;
use std::sync::Arc;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

/// Whether a path is MLflow's (`/api/2.0/...`, `/ajax-api/...`) and whether it is any API's
/// (those and `/api/v1`): the API answers JSON errors, MLflow's in its own shape.
pub(crate) fn api_path(path: &str) -> (bool, bool) {
    let mlflow = path.starts_with("/api/2.0/") || path.starts_with("/ajax-api/");
    (path.starts_with("/api/") || mlflow, mlflow)
}

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<AppInner>,
}

/// The shared parts behind [`AppState`].
pub struct AppInner {
    pub settings: Settings,
    pub store: Store,
    /// The models root, with the inspections of its folders (shared with the scheduler).
    pub registry: Registry,
    pub scheduler: Scheduler,
    pub hub: Hub,
    /// Datasets read for their pages, with their statistics.
    pub dataset_pages: pages::DatasetPageCache,
    /// Request counts and latencies for `/metrics`.
    pub telemetry: telemetry::Telemetry,
    /// Downsampled series served lately (`?max_points=`).
    pub curves: api::runs::CurveCache,
}

impl AppState {
    /// Wraps the shared parts; the scheduler resolves runs with the same registry.
    pub fn new(settings: Settings, store: Store, scheduler: Scheduler, hub: Hub) -> Self {
        AppState {
            inner: Arc::new(AppInner {
                registry: scheduler.registry().clone(),
                settings,
                store,
                scheduler,
                hub,
                dataset_pages: Default::default(),
                telemetry: Default::default(),
                curves: Default::default(),
            }),
        }
    }
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.inner
    }
}

/// The answer of `GET /healthz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `ok`.
    status: &'static str,
}

/// The answer of `GET /readyz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Ready {
    /// `ready`.
    status: &'static str,
    /// The worker slots.
    slots: usize,
}

/// `GET /healthz`: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "service",
    summary = "The process answers",
    responses((status = 200, description = "`{\"status\": \"ok\"}`.", body = Health)),
)]
pub(crate) async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// `GET /readyz`: the service can take work: its database answers (503 otherwise).
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "service",
    summary = "The service can take work",
    responses(
        (status = 200, description = "The database answers.", body = Ready),
        (status = 503, description = "The database does not answer (`not_ready`).",
            body = error::ErrorBody),
    ),
)]
pub(crate) async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<axum::Json<Ready>, error::ApiError> {
    state.store.ping().await.map_err(|e| {
        error::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("{e:#}"),
        )
    })?;
    Ok(axum::Json(Ready {
        status: "ready",
        slots: state.scheduler.slots().len(),
    }))
}

/// Largest request body accepted (run submissions and registrations are small).
const BODY_LIMIT: usize = 1 << 20;

/// The whole application with writes open to anyone on the machine's network who can reach
/// it (forms still need their CSRF tokens): [`secured`] without a token.
pub fn router(state: AppState) -> Router {
    secured(state, auth::Auth::new(None))
}

/// The whole application: API, pages, assets, with tracing, compression, a body limit, the
/// [`guard`] (cross-site writes refused, security headers, JSON errors on the API) and the
/// [`auth`] layer (CSRF tokens of forms; with a token, credentials for every write).
pub fn secured(state: AppState, auth: auth::Auth) -> Router {
    Router::new()
        .nest("/api/v1", api::router())
        .merge(mlflow::router())
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(telemetry::metrics))
        .merge(api::openapi::pages())
        .merge(pages::router())
        .merge(auth::router(auth.clone()))
        .fallback(pages::not_found)
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(auth, auth::layer))
        .layer(axum::middleware::from_fn(guard::guard))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            telemetry::layer,
        ))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
        }))
        .with_state(state)
}
