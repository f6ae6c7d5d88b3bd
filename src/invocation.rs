//! The Functions host's custom handler contract: the invocation body the host posts to
//! `/{function}`, and the `{"Outputs", "Logs", "ReturnValue"}` answer it expects.
//!
//! Any non-2xx answer makes the host mark the invocation failed; for the SQL trigger that
//! means the batch is tried again once its lease runs out. [`InvocationError`] is the one
//! error type every failure becomes, and it decides the status.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::change::DecodeError;

/// The body the host posts. Only `Data` matters to rowcast; `Metadata` is accepted and
/// ignored.
#[derive(Debug, Deserialize)]
pub struct InvocationRequest {
    #[serde(rename = "Data")]
    pub data: Option<HashMap<String, Box<RawValue>>>,
}

impl InvocationRequest {
    /// Parses a body, naming what is wrong when it is not an invocation.
    pub fn parse(body: &[u8]) -> Result<Self, DecodeError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(DecodeError { field: "body".into(), expected: "expected an invocation {\"Data\": {...}, \"Metadata\": {...}}, got an empty body".into() });
        }
        serde_json::from_slice(body).map_err(|err| DecodeError {
            field: "body".into(),
            expected: format!(
                "expected an invocation {{\"Data\": {{...}}, \"Metadata\": {{...}}}}: {err}"
            ),
        })
    }

    /// The value of one input binding.
    pub fn binding(&self, name: &str) -> Result<&RawValue, DecodeError> {
        let data = self.data.as_ref().ok_or_else(|| DecodeError {
            field: "Data".into(),
            expected: "missing; expected an object of input bindings".into(),
        })?;
        data.get(name)
            .or_else(|| data.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
            .map(|v| &**v)
            .ok_or_else(|| DecodeError {
                field: format!("Data.{name}"),
                expected: format!(
                    "missing; expected the SQL trigger's changes under the binding name '{name}' (found: {})",
                    names(data)
                ),
            })
    }
}

fn names(data: &HashMap<String, Box<RawValue>>) -> String {
    if data.is_empty() {
        return "no bindings".into();
    }
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort_unstable();
    const SHOWN: usize = 10;
    let more = keys.len().saturating_sub(SHOWN);
    let mut names: String = keys
        .iter()
        .take(SHOWN)
        .map(|k| k.chars().take(64).collect::<String>())
        .collect::<Vec<_>>()
        .join(", ");
    if more > 0 {
        names.push_str(&format!(" and {more} more"));
    }
    names
}

/// The answer the host reads. `Outputs` stays empty: rowcast's SQL functions bind no outputs.
#[derive(Debug, Default, Serialize)]
pub struct InvocationResponse {
    #[serde(rename = "Outputs")]
    pub outputs: serde_json::Map<String, serde_json::Value>,
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    #[serde(rename = "ReturnValue")]
    pub return_value: Option<serde_json::Value>,
}

impl InvocationResponse {
    pub fn with_log(log: String) -> Self {
        InvocationResponse {
            logs: vec![log],
            ..Default::default()
        }
    }
}

impl IntoResponse for InvocationResponse {
    fn into_response(self) -> Response {
        Json(self).into_response()
    }
}

/// Every way an invocation can fail.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// The body is not what the host sends: retrying cannot help, so the answer is 400.
    #[error("bad invocation: {0}")]
    Malformed(#[from] DecodeError),
    #[error("no function named '{0}' is configured")]
    UnknownFunction(String),
    #[error("the invocation body is larger than RowcastMaxBodyBytes ({0} bytes)")]
    TooLarge(usize),
    #[error("the invocation body could not be read: {0}")]
    Unreadable(String),
    /// Some changes did not reach Web PubSub; the host should try the batch again.
    #[error("{summary}; first failure: {}", failures.first().map(String::as_str).unwrap_or("unknown"))]
    Undelivered {
        summary: String,
        failures: Vec<String>,
    },
}

