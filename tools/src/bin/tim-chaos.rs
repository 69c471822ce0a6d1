//! `tim-chaos`, run as `tim chaos`: starts nodes and Redis, drives users while killing and
//! restarting them, and prints the delivery verdict as its last line; fails unless it is clean.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tim_tools::chaos::{self, ChaosOptions};

/// Start nodes and Redis, drive users while killing and restarting them, check delivery.
#[derive(Parser)]
#[command(name = "tim-chaos", version)]
struct Cli {
    #[command(flatten)]
    opts: ChaosOptions,
}

#[tokio::main]
async fn main() -> ExitCode {
    tim_tools::init_logging();
    let cli = Cli::parse();
    match chaos::run(&cli.opts).await {
        Ok(report) if report.clean() => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("{report}");
            eprintln!("tim-chaos: acked messages were lost, duplicated or reordered");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tim-chaos: {e}");
            ExitCode::FAILURE
        }
    }
}
