//! Delivery benchmark of the emulator against bare WebSocket servers measured in the same
//! run.
//!
//! Three systems run side by side in one process, on loopback (127.0.0.1) only:
//!
//! - the **emulator**, started in-process with [`Emulator::serve`] and driven the way a real
//!   publisher drives Web PubSub: signed REST `POST /api/hubs/{hub}/:send` calls made with
//!   reqwest over kept-alive HTTP/1.1 connections;
//! - **baseline A**, a bare tokio-tungstenite server whose per-connection tasks forward what
//!   is put on one `tokio::sync::broadcast` channel;
//! - **baseline B**, the same server with a bounded `tokio::sync::mpsc` queue per
//!   connection filled by a `try_send` loop, which is the shape of the emulator's own
//!   delivery with everything else (HTTP, tokens, hubs, subprotocols) taken away.
//!
//! The baselines do the least a Rust WebSocket fan-out has to do: one channel hop and one
//! frame write per subscriber. They are triggered in-process (through a relay task on the
//! server runtime), so the emulator's REST call is part of what it is charged with; the
//! REST scenario measures that part on its own.
//!
//! Subscribers are the same tokio-tungstenite clients for every system. Servers run on one
//! tokio runtime and clients on another (two workers each), like two processes sharing
//! the machine. Every scenario rotates between the systems send by send (or run by run),
//! and results are stated as ratios emulator/baseline, because the absolute numbers move
//! with whatever else the machine is doing.
//!
//! Scenarios:
//!
//! 1. `fanout`: one 256-byte JSON message to 1,000 subscribers, timed from just before the
//!    send is issued until the last subscriber has read it (5 warm-up + 50 timed rounds);
//!    raw subscribers (no subprotocol) for every system, plus emulator subscribers with
//!    `json.webpubsub.azure.v1`;
//! 2. `sustained`: M messages to 100 subscribers, first as fast as the sender can (emulator:
//!    8 REST calls in flight; baselines: in-process sends), then paced at 1,000 msg/s;
//!    reports deliveries per second, the process's CPU time per delivery, and per-delivery
//!    latency from a send timestamp carried in the payload;
//! 3. `rest`: REST sends to a hub with no subscribers, against an axum handler that only
//!    answers 202: latency one at a time, and calls per second with 8 in flight;
//! 4. `loop`: `Hub::send` to 1,000 attached connections without sockets, against a plain
//!    `try_send` loop, to separate the emulator's bookkeeping from I/O and scheduling.
//!
//! Run with `cargo bench -p webpubsub-emulator --bench fanout` (about a minute). Options
//! after `--`: `--quick` (or `FANOUT_QUICK=1`) for a smoke run of a few seconds, and
//! `--only fanout|sustained|rest|loop` for one scenario (handy under `perf`).
//! `FANOUT_IN_FLIGHT=n` changes the sustained sender's REST concurrency. Markdown tables go
//! to stdout, progress to stderr. Started without `--bench` (as `cargo test --all-targets`
//! does), it does nothing unless `--quick` is given.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webpubsub_emulator::{sign_client_token, sign_rest_token, AccessKey, Config, Emulator};

const API: &str = "api-version=2024-12-01";
const JSON_PROTOCOL: &str = "json.webpubsub.azure.v1";
const PAYLOAD_BYTES: usize = 256;
/// Upper bound on any single wait; a scenario that exceeds it is reported as a failure.
const WAIT: Duration = Duration::from_secs(30);
/// Client connections opened at once while a scenario sets up.
const CONNECT_CONCURRENCY: usize = 64;
/// Read buffer of the bench's own sockets (subscribers and baselines). tungstenite fills
/// its whole read buffer with zeros on every read attempt, and a socket that is polled
/// after each frame would otherwise clear its default 128 KiB that often, which at a
/// thousand subscribers costs more than the delivery being measured.
const READ_BUFFER: usize = 4 * 1024;

fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(READ_BUFFER)
}

type ClientWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    fanout_subscribers: usize,
    fanout_warmup: usize,
    fanout_rounds: usize,
    sustained_subscribers: usize,
    sustained_messages: u64,
    sustained_runs: usize,
    in_flight: usize,
    paced_rate: u64,
    paced_messages: u64,
    paced_runs: usize,
    rest_batches: usize,
    rest_batch: usize,
    rest_runs: usize,
    loop_rounds: usize,
}

impl Plan {
    fn full() -> Self {
        Plan {
            fanout_subscribers: 1_000,
            fanout_warmup: 5,
            fanout_rounds: 50,
            sustained_subscribers: 100,
            sustained_messages: 10_000,
            sustained_runs: 5,
            in_flight: 8,
            paced_rate: 1_000,
            paced_messages: 2_000,
            paced_runs: 3,
            rest_batches: 20,
            rest_batch: 100,
            rest_runs: 3,
            loop_rounds: 300,
        }
    }

