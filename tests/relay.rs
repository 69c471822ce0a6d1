//! Relay between nodes, against a peer double: what a node has waiting for a peer goes in
//! `DeliverBatch` calls, one at a time, each user's messages in order, with the node token; an
//! older peer (no `DeliverBatch`) is sent `Deliver` calls instead.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{NODE_SECRET, eventually};
use tim::auth::{TokenKind, TokenSigner};
use tim::deliver::{MAX_RELAY_BATCH, Peers};
use tim::discovery::NodeInfo;
use tim::proto::{self, relay_server::Relay, relay_server::RelayServer};
use tim::store::StoredMessage;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// What the double was called with, call by call.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Batch(Vec<(String, u64)>),
    One(Vec<(String, u64)>),
    Refused,
}

/// A peer's Relay service that records its calls. `older` answers UNIMPLEMENTED to
/// `DeliverBatch`, as a node of the previous version does; the first call takes `first_delay`.
#[derive(Clone)]
struct PeerDouble {
    calls: Arc<Mutex<Vec<Call>>>,
    older: bool,
    first_delay: Duration,
    signer: TokenSigner,
}

impl PeerDouble {
    async fn start(older: bool, first_delay: Duration) -> (Self, String) {
        let double = PeerDouble {
            calls: Arc::default(),
            older,
            first_delay,
            signer: TokenSigner::new(NODE_SECRET.as_bytes().to_vec()),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let server = tonic::transport::Server::builder()
            .add_service(RelayServer::new(double.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        (double, endpoint)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Every (user, seq) handed so far, in the order the calls carried them.
    fn handed(&self) -> Vec<(String, u64)> {
        let calls = self.calls();
        let each = calls.into_iter().flat_map(|c| match c {
            Call::Batch(m) | Call::One(m) => m,
            Call::Refused => Vec::new(),
        });
        each.collect()
    }

    async fn record<T>(&self, req: &Request<T>, call: Call) -> Result<(), Status> {
        self.signer
            .verify_metadata(req.metadata(), TokenKind::Node)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let first = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(call);
            calls.len() == 1
        };
        if first {
            tokio::time::sleep(self.first_delay).await;
        }
        Ok(())
    }
}

fn seqs(d: &proto::DeliverRequest) -> impl Iterator<Item = (String, u64)> + '_ {
    d.messages.iter().map(|m| (d.user_id.clone(), m.seq))
}

#[tonic::async_trait]
impl Relay for PeerDouble {
    async fn deliver(
        &self,
        req: Request<proto::DeliverRequest>,
    ) -> Result<Response<proto::DeliverResponse>, Status> {
        let handed = seqs(req.get_ref()).collect();
        self.record(&req, Call::One(handed)).await?;
        Ok(Response::new(proto::DeliverResponse { sessions: 1 }))
    }

    async fn deliver_batch(
        &self,
        req: Request<proto::DeliverBatchRequest>,
    ) -> Result<Response<proto::DeliverResponse>, Status> {
        if self.older {
            self.record(&req, Call::Refused).await?;
            return Err(Status::unimplemented("DeliverBatch"));
        }
        let handed = req.get_ref().deliveries.iter().flat_map(seqs).collect();
        self.record(&req, Call::Batch(handed)).await?;
        Ok(Response::new(proto::DeliverResponse { sessions: 1 }))
    }

    async fn kick(
        &self,
        _: Request<proto::KickRequest>,
    ) -> Result<Response<proto::KickResponse>, Status> {
        Err(Status::unimplemented("kick"))
    }

    async fn signal(
        &self,
        _: Request<proto::SignalRequest>,
    ) -> Result<Response<proto::DeliverResponse>, Status> {
        Err(Status::unimplemented("signal"))
    }
}

fn message(to: &str, seq: u64) -> StoredMessage {
    StoredMessage {
        seq,
        msg_id: format!("{to}-{seq}"),
        from: "alice".into(),
        to: to.into(),
        body: "hello".into(),
        sent_at: 1,
        ..StoredMessage::default()
    }
}

fn peers_with(endpoint: &str) -> Peers {
    let signer = TokenSigner::new(NODE_SECRET.as_bytes().to_vec());
    let peers = Peers::new("node-a", signer, None, Default::default());
    let b = NodeInfo { id: "node-b".into(), endpoint: endpoint.into(), load: 0 };
    let a = NodeInfo { id: "node-a".into(), endpoint: "127.0.0.1:1".into(), load: 0 };
    peers.sync(&[a, b]);
    peers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_waiting_for_a_peer_go_in_few_calls_each_users_in_order() {
    // The first call is slow, so what is relayed meanwhile waits for the next ones.
    let (peer, endpoint) = PeerDouble::start(false, Duration::from_millis(300)).await;
    let peers = peers_with(&endpoint);
    let users = ["bob", "carol", "dave"];
    let total = 2 * MAX_RELAY_BATCH as u64 + 60;
    for seq in 1..=total {
        let to = users[seq as usize % users.len()];
        assert!(peers.relay("node-b", to, message(to, seq)), "queued");
    }
    eventually(|| async { (peer.handed().len() == total as usize).then_some(()) }).await;

    let calls = peer.calls();
    assert!(calls.iter().all(|c| matches!(c, Call::Batch(_))), "{calls:?}");
    // At least three calls are needed (at most 256 messages each); the slow first one leaves
    // the rest queued behind it, so a few more at most, never one per message.
    assert!((3..=6).contains(&calls.len()), "{} calls", calls.len());
    for user in users {
        let got: Vec<u64> =
            peer.handed().into_iter().filter(|(u, _)| u == user).map(|(_, s)| s).collect();
        let want: Vec<u64> = (1..=total).filter(|s| users[*s as usize % 3] == user).collect();
        assert_eq!(got, want, "{user}'s messages, each once and in order");
    }

    // Neither this node nor an unknown one is relayed to; after close, nothing is.
    assert!(!peers.relay("node-a", "bob", message("bob", 1)));
    assert!(!peers.relay("node-x", "bob", message("bob", 1)));
    peers.close();
    assert!(!peers.relay("node-b", "bob", message("bob", total + 1)));
    peers.sync(&[NodeInfo { id: "node-b".into(), endpoint, load: 0 }]);
    assert!(!peers.relay("node-b", "bob", message("bob", total + 1)), "closed for good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_peer_without_batches_is_sent_one_call_per_user() {
    let (peer, endpoint) = PeerDouble::start(true, Duration::ZERO).await;
    let peers = peers_with(&endpoint);
    assert!(peers.relay("node-b", "bob", message("bob", 1)));
    eventually(|| async { (peer.calls() == [Call::Refused]).then_some(()) }).await;

    // The refused batch was a lost hint (the inbox has it); what follows goes as Deliver calls.
    for seq in 2..=4 {
        assert!(peers.relay("node-b", "bob", message("bob", seq)));
        assert!(peers.relay("node-b", "carol", message("carol", seq)));
    }
    eventually(|| async { (peer.handed().len() == 6).then_some(()) }).await;
    let calls = peer.calls();
    assert!(calls[1..].iter().all(|c| matches!(c, Call::One(_))), "{calls:?}");
    for user in ["bob", "carol"] {
        let got: Vec<u64> =
            peer.handed().into_iter().filter(|(u, _)| u == user).map(|(_, s)| s).collect();
        assert_eq!(got, [2, 3, 4], "{user}");
    }
}
