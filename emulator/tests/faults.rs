//! Fault injection over real sockets: injected failures, `Retry-After`, latency, refused
//! connections, the `/emulator/faults` admin endpoint, and the command-line flags.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{expect_api_error, TestEmulator, API, WAIT};
use reqwest::Method;
use serde_json::{json, Value};
use webpubsub_emulator::{sign_rest_token, AccessKey, FaultSnapshot};

/// A send to every connection in `hub`, on the emulator's shared client.
async fn send_text(emu: &TestEmulator, hub: &str, text: &str) -> reqwest::Response {
    emu.rest(Method::POST, &format!("/api/hubs/{hub}/:send?{API}"))
        .header("content-type", "text/plain")
        .body(text.to_owned())
        .send()
        .await
        .unwrap()
}

/// The same send on a client of its own, which has to open a new connection.
async fn send_text_fresh(
    emu: &TestEmulator,
    hub: &str,
    text: &str,
) -> reqwest::Result<reqwest::Response> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap();
    let url = format!("{}/api/hubs/{hub}/:send?{API}", emu.endpoint());
    let token = sign_rest_token(&emu.key, &url, Duration::from_secs(300));
    client
        .post(&url)
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(text.to_owned())
        .send()
        .await
}

fn admin_url(emu: &TestEmulator) -> String {
    format!("{}/emulator/faults", emu.endpoint())
}

async fn admin(emu: &TestEmulator, method: Method, body: Option<Value>) -> (u16, Value) {
    let mut request = emu.http.request(method, admin_url(emu));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn three_failures_then_the_fourth_send_is_delivered() {
    let emu = TestEmulator::start().await;
    let mut subscriber = emu.subscribe("retry", None, &[], &[]).await;
    emu.wait_for_connections("retry", 1).await;
    let faults = emu.emulator.faults();
    faults.fail_next(3, 503, None);

    for attempt in 1..=3 {
        let response = send_text(&emu, "retry", &format!("attempt {attempt}")).await;
        assert!(response.headers().get("retry-after").is_none());
        expect_api_error(response, 503, "injected fault").await;
    }
    let response = send_text(&emu, "retry", "attempt 4").await;
    assert_eq!(response.status(), 202);

    // The failed sends were not carried out: the first message to arrive is the fourth.
    assert_eq!(subscriber.next_data().await, "attempt 4");
    assert_eq!(faults.injected(), 3);
    assert_eq!(faults.pending(), 0);
}

#[tokio::test]
async fn failures_carry_the_chosen_status_and_retry_after() {
    let emu = TestEmulator::start().await;
    let faults = emu.emulator.faults();
    faults.fail_next(1, 429, Some(7));
    let response = send_text(&emu, "h", "x").await;
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.headers()["x-ms-error-code"], "InjectedFault");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "InjectedFault");

    faults.fail_next(1, 500, Some(0));
    let response = send_text(&emu, "h", "x").await;
    assert_eq!(response.headers()["retry-after"], "0");
    expect_api_error(response, 500, "injected fault").await;

    // Any data-plane operation is failed, HEAD included (with no body).
    faults.fail_next(1, 502, None);
    let status = emu
        .status(Method::HEAD, &format!("/api/hubs/h/groups/g?{API}"))
        .await;
    assert_eq!(status, 502);
    assert_eq!(faults.injected(), 3);
}

#[tokio::test]
async fn the_health_probe_is_never_failed_or_counted() {
    let emu = TestEmulator::start().await;
    let faults = emu.emulator.faults();
    faults.fail_next(1, 503, None);
    for method in [Method::HEAD, Method::GET] {
        let status = emu
            .http
            .request(method, format!("{}/api/health", emu.endpoint()));
        assert_eq!(status.send().await.unwrap().status(), 200);
    }
    assert_eq!(faults.pending(), 1);
    assert_eq!(send_text(&emu, "h", "x").await.status(), 503);
}

#[tokio::test]
async fn latency_delays_every_request() {
    let emu = TestEmulator::start().await;
    let faults = emu.emulator.faults();
    let latency = Duration::from_millis(250);
    faults.set_latency(latency);

    let started = Instant::now();
    assert_eq!(send_text(&emu, "slow", "x").await.status(), 202);
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());

    // Failed requests wait too.
    faults.fail_next(1, 503, None);
    let started = Instant::now();
    assert_eq!(send_text(&emu, "slow", "x").await.status(), 503);
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
    assert_eq!(faults.injected(), 1);
}

