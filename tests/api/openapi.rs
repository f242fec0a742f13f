//! The OpenAPI document (`/api/v1/openapi.json`) against the service it describes: a valid
//! OpenAPI document (`openapi-spec-validator`); every route the router serves listed with the
//! methods the router itself reports (its `Allow` answers), and every route of the README's
//! table; real responses, success and error, valid against their documented schemas
//! (`jsonschema`); the query parameters' documented names and ranges the ones the service
//! accepts; the `/api/docs` page linking every operation. And the fixes that fuzzing the API
//! against the document (`scripts/fuzz.sh`) led to.

use crate::helpers::{TestApp, run_python};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use modalbench::store::runs::RunStatus;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use tower::ServiceExt;

/// The operations' methods, as the document names them.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One answer of the service.
struct Answer {
    status: StatusCode,
    content_type: String,
    allow: Option<String>,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

async fn send(app: &TestApp, method: &str, uri: &str, body: Option<&Value>) -> Answer {
    let req = Request::builder().method(method).uri(uri);
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let res = app.router.clone().oneshot(req).await.unwrap();
    let header = |name| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (content_type, allow) = (header(header::CONTENT_TYPE), header(header::ALLOW));
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type: content_type.unwrap_or_default(),
        allow,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn document(app: &TestApp) -> Value {
    let a = send(app, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(
        a.content_type.starts_with("application/json"),
        "{}",
        a.content_type
    );
    a.json()
}

/// The documented methods of a path item, upper-case.
fn methods_of(item: &Value) -> BTreeSet<String> {
    METHODS
        .iter()
        .filter(|m| item.get(**m).is_some())
        .map(|m| m.to_uppercase())
        .collect()
}

/// A path template with its parameters filled in.
fn concrete(template: &str, id: i64, name: &str) -> String {
    template
        .replace("{id}", &id.to_string())
        .replace("{name}", name)
}

/// The document's path template that `path` matches: literal segments must be equal,
/// `{param}` segments match any; the template with the most literal matches wins (as the
/// router prefers `/runs/external` to `/runs/{id}`).
fn template_of(doc: &Value, path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|t| {
            let tsegs: Vec<&str> = t.split('/').collect();
            if tsegs.len() != segs.len() {
                return None;
            }
            let mut literal = 0;
            for (t, s) in tsegs.iter().zip(&segs) {
                if t.starts_with('{') {
                    continue;
                }
                if t != s {
                    return None;
                }
                literal += 1;
            }
            Some((literal, t.clone()))
        })
        .max()
        .map(|(_, t)| t)
}

/// A `$ref` of the document, followed.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap_or(v),
        None => v,
    }
}

/// Responses checked against the document: each one's status must be documented for its
/// operation, with its content type; the JSON ones are validated against their schemas in
/// one Python run ([`Checked::validate`]).
struct Checked {
    doc: Value,
    cases: Vec<Value>,
}

impl Checked {
    fn new(doc: Value) -> Checked {
        Checked {
            doc,
            cases: Vec::new(),
        }
    }

