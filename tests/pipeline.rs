//! The function app end to end: invocation bodies shaped exactly as the Functions host posts
//! them, through the handler and the emulator, to real WebSocket subscribers.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{invocation, invocation_text, AppRoot, Encoding, Stack, ENCODINGS, REPO_ROOT};
use serde_json::{json, Value};

/// How long a subscriber must stay quiet, once the messages it should get have arrived, to
/// count as having got nothing else.
const QUIET: Duration = Duration::from_millis(200);

/// The one summary line of a successful invocation's `Logs`.
fn summary(answer: &Value) -> &str {
    let logs = answer["Logs"]
        .as_array()
        .unwrap_or_else(|| panic!("no Logs: {answer}"));
    assert_eq!(logs.len(), 1, "{answer}");
    logs[0].as_str().unwrap()
}

/// Posts `changes` to `function` as the host would, encoded as `encoding`, expects a 200,
/// and returns the answer.
async fn post_batch(stack: &Stack, function: &str, changes: &Value, encoding: Encoding) -> Value {
    let (status, answer) = stack.invoke_changes(function, changes, encoding).await;
    assert_eq!(status, 200, "{function}, {encoding:?}: {answer}");
    answer
}

/// Sorts messages by the `Id` column of their row.
fn by_id(mut messages: Vec<Value>) -> Vec<Value> {
    messages.sort_by_key(|m| m["row"]["Id"].as_u64());
    messages
}

/// The `Id` columns of `messages`, in order.
fn ids(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["row"]["Id"].as_u64().unwrap())
        .collect()
}

/// The Logic App rowcast replaces: every change of dbo.Users goes to user 12345 of hub
/// SQLUsers, whichever way the host encoded the batch.
#[tokio::test]
async fn changes_reach_one_user_in_all_three_encodings() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "SQLUsers"),
        ("WebPubSubTarget", "user:12345"),
        ("RowcastRoutes", r#"{"sql-changes":{"table":"dbo.Users"}}"#),
    ])
    .await;
    let mut subscriber = stack.subscribe("SQLUsers", "12345", &[]).await;
    let mut bystander = stack.subscribe("SQLUsers", "someone-else", &[]).await;

    for (n, encoding) in ENCODINGS.into_iter().enumerate() {
        let changes = json!([
            {"Operation": 0, "Item": {"Id": n, "UserName": "ann"}},
            {"Operation": 1, "Item": {"Id": n, "UserName": "ann b"}},
            {"Operation": 2, "Item": {"Id": n}},
        ]);
        let answer = post_batch(&stack, "sql-changes", &changes, encoding).await;
        assert_eq!(answer["Outputs"], json!({}));
        assert_eq!(answer["ReturnValue"], json!(null));
        let log = answer["Logs"][0].as_str().unwrap();
        assert!(
            log.starts_with("sql-changes: 3 changes, 3 messages sent to 1 targets"),
            "{log}"
        );

        let mut received = subscriber.changes(3).await;
        received.sort_by_key(|m| {
            ["insert", "update", "delete"]
                .iter()
                .position(|o| *o == m["operation"])
        });
        assert_eq!(received[0]["table"], "dbo.Users");
        assert_eq!(received[0]["operation"], "insert");
        assert_eq!(received[0]["row"], json!({"Id": n, "UserName": "ann"}));
        assert_eq!(received[1]["operation"], "update");
        assert_eq!(received[2]["operation"], "delete");
        assert_eq!(received[2]["row"], json!({"Id": n}));
        assert_eq!(received[0]["id"].as_str().unwrap().len(), 32);
    }
    bystander.expect_silence(Duration::from_millis(200)).await;
}

