//! `tim-bench`, run as `tim bench`: the load generator; its summary is the last line printed.
//! It also serves, as the hidden `bench-relay` subcommand, the bare relay it starts and measures
//! as its transport baseline.
#![forbid(unsafe_code)]

use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tim_tools::bench::{self, BenchArgs};

/// Load generator: start node(s), measure throughput, latency, CPU and RSS against baselines;
/// the last line sums it up.
#[derive(Parser)]
#[command(name = "tim-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    args: Box<BenchArgs>,
    #[command(subcommand)]
    relay: Option<Relay>,
}

#[derive(Subcommand)]
enum Relay {
    /// The bare relay the bench measures as its transport baseline (started by it).
    #[command(hide = true)]
    BenchRelay {
        /// Address to listen on.
        #[arg(long)]
        addr: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tim_tools::init_logging();
    let cli = Cli::parse();
    let result: Result<(), Box<dyn Error>> = match cli.relay {
        Some(Relay::BenchRelay { addr }) => relay(addr).await,
        None => {
            bench::run(*cli.args).await.map(|summary| println!("{summary}")).map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tim-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the bare relay until SIGINT (the bench stops it with SIGKILL).
async fn relay(addr: SocketAddr) -> Result<(), Box<dyn Error>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let interrupted = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    bench::relay::serve(listener, interrupted).await?;
    Ok(())
}
