//! TLS on the gRPC port: chat over TLS, no plaintext/TLS mix-ups, client certificates,
//! certificate reload without dropping streams, and relays only from the cluster's nodes.
mod common;

use std::time::{Duration, SystemTime};

use common::consul::ConsulDouble;
use common::process::{NodeProcess, free_port};
use common::tls::{Ca, Pem};
use common::{Backend, NODE_SECRET, SECRET, TestNode, eventually, next_message};
use tim::auth::{TokenKind, TokenSigner};
use tim::client::{self, ClientError, Options, Session};
use tim::proto::{self, relay_client::RelayClient};
use tonic::Code;

#[tokio::test]
async fn users_chat_over_tls_and_login_hands_out_an_https_endpoint() {
    let ca = Ca::new("chat");
    let pem = ca.issue("node");
    let node = TestNode::with_options(&Backend::Memory, ca.client(), |c| pem.serve(c)).await;

    let login = node.login("bob", "phone").await;
    assert_eq!(login.endpoint, format!("https://{}", node.addr));
    let mut bob = Session::connect(&login.endpoint, &login.token, 0, &node.opts).await.unwrap();
    node.send_unary("alice", "c1", "bob", "over tls").await.unwrap();
    assert_eq!(next_message(&mut bob).await.body, "over tls");

    // An explicit https:// address works the same.
    let url = format!("https://{}", node.addr);
    let login = client::login(&url, "alice", "laptop", "", &ca.client()).await.unwrap();
    let alice = Session::connect(&url, &login.token, 0, &ca.client()).await.unwrap();
    alice.sender().send("bob", "and back").await.unwrap();
    assert_eq!(next_message(&mut bob).await.body, "and back");
}

#[tokio::test]
async fn plaintext_and_tls_never_mix() {
    let ca = Ca::new("mix");
    let pem = ca.issue("node");
    let tls = TestNode::with_options(&Backend::Memory, ca.client(), |c| pem.serve(c)).await;
    let plain = TestNode::start(&Backend::Memory).await;
    let login = |addr: String, opts: Options| async move {
        client::login(&addr, "bob", "phone", "", &opts).await.unwrap_err()
    };

    // A plaintext client gets nowhere with a TLS node.
    login(format!("http://{}", tls.addr), Options::default()).await;
    login(tls.endpoint(), Options::default()).await;
    // TLS towards a plaintext node fails with an error that says so.
    let err = login(plain.endpoint(), ca.client()).await;
    assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("http://"), "{err}");
    // The system roots do not trust a private CA.
    let err = login(format!("https://{}", tls.addr), Options::default()).await;
    assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("--tls-ca"), "{err}");
    // TLS settings with an http:// address: refused, never downgraded.
    let err = login(format!("http://{}", tls.addr), ca.client()).await;
    assert!(matches!(err, ClientError::Address(_)), "{err:?}");
}

#[tokio::test]
async fn a_client_ca_lets_in_only_the_certificates_it_issued() {
    let ca = Ca::new("server");
    let users = Ca::new("users");
    let other = Ca::new("other");
    let pem = ca.issue("node");
    let alice = users.issue("alice");
    let node = TestNode::with_options(&Backend::Memory, alice.client(&ca), |c| {
        pem.serve(c);
        c.tls_client_ca = Some(users.cert.clone());
    })
    .await;

    let login = node.login("alice", "phone").await;
    Session::connect(&login.endpoint, &login.token, 0, &node.opts).await.unwrap();
    for (opts, who) in
        [(ca.client(), "no certificate"), (other.issue("mallory").client(&ca), "another CA")]
    {
        let r = client::login(&node.endpoint(), "mallory", "d", "", &opts).await;
        assert!(r.is_err(), "{who} logged in");
    }
}

/// Sets the modification times of `pem`'s files.
fn set_modified(pem: &Pem, times: [SystemTime; 2]) {
    for (path, time) in [&pem.cert, &pem.key].into_iter().zip(times) {
        std::fs::File::options().write(true).open(path).unwrap().set_modified(time).unwrap();
    }
}

