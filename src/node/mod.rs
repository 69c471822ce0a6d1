//! One running node: what its gRPC services and sessions share, and the flows they run — Login,
//! Send and Presence here, History in `conversations`. Handlers translate the wire and call
//! these; sessions also reach the stores and [`Delivery`] through the accessors here.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::auth::{AuthError, Claims, LoginMode, TokenKind, TokenSigner, unix_ms};
use crate::config::Config;
use crate::deliver::{Delivery, Peers};
use crate::discovery::Membership;
use crate::error::Error;
use crate::ids;
use crate::ids::Conversation;
use crate::limit::{QueueBudget, SendLimits};
use crate::metrics::Metrics;
use crate::push::{Notification, Pusher};
use crate::store::conversations::ConversationIndex;
use crate::store::groups::Groups;
use crate::store::{
    Appended, Inbox, NewMessage, Outgoing, Route, RouteStore, StoredMessage, message_at,
};
use crate::tls::{ClientTls, ServerTls};

mod broadcast;
mod changes;
mod conversations;
mod groups;
mod listing;
mod login;
mod notes;
mod presence;
mod receipts;
mod signals;

pub use conversations::{MAX_HISTORY_BYTES, MAX_HISTORY_PAGE};
pub use groups::MAX_GROUP_NAME;
pub use listing::{MAX_CONVERSATIONS_PAGE, Unread};
pub use login::{Grant, LoginWorker};
use login::{LoginService, login_service};
pub use {notes::Notes, presence::Presence, receipts::MAX_READERS_PAGE};

/// Device name used when Login names none.
pub const DEFAULT_DEVICE: &str = "default";
/// The stores a node works on.
pub struct Stores {
    pub inbox: Arc<dyn Inbox>,
    pub routes: Arc<dyn RouteStore>,
    pub groups: Arc<dyn Groups>,
    pub conversations: Arc<dyn ConversationIndex>,
}

/// How a node proves who calls it, and who it calls: login, node certificates, peer TLS.
pub struct Security {
    pub login_mode: LoginMode,
    /// The node's served TLS, when on: relay callers are checked against its cluster CA.
    pub tls: Option<Arc<ServerTls>>,
    /// How relay calls to peers are made over TLS, when on.
    pub peer_tls: Option<ClientTls>,
}

/// Shared state of a node; one per process, behind an `Arc`.
pub struct Node {
    id: String,
    config: Config,
    signer: TokenSigner,
    /// Signs and checks node tokens (relay calls); a secret of its own.
    node_signer: TokenSigner,
    login_mode: LoginMode,
    tls: Option<Arc<ServerTls>>,
    limits: SendLimits,
    inbox: Arc<dyn Inbox>,
    routes: Arc<dyn RouteStore>,
    groups: Arc<dyn Groups>,
    notes: Notes,
    /// The offline-push webhook, when configured.
    push: Option<Pusher>,
    typing_limit: signals::TypingLimit,
    delivery: Delivery,
    login: LoginService,
    member_sets: broadcast::MemberSets,
    metrics: Arc<Metrics>,
}

impl Node {
    /// A node with id `id` over `stores`, authenticating callers by `security` and placing
    /// logins on the nodes `membership` knows.
    /// Also returns the login placement worker, which the caller runs as one of the node's
    /// tasks: Login waits for it.
    pub fn new(
        id: &str,
        config: Config,
        security: Security,
        stores: Stores,
        membership: Arc<Membership>,
        push: Option<Pusher>,
        metrics: Arc<Metrics>,
    ) -> (Self, LoginWorker) {
        /// Live messages queued per session before it falls back to reading its inbox.
        const FEED_CAPACITY: usize = 1024;
        let signer = config.signer();
        let node_signer = config.node_signer();
        let scheme = if security.tls.is_some() { "https://" } else { "" };
        let (login, worker) =
            login_service(signer.clone(), config.token_ttl, config.lb, scheme, &membership);
        let peers = Peers::new(id, node_signer.clone(), security.peer_tls, metrics.clone());
        let node = Node {
            id: id.to_string(),
            login_mode: security.login_mode,
            tls: security.tls,
            limits: SendLimits::new(config.send_rate, config.send_burst),
            delivery: Delivery::new(
                id,
                peers,
                membership,
                FEED_CAPACITY,
                QueueBudget::new(config.node_queue_bytes),
            ),
            signer,
            node_signer,
            inbox: crate::store::metered::Metered::wrap(stores.inbox, &metrics),
            groups: stores.groups,
            notes: Notes::new(stores.conversations),
            push,
            typing_limit: Default::default(),
            member_sets: Default::default(),
            routes: stores.routes,
            login,
            config,
            metrics,
        };
        (node, worker)
    }

