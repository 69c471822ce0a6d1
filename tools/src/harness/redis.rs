//! redis-server child processes: each on a free port with a directory of its own (removed when
//! dropped), optionally with an append-only file fsync'ed on every write, so that a SIGKILL
//! loses nothing Redis acknowledged. Starting one blocks (it is used from plain tests too).
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{HarnessError, Process};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long a started redis-server may take to answer PING.
const READY: Duration = Duration::from_secs(10);

/// A running redis-server.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    process: Process,
}

impl RedisServer {
    /// Starts `binary` (e.g. `redis-server`, looked up on PATH) on a free port, with `aof` and
    /// the arguments `extra()` gives for each port tried (cluster mode wants its own bus port).
    pub fn start(
        binary: &str,
        aof: bool,
        extra: impl Fn() -> Vec<String>,
    ) -> Result<RedisServer, HarnessError> {
        let mut log = String::new();
        for _ in 0..20 {
            // A directory per try: a try that failed may leave a cluster config naming its port.
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("tim-redis-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let port = super::free_port()?;
            let aof = if aof { "yes" } else { "no" };
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--protected-mode",
                "no",
                "--appendonly",
                aof,
                "--appendfsync",
                "always",
                "--dir",
                &dir.display().to_string(),
                "--logfile",
                &dir.join("redis.log").display().to_string(),
            ]
            .into_iter()
            .map(String::from)
            .chain(extra())
            .collect();
            let process = Process::new(binary, args).cleanup_dir(&dir);
            let mut server = RedisServer { port, dir, process };
            if server.spawn()? {
                return Ok(server);
            }
            log = server.log_tail();
        }
        let what = format!("{binary} (its last log lines: {log})");
        Err(HarnessError::NotReady { what, within: READY })
    }

    /// The last lines of the server's log, joined, for an error message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's pid while it runs, to read its CPU and RSS.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// SIGKILLs the server (no shutdown, no final save).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port and directory (reloading its AOF).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + READY;
        while !self.spawn()? {
            if Instant::now() > deadline {
                let what = format!("redis-server on port {} ({})", self.port, self.log_tail());
                return Err(HarnessError::NotReady { what, within: READY });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Starts the process; false if it exited (port taken, most likely) or never answered.
    fn spawn(&mut self) -> Result<bool, HarnessError> {
        self.process.start()?;
        let deadline = Instant::now() + READY;
        while Instant::now() < deadline {
            if self.process.exited() {
                return Ok(false);
            }
            if redis_command(self.port, "PING").starts_with("+PONG") {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process.kill();
        Ok(false)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends an inline command to the server on `port`; returns the start of the reply ("" if none).
pub fn redis_command(port: u16, cmd: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("{cmd}\r\n").as_bytes()).is_err() {
        return String::new();
    }
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}
