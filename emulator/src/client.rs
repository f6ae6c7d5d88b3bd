//! Client WebSocket connections (`/client/hubs/{hub}` and `/client/?hub={hub}`): the
//! handshake and its token, then the conversation in whichever subprotocol was chosen.
//!
//! Each connection is served by two halves: a writer task that drains the connection's
//! bounded queue into the socket, and a reader that applies the client's frames. A
//! reliable connection outlives its socket: when the socket drops, the session waits for
//! the client to come back with its reconnection token and then replays what it missed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use crate::config::MAX_MESSAGE_BYTES;
use crate::connection::{
    CloseReason, Connection, Limits, Protocol, SimpleMode, SocketReceiver, CLOSE_NORMAL,
    CLOSE_UNRECOVERABLE,
};
use crate::error::ApiError;
use crate::hub::{Audience, Hub};
use crate::message::{DataType, Envelope, Origin, Payload};
use crate::permission::Permission;
use crate::rest::{check_hub_name, Query};
use crate::{token, AppState};

/// How long a closing socket may take to carry its last frames. A stalled subscriber gets
/// this long to read what is already on the wire and learn why it was disconnected.
const GOODBYE_GRACE: Duration = Duration::from_secs(10);

/// `GET /client/hubs/{hub}`.
pub(crate) async fn connect_path(
    State(app): State<AppState>,
    Path(hub): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let path_hub = hub.clone();
    accept(app, hub, Some(path_hub), uri, headers, upgrade).await
}

/// `GET /client/?hub={hub}`.
pub(crate) async fn connect_query(
    State(app): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let query = Query::parse(uri.query());
    let Some(hub) = query.get("hub").map(str::to_owned) else {
        return ApiError::bad_request("missing query parameter 'hub'").into_response();
    };
    accept(app, hub, None, uri, headers, upgrade).await
}

async fn accept(
    app: AppState,
    hub_name: String,
    path_hub: Option<String>,
    uri: Uri,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(err) = check_hub_name(&hub_name) {
        return err.into_response();
    }
    let query = Query::parse(uri.query());
    let protocol = match choose_protocol(&headers, &query) {
        Ok(protocol) => protocol,
        Err(err) => return err.into_response(),
    };
    let hub = app.hubs.get_or_create(&hub_name);
    // Client frames are small; a large read buffer would be zeroed on every read.
    let upgrade = upgrade
        .read_buffer_size(8 * 1024)
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES);
    let upgrade = match protocol {
        Protocol::Simple(_) => upgrade,
        _ => upgrade.protocols([protocol.name()]),
    };

    // A reliable client coming back presents its connection id and reconnection token
    // instead of an access token.
    if let Some(connection_id) = query.get("awps_connection_id") {
        let token = query.get("awps_reconnection_token").unwrap_or_default();
        let existing = hub.connection(connection_id).filter(|c| {
            c.protocol == Protocol::ReliableJson && c.accepts_reconnection_token(token)
        });
        return match existing {
            Some(connection) => {
                let window = app.config.reconnect_window;
                upgrade.on_upgrade(move |socket| serve(socket, hub, connection, window))
            }
            None => upgrade.on_upgrade(refuse_recovery),
        };
    }

    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let claims = match authenticate(&app, &headers, &query, host, &hub_name, path_hub.as_deref()) {
        Ok(claims) => claims,
        Err(err) => return err.into_response(),
    };

    let limits = Limits {
        queue: app.config.outbound_queue,
        buffer_messages: app.config.reliable_buffer_messages,
        buffer_bytes: app.config.reliable_buffer_bytes,
    };
    let window = app.config.reconnect_window;
    let connection = Arc::new(Connection::new(
        &hub.name,
        claims.sub.clone(),
        protocol,
        limits,
    ));
    upgrade.on_upgrade(move |socket| {
        // Joining the hub only once the socket exists means a failed handshake leaves
        // nothing behind.
        hub.add(connection.clone(), claims.role, &claims.groups);
        serve(socket, hub, connection, window)
    })
}

