//! Publishing with a Microsoft Entra identity instead of an access key, end to end: local
//! stand-ins of the Entra token endpoint and the managed identity endpoint issue RS256
//! tokens, the handler sends with them, and an emulator that checks them against the test
//! JWKS delivers to real subscribers. Also: one token shared by concurrent sends, renewal
//! before expiry, retries of failed token requests, the endpoint's reason on refusal (never
//! the secret), and bad identity settings stopping the binary with the setting's name.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::identity::{Options, StandIn, CLIENT_ID, CLIENT_SECRET, IDENTITY_HEADER, TENANT_ID};
use common::{
    captured_logs, invocation, jwt_claims, negotiate_request, start_entra_emulator, Encoding,
    Handshake, Stack, Subscriber, REPO_ROOT, WAIT,
};
use serde_json::{json, Value};

/// The hub and the one user every change here goes to.
const HUB: &str = "Orders";
const USER: &str = "ann";
const ROUTES: &str = r#"{"sql-changes":{"table":"dbo.Orders"}}"#;

/// How long a subscriber must stay quiet to count as having got nothing.
const QUIET: Duration = Duration::from_millis(300);

/// A handler that publishes to an Entra-checking emulator with `stand_in`'s identity,
/// every change going to user [`USER`] of [`HUB`]; `extra` settings on top.
async fn stack(stand_in: &StandIn, extra: &[(&str, &str)]) -> Stack {
    captured_logs();
    let identity = stand_in.settings();
    let mut all: Vec<(&str, &str)> = vec![
        ("WebPubSubHub", HUB),
        ("WebPubSubTarget", "user:ann"),
        ("RowcastRoutes", ROUTES),
    ];
    all.extend(identity.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    all.extend_from_slice(extra);
    Stack::start_identity(start_entra_emulator().await, &all).await
}

/// A batch of `n` inserts with ids `first..first + n`.
fn batch(first: u64, n: u64) -> String {
    let changes: Vec<Value> = (first..first + n)
        .map(|id| json!({"Operation": 0, "Item": {"Id": id, "Status": "new"}}))
        .collect();
    invocation("changes", &Value::Array(changes), Encoding::Array)
}

/// The `Logs` of an answer, joined.
fn logs(answer: &Value) -> String {
    answer["Logs"]
        .as_array()
        .unwrap_or_else(|| panic!("no Logs: {answer}"))
        .iter()
        .filter_map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Posts one change and checks it reaches `subscriber`.
async fn deliver_one(stack: &Stack, subscriber: &mut Subscriber, id: u64) {
    let (status, answer) = stack.invoke("sql-changes", batch(id, 1)).await;
    assert_eq!(status, 200, "{answer}");
    let change = subscriber.next_change().await;
    assert_eq!(change["row"]["Id"], id, "{change}");
    assert_eq!(change["table"], "dbo.Orders");
}

/// Fails unless the stand-in saw exactly `n` requests, every one as expected.
fn assert_requests(stand_in: &StandIn, n: usize) {
    assert_eq!(stand_in.problems(), Vec::<String>::new());
    assert_eq!(stand_in.requests(), n, "token requests");
}

/// Fails if the captured logs show a secret of the stand-ins.
fn assert_logs_hide_secrets() {
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    assert!(
        !logs.contains(CLIENT_SECRET),
        "the logs show the client secret"
    );
    assert!(
        !logs.contains(IDENTITY_HEADER),
        "the logs show IDENTITY_HEADER"
    );
}

/// An app registration's client secret gets a token with the client credentials grant
/// (form fields and content type checked by the stand-in), and a change sent with it
/// reaches the subscriber through an emulator that checks the token.
#[tokio::test]
async fn a_client_secret_token_carries_a_change_to_the_subscriber() {
    let stand_in = StandIn::start(Options::client_secret()).await;
    let stack = stack(&stand_in, &[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    deliver_one(&stack, &mut subscriber, 1).await;
    assert_requests(&stand_in, 1);
    assert_logs_hide_secrets();
}

/// The `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` settings serve as the
/// app registration when the binding's own are not given.
#[tokio::test]
async fn azure_environment_settings_serve_as_the_app_registration() {
    captured_logs();
    let stand_in = StandIn::start(Options::client_secret()).await;
    let authority = format!("http://{}", stand_in.addr);
    let settings = [
        ("WebPubSubHub", HUB),
        ("WebPubSubTarget", "user:ann"),
        ("RowcastRoutes", ROUTES),
        ("AZURE_TENANT_ID", TENANT_ID),
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
        ("RowcastAuthorityHost", authority.as_str()),
    ];
    let stack = Stack::start_identity(start_entra_emulator().await, &settings).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    deliver_one(&stack, &mut subscriber, 1).await;
    assert_requests(&stand_in, 1);
}

/// The system-assigned managed identity asks `IDENTITY_ENDPOINT` with `IDENTITY_HEADER`,
/// api-version 2019-08-01, resource Web PubSub and no `client_id`, and its token carries a
/// change to the subscriber.
#[tokio::test]
async fn a_system_assigned_identity_token_carries_a_change_to_the_subscriber() {
    let stand_in = StandIn::start(Options::managed_identity(None)).await;
    let stack = stack(&stand_in, &[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    deliver_one(&stack, &mut subscriber, 1).await;
    assert_requests(&stand_in, 1);
    assert_logs_hide_secrets();
}

/// A user-assigned identity (`__clientId` with `managedidentity`) asks for its own
/// `client_id`, and its token carries a change to the subscriber.
#[tokio::test]
async fn a_user_assigned_identity_asks_for_its_client_id() {
    let stand_in = StandIn::start(Options::managed_identity(Some("uami-5f1c-client-id"))).await;
    let stack = stack(&stand_in, &[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    deliver_one(&stack, &mut subscriber, 1).await;
    assert_requests(&stand_in, 1);
}

/// `AZURE_CLIENT_ID` belongs to an app registration: with managed identity it does not turn
/// the system-assigned identity into a user-assigned one.
#[tokio::test]
async fn azure_client_id_does_not_pick_a_managed_identity() {
    let stand_in = StandIn::start(Options::managed_identity(None)).await;
    let stack = stack(&stand_in, &[("AZURE_CLIENT_ID", "some-app-registration")]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    deliver_one(&stack, &mut subscriber, 1).await;
    assert_requests(&stand_in, 1);
}

/// The emulator really checks the tokens: one issued for another audience is refused, the
/// invocation fails with the service's reason, and nothing is delivered.
#[tokio::test]
async fn a_token_for_another_audience_is_refused_by_the_service() {
    let mut options = Options::managed_identity(None);
    options.audience = "https://management.azure.com".into();
    let stand_in = StandIn::start(options).await;
    let stack = stack(&stand_in, &[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    let (status, answer) = stack.invoke("sql-changes", batch(1, 1)).await;
    assert_eq!(status, 500, "{answer}");
    let logs = logs(&answer);
    assert!(logs.contains("401"), "{logs}");
    assert!(logs.contains("audience"), "{logs}");
    subscriber.expect_silence(QUIET).await;
}

/// One token serves every invocation while it is fresh: two batches a second apart make one
/// token request.
#[tokio::test]
async fn a_fresh_token_is_reused_across_invocations() {
    let stand_in = StandIn::start(Options::client_secret()).await;
    let stack = stack(&stand_in, &[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    deliver_one(&stack, &mut subscriber, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    deliver_one(&stack, &mut subscriber, 2).await;
    assert_requests(&stand_in, 1);
}

/// A short-lived token is renewed before it is used past half its life: with tokens of 2 s,
/// the send 1.1 s after the first one fetches a second token, and both are delivered.
#[tokio::test]
async fn a_token_near_expiry_is_renewed_before_use() {
    let mut options = Options::client_secret();
    options.lifetime = Duration::from_secs(2);
    let stand_in = StandIn::start(options).await;
    let stack = stack(&stand_in, &[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    deliver_one(&stack, &mut subscriber, 1).await;
    assert_requests(&stand_in, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    deliver_one(&stack, &mut subscriber, 2).await;
    assert_requests(&stand_in, 2);
}

/// Fifty sends that all need a token at once (a batch of 50 with `RowcastMaxConcurrency`
/// 50, against a slow token endpoint) share a single token request.
#[tokio::test]
async fn fifty_concurrent_sends_share_one_token_request() {
    let mut options = Options::managed_identity(None);
    options.delay = Duration::from_millis(300);
    let stand_in = StandIn::start(options).await;
    let stack = stack(&stand_in, &[("RowcastMaxConcurrency", "50")]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    let (status, answer) = stack.invoke("sql-changes", batch(1, 50)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        logs(&answer).contains("50 changes, 50 messages"),
        "{answer}"
    );
    let mut ids: Vec<u64> = subscriber
        .changes(50)
        .await
        .iter()
        .map(|c| c["row"]["Id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=50).collect::<Vec<_>>());
    assert_requests(&stand_in, 1);
}

/// A token request that fails with 503 is tried again: two 503s then a token make three
/// requests, and the change is delivered.
#[tokio::test]
async fn a_failed_token_request_is_tried_again() {
    let mut options = Options::client_secret();
    let busy =
        json!({"error": "temporarily_unavailable", "error_description": "AADSTS50196: busy"});
    options.failures = vec![(503, busy.clone()), (503, busy)];
    let stand_in = StandIn::start(options).await;
    let stack = stack(&stand_in, &[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    deliver_one(&stack, &mut subscriber, 1).await;
    assert_requests(&stand_in, 3);
}

/// A managed identity endpoint that keeps failing is tried three times; then the invocation
/// fails with the endpoint's message and nothing is delivered.
#[tokio::test]
async fn a_token_endpoint_that_keeps_failing_fails_the_invocation() {
    let mut options = Options::managed_identity(None);
    let down = json!({"statusCode": 500, "message": "the identity service is unavailable"});
    options.failures = vec![(500, down.clone()), (500, down.clone()), (500, down)];
    let stand_in = StandIn::start(options).await;
    let stack = stack(&stand_in, &[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    let (status, answer) = stack.invoke("sql-changes", batch(1, 1)).await;
    assert_eq!(status, 500, "{answer}");
    let logs = logs(&answer);
    assert!(
        logs.contains("the identity service is unavailable"),
        "{logs}"
    );
    assert_requests(&stand_in, 3);
    subscriber.expect_silence(QUIET).await;
    assert_logs_hide_secrets();
}

/// A client secret Entra refuses (401 `invalid_client`) is not tried again: the invocation
/// fails non-2xx, its Logs carry Entra's own description, and neither the answer nor any log
/// shows the secret.
#[tokio::test]
async fn a_refused_client_secret_fails_with_entras_reason_and_never_shows_the_secret() {
    let mut options = Options::client_secret();
    options.failures = vec![(
        401,
        json!({
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.",
        }),
    )];
    let stand_in = StandIn::start(options).await;
    let stack = stack(&stand_in, &[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    let (status, text) = stack.invoke_text("sql-changes", batch(1, 1)).await;
    assert!(!(200..300).contains(&status), "{status}: {text}");
    assert!(
        !text.contains(CLIENT_SECRET),
        "the answer shows the secret: {text}"
    );
    let answer: Value = serde_json::from_str(&text).unwrap();
    let logs = logs(&answer);
    assert!(
        logs.contains("AADSTS7000215: Invalid client secret provided."),
        "{logs}"
    );
    assert!(logs.contains("401"), "{logs}");
    assert_requests(&stand_in, 1);
    subscriber.expect_silence(QUIET).await;
    assert_logs_hide_secrets();
}

/// In identity mode `negotiate` has no key to sign with, so it asks the service's
/// `:generateToken` (with an Entra token); the URL it returns connects as the caller (an id
/// with characters that need escaping in a query), with the configured groups, roles and
/// lifetime.
#[tokio::test]
async fn negotiate_with_an_identity_returns_a_generated_url_that_connects() {
    let stand_in = StandIn::start(Options::client_secret()).await;
    let stack = stack(
        &stand_in,
        &[
            ("RowcastNegotiateGroups", "user-{userId}"),
            ("RowcastNegotiateRoles", "webpubsub.joinLeaveGroup"),
            ("RowcastNegotiateMinutes", "30"),
        ],
    )
    .await;
    let user = "ann+b&role=x y";
    let (status, answer) = stack
        .invoke(
            "negotiate",
            negotiate_request("GET", &[("X-MS-CLIENT-PRINCIPAL-ID", user)], &[]),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let res = &answer["Outputs"]["res"];
    assert_eq!(res["statusCode"], "200", "{answer}");
    let access: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    let base_url = format!(
        "{}/client/hubs/{HUB}",
        stack.emulator.endpoint().replace("http://", "ws://")
    );
    assert_eq!(access["baseUrl"], base_url.as_str(), "{access}");
    assert_requests(&stand_in, 1);

    let claims = jwt_claims(access["token"].as_str().unwrap());
    assert_eq!(claims["sub"], user, "{claims}");
    assert_eq!(
        claims["role"],
        json!(["webpubsub.joinLeaveGroup"]),
        "{claims}"
    );
    assert_eq!(
        claims["webpubsub.group"],
        json!([format!("user-{user}")]),
        "{claims}"
    );
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 30 * 60, "{claims}");

    let (mut subscriber, connected) = match Subscriber::open(access["url"].as_str().unwrap()).await
    {
        Handshake::Connected(subscriber, connected) => (*subscriber, connected),
        Handshake::Refused(status) => panic!("the generated url was refused with {status}"),
    };
    assert_eq!(connected["userId"], user);
    subscriber
        .send_json(&json!({"type": "joinGroup", "group": "extra", "ackId": 1}))
        .await;
    assert_eq!(subscriber.ack(1).await["success"], true);
    assert_eq!(
        stack
            .send_to_group(HUB, "extra", &json!({"hello": "ann"}))
            .await,
        202
    );
    assert_eq!(subscriber.next_change().await, json!({"hello": "ann"}));
}

/// A refusal is not remembered: once the endpoint gives tokens again, the next invocation
/// fetches one and delivers.
#[tokio::test]
async fn a_refused_token_request_is_asked_again_by_the_next_invocation() {
    let mut options = Options::client_secret();
    options.failures = vec![(
        401,
        json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
    )];
    let stand_in = StandIn::start(options).await;
    let stack = stack(&stand_in, &[]).await;
    let mut subscriber = stack.subscribe(HUB, USER, &[]).await;

    let (status, answer) = stack.invoke("sql-changes", batch(1, 1)).await;
    assert_eq!(status, 500, "{answer}");
    deliver_one(&stack, &mut subscriber, 2).await;
    assert_requests(&stand_in, 2);
}

/// An identity endpoint nobody listens on fails the invocation with a reason that names
/// the endpoint, after the attempts for connection errors.
#[tokio::test]
async fn an_unreachable_identity_endpoint_is_named() {
    captured_logs();
    let endpoint = format!("http://127.0.0.1:{}/msi/token", common::closed_port());
    let settings = [
        ("WebPubSubHub", HUB),
        ("WebPubSubTarget", "user:ann"),
        ("RowcastRoutes", ROUTES),
        ("IDENTITY_ENDPOINT", endpoint.as_str()),
        ("IDENTITY_HEADER", IDENTITY_HEADER),
    ];
    let stack = Stack::start_identity(start_entra_emulator().await, &settings).await;

    let (status, answer) = stack.invoke("sql-changes", batch(1, 1)).await;
    assert_eq!(status, 500, "{answer}");
    let logs = logs(&answer);
    assert!(
        logs.contains("cannot reach the identity endpoint"),
        "{logs}"
    );
    assert!(logs.contains(&endpoint), "{logs}");
    assert!(!logs.contains(IDENTITY_HEADER), "{logs}");
}

/// When no Entra token can be had, `negotiate` still answers the caller (the invocation
/// succeeds): 502 with the endpoint's reason, no url, and never the secret.
#[tokio::test]
async fn negotiate_without_a_token_answers_502_with_the_reason() {
    let mut options = Options::client_secret();
    options.failures = vec![(
        401,
        json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
    )];
    let stand_in = StandIn::start(options).await;
    let stack = stack(&stand_in, &[]).await;

    let (status, text) = stack
        .invoke_text(
            "negotiate",
            negotiate_request("GET", &[("X-MS-CLIENT-PRINCIPAL-ID", "oid-ann")], &[]),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains(CLIENT_SECRET), "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let res = &answer["Outputs"]["res"];
    assert_eq!(res["statusCode"], "502", "{answer}");
    let body: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    assert!(body.get("url").is_none(), "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("AADSTS7000215"), "{error}");
    assert_requests(&stand_in, 1);
}

/// An identity-based service uri, as deployed: https, another machine.
const SERVICE_URI: (&str, &str) = (
    "WebPubSubConnectionString__serviceUri",
    "https://rowcast.webpubsub.azure.com",
);

/// Runs the handler binary with a clean environment plus `env`, expects it to stop at once
/// with exit code 64, and returns what it printed on stderr.
fn refused_at_start(env: &[(&str, &str)]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_handler"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AzureWebJobsScriptRoot", REPO_ROOT)
        .env("WebPubSubHub", HUB)
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", "0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the handler binary starts");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the handler did not stop within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains(CLIENT_SECRET), "{stderr}");
    assert!(!stderr.contains(IDENTITY_HEADER), "{stderr}");
    stderr
}

/// Fails unless `stderr` is the refusal of an invalid configuration naming `setting`.
fn assert_names(stderr: &str, setting: &str) {
    assert!(
        stderr.starts_with(&format!("handler: invalid configuration: {setting}:")),
        "{stderr}"
    );
}

/// `managedidentity` without `IDENTITY_ENDPOINT` stops the handler naming that setting.
#[test]
fn managed_identity_without_identity_endpoint_names_it() {
    let stderr = refused_at_start(&[
        SERVICE_URI,
        ("WebPubSubConnectionString__credential", "managedidentity"),
        ("IDENTITY_HEADER", IDENTITY_HEADER),
    ]);
    assert_names(&stderr, "IDENTITY_ENDPOINT");
}

/// Managed identity without `IDENTITY_HEADER` stops the handler naming that setting.
#[test]
fn managed_identity_without_identity_header_names_it() {
    let stderr = refused_at_start(&[
        SERVICE_URI,
        ("IDENTITY_ENDPOINT", "http://127.0.0.1:41234/msi/token"),
    ]);
    assert_names(&stderr, "IDENTITY_HEADER");
}

/// A connection string and `__serviceUri` together are ambiguous: the handler names
/// `WebPubSubConnectionString__serviceUri` and says to pick one.
#[test]
fn a_connection_string_and_a_service_uri_together_are_refused() {
    let stderr = refused_at_start(&[
        (
            "WebPubSubConnectionString",
            "Endpoint=https://rowcast.webpubsub.azure.com;AccessKey=ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH;Version=1.0;",
        ),
        SERVICE_URI,
    ]);
    assert_names(&stderr, "WebPubSubConnectionString__serviceUri");
    assert!(stderr.contains("not both"), "{stderr}");
    assert!(!stderr.contains("ABCDEFGHIJKLMNOP"), "{stderr}");
}

/// A plain http `__serviceUri` to another machine is refused, since Entra tokens would
/// travel in clear text.
#[test]
fn a_plain_http_service_uri_off_this_machine_is_refused() {
    let stderr = refused_at_start(&[
        (
            "WebPubSubConnectionString__serviceUri",
            "http://rowcast.webpubsub.azure.com",
        ),
        ("WebPubSubConnectionString__tenantId", TENANT_ID),
        ("WebPubSubConnectionString__clientId", CLIENT_ID),
        ("WebPubSubConnectionString__clientSecret", CLIENT_SECRET),
    ]);
    assert_names(&stderr, "WebPubSubConnectionString__serviceUri");
    assert!(stderr.contains("plain http"), "{stderr}");
}

/// An unknown `__credential` is refused naming that setting and the kinds it may be.
#[test]
fn an_unknown_credential_kind_is_refused() {
    let stderr = refused_at_start(&[
        SERVICE_URI,
        ("WebPubSubConnectionString__credential", "certificate"),
        ("WebPubSubConnectionString__clientSecret", CLIENT_SECRET),
    ]);
    assert_names(&stderr, "WebPubSubConnectionString__credential");
    assert!(stderr.contains("managedidentity"), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
}

/// A client secret without its tenant is refused, the message naming `__tenantId`, and the
/// secret itself is not printed.
#[test]
fn a_client_secret_without_a_tenant_is_refused() {
    let stderr = refused_at_start(&[
        SERVICE_URI,
        ("WebPubSubConnectionString__clientId", CLIENT_ID),
        ("WebPubSubConnectionString__clientSecret", CLIENT_SECRET),
    ]);
    assert!(stderr.contains("__tenantId"), "{stderr}");
}

/// When the token request that fifty waiting sends depend on is refused, they all get that
/// answer: Entra sees one request, not one per send.
#[tokio::test]
async fn concurrent_sends_share_a_refused_token_request() {
    let mut options = Options::client_secret();
    let refusal = json!({
        "error": "invalid_client",
        "error_description": "AADSTS7000215: Invalid client secret provided.",
    });
    options.failures = vec![(401, refusal); 100];
    options.delay = Duration::from_millis(100);
    let stand_in = StandIn::start(options).await;
    let stack = stack(&stand_in, &[("RowcastMaxConcurrency", "50")]).await;

    let started = Instant::now();
    let (status, answer) = stack.invoke("sql-changes", batch(1, 50)).await;
    assert_eq!(status, 500, "{answer}");
    assert!(logs(&answer).contains("50 failed"), "{answer}");
    assert_requests(&stand_in, 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A plain http `__serviceUri` whose user info merely looks like localhost
/// (`http://localhost:80@host`) goes to another machine, so it is refused too.
#[test]
fn a_service_uri_disguised_as_localhost_is_refused() {
    let settings = rowcast::settings::Settings::from_pairs([
        ("AzureWebJobsScriptRoot", "/nonexistent/rowcast-test-root"),
        ("WebPubSubHub", HUB),
        ("RowcastRoutes", ROUTES),
        (
            "WebPubSubConnectionString__serviceUri",
            "http://localhost:80@rowcast.webpubsub.azure.com",
        ),
        ("IDENTITY_ENDPOINT", "http://127.0.0.1:41234/msi/token"),
        ("IDENTITY_HEADER", IDENTITY_HEADER),
    ]);
    let err = rowcast::settings::Config::from_settings(&settings)
        .expect_err("a plain http service uri to another host is refused");
    assert!(
        err.to_string()
            .starts_with("WebPubSubConnectionString__serviceUri:"),
        "{err}"
    );
}

/// A plain http `RowcastAuthorityHost` off this machine is refused: the client secret
/// would travel to it in clear text.
#[test]
fn a_plain_http_authority_host_off_this_machine_is_refused() {
    let settings = rowcast::settings::Settings::from_pairs([
        ("AzureWebJobsScriptRoot", "/nonexistent/rowcast-test-root"),
        ("WebPubSubHub", HUB),
        ("RowcastRoutes", ROUTES),
        SERVICE_URI,
        ("WebPubSubConnectionString__tenantId", TENANT_ID),
        ("WebPubSubConnectionString__clientId", CLIENT_ID),
        ("WebPubSubConnectionString__clientSecret", CLIENT_SECRET),
        ("RowcastAuthorityHost", "http://login.microsoftonline.com"),
    ]);
    let err = rowcast::settings::Config::from_settings(&settings)
        .expect_err("a plain http authority to another host is refused");
    assert!(
        err.to_string().starts_with("RowcastAuthorityHost:"),
        "{err}"
    );
    assert!(!err.to_string().contains(CLIENT_SECRET), "{err}");
}
