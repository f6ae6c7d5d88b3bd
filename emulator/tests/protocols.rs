//! The client subprotocols over real WebSockets: simple clients, `json.webpubsub.azure.v1`
//! and `json.reliable.webpubsub.azure.v1`.

mod common;

use std::time::Duration;

use common::{Subscriber, TestEmulator, API};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use webpubsub_emulator::Config;

const QUIET: Duration = Duration::from_millis(200);

/// A client that offers no subprotocol gets the raw body: text frames for text and JSON,
/// binary frames for binary.
#[tokio::test]
async fn simple_clients_receive_raw_frames() {
    let emu = TestEmulator::start().await;
    let url = emu.client_url("raw", Some("u1"), &[], &[]);
    let mut sub = Subscriber::connect(&url, None).await;
    assert_eq!(sub.protocol, None);
    emu.wait_for_connections("raw", 1).await;

    let post = |content_type: &'static str, body: Vec<u8>| {
        emu.rest(reqwest::Method::POST, &format!("/api/hubs/raw/:send?{API}"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    assert_eq!(
        post("text/plain", b"hello".to_vec())
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        post("application/json", b"\"quoted\"".to_vec())
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        post("application/octet-stream", vec![0, 1, 255])
            .await
            .unwrap()
            .status(),
        202
    );

    assert_eq!(sub.next_frame().await, Message::Text("hello".into()));
    assert_eq!(sub.next_frame().await, Message::Text("\"quoted\"".into()));
    assert_eq!(
        sub.next_frame().await,
        Message::Binary(vec![0, 1, 255].into())
    );
}

/// A simple client in `sendToGroup` mode publishes each frame to its group, provided its
/// token allows it.
#[tokio::test]
async fn simple_clients_in_send_to_group_mode_publish_to_the_group() {
    let emu = TestEmulator::start().await;
    let mut listener = emu
        .subscribe("mode", Some("listener"), &[], &["room"])
        .await;

    let url = emu.client_url("mode", Some("talker"), &["webpubsub.sendToGroup.room"], &[]);
    let mut talker = Subscriber::connect(
        &format!("{url}&webpubsub_mode=sendToGroup&group=room"),
        None,
    )
    .await;
    emu.wait_for_connections("mode", 2).await;
    talker.ws_send(Message::Text("hi room".into())).await;
    talker.ws_send(Message::Binary(vec![7, 8].into())).await;

    let text = listener.next_message().await;
    assert_eq!(text["from"], "group");
    assert_eq!(text["group"], "room");
    assert_eq!(text["fromUserId"], "talker");
    assert_eq!(text["dataType"], "text");
    assert_eq!(text["data"], "hi room");
    let binary = listener.next_message().await;
    assert_eq!(binary["dataType"], "binary");
    assert_eq!(binary["data"], "Bwg=");

    // Without the role, frames go nowhere.
    let url = emu.client_url("mode", Some("mute"), &[], &[]);
    let mut mute = Subscriber::connect(
        &format!("{url}&webpubsub_mode=sendToGroup&group=room"),
        None,
    )
    .await;
    emu.wait_for_connections("mode", 3).await;
    mute.ws_send(Message::Text("should not arrive".into()))
        .await;
    listener.expect_silence(QUIET).await;
}

/// The JSON subprotocol announces the connection, wraps server messages with their data
/// type, and encodes binary as base64.
#[tokio::test]
async fn json_clients_get_typed_messages() {
    let emu = TestEmulator::start().await;
    let mut sub = emu.subscribe("typed", Some("alice"), &[], &[]).await;
    assert_eq!(sub.protocol.as_deref(), Some("json.webpubsub.azure.v1"));
    assert!(!sub.connection_id.is_empty());

    emu.send_json("/api/hubs/typed/users/alice/:send", &json!({"row": 1}))
        .await;
    let message = sub.next_message().await;
    assert_eq!(
        message,
        json!({"type": "message", "from": "server", "dataType": "json", "data": {"row": 1}})
    );

    let response = emu
        .rest(
            reqwest::Method::POST,
            &format!("/api/hubs/typed/:send?{API}"),
        )
        .header("content-type", "application/octet-stream")
        .body(vec![1u8, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let message = sub.next_message().await;
    assert_eq!(message["dataType"], "binary");
    assert_eq!(message["data"], "AQID");
}

/// Joining and leaving groups needs the role; acks say whether it worked, and an `ackId`
/// used twice is answered as a duplicate.
#[tokio::test]
async fn json_clients_join_leave_and_ack() {
    let emu = TestEmulator::start().await;
    let mut plain = emu.subscribe("acks", Some("p"), &[], &[]).await;
    plain
        .send_json(json!({"type": "joinGroup", "group": "g", "ackId": 1}))
        .await;
    let ack = plain.next_json().await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["ackId"], 1);
    assert_eq!(ack["success"], false);
    assert_eq!(ack["error"]["name"], "Forbidden");

    let mut member = emu
        .subscribe("acks", Some("m"), &["webpubsub.joinLeaveGroup"], &[])
        .await;
    member
        .send_json(json!({"type": "joinGroup", "group": "g", "ackId": 1}))
        .await;
    assert_eq!(
        member.next_json().await,
        json!({"type": "ack", "ackId": 1, "success": true})
    );
    member
        .send_json(json!({"type": "joinGroup", "group": "g", "ackId": 1}))
        .await;
    let duplicate = member.next_json().await;
    assert_eq!(duplicate["success"], false);
    assert_eq!(duplicate["error"]["name"], "Duplicate");

    emu.send_json("/api/hubs/acks/groups/g/:send", &json!("to g"))
        .await;
    assert_eq!(member.next_message().await["data"], "to g");

    member
        .send_json(json!({"type": "leaveGroup", "group": "g", "ackId": 2}))
        .await;
    assert_eq!(member.next_json().await["success"], true);
    emu.send_json("/api/hubs/acks/groups/g/:send", &json!("gone"))
        .await;
    member.expect_silence(QUIET).await;
    plain.expect_silence(QUIET).await;
}

/// Group messages from clients honour `noEcho`, carry the sender's user id, and need the
/// send role; wildcard roles match by dot-separated segments.
#[tokio::test]
async fn json_clients_send_to_groups() {
    let emu = TestEmulator::start().await;
    let roles = [
        "webpubsub.sendToGroups.chat.*",
        "webpubsub.joinLeaveGroups.chat.*",
    ];
    let mut sender = emu
        .subscribe("talk", Some("s"), &roles, &["chat.lobby"])
        .await;
    let mut other = emu.subscribe("talk", Some("o"), &[], &["chat.lobby"]).await;

    let send = json!({"type": "sendToGroup", "group": "chat.lobby", "ackId": 1, "noEcho": true,
        "dataType": "text", "data": "hello"});
    sender.send_json(send).await;
    assert_eq!(sender.next_json().await["success"], true);
    let received = other.next_message().await;
    assert_eq!(received["fromUserId"], "s");
    assert_eq!(received["group"], "chat.lobby");
    assert_eq!(received["data"], "hello");

    // Without noEcho the sender gets its own message too; JSON is the default data type.
    sender
        .send_json(
            json!({"type": "sendToGroup", "group": "chat.lobby", "ackId": 2, "data": {"n": 2}}),
        )
        .await;
    let mut own = Vec::new();
    for _ in 0..2 {
        own.push(sender.next_json().await);
    }
    assert!(own
        .iter()
        .any(|f| f["type"] == "ack" && f["success"] == true));
    assert!(own
        .iter()
        .any(|f| f["type"] == "message" && f["data"] == json!({"n": 2})));
    assert_eq!(other.next_message().await["dataType"], "json");

    // The wildcard covers one segment only.
    sender
        .send_json(json!({"type": "joinGroup", "group": "chat.lobby.deep", "ackId": 3}))
        .await;
    assert_eq!(sender.next_json().await["error"]["name"], "Forbidden");
    sender
        .send_json(json!({"type": "sendToGroup", "group": "news", "ackId": 4, "data": 1}))
        .await;
    assert_eq!(sender.next_json().await["error"]["name"], "Forbidden");
}

/// Events are acknowledged, pings answered, and malformed requests get a BadRequest ack.
#[tokio::test]
async fn json_clients_events_pings_and_bad_requests() {
    let emu = TestEmulator::start().await;
    let mut sub = emu
        .subscribe("misc", Some("u"), &["webpubsub.sendToGroup"], &[])
        .await;
    sub.send_json(
        json!({"type": "event", "event": "hello", "ackId": 5, "dataType": "text", "data": "x"}),
    )
    .await;
    assert_eq!(
        sub.next_json().await,
        json!({"type": "ack", "ackId": 5, "success": true})
    );

    sub.send_json(json!({"type": "ping"})).await;
    assert_eq!(sub.next_json().await, json!({"type": "pong"}));

    sub.send_json(json!({"type": "sendToGroup", "group": "g", "ackId": 6, "dataType": "binary", "data": "%%%"}))
        .await;
    let ack = sub.next_json().await;
    assert_eq!(ack["error"]["name"], "BadRequest");
    assert!(ack["error"]["message"].as_str().unwrap().contains("base64"));

    sub.send_json(json!({"type": "teleport", "ackId": 7})).await;
    assert_eq!(sub.next_json().await["error"]["name"], "BadRequest");
}

/// Initial groups from the token's `webpubsub.group` claim are joined at connect.
#[tokio::test]
async fn token_groups_are_joined_at_connect() {
    let emu = TestEmulator::start().await;
    let mut sub = emu.subscribe("initial", Some("u"), &[], &["a", "b"]).await;
    emu.send_json("/api/hubs/initial/groups/b/:send", &json!("to b"))
        .await;
    let message = sub.next_message().await;
    assert_eq!(message["group"], "b");
    assert_eq!(message["data"], "to b");
}

/// A reliable client that loses its socket reconnects with its id and token and receives,
/// in order, every message it had not acknowledged, including those sent while it was away.
#[tokio::test]
async fn reliable_clients_recover_every_unacknowledged_message() {
    let emu = TestEmulator::start().await;
    let url = emu.client_url("rel", Some("r"), &[], &[]);
    let mut sub = Subscriber::connect(&url, Some("json.reliable.webpubsub.azure.v1")).await;
    assert_eq!(
        sub.protocol.as_deref(),
        Some("json.reliable.webpubsub.azure.v1")
    );
    let token = sub
        .reconnection_token
        .clone()
        .expect("reliable connected carries a token");
    let id = sub.connection_id.clone();

    for n in 1..=3 {
        emu.send_json("/api/hubs/rel/users/r/:send", &json!(n))
            .await;
    }
    for n in 1..=3u64 {
        let message = sub.next_message().await;
        assert_eq!(message["sequenceId"], n);
        assert_eq!(message["data"], n);
    }
    sub.send_json(json!({"type": "sequenceAck", "sequenceId": 2}))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Cut the socket without a close handshake, then send while the client is away.
    drop(sub);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for n in 4..=5 {
        emu.send_json("/api/hubs/rel/users/r/:send", &json!(n))
            .await;
    }
    assert!(
        emu.emulator.connection_count("rel") == 1,
        "the session waits for its client"
    );

    let base = emu.endpoint().replace("http://", "ws://");
    let recover =
        format!("{base}/client/hubs/rel?awps_connection_id={id}&awps_reconnection_token={token}");
    let mut back = Subscriber::connect(&recover, Some("json.reliable.webpubsub.azure.v1")).await;
    assert_eq!(back.connection_id, id);
    let replayed: Vec<(u64, u64)> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            let m = back.next_message().await;
            out.push((
                m["sequenceId"].as_u64().unwrap(),
                m["data"].as_u64().unwrap(),
            ));
        }
        out
    };
    assert_eq!(replayed, [(3, 3), (4, 4), (5, 5)]);

    emu.send_json("/api/hubs/rel/:send", &json!(6)).await;
    let next = back.next_message().await;
    assert_eq!(next["sequenceId"], 6);
}

/// Recovery with a wrong token, or after the session expired, is closed with 1008 so the
/// client stops retrying.
#[tokio::test]
async fn reliable_recovery_refused_with_1008() {
    let config = Config {
        reconnect_window: Duration::from_millis(300),
        ..Config::default()
    };
    let emu = TestEmulator::start_with(config).await;
    let url = emu.client_url("gone", Some("r"), &[], &[]);
    let sub = Subscriber::connect(&url, Some("json.reliable.webpubsub.azure.v1")).await;
    let id = sub.connection_id.clone();
    let token = sub.reconnection_token.clone().unwrap();
    drop(sub);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let base = emu.endpoint().replace("http://", "ws://");
    let wrong =
        format!("{base}/client/hubs/gone?awps_connection_id={id}&awps_reconnection_token=nope");
    let mut refused = Subscriber::connect(&wrong, None).await;
    assert_eq!(refused.closed().await.0, 1008);

    tokio::time::sleep(Duration::from_millis(600)).await;
    emu.wait_for_connections("gone", 0).await;
    let late =
        format!("{base}/client/hubs/gone?awps_connection_id={id}&awps_reconnection_token={token}");
    let mut refused = Subscriber::connect(&late, None).await;
    assert_eq!(refused.closed().await.0, 1008);
}

/// A reliable client that never acknowledges is cut off with 1008 once its replay buffer
/// is full, rather than growing without bound.
#[tokio::test]
async fn reliable_buffer_overflow_ends_the_session() {
    let config = Config {
        reliable_buffer_messages: 5,
        ..Config::default()
    };
    let emu = TestEmulator::start_with(config).await;
    let url = emu.client_url("full", Some("r"), &[], &[]);
    let mut sub = Subscriber::connect(&url, Some("json.reliable.webpubsub.azure.v1")).await;
    for n in 0..6 {
        emu.send_json("/api/hubs/full/:send", &json!(n)).await;
    }
    let (code, reason) = sub.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("unacknowledged"), "reason: {reason}");
    emu.wait_for_connections("full", 0).await;
}

