//! What the host gets back when an invocation cannot be delivered: a 400 that names the
//! malformed field, a 404 for a function nobody configured, and a 500 with the reason in
//! `Logs` when Web PubSub is missing, silent or refuses. No answer and no log line ever
//! shows the access key or a token.

mod common;

use std::time::{Duration, Instant};

use common::{
    captured_logs, closed_port, connection_string_to, invocation, silent_server, start_emulator,
    Encoding, Stack, ACCESS_KEY,
};
use serde_json::{json, Value};
use webpubsub_emulator::{AccessKey, Config as EmulatorConfig, Emulator};

/// A route every test here can use.
const ROUTES: &str = r#"{"sql-changes":{"table":"dbo.Users"}}"#;

/// Fails if `text` shows the access key or anything shaped like a JWT.
fn assert_no_secrets(what: &str, text: &str) {
    assert!(
        !text.contains(ACCESS_KEY),
        "{what} shows the access key: {text}"
    );
    assert!(!text.contains("eyJ"), "{what} shows a token: {text}");
}

/// A stack whose handler posts to `connection` instead of its emulator.
async fn stack_against(connection: &str, settings: &[(&str, &str)]) -> Stack {
    let mut all = vec![("WebPubSubHub", "h"), ("RowcastRoutes", ROUTES)];
    all.extend_from_slice(settings);
    Stack::start_with(start_emulator().await, connection, &all).await
}

/// Posts `body` to a healthy stack and checks the answer is a 400 naming `field`, with a
/// message containing each of `expected`.
async fn assert_malformed(body: &str, field: &str, expected: &[&str]) -> Value {
    let stack = Stack::start(&[("WebPubSubHub", "h"), ("RowcastRoutes", ROUTES)]).await;
    let (status, text) = stack.invoke_text("sql-changes", body.to_owned()).await;
    assert_eq!(status, 400, "{body}: {text}");
    let answer: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("answer is not JSON: {text}"));
    assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    let message = answer["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {answer}"));
    for part in expected {
        assert!(
            message.contains(part),
            "{body}: message {message:?} lacks {part:?}"
        );
    }
    assert_eq!(answer["Outputs"], json!({}), "{answer}");
    assert!(
        answer["Logs"][0]
            .as_str()
            .is_some_and(|log| log.contains(field)),
        "{answer}"
    );
    answer
}

/// An empty body is a 400 on `body` that says an invocation was expected.
#[tokio::test]
async fn an_empty_body_is_rejected() {
    assert_malformed("", "body", &["expected an invocation", "empty body"]).await;
}

/// A body that is not JSON is a 400 on `body`.
#[tokio::test]
async fn a_body_that_is_not_json_is_rejected() {
    assert_malformed("Data=changes", "body", &["expected an invocation"]).await;
}

/// A JSON array is not an invocation: a 400 on `body`.
#[tokio::test]
async fn a_json_array_body_is_rejected() {
    assert_malformed("[]", "body", &["expected an invocation"]).await;
}

/// An invocation without `Data` is a 400 on `Data`.
#[tokio::test]
async fn an_invocation_without_data_is_rejected() {
    assert_malformed(
        r#"{"Metadata":{"sys":{}}}"#,
        "Data",
        &["missing", "expected an object"],
    )
    .await;
}

/// `Data` without the function's binding is a 400 on `Data.changes` whose message lists the
/// bindings that were there.
#[tokio::test]
async fn a_missing_binding_is_rejected_listing_the_bindings_found() {
    let body = r#"{"Data":{"rows":"[]","timer":{}},"Metadata":{}}"#;
    assert_malformed(
        body,
        "Data.changes",
        &["missing", "'changes'", "found: rows, timer"],
    )
    .await;
    assert_malformed(
        r#"{"Data":{},"Metadata":{}}"#,
        "Data.changes",
        &["no bindings"],
    )
    .await;
}

/// `changes` as a number is a 400 on `Data.changes` saying an array was expected.
#[tokio::test]
async fn changes_that_are_a_number_are_rejected() {
    assert_malformed(
        r#"{"Data":{"changes":42}}"#,
        "Data.changes",
        &["expected an array", "got a number"],
    )
    .await;
}

/// An element without `Operation` is a 400 on that element's `Operation`.
#[tokio::test]
async fn a_change_without_an_operation_is_rejected() {
    let changes = json!([{"Item": {"Id": 1}}]);
    let body = invocation("changes", &changes, Encoding::DoubleString);
    assert_malformed(
        &body,
        "Data.changes[0].Operation",
        &["missing", "0 (insert), 1 (update) or 2 (delete)"],
    )
    .await;
}

