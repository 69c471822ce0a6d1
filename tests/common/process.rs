//! tim nodes as child processes, for faults an in-process node cannot show: SIGKILL, SIGTERM,
//! restart on the same port.
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::{Backend, SECRET};

/// A `tim serve` child process on a fixed port.
pub struct NodeProcess {
    pub addr: String,
    args: Vec<String>,
    child: Option<Child>,
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl NodeProcess {
    /// Starts `tim serve` on `addr` with the test secret, `backend` and `extra` flags, and waits
    /// until it answers.
    pub async fn start(addr: &str, backend: &Backend, extra: &[String]) -> NodeProcess {
        let mut args: Vec<String> = ["serve", "--addr", addr, "--token-secret", SECRET]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Backend::Redis { url, prefix, cluster } = backend {
            args.extend(["--redis".into(), url.clone(), "--redis-prefix".into(), prefix.clone()]);
            if *cluster {
                args.push("--redis-cluster".into());
            }
        }
        args.extend(extra.iter().cloned());
        let mut node = NodeProcess { addr: addr.to_string(), args, child: None };
        node.spawn().await;
        node
    }

    async fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_tim"))
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = self.addr.clone();
        super::eventually(|| async {
            let ch = tim::client::channel(&addr, &Default::default()).await.ok()?;
            let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
            h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.ok()
        })
        .await;
    }

    /// SIGKILL: no drain, no cleanup.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().unwrap().to_string();
            std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            let status = tokio::time::timeout(super::WAIT, c.wait()).await.unwrap().unwrap();
            assert!(status.success(), "{status:?}");
        }
    }

    /// Starts it again with the same flags (same port).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn().await;
    }
}
