//! Microsoft Entra ID access tokens on the REST API.
//!
//! This module owns everything about them: reading an issuer's signing keys (a JWKS) from a
//! file or a URL, keeping them in memory, fetching them again (at most once a minute) when a
//! token names a key the emulator has not seen, and checking a token against them: an RS256
//! signature by the key whose `kid` matches, the Web PubSub audience, and `exp` and `nbf`
//! with five minutes of clock skew. Only authentication is modelled: the token's roles,
//! issuer and tenant are not checked.
//!
//! Which kind of token a REST caller presents is decided by [`is_entra_token`]: HMAC tokens
//! (and anything whose header cannot be read) stay on the access-key path of [`crate::token`].
//! No error message, and no log line, contains a token.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};

use crate::config::JwksSource;

/// The audience of Entra tokens issued for Web PubSub (scope `https://webpubsub.azure.com/.default`).
pub const ENTRA_AUDIENCE: &str = "https://webpubsub.azure.com";

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 300;

/// Shortest time between two fetches of a JWKS URL caused by unknown `kid`s.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// Limit on one fetch of a JWKS URL, connecting included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest piece of a token's header or claims quoted back in an error message.
const QUOTE_LIMIT: usize = 100;

/// Why an Entra token was refused. Messages never include the token.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EntraError {
    #[error(
        "microsoft entra tokens are not enabled: no JWKS is configured (start the emulator with \
         --entra-jwks); access-key tokens must be signed with HS256"
    )]
    NotEnabled,
    #[error("entra token must be signed with RS256, got {0}")]
    Algorithm(String),
    #[error("entra token is not a well-formed JWT")]
    Malformed,
    #[error("entra token is signed with an unknown signing key (kid {0})")]
    UnknownKey(String),
    #[error("entra token has a bad signature: it does not match the signing key")]
    Signature,
    #[error("entra token has expired")]
    Expired,
    #[error("entra token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("entra token has no exp claim")]
    NoExpiry,
    #[error("entra token has the wrong audience {0}: expected {ENTRA_AUDIENCE}")]
    Audience(String),
}

impl EntraError {
    /// The `x-ms-error-code` (and body `code`) the refusal is answered with.
    pub fn code(&self) -> &'static str {
        match self {
            EntraError::NotEnabled => "EntraTokensNotEnabled",
            EntraError::Algorithm(_) => "UnsupportedTokenAlgorithm",
            EntraError::Malformed => "MalformedToken",
            EntraError::UnknownKey(_) => "UnknownSigningKey",
            EntraError::Signature => "InvalidTokenSignature",
            EntraError::Expired => "TokenExpired",
            EntraError::NotYetValid => "TokenNotYetValid",
            EntraError::NoExpiry => "TokenWithoutExpiry",
            EntraError::Audience(_) => "InvalidTokenAudience",
        }
    }
}

/// Why a JWKS could not be loaded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("not a JWKS (expected JSON {{\"keys\": [...]}}): {0}")]
    NotJwks(String),
    #[error("the JWKS has no RSA signing key")]
    NoRsaKey,
    #[error("jwks url must be an http:// or https:// url, got {0:?}")]
    Url(String),
    #[error("cannot fetch the JWKS from {url}: {reason}")]
    Fetch { url: String, reason: String },
}

/// One RSA public key of the issuer.
#[derive(Clone)]
struct SigningKey {
    kid: Option<String>,
    key: DecodingKey,
}

/// Where keys come from after start: a file is read once, a URL can be fetched again.
enum Origin {
    File,
    Url {
        url: String,
        client: reqwest::Client,
        /// When an unknown `kid` last caused a fetch. The lock also makes concurrent
        /// requests with unknown `kid`s wait for one fetch instead of each starting one.
        last_refetch: tokio::sync::Mutex<Option<Instant>>,
    },
}

/// The signing keys of one issuer, and how to refresh them.
pub struct EntraKeys {
    keys: RwLock<Arc<[SigningKey]>>,
    origin: Origin,
}

impl std::fmt::Debug for EntraKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.origin {
            Origin::File => "file",
            Origin::Url { url, .. } => url.as_str(),
        };
        f.debug_struct("EntraKeys")
            .field("source", &source)
            .field("keys", &self.current().len())
            .finish()
    }
}

impl EntraKeys {
    /// Reads the keys of a JWKS file.
    pub fn from_file(path: &Path) -> Result<Self, JwksError> {
        let keys = read_file(path)?;
        Ok(EntraKeys {
            keys: RwLock::new(keys.into()),
            origin: Origin::File,
        })
    }

