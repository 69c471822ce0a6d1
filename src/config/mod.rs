//! One typed configuration for a node: flags, then `TIM_*` environment variables, then defaults.
//! [`Config::validate`] runs before any port is bound; a bad value is an error message and a
//! non-zero exit, never a panic.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use crate::auth::{JwtConfigError, JwtVerifier, LoginMode, TokenSigner};
use crate::store::StoreOptions;

mod duration;
mod push;
mod secrets;
mod validate;

pub use duration::parse_duration;
pub use push::PushConfig;
pub use secrets::redact_url;

/// How `Gateway.Login` authenticates users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoginKind {
    /// Any user id is accepted (development only; loopback addresses unless insecure).
    Dev,
    /// A JWT from the application's backend (secret, public key or JWK set), `sub` = user id.
    Jwt,
}

/// Everything `tim serve` can be told.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TIM_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// host:port that clients use to reach this node (returned by Login); defaults to the bound
    /// address.
    #[arg(long, env = "TIM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Serve Prometheus metrics at `http://<addr>/metrics` (off unless given). Anyone who
    /// reaches it reads the node's counters (no user ids, no bodies): bind it to a private
    /// address.
    #[arg(long, env = "TIM_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Unique id of this node; defaults to the advertised address.
    #[arg(long, env = "TIM_NODE_ID")]
    pub node_id: Option<String>,
    /// How Login authenticates users.
    #[arg(long, env = "TIM_LOGIN", value_enum, default_value = "dev")]
    pub login: LoginKind,
    /// Allow dev login (anyone logs in as anyone) on an address other hosts can reach. Refused
    /// without this flag; with it, a warning is logged every minute.
    #[arg(long, env = "TIM_INSECURE_DEV_LOGIN", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_dev_login: bool,
    /// Shared secret of the HS256/384/512 JWTs accepted in `--login jwt` mode (≥ 32 bytes).
    #[arg(long, env = "TIM_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// File holding the JWT secret (instead of `--jwt-secret`: kept out of process lists).
    #[arg(long, env = "TIM_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key of the backend's RS*/PS*, ES256/ES384 or EdDSA JWTs (instead of a secret).
    #[arg(long, env = "TIM_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWK set file of the backend's keys; a token names its key by `kid`.
    #[arg(long, env = "TIM_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,
    /// Required `iss` of login JWTs.
    #[arg(long, env = "TIM_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of login JWTs.
    #[arg(long, env = "TIM_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on a JWT's `exp` and `nbf`.
    #[arg(long, env = "TIM_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,
    /// Secret that signs session tokens; every node of a cluster needs the same one.
    /// Random when unset (tokens then die with the process).
    #[arg(long, env = "TIM_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// File holding the token secret (instead of `--token-secret`).
    #[arg(long, env = "TIM_TOKEN_SECRET_FILE")]
    pub token_secret_file: Option<PathBuf>,
    /// Secret that signs node tokens, the credential of relay calls between nodes; the same on
    /// every node of a cluster, and not the token secret (a leaked session-token secret must not
    /// let anyone act as a node). Needed with `--peers` or `--consul`.
    #[arg(long, env = "TIM_NODE_SECRET", hide_env_values = true)]
    pub node_secret: Option<String>,
    /// File holding the node secret (instead of `--node-secret`).
    #[arg(long, env = "TIM_NODE_SECRET_FILE")]
    pub node_secret_file: Option<PathBuf>,
    /// PEM certificate chain to serve TLS with (and to present to peer nodes). With it, every
    /// connection to this node is TLS; reloaded on SIGHUP or when the file changes.
    #[arg(long, env = "TIM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "TIM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): every client must present a certificate issued by one of them.
    #[arg(long, env = "TIM_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// PEM CA certificate(s) of the cluster's node certificates: relay calls are accepted only
    /// from a certificate they issued, and peers are verified against them. Needed with TLS in a
    /// cluster.
    #[arg(long, env = "TIM_TLS_CLUSTER_CA")]
    pub tls_cluster_ca: Option<PathBuf>,
    /// Lifetime of a session token.
    #[arg(long, env = "TIM_TOKEN_TTL", default_value = "24h", value_parser = parse_duration)]
    pub token_ttl: Duration,
    /// Largest message body accepted, in bytes.
    #[arg(long, env = "TIM_MAX_BODY", default_value_t = 64 * 1024)]
    pub max_body: usize,
    /// Frames queued towards one stream before the client counts as not reading.
    #[arg(long, env = "TIM_OUTBOUND_QUEUE", default_value_t = 256)]
    pub outbound_queue: usize,
    /// Bytes queued towards one stream before the client counts as not reading (one frame
    /// always fits).
    #[arg(long, env = "TIM_OUTBOUND_BYTES", default_value_t = 1024 * 1024)]
    pub outbound_bytes: usize,
    /// Bytes queued towards all clients of this node together (live feeds and outbound queues):
    /// past it, streams read their inbox instead and queues take one frame at a time, so the
    /// clients that do not read are the ones cut off.
    #[arg(long, env = "TIM_NODE_QUEUE_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub node_queue_bytes: usize,
    /// How long an outbound queue may stay full, without draining to half, before the stream is
    /// ended with RESOURCE_EXHAUSTED (its messages stay in the inbox).
    #[arg(long, env = "TIM_SLOW_CLIENT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub slow_client_timeout: Duration,
    /// Sustained sends per second allowed to one user on this node, shared by all their streams
    /// and unary Sends (0 = unlimited). Ample for a person; a bot that sends more gets its own
    /// deployment setting.
    #[arg(long, env = "TIM_SEND_RATE", default_value_t = 100)]
    pub send_rate: u32,
    /// Burst of sends allowed to one user above the sustained rate.
    #[arg(long, env = "TIM_SEND_BURST", default_value_t = 500)]
    pub send_burst: u32,
    /// Messages one inbox holds at most (unacked by some device, within retention); a new
    /// message to a full inbox is refused (RESOURCE_EXHAUSTED), never an old one dropped.
    #[arg(long, env = "TIM_INBOX_MAX", default_value_t = 100_000)]
    pub inbox_max: u64,
    /// Devices one user may have; a Hello from one more is refused (RESOURCE_EXHAUSTED) until
    /// one logs out or stays away for `--device-ttl`.
    #[arg(long, env = "TIM_MAX_DEVICES", default_value_t = 20)]
    pub max_devices: u32,
    /// A device not seen (no Hello, no ack) this long is forgotten with its ack cursor.
    #[arg(long, env = "TIM_DEVICE_TTL", default_value = "30d", value_parser = parse_duration)]
    pub device_ttl: Duration,
    /// New messages one inbox takes per second from all senders on all nodes (counted in Redis
    /// when shared; 0 = unlimited).
    #[arg(long, env = "TIM_INBOX_RATE", default_value_t = 500)]
    pub inbox_rate: u32,
    /// HTTP/2 keepalive PING interval towards clients.
    #[arg(long, env = "TIM_KEEPALIVE_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    /// A connection whose PING is not answered within this is closed and its streams cleaned up.
    #[arg(long, env = "TIM_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    /// Concurrent HTTP/2 streams one connection may open; a client over the limit waits for a
    /// free stream. A device needs a few; the bound is sized for a peer node's relay calls,
    /// which share one connection per peer (one unary call per message in flight).
    #[arg(long, env = "TIM_MAX_STREAMS_PER_CONNECTION", default_value_t = 128)]
    pub max_streams_per_connection: u32,
    /// How long a new stream may take to send Hello.
    #[arg(long, env = "TIM_HELLO_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub hello_timeout: Duration,
    /// On SIGTERM/SIGINT: how long to wait for streams and calls to finish after Drain.
    #[arg(long, env = "TIM_DRAIN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub drain_grace: Duration,
    /// How long a device route lives unless its session refreshes it (every third of this):
    /// bounds how long a node that died keeps attracting deliveries.
    #[arg(long, env = "TIM_ROUTE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub route_ttl: Duration,
    /// Redis URL(s) for durable, shared inboxes and routes (`redis://host:port`, or
    /// `rediss://host:port` for TLS; an ACL user as `redis://user@host:port`); comma-separated
    /// seed nodes with `--redis-cluster`. Without it the node keeps everything in memory.
    #[arg(long, env = "TIM_REDIS")]
    pub redis: Option<String>,
    /// Treat `--redis` as a Redis Cluster.
    #[arg(long, env = "TIM_REDIS_CLUSTER", value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_cluster: bool,
    /// File holding the Redis password (ACL user's, or `requirepass`), used for every `--redis`
    /// URL that carries none. A password in the URL itself shows in process lists.
    #[arg(long, env = "TIM_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// The Redis password, read from `--redis-password-file`.
    #[arg(skip)]
    pub redis_password: Option<String>,
    /// PEM CA certificate(s) of a `rediss://` Redis, instead of the system's roots.
    #[arg(long, env = "TIM_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// Redis replicas that must have a message before its sender is acked (Redis `WAIT`, within
    /// `--redis-timeout`; fewer: UNAVAILABLE, retry with the same client_msg_id). Single server
    /// with replicas only.
    #[arg(long, env = "TIM_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// Prefix of every Redis key tim writes (several deployments can share one Redis).
    #[arg(long, env = "TIM_REDIS_PREFIX", default_value = "im")]
    pub redis_prefix: String,
    /// A Redis command that takes longer fails (the send gets UNAVAILABLE and is retried).
    #[arg(long, env = "TIM_REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// Static discovery: the other nodes of the cluster, comma-separated `host:port` or
    /// `id=host:port` (ids default to the endpoint, as `--node-id` does).
    #[arg(long, env = "TIM_PEERS", conflicts_with = "consul")]
    pub peers: Option<String>,
    /// Consul agent URL (`http://127.0.0.1:8500`, or `https://…`): register this node there and
    /// discover the others from it.
    #[arg(long, env = "TIM_CONSUL")]
    pub consul: Option<String>,
    /// Service name nodes register under in Consul.
    #[arg(long, env = "TIM_CONSUL_SERVICE", default_value = "tim")]
    pub consul_service: String,
    /// Consul ACL token, sent as `X-Consul-Token` (Consul's own `CONSUL_HTTP_TOKEN` is read
    /// when neither this nor `--consul-token-file` is given).
    #[arg(long, env = "TIM_CONSUL_TOKEN", hide_env_values = true)]
    pub consul_token: Option<String>,
    /// PEM CA certificate(s) of an `https://` Consul agent, instead of the system's roots.
    #[arg(long, env = "TIM_CONSUL_CA")]
    pub consul_ca: Option<PathBuf>,
    /// File holding the Consul ACL token (instead of `--consul-token`).
    #[arg(long, env = "TIM_CONSUL_TOKEN_FILE")]
    pub consul_token_file: Option<PathBuf>,
    /// TTL of this node's Consul check; passed every third of it. A node that stops passing
    /// leaves every other node's view within about this long.
    #[arg(long, env = "TIM_CONSUL_TTL", default_value = "15s", value_parser = parse_duration)]
    pub consul_ttl: Duration,
    /// Consul removes a node whose check stayed critical this long (Consul's minimum is 1m).
    #[arg(long, env = "TIM_CONSUL_DEREGISTER_AFTER", default_value = "1m", value_parser = parse_duration)]
    pub consul_deregister_after: Duration,
    /// How Login picks the node that holds a user's stream.
    #[arg(long, env = "TIM_LB", value_enum, default_value = "round-robin")]
    pub lb: crate::lb::StrategyKind,
    /// Messages older than this are dropped from inboxes even if unacked.
    #[arg(long, env = "TIM_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,
    /// How long a conversation's history keeps a message.
    #[arg(long, env = "TIM_HISTORY_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub history_retention: Duration,
    /// Messages a conversation's history keeps at most; the oldest go first.
    #[arg(long, env = "TIM_HISTORY_MAX", default_value_t = 100_000)]
    pub history_max: u64,
    /// Members one group holds at most.
    #[arg(long, env = "TIM_GROUP_MAX_MEMBERS", default_value_t = 100_000)]
    pub group_max_members: u32,
    /// Members up to which a group's messages are appended to every member's inbox (the
    /// guarantees of a direct message). A group that outgrows it broadcasts from then on: a
    /// message is stored once, pushed to the members online, and caught up by each device from
    /// its cursor in the conversation when it comes back.
    #[arg(long, env = "TIM_GROUP_FANOUT_LIMIT", default_value_t = 1000)]
    pub group_fanout_limit: u32,
    /// How long a (sender, client_msg_id) pair is remembered, so retries are not stored twice.
    #[arg(long, env = "TIM_DEDUP_TTL", default_value = "24h", value_parser = parse_duration)]
    pub dedup_ttl: Duration,
    /// How long after sending its author may recall a message (edits and deletes have no limit).
    #[arg(long, env = "TIM_RECALL_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub recall_window: Duration,
    #[command(flatten)]
    pub push: PushConfig,
}

