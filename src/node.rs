//! What one running node shares between its gRPC services and stream sessions, and the Send flow
//! that both the chat stream and the unary Gateway.Send use.
use std::sync::Arc;

use crate::auth::{LoginMode, TokenSigner, unix_ms};
use crate::config::Config;
use crate::error::Error;
use crate::ids;
use crate::lb::Balancer;
use crate::store::{Appended, Inbox, NewMessage, RouteStore};
use crate::stream::Registry;

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
    /// Picks the node that holds a user's stream at Login.
    pub balancer: Balancer,
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
                msg_id: new_id(),
                sent_at: unix_ms(std::time::SystemTime::now()),
            })
            .await?;
        // Also for a duplicate: the first attempt may have been stored but never pushed (its
        // caller gave up between the two). Sessions drop seqs they already sent; one that misses
        // this (full queue, race) reads it from the inbox instead.
        self.registry.deliver(&appended.message.to, std::slice::from_ref(&appended.message));
        Ok(appended)
    }
}

/// A random 128-bit id in hex.
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
