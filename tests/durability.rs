//! Durability with Redis: a node restart, a Redis restart under traffic, and a node that dies
//! without cleaning up. Nothing acked may be lost, duplicated or reordered.
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::redis::RedisServer;
use common::{Backend, TestNode, WAIT, eventually, expected, next_event, next_message, take};
use tim::client::{self, ClientError, Event, Options, Session};
use tonic::Code;

#[tokio::test]
async fn messages_acks_and_cursors_survive_a_node_restart() {
    let backend = Backend::redis();
    let node = TestNode::start(&backend).await;
    let alice = node.connect("alice", "phone", 0).await;
    for i in 1..=5 {
        alice.sender().send_with_id(&format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    let mut bob = node.connect("bob", "phone", 0).await;
    assert_eq!(take(&mut bob, 5).await, expected("m", 1, 5));
    bob.sender().ack(3).await.unwrap();
    bob.sender().send("alice", "sync").await.unwrap();
    drop((alice, bob));
    node.stop().await.unwrap();

    let node = TestNode::start(&backend).await;
    // bob's app lost its state: the stored cursor says where he was.
    let mut bob = node.connect("bob", "phone", 0).await;
    assert_eq!((bob.welcome.resume_from, bob.welcome.last_seq), (3, 5));
    assert_eq!(take(&mut bob, 2).await, expected("m", 4, 5));
    // A retry of a message sent before the restart is still recognised.
    let alice = node.connect("alice", "phone", 0).await;
    let again = alice.sender().send_with_id("c2", "bob", "m2").await.unwrap();
    assert_eq!((again.seq, again.duplicate), (2, true));
    // New messages continue the sequence.
    let ack = alice.sender().send("bob", "m6").await.unwrap();
    assert_eq!(ack.seq, 6);
    assert_eq!(next_message(&mut bob).await.seq, 6);
    common::assert_quiet(&mut bob, Duration::from_millis(200)).await;
}

/// Sends `body` with `id` until it is acked; returns the ack and how many attempts failed
/// with UNAVAILABLE. Any other failure fails the test.
async fn send_until_acked(s: &client::Sender, id: &str, body: &str) -> (tim::proto::SendAck, u32) {
    let mut unavailable = 0;
    loop {
        match s.send_with_id(id, "bob", body).await {
            Ok(ack) => return (ack, unavailable),
            Err(ClientError::Rejected { code: Code::Unavailable, .. }) => {
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("send {id}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_traffic_loses_nothing_acked() {
    let mut redis = RedisServer::start(true);
    let backend = Backend::redis_at(&redis);
    let node = TestNode::start(&backend).await;
    let alice = node.connect("alice", "phone", 0).await;
    let mut bob = node.connect("bob", "phone", 0).await;

    let sender = alice.sender();
    let traffic = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut unavailable = 0;
        for i in 1..=300u32 {
            let (ack, failed) = send_until_acked(&sender, &format!("c{i}"), &format!("m{i}")).await;
            unavailable += failed;
            acked.push((ack.seq, format!("m{i}")));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (acked, unavailable)
    });
    // Let traffic flow, then kill Redis without warning and bring it back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::block_in_place(|| redis.kill());
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| redis.restart());
    let (acked, unavailable) =
        tokio::time::timeout(Duration::from_secs(60), traffic).await.unwrap().unwrap();
    assert!(unavailable > 0, "sends during the outage must fail with UNAVAILABLE");

    // Every acked message was stored exactly once, in send order, seqs contiguous.
    let want: Vec<(u64, String)> = (1..=300).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(acked, want);
    // bob's stream stayed up through the outage and got each exactly once, in order.
    let mut got = Vec::new();
    while got.len() < 300 {
        match tokio::time::timeout(WAIT, bob.next_event()).await.expect("bob got everything") {
            Some(Event::Message(m)) => got.push((m.seq, m.body)),
            other => panic!("bob's stream must stay up: {other:?}"),
        }
    }
    assert_eq!(got, want);
    common::assert_quiet(&mut bob, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_route_of_a_killed_node_blocks_no_login_and_loses_no_message() {
    let backend = Backend::redis();
    let addr = format!("127.0.0.1:{}", common::process::free_port());
    let ttl = ["--route-ttl".to_string(), "2s".to_string()];
    let mut doomed = common::process::NodeProcess::start(&addr, &backend, &ttl).await;
    let opts = Options::default();
    let login =
        eventually(|| async { client::login(&addr, "bob", "phone", "", &opts).await.ok() }).await;
    let bob = Session::connect(&login.endpoint, &login.token, 0, &opts).await.unwrap();
    let tablet = client::login(&addr, "bob", "tablet", "", &opts).await.unwrap();
    let _tablet = Session::connect(&tablet.endpoint, &tablet.token, 0, &opts).await.unwrap();

    // The survivor knows the doomed node as a static peer, so its routes count until they lapse.
    let node = TestNode::with(&backend, |c| {
        c.route_ttl = Duration::from_secs(2);
        c.peers = Some(addr.clone());
    })
    .await;
    let mut presence = node.presence("bob").await;
    presence.sort();
    assert_eq!(presence, ["phone", "tablet"]);
    // The node dies without a chance to clean up.
    doomed.kill().await;
    drop(bob);

    // Messages sent meanwhile are stored and acked.
    for i in 1..=3 {
        node.send_unary("alice", &format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    // bob logs in again at once, on the surviving node: the stale route does not block him.
    let mut bob = node.connect_here("bob", "phone", 0).await;
    assert_eq!(take(&mut bob, 3).await, expected("m", 1, 3));
    // The tablet's route, left by the dead node, lapses on its own.
    eventually(|| async { (node.presence("bob").await == ["phone"]).then_some(()) }).await;
}

#[tokio::test]
async fn the_redis_key_layout_matches_the_design() {
    let backend = Backend::redis();
    let Backend::Redis { url, prefix, .. } = &backend else { unreachable!() };
    let node = TestNode::start(&backend).await;
    let _bob = node.connect("bob", "phone", 0).await;
    node.send_unary("alice", "c1", "bob", "hi").await.unwrap();
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> =
        ::redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap();
    keys.sort();
    let want: Vec<String> = [
        format!("{prefix}:ack:{{bob}}"),
        format!("{prefix}:dedup:{{bob}}:5:alice:c1"),
        format!("{prefix}:devices:{{bob}}"),
        format!("{prefix}:epoch:{{bob}}"),
        format!("{prefix}:inbox:{{bob}}"),
        format!("{prefix}:inrate:{{bob}}"),
        format!("{prefix}:log:{{d:5:alice:bob}}"),
        format!("{prefix}:low:{{bob}}"),
        format!("{prefix}:route:{{bob}}"),
        format!("{prefix}:seq:{{bob}}"),
    ]
    .into();
    // Logins of the test's helper users add nothing else (the node's own entry among the
    // writers that complete each other's group fan-outs aside: it expires too, checked below).
    let layout: Vec<String> = keys.iter().filter(|k| !k.contains(":writers:")).cloned().collect();
    assert_eq!(layout, want);
    // And a user who never comes back leaves nothing behind: every key expires by itself.
    for key in &keys {
        let ttl: i64 = ::redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
    let entry: HashMap<String, String> = {
        let reply: ::redis::streams::StreamRangeReply = ::redis::cmd("XRANGE")
            .arg(format!("{prefix}:inbox:{{bob}}"))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(reply.ids[0].id, "1-0");
        reply.ids[0]
            .map
            .iter()
            .map(|(k, v)| (k.clone(), ::redis::from_redis_value_ref::<String>(v).unwrap()))
            .collect()
    };
    assert_eq!(entry["from"], "alice");
    assert_eq!(entry["body"], "hi");
    assert_eq!(entry["client_msg_id"], "c1");
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(format!("{prefix}:dedup:{{bob}}:5:alice:c1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 24 * 3600 * 1000, "dedup keys expire: {ttl}");
}

/// An append never leaves the inbox, counter or epoch with less than its floor to live
/// (retention; retention or device TTL plus a day), yet sets those TTLs once per slack (a
/// tenth of the retention, at most an hour), not three writes per message; an inbox an append
/// creates gets its TTL at once.
#[tokio::test]
async fn appends_keep_every_ttl_above_its_floor_without_a_write_per_message() {
    let server = common::redis::RedisServer::start(false);
    let backend = Backend::redis_at(&server);
    let Backend::Redis { prefix, .. } = &backend else { unreachable!() };
    let retention = Duration::from_secs(100);
    let node = TestNode::with(&backend, |c| c.retention = retention).await;
    let floor = retention.max(common::config().device_ttl) + Duration::from_secs(86_400);
    let _bob = node.connect("bob", "phone", 0).await;
    let slack = retention / 10;
    let client = ::redis::Client::open(server.url().as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ms = |d: Duration| d.as_millis() as i64;
    let key = |kind: &str| format!("{prefix}:{kind}:{{bob}}");
    let before = server.calls(&["pexpire"]).await;
    for i in 1..=30 {
        node.send_unary("alice", &format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
        for (kind, floor) in [("inbox", retention), ("seq", floor), ("epoch", floor)] {
            let ttl: i64 =
                ::redis::cmd("PTTL").arg(key(kind)).query_async(&mut conn).await.unwrap();
            // A little under the floor at most: the time since the append.
            let (low, high) = (ms(floor) - 5_000, ms(floor + slack));
            assert!((low..=high).contains(&ttl), "{kind} after m{i}: {ttl} not in {low}..={high}");
        }
    }
    let written = server.calls(&["pexpire"]).await - before;
    assert!(written <= 6, "{written} TTL writes for 30 messages");

    // The inbox went (expired, or deleted): the next append makes one, with its TTL.
    let () = ::redis::cmd("DEL").arg(key("inbox")).query_async(&mut conn).await.unwrap();
    node.send_unary("alice", "c31", "bob", "m31").await.unwrap();
    let ttl: i64 = ::redis::cmd("PTTL").arg(key("inbox")).query_async(&mut conn).await.unwrap();
    assert!(ttl > ms(retention) - 5_000, "a new inbox expires by itself: {ttl}");
}

#[tokio::test]
async fn the_inbox_is_trimmed_below_every_cursor_and_past_retention() {
    let backend = Backend::redis();
    let Backend::Redis { url, prefix, .. } = &backend else { unreachable!() };
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let inbox = format!("{prefix}:inbox:{{bob}}");
    let node = TestNode::start(&backend).await;
    let mut phone = node.connect("bob", "phone", 0).await;
    let mut laptop = node.connect("bob", "laptop", 0).await;
    for i in 1..=6 {
        node.send_unary("alice", &format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    take(&mut phone, 6).await;
    take(&mut laptop, 4).await;
    phone.sender().ack(6).await.unwrap();
    laptop.sender().ack(4).await.unwrap();
    phone.sender().send("alice", "sync").await.unwrap();
    laptop.sender().send("alice", "sync").await.unwrap();
    // Only what the slowest device has not acked stays: m5, m6 and the copies of bob's two
    // "sync" messages (he has another device).
    let len: u64 = ::redis::cmd("XLEN").arg(&inbox).query_async(&mut conn).await.unwrap();
    assert_eq!(len, 4);
    drop((phone, laptop, node));

    // With a 1 s retention, old unacked messages go at the next append.
    let node = TestNode::with(&backend, |c| c.retention = Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    node.send_unary("alice", "c7", "bob", "m7").await.unwrap();
    let len: u64 = ::redis::cmd("XLEN").arg(&inbox).query_async(&mut conn).await.unwrap();
    assert_eq!(len, 1, "m5, m6 and the copies expired; m7 stays");
    let mut laptop = node.connect("bob", "laptop", 0).await;
    assert_eq!(take(&mut laptop, 1).await, [(9, "m7".to_string())]);
}

/// A burst of acks costs a store call or two, not one each, and the last one is stored soon
/// even while the stream stays open and quiet.
#[tokio::test]
async fn a_burst_of_acks_is_stored_as_one_cursor_move() {
    let server = common::redis::RedisServer::start(false);
    let backend = Backend::redis_at(&server);
    let node = TestNode::start(&backend).await;
    for i in 1..=50 {
        node.send_unary("alice", &format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    let mut bob = node.connect("bob", "phone", 0).await;
    take(&mut bob, 50).await;
    let client = ::redis::Client::open(server.url().as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let before = server.script_calls().await;
    for seq in 1..=50 {
        bob.sender().ack(seq).await.unwrap();
    }
    let Backend::Redis { prefix, .. } = &backend else { unreachable!() };
    let cursor = async |conn: &mut ::redis::aio::MultiplexedConnection| -> Option<u64> {
        ::redis::cmd("HGET")
            .arg(format!("{prefix}:ack:{{bob}}"))
            .arg("phone")
            .query_async(conn)
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while cursor(&mut conn).await != Some(50) {
        assert!(std::time::Instant::now() < deadline, "the last ack was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = server.script_calls().await - before;
    assert!(calls <= 5, "50 acks took {calls} script calls");
    drop(bob);
}

/// A Redis that requires a password: the node reads it from `--redis-password-file` and works;
/// without it, `run` fails at once naming the Redis it could not use, password masked.
#[tokio::test]
async fn a_redis_password_comes_from_a_file_and_never_shows() {
    let server = RedisServer::start(false);
    let set = tim_tools::harness::redis_command(server.port, "CONFIG SET requirepass s3cret-pw");
    assert!(set.starts_with("+OK"), "{set}");
    let dir = std::env::temp_dir().join(format!("tim-redis-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("password");
    std::fs::write(&file, "s3cret-pw\n").unwrap();
    let backend = Backend::redis_at(&server);

    let node = TestNode::with(&backend, |c| c.redis_password_file = Some(file.clone())).await;
    let mut bob = node.connect("bob", "phone", 0).await;
    node.send_unary("alice", "c1", "bob", "m1").await.unwrap();
    assert_eq!(take(&mut bob, 1).await, expected("m", 1, 1));
    drop((bob, node));

    // A wrong password in the URL: refused, and the error shows the URL without it.
    let mut config = common::config();
    let port = server.port;
    config.redis = Some(format!("redis://default:wrong-pw@127.0.0.1:{port}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = tim::run(listener, config, std::future::pending());
    let err = tokio::time::timeout(WAIT, run).await.unwrap().unwrap_err().to_string();
    assert!(err.contains(&format!("redis://default:***@127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("wrong-pw"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Redis over TLS, as a user of the ACL: `rediss://app@host:port` with the password from a file
/// and the server's CA from `--redis-ca`. Without the CA (system roots) or in plaintext on the
/// TLS port, the node refuses to start.
#[tokio::test]
async fn a_node_uses_redis_over_tls_as_an_acl_user() {
    let ca = common::tls::Ca::new("redis");
    let (server, tls_port) = RedisServer::start_tls(&ca.issue("redis"), &ca);
    let user = "ACL SETUSER app on >app-s3cret ~* &* +@all";
    let set = tim_tools::harness::redis_command(server.port, user);
    assert!(set.starts_with("+OK"), "{set}");
    let dir = std::env::temp_dir().join(format!("tim-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let password = dir.join("password");
    std::fs::write(&password, "app-s3cret\n").unwrap();
    let url = format!("rediss://app@127.0.0.1:{tls_port}");
    let backend = Backend::Redis { url: url.clone(), prefix: "tls".into(), cluster: false };
    let node = TestNode::with(&backend, |c| {
        c.redis_password_file = Some(password.clone());
        c.redis_ca = Some(ca.cert.clone());
    })
    .await;
    let mut bob = node.connect("bob", "phone", 0).await;
    node.send_unary("alice", "c1", "bob", "m1").await.unwrap();
    assert_eq!(take(&mut bob, 1).await, expected("m", 1, 1));
    drop((bob, node));
    let stored = tim_tools::harness::redis_command(server.port, "XLEN tls:inbox:{bob}");
    assert!(stored.starts_with(":1"), "the message is in that Redis: {stored}");

    let plaintext = url.replace("rediss://", "redis://");
    for (url, why) in [(url.clone(), "UnknownIssuer"), (plaintext, "")] {
        let mut config = common::config();
        config.redis = Some(url.clone());
        config.redis_password_file = Some(password.clone());
        config.redis_timeout = Duration::from_secs(1);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let run = tim::run(listener, config, std::future::pending());
        let err = tokio::time::timeout(WAIT, run).await.expect("gave up in time").unwrap_err();
        let err = err.to_string();
        assert!(err.contains(&format!("@127.0.0.1:{tls_port}")) && err.contains(why), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A retry of a stored message with another body: the retry's body is never shown. Two nodes
/// share one Redis but not a cluster view, so the first copy's push never reaches bob's node;
/// the retry through bob's node pushes the copy the inbox holds.
#[tokio::test]
async fn a_retry_with_another_body_pushes_the_stored_copy() {
    let backend = Backend::redis();
    let (a, b) = (TestNode::start(&backend).await, TestNode::start(&backend).await);
    let mut bob = b.connect_here("bob", "phone", 0).await;
    let first = a.send_unary("alice", "c1", "bob", "first").await.unwrap();
    let retry = b.send_unary("alice", "c1", "bob", "RETRY").await.unwrap();
    assert!(retry.duplicate && retry.seq == first.seq);
    let m = next_message(&mut bob).await;
    assert_eq!((m.seq, m.body.as_str()), (first.seq, "first"));
}

/// The inbox rate is counted in Redis, so it holds across nodes: two nodes on one Redis share
/// bob's allowance.
#[tokio::test]
async fn the_inbox_rate_holds_across_nodes() {
    let backend = Backend::redis();
    let limited = |c: &mut tim::Config| c.inbox_rate = 2;
    let a = TestNode::with(&backend, limited).await;
    let b = TestNode::with(&backend, limited).await;
    let (ta, tb) = (a.login("s1", "d").await.token, b.login("s2", "d").await.token);
    let send = async |node: &TestNode, token: &str, id: &str| {
        let req = tim::proto::SendRequest {
            client_msg_id: id.into(),
            to: "bob".into(),
            body: "x".into(),
            ..Default::default()
        };
        node.gateway().await.send(client::authorized(req, token)).await
    };
    let (r1, r2, r3) = tokio::join!(send(&a, &ta, "a1"), send(&a, &ta, "a2"), send(&b, &tb, "b1"));
    let refused: Vec<_> = [r1, r2, r3].into_iter().filter_map(Result::err).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].code(), Code::ResourceExhausted);
}

/// Cursors written before the lowest-cursor sorted set existed (or by an older node during a
/// rolling upgrade) still hold the inbox: nothing a listed device has not acked is trimmed.
#[tokio::test]
async fn cursors_from_before_the_sorted_set_still_hold_the_inbox() {
    let backend = Backend::redis();
    let Backend::Redis { url, prefix, .. } = &backend else { unreachable!() };
    let node = TestNode::start(&backend).await;
    for i in 1..=3 {
        node.send_unary("alice", &format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let old: i64 = ::redis::cmd("HSET")
        .arg(format!("{prefix}:ack:{{bob}}"))
        .arg(&["laptop", "0", "phone", "0"][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(old, 2);
    let mut phone = node.connect("bob", "phone", 0).await;
    assert_eq!(take(&mut phone, 3).await, expected("m", 1, 3));
    phone.sender().ack(3).await.unwrap();
    let cursor = format!("{prefix}:ack:{{bob}}");
    eventually(|| {
        let (mut conn, cursor) = (conn.clone(), cursor.clone());
        async move {
            let stored: Option<u64> = ::redis::cmd("HGET")
                .arg(&cursor)
                .arg("phone")
                .query_async(&mut conn)
                .await
                .unwrap();
            (stored == Some(3)).then_some(())
        }
    })
    .await;
    drop(phone);
    let mut laptop = node.connect("bob", "laptop", 0).await;
    assert_eq!(take(&mut laptop, 3).await, expected("m", 1, 3), "the laptop's cursor held them");
}

/// Redis rolled back under the clients (a restore, a failover, a lost fsync) that kept the
/// epoch: seqs 4 and 5 are given out again to new, acked messages. A device that saw the old 4
/// and 5 names message 5's id at Hello; the node notices the inbox holds another message 5,
/// starts a new epoch and resumes from the stored cursor, so the new 4 and 5 arrive. A device
/// connected throughout is told to reconnect as soon as a reused seq reaches it.
#[tokio::test]
async fn a_rolled_back_inbox_is_noticed_and_no_acked_message_is_skipped() {
    let backend = Backend::redis();
    let Backend::Redis { url, prefix, .. } = &backend else { unreachable!() };
    let node = TestNode::start(&backend).await;
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for i in 1..=3 {
        node.send_unary("alice", &format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    let mut phone = node.connect("bob", "phone", 0).await;
    assert_eq!(take(&mut phone, 3).await, expected("m", 1, 3));
    phone.sender().ack(3).await.unwrap();
    let mut laptop = node.connect("bob", "laptop", 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The backup: every key of bob's, as it is now.
    let backup = backup(&mut conn, prefix, "bob").await;
    for i in 4..=5 {
        node.send_unary("alice", &format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    let seen = [next_message(&mut phone).await, next_message(&mut phone).await];
    assert_eq!(take(&mut laptop, 2).await, expected("m", 4, 5));
    phone.sender().ack(5).await.unwrap();
    let epoch = phone.welcome.inbox_epoch.clone();
    drop(phone);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The restore.
    restore(&mut conn, &backup).await;
    let six = node.send_unary("alice", "c6", "bob", "m6").await.unwrap();
    let seven = node.send_unary("alice", "c7", "bob", "m7").await.unwrap();
    assert_eq!((six.seq, seven.seq), (4, 5), "the rolled-back inbox gave 4 and 5 out again");

    // The laptop, connected throughout, is told to reconnect.
    match next_event(&mut laptop).await {
        Event::Closed(Some(s)) => {
            assert_eq!(s.code(), Code::Unavailable, "{s:?}");
            assert!(s.message().contains("rolled back"), "{s:?}");
        }
        other => panic!("expected the stream to end, got {other:?}"),
    }
    // The phone resumes after 5, naming the message 5 it saw.
    let token = node.login("bob", "phone").await.token;
    let mut phone =
        Session::resume(&node.endpoint(), &token, 5, &epoch, &seen[1].msg_id, &Options::default())
            .await
            .unwrap();
    assert_ne!(phone.welcome.inbox_epoch, epoch, "a new epoch: old seqs mean nothing");
    assert_eq!(phone.welcome.resume_from, 3, "from the stored cursor");
    let got = take(&mut phone, 2).await;
    assert_eq!(got, vec![(4, "m6".to_string()), (5, "m7".to_string())], "nothing acked skipped");
}

/// Memory is bounded in bytes per session: four devices of one user that never read while
/// 1,400 messages of 60 KiB arrive cost the node a few MiB each (feed and outbound queue), not
/// the whole backlog; and a client that takes a frame now and then, but never drains its queue,
/// is still cut off. Nothing is lost: it is all in the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_devices_cost_bounded_memory_and_slow_readers_are_cut_off() {
    use common::process::{NodeProcess, free_port};
    use tim::proto::{ClientFrame, chat_client::ChatClient, client_frame};
    let backend = Backend::redis();
    let addr = format!("127.0.0.1:{}", free_port());
    // Queues of 16 MiB per stream, but 2 MiB for the whole node: the node's budget is the bound.
    let flags = ["--send-rate", "0", "--inbox-rate", "0", "--slow-client-timeout", "3s"];
    let budget = ["--outbound-bytes", "16777216", "--node-queue-bytes", "2097152"];
    let flags = [&flags[..], &budget[..]].concat();
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    let node = NodeProcess::start(&addr, &backend, &flags).await;
    let opts = Options::default();
    // Four devices say Hello and never read.
    let mut held = Vec::new();
    for device in ["d1", "d2", "d3", "d4"] {
        let token = client::login(&addr, "bob", device, "", &opts).await.unwrap().token;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let hello = tim::proto::Hello { token, ..Default::default() };
        tx.send(ClientFrame { frame: Some(client_frame::Frame::Hello(hello)) }).await.unwrap();
        let channel = client::channel(&addr, &opts).await.unwrap();
        let stream = ChatClient::new(channel)
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap();
        held.push((tx, stream));
    }
    let before = node.rss();
    let body = "z".repeat(60 * 1024);
    let token = client::login(&addr, "alice", "server", "", &opts).await.unwrap().token;
    let mut gateway = tim::proto::gateway_client::GatewayClient::new(
        client::channel(&addr, &opts).await.unwrap(),
    );
    for i in 0..1400 {
        let req = tim::proto::SendRequest {
            client_msg_id: format!("c{i}"),
            to: "bob".into(),
            body: body.clone(),
            ..Default::default()
        };
        gateway.send(client::authorized(req, &token)).await.unwrap();
    }
    let grown = node.rss().saturating_sub(before);
    // 84 MB went through; the node may queue 2 MiB for all four, plus HTTP/2 windows and
    // allocator slack (without the node's budget, four 16 MiB queues would fill).
    eprintln!("node grew {} MiB", grown / (1024 * 1024));
    assert!(grown < 48 * 1024 * 1024, "node grew {} MiB", grown / (1024 * 1024));
    drop(held);

    // A reader that takes one frame a second: its queue never drains, so it is cut off.
    let token = client::login(&addr, "bob", "slow", "", &opts).await.unwrap().token;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let hello = tim::proto::Hello { token, ..Default::default() };
    tx.send(ClientFrame { frame: Some(client_frame::Frame::Hello(hello)) }).await.unwrap();
    let channel = client::channel(&addr, &opts).await.unwrap();
    let mut slow = ChatClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let reader = tokio::spawn(async move {
        while let Ok(Some(_)) = slow.message().await {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    });
    // The node ends it (the status reaches the client only after what its HTTP/2 window
    // already holds): its route goes.
    let bob = client::login(&addr, "bob", "watcher", "", &opts).await.unwrap().token;
    let devices = || async {
        let req = tim::proto::PresenceRequest { user_id: "bob".into() };
        let mut gateway = tim::proto::gateway_client::GatewayClient::new(
            client::channel(&addr, &opts).await.unwrap(),
        );
        let reply = gateway.presence(client::authorized(req, &bob)).await.unwrap().into_inner();
        reply.devices.into_iter().map(|d| d.device).collect::<Vec<_>>()
    };
    eventually(|| async { devices().await.contains(&"slow".to_string()).then_some(()) }).await;
    let started = std::time::Instant::now();
    eventually(|| async { (!devices().await.contains(&"slow".to_string())).then_some(()) }).await;
    assert!(started.elapsed() < Duration::from_secs(8), "cut off after {:?}", started.elapsed());
    reader.abort();
    drop(tx);
    // Everything is still in the inbox.
    let mut bob = Session::connect(
        &addr,
        &client::login(&addr, "bob", "d1", "", &opts).await.unwrap().token,
        0,
        &opts,
    )
    .await
    .unwrap();
    assert_eq!(bob.welcome.last_seq, 1400);
    assert_eq!(next_message(&mut bob).await.seq, 1);
}

/// With --redis-wait-replicas 1, a send is acked only once a replica has it: with the replica
/// gone, sends fail with UNAVAILABLE (outcome unknown) instead of being acked on the primary
/// alone, and the retry with the same id is answered once a replica is back.
#[tokio::test]
async fn with_wait_replicas_a_send_is_acked_only_once_a_replica_has_it() {
    let primary = RedisServer::start(false);
    let mut replica = RedisServer::start_replica_of(primary.port);
    let synced = || {
        let info = tim_tools::harness::redis_command(primary.port, "INFO replication");
        info.contains("connected_slaves:1") && info.contains("state=online")
    };
    eventually(|| async { synced().then_some(()) }).await;
    let backend = Backend::redis_at(&primary);
    let node = TestNode::with(&backend, |c| {
        c.redis_wait_replicas = 1;
        c.redis_timeout = Duration::from_secs(1);
    })
    .await;
    node.send_unary("alice", "c1", "bob", "m1").await.unwrap();
    replica.kill();
    let err = node.send_unary("alice", "c2", "bob", "m2").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    replica.restart();
    eventually(|| async { synced().then_some(()) }).await;
    let retry = node.send_unary("alice", "c2", "bob", "m2").await.unwrap();
    assert!(retry.duplicate, "the primary had it: the retry finds it");
}

/// A Cluster node that died between the steps of a direct message (logged in the conversation,
/// not yet in the recipient's inbox) left its in-flight mark: another node's sweep stores the
/// message from its log entry, once, as the sender's retry would. The dead node's state is
/// written here as `log.lua` and the mark would have left it.
#[tokio::test]
async fn a_direct_message_cut_short_between_steps_is_completed_by_a_sweep() {
    use tim::store::{Inbox, RedisStore, StoreOptions};
    let backend = Backend::redis();
    let Backend::Redis { url, prefix, .. } = &backend else { unreachable!() };
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let conv = "d:5:alice:bob";
    let now = tim::auth::unix_ms(std::time::SystemTime::now());
    let _: String = ::redis::cmd("XADD")
        .arg(format!("{prefix}:log:{{{conv}}}"))
        .arg("0-*")
        .arg(&["from", "alice", "to", "bob", "client_msg_id", "c1", "body", "cut short"])
        .arg(&["msg_id", "m1", "sent_at", &now.to_string()])
        .query_async(&mut conn)
        .await
        .unwrap();
    let logged = format!("1|m1|{now}");
    let _: () = ::redis::cmd("SET")
        .arg(format!("{prefix}:logdedup:{{{conv}}}:5:alice:c1"))
        .arg(logged)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mark = format!("{conv} alice c1");
    let _: i64 = ::redis::cmd("ZADD")
        .arg(format!("{prefix}:inflight:{{w:dead}}"))
        .arg(now - 60_000)
        .arg(&mark)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = ::redis::cmd("ZADD")
        .arg(format!("{prefix}:writers:{{all}}"))
        .arg(now - 60_000)
        .arg("dead")
        .query_async(&mut conn)
        .await
        .unwrap();

    let urls = vec![url.clone()];
    let opts = StoreOptions::default();
    let store =
        RedisStore::connect(&urls, false, Duration::from_secs(2), prefix, opts).await.unwrap();
    assert_eq!(store.sweep_fanout(Duration::from_secs(10)).await.unwrap(), 1);
    let inbox = store.read("bob", 0, 10).await.unwrap();
    let got: Vec<_> = inbox.iter().map(|m| (m.seq, m.conv_seq, m.msg_id.as_str())).collect();
    assert_eq!(got, [(1, 1, "m1")], "stored once, as logged");
    assert_eq!(store.sweep_fanout(Duration::ZERO).await.unwrap(), 0, "the mark is gone");
    // And the sender's retry now finds it stored.
    let node = TestNode::start(&backend).await;
    let again = node.send_unary("alice", "c1", "bob", "cut short").await.unwrap();
    assert!(again.duplicate && again.seq == 1 && again.conv_seq == 1, "{again:?}");
}

/// Redis rolled back (a failover to a replica that lagged) between a message reaching the
/// device and the device's ack of it: the ack names a seq the inbox no longer has. It stores
/// nothing; the stream ends so that the device resumes; the inbox gets a new epoch, and the next
/// message, given that seq again, reaches the device.
#[tokio::test]
async fn an_ack_past_a_rolled_back_inbox_stores_nothing_and_the_reused_seq_arrives() {
    let backend = Backend::redis();
    let Backend::Redis { url, prefix, .. } = &backend else { unreachable!() };
    let node = TestNode::start(&backend).await;
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for i in 1..=3 {
        node.send_unary("alice", &format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    let mut phone = node.connect("bob", "phone", 0).await;
    assert_eq!(take(&mut phone, 3).await, expected("m", 1, 3));
    phone.sender().ack(3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let backup = backup(&mut conn, prefix, "bob").await;
    node.send_unary("alice", "c4", "bob", "m4").await.unwrap();
    assert_eq!(take(&mut phone, 1).await, expected("m", 4, 4));
    let epoch = phone.welcome.inbox_epoch.clone();
    // The rollback: seq 4 is gone, the cursor back at 3.
    restore(&mut conn, &backup).await;
    phone.sender().ack(4).await.unwrap();
    match next_event(&mut phone).await {
        Event::Closed(Some(s)) => {
            assert_eq!(s.code(), Code::Unavailable, "{s:?}");
            assert!(s.message().contains("rolled back"), "{s:?}");
        }
        other => panic!("expected the stream to end, got {other:?}"),
    }
    let cursors: HashMap<String, u64> = ::redis::cmd("HGETALL")
        .arg(format!("{prefix}:ack:{{bob}}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(cursors.get("phone"), Some(&3), "the refused ack stored nothing");
    let five = node.send_unary("alice", "c5", "bob", "m5").await.unwrap();
    assert_eq!(five.seq, 4, "seq 4 given out again");
    let token = node.login("bob", "phone").await.token;
    let (endpoint, opts) = (node.endpoint(), Options::default());
    let mut phone = Session::resume(&endpoint, &token, 4, &epoch, "", &opts).await.unwrap();
    assert_ne!(phone.welcome.inbox_epoch, epoch, "a new epoch: old seqs mean nothing");
    assert_eq!(take(&mut phone, 1).await, vec![(4, "m5".to_string())], "nothing acked skipped");
}

/// Every key of `user`'s (its hash tag), dumped as it is now: the state a rollback goes back to.
async fn backup(
    conn: &mut ::redis::aio::MultiplexedConnection,
    prefix: &str,
    user: &str,
) -> Vec<(String, Vec<u8>)> {
    let pattern = format!("{prefix}:*{{{user}}}*");
    let keys: Vec<String> = ::redis::cmd("KEYS").arg(&pattern).query_async(conn).await.unwrap();
    let mut backup = Vec::new();
    for key in keys {
        let dump: Vec<u8> = ::redis::cmd("DUMP").arg(&key).query_async(conn).await.unwrap();
        backup.push((key, dump));
    }
    backup
}

/// Puts each key of `backup` back as it was (keys written since and not in it stay).
async fn restore(conn: &mut ::redis::aio::MultiplexedConnection, backup: &[(String, Vec<u8>)]) {
    for (key, dump) in backup {
        let mut restore = ::redis::cmd("RESTORE");
        restore.arg(key).arg(0).arg(dump.as_slice()).arg("REPLACE");
        let () = restore.query_async(conn).await.unwrap();
    }
}