/// A configuration error: what is wrong, in words for the operator.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    config: Config,
}

impl Default for Config {
    /// The defaults of `tim serve` with no flags (environment variables still apply).
    fn default() -> Self {
        Defaults::parse_from(["tim"]).config
    }
}

impl Config {
    /// The login mode this config selects; with `--login jwt`, its key read and parsed.
    pub fn login_mode(&self) -> Result<LoginMode, ConfigError> {
        if self.login == LoginKind::Dev {
            return Ok(LoginMode::Dev);
        }
        let bad = |e: JwtConfigError| ConfigError(e.to_string());
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
        };
        let verifier = match (&self.jwt_secret, &self.jwt_public_key, &self.jwt_jwks) {
            (Some(secret), None, None) => JwtVerifier::secret(secret.as_bytes()).map_err(bad)?,
            (None, Some(pem), None) => JwtVerifier::public_key(&read(pem)?).map_err(bad)?,
            (None, None, Some(jwks)) => {
                let json = String::from_utf8_lossy(&read(jwks)?).into_owned();
                JwtVerifier::jwks(&json).map_err(bad)?
            }
            _ => {
                return Err(ConfigError(
                    "--login jwt needs exactly one of --jwt-secret (or --jwt-secret-file), \
                     --jwt-public-key and --jwt-jwks"
                        .into(),
                ));
            }
        };
        let mut verifier = verifier.leeway(self.jwt_leeway);
        if let Some(issuer) = &self.jwt_issuer {
            verifier = verifier.issuer(issuer);
        }
        if let Some(audience) = &self.jwt_audience {
            verifier = verifier.audience(audience);
        }
        Ok(LoginMode::Jwt(std::sync::Arc::new(verifier)))
    }

    /// The token signer: from `--token-secret`, or random.
    pub fn signer(&self) -> TokenSigner {
        match &self.token_secret {
            Some(s) => TokenSigner::new(s.as_bytes().to_vec()),
            None => TokenSigner::random(),
        }
    }

    /// The signer of node tokens: from `--node-secret`, or random (a node without peers).
    pub fn node_signer(&self) -> TokenSigner {
        match &self.node_secret {
            Some(s) => TokenSigner::new(s.as_bytes().to_vec()),
            None => TokenSigner::random(),
        }
    }

    /// Whether this node serves TLS.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The server-side TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::ServerFiles> {
        Some(crate::tls::ServerFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
            cluster_ca: self.tls_cluster_ca.clone(),
        })
    }

    /// How this node calls its peers' Relay: over TLS with its own certificate, trusting the
    /// cluster CA, when TLS is on.
    pub fn peer_tls(&self) -> Result<Option<crate::tls::ClientTls>, ConfigError> {
        if !self.tls() {
            return Ok(None);
        }
        let tls = crate::tls::ClientTls::from_files(
            self.tls_cluster_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        );
        tls.map(Some).map_err(|e| ConfigError(e.to_string()))
    }

    /// Whether other nodes take part (`--peers` or `--consul`).
    pub fn clustered(&self) -> bool {
        self.peers.is_some() || self.consul.is_some()
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            retention: self.retention,
            dedup_ttl: self.dedup_ttl,
            inbox_rate: self.inbox_rate,
            inbox_max: self.inbox_max,
            wait_replicas: self.redis_wait_replicas,
            max_devices: self.max_devices,
            device_ttl: self.device_ttl,
            history_retention: self.history_retention,
            history_max: self.history_max,
        }
    }

    /// The `--redis` URLs, one per comma-separated entry.
    pub fn redis_urls(&self) -> Vec<String> {
        let urls = self.redis.as_deref().unwrap_or("").split(',');
        urls.map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
    }
}
