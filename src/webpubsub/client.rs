//! The Web PubSub REST client rowcast publishes with. One instance lives for the whole
//! process, so its pooled HTTP connections are reused across invocations.

use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::connection_string::ConnectionString;
use super::credential::{Credential, IdentityError, TokenProvider, TokenSource};
use super::token::AccessKey;
use crate::route::Address;

/// The data-plane API version rowcast speaks.
pub const API_VERSION: &str = "2024-12-01";

/// Everything but RFC 3986's unreserved characters is escaped in a path segment, so user
/// ids and group names with `/`, `?`, `#` or spaces reach the right resource.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a send did not reach Web PubSub. Never contains the token or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("web pubsub did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect to web pubsub at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("web pubsub answered {status}{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        status: u16,
        code: Option<String>,
        message: String,
        /// The service's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    #[error("web pubsub request failed: {0}")]
    Transport(String),
    #[error("no entra token for web pubsub: {0}")]
    Identity(IdentityError),
}

impl SendError {
    /// How long the service asked to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether trying again later may succeed: timeouts, connection failures, throttling and
    /// server-side errors.
    pub fn is_transient(&self) -> bool {
        match self {
            SendError::Timeout(_) | SendError::Connect { .. } | SendError::Transport(_) => true,
            SendError::Status { status, .. } => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
            // The token provider has already retried its own failures; trying again per
            // send would multiply the requests to the identity endpoint.
            SendError::Identity(_) => false,
        }
    }
}

/// Which Web PubSub resource to publish to, and how to authenticate.
#[derive(Debug, Clone)]
pub enum Publisher {
    /// A connection string with an access key.
    Key(ConnectionString),
    /// An endpoint and an Entra identity (the Functions identity-based connection form).
    Identity {
        endpoint: String,
        source: TokenSource,
    },
}

impl Publisher {
    pub fn endpoint(&self) -> &str {
        match self {
            Publisher::Key(connection) => &connection.endpoint,
            Publisher::Identity { endpoint, .. } => endpoint,
        }
    }
}

/// A client access URL, as the SDKs' `getClientAccessToken` returns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientAccess {
    pub url: String,
    #[serde(rename = "baseUrl")]
    pub base_url: String,
    pub token: String,
}

/// A REST publisher bound to one Web PubSub resource.
#[derive(Debug, Clone)]
pub struct WebPubSub {
    http: reqwest::Client,
    endpoint: String,
    credential: Credential,
    timeout: Duration,
}

