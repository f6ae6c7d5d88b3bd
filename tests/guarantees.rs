//! Delivery guarantees under failure, with faults injected into a real emulator: retries,
//! `Retry-After`, the invocation deadline, dead letters and their redelivery, oversized rows,
//! and a soak that checks no change is ever lost.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{invocation, Encoding, Stack, REPO_ROOT};
use serde_json::{json, Value};

const HUB: &str = "SQLUsers";
const USER: &str = "12345";

/// A handler for the repository's own function app (sql-changes with its dead-letter queue,
/// and redeliver), every change going to user 12345, with fast retries.
async fn stack(extra: &[(&str, &str)]) -> Stack {
    let mut settings = vec![
        ("AzureWebJobsScriptRoot", REPO_ROOT),
        ("WebPubSubHub", HUB),
        ("WebPubSubTarget", "user:12345"),
        ("RowcastRetryBaseMs", "10"),
        ("RowcastRetryMaxMs", "50"),
    ];
    settings.extend_from_slice(extra);
    Stack::start(&settings).await
}

fn batch(first: u64, n: u64) -> String {
    let changes: Vec<Value> = (first..first + n)
        .map(|id| json!({"Operation": 1, "Item": {"Id": id, "OwnerId": USER, "Visits": id}}))
        .collect();
    invocation("changes", &Value::Array(changes), Encoding::DoubleString)
}

