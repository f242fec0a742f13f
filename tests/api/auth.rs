//! The API token, browser sessions and the CSRF tokens of forms.

use crate::helpers::{CSRF, TestApp, form_post};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use modalbench::http::auth::Auth;
use serde_json::Value;

const TOKEN: &str = "correct-horse-battery-staple";

async fn send(router: &Router, req: Request<Body>) -> (Response, String) {
    let res = tower::ServiceExt::oneshot(router.clone(), req)
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (
        Response::from_parts(parts, Body::empty()),
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn api_post(uri: &str, body: &str, bearer: Option<&str>) -> Request<Body> {
    let mut req = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(Body::from(body.to_string())).unwrap()
}

fn set_cookie(res: &Response, name: &str) -> Option<String> {
    res.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_string())
}

#[tokio::test]
async fn forms_need_the_csrf_token_their_page_was_given() {
    let app = TestApp::new().await;
    // the form page sets the cookie and puts the same value in its hidden field
    let (res, html) = send(
        &app.router,
        Request::get("/runs/new").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = set_cookie(&res, "mb_csrf").expect("a CSRF cookie");
    assert_eq!(cookie.len(), 32);
    let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        html.contains(&format!(r#"name="csrf" value="{cookie}""#)),
        "{html}"
    );
    // a second visit keeps its token
    let (res, _) = send(
        &app.router,
        Request::get("/runs/new")
            .header(header::COOKIE, format!("mb_csrf={cookie}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(set_cookie(&res, "mb_csrf").is_none());

    let body = "model=bert-tiny&dataset=demo-news&epochs=1";
    let no_field = Request::post("/runs/new")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, format!("mb_csrf={CSRF}"))
        .body(Body::from(body))
        .unwrap();
    let wrong = Request::post("/runs/new")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, format!("mb_csrf={CSRF}"))
        .body(Body::from(format!(
            "{body}&csrf=ffffffffffffffffffffffffffffffff"
        )))
        .unwrap();
    let no_cookie = Request::post("/runs/new")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("{body}&csrf={CSRF}")))
        .unwrap();
    for req in [no_field, wrong, no_cookie] {
        let (res, html) = send(&app.router, req).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{html}");
        assert!(html.contains("CSRF token"), "{html}");
    }
    // the cancel buttons are forms too
    let (res, _) = send(
        &app.router,
        Request::post("/runs/1/cancel").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(app.state.store.get_run(1).await.unwrap().is_none());
    let (res, html) = send(&app.router, form_post("/runs/new", body)).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "{html}");
}

#[tokio::test]
async fn with_a_token_every_write_needs_it_and_reads_stay_open() {
    let app = TestApp::new().await;
    let router = modalbench::http::secured(app.state.clone(), Auth::new(Some(TOKEN.into())));
    let run = r#"{"model": "bert-tiny", "dataset": "demo-news", "epochs": 1}"#;

    for bearer in [None, Some("wrong"), Some("")] {
        let (res, body) = send(&router, api_post("/api/v1/runs", run, bearer)).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{bearer:?}: {body}");
        let err: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["error"]["code"], "unauthorized");
        assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
    }
    // the MLflow-compatible routes too, in MLflow's shape
    let (res, body) = send(
        &router,
        api_post(
            "/api/2.0/mlflow/experiments/create",
            r#"{"name": "x"}"#,
            None,
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error_code"],
        "UNAUTHENTICATED"
    );
    assert!(
        app.state.store.get_run(1).await.unwrap().is_none(),
        "nothing queued"
    );
    let (res, body) = send(&router, api_post("/api/v1/runs", run, Some(TOKEN))).await;
    assert_eq!(res.status(), StatusCode::CREATED, "{body}");
    // reads need nothing
    let (res, _) = send(
        &router,
        Request::get("/api/v1/runs").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (res, _) = send(
        &router,
        Request::get("/runs/1").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);

    // a browser without a session is sent to log in, form pages first
    let (res, _) = send(
        &router,
        Request::get("/runs/new").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/login?next=%2Fruns%2Fnew");
    let (res, _) = send(&router, form_post("/runs/1/cancel", "")).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(
        res.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/login"),
    );
    assert_eq!(
        app.state
            .store
            .get_run(1)
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str(),
        "queued",
        "not cancelled"
    );
    // a wrong token is refused, the right one opens a session
    let (res, html) = send(
        &router,
        form_post("/login", "token=nope&next=%2Fruns%2Fnew"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(html.contains("not the service"), "{html}");
    assert!(set_cookie(&res, "mb_session").is_none());
    let (res, _) = send(
        &router,
        form_post("/login", &format!("token={TOKEN}&next=%2F%2Fevil.example")),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/", "no open redirect");
    let session = set_cookie(&res, "mb_session").expect("a session cookie");
    let with_session = |mut req: Request<Body>| {
        let cookie = format!("mb_csrf={CSRF}; mb_session={session}");
        req.headers_mut()
            .insert(header::COOKIE, cookie.parse().unwrap());
        req
    };
    let (res, _) = send(
        &router,
        with_session(Request::get("/runs/new").body(Body::empty()).unwrap()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (res, _) = send(&router, with_session(form_post("/runs/1/cancel", ""))).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        app.state
            .store
            .get_run(1)
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str(),
        "cancelled"
    );
    // a session writes through the API only with the CSRF header a page's script can send
    let (res, _) = send(&router, with_session(api_post("/api/v1/runs", run, None))).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let mut req = with_session(api_post("/api/v1/runs", run, None));
    req.headers_mut()
        .insert("x-csrf-token", CSRF.parse().unwrap());
    let (res, body) = send(&router, req).await;
    assert_eq!(res.status(), StatusCode::CREATED, "{body}");
    // after logging out the session is gone
    let (res, _) = send(&router, with_session(form_post("/logout", ""))).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (res, _) = send(
        &router,
        with_session(Request::get("/runs/new").body(Body::empty()).unwrap()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
}

#[test]
fn serving_beyond_loopback_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modalbench"))
        .args(["serve", "--addr", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("MODALBENCH_API_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without an API token") && err.contains("--insecure"),
        "{err}"
    );
    assert!(
        !dir.path().join("modalbench.db").exists(),
        "refused before touching anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mlflow_client_logs_with_its_tracking_token() {
    let app = TestApp::new().await;
    let router = modalbench::http::secured(app.state.clone(), Auth::new(Some(TOKEN.into())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let script = "import mlflow\n\
                  mlflow.set_experiment('with-token')\n\
                  with mlflow.start_run():\n    mlflow.log_metric('loss', 0.5)\n";
    let run = |token: Option<&str>| {
        let mut cmd = tokio::process::Command::new(crate::helpers::python());
        cmd.args(["-c", script])
            .env("MLFLOW_TRACKING_URI", &url)
            .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            .env_remove("MLFLOW_TRACKING_TOKEN");
        if let Some(t) = token {
            cmd.env("MLFLOW_TRACKING_TOKEN", t);
        }
        cmd.output()
    };
    let refused = run(None).await.unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("UNAUTHENTICATED"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let logged = run(Some(TOKEN)).await.unwrap();
    assert!(
        logged.status.success(),
        "{}",
        String::from_utf8_lossy(&logged.stderr)
    );
    let (_, runs) = app.get("/api/v1/runs?source=external").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
}

#[tokio::test]
async fn other_methods_on_pages_are_not_allowed_rather_than_refused() {
    let app = TestApp::new().await;
    for (method, uri) in [
        ("TRACE", "/healthz"),
        ("PUT", "/runs/new"),
        ("DELETE", "/readyz"),
        // a post to the read-only operations endpoints is no form to check
        ("POST", "/healthz"),
        ("POST", "/readyz"),
        ("POST", "/metrics"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let (res, _) = send(&app.router, req).await;
        assert_eq!(
            res.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
    }
}
