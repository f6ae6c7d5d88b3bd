//! Test harness: a real emulator on a free port, a REST caller that signs its requests the
//! way the SDKs do, and WebSocket subscribers that record what they receive.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webpubsub_emulator::{sign_client_token, sign_rest_token, AccessKey, Config, Emulator};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

pub const API: &str = "api-version=2024-12-01";

pub struct TestEmulator {
    pub emulator: Emulator,
    pub http: reqwest::Client,
    pub key: AccessKey,
}

impl TestEmulator {
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(mut config: Config) -> Self {
        config.listen = "127.0.0.1:0".parse().unwrap();
        let key = config.access_key.clone();
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let emulator = Emulator::serve(listener, config).unwrap();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        TestEmulator {
            emulator,
            http,
            key,
        }
    }

    pub fn endpoint(&self) -> String {
        self.emulator.endpoint()
    }

    /// A REST request to `path_and_query` (which must hold its own `api-version`), signed
    /// for the exact URL.
    pub fn rest(&self, method: reqwest::Method, path_and_query: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path_and_query}", self.endpoint());
        let token = sign_rest_token(&self.key, &url, Duration::from_secs(300));
        self.http.request(method, &url).bearer_auth(token)
    }

    /// Sends `body` as JSON with a REST send operation and checks the 202.
    pub async fn send_json(&self, path: &str, body: &Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let response = self
            .rest(reqwest::Method::POST, &format!("{path}{sep}{API}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            202,
            "send to {path}: {}",
            response.text().await.unwrap()
        );
    }

    /// A client access URL for `hub`, as `getClientAccessToken` would return it.
    pub fn client_url(
        &self,
        hub: &str,
        user: Option<&str>,
        roles: &[&str],
        groups: &[&str],
    ) -> String {
        let endpoint = self.endpoint();
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let token = sign_client_token(
            &self.key,
            &format!("{endpoint}/client/hubs/{hub}"),
            user,
            &roles,
            &groups,
            Duration::from_secs(3600),
        );
        format!(
            "{}/client/hubs/{hub}?access_token={token}",
            endpoint.replace("http://", "ws://")
        )
    }

    /// Connects a JSON-protocol subscriber and waits for its `connected` message.
    pub async fn subscribe(
        &self,
        hub: &str,
        user: Option<&str>,
        roles: &[&str],
        groups: &[&str],
    ) -> Subscriber {
        let url = self.client_url(hub, user, roles, groups);
        Subscriber::connect(&url, Some("json.webpubsub.azure.v1")).await
    }

    /// Polls until `hub` has `count` connections, so sends do not race connection setup.
    pub async fn wait_for_connections(&self, hub: &str, count: usize) {
        tokio::time::timeout(WAIT, async {
            while self.emulator.connection_count(hub) != count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "hub {hub} has {} connections, expected {count}",
                self.emulator.connection_count(hub)
            )
        });
    }
}

pub struct Subscriber {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub connection_id: String,
    pub reconnection_token: Option<String>,
    pub protocol: Option<String>,
}

