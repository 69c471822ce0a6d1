//! Consul: this node registers itself with the local agent (a TTL check it keeps passing, Meta
//! with its connection count) and watches the passing instances of the service with blocking
//! queries. The wire format lives in `api`; this file is the logic.
use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::{self, BoxStream};
use tracing::{debug, info, warn};

use super::{Discovery, NodeInfo, Update};

pub mod api;

pub use api::{ConsulClient, ConsulError};

/// How long one blocking query may wait for a change.
const WAIT: Duration = Duration::from_secs(30);
/// Queries are at least this far apart, whatever Consul answers.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// Retry delays while Consul is unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The Meta key carrying a node's open stream count.
pub const META_CONNECTIONS: &str = "connections";

/// Watches `service`'s passing instances.
#[derive(Clone)]
pub struct ConsulDiscovery {
    client: ConsulClient,
    service: String,
    wait: Duration,
}

impl ConsulDiscovery {
    pub fn new(client: ConsulClient, service: &str) -> Self {
        Self { client, service: service.to_string(), wait: WAIT }
    }

    /// Shorter blocking waits (tests).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
}

struct WatchState {
    d: ConsulDiscovery,
    index: u64,
    last: Option<Vec<NodeInfo>>,
    backoff: Duration,
}

/// Converts Consul's entries, falling back to the node's address when the service has none.
fn to_nodes(entries: Vec<api::ServiceEntry>) -> Vec<NodeInfo> {
    let mut nodes: Vec<NodeInfo> = entries
        .into_iter()
        .map(|e| {
            let host =
                if e.service.address.is_empty() { e.node.address } else { e.service.address };
            let load = e
                .service
                .meta
                .as_ref()
                .and_then(|m| m.get(META_CONNECTIONS))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            NodeInfo { id: e.service.id, endpoint: format!("{host}:{}", e.service.port), load }
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes
}

/// The next index to block on, per Consul's rules: reset when it goes backwards, never 0.
fn next_index(previous: u64, returned: u64) -> u64 {
    let index = if returned < previous { 0 } else { returned };
    index.max(1)
}

impl WatchState {
    /// Queries until the set differs from the last one yielded. Errors keep the last set and
    /// retry with backoff.
    async fn next(&mut self) -> Update {
        loop {
            let started = tokio::time::Instant::now();
            match self.d.client.healthy(&self.d.service, self.index, self.d.wait).await {
                Ok((entries, returned)) => {
                    self.backoff = BACKOFF_MIN;
                    self.index = next_index(self.index, returned);
                    let nodes = to_nodes(entries);
                    let changed = self.last.as_ref() != Some(&nodes);
                    tokio::time::sleep_until(started + MIN_INTERVAL).await;
                    if changed {
                        debug!(nodes = nodes.len(), index = self.index, "consul: node set changed");
                        self.last = Some(nodes.clone());
                        return Update::Reset(nodes);
                    }
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?self.backoff, "consul watch failed; keeping the last node set");
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    self.index = 0;
                }
            }
        }
    }
}

impl Discovery for ConsulDiscovery {
    fn updates(&self) -> BoxStream<'static, Update> {
        let state = WatchState { d: self.clone(), index: 1, last: None, backoff: BACKOFF_MIN };
        stream::unfold(state, |mut s| async move {
            let update = s.next().await;
            Some((update, s))
        })
        .boxed()
    }
}

/// This node's registration: register, keep the TTL check passing (re-registering when the
/// agent forgot us or our load changed), deregister on shutdown.
#[derive(Clone)]
pub struct ConsulRegistration {
    client: ConsulClient,
    reg: api::Registration,
    ttl: Duration,
}

impl ConsulRegistration {
    /// `endpoint` is `host:port` as peers and clients reach this node.
    pub fn new(
        client: ConsulClient,
        service: &str,
        node_id: &str,
        endpoint: &str,
        ttl: Duration,
        deregister_after: Duration,
    ) -> Result<Self, ConsulError> {
        let (host, port) = endpoint
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .ok_or_else(|| ConsulError::Address(format!("advertised endpoint {endpoint:?}")))?;
        let reg = api::Registration {
            id: node_id.to_string(),
            name: service.to_string(),
            address: host.to_string(),
            port,
            tags: vec!["grpc".to_string()],
            meta: HashMap::new(),
            check: api::TtlCheck {
                check_id: format!("{node_id}:ttl"),
                ttl: format!("{}ms", ttl.as_millis()),
                deregister_critical_service_after: format!(
                    "{}s",
                    deregister_after.as_secs().max(1)
                ),
                status: "passing".to_string(),
            },
        };
        Ok(Self { client, reg, ttl })
    }

    async fn register(&mut self, load: u64) -> Result<(), ConsulError> {
        self.reg.meta.insert(META_CONNECTIONS.to_string(), load.to_string());
        self.client.register(&self.reg).await
    }

    /// Registers, then passes the check every third of the TTL until dropped. Re-registers
    /// when the agent no longer knows the check (agent restart, reaped while we were cut off)
    /// or when `load()` changed. Failures are logged and retried with backoff.
    pub async fn run(mut self, load: impl Fn() -> u64) {
        let mut registered: Option<u64> = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            let now = load();
            let result = match registered {
                Some(l) if l == now => self.client.pass(&self.reg.check.check_id).await,
                _ => self.register(now).await,
            };
            match result {
                Ok(()) => {
                    if registered.is_none() {
                        info!(id = %self.reg.id, service = %self.reg.name, "registered in consul");
                    }
                    registered = Some(now);
                    backoff = BACKOFF_MIN;
                    tokio::time::sleep(self.ttl / 3).await;
                }
                Err(e) => {
                    warn!(error = %e, "consul registration failed; retrying");
                    registered = None;
                    tokio::time::sleep(backoff.min(self.ttl / 3)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Removes this node from Consul (shutdown).
    pub async fn deregister(&self) -> Result<(), ConsulError> {
        self.client.deregister(&self.reg.id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_resets_when_it_goes_backwards_and_is_never_zero() {
        assert_eq!(next_index(1, 10), 10);
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(12, 5), 1);
        assert_eq!(next_index(5, 0), 1);
    }

    #[test]
    fn entries_fall_back_to_the_node_address() {
        let json = r#"[
          {"Node":{"Address":"10.0.0.9"},"Service":{"ID":"b","Address":"","Port":7000,"Meta":{"connections":"12"}}},
          {"Node":{"Address":"10.0.0.8"},"Service":{"ID":"a","Address":"10.1.1.1","Port":7001,"Meta":null}}
        ]"#;
        let nodes = to_nodes(serde_json::from_str(json).unwrap());
        assert_eq!(
            nodes[0],
            NodeInfo { id: "a".into(), endpoint: "10.1.1.1:7001".into(), load: 0 }
        );
        assert_eq!(
            nodes[1],
            NodeInfo { id: "b".into(), endpoint: "10.0.0.9:7000".into(), load: 12 }
        );
    }
}
