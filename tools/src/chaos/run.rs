//! `tim chaos`: nodes and a redis-server as child processes (through the [`crate::harness`]),
//! users on the resilient client sending to each other and into groups, faults on a schedule,
//! then the ledger's verdict.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::info;

use super::{Ledger, Report};
use crate::harness::{self, HarnessError, Probe, RedisServer, Server};
use tim::client::resilient::{Client, ClientEvent, Config, Handle};
use tim::proto::groups_client::GroupsClient;

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
    /// Groups to create (0: none); a quarter of each member's messages go to one of theirs.
    #[arg(long, default_value_t = 2)]
    pub groups: usize,
    /// Members of each group (at most --users).
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// The tim executable to start nodes from (default: the `tim` beside this executable).
    #[arg(long, env = harness::TIM_BIN)]
    pub tim: Option<PathBuf>,
}

/// Why a chaos run could not be carried out (not a verdict on delivery).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Harness(#[from] HarnessError),
}

fn setup(e: impl std::fmt::Display) -> ChaosError {
    ChaosError::Setup(e.to_string())
}

/// Runs the whole scenario and returns the verdict.
pub async fn run(opts: &ChaosOptions) -> Result<Report, ChaosError> {
    if opts.nodes < 2 || opts.users < 2 {
        return Err(setup("chaos needs at least 2 nodes and 2 users"));
    }
    let tim = harness::tim_exe(opts.tim.as_deref())?;
    // Interrupted (Ctrl-C), the scenario is dropped: its children die with it, and Redis'
    // directory with its server.
    tokio::select! {
        result = scenario(opts, &tim) => result,
        _ = tokio::signal::ctrl_c() => Err(setup("interrupted")),
    }
}

/// Starts redis-server with an AOF fsync'ed on every write (a blocking start, off the runtime).
async fn start_redis(binary: &str) -> Result<RedisServer, ChaosError> {
    let binary = binary.to_string();
    let started = tokio::task::spawn_blocking(move || RedisServer::start(&binary, true, Vec::new));
    Ok(started.await.map_err(setup)??)
}

/// Kills `redis`, and starts it again on the same port and AOF after `down`.
async fn bounce_redis(mut redis: RedisServer, down: Duration) -> Result<RedisServer, ChaosError> {
    redis.kill();
    tokio::time::sleep(down).await;
    let restarted = tokio::task::spawn_blocking(move || redis.restart().map(|()| redis));
    Ok(restarted.await.map_err(setup)??)
}

