//! Starting what is measured: tim nodes and the bare relay, as child processes of this executable
//! (`tim serve`, `tim bench-relay`) or inside this process.
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{BenchError, setup};
use crate::client::{self, Options};

/// How long a started node may take to answer.
const READY: Duration = Duration::from_secs(15);

/// How a node under test is configured.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub redis: Option<String>,
    pub prefix: String,
    /// Shared by every node of a run, so a token from one node is valid on the other.
    pub token_secret: String,
    /// Static peers (`--peers`) of the node to start: where it relays to.
    pub peers: Option<String>,
}

impl NodeSpec {
    pub fn new(redis: Option<String>, prefix: &str) -> Self {
        let token_secret = format!("bench-{:032x}", rand::random::<u128>());
        Self { redis, prefix: prefix.to_string(), token_secret, peers: None }
    }

    /// `tim serve` flags: port `addr`, no per-stream send limit, the run's Redis prefix.
    fn serve_args(&self, addr: SocketAddr) -> Vec<String> {
        let mut a = vec!["serve".into(), "--addr".into(), addr.to_string()];
        a.extend(["--send-rate".into(), "0".into()]);
        if let Some(url) = &self.redis {
            a.extend(["--redis".into(), url.clone(), "--redis-prefix".into(), self.prefix.clone()]);
        }
        if let Some(peers) = &self.peers {
            a.extend(["--peers".into(), peers.clone()]);
        }
        a
    }

    fn config(&self) -> crate::Config {
        crate::Config {
            addr: "127.0.0.1:0".parse().expect("a socket address"),
            send_rate: 0,
            token_secret: Some(self.token_secret.clone()),
            redis: self.redis.clone(),
            redis_prefix: self.prefix.clone(),
            peers: self.peers.clone(),
            ..crate::Config::default()
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
    Child(Child),
    InProcess(Option<oneshot::Sender<()>>, JoinHandle<()>),
    External(Option<u32>),
}

impl Running {
    /// An already running node at `addr`, with its pid if known.
    pub fn external(addr: &str, pid: Option<u32>) -> Running {
        Running { addr: addr.to_string(), how: How::External(pid) }
    }

    /// The pid to read CPU and RSS from: None = this process (in-process); Some(None) = unknown.
    pub fn pid(&self) -> Option<Option<u32>> {
        match &self.how {
            How::Child(c) => Some(Some(c.id())),
            How::InProcess(..) => Some(None),
            How::External(pid) => pid.map(Some),
        }
    }

    /// How it runs, for the report.
    pub fn describe(&self) -> String {
        match &self.how {
            How::Child(c) => format!("{} (child process {})", self.addr, c.id()),
            How::InProcess(..) => format!("{} (in the bench process)", self.addr),
            How::External(Some(pid)) => format!("{} (external, pid {pid})", self.addr),
            How::External(None) => format!("{} (external)", self.addr),
        }
    }

    /// Stops it (a child is killed; an external node is left alone).
    pub async fn stop(mut self) {
        match &mut self.how {
            How::Child(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
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
        match &mut self.how {
            How::Child(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            How::InProcess(_, task) => task.abort(),
            How::External(_) => {}
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
            if let Err(e) = crate::run(listener, config, shutdown).await {
                eprintln!("bench: in-process node failed: {e}");
            }
        });
        let mut running = Running { addr, how: How::InProcess(Some(stop), task) };
        wait_ready(&mut running, true).await?;
        return Ok(running);
    }
    spawn_child(|addr| spec.serve_args(addr), &[("TIM_TOKEN_SECRET", &spec.token_secret)], true)
        .await
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
    spawn_child(|addr| vec!["bench-relay".into(), "--addr".into(), addr.to_string()], &[], false)
        .await
}

/// Spawns this executable with `args(port)` on a free port; retries on another port if the
/// child exits before answering (the port was taken meanwhile).
async fn spawn_child(
    args: impl Fn(SocketAddr) -> Vec<String>,
    env: &[(&str, &str)],
    is_node: bool,
) -> Result<Running, BenchError> {
    let exe = std::env::current_exe()?;
    for _ in 0..5 {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut cmd = Command::new(&exe);
        // The child takes only what the bench tells it, not the caller's TIM_* settings.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TIM_") {
                cmd.env_remove(&k);
            }
        }
        cmd.args(args(addr))
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn()?;
        watchdog(child.id());
        let mut running = Running { addr: addr.to_string(), how: How::Child(child) };
        match wait_ready(&mut running, is_node).await {
            Ok(()) => return Ok(running),
            Err(BenchError::Setup(m)) if m == EXITED => continue,
            Err(e) => return Err(e),
        }
    }
    Err(setup("could not start a child process on a free port"))
}

const EXITED: &str = "child exited";

/// Kills the child if this process dies without doing so (a shell loop, as the tests do for
/// redis-server): the bench must not leave nodes behind.
fn watchdog(child: u32) {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null && kill -0 {child} 2>/dev/null; do sleep 0.5; done; \
         kill -9 {child} 2>/dev/null"
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// Waits until a node answers its health check (a relay: accepts TCP), or the child exits.
async fn wait_ready(r: &mut Running, is_node: bool) -> Result<(), BenchError> {
    let deadline = Instant::now() + READY;
    loop {
        if let How::Child(c) = &mut r.how
            && c.try_wait()?.is_some()
        {
            return Err(setup(EXITED));
        }
        if ready(&r.addr, is_node).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(setup(format!("{} did not answer within {READY:?}", r.addr)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready(addr: &str, is_node: bool) -> bool {
    if !is_node {
        return tokio::net::TcpStream::connect(addr).await.is_ok();
    }
    let Ok(ch) = client::channel(addr, &Options::default()).await else { return false };
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
    h.check(req).await.is_ok_and(|r| r.into_inner().status == 1)
}
