//! `handler dev`: the whole pipeline on one machine, with no Azure account. It embeds the
//! Web PubSub emulator, serves the handler exactly as the Functions host would see it, prints
//! a subscriber URL, and with `--demo` posts a synthetic `dbo.Users` change every second
//! through the same `/sql-changes` HTTP path the host uses.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use webpubsub_emulator::{Config as EmulatorConfig, Emulator};

use crate::server::{self, Handler};
use crate::settings::{Config, Settings, SettingsError};

/// Hub and user the printed subscriber URL is for, matching the Logic App rowcast replaces.
pub const DEFAULT_HUB: &str = "SQLUsers";
pub const DEFAULT_USER: &str = "12345";

/// The function `--demo` posts to.
const DEMO_FUNCTION: &str = "sql-changes";

/// Options of `handler dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where the embedded emulator listens.
    pub emulator: SocketAddr,
    /// Where the handler listens (the host's side of the contract).
    pub handler: SocketAddr,
    /// Post a synthetic change every second.
    pub demo: bool,
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            emulator: SocketAddr::from(([127, 0, 0, 1], 8080)),
            handler: SocketAddr::from(([127, 0, 0, 1], crate::settings::DEFAULT_PORT)),
            demo: false,
        }
    }
}

/// Why `handler dev` could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot start the emulator on {addr}: {source}")]
    Emulator {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{0}")]
    Client(#[from] crate::webpubsub::SendError),
}

/// The running local stack.
#[derive(Debug)]
pub struct Dev {
    pub emulator: Emulator,
    pub handler_addr: SocketAddr,
    pub lines: Vec<String>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
    demo: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the emulator, then the handler pointed at it. Settings come from the environment
/// and `local.settings.json` in `app_root`, except the Web PubSub connection string, which
/// is always the embedded emulator's.
pub async fn start(
    options: &DevOptions,
    settings: Settings,
    app_root: &Path,
) -> Result<Dev, DevError> {
    let emulator_config = EmulatorConfig {
        listen: options.emulator,
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(emulator_config)
        .await
        .map_err(|source| DevError::Emulator {
            addr: options.emulator,
            source,
        })?;

    let mut settings = settings.with_local_settings(&app_root.join("local.settings.json"))?;
    settings.set("WebPubSubConnectionString", emulator.connection_string());
    if settings.get("WebPubSubHub").is_none() {
        settings.set("WebPubSubHub", DEFAULT_HUB);
    }
    if settings.get("WebPubSubTarget").is_none() {
        settings.set("WebPubSubTarget", format!("user:{DEFAULT_USER}"));
    }
    if settings.get("AzureWebJobsScriptRoot").is_none() {
        settings.set("AzureWebJobsScriptRoot", app_root.display().to_string());
    }
    let config = Config::from_settings(&settings)?;
    let handler = Handler::new(config)?;

    let listener = TcpListener::bind(options.handler)
        .await
        .map_err(|source| DevError::Listen {
            addr: options.handler,
            source,
        })?;
    let handler_addr = listener.local_addr().map_err(|source| DevError::Listen {
        addr: options.handler,
        source,
    })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, handler.clone(), async {
        let _ = stopped.await;
    }));

    let lines = banner(&emulator, &handler, handler_addr).await;
    let demo = options
        .demo
        .then(|| tokio::spawn(demo(handler_addr, handler)));
    Ok(Dev {
        emulator,
        handler_addr,
        lines,
        server,
        stop,
        demo,
    })
}

impl Dev {
    /// Stops the demo, the handler (letting invocations finish) and the emulator.
    pub async fn shutdown(self) -> std::io::Result<()> {
        if let Some(demo) = self.demo {
            demo.abort();
        }
        let _ = self.stop.send(());
        let served = self.server.await.map_err(std::io::Error::other)?;
        self.emulator.shutdown().await?;
        served
    }
}

async fn banner(emulator: &Emulator, handler: &Handler, handler_addr: SocketAddr) -> Vec<String> {
    let endpoint = emulator.endpoint();
    let hub = handler
        .config
        .function(DEMO_FUNCTION)
        .map(|f| f.route.hub.clone())
        .unwrap_or_else(|| DEFAULT_HUB.to_owned());

    let mut lines = vec![
        format!("web pubsub emulator  {endpoint}"),
        format!("connection string    {}", emulator.connection_string()),
        format!("console              {endpoint}/"),
        format!("handler              http://{handler_addr}/"),
    ];
    for function in &handler.config.functions {
        lines.push(format!(
            "function             POST http://{handler_addr}/{}  table {}  hub {}  target {}",
            function.function, function.route.table, function.route.hub, function.route.target
        ));
    }
    lines.push(format!(
        "negotiate            POST http://{handler_addr}/negotiate  (host contract; Data.req)"
    ));

    // The same path the negotiate function takes, so the printed URL is what a subscriber
    // would get from it.
    let day = Duration::from_secs(24 * 3600);
    match handler
        .client
        .client_access(&hub, Some(DEFAULT_USER), &[], &[], day)
        .await
    {
        Ok(access) => {
            lines.push(format!(
                "subscriber (user {DEFAULT_USER} on hub {hub}, valid 24 h):"
            ));
            lines.push(format!("  {}", access.url));
        }
        Err(err) => lines.push(format!("subscriber url unavailable: {err}")),
    }
    lines
}

/// Posts one synthetic `dbo.Users` change per second, encoded exactly as the host encodes
/// the SQL trigger's string value (a JSON string holding a JSON string).
async fn demo(handler_addr: SocketAddr, handler: Arc<Handler>) {
    let Some(function) = handler.config.function(DEMO_FUNCTION).cloned() else {
        tracing::warn!("--demo needs a function named {DEMO_FUNCTION}");
        return;
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_default();
    let url = format!("http://{handler_addr}/{}", function.function);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let regions = ["eu", "us", "asia"];

    for n in 0u64.. {
        ticker.tick().await;
        let id = n % 5 + 1;
        // Five inserts first, then mostly updates, with a delete now and then.
        let operation = match n {
            0..=4 => 0,
            _ if n % 10 == 9 => 2,
            _ => 1,
        };
        let item = if operation == 2 {
            serde_json::json!({ "Id": id })
        } else {
            serde_json::json!({
                "Id": id,
                "OwnerId": DEFAULT_USER,
                "UserName": format!("user{id}"),
                "Email": format!("user{id}@example.com"),
                "Region": regions[(n as usize) % regions.len()],
                "Visits": n,
            })
        };
        let changes = serde_json::json!([{ "Operation": operation, "Item": item }]).to_string();
        let value = serde_json::to_string(&serde_json::to_string(&changes).unwrap_or_default())
            .unwrap_or_default();
        let body = format!(
            r#"{{"Data":{{"{}":{value}}},"Metadata":{{"sys":{{"MethodName":"{}","UtcNow":"","RandGuid":""}}}}}}"#,
            function.binding, function.function
        );

        let request = http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-azure-functions-invocationid", format!("demo-{n}"))
            .body(body);
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                // Without a Functions host nothing stores dead letters; say so rather than
                // let the change vanish quietly.
                let answer: serde_json::Value = response.json().await.unwrap_or_default();
                if answer["Outputs"].as_object().is_some_and(|o| !o.is_empty()) {
                    tracing::warn!(log = %answer["Logs"][0], "demo change became a dead letter, which handler dev does not store");
                }
            }
            Ok(response) => {
                tracing::warn!(status = %response.status(), "demo change was not delivered")
            }
            Err(err) => tracing::warn!(error = %err, "demo change could not be posted"),
        }
    }
}
