//! Child processes for the tools and for tim's integration tests: tim nodes, the bench's bare
//! relay and redis-server, each on its own port, killed when dropped and, through a watchdog,
//! when the process that started them dies without dropping them.
//!
//! # Layout
//! - `process`: one child process: start, kill, terminate (SIGTERM), start again; the watchdog.
//! - `server`: a child that serves on an address, waited for until it answers (gRPC health for
//!   a node, a TCP accept for the relay); `tim serve` command lines.
//! - `redis`: redis-server on a free port with a directory of its own, optionally with an AOF
//!   fsync'ed on every write.
//! - `exe`: where the `tim` executable is.
use std::time::Duration;

mod exe;
mod process;
mod redis;
mod server;

pub use exe::{TIM_BIN, tim_exe};
pub use process::Process;
pub use redis::{RedisServer, redis_command};
pub use server::{Probe, READY, Server, answers, tim_serve, wait_answering};

/// Why a child process could not be started, or did not come up.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{0} exited before it answered")]
    Exited(String),
    #[error("{what} did not answer within {within:?}")]
    NotReady { what: String, within: Duration },
    #[error("{what} did not exit within {within:?} of SIGTERM (killed)")]
    Stuck { what: String, within: Duration },
    #[error(
        "cannot find the tim executable ({0}): build it with `cargo build --release` (it goes \
         beside this one), or name it with --tim or {TIM_BIN}"
    )]
    NoTim(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