    /// Loads the keys of `source`; a URL is fetched now and fails if it cannot be.
    pub async fn load(source: &JwksSource) -> Result<Self, JwksError> {
        let url = match source {
            JwksSource::File(path) => return Self::from_file(path),
            JwksSource::Url(url) => url,
        };
        let parsed = check_url(url)?;
        let mut builder = reqwest::Client::builder().timeout(FETCH_TIMEOUT);
        // A stand-in issuer on this machine is never behind the proxy the environment names.
        let host = parsed.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if loopback {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|err| JwksError::Fetch {
            url: url.clone(),
            reason: err.to_string(),
        })?;
        let keys = fetch(&client, url).await?;
        Ok(EntraKeys {
            keys: RwLock::new(keys.into()),
            origin: Origin::Url {
                url: url.clone(),
                client,
                last_refetch: tokio::sync::Mutex::new(None),
            },
        })
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// True when no key is held (never after a successful load).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<[SigningKey]> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, keys: Vec<SigningKey>) {
        match self.keys.write() {
            Ok(mut held) => *held = keys.into(),
            Err(poisoned) => *poisoned.into_inner() = keys.into(),
        }
    }

    /// The keys a token with `kid` may be signed with: those with that `kid`, or, for a
    /// token without one, those without one.
    fn candidates(&self, kid: Option<&str>) -> Vec<DecodingKey> {
        self.current()
            .iter()
            .filter(|k| k.kid.as_deref() == kid)
            .map(|k| k.key.clone())
            .collect()
    }

    /// Fetches a JWKS URL again because a token named `kid`, unless another fetch for that
    /// reason happened less than [`REFETCH_INTERVAL`] ago. Returns the keys for `kid` after it.
    async fn refetch_for(&self, kid: &str) -> Vec<DecodingKey> {
        let Origin::Url {
            url,
            client,
            last_refetch,
        } = &self.origin
        else {
            return Vec::new();
        };
        let mut last = last_refetch.lock().await;
        // Another request may have fetched the key while this one waited for the lock.
        let found = self.candidates(Some(kid));
        if !found.is_empty() {
            return found;
        }
        if last.is_some_and(|at| at.elapsed() < REFETCH_INTERVAL) {
            return Vec::new();
        }
        *last = Some(Instant::now());
        match fetch(client, url).await {
            Ok(keys) => {
                tracing::info!(url = %url, keys = keys.len(), "entra signing keys fetched again");
                self.replace(keys);
            }
            Err(err) => {
                tracing::warn!(error = %err, "entra signing keys could not be fetched again")
            }
        }
        self.candidates(Some(kid))
    }

    /// Checks an Entra access token: RS256, signed by a known key, for Web PubSub, and
    /// within its lifetime.
    pub async fn validate(&self, token: &str) -> Result<(), EntraError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| EntraError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(EntraError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.as_deref();
        let mut keys = self.candidates(kid);
        if keys.is_empty() {
            if let Some(kid) = kid {
                keys = self.refetch_for(kid).await;
            }
        }
        if keys.is_empty() {
            return Err(EntraError::UnknownKey(
                kid.map_or_else(|| "none".to_owned(), quote),
            ));
        }

        let mut result = Err(EntraError::Signature);
        for key in &keys {
            result = check(token, key);
            if result != Err(EntraError::Signature) {
                break;
            }
        }
        result
    }
}

/// True when `token`'s header names a public-key algorithm, which makes it an Entra token.
/// HMAC tokens, and tokens whose header cannot be read, are access-key tokens.
pub fn is_entra_token(token: &str) -> bool {
    jsonwebtoken::decode_header(token)
        .is_ok_and(|header| header.alg.family() != AlgorithmFamily::Hmac)
}

/// Checks a REST caller's Entra token against `keys`, the configured issuer's, if any.
pub async fn validate(keys: Option<&EntraKeys>, token: &str) -> Result<(), EntraError> {
    match keys {
        Some(keys) => keys.validate(token).await,
        None => Err(EntraError::NotEnabled),
    }
}

fn check(token: &str, key: &DecodingKey) -> Result<(), EntraError> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    // Compared below, so the error can say what the token had.
    validation.validate_aud = false;

    let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation).map_err(
        |err| match err.kind() {
            ErrorKind::InvalidSignature => EntraError::Signature,
            ErrorKind::ExpiredSignature => EntraError::Expired,
            ErrorKind::ImmatureSignature => EntraError::NotYetValid,
            ErrorKind::MissingRequiredClaim(_) => EntraError::NoExpiry,
            ErrorKind::InvalidAlgorithm => EntraError::Algorithm("another algorithm".to_owned()),
            _ => EntraError::Malformed,
        },
    )?;

    let is_ours = |aud: &str| aud.strip_suffix('/').unwrap_or(aud) == ENTRA_AUDIENCE;
    match data.claims.get("aud") {
        Some(serde_json::Value::String(aud)) if is_ours(aud) => Ok(()),
        Some(serde_json::Value::Array(auds))
            if auds.iter().filter_map(|a| a.as_str()).any(is_ours) =>
        {
            Ok(())
        }
        Some(serde_json::Value::String(aud)) => Err(EntraError::Audience(quote(aud))),
        Some(other) => Err(EntraError::Audience(quote(&other.to_string()))),
        None => Err(EntraError::Audience("(none)".to_owned())),
    }
}

