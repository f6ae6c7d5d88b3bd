//! Test harness for the handler: a real Web PubSub emulator and a real handler, both on
//! port 0, an HTTP client that posts invocation bodies exactly as the Functions host does,
//! and WebSocket subscribers that record what arrives.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use rowcast::server::{self, Handler};
use rowcast::settings::{Config, Settings};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webpubsub_emulator::{sign_client_token, AccessKey, Config as EmulatorConfig, Emulator};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// How the host may encode the trigger's `changes` value.
#[derive(Debug, Clone, Copy)]
pub enum Encoding {
    /// `"changes": [...]`
    Array,
    /// `"changes": "[...]"`
    String,
    /// `"changes": "\"[...]\""`, what the host sends after serializing the string again.
    DoubleString,
}

pub const ENCODINGS: [Encoding; 3] = [Encoding::Array, Encoding::String, Encoding::DoubleString];

/// An invocation body for `binding`, shaped as the host posts it.
pub fn invocation(binding: &str, changes: &Value, encoding: Encoding) -> String {
    let array = changes.to_string();
    let value = match encoding {
        Encoding::Array => array,
        Encoding::String => serde_json::to_string(&array).unwrap(),
        Encoding::DoubleString => {
            serde_json::to_string(&serde_json::to_string(&array).unwrap()).unwrap()
        }
    };
    format!(
        r#"{{"Data":{{"{binding}":{value}}},"Metadata":{{"sys":{{"MethodName":"sql-changes","UtcNow":"2026-12-03T10:00:00Z","RandGuid":"00000000-0000-0000-0000-000000000000"}}}}}}"#
    )
}

pub struct Stack {
    pub emulator: Emulator,
    pub handler_addr: SocketAddr,
    pub http: reqwest::Client,
    key: AccessKey,
}

impl Stack {
    /// Starts an emulator and a handler configured with `settings` (the connection string to
    /// the emulator and an empty app root are filled in unless given).
    pub async fn start(settings: &[(&str, &str)]) -> Stack {
        let emulator = start_emulator().await;
        let connection = emulator.connection_string();
        Self::start_with(emulator, &connection, settings).await
    }

    /// Starts a handler against an emulator, or against any connection string.
    pub async fn start_with(
        emulator: Emulator,
        connection: &str,
        settings: &[(&str, &str)],
    ) -> Stack {
        let defaults = Settings::from_pairs([
            ("WebPubSubConnectionString", connection),
            ("AzureWebJobsScriptRoot", "/nonexistent/rowcast-test-root"),
        ]);
        Self::start_handler(emulator, defaults, settings).await
    }

    /// Starts a handler on port 0 with `defaults` overridden by `settings`, beside `emulator`.
    async fn start_handler(
        emulator: Emulator,
        mut all: Settings,
        settings: &[(&str, &str)],
    ) -> Stack {
        for (name, value) in settings {
            all.set(name, *value);
        }
        let config = Config::from_settings(&all).expect("test settings are valid");
        let handler = Handler::new(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handler_addr = listener.local_addr().unwrap();
        tokio::spawn(server::serve(listener, handler, std::future::pending()));
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Stack {
            emulator,
            handler_addr,
            http,
            key: AccessKey::default(),
        }
    }

    /// Posts an invocation body to `/{function}` and returns the status and JSON answer.
    pub async fn invoke(&self, function: &str, body: String) -> (u16, Value) {
        let response = self
            .http
            .post(format!("http://{}/{function}", self.handler_addr))
            .header("content-type", "application/json")
            .header("x-azure-functions-invocationid", "test-invocation")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("answer is not JSON: {text}"));
        (status, value)
    }

    /// Posts the invocation of `function` whose `changes` binding holds `changes`, encoded
    /// as `encoding`, and returns the status and JSON answer.
    pub async fn invoke_changes(
        &self,
        function: &str,
        changes: &Value,
        encoding: Encoding,
    ) -> (u16, Value) {
        self.invoke(function, invocation("changes", changes, encoding))
            .await
    }

    /// A JSON-protocol subscriber on `hub` as `user`, in `groups`.
    pub async fn subscribe(&self, hub: &str, user: &str, groups: &[&str]) -> Subscriber {
        subscribe_to(&self.emulator, hub, user, groups).await
    }
}

pub async fn start_emulator() -> Emulator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Emulator::serve(listener, EmulatorConfig::default()).unwrap()
}

pub struct Subscriber {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Subscriber {
    /// The next text frame, skipping frames of any other kind.
    async fn next_text(&mut self) -> String {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket ended")
                .expect("socket error");
            if let Message::Text(text) = frame {
                return text.to_string();
            }
        }
    }

    async fn next_json(&mut self) -> Value {
        serde_json::from_str(&self.next_text().await).unwrap()
    }

    /// The next change message's `data`: `{id, table, operation, row}`.
    pub async fn next_change(&mut self) -> Value {
        loop {
            let frame = self.next_json().await;
            if frame["type"] == "message" {
                assert_eq!(frame["dataType"], "json", "{frame}");
                return frame["data"].clone();
            }
        }
    }

