//! tim-tools: what drives and checks tim from the outside, kept out of the service library.
//!
//! # Layout
//! - [`bench`]: the load generator behind `tim bench` (the `tim-bench` binary), with its
//!   baselines.
//! - [`chaos`]: fault injection behind `tim chaos` (the `tim-chaos` binary) and the
//!   lost/duplicated/reordered checker, [`chaos::Ledger`], which tim's resilience tests use too.
//! - [`harness`]: child processes (tim nodes, the bench's relay, redis-server): start on a free
//!   port, wait until they answer, kill, terminate, restart, and a watchdog; shared by the bench,
//!   the chaos run and tim's integration tests.
#![forbid(unsafe_code)]

pub mod bench;
pub mod chaos;
pub mod harness;

/// Logs to stderr, filtered by `RUST_LOG` (default: info), in colour only on a terminal.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // The broker peers' clients log every connection event at info; only their warnings show.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn,rumqttc=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    logs.with_writer(std::io::stderr).init();
}