/// Acknowledged messages leave the buffer, so a client that acks keeps its session.
#[tokio::test]
async fn reliable_acks_free_the_buffer() {
    let config = Config {
        reliable_buffer_messages: 5,
        ..Config::default()
    };
    let emu = TestEmulator::start_with(config).await;
    let url = emu.client_url("acked", Some("r"), &[], &[]);
    let mut sub = Subscriber::connect(&url, Some("json.reliable.webpubsub.azure.v1")).await;
    for n in 1..=20u64 {
        emu.send_json("/api/hubs/acked/:send", &json!(n)).await;
        let message = sub.next_message().await;
        assert_eq!(message["sequenceId"], n);
        sub.send_json(json!({"type": "sequenceAck", "sequenceId": n}))
            .await;
    }
    assert_eq!(emu.emulator.connection_count("acked"), 1);
}

/// The `/client/?hub=` form of the endpoint works like `/client/hubs/{hub}`.
#[tokio::test]
async fn query_form_of_the_client_endpoint() {
    let emu = TestEmulator::start().await;
    let url = emu.client_url("qform", Some("q"), &[], &[]);
    let token = url.split("access_token=").nth(1).unwrap();
    let base = emu.endpoint().replace("http://", "ws://");
    let mut sub = Subscriber::connect(
        &format!("{base}/client/?hub=qform&access_token={token}"),
        Some("json.webpubsub.azure.v1"),
    )
    .await;
    emu.send_json("/api/hubs/qform/users/q/:send", &json!("via query"))
        .await;
    assert_eq!(sub.next_message().await["data"], "via query");
}

/// Stopping the emulator closes every client with "going away".
#[tokio::test]
async fn shutdown_closes_clients() {
    let emu = TestEmulator::start().await;
    let mut sub = emu.subscribe("bye", Some("u"), &[], &[]).await;
    let TestEmulator { emulator, .. } = emu;
    let stop = tokio::spawn(emulator.shutdown());
    let disconnected = sub.next_json().await;
    assert_eq!(disconnected["event"], "disconnected");
    assert_eq!(sub.closed().await.0, 1001);
    stop.await.unwrap().unwrap();
}

/// A reliable client that closes its socket with a close frame means to leave: its session
/// ends at once instead of waiting for a recovery.
#[tokio::test]
async fn reliable_clients_that_close_cleanly_leave_at_once() {
    let emu = TestEmulator::start().await;
    let url = emu.client_url("leave", Some("r"), &[], &[]);
    let mut sub = Subscriber::connect(&url, Some("json.reliable.webpubsub.azure.v1")).await;
    emu.wait_for_connections("leave", 1).await;
    sub.ws.close(None).await.unwrap();
    emu.wait_for_connections("leave", 0).await;
}
