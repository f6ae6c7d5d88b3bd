//! Tokens: the HS256 JWTs REST callers present, and the client access tokens WebSocket
//! subscribers connect with. Both are signed with the hub's access key.
//!
//! Audiences are compared with the URL the request actually arrived on. The SDKs differ in
//! what they sign (JavaScript and .NET put the query in, Python orders the query its own way,
//! the documentation says to leave it out), so a REST token is accepted for the full URL as
//! received or for the same URL without its query.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::AccessKey;

/// Clock skew tolerated on `exp` and `nbf`, as the official emulator allows.
const LEEWAY_SECONDS: u64 = 300;

/// Why a token was refused. Messages never include the token itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("no access token: expected 'Authorization: Bearer <jwt>'")]
    Missing,
    #[error("access token is not a well-formed JWT")]
    Malformed,
    #[error("access token must be signed with HS256, got another algorithm")]
    Algorithm,
    #[error("access token signature does not match the access key")]
    Signature,
    #[error("access token has expired")]
    Expired,
    #[error("access token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("access token has no exp claim")]
    NoExpiry,
    #[error("access token audience {found:?} does not match the request url {expected:?}")]
    Audience { found: String, expected: String },
}

/// Claims of a client access token, with `role` and `webpubsub.group` accepted either as one
/// string or as an array, since both appear in the wild.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub role: Vec<String>,
    #[serde(
        rename = "webpubsub.group",
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub groups: Vec<String>,
    pub aud: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
}

fn one_or_many<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(de)? {
        None => Vec::new(),
        Some(OneOrMany::One(one)) => vec![one],
        Some(OneOrMany::Many(many)) => many,
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs a client access token for the WebSocket endpoint `audience` (its http(s) form).
pub fn sign_client_token(
    key: &AccessKey,
    audience: &str,
    user_id: Option<&str>,
    roles: &[String],
    groups: &[String],
    lifetime: Duration,
) -> String {
    let iat = now();
    let claims = ClientClaims {
        sub: user_id.filter(|u| !u.is_empty()).map(str::to_owned),
        role: roles.to_vec(),
        groups: groups.to_vec(),
        aud: audience.to_owned(),
        exp: iat + lifetime.as_secs(),
        iat,
    };

    sign(key, &claims)
}

/// Signs `claims` with HS256. Encoding a struct of strings and numbers cannot fail.
fn sign(key: &AccessKey, claims: &impl Serialize) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key.expose()),
    )
    .unwrap_or_default()
}

/// Signs a REST token for `url`, the way the SDKs do. Used by rowcast and by tests.
pub fn sign_rest_token(key: &AccessKey, url: &str, lifetime: Duration) -> String {
    #[derive(Serialize)]
    struct RestClaims<'a> {
        aud: &'a str,
        exp: u64,
        iat: u64,
    }
    let iat = now();
    let claims = RestClaims {
        aud: url,
        exp: iat + lifetime.as_secs(),
        iat,
    };
    sign(key, &claims)
}

/// Checks a REST caller's token: signature, lifetime, and an audience equal to one of
/// `audiences` (the request URL with and without its query).
pub fn validate_rest_token(
    key: &AccessKey,
    token: &str,
    audiences: &[String],
) -> Result<(), TokenError> {
    decode::<serde::de::IgnoredAny>(key, token, audiences).map(|_| ())
}

/// Checks a client access token against the hub endpoint URLs it may be issued for.
pub fn validate_client_token(
    key: &AccessKey,
    token: &str,
    audiences: &[String],
) -> Result<ClientClaims, TokenError> {
    decode::<ClientClaims>(key, token, audiences)
}

fn decode<T: serde::de::DeserializeOwned>(
    key: &AccessKey,
    token: &str,
    audiences: &[String],
) -> Result<T, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    // The audience is compared below, so the error can say what was expected.
    validation.validate_aud = false;

    let data = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &DecodingKey::from_secret(key.expose()),
        &validation,
    )
    .map_err(|err| match err.kind() {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
        ErrorKind::MissingRequiredClaim(_) => TokenError::NoExpiry,
        _ => TokenError::Malformed,
    })?;

    let found = data
        .claims
        .get("aud")
        .and_then(|aud| aud.as_str())
        .unwrap_or_default();
    if !audiences
        .iter()
        .any(|expected| audience_matches(found, expected))
    {
        return Err(TokenError::Audience {
            found: found.to_owned(),
            expected: audiences.first().cloned().unwrap_or_default(),
        });
    }

    serde_json::from_value(data.claims).map_err(|_| TokenError::Malformed)
}

