//! `webpubsub-emulator`: runs the local Web PubSub service until Ctrl-C or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use webpubsub_emulator::config::connection_string;
use webpubsub_emulator::fault::{is_fault_status, DEFAULT_FAULT_STATUS};
use webpubsub_emulator::{AccessKey, Config, Emulator, JwksSource};

/// Exit code for bad command-line arguments (EX_USAGE).
const EX_USAGE: u8 = 64;

const USAGE: &str =
    "usage: webpubsub-emulator [--host ADDR] [--port PORT] [--access-key KEY] [--entra-jwks JWKS]
                          [--fail-next N [--fail-status S] [--retry-after SECONDS]] [--latency-ms MS]
  --host ADDR        address to listen on (default 127.0.0.1)
  --port PORT        port to listen on, 0 for any free port (default 8080)
  --access-key KEY   access key for tokens, at least 32 bytes (default: the public dev key;
                     also read from WebPubSub__AccessKey)
  --entra-jwks JWKS  also accept RS256 Microsoft Entra tokens on the REST API, checked against
                     this JWKS: an http(s) URL (fetched at start) or a file path (default: none;
                     also read from WebPubSub__EntraJwks)
fault injection, for trying out retries (see also PUT /emulator/faults):
  --fail-next N      fail the next N REST data-plane requests (default 0)
  --fail-status S    the status they get, 400 to 599 (default 503)
  --retry-after SECONDS
                     send Retry-After: SECONDS with them (default: no header)
  --latency-ms MS    delay every REST data-plane request by MS milliseconds (default 0)
environment: RUST_LOG sets the log filter (default info)";

/// Everything the command line sets.
#[derive(Debug)]
struct Options {
    config: Config,
    faults: FaultFlags,
}

/// The fault plan the command line asks for, applied once the emulator is running.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FaultFlags {
    fail_next: u64,
    status: u16,
    retry_after: Option<u64>,
    latency: Duration,
}

impl Default for FaultFlags {
    fn default() -> Self {
        FaultFlags {
            fail_next: 0,
            status: DEFAULT_FAULT_STATUS,
            retry_after: None,
            latency: Duration::ZERO,
        }
    }
}

impl FaultFlags {
    fn apply(&self, faults: &webpubsub_emulator::Faults) {
        if self.fail_next > 0 {
            faults.fail_next(self.fail_next, self.status, self.retry_after);
        }
        faults.set_latency(self.latency);
    }

    /// One line for the start banner, when any fault is set.
    fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.fail_next > 0 {
            let mut part = format!(
                "failing the next {} REST requests with {}",
                self.fail_next, self.status
            );
            if let Some(seconds) = self.retry_after {
                part.push_str(&format!(" (Retry-After: {seconds})"));
            }
            parts.push(part);
        }
        if !self.latency.is_zero() {
            parts.push(format!(
                "delaying every REST request by {} ms",
                self.latency.as_millis()
            ));
        }
        (!parts.is_empty()).then(|| format!("fault injection: {}", parts.join(", ")))
    }
}

fn number(name: &str, text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{name}: '{text}' is not a whole number"))
}