    /// Sends the request, checks the answer against the document; returns it.
    async fn call(
        &mut self,
        app: &TestApp,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> Answer {
        let a = send(app, method, uri, body.as_ref()).await;
        let path = uri.split('?').next().unwrap();
        let what = format!("{method} {uri} -> {}", a.status);
        let template = template_of(&self.doc, path)
            .unwrap_or_else(|| panic!("{what}: no documented path matches"));
        let op = &self.doc["paths"][&template][method.to_lowercase()];
        assert!(
            op.is_object(),
            "{what}: {method} {template} is not documented"
        );
        let response = op["responses"]
            .get(a.status.as_str())
            .unwrap_or_else(|| panic!("{what}: status not documented for {template}: {}", a.text));
        let response = resolve(&self.doc, response);
        let content = response["content"].as_object().expect("a documented body");
        let media = a.content_type.split(';').next().unwrap().trim();
        let documented = content
            .get(media)
            .unwrap_or_else(|| panic!("{what}: content type {media} not documented: {content:?}"));
        if media == "application/json" {
            self.cases.push(json!({
                "what": what,
                "schema": documented["schema"],
                "instance": a.json(),
            }));
        }
        a
    }

    async fn get(&mut self, app: &TestApp, uri: &str) -> Answer {
        self.call(app, "GET", uri, None).await
    }

    async fn post(&mut self, app: &TestApp, uri: &str, body: Value) -> Answer {
        self.call(app, "POST", uri, Some(body)).await
    }

    /// Validates every JSON answer against its schema (Python's `jsonschema`).
    fn validate(&self) {
        assert!(!self.cases.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cases.json");
        let data = json!({"doc": self.doc, "cases": self.cases});
        std::fs::write(&path, data.to_string()).unwrap();
        let out = run_python(
            "validating the answers against their schemas",
            [
                reference("openapi_check.py").as_os_str(),
                "instances".as_ref(),
                path.as_os_str(),
            ],
        );
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.contains(&format!("{} instances valid", self.cases.len())),
            "{out}"
        );
    }
}

fn reference(script: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference")
        .join(script)
}

#[tokio::test]
async fn the_document_is_valid_openapi() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = run_python(
        "openapi-spec-validator",
        [
            reference("openapi_check.py").as_os_str(),
            "spec".as_ref(),
            path.as_os_str(),
        ],
    );
    assert!(String::from_utf8_lossy(&out).starts_with("valid OpenAPI 3.1"));
}

#[tokio::test]
async fn every_route_the_router_serves_is_documented_with_the_methods_it_serves() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let paths = doc["paths"].as_object().unwrap();
    // the router says which methods it serves on a path it routes: a method it does not is a
    // 405 with `Allow` (an unrouted path is the API's 404)
    for (template, item) in paths {
        let documented = methods_of(item);
        // (`OPTIONS` first: it is no write, which outside the API would need a CSRF token)
        let unserved = ["OPTIONS", "PATCH", "PUT", "DELETE", "TRACE"]
            .into_iter()
            .find(|m| !documented.contains(*m))
            .unwrap();
        let uri = concrete(template, 1, "x");
        let a = send(&app, unserved, &uri, None).await;
        assert_eq!(
            a.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{unserved} {uri}: {}",
            a.text
        );
        let allowed: BTreeSet<String> = a
            .allow
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_uppercase())
            .filter(|m| m != "HEAD" || documented.contains("HEAD"))
            .collect();
        assert_eq!(
            allowed, documented,
            "{template}: the router serves {allowed:?}"
        );
    }
    // every route of the README's table is documented, and every documented one is there
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme_api_routes(&readme);
    assert!(table.len() > 20, "{table:?}");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .filter(|(p, _)| p.starts_with("/api/v1/"))
        .flat_map(|(p, item)| methods_of(item).into_iter().map(move |m| (m, p.clone())))
        .collect();
    let in_readme: BTreeSet<(String, String)> = table
        .into_iter()
        .filter(|(_, p)| p.starts_with("/api/v1/"))
        .collect();
    assert_eq!(
        documented.difference(&in_readme).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not in the README's REST API table"
    );
    assert_eq!(
        in_readme.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in the README's REST API table but not documented"
    );
    // and no route of the API is registered but through its documented declaration
    // (`routes!` over a handler's `#[utoipa::path]`): the API's modules call no `.route(`
    // but the page's, outside `/api/v1`
    let mut files = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/http/api"
    ))];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for line in source.lines().filter(|l| !l.trim_start().starts_with("//")) {
            // (a plain router nested would need a `.route(` of its own)
            for call in [".route(", ".route_service(", ".nest_service("] {
                assert!(
                    !line.contains(call) || line.contains("\"/api/docs\""),
                    "{}: `{}` registers a route the document may not list",
                    path.display(),
                    line.trim()
                );
            }
        }
    }
}

