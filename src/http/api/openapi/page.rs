//! The page `/api/docs`: the OpenAPI document rendered here, without script (the pages'
//! Content-Security-Policy allows none from elsewhere): every operation with its parameters,
//! body and answers, and every schema, each with an anchor the table of contents links.

use super::{BASE, METHODS, document};
use crate::http::AppState;
use crate::http::pages::{PageResult, render};
use askama::Template;
use axum::Router;
use serde_json::Value;

/// `/api/docs`.
pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/api/docs", axum::routing::get(docs_page))
}

#[derive(Template)]
#[template(path = "api_docs.html")]
struct DocsPage {
    title: String,
    version: String,
    description: String,
    base: &'static str,
    groups: Vec<Group>,
    schemas: Vec<SchemaView>,
}

/// The operations of one tag.
struct Group {
    tag: String,
    description: String,
    operations: Vec<OperationView>,
}

struct OperationView {
    /// Its `operationId`: the anchor of its section.
    id: String,
    method: String,
    path: String,
    summary: String,
    description: String,
    params: Vec<FieldView>,
    body: Option<ContentView>,
    responses: Vec<ResponseView>,
}

/// A parameter or a property.
struct FieldView {
    name: String,
    /// `query`, `path`; empty for a property.
    place: String,
    ty: TypeView,
    required: bool,
    description: String,
    /// Range, length, default: `1 ≤ x ≤ 1000, default 100`.
    constraints: String,
}

/// A schema in a few words, with the schema it names (the anchor of its section).
struct TypeView {
    text: String,
    link: Option<String>,
}

struct ContentView {
    content_type: String,
    ty: TypeView,
}

struct ResponseView {
    status: String,
    description: String,
    contents: Vec<ContentView>,
}

struct SchemaView {
    name: String,
    description: String,
    /// What it is, when not an object with properties (`one of …`, `string, one of …`).
    summary: String,
    fields: Vec<FieldView>,
}

/// `GET /api/docs`: every operation of the document, with its parameters, body and answers,
/// and every schema, rendered here (no script).
async fn docs_page() -> PageResult {
    render(&docs_view(
        &serde_json::to_value(document()).unwrap_or_default(),
    ))
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The schema `$ref` points to (`#/components/schemas/Run` → `Run`).
fn ref_name(v: &Value) -> Option<String> {
    let r = v.get("$ref")?.as_str()?;
    Some(r.rsplit('/').next()?.to_string())
}

/// A schema in a few words: `Run`, `array of Point`, `integer or null`, `one of "a", "b"`.
fn type_view(schema: &Value) -> TypeView {
    if let Some(name) = ref_name(schema) {
        return TypeView {
            text: name.clone(),
            link: Some(name),
        };
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(items) = schema.get(key).and_then(Value::as_array) {
            let parts: Vec<TypeView> = items.iter().map(type_view).collect();
            let link = parts.iter().find_map(|p| p.link.clone());
            let texts: Vec<String> = parts.into_iter().map(|p| p.text).collect();
            return TypeView {
                text: texts.join(" or "),
                link,
            };
        }
    }
    let types: Vec<String> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    };
    let mut link = None;
    let mut words: Vec<String> = types
        .iter()
        .map(|t| match t.as_str() {
            "array" => {
                let item = schema.get("items").map(type_view);
                match item {
                    Some(item) => {
                        link = item.link;
                        format!("array of {}", item.text)
                    }
                    None => "array".into(),
                }
            }
            "object" => match schema.get("additionalProperties") {
                Some(v) if v.is_object() && !v.as_object().is_some_and(|o| o.is_empty()) => {
                    let item = type_view(v);
                    link = item.link;
                    format!("map of {}", item.text)
                }
                _ => "object".into(),
            },
            other => other.to_string(),
        })
        .collect();
    if words.is_empty() {
        words.push("any".into());
    }
    let mut text = words.join(" or ");
    if let Some(names) = schema.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = names.iter().map(Value::to_string).collect();
        text = format!("{text}, one of {}", names.join(", "));
    }
    TypeView { text, link }
}

/// The range, length, pattern and default of a schema, in words.
fn constraints(schema: &Value) -> String {
    let mut parts = Vec::new();
    let num = |k: &str| schema.get(k).map(Value::to_string);
    match (num("minimum"), num("exclusiveMinimum")) {
        (Some(m), _) => parts.push(format!("≥ {m}")),
        (None, Some(m)) => parts.push(format!("> {m}")),
        _ => {}
    }
    match (num("maximum"), num("exclusiveMaximum")) {
        (Some(m), _) => parts.push(format!("≤ {m}")),
        (None, Some(m)) => parts.push(format!("< {m}")),
        _ => {}
    }
    if let Some(m) = num("minLength") {
        parts.push(format!("length ≥ {m}"));
    }
    if let Some(m) = num("maxLength") {
        parts.push(format!("length ≤ {m}"));
    }
    if let Some(m) = num("minItems") {
        parts.push(format!("items ≥ {m}"));
    }
    if let Some(m) = num("maxItems") {
        parts.push(format!("items ≤ {m}"));
    }
    if schema.get("uniqueItems") == Some(&Value::Bool(true)) {
        parts.push("distinct".into());
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        parts.push(format!("matches {p}"));
    }
    if let Some(d) = schema.get("default") {
        parts.push(format!("default {d}"));
    }
    parts.join(", ")
}

