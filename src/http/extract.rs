//! Extractors that answer bad input with [`ApiError`]s naming the field, instead of axum's
//! plain-text rejections.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

/// A JSON body. Unparseable JSON is a 400 `invalid_json`; a body that parses but does not fit
/// (unknown field, wrong type) is a 422 naming the field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // a body without a JSON content type is refused: it is what a cross-site `no-cors`
        // fetch sends
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|ct| ct.to_str().unwrap_or("").to_string());
        match ct {
            Some(ct) if ct.starts_with("application/json") || ct.contains("+json") => {}
            Some(ct) => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("expected an application/json body, got `{ct}`"),
                ));
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "expected an application/json body (set `Content-Type: application/json`)",
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "payload_too_large"
            } else {
                "invalid_body"
            };
            ApiError::new(status, code, e.body_text())
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deepest nesting of arrays and objects a JSON body may have (the deepest request the API
/// takes, a study's grid, is 3).
pub const MAX_JSON_DEPTH: usize = 32;

/// The nesting depth of a JSON text's arrays and objects, counted outside strings.
pub fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses a JSON document into `T` with errors that name the field at fault: a body that is
/// not JSON, or nested deeper than [`MAX_JSON_DEPTH`], is a 400 `invalid_json`; valid JSON
/// that does not fit is a 422.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let depth = json_depth(bytes);
    if depth > MAX_JSON_DEPTH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body nests {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted"),
        ));
    }
    let not_json = |e: &serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    };
    // syntax first (ignoring values, so that a number out of float range is not a syntax
    // error here but a bad value of its field below)
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(not_json(&e));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let message = message
            .split(" at line")
            .next()
            .unwrap_or(&message)
            .to_string();
        if inner.is_syntax() || inner.is_eof() {
            // a number too large for a float is well-formed JSON but no usable value
            if message == "number out of range" && path != "." {
                return ApiError::invalid(
                    &path,
                    "invalid_value",
                    format!("`{path}`: number out of range"),
                );
            }
            return not_json(&inner);
        }
        if let Some(field) = unknown_field(&message) {
            // inside a nested object the path spells the whole way to the field
            let field = if path == "." { field } else { path.clone() };
            let mut msg = format!("unknown field `{field}`");
            if let Some(i) = message.find("expected") {
                msg = format!("{msg}; {}", &message[i..]);
            }
            return ApiError::invalid(&field, "unknown_field", msg);
        }
        let field = if path == "." {
            missing_field(&message).unwrap_or_default()
        } else {
            path
        };
        ApiError::invalid(&field, "invalid_value", format!("`{field}`: {message}"))
    })?;
    de.end().map_err(|e| not_json(&e))?;
    Ok(value)
}

fn quoted_after(msg: &str, prefix: &str) -> Option<String> {
    let rest = msg.strip_prefix(prefix)?;
    let rest = rest.strip_prefix('`')?;
    Some(rest[..rest.find('`')?].to_string())
}

fn unknown_field(msg: &str) -> Option<String> {
    quoted_after(msg, "unknown field ")
}

fn missing_field(msg: &str) -> Option<String> {
    quoted_after(msg, "missing field ").or_else(|| quoted_after(msg, "duplicate field "))
}

/// Reads an HTML form's fields into `T` (through `serde_urlencoded`, as a query string is
/// read). An empty field counts as left out, so that it takes its default. A value that does
/// not fit is a 422 naming the field.
pub fn parse_form<T: DeserializeOwned>(pairs: &[(String, String)]) -> Result<T, ApiError> {
    let given: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().filter(|(_, v)| !v.trim().is_empty()))
        .finish();
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(given.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if let Some(field) = unknown_field(&inner) {
            return ApiError::invalid(&field, "unknown_field", format!("unknown field `{field}`"));
        }
        let field = missing_field(&inner)
            .filter(|_| path == ".")
            .unwrap_or(path);
        ApiError::invalid(&field, "invalid_value", format!("`{field}`: {inner}"))
    })
}

/// Query parameters; a bad value is a 422 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let inner = e.inner().to_string();
                let field = unknown_field(&inner).unwrap_or_else(|| e.path().to_string());
                ApiError::invalid(
                    &field,
                    "invalid_value",
                    format!("query parameter `{field}`: {inner}"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        model: String,
        epochs: Option<i64>,
        lr: Option<f64>,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_json::<Req>(br#"{"model": "m", "epochs": "two"}"#).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.field.as_deref()),
            (422, Some("epochs"))
        );
        let e = parse_json::<Req>(br#"{"model": "m", "epoch": 2}"#).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("unknown_field", Some("epoch"))
        );
        let e = parse_json::<Req>(br#"{"epochs": 2}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("model"));
        let e = parse_json::<Req>(br#"{"model": "m", "#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_json"));
        let e = parse_json::<Req>(br#"{"model": "m", "lr": 1e400}"#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.field.as_deref()), (422, Some("lr")));
        let e = parse_json::<Req>(br#"{"model": "m"} x"#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_json"));
        let deep = format!("{}1{}", "[".repeat(33), "]".repeat(33));
        let e = parse_json::<Req>(deep.as_bytes()).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_json"));
        assert!(e.message.contains("33 levels"), "{}", e.message);
    }

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(json_depth(br#"{"a": [1, {"b": []}]}"#), 4);
        assert_eq!(json_depth(br#"{"a": "[[[[\"]]]"}"#), 1);
        assert_eq!(json_depth(b"17"), 0);
    }
}
