//! Handler pipeline benchmark: what rowcast costs between the Functions host and a
//! subscriber, each figure stated against a baseline measured in the same run.
//!
//! Everything runs on 127.0.0.1, as separate processes:
//!
//! - `target/release/webpubsub-emulator --port 0`, the Web PubSub stand-in;
//! - `target/release/handler`, the real release binary, started the way the Functions host
//!   starts it: `FUNCTIONS_CUSTOMHANDLER_PORT`, `WebPubSubConnectionString` (the emulator),
//!   `WebPubSubHub=SQLUsers`, `WebPubSubTarget=user:12345` and `AzureWebJobsScriptRoot` =
//!   the repository root, whose `sql-changes/function.json` declares the trigger;
//! - this bench binary re-run as `--serve-baseline PORT`: a bare axum server on the same
//!   tokio runtime the handler uses, whose `POST /{function}` reads the body and answers 200
//!   with a fixed JSON body and whose `GET /` answers at once. It is the floor of one HTTP
//!   hop (batches) and of starting a tokio + axum process (cold start);
//! - this process: one reqwest client (one connection pool for handler and baseline) and one
//!   JSON-subprotocol WebSocket subscriber of hub SQLUsers as user 12345, on two workers.
//!
//! Measurements:
//!
//! 1. Batches of 1, 100 and 1,000 changes (~200-byte rows), posted as the host posts them
//!    (`POST /sql-changes`, `changes` encoded as a string of a string). Timed from just
//!    before the request is sent until the answer body has been read, and until the
//!    subscriber has received every change of the batch (each row id is checked off). The
//!    baseline posts the same bytes to the bare server. Rounds alternate the order of the
//!    systems. A diagnostic row sends the same messages straight to the emulator's REST API
//!    from this process (32 in flight, the handler's default), the part of the pipeline
//!    the handler cannot make cheaper without sending fewer requests.
//! 2. Cold start: from just before `spawn` until the first HTTP answer on `GET /`, polling
//!    every 5 ms (the host polls every 25 ms), and again every 0.25 ms for resolution
//!    (polling faster slows the very start it measures on two cores). The baseline is the
//!    bare server above: the same runtime and HTTP stack with nothing else to do. The
//!    emulator binary, which also does a little start-up work, is shown for reference.
//! 3. Resident memory (VmRSS, VmHWM from `/proc/<pid>/status`) of the handler idle after
//!    start, after the batch scenarios and at the end of sustained load (sequential
//!    100-change batches), with the CPU time each process used during that load; and, for
//!    comparison with the handler's CPU time, its own per-change work (decode, id, message,
//!    URL and token) timed in this process through the same library calls, without I/O.
//!
//! Run with `cargo bench -p rowcast --bench pipeline`. It first runs `cargo build --release`
//! for the two binaries (`-- --no-build` skips that); `-- --quick` (or `PIPELINE_QUICK=1`)
//! is a smoke run. The markdown tables go to stdout, progress to stderr.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, post};
use axum::Router;
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use webpubsub_emulator::{sign_client_token, sign_rest_token, AccessKey};

const HUB: &str = "SQLUsers";
const USER: &str = "12345";
const FUNCTION: &str = "sql-changes";
const ROW_BYTES: usize = 200;
/// Sends the diagnostic REST row keeps in flight, the handler's `RowcastMaxConcurrency`
/// default.
const REST_IN_FLIGHT: usize = 32;
/// Upper bound on any single wait: a start, an answer, a batch reaching the subscriber.
const WAIT: Duration = Duration::from_secs(20);
/// A change that reaches the subscriber this long after the batch was answered counts as
/// late (a stall, not queueing).
const LATE: Duration = Duration::from_millis(20);
/// What the baseline server answers, shaped like the handler's answer.
const BASELINE_ANSWER: &str =
    r#"{"Outputs":{},"Logs":["baseline: body read, nothing done"],"ReturnValue":null}"#;

type Res<T> = Result<T, String>;

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// (changes per batch, warm-up rounds, measured rounds)
    batches: [(usize, usize, usize); 3],
    sustained: Duration,
    sustained_batch: usize,
    cold_warmup: usize,
    cold_runs: usize,
    /// Repetitions of the in-process measurement of the handler's own work (1,000 changes).
    own_work_reps: usize,
}

impl Plan {
    fn full() -> Self {
        Plan {
            batches: [(1, 50, 1_000), (100, 10, 150), (1_000, 3, 50)],
            sustained: Duration::from_secs(20),
            sustained_batch: 100,
            cold_warmup: 2,
            cold_runs: 20,
            own_work_reps: 20,
        }
    }