/// `(METHOD, /path/{param})` of each row of the README's REST API table: a row's first cell
/// holds one or more paths in backticks, the later ones relative to `/api/v1` and of the same
/// method (`GET /api/v1/models`, `/models/{name}`); queries (`?…`, `[?…]`) are left off.
fn readme_api_routes(readme: &str) -> Vec<(String, String)> {
    let section = readme
        .split("### REST API")
        .nth(1)
        .expect("a REST API section");
    let mut routes = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let first = row.trim_start_matches('|').split(" | ").next().unwrap();
        let mut method = String::new();
        for code in first.split('`').skip(1).step_by(2) {
            let (m, path) = match code.split_once(' ') {
                Some((m, p)) if m.chars().all(|c| c.is_ascii_uppercase()) => (m.to_string(), p),
                _ => (method.clone(), code),
            };
            method = m;
            let path = path.split(['?', '[']).next().unwrap();
            let path = if path.starts_with("/api/") {
                path.to_string()
            } else {
                format!("/api/v1{path}")
            };
            routes.push((method.clone(), path));
        }
    }
    routes
}

#[tokio::test]
async fn real_answers_match_their_documented_schemas() {
    let app = TestApp::new().await;
    let mut c = Checked::new(document(&app).await);
    // a native run trained to the end: summary, costs, metrics, predictions, checkpoints
    let a = c
        .post(
            &app,
            "/api/v1/runs",
            json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": 1, "max_steps": 3,
                   "eval_every": 2, "seed": u64::MAX}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = a.json()["id"].as_i64().unwrap();
    let run = app.run_to_end(id, 180).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    for uri in [
        format!("/api/v1/runs/{id}"),
        "/api/v1/runs?limit=5&status=succeeded".into(),
        format!("/api/v1/runs/{id}/metrics"),
        format!("/api/v1/runs/{id}/metrics?key=eval/accuracy"),
        format!("/api/v1/runs/{id}/logs?tail=5"),
        format!("/api/v1/runs/{id}/predictions?split=test&limit=3"),
        format!("/api/v1/runs/{id}/predictions?split=dev"),
        "/api/v1/leaderboard".into(),
        "/api/v1/leaderboard?format=csv".into(),
        "/api/v1/models".into(),
        "/api/v1/models/bert-tiny".into(),
        "/api/v1/datasets".into(),
        "/api/v1/datasets/demo-memes".into(),
        "/healthz".into(),
        "/readyz".into(),
    ] {
        let a = c.get(&app, &uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.text);
    }
    let a = c.get(&app, &format!("/api/v1/runs/{id}/checkpoint")).await;
    assert_eq!(
        (a.status, a.content_type.as_str()),
        (StatusCode::OK, "application/x-tar")
    );
    let a = c
        .post(
            &app,
            &format!("/api/v1/runs/{id}/register"),
            json!({"name": "tuned"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    // an external run with its points, ended
    let a = c
        .post(
            &app,
            "/api/v1/runs/external",
            json!({"experiment": "e", "model": "m", "dataset": "demo-news", "params": {"lr": "0.1"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let ext = a.json()["id"].as_i64().unwrap();
    let points = json!({"points": [{"key": "test/accuracy", "value": 0.5, "step": 1}]});
    let a = c
        .post(&app, &format!("/api/v1/runs/{ext}/metrics"), points)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = c
        .post(&app, &format!("/api/v1/runs/{ext}/end"), json!({}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    c.get(&app, &format!("/api/v1/runs/{ext}/metrics")).await;
    // a study, its verdict in every format, cancelled
    let a = c
        .post(
            &app,
            "/api/v1/studies",
            json!({"name": "s", "models": ["bert-tiny"], "datasets": ["demo-news"],
                   "seeds": [0, 1], "grid": {"learning_rate": [1e-4, null]},
                   "base": {"epochs": 1}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let study = a.json()["id"].as_i64().unwrap();
    for uri in [
        format!("/api/v1/studies/{study}"),
        "/api/v1/studies?limit=3".into(),
        format!("/api/v1/studies/{study}/verdict"),
        format!("/api/v1/studies/{study}/verdict?format=csv"),
        format!("/api/v1/studies/{study}/verdict?format=md&min_gain=0.5"),
    ] {
        let a = c.get(&app, &uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.text);
    }
    let a = c
        .post(&app, &format!("/api/v1/studies/{study}/cancel"), json!({}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    // a queued run, cancelled, then cancelled again
    let a = c
        .post(
            &app,
            "/api/v1/runs",
            json!({"model": "bert-tiny", "dataset": "demo-news"}),
        )
        .await;
    let queued = a.json()["id"].as_i64().unwrap();
    let a = c
        .post(&app, &format!("/api/v1/runs/{queued}/cancel"), json!({}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = c
        .post(&app, &format!("/api/v1/runs/{queued}/cancel"), json!({}))
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    // errors: each answered with a documented status and the error schema
    let a = c.get(&app, "/api/v1/runs/999999").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = c.get(&app, "/api/v1/runs?limit=0").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let a = c.get(&app, "/api/v1/leaderboard?bogus=1").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let a = c
        .post(
            &app,
            "/api/v1/runs",
            json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": 0}),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let a = c
        .post(
            &app,
            &format!("/api/v1/runs/{id}/metrics"),
            json!({"points": []}),
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::CONFLICT,
        "a native run takes no points: {}",
        a.text
    );
    let a = c
        .post(
            &app,
            &format!("/api/v1/runs/{id}/register"),
            json!({"name": "tuned"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    let a = c
        .post(&app, "/api/v1/datasets", json!({"name": "x", "path": "/"}))
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let req = Request::post("/api/v1/runs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let (status, text) = app.send(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    c.cases.push(json!({
        "what": "400",
        "schema": resolve(&c.doc, &c.doc["paths"]["/api/v1/runs"]["post"]["responses"]["400"])
            ["content"]["application/json"]["schema"],
        "instance": serde_json::from_str::<Value>(&text).unwrap(),
    }));
    let a = c.call(&app, "POST", "/api/v1/studies", None).await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // a write without the token of a service that has one
    let secured = modalbench::http::secured(
        app.state.clone(),
        modalbench::http::auth::Auth::new(Some("s3cret".into())),
    );
    let req = Request::post(format!("/api/v1/runs/{id}/cancel"))
        .body(Body::empty())
        .unwrap();
    let res = secured.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let op = &c.doc["paths"]["/api/v1/runs/{id}/cancel"]["post"];
    assert!(op["security"].to_string().contains("token"), "{op}");
    c.cases.push(json!({
        "what": "401",
        "schema": resolve(&c.doc, &op["responses"]["401"])["content"]["application/json"]["schema"],
        "instance": serde_json::from_slice::<Value>(&body).unwrap(),
    }));
    c.validate();
}

/// Query parameters of the `GET` operations, with a URI that reaches each (ids of resources
/// that exist).
async fn query_parameters(app: &TestApp, doc: &Value) -> Vec<(String, String, Value)> {
    let run = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news"}))
        .await;
    let (status, study) = app
        .post(
            "/api/v1/studies",
            json!({"name": "s", "models": ["bert-tiny"], "datasets": ["demo-news"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{study}");
    let study = study["id"].as_i64().unwrap();
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        let Some(op) = item.get("get") else { continue };
        let id = if template.contains("/studies/") {
            study
        } else {
            run
        };
        let uri = concrete(template, id, "demo-news");
        for p in op["parameters"].as_array().into_iter().flatten() {
            if p["in"] == "query" {
                let schema = resolve(doc, &p["schema"]).clone();
                out.push((uri.clone(), p["name"].as_str().unwrap().to_string(), schema));
            }
        }
    }
    out
}

#[tokio::test]
async fn query_parameters_accept_exactly_their_documented_names_and_ranges() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let params = query_parameters(&app, &doc).await;
    assert!(params.len() > 15, "{params:?}");
    let answer = |uri: &str, name: &str, value: &str| {
        let uri = format!(
            "{uri}?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair(name, value)
                .finish()
        );
        let app = &app;
        async move { (send(app, "GET", &uri, None).await.status, uri) }
    };
    let mut checked = 0;
    for (uri, name, schema) in &params {
        if uri.ends_with("/checkpoint") {
            // no checkpoint is written: any `which` is a 404 after it is read
            continue;
        }
        if let Some(names) = schema["enum"].as_array() {
            for v in names.iter().filter_map(Value::as_str) {
                let (status, u) = answer(uri, name, v).await;
                assert!(
                    status.is_success(),
                    "{u}: documented, refused with {status}"
                );
                checked += 1;
            }
            let (status, u) = answer(uri, name, "no-such-name").await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{u}: not documented, accepted"
            );
            if !names.contains(&json!("")) {
                let (status, u) = answer(uri, name, "").await;
                assert_eq!(
                    status,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{u}: not documented, accepted"
                );
            }
        }
        let integer = schema["type"] == "integer";
        let bounds = [
            (schema.get("minimum"), -1.0, -0.5),
            (schema.get("maximum"), 1.0, 0.5),
        ];
        for (bound, beyond, half) in bounds {
            let Some(b) = bound.and_then(Value::as_f64) else {
                continue;
            };
            let (status, u) = answer(uri, name, &b.to_string()).await;
            assert!(
                status.is_success(),
                "{u}: at the documented bound, refused with {status}"
            );
            // an integer just beyond, a number half a step beyond
            let out = if integer { b + beyond } else { b + half };
            let (status, u) = answer(uri, name, &out.to_string()).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{u}: beyond the documented bound, accepted"
            );
            checked += 2;
        }
    }
    assert!(checked > 40, "{checked} values checked");
}

#[tokio::test]
async fn the_api_page_shows_and_links_every_operation_and_schema() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let (status, html) = app.page("/api/docs").await;
    assert_eq!(status, StatusCode::OK);
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let id = op["operationId"].as_str().unwrap();
            assert!(
                html.contains(&format!("id=\"{id}\"")),
                "no section for {id}"
            );
            assert!(html.contains(&format!("href=\"#{id}\"")), "no link to {id}");
            assert!(
                html.contains(&format!("<code>{path}</code>")),
                "{path} not shown"
            );
            operations += 1;
        }
    }
    assert!(operations >= 28, "{operations}");
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(
            html.contains(&format!("id=\"schema-{name}\"")),
            "no section for {name}"
        );
    }
    // the options' declarations are on it: a range and a default
    assert!(
        html.contains("≤ 1000") && html.contains("default 16"),
        "options' ranges missing"
    );
    // every page links it
    for page in ["/", "/runs", "/leaderboard", "/api/docs"] {
        let (_, html) = app.page(page).await;
        assert!(
            html.contains("href=\"/api/docs\""),
            "{page} does not link the API page"
        );
    }
}

// --- found by fuzzing the API against the document (scripts/fuzz.sh) ---------------------------

#[tokio::test]
async fn an_external_point_with_a_timestamp_out_of_range_is_a_422_naming_it() {
    let app = TestApp::new().await;
    let (status, run) = app.post("/api/v1/runs/external", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let id = run["id"].as_i64().unwrap();
    let points = json!({"points": [
        {"key": "loss", "value": 1.0},
        {"key": "loss", "value": 0.5, "timestamp": i64::MAX},
    ]});
    let (status, err) = app
        .post(&format!("/api/v1/runs/{id}/metrics"), points)
        .await;
    // it was a 409 conflict, as if the run's state were at fault
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "points[1].timestamp", "{err}");
    let (_, series) = app.get(&format!("/api/v1/runs/{id}/metrics")).await;
    assert_eq!(series["series"], json!({}), "nothing stored: {series}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_to_new_experiments_all_succeed() {
    // each request reads (is the experiment there?) then writes in one transaction; SQLite
    // refuses to upgrade a reader whose snapshot another writer has moved on ("database is
    // locked", at once, whatever the busy timeout): it was a 500
    let app = TestApp::new().await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let router = app.router.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"experiment": format!("e{i}"), "params": {"i": i.to_string()}});
            let req = Request::post("/api/v1/runs/external")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let res = router.oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }));
    }
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{text}");
    }
    let (_, runs) = app.get("/api/v1/runs?source=external").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 24);
}

#[tokio::test]
async fn registering_the_checkpoint_of_a_run_that_has_none_yet_is_a_conflict_not_a_404() {
    // schemathesis' check that a resource just created is found: the run is there, its
    // checkpoint not yet
    let app = TestApp::new().await;
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news"}))
        .await;
    let (status, err) = app
        .post(
            &format!("/api/v1/runs/{id}/register"),
            json!({"name": "early"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no best checkpoint yet")
    );
    let (status, _) = app
        .post("/api/v1/runs/999999/register", json!({"name": "early"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no such run");
}
