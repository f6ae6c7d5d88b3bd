//! The test console at `/`: a page for trying the emulator from a browser, and the two small
//! endpoints it calls to mint client access URLs and to describe the emulator.
//!
//! The URL endpoint signs tokens for anyone who can reach the emulator. That is the point of
//! a local tool with a public development key; it is why the emulator listens on loopback by
//! default.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::rest::{check_hub_name, encode_segment};
use crate::{token, AppState};

const PAGE: &str = include_str!("../console/index.html");

/// `GET /`.
pub(crate) async fn page() -> Html<&'static str> {
    Html(PAGE)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UrlRequest {
    hub: String,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default = "default_minutes")]
    minutes_to_expire: u64,
}

fn default_minutes() -> u64 {
    60
}

/// `POST /console/api/client-url`: the same answer as the SDKs' `getClientAccessToken`.
pub(crate) async fn client_url(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: UrlRequest = serde_json::from_slice(&body).map_err(|err| {
        ApiError::bad_request(format!(
            "body must be JSON {{\"hub\", \"userId\", \"roles\": [], \"groups\": [], \"minutesToExpire\"}}: {err}"
        ))
    })?;
    check_hub_name(&request.hub)?;
    if !(1..=60 * 24 * 365).contains(&request.minutes_to_expire) {
        return Err(ApiError::bad_request(
            "minutesToExpire must be a whole number from 1 to 525600",
        ));
    }

    let host = host(&app, &headers);
    let hub = encode_segment(&request.hub);
    let token = token::sign_client_token(
        &app.config.access_key,
        &format!("http://{host}/client/hubs/{hub}"),
        request.user_id.as_deref(),
        &request.roles,
        &request.groups,
        Duration::from_secs(request.minutes_to_expire * 60),
    );
    let base_url = format!("ws://{host}/client/hubs/{hub}");
    let url = format!("{base_url}?access_token={token}");
    Ok(Json(json!({ "url": url, "baseUrl": base_url, "token": token })).into_response())
}

/// `GET /console/api/info`.
pub(crate) async fn info(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let host = host(&app, &headers);
    Json(json!({
        "endpoint": format!("http://{host}"),
        "connectionString": crate::config::connection_string(app.local_addr, &app.config.access_key)
            .replace(&format!("localhost:{}", app.local_addr.port()), &host),
        "hubs": app.hubs.names(),
    }))
}

fn host(app: &AppState, headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| app.local_addr.to_string())
}
