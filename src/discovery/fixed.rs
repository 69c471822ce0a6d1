//! Static discovery: a node list given at start-up that never changes.
use futures_util::StreamExt as _;
use futures_util::stream::{self, BoxStream};

use super::{Discovery, NodeInfo, Update};

/// A fixed set of nodes.
#[derive(Debug, Clone)]
pub struct StaticDiscovery {
    nodes: Vec<NodeInfo>,
}

impl StaticDiscovery {
    pub fn new(nodes: Vec<NodeInfo>) -> Self {
        Self { nodes }
    }
}

impl Discovery for StaticDiscovery {
    fn updates(&self) -> BoxStream<'static, Update> {
        stream::once(std::future::ready(Update::Reset(self.nodes.clone())))
            .chain(stream::pending())
            .boxed()
    }
}
