//! How rowcast proves to Web PubSub who it is: an access key that signs a token per request,
//! or a Microsoft Entra access token, obtained with an app registration's client secret or
//! with the function app's managed identity.
//!
//! An Entra token is fetched once and shared by every invocation of the instance. It is
//! refreshed shortly before it expires, and when many sends need a fresh token at the same
//! moment only one of them fetches it while the others wait for the result.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use super::token::{now, AccessKey};

/// The Entra resource (and token audience) of Azure Web PubSub.
pub const WEB_PUBSUB_RESOURCE: &str = "https://webpubsub.azure.com";

/// The scope a client-credentials request asks for.
pub const WEB_PUBSUB_SCOPE: &str = "https://webpubsub.azure.com/.default";

/// Default Entra authority, for the public cloud.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// A token is renewed when this little of its life is left (as the Azure SDKs do), or when
/// half of it has passed for tokens that live less than twice as long.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Attempts per fetch for failures that may pass (connection errors, 429, 5xx).
const FETCH_ATTEMPTS: u32 = 3;

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where Entra tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// An app registration: the OAuth 2.0 client credentials grant against
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    ClientSecret {
        authority: String,
        tenant_id: String,
        client_id: String,
        client_secret: Secret,
    },
    /// The App Service / Functions managed identity endpoint (`IDENTITY_ENDPOINT`,
    /// `IDENTITY_HEADER`), optionally for a user-assigned identity.
    ManagedIdentity {
        endpoint: String,
        header: Secret,
        client_id: Option<String>,
    },
}

impl TokenSource {
    /// A short description for logs: the kind and public ids, never secrets.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => {
                format!("app registration {client_id} in tenant {tenant_id}")
            }
            TokenSource::ManagedIdentity {
                client_id: Some(id),
                ..
            } => {
                format!("user-assigned managed identity {id}")
            }
            TokenSource::ManagedIdentity {
                client_id: None, ..
            } => "system-assigned managed identity".into(),
        }
    }
}

/// Why no Entra token could be had. Carries the identity endpoint's own explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot reach the identity endpoint {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the identity endpoint {endpoint} refused the token request with {status}: {message}")]
    Refused {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("the identity endpoint {endpoint} answered without a usable token: {reason}")]
    BadAnswer { endpoint: String, reason: String },
}

impl IdentityError {
    /// Whether a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            IdentityError::Unreachable { .. } => true,
            IdentityError::Refused { status, .. } => *status == 429 || *status >= 500,
            IdentityError::BadAnswer { .. } => false,
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    expires_on: u64,
    fetched_on: u64,
}

impl CachedToken {
    fn fresh(&self, now: u64) -> bool {
        let lifetime = self.expires_on.saturating_sub(self.fetched_on);
        let margin = REFRESH_MARGIN.as_secs().min(lifetime / 2);
        now + margin < self.expires_on
    }
}

/// What the provider last learned from the identity endpoint.
enum Cached {
    Empty,
    Token(CachedToken),
    Failed(IdentityError),
}

