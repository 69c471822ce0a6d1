//! The cluster a chaos run tears at: nodes, a Redis primary with a replica, and a [`Proxy`] on
//! every link, so that each link can be cut by itself:
//!
//! ```text
//! clients ──C_i──▶ node i ──R_ij──▶ node j          (relay)
//!                  node i ──D_i───▶ Redis primary   (moves on failover)
//!        Redis replica ──Q─────▶ Redis primary      (replication)
//! ```
//!
//! Nodes advertise their own address and know their peers by the relay proxies' addresses;
//! clients dial every one of those through the node's client proxy (`connect_to`), so a client
//! partition leaves relays alone and the other way round.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::info;

use super::options::{ChaosError, ChaosOptions, setup};
use super::proxy::{Link, Proxy};
use crate::harness::{self, Probe, RedisServer, Server};

/// One of the cluster's links, to cut.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Every client of node `i` from it.
    Clients(usize),
    /// Relays between nodes `i` and `j`, both ways.
    Relay(usize, usize),
    /// Node `i` from Redis.
    Redis(usize),
}

pub struct Cluster {
    pub nodes: Vec<Server>,
    /// Each node's own address.
    direct: Vec<SocketAddr>,
    clients: Vec<Proxy>,
    /// (from, to) → the proxy node `from` reaches node `to` through.
    relays: HashMap<(usize, usize), Proxy>,
    redis_links: Vec<Proxy>,
    replication: Proxy,
    redis: Vec<RedisServer>,
    primary: usize,
}

/// Starts redis-server with an AOF fsync'ed on every write (a blocking start, off the runtime).
async fn start_redis(binary: &str) -> Result<RedisServer, ChaosError> {
    let binary = binary.to_string();
    let started = tokio::task::spawn_blocking(move || RedisServer::start(&binary, true, Vec::new));
    Ok(started.await.map_err(setup)??)
}

fn sock(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn proxy(to: SocketAddr) -> Result<Proxy, ChaosError> {
    Proxy::start(to).await.map_err(setup)
}

/// Sends one command to the Redis server on `port`.
async fn redis_cmd<T: redis::FromRedisValue>(port: u16, cmd: redis::Cmd) -> Result<T, ChaosError> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(setup)?;
    let mut conn = client.get_multiplexed_async_connection().await.map_err(setup)?;
    cmd.query_async(&mut conn).await.map_err(setup)
}

/// The replication offset a server has reached (`master_repl_offset` of INFO replication).
async fn repl_offset(port: u16) -> Result<u64, ChaosError> {
    let info: String = redis_cmd(port, redis::cmd("INFO").arg("replication").clone()).await?;
    let offset = info.lines().find_map(|l| l.strip_prefix("master_repl_offset:"));
    offset.and_then(|o| o.trim().parse().ok()).ok_or_else(|| setup("no master_repl_offset"))
}

/// Whether a replica's link to its primary is up.
async fn linked(port: u16) -> Result<bool, ChaosError> {
    let info: String = redis_cmd(port, redis::cmd("INFO").arg("replication").clone()).await?;
    Ok(info.lines().any(|l| l.trim() == "master_link_status:up"))
}