async fn scenario(opts: &ChaosOptions, tim: &Path) -> Result<Report, ChaosError> {
    let mut redis = start_redis(&opts.redis_server).await?;
    let redis_url = redis.url();
    let secret = tim::ids::new_id();
    let node_secret = tim::ids::new_id();
    let addrs: Vec<String> = (0..opts.nodes)
        .map(|_| harness::free_port().map(|p| format!("127.0.0.1:{p}")))
        .collect::<Result<_, _>>()
        .map_err(setup)?;
    let mut nodes = Vec::new();
    for addr in &addrs {
        let peers: Vec<&str> = addrs.iter().filter(|a| *a != addr).map(String::as_str).collect();
        let flags = ["--peers", &peers.join(","), "--redis", &redis_url, "--token-secret", &secret];
        let more = ["--node-secret", &node_secret, "--drain-grace", "2s", "--send-rate", "0"];
        let flags = [&flags[..], &more[..]].concat();
        let process = harness::tim_serve(tim, addr, &flags).env("RUST_LOG", "error");
        nodes.push(Server::start(process, addr, Probe::Health).await?);
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
    let groups = create_groups(opts, &addrs[0], &users, &ledger).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(1.0 / f64::from(opts.rate.max(1)));
    let mut senders = Vec::new();
    for (i, handle) in handles.iter().enumerate() {
        let (h, ledger, users, stop) =
            (handle.clone(), ledger.clone(), users.clone(), stop.clone());
        let mine: Vec<String> =
            groups.iter().filter(|(_, m)| m.contains(&users[i])).map(|(g, _)| g.clone()).collect();
        senders.push(tokio::spawn(send_loop(h, i, users, mine, ledger, stop, period)));
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
                nodes[victim].kill();
                tokio::time::sleep(Duration::from_secs(1)).await;
                nodes[victim].restart().await?;
            }
            1 => {
                info!("fault: SIGKILL redis, restart in 1 s");
                redis = bounce_redis(redis, Duration::from_secs(1)).await?;
            }
            _ => {
                info!(node = %addrs[victim], "fault: SIGTERM node (drain), restart");
                let _ = nodes[victim].terminate().await;
                nodes[victim].restart().await?;
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
    drop(nodes);
    drop(redis);
    Ok(report)
}

/// Creates `--groups` groups of `--group-size` consecutive users (wrapping) through `gateway`,
/// before any fault, and tells the ledger who is in each.
async fn create_groups(
    opts: &ChaosOptions,
    gateway: &str,
    users: &[String],
    ledger: &Ledger,
) -> Result<Vec<(String, Vec<String>)>, ChaosError> {
    let size = opts.group_size.clamp(2, users.len());
    let mut groups = Vec::new();
    for g in 0..opts.groups {
        let members: Vec<String> =
            (0..size).map(|k| users[(g * size + k) % users.len()].clone()).collect();
        let opts = tim::client::Options::default();
        let login =
            tim::client::login(gateway, &members[0], "admin", "", &opts).await.map_err(setup)?;
        let channel = tim::client::channel(gateway, &opts).await.map_err(setup)?;
        let req = tim::proto::CreateGroupRequest {
            name: format!("chaos-{g}"),
            members: members[1..].to_vec(),
            history_for_new_members: false,
        };
        let created = GroupsClient::new(channel)
            .create_group(tim::client::authorized(req, &login.token))
            .await
            .map_err(setup)?;
        let id = created.into_inner().group.map(|g| g.id).unwrap_or_default();
        ledger.group(&id, &members);
        groups.push((id, members));
    }
    Ok(groups)
}

async fn send_loop(
    h: Handle,
    i: usize,
    users: Vec<String>,
    groups: Vec<String>,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    period: Duration,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let body = format!("{}#{n}", users[i]);
        ledger.sent();
        // Retried across reconnects until stored; only a client that stopped gives up.
        if !groups.is_empty() && rand::random_range(0..4) == 0 {
            let group = &groups[rand::random_range(0..groups.len())];
            if let Ok(ack) = h.send_to_group(group, &body).await {
                ledger.acked_group(group, ack.conv_seq, &users[i], &body);
            }
        } else {
            let to = &users[(i + 1 + rand::random_range(0..users.len() - 1)) % users.len()];
            if let Ok(ack) = h.send(to, &body).await {
                ledger.acked(to, ack.seq, &body);
            }
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
                if m.conversation.starts_with("g:") {
                    // A group change (its creation) is no message of the run.
                    if m.event.is_none() {
                        let (conv, cseq) = (&m.conversation, m.conv_seq);
                        ledger.received_in_group(&user, "phone", m.seq, &m.body, conv, cseq);
                    }
                } else {
                    ledger.received(&user, "phone", m.seq, &m.body);
                }
                let _ = acker.ack_message(&m).await;
            }
            ClientEvent::Disconnected { .. } => {
                down_since.get_or_insert_with(Instant::now);
            }
            ClientEvent::Connected { .. } => {
                if let Some(t) = down_since.take() {
                    ledger.reconnected(t.elapsed().as_millis() as u64);
                }
            }
            ClientEvent::Kicked(_) | ClientEvent::LoggedOut(_) => return,
            // Chaos keeps every message within the retention: a gap is a loss, and the ledger
            // counts it as one.
            ClientEvent::Gap { .. } => {}
            // Ephemeral, no part of the ledger.
            ClientEvent::Signal(_) => {}
        }
    }
}
