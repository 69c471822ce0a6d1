//! Cluster delivery: the one owner of who gets a stored message and how it reaches them.
//!
//! After the store has taken a message (and only then), [`Delivery::fan_out`] hands it to the
//! recipient's sessions on this node and relays it once to every other live node that holds one
//! of the recipient's devices. A relay from a peer lands in [`Delivery::accept`]. When a device
//! signs in again, [`Delivery::kick_replaced`] ends its older session wherever it is. Routes of
//! nodes that left discovery count as gone ([`Delivery::is_live`]).
//!
//! Pushes are hints: a session that misses one (a full feed, a lost relay) reads its inbox, so
//! nothing here ever waits for, or fails, a send.
//!
//! - `registry`: this node's live device sessions (the local push and kick).
//! - `peers`: relay clients and batching relay queues for the other nodes, signed with a node
//!   token.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::discovery::Membership;
use crate::limit::QueueBudget;
use crate::store::{Route, StoredMessage};

mod peers;
mod registry;

pub use peers::{MAX_BATCH as MAX_RELAY_BATCH, Peers};
pub use registry::{Feed, Phase, Registry, Stop};

/// Why a session is ended by a newer one of the same device.
pub const REPLACED: &str = "signed in again on the same device";

/// Kick calls in flight, and whether the node still makes any.
#[derive(Default)]
struct Calls {
    running: JoinSet<()>,
    closed: bool,
}

/// Delivery for one node.
pub struct Delivery {
    self_id: String,
    sessions: Registry,
    peers: Peers,
    membership: Arc<Membership>,
    /// Kick calls in flight; aborted by [`Delivery::shutdown`] (relays are the peers' own).
    calls: Mutex<Calls>,
}

impl Delivery {
    /// `feed_capacity` bounds the live messages queued per local session before it falls back
    /// to reading its inbox.
    pub fn new(
        self_id: &str,
        peers: Peers,
        membership: Arc<Membership>,
        feed_capacity: usize,
        budget: Arc<QueueBudget>,
    ) -> Self {
        Self {
            self_id: self_id.to_string(),
            sessions: Registry::new(feed_capacity, budget),
            peers,
            membership,
            calls: Mutex::new(Calls::default()),
        }
    }

    /// This node's live sessions.
    pub fn sessions(&self) -> &Registry {
        &self.sessions
    }

    /// Pushes a message stored in `user`'s inbox (the recipient's, or the sender's copy) to
    /// every device of `user`: local sessions at once, and queued once for each other live node
    /// that holds one of `routes` (the user's routes read with the append), whose relay task
    /// sends it with what else is waiting. Returns without waiting for any relay.
    pub fn fan_out(&self, user: &str, message: &StoredMessage, routes: &[(String, Route)]) {
        self.sessions.deliver(user, std::slice::from_ref(message));
        for node_id in self.remote_nodes(routes) {
            if !self.peers.relay(&node_id, user, message.clone()) {
                debug!(peer = %node_id, "relay queue full or peer gone; the inbox has it");
            }
        }
    }

    /// Hands an ephemeral signal to `users`' sessions: here at once, and through every live
    /// peer (no route is read for something this cheap to lose). Returns without waiting.
    pub fn signal(&self, users: Vec<String>, signal: crate::proto::Signal) {
        self.sessions.signal(&users, &Arc::new(signal.clone()));
        for node in self.membership.nodes().iter().filter(|n| n.id != self.self_id) {
            let (peers, users, signal) = (self.peers.clone(), users.clone(), signal.clone());
            let node = node.id.clone();
            self.spawn(async move {
                if let Err(e) = peers.signal(&node, users, signal).await {
                    debug!(peer = %node, error = %e, "signal not relayed");
                }
            });
        }
    }

    /// How many nodes the membership holds alive (this one included).
    pub fn live_nodes(&self) -> usize {
        self.membership.nodes().len()
    }

    /// The relay clients (the node queues broadcast groups' messages on them).
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Messages a peer relayed here, for `user`'s local sessions. Returns how many sessions
    /// got them.
    pub fn accept(&self, user: &str, messages: &[StoredMessage]) -> usize {
        self.sessions.deliver(user, messages)
    }

    /// A newer session of `user`'s `device` took the route from `previous`: ends the older
    /// session if it is on another live node (one on this node was kicked when the newer one
    /// registered).
    pub fn kick_replaced(&self, user: &str, device: &str, previous: &Route) {
        if !self.is_live_peer(&previous.node_id) {
            return;
        }
        let (peers, old) = (self.peers.clone(), previous.clone());
        let (user, device) = (user.to_string(), device.to_string());
        self.spawn(async move {
            if let Err(e) = peers.kick(&old.node_id, &user, &device, &old.session_id, false).await {
                warn!(%user, %device, peer = %old.node_id, error = %e, "could not kick the older session");
            }
        });
    }

    /// A peer asks to end `user`'s `device` session here (only `session_id`'s, when given).
    pub fn kick_local(&self, user: &str, device: &str, session_id: Option<&str>) -> bool {
        self.sessions.kick(user, device, session_id, Stop::Kicked(REPLACED.into()))
    }

    /// Ends `user`'s `device` session here because it logged out.
    pub fn log_out_local(&self, user: &str, device: &str) -> bool {
        self.sessions.kick(user, device, None, Stop::LoggedOut)
    }

    /// Ends `user`'s `device` sessions on every node: here at once, and through every live
    /// peer (a route may have lapsed, so all of them, not only the route's). Waits for the
    /// peers' answers, each within the relay call timeout.
    pub async fn log_out(&self, user: &str, device: &str) {
        self.log_out_local(user, device);
        let peers = self.membership.nodes();
        let calls = peers.iter().filter(|n| n.id != self.self_id).map(|n| async move {
            if let Err(e) = self.peers.kick(&n.id, user, device, "", true).await {
                warn!(%user, %device, peer = %n.id, error = %e, "could not end a logged-out session");
            }
        });
        futures_util::future::join_all(calls).await;
    }

    /// Whether a route still points at a live node (this one, or a peer discovery knows).
    pub fn is_live(&self, route: &Route) -> bool {
        route.node_id == self.self_id || self.is_live_peer(&route.node_id)
    }

    /// Whether `node_id` is another node that discovery counts as live.
    fn is_live_peer(&self, node_id: &str) -> bool {
        node_id != self.self_id && self.membership.contains(node_id)
    }

    /// Keeps a relay channel to every other live node; runs until the node aborts it.
    pub async fn follow_membership(&self) {
        let mut changes = self.membership.subscribe();
        loop {
            let nodes = changes.borrow_and_update().clone();
            self.peers.sync(&nodes);
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Aborts the relay and kick calls still in flight and starts no more (the node is
    /// stopping; the inbox has every message).
    pub fn shutdown(&self) {
        {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            calls.closed = true;
            calls.running.abort_all();
        }
        self.peers.close();
    }

    /// The live nodes other than this one that hold one of `routes`.
    fn remote_nodes(&self, routes: &[(String, Route)]) -> BTreeSet<String> {
        routes.iter().map(|(_, r)| &r.node_id).filter(|id| self.is_live_peer(id)).cloned().collect()
    }

    /// Runs a peer call in the background, owned here; finished ones are reaped as new ones
    /// start. Each is bounded by the peers' call timeout.
    fn spawn(&self, call: impl Future<Output = ()> + Send + 'static) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if calls.closed {
            return;
        }
        while calls.running.try_join_next().is_some() {}
        calls.running.spawn(call);
    }
}
