//! The data-plane REST API (`/api/...`): every operation of the 2024-12-01 version, with the
//! status codes, limits and error shape of the real service.
//!
//! Routing is done by hand over percent-decoded path segments, because operation names such
//! as `:send` and `:addToGroups` are path segments starting with a colon, and because hub,
//! user and group names may contain characters (like an encoded `/`) that only survive when
//! the path is split before it is decoded.

use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::config::MAX_MESSAGE_BYTES;
use crate::error::ApiError;
use crate::filter::Filter;
use crate::hub::{Audience, Hub};
use crate::message::{DataType, Envelope, Origin, Payload};
use crate::permission::{Grant, Permission};
use crate::{entra, token, AppState};

/// API versions the emulator answers. Older stable versions share today's behaviour.
const API_VERSIONS: &[&str] = &[
    "2021-10-01",
    "2022-11-01",
    "2023-07-01",
    "2024-01-01",
    "2024-12-01",
];

/// Largest page `ListConnectionsInGroup` returns.
const MAX_PAGE_SIZE: usize = 200;

/// The query string of a request, decoded, with repeated keys kept.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        Query(
            raw.unwrap_or("")
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(key), decode(value))
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// One decoded REST request, ready for an operation.
struct Call {
    method: Method,
    query: Query,
    headers: HeaderMap,
    body: bytes::Bytes,
    /// `scheme://host` the request arrived at, for token audiences and links.
    origin: String,
    path: String,
}

/// Answers every request under `/api/`.
pub(crate) async fn handle(State(app): State<AppState>, request: Request) -> Response {
    let method = request.method().clone();
    let span = tracing::debug_span!("rest", %method, path = %request.uri().path());
    let _entered = span.enter();
    let is_head = method == Method::HEAD;

    let injected = if app.faults.armed() {
        app.faults
            .on_rest_request(&method, request.uri().path())
            .await
    } else {
        None
    };
    let response = match injected {
        Some(response) => response,
        None => match call(&app, request).await {
            Ok(response) => response,
            Err(err) => {
                tracing::debug!(status = %err.status, error = %err.message, "rest call refused");
                err.into_response()
            }
        },
    };

    // HEAD answers carry a status and headers only.
    if is_head {
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    response
}

async fn call(app: &AppState, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let segments = segments(&path)?;
    let query = Query::parse(parts.uri.query());

    if matches!(segments.as_slice(), [api, health] if api == "api" && health == "health") {
        return match parts.method {
            Method::HEAD | Method::GET => Ok(StatusCode::OK.into_response()),
            _ => Err(method_not_allowed()),
        };
    }

    let version = query
        .get("api-version")
        .ok_or_else(|| ApiError::bad_request("missing required query parameter 'api-version'"))?;
    if !API_VERSIONS.contains(&version) {
        return Err(ApiError::bad_request(format!(
            "api-version '{version}' is not supported; expected one of {}",
            API_VERSIONS.join(", ")
        )));
    }

    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let origin = format!("http://{host}");
    authorize(app, &parts.headers, &origin, &parts.uri).await?;

    let body = read_body(&parts.headers, body).await?;
    let call = Call {
        method: parts.method,
        query,
        headers: parts.headers,
        body,
        origin,
        path,
    };
    route(app, &call, &segments)
}

fn segments(path: &str) -> Result<Vec<String>, ApiError> {
    path.trim_start_matches('/')
        .split('/')
        .map(|segment| {
            percent_decode_str(segment)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| {
                    ApiError::bad_request("path segment is not valid percent-encoded UTF-8")
                })
        })
        .collect()
}

async fn authorize(
    app: &AppState,
    headers: &HeaderMap,
    origin: &str,
    uri: &axum::http::Uri,
) -> Result<(), ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let bearer = token::bearer(header).map_err(|e| ApiError::unauthorized(e.to_string()))?;
    if entra::is_entra_token(bearer) {
        return entra::validate(app.entra.as_ref(), bearer)
            .await
            .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()));
    }
    let path_and_query = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let audiences = [
        format!("{origin}{path_and_query}"),
        format!("{origin}{}", uri.path()),
    ];
    token::validate_rest_token(&app.config.access_key, bearer, &audiences)
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