#[tokio::test]
async fn refused_connections_fail_new_clients_and_spare_existing_ones() {
    let emu = TestEmulator::start().await;
    let mut subscriber = emu.subscribe("refuse", None, &[], &[]).await;
    emu.wait_for_connections("refuse", 1).await;
    // Opens the shared client's keep-alive connection before refusal starts.
    assert_eq!(send_text(&emu, "refuse", "before").await.status(), 202);
    assert_eq!(subscriber.next_data().await, "before");

    let faults = emu.emulator.faults();
    faults.refuse_connections(true);

    let err = send_text_fresh(&emu, "refuse", "refused")
        .await
        .expect_err("a new connection is refused");
    assert!(!err.is_timeout(), "refusal is immediate: {err:?}");
    assert!(err.status().is_none(), "no answer at all: {err:?}");
    let client_url = emu.client_url("refuse", None, &[], &[]);
    assert!(
        common::Subscriber::try_connect(&client_url, Some("json.webpubsub.azure.v1"))
            .await
            .is_err(),
        "new WebSocket clients are refused too"
    );
    assert!(faults.refused() >= 2, "refused {}", faults.refused());

    // Connections that were already open keep working: the subscriber, and the shared
    // client's pooled connection.
    assert_eq!(emu.emulator.connection_count("refuse"), 1);
    assert_eq!(send_text(&emu, "refuse", "during").await.status(), 202);
    assert_eq!(subscriber.next_data().await, "during");

    faults.clear();
    let response = send_text_fresh(&emu, "refuse", "after").await.unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(subscriber.next_data().await, "after");
    assert_eq!(faults.injected(), 0);
}

#[tokio::test]
async fn refusal_set_over_http_ends_by_itself() {
    let emu = TestEmulator::start().await;

    // Without a duration nothing could switch it off again over HTTP.
    let response = emu
        .http
        .put(admin_url(&emu))
        .body(json!({ "refuseConnections": true }).to_string())
        .send()
        .await
        .unwrap();
    expect_api_error(response, 400, "refuseConnectionsMs").await;

    let (status, plan) = admin(
        &emu,
        Method::PUT,
        Some(json!({ "refuseConnections": true, "refuseConnectionsMs": 300 })),
    )
    .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["refuseConnections"], true);
    let left = plan["refuseConnectionsMs"].as_u64().unwrap();
    assert!((1..=300).contains(&left), "{plan}");

    assert!(send_text_fresh(&emu, "h", "x").await.is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let response = send_text_fresh(&emu, "h", "x").await.unwrap();
    assert_eq!(response.status(), 202);
    let snapshot = emu.emulator.faults().snapshot();
    assert!(!snapshot.refusing_connections);
    assert!(snapshot.refused >= 1);
}

