//! Web PubSub connection strings, parsed the way the official SDKs parse them:
//! `Endpoint=https://name.webpubsub.azure.com;AccessKey=...;Version=1.0;` with keys in any
//! case, an optional `Port`, and `http` allowed for local emulators.

use std::fmt;

use super::token::AccessKey;

/// A parsed connection string. `Debug` never shows the key.
#[derive(Clone)]
pub struct ConnectionString {
    /// Scheme, host and port, without a trailing slash: `https://name.webpubsub.azure.com`.
    pub endpoint: String,
    pub access_key: AccessKey,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("connection string is empty")]
    Empty,
    #[error("connection string part '{0}' is not of the form Key=Value")]
    Malformed(String),
    #[error("connection string has '{0}' twice")]
    Duplicate(String),
    #[error("connection string has no Endpoint")]
    MissingEndpoint,
    #[error("connection string has no AccessKey (identity-based connections are configured with WebPubSubConnectionString__serviceUri)")]
    MissingAccessKey,
    #[error("connection string Endpoint '{0}' is not an http or https URL with a host")]
    BadEndpoint(String),
    #[error("connection string Port '{0}' is not a number from 1 to 65535")]
    BadPort(String),
}

impl ConnectionString {
    pub fn parse(text: &str) -> Result<Self, ConnectionStringError> {
        if text.trim().is_empty() {
            return Err(ConnectionStringError::Empty);
        }

        let mut endpoint = None;
        let mut key = None;
        let mut port = None;
        let mut seen: Vec<String> = Vec::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                // Never echo a part that may hold the key.
                let shown = if part.len() > 12 { "<redacted>" } else { part };
                ConnectionStringError::Malformed(shown.to_owned())
            })?;
            let name = name.trim().to_ascii_lowercase();
            if seen.contains(&name) {
                return Err(ConnectionStringError::Duplicate(name));
            }
            seen.push(name.clone());
            let value = value.trim();
            match name.as_str() {
                "endpoint" => endpoint = Some(value.to_owned()),
                "accesskey" => key = Some(value.to_owned()),
                "port" => port = Some(value.to_owned()),
                // Version and anything newer are not needed to call the REST API.
                _ => {}
            }
        }

        let endpoint = endpoint
            .filter(|e| !e.is_empty())
            .ok_or(ConnectionStringError::MissingEndpoint)?;
        let key = key
            .filter(|k| !k.is_empty())
            .ok_or(ConnectionStringError::MissingAccessKey)?;
        let endpoint = normalize_endpoint(&endpoint, port.as_deref())?;
        Ok(ConnectionString {
            endpoint,
            access_key: AccessKey::new(key),
        })
    }
}

/// Adds `https://` when the scheme is missing (as the SDKs do), applies `Port`, and drops any
/// path or trailing slash.
fn normalize_endpoint(endpoint: &str, port: Option<&str>) -> Result<String, ConnectionStringError> {
    let bad = || ConnectionStringError::BadEndpoint(endpoint.to_owned());
    let with_scheme = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("https://{endpoint}")
    };
    let (scheme, rest) = with_scheme.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }

    let authority = match port {
        None => authority.to_owned(),
        Some(port) => {
            let number: u16 = port
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ConnectionStringError::BadPort(port.to_owned()))?;
            // Replace a port already in the endpoint; IPv6 literals keep their brackets.
            let host = match authority.rfind(':') {
                Some(i) if !authority[i..].contains(']') => &authority[..i],
                _ => authority,
            };
            format!("{host}:{number}")
        }
    };
    Ok(format!("{scheme}://{authority}"))
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("endpoint", &self.endpoint)
            .field("access_key", &self.access_key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

    #[test]
    fn parses_the_forms_the_sdks_accept() {
        let cs = ConnectionString::parse(&format!(
            "Endpoint=https://x.webpubsub.azure.com;AccessKey={KEY};Version=1.0;"
        ))
        .unwrap();
        assert_eq!(cs.endpoint, "https://x.webpubsub.azure.com");

        let cs = ConnectionString::parse(&format!(
            "endpoint=http://localhost;port=8080;accesskey={KEY}"
        ))
        .unwrap();
        assert_eq!(cs.endpoint, "http://localhost:8080");

        let cs = ConnectionString::parse(&format!(
            "Endpoint=http://localhost:8080/;AccessKey={KEY};Version=1.0;"
        ))
        .unwrap();
        assert_eq!(cs.endpoint, "http://localhost:8080");

        let cs =
            ConnectionString::parse(&format!("Endpoint=x.webpubsub.azure.com;AccessKey={KEY}"))
                .unwrap();
        assert_eq!(cs.endpoint, "https://x.webpubsub.azure.com");

        let cs = ConnectionString::parse(&format!(
            "Endpoint=http://127.0.0.1:1;Port=9000;AccessKey={KEY}"
        ))
        .unwrap();
        assert_eq!(cs.endpoint, "http://127.0.0.1:9000");
    }

    #[test]
    fn errors_name_what_is_wrong_without_the_key() {
        use ConnectionStringError::*;
        assert_eq!(ConnectionString::parse("").unwrap_err(), Empty);
        assert_eq!(
            ConnectionString::parse(&format!("AccessKey={KEY}")).unwrap_err(),
            MissingEndpoint
        );
        assert_eq!(
            ConnectionString::parse("Endpoint=http://h").unwrap_err(),
            MissingAccessKey
        );
        assert_eq!(
            ConnectionString::parse(&format!("Endpoint=ftp://h;AccessKey={KEY}")).unwrap_err(),
            BadEndpoint("ftp://h".into())
        );
        assert_eq!(
            ConnectionString::parse(&format!("Endpoint=http://h;Port=0;AccessKey={KEY}"))
                .unwrap_err(),
            BadPort("0".into())
        );
        assert_eq!(
            ConnectionString::parse(&format!(
                "Endpoint=http://h;endpoint=http://i;AccessKey={KEY}"
            ))
            .unwrap_err(),
            Duplicate("endpoint".into())
        );
        let err = ConnectionString::parse(&format!("Endpoint=http://h;{KEY}")).unwrap_err();
        assert!(!err.to_string().contains(KEY));
    }

    #[test]
    fn debug_hides_the_key() {
        let cs = ConnectionString::parse(&format!("Endpoint=http://h;AccessKey={KEY}")).unwrap();
        assert!(!format!("{cs:?}").contains(KEY));
    }
}
