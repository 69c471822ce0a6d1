//! The node as a service: login modes, health and reflection for grpcurl, keepalive cleanup of
//! dead connections, graceful drain, and the CLI.
mod common;

use std::time::{Duration, SystemTime};

use common::proxy::FreezableProxy;
use common::{Backend, TestNode, WAIT, eventually, next_event, next_message};
use tim::auth::sign_jwt;
use tim::client::{self, Event, Options, Session};
use tim::config::LoginKind;
use tonic::Code;

fn now() -> i64 {
    tim::auth::unix_ms(SystemTime::now()) / 1000
}

const BACKEND_SECRET: &str = "app-backend-secret-of-32-bytes!!";

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    sign_jwt(&claims, tim::auth::Algorithm::HS256, secret.as_bytes(), None).unwrap()
}

#[tokio::test]
async fn jwt_login_honours_signature_subject_and_expiry() {
    let node = TestNode::with(&Backend::Memory, |c| {
        c.login = LoginKind::Jwt;
        c.jwt_secret = Some(BACKEND_SECRET.into());
    })
    .await;
    let opts = Options::default();
    let addr = node.endpoint();
    let good = hs256(serde_json::json!({"sub": "bob", "exp": now() + 60}), BACKEND_SECRET);
    let login = client::login(&addr, "", "phone", &good, &opts).await.unwrap();
    assert_eq!(login.user_id, "bob");
    let bob = Session::connect(&login.endpoint, &login.token, 0, &opts).await.unwrap();
    assert_eq!(bob.welcome.user_id, "bob");

    // Past the 30 s clock-skew leeway.
    let expired = hs256(serde_json::json!({"sub": "bob", "exp": now() - 60}), BACKEND_SECRET);
    let forged = hs256(
        serde_json::json!({"sub": "bob", "exp": now() + 60}),
        "a-guess-a-guess-a-guess-a-guess!",
    );
    for (jwt, what) in [
        (expired.as_str(), "expired"),
        (forged.as_str(), "forged"),
        ("", "missing"),
        ("a.b.c", "garbage"),
    ] {
        let err = client::login(&addr, "bob", "phone", jwt, &opts).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::Unauthenticated), "{what}: {err}");
    }
    let err = client::login(&addr, "alice", "phone", &good, &opts).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "user_id must match sub");
}