/// Picks the subprotocol: the first one offered that the emulator speaks. A client that
/// offers none (or only unknown ones) is a simple client.
fn choose_protocol(headers: &HeaderMap, query: &Query) -> Result<Protocol, ApiError> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    for name in &offered {
        match name.as_str() {
            Protocol::JSON => return Ok(Protocol::Json),
            Protocol::RELIABLE_JSON => return Ok(Protocol::ReliableJson),
            _ => {}
        }
    }
    if offered.iter().any(|p| p.starts_with("protobuf.")) {
        return Err(ApiError::bad_request(
            "protobuf subprotocols are not supported by the emulator; \
             use json.webpubsub.azure.v1 or json.reliable.webpubsub.azure.v1",
        ));
    }

    let mode = match query.get("webpubsub_mode") {
        None | Some("sendEvent") => SimpleMode::SendEvent,
        Some("sendToGroup") => match query.get("group") {
            Some(group) if !group.is_empty() => SimpleMode::SendToGroup(group.to_owned()),
            _ => {
                return Err(ApiError::bad_request(
                    "webpubsub_mode=sendToGroup needs a 'group' query parameter",
                ))
            }
        },
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown webpubsub_mode '{other}'; expected sendEvent or sendToGroup"
            )))
        }
    };
    Ok(Protocol::Simple(mode))
}

fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    query: &Query,
    host: &str,
    hub_name: &str,
    path_hub: Option<&str>,
) -> Result<token::ClientClaims, ApiError> {
    let jwt = match query.get("access_token") {
        Some(token) if !token.is_empty() => token.to_owned(),
        _ => {
            let header = headers
                .get(header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok());
            token::bearer(header)
                .map_err(|_| {
                    ApiError::unauthorized(
                        "no access token: expected an 'access_token' query parameter or \
                         'Authorization: Bearer <jwt>'",
                    )
                })?
                .to_owned()
        }
    };

    // Tokens name the hub's client endpoint over http(s), in whichever form the issuer
    // used; hub names are case-insensitive.
    let origin = format!("http://{host}");
    let mut audiences = Vec::new();
    for hub in [
        Some(hub_name),
        path_hub,
        Some(&hub_name.to_ascii_lowercase()),
    ]
    .into_iter()
    .flatten()
    {
        audiences.push(format!("{origin}/client/hubs/{hub}"));
        audiences.push(format!("{origin}/client/?hub={hub}"));
    }
    token::validate_client_token(&app.config.access_key, &jwt, &audiences)
        .map_err(|err| ApiError::unauthorized(err.to_string()))
}