/// Scheme and host are case-insensitive in URLs; the path and query are not. A single
/// trailing slash is tolerated, since some clients add one.
fn audience_matches(found: &str, expected: &str) -> bool {
    let found = found.strip_suffix('/').unwrap_or(found);
    let expected = expected.strip_suffix('/').unwrap_or(expected);
    let split = |url: &str| -> (String, String) {
        let authority_end = url
            .find("://")
            .and_then(|scheme| url[scheme + 3..].find('/').map(|slash| scheme + 3 + slash))
            .unwrap_or(url.len());
        (
            url[..authority_end].to_ascii_lowercase(),
            url[authority_end..].to_owned(),
        )
    };
    split(found) == split(expected)
}

/// Extracts a bearer token from an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, TokenError> {
    let value = header.ok_or(TokenError::Missing)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(TokenError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(TokenError::Missing);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AccessKey {
        AccessKey::default()
    }

    #[test]
    fn rest_token_round_trips_for_full_url_and_url_without_query() {
        let url = "http://localhost:8080/api/hubs/Chat/:send?api-version=2024-12-01";
        let token = sign_rest_token(&key(), url, Duration::from_secs(60));
        let audiences = [
            url.to_owned(),
            "http://localhost:8080/api/hubs/Chat/:send".to_owned(),
        ];
        assert_eq!(validate_rest_token(&key(), &token, &audiences), Ok(()));

        let bare = sign_rest_token(&key(), &audiences[1], Duration::from_secs(60));
        assert_eq!(validate_rest_token(&key(), &bare, &audiences), Ok(()));
    }

    #[test]
    fn wrong_key_audience_and_expiry_are_named() {
        let url = "http://localhost:8080/api/hubs/chat/:send";
        let audiences = [url.to_owned()];
        let other = AccessKey::new("z".repeat(44)).unwrap();
        let token = sign_rest_token(&other, url, Duration::from_secs(60));
        assert_eq!(
            validate_rest_token(&key(), &token, &audiences),
            Err(TokenError::Signature)
        );

        let token = sign_rest_token(
            &key(),
            "http://localhost:8080/api/hubs/other/:send",
            Duration::from_secs(60),
        );
        assert!(matches!(
            validate_rest_token(&key(), &token, &audiences),
            Err(TokenError::Audience { .. })
        ));

        let claims = serde_json::json!({ "aud": url, "exp": now() - 3600 });
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key().expose()),
        )
        .unwrap();
        assert_eq!(
            validate_rest_token(&key(), &expired, &audiences),
            Err(TokenError::Expired)
        );
        assert_eq!(
            validate_rest_token(&key(), "not.a.jwt", &audiences),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn client_claims_accept_a_single_role_string() {
        let aud = "http://localhost:8080/client/hubs/chat";
        let claims = serde_json::json!({
            "aud": aud, "exp": now() + 60, "sub": "u1",
            "role": "webpubsub.sendToGroup", "webpubsub.group": ["a", "b"]
        });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key().expose()),
        )
        .unwrap();
        let parsed = validate_client_token(&key(), &token, &[aud.to_owned()]).unwrap();
        assert_eq!(parsed.sub.as_deref(), Some("u1"));
        assert_eq!(parsed.role, ["webpubsub.sendToGroup"]);
        assert_eq!(parsed.groups, ["a", "b"]);
    }

    #[test]
    fn audience_host_is_case_insensitive_but_path_is_not() {
        assert!(audience_matches(
            "HTTP://LocalHost:8080/client/hubs/chat",
            "http://localhost:8080/client/hubs/chat/"
        ));
        assert!(!audience_matches(
            "http://localhost:8080/client/hubs/Chat",
            "http://localhost:8080/client/hubs/chat"
        ));
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(Some("Basic abc")), Err(TokenError::Missing));
        assert_eq!(bearer(None), Err(TokenError::Missing));
    }
}
