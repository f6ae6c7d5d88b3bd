//! REST limits over real sockets: the 1 MiB body limit (declared and chunked), the content
//! types a send accepts, JSON validation, and the hub and group name rules.

mod common;

use std::time::Duration;

use common::{enc, expect_api_error, TestEmulator, API};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webpubsub_emulator::sign_rest_token;

const MIB: usize = 1024 * 1024;

/// Sends a text/plain POST with `Transfer-Encoding: chunked` over a raw TCP socket, so no
/// Content-Length tells the server the size up front. Returns the status and the raw
/// response text.
async fn post_chunked(em: &TestEmulator, path_and_query: &str, body: &[u8]) -> (u16, String) {
    let addr = em.emulator.local_addr();
    let url = format!("{}{path_and_query}", em.endpoint());
    let token = sign_rest_token(&em.key, &url, Duration::from_secs(300));
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();

    let mut request = format!(
        "POST {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(64 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");

    // The server may answer before it has read everything; write and read at once.
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        let _ = writer.flush().await;
        writer
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(common::WAIT, reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
            Err(_) => panic!("timed out waiting for the response"),
        }
    }
    drop(write.await);

    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// A body of exactly 1 MiB sent with Content-Length is accepted and reaches the subscriber
/// whole; one byte more is refused with 413 before anything is delivered.
#[tokio::test]
async fn content_length_body_of_one_mib_is_accepted_and_one_byte_more_is_413() {
    let em = TestEmulator::start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;

    let response = em
        .rest(Method::POST, &format!("/api/hubs/chat/:send?{API}"))
        .header("content-type", "text/plain")
        .body("a".repeat(MIB))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let message = sub.next_message().await;
    assert_eq!(message["dataType"], "text");
    assert_eq!(message["data"].as_str().unwrap().len(), MIB);

    let response = em
        .rest(Method::POST, &format!("/api/hubs/chat/:send?{API}"))
        .header("content-type", "text/plain")
        .body("a".repeat(MIB + 1))
        .send()
        .await
        .unwrap();
    let message = expect_api_error(response, 413, "1048576 bytes").await;
    assert!(message.contains("larger"), "{message}");
    sub.expect_silence(Duration::from_millis(200)).await;
}

/// The limit also holds for a chunked body, whose size is only known while reading it.
#[tokio::test]
async fn chunked_body_of_one_mib_is_accepted_and_one_byte_more_is_413() {
    let em = TestEmulator::start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;
    let path = format!("/api/hubs/chat/:send?{API}");

    let (status, _) = post_chunked(&em, &path, &vec![b'b'; MIB]).await;
    assert_eq!(status, 202);
    let message = sub.next_message().await;
    assert_eq!(message["data"].as_str().unwrap().len(), MIB);
    assert!(message["data"].as_str().unwrap().bytes().all(|b| b == b'b'));

    let (status, text) = post_chunked(&em, &path, &vec![b'c'; MIB + 1]).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("PayloadTooLarge"), "{text}");
    sub.expect_silence(Duration::from_millis(200)).await;
}

/// Each accepted content type decides the `dataType` subscribers see; no content type
/// means binary, delivered base64 to JSON subscribers.
#[tokio::test]
async fn json_text_octet_stream_and_missing_content_types_are_accepted() {
    let em = TestEmulator::start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;
    let path = format!("/api/hubs/chat/:send?{API}");

    let cases: [(Option<&str>, &[u8], &str, serde_json::Value); 5] = [
        (
            Some("application/json"),
            br#"{"n":1}"#,
            "json",
            json!({"n": 1}),
        ),
        (
            Some("application/json; charset=utf-8"),
            b"[true]",
            "json",
            json!([true]),
        ),
        (Some("text/plain"), b"hello", "text", json!("hello")),
        (
            Some("application/octet-stream"),
            &[0, 1, 255],
            "binary",
            json!("AAH/"),
        ),
        (None, b"raw", "binary", json!("cmF3")),
    ];
    for (content_type, body, data_type, data) in cases {
        let mut request = em.rest(Method::POST, &path).body(body.to_vec());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 202, "content type {content_type:?}");
        let message = sub.next_message().await;
        assert_eq!(
            message["dataType"], data_type,
            "content type {content_type:?}"
        );
        assert_eq!(message["data"], data, "content type {content_type:?}");
    }
}