/// A 429 with `Retry-After: 1` makes the handler wait at least a second before the one
/// retry that delivers the change.
#[tokio::test]
async fn retry_after_is_respected() {
    let stack = stack(&[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;
    stack.emulator.faults().fail_next(1, 429, Some(1));

    let started = Instant::now();
    let (status, answer) = stack.invoke("sql-changes", batch(1, 1)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stack.emulator.faults().injected(), 1);
    assert_eq!(subscriber.next_change().await["row"]["Id"], 1);
    subscriber.expect_silence(Duration::from_millis(200)).await;
}

/// Three 503s, then success: every change of the batch arrives exactly once.
#[tokio::test]
async fn three_unavailable_answers_then_success_deliver_each_change_once() {
    let stack = stack(&[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;
    stack.emulator.faults().fail_next(3, 503, None);

    let (status, answer) = stack.invoke("sql-changes", batch(1, 10)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(stack.emulator.faults().injected(), 3);
    let mut ids: Vec<u64> = subscriber
        .changes(10)
        .await
        .iter()
        .map(|c| c["row"]["Id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    subscriber.expect_silence(Duration::from_millis(300)).await;
}

/// A refusal other than throttling or a server error is final: no retry, and without a
/// dead-letter queue the batch fails so the trigger tries it again.
#[tokio::test]
async fn other_client_errors_are_not_retried() {
    let stack = Stack::start(&[
        ("WebPubSubHub", HUB),
        ("WebPubSubTarget", "user:12345"),
        ("RowcastRoutes", r#"{"sql-changes":{"table":"dbo.Users"}}"#),
    ])
    .await;
    stack.emulator.faults().fail_next(5, 403, None);
    let (status, answer) = stack.invoke("sql-changes", batch(1, 1)).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(stack.emulator.faults().injected(), 1, "a 403 is tried once");
    assert!(
        answer["Logs"].to_string().contains("after 1 attempt)"),
        "{answer}"
    );
}

/// With Web PubSub down past the invocation deadline, the batch answers in time with every
/// change in the dead-letter queue output; once the service is back, redelivering the queue
/// messages as the host would brings each change to the subscriber, in order.
#[tokio::test]
async fn an_outage_past_the_deadline_dead_letters_everything_and_redelivery_brings_it_back() {
    let stack = stack(&[
        ("RowcastInvocationDeadlineMs", "1500"),
        ("RowcastRequestTimeoutMs", "300"),
    ])
    .await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;
    stack.emulator.faults().refuse_connections(true);

    let started = Instant::now();
    let (status, answer) = stack.invoke("sql-changes", batch(1, 20)).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert!(
        took < Duration::from_secs(5),
        "the deadline bounds the batch: {took:?}"
    );
    assert!(
        answer["Logs"][0]
            .as_str()
            .unwrap()
            .ends_with("20 kept as dead letters for redelivery"),
        "{answer}"
    );
    let letters: Vec<String> = answer["Outputs"]["deadletters"]
        .as_array()
        .expect("dead letters in the queue output")
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    assert!(!letters.is_empty());
    subscriber.expect_silence(Duration::from_millis(200)).await;

    stack.emulator.faults().clear();
    for letter in &letters {
        // The host passes a queue message to a custom handler as a JSON string value.
        let value = serde_json::to_string(&serde_json::to_string(letter).unwrap()).unwrap();
        let body =
            format!(r#"{{"Data":{{"deadletter":{value}}},"Metadata":{{"DequeueCount":"1"}}}}"#);
        let (status, answer) = stack.invoke("redeliver", body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let ids: Vec<u64> = subscriber
        .changes(20)
        .await
        .iter()
        .map(|c| c["row"]["Id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=20).collect::<Vec<_>>(),
        "redelivery keeps the batch order"
    );
}

/// Redelivery that still cannot reach the service answers non-2xx, so the host retries the
/// queue message and finally moves it to the poison queue.
#[tokio::test]
async fn redelivery_that_fails_again_is_left_to_the_host() {
    let stack = stack(&[
        ("RowcastInvocationDeadlineMs", "800"),
        ("RowcastRequestTimeoutMs", "200"),
    ])
    .await;
    stack.emulator.faults().refuse_connections(true);
    let (_, answer) = stack.invoke("sql-changes", batch(1, 2)).await;
    let letter = answer["Outputs"]["deadletters"][0]
        .as_str()
        .unwrap()
        .to_owned();

    let value = serde_json::to_string(&letter).unwrap();
    let body = format!(r#"{{"Data":{{"deadletter":{value}}},"Metadata":{{}}}}"#);
    let (status, answer) = stack.invoke("redeliver", body).await;
    assert_eq!(status, 500, "{answer}");
    assert!(
        answer["Logs"][0]
            .as_str()
            .unwrap()
            .contains("redelivered 0 of 2"),
        "{answer}"
    );
}

/// A row larger than Web PubSub's message limit still tells the subscriber that it changed:
/// it arrives without its largest column, which `omitted` names.
#[tokio::test]
async fn oversized_rows_arrive_without_their_largest_columns() {
    let stack = stack(&[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;
    let photo = "p".repeat(1_500_000);
    let changes = json!([{"Operation": 0, "Item": {"Id": 7, "OwnerId": USER, "Photo": photo}}]);
    let (status, answer) = stack
        .invoke(
            "sql-changes",
            invocation("changes", &changes, Encoding::Array),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let change = subscriber.next_change().await;
    assert_eq!(change["row"], json!({"Id": 7, "OwnerId": USER}));
    assert_eq!(change["omitted"], json!(["Photo"]));
    assert_eq!(change["operation"], "insert");
}

/// 100,000 changes in batches of 100 while one send in ten fails: every change id reaches
/// the subscriber, none is missing, and duplicates (none expected, since a failed send is
/// retried only after its failure) are counted and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_of_100_000_changes_with_10_percent_failures_loses_nothing() {
    const BATCHES: u64 = 1000;
    const SIZE: u64 = 100;
    let stack = stack(&[("RowcastRetryBaseMs", "1"), ("RowcastRetryMaxMs", "5")]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    let receiver = tokio::spawn(async move {
        let mut seen: HashMap<u64, u32> = HashMap::new();
        while seen.len() < (BATCHES * SIZE) as usize {
            let change = subscriber.next_change().await;
            *seen
                .entry(change["row"]["Id"].as_u64().unwrap())
                .or_default() += 1;
        }
        seen
    });

    let mut injected_total = 0;
    for batch_number in 0..BATCHES {
        stack.emulator.faults().fail_next(SIZE / 10, 503, None);
        let (status, answer) = stack
            .invoke("sql-changes", batch(batch_number * SIZE, SIZE))
            .await;
        assert_eq!(status, 200, "batch {batch_number}: {answer}");
        assert!(
            answer["Outputs"].get("deadletters").is_none(),
            "batch {batch_number}: {answer}"
        );
        injected_total = stack.emulator.faults().injected();
    }

    let seen = tokio::time::timeout(Duration::from_secs(60), receiver)
        .await
        .expect("all changes arrive")
        .unwrap();
    let missing = (0..BATCHES * SIZE)
        .filter(|id| !seen.contains_key(id))
        .count();
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "soak: {} changes, {injected_total} injected failures, {missing} missing, {duplicates} duplicates",
        BATCHES * SIZE
    );
    assert_eq!(missing, 0);
    assert_eq!(injected_total, BATCHES * SIZE / 10);
}
