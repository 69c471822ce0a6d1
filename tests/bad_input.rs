//! Bad input gets a clear gRPC status and stores nothing.
mod common;

use std::time::Duration;

use bytes::BufMut as _;
use common::{Backend, SECRET, TestNode, config, next_message};
use tim::auth::{Claims, TokenKind, TokenSigner};
use tim::client::{self, ClientError, Options};
use tim::proto::{self, ClientFrame, ServerFrame, chat_client::ChatClient, client_frame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::{Code, Status, Streaming};

fn hello(token: &str, resume_after: u64) -> client_frame::Frame {
    client_frame::Frame::Hello(proto::Hello {
        token: token.into(),
        resume_after,
        ..Default::default()
    })
}

fn send(id: &str, to: &str, body: &str) -> client_frame::Frame {
    client_frame::Frame::Send(proto::SendMessage {
        client_msg_id: id.into(),
        to: to.into(),
        body: body.into(),
        ..Default::default()
    })
}

/// A raw session: frames in, server frames (or the final status) out.
struct Raw {
    tx: mpsc::Sender<ClientFrame>,
    rx: Streaming<ServerFrame>,
}

impl Raw {
    async fn open(node: &TestNode, first: client_frame::Frame) -> Raw {
        let ch = client::channel(&node.endpoint(), &Options::default()).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(ClientFrame { frame: Some(first) }).await.unwrap();
        let rx = ChatClient::new(ch).session(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Raw { tx, rx }
    }

    /// Sends a frame; the server may already have ended the stream.
    async fn send(&self, f: client_frame::Frame) {
        let _ = self.tx.send(ClientFrame { frame: Some(f) }).await;
    }

    async fn frame(&mut self) -> Result<Option<ServerFrame>, Status> {
        tokio::time::timeout(common::WAIT, self.rx.message()).await.expect("server answered")
    }

    /// Reads frames until the stream ends with an error status, and returns it.
    async fn status(&mut self) -> Status {
        loop {
            match self.frame().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without an error status"),
                Err(s) => return s,
            }
        }
    }

    async fn welcome(&mut self) -> proto::Welcome {
        match self.frame().await.unwrap().and_then(|f| f.frame) {
            Some(proto::server_frame::Frame::Welcome(w)) => w,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }
}

/// How many messages `user`'s inbox has ever stored.
async fn stored(node: &TestNode, user: &str) -> u64 {
    node.connect(user, "inspector", 0).await.welcome.last_seq
}

async fn oversize_or_empty_fields_are_invalid_argument_and_store_nothing(b: &Backend) {
    let node = TestNode::start(b).await;
    let alice = node.connect("alice", "phone", 0).await;
    let big = "x".repeat(64 * 1024 + 1);
    let cases: [(&str, &str, &str); 6] = [
        ("c1", "bob", big.as_str()),
        ("c2", "", "hi"),
        ("c3", "bob", ""),
        ("c4", "b o b", "hi"),
        ("", "bob", "hi"),
        ("c6", "{bob}", "hi"),
    ];
    for (id, to, body) in cases {
        let err = alice.sender().send_with_id(id, to, body).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::InvalidArgument), "stream send {id:?} {to:?}: {err}");
        let err = node.send_unary("alice", id, to, body).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "unary send {id:?} {to:?}: {err:?}");
    }
    // A 200 KiB body is refused by validation too, naming the limit.
    let err = node.send_unary("alice", "c7", "bob", &"y".repeat(200 * 1024)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("65536"), "{}", err.message());
    // The stream stayed usable, and only the good message was stored.
    let ack = alice.sender().send("bob", "fine").await.unwrap();
    assert_eq!(ack.seq, 1);
    assert_eq!(stored(&node, "bob").await, 1);
}

