//! `tim bench`: a load generator on the client library, with the limits beside tim measured in
//! the same run.
//!
//! Every simulated user has its own HTTP/2 connection ([`tim::client::Session::connect`] opens
//! a channel per session), as real clients would. By default the node(s) under test run as child
//! processes (`tim serve`, the `tim` executable beside this one or `--tim`) so that their CPU and
//! RSS are read from `/proc/<pid>/` apart from the generator's; `--in-process` runs them inside the bench process
//! via [`tim::run`] instead (then CPU and RSS include the generator), and `--addr` targets nodes
//! that are already running.
//!
//! # Layout
//! - `pairs`: the `same-node` and `cross-node` scenarios (1:1 traffic) and their baselines.
//! - `drain`: `offline-drain` (a backlog read from the inbox on connect).
//! - `storm`: `connect-storm` (logins + streams opened per second).
//! - `idle`: `idle` (streams one node holds, RSS per connection).
//! - `scale`: `scale-out` (1 and 2 nodes over Redis Clusters of 1 and 3 masters).
//! - `group`: `group` (messages into groups of several sizes, most members offline).
//! - `dial`: how simulated users log in and open their streams.
//! - `load`: the 1:1 traffic engine: paced or closed-loop senders, receivers that check order,
//!   measure latency and ack.
//! - `relay`: the bare tonic relay (no auth, no storage) used as the transport baseline.
//! - `store`: the Redis store script alone (the store baseline) and key clean-up.
//! - `brokers`: the same 1:1 load on Mosquitto (MQTT QoS 1) and NATS JetStream, as peers.
//! - `target`: starting and stopping nodes and relays (child process or in-process).
//! - `meter`: CPU and RSS from `/proc`, Redis CPU from `INFO`.
//! - `stats`: percentiles and counters.
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use tim::client::{ClientError, Options};

mod brokers;
mod dial;
mod drain;
mod group;
mod idle;
mod load;
mod meter;
mod pairs;
pub mod relay;
mod scale;
mod stats;
mod store;
mod storm;
mod target;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 1:1 messages between pairs of users on one node.
    SameNode,
    /// 1:1 messages, sender on one node and receiver on another (needs `--redis`).
    CrossNode,
    /// A backlog stored while the receivers are offline, read from the inbox on connect.
    OfflineDrain,
    /// Logins + streams opened (and closed) per second.
    ConnectStorm,
    /// How many idle streams one node holds, and its RSS per connection.
    Idle,
    /// 1:1 messages on 1 and 2 nodes over Redis Clusters of 1 and 3 masters, started here.
    ScaleOut,
    /// Messages into groups of each of `--group-sizes`, `--online` members online.
    Group,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::SameNode => "same-node",
            Scenario::CrossNode => "cross-node",
            Scenario::OfflineDrain => "offline-drain",
            Scenario::ConnectStorm => "connect-storm",
            Scenario::Idle => "idle",
            Scenario::ScaleOut => "scale-out",
            Scenario::Group => "group",
        }
    }
}

/// Everything `tim bench` can be told.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "same-node")]
    pub scenario: Scenario,
    /// Pairs of users (sender → receiver), each user on its own connection; for connect-storm
    /// the number of concurrent connecting clients.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Length of the measured window, in seconds (idle: how long the streams are held).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Traffic before the measured window starts, in seconds (not counted).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Message body size in bytes (at least 16: the send time travels in the body).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Total target send rate in messages per second over all pairs; 0 = as fast as possible
    /// (each sender waits for its SendAck before the next send).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Redis URL for the node(s) under test and the store baseline; without it the nodes use
    /// their in-memory stores. Keys go under a fresh prefix, deleted at the end.
    #[arg(long)]
    pub redis: Option<String>,
    /// Target already running node(s) (gateway host:port; cross-node takes two, comma-separated)
    /// instead of starting them. Then nothing is started and no baseline runs.
    #[arg(long, value_delimiter = ',')]
    pub addr: Vec<String>,
    /// With `--addr`: the pid of the node, to read its CPU and RSS.
    #[arg(long)]
    pub node_pid: Option<u32>,
    /// Run the node(s) inside the bench process instead of as `tim serve` children (CPU and RSS
    /// then include the generator).
    #[arg(long)]
    pub in_process: bool,
    /// Skip the baselines (bare relay, store script, MQTT and NATS JetStream peers).
    #[arg(long)]
    pub no_baselines: bool,
    /// same-node: the MQTT broker (Mosquitto) to run the same load on, QoS 1; skipped with a
    /// note when nothing answers there, or when empty.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: String,
    /// same-node: the NATS server with JetStream to run the same load on (file storage,
    /// explicit acks); skipped with a note when nothing answers there, or when empty.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats: String,
    /// offline-drain: messages stored per offline receiver before it connects.
    #[arg(long, default_value_t = 1000)]
    pub backlog: u64,
    /// group: the group sizes to measure, one group each (members, comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,1000")]
    pub group_sizes: Vec<u32>,
    /// group: members holding streams (the first `--pairs` of them send); the rest offline.
    #[arg(long, default_value_t = 20)]
    pub online: u32,
    /// idle: how many streams to open (default: 2 × pairs).
    #[arg(long)]
    pub streams: Option<usize>,
    /// idle: loopback source addresses to spread the streams' connections over (127.0.0.2,
    /// .3, ...), past one address's ephemeral ports; used when the target is on 127.0.0.0/8.
    /// Other scenarios let the OS pick: a socket bound before connect takes its port at bind
    /// time, where ports held in TIME_WAIT cannot be reused, which chokes a connect storm.
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// Receivers ack the highest seq they hold once their queue is empty and at least this long
    /// after their previous ack (0ms: every time the queue empties).
    #[arg(long, default_value = "0ms", value_parser = tim::config::parse_duration)]
    pub ack_interval: Duration,
    /// The tim executable to start nodes from (default: the `tim` beside this executable).
    #[arg(long, env = crate::harness::TIM_BIN)]
    pub tim: Option<PathBuf>,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Harness(#[from] crate::harness::HarnessError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error(transparent)]
    Store(#[from] tim::store::StoreError),
}

fn setup(msg: impl Into<String>) -> BenchError {
    BenchError::Setup(msg.into())
}

/// The figures of the last line.
#[derive(Debug, Clone)]
pub struct Summary {
    pub scenario: Scenario,
    pub msgs_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bench: scenario={} msgs_per_s={:.0} p50_ms={:.2} p99_ms={:.2} errors={}",
            self.scenario.name(),
            self.msgs_per_s,
            self.p50_ms,
            self.p99_ms,
            self.errors
        )
    }
}

