//! The transport baseline: a bare tonic bidi relay speaking `im.v1.Chat`, with no auth, no
//! storage, no acks kept and no ordering machinery. `Hello.token` is taken as the user id; a
//! `Send` is pushed to the recipient's stream with the next seq of that recipient and acked to
//! the sender at once. The same client library and load generator drive it, so the ratio of tim
//! to it is the cost of everything tim adds on top of HTTP/2 and protobuf.
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use tim::proto::{
    self, ClientFrame, ServerFrame, chat_server::Chat, chat_server::ChatServer, client_frame,
    server_frame::Frame,
};

/// Frames queued towards one stream (as tim's default outbound queue).
const QUEUE: usize = 256;

type Tx = mpsc::Sender<Result<ServerFrame, Status>>;

/// Who is connected: user → (stream, last seq given to the user).
#[derive(Default)]
struct Users(Mutex<HashMap<String, (Tx, u64)>>);

impl Users {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Tx, u64)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default, Clone)]
struct RelayService {
    users: Arc<Users>,
}

fn frame(f: Frame) -> Result<ServerFrame, Status> {
    Ok(ServerFrame { frame: Some(f) })
}

#[tonic::async_trait]
impl Chat for RelayService {
    type SessionStream = ReceiverStream<Result<ServerFrame, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(relay(self.users.clone(), req.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn relay(users: Arc<Users>, mut inbound: Streaming<ClientFrame>, tx: Tx) {
    let user = match inbound.message().await {
        Ok(Some(ClientFrame { frame: Some(client_frame::Frame::Hello(h)) })) => h.token,
        _ => return,
    };
    users.lock().insert(user.clone(), (tx.clone(), 0));
    let welcome = proto::Welcome { user_id: user.clone(), ..Default::default() };
    if tx.send(frame(Frame::Welcome(welcome))).await.is_err() {
        return;
    }
    while let Ok(Some(f)) = inbound.message().await {
        let Some(client_frame::Frame::Send(m)) = f.frame else { continue };
        let target = users.lock().get_mut(&m.to).map(|(to_tx, seq)| {
            *seq += 1;
            (to_tx.clone(), *seq)
        });
        let mut ack =
            proto::SendAck { client_msg_id: m.client_msg_id.clone(), ..Default::default() };
        if let Some((to_tx, seq)) = target {
            ack.seq = seq;
            // The same fields tim's Message carries, so the frames weigh the same.
            let msg = proto::Message {
                seq,
                from: user.clone(),
                conversation: tim::ids::Conversation::direct(&user, &m.to).id(),
                to: m.to,
                body: m.body,
                sent_at: tim::auth::unix_ms(std::time::SystemTime::now()),
                msg_id: String::new(),
                conv_seq: seq,
                event: None,
                client_msg_id: m.client_msg_id.clone(),
                changed_by: 0,
            };
            let _ = to_tx.send(frame(Frame::Message(msg))).await;
        }
        if tx.send(frame(Frame::SendAck(ack))).await.is_err() {
            break;
        }
    }
    let mut map = users.lock();
    if map.get(&user).is_some_and(|(t, _)| t.same_channel(&tx)) {
        map.remove(&user);
    }
}

/// Serves the relay on `listener` until `shutdown` resolves, with tim's transport settings
/// (TCP_NODELAY, HTTP/2 keepalive).
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let defaults = tim::Config::default();
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(defaults.keepalive_interval));
    Server::builder()
        .http2_keepalive_interval(Some(defaults.keepalive_interval))
        .http2_keepalive_timeout(Some(defaults.keepalive_timeout))
        .add_service(ChatServer::new(RelayService::default()))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