async fn read_body(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("request body is larger than the {MAX_MESSAGE_BYTES} bytes a message may have"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_MESSAGE_BYTES) {
        return Err(too_large());
    }
    to_bytes(body, MAX_MESSAGE_BYTES)
        .await
        .map_err(|_| too_large())
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "method not allowed on this path",
    )
}

fn route(app: &AppState, call: &Call, segments: &[String]) -> Result<Response, ApiError> {
    let [api, hubs, hub_name, rest @ ..] = segments else {
        return Err(ApiError::not_found(
            "no such operation; expected /api/hubs/{hub}/...",
        ));
    };
    if api != "api" || hubs != "hubs" {
        return Err(ApiError::not_found(
            "no such operation; expected /api/hubs/{hub}/...",
        ));
    }
    check_hub_name(hub_name)?;
    let hub = app.hubs.get_or_create(hub_name);
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let m = &call.method;

    match (m, rest.as_slice()) {
        (&Method::POST, [":send"]) => send(call, &hub, Audience::All, true, true),
        (&Method::POST, [":addToGroups"]) => change_groups(call, &hub, true),
        (&Method::POST, [":removeFromGroups"]) => change_groups(call, &hub, false),
        (&Method::POST, [":closeConnections"]) => close(call, &hub, Audience::All),
        (&Method::POST, [":generateToken"]) => generate_token(app, call, hub_name),

        (&Method::DELETE, ["connections", id]) => {
            check_id("connection id", id)?;
            close(call, &hub, Audience::Connection(id))
        }
        (&Method::HEAD, ["connections", id]) => exists(hub.connection_exists(id)),
        (&Method::POST, ["connections", id, ":send"]) => {
            check_id("connection id", id)?;
            send(call, &hub, Audience::Connection(id), false, false)
        }
        (&Method::DELETE, ["connections", id, "groups"]) => {
            hub.remove_connection_from_all_groups(id);
            Ok(StatusCode::NO_CONTENT.into_response())
        }

        (&Method::HEAD, ["groups", group]) => {
            check_group(group)?;
            exists(hub.group_exists(group))
        }
        (&Method::POST, ["groups", group, ":closeConnections"]) => {
            check_group(group)?;
            close(call, &hub, Audience::Group(group))
        }
        (&Method::POST, ["groups", group, ":send"]) => {
            check_group(group)?;
            send(call, &hub, Audience::Group(group), true, true)
        }
        (&Method::GET, ["groups", group, "connections"]) => {
            check_group(group)?;
            list_group(call, &hub, group)
        }
        (&Method::PUT, ["groups", group, "connections", id]) => {
            check_group(group)?;
            if !hub.add_connection_to_group(id, group) {
                return Err(ApiError::not_found(format!(
                    "connection '{id}' does not exist"
                )));
            }
            Ok(StatusCode::OK.into_response())
        }
        (&Method::DELETE, ["groups", group, "connections", id]) => {
            check_group(group)?;
            hub.remove_connection_from_group(id, group);
            Ok(StatusCode::NO_CONTENT.into_response())
        }

        (_, ["permissions", permission, "connections", id]) => {
            permission_call(call, &hub, permission, id)
        }

        (&Method::HEAD, ["users", user]) => {
            check_id("user id", user)?;
            exists(hub.user_exists(user))
        }
        (&Method::POST, ["users", user, ":closeConnections"]) => {
            check_id("user id", user)?;
            close(call, &hub, Audience::User(user))
        }
        (&Method::POST, ["users", user, ":send"]) => {
            check_id("user id", user)?;
            send(call, &hub, Audience::User(user), false, true)
        }
        (&Method::DELETE, ["users", user, "groups"]) => {
            check_id("user id", user)?;
            hub.remove_user_from_all_groups(user);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::PUT, ["users", user, "groups", group]) => {
            check_id("user id", user)?;
            check_group(group)?;
            hub.add_user_to_group(user, group);
            Ok(StatusCode::OK.into_response())
        }
        (&Method::DELETE, ["users", user, "groups", group]) => {
            check_id("user id", user)?;
            check_group(group)?;
            hub.remove_user_from_group(user, group);
            Ok(StatusCode::NO_CONTENT.into_response())
        }

        _ => Err(ApiError::not_found(format!(
            "no operation {m} {}; see the Web PubSub REST API 2024-12-01",
            call.path
        ))),
    }
}