    fn quick() -> Self {
        Plan {
            batches: [(1, 5, 40), (100, 2, 10), (1_000, 1, 3)],
            sustained: Duration::from_secs(2),
            cold_warmup: 1,
            cold_runs: 5,
            own_work_reps: 3,
            ..Plan::full()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/// A child process that is killed and reaped when dropped, also when the bench panics.
struct Proc {
    child: Child,
    /// Kept open so the child never writes to a closed pipe.
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/release`, where cargo put this bench binary (under `deps/`).
fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the bench binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("bench binary lives in target/<profile>/deps")
        .to_path_buf()
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn build_binaries() -> Res<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building release binaries (handler, webpubsub-emulator)...");
    let status = Command::new(cargo)
        .current_dir(repo_root())
        .args([
            "build",
            "--release",
            "-p",
            "rowcast",
            "-p",
            "webpubsub-emulator",
        ])
        .args(["--bin", "handler", "--bin", "webpubsub-emulator"])
        .status()
        .map_err(|err| format!("cannot run cargo: {err}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build --release failed: {status}"))
    }
}

/// A port that was free a moment ago. Another process may take it before the child binds
/// it; starts retry with a new one when that happens.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Starts the emulator on a free port and reads the address it prints.
fn start_emulator(dir: &Path) -> Res<(Proc, SocketAddr)> {
    let mut child = Command::new(dir.join("webpubsub-emulator"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("cannot start webpubsub-emulator: {err}"))?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut proc = Proc {
        child,
        _stdout: None,
    };
    let mut addr = None;
    let mut line = String::new();
    for _ in 0..10 {
        line.clear();
        if stdout.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(rest) = line
            .trim()
            .strip_prefix("webpubsub-emulator listening on http://")
        {
            addr = rest.parse::<SocketAddr>().ok();
            break;
        }
    }
    let addr = addr.ok_or("webpubsub-emulator did not print its address")?;
    proc._stdout = Some(stdout);
    Ok((proc, addr))
}

/// How to start one of the binaries whose cold start is measured, on `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binary {
    Handler,
    Baseline,
    Emulator,
}

impl Binary {
    fn name(self) -> &'static str {
        match self {
            Binary::Handler => "handler",
            Binary::Baseline => "bare axum server (baseline)",
            Binary::Emulator => "webpubsub-emulator (reference)",
        }
    }

    fn command(self, dir: &Path, port: u16, emulator: SocketAddr) -> Command {
        let mut cmd = match self {
            Binary::Handler => {
                let mut cmd = Command::new(dir.join("handler"));
                cmd.env_clear()
                    .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
                    .env("WebPubSubConnectionString", connection_string(emulator))
                    .env("WebPubSubHub", HUB)
                    .env("WebPubSubTarget", format!("user:{USER}"))
                    .env("AzureWebJobsScriptRoot", repo_root());
                cmd
            }
            Binary::Baseline => {
                let mut cmd =
                    Command::new(std::env::current_exe().expect("path of the bench binary"));
                cmd.env_clear()
                    .args(["--serve-baseline", &port.to_string()]);
                cmd
            }
            Binary::Emulator => {
                let mut cmd = Command::new(dir.join("webpubsub-emulator"));
                cmd.env_clear()
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()]);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }
}

fn connection_string(emulator: SocketAddr) -> String {
    let key = String::from_utf8_lossy(AccessKey::default().expose()).into_owned();
    format!("Endpoint=http://{emulator};AccessKey={key};Version=1.0;")
}

/// One `GET /` on a fresh connection: true once anything answers with an HTTP status line.
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut socket) = StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = socket.set_nodelay(true);
    let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if socket.write_all(request).is_err() {
        return false;
    }
    let mut head = [0u8; 9];
    let mut got = 0;
    while got < head.len() {
        match socket.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    head[..got].starts_with(b"HTTP/1.")
}

/// Spawns `binary` and polls `GET /` on a fixed schedule every `poll`, starting right
/// after the spawn. Returns the time from just before the spawn to the first answer.
fn start_timed(
    binary: Binary,
    dir: &Path,
    emulator: SocketAddr,
    poll: Duration,
) -> Res<(Duration, Proc, SocketAddr)> {
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port();
        let addr = loopback(port);
        let mut cmd = binary.command(dir, port, emulator);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", binary.name()))?;
        let mut proc = Proc {
            child,
            _stdout: None,
        };
        let attempts = (WAIT.as_micros() / poll.as_micros().max(1)) as u32;
        for attempt in 1..=attempts {
            if answers(addr) {
                return Ok((started.elapsed(), proc, addr));
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                last_error = format!(
                    "{} exited with {status} (port {port} taken?)",
                    binary.name()
                );
                break;
            }
            let next = started + poll * attempt;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        if last_error.is_empty() {
            return Err(format!("{} did not answer within {WAIT:?}", binary.name()));
        }
    }
    Err(last_error)
}

/// A `kB` field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the slice starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

// ---------------------------------------------------------------------------------------
// The baseline server (this binary, re-run)
// ---------------------------------------------------------------------------------------

fn serve_baseline(port: &str) -> Res<()> {
    let port: u16 = port.parse().map_err(|_| format!("bad port '{port}'"))?;
    // Same runtime flavour as the handler's `#[tokio::main]`: one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    runtime.block_on(async move {
        let app = Router::new()
            .route("/", any(|| async { "ok" }))
            .route(
                "/{function}",
                post(|body: Bytes| async move {
                    std::hint::black_box(body.len());
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        BASELINE_ANSWER,
                    )
                }),
            )
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024));
        let listener = tokio::net::TcpListener::bind(loopback(port))
            .await
            .map_err(|err| err.to_string())?;
        axum::serve(listener, app)
            .await
            .map_err(|err| err.to_string())
    })
}