    /// Counts one answered send: stored (a retry is not), or refused by its code.
    pub(crate) fn count_send<T>(&self, result: &Result<T, Status>, duplicate: impl Fn(&T) -> bool) {
        match result {
            Ok(a) if !duplicate(a) => {
                self.metrics.stored.inc();
            }
            Ok(_) => {}
            Err(status) => self.metrics.refused(status.code()),
        }
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The push webhook's queue and what it dropped, when there is one.
    pub fn push(&self) -> Option<&Pusher> {
        self.push.as_ref()
    }

    /// Unique node id (routes point at it).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn inbox(&self) -> &dyn Inbox {
        self.inbox.as_ref()
    }

    pub fn routes(&self) -> &dyn RouteStore {
        self.routes.as_ref()
    }

    pub fn groups(&self) -> &dyn Groups {
        self.groups.as_ref()
    }

    /// Tells the push webhook (if any) of `message` for `user`, unless they have a live stream
    /// (or it is their own, or an event: a group change, an edit, delete or recall).
    pub(crate) fn push_if_offline(
        &self,
        user: &str,
        message: &StoredMessage,
        routes: &[(String, Route)],
    ) {
        if let Some(push) = &self.push
            && user != message.from
            && message.event.is_none()
            && !routes.iter().any(|(_, r)| self.delivery.is_live(r))
        {
            push.notify(Notification::of(user, message));
        }
    }

    /// What the node learned of its users' conversations, not yet in their indexes.
    pub fn notes(&self) -> &Notes {
        &self.notes
    }

    /// The per-user send allowance (swept by the node's tasks).
    pub fn limits(&self) -> &SendLimits {
        &self.limits
    }

    /// Local sessions, relays and kicks.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Verifies a Hello's session token: signature, expiry, and that its device has not
    /// logged out since it was issued.
    pub async fn verify(&self, token: &str) -> Result<Claims, Error> {
        let claims = self.signer.verify(token, TokenKind::Session)?;
        self.check_revoked(&claims).await?;
        Ok(claims)
    }

    /// Verifies the `authorization: Bearer` session token of a unary call, as
    /// [`Node::verify`] does.
    pub async fn authorize(&self, md: &MetadataMap) -> Result<Claims, Error> {
        let claims = self.signer.verify_metadata(md, TokenKind::Session)?;
        self.check_revoked(&claims).await?;
        Ok(claims)
    }

    async fn check_revoked(&self, claims: &Claims) -> Result<(), Error> {
        match self.routes.revoked(&claims.sub, &claims.dev).await? {
            Some(at) if claims.iat_ms <= at => Err(AuthError::Revoked.into()),
            _ => Ok(()),
        }
    }

    /// Logout: revokes every token `device` of `caller` was issued so far (kept for as long
    /// as one could live) and ends its streams on every node. Costs one store write and one
    /// call to each live peer.
    pub async fn logout(&self, caller: &Claims, device: &str) -> Result<String, Error> {
        let device = if device.is_empty() { caller.dev.clone() } else { device.to_string() };
        ids::device(&device)?;
        let now = unix_ms(SystemTime::now());
        let keep = self.config.token_ttl + Duration::from_secs(60);
        self.routes.revoke(&caller.sub, &device, now, keep).await?;
        self.delivery.log_out(&caller.sub, &device).await;
        // Its place among the user's devices is free again (its cursor goes with it).
        self.inbox.forget(&caller.sub, &device).await?;
        tracing::info!(user = %caller.sub, %device, "logged out");
        Ok(device)
    }

