//! A local Azure Web PubSub service.
//!
//! The emulator speaks the service's data-plane REST API and its client WebSocket
//! protocols closely enough that the official SDKs cannot tell it from the real thing, so
//! rowcast (and anything else that publishes to Web PubSub) can be run and tested on one
//! machine with no Azure account. It runs as its own binary, `webpubsub-emulator`, or
//! embedded in another program through [`Emulator`].
//!
//! # Layout
//!
//! - [`config`]: settings, the access key, limits.
//! - [`token`]: REST and client access tokens (HS256 JWTs).
//! - [`entra`]: Microsoft Entra tokens on the REST API (RS256, checked against a JWKS).
//! - [`hub`]: hubs, users, groups and the send path.
//! - [`connection`]: one client connection and its bounded outbound queue.
//! - [`message`]: payloads and how each subprotocol frames them.
//! - [`filter`]: the OData filter of REST sends.
//! - [`permission`]: roles and granted permissions.
//! - [`fault`]: failures, latency and refused connections injected on demand, for tests.
//! - `rest`, `client`, `console`: the HTTP surfaces.

#![forbid(unsafe_code)]

pub mod config;
pub mod connection;
pub mod entra;
pub mod error;
pub mod fault;
pub mod filter;
pub mod hub;
pub mod message;
pub mod permission;
pub mod token;

mod client;
mod console;
mod rest;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get, post};
use axum::Router;
use base64::Engine;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{AccessKey, Config, ConfigError, JwksSource, DEFAULT_ACCESS_KEY};
pub use fault::{FaultSnapshot, Faults};
pub use token::{sign_client_token, sign_rest_token};

use connection::{CloseReason, CLOSE_GOING_AWAY};
use entra::EntraKeys;
use fault::FaultListener;
use hub::{Audience, Hubs};

/// State shared by every request of one emulator.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) hubs: Hubs,
    pub(crate) local_addr: SocketAddr,
    /// Signing keys of Entra tokens, when a JWKS is configured.
    pub(crate) entra: Option<EntraKeys>,
    /// Faults injected on demand; empty unless a test or the admin endpoint sets some.
    pub(crate) faults: Faults,
}

pub(crate) type AppState = Arc<Shared>;

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(console::page))
        .route("/console/api/client-url", post(console::client_url))
        .route("/console/api/info", get(console::info))
        .route("/client/hubs/{hub}", get(client::connect_path))
        .route("/client", get(client::connect_query))
        .route("/client/", get(client::connect_query))
        .route("/api/{*rest}", any(rest::handle))
        .route(
            "/emulator/faults",
            get(fault::admin_get)
                .put(fault::admin_put)
                .delete(fault::admin_delete),
        )
        .with_state(state)
}

/// A running emulator. Dropping it leaves the server running until the process ends; call
/// [`Emulator::shutdown`] to stop it and close every client connection.
#[derive(Debug)]
pub struct Emulator {
    shared: AppState,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<io::Result<()>>,
}

impl Emulator {
    /// Validates `config`, binds its address and starts serving. A JWKS URL is fetched
    /// first, and the start fails if it cannot be.
    pub async fn start(config: Config) -> io::Result<Emulator> {
        config
            .validate()
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err.to_string()))?;
        let listener = TcpListener::bind(config.listen).await?;
        Self::start_on(listener, config).await
    }

    /// Serves on an already bound listener, which lets tests bind port 0 first.
    ///
    /// A JWKS file is read here; a JWKS URL has to be fetched, which needs
    /// [`Emulator::start_on`] instead (this refuses it).
    pub fn serve(listener: TcpListener, config: Config) -> io::Result<Emulator> {
        let entra = match &config.entra_jwks {
            None => None,
            Some(JwksSource::File(path)) => {
                Some(EntraKeys::from_file(path).map_err(entra_io_error)?)
            }
            Some(JwksSource::Url(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a JWKS url is fetched at start: use Emulator::start or Emulator::start_on",
                ))
            }
        };
        Self::launch(listener, config, entra)
    }

    /// Like [`Emulator::serve`], and also fetches a JWKS URL before serving.
    pub async fn start_on(listener: TcpListener, config: Config) -> io::Result<Emulator> {
        let entra = match &config.entra_jwks {
            None => None,
            Some(source) => Some(EntraKeys::load(source).await.map_err(entra_io_error)?),
        };
        Self::launch(listener, config, entra)
    }

    fn launch(
        listener: TcpListener,
        config: Config,
        entra: Option<EntraKeys>,
    ) -> io::Result<Emulator> {
        let local_addr = listener.local_addr()?;
        if let (Some(source), Some(keys)) = (&config.entra_jwks, &entra) {
            tracing::info!(jwks = %source, keys = keys.len(), "microsoft entra tokens accepted");
        }
        let shared = Arc::new(Shared {
            config,
            hubs: Hubs::default(),
            local_addr,
            entra,
            faults: Faults::default(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(shared.clone());
        let listener = FaultListener::new(listener, shared.faults.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(address = %local_addr, "web pubsub emulator listening");
        Ok(Emulator {
            shared,
            stop: Some(stop),
            server,
        })
    }

    /// The address the emulator is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// `http://127.0.0.1:{port}`, the endpoint to put in a connection string.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.shared.local_addr)
    }

    /// The connection string SDKs and rowcast use to reach this emulator, with its key.
    pub fn connection_string(&self) -> String {
        let key = String::from_utf8_lossy(self.shared.config.access_key.expose()).into_owned();
        format!("Endpoint={};AccessKey={key};Version=1.0;", self.endpoint())
    }

    /// The fault plan of this emulator: failures, latency and refused connections to inject
    /// for tests. Every clone of the handle drives the same plan; nothing is injected until
    /// one is set. See [`fault`] for what each fault does.
    pub fn faults(&self) -> Faults {
        self.shared.faults.clone()
    }

    /// Number of client connections open in `hub` (case-insensitive).
    pub fn connection_count(&self, hub: &str) -> usize {
        self.shared
            .hubs
            .find(hub)
            .map_or(0, |h| h.connection_count())
    }

    /// Stops accepting requests, closes every client connection with "going away", and waits
    /// for the server to finish.
    pub async fn shutdown(mut self) -> io::Result<()> {
        for hub in self.shared.hubs.all() {
            hub.close_with(
                Audience::All,
                CloseReason {
                    code: CLOSE_GOING_AWAY,
                    reason: "the emulator is shutting down".into(),
                },
            );
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }

        // Writers get a moment to put their close frames on the wire.
        tokio::time::sleep(Duration::from_millis(50)).await;
        match (&mut self.server).await {
            Ok(result) => result,
            Err(err) => Err(io::Error::other(err)),
        }
    }
}

fn entra_io_error(err: entra::JwksError) -> io::Error {
    let message = format!("entra JWKS: {err}");
    match err {
        entra::JwksError::Fetch { .. } => io::Error::other(message),
        _ => io::Error::new(io::ErrorKind::InvalidInput, message),
    }
}

/// Resolves on Ctrl-C, or on SIGTERM, which is how service managers and test harnesses stop
/// a process.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// A random identifier of `bytes` random bytes, base64url without padding. Used for
/// connection ids and reconnection tokens.
pub(crate) fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS random source does not fail on supported platforms; if it ever did, a
    // counter-based fallback still keeps ids unique within the process.
    if getrandom::fill(&mut buf).is_err() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = n[i % n.len()];
        }
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}