/// The properties of an object schema.
fn properties(schema: &Value) -> Vec<FieldView> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut fields: Vec<FieldView> = props
        .iter()
        .map(|(name, p)| FieldView {
            name: name.clone(),
            place: String::new(),
            ty: type_view(p),
            required: required.contains(&name.as_str()),
            description: text(p, "description"),
            constraints: constraints(p),
        })
        .collect();
    // the required first (`model`, `dataset`), each group by name (the JSON value's map has
    // lost the declaration order)
    fields.sort_by_key(|f| !f.required);
    fields
}

fn contents(v: &Value) -> Vec<ContentView> {
    v.get("content")
        .and_then(Value::as_object)
        .map(|c| {
            c.iter()
                .map(|(ct, media)| ContentView {
                    content_type: ct.clone(),
                    ty: media.get("schema").map(type_view).unwrap_or(TypeView {
                        text: "any".into(),
                        link: None,
                    }),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The page's view of the document (as JSON, so that references are followed by name).
fn docs_view(doc: &Value) -> DocsPage {
    let shared_responses = &doc["components"]["responses"];
    let mut groups: Vec<Group> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| Group {
            tag: text(t, "name"),
            description: text(t, "description"),
            operations: Vec::new(),
        })
        .collect();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let params = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| FieldView {
                    name: text(p, "name"),
                    place: text(p, "in"),
                    ty: type_view(&p["schema"]),
                    required: p["required"].as_bool().unwrap_or(false),
                    // a parameter's schema may carry its description
                    description: Some(text(p, "description"))
                        .filter(|d| !d.is_empty())
                        .unwrap_or_else(|| text(&p["schema"], "description")),
                    constraints: constraints(&p["schema"]),
                })
                .collect();
            let body = op
                .get("requestBody")
                .and_then(|b| contents(b).into_iter().next());
            let responses = op["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(status, r)| {
                    let r = match ref_name(r) {
                        Some(name) => &shared_responses[name.as_str()],
                        None => r,
                    };
                    ResponseView {
                        status: status.clone(),
                        description: text(r, "description"),
                        contents: contents(r),
                    }
                })
                .collect();
            let view = OperationView {
                id: text(op, "operationId"),
                method: method.to_uppercase(),
                path: path.clone(),
                summary: text(op, "summary"),
                description: text(op, "description"),
                params,
                body,
                responses,
            };
            let tag = op["tags"][0].as_str().unwrap_or("").to_string();
            match groups.iter_mut().find(|g| g.tag == tag) {
                Some(g) => g.operations.push(view),
                None => groups.push(Group {
                    tag,
                    description: String::new(),
                    operations: vec![view],
                }),
            }
        }
    }
    groups.retain(|g| !g.operations.is_empty());
    let schemas = doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, s)| {
            let fields = properties(s);
            let summary = if fields.is_empty() || s.get("type").is_none_or(|t| t != "object") {
                let ty = type_view(s).text;
                let c = constraints(s);
                if c.is_empty() {
                    ty
                } else {
                    format!("{ty} ({c})")
                }
            } else {
                String::new()
            };
            SchemaView {
                name: name.clone(),
                description: text(s, "description"),
                summary,
                fields,
            }
        })
        .collect();
    let info = &doc["info"];
    DocsPage {
        title: text(info, "title"),
        version: text(info, "version"),
        description: text(info, "description"),
        base: BASE,
        groups,
        schemas,
    }
}

/// Text with `code` spans, as HTML: escaped, each span in `<code>`.
fn code_spans(s: &str) -> String {
    let escaped = s
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    let mut out = String::with_capacity(escaped.len());
    for (i, part) in escaped.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str("<code>");
            out.push_str(part);
            out.push_str("</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Askama filters of the page.
mod filters {
    /// Escapes the text and sets its `code` spans (the descriptions' Markdown backticks).
    #[askama::filter_fn]
    pub fn code(
        s: impl ToString,
        _: &dyn askama::Values,
    ) -> askama::Result<askama::filters::Safe<String>> {
        Ok(askama::filters::Safe(super::code_spans(&s.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_are_escaped_and_set() {
        assert_eq!(
            code_spans("a `<b>` & \"c\""),
            "a <code>&lt;b&gt;</code> &amp; &quot;c&quot;"
        );
    }
}
