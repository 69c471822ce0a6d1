//! Gateway: Login (any node), unary Send for server-side callers, Presence and Logout. Each call
//! is translated from the wire and handed to the node's flow of the same name.
//!
//! Who may call: Login anyone (it is the authentication); Send, Presence and Logout only with a
//! session token (`authorization: Bearer`) whose device has not logged out, acting as the
//! token's user. Logout acts on the caller's own devices only. Presence tells other users only
//! online, or when last seen; devices and nodes only to the user themself. History reads only
//! conversations the caller is a member of (else PERMISSION_DENIED), one bounded page a call
//! (100 messages, about 1 MiB), and counts against the caller's send allowance like a Send.
//! ListConversations lists only the caller's own conversations, a page of at most 100, and
//! costs a send allowance per 100 conversations the caller has (1,000 considered at most).
//! MarkRead moves only the caller's own read cursor, GetReceipts reads the cursors of a
//! conversation the caller is in (a page of 100 at most); each costs a send allowance.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::proto::{self, gateway_server::Gateway};

pub struct GatewayService {
    node: Arc<Node>,
}

impl GatewayService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn login(
        &self,
        req: Request<proto::LoginRequest>,
    ) -> Result<Response<proto::LoginResponse>, Status> {
        Ok(Response::new(self.node.login(req.into_inner()).await?))
    }

    async fn send(
        &self,
        req: Request<proto::SendRequest>,
    ) -> Result<Response<proto::SendResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        let result = self.node.send(&claims.sub, &claims.dev, req.into_inner().into()).await;
        let result = result.map_err(Status::from);
        self.node.count_send(&result, |a| a.duplicate);
        Ok(Response::new(result?.into()))
    }

    async fn presence(
        &self,
        req: Request<proto::PresenceRequest>,
    ) -> Result<Response<proto::PresenceResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        let user = req.into_inner().user_id;
        let presence = self.node.presence(&claims.sub, &user).await?;
        let devices: Vec<_> = presence
            .devices
            .into_iter()
            .map(|(device, node_id)| proto::DeviceRoute { device, node_id })
            .collect();
        Ok(Response::new(proto::PresenceResponse {
            online: presence.online,
            user_id: user,
            devices,
            last_seen_at: presence.last_seen.unwrap_or(0),
        }))
    }

    async fn logout(
        &self,
        req: Request<proto::LogoutRequest>,
    ) -> Result<Response<proto::LogoutResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        let device = self.node.logout(&claims, &req.into_inner().device).await?;
        Ok(Response::new(proto::LogoutResponse { device }))
    }

    async fn history(
        &self,
        req: Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        Ok(Response::new(self.node.history(&claims.sub, req.into_inner()).await?))
    }

    async fn list_conversations(
        &self,
        req: Request<proto::ListConversationsRequest>,
    ) -> Result<Response<proto::ListConversationsResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        Ok(Response::new(self.node.list_conversations(&claims.sub, req.into_inner()).await?))
    }

    async fn mark_read(
        &self,
        req: Request<proto::MarkReadRequest>,
    ) -> Result<Response<proto::MarkReadResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        Ok(Response::new(self.node.mark_read(&claims.sub, req.into_inner()).await?))
    }

    async fn get_receipts(
        &self,
        req: Request<proto::GetReceiptsRequest>,
    ) -> Result<Response<proto::GetReceiptsResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        Ok(Response::new(self.node.receipts(&claims.sub, req.into_inner()).await?))
    }
}
