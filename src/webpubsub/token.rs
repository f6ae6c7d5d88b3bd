//! REST authentication with an access key: an HS256 JWT whose audience is the exact URL of
//! the request, signed fresh for every call (signing costs about a microsecond, far less
//! than caching would save).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// How long a REST token is valid. Short, because each one is used once, right away.
const LIFETIME: Duration = Duration::from_secs(300);

/// A Web PubSub access key. Never shown by `Debug` or `Display`.
#[derive(Clone)]
pub struct AccessKey {
    encoding: EncodingKey,
    raw: String,
}

impl AccessKey {
    pub fn new(key: String) -> Self {
        AccessKey {
            encoding: EncodingKey::from_secret(key.as_bytes()),
            raw: key,
        }
    }

    /// The key itself, for signing client tokens with the same key.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// A bearer token for a request to `url`.
    pub fn rest_token(&self, url: &str) -> String {
        self.sign(&RestClaims {
            aud: url,
            iat: now(),
            exp: now() + LIFETIME.as_secs(),
        })
    }

    /// A client access token for the hub endpoint `audience` (its http(s) form).
    pub fn client_token(
        &self,
        audience: &str,
        user: Option<&str>,
        roles: &[String],
        groups: &[String],
        lifetime: Duration,
    ) -> String {
        let iat = now();
        self.sign(&ClientClaims {
            aud: audience,
            sub: user,
            role: roles,
            groups,
            iat,
            exp: iat + lifetime.as_secs(),
        })
    }

    pub(crate) fn sign<T: Serialize>(&self, claims: &T) -> String {
        // Claims of strings and numbers always serialize, and HS256 with a byte key cannot
        // fail; an empty token would be refused by the service with a clear 401.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_default()
    }
}

impl PartialEq for AccessKey {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessKey(<redacted>)")
    }
}

#[derive(Serialize)]
struct RestClaims<'a> {
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Serialize)]
struct ClientClaims<'a> {
    aud: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    role: &'a [String],
    #[serde(
        rename = "webpubsub.group",
        skip_serializing_if = "<[String]>::is_empty"
    )]
    groups: &'a [String],
    iat: u64,
    exp: u64,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