// ---------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------

/// A row of exactly [`ROW_BYTES`] bytes of JSON with a unique `Id`.
fn row(id: u64) -> String {
    let mut row = format!(
        r#"{{"Id":{id},"UserName":"user{id:07}","Email":"user{id:07}@example.com","Region":"westeurope","Plan":"standard","Balance":1234.56,"UpdatedAt":"2026-12-03T10:00:00.0000000","Note":""#
    );
    let pad = ROW_BYTES.saturating_sub(row.len() + 2);
    row.extend(std::iter::repeat_n('n', pad));
    row.push_str("\"}");
    row
}

/// The body the host posts for `n` changes with ids `first..first + n`: the trigger's
/// array, serialized to a string, serialized again.
fn invocation_body(first: u64, n: usize) -> Bytes {
    let mut array = String::with_capacity(n * (ROW_BYTES + 30) + 2);
    array.push('[');
    for i in 0..n {
        if i > 0 {
            array.push(',');
        }
        let operation = i % 2;
        let _ = write!(
            array,
            r#"{{"Operation":{operation},"Item":{}}}"#,
            row(first + i as u64)
        );
    }
    array.push(']');
    let once = serde_json::to_string(&array).expect("string");
    let twice = serde_json::to_string(&once).expect("string");
    Bytes::from(format!(
        r#"{{"Data":{{"changes":{twice}}},"Metadata":{{"sys":{{"MethodName":"{FUNCTION}","UtcNow":"2026-12-03T10:00:00Z","RandGuid":"6f1c2a9e-0b7d-4c55-9a3e-2d4b8f1e7c10"}}}}}}"#
    ))
}

/// The message the handler would send for change `id`, for the diagnostic REST row.
fn change_message(id: u64) -> String {
    format!(
        r#"{{"id":"{id:032x}","table":"dbo.Users","operation":"insert","row":{}}}"#,
        row(id)
    )
}

// ---------------------------------------------------------------------------------------
// Subscriber
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    data: Option<ChangeData>,
}

#[derive(Deserialize)]
struct ChangeData {
    row: RowId,
}

#[derive(Deserialize)]
struct RowId {
    #[serde(rename = "Id")]
    id: u64,
}

/// Row ids as they reach the subscriber, with the instant each arrived.
type Arrivals = mpsc::UnboundedReceiver<(u64, Instant)>;

async fn subscribe(emulator: SocketAddr) -> Res<Arrivals> {
    let token = sign_client_token(
        &AccessKey::default(),
        &format!("http://{emulator}/client/hubs/{HUB}"),
        Some(USER),
        &[],
        &[],
        Duration::from_secs(3_600),
    );
    let mut request = format!("ws://{emulator}/client/hubs/{HUB}?access_token={token}")
        .into_client_request()
        .map_err(|err| err.to_string())?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("json.webpubsub.azure.v1"),
    );
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| "subscriber: connect timed out".to_owned())?
        .map_err(|err| format!("subscriber: {err}"))?;

    let (tx, rx) = mpsc::unbounded_channel();
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut connected = Some(connected_tx);
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(text) = frame else {
                continue;
            };
            let arrived = Instant::now();
            let Ok(frame) = serde_json::from_str::<Frame>(&text) else {
                continue;
            };
            let listening = match (frame.kind.as_str(), frame.data) {
                ("message", Some(data)) => tx.send((data.row.id, arrived)).is_ok(),
                ("system", _) => {
                    if let Some(connected) = connected.take() {
                        let _ = connected.send(());
                    }
                    true
                }
                _ => true,
            };
            if !listening {
                break;
            }
        }
    });
    tokio::time::timeout(WAIT, connected_rx)
        .await
        .map_err(|_| "subscriber: no connected event".to_owned())?
        .map_err(|_| "subscriber: socket closed before connecting".to_owned())?;
    Ok(rx)
}

