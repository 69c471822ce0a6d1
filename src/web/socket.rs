//! `GET /v1/chat`: `Chat.Session` over a WebSocket, for browsers, which cannot hold a
//! bidirectional gRPC stream. Each WebSocket message is one `ClientFrame` or `ServerFrame`, as
//! binary protobuf (subprotocol `tim.v1.proto`) or proto3 JSON text (`tim.v1.json`). The
//! session behind it is the very one a gRPC stream gets (`stream::open`): Hello, resume, seq
//! order, acks, dedup, kicks and drains are one code path with the same guarantees.
//!
//! Ending: where a gRPC stream ends with a status, the socket is closed with code 4000 + the
//! gRPC code (4016: UNAUTHENTICATED, 4014: UNAVAILABLE, ...) and the status message as reason
//! (cut to the 123 bytes a close frame holds); 1000 when it ended cleanly.
//!
//! Keepalive: the node pings every `--keepalive-interval`; a socket that answers nothing within
//! `--keepalive-timeout` of a ping, or that takes that long to take one frame, is closed and
//! its session ends, as a dead HTTP/2 connection's streams do.
//!
//! Who may open one: anyone who reaches the port; the session needs a valid session token in
//! Hello within `--hello-timeout`, as on gRPC (no cookie is ever read, so another site's page
//! cannot act for a user). What it costs at most: one session's bounds (outbound queue,
//! send rate), a message of at most the node's largest frame (larger: closed with 4011,
//! OUT_OF_RANGE), and [`INBOUND`] decoded frames waiting for the session.
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::debug;

use crate::node::Node;
use crate::proto::{ClientFrame, ServerFrame};
use crate::stream::Transport;
use crate::stream::outbound::OutboundStream;

/// Binary protobuf, one frame per message.
pub const PROTO: &str = "tim.v1.proto";
/// proto3 JSON text, one frame per message.
pub const JSON: &str = "tim.v1.json";
/// Decoded frames read ahead of the session; past it the socket is not read (backpressure).
pub const INBOUND: usize = 16;
/// How long a socket whose session ended is still read, for the client's close frame.
const CLOSING: Duration = Duration::from_secs(2);
/// Bytes of a close frame's reason (RFC 6455 §5.5: 125 bytes of payload, 2 of them the code).
const REASON_MAX: usize = 123;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Proto,
    Json,
}

impl Framing {
    fn decode(self, msg: Message) -> Option<Result<ClientFrame, Status>> {
        let frame = match (self, msg) {
            (Framing::Proto, Message::Binary(bytes)) => ClientFrame::decode(bytes)
                .map_err(|e| Status::invalid_argument(format!("undecodable ClientFrame: {e}"))),
            (Framing::Json, Message::Text(text)) => serde_json::from_str(text.as_str())
                .map_err(|e| Status::invalid_argument(format!("not a ClientFrame in JSON: {e}"))),
            (Framing::Proto, Message::Text(_)) => {
                Err(Status::invalid_argument("tim.v1.proto takes binary messages"))
            }
            (Framing::Json, Message::Binary(_)) => {
                Err(Status::invalid_argument("tim.v1.json takes text messages"))
            }
            (_, Message::Ping(_) | Message::Pong(_) | Message::Close(_)) => return None,
        };
        Some(frame)
    }

    fn encode(self, frame: &ServerFrame) -> Message {
        match self {
            Framing::Proto => Message::Binary(frame.encode_to_vec().into()),
            // A generated serializer of plain data: it cannot fail.
            Framing::Json => Message::Text(serde_json::to_string(frame).unwrap_or_default().into()),
        }
    }
}

/// What the route needs: the node, and the largest message a socket takes.
#[derive(Clone)]
pub struct Chat {
    pub node: Arc<Node>,
    pub max_frame: usize,
}

/// The upgrade: a subprotocol must be chosen.
pub async fn upgrade(
    State(chat): State<Chat>,
    ws: Result<WebSocketUpgrade, rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws.protocols([PROTO, JSON]),
        Err(rejection) => return rejection.into_response(),
    };
    let framing = match ws.selected_protocol().map(|p| p.as_bytes()) {
        Some(p) if p == PROTO.as_bytes() => Framing::Proto,
        Some(p) if p == JSON.as_bytes() => Framing::Json,
        _ => {
            let why = "ask for subprotocol tim.v1.json or tim.v1.proto (Sec-WebSocket-Protocol)";
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    let max = chat.max_frame;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| carry(chat.node, socket, framing))
}