/// A backend that signs with a private key: the node holds only its public key, checks `iss`
/// and `aud`, and refuses tokens for anyone else or signed with the key's PEM as a secret.
#[tokio::test]
async fn jwt_login_with_a_public_key_checks_issuer_and_audience() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = std::env::temp_dir().join(format!("tim-jwt-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let public = dir.join("backend.pub.pem");
    std::fs::write(&public, pair.public_key_pem()).unwrap();
    let node = TestNode::with(&Backend::Memory, |c| {
        c.login = LoginKind::Jwt;
        c.jwt_public_key = Some(public.clone());
        c.jwt_issuer = Some("https://app.example".into());
        c.jwt_audience = Some("tim".into());
    })
    .await;
    let (addr, opts) = (node.endpoint(), Options::default());
    let private = pair.serialize_pem();
    let es256 = |claims: serde_json::Value| {
        sign_jwt(&claims, tim::auth::Algorithm::ES256, private.as_bytes(), None).unwrap()
    };
    let claims = |iss: &str, aud: &str| serde_json::json!({"sub": "carol", "exp": now() + 60, "iss": iss, "aud": aud});
    let good = es256(claims("https://app.example", "tim"));
    assert_eq!(client::login(&addr, "", "d", &good, &opts).await.unwrap().user_id, "carol");
    let confused = sign_jwt(
        &claims("https://app.example", "tim"),
        tim::auth::Algorithm::HS256,
        pair.public_key_pem().as_bytes(),
        None,
    )
    .unwrap();
    for jwt in
        [es256(claims("https://evil", "tim")), es256(claims("https://app.example", "x")), confused]
    {
        let err = client::login(&addr, "", "d", &jwt, &opts).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn dev_login_rejects_bad_ids() {
    let node = TestNode::start(&Backend::Memory).await;
    let opts = Options::default();
    for (user, device) in [("", "d"), ("a b", "d"), ("alice", "x y"), ("alice", &"d".repeat(65))] {
        let err = client::login(&node.endpoint(), user, device, "", &opts).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{user:?}/{device:?}");
    }
    let login = client::login(&node.endpoint(), "alice", "", "", &opts).await.unwrap();
    assert_eq!(login.device, "default");
    assert_eq!(login.endpoint, node.endpoint());
    assert!(login.expires_at > now() * 1000);
}

#[tokio::test]
async fn health_is_serving_and_reflection_lists_the_services() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let node = TestNode::start(&Backend::Memory).await;
    let ch = client::channel(&node.endpoint(), &Options::default()).await.unwrap();
    let mut health = HealthClient::new(ch.clone());
    for service in ["", "im.v1.Gateway", "im.v1.Chat", "im.v1.Groups"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap();
        assert_eq!(r.into_inner().status(), ServingStatus::Serving, "{service:?}");
    }

    let mut refl = ServerReflectionClient::new(ch);
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let describe = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("im.v1.Chat".into())),
    };
    let mut replies = refl
        .server_reflection_info(tokio_stream::iter(vec![list, describe]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(services)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = services.service.into_iter().map(|s| s.name).collect();
    for want in ["im.v1.Gateway", "im.v1.Chat", "im.v1.Groups", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected the file describing im.v1.Chat");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn keepalive_removes_a_stream_whose_network_went_silent() {
    let node = TestNode::with(&Backend::Memory, |c| {
        c.keepalive_interval = Duration::from_millis(200);
        c.keepalive_timeout = Duration::from_millis(300);
    })
    .await;
    let proxy = FreezableProxy::start(node.addr).await;
    // The client itself would not notice for an hour: only the server's PINGs can.
    let opts = Options {
        keepalive_interval: Duration::from_secs(3600),
        keepalive_timeout: Duration::from_secs(3600),
        ..Options::default()
    };
    let login = node.login("bob", "phone").await;
    let _bob = Session::connect(&proxy.addr.to_string(), &login.token, 0, &opts).await.unwrap();
    assert_eq!(node.presence("bob").await, ["phone"]);
    // Let a few PINGs pass while the network is fine: the stream must stay.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(node.presence("bob").await, ["phone"]);
    proxy.freeze();
    eventually(|| async { node.presence("bob").await.is_empty().then_some(()) }).await;
    // Messages sent meanwhile wait in the inbox for the next connection.
    node.send_unary("alice", "k1", "bob", "while you were away").await.unwrap();
    let mut bob = node.connect("bob", "phone", 0).await;
    assert_eq!(next_message(&mut bob).await.body, "while you were away");
}

#[tokio::test]
async fn shutdown_drains_every_stream_and_returns_within_the_grace() {
    let node = TestNode::with(&Backend::Memory, |c| c.drain_grace = Duration::from_secs(3)).await;
    let mut sessions = Vec::new();
    for i in 0..5 {
        sessions.push(node.connect(&format!("u{i}"), "phone", 0).await);
    }
    let started = std::time::Instant::now();
    let stopped = tokio::spawn(node.stop());
    for s in &mut sessions {
        match next_event(s).await {
            Event::Drain(ms) => assert!(ms < 1000),
            other => panic!("expected Drain, got {other:?}"),
        }
        assert!(matches!(next_event(s).await, Event::Closed(None)));
    }
    drop(sessions);
    tokio::time::timeout(WAIT, stopped).await.unwrap().unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "drained before the grace ran out");
}

#[tokio::test]
async fn shutdown_is_bounded_even_if_a_client_never_reads() {
    let node = TestNode::with(&Backend::Memory, |c| {
        c.drain_grace = Duration::from_millis(500);
        c.slow_client_timeout = Duration::from_secs(60);
        c.outbound_queue = 8;
    })
    .await;
    // bob's stream is full and he is not reading: Drain cannot even be queued for him.
    let _held = node.stuffed_session("bob").await;
    // A stream that has not said Hello yet is ended at the drain as well.
    let (_tx2, rx2) = tokio::sync::mpsc::channel::<tim::proto::ClientFrame>(1);
    let ch = client::channel(&node.endpoint(), &Options::default()).await.unwrap();
    let mut silent = tim::proto::chat_client::ChatClient::new(ch)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .unwrap()
        .into_inner();
    let started = std::time::Instant::now();
    let stop = tokio::spawn(node.stop());
    let status = tokio::time::timeout(WAIT, silent.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    tokio::time::timeout(WAIT, stop).await.unwrap().unwrap().unwrap();
    // The grace (0.5 s) plus the moment given to connections, not the 60 s slow-client timeout.
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

/// `tim chat` as `user` against `addr`, with its stdin, stdout and stderr piped.
fn spawn_chat(addr: &str, user: &str) -> tokio::process::Child {
    use std::process::Stdio;
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tim"))
        .args(["chat", "--addr", addr, "--user", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn cli_send_and_chat() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let node = TestNode::start(&Backend::Memory).await;
    let tim = env!("CARGO_BIN_EXE_tim");
    let out = tokio::process::Command::new(tim)
        .args(["send", "--addr", &node.endpoint(), "--user", "alice", "--to", "bob", "hello bob"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("seq=1 "));

    let mut chat = spawn_chat(&node.endpoint(), "bob");
    // The waiting message is printed first...
    let mut stdout = tokio::io::BufReader::new(chat.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, stdout.next_line()).await.unwrap().unwrap();
    assert_eq!(first.as_deref(), Some("alice: hello bob"));
    // ...a typed line is sent...
    let mut alice = node.connect("alice", "phone", 0).await;
    let mut stdin = chat.stdin.take().unwrap();
    stdin.write_all(b"alice: hi alice\n").await.unwrap();
    assert_eq!(next_message(&mut alice).await.body, "hi alice");
    // ...and closing stdin ends it.
    drop(stdin);
    let out = tokio::time::timeout(WAIT, chat.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tokio::time::timeout(WAIT, stdout.next_line()).await.unwrap().unwrap(), None);
    // chat acked what it printed.
    let mut bob = node.connect("bob", "cli", 0).await;
    assert_eq!(bob.welcome.resume_from, 1);
    common::assert_quiet(&mut bob, Duration::from_millis(200)).await;
}

/// The issue's CLI walk-through: create a group, send to it, chat prints it with the group's
/// id and sends `#<id>: text` to it, send edits and deletes, history prints the conversation
/// oldest first, each message as its latest change left it.
#[tokio::test]
async fn cli_groups_send_chat_and_history() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let node = TestNode::start(&Backend::Memory).await;
    let tim = env!("CARGO_BIN_EXE_tim");
    let addr = node.endpoint();
    let run = |args: Vec<&str>| {
        let mut cmd = tokio::process::Command::new(tim);
        cmd.args(args);
        async move {
            let out = cmd.output().await.unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let created = run(vec![
        "group",
        "create",
        "--addr",
        &addr,
        "--user",
        "alice",
        "--members",
        "bob,carol",
        "--name",
        "team",
    ])
    .await;
    let group = created.lines().last().unwrap().strip_prefix("group=").unwrap().to_string();
    run(vec!["send", "--addr", &addr, "--user", "alice", "--group", &group, "hello team"]).await;

    let mut chat = spawn_chat(&addr, "bob");
    let mut stdout = tokio::io::BufReader::new(chat.stdout.take().unwrap()).lines();
    let mut line = async || tokio::time::timeout(WAIT, stdout.next_line()).await.unwrap().unwrap();
    let created_line = line().await.unwrap();
    assert!(
        created_line.starts_with(&format!("[{group}] alice: (created \"team\"")),
        "{created_line}"
    );
    assert_eq!(line().await.unwrap(), format!("[{group}] alice: hello team"));
    let mut stdin = chat.stdin.take().unwrap();
    stdin.write_all(format!("#{group}: hi all\n").as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, chat.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Alice edits her message; bob deletes his.
    let edit = ["send", "--addr", &addr, "--user", "alice", "--group", &group, "--edit", "2"];
    run([&edit[..], &["hello, team"]].concat()).await;
    run(vec!["send", "--addr", &addr, "--user", "bob", "--group", &group, "--delete", "3"]).await;

    let history = run(vec!["history", "--addr", &addr, "--user", "carol", "--group", &group]).await;
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 5, "{history}");
    assert!(lines[0].starts_with("[1] alice: (created"), "{history}");
    let want = [
        "[2] alice: hello, team (edited)",
        "[3] bob: (deleted)",
        "[4] alice: (edited [2]: hello, team)",
        "[5] bob: (deleted [3])",
    ];
    assert_eq!(&lines[1..], want);
}

#[tokio::test]
async fn the_binary_drains_and_exits_cleanly_on_sigterm() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_tim"))
        .args(["serve", "--addr", &addr, "--drain-grace", "2s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let opts = Options::default();
    let login =
        eventually(|| async { client::login(&addr, "bob", "phone", "", &opts).await.ok() }).await;
    let mut bob = Session::connect(&login.endpoint, &login.token, 0, &opts).await.unwrap();
    let pid = server.id().unwrap().to_string();
    let kill = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let started = std::time::Instant::now();
    assert!(matches!(next_event(&mut bob).await, Event::Drain(_)));
    drop(bob);
    let status = tokio::time::timeout(WAIT, server.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "drained before the 2 s grace ran out");
}

/// `tim serve` refuses, before binding anything, set-ups that would expose dev login or break
/// a cluster silently, and says which flag fixes each.
#[tokio::test]
async fn unsafe_or_broken_set_ups_refuse_to_start_and_name_the_fix() {
    let ca = common::tls::Ca::new("refusals");
    let pem = ca.issue("node");
    let (cert, key) = (pem.cert.to_str().unwrap(), pem.key.to_str().unwrap());
    let cluster = ["--peers", "127.0.0.1:1", "--redis", "redis://127.0.0.1:1"];
    let secrets = ["--token-secret", "0123456789abcdef", "--node-secret", "fedcba9876543210"];
    let tls_cluster = [&cluster[..], &secrets, &["--tls-cert", cert, "--tls-key", key]].concat();
    let cases: [(&[&str], &str); 11] = [
        (&["--addr", "0.0.0.0:0"], "--login jwt"),
        (&["--addr", "0.0.0.0:0", "--insecure-dev-login"], "--advertise"),
        (&["--peers", "127.0.0.1:1"], "--redis"),
        (&cluster, "--token-secret"),
        (&["--consul", "http://127.0.0.1:1", "--redis", "redis://127.0.0.1:1"], "--token-secret"),
        (&[&cluster[..], &secrets[..2]].concat(), "--node-secret"),
        (&[&cluster[..], &secrets[..2], &["--node-secret", secrets[1]]].concat(), "must differ"),
        (&tls_cluster, "--tls-cluster-ca"),
        (&["--tls-cert", cert], "--tls-key"),
        (&["--tls-cert", key, "--tls-key", key], "no CERTIFICATE"),
        (&["--tls-client-ca", cert], "--tls-cert"),
    ];
    for (args, fix) in cases {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tim"))
            .arg("serve")
            .args(args)
            .env_remove("TIM_TOKEN_SECRET")
            .env_remove("TIM_NODE_SECRET")
            .output();
        let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(fix), "{args:?}: {stderr}");
    }
}

/// With `--insecure-dev-login` a node on a reachable address runs, and says so in its log.
#[tokio::test]
async fn insecure_dev_login_runs_and_warns() {
    use tokio::io::AsyncBufReadExt as _;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut node = tokio::process::Command::new(env!("CARGO_BIN_EXE_tim"))
        .args(["serve", "--addr", &format!("0.0.0.0:{port}"), "--insecure-dev-login"])
        .args(["--advertise", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(node.stderr.take().unwrap()).lines();
    let warned = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("anyone who reaches this address can log in as anyone") {
                return;
            }
        }
        panic!("the node exited without the warning");
    };
    tokio::time::timeout(WAIT, warned).await.unwrap();
    let (gateway, opts) = (format!("127.0.0.1:{port}"), Options::default());
    let login = client::login(&gateway, "bob", "d", "", &opts).await.unwrap();
    assert_eq!(login.user_id, "bob");
    node.kill().await.unwrap();
}

/// What one connection may cost is announced in its HTTP/2 SETTINGS: at most
/// `--max-streams-per-connection` concurrent streams (a client over it waits for a free one).
#[tokio::test]
async fn a_connection_is_told_its_stream_limit() {
    let node = TestNode::with(&Backend::Memory, |c| c.max_streams_per_connection = 5).await;
    let tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let limit = eventually(|| {
        let n = send.current_max_send_streams();
        async move { (n != usize::MAX).then_some(n) }
    })
    .await;
    assert_eq!(limit, 5);
    driver.abort();
}

/// A stream lives no longer than its session token: it ends with UNAUTHENTICATED when the
/// token expires, and the device logs in again.
#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    use tim::auth::{TokenKind, TokenSigner};
    let node = TestNode::start(&Backend::Memory).await;
    let signer = TokenSigner::new(common::SECRET.as_bytes().to_vec());
    let (token, _) = signer.issue(TokenKind::Session, "bob", "phone", Duration::from_secs(2));
    let mut bob = Session::connect(&node.endpoint(), &token, 0, &Options::default()).await.unwrap();
    let mut said_so = false;
    let status = loop {
        match tokio::time::timeout(WAIT, bob.next_event()).await.unwrap() {
            Some(Event::Closed(Some(status))) => break status,
            Some(Event::TokenExpired) => said_so = true,
            Some(Event::Message(_)) => continue,
            other => panic!("expected the stream to end with a status, got {other:?}"),
        }
    };
    assert!(said_so, "SessionEnded(TOKEN_EXPIRED) came before the status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
}