    /// Fails if a message arrives within `window`.
    pub async fn expect_silence(&mut self, window: Duration) {
        if let Ok(Some(Ok(frame))) = tokio::time::timeout(window, self.ws.next()).await {
            panic!("expected no message, got {frame:?}");
        }
    }
}

/// The access key of the emulator's default configuration, which the handler under test
/// signs with; no answer or log may ever show it.
pub const ACCESS_KEY: &str = webpubsub_emulator::DEFAULT_ACCESS_KEY;

/// The folder of the rowcast package: an app root with `sql-changes/function.json` and
/// `local.settings.json`.
pub const REPO_ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Like [`invocation`], but the changes are given as JSON text, so numbers that `Value`
/// would round (big decimals) reach the handler exactly as written.
pub fn invocation_text(binding: &str, array: &str, encoding: Encoding) -> String {
    let value = match encoding {
        Encoding::Array => array.to_owned(),
        Encoding::String => serde_json::to_string(array).unwrap(),
        Encoding::DoubleString => {
            serde_json::to_string(&serde_json::to_string(array).unwrap()).unwrap()
        }
    };
    format!(r#"{{"Data":{{"{binding}":{value}}},"Metadata":{{"sys":{{"MethodName":"test"}}}}}}"#)
}

/// Everything the handler logs through `tracing` while this test binary runs: the first
/// call installs a global subscriber (at `debug`, the emulator's own log off) that writes
/// into the returned buffer; later calls return the same buffer.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,webpubsub_emulator=off",
            ))
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber is set");
        logs
    })
    .clone()
}

/// The writer behind [`captured_logs`].
struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The invocation body the host posts for an HTTP request to `/api/negotiate`, forwarding
/// off: `Headers` values are arrays of strings, as the host writes them.
pub fn negotiate_request(method: &str, headers: &[(&str, &str)], query: &[(&str, &str)]) -> String {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!([v])))
        .collect();
    let query: serde_json::Map<String, Value> = query
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let search: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    json!({
        "Data": {
            "req": {
                "Url": format!("https://rowcast.azurewebsites.net/api/negotiate?{}", search.join("&")),
                "Method": method,
                "Query": query,
                "Headers": headers,
                "Params": {},
                "Identities": [],
            }
        },
        "Metadata": {
            "sys": {"MethodName": "negotiate", "UtcNow": "2026-12-03T10:00:00Z"}
        }
    })
    .to_string()
}

/// The claims of a JWT, such as a client access token, read without checking its signature.
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A connection string for a Web PubSub at `addr` with the default key.
pub fn connection_string_to(addr: SocketAddr) -> String {
    format!("Endpoint=http://{addr};AccessKey={ACCESS_KEY};Version=1.0;")
}

/// A loopback port nothing listens on (it was free a moment ago).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A server that accepts connections and never answers: each socket is kept open, unread,
/// until the test's runtime ends.
pub async fn silent_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

impl Stack {
    /// Posts a body to `/{function}` and returns the status and the answer's raw text.
    pub async fn invoke_text(&self, function: &str, body: String) -> (u16, String) {
        let response = tokio::time::timeout(
            WAIT,
            self.http
                .post(format!("http://{}/{function}", self.handler_addr))
                .header("content-type", "application/json")
                .body(body)
                .send(),
        )
        .await
        .expect("timed out waiting for the handler's answer")
        .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Like [`Stack::invoke_changes`], but returns the answer's raw text.
    pub async fn invoke_changes_text(
        &self,
        function: &str,
        changes: &Value,
        encoding: Encoding,
    ) -> (u16, String) {
        self.invoke_text(function, invocation("changes", changes, encoding))
            .await
    }

    /// The handler's answer status to `GET {path}`.
    pub async fn get(&self, path: &str) -> u16 {
        let response = tokio::time::timeout(
            WAIT,
            self.http
                .get(format!("http://{}{path}", self.handler_addr))
                .send(),
        )
        .await
        .expect("timed out waiting for the handler's answer")
        .unwrap();
        response.status().as_u16()
    }
}

impl Subscriber {
    /// Connects to a full client URL (token included) with the JSON subprotocol and waits
    /// for the `connected` event.
    pub async fn connect(url: &str) -> Subscriber {
        match Self::open(url).await {
            Handshake::Connected(subscriber, _) => *subscriber,
            Handshake::Refused(status) => panic!("the subscriber was refused with {status}"),
        }
    }

    /// The raw text of the next `message` frame, before any JSON parser touches its numbers.
    pub async fn next_message_text(&mut self) -> String {
        // Matched on the emulator's own field order rather than parsed, so rows no `Value`
        // could hold (numbers out of range, deep nesting) still come through as written.
        loop {
            let text = self.next_text().await;
            if text.starts_with("{\"type\":\"message\"") {
                return text;
            }
        }
    }

    /// The next `n` change messages' `data`.
    pub async fn changes(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_change().await);
        }
        out
    }

    /// Waits for the server to close the socket (a close frame or the end of the stream).
    pub async fn expect_closed(&mut self) {
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the socket stayed open");
    }
}

