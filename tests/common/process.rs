//! tim nodes as child processes, for faults an in-process node cannot show: SIGKILL, SIGTERM,
//! restart on the same port. A thin use of `tim_tools::harness`, failing the test on errors.
use std::path::Path;

use tim_tools::harness::{self, Probe, Server};

use super::{Backend, SECRET};

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
        let mut flags: Vec<String> = vec!["--token-secret".into(), SECRET.into()];
        if let Backend::Redis { url, prefix, cluster } = backend {
            flags.extend(["--redis".into(), url.clone(), "--redis-prefix".into(), prefix.clone()]);
            if *cluster {
                flags.push("--redis-cluster".into());
            }
        }
        flags.extend(extra.iter().cloned());
        let tim = Path::new(env!("CARGO_BIN_EXE_tim"));
        let server = Server::start(harness::tim_serve(tim, addr, &flags), addr, Probe::Health);
        NodeProcess { addr: addr.to_string(), server: server.await.unwrap() }
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
