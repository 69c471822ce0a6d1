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

    /// Parses `--peers`: comma-separated `host:port` (id = endpoint) or `id=host:port`.
    pub fn parse_peers(peers: &str) -> Result<Vec<NodeInfo>, String> {
        peers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (id, endpoint) = p.split_once('=').unwrap_or((p, p));
                let valid = endpoint.rsplit_once(':').is_some_and(|(h, port)| {
                    !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if !valid || id.is_empty() {
                    return Err(format!("peer {p:?} is not host:port or id=host:port"));
                }
                Ok(NodeInfo { id: id.to_string(), endpoint: endpoint.to_string(), load: 0 })
            })
            .collect()
    }
}

impl Discovery for StaticDiscovery {
    fn updates(&self) -> BoxStream<'static, Update> {
        stream::once(std::future::ready(Update::Reset(self.nodes.clone())))
            .chain(stream::pending())
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peers() {
        let p = StaticDiscovery::parse_peers("10.0.0.1:50051, b=10.0.0.2:7000").unwrap();
        assert_eq!(p[0].id, "10.0.0.1:50051");
        assert_eq!((p[1].id.as_str(), p[1].endpoint.as_str()), ("b", "10.0.0.2:7000"));
        assert!(StaticDiscovery::parse_peers("nohost").is_err());
        assert!(StaticDiscovery::parse_peers("h:0").is_err());
    }
}
