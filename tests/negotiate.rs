//! The `negotiate` function through the host's contract: the host posts the HTTP request as
//! `Data.req` and returns `Outputs.res` to the caller. The URL it hands out must connect to
//! the emulator as the caller, in the configured groups and with the configured roles; the
//! caller comes from App Service authentication, a `userId` query only when allowed; CORS
//! and expiry behave as a browser and the service expect.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{jwt_claims, negotiate_request, Handshake, Stack, Subscriber, ACCESS_KEY};
use serde_json::{json, Value};

/// A route every test here can use (the handler needs one SQL-triggered function).
const ROUTES: &str = r#"{"sql-changes":{"table":"dbo.Users"}}"#;

/// The hub subscribers negotiate for.
const HUB: &str = "Chat";

/// How long a subscriber must stay quiet to count as having got nothing.
const QUIET: Duration = Duration::from_millis(300);

/// A stack whose negotiate function issues URLs for [`HUB`], with `settings` on top.
async fn stack(settings: &[(&str, &str)]) -> Stack {
    let mut all = vec![("WebPubSubHub", HUB), ("RowcastRoutes", ROUTES)];
    all.extend_from_slice(settings);
    Stack::start(&all).await
}

/// What the caller of `negotiate` gets: the `Outputs.res` of a successful invocation.
struct Res {
    status: String,
    headers: serde_json::Map<String, Value>,
    body: String,
    logs: Vec<String>,
}

impl Res {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("res body is not JSON: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
    }
}

