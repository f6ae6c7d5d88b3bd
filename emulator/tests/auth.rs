//! REST and client authentication over real sockets: every way a token can be wrong is a
//! 401 in the service's error shape with a message that says why, the audience forms the
//! SDKs sign are accepted, and neither the token nor the key ever comes back to the caller.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{expect_api_error, Subscriber, TestEmulator, API};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;
use webpubsub_emulator::{AccessKey, Config};

/// The key the emulator under test signs with; distinctive so a leak is easy to spot.
const KEY: &str = "emulator-key-under-test-0123456789-abcdefgh";
/// A key the emulator does not know.
const OTHER_KEY: &str = "some-other-key-nobody-configured-9876543210";

async fn start() -> TestEmulator {
    let config = Config {
        access_key: AccessKey::new(KEY).unwrap(),
        ..Config::default()
    };
    TestEmulator::start_with(config).await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(key: &str, algorithm: Algorithm, claims: &Value) -> String {
    let header = Header::new(algorithm);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
}

/// A token whose header names `alg` but which is otherwise signed with HS256, as an
/// algorithm-confusion attempt would be.
fn jwt_with_alg(alg: &str, claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let honest = jwt(KEY, Algorithm::HS256, claims);
    let signature = honest.rsplit('.').next().unwrap();
    let header = b64.encode(json!({ "alg": alg, "typ": "JWT" }).to_string());
    let payload = b64.encode(claims.to_string());
    format!("{header}.{payload}.{signature}")
}

/// Sends a text POST to `path_and_query` with `Authorization: <authorization>` (none when
/// `None`).
async fn post(
    em: &TestEmulator,
    path_and_query: &str,
    authorization: Option<&str>,
) -> reqwest::Response {
    let url = format!("{}{path_and_query}", em.endpoint());
    let mut request = em
        .http
        .post(&url)
        .header("content-type", "text/plain")
        .body("secret-body");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

/// Checks a refusal: 401, the error shape, a message naming `reason`, and no trace of the
/// token or of either key in the headers or body.
async fn expect_refused(response: reqwest::Response, reason: &str, token: &str) {
    let secrets: Vec<&str> = [token, KEY, OTHER_KEY]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        for secret in &secrets {
            assert!(
                !value.contains(secret),
                "header {name} leaks a secret: {value}"
            );
        }
    }
    let message = expect_api_error(response, 401, reason).await;
    for secret in &secrets {
        assert!(
            !message.contains(secret),
            "message leaks a secret: {message}"
        );
    }
    // The signature is the part of a token that must never be echoed, even alone.
    if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() > 8) {
        assert!(
            !message.contains(signature),
            "message leaks the signature: {message}"
        );
    }
}

fn send_path() -> String {
    format!("/api/hubs/chat/:send?{API}")
}

