//! The one HTTP error type: JSON `{"error": {"code", "message", "field"?}}` for the API, a
//! rendered page for HTML routes (see `pages`). 5xx causes are logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `unknown_model`.
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
}

/// The body of every API error (the `Error` schema of the OpenAPI document).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(crate) struct Body<'a> {
    error: Inner<'a>,
}

/// [`Body`] as the OpenAPI document's paths name it.
pub(crate) type ErrorBody = Body<'static>;

/// What went wrong.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
pub(crate) struct Inner<'a> {
    /// Stable machine-readable code: `invalid_json`, `invalid_value`, `unknown_field`,
    /// `not_found`, `conflict`, `unsupported_media_type`, `payload_too_large`, ...
    code: &'a str,
    /// For people.
    message: &'a str,
    /// The request field at fault (`learning_rate`, `points[3].key`, a query parameter).
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// Any error with a status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 422: a field has a value the service cannot accept.
    pub fn invalid(field: &str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    /// 404 for `what` (e.g. "run 12").
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} does not exist"),
        )
    }

    /// 503 `database_busy`: the database refused for now (its write lock held by another past
    /// the busy timeout, no pooled connection free); the same request may succeed when retried.
    pub fn busy(cause: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "the database is busy");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_busy",
            format!("the database is busy ({cause}); try again"),
        )
    }

    /// 409: the request conflicts with the resource's state.
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// The HTTP status.
    pub fn status_code(&self) -> StatusCode {
        self.status
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        if let Some(cause) = crate::store::busy_cause(&e) {
            return ApiError::busy(cause);
        }
        tracing::error!(error = format!("{e:#}"), "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }
}

impl From<crate::runs::SubmitError> for ApiError {
    fn from(e: crate::runs::SubmitError) -> Self {
        match e.field() {
            Some(field) => ApiError::invalid(field, e.code(), e.to_string()),
            None => match e {
                crate::runs::SubmitError::Internal(e) => ApiError::from(e),
                other => ApiError::from(anyhow::Error::new(other)),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        retry_later((self.status, Json(body)).into_response())
    }
}

/// A response that, when it is a 503, asks the client to try again in a second
/// (`Retry-After: 1`): the API's errors and the MLflow-compatible ones.
pub(crate) fn retry_later(mut response: Response) -> Response {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
    }
    response
}

/// Result of an API handler.
pub type ApiResult<T> = Result<T, ApiError>;
