//! The real `handler` binary as the Functions host runs it: bad settings stop it at once
//! with exit code 64 and one line naming the setting (never the key), and with good ones it
//! answers the readiness probe, delivers an invocation and exits cleanly on SIGTERM.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{closed_port, invocation, start_emulator, subscribe_to, Encoding, REPO_ROOT, WAIT};
use serde_json::json;

/// The key of the connection strings below, which must never be printed.
const SECRET: &str = "secret-secret-secret-secret-secret-00";

/// Exit code for bad arguments or settings.
const EX_USAGE: i32 = 64;

/// The handler binary with an empty environment but for `PATH` and the app root, as a
/// clean host would start it.
fn handler() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_handler"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AzureWebJobsScriptRoot", REPO_ROOT)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A started handler, killed if the test ends before it exits.
struct Running {
    child: Child,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

/// What a handler printed and how it ended.
struct Exited {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Running {
    fn start(command: &mut Command) -> Running {
        let mut child = command.spawn().expect("the handler binary starts");
        let stdout = read_all(child.stdout.take().unwrap());
        let stderr = read_all(child.stderr.take().unwrap());
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits up to `WAIT` for the process to exit on its own.
    async fn exited(mut self) -> Exited {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the handler did not exit within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let stdout = std::mem::replace(&mut self.stdout, std::thread::spawn(String::new));
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        Exited {
            code: status.code(),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }
}

impl Running {
    /// Sends SIGTERM, as the host does when it stops a worker.
    fn terminate(&self) {
        let killed = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Runs the handler with `args` and `env` added to the clean environment, to its exit.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Exited {
    let mut command = handler();
    command.args(args).envs(env.iter().copied());
    Running::start(&mut command).exited().await
}

/// Checks a settings failure: exit 64 and exactly one line on stderr, containing `name`.
fn assert_refused(exited: &Exited, name: &str) {
    assert_eq!(exited.code, Some(EX_USAGE), "stderr: {}", exited.stderr);
    let lines: Vec<&str> = exited.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{:?}", exited.stderr);
    assert!(
        lines[0].contains(name),
        "{:?} does not name {name}",
        lines[0]
    );
}

/// Without `WebPubSubConnectionString` the handler exits 64 with one line naming it.
#[tokio::test]
async fn a_missing_connection_string_stops_the_handler_naming_it() {
    let exited = run(&[], &[]).await;
    assert_refused(&exited, "WebPubSubConnectionString");
}

/// A `WebPubSubTarget` that is no target stops the handler with one line naming it.
#[tokio::test]
async fn a_bad_target_stops_the_handler_naming_it() {
    let connection = format!("Endpoint=http://127.0.0.1:1;AccessKey={SECRET};Version=1.0;");
    let env = [
        ("WebPubSubConnectionString", connection.as_str()),
        ("WebPubSubHub", "h"),
        ("WebPubSubTarget", "room:1"),
    ];
    let exited = run(&[], &env).await;
    assert_refused(&exited, "WebPubSubTarget");
    assert!(!exited.stderr.contains(SECRET), "{}", exited.stderr);
}

/// Whatever setting is wrong, the access key in the connection string is not printed.
#[tokio::test]
async fn settings_errors_never_print_the_access_key() {
    let good = format!("Endpoint=http://127.0.0.1:1;AccessKey={SECRET};Version=1.0;");
    let cases = [
        (
            "RowcastRoutes",
            good.clone(),
            r#"{"sql-changes":{"target":"user:{"}}"#,
        ),
        ("RowcastRoutes", good.clone(), "not json"),
        (
            "RowcastRoutes",
            good.clone(),
            r#"{"sql-changes":{"hub":"1 bad hub"}}"#,
        ),
        (
            "WebPubSubConnectionString",
            format!("Endpoint=http://h;{SECRET}"),
            "{}",
        ),
        (
            "WebPubSubConnectionString",
            format!("Endpoint=ftp://h;AccessKey={SECRET}"),
            "{}",
        ),
        (
            "WebPubSubConnectionString",
            format!("Endpoint=http://h;Port=0;AccessKey={SECRET}"),
            "{}",
        ),
        (
            "WebPubSubConnectionString",
            format!("AccessKey={SECRET}"),
            "{}",
        ),
    ];
    for (name, connection, routes) in cases {
        let env = [
            ("WebPubSubConnectionString", connection.as_str()),
            ("WebPubSubHub", "h"),
            ("RowcastRoutes", routes),
        ];
        let exited = run(&[], &env).await;
        assert_refused(&exited, name);
        assert!(
            !exited.stderr.contains(SECRET),
            "{connection} / {routes}: {}",
            exited.stderr
        );
        assert!(
            !exited.stdout.contains(SECRET),
            "{connection} / {routes}: {}",
            exited.stdout
        );
    }
}

/// `--help` prints the usage and exits 0.
#[tokio::test]
async fn help_prints_the_usage_and_succeeds() {
    let exited = run(&["--help"], &[]).await;
    assert_eq!(exited.code, Some(0), "{}", exited.stderr);
    assert!(
        exited.stdout.starts_with("usage: handler"),
        "{}",
        exited.stdout
    );
}

/// An unknown command exits 64 and names it.
#[tokio::test]
async fn an_unknown_command_is_a_usage_error() {
    let exited = run(&["bogus"], &[]).await;
    assert_eq!(exited.code, Some(EX_USAGE), "{}", exited.stderr);
    assert!(exited.stderr.contains("'bogus'"), "{}", exited.stderr);
}

/// Starts the handler the way the host does (a port in `FUNCTIONS_CUSTOMHANDLER_PORT`,
/// settings in the environment), publishing to `emulator`, and waits until the host's
/// readiness probe would succeed: any answer on `/` counts, socket errors mean "not yet".
async fn serve_for_the_host(
    emulator: &webpubsub_emulator::Emulator,
) -> (Running, reqwest::Client, String) {
    let port = closed_port().to_string();
    let connection = emulator.connection_string();
    let mut command = handler();
    command.envs([
        ("FUNCTIONS_CUSTOMHANDLER_PORT", port.as_str()),
        ("WebPubSubConnectionString", connection.as_str()),
        ("WebPubSubHub", "SQLUsers"),
        ("WebPubSubTarget", "user:12345"),
    ]);
    let running = Running::start(&mut command);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(response) = http.get(format!("{base}/")).send().await {
            assert_eq!(response.status(), 200);
            return (running, http, base);
        }
        assert!(
            Instant::now() < deadline,
            "the handler did not answer GET / within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Started the way the host starts it, the handler answers the readiness probe, delivers
/// an invocation to a subscriber, and exits 0 on SIGTERM.
#[tokio::test]
async fn the_binary_serves_the_host_and_stops_on_sigterm() {
    let emulator = start_emulator().await;
    let (running, http, base) = serve_for_the_host(&emulator).await;

    let mut subscriber = subscribe_to(&emulator, "SQLUsers", "12345", &[]).await;
    let changes = json!([{"Operation": 0, "Item": {"Id": 1, "UserName": "ann"}}]);
    let response = http
        .post(format!("{base}/sql-changes"))
        .header("content-type", "application/json")
        .header("x-azure-functions-invocationid", "binary-test")
        .body(invocation("changes", &changes, Encoding::DoubleString))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let change = subscriber.next_change().await;
    assert_eq!(change["table"], "dbo.Users");
    assert_eq!(change["row"], json!({"Id": 1, "UserName": "ann"}));

    running.terminate();
    let exited = running.exited().await;
    assert_eq!(exited.code, Some(0), "stderr: {}", exited.stderr);
    assert!(!exited.stderr.contains("eyJ"), "{}", exited.stderr);
}

/// A batch in flight when SIGTERM arrives still finishes and is answered before the process
/// exits: the handler stops accepting, not working.
#[tokio::test]
async fn sigterm_lets_an_in_flight_batch_finish() {
    let emulator = start_emulator().await;
    // Every REST call takes a while, so the batch is surely still running at SIGTERM.
    emulator.faults().set_latency(Duration::from_millis(800));
    let (running, http, base) = serve_for_the_host(&emulator).await;

    let mut subscriber = subscribe_to(&emulator, "SQLUsers", "12345", &[]).await;
    let changes = json!([{"Operation": 0, "Item": {"Id": 1}}, {"Operation": 0, "Item": {"Id": 2}}]);
    let batch = tokio::spawn(
        http.post(format!("{base}/sql-changes"))
            .header("content-type", "application/json")
            .body(invocation("changes", &changes, Encoding::DoubleString))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.terminate();

    let response = batch
        .await
        .unwrap()
        .expect("the batch is answered, not cut off");
    assert_eq!(response.status(), 200);
    let mut ids: Vec<u64> = subscriber
        .changes(2)
        .await
        .iter()
        .map(|c| c["row"]["Id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    let exited = running.exited().await;
    assert_eq!(exited.code, Some(0), "stderr: {}", exited.stderr);
}
