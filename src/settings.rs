//! App settings, read and validated once at start.
//!
//! Settings come from the environment, as the Functions host passes app settings to a custom
//! handler; `handler dev` also reads `local.settings.json`. A value that cannot work stops the
//! handler with one line naming the setting, before the host sends it anything.
//!
//! Routing: `WebPubSubHub` and `WebPubSubTarget` are the defaults for every SQL-triggered
//! function. `RowcastRoutes` (a JSON object keyed by function name) overrides them per
//! function, so an app with one function per table can send each table somewhere else:
//!
//! ```json
//! {"orders-changes": {"hub": "Orders", "target": "group:orders-{Region}"}}
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::functions::{self, QueueFunction, SqlFunction};
use crate::route::{check_hub, Route, RouteError, RouteSpec, Target};
use crate::webpubsub::{
    ConnectionString, ConnectionStringError, Publisher, Secret, TokenSource, DEFAULT_AUTHORITY,
};

/// Port the handler listens on when the host does not say (as in the Functions quickstart).
pub const DEFAULT_PORT: u16 = 3000;

/// A bad setting, named.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("WebPubSubConnectionString: {0}")]
    ConnectionString(#[from] ConnectionStringError),
    #[error("{name}: {source}")]
    Route { name: String, source: RouteError },
    #[error(transparent)]
    Functions(#[from] functions::FunctionsError),
    #[error("no SQL-triggered function found under {0} and none declared in RowcastRoutes")]
    NoFunctions(String),
}

/// Raw settings by name.
#[derive(Debug, Clone, Default)]
pub struct Settings(HashMap<String, String>);

impl Settings {
    pub fn from_env() -> Self {
        Settings(std::env::vars().collect())
    }

    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Settings(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Adds the `Values` of a `local.settings.json` file for names not already set, which
    /// is how `func start` treats them.
    pub fn with_local_settings(mut self, path: &Path) -> Result<Self, SettingsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(self),
            Err(err) => {
                return Err(SettingsError::Invalid {
                    name: path.display().to_string(),
                    reason: err.to_string(),
                })
            }
        };
        #[derive(serde::Deserialize)]
        struct LocalSettings {
            #[serde(rename = "Values", default)]
            values: HashMap<String, serde_json::Value>,
        }
        let local: LocalSettings =
            serde_json::from_str(&text).map_err(|err| SettingsError::Invalid {
                name: path.display().to_string(),
                reason: format!("expected {{\"Values\": {{...}}}}: {err}"),
            })?;
        for (name, value) in local.values {
            let value = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            self.0.entry(name).or_insert(value);
        }
        Ok(self)
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(name.to_owned(), value.into());
    }

    /// A setting's value. Names match exactly first, then ignoring case, since app settings
    /// are case-insensitive in Azure.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .or_else(|| {
                self.0
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            })
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
        &self,
        name: &str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, SettingsError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        match text.trim().parse::<T>() {
            Ok(value) if value >= min && value <= max => Ok(value),
            _ => Err(SettingsError::Invalid {
                name: name.to_owned(),
                reason: format!("expected a whole number from {min} to {max}, got '{text}'"),
            }),
        }
    }
}

/// One SQL-triggered function and where its changes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRoute {
    pub function: String,
    /// Key of the changes in the invocation's `Data`.
    pub binding: String,
    pub route: Route,
    /// The queue output binding that keeps undeliverable changes, when the function has one.
    pub dead_letters: Option<String>,
}

/// The validated configuration of the handler.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    /// The Web PubSub resource and how rowcast authenticates to it.
    pub publisher: Publisher,
    pub functions: Vec<FunctionRoute>,
    /// Queue-triggered functions that redeliver dead letters.
    pub redelivery: Vec<QueueFunction>,
    /// The `negotiate` function's settings.
    pub negotiate: NegotiateSettings,
    /// Sends in flight at once for one batch.
    pub max_concurrency: usize,
    /// Limit on each REST call to Web PubSub, connecting included.
    pub request_timeout: Duration,
    /// Largest invocation body accepted from the host.
    pub max_body_bytes: usize,
    /// How each send is retried.
    pub retry: crate::retry::RetryPolicy,
    /// Time one batch may take, retries included. Well under the ~150 s after which the SQL
    /// trigger cancels an invocation.
    pub invocation_deadline: Duration,
}