/// Runs one socket: a task reads it into the session, this one writes the session out.
async fn carry(node: Arc<Node>, socket: WebSocket, framing: Framing) {
    let (sink, source) = socket.split();
    let (tx, rx) = mpsc::channel(INBOUND);
    let (heard_tx, heard) = watch::channel(Instant::now());
    let out = crate::stream::open(&node, Box::pin(ReceiverStream::new(rx)), Transport::WebSocket);
    let reader = tokio::spawn(read(source, tx, framing, heard_tx));
    let cfg = node.config();
    write(sink, out, framing, heard, cfg.keepalive_interval, cfg.keepalive_timeout).await;
    // The reader ends by itself once the client's close frame came (or soon after).
    drop(reader);
}

/// Feeds the session until the client leaves; then reads on briefly for its close frame.
async fn read(
    mut source: SplitStream<WebSocket>,
    tx: mpsc::Sender<Result<ClientFrame, Status>>,
    framing: Framing,
    heard: watch::Sender<Instant>,
) {
    loop {
        let msg = tokio::select! {
            msg = source.next() => msg,
            () = tx.closed() => break,
        };
        let frame = match msg {
            None => return,
            Some(Ok(msg)) => {
                heard.send_replace(Instant::now());
                if matches!(msg, Message::Close(_)) {
                    break;
                }
                framing.decode(msg)
            }
            Some(Err(e)) => Some(Err(read_error(e))),
        };
        let Some(frame) = frame else { continue };
        let failed = frame.is_err();
        if tx.send(frame).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(CLOSING, async { while let Some(Ok(_)) = source.next().await {} })
        .await;
}

fn read_error(e: axum::Error) -> Status {
    let text = e.to_string();
    if text.contains("too long") || text.contains("Space limit") {
        Status::out_of_range(format!("a WebSocket message is over the largest frame: {text}"))
    } else {
        Status::invalid_argument(format!("WebSocket: {text}"))
    }
}

/// Writes the session's frames and pings; returns when it ended or the client stopped answering.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut out: OutboundStream,
    framing: Framing,
    mut heard: watch::Receiver<Instant>,
    interval: Duration,
    timeout: Duration,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the last ping was sent, while it waits for an answer.
    let mut waiting: Option<Instant> = None;
    loop {
        let deadline = waiting.map(|sent| sent + timeout);
        let msg = tokio::select! {
            item = out.next() => match item {
                Some(Ok(frame)) => framing.encode(&frame),
                Some(Err(status)) => Message::Close(Some(close_frame(&status))),
                None => Message::Close(Some(CloseFrame { code: 1000, reason: "".into() })),
            },
            _ = ping.tick(), if waiting.is_none() => {
                waiting = Some(Instant::now());
                Message::Ping(Default::default())
            }
            _ = heard.changed() => {
                if waiting.is_some_and(|sent| *heard.borrow_and_update() >= sent) {
                    waiting = None;
                }
                continue;
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                debug!("WebSocket keepalive: no answer to a ping; closing");
                return;
            }
        };
        let closing = matches!(msg, Message::Close(_));
        match tokio::time::timeout(timeout, sink.send(msg)).await {
            Ok(Ok(())) if !closing => {}
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                debug!(error = %e, "WebSocket write failed");
                return;
            }
            Err(_) => {
                debug!("WebSocket write took past the keepalive timeout; closing");
                return;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// 4000 + the gRPC code, and the status message cut to fit (at a character boundary).
pub fn close_frame(status: &Status) -> CloseFrame {
    let message = status.message();
    let mut end = message.len().min(REASON_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let code = match status.code() {
        tonic::Code::Ok => 1000,
        code => 4000 + code as u16,
    };
    CloseFrame { code, reason: message[..end].into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_becomes_a_close_code_and_a_reason_that_fits() {
        let frame = close_frame(&Status::unauthenticated("token expired"));
        assert_eq!((frame.code, frame.reason.as_str()), (4016, "token expired"));
        let long = "é".repeat(100);
        let frame = close_frame(&Status::unavailable(long));
        assert_eq!(frame.code, 4014);
        assert!(frame.reason.len() <= REASON_MAX && frame.reason.len() >= REASON_MAX - 1);
    }

    #[test]
    fn each_framing_takes_only_its_own_kind_of_message() {
        let hello = ClientFrame {
            frame: Some(crate::proto::client_frame::Frame::Ack(crate::proto::Ack {
                up_to: 7,
                ..Default::default()
            })),
        };
        let json = Message::Text(r#"{"ack":{"upTo":"7"}}"#.into());
        assert_eq!(Framing::Json.decode(json).unwrap().unwrap(), hello);
        let binary = Message::Binary(hello.encode_to_vec().into());
        assert_eq!(Framing::Proto.decode(binary.clone()).unwrap().unwrap(), hello);
        let wrong = Framing::Json.decode(binary).unwrap().unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::InvalidArgument);
        let bad = Framing::Json.decode(Message::Text("{\"nope\":1}".into())).unwrap();
        assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
        assert!(Framing::Proto.decode(Message::Ping(Default::default())).is_none());
    }
}
