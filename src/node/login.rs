//! Login: authenticate the caller (dev or JWT), place them on a node by the `--lb` strategy (a
//! tower layer over the live node set), and issue the session token for that node.
use std::time::Duration;

use tonic::Status;
use tower::buffer::Buffer;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer as _, ServiceBuilder, ServiceExt as _};

use super::{DEFAULT_DEVICE, Node};
use crate::auth::{AuthError, TokenKind, TokenSigner};
use crate::discovery::{Membership, NodeInfo};
use crate::error::Error;
use crate::ids;
use crate::lb::{NodeSelectLayer, Placed};
use crate::metrics::OutcomeLabel;
use crate::proto;

/// How long Login waits for discovery to know a node before answering UNAVAILABLE.
const PICK_TIMEOUT: Duration = Duration::from_secs(3);
/// Logins waiting for the node selector at once, beyond which Login waits for room.
const PICK_QUEUE: usize = 1024;

/// Who Login is placing: the caller's proven identity.
#[derive(Debug, Clone)]
pub struct Grant {
    pub user: String,
    pub device: String,
}

impl Placed for Grant {
    fn key(&self) -> &str {
        &self.user
    }
}

/// Login after authentication: places the grant on a node (the `--lb` strategy, as a tower
/// layer) and issues its session token for that node.
pub(super) type LoginService = BoxCloneSyncService<Grant, proto::LoginResponse, BoxError>;

/// The task that runs Login's node selection (the worker of its buffer).
pub type LoginWorker = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

impl Node {
    /// Login: proves who the caller is (dev or JWT), places them on a node by strategy, and
    /// returns a session token for that node.
    pub async fn login(&self, req: proto::LoginRequest) -> Result<proto::LoginResponse, Status> {
        let answer = self.place(req).await;
        let outcome = if answer.is_ok() { "ok" } else { "refused" };
        self.metrics.logins.get_or_create(&OutcomeLabel { outcome }).inc();
        answer
    }

    async fn place(&self, req: proto::LoginRequest) -> Result<proto::LoginResponse, Status> {
        let user = self.login_mode.authenticate(&req.user_id, &req.jwt)?;
        ids::user(&user).map_err(Error::from)?;
        if !req.user_id.is_empty() && req.user_id != user {
            let msg = format!("user_id {:?} does not match the jwt subject", req.user_id);
            return Err(AuthError::Forbidden(msg).into());
        }
        let device = if req.device.is_empty() { DEFAULT_DEVICE.to_string() } else { req.device };
        ids::device(&device).map_err(Error::from)?;
        let reply = self.login.clone().oneshot(Grant { user, device }).await.map_err(|e| {
            Status::unavailable(format!("no node is available to hold the stream: {e}"))
        })?;
        tracing::debug!(user = %reply.user_id, device = %reply.device, node = %reply.node_id, "login");
        Ok(reply)
    }
}

/// The Login pipeline: a timeout (an empty cluster is UNAVAILABLE, not a hang), a buffer (the
/// strategy is stateful and shared by every Login call; its worker is returned to be run), the
/// node-selection layer, and the service that issues the session token for the chosen node
/// (signing runs on the caller's task, not in the worker).
pub(super) fn login_service(
    signer: TokenSigner,
    ttl: Duration,
    strategy: crate::lb::StrategyKind,
    scheme: &'static str,
    membership: &Membership,
) -> (LoginService, LoginWorker) {
    let issue = tower::service_fn(move |(grant, node): (Grant, NodeInfo)| {
        let signer = signer.clone();
        async move {
            let (token, expires_at) =
                signer.issue(TokenKind::Session, &grant.user, &grant.device, ttl);
            Ok::<_, BoxError>(proto::LoginResponse {
                token,
                expires_at,
                user_id: grant.user,
                device: grant.device,
                node_id: node.id,
                // https:// when the cluster serves TLS, so clients never dial it in plaintext.
                endpoint: format!("{scheme}{}", node.endpoint),
            })
        }
    });
    let select = NodeSelectLayer::new(strategy, membership).layer(issue);
    let (buffer, worker) = Buffer::pair(select, PICK_QUEUE);
    let service = ServiceBuilder::new().timeout(PICK_TIMEOUT).service(buffer);
    (BoxCloneSyncService::new(service), Box::pin(worker))
}
