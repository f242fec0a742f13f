//! Who may change things. With an API token (`serve --api-token`, `MODALBENCH_API_TOKEN`),
//! every write needs it: `Authorization: Bearer <token>` on the API (the MLflow-compatible
//! routes too), or, in a browser, a session cookie from the login form. Reads stay open.
//!
//! Every form that writes carries a CSRF token, with or without an API token: the page gets a
//! random `mb_csrf` cookie (SameSite=Strict) and puts the same value in a hidden `csrf` field;
//! a form post whose field does not match its cookie is refused. Browser scripts that write
//! through the API with a session send the value as `X-CSRF-Token`.

use super::error::ApiError;
use super::pages::PageError;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The hidden form field of the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
const CSRF_COOKIE: &str = "mb_csrf";
const SESSION_COOKIE: &str = "mb_session";
const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once (the oldest go first).
const MAX_SESSIONS: usize = 10_000;

/// A form's fields without its CSRF token (checked by [`layer`] already).
pub fn without_csrf(mut pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    pairs.retain(|(k, _)| k != CSRF_FIELD);
    pairs
}

/// The request's CSRF token, for the page to put in its forms.
#[derive(Debug, Clone)]
pub struct Csrf(pub String);

/// The service's token and its browser sessions; cheap to clone.
#[derive(Clone, Default)]
pub struct Auth {
    inner: Arc<AuthInner>,
}

#[derive(Default)]
struct AuthInner {
    token: Option<String>,
    sessions: Mutex<HashMap<String, Instant>>,
}

impl Auth {
    /// Writes need `token` when one is given; `None` leaves them open (forms still need their
    /// CSRF token, and other sites are refused by the guard).
    pub fn new(token: Option<String>) -> Auth {
        Auth {
            inner: Arc::new(AuthInner {
                token: token.filter(|t| !t.is_empty()),
                sessions: Mutex::default(),
            }),
        }
    }

    /// Whether writes need the token.
    pub fn required(&self) -> bool {
        self.inner.token.is_some()
    }

    fn token_matches(&self, given: &str) -> bool {
        self.inner
            .token
            .as_deref()
            .is_some_and(|t| same(t.as_bytes(), given.as_bytes()))
    }

    fn session_valid(&self, id: &str) -> bool {
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        match sessions.get(id) {
            Some(t) if t.elapsed() < SESSION_TTL => true,
            Some(_) => {
                sessions.remove(id);
                false
            }
            None => false,
        }
    }

    fn open_session(&self) -> String {
        let id = random_hex();
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        sessions.retain(|_, t| t.elapsed() < SESSION_TTL);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), Instant::now());
        id
    }

    fn close_session(&self, id: &str) {
        self.inner
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(id);
    }
}

/// Equal bytes, compared in time independent of where they differ.
use crate::secret::same;

fn random_hex() -> String {
    crate::secret::random_hex(16)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"))
}

fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let age = max_age.map_or(String::new(), |s| format!("; Max-Age={s}"));
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict{age}"
    ))
    .expect("cookie values are hex")
}

fn unauthorized(mlflow: bool) -> Response {
    let message = "this service needs its API token for changes: send `Authorization: Bearer \
                   <token>`, or log in at /login";
    if mlflow {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error_code": "UNAUTHENTICATED", "message": message})),
        )
            .into_response();
    }
    let e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let mut r = e.into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"modalbench\""),
    );
    r
}

fn csrf_refused() -> Response {
    PageError(ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf",
        "this form was not sent from this service's own page (its CSRF token is missing or \
         stale): reload the page and send it again",
    ))
    .into_response()
}

/// The pages whose forms write; with a token, a visitor without a session is sent to log in
/// before filling them in.
fn form_page(path: &str) -> bool {
    matches!(path, "/runs/new" | "/studies/new")
}

fn login_redirect(next: &str) -> Response {
    let next: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
    Redirect::to(&format!("/login?next={next}")).into_response()
}

