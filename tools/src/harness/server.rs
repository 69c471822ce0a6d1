//! A child process that serves on an address (a tim node, the bench's bare relay): started on a
//! given port or a free one, then waited for until it answers.
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::{HarnessError, Process};

/// How long a started child may take to answer.
pub const READY: Duration = Duration::from_secs(15);

/// How long a terminated node may take to drain and exit.
const GRACE: Duration = Duration::from_secs(10);

/// What "it answers" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The gRPC health check says SERVING (a tim node).
    Health,
    /// It accepts a TCP connection.
    Tcp,
}

/// A serving child process.
#[derive(Debug)]
pub struct Server {
    /// host:port it serves on.
    pub addr: String,
    probe: Probe,
    process: Process,
}

/// `tim serve --addr <addr> <flags…>`.
pub fn tim_serve<S: AsRef<str>>(tim: &Path, addr: &str, flags: &[S]) -> Process {
    let args = ["serve", "--addr", addr].into_iter().chain(flags.iter().map(AsRef::as_ref));
    Process::new(tim, args)
}

impl Server {
    /// Starts `process`, which serves on `addr`, and waits until it answers.
    pub async fn start(process: Process, addr: &str, probe: Probe) -> Result<Server, HarnessError> {
        let mut server = Server { addr: addr.to_string(), probe, process };
        server.restart().await?;
        Ok(server)
    }

    /// Starts `command(addr)` on a free port and waits until it answers; tries another port if
    /// the child exits first (the port was taken meanwhile).
    pub async fn start_on_free_port(
        probe: Probe,
        command: impl Fn(SocketAddr) -> Process,
    ) -> Result<Server, HarnessError> {
        let mut last = None;
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()?));
            match Server::start(command(addr), &addr.to_string(), probe).await {
                Err(HarnessError::Exited(what)) => last = Some(what),
                done => return done,
            }
        }
        Err(HarnessError::Exited(last.unwrap_or_default()))
    }

    /// The running child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// SIGKILL: no drain, no cleanup.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM, then waits for it to exit.
    pub async fn terminate(&mut self) -> Result<ExitStatus, HarnessError> {
        self.process.terminate(GRACE).await
    }

    /// Starts it again with the same command line (same port), and waits until it answers.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.process.start()?;
        let Server { addr, probe, process } = self;
        let what = format!("{} on {addr}", process.name());
        wait_answering(addr, *probe, &what, || process.exited()).await
    }
}

/// Waits up to [`READY`] until `addr` answers; fails early once `exited()` says the child is gone.
pub async fn wait_answering(
    addr: &str,
    probe: Probe,
    what: &str,
    mut exited: impl FnMut() -> bool,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + READY;
    loop {
        if exited() {
            return Err(HarnessError::Exited(what.to_string()));
        }
        if answers(addr, probe).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(HarnessError::NotReady { what: what.to_string(), within: READY });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `addr` answers `probe` now.
pub async fn answers(addr: &str, probe: Probe) -> bool {
    if probe == Probe::Tcp {
        return tokio::net::TcpStream::connect(addr).await.is_ok();
    }
    let Ok(ch) = tim::client::channel(addr, &Default::default()).await else { return false };
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    h.check(req).await.is_ok_and(|r| r.into_inner().status == serving)
}