/// Invokes `negotiate` with `body`; the invocation itself always succeeds, whatever the
/// caller is told.
async fn negotiate(stack: &Stack, body: String) -> Res {
    let (status, answer) = stack.invoke("negotiate", body).await;
    assert_eq!(status, 200, "{answer}");
    let res = &answer["Outputs"]["res"];
    Res {
        status: res["statusCode"]
            .as_str()
            .unwrap_or_else(|| panic!("statusCode is not a string: {answer}"))
            .to_owned(),
        headers: res["headers"].as_object().cloned().unwrap_or_default(),
        body: res["body"].as_str().unwrap_or_default().to_owned(),
        logs: answer["Logs"]
            .as_array()
            .map(|logs| {
                logs.iter()
                    .filter_map(|l| l.as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Negotiates with the given headers and query, expects a 200, and returns the
/// `{url, baseUrl, token}` body.
async fn access(stack: &Stack, headers: &[(&str, &str)], query: &[(&str, &str)]) -> Value {
    let res = negotiate(stack, negotiate_request("GET", headers, query)).await;
    assert_eq!(res.status, "200", "{}", res.body);
    res.json()
}

/// Connects to the URL of a negotiate answer and returns the subscriber and the user id the
/// emulator saw.
async fn connect(access: &Value) -> (Subscriber, String) {
    let url = access["url"].as_str().expect("url is a string");
    match Subscriber::open(url).await {
        Handshake::Connected(subscriber, connected) => {
            let user = connected["userId"].as_str().unwrap_or_default().to_owned();
            (*subscriber, user)
        }
        Handshake::Refused(status) => panic!("the negotiated url was refused with {status}"),
    }
}

/// Negotiates with the given headers and query, connects with the url of the answer, and
/// returns the user id the emulator saw.
async fn connected_user(stack: &Stack, headers: &[(&str, &str)], query: &[(&str, &str)]) -> String {
    let (_subscriber, user) = connect(&access(stack, headers, query).await).await;
    user
}

/// `claims` signed with the access key, as the handler signs client access tokens.
fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(ACCESS_KEY.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn base64(value: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(value.to_string())
}

/// The answer is `{url, baseUrl, token}` for the emulator's client endpoint of the hub, JSON
/// typed, and the url connects as the caller named by `X-MS-CLIENT-PRINCIPAL-ID`.
#[tokio::test]
async fn the_url_connects_as_the_signed_in_principal() {
    let stack = stack(&[]).await;
    let res = negotiate(
        &stack,
        negotiate_request("GET", &[("X-MS-CLIENT-PRINCIPAL-ID", "oid-ann")], &[]),
    )
    .await;
    assert_eq!(res.status, "200", "{}", res.body);
    assert_eq!(res.header("Content-Type"), Some("application/json"));
    assert!(
        res.logs.iter().any(|l| l.contains("oid-ann")),
        "{:?}",
        res.logs
    );
    assert!(
        res.logs.iter().all(|l| !l.contains(ACCESS_KEY)),
        "{:?}",
        res.logs
    );
    let body = res.json();
    let base_url = format!(
        "{}/client/hubs/{HUB}",
        stack.emulator.endpoint().replace("http://", "ws://")
    );
    assert_eq!(body["baseUrl"], base_url.as_str(), "{body}");
    let token = body["token"].as_str().unwrap();
    assert_eq!(
        body["url"],
        format!("{base_url}?access_token={token}").as_str()
    );

    let (_subscriber, user) = connect(&body).await;
    assert_eq!(user, "oid-ann");
    assert_eq!(stack.emulator.connection_count(HUB), 1);
}

/// `RowcastNegotiateHub` picks the hub of the url instead of `WebPubSubHub`.
#[tokio::test]
async fn the_negotiate_hub_setting_picks_the_hub() {
    let stack = stack(&[("RowcastNegotiateHub", "Lobby")]).await;
    let body = access(&stack, &[("X-MS-CLIENT-PRINCIPAL-ID", "oid-ann")], &[]).await;
    assert!(
        body["baseUrl"]
            .as_str()
            .unwrap()
            .ends_with("/client/hubs/Lobby"),
        "{body}"
    );
    let (_subscriber, _) = connect(&body).await;
    assert_eq!(stack.emulator.connection_count("Lobby"), 1);
    assert_eq!(stack.emulator.connection_count(HUB), 0);
}

/// Initial groups are rendered from `RowcastNegotiateGroups` templates on the caller's id:
/// a REST send to `user-{userId}` reaches the subscriber, one to another user's group does
/// not.
#[tokio::test]
async fn the_url_joins_the_groups_of_the_templates() {
    let stack = stack(&[("RowcastNegotiateGroups", "user-{userId}, everyone")]).await;
    let body = access(&stack, &[("X-MS-CLIENT-PRINCIPAL-ID", "ann")], &[]).await;
    let token = jwt_claims(body["token"].as_str().unwrap());
    assert_eq!(token["webpubsub.group"], json!(["user-ann", "everyone"]));
    let (mut subscriber, _) = connect(&body).await;

    assert_eq!(
        stack
            .send_to_group(HUB, "user-bob", &json!({"to": "bob"}))
            .await,
        202
    );
    subscriber.expect_silence(QUIET).await;
    assert_eq!(
        stack
            .send_to_group(HUB, "user-ann", &json!({"to": "ann"}))
            .await,
        202
    );
    assert_eq!(subscriber.next_change().await, json!({"to": "ann"}));
    assert_eq!(
        stack
            .send_to_group(HUB, "everyone", &json!({"to": "all"}))
            .await,
        202
    );
    assert_eq!(subscriber.next_change().await, json!({"to": "all"}));
}

/// With `RowcastNegotiateRoles=webpubsub.joinLeaveGroup` the subscriber may join a group
/// itself: the `joinGroup` ack succeeds and the group's messages arrive.
#[tokio::test]
async fn the_join_leave_role_lets_the_subscriber_join_groups() {
    let stack = stack(&[(
        "RowcastNegotiateRoles",
        "webpubsub.joinLeaveGroup, webpubsub.sendToGroup",
    )])
    .await;
    let body = access(&stack, &[("X-MS-CLIENT-PRINCIPAL-ID", "ann")], &[]).await;
    let token = jwt_claims(body["token"].as_str().unwrap());
    assert_eq!(
        token["role"],
        json!(["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"])
    );
    let (mut subscriber, _) = connect(&body).await;

    subscriber
        .send_json(&json!({"type": "joinGroup", "group": "orders", "ackId": 1}))
        .await;
    let ack = subscriber.ack(1).await;
    assert_eq!(ack["success"], true, "{ack}");
    assert_eq!(
        stack
            .send_to_group(HUB, "orders", &json!({"order": 7}))
            .await,
        202
    );
    assert_eq!(subscriber.next_change().await, json!({"order": 7}));
}

/// Without roles a subscriber may not join groups: the ack fails with Forbidden.
#[tokio::test]
async fn without_roles_joining_a_group_is_forbidden() {
    let stack = stack(&[]).await;
    let body = access(&stack, &[("X-MS-CLIENT-PRINCIPAL-ID", "ann")], &[]).await;
    assert!(
        jwt_claims(body["token"].as_str().unwrap())
            .get("role")
            .is_none(),
        "{body}"
    );
    let (mut subscriber, _) = connect(&body).await;

    subscriber
        .send_json(&json!({"type": "joinGroup", "group": "orders", "ackId": 1}))
        .await;
    let ack = subscriber.ack(1).await;
    assert_eq!(ack["success"], false, "{ack}");
    assert_eq!(ack["error"]["name"], "Forbidden", "{ack}");
    stack
        .send_to_group(HUB, "orders", &json!({"order": 7}))
        .await;
    subscriber.expect_silence(QUIET).await;
}

/// An App Service principal header wins over a `userId` query, even when the query is
/// allowed: nobody signed in can claim to be someone else.
#[tokio::test]
async fn the_principal_header_wins_over_the_user_id_query() {
    let stack = stack(&[("RowcastNegotiateAllowQueryUserId", "true")]).await;
    let user = connected_user(
        &stack,
        &[("X-MS-CLIENT-PRINCIPAL-ID", "oid-ann")],
        &[("userId", "mallory")],
    )
    .await;
    assert_eq!(user, "oid-ann");
}

/// Without a principal id, `X-MS-CLIENT-PRINCIPAL-NAME` names the user.
#[tokio::test]
async fn the_principal_name_is_the_user_without_an_id() {
    let stack = stack(&[]).await;
    let user = connected_user(
        &stack,
        &[("X-MS-CLIENT-PRINCIPAL-NAME", "ann@contoso.com")],
        &[],
    )
    .await;
    assert_eq!(user, "ann@contoso.com");
}

/// A base64 `X-MS-CLIENT-PRINCIPAL` in App Service's claims form gives the object id.
#[tokio::test]
async fn an_app_service_principal_gives_its_object_id() {
    let stack = stack(&[]).await;
    let principal = json!({
        "auth_typ": "aad",
        "claims": [
            {"typ": "name", "val": "Ann Example"},
            {"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": "oid-7"},
            {"typ": "preferred_username", "val": "ann@contoso.com"}
        ],
        "name_typ": "name",
        "role_typ": "roles"
    });
    let user = connected_user(
        &stack,
        &[("X-MS-CLIENT-PRINCIPAL", &base64(&principal))],
        &[],
    )
    .await;
    assert_eq!(user, "oid-7");
}

/// A base64 `X-MS-CLIENT-PRINCIPAL` in Static Web Apps' form gives its `userId`.
#[tokio::test]
async fn a_static_web_apps_principal_gives_its_user_id() {
    let stack = stack(&[]).await;
    let principal = json!({
        "identityProvider": "github",
        "userId": "d75b260a64504067bfc5b2905e3b8182",
        "userDetails": "ann",
        "userRoles": ["anonymous", "authenticated"]
    });
    let user = connected_user(
        &stack,
        &[("X-MS-CLIENT-PRINCIPAL", &base64(&principal))],
        &[],
    )
    .await;
    assert_eq!(user, "d75b260a64504067bfc5b2905e3b8182");
}

/// A principal header that is not base64 JSON is refused with 401 and says why.
#[tokio::test]
async fn an_unreadable_principal_is_refused() {
    let stack = stack(&[]).await;
    let res = negotiate(
        &stack,
        negotiate_request("GET", &[("X-MS-CLIENT-PRINCIPAL", "not base64!")], &[]),
    )
    .await;
    assert_eq!(res.status, "401", "{}", res.body);
    let error = res.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("X-MS-CLIENT-PRINCIPAL"), "{error}");
}

/// A caller with no identity at all gets 401 with a reason, and no token.
#[tokio::test]
async fn a_caller_without_identity_gets_401() {
    let stack = stack(&[]).await;
    let res = negotiate(&stack, negotiate_request("GET", &[], &[])).await;
    assert_eq!(res.status, "401", "{}", res.body);
    let body = res.json();
    assert!(
        body.get("token").is_none() && body.get("url").is_none(),
        "{body}"
    );
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("no caller identity"), "{error}");
    assert!(error.contains("X-MS-CLIENT-PRINCIPAL-ID"), "{error}");
    assert!(
        res.logs.iter().any(|l| l.contains("refused")),
        "{:?}",
        res.logs
    );
}

/// A `userId` query is refused with 401 unless `RowcastNegotiateAllowQueryUserId` is on,
/// and the reason names the setting.
#[tokio::test]
async fn a_user_id_query_is_refused_by_default() {
    let stack = stack(&[]).await;
    let res = negotiate(&stack, negotiate_request("GET", &[], &[("userId", "dev")])).await;
    assert_eq!(res.status, "401", "{}", res.body);
    let error = res.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("RowcastNegotiateAllowQueryUserId"),
        "{error}"
    );

    let explicit_off = stack_with_query_user_id("false").await;
    let res = negotiate(
        &explicit_off,
        negotiate_request("GET", &[], &[("userId", "dev")]),
    )
    .await;
    assert_eq!(res.status, "401", "{}", res.body);
}

async fn stack_with_query_user_id(value: &str) -> Stack {
    stack(&[("RowcastNegotiateAllowQueryUserId", value)]).await
}

/// With `RowcastNegotiateAllowQueryUserId=true` the query names the user, for local
/// development.
#[tokio::test]
async fn a_user_id_query_is_honoured_when_allowed() {
    let stack = stack_with_query_user_id("true").await;
    let user = connected_user(&stack, &[], &[("userId", "dev-user")]).await;
    assert_eq!(user, "dev-user");
}

/// An allowed `Origin` is echoed in `Access-Control-Allow-Origin`, refusals included, so the
/// browser can read the reason.
#[tokio::test]
async fn an_allowed_origin_is_echoed() {
    let stack = stack(&[(
        "RowcastCorsOrigins",
        "https://other.example, https://app.contoso.com",
    )])
    .await;
    let res = negotiate(
        &stack,
        negotiate_request(
            "GET",
            &[
                ("X-MS-CLIENT-PRINCIPAL-ID", "ann"),
                ("Origin", "https://app.contoso.com"),
            ],
            &[],
        ),
    )
    .await;
    assert_eq!(res.status, "200", "{}", res.body);
    assert_eq!(
        res.header("Access-Control-Allow-Origin"),
        Some("https://app.contoso.com")
    );
    assert_eq!(res.header("Vary"), Some("Origin"));

    let refused = negotiate(
        &stack,
        negotiate_request("GET", &[("Origin", "https://app.contoso.com")], &[]),
    )
    .await;
    assert_eq!(refused.status, "401");
    assert_eq!(
        refused.header("Access-Control-Allow-Origin"),
        Some("https://app.contoso.com")
    );
}

/// An origin not in `RowcastCorsOrigins` gets no `Access-Control-Allow-Origin`, and neither
/// does any origin when the setting is empty.
#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_header() {
    let stack = stack(&[("RowcastCorsOrigins", "https://app.contoso.com")]).await;
    let headers = [
        ("X-MS-CLIENT-PRINCIPAL-ID", "ann"),
        ("Origin", "https://evil.example"),
    ];
    let res = negotiate(&stack, negotiate_request("GET", &headers, &[])).await;
    assert_eq!(res.status, "200", "{}", res.body);
    assert_eq!(
        res.header("Access-Control-Allow-Origin"),
        None,
        "{:?}",
        res.headers
    );

    let no_setting = self::stack(&[]).await;
    let res = negotiate(&no_setting, negotiate_request("GET", &headers, &[])).await;
    assert_eq!(
        res.header("Access-Control-Allow-Origin"),
        None,
        "{:?}",
        res.headers
    );
}

/// `*` allows every origin.
#[tokio::test]
async fn a_wildcard_allows_any_origin() {
    let stack = stack(&[("RowcastCorsOrigins", "*")]).await;
    let res = negotiate(
        &stack,
        negotiate_request(
            "GET",
            &[
                ("X-MS-CLIENT-PRINCIPAL-ID", "ann"),
                ("Origin", "https://anywhere.example"),
            ],
            &[],
        ),
    )
    .await;
    assert_eq!(res.header("Access-Control-Allow-Origin"), Some("*"));
}

/// An `OPTIONS` preflight is answered 204 with the allowed methods and headers, without an
/// identity and without a token.
#[tokio::test]
async fn a_preflight_is_answered_204_with_allow_headers() {
    let stack = stack(&[("RowcastCorsOrigins", "https://app.contoso.com")]).await;
    let res = negotiate(
        &stack,
        negotiate_request(
            "OPTIONS",
            &[
                ("Origin", "https://app.contoso.com"),
                ("Access-Control-Request-Method", "GET"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, x-client-version",
                ),
            ],
            &[],
        ),
    )
    .await;
    assert_eq!(res.status, "204", "{}", res.body);
    assert_eq!(res.body, "");
    assert_eq!(
        res.header("Access-Control-Allow-Origin"),
        Some("https://app.contoso.com")
    );
    let methods = res
        .header("Access-Control-Allow-Methods")
        .unwrap_or_default();
    for method in ["GET", "POST", "OPTIONS"] {
        assert!(methods.contains(method), "{methods}");
    }
    assert_eq!(
        res.header("Access-Control-Allow-Headers"),
        Some("authorization, x-client-version")
    );
    assert!(
        res.header("Access-Control-Max-Age").is_some(),
        "{:?}",
        res.headers
    );
}

/// The token lives `RowcastNegotiateMinutes`, and the emulator refuses it at connect once it
/// has expired: the same claims with `exp` ten minutes in the past (beyond the five minutes
/// of clock skew allowed) get HTTP 401 at the handshake.
#[tokio::test]
async fn an_expired_token_is_refused_at_connect() {
    let stack = stack(&[("RowcastNegotiateMinutes", "5")]).await;
    let body = access(&stack, &[("X-MS-CLIENT-PRINCIPAL-ID", "ann")], &[]).await;
    let mut token = jwt_claims(body["token"].as_str().unwrap());
    let exp = token["exp"].as_u64().unwrap();
    let lifetime = exp.saturating_sub(now());
    assert!((290..=300).contains(&lifetime), "exp is {lifetime} s away");

    token["exp"] = json!(now() - 600);
    token["iat"] = json!(now() - 900);
    let expired = sign(&token);
    let base_url = body["baseUrl"].as_str().unwrap();
    match Subscriber::open(&format!("{base_url}?access_token={expired}")).await {
        Handshake::Refused(status) => assert_eq!(status, 401),
        Handshake::Connected(..) => panic!("an expired token connected"),
    }

    // The same claims re-signed with a live exp still connect, so the refusal was the
    // expiry and nothing else.
    token["exp"] = json!(now() + 60);
    let live = sign(&token);
    match Subscriber::open(&format!("{base_url}?access_token={live}")).await {
        Handshake::Connected(_, connected) => assert_eq!(connected["userId"], "ann"),
        Handshake::Refused(status) => panic!("a live token was refused with {status}"),
    }
}

/// A user id with characters that matter in URLs and templates still round-trips to the
/// connection and its group.
#[tokio::test]
async fn a_user_id_with_url_characters_round_trips() {
    let stack = stack(&[("RowcastNegotiateGroups", "user-{userId}")]).await;
    let user = "ann b/c?d#e";
    let body = access(&stack, &[("X-MS-CLIENT-PRINCIPAL-ID", user)], &[]).await;
    let (mut subscriber, seen) = connect(&body).await;
    assert_eq!(seen, user);
    assert_eq!(
        jwt_claims(body["token"].as_str().unwrap())["webpubsub.group"],
        json!([format!("user-{user}")])
    );
    let group = percent_encoding::utf8_percent_encode(
        &format!("user-{user}"),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    assert_eq!(
        stack.send_to_group(HUB, &group, &json!({"hi": 1})).await,
        202
    );
    assert_eq!(subscriber.next_change().await, json!({"hi": 1}));
}
