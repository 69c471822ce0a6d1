//! Gateway: Login (any node), unary Send for server-side callers, and Presence.
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tower::ServiceExt as _;

use crate::auth::TokenKind;
use crate::ids;
use crate::node::{Node, Outgoing};
use crate::proto::{self, gateway_server::Gateway};

/// Device name used when Login names none.
pub const DEFAULT_DEVICE: &str = "default";

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
        let req = req.into_inner();
        let user = self.node.login.authenticate(&req.user_id, &req.jwt)?;
        let device = if req.device.is_empty() { DEFAULT_DEVICE.to_string() } else { req.device };
        ids::device(&device)?;
        let target = self.node.selector.clone().oneshot(user.clone()).await.map_err(|e| {
            Status::unavailable(format!("no node is available to hold the stream: {e}"))
        })?;
        let (token, expires_at) =
            self.node.signer.issue(TokenKind::Session, &user, &device, self.node.config.token_ttl);
        tracing::debug!(%user, %device, node = %target.id, "login");
        Ok(Response::new(proto::LoginResponse {
            token,
            expires_at,
            user_id: user,
            device,
            node_id: target.id,
            endpoint: target.endpoint,
        }))
    }

    async fn send(
        &self,
        req: Request<proto::SendRequest>,
    ) -> Result<Response<proto::SendResponse>, Status> {
        let claims = self.node.signer.verify_metadata(req.metadata(), TokenKind::Session)?;
        let r = req.into_inner();
        let msg = Outgoing { client_msg_id: r.client_msg_id, to: r.to, body: r.body };
        let appended = self.node.send(&claims.sub, msg).await?;
        Ok(Response::new(proto::SendResponse {
            msg_id: appended.message.msg_id,
            seq: appended.message.seq,
            duplicate: appended.duplicate,
        }))
    }

    async fn presence(
        &self,
        req: Request<proto::PresenceRequest>,
    ) -> Result<Response<proto::PresenceResponse>, Status> {
        self.node.signer.verify_metadata(req.metadata(), TokenKind::Session)?;
        let user = req.into_inner().user_id;
        ids::user(&user)?;
        let routes = self.node.routes.get(&user).await.map_err(crate::Error::from)?;
        let mut devices: Vec<_> = routes
            .into_iter()
            .filter(|(_, r)| self.node.route_is_live(r))
            .map(|(device, r)| proto::DeviceRoute { device, node_id: r.node_id })
            .collect();
        devices.sort_by(|a, b| a.device.cmp(&b.device));
        Ok(Response::new(proto::PresenceResponse {
            online: !devices.is_empty(),
            user_id: user,
            devices,
        }))
    }
}