impl Subscriber {
    /// Connects to a client URL with an optional subprotocol. JSON subscribers wait for
    /// their `connected` system message.
    pub async fn connect(url: &str, protocol: Option<&str>) -> Subscriber {
        Self::try_connect(url, protocol)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    pub async fn try_connect(
        url: &str,
        protocol: Option<&str>,
    ) -> Result<Subscriber, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if let Some(protocol) = protocol {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(protocol).unwrap(),
            );
        }
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        let accepted = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut subscriber = Subscriber {
            ws,
            connection_id: String::new(),
            reconnection_token: None,
            protocol: accepted,
        };
        if protocol.is_some() {
            let connected = subscriber.next_json().await;
            assert_eq!(connected["type"], "system", "first frame: {connected}");
            assert_eq!(connected["event"], "connected", "first frame: {connected}");
            subscriber.connection_id = connected["connectionId"].as_str().unwrap().to_owned();
            subscriber.reconnection_token =
                connected["reconnectionToken"].as_str().map(str::to_owned);
        }
        Ok(subscriber)
    }

    /// The next data frame, failing the test after [`WAIT`].
    pub async fn next_frame(&mut self) -> Message {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket ended")
                .expect("socket error");
            match frame {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    /// The next text frame, parsed as JSON.
    pub async fn next_json(&mut self) -> Value {
        match self.next_frame().await {
            Message::Text(text) => serde_json::from_str(&text).expect("frame is not JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame that is a `message`, skipping acks and system frames.
    pub async fn next_message(&mut self) -> Value {
        loop {
            let frame = self.next_json().await;
            if frame["type"] == "message" {
                return frame;
            }
        }
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    /// Fails if any data frame arrives within `window`.
    pub async fn expect_silence(&mut self, window: Duration) {
        if let Ok(Some(Ok(frame))) = tokio::time::timeout(window, self.ws.next()).await {
            panic!("expected no frame, got {frame:?}");
        }
    }

    /// Waits for the server to close the socket and returns the close code and reason,
    /// skipping any frames before it.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return (1006, String::new()),
            }
        }
    }
}

impl Subscriber {
    /// Sends a raw frame, for simple clients.
    pub async fn ws_send(&mut self, frame: Message) {
        self.ws.send(frame).await.unwrap();
    }
}

// Helpers added for the REST, auth, limits and filter suites.

/// Percent-encodes one path segment or query value the way the SDKs do, so that the
/// URL a token is signed for is the URL that goes on the wire.
pub fn enc(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The payload of a JWT, decoded without checking its signature.
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

/// Checks an error answer: its status, the `{code, message}` body, the `x-ms-error-code`
/// header equal to `code`, and a message containing `needle`. Returns the message.
pub async fn expect_api_error(response: reqwest::Response, status: u16, needle: &str) -> String {
    assert_eq!(response.status(), status, "status of {}", response.url());
    let header = response
        .headers()
        .get("x-ms-error-code")
        .map(|v| v.to_str().unwrap().to_owned())
        .expect("error answers carry x-ms-error-code");
    let body: Value = response.json().await.expect("error body is JSON");
    let code = body["code"].as_str().expect("error body has a code");
    let message = body["message"].as_str().expect("error body has a message");
    assert_eq!(header, code, "x-ms-error-code matches the body: {body}");
    assert!(
        message.contains(needle),
        "error message {message:?} should mention {needle:?}"
    );
    message.to_owned()
}

impl TestEmulator {
    /// A REST request to an absolute `url` on this emulator (such as a `nextLink`), signed
    /// for that exact URL.
    pub fn rest_url(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let token = sign_rest_token(&self.key, url, Duration::from_secs(300));
        self.http.request(method, url).bearer_auth(token)
    }

    /// Sends a REST request without a body and returns its status.
    pub async fn status(&self, method: reqwest::Method, path_and_query: &str) -> u16 {
        self.rest(method, path_and_query)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Sends `body` as JSON to `path` (without `api-version`) and returns the response.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        let sep = if path.contains('?') { '&' } else { '?' };
        self.rest(reqwest::Method::POST, &format!("{path}{sep}{API}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }
}

impl Subscriber {
    /// The `data` of the next `message` frame.
    pub async fn next_data(&mut self) -> Value {
        self.next_message().await["data"].clone()
    }

    /// The `data` of every message that arrives before one whose data is `marker`. Sending
    /// a marker to everyone after a targeted send proves who did not get the target: frames
    /// to one connection keep their order.
    pub async fn data_until(&mut self, marker: &Value) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let data = self.next_data().await;
            if data == *marker {
                return seen;
            }
            seen.push(data);
        }
    }

    /// Sends a client request carrying `ackId` and returns the ack for it.
    pub async fn request_ack(&mut self, mut frame: Value, ack_id: u64) -> Value {
        frame["ackId"] = ack_id.into();
        self.send_json(frame).await;
        loop {
            let reply = self.next_json().await;
            if reply["type"] == "ack" && reply["ackId"] == ack_id {
                return reply;
            }
        }
    }
}

/// [`Subscriber::expect_silence`] for several subscribers at once, so the window is paid
/// once rather than per subscriber.
pub async fn expect_silence_all<'a>(
    subscribers: impl IntoIterator<Item = &'a mut Subscriber>,
    window: Duration,
) {
    let waits = subscribers.into_iter().map(|s| s.expect_silence(window));
    futures_util::future::join_all(waits).await;
}
