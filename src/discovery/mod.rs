//! How nodes find each other: every backend produces one stream of typed [`Update`]s, and
//! [`Membership`] folds it into the live node set that the balancer, the relay and route
//! filtering read. Backend wire types are converted to [`NodeInfo`] inside the backend.
//!
//! - `fixed`: a static list (this node alone, or `--peers`).
//! - `consul`: registration with a TTL check and blocking health queries.
use std::sync::Arc;

use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use tokio::sync::watch;

pub mod consul;
pub mod fixed;

pub use consul::{ConsulDiscovery, ConsulRegistration};
pub use fixed::StaticDiscovery;

/// A node that can hold streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Unique node id.
    pub id: String,
    /// host:port clients and peers reach it at.
    pub endpoint: String,
    /// Open streams, as last reported (0 when the backend does not know).
    pub load: u64,
}

/// A change in the set of nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// These nodes joined (or changed endpoint or load).
    Add(Vec<NodeInfo>),
    /// These node ids left.
    Remove(Vec<String>),
    /// The whole set is now exactly this.
    Reset(Vec<NodeInfo>),
}

/// A source of node-set updates.
pub trait Discovery: Send + Sync + 'static {
    /// The updates, starting with the current set. The stream ends only when discovery stops.
    fn updates(&self) -> BoxStream<'static, Update>;
}

/// Applies `update` to a node set kept sorted by id (so every node sees the same order).
pub fn apply(nodes: &mut Vec<NodeInfo>, update: Update) {
    match update {
        Update::Reset(all) => *nodes = all,
        Update::Add(added) => {
            for n in added {
                nodes.retain(|m| m.id != n.id);
                nodes.push(n);
            }
        }
        Update::Remove(ids) => nodes.retain(|m| !ids.contains(&m.id)),
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes.dedup_by(|a, b| a.id == b.id);
}

/// The live node set, folded from a discovery stream. Login placement, relays and route
/// liveness read it.
#[derive(Debug)]
pub struct Membership {
    nodes: watch::Sender<Arc<Vec<NodeInfo>>>,
}

impl Membership {
    /// An empty set; [`Membership::follow`] fills it.
    pub fn new() -> Arc<Membership> {
        Arc::new(Membership { nodes: watch::Sender::new(Arc::new(Vec::new())) })
    }

    /// Folds `updates` into the set until the stream ends. The node runs this as one of the
    /// background tasks that end with it.
    pub async fn follow(&self, mut updates: BoxStream<'static, Update>) {
        while let Some(update) = updates.next().await {
            self.nodes.send_modify(|set| {
                let mut next = set.as_ref().clone();
                apply(&mut next, update);
                *set = Arc::new(next);
            });
        }
    }

    /// Whether node `id` is in the current set.
    pub fn contains(&self, id: &str) -> bool {
        self.nodes.borrow().iter().any(|n| n.id == id)
    }

    /// The current set.
    pub fn nodes(&self) -> Arc<Vec<NodeInfo>> {
        self.nodes.borrow().clone()
    }

    /// The current set, then every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<NodeInfo>>> {
        self.nodes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo { id: id.into(), endpoint: format!("{id}:1"), load: 0 }
    }

    #[test]
    fn updates_fold_into_a_sorted_set() {
        let mut set = Vec::new();
        apply(&mut set, Update::Reset(vec![node("b"), node("a")]));
        apply(&mut set, Update::Add(vec![node("c"), node("a")]));
        assert_eq!(set.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        apply(&mut set, Update::Remove(vec!["b".into()]));
        assert_eq!(set.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
    }
}
