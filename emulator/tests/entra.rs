//! Microsoft Entra tokens on the REST API, over real sockets: RS256 tokens signed with the
//! test key are checked against its JWKS (from a file, or from a URL served by a stand-in
//! issuer), every way such a token can be wrong is a 401 naming the reason, and access-key
//! tokens keep their own path.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{expect_api_error, Subscriber, TestEmulator, API};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use webpubsub_emulator::{AccessKey, Config, Emulator, JwksSource};

const JWKS_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/entra-test-jwks.json"
);
const KEY_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/entra-test-key.pem"
);
const KID: &str = "rowcast-test-key";
const AUDIENCE: &str = "https://webpubsub.azure.com";

/// The emulator's access key; distinctive so a leak is easy to spot.
const ACCESS_KEY: &str = "entra-suite-access-key-0123456789-abcdefgh";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The test private key. The fixture is PKCS#1 PEM; its base64 body is the DER
/// jsonwebtoken signs with.
fn signing_key() -> EncodingKey {
    let pem = std::fs::read_to_string(KEY_FILE).unwrap();
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .unwrap();
    EncodingKey::from_rsa_der(&der)
}

/// Claims shaped like an Entra v1 app token for Web PubSub, with `extra` merged in.
fn claims(extra: Value) -> Value {
    let mut claims = json!({
        "aud": AUDIENCE,
        "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000000/",
        "iat": now() - 60,
        "nbf": now() - 60,
        "exp": now() + 3600,
        "appid": "11111111-1111-1111-1111-111111111111",
        "roles": ["webpubsub.owner"],
        "ver": "1.0",
    });
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    claims
}

fn sign(algorithm: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &signing_key()).unwrap()
}

/// A valid Entra token for Web PubSub, signed with the test key.
fn entra_token() -> String {
    sign(Algorithm::RS256, Some(KID), &claims(json!({})))
}

fn entra_config(source: JwksSource) -> Config {
    Config {
        access_key: AccessKey::new(ACCESS_KEY).unwrap(),
        entra_jwks: Some(source),
        ..Config::default()
    }
}

async fn start_with_file() -> TestEmulator {
    TestEmulator::start_with(entra_config(JwksSource::File(JWKS_FILE.into()))).await
}

fn send_path() -> String {
    format!("/api/hubs/chat/:send?{API}")
}

/// POSTs a text body to `path_and_query` with `Authorization: Bearer <token>`.
async fn post(em: &TestEmulator, path_and_query: &str, token: &str) -> reqwest::Response {
    em.http
        .post(format!("{}{path_and_query}", em.endpoint()))
        .header("content-type", "text/plain")
        .bearer_auth(token)
        .body("entra-body")
        .send()
        .await
        .unwrap()
}

/// A 401 with `code` in both the body and `x-ms-error-code`, a message containing `needle`,
/// and no trace of the token (or of its signature alone) anywhere in the answer.
async fn expect_refused(response: reqwest::Response, code: &str, needle: &str, token: &str) {
    let signature = token.rsplit('.').next().unwrap();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(
            !value.contains(token) && !value.contains(signature),
            "header {name} leaks the token"
        );
    }
    assert_eq!(
        response
            .headers()
            .get("x-ms-error-code")
            .map(|v| v.to_str().unwrap()),
        Some(code)
    );
    let message = expect_api_error(response, 401, needle).await;
    assert!(
        !message.contains(token),
        "message leaks the token: {message}"
    );
    assert!(
        !message.contains(signature),
        "message leaks the signature: {message}"
    );
    assert!(
        !message.contains(ACCESS_KEY),
        "message leaks the access key: {message}"
    );
}

