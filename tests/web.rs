//! The browser side of a node on its gRPC port: the page, the JSON calls, and `Chat.Session`
//! over a WebSocket in both framings, with the guarantees of the gRPC stream (order, ack,
//! resume, dedup, kick, drain) and the same refusals.
mod common;

use std::time::Duration;

use common::web::{self, WsSession};
use common::{Backend, TestNode, eventually, next_message};
use tim::proto::{self, client_frame::Frame, server_frame};

async fn a_socket_and_a_grpc_client_chat_with_resume_and_dedup(b: &Backend, json: bool) {
    let node = TestNode::start(b).await;
    let token = web::login(node.addr, "alice", "browser").await;
    let mut alice = WsSession::connect(node.addr, json, &token, 0).await;
    assert_eq!(alice.welcome.user_id, "alice");
    assert_eq!(alice.welcome.device, "browser");
    let mut bob = node.connect("bob", "phone", 0).await;

    // Socket to gRPC: acked once stored, delivered in order.
    for i in 1..=3 {
        let ack = alice.send_message(&format!("c{i}"), "bob", &format!("a{i}")).await;
        assert_eq!(ack.seq, i);
    }
    // A retried client_msg_id gets the first ack and stores nothing new.
    assert_eq!(alice.send_message("c2", "bob", "a2").await.seq, 2);
    for i in 1..=3 {
        let m = next_message(&mut bob).await;
        assert_eq!(
            (m.seq, m.body.as_str(), m.from.as_str()),
            (i, format!("a{i}").as_str(), "alice")
        );
    }

    // gRPC to socket, acked up to 2: a new socket resumes after 2.
    for i in 1..=3 {
        bob.sender().send("alice", &format!("b{i}")).await.unwrap();
    }
    for i in 1..=3 {
        let m = alice.message().await;
        assert_eq!((m.seq, m.body.as_str()), (i, format!("b{i}").as_str()));
    }
    alice.ack(2).await;
    drop(alice);
    // A new socket once the node noticed the old one closed (its route is gone).
    offline(&node, "alice").await;
    let mut alice = WsSession::connect(node.addr, json, &token, 0).await;
    assert_eq!(alice.welcome.resume_from, 2, "the stored cursor");
    let m = alice.message().await;
    assert_eq!((m.seq, m.body.as_str()), (3, "b3"));
    alice.quiet(Duration::from_millis(200)).await;

    // A second socket of the device takes over: the first is told and closed cleanly.
    let mut again = WsSession::connect(node.addr, json, &token, 3).await;
    match alice.next().await {
        server_frame::Frame::Kicked(_) => {}
        other => panic!("expected Kicked, got {other:?}"),
    }
    assert_eq!(alice.next_or_close().await.unwrap_err().0, 1000);
    bob.sender().send("alice", "b4").await.unwrap();
    assert_eq!(again.message().await.body, "b4");
}

#[tokio::test]
async fn json_socket_chats_with_grpc_memory() {
    a_socket_and_a_grpc_client_chat_with_resume_and_dedup(&Backend::Memory, true).await;
}

#[tokio::test]
async fn proto_socket_chats_with_grpc_memory() {
    a_socket_and_a_grpc_client_chat_with_resume_and_dedup(&Backend::Memory, false).await;
}

#[tokio::test]
async fn json_socket_chats_with_grpc_redis() {
    a_socket_and_a_grpc_client_chat_with_resume_and_dedup(&Backend::redis(), true).await;
}

#[tokio::test]
async fn a_socket_gets_the_grpc_refusals_as_close_codes() {
    let node = TestNode::start(&Backend::Memory).await;
    // No subprotocol: refused before the upgrade.
    let refused = web::open(node.addr, "").await.unwrap_err();
    assert!(refused.to_string().contains("400"), "{refused}");
    let refused = web::open(node.addr, "mqtt").await.unwrap_err();
    assert!(refused.to_string().contains("400"), "{refused}");

    // A frame before Hello: FAILED_PRECONDITION (9).
    let (socket, _) = web::open(node.addr, "tim.v1.json").await.unwrap();
    let mut s = WsSession { socket, json: true, welcome: Default::default() };
    s.send(Frame::Ack(proto::Ack { up_to: 1, ..Default::default() })).await;
    assert_eq!(s.next_or_close().await.unwrap_err().0, 4009);

    // A bad token: UNAUTHENTICATED (16).
    let (socket, _) = web::open(node.addr, "tim.v1.proto").await.unwrap();
    let mut s = WsSession { socket, json: false, welcome: Default::default() };
    let hello = proto::Hello { token: "forged".into(), ..Default::default() };
    s.send(Frame::Hello(hello)).await;
    let (code, reason) = s.next_or_close().await.unwrap_err();
    assert_eq!(code, 4016, "{reason}");

    // Not a frame at all: INVALID_ARGUMENT (3), in either framing.
    for (protocol, msg) in [
        ("tim.v1.json", tokio_tungstenite::tungstenite::Message::Text("{\"nope\":".into())),
        ("tim.v1.json", tokio_tungstenite::tungstenite::Message::Binary(vec![1, 2].into())),
        ("tim.v1.proto", tokio_tungstenite::tungstenite::Message::Binary(vec![0xff; 3].into())),
    ] {
        use futures_util::SinkExt as _;
        let (mut socket, _) = web::open(node.addr, protocol).await.unwrap();
        socket.send(msg).await.unwrap();
        let mut s =
            WsSession { socket, json: protocol.ends_with("json"), welcome: Default::default() };
        let (code, reason) = s.next_or_close().await.unwrap_err();
        assert_eq!(code, 4003, "{protocol}: {reason}");
    }

    // An oversize body inside a frame: the session's own refusal, and the stream goes on.
    let token = web::login(node.addr, "alice", "browser").await;
    let mut alice = WsSession::connect(node.addr, true, &token, 0).await;
    let big = "x".repeat(node_max_body() + 1);
    let send = proto::SendMessage {
        client_msg_id: "big".into(),
        to: "bob".into(),
        body: big,
        ..Default::default()
    };
    alice.send(Frame::Send(send)).await;
    match alice.next().await {
        server_frame::Frame::SendError(e) => {
            assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{}", e.reason)
        }
        other => panic!("expected SendError, got {other:?}"),
    }
    assert_eq!(alice.send_message("small", "bob", "hi").await.seq, 1);
}