async fn bad_tokens_are_unauthenticated(b: &Backend) {
    let node = TestNode::start(b).await;
    let signer = TokenSigner::new(SECRET.as_bytes().to_vec());
    let expired = signer.sign(&Claims {
        sub: "alice".into(),
        dev: "phone".into(),
        exp: 1_000_000,
        kind: TokenKind::Session,
        iat_ms: 0,
    });
    let (foreign, _) = TokenSigner::new(b"some-other-secret-123".to_vec()).issue(
        TokenKind::Session,
        "alice",
        "phone",
        Duration::from_secs(60),
    );
    let (node_token, _) = signer.issue(TokenKind::Node, "node-1", "", Duration::from_secs(60));
    for token in
        ["", "garbage", "v1.e30.AAAA", expired.as_str(), foreign.as_str(), node_token.as_str()]
    {
        let mut raw = Raw::open(&node, hello(token, 0)).await;
        raw.send(send("c1", "bob", "sneaky")).await;
        assert_eq!(raw.status().await.code(), Code::Unauthenticated, "hello with {token:?}");

        let req = proto::SendRequest {
            client_msg_id: "c1".into(),
            to: "bob".into(),
            body: "x".into(),
            ..Default::default()
        };
        let err = node.gateway().await.send(client::authorized(req, token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "unary send with {token:?}");
    }
    let req = proto::SendRequest {
        client_msg_id: "c1".into(),
        to: "bob".into(),
        body: "x".into(),
        ..Default::default()
    };
    let err = node.gateway().await.send(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "unary send without a token");
    let err = node.gateway().await.presence(proto::PresenceRequest { user_id: "bob".into() }).await;
    assert_eq!(err.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(stored(&node, "bob").await, 0);
}

async fn hello_device_must_match_the_token(b: &Backend) {
    let node = TestNode::start(b).await;
    let token = node.login("bob", "phone").await.token;
    let f = client_frame::Frame::Hello(proto::Hello {
        token,
        device: "laptop".into(),
        ..Default::default()
    });
    let mut raw = Raw::open(&node, f).await;
    assert_eq!(raw.status().await.code(), Code::PermissionDenied);
}

async fn frames_out_of_order_are_failed_precondition(b: &Backend) {
    let node = TestNode::start(b).await;
    let token = node.login("alice", "phone").await.token;

    let mut raw = Raw::open(&node, send("c1", "bob", "before hello")).await;
    assert_eq!(raw.status().await.code(), Code::FailedPrecondition);

    let mut raw =
        Raw::open(&node, client_frame::Frame::Ack(proto::Ack { up_to: 1, ..Default::default() }))
            .await;
    assert_eq!(raw.status().await.code(), Code::FailedPrecondition);

    let mut raw = Raw::open(&node, hello(&token, 0)).await;
    raw.welcome().await;
    raw.send(hello(&token, 0)).await;
    raw.send(send("c2", "bob", "after second hello")).await;
    assert_eq!(raw.status().await.code(), Code::FailedPrecondition);

    assert_eq!(stored(&node, "bob").await, 0);
}

async fn empty_frames_and_acks_beyond_delivery_are_invalid_argument(b: &Backend) {
    let node = TestNode::start(b).await;
    let token = node.login("alice", "phone").await.token;
    let mut raw = Raw::open(&node, hello(&token, 0)).await;
    raw.welcome().await;
    raw.tx.send(ClientFrame { frame: None }).await.unwrap();
    assert_eq!(raw.status().await.code(), Code::InvalidArgument);

    node.send_unary("bob", "b1", "alice", "one").await.unwrap();
    let mut raw = Raw::open(&node, hello(&token, 0)).await;
    raw.welcome().await;
    raw.send(client_frame::Frame::Ack(proto::Ack { up_to: 5, ..Default::default() })).await;
    let status = raw.status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    // The bogus ack moved nothing: the message is still delivered.
    let mut alice = node.connect("alice", "phone", 0).await;
    assert_eq!(next_message(&mut alice).await.body, "one");
}

async fn a_silent_stream_is_ended_by_the_hello_timeout(b: &Backend) {
    let node = TestNode::with(b, |c| c.hello_timeout = Duration::from_millis(200)).await;
    let ch = client::channel(&node.endpoint(), &Options::default()).await.unwrap();
    let (_tx, rx) = mpsc::channel::<ClientFrame>(1);
    let mut s = ChatClient::new(ch).session(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let status = tokio::time::timeout(common::WAIT, s.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
}

async fn a_flood_is_rate_limited_and_loses_nothing_acked(b: &Backend) {
    let node = TestNode::with(b, |c| {
        c.send_rate = 20;
        c.send_burst = 5;
    })
    .await;
    let alice = node.connect("alice", "phone", 0).await;
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for i in 0..40 {
        let id = format!("c{i}");
        match alice.sender().send_with_id(&id, "bob", &format!("m{i}")).await {
            Ok(ack) => acked.push((ack.seq, format!("m{i}"))),
            Err(ClientError::Rejected { code: Code::ResourceExhausted, reason, .. }) => {
                // The first over the limit says why; later ones wait behind it.
                let why = if refused.is_empty() { "rate limit" } else { "send it again first" };
                assert!(reason.contains(why), "{reason}");
                refused.push(i);
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(!refused.is_empty(), "a flood of 40 sends must hit a 5-message burst");
    // The allowance refills: retried in order, the refused ones are stored after the others.
    for i in refused {
        loop {
            let id = format!("c{i}");
            match alice.sender().send_with_id(&id, "bob", &format!("m{i}")).await {
                Ok(ack) => {
                    acked.push((ack.seq, format!("m{i}")));
                    break;
                }
                Err(ClientError::Rejected { code: Code::ResourceExhausted, .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }
    let sent: Vec<String> = acked.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(sent, (0..40).map(|i| format!("m{i}")).collect::<Vec<_>>(), "the sender's order");
    // bob has exactly the acked messages, in order.
    let mut bob = node.connect("bob", "phone", 0).await;
    assert_eq!(bob.welcome.last_seq, acked.len() as u64);
    assert_eq!(common::take(&mut bob, acked.len()).await, acked);
}

async fn a_client_that_stops_reading_is_cut_off_and_its_messages_kept(b: &Backend) {
    let node = TestNode::with(b, |c| {
        c.outbound_queue = 8;
        c.slow_client_timeout = Duration::from_millis(300);
    })
    .await;
    let token = node.login("bob", "phone").await.token;
    let mut raw = Raw::open(&node, hello(&token, 0)).await;
    raw.welcome().await;
    // ~6 MiB: more than HTTP/2 flow control lets through to a client that does not read.
    let body = "z".repeat(60 * 1024);
    for i in 0..100 {
        node.send_unary("alice", &format!("c{i}"), "bob", &body).await.unwrap();
    }
    // bob is cut off: his route goes away while he is not reading.
    common::eventually(|| async { node.presence("bob").await.is_empty().then_some(()) }).await;
    let status = raw.status().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Nothing was acked, so everything is still there.
    let mut bob = node.connect("bob", "phone", 0).await;
    let got = common::take(&mut bob, 100).await;
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>());
}

async fn after_a_retryable_refusal_later_sends_wait_so_order_is_kept(b: &Backend) {
    let node = TestNode::with(b, |c| {
        c.send_rate = 2;
        c.send_burst = 1;
    })
    .await;
    let token = node.login("alice", "phone").await.token;
    let mut raw = Raw::open(&node, hello(&token, 0)).await;
    raw.welcome().await;
    let reply = async |raw: &mut Raw, id: &str| -> (String, i32) {
        raw.send(send(id, "bob", id)).await;
        match raw.frame().await.unwrap().and_then(|f| f.frame) {
            Some(proto::server_frame::Frame::SendAck(a)) => (a.client_msg_id, 0),
            Some(proto::server_frame::Frame::SendError(e)) => (e.client_msg_id, e.code),
            other => panic!("{other:?}"),
        }
    };
    let exhausted = Code::ResourceExhausted as i32;
    assert_eq!(reply(&mut raw, "A").await, ("A".into(), 0));
    assert_eq!(reply(&mut raw, "B").await, ("B".into(), exhausted), "over the burst");
    // The allowance is back, but B has not been stored: C must wait for it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(reply(&mut raw, "C").await, ("C".into(), exhausted), "held behind B");
    assert_eq!(reply(&mut raw, "B").await, ("B".into(), 0));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(reply(&mut raw, "C").await, ("C".into(), 0));
    let mut bob = node.connect("bob", "phone", 0).await;
    let got: Vec<String> = common::take(&mut bob, 3).await.into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, ["A", "B", "C"]);
}

/// Sends already-encoded bytes as the request message.
#[derive(Default)]
struct RawCodec<D>(std::marker::PhantomData<D>);
struct RawEncoder;
impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}
impl<D: prost::Message + Default + Send + 'static> Codec for RawCodec<D> {
    type Encode = Vec<u8>;
    type Decode = D;
    type Encoder = RawEncoder;
    type Decoder = tim::codec::ImDecoder<D>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        tim::codec::ImCodec::<Vec<u8>, D>::default().decoder()
    }
}

async fn malformed_requests_are_invalid_argument(b: &Backend) {
    use prost::Message as _;
    let node = TestNode::start(b).await;
    let ch = client::channel(&node.endpoint(), &Options::default()).await.unwrap();
    let token = node.login("alice", "phone").await.token;
    let garbage: [&[u8]; 2] = [
        &[0x0a, 0xff, 0xff, 0xff], // field 1, impossible length
        &[0x12, 0x02, 0xff, 0xfe], // field 2 (`to`) that is not UTF-8
    ];
    for bytes in garbage {
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        grpc.ready().await.unwrap();
        let req = client::authorized(bytes.to_vec(), &token);
        let path = http::uri::PathAndQuery::from_static("/im.v1.Gateway/Send");
        let err = grpc
            .unary::<_, proto::SendResponse, _>(req, path, RawCodec::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    // On the stream: a good Hello, then garbage.
    let hello = ClientFrame { frame: Some(hello(&token, 0)) }.encode_to_vec();
    let frames = tokio_stream::iter(vec![hello, garbage[0].to_vec()]);
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/im.v1.Chat/Session");
    let mut stream = grpc
        .streaming::<_, _, ServerFrame, _>(tonic::Request::new(frames), path, RawCodec::default())
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        match tokio::time::timeout(common::WAIT, stream.message()).await.unwrap() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended cleanly"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(stored(&node, "bob").await, 0);
}

#[tokio::test]
async fn invalid_configuration_is_refused_before_serving() {
    let mut c = config();
    c.outbound_queue = 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = tim::run(listener, c, std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("outbound-queue"), "{err}");
}

/// A user's streams and unary sends draw on one allowance; a refusal says how long to wait, and
/// another user is not affected. Nothing refused is stored.
async fn a_users_streams_and_unary_sends_share_one_allowance(b: &Backend) {
    let node = TestNode::with(b, |c| {
        c.send_rate = 2;
        c.send_burst = 4;
    })
    .await;
    let phone = node.connect("alice", "phone", 0).await;
    let laptop = node.connect("alice", "laptop", 0).await;
    phone.sender().send("bob", "p1").await.unwrap();
    phone.sender().send("bob", "p2").await.unwrap();
    laptop.sender().send("bob", "l1").await.unwrap();
    node.send_unary("alice", "u1", "bob", "u1").await.unwrap();
    // The allowance of 4 is spent, whichever way alice sends next.
    let err = laptop.sender().send("bob", "l2").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    let wait = err.retry_after().expect("a retry hint");
    assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500), "{wait:?}");
    let err = node.send_unary("alice", "u2", "bob", "u2").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let hint = ClientError::from(err).retry_after().expect("unary carries the hint");
    assert!(hint <= Duration::from_millis(500), "{hint:?}");
    // Carol has her own allowance.
    node.send_unary("carol", "c1", "bob", "c1").await.unwrap();
    assert_eq!(stored(&node, "bob").await, 5);
    // After the hint, alice's retry goes through.
    tokio::time::sleep(hint).await;
    node.send_unary("alice", "u2", "bob", "u2").await.unwrap();
    assert_eq!(stored(&node, "bob").await, 6);
}

/// An inbox takes at most `inbox_rate` new messages a second from everyone together; the rest
/// are refused with a hint, stored only when retried, and retries of stored ones still answer.
async fn an_inbox_over_its_rate_refuses_new_messages_with_a_hint(b: &Backend) {
    let node = TestNode::with(b, |c| c.inbox_rate = 3).await;
    // Logged in first, then sent at once: well inside one second.
    let (mut sends, mut ids) = (Vec::new(), Vec::new());
    for sender in ["s1", "s2", "s3"] {
        let token = node.login(sender, "server").await.token;
        for i in 0..2 {
            let id = format!("{sender}-{i}");
            ids.push((sender, id.clone()));
            let req = proto::SendRequest {
                client_msg_id: id,
                to: "bob".into(),
                body: "x".into(),
                ..Default::default()
            };
            let mut gateway = node.gateway().await;
            let token = token.clone();
            sends.push(async move { gateway.send(client::authorized(req, &token)).await });
        }
    }
    let outcomes = futures_util::future::join_all(sends).await;
    let refused: Vec<_> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 3, "{outcomes:?}");
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("3 messages/s"), "{}", status.message());
    }
    let outcome = |ok: bool| ids.iter().zip(&outcomes).find(|(_, r)| r.is_ok() == ok).unwrap().0;
    let (sender, id) = outcome(true);
    let retry = node.send_unary(sender, id, "bob", "x").await.unwrap();
    assert!(retry.duplicate, "a retry of a stored message is answered, not refused");
    assert_eq!(stored(&node, "bob").await, 3);
    let wait = ClientError::from(refused[0].clone()).retry_after().expect("a hint");
    tokio::time::sleep(wait).await;
    let (sender, id) = outcome(false);
    assert!(!node.send_unary(sender, id, "bob", "x").await.unwrap().duplicate);
    node.send_unary("s3", "other", "alice", "x").await.unwrap();
    assert_eq!(stored(&node, "bob").await, 4);
}

/// One device more than `max_devices` is refused at Hello, clearly, before it takes a route;
/// a logout frees a place.
async fn one_device_too_many_is_refused_until_one_logs_out(b: &Backend) {
    let node = TestNode::with(b, |c| c.max_devices = 2).await;
    let _phone = node.connect("bob", "phone", 0).await;
    let _laptop = node.connect("bob", "laptop", 0).await;
    let token = node.login("bob", "tablet").await.token;
    let mut raw = Raw::open(&node, hello(&token, 0)).await;
    let status = raw.status().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("2 devices"), "{}", status.message());
    let mut online = node.presence("bob").await;
    online.sort();
    assert_eq!(online, ["laptop", "phone"], "the refused device took no route");
    // Messages still reach the two devices; the laptop logs itself out, and the tablet fits.
    let laptop = node.login("bob", "laptop").await.token;
    let req = proto::LogoutRequest { device: String::new() };
    node.gateway().await.logout(client::authorized(req, &laptop)).await.unwrap();
    node.connect("bob", "tablet", 0).await;
}

/// A full inbox refuses new messages (the sender is told) and drops nothing unread; once its
/// device acks, it takes more.
async fn a_full_inbox_refuses_new_messages_and_drops_nothing(b: &Backend) {
    let node = TestNode::with(b, |c| c.inbox_max = 3).await;
    for i in 1..=3 {
        node.send_unary("alice", &format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    let full = node.send_unary("alice", "c4", "bob", "m4").await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(full.message().contains("inbox is full"), "{}", full.message());
    let mut bob = node.connect("bob", "phone", 0).await;
    assert_eq!(common::take(&mut bob, 3).await, common::expected("m", 1, 3));
    bob.sender().ack(2).await.unwrap();
    common::eventually(|| async { node.send_unary("alice", "c4", "bob", "m4").await.ok() }).await;
    assert_eq!(next_message(&mut bob).await.body, "m4");
}

on_every_store!(
    a_full_inbox_refuses_new_messages_and_drops_nothing,
    one_device_too_many_is_refused_until_one_logs_out,
    a_users_streams_and_unary_sends_share_one_allowance,
    an_inbox_over_its_rate_refuses_new_messages_with_a_hint,
    after_a_retryable_refusal_later_sends_wait_so_order_is_kept,
    oversize_or_empty_fields_are_invalid_argument_and_store_nothing,
    bad_tokens_are_unauthenticated,
    hello_device_must_match_the_token,
    frames_out_of_order_are_failed_precondition,
    empty_frames_and_acks_beyond_delivery_are_invalid_argument,
    a_silent_stream_is_ended_by_the_hello_timeout,
    a_flood_is_rate_limited_and_loses_nothing_acked,
    a_client_that_stops_reading_is_cut_off_and_its_messages_kept,
    malformed_requests_are_invalid_argument,
);

#[tokio::test]
async fn relay_takes_only_node_tokens_signed_with_the_node_secret() {
    let node = TestNode::start(&Backend::Memory).await;
    let bob = node.connect("bob", "phone", 0).await;
    let session_token = node.login("mallory", "d").await.token;
    let node_token = |secret: &str| {
        TokenSigner::new(secret.as_bytes().to_vec())
            .issue(TokenKind::Node, "node-x", "", Duration::from_secs(60))
            .0
    };
    let message = proto::Message {
        seq: 1,
        from: "mallory".into(),
        to: "bob".into(),
        body: "forged".into(),
        sent_at: 1,
        msg_id: "m1".into(),
        ..Default::default()
    };
    let relay = async || {
        let ch = client::channel(&node.endpoint(), &Options::default()).await.unwrap();
        proto::relay_client::RelayClient::new(ch)
    };
    let one = |seq: u64, body: &str| proto::DeliverRequest {
        user_id: "bob".into(),
        messages: vec![proto::Message { seq, body: body.into(), ..message.clone() }],
        members_version: 0,
    };
    let batch = |deliveries| proto::DeliverBatchRequest { deliveries };
    // A session token, a node token of the token secret, garbage, none: all refused, one
    // message at a time or in a batch.
    for token in [session_token, node_token(SECRET), "garbage".into(), String::new()] {
        let err = relay().await.deliver(client::authorized(one(1, "x"), &token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "relay with {token:?}");
        let req = client::authorized(batch(vec![one(1, "x")]), &token);
        let err = relay().await.deliver_batch(req).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "relay batch with {token:?}");
    }
    // Only a node token of the node secret gets through.
    let token = node_token(common::NODE_SECRET);
    let handed = relay().await.deliver(client::authorized(one(1, "one"), &token)).await.unwrap();
    assert_eq!(handed.into_inner().sessions, 1);
    let req = client::authorized(batch(vec![one(2, "two"), one(3, "three")]), &token);
    assert_eq!(relay().await.deliver_batch(req).await.unwrap().into_inner().sessions, 2);
    // A batch over the limit hands nothing.
    let over = tim::deliver::MAX_RELAY_BATCH + 1;
    let req = client::authorized(batch(vec![one(4, "too many"); over]), &token);
    let err = relay().await.deliver_batch(req).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let mut bob = bob;
    for body in ["one", "two", "three"] {
        assert_eq!(next_message(&mut bob).await.body, body);
    }
    let after = tokio::time::timeout(Duration::from_millis(300), next_message(&mut bob)).await;
    assert!(after.is_err(), "nothing of the refused batch was handed: {after:?}");
}

/// The node's queue budget is shared by all its streams: with non-reading devices holding it,
/// a device that reads still gets everything (one frame at a time, the rest from the inbox),
/// and the non-readers are the ones cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_node_queue_budget_readers_go_on_and_non_readers_are_cut_off() {
    let node = TestNode::with(&Backend::Memory, |c| {
        c.outbound_bytes = 32 * 1024;
        c.node_queue_bytes = 64 * 1024;
        c.slow_client_timeout = Duration::from_secs(1);
        c.send_rate = 0;
        c.inbox_rate = 0;
    })
    .await;
    let mut held = Vec::new();
    for device in ["d1", "d2", "d3"] {
        let token = node.login("bob", device).await.token;
        let mut raw = Raw::open(&node, hello(&token, 0)).await;
        raw.welcome().await;
        held.push(raw);
    }
    let mut phone = node.connect("bob", "phone", 0).await;
    // More than the non-readers' HTTP/2 windows take in (their transport would accept it).
    let body = "y".repeat(16 * 1024);
    let token = node.login("alice", "server").await.token;
    let mut gateway = node.gateway().await;
    for i in 1..=300 {
        let req = proto::SendRequest {
            client_msg_id: format!("c{i}"),
            to: "bob".into(),
            body: format!("{i}:{body}"),
            ..Default::default()
        };
        gateway.send(client::authorized(req, &token)).await.unwrap();
    }
    let got = common::take(&mut phone, 300).await;
    assert_eq!(got.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), (1..=300).collect::<Vec<_>>());
    common::eventually(|| async { (node.presence("bob").await == ["phone"]).then_some(()) }).await;
    drop(held);
}
