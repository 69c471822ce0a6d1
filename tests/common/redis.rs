//! Real `redis-server` processes for tests, through `tim_tools::harness`: each on a free port with
//! its own directory, killed when dropped and, through a watchdog, when the test process exits
//! for any reason; and a 3-master Redis Cluster.
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tim_tools::harness::{self, redis_command as command};

/// A redis-server owned by a test.
pub struct RedisServer {
    pub port: u16,
    server: harness::RedisServer,
}

/// A Redis Cluster of three masters (no replicas) on free ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Seed URLs, comma-separated, as `--redis` takes them.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }
}

/// One cluster shared by every test of this test binary.
pub fn shared_cluster() -> &'static RedisCluster {
    static SHARED: OnceLock<RedisCluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_cluster_node()).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (from redis-tools) is needed to form a cluster");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &nodes {
            while !command(n.port, "CLUSTER INFO").contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not converge");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes }
    })
}

/// One server shared by every test of this test binary (each test uses its own key prefix).
pub fn shared() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(|| RedisServer::start(false))
}

impl RedisServer {
    /// Starts a server; `aof` turns on the append-only file with an fsync per write, so a
    /// SIGKILL loses nothing that Redis acknowledged.
    pub fn start(aof: bool) -> RedisServer {
        Self::start_with(aof, Vec::new)
    }

    fn start_cluster_node() -> RedisServer {
        Self::start_with(false, || {
            let bus = harness::free_port().unwrap().to_string();
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port"]
                .into_iter()
                .map(String::from)
                .chain([bus])
                .collect()
        })
    }

    /// Starts a server that also serves TLS with `pem`, on the returned port (clients need no
    /// certificate of their own). The plaintext port stays for the harness and admin commands.
    pub fn start_tls(pem: &super::tls::Pem, ca: &super::tls::Ca) -> (RedisServer, u16) {
        let tls_port = std::sync::Mutex::new(0);
        let server = Self::start_with(false, || {
            let port = harness::free_port().unwrap();
            *tls_port.lock().unwrap() = port;
            let file = |p: &std::path::Path| p.display().to_string();
            vec![
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                file(&pem.cert),
                "--tls-key-file".into(),
                file(&pem.key),
                "--tls-ca-cert-file".into(),
                file(&ca.cert),
                "--tls-auth-clients".into(),
                "no".into(),
            ]
        });
        let port = *tls_port.lock().unwrap();
        (server, port)
    }

    /// Starts a replica of the server on `primary` (port).
    pub fn start_replica_of(primary: u16) -> RedisServer {
        Self::start_with(false, || {
            vec!["--replicaof".into(), "127.0.0.1".into(), primary.to_string()]
        })
    }

    fn start_with(aof: bool, extra: impl Fn() -> Vec<String>) -> RedisServer {
        let server = harness::RedisServer::start("redis-server", aof, extra)
            .unwrap_or_else(|e| panic!("{e}: is redis-server installed? scripts/test installs it"));
        RedisServer { port: server.port, server }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Lua script calls (EVAL and EVALSHA) the server has run so far, from its command stats.
    pub async fn script_calls(&self) -> u64 {
        self.calls(&["evalsha", "eval"]).await
    }

    /// Calls of `commands` (lower case) the server has run so far, scripts' included, from
    /// its command stats.
    pub async fn calls(&self, commands: &[&str]) -> u64 {
        let client = ::redis::Client::open(self.url().as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let info: String =
            ::redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
        let counted = |l: &&str| commands.iter().any(|c| l.starts_with(&format!("cmdstat_{c}:")));
        info.lines()
            .filter(counted)
            .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
            .sum()
    }

    /// SIGKILLs the server (no shutdown, no final save).
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts the server again on the same port and directory (reloading its AOF).
    pub fn restart(&mut self) {
        self.server.restart().unwrap();
    }
}
