//! The OpenAPI 3.1 document of the JSON API, made from the handlers' `#[utoipa::path]`
//! declarations and the types' schemas (the same declarations route the requests, see
//! [`super::routes`]), served at `GET /api/v1/openapi.json` and shown as the page `/api/docs`.
//!
//! What the extractors and layers answer is added here once, not on every handler: an
//! operation with a JSON body can answer 400 (`invalid_json`), 413, 415 and 422 ([`ApiJson`]),
//! one with query parameters 422 ([`ApiQuery`]), one with a path parameter 404, and a write
//! 401 when the service has an API token ([`auth`](crate::http::auth)).
//!
//! [`ApiJson`]: crate::http::extract::ApiJson
//! [`ApiQuery`]: crate::http::extract::ApiQuery

mod page;

use crate::eval::MetricKey;
use crate::http::AppState;
use crate::http::error::ErrorBody;
use axum::Router;
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{Ref, RefOr, ResponseBuilder};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Where the API lives.
pub const BASE: &str = "/api/v1";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "modalbench",
        description = "Queue fine-tuning runs of text and text+image classifiers, log runs \
            trained elsewhere, and read their metrics, predictions, leaderboards and studies' \
            verdicts. Every body is JSON; every error is `{\"error\": {\"code\", \"message\", \
            \"field\"?}}` with a 4xx or 5xx status, `field` naming the request field or query \
            parameter at fault."
    ),
    tags(
        (name = "runs", description = "Fine-tuning runs: queue, list, read, follow, cancel."),
        (name = "external runs", description = "Runs trained elsewhere, logged here beside the \
            native ones (the MLflow-compatible API under `/api/2.0/mlflow` writes the same)."),
        (name = "checkpoints", description = "A run's checkpoints: download, register as a model."),
        (name = "catalog", description = "What runs can use: models and datasets."),
        (name = "leaderboard", description = "Succeeded runs grouped over seeds."),
        (name = "studies", description = "Sets of runs over models × datasets × seeds × a grid, \
            and their verdict: does the image help?"),
        (name = "service", description = "The service itself."),
    ),
    components(schemas(MetricKey)),
)]
struct ApiDoc;

/// `/openapi.json`, under `/api/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// The pages outside `/api/v1`: `/api/docs`.
pub(crate) fn pages() -> Router<AppState> {
    page::router()
}

/// The OpenAPI document of `/api/v1` (and `/healthz`, `/readyz`), made once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
            .nest(BASE, super::routes())
            .routes(routes!(crate::http::healthz))
            .routes(routes!(crate::http::readyz))
            .into_openapi();
        add_shared_answers(&mut doc);
        doc
    })
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "get_openapi",
    tag = "service",
    summary = "This document",
    description = "The OpenAPI 3.1 description of the API; shown as a page at `/api/docs`.",
    responses((status = 200, description = "The document.", body = Object)),
)]
async fn openapi_json() -> Response {
    axum::Json(document()).into_response()
}

/// The methods of a path item, in the order the page lists them.
pub(crate) const METHODS: [&str; 8] = [
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

/// The errors an extractor or a layer answers with, by status: the response's name in the
/// document's components and its description.
const SHARED_ERRORS: [(&str, &str, &str); 6] = [
    (
        "400",
        "InvalidJson",
        "The body is not JSON, or nests deeper than 32 levels (`invalid_json`).",
    ),
    (
        "401",
        "Unauthorized",
        "The service has an API token and the request does not carry it \
         (`Authorization: Bearer <token>`; `unauthorized`).",
    ),
    ("404", "NotFound", "No such resource (`not_found`)."),
    (
        "413",
        "PayloadTooLarge",
        "The body is larger than the 1 MiB accepted (`payload_too_large`).",
    ),
    (
        "415",
        "UnsupportedMediaType",
        "The body is not sent as `application/json` (`unsupported_media_type`).",
    ),
    (
        "422",
        "Unprocessable",
        "A field or query parameter has a value the service cannot accept: an unknown field \
         (`unknown_field`), a missing one, a value of the wrong kind or out of its range \
         (`invalid_value`); `field` names it.",
    ),
];

/// Adds the extractors' and layers' errors to every operation that can meet them (where the
/// handler does not describe that status itself), as references to shared responses; and the
/// API token to every write, as optional (a service started without one takes none).
fn add_shared_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The service's API token (`--api-token`), needed by every write when set.",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "worker_token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The token the Slurm executor made for one attempt of one run, in its \
                     worker's ticket.",
                ))
                .build(),
        ),
    );
    for (_, name, description) in SHARED_ERRORS {
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(
                        <ErrorBody as utoipa::ToSchema>::name(),
                    )))
                    .build(),
            )
            .build();
        components.responses.insert(name.into(), response.into());
    }
    for item in doc.paths.paths.values_mut() {
        for (writes, op) in operations_mut(item) {
            let params = op.parameters.as_deref().unwrap_or_default();
            let in_path = params.iter().any(|p| p.parameter_in == ParameterIn::Path);
            let in_query = params.iter().any(|p| p.parameter_in == ParameterIn::Query);
            let body = op.request_body.is_some();
            // an operation that names its own credentials (a worker's token) keeps them
            if writes && op.security.is_none() {
                let none = SecurityRequirement::default();
                let token = SecurityRequirement::new("token", Vec::<String>::new());
                op.security = Some(vec![none, token]);
            }
            for (status, name, _) in SHARED_ERRORS {
                let applies = match status {
                    "401" => writes,
                    "404" => in_path,
                    "422" => body || in_query,
                    _ => body,
                };
                if applies {
                    op.responses
                        .responses
                        .entry(status.into())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
                }
            }
        }
    }
}

/// The operations of a path item, each with whether it writes (all but `GET`, `HEAD`,
/// `OPTIONS`, as the auth layer counts).
fn operations_mut(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (bool, &mut Operation)> {
    [
        (false, &mut item.get),
        (true, &mut item.put),
        (true, &mut item.post),
        (true, &mut item.delete),
        (false, &mut item.options),
        (false, &mut item.head),
        (true, &mut item.patch),
        (true, &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(writes, op)| Some((writes, op.as_mut()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_its_own_id() {
        let doc = serde_json::to_value(document()).unwrap();
        let mut ids = Vec::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for m in METHODS {
                if let Some(op) = item.get(m) {
                    ids.push(op["operationId"].as_str().unwrap().to_string());
                }
            }
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "{ids:?}");
    }
}
