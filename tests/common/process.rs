//! tim nodes as child processes, for faults an in-process node cannot show: SIGKILL, SIGTERM,
//! restart on the same port. A thin use of `tim_tools::harness`, failing the test on errors.
use std::path::Path;

use tim_tools::harness::{self, Probe, Server};

use super::{Backend, NODE_SECRET, SECRET};

/// A `tim serve` child process on a fixed port.
pub struct NodeProcess {
    pub addr: String,
    server: Server,
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    harness::free_port().unwrap()
}

impl NodeProcess {
    /// Starts `tim serve` on `addr` with the test secret, `backend` and `extra` flags, and waits
    /// until it answers.
    pub async fn start(addr: &str, backend: &Backend, extra: &[String]) -> NodeProcess {
        let mut flags: Vec<String> = vec![
            "--token-secret".into(),
            SECRET.into(),
            "--node-secret".into(),
            NODE_SECRET.into(),
        ];
        if let Backend::Redis { url, prefix, cluster } = backend {
            flags.extend(["--redis".into(), url.clone(), "--redis-prefix".into(), prefix.clone()]);
            if *cluster {
                flags.push("--redis-cluster".into());
            }
        }
        flags.extend(extra.iter().cloned());
        let tim = Path::new(env!("CARGO_BIN_EXE_tim"));
        // The harness probes health in plaintext; a TLS node is up once it accepts.
        let probe =
            if flags.iter().any(|f| f == "--tls-cert") { Probe::Tcp } else { Probe::Health };
        let server = Server::start(harness::tim_serve(tim, addr, &flags), addr, probe);
        NodeProcess { addr: addr.to_string(), server: server.await.unwrap() }
    }

    /// The resident set size of the process, in bytes (Linux).
    pub fn rss(&self) -> u64 {
        let pid = self.server.pid().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// SIGHUP (a TLS node reloads its certificates).
    pub fn hang_up(&self) {
        let pid = self.server.pid().expect("running").to_string();
        let status = std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(status.success());
    }

    /// SIGKILL: no drain, no cleanup.
    pub async fn kill(&mut self) {
        self.server.kill();
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(&mut self) {
        let status = self.server.terminate().await.unwrap();
        assert!(status.success(), "{status:?}");
    }

    /// Starts it again with the same flags (same port).
    pub async fn restart(&mut self) {
        self.server.restart().await.unwrap();
    }
}