impl Config {
    /// Reads every setting, checks it, and discovers the app's functions under the app root.
    pub fn from_settings(settings: &Settings) -> Result<Self, SettingsError> {
        let port = settings.number("FUNCTIONS_CUSTOMHANDLER_PORT", DEFAULT_PORT, 0, u16::MAX)?;
        let publisher = publisher(settings)?;
        let max_concurrency = settings.number("RowcastMaxConcurrency", 32usize, 1, 1024)?;
        let request_timeout = Duration::from_millis(settings.number(
            "RowcastRequestTimeoutMs",
            10_000u64,
            100,
            120_000,
        )?);
        let max_body_bytes =
            settings.number("RowcastMaxBodyBytes", 64 * 1024 * 1024usize, 1024, 1 << 30)?;

        let retry = crate::retry::RetryPolicy {
            max_attempts: settings.number("RowcastMaxAttempts", 5u32, 1, 20)?,
            base_delay: Duration::from_millis(settings.number(
                "RowcastRetryBaseMs",
                200u64,
                1,
                60_000,
            )?),
            max_delay: Duration::from_millis(settings.number(
                "RowcastRetryMaxMs",
                10_000u64,
                1,
                120_000,
            )?),
        };
        let invocation_deadline = Duration::from_millis(settings.number(
            "RowcastInvocationDeadlineMs",
            60_000u64,
            100,
            140_000,
        )?);

        let root = app_root(settings);
        let discovered = functions::discover(&root)?;
        let functions = routes(settings, &discovered.sql, &root)?;
        let redelivery = discovered.queues;
        let negotiate = NegotiateSettings::from_settings(settings)?;

        Ok(Config {
            port,
            publisher,
            functions,
            redelivery,
            negotiate,
            max_concurrency,
            request_timeout,
            max_body_bytes,
            retry,
            invocation_deadline,
        })
    }

