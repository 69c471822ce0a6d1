//! [`Config::validate`]: every value checked before any port is bound, and the set-ups that
//! would expose dev login or silently break a cluster refused, each with the flag that fixes it.
use std::time::Duration;

use super::{Config, ConfigError, LoginKind};

impl Config {
    /// Checks every value; called before any port is bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError(m.to_string()));
        self.login_mode()?;
        self.push.validate()?;
        if self.token_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return fail("--token-secret must be at least 16 bytes");
        }
        if self.node_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return fail("--node-secret must be at least 16 bytes");
        }
        if self.node_secret.is_some() && self.node_secret == self.token_secret {
            return fail(
                "--node-secret must differ from --token-secret: whoever holds the token secret \
                 must not be able to act as a node",
            );
        }
        self.validate_tls()?;
        if self.max_body == 0 || self.max_body > 4 * 1024 * 1024 - 1024 {
            return fail("--max-body must be between 1 byte and 4 MiB - 1 KiB");
        }
        if self.outbound_bytes < 16 * 1024 {
            return fail("--outbound-bytes must be at least 16 KiB");
        }
        if self.node_queue_bytes < 64 * 1024 {
            return fail("--node-queue-bytes must be at least 64 KiB");
        }
        if self.outbound_queue < 8 {
            return fail("--outbound-queue must be at least 8");
        }
        if self.keepalive_interval.is_zero() || self.keepalive_timeout.is_zero() {
            return fail("--keepalive-interval and --keepalive-timeout must be positive");
        }
        if !(2..=1024).contains(&self.max_streams_per_connection) {
            return fail("--max-streams-per-connection must be between 2 and 1024");
        }
        if self.hello_timeout.is_zero() || self.slow_client_timeout.is_zero() {
            return fail("--hello-timeout and --slow-client-timeout must be positive");
        }
        if self.token_ttl < Duration::from_secs(5) {
            return fail("--token-ttl must be at least 5s");
        }
        if let Some(id) = &self.node_id
            && (id.is_empty()
                || id.chars().any(|c| c.is_whitespace() || c.is_control() || c == '|'))
        {
            return fail("--node-id must be non-empty, without whitespace or '|'");
        }
        if self.inbox_max == 0 {
            return fail("--inbox-max must be at least 1");
        }
        if self.history_max == 0 || self.history_retention < Duration::from_secs(1) {
            return fail("--history-max must be at least 1 and --history-retention at least 1s");
        }
        if !(2..=100_000).contains(&self.group_max_members) {
            return fail("--group-max-members must be between 2 and 100000");
        }
        if !(1..=100_000).contains(&self.group_fanout_limit) {
            return fail("--group-fanout-limit must be between 1 and 100000");
        }
        if !(1..=10_000).contains(&self.max_devices) {
            return fail("--max-devices must be between 1 and 10000");
        }
        if self.device_ttl < self.token_ttl {
            return fail(
                "--device-ttl must be at least --token-ttl (a device is kept while its token lives)",
            );
        }
        if self.route_ttl < Duration::from_secs(1) {
            return fail("--route-ttl must be at least 1s");
        }
        if self.redis_prefix.is_empty()
            || !self.redis_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
        {
            return fail("--redis-prefix may only hold letters, digits and _ . : -");
        }
        if self.redis.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return fail("--redis is empty");
        }
        if self.redis_wait_replicas > 0 && (self.redis.is_none() || self.redis_cluster) {
            return fail(
                "--redis-wait-replicas needs --redis on a single server with replicas (not \
                 --redis-cluster, where WAIT would have to follow each key's slot)",
            );
        }
        if self.redis_ca.is_some() && !self.redis_urls().iter().all(|u| u.starts_with("rediss://"))
        {
            return fail(
                "--redis-ca is for rediss:// (TLS) URLs; give every --redis URL as rediss://",
            );
        }
        if self.peers.is_some() && self.consul.is_some() {
            return fail("use either --peers or --consul, not both");
        }
        if let Some(peers) = &self.peers {
            crate::discovery::StaticDiscovery::parse_peers(peers).map_err(ConfigError)?;
        }
        if self
            .consul
            .as_deref()
            .is_some_and(|c| !c.starts_with("http://") && !c.starts_with("https://"))
        {
            return fail("--consul must be the http:// or https:// URL of the local agent");
        }
        if self.consul_ca.is_some()
            && !self.consul.as_deref().is_some_and(|c| c.starts_with("https://"))
        {
            return fail("--consul-ca is for an https:// --consul agent");
        }
        if self.consul_ttl < Duration::from_secs(1) {
            return fail("--consul-ttl must be at least 1s");
        }
        if self.redis_timeout.is_zero() {
            return fail("--redis-timeout must be positive");
        }
        self.validate_exposure()
    }

    /// Whether dev login is on where other hosts can reach it (allowed only with
    /// `--insecure-dev-login`).
    pub fn dev_login_exposed(&self) -> bool {
        self.login == LoginKind::Dev && !self.addr.ip().is_loopback()
    }

    /// The checks that keep a node from being exposed, or clustered, in a way that silently
    /// breaks: each refusal names the flag that fixes it.
    fn validate_exposure(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        let addr = self.addr;
        if self.dev_login_exposed() && !self.insecure_dev_login {
            return fail(format!(
                "--addr {addr} can be reached from other hosts, and dev login lets anyone log in \
                 as anyone: use --login jwt --jwt-secret SECRET (TIM_LOGIN, TIM_JWT_SECRET), \
                 listen on a loopback address, or accept the risk with --insecure-dev-login"
            ));
        }
        if addr.ip().is_unspecified() && self.advertise.is_none() {
            return fail(format!(
                "--addr {addr} listens on every interface, so Login cannot hand it to clients: \
                 give --advertise host:port (TIM_ADVERTISE), the address clients reach this node at"
            ));
        }
        let cluster = if self.consul.is_some() { "--consul" } else { "--peers" };
        if (self.peers.is_some() || self.consul.is_some()) && self.redis.is_none() {
            return fail(format!(
                "{cluster} makes this node part of a cluster, whose nodes share inboxes and routes \
                 in Redis: add --redis URL (TIM_REDIS), the same on every node"
            ));
        }
        if self.clustered() && self.token_secret.is_none() {
            return fail(format!(
                "{cluster} makes this node part of a cluster, whose nodes must accept each other's \
                 tokens: give every node the same --token-secret (TIM_TOKEN_SECRET, at least 16 bytes)"
            ));
        }
        if self.clustered() && self.node_secret.is_none() {
            return fail(format!(
                "{cluster} makes this node part of a cluster, whose nodes call each other with node \
                 tokens: give every node the same --node-secret (TIM_NODE_SECRET, at least 16 bytes, \
                 not the token secret)"
            ));
        }
        if self.clustered() && self.tls() && self.tls_cluster_ca.is_none() {
            return fail(format!(
                "{cluster} with TLS: nodes call each other over mutual TLS, so give every node \
                 --tls-cluster-ca FILE (TIM_TLS_CLUSTER_CA), the CA that issued the nodes' \
                 certificates"
            ));
        }
        Ok(())
    }

    /// TLS files go together and must be usable: refused at start-up, not at the first client.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError(m.to_string()));
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return fail("--tls-cert needs --tls-key (TIM_TLS_KEY), its private key");
            }
            (None, Some(_)) => {
                return fail("--tls-key needs --tls-cert (TIM_TLS_CERT), its certificate");
            }
            (None, None) if self.tls_client_ca.is_some() || self.tls_cluster_ca.is_some() => {
                return fail(
                    "--tls-client-ca and --tls-cluster-ca need TLS on: give --tls-cert and --tls-key",
                );
            }
            _ => {}
        }
        if let Some(files) = self.tls_files() {
            crate::tls::ServerTls::load(files).map_err(|e| ConfigError(format!("TLS: {e}")))?;
            self.peer_tls()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_jwt_needs_secret() {
        let mut c = Config::default();
        assert_eq!(c.addr.port(), 50051);
        c.validate().unwrap();
        c.login = LoginKind::Jwt;
        assert!(c.validate().is_err());
        c.jwt_secret = Some("0123456789abcdef0123456789abcdef".into());
        c.validate().unwrap();
    }

    fn refusal(c: &Config) -> String {
        c.validate().expect_err("refused").0
    }

    #[test]
    fn dev_login_stays_on_loopback_unless_insecure_is_asked_for() {
        let mut c = Config { addr: "[::1]:50051".parse().unwrap(), ..Config::default() };
        c.validate().unwrap();
        c.addr = "10.0.0.5:50051".parse().unwrap();
        assert!(refusal(&c).contains("--login jwt"), "{}", refusal(&c));
        assert!(refusal(&c).contains("--insecure-dev-login"));
        c.insecure_dev_login = true;
        c.validate().unwrap();
        assert!(c.dev_login_exposed());
        c.insecure_dev_login = false;
        c.login = LoginKind::Jwt;
        c.jwt_secret = Some("0123456789abcdef0123456789abcdef".into());
        c.validate().unwrap();
        assert!(!c.dev_login_exposed());
    }

    #[test]
    fn a_wildcard_address_needs_an_advertised_one() {
        let mut c = Config {
            login: LoginKind::Jwt,
            jwt_secret: Some("0123456789abcdef0123456789abcdef".into()),
            addr: "0.0.0.0:50051".parse().unwrap(),
            ..Config::default()
        };
        assert!(refusal(&c).contains("--advertise"), "{}", refusal(&c));
        c.advertise = Some("10.0.0.5:50051".into());
        c.validate().unwrap();
    }

    #[test]
    fn a_cluster_needs_redis_a_token_secret_and_a_node_secret() {
        let mut c = Config { peers: Some("127.0.0.1:50052".into()), ..Config::default() };
        assert!(refusal(&c).contains("--redis"), "{}", refusal(&c));
        c.redis = Some("redis://127.0.0.1:6379".into());
        assert!(refusal(&c).contains("--token-secret"), "{}", refusal(&c));
        c.token_secret = Some("0123456789abcdef".into());
        assert!(refusal(&c).contains("--node-secret"), "{}", refusal(&c));
        c.node_secret = c.token_secret.clone();
        assert!(refusal(&c).contains("must differ"), "{}", refusal(&c));
        c.node_secret = Some("fedcba9876543210".into());
        c.validate().unwrap();
        c.peers = None;
        c.consul = Some("http://127.0.0.1:8500".into());
        c.token_secret = None;
        assert!(refusal(&c).starts_with("--consul"), "{}", refusal(&c));
    }
}