/// An unsupported content type is refused with 415 and a message naming the type; nothing
/// is delivered.
#[tokio::test]
async fn image_png_is_refused_with_415_naming_the_type() {
    let em = TestEmulator::start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;
    em.send_json("/api/hubs/chat/:send", &json!("first")).await;
    assert_eq!(sub.next_data().await, "first");

    for path in [
        "/api/hubs/chat/:send".to_owned(),
        "/api/hubs/chat/users/u1/:send".to_owned(),
        format!("/api/hubs/chat/connections/{}/:send", sub.connection_id),
    ] {
        let response = em
            .rest(Method::POST, &format!("{path}?{API}"))
            .header("content-type", "image/png")
            .body(vec![0x89, b'P', b'N', b'G'])
            .send()
            .await
            .unwrap();
        expect_api_error(response, 415, "image/png").await;
    }
    let response = em
        .rest(Method::POST, &format!("/api/hubs/chat/:send?{API}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=1")
        .send()
        .await
        .unwrap();
    expect_api_error(response, 415, "application/x-www-form-urlencoded").await;
    sub.expect_silence(Duration::from_millis(200)).await;
}

/// A body declared as JSON that does not parse, or as text that is not UTF-8, is refused
/// with 400 and not delivered.
#[tokio::test]
async fn invalid_json_body_is_400() {
    let em = TestEmulator::start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;

    let response = em
        .rest(Method::POST, &format!("/api/hubs/chat/:send?{API}"))
        .header("content-type", "application/json")
        .body("{\"unterminated\": ")
        .send()
        .await
        .unwrap();
    expect_api_error(response, 400, "not valid JSON").await;
    let response = em
        .rest(Method::POST, &format!("/api/hubs/chat/:send?{API}"))
        .header("content-type", "text/plain")
        .body(vec![0xff, 0xfe])
        .send()
        .await
        .unwrap();
    expect_api_error(response, 400, "not valid UTF-8").await;

    // The same bytes as text are fine, which proves the subscriber was listening.
    let response = em
        .rest(Method::POST, &format!("/api/hubs/chat/:send?{API}"))
        .header("content-type", "text/plain")
        .body("{\"unterminated\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(sub.next_data().await, "{\"unterminated\": ");
    sub.expect_silence(Duration::from_millis(200)).await;
}

/// Hub names must start with a letter and use only letters, digits and `` _`,.[] ``, at
/// most 128 characters; anything else is 400 naming the hub rule.
#[tokio::test]
async fn invalid_hub_names_are_400() {
    let em = TestEmulator::start().await;
    let long_ok = format!("h{}", "x".repeat(127));
    let too_long = format!("h{}", "x".repeat(128));

    for hub in [
        "1chat",
        "_chat",
        "chat-room",
        "ch%20at",
        "ch%C3%A4t",
        "",
        too_long.as_str(),
    ] {
        let response = em
            .rest(Method::POST, &format!("/api/hubs/{hub}/:send?{API}"))
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap();
        expect_api_error(response, 400, "invalid hub name").await;
    }

    // Encoded as the SDKs do, so the backtick and brackets survive URL parsing.
    for hub in ["a", "Chat_1", "a`,.[]", long_ok.as_str()] {
        let status = em
            .rest(Method::POST, &format!("/api/hubs/{}/:send?{API}", enc(hub)))
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 202, "hub {hub:?}");
    }
}

/// Group names are 1 to 1024 characters and not only white space: 1024 works end to end,
/// 1025 or blanks are 400 on every group operation.
#[tokio::test]
async fn group_name_of_1025_characters_is_400() {
    let em = TestEmulator::start().await;
    let longest = "g".repeat(1024);
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[&longest]).await;

    em.send_json(
        &format!("/api/hubs/chat/groups/{longest}/:send"),
        &json!("in"),
    )
    .await;
    let message = sub.next_message().await;
    assert_eq!(message["group"], longest.as_str());

    let too_long = "g".repeat(1025);
    let id = sub.connection_id.clone();
    for (method, path) in [
        (
            Method::POST,
            format!("/api/hubs/chat/groups/{too_long}/:send"),
        ),
        (
            Method::PUT,
            format!("/api/hubs/chat/groups/{too_long}/connections/{id}"),
        ),
        (
            Method::PUT,
            format!("/api/hubs/chat/users/u1/groups/{too_long}"),
        ),
        (
            Method::GET,
            format!("/api/hubs/chat/groups/{too_long}/connections"),
        ),
        (
            Method::POST,
            "/api/hubs/chat/groups/%20%20/:send".to_owned(),
        ),
    ] {
        let response = em
            .rest(method.clone(), &format!("{path}?{API}"))
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap();
        expect_api_error(response, 400, "invalid group name").await;
    }

    let response = em
        .post_json(
            "/api/hubs/chat/:addToGroups",
            &json!({ "groups": [too_long] }),
        )
        .await;
    expect_api_error(response, 400, "invalid group name").await;
    sub.expect_silence(Duration::from_millis(200)).await;
}
