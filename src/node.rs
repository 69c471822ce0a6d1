//! What one running node shares between its gRPC services and stream sessions, and the Send flow
//! that both the chat stream and the unary Gateway.Send use.
use std::collections::BTreeSet;
use std::sync::Arc;

use crate::auth::{LoginMode, TokenSigner, unix_ms};
use crate::config::Config;
use crate::discovery::{Membership, NodeInfo};
use crate::error::Error;
use crate::ids;
use crate::server::peers::Peers;
use crate::store::{Appended, Inbox, NewMessage, Route, RouteStore};
use crate::stream::Registry;

/// The login-time node picker: the strategy's tower service behind a buffer and a timeout.
pub type NodeSelector = tower::timeout::Timeout<
    tower::buffer::Buffer<String, std::future::Ready<Result<NodeInfo, crate::lb::LbError>>>,
>;

/// Shared state of a node; one per process, behind an `Arc`.
pub struct Node {
    /// Unique node id (routes point at it).
    pub id: String,
    /// host:port clients reach this node at.
    pub endpoint: String,
    pub config: Config,
    pub signer: TokenSigner,
    pub login: LoginMode,
    pub inbox: Arc<dyn Inbox>,
    pub routes: Arc<dyn RouteStore>,
    pub registry: Registry,
    /// The live nodes, from discovery.
    pub membership: Arc<Membership>,
    /// Picks the node that holds a user's stream at Login.
    pub selector: NodeSelector,
    /// Relay clients for the other nodes.
    pub peers: Peers,
}

/// A message as a caller submitted it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub client_msg_id: String,
    pub to: String,
    pub body: String,
}

impl Node {
    /// Validates, stores and pushes one message from `from`. Returns only after the message is
    /// in the recipient's inbox; a store failure means nothing was stored or acked.
    pub async fn send(&self, from: &str, msg: Outgoing) -> Result<Appended, Error> {
        ids::client_msg_id(&msg.client_msg_id)?;
        ids::user(&msg.to).map_err(|e| Error::invalid(format!("recipient: {e}")))?;
        if msg.body.is_empty() {
            return Err(Error::invalid("body is empty"));
        }
        if msg.body.len() > self.config.max_body {
            return Err(Error::invalid(format!(
                "body is {} bytes; the limit is {} bytes",
                msg.body.len(),
                self.config.max_body
            )));
        }
        let appended = self
            .inbox
            .append(NewMessage {
                from: from.to_string(),
                to: msg.to,
                client_msg_id: msg.client_msg_id,
                body: msg.body,
                msg_id: ids::new_id(),
                sent_at: unix_ms(std::time::SystemTime::now()),
            })
            .await?;
        // Also for a duplicate: the first attempt may have been stored but never pushed (its
        // caller gave up between the two). Sessions drop seqs they already sent; one that misses
        // this (full queue, race, lost relay) reads it from the inbox instead.
        let message = &appended.message;
        self.registry.deliver(&message.to, std::slice::from_ref(message));
        for node_id in self.remote_nodes(&appended.routes) {
            let (peers, msg) = (self.peers.clone(), message.clone());
            tokio::spawn(async move {
                if let Err(e) = peers.deliver(&node_id, &msg.to, std::slice::from_ref(&msg)).await {
                    tracing::debug!(peer = %node_id, error = %e, "relay failed; the inbox has it");
                }
            });
        }
        Ok(appended)
    }

    /// The live nodes other than this one that hold one of `routes`. Routes of nodes that left
    /// discovery count as gone.
    pub fn remote_nodes(&self, routes: &[(String, Route)]) -> BTreeSet<String> {
        routes
            .iter()
            .map(|(_, r)| &r.node_id)
            .filter(|id| **id != self.id && self.membership.contains(id))
            .cloned()
            .collect()
    }

    /// Whether a route still points at a live node.
    pub fn route_is_live(&self, route: &Route) -> bool {
        route.node_id == self.id || self.membership.contains(&route.node_id)
    }
}