    fn quick() -> Self {
        Plan {
            fanout_warmup: 1,
            fanout_rounds: 5,
            sustained_messages: 1_000,
            sustained_runs: 1,
            paced_messages: 500,
            paced_runs: 1,
            rest_batches: 4,
            rest_batch: 50,
            rest_runs: 1,
            loop_rounds: 30,
            ..Plan::full()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clock and payloads
// ---------------------------------------------------------------------------------------

/// Nanoseconds since the first call, shared by senders and subscribers of this process.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A JSON object of exactly [`PAYLOAD_BYTES`] bytes carrying a sequence number and the
/// send time.
fn payload(seq: u64, sent_ns: u64) -> String {
    let mut text = format!("{{\"seq\":{seq},\"sent\":{sent_ns},\"pad\":\"");
    let pad = PAYLOAD_BYTES.saturating_sub(text.len() + 2);
    text.extend(std::iter::repeat_n('x', pad));
    text.push_str("\"}");
    text
}

/// The unsigned number after `key` (for example `"seq":`) in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

// ---------------------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------------------

/// What the subscribers of one system have received, shared with the coordinator.
#[derive(Default)]
struct Tally {
    /// Frames received since the coordinator last reset it.
    total: AtomicU64,
    /// When `total` reaches this, the round is complete.
    target: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    done: Notify,
    /// Frames that were out of order, unparsable or unexpected.
    errors: AtomicU64,
    /// Sustained scenario: per-delivery latencies in microseconds.
    latencies: Mutex<Vec<u32>>,
}

impl Tally {
    fn reset(&self, target: u64) {
        self.total.store(0, Ordering::SeqCst);
        self.first_ns.store(0, Ordering::SeqCst);
        self.last_ns.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn count(&self, now: u64) {
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        if total == 1 {
            self.first_ns.store(now, Ordering::Release);
        }
        if total == self.target.load(Ordering::Acquire) {
            self.last_ns.store(now, Ordering::Release);
            self.done.notify_one();
        }
    }

    /// Waits until the round is complete; returns the time of the last delivery.
    async fn wait(&self, what: &str) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        // Each pass either sees the round complete or consumes one wake-up; a stale wake-up
        // from an earlier round costs one extra pass, never an endless loop.
        for _ in 0..4 {
            if self.total.load(Ordering::Acquire) >= self.target.load(Ordering::Acquire) {
                break;
            }
            if tokio::time::timeout_at(deadline, self.done.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        let (total, target) = (
            self.total.load(Ordering::Acquire),
            self.target.load(Ordering::Acquire),
        );
        assert!(
            total >= target,
            "{what}: only {total} of {target} deliveries arrived within {WAIT:?}"
        );
        self.last_ns.load(Ordering::Acquire)
    }
}

#[derive(Debug, Clone, Copy)]
enum Role {
    /// Checks that rounds arrive in order, one frame per round.
    Fanout,
    /// Records the latency of every frame; hands them over every `per_run` frames.
    Sustained { per_run: u64 },
}

/// Reads one client socket until it closes, counting its text frames into `tally`.
async fn subscriber(mut ws: ClientWs, tally: Arc<Tally>, role: Role) {
    let mut expected_seq = 0u64;
    let mut received = 0u64;
    let mut latencies = Vec::new();
    while let Some(frame) = ws.next().await {
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let now = now_ns();
        match role {
            Role::Fanout => {
                if number_after(&text, "\"seq\":") != Some(expected_seq) {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
                expected_seq += 1;
            }
            Role::Sustained { per_run } => {
                match number_after(&text, "\"sent\":") {
                    Some(sent) => {
                        let micros = now.saturating_sub(sent) / 1_000;
                        latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    }
                    None => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                received += 1;
                if received == per_run {
                    // Handed over before this frame is counted, so the coordinator finds
                    // every subscriber's latencies once the run is complete.
                    tally
                        .latencies
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .append(&mut latencies);
                    received = 0;
                }
            }
        }
        tally.count(now);
    }
}

/// Opens `count` client sockets to `url` (with `protocol` if given), waits for the JSON
/// `connected` greeting where there is one, and starts a [`subscriber`] on each.
async fn connect_all(
    url: &str,
    protocol: Option<&str>,
    count: usize,
    tally: &Arc<Tally>,
    role: Role,
) -> Vec<JoinHandle<()>> {
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut pending = Vec::with_capacity(count);
    for _ in 0..count {
        let permits = permits.clone();
        let url = url.to_owned();
        let protocol = protocol.map(str::to_owned);
        pending.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore closed");
            connect_one(&url, protocol.as_deref()).await
        }));
    }
    let mut tasks = Vec::with_capacity(count);
    for connection in pending {
        let ws = connection.await.expect("connect task panicked");
        tasks.push(tokio::spawn(subscriber(ws, tally.clone(), role)));
    }
    tasks
}

async fn connect_one(url: &str, protocol: Option<&str>) -> ClientWs {
    let mut request = url.into_client_request().expect("client url");
    if let Some(protocol) = protocol {
        let value = HeaderValue::from_str(protocol).expect("subprotocol header");
        request
            .headers_mut()
            .insert("sec-websocket-protocol", value);
    }
    let connecting =
        tokio_tungstenite::connect_async_with_config(request, Some(socket_config()), false);
    let (mut ws, _) = tokio::time::timeout(WAIT, connecting)
        .await
        .expect("connect timed out")
        .unwrap_or_else(|err| panic!("connect {url}: {err}"));
    if protocol.is_some() {
        let greeting = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no greeting");
        match greeting {
            Some(Ok(Message::Text(text))) if text.contains("\"connected\"") => {}
            other => panic!("expected the connected message, got {other:?}"),
        }
    }
    ws
}

async fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn disconnect(tasks: Vec<JoinHandle<()>>) {
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
}

// ---------------------------------------------------------------------------------------
// The two systems
// ---------------------------------------------------------------------------------------

/// How a baseline server hands a message to its per-connection tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// One `tokio::sync::broadcast` channel that every connection task receives from.
    Broadcast,
    /// A bounded `tokio::sync::mpsc` queue per connection, filled with `try_send` in a loop
    /// (the shape of the emulator's own delivery, minus everything else it does).
    Queues,
}

/// The receiving end a baseline connection task waits on.
enum Inlet {
    Broadcast(broadcast::Receiver<Message>),
    Queue(mpsc::Receiver<Message>),
}

impl Inlet {
    /// The next message, or `None` once the server side is gone.
    async fn next(&mut self, lagged: &AtomicU64) -> Option<Message> {
        match self {
            Inlet::Queue(queue) => queue.recv().await,
            Inlet::Broadcast(receiver) => {
                // Bounded: a lag is reported once and the receive is tried again.
                for _ in 0..2 {
                    match receiver.recv().await {
                        Ok(message) => return Some(message),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            lagged.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
                None
            }
        }
    }
}

/// A baseline: a bare tokio-tungstenite server whose per-connection tasks forward what is
/// fed to them.
///
/// It is triggered through a channel to a relay task on the server runtime, which does the
/// fan-out there, just as the emulator's send runs in a request handler on the server
/// runtime. (Fanning out straight from the client runtime would wake every connection task
/// from a foreign thread, which is slower than the local wake-ups the emulator gets.)
struct Baseline {
    addr: SocketAddr,
    trigger: mpsc::UnboundedSender<Message>,
    ready: Arc<AtomicUsize>,
    /// Messages a connection task missed (broadcast lag, or a full queue).
    lagged: Arc<AtomicU64>,
}

impl Baseline {
    /// Accepts exactly `connections` sockets. `capacity` bounds the broadcast channel or
    /// each connection's queue.
    async fn start(feed: Feed, connections: usize, capacity: usize) -> Baseline {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind baseline");
        let addr = listener.local_addr().expect("baseline address");
        let ready = Arc::new(AtomicUsize::new(0));
        let lagged = Arc::new(AtomicU64::new(0));
        let (broadcast, _) = broadcast::channel::<Message>(capacity);
        let queues: Arc<Mutex<Vec<mpsc::Sender<Message>>>> = Arc::default();

        let (trigger, mut triggered) = mpsc::unbounded_channel::<Message>();
        let (relay_broadcast, relay_queues, relay_lagged) =
            (broadcast.clone(), queues.clone(), lagged.clone());
        tokio::spawn(async move {
            // Ends when the coordinator drops the baseline.
            while let Some(message) = triggered.recv().await {
                match feed {
                    Feed::Broadcast => {
                        let _ = relay_broadcast.send(message);
                    }
                    Feed::Queues => {
                        let queues = relay_queues.lock().unwrap_or_else(|p| p.into_inner());
                        for queue in queues.iter() {
                            if let Err(mpsc::error::TrySendError::Full(_)) =
                                queue.try_send(message.clone())
                            {
                                relay_lagged.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        });

        let (ready_task, lagged_task) = (ready.clone(), lagged.clone());
        tokio::spawn(async move {
            for _ in 0..connections {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                // Registered before the handshake, so nothing sent later can be missed.
                let inlet = match feed {
                    Feed::Broadcast => Inlet::Broadcast(broadcast.subscribe()),
                    Feed::Queues => {
                        let (tx, rx) = mpsc::channel(capacity);
                        queues.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
                        Inlet::Queue(rx)
                    }
                };
                tokio::spawn(forward(
                    stream,
                    inlet,
                    ready_task.clone(),
                    lagged_task.clone(),
                ));
            }
        });
        Baseline {
            addr,
            trigger,
            ready,
            lagged,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    fn send(&self, message: Message) {
        self.trigger
            .send(message)
            .expect("baseline relay is running");
    }
}

async fn forward(
    stream: TcpStream,
    mut inlet: Inlet,
    ready: Arc<AtomicUsize>,
    lagged: Arc<AtomicU64>,
) {
    let accepted = tokio_tungstenite::accept_async_with_config(stream, Some(socket_config()));
    let Ok(mut ws) = accepted.await else {
        return;
    };
    ready.fetch_add(1, Ordering::SeqCst);
    loop {
        tokio::select! {
            message = inlet.next(&lagged) => match message {
                Some(message) => {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            frame = ws.next() => match frame {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The emulator and a REST caller signed for its send operation.
struct Emu {
    emulator: Emulator,
    key: AccessKey,
    http: reqwest::Client,
}

/// One signed REST send URL.
struct SendUrl {
    url: String,
    token: String,
}

impl Emu {
    fn send_url(&self, hub: &str) -> SendUrl {
        let url = format!("{}/api/hubs/{hub}/:send?{API}", self.emulator.endpoint());
        let token = sign_rest_token(&self.key, &url, Duration::from_secs(3600));
        SendUrl { url, token }
    }

    fn client_url(&self, hub: &str) -> String {
        let endpoint = self.emulator.endpoint();
        let audience = format!("{endpoint}/client/hubs/{hub}");
        let token = sign_client_token(
            &self.key,
            &audience,
            None,
            &[],
            &[],
            Duration::from_secs(3600),
        );
        format!(
            "{}/client/hubs/{hub}?access_token={token}",
            endpoint.replace("http://", "ws://")
        )
    }

    /// One signed REST send of a JSON body; panics unless the emulator answers 202.
    async fn post(&self, target: &SendUrl, body: String) {
        post_json(&self.http, &target.url, &target.token, body).await;
    }
}

async fn post_json(http: &reqwest::Client, url: &str, token: &str, body: String) {
    let response = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|err| panic!("POST {url}: {err}"));
    assert_eq!(response.status(), 202, "POST {url}");
    // Reads the (empty) body so the connection goes back to the pool.
    let _ = response.bytes().await;
}

// ---------------------------------------------------------------------------------------
// Statistics and the report
// ---------------------------------------------------------------------------------------

/// Median and 99th percentile (nearest rank) of `samples`.
fn quantiles(samples: &mut [f64]) -> (f64, f64) {
    assert!(!samples.is_empty(), "no samples");
    samples.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        let index = (q * samples.len() as f64).ceil() as usize;
        samples[index.clamp(1, samples.len()) - 1]
    };
    (rank(0.5), rank(0.99))
}

fn median(samples: &mut [f64]) -> f64 {
    quantiles(samples).0
}

/// One line of the main table: the same metric for both baselines and the emulator.
struct Row {
    scenario: String,
    metric: &'static str,
    unit: &'static str,
    broadcast: f64,
    queues: f64,
    emulator: f64,
    /// False where a ratio would mislead; the table shows a dash instead.
    comparable: bool,
}

fn format_value(value: f64, unit: &str) -> String {
    match unit {
        "ms" if value < 10.0 => format!("{value:.2} ms"),
        "ms" => format!("{value:.1} ms"),
        "µs" if value < 10.0 => format!("{value:.2} µs"),
        "µs" => format!("{value:.0} µs"),
        "/s" => format!("{value:.0}/s"),
        _ => format!("{value:.2} {unit}"),
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "| Scenario | Metric | Baseline A (broadcast) | Baseline B (queues) | Emulator \
         | Emulator / A | Emulator / B |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for row in rows {
        let ratio = |baseline: f64| {
            if row.comparable {
                format!("{:.2}×", row.emulator / baseline)
            } else {
                "—".to_owned()
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.metric,
            format_value(row.broadcast, row.unit),
            format_value(row.queues, row.unit),
            format_value(row.emulator, row.unit),
            ratio(row.broadcast),
            ratio(row.queues),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// Something a scenario sends through.
enum Target<'a> {
    Baseline(&'a Baseline),
    Emulator(&'a Emu, SendUrl),
}

/// Fan-out times of one system, in milliseconds after the send was issued.
#[derive(Default)]
struct FanoutSamples {
    first: Vec<f64>,
    /// The REST call's 202 (emulator only).
    acked: Vec<f64>,
    last: Vec<f64>,
}

/// One line of the fan-out breakdown: medians, in ms after the send was issued.
struct Breakdown {
    system: &'static str,
    first: f64,
    acked: Option<f64>,
    last: f64,
}

async fn fanout(
    emu: &Emu,
    server: &tokio::runtime::Handle,
    plan: Plan,
    rows: &mut Vec<Row>,
) -> Vec<Breakdown> {
    let n = plan.fanout_subscribers;
    let broadcast = run_on(server, Baseline::start(Feed::Broadcast, n, 16)).await;
    let queues = run_on(server, Baseline::start(Feed::Queues, n, 16)).await;
    let systems: [(&'static str, Target<'_>, String, Option<&str>); 4] = [
        (
            "baseline A, broadcast",
            Target::Baseline(&broadcast),
            broadcast.url(),
            None,
        ),
        (
            "baseline B, queues",
            Target::Baseline(&queues),
            queues.url(),
            None,
        ),
        (
            "emulator, raw frames",
            Target::Emulator(emu, emu.send_url("fanout")),
            emu.client_url("fanout"),
            None,
        ),
        (
            "emulator, json subprotocol",
            Target::Emulator(emu, emu.send_url("fanoutjson")),
            emu.client_url("fanoutjson"),
            Some(JSON_PROTOCOL),
        ),
    ];

    eprintln!(
        "fan-out: connecting {n} subscribers to each of {} targets",
        systems.len()
    );
    let tallies: [Arc<Tally>; 4] = Default::default();
    let mut tasks = Vec::new();
    for ((_, _, url, protocol), tally) in systems.iter().zip(&tallies) {
        tasks.extend(connect_all(url, *protocol, n, tally, Role::Fanout).await);
    }
    poll_until("baseline subscribers", || {
        broadcast.ready.load(Ordering::SeqCst) == n && queues.ready.load(Ordering::SeqCst) == n
    })
    .await;
    poll_until("emulator subscribers", || {
        emu.emulator.connection_count("fanout") == n
            && emu.emulator.connection_count("fanoutjson") == n
    })
    .await;

    let mut samples: [FanoutSamples; 4] = Default::default();
    let rounds = plan.fanout_warmup + plan.fanout_rounds;
    eprintln!(
        "fan-out: {} warm-up + {} timed rounds per target",
        plan.fanout_warmup, plan.fanout_rounds
    );
    for round in 0..rounds {
        for offset in 0..systems.len() {
            // The order rotates so that no system always runs right after another.
            let which = (round + offset) % systems.len();
            let tally = &tallies[which];
            tally.reset(n as u64);
            let body = payload(round as u64, 0);

            let start = now_ns();
            let acked = match &systems[which].1 {
                Target::Baseline(baseline) => {
                    baseline.send(Message::text(body));
                    None
                }
                Target::Emulator(emu, target) => {
                    emu.post(target, body).await;
                    Some(now_ns())
                }
            };
            let last = tally.wait("fan-out").await;
            if round >= plan.fanout_warmup {
                let ms = |t: u64| t.saturating_sub(start) as f64 / 1e6;
                let s = &mut samples[which];
                s.last.push(ms(last));
                s.first.push(ms(tally.first_ns.load(Ordering::Acquire)));
                s.acked.extend(acked.map(ms));
            }
            // A short pause lets the servers settle between sends.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for ((name, ..), tally) in systems.iter().zip(&tallies) {
        let errors = tally.errors.load(Ordering::Relaxed);
        assert_eq!(
            errors, 0,
            "{name}: {errors} frames out of order or malformed"
        );
    }
    for baseline in [&broadcast, &queues] {
        assert_eq!(
            baseline.lagged.load(Ordering::Relaxed),
            0,
            "a baseline subscriber lagged"
        );
    }

    let mut breakdown = Vec::new();
    let mut last = Vec::new();
    for ((system, ..), s) in systems.iter().zip(&mut samples) {
        let (med, p99) = quantiles(&mut s.last);
        last.push((med, p99));
        let acked = (!s.acked.is_empty()).then(|| median(&mut s.acked));
        breakdown.push(Breakdown {
            system,
            first: median(&mut s.first),
            acked,
            last: med,
        });
    }
    for (label, emulator) in [
        ("raw frames", last[2]),
        ("`json.webpubsub.azure.v1`", last[3]),
    ] {
        let scenario = format!("Fan-out 1 × 256 B → {n} subscribers, emulator with {label}");
        rows.push(Row {
            scenario: scenario.clone(),
            metric: "median",
            unit: "ms",
            broadcast: last[0].0,
            queues: last[1].0,
            emulator: emulator.0,
            comparable: true,
        });
        rows.push(Row {
            scenario,
            metric: "p99",
            unit: "ms",
            broadcast: last[0].1,
            queues: last[1].1,
            emulator: emulator.1,
            comparable: true,
        });
    }

    disconnect(tasks).await;
    poll_until("fan-out subscribers to leave", || {
        emu.emulator.connection_count("fanout") == 0
            && emu.emulator.connection_count("fanoutjson") == 0
    })
    .await;
    breakdown
}

/// One sustained run's outcome.
struct SustainedRun {
    deliveries_per_second: f64,
    /// CPU time of the whole process (servers, subscribers and sender) per delivery.
    cpu_per_delivery_us: f64,
    latencies: Vec<u32>,
}

/// User plus system CPU time this process has used, from `/proc/self/stat` (Linux reports
/// it in ticks of 1/100 s). Zero where that file does not exist.
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name, starting with the state (field 3), so
    // utime (field 14) and stime (field 15) are at indexes 11 and 12.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// How a sustained run sends.
#[derive(Debug, Clone, Copy)]
struct Pace {
    messages: u64,
    /// Messages per second, or as fast as possible.
    rate: Option<u64>,
    /// REST calls in flight at a time (emulator only).
    in_flight: usize,
}

/// Sends one run's messages through `target` and waits until every subscriber has them.
async fn sustained_run(
    target: &Target<'_>,
    tally: &Tally,
    subs: usize,
    pace: Pace,
) -> SustainedRun {
    let Pace {
        messages,
        rate,
        in_flight,
    } = pace;
    tally.reset(subs as u64 * messages);
    let cpu_before = process_cpu();
    let start = now_ns();
    let origin = tokio::time::Instant::now();
    match target {
        Target::Baseline(baseline) => {
            for seq in 0..messages {
                if let Some(rate) = rate {
                    tokio::time::sleep_until(origin + schedule(seq, rate)).await;
                }
                baseline.send(Message::text(payload(seq, now_ns())));
            }
        }
        Target::Emulator(emu, url) => {
            let next = AtomicU64::new(0);
            let sender = || async {
                for _ in 0..messages {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= messages {
                        break;
                    }
                    if let Some(rate) = rate {
                        tokio::time::sleep_until(origin + schedule(seq, rate)).await;
                    }
                    emu.post(url, payload(seq, now_ns())).await;
                }
            };
            futures_util::future::join_all((0..in_flight).map(|_| sender())).await;
        }
    }

    let last = tally.wait("sustained").await;
    let cpu = process_cpu().saturating_sub(cpu_before);
    let latencies = std::mem::take(&mut *tally.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    assert_eq!(
        latencies.len() as u64,
        subs as u64 * messages,
        "every subscriber must get every message"
    );
    let seconds = last.saturating_sub(start) as f64 / 1e9;
    SustainedRun {
        deliveries_per_second: latencies.len() as f64 / seconds,
        cpu_per_delivery_us: cpu.as_secs_f64() * 1e6 / latencies.len() as f64,
        latencies,
    }
}

fn schedule(seq: u64, rate: u64) -> Duration {
    Duration::from_nanos(seq.saturating_mul(1_000_000_000) / rate)
}

/// Medians over `runs` of deliveries per second and CPU per delivery, and the p50 and p99
/// of every delivery's latency in milliseconds.
fn summarize(runs: &[SustainedRun]) -> (f64, f64, f64, f64) {
    let mut rates: Vec<f64> = runs.iter().map(|r| r.deliveries_per_second).collect();
    let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu_per_delivery_us).collect();
    let mut latencies: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.latencies.iter().map(|&us| f64::from(us) / 1e3))
        .collect();
    let (p50, p99) = quantiles(&mut latencies);
    (median(&mut rates), median(&mut cpu), p50, p99)
}

async fn sustained(emu: &Emu, server: &tokio::runtime::Handle, plan: Plan, rows: &mut Vec<Row>) {
    let subs = plan.sustained_subscribers;
    let phases = [
        (
            "unthrottled",
            plan.sustained_messages,
            None,
            plan.sustained_runs,
        ),
        (
            "paced",
            plan.paced_messages,
            Some(plan.paced_rate),
            plan.paced_runs,
        ),
    ];
    for (name, messages, rate, runs) in phases {
        // Large enough that no subscriber can lag: every message of a run fits.
        let capacity = usize::try_from(messages)
            .unwrap_or(usize::MAX)
            .next_power_of_two();
        let broadcast = run_on(server, Baseline::start(Feed::Broadcast, subs, capacity)).await;
        let queues = run_on(server, Baseline::start(Feed::Queues, subs, capacity)).await;
        let hub = format!("sustained{name}");
        let systems = [
            (Target::Baseline(&broadcast), broadcast.url()),
            (Target::Baseline(&queues), queues.url()),
            (
                Target::Emulator(emu, emu.send_url(&hub)),
                emu.client_url(&hub),
            ),
        ];

        eprintln!("sustained {name}: connecting {subs} subscribers to each system");
        let role = Role::Sustained { per_run: messages };
        let tallies: [Arc<Tally>; 3] = Default::default();
        let mut tasks = Vec::new();
        for ((_, url), tally) in systems.iter().zip(&tallies) {
            tasks.extend(connect_all(url, None, subs, tally, role).await);
        }
        poll_until("baseline subscribers", || {
            broadcast.ready.load(Ordering::SeqCst) == subs
                && queues.ready.load(Ordering::SeqCst) == subs
        })
        .await;
        poll_until("emulator subscribers", || {
            emu.emulator.connection_count(&hub) == subs
        })
        .await;

        eprintln!("sustained {name}: 1 warm-up + {runs} runs of {messages} messages per system");
        let pace = Pace {
            messages,
            rate,
            in_flight: plan.in_flight,
        };
        let mut results: [Vec<SustainedRun>; 3] = Default::default();
        for run in 0..=runs {
            // The order rotates; run 0 is warm-up.
            for offset in 0..systems.len() {
                let which = (run + offset) % systems.len();
                let result = sustained_run(&systems[which].0, &tallies[which], subs, pace).await;
                if run > 0 {
                    results[which].push(result);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for baseline in [&broadcast, &queues] {
            assert_eq!(
                baseline.lagged.load(Ordering::Relaxed),
                0,
                "a baseline subscriber lagged"
            );
        }
        for tally in &tallies {
            assert_eq!(tally.errors.load(Ordering::Relaxed), 0, "malformed frames");
        }

        let [a, b, e] = results.each_ref().map(|runs| summarize(runs));
        let scenario = match rate {
            None => format!(
                "Sustained {messages} × 256 B → {subs} subscribers, unthrottled \
                 (emulator: {} REST calls in flight)",
                plan.in_flight
            ),
            Some(rate) => {
                format!("Sustained {messages} × 256 B → {subs} subscribers, paced at {rate} msg/s")
            }
        };
        let mut push = |metric, unit, values: [f64; 3], comparable| {
            rows.push(Row {
                scenario: scenario.clone(),
                metric,
                unit,
                broadcast: values[0],
                queues: values[1],
                emulator: values[2],
                comparable,
            });
        };
        // Unthrottled, the baseline senders outrun delivery and their latency is the time a
        // message waits behind the backlog, so only the paced latencies compare like with
        // like.
        let paced = rate.is_some();
        if !paced {
            push("deliveries/s (median of runs)", "/s", [a.0, b.0, e.0], true);
        }
        push("process CPU per delivery", "µs", [a.1, b.1, e.1], true);
        push("latency p50", "ms", [a.2, b.2, e.2], paced);
        push("latency p99", "ms", [a.3, b.3, e.3], paced);

        drop(systems);
        disconnect(tasks).await;
        poll_until("sustained subscribers to leave", || {
            emu.emulator.connection_count(&hub) == 0
        })
        .await;
    }
}

/// Per-request latency of a REST send, median and p99 in microseconds.
struct RestOverhead {
    bare: (f64, f64),
    emulator: (f64, f64),
    /// Requests per second with `in_flight` calls at a time (median of runs).
    bare_rate: f64,
    emulator_rate: f64,
}

/// Sequential REST sends to a hub nobody is in, against an axum handler that only says 202.
async fn rest_overhead(emu: &Emu, server: &tokio::runtime::Handle, plan: Plan) -> RestOverhead {
    let bare = run_on(server, async {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind bare server");
        let addr = listener.local_addr().expect("bare address");
        let accepted = |_body: axum::body::Bytes| async { axum::http::StatusCode::ACCEPTED };
        let app = axum::Router::new().route("/api/{*rest}", axum::routing::post(accepted));
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    })
    .await;
    let bare_url = format!("http://{bare}/api/hubs/idle/:send?{API}");
    let emu_target = emu.send_url("idle");
    eprintln!(
        "rest overhead: 1 warm-up + {} batches of {} sequential calls per server",
        plan.rest_batches, plan.rest_batch
    );

    let mut bare_us = Vec::new();
    let mut emu_us = Vec::new();
    for batch in 0..=plan.rest_batches {
        for which in [batch % 2, (batch + 1) % 2] {
            for seq in 0..plan.rest_batch {
                let body = payload(seq as u64, 0);
                let start = Instant::now();
                if which == 0 {
                    post_json(&emu.http, &bare_url, &emu_target.token, body).await;
                } else {
                    emu.post(&emu_target, body).await;
                }
                let micros = start.elapsed().as_secs_f64() * 1e6;
                match (batch, which) {
                    (0, _) => {}
                    (_, 0) => bare_us.push(micros),
                    _ => emu_us.push(micros),
                }
            }
        }
    }

    // Throughput with as many calls in flight as the sustained scenario uses.
    let bare_target = SendUrl {
        url: bare_url,
        token: emu_target.token.clone(),
    };
    let mut rates: [Vec<f64>; 2] = Default::default();
    let calls = (plan.rest_batches * plan.rest_batch) as u64;
    for run in 0..=plan.rest_runs {
        for which in [run % 2, (run + 1) % 2] {
            let target = if which == 0 {
                &bare_target
            } else {
                &emu_target
            };
            let next = AtomicU64::new(0);
            let worker = || async {
                for _ in 0..calls {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= calls {
                        break;
                    }
                    post_json(&emu.http, &target.url, &target.token, payload(seq, 0)).await;
                }
            };
            let start = Instant::now();
            futures_util::future::join_all((0..plan.in_flight).map(|_| worker())).await;
            if run > 0 {
                rates[which].push(calls as f64 / start.elapsed().as_secs_f64());
            }
        }
    }
    let [bare_rates, emu_rates] = &mut rates;
    RestOverhead {
        bare: quantiles(&mut bare_us),
        emulator: quantiles(&mut emu_us),
        bare_rate: median(bare_rates),
        emulator_rate: median(emu_rates),
    }
}

/// The cost of one send's delivery loop on its own, in microseconds per send (median, p99).
struct LoopCost {
    queues: (f64, f64),
    raw: (f64, f64),
    json: (f64, f64),
}

/// The emulator's delivery loop without sockets or scheduling: `Hub::send` to `n` attached
/// connections whose queues nobody waits on (so no task is woken), against `try_send` of
/// the same frame to `n` plain bounded queues. Queues are drained between sends, untimed.
fn delivery_loop(n: usize, rounds: usize) -> LoopCost {
    use webpubsub_emulator::connection::{Connection, Limits, Protocol, SimpleMode};
    use webpubsub_emulator::hub::{Audience, Hubs};
    use webpubsub_emulator::message::{DataType, Envelope, Origin, Payload};

    let limits = Limits {
        queue: 16,
        buffer_messages: 16,
        buffer_bytes: 1 << 20,
    };
    let hubs = Hubs::default();
    let mut hub_receivers = Vec::new();
    for (name, protocol) in [
        ("loopraw", Protocol::Simple(SimpleMode::SendEvent)),
        ("loopjson", Protocol::Json),
    ] {
        let hub = hubs.get_or_create(name);
        let mut receivers = Vec::with_capacity(n);
        for _ in 0..n {
            let connection = Arc::new(Connection::new(&hub.name, None, protocol.clone(), limits));
            let (receiver, _) = connection.attach(None).expect("fresh connection");
            hub.add(connection, Vec::new(), &[]);
            receivers.push(receiver);
        }
        hub_receivers.push((hub, receivers));
    }
    let mut plain: Vec<(mpsc::Sender<Message>, mpsc::Receiver<Message>)> =
        (0..n).map(|_| mpsc::channel(16)).collect();

    let mut samples: [Vec<f64>; 3] = Default::default();
    let micros = |start: Instant| start.elapsed().as_secs_f64() * 1e6;
    for round in 0..rounds {
        let body = payload(round as u64, 0);

        let message = Message::text(body.clone());
        let start = Instant::now();
        for (sender, _) in &plain {
            sender
                .try_send(message.clone())
                .expect("plain queue has room");
        }
        samples[0].push(micros(start));
        for (_, receiver) in &mut plain {
            while receiver.try_recv().is_ok() {}
        }

        for (slot, (hub, receivers)) in samples[1..].iter_mut().zip(&mut hub_receivers) {
            let data = bytes::Bytes::from(body.clone());
            let envelope = Envelope::new(
                Origin::Server,
                Payload::new(DataType::Json, data).expect("payload is JSON"),
            );
            let start = Instant::now();
            let report = hub.send(Audience::All, &envelope, &[], None);
            slot.push(micros(start));
            assert_eq!(report.delivered, n, "every connection takes the frame");
            for receiver in receivers.iter_mut() {
                while receiver.frames.try_recv().is_ok() {}
            }
        }
    }
    let [queues, raw, json] = samples.each_mut().map(|s| quantiles(s));
    LoopCost { queues, raw, json }
}

/// Runs `future` on the server runtime and waits for its result.
async fn run_on<T: Send + 'static>(
    server: &tokio::runtime::Handle,
    future: impl Future<Output = T> + Send + 'static,
) -> T {
    server.spawn(future).await.expect("server task panicked")
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cores} cores, {model}")
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick")
        || std::env::var("FANOUT_QUICK").is_ok_and(|v| v == "1");
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without
    // it, in a debug build, where a full run would only be slow and meaningless.
    if !quick && !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("fanout: not run (use `cargo bench`, or pass --quick for a smoke run)");
        return;
    }
    let mut plan = if quick { Plan::quick() } else { Plan::full() };
    // `FANOUT_IN_FLIGHT=n` changes how many REST calls the sustained sender keeps open.
    if let Some(n) = std::env::var("FANOUT_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        plan.in_flight = n;
    }
    // `--only fanout|sustained|rest|loop` runs one scenario, for profiling.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|arg| arg == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    now_ns();

    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("tokio runtime")
    };
    let server = runtime("server");
    let client = runtime("client");

    let config = Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        ..Config::default()
    };
    let key = config.access_key.clone();
    let emulator = server.block_on(async {
        let listener = TcpListener::bind(config.listen)
            .await
            .expect("bind emulator");
        Emulator::serve(listener, config).expect("start emulator")
    });
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client");
    let emu = Arc::new(Emu {
        emulator,
        key,
        http,
    });

    let began = Instant::now();
    let handle = server.handle().clone();
    let wants = |name: &str| only.as_deref().is_none_or(|only| only == name);
    let mut rows = Vec::new();
    let mut breakdown = Vec::new();
    let mut rest = None;
    client.block_on(async {
        if wants("fanout") {
            breakdown = fanout(&emu, &handle, plan, &mut rows).await;
        }
        if wants("sustained") {
            sustained(&emu, &handle, plan, &mut rows).await;
        }
        if wants("rest") {
            rest = Some(rest_overhead(&emu, &handle, plan).await);
        }
    });
    let cost = wants("loop").then(|| {
        eprintln!(
            "delivery loop: {} sends to {} queues each",
            plan.loop_rounds, plan.fanout_subscribers
        );
        delivery_loop(plan.fanout_subscribers, plan.loop_rounds)
    });

    println!();
    println!(
        "Machine: {}. Mode: {}. Wall time: {:.0} s.",
        machine(),
        if quick { "quick" } else { "full" },
        began.elapsed().as_secs_f64()
    );
    if !rows.is_empty() {
        println!();
        print_table(&rows);
    }
    if !breakdown.is_empty() {
        println!();
        println!("| Fan-out breakdown (medians) | First subscriber | REST 202 | Last subscriber |");
        println!("|---|---:|---:|---:|");
        for line in &breakdown {
            let acked = line.acked.map_or("—".to_owned(), |a| format!("{a:.2} ms"));
            println!(
                "| {} | {:.2} ms | {acked} | {:.2} ms |",
                line.system, line.first, line.last
            );
        }
    }
    if let Some(rest) = rest {
        println!();
        println!(
            "| REST send, 256 B, 0 subscribers | Bare axum 202 | Emulator | Emulator / bare |"
        );
        println!("|---|---:|---:|---:|");
        for (metric, bare, emulator) in [
            ("latency median, 1 in flight", rest.bare.0, rest.emulator.0),
            ("latency p99, 1 in flight", rest.bare.1, rest.emulator.1),
        ] {
            println!(
                "| {metric} | {bare:.0} µs | {emulator:.0} µs | {:.2}× |",
                emulator / bare
            );
        }
        println!(
            "| calls/s, {} in flight | {:.0}/s | {:.0}/s | {:.2}× |",
            plan.in_flight,
            rest.bare_rate,
            rest.emulator_rate,
            rest.emulator_rate / rest.bare_rate
        );
    }
    if let Some(cost) = cost {
        let n = plan.fanout_subscribers;
        println!();
        println!("| Delivery loop, 1 send → {n} queues, no sockets | `try_send` loop | `Hub::send`, raw | `Hub::send`, json |");
        println!("|---|---:|---:|---:|");
        for (metric, pick) in [("median", 0), ("p99", 1)] {
            let value = |pair: (f64, f64)| if pick == 0 { pair.0 } else { pair.1 };
            println!(
                "| {metric} | {:.0} µs | {:.0} µs | {:.0} µs |",
                value(cost.queues),
                value(cost.raw),
                value(cost.json)
            );
        }
    }
    drop(client);
    server.shutdown_timeout(Duration::from_secs(1));
}
