//! Real `redis-server` processes for tests: each on a free port with its own directory, killed
//! when dropped and, through a watchdog, when the test process exits for any reason.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A redis-server owned by a test.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    aof: bool,
    /// Extra arguments (cluster mode).
    extra: Vec<String>,
    child: Option<Child>,
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

fn binary() -> String {
    let found = Command::new("sh").args(["-c", "command -v redis-server"]).output();
    match found {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => panic!("redis-server is not installed: run scripts/test, which installs it"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts a server; `aof` turns on the append-only file with an fsync per write, so a
    /// SIGKILL loses nothing that Redis acknowledged.
    pub fn start(aof: bool) -> RedisServer {
        Self::start_with(aof, Vec::new)
    }

    fn start_cluster_node() -> RedisServer {
        Self::start_with(false, || {
            let bus = free_port().to_string();
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port"]
                .into_iter()
                .map(String::from)
                .chain([bus])
                .collect()
        })
    }

    fn start_with(aof: bool, extra: impl Fn() -> Vec<String>) -> RedisServer {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tim-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..20 {
            let mut server = RedisServer {
                port: free_port(),
                dir: dir.clone(),
                aof,
                extra: extra(),
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server (no shutdown, no final save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (reloading its AOF).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "redis-server did not restart on {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(&mut self) -> bool {
        let aof = if self.aof { "yes" } else { "no" };
        let port = self.port.to_string();
        let child = Command::new(binary())
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--protected-mode", "no"])
            .args(["--appendonly", aof, "--appendfsync", "always"])
            .args(&self.extra)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        // The watchdog kills this server if the test process dies without dropping it.
        let (me, redis) = (std::process::id(), child.id());
        let watchdog = format!(
            "while kill -0 {me} 2>/dev/null && kill -0 {redis} 2>/dev/null; do sleep 0.5; done; \
             kill -9 {redis} 2>/dev/null; kill -0 {me} 2>/dev/null || rm -rf '{}'",
            self.dir.display()
        );
        let _ = Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let _ = status;
                self.child = None;
                return false; // exited: port taken, most likely
            }
            if ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }
}

fn ping(port: u16) -> bool {
    command(port, "PING").starts_with("+PONG")
}

/// Sends an inline command and returns the start of the reply ("" if none).
fn command(port: u16, cmd: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("{cmd}\r\n").as_bytes()).is_err() {
        return String::new();
    }
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
