//! Node selection at login. A [`Strategy`] picks one of the live nodes for a user; the
//! [`Selector`] is a tower `Service<user id>` over the discovered node set that applies it. It
//! stays not-ready while no node is known, so callers stack it with `tower` layers: a `Buffer`
//! to share it between requests and a timeout so that an empty cluster is an error, not a hang.
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::StreamExt as _;
use tokio_stream::wrappers::WatchStream;

use crate::discovery::NodeInfo;

mod strategies;

pub use strategies::{ConsistentHash, LeastLoaded, Random, RoundRobin};

/// Chooses a node for a user among the live ones.
pub trait Strategy: Send + 'static {
    /// The node set changed (sorted by id, with fresh loads).
    fn update(&mut self, _nodes: &[NodeInfo]) {}

    /// Index into `nodes` (non-empty, sorted by id) of the node for `user`.
    fn pick(&mut self, user: &str, nodes: &[NodeInfo]) -> usize;
}

/// `--lb`: which strategy Login uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyKind {
    RoundRobin,
    Random,
    ConsistentHash,
    LeastLoaded,
}

impl StrategyKind {
    pub fn build(self) -> Box<dyn Strategy> {
        match self {
            StrategyKind::RoundRobin => Box::new(RoundRobin::default()),
            StrategyKind::Random => Box::new(Random),
            StrategyKind::ConsistentHash => Box::new(ConsistentHash::default()),
            StrategyKind::LeastLoaded => Box::new(LeastLoaded::default()),
        }
    }
}

/// Why no node could be picked.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("node discovery has stopped")]
    DiscoveryClosed,
}

/// A tower service: user id in, the node that should hold the user's stream out.
pub struct Selector {
    changes: WatchStream<Arc<Vec<NodeInfo>>>,
    nodes: Arc<Vec<NodeInfo>>,
    strategy: Box<dyn Strategy>,
}

impl Selector {
    /// Applies `strategy` over the node sets from `nodes` (a membership watch).
    pub fn new(
        nodes: tokio::sync::watch::Receiver<Arc<Vec<NodeInfo>>>,
        strategy: Box<dyn Strategy>,
    ) -> Self {
        Self { changes: WatchStream::new(nodes), nodes: Arc::new(Vec::new()), strategy }
    }
}

impl tower::Service<String> for Selector {
    type Response = NodeInfo;
    type Error = LbError;
    type Future = std::future::Ready<Result<NodeInfo, LbError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LbError>> {
        loop {
            match self.changes.poll_next_unpin(cx) {
                Poll::Ready(Some(nodes)) => {
                    self.strategy.update(&nodes);
                    self.nodes = nodes;
                }
                Poll::Ready(None) => return Poll::Ready(Err(LbError::DiscoveryClosed)),
                // Waker registered: a change wakes us.
                Poll::Pending if self.nodes.is_empty() => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Ok(())),
            }
        }
    }

    fn call(&mut self, user: String) -> Self::Future {
        let i = self.strategy.pick(&user, &self.nodes);
        std::future::ready(Ok(self.nodes[i].clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Service, ServiceExt};

    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo { id: id.into(), endpoint: format!("{id}:1"), load: 0 }
    }

    #[tokio::test]
    async fn waits_for_nodes_and_follows_changes() {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(Vec::new()));
        let mut svc = Selector::new(rx, StrategyKind::RoundRobin.build());
        // No node yet: not ready.
        let pending = tokio::time::timeout(Duration::from_millis(50), svc.ready()).await;
        assert!(pending.is_err());
        tx.send_replace(Arc::new(vec![node("a"), node("b")]));
        let picks: Vec<String> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                v.push(svc.ready().await.unwrap().call("u".into()).await.unwrap().id);
            }
            v
        };
        assert_eq!(picks, ["a", "b", "a", "b"]);
        tx.send_replace(Arc::new(vec![node("b")]));
        for _ in 0..3 {
            assert_eq!(svc.ready().await.unwrap().call("u".into()).await.unwrap().id, "b");
        }
    }
}
