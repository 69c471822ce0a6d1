//! The `tim` binary: server, client CLI and tools. Parses flags, sets up logging, and calls the
//! library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod cli;

#[derive(Parser)]
#[command(name = "tim", version, about = "tim: distributed instant messaging over gRPC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(Box<tim::Config>),
    /// Log in, send one message, print its seq once it is stored.
    Send(cli::SendArgs),
    /// Interactive chat: prints `<from>: <body>`, sends lines typed as `<to>: <text>`.
    Chat(cli::ChatArgs),
    /// Start nodes and Redis, drive users while killing and restarting them, check delivery.
    Chaos(tim::chaos::ChaosOptions),
    /// Load generator: start node(s), measure throughput, latency, CPU and RSS against
    /// baselines; the last line sums it up.
    Bench(Box<tim::bench::BenchArgs>),
    /// The bare relay `tim bench` measures as its transport baseline (started by it).
    #[command(hide = true)]
    BenchRelay(cli::BenchRelayArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(config) => cli::serve(*config).await,
            Command::Send(args) => cli::send(args).await,
            Command::Chat(args) => cli::chat(args).await,
            Command::Chaos(opts) => cli::chaos(opts).await,
            Command::Bench(args) => cli::bench(*args).await,
            Command::BenchRelay(args) => cli::bench_relay(args).await,
        }
    });
    // `tim chat` may leave a blocking stdin read behind: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tim: {e}");
            ExitCode::FAILURE
        }
    }
}
