//! The `handler` binary: the custom handler the Functions host starts, and `handler dev`,
//! the local stack.

use std::net::SocketAddr;
use std::process::ExitCode;

use rowcast::dev::{self, DevOptions};
use rowcast::server::{self, Handler};
use rowcast::settings::{Config, Settings};

/// Exit code for bad arguments or settings (EX_USAGE), so a misconfigured app fails fast
/// and visibly instead of answering the host with errors.
const EX_USAGE: u8 = 64;

const USAGE: &str = "usage: handler [dev [--demo] [--port PORT] [--emulator-port PORT]]
  (no command)          serve the Functions host on 127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT
                        (default 3000), configured by app settings in the environment
  dev                   run the whole pipeline locally: the embedded Web PubSub emulator,
                        the handler, and a subscriber URL for user 12345 on hub SQLUsers
  --demo                post a synthetic dbo.Users change every second through /sql-changes
  --port PORT           handler port in dev (default 3000; 0 for any free port)
  --emulator-port PORT  embedded emulator port (default 8080; 0 for any free port)
environment: RUST_LOG sets the log filter (default info)";

enum Command {
    Serve,
    Dev(DevOptions),
}

fn parse_args() -> Result<Command, String> {
    let mut args = std::env::args().skip(1);
    let mut options = DevOptions::default();
    match args.next().as_deref() {
        None => return Ok(Command::Serve),
        Some("dev") => {}
        Some("-h" | "--help") => return Err(String::new()),
        Some(other) => return Err(format!("unknown command '{other}'")),
    }

    while let Some(arg) = args.next() {
        let mut port = |name: &str| -> Result<u16, String> {
            let text = args.next().ok_or(format!("{name} needs a value"))?;
            text.parse()
                .map_err(|_| format!("{name}: '{text}' is not a port number"))
        };
        match arg.as_str() {
            "--demo" => options.demo = true,
            "--port" => options.handler.set_port(port("--port")?),
            "--emulator-port" => options.emulator.set_port(port("--emulator-port")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(Command::Dev(options))
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = match parse_args() {
        Ok(command) => command,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("handler: {message}\n{USAGE}");
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

    match command {
        Command::Serve => serve().await,
        Command::Dev(options) => run_dev(options).await,
    }
}

async fn serve() -> ExitCode {
    let config = match Config::from_settings(&Settings::from_env()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("handler: invalid configuration: {err}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], config.port));
    let handler = match Handler::new(config) {
        Ok(handler) => handler,
        Err(err) => {
            eprintln!("handler: {err}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("handler: cannot listen on {addr}: {err}");
            return ExitCode::FAILURE;
        }
    };

    tracing::info!(%addr, functions = handler.config.functions.len(), "rowcast handler listening");
    if let Err(err) = server::serve(listener, handler, webpubsub_emulator::shutdown_signal()).await
    {
        eprintln!("handler: server error: {err}");
        return ExitCode::FAILURE;
    }
    tracing::info!("rowcast handler stopped");
    ExitCode::SUCCESS
}

async fn run_dev(options: DevOptions) -> ExitCode {
    let root = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let stack = match dev::start(&options, Settings::from_env(), &root).await {
        Ok(stack) => stack,
        Err(err @ dev::DevError::Settings(_)) => {
            eprintln!("handler: invalid configuration: {err}");
            return ExitCode::from(EX_USAGE);
        }
        Err(err) => {
            eprintln!("handler: {err}");
            return ExitCode::FAILURE;
        }
    };
    for line in &stack.lines {
        println!("{line}");
    }
    if options.demo {
        println!("demo                 posting a dbo.Users change every second; Ctrl-C stops");
    }

    webpubsub_emulator::shutdown_signal().await;
    if let Err(err) = stack.shutdown().await {
        eprintln!("handler: error while stopping: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
