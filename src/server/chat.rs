//! Chat: the per-device bidirectional stream. The handler only spawns the session task and
//! returns its outbound queue as the response stream (see `stream::session`).
use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use crate::node::Node;
use crate::proto::{ClientFrame, chat_server::Chat};
use crate::stream::outbound::{self, OutboundStream};
use crate::stream::session;

pub struct ChatService {
    node: Arc<Node>,
}

impl ChatService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl Chat for ChatService {
    type SessionStream = OutboundStream;

    async fn session(
        &self,
        req: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<OutboundStream>, Status> {
        let cfg = self.node.config();
        let budget = self.node.delivery().sessions().budget().clone();
        let (out, stream) = outbound::channel(
            cfg.outbound_queue,
            cfg.outbound_bytes,
            cfg.slow_client_timeout,
            budget,
        );
        tokio::spawn(session::run(self.node.clone(), req.into_inner(), out));
        Ok(Response::new(stream))
    }
}