/// Fetches and caches Entra tokens for Web PubSub.
pub struct TokenProvider {
    source: TokenSource,
    http: reqwest::Client,
    /// Held while a fetch runs, which is what makes concurrent callers share one fetch.
    cache: Mutex<Cached>,
    fetches: AtomicU64,
    /// Fetches finished, failed or not. A caller that saw this number change while it
    /// waited for the lock shares the outcome of that fetch instead of starting another, so
    /// a batch of many sends against a failing endpoint makes one request, not one per send.
    finished: AtomicU64,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl TokenProvider {
    pub fn new(source: TokenSource, http: reqwest::Client) -> Self {
        TokenProvider {
            source,
            http,
            cache: Mutex::new(Cached::Empty),
            fetches: AtomicU64::new(0),
            finished: AtomicU64::new(0),
        }
    }

    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// How many token requests this provider has made, for logs and tests.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A token that is valid for a while yet.
    pub async fn token(&self) -> Result<Secret, IdentityError> {
        let seen = self.finished.load(Ordering::Acquire);
        let mut cache = self.cache.lock().await;
        match &*cache {
            Cached::Token(cached) if cached.fresh(now()) => return Ok(cached.token.clone()),
            Cached::Failed(error) if self.finished.load(Ordering::Acquire) != seen => {
                return Err(error.clone())
            }
            _ => {}
        }

        let outcome = self.fetch_with_retries().await;
        *cache = match &outcome {
            Ok(fetched) => Cached::Token(fetched.clone()),
            Err(error) => Cached::Failed(error.clone()),
        };
        self.finished.fetch_add(1, Ordering::Release);
        outcome.map(|fetched| fetched.token)
    }

    async fn fetch_with_retries(&self) -> Result<CachedToken, IdentityError> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            match self.fetch().await {
                Ok(token) => {
                    tracing::info!(
                        source = %self.source.describe(),
                        expires_in = token.expires_on.saturating_sub(now()),
                        ms = started.elapsed().as_millis() as u64,
                        "fetched an entra token for web pubsub"
                    );
                    return Ok(token);
                }
                Err(err) if err.is_transient() && attempt < FETCH_ATTEMPTS => {
                    tracing::warn!(error = %err, attempt, "entra token request failed; trying again");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn fetch(&self) -> Result<CachedToken, IdentityError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let (endpoint, request) = match &self.source {
            TokenSource::ClientSecret {
                authority,
                tenant_id,
                client_id,
                client_secret,
            } => {
                let endpoint = format!(
                    "{}/{tenant_id}/oauth2/v2.0/token",
                    authority.trim_end_matches('/')
                );
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.expose()),
                    ("scope", WEB_PUBSUB_SCOPE),
                ];
                let body = form_encode(&form);
                let request = self
                    .http
                    .post(&endpoint)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(body);
                (endpoint, request)
            }
            TokenSource::ManagedIdentity {
                endpoint,
                header,
                client_id,
            } => {
                let mut query = vec![
                    ("api-version", "2019-08-01"),
                    ("resource", WEB_PUBSUB_RESOURCE),
                ];
                if let Some(id) = client_id {
                    query.push(("client_id", id.as_str()));
                }
                let url = format!("{endpoint}?{}", form_encode(&query));
                let request = self
                    .http
                    .get(&url)
                    .header("X-IDENTITY-HEADER", header.expose());
                (endpoint.clone(), request)
            }
        };

        let response = request
            .send()
            .await
            .map_err(|err| IdentityError::Unreachable {
                endpoint: endpoint.clone(),
                reason: super::client::root_cause(&err),
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(IdentityError::Refused {
                endpoint,
                status: status.as_u16(),
                message: explanation(&text),
            });
        }
        parse_token(&text, &endpoint)
    }
}

/// The token endpoints answer in slightly different shapes: `expires_in` (seconds, a number)
/// from Entra, `expires_on` (epoch seconds, often as a string) from managed identity.
fn parse_token(text: &str, endpoint: &str) -> Result<CachedToken, IdentityError> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: Option<String>,
        expires_in: Option<serde_json::Value>,
        expires_on: Option<serde_json::Value>,
    }
    let bad = |reason: &str| IdentityError::BadAnswer {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let answer: Answer = serde_json::from_str(text).map_err(|_| bad("the answer is not JSON"))?;
    let token = answer
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token"))?;

    let number = |value: &serde_json::Value| match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let fetched_on = now();
    let expires_on = match (
        answer.expires_on.as_ref().and_then(number),
        answer.expires_in.as_ref().and_then(number),
    ) {
        (Some(on), _) => on,
        (None, Some(seconds)) => fetched_on + seconds,
        (None, None) => return Err(bad("no expires_in or expires_on")),
    };
    if expires_on <= fetched_on {
        return Err(bad("the token has already expired"));
    }
    Ok(CachedToken {
        token: Secret::new(token),
        expires_on,
        fetched_on,
    })
}

/// What an identity endpoint said went wrong: `error_description` (Entra), `message`
/// (managed identity), or the start of the body.
fn explanation(text: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    field("error_description")
        .or_else(|| field("message"))
        .or_else(|| {
            parsed
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(|e| e.get("message"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .or_else(|| field("error"))
        .unwrap_or_else(|| text.chars().take(200).collect())
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// How requests to Web PubSub are authorized.
#[derive(Debug, Clone)]
pub enum Credential {
    AccessKey(AccessKey),
    Entra(std::sync::Arc<TokenProvider>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        let long = CachedToken {
            token: Secret::new("t"),
            fetched_on: 1000,
            expires_on: 1000 + 3600,
        };
        assert!(long.fresh(1000 + 3000));
        assert!(!long.fresh(1000 + 3301));
        let short = CachedToken {
            token: Secret::new("t"),
            fetched_on: 1000,
            expires_on: 1002,
        };
        assert!(short.fresh(1000));
        assert!(!short.fresh(1001));
    }

    #[test]
    fn both_answer_shapes_parse() {
        let entra = parse_token(
            r#"{"token_type":"Bearer","expires_in":3599,"access_token":"abc"}"#,
            "e",
        )
        .unwrap();
        assert_eq!(entra.token.expose(), "abc");
        assert!(entra.expires_on >= now() + 3598);
        let mi = parse_token(
            &format!(
                r#"{{"access_token":"x","expires_on":"{}","resource":"r"}}"#,
                now() + 100
            ),
            "e",
        )
        .unwrap();
        assert!(mi.expires_on > now());
        assert!(parse_token(r#"{"expires_in":10}"#, "e").is_err());
        assert!(parse_token("<html>", "e").is_err());
    }

    #[test]
    fn endpoint_errors_are_explained_in_their_own_words() {
        assert_eq!(
            explanation(
                r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#
            ),
            "AADSTS7000215: Invalid client secret provided."
        );
        assert_eq!(
            explanation(r#"{"error":{"code":"x","message":"identity not found"}}"#),
            "identity not found"
        );
        assert_eq!(explanation("plain text"), "plain text");
    }

    #[test]
    fn debug_hides_secrets() {
        let source = TokenSource::ClientSecret {
            authority: DEFAULT_AUTHORITY.into(),
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: Secret::new("very-secret-value"),
        };
        assert!(!format!("{source:?}").contains("very-secret-value"));
        assert!(!source.describe().contains("very-secret-value"));
    }
}