impl Cluster {
    pub async fn start(opts: &ChaosOptions, tim: &Path) -> Result<Cluster, ChaosError> {
        let redis =
            vec![start_redis(&opts.redis_server).await?, start_redis(&opts.redis_server).await?];
        let replication = proxy(sock(redis[0].port)).await?;
        let replicaof =
            redis::cmd("REPLICAOF").arg("127.0.0.1").arg(replication.addr().port()).clone();
        let () = redis_cmd(redis[1].port, replicaof).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !linked(redis[1].port).await? {
            if Instant::now() > deadline {
                return Err(setup("the Redis replica did not link to its primary within 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let n = opts.nodes;
        let direct: Vec<SocketAddr> = (0..n)
            .map(|_| harness::free_port().map(sock))
            .collect::<Result<_, _>>()
            .map_err(setup)?;
        let mut clients = Vec::new();
        let mut redis_links = Vec::new();
        let mut relays = HashMap::new();
        for (i, addr) in direct.iter().enumerate() {
            clients.push(proxy(*addr).await?);
            redis_links.push(proxy(sock(redis[0].port)).await?);
            for (j, peer) in direct.iter().enumerate() {
                if i != j {
                    relays.insert((i, j), proxy(*peer).await?);
                }
            }
        }
        let (secret, node_secret) = (tim::ids::new_id(), tim::ids::new_id());
        let wait = opts.redis_wait_replicas.to_string();
        let mut nodes = Vec::new();
        for (i, addr) in direct.iter().enumerate() {
            let peers: Vec<String> = (0..n)
                .filter(|j| *j != i)
                .map(|j| format!("node-{j}={}", relays[&(i, j)].addr()))
                .collect();
            let redis_url = format!("redis://{}", redis_links[i].addr());
            let id = format!("node-{i}");
            let flags = [
                "--node-id",
                &id,
                "--peers",
                &peers.join(","),
                "--redis",
                &redis_url,
                "--redis-wait-replicas",
                &wait,
                "--token-secret",
                &secret,
                "--node-secret",
                &node_secret,
                "--drain-grace",
                "2s",
                "--send-rate",
                "0",
                "--keepalive-interval",
                "2s",
                "--keepalive-timeout",
                "3s",
            ];
            let addr = addr.to_string();
            let process = harness::tim_serve(tim, &addr, &flags).env("RUST_LOG", "error");
            nodes.push(Server::start(process, &addr, Probe::Health).await?);
        }
        Ok(Cluster { nodes, direct, clients, relays, redis_links, replication, redis, primary: 0 })
    }

    /// Where clients log in: each node's client proxy.
    pub fn gateways(&self) -> Vec<String> {
        self.clients.iter().map(|p| p.addr().to_string()).collect()
    }

    /// Every address a login may name for a node, mapped to that node's client proxy.
    pub fn connect_to(&self) -> Vec<(String, String)> {
        let mut map: Vec<(String, String)> = self
            .direct
            .iter()
            .zip(&self.clients)
            .map(|(d, c)| (d.to_string(), c.addr().to_string()))
            .collect();
        for ((_, to), p) in &self.relays {
            map.push((p.addr().to_string(), self.clients[*to].addr().to_string()));
        }
        map
    }

    fn links(&self, cut: Cut) -> Vec<&Proxy> {
        match cut {
            Cut::Clients(i) => vec![&self.clients[i]],
            Cut::Relay(i, j) => vec![&self.relays[&(i, j)], &self.relays[&(j, i)]],
            Cut::Redis(i) => vec![&self.redis_links[i]],
        }
    }

    /// Cuts (`Refused` or `Silent`) or heals (`Open`) a link.
    pub fn set(&self, cut: Cut, link: Link) {
        for p in self.links(cut) {
            p.set(link);
        }
    }

    /// SIGKILLs the Redis primary and starts it again after `down` (from its AOF).
    pub async fn kill_redis(&mut self, down: Duration) -> Result<(), ChaosError> {
        let mut primary = self.redis.swap_remove(self.primary);
        primary.kill();
        tokio::time::sleep(down).await;
        let restarted = tokio::task::spawn_blocking(move || primary.restart().map(|()| primary));
        let primary = restarted.await.map_err(setup)??;
        self.redis.insert(self.primary, primary);
        Ok(())
    }

    /// Fails the primary over to the replica, as Sentinel and a moving virtual IP would: the
    /// nodes lose the primary, the replica is promoted and the nodes' Redis address moves to it;
    /// the old primary then follows the new one (dropping whatever it alone had).
    ///
    /// `lag`: replication is cut (half-open) for that long first while the nodes go on writing,
    /// so the replica is promoted without the primary's last writes. Otherwise the replica is
    /// promoted once it has every write. Returns the bytes of replication the promoted replica
    /// lacked.
    pub async fn failover(&mut self, lag: Option<Duration>) -> Result<u64, ChaosError> {
        let (old, new) = (self.primary, 1 - self.primary);
        let (old_port, new_port) = (self.redis[old].port, self.redis[new].port);
        if let Some(lag) = lag {
            self.replication.set(Link::Silent);
            tokio::time::sleep(lag).await;
        }
        for link in &self.redis_links {
            link.set(Link::Refused);
        }
        let written = repl_offset(old_port).await?;
        if lag.is_none() {
            // In sync: linked to the primary (a full resync after a restart done) and at its offset.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !(linked(new_port).await? && repl_offset(new_port).await? >= written)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let had = repl_offset(new_port).await?;
        let () = redis_cmd(new_port, redis::cmd("REPLICAOF").arg("NO").arg("ONE").clone()).await?;
        for link in &self.redis_links {
            link.repoint(sock(new_port));
            link.set(Link::Open);
        }
        self.replication.repoint(sock(new_port));
        self.replication.set(Link::Open);
        let follow =
            redis::cmd("REPLICAOF").arg("127.0.0.1").arg(self.replication.addr().port()).clone();
        let () = redis_cmd(old_port, follow).await?;
        self.primary = new;
        let lacked = written.saturating_sub(had);
        info!(lacked, "failover done");
        Ok(lacked)
    }
}
