//! How nodes find each other: every backend produces one stream of typed [`Update`]s, which the
//! balancer (and, in a cluster, the relay) consumes. Backend wire types are converted to
//! [`NodeInfo`] inside the backend.
//!
//! - `static`: a fixed list (this node alone, or `--peers`).
use futures_util::stream::BoxStream;

pub mod fixed;

pub use fixed::StaticDiscovery;

/// A node that can hold streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Unique node id.
    pub id: String,
    /// host:port clients and peers reach it at.
    pub endpoint: String,
}

/// A change in the set of nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// These nodes joined (or changed endpoint).
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
