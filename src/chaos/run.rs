//! `tim chaos`: nodes and a redis-server as child processes, users on the resilient client,
//! faults on a schedule, then the ledger's verdict.
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tracing::info;

use super::{Ledger, Report};
use crate::client::resilient::{Client, ClientEvent, Config, Handle};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosOptions {
    /// Nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Simulated users, each on its own connection.
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// How long traffic and faults last.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Messages per second each user sends.
    #[arg(long, default_value_t = 5)]
    pub rate: u32,
    /// Seconds between faults.
    #[arg(long, default_value_t = 3)]
    pub fault_every: u64,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
}

/// Why a chaos run could not be carried out (not a verdict on delivery).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}")]
    Setup(String),
}

fn setup(e: impl std::fmt::Display) -> ChaosError {
    ChaosError::Setup(e.to_string())
}

fn free_port() -> Result<u16, ChaosError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(setup)?;
    Ok(l.local_addr().map_err(setup)?.port())
}

/// A child process we can kill, stop and start again with the same arguments.
struct Proc {
    program: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) -> Result<(), ChaosError> {
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| setup(format!("cannot start {}: {e}", self.program.display())))?;
        self.child = Some(child);
        Ok(())
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    async fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ =
                    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            }
            if tokio::time::timeout(Duration::from_secs(10), c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
    }
}