/// `Operation: 7` in the second element is a 400 on `Data.changes[1].Operation` that lists
/// the valid numbers and shows the bad one.
#[tokio::test]
async fn an_unknown_operation_is_rejected_at_its_index() {
    let changes = json!([{"Operation": 0, "Item": {"Id": 1}}, {"Operation": 7, "Item": {"Id": 2}}]);
    let body = invocation("changes", &changes, Encoding::String);
    assert_malformed(
        &body,
        "Data.changes[1].Operation",
        &["0 (insert), 1 (update) or 2 (delete)", "got 7"],
    )
    .await;
}

/// An `Item` that is an array is a 400 on that `Item` saying a row object was expected.
#[tokio::test]
async fn an_item_that_is_an_array_is_rejected() {
    let changes = json!([{"Operation": 1, "Item": [1, "ann"]}]);
    let body = invocation("changes", &changes, Encoding::Array);
    assert_malformed(
        &body,
        "Data.changes[0].Item",
        &["expected the row as an object", "got an array"],
    )
    .await;
}

/// A string that does not hold JSON is a 400 on `Data.changes` saying an array was expected.
#[tokio::test]
async fn a_string_that_does_not_hold_json_is_rejected() {
    let body = r#"{"Data":{"changes":"hello, world"}}"#;
    assert_malformed(body, "Data.changes", &["expected an array of changes"]).await;
}

/// The message for a string without JSON describes what it got truthfully: text starting
/// with `n` or `t` is not null or a boolean.
#[tokio::test]
async fn a_string_that_does_not_hold_json_is_not_called_null_or_boolean() {
    for text in ["not json", "true story"] {
        let body = format!(r#"{{"Data":{{"changes":"{text}"}}}}"#);
        let answer =
            assert_malformed(&body, "Data.changes", &["expected an array of changes"]).await;
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("got null") && !message.contains("got a boolean"),
            "{text}: {message}"
        );
    }
}

/// A function that is not configured is a 404 naming it.
#[tokio::test]
async fn an_unknown_function_is_not_found() {
    let stack = Stack::start(&[("WebPubSubHub", "h"), ("RowcastRoutes", ROUTES)]).await;
    let changes = json!([{"Operation": 0, "Item": {"Id": 1}}]);
    let (status, answer) = stack
        .invoke_changes("orders-changes", &changes, Encoding::Array)
        .await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'orders-changes'"),
        "{answer}"
    );
}

/// A row without the column the route's template needs fails the invocation with a 500
/// whose logs name the column and the change's index, while the batch's other changes are
/// still delivered.
#[tokio::test]
async fn a_row_missing_the_template_column_fails_the_batch_after_the_rest_is_delivered() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "h"),
        ("WebPubSubTarget", "user:{OwnerId}"),
        ("RowcastRoutes", ROUTES),
    ])
    .await;
    let mut alice = stack.subscribe("h", "alice", &[]).await;
    let mut bob = stack.subscribe("h", "bob", &[]).await;

    let changes = json!([
        {"Operation": 0, "Item": {"Id": 1, "OwnerId": "alice"}},
        {"Operation": 0, "Item": {"Id": 2, "Owner": "alice"}},
        {"Operation": 1, "Item": {"Id": 3, "OwnerId": "bob"}},
    ]);
    let (status, text) = stack
        .invoke_changes_text("sql-changes", &changes, Encoding::DoubleString)
        .await;
    assert_eq!(status, 500, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let logs: Vec<&str> = answer["Logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        logs[0].starts_with("sql-changes: 3 changes, 2 messages sent to 2 targets in "),
        "{logs:?}"
    );
    assert!(logs[0].ends_with(", 1 failed"), "{logs:?}");
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs[1].starts_with("change 1 "), "{logs:?}");
    assert!(logs[1].contains("'OwnerId'"), "{logs:?}");
    assert!(
        !text.contains("\"alice\""),
        "row values stay out of the answer: {text}"
    );

    assert_eq!(alice.next_change().await["row"]["Id"], 1);
    assert_eq!(bob.next_change().await["row"]["Id"], 3);
    alice.expect_silence(Duration::from_millis(200)).await;
}

/// A Web PubSub nobody listens on fails the invocation with a non-2xx answer, well within
/// the outer limit, and says it could not connect.
#[tokio::test]
async fn an_unreachable_web_pubsub_fails_the_invocation() {
    let logs = captured_logs();
    let connection = connection_string_to(([127, 0, 0, 1], closed_port()).into());
    let stack = stack_against(&connection, &[("RowcastRequestTimeoutMs", "500")]).await;

    let changes = json!([{"Operation": 0, "Item": {"Id": 1}}, {"Operation": 0, "Item": {"Id": 2}}]);
    let (status, text) = tokio::time::timeout(
        Duration::from_secs(10),
        stack.invoke_changes_text("sql-changes", &changes, Encoding::DoubleString),
    )
    .await
    .expect("the handler answered");
    assert!(!(200..300).contains(&status), "{status}: {text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert!(
        answer["Logs"][0].as_str().unwrap().ends_with(", 2 failed"),
        "{answer}"
    );
    assert!(
        answer["Logs"][1]
            .as_str()
            .unwrap()
            .contains("cannot connect to web pubsub"),
        "{answer}"
    );
    assert_no_secrets("the answer", &text);
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("invocation failed"),
        "the capture saw the failure: {logs}"
    );
    assert_no_secrets("the logs", &logs);
}

