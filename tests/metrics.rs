//! What operators read: Prometheus metrics on `--metrics-addr` move with traffic (both
//! transports, refusals, relays between two nodes), and `--log-format json` writes one JSON
//! object a line whose session lines name the user, device and session, never a token or body.
mod common;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::free_port;
use common::web::{self, WsSession};
use common::{Backend, SECRET, TestNode, eventually, next_message};

/// The samples of a scrape: `name{labels}` → value.
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, headers, text) = web::http(addr, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200, "{text}");
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_on_both_transports_and_across_nodes() {
    let backend = Backend::redis();
    let (pa, pb, pm) = (free_port(), free_port(), free_port());
    let (a_addr, b_addr) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let metrics: SocketAddr = format!("127.0.0.1:{pm}").parse().unwrap();
    let a = TestNode::with(&backend, |c| {
        c.addr = a_addr.parse().unwrap();
        c.peers = Some(b_addr.clone());
        c.metrics_addr = Some(metrics);
    })
    .await;
    let b = TestNode::with(&backend, |c| {
        c.addr = b_addr.parse().unwrap();
        c.peers = Some(a_addr.clone());
    })
    .await;
    let before = scrape(metrics).await;
    assert_eq!(value(&before, "tim_messages_stored_total"), 0.0);
    assert_eq!(value(&before, "tim_discovery_nodes"), 2.0);

    // alice on a over a WebSocket, carol on a over gRPC, bob on b.
    let token = web::login(a.addr, "alice", "browser").await;
    let mut alice = WsSession::connect(a.addr, true, &token, 0).await;
    let mut carol = a.connect_here("carol", "phone", 0).await;
    let mut bob = b.connect_here("bob", "phone", 0).await;
    let open = scrape(metrics).await;
    assert_eq!(value(&open, "tim_streams_open{transport=\"websocket\"}"), 1.0);
    assert_eq!(value(&open, "tim_streams_open{transport=\"grpc\"}"), 1.0);

    for i in 1..=3 {
        alice.send_message(&format!("c{i}"), "carol", &format!("m{i}")).await;
    }
    // A retry is not stored again; a refused send counts by its code.
    alice.send_message("c3", "carol", "m3").await;
    carol.sender().send("bob", "across").await.unwrap();
    let refused = carol.sender().send("bob", &"x".repeat(64 * 1024 + 1)).await;
    assert!(refused.is_err());
    for _ in 1..=3 {
        next_message(&mut carol).await;
    }
    carol.sender().ack(3).await.unwrap();
    assert_eq!(next_message(&mut bob).await.body, "across");

    let after = eventually(|| async {
        let s = scrape(metrics).await;
        (value(&s, "tim_messages_acked_total") >= 3.0
            && value(&s, "tim_relay_batches_total") >= 1.0)
            .then_some(s)
    })
    .await;
    assert_eq!(value(&after, "tim_messages_stored_total"), 4.0, "{after:?}");
    assert!(value(&after, "tim_messages_delivered_total") >= 3.0, "{after:?}");
    assert_eq!(value(&after, "tim_send_refusals_total{code=\"INVALID_ARGUMENT\"}"), 1.0);
    assert!(value(&after, "tim_logins_total{outcome=\"ok\"}") >= 2.0, "{after:?}");
    assert!(value(&after, "tim_store_call_seconds_count{call=\"append\"}") >= 4.0);
    let inf = "tim_store_call_seconds_bucket{le=\"+Inf\",call=\"append\"}";
    assert!(value(&after, inf) >= 4.0, "{after:?}");
    assert_eq!(value(&after, "tim_relay_failures_total"), 0.0);

    // A send over the allowance is a rate-limit refusal, counted twice: by limit and by code.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let limited = TestNode::with(&Backend::Memory, |c| {
        c.send_rate = 1;
        c.send_burst = 1;
        c.metrics_addr = Some(addr);
    })
    .await;
    let dave = limited.connect("dave", "phone", 0).await;
    dave.sender().send("erin", "one").await.unwrap();
    assert!(dave.sender().send("erin", "two").await.is_err());
    let s = scrape(addr).await;
    assert_eq!(value(&s, "tim_rate_limit_refusals_total{limit=\"send\"}"), 1.0, "{s:?}");
    assert_eq!(value(&s, "tim_send_refusals_total{code=\"RESOURCE_EXHAUSTED\"}"), 1.0);

    // Closed streams leave the gauge.
    drop((alice, carol));
    eventually(|| async {
        let s = scrape(metrics).await;
        (value(&s, "tim_streams_open{transport=\"websocket\"}") == 0.0
            && value(&s, "tim_streams_open{transport=\"grpc\"}") == 0.0)
            .then_some(())
    })
    .await;
    let (status, _, _) = web::http(metrics, "GET", "/other", None, "").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_session_and_never_its_secrets() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tim"))
        .args(["--log-format", "json", "serve", "--addr", &addr, "--token-secret", SECRET])
        .env("RUST_LOG", "tim=debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<String>>()
    });
    let opts = tim::client::Options::default();
    let login =
        eventually(|| async { tim::client::login(&addr, "alice", "phone", "", &opts).await.ok() })
            .await;
    let session = tim::client::Session::connect(&addr, &login.token, 0, &opts).await.unwrap();
    session.sender().send("bob", "a body nobody may log").await.unwrap();
    drop(session);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.join().unwrap();
    assert!(!lines.is_empty());
    let mut named = false;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        assert!(!line.contains(&login.token) && !line.contains("nobody may log"), "{line}");
        let span = &v["span"];
        if span["name"] == "session" && span["user"] == "alice" && span["device"] == "phone" {
            assert_eq!(span["session_id"].as_str().unwrap().len(), 32, "{line}");
            assert_eq!(span["transport"], "grpc");
            named = true;
        }
    }
    assert!(named, "no line in the session's span: {lines:#?}");
}
