//! `webpubsub-emulator`: runs the local Web PubSub service until Ctrl-C or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use webpubsub_emulator::config::connection_string;
use webpubsub_emulator::{AccessKey, Config, Emulator, JwksSource};

/// Exit code for bad command-line arguments (EX_USAGE).
const EX_USAGE: u8 = 64;

const USAGE: &str =
    "usage: webpubsub-emulator [--host ADDR] [--port PORT] [--access-key KEY] [--entra-jwks JWKS]
  --host ADDR        address to listen on (default 127.0.0.1)
  --port PORT        port to listen on, 0 for any free port (default 8080)
  --access-key KEY   access key for tokens, at least 32 bytes (default: the public dev key;
                     also read from WebPubSub__AccessKey)
  --entra-jwks JWKS  also accept RS256 Microsoft Entra tokens on the REST API, checked against
                     this JWKS: an http(s) URL (fetched at start) or a file path (default: none;
                     also read from WebPubSub__EntraJwks)
environment: RUST_LOG sets the log filter (default info)";

/// Reads the settings from `args` (without the program name) and the environment `env`.
fn parse_args(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, String> {
    let mut config = Config::default();
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
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }

    config.listen = SocketAddr::new(host, port);
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1), |name| std::env::var(name).ok()) {
        Ok(config) => config,
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

    let addr = emulator.local_addr();
    println!("webpubsub-emulator listening on http://{addr}");
    println!("connection string: {}", connection_string(addr, &key));
    println!("console: http://{addr}/");

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
}
