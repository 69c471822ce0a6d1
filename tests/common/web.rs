//! A browser's side of a node, as a test drives it: JSON calls over HTTP/1.1 and
//! `Chat.Session` over a WebSocket (tokio-tungstenite), in either framing.
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use prost::Message as _;
use tim::proto::{self, ClientFrame, ServerFrame, client_frame::Frame, server_frame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

/// One HTTP/1.1 request; the status and the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, http::HeaderMap, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(Full::new(bytes::Bytes::from(body.to_string()))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// A JSON call that must succeed: its answer.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> serde_json::Value {
    let (status, _, text) = http(addr, "POST", method, token, &body.to_string()).await;
    assert_eq!(status, 200, "{method}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Dev login through the JSON endpoint: the token.
pub async fn login(addr: SocketAddr, user: &str, device: &str) -> String {
    let answer = call(
        addr,
        "/v1/Gateway/Login",
        None,
        serde_json::json!({"userId": user, "device": device}),
    )
    .await;
    answer["token"].as_str().unwrap().to_string()
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `/v1/chat` asking for `protocol` (none when empty).
pub async fn open(
    addr: SocketAddr,
    protocol: &str,
) -> Result<(Socket, http::Response<Option<Vec<u8>>>), tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{addr}/v1/chat").into_client_request().unwrap();
    if !protocol.is_empty() {
        req.headers_mut().insert("sec-websocket-protocol", protocol.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await
}

/// A WebSocket session in one framing.
pub struct WsSession {
    pub socket: Socket,
    pub json: bool,
    pub welcome: proto::Welcome,
}

impl WsSession {
    /// Opens a socket, says Hello with `token` resuming after `after`, and waits for Welcome.
    pub async fn connect(addr: SocketAddr, json: bool, token: &str, after: u64) -> WsSession {
        let protocol = if json { "tim.v1.json" } else { "tim.v1.proto" };
        let (socket, resp) = open(addr, protocol).await.unwrap();
        assert_eq!(resp.headers()["sec-websocket-protocol"], protocol);
        let mut s = WsSession { socket, json, welcome: Default::default() };
        let hello = proto::Hello { token: token.into(), resume_after: after, ..Default::default() };
        s.send(Frame::Hello(hello)).await;
        match s.next().await {
            server_frame::Frame::Welcome(w) => s.welcome = w,
            other => panic!("expected Welcome, got {other:?}"),
        }
        s
    }

    pub async fn send(&mut self, frame: Frame) {
        let frame = ClientFrame { frame: Some(frame) };
        let msg = if self.json {
            Message::Text(serde_json::to_string(&frame).unwrap().into())
        } else {
            Message::Binary(frame.encode_to_vec().into())
        };
        self.socket.send(msg).await.unwrap();
    }

    /// The next frame; panics on a close or after [`WAIT`].
    pub async fn next(&mut self) -> server_frame::Frame {
        match self.next_or_close().await {
            Ok(frame) => frame,
            Err(close) => panic!("socket closed: {close:?}"),
        }
    }

    /// The next frame, or the close code and reason the socket ended with.
    pub async fn next_or_close(&mut self) -> Result<server_frame::Frame, (u16, String)> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("nothing from the socket in time");
            let frame: ServerFrame = match msg {
                Some(Ok(Message::Text(text))) => {
                    assert!(self.json, "a text message on tim.v1.proto");
                    serde_json::from_str(text.as_str()).unwrap()
                }
                Some(Ok(Message::Binary(bytes))) => {
                    assert!(!self.json, "a binary message on tim.v1.json");
                    ServerFrame::decode(bytes).unwrap()
                }
                Some(Ok(Message::Close(frame))) => {
                    let frame = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return Err(frame.unwrap_or((u16::from(CloseCode::Status), String::new())));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err((0, e.to_string())),
                None => return Err((0, "ended".into())),
            };
            return Ok(frame.frame.expect("an empty ServerFrame"));
        }
    }

    /// The next pushed message, past signals.
    pub async fn message(&mut self) -> proto::Message {
        loop {
            match self.next().await {
                server_frame::Frame::Message(m) => return m,
                server_frame::Frame::Signal(_) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Sends a message and waits for its SendAck.
    pub async fn send_message(&mut self, id: &str, to: &str, body: &str) -> proto::SendAck {
        let send = proto::SendMessage {
            client_msg_id: id.into(),
            to: to.into(),
            body: body.into(),
            ..Default::default()
        };
        self.send(Frame::Send(send)).await;
        loop {
            match self.next().await {
                server_frame::Frame::SendAck(ack) => return ack,
                server_frame::Frame::Message(_) | server_frame::Frame::Signal(_) => continue,
                other => panic!("expected SendAck, got {other:?}"),
            }
        }
    }

    pub async fn ack(&mut self, up_to: u64) {
        self.send(Frame::Ack(proto::Ack { up_to, ..Default::default() })).await;
    }

    /// Nothing arrives within `d`.
    pub async fn quiet(&mut self, d: Duration) {
        if let Ok(msg) = tokio::time::timeout(d, self.socket.next()).await {
            panic!("expected nothing, got {msg:?}");
        }
    }
}
