//! Local stand-ins for the two places rowcast gets Microsoft Entra tokens from: the Entra
//! token endpoint (client credentials grant) and the App Service managed identity endpoint.
//!
//! Each is a small axum server on port 0. It checks every request exactly as the real
//! endpoint would need it, counts requests, can be told to fail a few times first or to
//! answer slowly, and answers with an RS256 token signed with the test key, which an
//! emulator started by [`super::start_entra_emulator`] accepts. A request that is not what
//! was expected is answered 400 and recorded in [`StandIn::problems`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The private test key (PKCS#1 PEM); its public half is [`super::ENTRA_JWKS`].
const SIGNING_KEY: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/entra-test-key.pem"
));

/// The `kid` of the test key in the JWKS.
pub const KEY_ID: &str = "rowcast-test-key";

/// The audience of Entra tokens for Web PubSub.
pub const AUDIENCE: &str = "https://webpubsub.azure.com";

/// The scope a client credentials request must ask for.
pub const SCOPE: &str = "https://webpubsub.azure.com/.default";

/// The app registration the client secret stand-in knows.
pub const TENANT_ID: &str = "72f988bf-0000-4000-8000-00000000test";
pub const CLIENT_ID: &str = "1b2c3d4e-0000-4000-8000-0000000000c1";
pub const CLIENT_SECRET: &str = "stand-in-client-secret~Qx7.never-printed";

/// The `IDENTITY_HEADER` value the managed identity stand-in expects.
pub const IDENTITY_HEADER: &str = "stand-in-identity-header-0f3a";

/// Path of the managed identity stand-in, as `IDENTITY_ENDPOINT` names it.
const MSI_PATH: &str = "/msi/token";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs an Entra-shaped access token for `audience` that expires `lifetime` from now.
pub fn sign_token(audience: &str, lifetime: Duration) -> String {
    let iat = now();
    let claims = json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{TENANT_ID}/"),
        "sub": "stand-in-service-principal",
        "iat": iat,
        "nbf": iat,
        "exp": iat + lifetime.as_secs(),
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KEY_ID.to_owned());
    let key = EncodingKey::from_rsa_pem(SIGNING_KEY).expect("the test key is a PKCS#1 PEM");
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// Which endpoint a stand-in plays, and what a request to it must carry.
#[derive(Debug, Clone)]
pub enum Expect {
    /// `POST /{tenant}/oauth2/v2.0/token`, a form with the client credentials grant.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        client_secret: String,
    },
    /// `GET /msi/token?api-version=2019-08-01&resource=...`, with `X-IDENTITY-HEADER`, and
    /// `client_id` exactly when a user-assigned identity is meant.
    ManagedIdentity {
        header: String,
        client_id: Option<String>,
    },
}

/// How a stand-in behaves.
#[derive(Debug, Clone)]
pub struct Options {
    pub expect: Expect,
    /// Lifetime of the tokens it issues.
    pub lifetime: Duration,
    /// How long it takes to answer each request.
    pub delay: Duration,
    /// Answers (status, JSON body) given to the first requests, before any token.
    pub failures: Vec<(u16, Value)>,
    /// The `aud` of the tokens it issues.
    pub audience: String,
}