    /// Verifies that a relay call comes from a node of this cluster: its node token, and with
    /// TLS on, its certificate (`chain`, as presented in the handshake) from the cluster CA.
    pub fn authorize_node(
        &self,
        md: &MetadataMap,
        chain: Option<&[CertificateDer<'static>]>,
    ) -> Result<Claims, AuthError> {
        if let Some(tls) = &self.tls {
            tls.verify_node(chain).map_err(AuthError::Certificate)?;
        }
        self.node_signer.verify_metadata(md, TokenKind::Node)
    }

    /// Validates, stores and pushes one message from `from`'s `device`. Returns only after the
    /// message is in its conversation's log and the recipient's inbox (and in the sender's, for
    /// their other devices). Refused (RESOURCE_EXHAUSTED, with a retry hint) when `from` is
    /// over its send allowance on this node or the recipient's inbox over its rate.
    pub async fn send(&self, from: &str, device: &str, msg: Outgoing) -> Result<Appended, Error> {
        self.take_allowance(from, "retry with the same client_msg_id")?;
        self.check_outgoing(&msg)?;
        let event = self.change_event(from, &msg).await?;
        if !msg.group.is_empty() {
            let sent = self.send_to_group(from, device, msg, event).await?;
            self.record_change(&sent.message).await?;
            let m = &sent.message;
            self.notes.note(from, &m.conversation, m.sent_at, m.conv_seq);
            return Ok(sent);
        }
        let appended = self
            .inbox
            .append(NewMessage {
                from: from.to_string(),
                origin_device: device.to_string(),
                conversation: Conversation::direct(from, &msg.to).id(),
                to: msg.to,
                client_msg_id: msg.client_msg_id,
                body: msg.body,
                msg_id: ids::new_id(),
                sent_at: unix_ms(SystemTime::now()),
                event,
            })
            .await?;
        self.record_change(&appended.message).await?;
        let m = &appended.message;
        self.notes.note(from, &m.conversation, m.sent_at, m.conv_seq);
        self.notes.note(&m.to, &m.conversation, m.sent_at, 0);
        if !appended.duplicate {
            self.push_if_offline(&m.to, m, &appended.routes);
            self.delivery.fan_out(&appended.message.to, &appended.message, &appended.routes);
            if let Some(copy) = &appended.copy {
                self.delivery.fan_out(from, &copy.message, &copy.routes);
            }
            return Ok(appended);
        }
        // A retry: the first attempt may have been stored but never pushed (its caller gave up
        // between the two), so push again, but the copy the inbox holds, never the retry's
        // body. Gone from the inbox means every device acked it (or it expired): nothing to do.
        // Sessions drop seqs they already sent.
        let stored = &appended.message;
        if let Some(first) = message_at(self.inbox.as_ref(), &stored.to, stored.seq).await? {
            self.delivery.fan_out(&stored.to, &first, &appended.routes);
        }
        Ok(appended)
    }

    /// Takes one from `user`'s send allowance on this node (sends and history pages share it);
    /// over it: RESOURCE_EXHAUSTED with a retry hint, and `what_then` to say what to do.
    pub(crate) fn take_allowance(&self, user: &str, what_then: &str) -> Result<(), Error> {
        self.take_allowances(user, 1, what_then)
    }

    /// [`Node::take_allowance`] for a call that costs `n` sends.
    pub(crate) fn take_allowances(&self, user: &str, n: u32, what_then: &str) -> Result<(), Error> {
        if let Err(retry_after) = self.limits.take_n(user, n, std::time::Instant::now()) {
            self.metrics.rate_limited("send");
            let (rate, burst) = (self.limits.rate(), self.limits.burst());
            let message = format!(
                "send rate limit: {rate} messages/s per user (bursts of {burst}); {what_then}"
            );
            return Err(Error::RateLimited { message, retry_after });
        }
        Ok(())
    }
}