/// Every malformed, mis-signed or mistimed REST token is a 401 whose message names the
/// reason, and none of the refused sends reaches the subscriber.
#[tokio::test]
async fn bad_rest_tokens_are_401_with_the_reason_and_nothing_is_delivered() {
    let em = start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;
    let url = format!("{}{}", em.endpoint(), send_path());
    let claims = |extra: Value| {
        let mut claims = json!({ "aud": url, "exp": now() + 300 });
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims
    };

    let response = post(&em, &send_path(), None).await;
    expect_refused(response, "no access token", "").await;
    let response = post(&em, &send_path(), Some("Basic dXNlcjpwYXNz")).await;
    expect_refused(response, "no access token", "dXNlcjpwYXNz").await;

    let cases: Vec<(String, &str)> = vec![
        ("not.a.jwt".to_owned(), "well-formed"),
        (
            jwt(OTHER_KEY, Algorithm::HS256, &claims(json!({}))),
            "signature",
        ),
        (
            jwt(
                KEY,
                Algorithm::HS256,
                &claims(json!({ "exp": now() - 3600 })),
            ),
            "expired",
        ),
        (
            jwt(
                KEY,
                Algorithm::HS256,
                &claims(json!({ "nbf": now() + 3600 })),
            ),
            "not valid yet",
        ),
        (jwt(KEY, Algorithm::HS256, &json!({ "aud": url })), "exp"),
        (
            jwt(
                KEY,
                Algorithm::HS256,
                &claims(json!({ "aud": url.replace("/chat/", "/other/") })),
            ),
            "audience",
        ),
        (
            jwt(
                KEY,
                Algorithm::HS256,
                &claims(json!({ "aud": url.replace("127.0.0.1", "example.com") })),
            ),
            "audience",
        ),
        (jwt(KEY, Algorithm::HS384, &claims(json!({}))), "HS256"),
        (jwt_with_alg("RS256", &claims(json!({}))), "HS256"),
    ];
    for (token, reason) in &cases {
        let response = post(&em, &send_path(), Some(&format!("Bearer {token}"))).await;
        expect_refused(response, reason, token).await;
    }

    // The same request with a good token goes through, so the refusals above meant something.
    let good = jwt(KEY, Algorithm::HS256, &claims(json!({})));
    assert_eq!(
        post(&em, &send_path(), Some(&format!("Bearer {good}")))
            .await
            .status(),
        202
    );
    assert_eq!(sub.next_data().await, "secret-body");
    sub.expect_silence(Duration::from_millis(200)).await;
}

/// A token with `alg: none` and no signature is refused.
#[tokio::test]
async fn unsigned_alg_none_token_is_401() {
    let em = start().await;
    let url = format!("{}{}", em.endpoint(), send_path());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(json!({ "aud": url, "exp": now() + 300 }).to_string())
    );
    let response = post(&em, &send_path(), Some(&format!("Bearer {token}"))).await;
    expect_refused(response, "access token", &token).await;
}

/// A token whose audience has a query string only matches that exact query: the same
/// token on a request with a different `excluded` is refused.
#[tokio::test]
async fn audience_with_a_different_query_is_401() {
    let em = start().await;
    let signed = format!("{}/api/hubs/chat/:send?{API}&excluded=a", em.endpoint());
    let token = jwt(
        KEY,
        Algorithm::HS256,
        &json!({ "aud": signed, "exp": now() + 300 }),
    );
    let response = post(
        &em,
        &format!("/api/hubs/chat/:send?{API}&excluded=b"),
        Some(&format!("Bearer {token}")),
    )
    .await;
    expect_refused(response, "audience", &token).await;
    let response = post(
        &em,
        &format!("/api/hubs/chat/:send?{API}&excluded=a"),
        Some(&format!("Bearer {token}")),
    )
    .await;
    assert_eq!(response.status(), 202);
}

/// The documented audience, the request URL without its query, is accepted.
#[tokio::test]
async fn audience_without_query_is_accepted() {
    let em = start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;
    let aud = format!("{}/api/hubs/chat/:send", em.endpoint());
    let token = jwt(
        KEY,
        Algorithm::HS256,
        &json!({ "aud": aud, "exp": now() + 300 }),
    );

    let response = post(&em, &send_path(), Some(&format!("Bearer {token}"))).await;
    assert_eq!(response.status(), 202);
    assert_eq!(sub.next_data().await, "secret-body");
}

/// Python's SDK puts `excluded` before `api-version` in both the URL and the audience; that
/// order is accepted and the exclusion applies.
#[tokio::test]
async fn audience_with_query_in_python_order_is_accepted() {
    let em = start().await;
    let mut kept = em.subscribe("chat", Some("kept"), &[], &[]).await;
    let mut spared = em.subscribe("chat", Some("spared"), &[], &[]).await;
    let path = format!(
        "/api/hubs/chat/:send?excluded={}&{API}",
        spared.connection_id
    );
    let aud = format!("{}{path}", em.endpoint());
    let token = jwt(
        KEY,
        Algorithm::HS256,
        &json!({ "aud": aud, "exp": now() + 60 }),
    );

    let response = post(&em, &path, Some(&format!("Bearer {token}"))).await;
    assert_eq!(response.status(), 202);
    assert_eq!(kept.next_data().await, "secret-body");
    spared.expect_silence(Duration::from_millis(200)).await;
}

