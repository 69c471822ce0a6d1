//! Node selection at login. A [`Strategy`] picks one of the live nodes for a user;
//! [`NodeSelectLayer`] is the tower layer that applies it in front of the service that answers
//! Login:
//!
//! ```text
//! ServiceBuilder::new()
//!     .timeout(..)                                     // an empty cluster is an error, not a hang
//!     .buffer(..)                                      // shares the stateful strategy
//!     .layer(NodeSelectLayer::new(strategy, &membership))
//!     .service(issue_token)                            // sees (request, chosen node)
//! ```
//!
//! - `strategies`: round-robin, random, consistent-hash, least-loaded.
//! - `select`: the layer and its service, over the membership watch.
use crate::discovery::NodeInfo;

mod select;
mod strategies;

pub use select::{NodeSelect, NodeSelectLayer, Placed};

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
