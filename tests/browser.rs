//! The web chat page in a real browser (headless Chromium over WebDriver): two pages chat with
//! each other, a page chats with a gRPC client, and a page rides out its node being killed and
//! restarted, then a reload, with nothing lost or shown twice.
mod common;

use std::time::Duration;

use common::browser::{Browser, Page};
use common::process::{NodeProcess, free_port};
use common::tls::Ca;
use common::{Backend, TestNode, next_message};
use tim::client::{self, Options};
use tim::proto::{self, gateway_client::GatewayClient};

/// The direct conversation of two users, as the server names it.
fn direct(a: &str, b: &str) -> String {
    let (x, y) = if a < b { (a, b) } else { (b, a) };
    format!("d:{}:{x}:{y}", x.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_with_receipts_and_typing() {
    let node = TestNode::start(&Backend::Memory).await;
    let url = format!("http://{}/", node.addr);
    let browser = Browser::start().await;
    let alice = browser.open(&url).await;
    let bob = browser.open(&url).await;
    alice.login("alice", "laptop").await;
    bob.login("bob", "laptop").await;

    alice.send("bob", "hi bob").await;
    bob.wait_message("alice: hi bob", None).await;
    // Stored and acked: one tick; bob opening the conversation reads it: two.
    alice.wait_message("alice: hi bob", Some("✓")).await;
    bob.open_conversation(&direct("alice", "bob")).await;
    alice.wait_message("alice: hi bob", Some("✓✓")).await;

    // bob types: alice sees it while it lasts; then his message comes.
    bob.type_into("to", "alice").await;
    bob.type_into("text", "hi alice").await;
    alice
        .wait_for("bob typing", |p| async move {
            p.js("return document.getElementById('typing').textContent").await.as_str()
                == Some("bob is typing…")
        })
        .await;
    bob.client.find(fantoccini::Locator::Id("send")).await.unwrap().click().await.unwrap();
    alice.wait_message("bob: hi alice", None).await;

    // Each page shows each message once, in the order it happened.
    assert_eq!(alice.texts().await, ["alice: hi bob", "bob: hi alice"]);
    bob.wait_message("bob: hi alice", Some("✓")).await;
    assert_eq!(bob.texts().await, ["alice: hi bob", "bob: hi alice"]);
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_and_a_grpc_client_chat() {
    let node = TestNode::start(&Backend::Memory).await;
    let browser = Browser::start().await;
    let page = browser.open(&format!("http://{}/", node.addr)).await;
    page.login("alice", "browser").await;
    let mut bob = node.connect("bob", "phone", 0).await;

    for i in 1..=3 {
        bob.sender().send("alice", &format!("from grpc {i}")).await.unwrap();
    }
    page.wait_message("bob: from grpc 3", None).await;
    assert_eq!(page.texts().await, ["bob: from grpc 1", "bob: from grpc 2", "bob: from grpc 3"]);
    page.wait_for("seq 3 kept", |p| async move {
        p.js("return JSON.parse(localStorage.getItem('tim.resume.alice.browser')).after").await
            == serde_json::json!(3)
    })
    .await;

    page.send("bob", "from the page").await;
    let m = next_message(&mut bob).await;
    assert_eq!((m.from.as_str(), m.body.as_str()), ("alice", "from the page"));
    page.wait_message("alice: from the page", Some("✓")).await;

    // The page acked what it showed: a new stream of its device starts after it.
    let info = node.presence_nodes("alice").await;
    assert!(info.iter().any(|(device, _)| device == "browser"), "{info:?}");
    page.close().await;
    common::eventually(|| async {
        let devices = node.presence_nodes("alice").await;
        (!devices.iter().any(|(d, _)| d == "browser")).then_some(())
    })
    .await;
    let alice = node.connect("alice", "browser", 0).await;
    assert_eq!(alice.welcome.resume_from, alice.welcome.last_seq, "everything shown was acked");
}

/// Sends as `from` through unary Gateway.Send, retrying (same client id) while the node is
/// down: a retry of a stored message is not stored again.
async fn send_retrying(addr: &str, from: &str, id: &str, to: &str, body: &str) {
    let opts = Options::default();
    let deadline = tokio::time::Instant::now() + common::browser::PAGE_WAIT;
    loop {
        let attempt = async {
            let token = client::login(addr, from, "service", "", &opts).await.ok()?.token;
            let mut gw = GatewayClient::new(client::channel(addr, &opts).await.ok()?);
            let req = proto::SendRequest {
                client_msg_id: id.into(),
                to: to.into(),
                body: body.into(),
                ..Default::default()
            };
            gw.send(client::authorized(req, &token)).await.ok()
        };
        if attempt.await.is_some() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn texts_settle(page: &Page, expected: &[String]) {
    page.wait_for("every message", |p| async move { p.texts().await.len() >= expected.len() })
        .await;
    // Nothing more comes (a redelivery would show here).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(page.texts().await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_survives_its_node_restarting_and_a_reload() {
    let backend = Backend::redis();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut node = NodeProcess::start(&addr, &backend, &[]).await;
    let browser = Browser::start().await;
    let url = format!("http://{addr}/");
    let page = browser.open(&url).await;
    page.login("alice", "browser").await;

    let mut expected = Vec::new();
    for i in 1..=4 {
        send_retrying(&addr, "bob", &format!("c{i}"), "alice", &format!("b{i}")).await;
        expected.push(format!("bob: b{i}"));
    }
    texts_settle(&page, &expected).await;

    // SIGKILL: no drain, the socket just breaks. What the page sends now waits.
    node.kill().await;
    page.wait_for("the page to notice", |p| async move { p.state().await != "online" }).await;
    page.send("bob", "sent while down").await;
    expected.push("alice: sent while down".into());
    node.restart().await;
    for i in 5..=8 {
        send_retrying(&addr, "bob", &format!("c{i}"), "alice", &format!("b{i}")).await;
        expected.push(format!("bob: b{i}"));
    }
    page.wait_online().await;
    page.wait_message("alice: sent while down", Some("✓")).await;
    texts_settle(&page, &expected).await;

    // bob got the page's message exactly once.
    let token = client::login(&addr, "bob", "reader", "", &Options::default()).await.unwrap().token;
    let mut gw = GatewayClient::new(client::channel(&addr, &Options::default()).await.unwrap());
    let req = proto::HistoryRequest { with: "alice".into(), limit: 50, ..Default::default() };
    let history = gw.history(client::authorized(req, &token)).await.unwrap().into_inner();
    let from_page: Vec<_> =
        history.messages.iter().filter(|m| m.body == "sent while down").collect();
    assert_eq!(from_page.len(), 1, "{:?}", history.messages);

    // A reload resumes from what the page stored: only what is new shows.
    page.client.refresh().await.unwrap();
    page.login("alice", "browser").await;
    send_retrying(&addr, "bob", "c9", "alice", "b9").await;
    texts_settle(&page, &["bob: b9".to_string()]).await;
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_chats_over_tls() {
    let ca = Ca::new("browser");
    let pem = ca.issue("node");
    let node = TestNode::with_options(&Backend::Memory, ca.client(), |c| pem.serve(c)).await;
    let browser = Browser::start().await;
    // The test CA is not in the browser's store: it is told to accept the node's certificate.
    let url = format!("https://{}/", node.addr);
    let page = browser.open_with(&url, &["--ignore-certificate-errors"]).await;
    page.login("alice", "browser").await;
    let journal = page.js("return window.timJournal").await;
    assert!(journal.to_string().contains(&format!("wss://{}/v1/chat", node.addr)), "{journal}");

    let mut bob = node.connect("bob", "phone", 0).await;
    page.send("bob", "over wss").await;
    assert_eq!(next_message(&mut bob).await.body, "over wss");
    bob.sender().send("alice", "and back").await.unwrap();
    page.wait_message("bob: and back", None).await;
    page.close().await;
}
