//! Relay: node-to-node calls, handed to the node's [`crate::deliver::Delivery`]. Only callers
//! with a node token (signed with the cluster's node secret) and, with TLS on, a certificate of
//! the cluster CA are accepted; anyone else gets UNAUTHENTICATED. A call costs one registry
//! lookup per user (a broadcast group's message: per member here, after reading the member list
//! once per membership version), and a queue push per message and session; a `DeliverBatch` carries at most
//! [`MAX_BATCH`] messages (more is RESOURCE_EXHAUSTED, handing none), and a request over the
//! Relay service's decoding limit is OUT_OF_RANGE.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::deliver::MAX_RELAY_BATCH as MAX_BATCH;
use crate::node::Node;
use crate::proto::{self, relay_server::Relay};
use crate::store::StoredMessage;

pub struct RelayService {
    node: Arc<Node>,
}

impl RelayService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let chain = req.peer_certs();
        self.node.authorize_node(req.metadata(), chain.as_deref().map(Vec::as_slice))?;
        Ok(())
    }

    /// Hands one user's relayed messages to their sessions here, or a broadcast group's (no
    /// user) to its members' sessions here; how many sessions got them.
    async fn accept(&self, d: proto::DeliverRequest) -> usize {
        let messages: Vec<StoredMessage> = d.messages.into_iter().map(Into::into).collect();
        if !d.user_id.is_empty() {
            return self.node.delivery().accept(&d.user_id, &messages);
        }
        let mut sessions = 0;
        for m in messages.iter().filter(|m| m.conversation.starts_with("g:")) {
            sessions += self.node.deliver_broadcast(m, d.members_version).await;
        }
        sessions
    }
}

#[tonic::async_trait]
impl Relay for RelayService {
    async fn deliver(
        &self,
        req: Request<proto::DeliverRequest>,
    ) -> Result<Response<proto::DeliverResponse>, Status> {
        self.authorize(&req)?;
        let sessions = self.accept(req.into_inner()).await;
        Ok(Response::new(proto::DeliverResponse { sessions: sessions as u32 }))
    }

    async fn deliver_batch(
        &self,
        req: Request<proto::DeliverBatchRequest>,
    ) -> Result<Response<proto::DeliverResponse>, Status> {
        self.authorize(&req)?;
        let batch = req.into_inner();
        let count: usize = batch.deliveries.iter().map(|d| d.messages.len()).sum();
        if count > MAX_BATCH {
            return Err(Status::resource_exhausted(format!(
                "a relay batch carries at most {MAX_BATCH} messages, not {count}"
            )));
        }
        let mut sessions = 0;
        for d in batch.deliveries {
            sessions += self.accept(d).await;
        }
        Ok(Response::new(proto::DeliverResponse { sessions: sessions as u32 }))
    }

    async fn kick(
        &self,
        req: Request<proto::KickRequest>,
    ) -> Result<Response<proto::KickResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let kicked = if r.logged_out {
            self.node.delivery().log_out_local(&r.user_id, &r.device)
        } else {
            let session = (!r.session_id.is_empty()).then_some(r.session_id.as_str());
            self.node.delivery().kick_local(&r.user_id, &r.device, session)
        };
        Ok(Response::new(proto::KickResponse { kicked }))
    }

    async fn signal(
        &self,
        req: Request<proto::SignalRequest>,
    ) -> Result<Response<proto::DeliverResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let signal = r.signal.ok_or_else(|| Status::invalid_argument("no signal"))?;
        // A node sends a signal to a small group's members at most.
        if r.user_ids.len() > self.node.config().group_fanout_limit as usize + 1 {
            return Err(Status::invalid_argument("a signal names too many users"));
        }
        let sessions = self.node.delivery().sessions().signal(&r.user_ids, &Arc::new(signal));
        Ok(Response::new(proto::DeliverResponse { sessions: sessions as u32 }))
    }
}