    /// The redelivery function the host posts to at `/{name}`.
    pub fn redelivery(&self, name: &str) -> Option<&QueueFunction> {
        self.redelivery
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// The function the host posts to at `/{name}`; function names are case-insensitive.
    pub fn function(&self, name: &str) -> Option<&FunctionRoute> {
        self.functions
            .iter()
            .find(|f| f.function.eq_ignore_ascii_case(name))
    }
}

/// The Web PubSub resource, from either a connection string with an access key or the
/// Functions identity-based form (`WebPubSubConnectionString__serviceUri` and friends).
fn publisher(settings: &Settings) -> Result<Publisher, SettingsError> {
    const PREFIX: &str = "WebPubSubConnectionString__";
    let keyed = settings.get("WebPubSubConnectionString");
    let service_uri = settings.get("WebPubSubConnectionString__serviceUri");

    let service_uri = match (keyed, service_uri) {
        (Some(text), None) => return Ok(Publisher::Key(ConnectionString::parse(text)?)),
        (Some(_), Some(_)) => {
            return Err(SettingsError::Invalid {
                name: "WebPubSubConnectionString__serviceUri".into(),
                reason: "set either WebPubSubConnectionString (access key) or the identity-based \
                         WebPubSubConnectionString__serviceUri, not both"
                    .into(),
            })
        }
        (None, None) => return Err(SettingsError::Missing("WebPubSubConnectionString")),
        (None, Some(uri)) => uri,
    };

    let invalid = |name: &str, reason: String| SettingsError::Invalid {
        name: name.to_owned(),
        reason,
    };
    let endpoint = service_uri.trim().trim_end_matches('/').to_owned();
    // Entra tokens must not travel in clear text, except to an emulator on this machine.
    check_secure_url(&endpoint)
        .map_err(|reason| invalid("WebPubSubConnectionString__serviceUri", reason))?;

    let field = |name: &str| settings.get(&format!("{PREFIX}{name}"));
    let credential = field("credential").map(str::to_ascii_lowercase);
    let client_id = field("clientId").or_else(|| settings.get("AZURE_CLIENT_ID"));
    let tenant_id = field("tenantId").or_else(|| settings.get("AZURE_TENANT_ID"));
    let client_secret = field("clientSecret").or_else(|| settings.get("AZURE_CLIENT_SECRET"));

    let source = match (credential.as_deref(), tenant_id, client_id, client_secret) {
        (Some("managedidentity"), ..) | (None, _, _, None) => {
            let endpoint = settings.get("IDENTITY_ENDPOINT").ok_or_else(|| {
                invalid("IDENTITY_ENDPOINT", "managed identity needs IDENTITY_ENDPOINT and IDENTITY_HEADER, which App Service and Functions set when an identity is enabled".into())
            })?;
            let header = settings.get("IDENTITY_HEADER").ok_or_else(|| {
                invalid("IDENTITY_HEADER", "managed identity needs IDENTITY_ENDPOINT and IDENTITY_HEADER, which App Service and Functions set when an identity is enabled".into())
            })?;
            // For managed identity the client id picks a user-assigned identity, and only
            // the binding's own setting names one (AZURE_CLIENT_ID belongs to app secrets).
            TokenSource::ManagedIdentity {
                endpoint: endpoint.to_owned(),
                header: Secret::new(header),
                client_id: field("clientId").map(str::to_owned),
            }
        }
        (None | Some("clientsecret"), Some(tenant), Some(client), Some(secret)) => TokenSource::ClientSecret {
            authority: {
                let (name, value) = match (settings.get("RowcastAuthorityHost"), settings.get("AZURE_AUTHORITY_HOST")) {
                    (Some(v), _) => ("RowcastAuthorityHost", v),
                    (None, Some(v)) => ("AZURE_AUTHORITY_HOST", v),
                    (None, None) => ("RowcastAuthorityHost", DEFAULT_AUTHORITY),
                };
                let authority = value.trim().trim_end_matches('/').to_owned();
                // The client secret is posted there, so it gets the same rule as tokens.
                check_secure_url(&authority).map_err(|reason| invalid(name, reason))?;
                authority
            },
            tenant_id: tenant.to_owned(),
            client_id: client.to_owned(),
            client_secret: Secret::new(secret),
        },
        (None | Some("clientsecret"), ..) => {
            return Err(invalid(
                "WebPubSubConnectionString__clientSecret",
                "an app registration needs __tenantId, __clientId and __clientSecret (or AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)".into(),
            ))
        }
        (Some(other), ..) => {
            return Err(invalid(
                "WebPubSubConnectionString__credential",
                format!("expected managedidentity or clientsecret, got '{other}'"),
            ))
        }
    };
    Ok(Publisher::Identity { endpoint, source })
}

/// Accepts `https://host[:port]`, or `http://` to a loopback host. No user info, path,
/// query or fragment: they would only hide where secrets are sent.
fn check_secure_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("expected https://<host>, got '{url}'"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let tail = &rest[authority.len()..];
    if authority.is_empty()
        || authority.contains(['@', '?', '#'])
        || !(tail.is_empty() || tail == "/")
    {
        return Err(format!(
            "expected https://<host> with nothing after the host, got '{url}'"
        ));
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http"
            if matches!(
                host.to_ascii_lowercase().as_str(),
                "localhost" | "127.0.0.1" | "::1"
            ) =>
        {
            Ok(())
        }
        "http" => Err(format!(
            "'{url}' is plain http; secrets and tokens only go over https (or to localhost)"
        )),
        _ => Err(format!("expected https://<host>, got '{url}'")),
    }
}

/// Settings of the `negotiate` function, which hands subscribers their client access URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiateSettings {
    /// Hub the URL is for; `WebPubSubHub` unless `RowcastNegotiateHub` says otherwise.
    pub hub: Option<String>,
    /// Roles granted to the connection, e.g. `webpubsub.joinLeaveGroup`.
    pub roles: Vec<String>,
    /// Groups joined at connect; templates on the caller's `{userId}`.
    pub groups: Vec<crate::route::Template>,
    /// Lifetime of the client access token.
    pub lifetime: Duration,
    /// Honour a `userId` query parameter when no App Service identity is present. Only for
    /// local development: anyone could claim any user id.
    pub allow_query_user_id: bool,
    /// Browser origins allowed to call `negotiate` (`*` for any).
    pub cors_origins: Vec<String>,
}

