//! The other nodes' Relay service, kept in step with discovery: a channel and a relay queue per
//! live peer, dropped when it leaves. Calls carry a node token signed with the node secret, and
//! with TLS on they run over mutual TLS: this node's certificate out, the cluster CA trusted.
//!
//! Relays are batched. [`Peers::relay`] queues a stored message for its peer without waiting;
//! one task per peer sends what is waiting in one `DeliverBatch` call (at most [`MAX_BATCH`]
//! messages and about [`MAX_BATCH_BYTES`] of bodies), one call at a time, so the peer gets a
//! user's messages in the order they were queued. No timer holds a message back: under light
//! load a call carries the one message that came, and calls grow by themselves while the one
//! before is out. A relay is a hint (the inbox has every message), so one that finds the queue
//! full is dropped, and a call that fails is not retried: the recipient's sessions read their
//! inbox when they notice the gap.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::{debug, warn};

use crate::auth::{TokenKind, TokenSigner};
use crate::discovery::NodeInfo;
use crate::metrics::Metrics;
use crate::proto::{self, relay_client::RelayClient};
use crate::store::StoredMessage;
use crate::task::AbortOnDrop;
use crate::tls::ClientTls;
use crate::wire::authorized;

/// Lifetime of the node token peers are called with; it is re-issued at half-life.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// A relay call that takes longer is abandoned (the message is in the inbox regardless).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Most messages one `DeliverBatch` carries; a peer refuses more.
pub const MAX_BATCH: usize = 256;
/// Bodies one `DeliverBatch` carries at most, unless one message alone is larger.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Messages queued for one peer at most; beyond it a relay is dropped.
const QUEUE: usize = 4096;
/// After a peer answers UNIMPLEMENTED to `DeliverBatch` (an older version), how long it is sent
/// `Deliver` calls before the batch is tried again.
const OLDER_PEER: Duration = Duration::from_secs(60);

/// A queued relay: (the user whose inbox holds the message, or "" for a broadcast group's
/// message, the group's membership version (0 for a user's), the message).
type Relayed = (String, i64, StoredMessage);

/// Relay clients and queues for every other live node.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

struct Inner {
    self_id: String,
    tls: Option<ClientTls>,
    token: Arc<NodeToken>,
    metrics: Arc<Metrics>,
    /// node id → its channel and relay queue; `None` once closed.
    peers: Mutex<Option<HashMap<String, Peer>>>,
}

struct Peer {
    endpoint: String,
    client: RelayClient<Channel>,
    /// (user, a message of that user's inbox).
    queue: mpsc::Sender<Relayed>,
    /// The task sending the queue; it stops when the peer is dropped.
    _relay: AbortOnDrop,
}

/// The token this node calls its peers with, re-issued at half-life.
struct NodeToken {
    self_id: String,
    signer: TokenSigner,
    current: Mutex<(String, Instant)>,
}

impl NodeToken {
    fn get(&self) -> String {
        let mut token = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if token.1.elapsed() > TOKEN_TTL / 2 {
            let (t, _) = self.signer.issue(TokenKind::Node, &self.self_id, "", TOKEN_TTL);
            *token = (t, Instant::now());
        }
        token.0.clone()
    }
}

impl Peers {
    /// Relays are counted in `metrics` (batches, failures, drops).
    pub fn new(
        self_id: &str,
        signer: TokenSigner,
        tls: Option<ClientTls>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (token, _) = signer.issue(TokenKind::Node, self_id, "", TOKEN_TTL);
        let token = NodeToken {
            self_id: self_id.to_string(),
            signer,
            current: Mutex::new((token, Instant::now())),
        };
        Peers {
            inner: Arc::new(Inner {
                self_id: self_id.to_string(),
                tls,
                token: Arc::new(token),
                metrics,
                peers: Mutex::new(Some(HashMap::new())),
            }),
        }
    }

    /// Matches the peers to `nodes`: new ones get a (lazily connecting) channel and a relay
    /// task, departed or moved ones lose theirs (with what was queued for them).
    pub fn sync(&self, nodes: &[NodeInfo]) {
        let mut peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(peers) = peers.as_mut() else { return };
        peers.retain(|id, p| nodes.iter().any(|n| &n.id == id && n.endpoint == p.endpoint));
        for n in nodes.iter().filter(|n| n.id != self.inner.self_id) {
            if peers.contains_key(&n.id) {
                continue;
            }
            let Some(channel) = self.channel(n) else { continue };
            let client = RelayClient::new(channel);
            let (queue, waiting) = mpsc::channel(QUEUE);
            let relay = Relay {
                peer: n.id.clone(),
                client: client.clone(),
                older_since: None,
                metrics: self.inner.metrics.clone(),
            };
            let task = tokio::spawn(relay.run(waiting, self.inner.token.clone()));
            debug!(peer = %n.id, endpoint = %n.endpoint, "relay channel added");
            let peer =
                Peer { endpoint: n.endpoint.clone(), client, queue, _relay: AbortOnDrop(task) };
            peers.insert(n.id.clone(), peer);
        }
    }