/// Hub names follow the service's pattern: a letter, then up to 127 letters, digits or
/// `` _`,.[] ``.
pub(crate) fn check_hub_name(hub: &str) -> Result<(), ApiError> {
    let mut chars = hub.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "_`,.[]".contains(c));
    if !first_ok || !rest_ok || hub.len() > 128 {
        return Err(ApiError::bad_request(format!(
            "invalid hub name '{hub}': expected a letter followed by up to 127 letters, digits or _`,.[]"
        )));
    }
    Ok(())
}

fn check_group(group: &str) -> Result<(), ApiError> {
    if group.is_empty() || group.chars().count() > 1024 || group.trim().is_empty() {
        return Err(ApiError::bad_request(
            "invalid group name: expected 1 to 1024 characters, not only white space",
        ));
    }
    Ok(())
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::bad_request(format!("{what} must not be empty")));
    }
    Ok(())
}

fn exists(found: bool) -> Result<Response, ApiError> {
    if found {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(ApiError::not_found("not found"))
    }
}

fn parse_filter(query: &Query) -> Result<Option<Filter>, ApiError> {
    match query.get("filter") {
        None | Some("") => Ok(None),
        Some(text) => Filter::parse(text)
            .map(Some)
            .map_err(|err| ApiError::bad_request(format!("invalid filter: {err}"))),
    }
}

fn send(
    call: &Call,
    hub: &Hub,
    audience: Audience<'_>,
    takes_excluded: bool,
    takes_filter: bool,
) -> Result<Response, ApiError> {
    if let Some(ttl) = call.query.get("messageTtlSeconds") {
        match ttl.parse::<u32>() {
            Ok(0..=300) => {}
            _ => {
                return Err(ApiError::bad_request(format!(
                    "messageTtlSeconds must be an integer from 0 to 300, got '{ttl}'"
                )))
            }
        }
    }
    let excluded = if takes_excluded {
        call.query.all("excluded")
    } else {
        Vec::new()
    };
    let filter = if takes_filter {
        parse_filter(&call.query)?
    } else {
        None
    };

    let content_type = call
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let data_type = DataType::from_content_type(content_type)?;
    let payload = Payload::new(data_type, call.body.clone())?;
    let origin = match audience {
        Audience::Group(group) => Origin::Group {
            group: group.to_owned(),
            from_user_id: None,
        },
        _ => Origin::Server,
    };

    let report = hub.send(
        audience,
        &Envelope::new(origin, payload),
        &excluded,
        filter.as_ref(),
    );
    tracing::debug!(
        hub = %hub.name,
        delivered = report.delivered,
        disconnected = report.disconnected,
        "message sent"
    );
    Ok(StatusCode::ACCEPTED.into_response())
}

#[derive(Deserialize)]
struct GroupsBody {
    groups: Vec<String>,
    #[serde(default)]
    filter: Option<String>,
}

fn change_groups(call: &Call, hub: &Hub, add: bool) -> Result<Response, ApiError> {
    let body: GroupsBody = serde_json::from_slice(&call.body).map_err(|err| {
        ApiError::bad_request(format!(
            "body must be JSON {{\"groups\": [\"...\"], \"filter\": \"...\"}}: {err}"
        ))
    })?;
    for group in &body.groups {
        check_group(group)?;
    }
    let filter = match body.filter.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            Filter::parse(text)
                .map_err(|err| ApiError::bad_request(format!("invalid filter: {err}")))?,
        ),
    };
    if add {
        hub.add_filtered_to_groups(&body.groups, filter.as_ref());
    } else {
        hub.remove_filtered_from_groups(&body.groups, filter.as_ref());
    }
    Ok(StatusCode::OK.into_response())
}