/// Waits until `user` has no stream on `node`.
async fn offline(node: &TestNode, user: &str) {
    let token = node.login("watcher", "d").await.token;
    let gateway = node.gateway().await;
    eventually(|| {
        let mut gateway = gateway.clone();
        let req = tim::client::authorized(proto::PresenceRequest { user_id: user.into() }, &token);
        async move { (!gateway.presence(req).await.ok()?.into_inner().online).then_some(()) }
    })
    .await;
}

fn node_max_body() -> usize {
    common::config().max_body
}

#[tokio::test]
async fn a_socket_that_stops_answering_pings_is_closed_and_its_route_cleared() {
    let node = TestNode::with(&Backend::Memory, |c| {
        c.keepalive_interval = Duration::from_millis(200);
        c.keepalive_timeout = Duration::from_millis(300);
    })
    .await;
    let token = web::login(node.addr, "alice", "browser").await;
    // A socket read for Welcome, then never again: its pings go unanswered.
    let _silent = WsSession::connect(node.addr, true, &token, 0).await;
    offline(&node, "alice").await;
}

#[tokio::test]
async fn a_draining_node_tells_its_sockets() {
    let node = TestNode::start(&Backend::Memory).await;
    let token = web::login(node.addr, "alice", "browser").await;
    let mut alice = WsSession::connect(node.addr, false, &token, 0).await;
    let stopping = tokio::spawn(node.stop());
    match alice.next().await {
        server_frame::Frame::Drain(_) => {}
        other => panic!("expected Drain, got {other:?}"),
    }
    drop(alice);
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_json_calls_answer_as_grpc_does() {
    let node = TestNode::start(&Backend::Memory).await;
    let token = web::login(node.addr, "alice", "web").await;
    let bob = node.connect("bob", "phone", 0).await;
    bob.sender().send("alice", "hello").await.unwrap();
    // The conversation index is written just after the ack.
    let list = eventually(|| async {
        let list = web::call(
            node.addr,
            "/v1/Gateway/ListConversations",
            Some(&token),
            serde_json::json!({}),
        )
        .await;
        list["conversations"].is_array().then_some(list)
    })
    .await;
    let first = &list["conversations"][0];
    assert_eq!(first["title"], "bob");
    assert_eq!(first["unread"], "1", "64-bit integers are strings in proto3 JSON");
    let id = first["id"].as_str().unwrap().to_string();
    let history = web::call(
        node.addr,
        "/v1/Gateway/History",
        Some(&token),
        serde_json::json!({"conversation": id}),
    )
    .await;
    assert_eq!(history["messages"][0]["body"], "hello");
    let read = web::call(
        node.addr,
        "/v1/Gateway/MarkRead",
        Some(&token),
        serde_json::json!({"conversation": id, "convSeq": 1}),
    )
    .await;
    assert_eq!(read["readSeq"], "1");
    let group = web::call(
        node.addr,
        "/v1/Groups/CreateGroup",
        Some(&token),
        serde_json::json!({"name": "team", "members": ["bob"]}),
    )
    .await;
    assert!(group["group"]["id"].as_str().is_some(), "{group}");

    // Refusals: the gRPC code in JSON, under the HTTP status that fits it.
    let (status, _, body) =
        web::http(node.addr, "POST", "/v1/Gateway/ListConversations", None, "{}").await;
    assert_eq!(status, 401, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], 16);
    let (status, _, body) =
        web::http(node.addr, "POST", "/v1/Gateway/Login", None, "{\"userId\": 5").await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) =
        web::http(node.addr, "POST", "/v1/Gateway/Login", None, "{\"userId\": \"a b\"}").await;
    assert_eq!(status, 400, "{body}");
    let (status, ..) = web::http(node.addr, "GET", "/v1/Gateway/Login", None, "").await;
    assert_eq!(status, 405);
    let (status, ..) = web::http(node.addr, "GET", "/nothing-here", None, "").await;
    assert_eq!(status, 404);
    let huge = format!("{{\"userId\": \"{}\"}}", "a".repeat(5 * 1024 * 1024));
    let (status, ..) = web::http(node.addr, "POST", "/v1/Gateway/Login", None, &huge).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy() {
    let node = TestNode::start(&Backend::Memory).await;
    let (status, headers, body) = web::http(node.addr, "GET", "/", None, "").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert!(body.contains("app.js"), "{body}");
    let (status, headers, body) = web::http(node.addr, "GET", "/app.js", None, "").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert!(body.contains("tim.v1.json"));
    // gRPC still answers on the same port.
    let _ = node.login("carol", "d").await;
}
