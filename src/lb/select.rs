//! The tower layer that places a request on a node: [`NodeSelectLayer`] wraps an inner service
//! that takes `(request, chosen node)`; [`NodeSelect`] follows the live node set from discovery
//! and asks the strategy which node each request goes to.
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tower::{BoxError, Layer, Service};

use super::{LbError, Strategy, StrategyKind};
use crate::discovery::{Membership, NodeInfo};

/// A request that can be placed: strategies that keep a user on one node key on this.
pub trait Placed {
    /// The placement key (the user id for Login).
    fn key(&self) -> &str;
}

/// Puts a [`NodeSelect`] in front of a service.
#[derive(Clone)]
pub struct NodeSelectLayer {
    nodes: watch::Receiver<Arc<Vec<NodeInfo>>>,
    strategy: StrategyKind,
}

impl NodeSelectLayer {
    /// Applies `strategy` over the nodes `membership` knows, as they change.
    pub fn new(strategy: StrategyKind, membership: &Membership) -> Self {
        Self::over(strategy, membership.subscribe())
    }

    /// Applies `strategy` over the node sets of a watch (sorted by id).
    pub fn over(strategy: StrategyKind, nodes: watch::Receiver<Arc<Vec<NodeInfo>>>) -> Self {
        Self { nodes, strategy }
    }
}

impl<S> Layer<S> for NodeSelectLayer {
    type Service = NodeSelect<S>;

    fn layer(&self, inner: S) -> NodeSelect<S> {
        NodeSelect {
            inner,
            changes: WatchStream::new(self.nodes.clone()),
            nodes: Arc::new(Vec::new()),
            strategy: self.strategy.build(),
        }
    }
}

/// Picks the node for each request and calls the inner service with `(request, node)`. Not
/// ready while no node is known (stack a timeout above it); not `Clone`, as strategies keep
/// state (stack a `Buffer` above it to share it).
pub struct NodeSelect<S> {
    inner: S,
    changes: WatchStream<Arc<Vec<NodeInfo>>>,
    nodes: Arc<Vec<NodeInfo>>,
    strategy: Box<dyn Strategy>,
}

impl<S, R> Service<R> for NodeSelect<S>
where
    R: Placed,
    S: Service<(R, NodeInfo)>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures_util::future::MapErr<S::Future, fn(S::Error) -> BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            match self.changes.poll_next_unpin(cx) {
                Poll::Ready(Some(nodes)) => {
                    self.strategy.update(&nodes);
                    self.nodes = nodes;
                }
                Poll::Ready(None) => return Poll::Ready(Err(LbError::DiscoveryClosed.into())),
                // Waker registered: a change wakes us.
                Poll::Pending if self.nodes.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        use futures_util::TryFutureExt as _;
        let i = self.strategy.pick(req.key(), &self.nodes);
        let node = self.nodes[i].clone();
        self.inner.call((req, node)).map_err(Into::into as fn(S::Error) -> BoxError)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{ServiceBuilder, ServiceExt as _};

    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo { id: id.into(), endpoint: format!("{id}:1"), load: 0 }
    }

    impl Placed for &'static str {
        fn key(&self) -> &str {
            self
        }
    }

    /// The inner service echoes where each request was placed.
    fn echo() -> tower::util::ServiceFn<Echo> {
        tower::service_fn(|(req, node)| std::future::ready(Ok(format!("{req}@{}", node.id))))
    }

    type Echo = fn((&'static str, NodeInfo)) -> std::future::Ready<Result<String, BoxError>>;

    #[tokio::test]
    async fn waits_for_nodes_places_each_request_and_follows_changes() {
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        let mut svc = ServiceBuilder::new()
            .layer(NodeSelectLayer::over(StrategyKind::RoundRobin, rx))
            .service(echo());
        // No node yet: not ready.
        let pending = tokio::time::timeout(Duration::from_millis(50), svc.ready()).await;
        assert!(pending.is_err());
        tx.send_replace(Arc::new(vec![node("a"), node("b")]));
        let mut placed = Vec::new();
        for _ in 0..4 {
            placed.push(svc.ready().await.unwrap().call("u").await.unwrap());
        }
        assert_eq!(placed, ["u@a", "u@b", "u@a", "u@b"]);
        tx.send_replace(Arc::new(vec![node("b")]));
        for _ in 0..3 {
            assert_eq!(svc.ready().await.unwrap().call("u").await.unwrap(), "u@b");
        }
    }

    #[tokio::test]
    async fn consistent_hash_keys_on_the_request() {
        let nodes: Vec<NodeInfo> = ["a", "b", "c"].into_iter().map(node).collect();
        let (_tx, rx) = watch::channel(Arc::new(nodes));
        let mut svc = ServiceBuilder::new()
            .layer(NodeSelectLayer::over(StrategyKind::ConsistentHash, rx))
            .service(echo());
        let first = svc.ready().await.unwrap().call("carol").await.unwrap();
        for _ in 0..5 {
            assert_eq!(svc.ready().await.unwrap().call("carol").await.unwrap(), first);
        }
    }

    #[tokio::test]
    async fn behind_a_timeout_an_empty_cluster_is_an_error() {
        let (_tx, rx) = watch::channel(Arc::new(Vec::new()));
        let svc = ServiceBuilder::new()
            .timeout(Duration::from_millis(50))
            .buffer(4)
            .layer(NodeSelectLayer::over(StrategyKind::Random, rx))
            .service(echo());
        let err = svc.oneshot("u").await.unwrap_err();
        assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    }
}
