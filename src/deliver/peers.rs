//! Channels to the other nodes' Relay service, kept in step with discovery: a channel per live
//! peer, dropped when it leaves. Calls carry a node token signed with the node secret, and with
//! TLS on they run over mutual TLS: this node's certificate out, the cluster CA trusted.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use crate::auth::{TokenKind, TokenSigner};
use crate::discovery::NodeInfo;
use crate::proto::{self, relay_client::RelayClient};
use crate::store::StoredMessage;
use crate::tls::ClientTls;
use crate::wire::authorized;

/// Lifetime of the node token peers are called with; it is re-issued at half-life.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// A relay call that takes longer is abandoned (the message is in the inbox regardless).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Relay clients for every other live node.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

struct Inner {
    self_id: String,
    signer: TokenSigner,
    tls: Option<ClientTls>,
    /// node id → (endpoint, client).
    clients: Mutex<HashMap<String, (String, RelayClient<Channel>)>>,
    token: Mutex<(String, Instant)>,
}

impl Peers {
    pub fn new(self_id: &str, signer: TokenSigner, tls: Option<ClientTls>) -> Self {
        let (token, _) = signer.issue(TokenKind::Node, self_id, "", TOKEN_TTL);
        Peers {
            inner: Arc::new(Inner {
                self_id: self_id.to_string(),
                signer,
                tls,
                clients: Mutex::new(HashMap::new()),
                token: Mutex::new((token, Instant::now())),
            }),
        }
    }

    /// Matches the channels to `nodes`: new peers get a (lazily connecting) channel, departed
    /// or moved ones lose theirs.
    pub fn sync(&self, nodes: &[NodeInfo]) {
        let mut clients = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|id, (endpoint, _)| {
            nodes.iter().any(|n| &n.id == id && &n.endpoint == endpoint)
        });
        for n in nodes.iter().filter(|n| n.id != self.inner.self_id) {
            if clients.contains_key(&n.id) {
                continue;
            }
            let scheme = if self.inner.tls.is_some() { "https" } else { "http" };
            let Ok(mut endpoint) = Endpoint::from_shared(format!("{scheme}://{}", n.endpoint))
            else {
                continue;
            };
            if let Some(tls) = &self.inner.tls {
                match endpoint.tls_config(tls.tonic()) {
                    Ok(e) => endpoint = e,
                    Err(e) => {
                        warn!(peer = %n.id, error = %e, "no TLS relay channel");
                        continue;
                    }
                }
            }
            let channel = endpoint
                .connect_timeout(CALL_TIMEOUT)
                .timeout(CALL_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(15))
                .keep_alive_timeout(Duration::from_secs(20))
                .connect_lazy();
            debug!(peer = %n.id, endpoint = %n.endpoint, "relay channel added");
            clients.insert(n.id.clone(), (n.endpoint.clone(), RelayClient::new(channel)));
        }
    }

    fn client(&self, node_id: &str) -> Result<RelayClient<Channel>, Status> {
        let clients = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .get(node_id)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| Status::unavailable(format!("node {node_id} is not a live peer")))
    }

    fn token(&self) -> String {
        let mut token = self.inner.token.lock().unwrap_or_else(|e| e.into_inner());
        if token.1.elapsed() > TOKEN_TTL / 2 {
            let (t, _) =
                self.inner.signer.issue(TokenKind::Node, &self.inner.self_id, "", TOKEN_TTL);
            *token = (t, Instant::now());
        }
        token.0.clone()
    }

    /// Hands stored messages to `user`'s sessions on `node_id`.
    pub async fn deliver(
        &self,
        node_id: &str,
        user: &str,
        messages: &[StoredMessage],
    ) -> Result<u32, Status> {
        let req = proto::DeliverRequest {
            user_id: user.to_string(),
            messages: messages.iter().cloned().map(proto::Message::from).collect(),
        };
        let resp = self.client(node_id)?.deliver(authorized(req, &self.token())).await?;
        Ok(resp.into_inner().sessions)
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
        let resp = self.client(node_id)?.kick(authorized(req, &self.token())).await?;
        Ok(resp.into_inner().kicked)
    }
}