impl Options {
    /// The Entra token endpoint for the app registration [`CLIENT_ID`] of [`TENANT_ID`].
    pub fn client_secret() -> Options {
        Options::new(Expect::ClientSecret {
            tenant_id: TENANT_ID.into(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        })
    }

    /// The managed identity endpoint; `client_id` names a user-assigned identity.
    pub fn managed_identity(client_id: Option<&str>) -> Options {
        Options::new(Expect::ManagedIdentity {
            header: IDENTITY_HEADER.into(),
            client_id: client_id.map(str::to_owned),
        })
    }

    fn new(expect: Expect) -> Options {
        Options {
            expect,
            lifetime: Duration::from_secs(3600),
            delay: Duration::ZERO,
            failures: Vec::new(),
            audience: AUDIENCE.into(),
        }
    }
}

struct Shared {
    options: Options,
    failures: Mutex<VecDeque<(u16, Value)>>,
    requests: AtomicUsize,
    problems: Mutex<Vec<String>>,
}

/// A running stand-in.
pub struct StandIn {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl StandIn {
    pub async fn start(options: Options) -> StandIn {
        let shared = Arc::new(Shared {
            failures: Mutex::new(options.failures.iter().cloned().collect()),
            options,
            requests: AtomicUsize::new(0),
            problems: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
            .route(MSI_PATH, get(managed_identity_token))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        StandIn { addr, shared }
    }

    /// How many token requests arrived, good or bad.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// What was wrong with the requests that were not as expected.
    pub fn problems(&self) -> Vec<String> {
        self.shared.problems.lock().unwrap().clone()
    }

    /// The handler settings that make it get its tokens here (all but `__serviceUri`).
    pub fn settings(&self) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = match &self.shared.options.expect {
            Expect::ClientSecret {
                tenant_id,
                client_id,
                client_secret,
            } => vec![
                (
                    "WebPubSubConnectionString__credential",
                    "clientsecret".into(),
                ),
                ("WebPubSubConnectionString__tenantId", tenant_id.clone()),
                ("WebPubSubConnectionString__clientId", client_id.clone()),
                (
                    "WebPubSubConnectionString__clientSecret",
                    client_secret.clone(),
                ),
                ("RowcastAuthorityHost", format!("http://{}", self.addr)),
            ],
            Expect::ManagedIdentity { header, client_id } => {
                let mut pairs = vec![
                    (
                        "WebPubSubConnectionString__credential",
                        "managedidentity".into(),
                    ),
                    (
                        "IDENTITY_ENDPOINT",
                        format!("http://{}{MSI_PATH}", self.addr),
                    ),
                    ("IDENTITY_HEADER", header.clone()),
                ];
                if let Some(id) = client_id {
                    pairs.push(("WebPubSubConnectionString__clientId", id.clone()));
                }
                pairs
            }
        };
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

/// Decodes `application/x-www-form-urlencoded` text (also a URL query) into its pairs, in
/// order, repeats kept.
fn form_pairs(text: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// Checks that `pairs` hold each of `expected` exactly once with that value (a `None` value
/// means the name must be absent). Secret values are never quoted back.
fn check_pairs(
    pairs: &[(String, String)],
    expected: &[(&str, Option<&str>, bool)],
    problems: &mut Vec<String>,
) {
    for (name, value, secret) in expected {
        let found: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect();
        match (value, found.as_slice()) {
            (None, []) => {}
            (None, _) => problems.push(format!("{name} was sent but none was expected")),
            (Some(_), []) => problems.push(format!("{name} is missing")),
            (Some(want), [got]) if got == want => {}
            (Some(want), [got]) if !secret => {
                problems.push(format!("{name} is {got:?}, expected {want:?}"))
            }
            (Some(_), [_]) => problems.push(format!("{name} does not match")),
            (Some(_), _) => problems.push(format!("{name} was sent {} times", found.len())),
        }
    }
}

impl Shared {
    /// Counts the request, waits the configured delay, then answers: 400 for a bad request,
    /// a scripted failure while any is left, else `token`.
    async fn answer(
        &self,
        problems: Vec<String>,
        bad_request: impl FnOnce(&str) -> Value,
        token: impl FnOnce(String) -> Value,
    ) -> Response {
        self.requests.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.options.delay).await;
        if !problems.is_empty() {
            let text = format!("stand-in: {}", problems.join("; "));
            self.problems.lock().unwrap().extend(problems);
            return (StatusCode::BAD_REQUEST, Json(bad_request(&text))).into_response();
        }
        let failure = self.failures.lock().unwrap().pop_front();
        if let Some((status, body)) = failure {
            let status = StatusCode::from_u16(status).unwrap();
            return (status, Json(body)).into_response();
        }
        let access_token = sign_token(&self.options.audience, self.options.lifetime);
        Json(token(access_token)).into_response()
    }
}

async fn entra_token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut problems = Vec::new();
    let Expect::ClientSecret {
        tenant_id,
        client_id,
        client_secret,
    } = &shared.options.expect
    else {
        problems.push("this stand-in is a managed identity endpoint".to_owned());
        return shared.answer(problems, |_| json!({}), |_| json!({})).await;
    };
    if &tenant != tenant_id {
        problems.push(format!("tenant is {tenant:?}, expected {tenant_id:?}"));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        problems.push(format!(
            "content type is {content_type:?}, expected application/x-www-form-urlencoded"
        ));
    }
    let pairs = form_pairs(&body);
    check_pairs(
        &pairs,
        &[
            ("grant_type", Some("client_credentials"), false),
            ("client_id", Some(client_id), false),
            ("client_secret", Some(client_secret), true),
            ("scope", Some(SCOPE), false),
        ],
        &mut problems,
    );
    let known = ["grant_type", "client_id", "client_secret", "scope"];
    for (name, _) in &pairs {
        if !known.contains(&name.as_str()) {
            problems.push(format!("unexpected form field {name:?}"));
        }
    }

    let lifetime = shared.options.lifetime.as_secs();
    shared
        .answer(
            problems,
            |text| json!({ "error": "invalid_request", "error_description": text }),
            |access_token| {
                json!({
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "ext_expires_in": lifetime,
                    "access_token": access_token,
                })
            },
        )
        .await
}

async fn managed_identity_token(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut problems = Vec::new();
    let Expect::ManagedIdentity { header, client_id } = &shared.options.expect else {
        problems.push("this stand-in is an Entra token endpoint".to_owned());
        return shared.answer(problems, |_| json!({}), |_| json!({})).await;
    };
    let pairs = form_pairs(query.as_deref().unwrap_or_default());
    check_pairs(
        &pairs,
        &[
            ("api-version", Some("2019-08-01"), false),
            ("resource", Some(AUDIENCE), false),
            ("client_id", client_id.as_deref(), false),
        ],
        &mut problems,
    );
    let presented = headers
        .get_all("x-identity-header")
        .iter()
        .map(|v| v.to_str().unwrap_or_default())
        .collect::<Vec<_>>();
    match presented.as_slice() {
        [] => problems.push("X-IDENTITY-HEADER is missing".to_owned()),
        [value] if value == header => {}
        _ => problems.push("X-IDENTITY-HEADER does not match IDENTITY_HEADER".to_owned()),
    }

    let lifetime = shared.options.lifetime.as_secs();
    let client_id = client_id.clone();
    shared
        .answer(
            problems,
            |text| json!({ "statusCode": 400, "message": text }),
            |access_token| {
                json!({
                    "access_token": access_token,
                    "expires_on": (now() + lifetime).to_string(),
                    "resource": AUDIENCE,
                    "token_type": "Bearer",
                    "client_id": client_id.unwrap_or_else(|| "system-assigned".into()),
                })
            },
        )
        .await
}
