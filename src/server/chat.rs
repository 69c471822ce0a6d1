//! Chat: the per-device bidirectional stream. The handler only spawns the session task and
//! returns its outbound queue as the response stream (see `stream::session`). Browsers reach
//! the same session through a WebSocket (`web::socket`).
use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use crate::node::Node;
use crate::proto::{ClientFrame, chat_server::Chat};
use crate::stream::{self, outbound::OutboundStream};

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
        Ok(Response::new(stream::open(
            &self.node,
            Box::pin(req.into_inner()),
            stream::Transport::Grpc,
        )))
    }
}