/// Like the official emulator, a token that expired within the last five minutes is still
/// accepted (clock skew), one expired an hour ago is not.
#[tokio::test]
async fn expiry_tolerates_five_minutes_of_clock_skew() {
    let em = start().await;
    let url = format!("{}{}", em.endpoint(), send_path());
    let recent = jwt(
        KEY,
        Algorithm::HS256,
        &json!({ "aud": url, "exp": now() - 60 }),
    );
    assert_eq!(
        post(&em, &send_path(), Some(&format!("Bearer {recent}")))
            .await
            .status(),
        202
    );
    let old = jwt(
        KEY,
        Algorithm::HS256,
        &json!({ "aud": url, "exp": now() - 600 }),
    );
    expect_refused(
        post(&em, &send_path(), Some(&format!("Bearer {old}"))).await,
        "expired",
        &old,
    )
    .await;
}

/// HEAD operations refuse a bad token with 401 too (and, being HEAD, without a body).
#[tokio::test]
async fn head_operations_need_a_token() {
    let em = start().await;
    let sub = em.subscribe("chat", Some("u1"), &[], &[]).await;
    let path = format!("/api/hubs/chat/connections/{}?{API}", sub.connection_id);
    let response = em
        .http
        .head(format!("{}{path}", em.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["x-ms-error-code"], "Unauthorized");
    assert_eq!(em.status(Method::HEAD, &path).await, 200);
}

/// Expects a WebSocket handshake to be refused with HTTP 401, without the token in the
/// answer.
async fn expect_handshake_refused(url: &str, token: &str) {
    match Subscriber::try_connect(url, Some("json.webpubsub.azure.v1")).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401, "handshake to {url}");
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("Unauthorized"), "body: {body}");
            for secret in [token, KEY, OTHER_KEY] {
                assert!(
                    secret.is_empty() || !body.contains(secret),
                    "body leaks a secret: {body}"
                );
            }
        }
        Err(other) => panic!("expected an HTTP 401, got {other}"),
        Ok(_) => panic!("handshake to {url} should have been refused"),
    }
}

/// Client connections without a token, with a token signed by another key, with an
/// expired token, or with a token for another hub are refused with 401; a good token for
/// the same URL connects.
#[tokio::test]
async fn client_handshake_with_missing_bad_or_expired_token_is_401() {
    let em = start().await;
    let ws = em.endpoint().replace("http://", "ws://");
    let aud = format!("{}/client/hubs/chat", em.endpoint());

    expect_handshake_refused(&format!("{ws}/client/hubs/chat"), "").await;

    let wrong_key = jwt(
        OTHER_KEY,
        Algorithm::HS256,
        &json!({ "aud": aud, "exp": now() + 300, "sub": "u" }),
    );
    expect_handshake_refused(
        &format!("{ws}/client/hubs/chat?access_token={wrong_key}"),
        &wrong_key,
    )
    .await;

    let expired = jwt(
        KEY,
        Algorithm::HS256,
        &json!({ "aud": aud, "exp": now() - 3600, "sub": "u" }),
    );
    expect_handshake_refused(
        &format!("{ws}/client/hubs/chat?access_token={expired}"),
        &expired,
    )
    .await;

    let other_hub = jwt(
        KEY,
        Algorithm::HS256,
        &json!({ "aud": aud.replace("/chat", "/other"), "exp": now() + 300, "sub": "u" }),
    );
    expect_handshake_refused(
        &format!("{ws}/client/hubs/chat?access_token={other_hub}"),
        &other_hub,
    )
    .await;

    let good = jwt(
        KEY,
        Algorithm::HS256,
        &json!({ "aud": aud, "exp": now() + 300, "sub": "u" }),
    );
    let sub = Subscriber::connect(
        &format!("{ws}/client/hubs/chat?access_token={good}"),
        Some("json.webpubsub.azure.v1"),
    )
    .await;
    assert!(!sub.connection_id.is_empty());
    em.wait_for_connections("chat", 1).await;
}