impl BenchArgs {
    fn check(&self) -> Result<(), BenchError> {
        if self.pairs == 0 {
            return Err(setup("--pairs must be at least 1"));
        }
        let seconds_ok = self.seconds > 0.0 && self.seconds <= 3600.0;
        if !seconds_ok || !(0.0..=600.0).contains(&self.warmup) {
            return Err(setup("--seconds must be in (0, 3600] and --warmup in [0, 600]"));
        }
        if self.size < load::MIN_BODY {
            return Err(setup(format!("--size must be at least {} bytes", load::MIN_BODY)));
        }
        if self.scenario == Scenario::CrossNode && self.redis.is_none() && self.addr.len() < 2 {
            return Err(setup("cross-node needs --redis: the two nodes share inboxes through it"));
        }
        Ok(())
    }

    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }

    /// Client options: for idle, each stream's connection bound to the next loopback source
    /// address when the targets are on loopback.
    fn sources(&self, targets: &[String]) -> Sources {
        let loopback = targets.iter().all(|t| host_ip(t).is_some_and(|ip| ip.is_loopback()));
        let addrs = if self.scenario == Scenario::Idle && loopback && self.sources > 0 {
            (0..self.sources).map(|i| IpAddr::from([127, 0, 0, 2 + i.min(250)])).collect()
        } else {
            Vec::new()
        };
        Sources { addrs, next: Default::default() }
    }
}

fn host_ip(target: &str) -> Option<IpAddr> {
    let target = target.split("://").last().unwrap_or(target);
    target.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

/// Hands out client options with source addresses in turn.
pub(crate) struct Sources {
    addrs: Vec<IpAddr>,
    next: std::sync::atomic::AtomicUsize,
}

impl Sources {
    pub(crate) fn options(&self) -> Options {
        let mut opts = Options::default();
        if !self.addrs.is_empty() {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            opts.local_address = Some(self.addrs[i % self.addrs.len()]);
        }
        opts
    }

    pub(crate) fn describe(&self) -> String {
        match self.addrs.len() {
            0 => "the OS's choice of source address".to_string(),
            n => format!("{n} source addresses {}..{}", self.addrs[0], self.addrs[n - 1]),
        }
    }
}

/// A tag unique to this run, for user ids and Redis key prefixes.
fn run_tag() -> String {
    format!("b{}-{:06x}", std::process::id(), rand::random::<u32>() & 0xff_ffff)
}

/// Runs the scenario, printing what it measures as it goes; returns the last line's figures.
pub async fn run(args: BenchArgs) -> Result<Summary, BenchError> {
    args.check()?;
    if let Some(url) = &args.redis {
        store::ping(url).await.map_err(|e| setup(format!("cannot reach Redis at {url}: {e}")))?;
    }
    match args.scenario {
        Scenario::SameNode | Scenario::CrossNode => pairs::run(&args).await,
        Scenario::ScaleOut => scale::run(&args).await,
        Scenario::Group => group::run(&args).await,
        Scenario::OfflineDrain => drain::run(&args).await,
        Scenario::ConnectStorm => storm::run(&args).await,
        Scenario::Idle => idle::run(&args).await,
    }
}

/// `a / b` as a ratio for printing, or "n/a".
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}", a / b) } else { "n/a".to_string() }
}