/// A batch of one change is sent once, and the summary counts one of everything.
#[tokio::test]
async fn a_batch_of_one_change_is_delivered_once() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "h"),
        ("RowcastRoutes", r#"{"sql-changes":{"table":"dbo.Users"}}"#),
    ])
    .await;
    let mut subscriber = stack.subscribe("h", "u1", &[]).await;

    let changes = json!([{"Operation": 0, "Item": {"Id": 7, "UserName": "ann"}}]);
    let answer = post_batch(&stack, "sql-changes", &changes, Encoding::DoubleString).await;
    let log = summary(&answer);
    assert!(
        log.starts_with("sql-changes: 1 changes, 1 messages sent to 1 targets in "),
        "{log}"
    );
    assert!(!log.contains("failed"), "{log}");

    let message = subscriber.next_change().await;
    assert_eq!(message["row"], json!({"Id": 7, "UserName": "ann"}));
    assert_eq!(message["operation"], "insert");
    assert_eq!(message["table"], "dbo.Users");
    subscriber.expect_silence(QUIET).await;
}

/// All 1,000 changes of a large batch reach the subscriber, each exactly once, and the
/// summary counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_a_thousand_changes_arrives_exactly_once() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "h"),
        ("WebPubSubTarget", "user:12345"),
        ("RowcastMaxConcurrency", "16"),
        ("RowcastRoutes", r#"{"sql-changes":{"table":"dbo.Users"}}"#),
    ])
    .await;
    let mut subscriber = stack.subscribe("h", "12345", &[]).await;

    let changes: Vec<Value> = (0..1000)
        .map(|id| json!({"Operation": id % 3, "Item": {"Id": id, "UserName": format!("user{id}")}}))
        .collect();
    let answer = post_batch(
        &stack,
        "sql-changes",
        &Value::Array(changes),
        Encoding::DoubleString,
    )
    .await;
    let log = summary(&answer);
    assert!(
        log.starts_with("sql-changes: 1000 changes, 1000 messages sent to 1 targets in "),
        "{log}"
    );
    assert!(log.ends_with(" ms"), "{log}");

    let received = subscriber.changes(1000).await;
    let mut seen = HashSet::new();
    for message in &received {
        let id = message["row"]["Id"].as_u64().unwrap();
        assert!(seen.insert(id), "change {id} arrived twice");
        assert_eq!(message["row"]["UserName"], format!("user{id}"));
        let operation = ["insert", "update", "delete"][(id % 3) as usize];
        assert_eq!(message["operation"], operation, "{message}");
    }
    assert_eq!(seen, (0..1000).collect::<HashSet<u64>>());
    subscriber.expect_silence(QUIET).await;
}

/// Target `all` reaches every subscriber of the route's hub, and nobody on another hub.
#[tokio::test]
async fn target_all_reaches_every_subscriber_of_the_hub_and_no_other_hub() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "Users"),
        ("WebPubSubTarget", "all"),
        ("RowcastRoutes", r#"{"sql-changes":{"table":"dbo.Users"}}"#),
    ])
    .await;
    let mut ann = stack.subscribe("Users", "ann", &[]).await;
    let mut bob = stack.subscribe("Users", "bob", &["orders-eu"]).await;
    let mut elsewhere = stack.subscribe("Orders", "ann", &[]).await;

    let changes = json!([
        {"Operation": 0, "Item": {"Id": 1, "OwnerId": "ann"}},
        {"Operation": 1, "Item": {"Id": 2, "OwnerId": "bob"}},
    ]);
    let answer = post_batch(&stack, "sql-changes", &changes, Encoding::String).await;
    assert!(
        summary(&answer).starts_with("sql-changes: 2 changes, 2 messages sent to 1 targets"),
        "{answer}"
    );

    for subscriber in [&mut ann, &mut bob] {
        assert_eq!(ids(&by_id(subscriber.changes(2).await)), [1, 2]);
    }
    ann.expect_silence(QUIET).await;
    bob.expect_silence(QUIET).await;
    elsewhere.expect_silence(QUIET).await;
}

