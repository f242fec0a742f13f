//! HTML pages (askama templates in `templates/`, autoescaped) and the static assets they use.

mod catalog;
pub(crate) mod compare;
mod datasets;
mod runs;
mod studies;

pub use datasets::DatasetPageCache;

/// The most points per series a page's charts fetch (`?max_points=` of the metrics API): a
/// chart is at most about a thousand pixels wide, and a min/max pair per two pixels draws
/// what every point would.
pub const CURVE_POINTS: usize = 1000;

use super::AppState;
use super::error::ApiError;
use askama::Template;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(runs::router())
        .merge(studies::router())
        .merge(catalog::router())
        .merge(compare::router())
        .merge(datasets::router())
        .route(
            "/static/style.css",
            get(|| asset("text/css", include_str!("../../../static/style.css"))),
        )
        .route(
            "/static/app.js",
            get(|| asset("text/javascript", include_str!("../../../static/app.js"))),
        )
        .route(
            "/static/vendor/uplot/uPlot.iife.min.js",
            get(|| {
                asset(
                    "text/javascript",
                    include_str!("../../../static/vendor/uplot/uPlot.iife.min.js"),
                )
            }),
        )
        .route(
            "/static/vendor/uplot/uPlot.min.css",
            get(|| {
                asset(
                    "text/css",
                    include_str!("../../../static/vendor/uplot/uPlot.min.css"),
                )
            }),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        body,
    )
        .into_response()
}

/// An error shown as a page.
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        PageError(ApiError::from(e))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = self.0;
        let page = ErrorPage {
            status: e.status.as_u16(),
            reason: e.status.canonical_reason().unwrap_or("Error"),
            message: &e.message,
        };
        match page.render() {
            Ok(html) => (e.status, Html(html)).into_response(),
            Err(_) => (e.status, e.message).into_response(),
        }
    }
}

/// Query parameters of a page: like the API's [`ApiQuery`](crate::http::extract::ApiQuery),
/// a bad value is named, but on an error page rather than as JSON.
pub struct PageQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for PageQuery<T>
{
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, PageError> {
        crate::http::extract::ApiQuery::from_request_parts(parts, state)
            .await
            .map(|crate::http::extract::ApiQuery(q)| PageQuery(q))
            .map_err(PageError)
    }
}

/// Result of a page handler.
pub type PageResult = Result<Response, PageError>;

/// Renders a template into a 200 response.
pub fn render(t: &impl Template) -> PageResult {
    render_status(StatusCode::OK, t)
}

/// Renders a template with a given status.
pub fn render_status(status: StatusCode, t: &impl Template) -> PageResult {
    let html = t
        .render()
        .map_err(|e| anyhow::anyhow!("rendering a page: {e}"))?;
    Ok((status, Html(html)).into_response())
}

/// 404 for everything no route matches: JSON under `/api`, a page elsewhere.
pub async fn not_found(uri: Uri) -> Response {
    let e = ApiError::not_found(format!("`{}`", uri.path()));
    if uri.path().starts_with("/api/") {
        e.into_response()
    } else {
        PageError(e).into_response()
    }
}

/// `0.8123` for a value, `–` for none.
pub(crate) fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

/// `2m 05s` for seconds.
pub(crate) fn duration(secs: Option<f64>) -> String {
    match secs {
        None => "–".into(),
        Some(s) if s < 60.0 => format!("{s:.1}s"),
        Some(s) if s < 3600.0 => format!("{}m {:02}s", (s / 60.0) as u64, (s % 60.0) as u64),
        Some(s) => format!(
            "{}h {:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        ),
    }
}

/// `22.7M` for a parameter count.
pub(crate) fn params(n: Option<i64>) -> String {
    match n {
        None => "–".into(),
        Some(n) if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        Some(n) if n >= 1_000 => format!("{:.0}k", n as f64 / 1e3),
        Some(n) => n.to_string(),
    }
}

/// `1.2 GiB`, `340 MiB` for bytes.
pub(crate) fn bytes(n: Option<i64>) -> String {
    match n {
        None => "–".into(),
        Some(n) if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        Some(n) => format!("{:.0} MiB", n as f64 / (1u64 << 20) as f64),
    }
}

/// `3.2 TFLOP`, `410 GFLOP` for an amount of floating-point operations; `/s` appended for a
/// rate by the caller.
pub(crate) fn flops(n: Option<f64>) -> String {
    match n {
        Some(x) if x.is_finite() && x > 0.0 => {
            let (v, unit) = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")]
                .into_iter()
                .find(|(s, _)| x >= *s)
                .map_or((x, ""), |(s, u)| (x / s, u));
            format!("{v:.1} {unit}FLOP")
        }
        _ => "–".into(),
    }
}

/// `2026-11-27 11:52:00` from a stored time.
pub(crate) fn when(t: Option<&str>) -> String {
    t.map(|t| t.get(..19).unwrap_or(t).replace('T', " "))
        .unwrap_or_else(|| "–".into())
}
