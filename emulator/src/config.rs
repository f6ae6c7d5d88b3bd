//! Emulator settings: where it listens, which access key signs tokens, where Microsoft Entra
//! signing keys come from, and the limits it enforces. Everything is validated once, when the
//! emulator starts.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The access key of the official Web PubSub emulator. It is public on purpose: using the same
/// one lets a project swap either emulator for the other without touching its settings.
pub const DEFAULT_ACCESS_KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

/// Largest REST body or WebSocket frame the service accepts (1 MiB, as Web PubSub documents).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// A key that signs and checks every token. It never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey(String);

/// What is wrong with a setting, reported before anything listens.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("access key must be at least 32 bytes long, got {0}")]
    KeyTooShort(usize),
    #[error("access key must not contain ';' (it would break the connection string)")]
    KeyHasSemicolon,
    #[error("outbound queue size must be between 1 and 1000000, got {0}")]
    QueueSize(usize),
    #[error("entra JWKS: {0}")]
    EntraJwks(#[from] crate::entra::JwksError),
}

/// Where the signing keys of Microsoft Entra tokens come from: a JWKS document, as issuers
/// publish at `https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched when the emulator starts, and again when a token names an unknown key.
    Url(String),
    /// Read once, when the emulator starts.
    File(PathBuf),
}

impl JwksSource {
    /// Reads a command-line or environment value: one starting with `http://` or `https://`
    /// is a URL, anything else a path.
    pub fn parse(text: &str) -> JwksSource {
        let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            JwksSource::Url(text.to_owned())
        } else {
            JwksSource::File(PathBuf::from(text))
        }
    }
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Url(url) => f.write_str(url),
            JwksSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl AccessKey {
    /// Checks the key the way the official emulator does: long enough for HS256 and safe to
    /// place in a connection string.
    pub fn new(key: impl Into<String>) -> Result<Self, ConfigError> {
        let key = key.into();
        if key.len() < 32 {
            return Err(ConfigError::KeyTooShort(key.len()));
        }
        if key.contains(';') {
            return Err(ConfigError::KeyHasSemicolon);
        }
        Ok(AccessKey(key))
    }

    /// The key's bytes, for signing. Deliberately not `Display`.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// True for the public development key, which may be printed.
    pub fn is_public_default(&self) -> bool {
        self.0 == DEFAULT_ACCESS_KEY
    }
}

impl Default for AccessKey {
    fn default() -> Self {
        AccessKey(DEFAULT_ACCESS_KEY.to_owned())
    }
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessKey(<redacted>)")
    }
}

/// Settings of one emulator instance.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The key REST callers and client tokens are signed with.
    pub access_key: AccessKey,
    /// Frames waiting for one subscriber's socket before it counts as stalled.
    pub outbound_queue: usize,
    /// How long a reliable connection's session waits for its client to reconnect.
    pub reconnect_window: Duration,
    /// Messages a reliable session keeps until the client acknowledges them.
    pub reliable_buffer_messages: usize,
    /// Bytes a reliable session keeps until the client acknowledges them.
    pub reliable_buffer_bytes: usize,
    /// The JWKS of the issuer whose RS256 Microsoft Entra tokens REST callers may present
    /// instead of access-key tokens; `None` refuses them.
    pub entra_jwks: Option<JwksSource>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            access_key: AccessKey::default(),
            outbound_queue: 4096,
            reconnect_window: Duration::from_secs(30),
            reliable_buffer_messages: 1000,
            reliable_buffer_bytes: 16 * 1024 * 1024,
            entra_jwks: None,
        }
    }
}

impl Config {
    /// Rejects settings the emulator cannot honour.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.outbound_queue) {
            return Err(ConfigError::QueueSize(self.outbound_queue));
        }
        // A file must hold a usable JWKS now; a URL is fetched when the emulator starts.
        match &self.entra_jwks {
            None => {}
            Some(JwksSource::File(path)) => {
                crate::entra::check_file(path)?;
            }
            Some(JwksSource::Url(url)) => {
                crate::entra::check_url(url)?;
            }
        }
        Ok(())
    }
}