/// A Web PubSub that accepts connections but never answers fails the invocation once the
/// request timeout has passed, and the logs say it timed out.
#[tokio::test]
async fn a_silent_web_pubsub_fails_the_invocation_after_the_request_timeout() {
    let logs = captured_logs();
    let stack = stack_against(
        &connection_string_to(silent_server().await),
        &[("RowcastRequestTimeoutMs", "300")],
    )
    .await;

    let changes = json!([{"Operation": 0, "Item": {"Id": 1}}]);
    let started = Instant::now();
    let (status, text) = tokio::time::timeout(
        Duration::from_secs(10),
        stack.invoke_changes_text("sql-changes", &changes, Encoding::DoubleString),
    )
    .await
    .expect("the handler answered");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered before the timeout: {text}"
    );
    assert!(!(200..300).contains(&status), "{status}: {text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let reason = answer["Logs"][1].as_str().unwrap();
    assert!(reason.contains("did not answer within 300ms"), "{answer}");
    assert_no_secrets("the answer", &text);
    assert_no_secrets("the logs", &String::from_utf8_lossy(&logs.lock().unwrap()));
}

/// The answer's `error.message`, not only its `Logs`, says why the batch failed.
#[tokio::test]
async fn the_error_message_of_a_timed_out_batch_says_it_timed_out() {
    let stack = stack_against(
        &connection_string_to(silent_server().await),
        &[("RowcastRequestTimeoutMs", "300")],
    )
    .await;
    let changes = json!([{"Operation": 0, "Item": {"Id": 1}}]);
    let (status, answer) = stack
        .invoke_changes("sql-changes", &changes, Encoding::DoubleString)
        .await;
    assert_eq!(status, 500, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("did not answer") || message.contains("timed out"),
        "{message}"
    );
}

/// A Web PubSub that refuses the handler's key fails the invocation with its status, and
/// neither the answer nor the logs show the key or the token that was refused.
#[tokio::test]
async fn a_refused_key_fails_the_invocation_without_showing_it() {
    let logs = captured_logs();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_key = AccessKey::new("ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvu").unwrap();
    let config = EmulatorConfig {
        access_key: other_key,
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::serve(listener, config).unwrap();
    let connection = connection_string_to(emulator.local_addr());
    let stack = Stack::start_with(
        emulator,
        &connection,
        &[("WebPubSubHub", "h"), ("RowcastRoutes", ROUTES)],
    )
    .await;

    let changes = json!([{"Operation": 0, "Item": {"Id": 1}}]);
    let (status, text) = stack
        .invoke_changes_text("sql-changes", &changes, Encoding::Array)
        .await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("web pubsub answered 401"), "{text}");
    assert_no_secrets("the answer", &text);
    assert_no_secrets("the logs", &String::from_utf8_lossy(&logs.lock().unwrap()));
}

/// Malformed bodies never echo the key either, even when the body itself carries a token.
#[tokio::test]
async fn malformed_answers_do_not_echo_tokens_from_the_body() {
    let body = r#"{"Data":{"changes":"eyJhbGciOiJIUzI1NiJ9.e30.x"}}"#;
    let answer = assert_malformed(body, "Data.changes", &["expected an array of changes"]).await;
    assert_no_secrets("the answer", &answer.to_string());
}

/// A body above `RowcastMaxBodyBytes` is refused before it is parsed.
#[tokio::test]
async fn a_body_over_the_size_limit_is_refused() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "h"),
        ("RowcastRoutes", ROUTES),
        ("RowcastMaxBodyBytes", "1024"),
    ])
    .await;
    let changes = json!([{"Operation": 0, "Item": {"Id": 1, "Name": "x".repeat(2000)}}]);
    let (status, text) = stack
        .invoke_changes_text("sql-changes", &changes, Encoding::Array)
        .await;
    assert_eq!(status, 413, "{text}");
}

/// The host's readiness probe, `GET /`, gets a 200.
#[tokio::test]
async fn the_readiness_probe_answers_200() {
    let stack = Stack::start(&[("WebPubSubHub", "h"), ("RowcastRoutes", ROUTES)]).await;
    assert_eq!(stack.get("/").await, 200);
}