#[tokio::test]
async fn a_valid_entra_token_sends_to_a_real_subscriber() {
    let em = start_with_file().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;

    let response = post(&em, &send_path(), &entra_token()).await;
    assert_eq!(response.status(), 202);
    assert_eq!(sub.next_data().await, "entra-body");

    // The audience with a trailing slash, as the v1 endpoint may issue it, is the same one.
    let slash = sign(
        Algorithm::RS256,
        Some(KID),
        &claims(json!({ "aud": format!("{AUDIENCE}/") })),
    );
    assert_eq!(post(&em, &send_path(), &slash).await.status(), 202);
    assert_eq!(sub.next_data().await, "entra-body");

    // Five minutes of clock skew either way.
    let skewed = sign(
        Algorithm::RS256,
        Some(KID),
        &claims(json!({ "exp": now() - 120, "nbf": now() + 120 })),
    );
    assert_eq!(post(&em, &send_path(), &skewed).await.status(), 202);
    assert_eq!(sub.next_data().await, "entra-body");

    // Access-key tokens still work beside Entra ones.
    em.send_json("/api/hubs/chat/:send", &json!({ "by": "key" }))
        .await;
    assert_eq!(sub.next_data().await, json!({ "by": "key" }));
}

#[tokio::test]
async fn generate_token_works_with_an_entra_token() {
    let em = start_with_file().await;
    let response = em
        .http
        .post(format!(
            "{}/api/hubs/chat/:generateToken?userId=alice&minutesToExpire=5&{API}",
            em.endpoint()
        ))
        .bearer_auth(entra_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let client_token = body["token"].as_str().unwrap();
    assert_eq!(common::jwt_claims(client_token)["sub"], "alice");

    let ws = em.endpoint().replace("http://", "ws://");
    let url = format!("{ws}/client/hubs/chat?access_token={client_token}");
    let mut sub = Subscriber::connect(&url, Some("json.webpubsub.azure.v1")).await;
    let response = post(
        &em,
        &format!("/api/hubs/chat/users/alice/:send?{API}"),
        &entra_token(),
    )
    .await;
    assert_eq!(response.status(), 202);
    assert_eq!(sub.next_data().await, "entra-body");
}

#[tokio::test]
async fn bad_entra_tokens_are_401_with_the_reason_and_nothing_is_delivered() {
    let em = start_with_file().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;

    let good = entra_token();
    let (head, signature) = good.rsplit_once('.').unwrap();
    // Change one character in the middle of the signature, so it still decodes.
    let mut tampered_sig: Vec<char> = signature.chars().collect();
    let i = tampered_sig.len() / 2;
    tampered_sig[i] = if tampered_sig[i] == 'A' { 'B' } else { 'A' };
    let tampered = format!("{head}.{}", tampered_sig.into_iter().collect::<String>());
    // A payload swapped under a valid signature is a bad signature too.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged_payload = b64.encode(claims(json!({ "appid": "someone-else" })).to_string());
    let forged = format!(
        "{}.{forged_payload}.{signature}",
        head.split('.').next().unwrap()
    );

    let cases: Vec<(String, &str, &str)> = vec![
        (
            sign(Algorithm::RS256, Some("rotated-away"), &claims(json!({}))),
            "UnknownSigningKey",
            "unknown signing key",
        ),
        (
            sign(Algorithm::RS256, None, &claims(json!({}))),
            "UnknownSigningKey",
            "unknown signing key",
        ),
        (tampered, "InvalidTokenSignature", "bad signature"),
        (forged, "InvalidTokenSignature", "bad signature"),
        (
            sign(
                Algorithm::RS256,
                Some(KID),
                &claims(json!({ "aud": "https://management.azure.com" })),
            ),
            "InvalidTokenAudience",
            "wrong audience",
        ),
        (
            sign(
                Algorithm::RS256,
                Some(KID),
                &claims(json!({ "aud": format!("{}/api/hubs/chat/:send", em.endpoint()) })),
            ),
            "InvalidTokenAudience",
            "wrong audience",
        ),
        (
            sign(
                Algorithm::RS256,
                Some(KID),
                &claims(json!({ "exp": now() - 3600 })),
            ),
            "TokenExpired",
            "expired",
        ),
        (
            sign(
                Algorithm::RS256,
                Some(KID),
                &claims(json!({ "nbf": now() + 3600 })),
            ),
            "TokenNotYetValid",
            "not valid yet",
        ),
        (
            {
                let mut no_exp = claims(json!({}));
                no_exp.as_object_mut().unwrap().remove("exp");
                sign(Algorithm::RS256, Some(KID), &no_exp)
            },
            "TokenWithoutExpiry",
            "no exp",
        ),
        (
            sign(Algorithm::RS384, Some(KID), &claims(json!({}))),
            "UnsupportedTokenAlgorithm",
            "RS256",
        ),
        (
            sign(Algorithm::PS256, Some(KID), &claims(json!({}))),
            "UnsupportedTokenAlgorithm",
            "RS256",
        ),
    ];
    for (token, code, needle) in &cases {
        expect_refused(post(&em, &send_path(), token).await, code, needle, token).await;
    }

    // HS256 with the Entra audience goes the access-key path and fails there, on its
    // signature (a random secret, not the access key).
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).unwrap();
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(&secret),
    )
    .unwrap();
    expect_refused(
        post(&em, &send_path(), &hs256).await,
        "Unauthorized",
        "access key",
        &hs256,
    )
    .await;

    // None of the refused sends reached the subscriber; a good one does.
    assert_eq!(post(&em, &send_path(), &good).await.status(), 202);
    assert_eq!(sub.next_data().await, "entra-body");
    sub.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_jwk_without_kid_is_tried_for_a_token_without_kid() {
    let mut jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(JWKS_FILE).unwrap()).unwrap();
    jwks["keys"][0].as_object_mut().unwrap().remove("kid");
    let path =
        std::env::temp_dir().join(format!("rowcast-entra-no-kid-{}.json", std::process::id()));
    std::fs::write(&path, jwks.to_string()).unwrap();
    let em = TestEmulator::start_with(entra_config(JwksSource::File(path.clone()))).await;
    std::fs::remove_file(&path).unwrap();

    let no_kid = sign(Algorithm::RS256, None, &claims(json!({})));
    assert_eq!(post(&em, &send_path(), &no_kid).await.status(), 202);
    let named = entra_token();
    expect_refused(
        post(&em, &send_path(), &named).await,
        "UnknownSigningKey",
        KID,
        &named,
    )
    .await;
}