    /// Drops every peer for good: their relay tasks stop, queued relays are dropped (the node
    /// is stopping; the inbox has every message), and later syncs add none.
    pub fn close(&self) {
        self.inner.peers.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn channel(&self, n: &NodeInfo) -> Option<Channel> {
        let scheme = if self.inner.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", n.endpoint)).ok()?;
        if let Some(tls) = &self.inner.tls {
            match endpoint.tls_config(tls.tonic()) {
                Ok(e) => endpoint = e,
                Err(e) => {
                    warn!(peer = %n.id, error = %e, "no TLS relay channel");
                    return None;
                }
            }
        }
        Some(
            endpoint
                .connect_timeout(CALL_TIMEOUT)
                .timeout(CALL_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(15))
                .keep_alive_timeout(Duration::from_secs(20))
                .connect_lazy(),
        )
    }

    fn client(&self, node_id: &str) -> Result<RelayClient<Channel>, Status> {
        let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .as_ref()
            .and_then(|p| p.get(node_id))
            .map(|p| p.client.clone())
            .ok_or_else(|| Status::unavailable(format!("node {node_id} is not a live peer")))
    }

    /// Queues a message of `user`'s inbox for `user`'s sessions on `node_id`. Returns false
    /// when it was dropped: not a live peer, or its queue is full.
    pub fn relay(&self, node_id: &str, user: &str, message: StoredMessage) -> bool {
        let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        let peer = peers.as_ref().and_then(|p| p.get(node_id));
        let queued = peer.is_some_and(|p| p.queue.try_send((user.to_string(), 0, message)).is_ok());
        if !queued {
            self.inner.metrics.relay_dropped.inc();
        }
        queued
    }

    /// Messages waiting in the relay queues, over every peer.
    pub fn queued(&self) -> u64 {
        let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = |p: &Peer| p.queue.max_capacity() - p.queue.capacity();
        peers.as_ref().map_or(0, |p| p.values().map(waiting).sum::<usize>() as u64)
    }

    /// Queues a broadcast group's message (of membership `version`) for every live peer: each
    /// hands it to its members' sessions. Returns how many peers it was dropped for.
    pub fn relay_broadcast(&self, message: &StoredMessage, version: i64) -> usize {
        let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        let queues = peers.as_ref().map(|p| p.values().map(|p| &p.queue));
        let queued = |q: &&mpsc::Sender<Relayed>| {
            q.try_send((String::new(), version, message.clone())).is_err()
        };
        let dropped = queues.map_or(0, |q| q.filter(queued).count());
        self.inner.metrics.relay_dropped.inc_by(dropped as u64);
        dropped
    }

    /// Ends `user`'s `device` session on `node_id`: `session_id`'s (a newer one took over), or
    /// any with `logged_out`.
    pub async fn kick(
        &self,
        node_id: &str,
        user: &str,
        device: &str,
        session_id: &str,
        logged_out: bool,
    ) -> Result<bool, Status> {
        let req = proto::KickRequest {
            user_id: user.to_string(),
            device: device.to_string(),
            session_id: session_id.to_string(),
            logged_out,
        };
        let resp = self.client(node_id)?.kick(authorized(req, &self.inner.token.get())).await?;
        Ok(resp.into_inner().kicked)
    }

    /// Hands an ephemeral `signal` to `users`' sessions on `node_id`.
    pub async fn signal(
        &self,
        node_id: &str,
        users: Vec<String>,
        signal: proto::Signal,
    ) -> Result<(), Status> {
        let req = proto::SignalRequest { user_ids: users, signal: Some(signal) };
        self.client(node_id)?.signal(authorized(req, &self.inner.token.get())).await?;
        Ok(())
    }
}

/// The task that sends one peer's relay queue.
struct Relay {
    peer: String,
    client: RelayClient<Channel>,
    /// When the peer last answered UNIMPLEMENTED to `DeliverBatch`.
    older_since: Option<Instant>,
    metrics: Arc<Metrics>,
}

impl Relay {
    async fn run(mut self, mut queue: mpsc::Receiver<Relayed>, token: Arc<NodeToken>) {
        let mut waiting = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut waiting, MAX_BATCH).await > 0 {
            let mut rest = waiting.drain(..).peekable();
            while rest.peek().is_some() {
                let batch = batch(&mut rest);
                self.metrics.relay_batches.inc();
                if let Err(e) = self.send(batch, &token.get()).await {
                    self.metrics.relay_failures.inc();
                    debug!(peer = %self.peer, error = %e, "relay failed; the inbox has it");
                }
            }
        }
    }

