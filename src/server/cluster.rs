//! Wiring a node into its cluster: which discovery it uses, keeping relay channels in step with
//! the live node set, and keeping its Consul registration alive.
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tracing::{info, warn};

use super::ServeError;
use crate::config::Config;
use crate::discovery::consul::ConsulClient;
use crate::discovery::{
    ConsulDiscovery, ConsulRegistration, Discovery, NodeInfo, StaticDiscovery, Update,
};
use crate::metrics::Metrics;
use crate::node::Node;

/// Static discovery (this node plus `--peers`), or Consul with this node's registration.
pub fn discovery(
    config: &Config,
    id: &str,
    endpoint: &str,
    metrics: &Metrics,
) -> Result<(Box<dyn Discovery>, Option<ConsulRegistration>), ServeError> {
    let err = |e: crate::discovery::consul::ConsulError| ServeError::Discovery(e.to_string());
    if let Some(url) = &config.consul {
        let token = config.consul_token.clone();
        let mut client =
            ConsulClient::with_ca(url, token, config.consul_ca.as_deref()).map_err(err)?;
        client.count_errors(metrics.consul_errors.clone());
        let registration = ConsulRegistration::new(
            client.clone(),
            &config.consul_service,
            id,
            endpoint,
            config.consul_ttl,
            config.consul_deregister_after,
        )
        .map_err(err)?;
        info!(consul = %url, service = %config.consul_service, "consul discovery");
        let discovery = ConsulDiscovery::new(client, &config.consul_service);
        let this = NodeInfo { id: id.to_string(), endpoint: endpoint.to_string(), load: 0 };
        return Ok((Box::new(WithSelf { inner: discovery, this }), Some(registration)));
    }
    let mut nodes = vec![NodeInfo { id: id.to_string(), endpoint: endpoint.to_string(), load: 0 }];
    if let Some(peers) = &config.peers {
        let peers = StaticDiscovery::parse_peers(peers).map_err(ServeError::Discovery)?;
        nodes.extend(peers.into_iter().filter(|p| p.id != id));
    }
    Ok((Box::new(StaticDiscovery::new(nodes)), None))
}

/// A serving node is alive whatever discovery says (its check may have lapsed during a Consul
/// outage): it stays in its own view, so Login can always place users on it.
struct WithSelf<D> {
    inner: D,
    this: NodeInfo,
}

impl<D: Discovery> Discovery for WithSelf<D> {
    fn updates(&self) -> futures_util::stream::BoxStream<'static, Update> {
        let this = self.this.clone();
        let first = futures_util::stream::once(std::future::ready(Update::Add(vec![this.clone()])));
        let rest = self.inner.updates().map(move |update| match update {
            Update::Reset(mut nodes) if !nodes.iter().any(|n| n.id == this.id) => {
                nodes.push(this.clone());
                Update::Reset(nodes)
            }
            Update::Remove(ids) => {
                Update::Remove(ids.into_iter().filter(|i| *i != this.id).collect())
            }
            other => other,
        });
        first.chain(rest).boxed()
    }
}

/// Registers the node in Consul and keeps its check passing, with its stream count in Meta.
pub fn keep_registered(
    node: &Arc<Node>,
    registration: ConsulRegistration,
) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(node);
    tokio::spawn(
        registration
            .run(move || weak.upgrade().map_or(0, |n| n.delivery().sessions().len() as u64)),
    )
}

/// Deregisters on shutdown, bounded: a missing agent must not hold up the drain.
pub async fn deregister(registration: &ConsulRegistration) {
    match tokio::time::timeout(Duration::from_secs(2), registration.deregister()).await {
        Ok(Ok(())) => info!("deregistered from consul"),
        Ok(Err(e)) => warn!(error = %e, "consul deregistration failed"),
        Err(_) => warn!("consul deregistration timed out"),
    }
}