/// `user:{OwnerId}` sends each row to the user its column names, and to nobody else;
/// numeric columns render as written.
#[tokio::test]
async fn user_template_sends_each_row_to_the_user_its_column_names() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "Users"),
        ("WebPubSubTarget", "user:{OwnerId}"),
        ("RowcastRoutes", r#"{"sql-changes":{"table":"dbo.Users"}}"#),
    ])
    .await;
    let mut alice = stack.subscribe("Users", "alice", &[]).await;
    let mut bob = stack.subscribe("Users", "bob", &[]).await;
    let mut numeric = stack.subscribe("Users", "42", &[]).await;
    let mut carol = stack.subscribe("Users", "carol", &[]).await;

    let changes = json!([
        {"Operation": 0, "Item": {"Id": 1, "OwnerId": "alice"}},
        {"Operation": 0, "Item": {"Id": 2, "OwnerId": "bob"}},
        {"Operation": 1, "Item": {"Id": 3, "OwnerId": "alice"}},
        {"Operation": 1, "Item": {"Id": 4, "OwnerId": 42}},
    ]);
    let answer = post_batch(&stack, "sql-changes", &changes, Encoding::DoubleString).await;
    assert!(
        summary(&answer).starts_with("sql-changes: 4 changes, 4 messages sent to 3 targets"),
        "{answer}"
    );

    assert_eq!(ids(&by_id(alice.changes(2).await)), [1, 3]);
    assert_eq!(ids(&bob.changes(1).await), [2]);
    assert_eq!(ids(&numeric.changes(1).await), [4]);
    alice.expect_silence(QUIET).await;
    bob.expect_silence(QUIET).await;
    numeric.expect_silence(QUIET).await;
    carol.expect_silence(QUIET).await;
}

/// `group:orders-{Region}` sends each row to the members of its region's group only.
#[tokio::test]
async fn group_template_sends_each_row_to_the_group_its_column_names() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "Orders"),
        ("WebPubSubTarget", "group:orders-{Region}"),
        ("RowcastRoutes", r#"{"sql-changes":{"table":"dbo.Orders"}}"#),
    ])
    .await;
    let mut eu = stack.subscribe("Orders", "a", &["orders-eu"]).await;
    let mut eu_and_us = stack
        .subscribe("Orders", "b", &["orders-eu", "orders-us"])
        .await;
    let mut us = stack.subscribe("Orders", "c", &["orders-us"]).await;
    let mut asia = stack.subscribe("Orders", "d", &["orders-asia"]).await;
    let mut bare = stack.subscribe("Orders", "e", &["eu"]).await;

    let changes = json!([
        {"Operation": 0, "Item": {"Id": 1, "Region": "eu"}},
        {"Operation": 0, "Item": {"Id": 2, "Region": "us"}},
        {"Operation": 2, "Item": {"Id": 3, "Region": "eu"}},
    ]);
    let answer = post_batch(&stack, "sql-changes", &changes, Encoding::Array).await;
    assert!(
        summary(&answer).starts_with("sql-changes: 3 changes, 3 messages sent to 2 targets"),
        "{answer}"
    );

    assert_eq!(ids(&by_id(eu.changes(2).await)), [1, 3]);
    assert_eq!(ids(&by_id(eu_and_us.changes(3).await)), [1, 2, 3]);
    assert_eq!(ids(&us.changes(1).await), [2]);
    for subscriber in [&mut eu, &mut eu_and_us, &mut us, &mut asia, &mut bare] {
        subscriber.expect_silence(QUIET).await;
    }
}