impl WebPubSub {
    /// A client for `publisher`. `timeout` bounds each request, connecting included.
    pub fn new(publisher: &Publisher, timeout: Duration) -> Result<Self, SendError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .map_err(|err| SendError::Transport(err.to_string()))?;
        let credential = match publisher {
            Publisher::Key(connection) => Credential::AccessKey(connection.access_key.clone()),
            Publisher::Identity { source, .. } => {
                Credential::Entra(Arc::new(TokenProvider::new(source.clone(), http.clone())))
            }
        };
        Ok(WebPubSub {
            http,
            endpoint: publisher.endpoint().to_owned(),
            credential,
            timeout,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The access key, when publishing with one.
    pub fn access_key(&self) -> Option<&AccessKey> {
        match &self.credential {
            Credential::AccessKey(key) => Some(key),
            Credential::Entra(_) => None,
        }
    }

    /// The Entra token provider, when publishing with an identity.
    pub fn token_provider(&self) -> Option<&TokenProvider> {
        match &self.credential {
            Credential::AccessKey(_) => None,
            Credential::Entra(provider) => Some(provider),
        }
    }

    /// The REST URL that sends to `address` in `hub`.
    pub fn send_url(&self, hub: &str, address: &Address) -> String {
        let hub = utf8_percent_encode(hub, SEGMENT);
        let target = match address {
            Address::All => String::new(),
            Address::User(user) => format!("/users/{}", utf8_percent_encode(user, SEGMENT)),
            Address::Group(group) => format!("/groups/{}", utf8_percent_encode(group, SEGMENT)),
        };
        format!(
            "{}/api/hubs/{hub}{target}/:send?api-version={API_VERSION}",
            self.endpoint
        )
    }

    /// The bearer token for a request to `url`.
    async fn bearer(&self, url: &str) -> Result<String, SendError> {
        match &self.credential {
            Credential::AccessKey(key) => Ok(key.rest_token(url)),
            Credential::Entra(provider) => provider
                .token()
                .await
                .map(|t| t.expose().to_owned())
                .map_err(SendError::Identity),
        }
    }

    /// Sends one JSON message. Web PubSub answers 202 once it has accepted the message.
    pub async fn send_json(
        &self,
        hub: &str,
        address: &Address,
        body: String,
    ) -> Result<(), SendError> {
        let url = self.send_url(hub, address);
        let token = self.bearer(&url).await?;
        let request = self
            .http
            .post(&url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.execute(request).await.map(|_| ())
    }

    /// A client access URL for `user` on `hub`. With an access key the token is signed here;
    /// with an identity it comes from the service's `:generateToken` operation, since there
    /// is no key to sign with.
    pub async fn client_access(
        &self,
        hub: &str,
        user: Option<&str>,
        roles: &[String],
        groups: &[String],
        lifetime: Duration,
    ) -> Result<ClientAccess, SendError> {
        let hub_segment = utf8_percent_encode(hub, SEGMENT).to_string();
        // The token names the hub as written; the URL carries it escaped.
        let audience = format!("{}/client/hubs/{hub}", self.endpoint);
        let token = match &self.credential {
            Credential::AccessKey(key) => {
                key.client_token(&audience, user, roles, groups, lifetime)
            }
            Credential::Entra(_) => {
                let mut query = vec![
                    ("api-version".to_owned(), API_VERSION.to_owned()),
                    (
                        "minutesToExpire".to_owned(),
                        (lifetime.as_secs() / 60).max(1).to_string(),
                    ),
                ];
                if let Some(user) = user {
                    query.push(("userId".to_owned(), user.to_owned()));
                }
                query.extend(roles.iter().map(|r| ("role".to_owned(), r.clone())));
                query.extend(groups.iter().map(|g| ("group".to_owned(), g.clone())));
                let query: Vec<String> = query
                    .iter()
                    .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, SEGMENT)))
                    .collect();
                let url = format!(
                    "{}/api/hubs/{hub_segment}/:generateToken?{}",
                    self.endpoint,
                    query.join("&")
                );
                let bearer = self.bearer(&url).await?;
                let text = self
                    .execute(self.http.post(&url).bearer_auth(bearer))
                    .await?;
                serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_owned))
                    .ok_or_else(|| {
                        SendError::Transport("generateToken answered without a token".into())
                    })?
            }
        };

        let http_url = format!("{}/client/hubs/{hub_segment}", self.endpoint);
        let base_url = http_url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        Ok(ClientAccess {
            url: format!("{base_url}?access_token={token}"),
            base_url,
            token,
        })
    }

    /// Sends a request and returns the body of a success, or the service's error.
    async fn execute(&self, request: reqwest::RequestBuilder) -> Result<String, SendError> {
        let response = request
            .send()
            .await
            .map_err(|err| self.transport_error(err))?;
        let status = response.status();
        if status.is_success() {
            return response
                .text()
                .await
                .map_err(|err| self.transport_error(err));
        }
        let code = response
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Only the delay-seconds form; an HTTP date is rare from Azure services and would
        // need a clock that agrees with theirs anyway.
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| truncate(&text, 200));
        Err(SendError::Status {
            status: status.as_u16(),
            code,
            message,
            retry_after,
        })
    }

    fn transport_error(&self, err: reqwest::Error) -> SendError {
        if err.is_timeout() {
            SendError::Timeout(self.timeout)
        } else if err.is_connect() {
            SendError::Connect {
                endpoint: self.endpoint.clone(),
                reason: root_cause(&err),
            }
        } else {
            SendError::Transport(root_cause(&err))
        }
    }
}

/// The innermost error's text, which says what actually went wrong ("connection refused").
pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> WebPubSub {
        let cs = ConnectionString::parse(
            "Endpoint=http://localhost:8080;AccessKey=ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH",
        )
        .unwrap();
        WebPubSub::new(&Publisher::Key(cs), Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn send_urls_escape_path_segments() {
        let c = client();
        assert_eq!(
            c.send_url("SQLUsers", &Address::All),
            "http://localhost:8080/api/hubs/SQLUsers/:send?api-version=2024-12-01"
        );
        assert_eq!(
            c.send_url("h", &Address::User("a/b c".into())),
            "http://localhost:8080/api/hubs/h/users/a%2Fb%20c/:send?api-version=2024-12-01"
        );
        assert_eq!(
            c.send_url("h", &Address::Group("orders-eu.1_~".into())),
            "http://localhost:8080/api/hubs/h/groups/orders-eu.1_~/:send?api-version=2024-12-01"
        );
    }

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        let status = |status| SendError::Status {
            retry_after: None,
            status,
            code: None,
            message: String::new(),
        };
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(400).is_transient());
        assert!(!status(401).is_transient());
        assert!(SendError::Timeout(Duration::from_secs(1)).is_transient());
    }
}