/// Reads the settings from `args` (without the program name) and the environment `env`.
fn parse_args(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Options, String> {
    let mut config = Config::default();
    let mut faults = FaultFlags::default();
    let mut status_given = false;
    let mut host: IpAddr = config.listen.ip();
    let mut port = config.listen.port();
    if let Some(key) = env("WebPubSub__AccessKey") {
        config.access_key =
            AccessKey::new(key).map_err(|e| format!("WebPubSub__AccessKey: {e}"))?;
    }
    if let Some(jwks) = env("WebPubSub__EntraJwks").filter(|v| !v.is_empty()) {
        config.entra_jwks = Some(JwksSource::parse(&jwks));
    }

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{name} needs a value"))
        };
        match name.as_str() {
            "--host" => {
                let text = value()?;
                host = text
                    .parse()
                    .map_err(|_| format!("--host: '{text}' is not an IP address"))?;
            }
            "--port" => {
                let text = value()?;
                port = text
                    .parse()
                    .map_err(|_| format!("--port: '{text}' is not a port number"))?;
            }
            "--access-key" => {
                config.access_key =
                    AccessKey::new(value()?).map_err(|e| format!("--access-key: {e}"))?;
            }
            "--entra-jwks" => {
                let text = value()?;
                if text.is_empty() {
                    return Err("--entra-jwks needs a url or a file path".to_owned());
                }
                config.entra_jwks = Some(JwksSource::parse(&text));
            }
            "--fail-next" => faults.fail_next = number(&name, &value()?)?,
            "--fail-status" => {
                let text = value()?;
                faults.status =
                    text.parse()
                        .ok()
                        .filter(|s| is_fault_status(*s))
                        .ok_or(format!(
                            "--fail-status: '{text}' is not a status from 400 to 599"
                        ))?;
                status_given = true;
            }
            "--retry-after" => faults.retry_after = Some(number(&name, &value()?)?),
            "--latency-ms" => {
                faults.latency = Duration::from_millis(number(&name, &value()?)?);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }

    if faults.fail_next == 0 && (status_given || faults.retry_after.is_some()) {
        return Err("--fail-status and --retry-after only apply with --fail-next N".to_owned());
    }

    config.listen = SocketAddr::new(host, port);
    config.validate().map_err(|e| e.to_string())?;
    Ok(Options { config, faults })
}

#[tokio::main]
async fn main() -> ExitCode {
    let Options { config, faults } =
        match parse_args(std::env::args().skip(1), |name| std::env::var(name).ok()) {
            Ok(options) => options,
            Err(message) if message.is_empty() => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Err(message) => {
                eprintln!("webpubsub-emulator: {message}");
                return ExitCode::from(EX_USAGE);
            }
        };

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let key = config.access_key.clone();
    let emulator = match Emulator::start(config).await {
        Ok(emulator) => emulator,
        Err(err) => {
            eprintln!("webpubsub-emulator: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    faults.apply(&emulator.faults());

    let addr = emulator.local_addr();
    println!("webpubsub-emulator listening on http://{addr}");
    println!("connection string: {}", connection_string(addr, &key));
    println!("console: http://{addr}/");
    if let Some(line) = faults.describe() {
        println!("{line}");
    }

    webpubsub_emulator::shutdown_signal().await;
    tracing::info!("shutting down");
    if let Err(err) = emulator.shutdown().await {
        eprintln!("webpubsub-emulator: error while stopping: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/entra-test-jwks.json"
    );

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        parse_all(args, env).map(|options| options.config)
    }

    fn parse_all(args: &[&str], env: &[(&str, &str)]) -> Result<Options, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_args(args.iter().map(|a| a.to_string()), move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn entra_jwks_flag_takes_a_path_or_a_url() {
        assert_eq!(parse(&[], &[]).unwrap().entra_jwks, None);
        let config = parse(&["--entra-jwks", JWKS], &[]).unwrap();
        assert_eq!(config.entra_jwks, Some(JwksSource::File(JWKS.into())));
        let config = parse(&["--entra-jwks=http://127.0.0.1:9/keys"], &[]).unwrap();
        assert_eq!(
            config.entra_jwks,
            Some(JwksSource::Url("http://127.0.0.1:9/keys".into()))
        );
        let config = parse(
            &[
                "--entra-jwks",
                "https://login.microsoftonline.com/t/discovery/v2.0/keys",
            ],
            &[],
        )
        .unwrap();
        assert!(matches!(config.entra_jwks, Some(JwksSource::Url(_))));
        assert!(parse(&["--entra-jwks"], &[])
            .unwrap_err()
            .contains("--entra-jwks needs a value"));
    }

    #[test]
    fn entra_jwks_comes_from_the_environment_and_the_flag_wins() {
        let config = parse(&[], &[("WebPubSub__EntraJwks", JWKS)]).unwrap();
        assert_eq!(config.entra_jwks, Some(JwksSource::File(JWKS.into())));
        let config = parse(
            &["--entra-jwks", "http://127.0.0.1:9/k"],
            &[("WebPubSub__EntraJwks", JWKS)],
        )
        .unwrap();
        assert_eq!(
            config.entra_jwks,
            Some(JwksSource::Url("http://127.0.0.1:9/k".into()))
        );
    }

    #[test]
    fn a_bad_jwks_file_is_a_usage_error() {
        let err = parse(&["--entra-jwks", "/nonexistent/keys.json"], &[]).unwrap_err();
        assert!(err.contains("/nonexistent/keys.json"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        let pem = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/entra-test-key.pem"
        );
        assert!(parse(&["--entra-jwks", pem], &[])
            .unwrap_err()
            .contains("not a JWKS"));
        let err = parse(&[], &[("WebPubSub__EntraJwks", "/nonexistent/env.json")]).unwrap_err();
        assert!(err.contains("/nonexistent/env.json"), "{err}");
    }

    #[test]
    fn usage_names_the_flag_and_its_variable() {
        assert!(USAGE.contains("--entra-jwks"));
        assert!(USAGE.contains("WebPubSub__EntraJwks"));
    }

    #[test]
    fn fault_flags_set_the_plan() {
        assert_eq!(parse_all(&[], &[]).unwrap().faults, FaultFlags::default());
        let faults = parse_all(
            &[
                "--fail-next",
                "3",
                "--fail-status=429",
                "--retry-after",
                "2",
                "--latency-ms",
                "150",
            ],
            &[],
        )
        .unwrap()
        .faults;
        assert_eq!(
            faults,
            FaultFlags {
                fail_next: 3,
                status: 429,
                retry_after: Some(2),
                latency: Duration::from_millis(150),
            }
        );
        let line = faults.describe().unwrap();
        assert!(line.contains("next 3") && line.contains("429"), "{line}");
        assert!(
            line.contains("Retry-After: 2") && line.contains("150 ms"),
            "{line}"
        );
        assert_eq!(FaultFlags::default().describe(), None);
    }

    #[test]
    fn bad_fault_flags_are_usage_errors() {
        for (args, needle) in [
            (&["--fail-next", "x"][..], "not a whole number"),
            (
                &["--fail-next", "1", "--fail-status", "200"][..],
                "400 to 599",
            ),
            (
                &["--fail-next", "1", "--fail-status", "abc"][..],
                "400 to 599",
            ),
            (&["--latency-ms", "-5"][..], "not a whole number"),
            (&["--retry-after", "1"][..], "only apply with --fail-next"),
            (&["--fail-status", "500"][..], "only apply with --fail-next"),
        ] {
            let err = parse_all(args, &[]).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn usage_names_the_fault_flags() {
        for flag in [
            "--fail-next",
            "--fail-status",
            "--retry-after",
            "--latency-ms",
        ] {
            assert!(USAGE.contains(flag), "{flag}");
        }
    }
}