/// With `RowcastRoutes`, each function's changes go to its own hub and target and carry its
/// own table name; an invocation of one function never reaches the other's subscribers.
#[tokio::test]
async fn each_function_goes_only_where_its_route_says() {
    let stack = Stack::start(&[(
        "RowcastRoutes",
        r#"{
            "users-changes": {"hub": "Users", "target": "user:{OwnerId}", "table": "dbo.Users"},
            "orders-changes": {"hub": "Orders", "target": "group:orders-{Region}", "table": "sales.Orders"}
        }"#,
    )])
    .await;
    let mut alice_users = stack.subscribe("Users", "alice", &["orders-eu"]).await;
    let mut alice_orders = stack.subscribe("Orders", "alice", &[]).await;
    let mut eu_orders = stack.subscribe("Orders", "bob", &["orders-eu"]).await;

    // The same row shape fits both routes, so only the route decides where it goes.
    let row = json!([{"Operation": 0, "Item": {"Id": 1, "OwnerId": "alice", "Region": "eu"}}]);
    let answer = post_batch(&stack, "users-changes", &row, Encoding::DoubleString).await;
    assert!(
        summary(&answer).starts_with("users-changes: 1 changes"),
        "{answer}"
    );
    let message = alice_users.next_change().await;
    assert_eq!(message["table"], "dbo.Users");
    assert_eq!(message["row"]["Id"], 1);
    let users_id = message["id"].clone();
    alice_orders.expect_silence(QUIET).await;
    eu_orders.expect_silence(QUIET).await;

    let answer = post_batch(&stack, "orders-changes", &row, Encoding::DoubleString).await;
    assert!(
        summary(&answer).starts_with("orders-changes: 1 changes"),
        "{answer}"
    );
    let message = eu_orders.next_change().await;
    assert_eq!(message["table"], "sales.Orders");
    assert_ne!(
        message["id"], users_id,
        "the same row in another table is another change"
    );
    alice_users.expect_silence(QUIET).await;
    alice_orders.expect_silence(QUIET).await;
    eu_orders.expect_silence(QUIET).await;
}

/// Posting the same body twice, as the host does when it retries a batch, gives every
/// change the same id both times, while different changes get different ids.
#[tokio::test]
async fn ids_repeat_for_a_retried_batch_and_differ_between_changes() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "h"),
        ("RowcastRoutes", r#"{"sql-changes":{"table":"dbo.Users"}}"#),
    ])
    .await;
    let mut subscriber = stack.subscribe("h", "u", &[]).await;

    // Same row under another operation, and the same key with other values: all distinct.
    let changes = json!([
        {"Operation": 0, "Item": {"Id": 1, "Name": "ann"}},
        {"Operation": 1, "Item": {"Id": 2, "Name": "ann"}},
        {"Operation": 1, "Item": {"Id": 3, "Name": "bob"}},
        {"Operation": 2, "Item": {"Id": 4}},
    ]);
    let body = invocation("changes", &changes, Encoding::DoubleString);
    let mut first = HashMap::new();
    let mut second = HashMap::new();
    for seen in [&mut first, &mut second] {
        let (status, answer) = stack.invoke("sql-changes", body.clone()).await;
        assert_eq!(status, 200, "{answer}");
        for message in subscriber.changes(4).await {
            let id = message["id"].as_str().unwrap().to_owned();
            assert_eq!(id.len(), 32, "{id}");
            seen.insert(message["row"]["Id"].as_u64().unwrap(), id);
        }
    }
    assert_eq!(first, second);
    let distinct: HashSet<&String> = first.values().collect();
    assert_eq!(distinct.len(), 4, "{first:?}");

    // One column changed, or only the operation changed: a new id each time.
    let variants = json!([
        {"Operation": 0, "Item": {"Id": 1, "Name": "ann"}},
        {"Operation": 1, "Item": {"Id": 1, "Name": "ann"}},
        {"Operation": 1, "Item": {"Id": 1, "Name": "Ann"}},
    ]);
    post_batch(&stack, "sql-changes", &variants, Encoding::Array).await;
    let received = subscriber.changes(3).await;
    let mut variant_ids: HashSet<String> = received
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(variant_ids.len(), 3, "{received:?}");
    assert!(
        variant_ids.remove(&first[&1]),
        "the first variant is the first batch's change 1"
    );
    subscriber.expect_silence(QUIET).await;
}

