//! `scale-out`: the same 1:1 load against 1 and 2 nodes on Redis Clusters of 1 and 3 masters,
//! all started here, to show where throughput grows and what bounds it.
//!
//! Every layout is a Redis Cluster (AOF, fsync every second), so only the counts change
//! between runs: slots are spread evenly over the masters, and the nodes run with
//! `--redis-cluster`. Each pair's sender and receiver are on one node (pair *i* on node
//! *i mod n*), pinned there, so a second node adds capacity rather than relay hops. Each
//! master's CPU is read from `/proc` like the nodes'.
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dial::{self, Dial};
use super::load::{self, Outcome};
use super::meter::{Meter, Watched};
use super::pairs::{describe_load, report, shape, summarize};
use super::target::NodeSpec;
use super::{BenchArgs, BenchError, Summary, run_tag, setup};
use crate::harness::{self, RedisServer, redis_command};

/// Slots of a Redis Cluster.
const SLOTS: u32 = 16384;
/// How long a cluster may take to agree it is whole.
const CONVERGE: Duration = Duration::from_secs(30);
/// The layouts measured: (nodes, masters).
const LAYOUTS: [(usize, usize); 4] = [(1, 1), (1, 3), (2, 1), (2, 3)];

/// Masters of a cluster started for one layout; stopped when dropped.
struct Cluster {
    masters: Vec<RedisServer>,
}

impl Cluster {
    /// Starts `n` cluster-enabled masters, gives each an even share of the slots and
    /// introduces them to each other.
    fn start(n: usize) -> Result<Cluster, BenchError> {
        let mut masters = Vec::new();
        let mut buses = Vec::new();
        for _ in 0..n {
            let bus = std::sync::Mutex::new(0u16);
            let server = RedisServer::start("redis-server", false, || {
                let port = harness::free_port().unwrap_or(0);
                *bus.lock().unwrap_or_else(|e| e.into_inner()) = port;
                let args = ["--appendonly", "yes", "--appendfsync", "everysec"];
                let args = args.into_iter().map(String::from);
                args.chain(["--cluster-enabled".into(), "yes".into()])
                    .chain(["--cluster-config-file".into(), "nodes.conf".into()])
                    .chain(["--cluster-port".into(), port.to_string()])
                    .collect()
            })?;
            buses.push(*bus.lock().unwrap_or_else(|e| e.into_inner()));
            masters.push(server);
        }
        for (i, m) in masters.iter().enumerate() {
            let first = SLOTS * i as u32 / n as u32;
            let last = SLOTS * (i as u32 + 1) / n as u32 - 1;
            let ok = redis_command(m.port, &format!("CLUSTER ADDSLOTSRANGE {first} {last}"));
            if !ok.starts_with("+OK") {
                return Err(setup(format!("CLUSTER ADDSLOTSRANGE on {}: {ok}", m.port)));
            }
            if i > 0 {
                let meet = format!("CLUSTER MEET 127.0.0.1 {} {}", masters[0].port, buses[0]);
                redis_command(m.port, &meet);
            }
        }
        // Whole on every master, each knowing all the others, before the nodes start.
        let deadline = Instant::now() + CONVERGE;
        let whole = |port: u16| {
            redis_command(port, "CLUSTER INFO").contains("cluster_state:ok")
                && redis_command(port, "CLUSTER NODES").lines().count() >= n
        };
        for m in &masters {
            while !whole(m.port) {
                if Instant::now() > deadline {
                    return Err(setup(format!("a {n}-master cluster did not converge")));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(Cluster { masters })
    }

    fn urls(&self) -> String {
        self.masters.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }

    fn watched(&self) -> Vec<Watched> {
        let masters = self.masters.iter().enumerate();
        masters.map(|(i, m)| Watched { label: format!("redis{}", i + 1), pid: m.pid() }).collect()
    }
}

pub async fn run(args: &BenchArgs) -> Result<Summary, BenchError> {
    if args.redis.is_some() || !args.addr.is_empty() {
        return Err(setup("scale-out starts its own nodes and Redis Clusters: no --redis, --addr"));
    }
    println!(
        "bench: scale-out: {}",
        describe_load(args).replace("in-memory store", "Redis Cluster")
    );
    println!("  layouts (nodes × masters): {LAYOUTS:?}; pair i on node i mod nodes");
    let mut table = Vec::new();
    let mut last = None;
    for (nodes, masters) in LAYOUTS {
        let cluster = Cluster::start(masters)?;
        let (o, p) = layout(args, nodes, &cluster).await?;
        let busy = o.usage.machine_busy.map_or("n/a".into(), |b| format!("{b:.0}%"));
        table.push(format!(
            "  {nodes} node(s) × {masters} master(s): {:>7.0} msgs/s, p99 {:.2} ms, machine {busy} busy",
            o.msgs_per_s(),
            p.p99
        ));
        last = Some(summarize(args.scenario, &o, &p));
    }
    println!("scale-out, side by side:");
    for line in table {
        println!("{line}");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 8 {
        println!(
            "  note: {cores} cores. Every layout shares them with the generator, so extra nodes \
             and masters add their own overhead here, not capacity; scale shows with cores to \
             spare (about 2 per node, 1 per master, 2 for the generator)"
        );
    }
    last.ok_or_else(|| setup("no layout ran"))
}

/// One layout: `nodes` tim nodes on `cluster`, the pairs split over them.
async fn layout(
    args: &BenchArgs,
    nodes: usize,
    cluster: &Cluster,
) -> Result<(Outcome, super::stats::Percentiles), BenchError> {
    let tag = run_tag();
    let mut spec = NodeSpec::new(args, &tag);
    spec.redis = Some(cluster.urls());
    spec.redis_cluster = true;
    let running = super::pairs::nodes(args, &spec, nodes).await?;
    let addrs: Vec<String> = running.iter().map(|n| n.addr.clone()).collect();
    let sources = Arc::new(args.sources(&addrs));
    let dial_of = |i: usize| Dial::Node { gateway: addrs[i % nodes].clone(), pin: true };
    let receivers: Vec<_> = (0..args.pairs).map(|i| (format!("{tag}-r{i}"), dial_of(i))).collect();
    let senders: Vec<_> = (0..args.pairs).map(|i| (format!("{tag}-s{i}"), dial_of(i))).collect();
    let r = dial::open_all(&receivers, &sources).await?;
    let s = dial::open_all(&senders, &sources).await?;
    let to = receivers.iter().map(|(u, _)| u.clone());
    let pairs: Vec<_> = s.into_iter().zip(r).zip(to).map(|((s, r), to)| (s, r, to)).collect();

    let mut watched = super::pairs::watched(&running.iter().collect::<Vec<_>>());
    watched.extend(cluster.watched());
    let mut meter = Meter::new(watched, None).await;
    let mut o = load::run(pairs, shape(args), &mut meter).await;
    let label = format!("{nodes} node(s) × {} master(s)", cluster.masters.len());
    let p = report(&label, &mut o);
    for n in running {
        n.stop().await;
    }
    Ok((o, p))
}
