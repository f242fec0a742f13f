//! What every request passes through: writes from other sites are refused (a page elsewhere
//! cannot queue or cancel runs through a visitor's browser), every response carries headers
//! that keep the pages out of frames and scripts to this origin, and the API's errors are JSON
//! even where the framework answers (405, 413, 415).

use super::error::ApiError;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The Content-Security-Policy of every response: this origin only, no frames.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// Whether a request that changes something comes from another site: the browser says so
/// (`Sec-Fetch-Site: cross-site`), or its `Origin` names another host than the one asked.
/// Requests without those headers (curl, notebooks) are not a browser's and pass.
fn cross_site(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // `Origin: null` (sandboxed frames, file pages) is never this site
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    origin_host != host
}

/// The middleware.
pub async fn guard(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let (api, mlflow) = super::api_path(path);
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let mut response = if writes && cross_site(req.headers()) {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            "a request from another site may not change anything here",
        );
        if api {
            e.into_response()
        } else {
            super::pages::PageError(e).into_response()
        }
    } else {
        next.run(req).await
    };
    if api {
        response = json_errors(response, mlflow).await;
    }
    let h = response.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}

/// An API error answered by the framework (plain text or an empty body) as the API's JSON,
/// in MLflow's shape on the MLflow-compatible routes.
async fn json_errors(response: Response, mlflow: bool) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let text = match axum::body::to_bytes(response.into_body(), 64 << 10).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!(
                "method not allowed here{}",
                allow
                    .as_ref()
                    .and_then(|a| a.to_str().ok())
                    .map(|a| format!("; allowed: {a}"))
                    .unwrap_or_default()
            ),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            format!(
                "the body is larger than the {} bytes accepted",
                super::BODY_LIMIT
            ),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", text),
        _ => ("error", text),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    let mut out = if mlflow {
        let code = if status.is_server_error() {
            "INTERNAL_ERROR"
        } else {
            "BAD_REQUEST"
        };
        (
            status,
            axum::Json(serde_json::json!({"error_code": code, "message": message})),
        )
            .into_response()
    } else {
        ApiError::new(status, code, message).into_response()
    };
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}
