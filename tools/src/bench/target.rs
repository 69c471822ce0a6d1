//! Starting what is measured: tim nodes and the bare relay, as child processes (`tim serve`,
//! `tim-bench bench-relay`, through the [`crate::harness`]) or inside this process.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{BenchArgs, BenchError};
use crate::harness::{self, Probe, Process, Server};

/// How a node under test is configured.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub redis: Option<String>,
    /// `redis` is a Redis Cluster (its masters' URLs).
    pub redis_cluster: bool,
    pub prefix: String,
    /// Shared by every node of a run, so a token from one node is valid on the other.
    pub token_secret: String,
    /// Shared by every node of a run: the credential of relay calls.
    pub node_secret: String,
    /// Static peers (`--peers`) of the node to start: where it relays to.
    pub peers: Option<String>,
    /// `--group-max-members` of the node, when the scenario needs more than the default.
    pub group_max_members: Option<u32>,
    /// `--tim`: the tim executable to start nodes from.
    tim: Option<PathBuf>,
}

impl NodeSpec {
    pub fn new(args: &BenchArgs, prefix: &str) -> Self {
        let token_secret = format!("bench-{:032x}", rand::random::<u128>());
        let node_secret = format!("bench-node-{:032x}", rand::random::<u128>());
        let (redis, tim) = (args.redis.clone(), args.tim.clone());
        let prefix = prefix.to_string();
        Self {
            redis,
            redis_cluster: false,
            prefix,
            token_secret,
            node_secret,
            peers: None,
            group_max_members: None,
            tim,
        }
    }

    /// `tim serve` flags after `--addr`: no per-user send or per-inbox limit, the run's Redis
    /// prefix.
    fn serve_flags(&self) -> Vec<String> {
        let mut a = vec!["--send-rate".into(), "0".into(), "--inbox-rate".into(), "0".into()];
        if let Some(url) = &self.redis {
            a.extend(["--redis".into(), url.clone(), "--redis-prefix".into(), self.prefix.clone()]);
        }
        if self.redis_cluster {
            a.push("--redis-cluster".into());
        }
        if let Some(peers) = &self.peers {
            a.extend(["--peers".into(), peers.clone()]);
        }
        if let Some(max) = self.group_max_members {
            a.extend(["--group-max-members".into(), max.max(2).to_string()]);
        }
        a
    }

    fn config(&self) -> tim::Config {
        tim::Config {
            addr: "127.0.0.1:0".parse().expect("a socket address"),
            send_rate: 0,
            inbox_rate: 0,
            token_secret: Some(self.token_secret.clone()),
            node_secret: Some(self.node_secret.clone()),
            redis: self.redis.clone(),
            redis_cluster: self.redis_cluster,
            redis_prefix: self.prefix.clone(),
            peers: self.peers.clone(),
            group_max_members: self.group_max_members.unwrap_or(1000).max(2),
            ..tim::Config::default()
        }
    }
}

/// A running node or relay.
pub struct Running {
    /// host:port to reach it at.
    pub addr: String,
    how: How,
}

enum How {
    Child(Server),
    InProcess(Option<oneshot::Sender<()>>, JoinHandle<()>),
    External(Option<u32>),
}

impl Running {
    /// An already running node at `addr`, with its pid if known.
    pub fn external(addr: &str, pid: Option<u32>) -> Running {
        Running { addr: addr.to_string(), how: How::External(pid) }
    }

    fn child(server: Server) -> Running {
        Running { addr: server.addr.clone(), how: How::Child(server) }
    }

    /// The pid to read CPU and RSS from: None = this process (in-process); Some(None) = unknown.
    pub fn pid(&self) -> Option<Option<u32>> {
        match &self.how {
            How::Child(c) => Some(c.pid()),
            How::InProcess(..) => Some(None),
            How::External(pid) => pid.map(Some),
        }
    }

    /// How it runs, for the report.
    pub fn describe(&self) -> String {
        match &self.how {
            How::Child(c) => format!("{} (child process {})", self.addr, c.pid().unwrap_or(0)),
            How::InProcess(..) => format!("{} (in the bench process)", self.addr),
            How::External(Some(pid)) => format!("{} (external, pid {pid})", self.addr),
            How::External(None) => format!("{} (external)", self.addr),
        }
    }

    /// Stops it (a child is killed; an external node is left alone).
    pub async fn stop(mut self) {
        match &mut self.how {
            How::Child(c) => c.kill(),
            How::InProcess(stop, task) => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
            }
            How::External(_) => {}
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A child is killed by its own drop.
        if let How::InProcess(_, task) = &self.how {
            task.abort();
        }
    }
}

/// Starts a tim node with `spec`.
pub async fn node(spec: &NodeSpec, in_process: bool) -> Result<Running, BenchError> {
    if in_process {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let config = spec.config();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = tim::run(listener, config, shutdown).await {
                eprintln!("bench: in-process node failed: {e}");
            }
        });
        let running = Running { addr, how: How::InProcess(Some(stop), task) };
        harness::wait_answering(&running.addr, Probe::Health, "in-process node", || false).await?;
        return Ok(running);
    }
    let tim = harness::tim_exe(spec.tim.as_deref())?;
    let command = |addr: SocketAddr| {
        harness::tim_serve(&tim, &addr.to_string(), &spec.serve_flags())
            .env("TIM_TOKEN_SECRET", &spec.token_secret)
            .env("TIM_NODE_SECRET", &spec.node_secret)
            .inherit_stderr()
    };
    Ok(Running::child(Server::start_on_free_port(Probe::Health, command).await?))
}

/// Starts the bare relay (the transport baseline).
pub async fn relay(in_process: bool) -> Result<Running, BenchError> {
    if in_process {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = super::relay::serve(listener, shutdown).await {
                eprintln!("bench: in-process relay failed: {e}");
            }
        });
        return Ok(Running { addr, how: How::InProcess(Some(stop), task) });
    }
    // This executable (tim-bench) serves the relay as its hidden `bench-relay` subcommand.
    let me = std::env::current_exe()?;
    let command = |addr: SocketAddr| {
        Process::new(&me, ["bench-relay".to_string(), "--addr".into(), addr.to_string()])
            .inherit_stderr()
    };
    Ok(Running::child(Server::start_on_free_port(Probe::Tcp, command).await?))
}