/// The connection string for an emulator reachable at `addr`, in the form SDKs parse.
///
/// Loopback addresses are written as `localhost`, as the official emulator prints them. A key
/// other than the public development key is replaced by a placeholder so it never reaches a
/// terminal or a log.
pub fn connection_string(addr: SocketAddr, key: &AccessKey) -> String {
    let host = if addr.ip().is_loopback() {
        "localhost".to_owned()
    } else {
        addr.ip().to_string()
    };
    let key = if key.is_public_default() {
        DEFAULT_ACCESS_KEY
    } else {
        "<the key given with --access-key>"
    };
    format!(
        "Endpoint=http://{host}:{};AccessKey={key};Version=1.0;",
        addr.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_unsafe_keys_are_refused() {
        assert_eq!(AccessKey::new("short"), Err(ConfigError::KeyTooShort(5)));
        let with_semicolon = format!("{};", "k".repeat(40));
        assert_eq!(
            AccessKey::new(with_semicolon),
            Err(ConfigError::KeyHasSemicolon)
        );
        assert!(AccessKey::new("k".repeat(32)).is_ok());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = AccessKey::new("secret-secret-secret-secret-secret").unwrap();
        assert!(!format!("{key:?}").contains("secret"));
        let config = Config {
            access_key: key,
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("secret"));
    }

    #[test]
    fn connection_string_matches_the_official_emulator() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
        assert_eq!(
            connection_string(addr, &AccessKey::default()),
            "Endpoint=http://localhost:8080;AccessKey=ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH;Version=1.0;"
        );
        let custom = AccessKey::new("x".repeat(40)).unwrap();
        assert!(!connection_string(addr, &custom).contains("xxxx"));
    }

    const FIXTURE_JWKS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/entra-test-jwks.json"
    );

    #[test]
    fn jwks_source_is_a_url_only_with_an_http_scheme() {
        assert_eq!(
            JwksSource::parse("https://login.example/keys"),
            JwksSource::Url("https://login.example/keys".into())
        );
        assert_eq!(
            JwksSource::parse("HTTP://127.0.0.1:9/k"),
            JwksSource::Url("HTTP://127.0.0.1:9/k".into())
        );
        assert_eq!(
            JwksSource::parse("keys.json"),
            JwksSource::File("keys.json".into())
        );
        assert_eq!(
            JwksSource::parse("/etc/http:/x"),
            JwksSource::File("/etc/http:/x".into())
        );
        assert_eq!(
            JwksSource::parse("ftp://host/keys"),
            JwksSource::File("ftp://host/keys".into())
        );
    }

    #[test]
    fn a_jwks_file_must_exist_and_hold_an_rsa_key() {
        let with = |source: JwksSource| {
            Config {
                entra_jwks: Some(source),
                ..Config::default()
            }
            .validate()
        };
        assert_eq!(with(JwksSource::File(FIXTURE_JWKS.into())), Ok(()));

        let missing = with(JwksSource::File("/nonexistent/entra-jwks.json".into())).unwrap_err();
        assert!(matches!(
            missing,
            ConfigError::EntraJwks(crate::entra::JwksError::Read { .. })
        ));
        assert!(
            missing.to_string().contains("/nonexistent/entra-jwks.json"),
            "{missing}"
        );

        let pem = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/entra-test-key.pem"
        );
        let not_json = with(JwksSource::File(pem.into())).unwrap_err();
        assert!(
            matches!(
                not_json,
                ConfigError::EntraJwks(crate::entra::JwksError::NotJwks(_))
            ),
            "{not_json}"
        );
        // The private key's contents are never quoted back.
        assert!(!not_json.to_string().contains("MII"), "{not_json}");

        assert_eq!(
            with(JwksSource::Url("http://127.0.0.1:9/keys".into())),
            Ok(())
        );
        assert!(matches!(
            with(JwksSource::Url("gopher://127.0.0.1/keys".into())),
            Err(ConfigError::EntraJwks(crate::entra::JwksError::Url(_)))
        ));
    }
}