fn close(call: &Call, hub: &Hub, audience: Audience<'_>) -> Result<Response, ApiError> {
    let excluded = call.query.all("excluded");
    let reason = call.query.get("reason").unwrap_or("closed by the service");
    let closed = hub.close(audience, &excluded, reason);
    tracing::debug!(hub = %hub.name, closed, "connections closed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn generate_token(app: &AppState, call: &Call, hub_name: &str) -> Result<Response, ApiError> {
    let minutes = match call.query.get("minutesToExpire") {
        None => 60,
        Some(text) => match text.parse::<u64>() {
            Ok(m) if m >= 1 => m,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "minutesToExpire must be a whole number of at least 1, got '{text}'"
                )))
            }
        },
    };
    match call.query.get("clientType") {
        None => {}
        Some(kind) if kind.eq_ignore_ascii_case("default") => {}
        Some(kind) => {
            return Err(ApiError::bad_request(format!(
                "clientType '{kind}' is not supported by the emulator; expected Default"
            )))
        }
    }

    let audience = format!("{}/client/hubs/{hub_name}", call.origin);
    let token = token::sign_client_token(
        &app.config.access_key,
        &audience,
        call.query.get("userId"),
        &call.query.all("role"),
        &call.query.all("group"),
        Duration::from_secs(minutes * 60),
    );
    Ok(axum::Json(serde_json::json!({ "token": token })).into_response())
}

fn list_group(call: &Call, hub: &Hub, group: &str) -> Result<Response, ApiError> {
    let number = |name: &str, min: usize, max: usize| -> Result<Option<usize>, ApiError> {
        match call.query.get(name) {
            None => Ok(None),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::bad_request(format!(
                    "{name} must be a whole number from {min} to {max}, got '{text}'"
                ))),
            },
        }
    };
    let page_size = number("maxpagesize", 1, MAX_PAGE_SIZE)?.unwrap_or(MAX_PAGE_SIZE);
    let top = number("top", 1, usize::MAX)?;
    let after = match call.query.get("continuationToken") {
        None => None,
        Some(token) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("continuationToken is not one this service issued")
                })?,
        ),
    };

    let limit = top.map_or(page_size, |top| top.min(page_size));
    let (page, more) = hub.group_connections(group, after.as_deref(), limit);
    let remaining = top.map(|top| top - page.len());
    let next_link = match (more, remaining, page.last()) {
        (true, None, Some((last, _))) | (true, Some(1..), Some((last, _))) => {
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last);
            let mut link = format!(
                "{}{}?api-version={}&maxpagesize={page_size}&continuationToken={token}",
                call.origin,
                call.path,
                call.query.get("api-version").unwrap_or("2024-12-01"),
            );
            if let Some(remaining) = remaining {
                link.push_str(&format!("&top={remaining}"));
            }
            Some(link)
        }
        _ => None,
    };

    let value: Vec<serde_json::Value> = page
        .into_iter()
        .map(|(id, user)| serde_json::json!({ "connectionId": id, "userId": user }))
        .collect();
    let mut body = serde_json::json!({ "value": value });
    if let Some(link) = next_link {
        body["nextLink"] = serde_json::Value::String(link);
    }
    Ok(axum::Json(body).into_response())
}

fn permission_call(
    call: &Call,
    hub: &Hub,
    permission: &str,
    id: &str,
) -> Result<Response, ApiError> {
    let permission = Permission::parse(permission).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown permission '{permission}'; expected sendToGroup or joinLeaveGroup"
        ))
    })?;
    let target = call.query.get("targetName").filter(|t| !t.is_empty());
    if let Some(group) = target {
        check_group(group)?;
    }

    match call.method {
        Method::PUT => {
            let grant = Grant {
                permission,
                group: target.map(str::to_owned),
            };
            if !hub.grant(id, grant) {
                return Err(ApiError::not_found(format!(
                    "connection '{id}' does not exist"
                )));
            }
            Ok(StatusCode::OK.into_response())
        }
        Method::DELETE => {
            hub.revoke(id, permission, target);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::HEAD => exists(hub.allows(id, permission, target)),
        _ => Err(method_not_allowed()),
    }
}

/// Percent-encodes one path segment, for links the emulator prints.
pub(crate) fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, NON_ALPHANUMERIC).to_string()
}