#[tokio::test]
async fn the_admin_endpoint_sets_reports_and_clears_the_plan() {
    let emu = TestEmulator::start().await;
    let cleared = json!({
        "failNext": 0, "status": 503, "retryAfterSeconds": null, "latencyMs": 0,
        "refuseConnections": false, "refuseConnectionsMs": null, "injected": 0, "refused": 0,
    });
    assert_eq!(admin(&emu, Method::GET, None).await, (200, cleared.clone()));

    let plan = json!({
        "failNext": 3, "status": 504, "retryAfterSeconds": 1, "latencyMs": 20,
        "refuseConnections": false,
    });
    let (status, set) = admin(&emu, Method::PUT, Some(plan)).await;
    assert_eq!(status, 200, "{set}");
    let expected = json!({
        "failNext": 3, "status": 504, "retryAfterSeconds": 1, "latencyMs": 20,
        "refuseConnections": false, "refuseConnectionsMs": null, "injected": 0, "refused": 0,
    });
    assert_eq!(set, expected);
    assert_eq!(admin(&emu, Method::GET, None).await, (200, expected));
    assert_eq!(
        emu.emulator.faults().snapshot(),
        FaultSnapshot {
            fail_next: 3,
            status: 504,
            retry_after: Some(1),
            latency: Duration::from_millis(20),
            refusing_connections: false,
            refusal_remaining: None,
            injected: 0,
            refused: 0,
        }
    );

    // Admin requests are neither failed nor delayed; data-plane ones are.
    let response = send_text(&emu, "h", "x").await;
    assert_eq!(response.headers()["retry-after"], "1");
    expect_api_error(response, 504, "injected fault").await;
    let (_, now) = admin(&emu, Method::GET, None).await;
    assert_eq!(
        (now["failNext"].as_u64(), now["injected"].as_u64()),
        (Some(2), Some(1))
    );

    // A GET answer can be put back as it is: the counters in it are ignored.
    let (status, again) = admin(&emu, Method::PUT, Some(now.clone())).await;
    assert_eq!((status, &again), (200, &now));

    // PUT replaces the whole plan: what it leaves out is off.
    let (_, only_latency) = admin(&emu, Method::PUT, Some(json!({ "latencyMs": 5 }))).await;
    assert_eq!(only_latency["failNext"], 0);
    assert_eq!(only_latency["status"], 503);
    assert_eq!(only_latency["retryAfterSeconds"], Value::Null);
    assert_eq!(only_latency["latencyMs"], 5);

    let (status, after_delete) = admin(&emu, Method::DELETE, None).await;
    assert_eq!(status, 200);
    let mut cleared_with_count = cleared;
    cleared_with_count["injected"] = 1.into();
    assert_eq!(after_delete, cleared_with_count);
    assert_eq!(send_text(&emu, "h", "x").await.status(), 202);

    // Bad plans are refused with the service's error shape and change nothing.
    admin(&emu, Method::PUT, Some(json!({ "failNext": 1 }))).await;
    for (body, needle) in [
        (json!({ "failNext": 1, "status": 200 }), "400 to 599"),
        (json!({ "failnext": 1 }), "unknown field"),
        (json!({ "failNext": -1 }), "u64"),
        (
            json!({ "refuseConnections": false, "refuseConnectionsMs": 10 }),
            "refuseConnectionsMs",
        ),
    ] {
        let response = emu
            .http
            .put(admin_url(&emu))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        expect_api_error(response, 400, needle).await;
    }
    assert_eq!(emu.emulator.faults().pending(), 1);
    let response = emu.http.post(admin_url(&emu)).send().await.unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_fail_exactly_n_times() {
    let emu = TestEmulator::start().await;
    let faults = emu.emulator.faults();
    faults.fail_next(5, 503, None);

    let sends = (0..40).map(|n| {
        let emu = &emu;
        async move {
            send_text_fresh(emu, "busy", &n.to_string())
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(sends).await;
    let failed = statuses.iter().filter(|s| **s == 503).count();
    let sent = statuses.iter().filter(|s| **s == 202).count();
    assert_eq!((failed, sent), (5, 35), "{statuses:?}");
    assert_eq!(faults.injected(), 5);
    assert_eq!(faults.pending(), 0);
}

#[tokio::test]
async fn without_a_plan_nothing_is_injected() {
    let emu = TestEmulator::start().await;
    let faults = emu.emulator.faults();
    for n in 0..20 {
        assert_eq!(send_text(&emu, "quiet", &n.to_string()).await.status(), 202);
        assert_eq!(
            send_text_fresh(&emu, "quiet", "x").await.unwrap().status(),
            202
        );
    }
    let snapshot = faults.snapshot();
    assert_eq!((snapshot.injected, snapshot.refused), (0, 0));
    assert_eq!(snapshot.fail_next, 0);
    assert!(snapshot.latency.is_zero() && !snapshot.refusing_connections);
}

/// Stops the child process when the test ends, even on a failed assertion.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn command_line_flags_set_the_plan() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_webpubsub-emulator"))
            .args(["--port", "0", "--fail-next", "2", "--fail-status", "502"])
            .args(["--retry-after", "3", "--latency-ms", "50"])
            .env_remove("WebPubSub__AccessKey")
            .env_remove("WebPubSub__EntraJwks")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the emulator binary"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.starts_with("fault injection:");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let banner = tokio::time::timeout(WAIT, banner)
        .await
        .expect("the emulator prints its banner")
        .unwrap();
    let endpoint = banner
        .iter()
        .find_map(|line| line.strip_prefix("webpubsub-emulator listening on "))
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_owned();
    let faults_line = banner.last().unwrap();
    assert!(faults_line.contains("502"), "{faults_line}");

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let key = AccessKey::default();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let url = format!("{endpoint}/api/hubs/cli/:send?{API}");
        let token = sign_rest_token(&key, &url, Duration::from_secs(300));
        let started = Instant::now();
        let response = http
            .post(&url)
            .bearer_auth(token)
            .body("x")
            .send()
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
        let retry_after = response.headers().get("retry-after").cloned();
        statuses.push((response.status().as_u16(), retry_after));
    }
    assert_eq!(
        statuses,
        [
            (502, Some("3".parse().unwrap())),
            (502, Some("3".parse().unwrap())),
            (202, None),
        ]
    );
    drop(child);
}