/// The middleware: hands the request its CSRF token (setting the cookie when new), checks
/// form posts' tokens, and, with an API token, the credentials of every write.
pub async fn layer(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let (api, mlflow) = super::api_path(&path);
    // a page takes writes only as form posts; another method there is the router's 405, as
    // is any write to the read-only operations endpoints
    let read_only = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
    let writes = if read_only {
        false
    } else if api {
        !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
    } else {
        *req.method() == Method::POST
    };
    let headers = req.headers();
    let csrf_cookie = cookie(headers, CSRF_COOKIE).map(str::to_string);
    let session = cookie(headers, SESSION_COOKIE)
        .filter(|s| auth.session_valid(s))
        .map(str::to_string);
    let token_ok = bearer(headers).is_some_and(|t| auth.token_matches(t));

    // a cluster worker's events carry their attempt's own token, checked by the handler
    let worker_report = path.starts_with("/api/v1/worker/");
    if writes && !worker_report {
        if api {
            // a session counts only with the CSRF header a same-origin script can send
            let header_csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            let session_ok = session.is_some()
                && csrf_cookie
                    .as_deref()
                    .is_some_and(|c| header_csrf.is_some_and(|h| same(c.as_bytes(), h.as_bytes())));
            if auth.required() && !token_ok && !session_ok {
                return unauthorized(mlflow);
            }
        } else {
            // a form: its `csrf` field must match its cookie (the body is read here, within
            // the body limit, and handed on)
            let (parts, body) = req.into_parts();
            let bytes = match axum::body::to_bytes(body, super::BODY_LIMIT).await {
                Ok(b) => b,
                Err(_) => {
                    return PageError(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "the form is larger than the service accepts",
                    ))
                    .into_response();
                }
            };
            let given = if is_form(&parts.headers) {
                form_urlencoded::parse(&bytes)
                    .find(|(k, _)| k == CSRF_FIELD)
                    .map(|(_, v)| v.into_owned())
            } else {
                None
            };
            let matches = match (&csrf_cookie, &given) {
                (Some(c), Some(g)) => same(c.as_bytes(), g.as_bytes()),
                _ => false,
            };
            if !matches {
                return csrf_refused();
            }
            let login = path == "/login";
            if auth.required() && !login && session.is_none() && !token_ok {
                let back = parts
                    .headers
                    .get(header::REFERER)
                    .and_then(|r| r.to_str().ok())
                    .and_then(|r| r.split_once("://").map(|(_, rest)| rest))
                    .and_then(|r| r.find('/').map(|i| r[i..].to_string()))
                    .unwrap_or_else(|| "/".into());
                return login_redirect(&back);
            }
            req = Request::from_parts(parts, Body::from(Bytes::clone(&bytes)));
        }
    } else if auth.required() && session.is_none() && !token_ok && form_page(&path) {
        return login_redirect(&path);
    }

    // pages get a token for their forms; the API never uses one
    let (token, fresh) = match csrf_cookie {
        Some(c) => (c, false),
        None if api => (String::new(), false),
        None => (random_hex(), true),
    };
    req.extensions_mut().insert(Csrf(token.clone()));
    let mut response = next.run(req).await;
    if fresh {
        response
            .headers_mut()
            .append(header::SET_COOKIE, set_cookie(CSRF_COOKIE, &token, None));
    }
    response
}

#[derive(askama::Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    failed: bool,
    required: bool,
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Only a path on this site: `/...`, never `//host` or a scheme.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

async fn login_form(
    State(auth): State<Auth>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    super::pages::render(&LoginPage {
        csrf: csrf.0,
        next: safe_next(q.next.as_deref()),
        failed: false,
        required: auth.required(),
    })
    .into_response()
}

async fn login(
    State(auth): State<Auth>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let next = safe_next(form.get("next").map(String::as_str));
    let given = form.get("token").map(String::as_str).unwrap_or("");
    if !auth.token_matches(given) {
        let mut r = super::pages::render(&LoginPage {
            csrf: csrf.0,
            next,
            failed: true,
            required: auth.required(),
        })
        .into_response();
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    let session = auth.open_session();
    let mut r = Redirect::to(&next).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &session, Some(SESSION_TTL.as_secs())),
    );
    r
}

async fn logout(State(auth): State<Auth>, headers: HeaderMap) -> Response {
    if let Some(s) = cookie(&headers, SESSION_COOKIE) {
        auth.close_session(s);
    }
    let mut r = Redirect::to("/").into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "0", Some(0)));
    r
}

/// `/login` and `/logout`.
pub fn router<S: Clone + Send + Sync + 'static>(auth: Auth) -> Router<S> {
    Router::new()
        .route("/login", axum::routing::get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .with_state(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/runs/new")), "/runs/new");
        for bad in [
            "//evil.example/x",
            "https://evil.example",
            "\\\\evil",
            "runs",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}