/// Waits until every change `first..first + n` has arrived, exactly once; returns when the
/// last one did.
async fn all_arrived(arrivals: &mut Arrivals, first: u64, n: usize) -> Res<Instant> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = vec![false; n];
    let mut count = 0;
    let mut last: Option<Instant> = None;
    while count < n {
        let (id, at) = match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Some(arrival)) => arrival,
            Ok(None) => return Err("subscriber socket closed".into()),
            Err(_) => return Err(format!("subscriber got {count} of {n} changes in {WAIT:?}")),
        };
        let index = id.checked_sub(first).map(|i| i as usize).filter(|i| *i < n);
        let Some(index) = index else {
            return Err(format!(
                "subscriber got change {id}, not in {first}..{}",
                first + n as u64
            ));
        };
        if std::mem::replace(&mut seen[index], true) {
            return Err(format!("subscriber got change {id} twice"));
        }
        count += 1;
        last = Some(last.map_or(at, |l| l.max(at)));
    }
    last.ok_or_else(|| "empty batch".into())
}

// ---------------------------------------------------------------------------------------
// Systems under test
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Baseline,
    Pipeline,
    Rest,
}

const PATHS: [System; 3] = [System::Baseline, System::Pipeline, System::Rest];

impl System {
    fn label(self) -> &'static str {
        match self {
            System::Baseline => "baseline: one HTTP hop to a bare axum server",
            System::Pipeline => "handler → emulator → subscriber",
            System::Rest => "diagnostic: the same sends straight to the emulator REST API",
        }
    }
}

/// One batch's timings.
#[derive(Debug, Clone, Copy)]
struct Sample {
    answered: Duration,
    /// Until the subscriber had every change; none for the baseline.
    received: Option<Duration>,
}

struct Bench {
    http: reqwest::Client,
    handler: SocketAddr,
    baseline: SocketAddr,
    emulator: SocketAddr,
    arrivals: Arrivals,
    next_id: u64,
    invocation: u64,
}

impl Bench {
    fn ids(&mut self, n: usize) -> u64 {
        let first = self.next_id;
        self.next_id += n as u64;
        first
    }