impl NegotiateSettings {
    fn from_settings(settings: &Settings) -> Result<Self, SettingsError> {
        let list = |name: &str| -> Vec<String> {
            settings
                .get(name)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };

        let hub = settings
            .get("RowcastNegotiateHub")
            .or_else(|| settings.get("WebPubSubHub"))
            .map(str::to_owned);
        if let Some(hub) = &hub {
            let name = if settings.get("RowcastNegotiateHub").is_some() {
                "RowcastNegotiateHub"
            } else {
                "WebPubSubHub"
            };
            check_hub(hub).map_err(|source| SettingsError::Route {
                name: name.into(),
                source,
            })?;
        }
        let groups = list("RowcastNegotiateGroups")
            .iter()
            .map(|g| crate::route::Template::parse(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| SettingsError::Route {
                name: "RowcastNegotiateGroups".into(),
                source,
            })?;
        let minutes = settings.number("RowcastNegotiateMinutes", 60u64, 1, 24 * 60)?;
        let allow_query_user_id = match settings
            .get("RowcastNegotiateAllowQueryUserId")
            .map(str::to_ascii_lowercase)
        {
            None => false,
            Some(v) if v == "true" || v == "1" => true,
            Some(v) if v == "false" || v == "0" => false,
            Some(v) => {
                return Err(SettingsError::Invalid {
                    name: "RowcastNegotiateAllowQueryUserId".into(),
                    reason: format!("expected true or false, got '{v}'"),
                })
            }
        };

        Ok(NegotiateSettings {
            hub,
            roles: list("RowcastNegotiateRoles"),
            groups,
            lifetime: Duration::from_secs(minutes * 60),
            allow_query_user_id,
            cors_origins: list("RowcastCorsOrigins"),
        })
    }
}

/// Where the function folders are: the host's script root when set, else the working
/// directory (the host starts custom handlers in the app root).
fn app_root(settings: &Settings) -> PathBuf {
    settings
        .get("AzureWebJobsScriptRoot")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")))
}

fn routes(
    settings: &Settings,
    discovered: &[SqlFunction],
    root: &Path,
) -> Result<Vec<FunctionRoute>, SettingsError> {
    let overrides: BTreeMap<String, RouteSpec> = match settings.get("RowcastRoutes") {
        None => BTreeMap::new(),
        Some(text) => serde_json::from_str(text).map_err(|err| SettingsError::Invalid {
            name: "RowcastRoutes".into(),
            reason: format!(
                "expected a JSON object of function name to {{\"hub\", \"target\", \"table\", \"binding\"}}: {err}"
            ),
        })?,
    };

    let default_hub = settings.get("WebPubSubHub");
    let default_target = settings.get("WebPubSubTarget").unwrap_or("all");

    let mut out: Vec<FunctionRoute> = Vec::new();
    for function in discovered {
        let spec = overrides
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&function.name))
            .map(|(_, spec)| spec.clone())
            .unwrap_or_default();
        out.push(build(
            &function.name,
            &spec,
            Some(function),
            default_hub,
            default_target,
        )?);
    }
    for (name, spec) in &overrides {
        if out.iter().any(|f| f.function.eq_ignore_ascii_case(name)) {
            continue;
        }
        out.push(build(name, spec, None, default_hub, default_target)?);
    }

    if out.is_empty() {
        return Err(SettingsError::NoFunctions(root.display().to_string()));
    }
    Ok(out)
}

fn build(
    name: &str,
    spec: &RouteSpec,
    found: Option<&SqlFunction>,
    default_hub: Option<&str>,
    default_target: &str,
) -> Result<FunctionRoute, SettingsError> {
    let setting = |field: &str| {
        if spec_has(spec, field) {
            format!("RowcastRoutes.{name}.{field}")
        } else if field == "hub" {
            "WebPubSubHub".to_owned()
        } else {
            "WebPubSubTarget".to_owned()
        }
    };

    let hub = spec
        .hub
        .as_deref()
        .or(default_hub)
        .ok_or_else(|| SettingsError::Invalid {
            name: format!("RowcastRoutes.{name}.hub"),
            reason: "no hub for this function: set WebPubSubHub or give the route a hub".into(),
        })?
        .trim()
        .to_owned();
    check_hub(&hub).map_err(|source| SettingsError::Route {
        name: setting("hub"),
        source,
    })?;

    let target =
        Target::parse(spec.target.as_deref().unwrap_or(default_target)).map_err(|source| {
            SettingsError::Route {
                name: setting("target"),
                source,
            }
        })?;

    let table =
        match (&spec.table, found) {
            (Some(table), _) => table.clone(),
            (None, Some(found)) => found.table.clone(),
            (None, None) => return Err(SettingsError::Invalid {
                name: format!("RowcastRoutes.{name}"),
                reason:
                    "no function.json folder has this name, so the route must give its \"table\""
                        .into(),
            }),
        };
    let binding = spec
        .binding
        .clone()
        .or_else(|| found.map(|f| f.binding.clone()))
        .unwrap_or_else(|| "changes".to_owned());

    let dead_letters = spec
        .dead_letters
        .clone()
        .or_else(|| found.and_then(|f| f.dead_letters.clone()));

    Ok(FunctionRoute {
        function: name.to_owned(),
        binding,
        route: Route { hub, target, table },
        dead_letters,
    })
}