/// A throwaway app root holding a copy of the repository's `sql-changes/function.json` and
/// nothing else; removed when dropped.
pub struct AppRoot {
    pub path: std::path::PathBuf,
}

impl AppRoot {
    pub fn new(name: &str) -> AppRoot {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("rowcast-app-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("sql-changes")).unwrap();
        let repo = std::path::Path::new(REPO_ROOT);
        std::fs::copy(
            repo.join("sql-changes/function.json"),
            path.join("sql-changes/function.json"),
        )
        .unwrap();
        AppRoot { path }
    }

    /// Adds a file beside the function folders, as `host.json` sits in a real app.
    pub fn with_file(self, name: &str, contents: &str) -> AppRoot {
        std::fs::write(self.path.join(name), contents).unwrap();
        self
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for AppRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A JSON-protocol subscriber on `hub` of `emulator` as `user`, in `groups`, for tests
/// that run the handler some other way than [`Stack`].
pub async fn subscribe_to(
    emulator: &Emulator,
    hub: &str,
    user: &str,
    groups: &[&str],
) -> Subscriber {
    let endpoint = emulator.endpoint();
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let token = sign_client_token(
        &AccessKey::default(),
        &format!("{endpoint}/client/hubs/{hub}"),
        Some(user),
        &[],
        &groups,
        Duration::from_secs(600),
    );
    Subscriber::connect(&format!(
        "{}/client/hubs/{hub}?access_token={token}",
        endpoint.replace("http://", "ws://")
    ))
    .await
}

pub mod identity;

/// The public half of the test signing key, which an emulator that accepts Entra tokens
/// trusts.
pub const ENTRA_JWKS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/entra-test-jwks.json"
);

/// An emulator that also accepts RS256 Entra tokens signed with the test key.
pub async fn start_entra_emulator() -> Emulator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = EmulatorConfig {
        entra_jwks: Some(webpubsub_emulator::JwksSource::File(ENTRA_JWKS.into())),
        ..EmulatorConfig::default()
    };
    Emulator::serve(listener, config).unwrap()
}

impl Stack {
    /// Starts a handler that publishes to `emulator` with an Entra identity: the
    /// identity-based `WebPubSubConnectionString__serviceUri` (the emulator's endpoint) and
    /// an empty app root are filled in unless given, and no connection string is set.
    pub async fn start_identity(emulator: Emulator, settings: &[(&str, &str)]) -> Stack {
        let endpoint = emulator.endpoint();
        let defaults = Settings::from_pairs([
            ("WebPubSubConnectionString__serviceUri", endpoint.as_str()),
            ("AzureWebJobsScriptRoot", "/nonexistent/rowcast-test-root"),
        ]);
        Self::start_handler(emulator, defaults, settings).await
    }

    /// Sends `data` as JSON to `group` of `hub` through the emulator's REST API, signed with
    /// its access key, as any other publisher would; returns the answer's status.
    pub async fn send_to_group(&self, hub: &str, group: &str, data: &Value) -> u16 {
        let url = format!(
            "{}/api/hubs/{hub}/groups/{group}/:send?api-version=2024-12-01",
            self.emulator.endpoint()
        );
        let token = webpubsub_emulator::sign_rest_token(&self.key, &url, Duration::from_secs(60));
        let response = tokio::time::timeout(
            WAIT,
            self.http
                .post(&url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(data.to_string())
                .send(),
        )
        .await
        .expect("timed out waiting for the emulator's answer")
        .unwrap();
        response.status().as_u16()
    }
}

/// How a WebSocket handshake to a client URL ended.
pub enum Handshake {
    /// Connected; the `connected` system event that came first.
    Connected(Box<Subscriber>, Value),
    /// Refused with this HTTP status.
    Refused(u16),
}

impl Subscriber {
    /// Opens a JSON-protocol connection to a full client URL and reads its `connected`
    /// event, or reports the status the handshake was refused with.
    pub async fn open(url: &str) -> Handshake {
        use tokio_tungstenite::tungstenite::Error;
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("json.webpubsub.azure.v1"),
        );
        let connecting = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("timed out connecting the subscriber");
        match connecting {
            Ok((ws, _)) => {
                let mut subscriber = Subscriber { ws };
                let connected = subscriber.next_json().await;
                assert_eq!(connected["event"], "connected", "{connected}");
                Handshake::Connected(Box::new(subscriber), connected)
            }
            Err(Error::Http(response)) => Handshake::Refused(response.status().as_u16()),
            Err(err) => panic!("the handshake failed without an HTTP answer: {err}"),
        }
    }

    /// Sends one JSON frame, such as a `joinGroup` request.
    pub async fn send_json(&mut self, frame: &Value) {
        use futures_util::SinkExt;
        tokio::time::timeout(WAIT, self.ws.send(Message::text(frame.to_string())))
            .await
            .expect("timed out sending a frame")
            .expect("the frame was sent");
    }

    /// The `ack` for `ack_id`, skipping any other frame.
    pub async fn ack(&mut self, ack_id: u64) -> Value {
        loop {
            let frame = self.next_json().await;
            if frame["type"] == "ack" && frame["ackId"] == ack_id {
                return frame;
            }
        }
    }
}