/// Closes a recovery attempt that cannot succeed with the code that tells the client to
/// stop trying.
async fn refuse_recovery(mut socket: WebSocket) {
    let frame = CloseFrame {
        code: CLOSE_UNRECOVERABLE,
        reason: Utf8Bytes::from_static("the connection cannot be recovered"),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

fn connected_message(connection: &Connection) -> Option<Message> {
    let mut message = json!({
        "type": "system",
        "event": "connected",
        "userId": connection.user_id,
        "connectionId": connection.id,
    });
    match connection.protocol {
        Protocol::Simple(_) => return None,
        Protocol::Json => {}
        Protocol::ReliableJson => {
            message["reconnectionToken"] = connection.reconnection_token().into();
        }
    }
    Some(Message::Text(Utf8Bytes::from(message.to_string())))
}

async fn serve(socket: WebSocket, hub: Arc<Hub>, connection: Arc<Connection>, window: Duration) {
    let span = tracing::debug_span!(
        "connection",
        hub = %hub.name,
        id = %connection.id,
        user = connection.user_id.as_deref().unwrap_or(""),
        protocol = connection.protocol.name(),
    );
    run(socket, hub, connection, window).instrument(span).await;
}

async fn run(socket: WebSocket, hub: Arc<Hub>, connection: Arc<Connection>, window: Duration) {
    let Some((receiver, generation)) = connection.attach(connected_message(&connection)) else {
        refuse_recovery(socket).await;
        return;
    };
    tracing::debug!(generation, "socket attached");

    let (sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(write(sink, receiver, connection.protocol.is_json()));

    // Resolves to true when the client closed the socket on purpose, with a close frame.
    let reader = async {
        while let Some(Ok(frame)) = stream.next().await {
            match frame {
                Message::Text(text) => on_text(&hub, &connection, text),
                Message::Binary(data) => on_binary(&hub, &connection, data),
                Message::Close(_) => return true,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        false
    };
    let (closed_by_client, writer_done) = tokio::select! {
        closed = reader => (closed, false),
        _ = &mut writer => (false, true),
    };

    // Only a socket that was lost, not one the client closed, is worth waiting for.
    if connection.protocol == Protocol::ReliableJson && !closed_by_client {
        if connection.detach(generation) {
            tracing::debug!("socket lost; session kept for recovery");
            expire_later(hub, connection, generation, window);
        }
    } else {
        hub.remove(&connection.id);
        connection.close(CloseReason {
            code: CLOSE_NORMAL,
            reason: "connection closed".into(),
        });
        tracing::debug!("connection closed");
    }

    // Let the writer send its close frame, but never hang on a dead socket.
    if !writer_done {
        let _ = tokio::time::timeout(GOODBYE_GRACE, writer).await;
    }
}

/// Ends a detached reliable session when its client has not come back in time.
fn expire_later(hub: Arc<Hub>, connection: Arc<Connection>, generation: u64, window: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(window).await;
        if connection.still_detached_since(generation) {
            hub.remove(&connection.id);
            connection.close(CloseReason {
                code: CLOSE_UNRECOVERABLE,
                reason: "the client did not reconnect in time".into(),
            });
            tracing::debug!(id = %connection.id, "reliable session expired");
        }
    });
}

/// Frames written to the socket before it is flushed, when more are already queued.
const WRITE_BATCH: usize = 64;

async fn write(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    receiver: SocketReceiver,
    json_system_messages: bool,
) {
    let SocketReceiver {
        mut frames,
        mut close,
    } = receiver;
    loop {
        let frame = tokio::select! {
            biased;
            reason = &mut close => {
                if let Ok(reason) = reason {
                    goodbye(&mut sink, reason, json_system_messages).await;
                }
                return;
            }
            frame = frames.recv() => match frame {
                Some(frame) => frame,
                None => return,
            },
        };

        // Frames that are already waiting go out with this one in a single flush. A
        // stalled subscriber blocks the write; the close signal must still get through.
        let batch = async {
            sink.feed(frame).await?;
            for _ in 1..WRITE_BATCH {
                match frames.try_recv() {
                    Ok(next) => sink.feed(next).await?,
                    Err(_) => break,
                }
            }
            sink.flush().await
        };
        tokio::select! {
            biased;
            reason = &mut close => {
                if let Ok(reason) = reason {
                    goodbye(&mut sink, reason, json_system_messages).await;
                }
                return;
            }
            sent = batch => {
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}

/// Tells the client why it is being disconnected, without waiting long on a socket that
/// does not drain.
async fn goodbye(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    reason: CloseReason,
    json_system_messages: bool,
) {
    let frames = async {
        if json_system_messages {
            let message = json!({
                "type": "system",
                "event": "disconnected",
                "message": reason.reason,
            });
            sink.send(Message::Text(Utf8Bytes::from(message.to_string())))
                .await?;
        }
        let frame = CloseFrame {
            code: reason.code,
            reason: Utf8Bytes::from(truncate(&reason.reason)),
        };
        sink.send(Message::Close(Some(frame))).await
    };
    let _ = tokio::time::timeout(GOODBYE_GRACE, frames).await;
}

/// Close reasons must fit in a control frame (123 bytes).
fn truncate(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// A client frame of the JSON subprotocols.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Request {
    JoinGroup {
        group: String,
        #[serde(rename = "ackId")]
        ack_id: Option<u64>,
    },
    LeaveGroup {
        group: String,
        #[serde(rename = "ackId")]
        ack_id: Option<u64>,
    },
    SendToGroup {
        group: String,
        #[serde(rename = "ackId")]
        ack_id: Option<u64>,
        #[serde(default, rename = "noEcho")]
        no_echo: bool,
        #[serde(default, rename = "dataType")]
        data_type: Option<String>,
        #[serde(default)]
        data: serde_json::Value,
    },
    Event {
        event: String,
        #[serde(rename = "ackId")]
        ack_id: Option<u64>,
        #[serde(default, rename = "dataType")]
        data_type: Option<String>,
        #[serde(default)]
        data: serde_json::Value,
    },
    SequenceAck {
        #[serde(rename = "sequenceId")]
        sequence_id: u64,
    },
    Ping,
}

/// The error names of a negative ack.
#[derive(Debug, Clone, Copy)]
enum AckError {
    Forbidden,
    Duplicate,
    BadRequest,
}

impl AckError {
    fn name(self) -> &'static str {
        match self {
            AckError::Forbidden => "Forbidden",
            AckError::Duplicate => "Duplicate",
            AckError::BadRequest => "BadRequest",
        }
    }
}

fn ack(connection: &Connection, ack_id: Option<u64>, outcome: Result<(), (AckError, String)>) {
    let Some(ack_id) = ack_id else { return };
    let frame = match outcome {
        Ok(()) => json!({ "type": "ack", "ackId": ack_id, "success": true }),
        Err((error, message)) => json!({
            "type": "ack",
            "ackId": ack_id,
            "success": false,
            "error": { "name": error.name(), "message": message },
        }),
    };
    connection.send_frame(Message::Text(Utf8Bytes::from(frame.to_string())));
}

fn on_text(hub: &Hub, connection: &Connection, text: Utf8Bytes) {
    if let Protocol::Simple(mode) = &connection.protocol {
        let payload = Payload {
            data_type: DataType::Text,
            data: bytes::Bytes::from(text.as_str().to_owned()),
        };
        simple_publish(hub, connection, mode, payload);
        return;
    }

    let request: Request = match serde_json::from_str(&text) {
        Ok(request) => request,
        Err(err) => {
            tracing::debug!(error = %err, "ignoring a client frame that is not a known request");
            let ack_id = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("ackId").and_then(|a| a.as_u64()));
            ack(
                connection,
                ack_id,
                Err((AckError::BadRequest, format!("invalid request: {err}"))),
            );
            return;
        }
    };

    // An ackId may be used once per connection; a repeat is answered, never applied twice.
    let ack_id = match &request {
        Request::JoinGroup { ack_id, .. }
        | Request::LeaveGroup { ack_id, .. }
        | Request::SendToGroup { ack_id, .. }
        | Request::Event { ack_id, .. } => *ack_id,
        Request::SequenceAck { .. } | Request::Ping => None,
    };
    if let Some(id) = ack_id {
        if !connection.remember_ack_id(id) {
            ack(
                connection,
                ack_id,
                Err((AckError::Duplicate, format!("ackId {id} was already used"))),
            );
            return;
        }
    }

    match request {
        Request::JoinGroup { group, ack_id } | Request::LeaveGroup { group, ack_id }
            if !hub.allows(&connection.id, Permission::JoinLeaveGroup, Some(&group)) =>
        {
            let message = format!("no permission to join or leave group '{group}'");
            ack(connection, ack_id, Err((AckError::Forbidden, message)));
        }
        Request::JoinGroup { group, ack_id } => {
            hub.add_connection_to_group(&connection.id, &group);
            ack(connection, ack_id, Ok(()));
        }
        Request::LeaveGroup { group, ack_id } => {
            hub.remove_connection_from_group(&connection.id, &group);
            ack(connection, ack_id, Ok(()));
        }
        Request::SendToGroup {
            group,
            ack_id,
            no_echo,
            data_type,
            data,
        } => {
            if !hub.allows(&connection.id, Permission::SendToGroup, Some(&group)) {
                let message = format!("no permission to send to group '{group}'");
                ack(connection, ack_id, Err((AckError::Forbidden, message)));
                return;
            }
            let payload = match client_payload(data_type.as_deref(), data) {
                Ok(payload) => payload,
                Err(message) => {
                    ack(connection, ack_id, Err((AckError::BadRequest, message)));
                    return;
                }
            };
            let excluded = if no_echo {
                vec![connection.id.clone()]
            } else {
                Vec::new()
            };
            let origin = Origin::Group {
                group: group.clone(),
                from_user_id: connection.user_id.clone(),
            };
            hub.send(
                Audience::Group(&group),
                &Envelope::new(origin, payload),
                &excluded,
                None,
            );
            ack(connection, ack_id, Ok(()));
        }
        Request::Event {
            event,
            ack_id,
            data_type,
            data,
        } => {
            // No upstream event handler exists in the emulator: the event is accepted and
            // logged, so clients that wait for its ack carry on.
            match client_payload(data_type.as_deref(), data) {
                Ok(payload) => {
                    tracing::debug!(event = %event, bytes = payload.len(), "client event");
                    ack(connection, ack_id, Ok(()));
                }
                Err(message) => ack(connection, ack_id, Err((AckError::BadRequest, message))),
            }
        }
        Request::SequenceAck { sequence_id } => connection.acknowledge(sequence_id),
        Request::Ping => {
            connection.send_frame(Message::Text(Utf8Bytes::from_static(r#"{"type":"pong"}"#)));
        }
    }
}

/// Turns a client frame's `dataType` and `data` into a payload; JSON is the default.
fn client_payload(data_type: Option<&str>, data: serde_json::Value) -> Result<Payload, String> {
    let data_type = match data_type {
        None => DataType::Json,
        Some(name) => DataType::parse(name)
            .ok_or_else(|| format!("unknown dataType '{name}'; expected json, text or binary"))?,
    };
    let bytes = match (data_type, data) {
        (DataType::Json, value) => bytes::Bytes::from(value.to_string()),
        (DataType::Text, serde_json::Value::String(text)) => bytes::Bytes::from(text),
        (DataType::Binary, serde_json::Value::String(encoded)) => {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(bytes::Bytes::from)
                .map_err(|_| "binary data must be base64".to_owned())?
        }
        (kind, _) => {
            return Err(format!(
                "data of dataType '{}' must be a string",
                kind.as_str()
            ))
        }
    };
    Ok(Payload {
        data_type,
        data: bytes,
    })
}

fn on_binary(hub: &Hub, connection: &Connection, data: bytes::Bytes) {
    if let Protocol::Simple(mode) = &connection.protocol {
        simple_publish(
            hub,
            connection,
            mode,
            Payload {
                data_type: DataType::Binary,
                data,
            },
        );
    } else {
        tracing::debug!("ignoring a binary frame on a JSON subprotocol");
    }
}

fn simple_publish(hub: &Hub, connection: &Connection, mode: &SimpleMode, payload: Payload) {
    match mode {
        SimpleMode::SendEvent => {
            tracing::debug!(bytes = payload.len(), "client event (no upstream handler)");
        }
        SimpleMode::SendToGroup(group) => {
            if !hub.allows(&connection.id, Permission::SendToGroup, Some(group)) {
                tracing::debug!(group = %group, "dropping a frame: no permission to send to the group");
                return;
            }
            let origin = Origin::Group {
                group: group.clone(),
                from_user_id: connection.user_id.clone(),
            };
            hub.send(
                Audience::Group(group),
                &Envelope::new(origin, payload),
                &[],
                None,
            );
        }
    }
}