#[tokio::test]
async fn without_a_jwks_entra_tokens_are_not_enabled() {
    let em = TestEmulator::start_with(Config {
        access_key: AccessKey::new(ACCESS_KEY).unwrap(),
        ..Config::default()
    })
    .await;
    let token = entra_token();
    expect_refused(
        post(&em, &send_path(), &token).await,
        "EntraTokensNotEnabled",
        "not enabled",
        &token,
    )
    .await;
    // Access-key tokens are unaffected.
    assert_eq!(em.status(reqwest::Method::POST, &send_path()).await, 202);
}

/// A stand-in issuer: serves whatever JWKS it holds at `/keys` and counts the requests.
struct Issuer {
    addr: SocketAddr,
    jwks: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl Issuer {
    async fn start(jwks: String) -> Issuer {
        let jwks = Arc::new(Mutex::new(jwks));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (jwks.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let (served, counted) = (served.clone(), counted.clone());
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().unwrap().clone();
                    ([("content-type", "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Issuer { addr, jwks, hits }
    }

    fn url(&self) -> String {
        format!("http://{}/keys", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The fixture JWKS with its key under `kid`.
fn jwks_with_kid(kid: &str) -> String {
    let mut jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(JWKS_FILE).unwrap()).unwrap();
    jwks["keys"][0]["kid"] = kid.into();
    jwks.to_string()
}

async fn start_with_url(url: String) -> TestEmulator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emulator = Emulator::start_on(listener, entra_config(JwksSource::Url(url)))
        .await
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    TestEmulator {
        emulator,
        http,
        key: AccessKey::new(ACCESS_KEY).unwrap(),
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_at_start_and_unknown_kids_refetch_at_most_once_a_minute() {
    let issuer = Issuer::start(jwks_with_kid(KID)).await;
    let em = start_with_url(issuer.url()).await;
    assert_eq!(issuer.hits(), 1, "fetched once at start");
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;

    for _ in 0..3 {
        assert_eq!(post(&em, &send_path(), &entra_token()).await.status(), 202);
        assert_eq!(sub.next_data().await, "entra-body");
    }
    assert_eq!(issuer.hits(), 1, "known keys come from the cache");

    // A flood of tokens naming unknown keys, some at once, causes one fetch.
    let unknown: Vec<String> = (0..20)
        .map(|i| {
            sign(
                Algorithm::RS256,
                Some(&format!("unknown-{i}")),
                &claims(json!({})),
            )
        })
        .collect();
    let answers = {
        let path = send_path();
        futures_util::future::join_all(unknown.iter().map(|t| post(&em, &path, t))).await
    };
    for (response, token) in answers.into_iter().zip(&unknown) {
        expect_refused(response, "UnknownSigningKey", "unknown signing key", token).await;
    }
    assert_eq!(issuer.hits(), 2, "one refetch for the whole flood");
    for token in &unknown {
        expect_refused(
            post(&em, &send_path(), token).await,
            "UnknownSigningKey",
            "unknown signing key",
            token,
        )
        .await;
    }
    assert_eq!(issuer.hits(), 2, "no second refetch within a minute");

    // The cached key still works.
    assert_eq!(post(&em, &send_path(), &entra_token()).await.status(), 202);
    assert_eq!(sub.next_data().await, "entra-body");
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_by_one_refetch() {
    let issuer = Issuer::start(jwks_with_kid("previous-key")).await;
    let em = start_with_url(issuer.url()).await;
    assert_eq!(issuer.hits(), 1);
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;

    // The issuer rotates to the key the tokens are now signed with.
    *issuer.jwks.lock().unwrap() = jwks_with_kid(KID);
    assert_eq!(post(&em, &send_path(), &entra_token()).await.status(), 202);
    assert_eq!(sub.next_data().await, "entra-body");
    assert_eq!(issuer.hits(), 2);

    // The old key is gone from the cache now, and the next unknown kid waits a minute.
    let old = sign(Algorithm::RS256, Some("previous-key"), &claims(json!({})));
    expect_refused(
        post(&em, &send_path(), &old).await,
        "UnknownSigningKey",
        "previous-key",
        &old,
    )
    .await;
    assert_eq!(issuer.hits(), 2);
}

#[tokio::test]
async fn an_unreachable_jwks_url_fails_the_start() {
    // A port that was free a moment ago refuses connections.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}/keys");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Emulator::start_on(listener, entra_config(JwksSource::Url(url.clone())))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("cannot fetch the JWKS") && message.contains(&url),
        "{message}"
    );

    // A JWKS URL that answers something other than a JWKS fails it too.
    let issuer = Issuer::start("<html>sign in</html>".to_owned()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Emulator::start_on(listener, entra_config(JwksSource::Url(issuer.url())))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a JWKS"), "{err}");

    // The synchronous serve cannot fetch, so it says which constructor to use.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Emulator::serve(listener, entra_config(JwksSource::Url(issuer.url()))).unwrap_err();
    assert!(err.to_string().contains("start_on"), "{err}");
}

#[test]
fn the_binary_refuses_a_bad_jwks_file_with_one_line_and_exit_64() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_webpubsub-emulator"))
        .args([
            "--port",
            "0",
            "--entra-jwks",
            "/nonexistent/entra-jwks.json",
        ])
        .env_remove("WebPubSub__EntraJwks")
        .env_remove("WebPubSub__AccessKey")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/entra-jwks.json"), "{stderr}");
    assert!(output.stdout.is_empty());

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_webpubsub-emulator"))
        .args(["--port", "0"])
        .env("WebPubSub__EntraJwks", KEY_FILE)
        .env_remove("WebPubSub__AccessKey")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not a JWKS") && !stderr.contains("MII"),
        "{stderr}"
    );
}