/// An id depends on the change, not on how the host happened to encode the batch.
#[tokio::test]
async fn ids_do_not_depend_on_the_encoding_of_the_batch() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "h"),
        ("RowcastRoutes", r#"{"sql-changes":{"table":"dbo.Users"}}"#),
    ])
    .await;
    let mut subscriber = stack.subscribe("h", "u", &[]).await;
    let changes = json!([{"Operation": 1, "Item": {"Id": 1, "Name": "ann"}}]);

    let mut ids = Vec::new();
    for encoding in ENCODINGS {
        post_batch(&stack, "sql-changes", &changes, encoding).await;
        ids.push(subscriber.next_change().await["id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[1], ids[2]);
}

/// A 64-bit key above 2^53 and a 30-digit decimal reach the subscriber with every digit, in
/// every encoding: the frame text holds them exactly as the trigger wrote them.
#[tokio::test]
async fn big_keys_and_decimals_keep_every_digit() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "h"),
        ("RowcastRoutes", r#"{"sql-changes":{"table":"dbo.Ledger"}}"#),
    ])
    .await;
    let mut subscriber = stack.subscribe("h", "u", &[]).await;
    let row = r#"{"Id":9007199254740993,"Amount":12345678901234567890.123456789,"Small":-0.000000000000000000001}"#;
    let array = format!(r#"[{{"Operation":1,"Item":{row}}}]"#);

    for encoding in ENCODINGS {
        let (status, answer) = stack
            .invoke("sql-changes", invocation_text("changes", &array, encoding))
            .await;
        assert_eq!(status, 200, "{encoding:?}: {answer}");
        let frame = subscriber.next_message_text().await;
        assert!(
            frame.contains(&format!(r#""row":{row}"#)),
            "{encoding:?}: {frame}"
        );
        assert!(frame.contains("9007199254740993"), "{frame}");
        assert!(frame.contains("12345678901234567890.123456789"), "{frame}");
    }
}

/// User ids and group names with characters that must be escaped in a URL path (`/`,
/// space, `?`, `#`, `%`, non-ASCII) reach exactly that user or group.
#[tokio::test]
async fn user_ids_and_group_names_needing_percent_encoding_are_delivered() {
    let stack = Stack::start(&[(
        "RowcastRoutes",
        r#"{
            "by-user": {"hub": "h", "target": "user:{Owner}", "table": "dbo.T"},
            "by-group": {"hub": "h", "target": "group:{Team}", "table": "dbo.T"}
        }"#,
    )])
    .await;
    let names = ["a/b c", "x?y#z%41", "Zoë 東京"];
    let mut users = Vec::new();
    let mut members = Vec::new();
    for name in names {
        users.push(stack.subscribe("h", name, &[]).await);
        members.push(stack.subscribe("h", "member", &[name]).await);
    }
    // Near misses of the names above, which a badly escaped path would hit.
    let mut near_user = stack.subscribe("h", "a", &[]).await;
    let mut near_member = stack.subscribe("h", "other", &["a", "x", "xAy#z%41"]).await;

    let rows: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(id, name)| json!({"Operation": 0, "Item": {"Id": id, "Owner": name, "Team": name}}))
        .collect();
    let rows = Value::Array(rows);
    for function in ["by-user", "by-group"] {
        let answer = post_batch(&stack, function, &rows, Encoding::DoubleString).await;
        assert!(
            summary(&answer).contains("3 messages sent to 3 targets"),
            "{answer}"
        );
    }

    for (id, (user, member)) in users.iter_mut().zip(members.iter_mut()).enumerate() {
        let message = user.next_change().await;
        assert_eq!(message["row"]["Id"], id, "user {}: {message}", names[id]);
        let message = member.next_change().await;
        assert_eq!(message["row"]["Id"], id, "group {}: {message}", names[id]);
    }
    for subscriber in users.iter_mut().chain(members.iter_mut()) {
        subscriber.expect_silence(QUIET).await;
    }
    near_user.expect_silence(QUIET).await;
    near_member.expect_silence(QUIET).await;
}

/// A route's `"binding"` names the `Data` key the changes arrive under; the default name
/// is then not accepted in its place.
#[tokio::test]
async fn a_custom_binding_name_from_rowcast_routes_is_used() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "h"),
        (
            "RowcastRoutes",
            r#"{"sql-changes":{"table":"dbo.Users","binding":"userRows"}}"#,
        ),
    ])
    .await;
    let mut subscriber = stack.subscribe("h", "u", &[]).await;
    let changes = json!([{"Operation": 0, "Item": {"Id": 5}}]);

    let (status, answer) = stack
        .invoke(
            "sql-changes",
            invocation("userRows", &changes, Encoding::DoubleString),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(subscriber.next_change().await["row"], json!({"Id": 5}));

    let (status, answer) = stack
        .invoke_changes("sql-changes", &changes, Encoding::DoubleString)
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "Data.userRows", "{answer}");
    subscriber.expect_silence(QUIET).await;
}