fn spec_has(spec: &RouteSpec, field: &str) -> bool {
    match field {
        "hub" => spec.hub.is_some(),
        "target" => spec.target.is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: &str = "Endpoint=http://localhost:8080;AccessKey=ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH;Version=1.0;";

    fn settings(extra: &[(&str, &str)]) -> Settings {
        let mut s = Settings::from_pairs([
            ("WebPubSubConnectionString", CS),
            ("AzureWebJobsScriptRoot", "/nonexistent/rowcast-root"),
        ]);
        for (k, v) in extra {
            s.set(k, *v);
        }
        s
    }

    #[test]
    fn routes_come_from_defaults_and_overrides() {
        let s = settings(&[
            ("WebPubSubHub", "SQLUsers"),
            ("WebPubSubTarget", "user:12345"),
            (
                "RowcastRoutes",
                r#"{"users":{"table":"dbo.Users"},"orders":{"hub":"Orders","target":"group:o-{Region}","table":"dbo.Orders"}}"#,
            ),
        ]);
        let config = Config::from_settings(&s).unwrap();
        let users = config.function("USERS").unwrap();
        assert_eq!(users.route.hub, "SQLUsers");
        assert!(matches!(users.route.target, Target::User(_)));
        assert_eq!(users.binding, "changes");
        let orders = config.function("orders").unwrap();
        assert_eq!(orders.route.hub, "Orders");
        assert_eq!(orders.route.table, "dbo.Orders");
        assert_eq!(config.port, DEFAULT_PORT);
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let err = Config::from_settings(&Settings::default()).unwrap_err();
        assert_eq!(err.to_string(), "WebPubSubConnectionString is not set");

        let err = Config::from_settings(&settings(&[("RowcastRoutes", "[1]")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("RowcastRoutes: expected a JSON object"),
            "{err}"
        );

        let err = Config::from_settings(&settings(&[
            ("WebPubSubHub", "h"),
            ("RowcastRoutes", r#"{"f":{"table":"t","target":"room:1"}}"#),
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("RowcastRoutes.f.target: invalid target"),
            "{err}"
        );

        let err = Config::from_settings(&settings(&[
            ("WebPubSubHub", "h"),
            ("WebPubSubTarget", "user:{"),
            ("RowcastRoutes", r#"{"f":{"table":"t"}}"#),
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("WebPubSubTarget: invalid template"),
            "{err}"
        );

        let err = Config::from_settings(&settings(&[("RowcastRoutes", r#"{"f":{"table":"t"}}"#)]))
            .unwrap_err();
        assert!(err.to_string().contains("set WebPubSubHub"), "{err}");

        let err = Config::from_settings(&settings(&[
            ("WebPubSubHub", "h"),
            ("RowcastRoutes", r#"{"f":{}}"#),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("must give its \"table\""), "{err}");

        let err = Config::from_settings(&settings(&[("WebPubSubHub", "h")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("no SQL-triggered function found"),
            "{err}"
        );

        let err = Config::from_settings(&settings(&[("RowcastMaxConcurrency", "0")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("RowcastMaxConcurrency: expected a whole number"),
            "{err}"
        );

        let err = Config::from_settings(&settings(&[("RowcastRoutes", r#"{"f":{"tabel":"t"}}"#)]))
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn secrets_only_go_over_https_or_to_loopback() {
        assert!(check_secure_url("https://x.webpubsub.azure.com").is_ok());
        assert!(check_secure_url("http://127.0.0.1:8080").is_ok());
        assert!(check_secure_url("http://localhost").is_ok());
        assert!(check_secure_url("http://[::1]:80").is_ok());
        assert!(check_secure_url("http://x.webpubsub.azure.com").is_err());
        assert!(check_secure_url("http://localhost:80@evil.example").is_err());
        assert!(check_secure_url("http://localhost.evil.example").is_err());
        assert!(check_secure_url("https://x/path").is_err());
        assert!(check_secure_url("ftp://x").is_err());
    }

    #[test]
    fn local_settings_fill_in_unset_values() {
        let path = std::env::temp_dir().join(format!("rowcast-local-{}.json", std::process::id()));
        std::fs::write(
            &path,
            r#"{"IsEncrypted":false,"Values":{"WebPubSubHub":"FromFile","WebPubSubTarget":"all"}}"#,
        )
        .unwrap();
        let s = Settings::from_pairs([("WebPubSubTarget", "user:1")])
            .with_local_settings(&path)
            .unwrap();
        assert_eq!(s.get("WebPubSubHub"), Some("FromFile"));
        assert_eq!(s.get("WebPubSubTarget"), Some("user:1"));
        std::fs::remove_file(&path).unwrap();
    }
}