    async fn post(&mut self, addr: SocketAddr, body: Bytes) -> Res<(u16, String)> {
        self.invocation += 1;
        let response = self
            .http
            .post(format!("http://{addr}/{FUNCTION}"))
            .header("content-type", "application/json")
            .header(
                "x-azure-functions-invocationid",
                format!("00000000-0000-4000-8000-{:012x}", self.invocation),
            )
            .body(body)
            .send()
            .await
            .map_err(|err| format!("POST {addr}: {err}"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|err| format!("POST {addr}: {err}"))?;
        Ok((status, text))
    }

    async fn baseline(&mut self, body: Bytes) -> Res<Sample> {
        let started = Instant::now();
        let (status, text) = self.post(self.baseline, body).await?;
        let answered = started.elapsed();
        if status != 200 || text != BASELINE_ANSWER {
            return Err(format!("baseline answered {status}: {text}"));
        }
        Ok(Sample {
            answered,
            received: None,
        })
    }

    async fn pipeline(&mut self, first: u64, n: usize, body: Bytes) -> Res<Sample> {
        let started = Instant::now();
        let (status, text) = self.post(self.handler, body).await?;
        let answered = started.elapsed();
        let expected = format!("{FUNCTION}: {n} changes, {n} messages");
        if status != 200 || !text.contains(&expected) {
            return Err(format!("handler answered {status}: {text}"));
        }
        let last = all_arrived(&mut self.arrivals, first, n).await?;
        Ok(Sample {
            answered,
            received: Some(last.saturating_duration_since(started)),
        })
    }

    /// What the handler's delivery step costs at least: one signed REST send per change,
    /// [`REST_IN_FLIGHT`] at a time, from this process.
    async fn rest(&mut self, first: u64, n: usize) -> Res<Sample> {
        let url = format!(
            "http://{}/api/hubs/{HUB}/users/{USER}/:send?api-version=2024-12-01",
            self.emulator
        );
        let messages: Vec<String> = (0..n as u64).map(|i| change_message(first + i)).collect();
        let key = AccessKey::default();
        let http = &self.http;
        let started = Instant::now();
        let results: Vec<Res<()>> = stream::iter(messages)
            .map(|message| {
                let (url, key) = (&url, &key);
                async move {
                    let token = sign_rest_token(key, url, Duration::from_secs(300));
                    let response = http
                        .post(url)
                        .bearer_auth(token)
                        .header("content-type", "application/json")
                        .body(message)
                        .send()
                        .await
                        .map_err(|err| format!("REST send: {err}"))?;
                    if response.status().as_u16() == 202 {
                        Ok(())
                    } else {
                        Err(format!("REST send answered {}", response.status()))
                    }
                }
            })
            .buffer_unordered(REST_IN_FLIGHT)
            .collect()
            .await;
        let answered = started.elapsed();
        results.into_iter().collect::<Res<Vec<()>>>()?;
        let last = all_arrived(&mut self.arrivals, first, n).await?;
        Ok(Sample {
            answered,
            received: Some(last.saturating_duration_since(started)),
        })
    }

    /// One round: every path once, in an order that rotates with `round`.
    async fn round(&mut self, n: usize, round: usize) -> Res<[Sample; 3]> {
        let mut out = [Sample {
            answered: Duration::ZERO,
            received: None,
        }; 3];
        let first = self.ids(n);
        let body = invocation_body(first, n);
        for k in 0..PATHS.len() {
            let index = (k + round) % PATHS.len();
            out[index] = match PATHS[index] {
                System::Baseline => self.baseline(body.clone()).await?,
                System::Pipeline => self.pipeline(first, n, body.clone()).await?,
                System::Rest => {
                    let first = self.ids(n);
                    self.rest(first, n).await?
                }
            };
        }
        Ok(out)
    }
}

/// The handler's own CPU work for one batch of `n` changes, measured in this process on one
/// thread with no I/O, through the same library calls the handler makes: parse and decode;
/// address, id and message; REST token (with the send URL built as the client builds it).
/// Microseconds per change.
fn own_work(n: usize, reps: usize) -> Res<[f64; 3]> {
    use rowcast::invocation::InvocationRequest;
    use rowcast::route::Address;
    use rowcast::webpubsub::AccessKey as RestKey;

    let body = invocation_body(1, n);
    let target =
        rowcast::route::Target::parse(&format!("user:{USER}")).map_err(|e| e.to_string())?;
    let key = RestKey::new(String::from_utf8_lossy(AccessKey::default().expose()).into_owned());
    let mut spent = [Duration::ZERO; 3];
    for _ in 0..reps.max(1) {
        let started = Instant::now();
        let request = InvocationRequest::parse(&body).map_err(|e| e.to_string())?;
        let binding = request.binding("changes").map_err(|e| e.to_string())?;
        let changes =
            rowcast::change::decode(binding, "Data.changes").map_err(|e| e.to_string())?;
        spent[0] += started.elapsed();

        let started = Instant::now();
        let mut addresses = Vec::with_capacity(changes.len());
        for change in &changes {
            let id = rowcast::message::change_id("dbo.Users", change);
            let address = target.address(&change.row).map_err(|e| e.to_string())?;
            std::hint::black_box(rowcast::message::encode("dbo.Users", change, &id));
            addresses.push(address);
        }
        spent[1] += started.elapsed();

        let started = Instant::now();
        for address in &addresses {
            let target = match address {
                Address::All => String::new(),
                Address::User(user) => format!("/users/{user}"),
                Address::Group(group) => format!("/groups/{group}"),
            };
            let url = format!(
                "http://127.0.0.1:8080/api/hubs/{HUB}{target}/:send?api-version=2024-12-01"
            );
            std::hint::black_box(key.rest_token(&url));
        }
        spent[2] += started.elapsed();
        if changes.len() != n {
            return Err(format!("decoded {} of {n} changes", changes.len()));
        }
    }
    let per_change = (n * reps.max(1)) as f64;
    Ok(spent.map(|d| d.as_secs_f64() * 1e6 / per_change))
}

// ---------------------------------------------------------------------------------------
// Statistics and output
// ---------------------------------------------------------------------------------------

/// Nearest-rank percentile of unsorted samples.
fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b <= 0.0 {
        return "–".into();
    }
    let r = a / b;
    if r < 10.0 {
        format!("{r:.2}×")
    } else {
        format!("{r:.0}×")
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

struct BatchResult {
    n: usize,
    rounds: usize,
    body_bytes: usize,
    samples: [Vec<Sample>; 3],
}

struct ColdResult {
    binary: Binary,
    poll: Duration,
    times: Vec<Duration>,
}

struct Memory {
    idle: Option<u64>,
    after_batches: Option<u64>,
    after_sustained: Option<u64>,
    peak: Option<u64>,
}

struct Sustained {
    elapsed: Duration,
    batches: usize,
    changes: usize,
    answered: Vec<Duration>,
    /// Batches whose last change arrived [`LATE`] after the answer.
    late: usize,
    /// CPU milliseconds per 1,000 changes: handler, emulator, this process.
    cpu_per_1000: [f64; 3],
    /// [`own_work`], microseconds per change.
    own_work: [f64; 3],
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = Command::new("lscpu")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores (nproc), {model}, {date}")
}

fn report(
    plan: &Plan,
    quick: bool,
    batches: &[BatchResult],
    cold: &[ColdResult],
    memory: &Memory,
    sustained: &Sustained,
) -> String {
    let mut out = String::new();
    let o = &mut out;
    let _ = writeln!(
        o,
        "Run: {}{}.\n",
        machine(),
        if quick {
            ", --quick (smoke run, not for comparison)"
        } else {
            ""
        }
    );

    let _ = writeln!(o, "**Batches** (one batch in flight, as the host posts them; changes/s = changes ÷ summed answer time):\n");
    let _ = writeln!(o, "| changes/batch | body | path | batches | answer p50 ms | answer p99 ms | all received p50 ms | all received p99 ms | changes/s | answer p50 vs baseline | answer p99 vs baseline |");
    let _ = writeln!(o, "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for result in batches {
        let base: Vec<Duration> = result.samples[0].iter().map(|s| s.answered).collect();
        let (base50, base99) = (percentile(&base, 0.5), percentile(&base, 0.99));
        for (path, samples) in PATHS.iter().zip(&result.samples) {
            let answered: Vec<Duration> = samples.iter().map(|s| s.answered).collect();
            let received: Vec<Duration> = samples.iter().filter_map(|s| s.received).collect();
            let (a50, a99) = (percentile(&answered, 0.5), percentile(&answered, 0.99));
            let (r50, r99) = if received.is_empty() {
                ("–".to_owned(), "–".to_owned())
            } else {
                (
                    ms(percentile(&received, 0.5)),
                    ms(percentile(&received, 0.99)),
                )
            };
            let total: f64 = answered.iter().map(Duration::as_secs_f64).sum();
            let rate = (result.n * answered.len()) as f64 / total.max(1e-9);
            let (vs50, vs99) = if *path == System::Baseline {
                ("1×".to_owned(), "1×".to_owned())
            } else {
                (
                    ratio(a50.as_secs_f64(), base50.as_secs_f64()),
                    ratio(a99.as_secs_f64(), base99.as_secs_f64()),
                )
            };
            let body = if *path == System::Rest {
                format!(
                    "{} × {} B",
                    thousands(result.n as f64),
                    change_message(1_000_000).len()
                )
            } else {
                format!(
                    "{} KB",
                    (result.body_bytes as f64 / 1000.0).round().max(1.0)
                )
            };
            let _ = writeln!(
                o,
                "| {} | {body} | {} | {} | {} | {} | {r50} | {r99} | {} | {vs50} | {vs99} |",
                thousands(result.n as f64),
                path.label(),
                result.rounds,
                ms(a50),
                ms(a99),
                thousands(rate),
            );
        }
    }
    let mut late = Vec::new();
    for result in batches {
        for (path, samples) in PATHS.iter().zip(&result.samples).skip(1) {
            let count = samples
                .iter()
                .filter(|s| s.received.is_some_and(|r| r >= s.answered + LATE))
                .count();
            let who = if *path == System::Pipeline {
                "handler"
            } else {
                "REST"
            };
            late.push(format!("{count}/{} ({who}, {})", samples.len(), result.n));
        }
    }
    let _ = writeln!(
        o,
        "\nBatches whose last change reached the subscriber ≥ {} ms after the answer: {}.",
        LATE.as_millis(),
        late.join(", ")
    );

    let _ = writeln!(
        o,
        "\n**Cold start** (spawn → first answer on `GET /`; {} runs each after {} discarded):\n",
        plan.cold_runs, plan.cold_warmup
    );
    let _ = writeln!(
        o,
        "| binary | poll every | p50 ms | min ms | max ms | p50 vs baseline |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    for result in cold {
        let base = cold
            .iter()
            .find(|c| c.binary == Binary::Baseline && c.poll == result.poll)
            .map_or(Duration::ZERO, |c| percentile(&c.times, 0.5));
        let p50 = percentile(&result.times, 0.5);
        let _ = writeln!(
            o,
            "| {} | {} ms | {} | {} | {} | {} |",
            result.binary.name(),
            result.poll.as_secs_f64() * 1e3,
            ms(p50),
            ms(percentile(&result.times, 0.0)),
            ms(percentile(&result.times, 1.0)),
            if result.binary == Binary::Baseline {
                "1×".to_owned()
            } else {
                ratio(p50.as_secs_f64(), base.as_secs_f64())
            },
        );
    }

    let rate = sustained.changes as f64 / sustained.elapsed.as_secs_f64().max(1e-9);
    let idle = memory.idle.unwrap_or(0) as f64;
    let vs_idle = |kib: Option<u64>| kib.map_or("–".into(), |k| ratio(k as f64, idle));
    let _ = writeln!(o, "\n**Handler memory** (VmRSS unless noted):\n");
    let _ = writeln!(o, "| handler state | MiB | vs idle |");
    let _ = writeln!(o, "|---|---:|---:|");
    let _ = writeln!(
        o,
        "| idle, 0.5 s after its first answer | {} | 1× |",
        mib(memory.idle)
    );
    let _ = writeln!(
        o,
        "| after the batch scenarios | {} | {} |",
        mib(memory.after_batches),
        vs_idle(memory.after_batches)
    );
    let _ = writeln!(
        o,
        "| end of {:.0} s sustained load ({} batches of {}, each posted once the previous one had fully arrived: {} changes/s end to end, answer p50 {} ms, {} batches late ≥ {} ms) | {} | {} |",
        sustained.elapsed.as_secs_f64(),
        thousands(sustained.batches as f64),
        plan.sustained_batch,
        thousands(rate),
        ms(percentile(&sustained.answered, 0.5)),
        sustained.late,
        LATE.as_millis(),
        mib(memory.after_sustained),
        vs_idle(memory.after_sustained),
    );
    let _ = writeln!(
        o,
        "| peak over the whole run (VmHWM) | {} | {} |",
        mib(memory.peak),
        vs_idle(memory.peak)
    );
    let [handler, emulator, bench] = sustained.cpu_per_1000;
    let _ = writeln!(
        o,
        "\nCPU time per 1,000 changes during the sustained load: handler {handler:.0} ms, emulator {emulator:.0} ms, bench client + subscriber {bench:.0} ms."
    );
    let [decode, message, token] = sustained.own_work;
    let _ = writeln!(
        o,
        "Of the handler's {handler:.0} µs per change, its own work (same library calls, one thread, no I/O, 1,000-change batches) is {:.1} µs: parse + decode {decode:.1}, address + id + message {message:.1}, REST token {token:.1}; the rest is the HTTP exchange per change and the runtime.",
        decode + message + token
    );
    out
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

fn cold_starts(plan: &Plan, dir: &Path, emulator: SocketAddr) -> Res<Vec<ColdResult>> {
    let binaries = [Binary::Baseline, Binary::Handler, Binary::Emulator];
    let polls = [Duration::from_millis(5), Duration::from_micros(250)];
    let mut results: Vec<ColdResult> = polls
        .iter()
        .flat_map(|poll| {
            binaries.iter().map(|binary| ColdResult {
                binary: *binary,
                poll: *poll,
                times: Vec::new(),
            })
        })
        .collect();
    for run in 0..plan.cold_warmup + plan.cold_runs {
        // Rotate the order so that no binary always follows the same one.
        for k in 0..results.len() {
            let index = (k + run) % results.len();
            let (binary, poll) = (results[index].binary, results[index].poll);
            let (elapsed, proc, _) = start_timed(binary, dir, emulator, poll)?;
            drop(proc);
            if run >= plan.cold_warmup {
                results[index].times.push(elapsed);
            }
        }
    }
    Ok(results)
}

async fn batches_and_load(
    plan: &Plan,
    bench: &mut Bench,
    handler_pid: u32,
    emulator_pid: u32,
    memory: &mut Memory,
) -> Res<(Vec<BatchResult>, Sustained)> {
    let mut results = Vec::new();
    for (n, warmup, rounds) in plan.batches {
        eprintln!("batches of {n}: {warmup} warm-up + {rounds} rounds");
        for round in 0..warmup {
            bench.round(n, round).await?;
        }
        let mut samples: [Vec<Sample>; 3] = Default::default();
        for round in 0..rounds {
            let got = bench.round(n, round).await?;
            for (all, one) in samples.iter_mut().zip(got) {
                all.push(one);
            }
        }
        let body_bytes = invocation_body(1_000_000, n).len();
        results.push(BatchResult {
            n,
            rounds,
            body_bytes,
            samples,
        });
    }
    memory.after_batches = status_kib(handler_pid, "VmRSS");

    eprintln!(
        "sustained load: {:?} of {}-change batches",
        plan.sustained, plan.sustained_batch
    );
    let pids = [
        handler_pid.to_string(),
        emulator_pid.to_string(),
        "self".to_owned(),
    ];
    let cpu_before: Vec<Option<u64>> = pids.iter().map(|p| cpu_ticks(p)).collect();
    let started = Instant::now();
    let mut answered = Vec::new();
    let mut batches = 0;
    let mut late = 0;
    let n = plan.sustained_batch;
    while started.elapsed() < plan.sustained && batches < 1_000_000 {
        let first = bench.ids(n);
        let sample = bench.pipeline(first, n, invocation_body(first, n)).await?;
        answered.push(sample.answered);
        late += usize::from(sample.received.is_some_and(|r| r >= sample.answered + LATE));
        batches += 1;
    }
    let elapsed = started.elapsed();
    memory.after_sustained = status_kib(handler_pid, "VmRSS");
    memory.peak = status_kib(handler_pid, "VmHWM");
    let ticks = clock_ticks_per_second() as f64;
    let changes = batches * n;
    let mut cpu_per_1000 = [0.0; 3];
    for (slot, (pid, before)) in cpu_per_1000.iter_mut().zip(pids.iter().zip(cpu_before)) {
        if let (Some(before), Some(after)) = (before, cpu_ticks(pid)) {
            let cpu_ms = (after.saturating_sub(before)) as f64 / ticks * 1e3;
            *slot = cpu_ms * 1000.0 / changes.max(1) as f64;
        }
    }
    Ok((
        results,
        Sustained {
            elapsed,
            batches,
            changes,
            answered,
            late,
            cpu_per_1000,
            own_work: [0.0; 3],
        },
    ))
}

fn run(quick: bool, build: bool) -> Res<String> {
    let plan = if quick { Plan::quick() } else { Plan::full() };
    if build {
        build_binaries()?;
    }
    let dir = release_dir();
    for binary in ["handler", "webpubsub-emulator"] {
        if !dir.join(binary).exists() {
            return Err(format!(
                "{} is missing; run cargo build --release",
                dir.join(binary).display()
            ));
        }
    }
    let total = Instant::now();

    let (emulator, emulator_addr) = start_emulator(&dir)?;
    eprintln!(
        "emulator at {emulator_addr}; cold starts: {} + {} runs per binary and poll",
        plan.cold_warmup, plan.cold_runs
    );
    let cold = cold_starts(&plan, &dir, emulator_addr)?;

    let (_, handler, handler_addr) = start_timed(
        Binary::Handler,
        &dir,
        emulator_addr,
        Duration::from_millis(5),
    )?;
    let (_, baseline, baseline_addr) = start_timed(
        Binary::Baseline,
        &dir,
        emulator_addr,
        Duration::from_millis(5),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let mut memory = Memory {
        idle: status_kib(handler.pid(), "VmRSS"),
        after_batches: None,
        after_sustained: None,
        peak: None,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    let (batches, mut sustained) = runtime.block_on(async {
        let arrivals = subscribe(emulator_addr).await?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|err| err.to_string())?;
        let mut bench = Bench {
            http,
            handler: handler_addr,
            baseline: baseline_addr,
            emulator: emulator_addr,
            arrivals,
            next_id: 1,
            invocation: 0,
        };
        batches_and_load(
            &plan,
            &mut bench,
            handler.pid(),
            emulator.pid(),
            &mut memory,
        )
        .await
    })?;
    drop(runtime);
    drop((handler, baseline, emulator));
    eprintln!(
        "handler's own work, in-process: {} × 1,000 changes",
        plan.own_work_reps
    );
    sustained.own_work = own_work(1_000, plan.own_work_reps)?;
    eprintln!("measured in {:.0} s", total.elapsed().as_secs_f64());
    Ok(report(&plan, quick, &batches, &cold, &memory, &sustained))
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-baseline") {
        let port = args.get(i + 1).map_or("", String::as_str);
        return match serve_baseline(port) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("baseline server: {err}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("PIPELINE_QUICK").is_ok_and(|v| v == "1");
    let build = !args.iter().any(|a| a == "--no-build");
    match run(quick, build) {
        Ok(table) => {
            println!("{table}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("pipeline bench failed: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