async fn wait_until(what: &str, mut ready: impl AsyncFnMut() -> bool) -> Result<(), ChaosError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready().await {
        if Instant::now() > deadline {
            return Err(setup(format!("{what} did not come up")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn node_ready(addr: &str) -> bool {
    let Ok(ch) = crate::client::channel(addr, &Default::default()).await else { return false };
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok()
}

async fn redis_ready(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else { return false };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else { return false };
    redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
}

/// Runs the whole scenario and returns the verdict.
pub async fn run(opts: &ChaosOptions) -> Result<Report, ChaosError> {
    if opts.nodes < 2 || opts.users < 2 {
        return Err(setup("chaos needs at least 2 nodes and 2 users"));
    }
    let dir = TempDir(std::env::temp_dir().join(format!("tim-chaos-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(setup)?;
    // Interrupted (Ctrl-C), the scenario is dropped: its children die with it (kill_on_drop)
    // and the directory with `dir`.
    tokio::select! {
        result = scenario(opts, &dir.0) => result,
        _ = tokio::signal::ctrl_c() => Err(setup("interrupted")),
    }
}

/// Removes the run's directory (Redis' AOF) however the run ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn scenario(opts: &ChaosOptions, dir: &std::path::Path) -> Result<Report, ChaosError> {
    let redis_port = free_port()?;
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let mut redis = Proc {
        program: PathBuf::from(&opts.redis_server),
        args: [
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        child: None,
    };
    redis.start()?;
    wait_until("redis-server", async || redis_ready(&redis_url).await).await?;

    let exe = std::env::current_exe().map_err(setup)?;
    let secret = crate::ids::new_id();
    let addrs: Vec<String> = (0..opts.nodes)
        .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
        .collect::<Result<_, _>>()?;
    let mut nodes = Vec::new();
    for addr in &addrs {
        let peers: Vec<&str> = addrs.iter().filter(|a| *a != addr).map(String::as_str).collect();
        let args = [
            "serve",
            "--addr",
            addr,
            "--peers",
            &peers.join(","),
            "--redis",
            &redis_url,
            "--token-secret",
            &secret,
            "--drain-grace",
            "2s",
            "--send-rate",
            "0",
        ];
        let mut p = Proc {
            program: exe.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        p.start()?;
        nodes.push(p);
    }
    for addr in &addrs {
        wait_until(addr, async || node_ready(addr).await).await?;
    }
    info!(nodes = opts.nodes, users = opts.users, "cluster up; starting traffic");

    let ledger = Arc::new(Ledger::default());
    let users: Vec<String> = (0..opts.users).map(|i| format!("chaos-user-{i}")).collect();
    let mut handles = Vec::new();
    let mut readers = Vec::new();
    for user in &users {
        let mut config = Config::new(addrs.clone(), user, "phone");
        config.backoff_min = Duration::from_millis(200);
        config.backoff_max = Duration::from_secs(2);
        config.options.keepalive_interval = Duration::from_secs(2);
        config.options.keepalive_timeout = Duration::from_secs(3);
        let client = Client::start(config);
        handles.push(client.handle());
        readers.push(tokio::spawn(record(client, user.clone(), ledger.clone())));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(1.0 / f64::from(opts.rate.max(1)));
    let mut senders = Vec::new();
    for (i, handle) in handles.iter().enumerate() {
        let (h, ledger, users, stop) =
            (handle.clone(), ledger.clone(), users.clone(), stop.clone());
        senders.push(tokio::spawn(send_loop(h, i, users, ledger, stop, period)));
    }

    // Faults, in rotation, until time is up.
    let end = Instant::now() + Duration::from_secs(opts.seconds);
    let mut round = 0usize;
    while Instant::now() + Duration::from_secs(opts.fault_every) < end {
        tokio::time::sleep(Duration::from_secs(opts.fault_every)).await;
        let victim = rand::random_range(0..nodes.len());
        match round % 3 {
            0 => {
                info!(node = %addrs[victim], "fault: SIGKILL node, restart in 1 s");
                nodes[victim].kill().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                nodes[victim].start()?;
            }
            1 => {
                info!("fault: SIGKILL redis, restart in 1 s");
                redis.kill().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                redis.start()?;
            }
            _ => {
                info!(node = %addrs[victim], "fault: SIGTERM node (drain), restart");
                nodes[victim].terminate().await;
                nodes[victim].start()?;
            }
        }
        round += 1;
    }
    tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::Relaxed);
    info!("traffic stopped; waiting for every acked message to arrive");
    // One deadline for all: a sender still waiting then gives up (its send counts as unacked).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for s in senders {
        let abort = s.abort_handle();
        if tokio::time::timeout_at(deadline, s).await.is_err() {
            info!("a sender is still waiting for an ack; giving up on it");
            abort.abort();
        }
    }
    let devices: Vec<(String, String)> =
        users.iter().map(|u| (u.clone(), "phone".into())).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger.outstanding(&devices) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = ledger.report_for(&devices);
    for r in readers {
        r.abort();
    }
    for mut n in nodes {
        n.kill().await;
    }
    redis.kill().await;
    Ok(report)
}

async fn send_loop(
    h: Handle,
    i: usize,
    users: Vec<String>,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    period: Duration,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let to = &users[(i + 1 + rand::random_range(0..users.len() - 1)) % users.len()];
        let body = format!("{}#{n}", users[i]);
        ledger.sent();
        // Retried across reconnects until stored; only a client that stopped gives up.
        if let Ok(ack) = h.send(to, &body).await {
            ledger.acked(to, ack.seq, &body);
        }
        tokio::time::sleep(period).await;
    }
}

/// Takes `client`'s events until it is kicked or stopped: records and acks each message for
/// `user`'s device "phone", and how long each reconnect took.
pub async fn record(mut client: Client, user: String, ledger: Arc<Ledger>) {
    let acker = client.handle();
    let mut down_since: Option<Instant> = None;
    while let Some(event) = client.next_event().await {
        match event {
            ClientEvent::Message(m) => {
                ledger.received(&user, "phone", m.seq, &m.body);
                let _ = acker.ack(m.seq).await;
            }
            ClientEvent::Disconnected { .. } => {
                down_since.get_or_insert_with(Instant::now);
            }
            ClientEvent::Connected { .. } => {
                if let Some(t) = down_since.take() {
                    ledger.reconnected(t.elapsed().as_millis() as u64);
                }
            }
            ClientEvent::Kicked(_) => return,
        }
    }
}