impl IntoResponse for InvocationError {
    fn into_response(self) -> Response {
        let (status, field, mut logs) = match &self {
            InvocationError::Malformed(err) => {
                (StatusCode::BAD_REQUEST, Some(err.field.clone()), Vec::new())
            }
            InvocationError::UnknownFunction(_) => (StatusCode::NOT_FOUND, None, Vec::new()),
            InvocationError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Some("body".to_owned()),
                Vec::new(),
            ),
            InvocationError::Unreadable(_) => {
                (StatusCode::BAD_REQUEST, Some("body".to_owned()), Vec::new())
            }
            InvocationError::Undelivered { failures, .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, None, failures.clone())
            }
        };
        // The first log line is the batch's one-line summary; the reasons follow.
        let first = match &self {
            InvocationError::Undelivered { summary, .. } => summary.clone(),
            other => other.to_string(),
        };
        logs.insert(0, first);
        let mut body = serde_json::json!({
            "Outputs": {},
            "Logs": logs,
            "ReturnValue": null,
            "error": { "message": self.to_string() },
        });
        if let Some(field) = field {
            body["error"]["field"] = field.into();
        }
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_are_found_or_named() {
        let request =
            InvocationRequest::parse(br#"{"Data":{"changes":"[]"},"Metadata":{}}"#).unwrap();
        assert_eq!(request.binding("changes").unwrap().get(), "\"[]\"");
        let err = request.binding("rows").unwrap_err();
        assert_eq!(err.field, "Data.rows");
        assert!(err.expected.contains("found: changes"), "{err}");

        let err = InvocationRequest::parse(br#"{"Metadata":{}}"#)
            .unwrap()
            .binding("changes")
            .unwrap_err();
        assert_eq!(err.field, "Data");
        assert!(InvocationRequest::parse(b"").is_err());
        assert!(InvocationRequest::parse(b"[1]").is_err());
    }
}

/// The JSON text inside `value` once the host's string encodings are peeled off. The host
/// serializes string values again before posting them, so a binding that is a JSON text
/// (a queue message, sometimes a request) may arrive as a string, or a string of a string.
pub fn unwrap_strings(value: &RawValue) -> Result<std::borrow::Cow<'_, str>, serde_json::Error> {
    let mut text = std::borrow::Cow::Borrowed(value.get());
    for _ in 0..4 {
        if !text.trim_start().starts_with('"') {
            break;
        }
        let inner: String = serde_json::from_str(&text)?;
        text = std::borrow::Cow::Owned(inner);
    }
    Ok(text)
}

/// An HTTP trigger's request as the host passes it in `Data` (forwarding off): method, URL,
/// query, and headers as arrays of values.
#[derive(Debug, Default, Deserialize)]
pub struct HttpRequestData {
    #[serde(rename = "Method", alias = "method", default)]
    pub method: String,
    #[serde(rename = "Url", alias = "url", default)]
    pub url: String,
    #[serde(rename = "Query", alias = "query", default)]
    pub query: HashMap<String, serde_json::Value>,
    #[serde(rename = "Headers", alias = "headers", default)]
    pub headers: HashMap<String, serde_json::Value>,
}

impl HttpRequestData {
    /// Reads the request binding `name`, which the host sends as an object (some host
    /// versions wrap it in a JSON string; that is unwrapped too).
    pub fn from_binding(value: &RawValue, name: &str) -> Result<Self, DecodeError> {
        let text = unwrap_strings(value).map_err(|err| DecodeError {
            field: format!("Data.{name}"),
            expected: format!("expected the HTTP request object: {err}"),
        })?;
        serde_json::from_str(&text).map_err(|err| DecodeError {
            field: format!("Data.{name}"),
            expected: format!("expected the HTTP request {{\"Method\", \"Url\", \"Query\", \"Headers\", ...}}: {err}"),
        })
    }

    /// The first value of a header, matched ignoring case.
    pub fn header(&self, name: &str) -> Option<&str> {
        let value = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)?;
        first_string(value)
    }

    /// A query parameter, matched ignoring case.
    pub fn query(&self, name: &str) -> Option<&str> {
        let value = self
            .query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)?;
        first_string(value)
    }
}

fn first_string(value: &serde_json::Value) -> Option<&str> {
    match value {
        serde_json::Value::String(s) => Some(s.as_str()),
        serde_json::Value::Array(items) => items.iter().find_map(|v| v.as_str()),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

/// An HTTP output binding's value (`Outputs.res`): the host reads `statusCode`, `headers`
/// and `body`.
#[derive(Debug, Clone, Serialize)]
pub struct HttpResponseData {
    #[serde(rename = "statusCode")]
    pub status_code: String,
    pub headers: serde_json::Map<String, serde_json::Value>,
    pub body: String,
}

impl HttpResponseData {
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        let mut headers = serde_json::Map::new();
        headers.insert("Content-Type".into(), "application/json".into());
        HttpResponseData {
            status_code: status.to_string(),
            headers,
            body: body.to_string(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers
            .insert(name.to_owned(), serde_json::Value::String(value.into()));
        self
    }

    /// Wraps the response as the answer to the host, under the output binding `name`.
    pub fn into_invocation(self, name: &str, log: String) -> InvocationResponse {
        let mut outputs = serde_json::Map::new();
        outputs.insert(
            name.to_owned(),
            serde_json::to_value(self).unwrap_or_default(),
        );
        InvocationResponse {
            outputs,
            logs: vec![log],
            return_value: None,
        }
    }
}