    /// Sends one batch: as one `DeliverBatch`, or as one `Deliver` per user to an older peer.
    /// A batch an older peer refused on first sight is lost like any failed relay.
    async fn send(&mut self, batch: proto::DeliverBatchRequest, token: &str) -> Result<(), Status> {
        if self.older_since.is_some_and(|t| t.elapsed() < OLDER_PEER) {
            for delivery in batch.deliveries {
                self.client.deliver(authorized(delivery, token)).await?;
            }
            return Ok(());
        }
        match self.client.deliver_batch(authorized(batch, token)).await {
            Err(e) if e.code() == Code::Unimplemented => {
                debug!(peer = %self.peer, "peer has no DeliverBatch; relaying one user at a time");
                self.older_since = Some(Instant::now());
                Err(e)
            }
            other => other.map(drop),
        }
    }
}

/// Takes the next batch off `messages`: at most [`MAX_BATCH`] of them and about
/// [`MAX_BATCH_BYTES`] of bodies (at least one message), grouped by recipient in queue order.
fn batch(
    messages: &mut std::iter::Peekable<impl Iterator<Item = Relayed>>,
) -> proto::DeliverBatchRequest {
    let mut deliveries: Vec<proto::DeliverRequest> = Vec::new();
    let mut by_user: HashMap<(String, i64), usize> = HashMap::new();
    let (mut count, mut bytes) = (0, 0);
    while let Some((_, _, next)) = messages.peek() {
        if count > 0 && (count == MAX_BATCH || bytes + next.body.len() > MAX_BATCH_BYTES) {
            break;
        }
        let Some((user, version, m)) = messages.next() else { break };
        count += 1;
        bytes += m.body.len();
        let at = *by_user.entry((user.clone(), version)).or_insert_with(|| {
            deliveries.push(proto::DeliverRequest {
                user_id: user,
                messages: Vec::new(),
                members_version: version,
            });
            deliveries.len() - 1
        });
        deliveries[at].messages.push(m.into());
    }
    proto::DeliverBatchRequest { deliveries }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(to: &str, seq: u64, body_len: usize) -> Relayed {
        let m = StoredMessage {
            seq,
            msg_id: format!("m{seq}"),
            from: "alice".into(),
            to: to.into(),
            body: "x".repeat(body_len),
            sent_at: 1,
            ..StoredMessage::default()
        };
        (to.to_string(), 0, m)
    }

    fn shape(batch: &proto::DeliverBatchRequest) -> Vec<(String, Vec<u64>)> {
        let seqs = |d: &proto::DeliverRequest| d.messages.iter().map(|m| m.seq).collect();
        batch.deliveries.iter().map(|d| (d.user_id.clone(), seqs(d))).collect()
    }

    #[test]
    fn a_batch_groups_by_recipient_and_keeps_each_recipients_order() {
        let queued = [("bob", 1), ("carol", 1), ("bob", 2), ("dave", 7), ("carol", 2), ("bob", 3)];
        let mut rest = queued.iter().map(|(to, seq)| message(to, *seq, 8)).peekable();
        let got = shape(&batch(&mut rest));
        let want = [("bob", vec![1, 2, 3]), ("carol", vec![1, 2]), ("dave", vec![7])];
        assert_eq!(got, want.map(|(u, s)| (u.to_string(), s)));
        assert!(rest.peek().is_none());
    }

    #[test]
    fn a_batch_stops_at_its_count_or_its_bytes_and_the_rest_follows() {
        let mut rest = (1..=MAX_BATCH as u64 + 3).map(|s| message("bob", s, 8)).peekable();
        assert_eq!(shape(&batch(&mut rest))[0].1.len(), MAX_BATCH);
        assert_eq!(shape(&batch(&mut rest)), [("bob".to_string(), vec![257, 258, 259])]);

        // Bodies: as many as fit, then the next batch; one larger than the cap goes alone.
        let quarter = MAX_BATCH_BYTES / 4;
        let sizes = [quarter, quarter, quarter, quarter + 1, MAX_BATCH_BYTES * 2, 1];
        let mut rest = sizes.iter().zip(1..).map(|(len, s)| message("bob", s, *len)).peekable();
        let seqs = |b: proto::DeliverBatchRequest| shape(&b)[0].1.clone();
        assert_eq!(seqs(batch(&mut rest)), [1, 2, 3]);
        assert_eq!(seqs(batch(&mut rest)), [4]);
        assert_eq!(seqs(batch(&mut rest)), [5]);
        assert_eq!(seqs(batch(&mut rest)), [6]);
        assert!(rest.peek().is_none());
    }
}