/// Function names in the request path match case-insensitively, as the host's do.
#[tokio::test]
async fn function_names_in_the_path_ignore_case() {
    let stack = Stack::start(&[
        ("WebPubSubHub", "h"),
        ("RowcastRoutes", r#"{"sql-changes":{"table":"dbo.Users"}}"#),
    ])
    .await;
    let mut subscriber = stack.subscribe("h", "u", &[]).await;
    let changes = json!([{"Operation": 0, "Item": {"Id": 1}}]);

    for path in ["SQL-CHANGES", "Sql-Changes"] {
        let answer = post_batch(&stack, path, &changes, Encoding::DoubleString).await;
        assert!(
            summary(&answer).starts_with("sql-changes: 1 changes"),
            "{answer}"
        );
        assert_eq!(subscriber.next_change().await["table"], "dbo.Users");
    }
}

/// With no `RowcastRoutes`, the function, its table and its binding come from the app's
/// `sql-changes/function.json`.
#[tokio::test]
async fn functions_are_discovered_from_function_json() {
    let root = AppRoot::new("discover");
    let stack = Stack::start(&[
        ("AzureWebJobsScriptRoot", root.as_str()),
        ("WebPubSubHub", "SQLUsers"),
        ("WebPubSubTarget", "user:12345"),
    ])
    .await;
    let mut subscriber = stack.subscribe("SQLUsers", "12345", &[]).await;
    let changes = json!([{"Operation": 2, "Item": {"Id": 3}}]);

    post_batch(&stack, "sql-changes", &changes, Encoding::DoubleString).await;
    let message = subscriber.next_change().await;
    assert_eq!(message["table"], "dbo.Users");
    assert_eq!(message["operation"], "delete");
}

/// The repository itself is an app root: files such as `host.json` and `Cargo.toml` sit
/// beside the function folders and are not function folders.
#[tokio::test]
async fn files_beside_the_function_folders_are_skipped() {
    let stack = Stack::start(&[
        ("AzureWebJobsScriptRoot", REPO_ROOT),
        ("WebPubSubHub", "SQLUsers"),
        ("WebPubSubTarget", "user:12345"),
    ])
    .await;
    let mut subscriber = stack.subscribe("SQLUsers", "12345", &[]).await;
    let changes = json!([{"Operation": 0, "Item": {"Id": 1}}]);

    post_batch(&stack, "sql-changes", &changes, Encoding::DoubleString).await;
    assert_eq!(subscriber.next_change().await["table"], "dbo.Users");
}

/// A real-looking access key (base64 with `=` padding) is read whole from the connection
/// string and signs tokens the service accepts.
#[tokio::test]
async fn a_padded_base64_access_key_signs_accepted_tokens() {
    let key = "c2VjcmV0LWtleS1mb3ItdGhlLWVtdWxhdG9yLXRlc3Q=";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = webpubsub_emulator::Config {
        access_key: webpubsub_emulator::AccessKey::new(key).unwrap(),
        ..webpubsub_emulator::Config::default()
    };
    let emulator = webpubsub_emulator::Emulator::serve(listener, config).unwrap();
    let connection = format!(
        "Endpoint={};AccessKey={key};Version=1.0;",
        emulator.endpoint()
    );
    let stack = Stack::start_with(
        emulator,
        &connection,
        &[
            ("WebPubSubHub", "h"),
            ("RowcastRoutes", r#"{"sql-changes":{"table":"dbo.Users"}}"#),
        ],
    )
    .await;

    let changes = json!([{"Operation": 0, "Item": {"Id": 1}}]);
    let answer = post_batch(&stack, "sql-changes", &changes, Encoding::Array).await;
    assert!(!summary(&answer).contains("failed"), "{answer}");
}