/// A value from a token, quoted and cut short, for an error message.
fn quote(text: &str) -> String {
    let mut short: String = text.chars().take(QUOTE_LIMIT).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    format!("{short:?}")
}

/// Checks that `url` is an absolute http(s) URL with a host.
pub fn check_url(url: &str) -> Result<reqwest::Url, JwksError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| JwksError::Url(url.to_owned()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(JwksError::Url(url.to_owned()));
    }
    Ok(parsed)
}

/// Reads and parses a JWKS file, for start-up checks and for [`EntraKeys::from_file`].
pub fn check_file(path: &Path) -> Result<usize, JwksError> {
    read_file(path).map(|keys| keys.len())
}

fn read_file(path: &Path) -> Result<Vec<SigningKey>, JwksError> {
    let bytes = std::fs::read(path).map_err(|err| JwksError::Read {
        path: path.display().to_string(),
        reason: err.to_string(),
    })?;
    parse_jwks(&bytes)
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<SigningKey>, JwksError> {
    let failed = |reason: String| JwksError::Fetch {
        url: url.to_owned(),
        reason,
    };
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|err| failed(err.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("status {status}")));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|err| failed(err.to_string()))?;
    parse_jwks(&bytes)
}

/// The RSA signing keys of a JWKS. Keys of other types, keys for encryption and keys
/// meant for another algorithm are skipped; a JWKS left with none is an error.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<SigningKey>, JwksError> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set =
        serde_json::from_slice(bytes).map_err(|err| JwksError::NotJwks(err.to_string()))?;
    let keys: Vec<SigningKey> = set
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter(|jwk| matches!(jwk.algorithm, AlgorithmParameters::RSA(_)))
        .filter(|jwk| {
            !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
                && jwk
                    .common
                    .key_algorithm
                    .is_none_or(|alg| alg == KeyAlgorithm::RS256)
        })
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(SigningKey {
                kid: jwk.common.key_id,
                key,
            })
        })
        .collect();
    if keys.is_empty() {
        return Err(JwksError::NoRsaKey);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/entra-test-jwks.json"
    ));

    #[test]
    fn the_fixture_has_one_rsa_key_with_its_kid() {
        let keys = parse_jwks(FIXTURE.as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("rowcast-test-key"));
    }

    #[test]
    fn other_key_types_and_uses_are_skipped() {
        let mut set: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        let rsa = set["keys"][0].clone();
        let mut encryption = rsa.clone();
        encryption["use"] = "enc".into();
        encryption["kid"] = "enc".into();
        let mut other_alg = rsa.clone();
        other_alg["alg"] = "RS512".into();
        let mut no_alg = rsa.clone();
        no_alg.as_object_mut().unwrap().remove("alg");
        no_alg["kid"] = "no-alg".into();
        let symmetric = serde_json::json!({ "kty": "oct", "k": "c2VjcmV0", "kid": "oct" });
        let strange = serde_json::json!({ "kty": "XYZ", "kid": "strange" });
        set["keys"] = serde_json::json!([encryption, other_alg, symmetric, strange, no_alg]);
        let keys = parse_jwks(set.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("no-alg")]);

        set["keys"] = serde_json::json!([symmetric]);
        assert_eq!(
            parse_jwks(set.to_string().as_bytes()).err(),
            Some(JwksError::NoRsaKey)
        );
        assert!(matches!(parse_jwks(b"[1, 2]"), Err(JwksError::NotJwks(_))));
    }

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        assert!(check_url("http://127.0.0.1:9/keys").is_ok());
        assert!(check_url("https://login.microsoftonline.com/common/discovery/v2.0/keys").is_ok());
        for bad in [
            "ftp://example.com/keys",
            "http//example.com",
            "file:///etc/keys",
            "keys.json",
        ] {
            assert_eq!(
                check_url(bad).err(),
                Some(JwksError::Url(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn tokens_are_routed_by_algorithm_family() {
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let token = |alg: &str| {
            format!(
                "{}.{}.c2ln",
                b64(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
                b64("{}")
            )
        };
        for alg in ["RS256", "RS384", "PS256", "ES256", "EdDSA"] {
            assert!(is_entra_token(&token(alg)), "{alg}");
        }
        for alg in ["HS256", "HS384", "none", "XX1"] {
            assert!(!is_entra_token(&token(alg)), "{alg}");
        }
        assert!(!is_entra_token("not.a.jwt"));
    }

    #[test]
    fn long_values_are_cut_short_in_messages() {
        let quoted = quote(&"a".repeat(500));
        assert!(quoted.len() < 120, "{quoted}");
        assert_eq!(quote("x"), "\"x\"");
    }
}