fn modified(pem: &Pem) -> [SystemTime; 2] {
    [&pem.cert, &pem.key].map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_and_on_change_without_dropping_streams() {
    let (first, second, third) = (Ca::new("first"), Ca::new("second"), Ca::new("third"));
    let pem = first.issue("node");
    let addr = format!("127.0.0.1:{}", free_port());
    let tls = ["--tls-cert".into(), pem.cert.display().to_string()];
    let tls = [&tls[..], &["--tls-key".into(), pem.key.display().to_string()]].concat();
    let node = NodeProcess::start(&addr, &Backend::Memory, &tls).await;
    let logs_in = |opts: Options| {
        let addr = addr.clone();
        move || {
            let (addr, opts) = (addr.clone(), opts.clone());
            async move { client::login(&addr, "alice", "server", "", &opts).await.ok() }
        }
    };
    let login = eventually(|| async {
        client::login(&addr, "bob", "phone", "", &first.client()).await.ok()
    })
    .await;
    let mut bob =
        Session::connect(&login.endpoint, &login.token, 0, &first.client()).await.unwrap();

    // A new certificate under the same names and modification times: only SIGHUP notices it.
    let times = modified(&pem);
    second.issue_to("node", &pem);
    set_modified(&pem, times);
    node.hang_up();
    let alice = eventually(logs_in(second.client())).await;
    let alice = Session::connect(&alice.endpoint, &alice.token, 0, &second.client()).await.unwrap();
    alice.sender().send("bob", "after SIGHUP").await.unwrap();
    assert_eq!(next_message(&mut bob).await.body, "after SIGHUP", "bob's stream survived");

    // A renewal written in place is picked up by itself.
    third.issue_to("node", &pem);
    eventually(logs_in(third.client())).await;
    alice.sender().send("bob", "after renewal").await.unwrap();
    assert_eq!(next_message(&mut bob).await.body, "after renewal");
    assert!(client::login(&addr, "carol", "d", "", &first.client()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_need_a_node_certificate_of_the_cluster_and_a_node_token() {
    let cluster = Ca::new("cluster");
    let users = Ca::new("users");
    let consul = ConsulDouble::start().await;
    let backend = Backend::redis();
    let node = |pem: Pem, opts: Options, users_ca: Option<&Ca>| {
        let (consul, backend, cluster_ca) = (consul.url(), backend.clone(), cluster.cert.clone());
        let client_ca = users_ca.map(|ca| ca.cert.clone());
        async move {
            TestNode::with_options(&backend, opts, |c| {
                pem.serve(c);
                c.tls_cluster_ca = Some(cluster_ca);
                c.tls_client_ca = client_ca;
                c.consul = Some(consul);
                c.consul_ttl = Duration::from_secs(1);
            })
            .await
        }
    };
    let alice_pem = users.issue("alice");
    let a = node(cluster.issue("node-a"), cluster.client(), None).await;
    // b asks every client for a certificate: users' from the users CA, nodes' from the cluster's.
    let b = node(cluster.issue("node-b"), alice_pem.client(&cluster), Some(&users)).await;

    // bob on b gets alice's message from a at once: a relayed it over mutual TLS.
    let login = b.login("bob", "phone").await;
    let mut bob = Session::connect(&b.endpoint(), &login.token, 0, &b.opts).await.unwrap();
    let b_url = format!("https://{}", b.addr);
    eventually(|| async {
        let placed = a.login(&format!("probe-{}", rand::random::<u32>()), "d").await;
        (placed.endpoint == b_url).then_some(())
    })
    .await;
    a.send_unary("alice", "c1", "bob", "relayed over mTLS").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), next_message(&mut bob)).await;
    assert_eq!(m.expect("relayed, not caught up later").body, "relayed over mTLS");

    // Hostile callers of b's Relay.
    let deliver = |opts: Options, token: String| {
        let endpoint = b.endpoint();
        async move {
            let channel = client::channel(&endpoint, &opts).await?;
            let req = proto::DeliverRequest { user_id: "bob".into(), ..Default::default() };
            Ok::<_, ClientError>(
                RelayClient::new(channel).deliver(client::authorized(req, &token)).await?,
            )
        }
    };
    let node_token = |secret: &str| {
        TokenSigner::new(secret.as_bytes().to_vec())
            .issue(TokenKind::Node, "node-x", "", Duration::from_secs(60))
            .0
    };
    // A user's certificate with a valid node token: not a node.
    let err = deliver(alice_pem.client(&cluster), node_token(NODE_SECRET)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    assert!(err.to_string().contains("node certificate"), "{err}");
    // A node's certificate with a node token signed with the session-token secret.
    let node_pem = cluster.issue("node-x");
    let err = deliver(node_pem.client(&cluster), node_token(SECRET)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    // Both right: accepted.
    deliver(node_pem.client(&cluster), node_token(NODE_SECRET)).await.unwrap();
}

#[tokio::test]
async fn the_cli_speaks_tls_with_a_private_ca_and_says_why_it_cannot_without() {
    let ca = Ca::new("cli");
    let pem = ca.issue("node");
    let addr = format!("127.0.0.1:{}", free_port());
    let tls = ["--tls-cert", pem.cert.to_str().unwrap(), "--tls-key", pem.key.to_str().unwrap()];
    let _node = NodeProcess::start(&addr, &Backend::Memory, &tls.map(String::from)).await;
    let send = |extra: &[&str]| {
        let addr = if extra.contains(&"--addr") { &[][..] } else { &["--addr", addr.as_str()][..] };
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tim"))
            .args(["send", "--user", "alice", "--to", "bob"])
            .args(addr)
            .args(extra)
            .arg("hello over tls")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let ok =
        eventually(|| async { send(&["--tls-ca", ca.cert.to_str().unwrap()]).0.then_some(()) });
    ok.await;
    let (sent, stderr) = send(&[]);
    assert!(!sent, "plaintext to a TLS node");
    assert!(stderr.contains("if the server serves TLS"), "{stderr}");
    let https = format!("https://{addr}");
    let (sent, stderr) = send(&["--addr", &https]);
    assert!(!sent, "the system roots trusted a private CA");
    assert!(stderr.contains("TLS handshake"), "{stderr}");
}
