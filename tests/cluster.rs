//! Several nodes as one service: Consul registration and discovery (against the API double, and
//! a real agent when CONSUL_HTTP_ADDR is set), login placement by strategy, cross-node delivery
//! and takeover, and nodes leaving.
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::consul::ConsulDouble;
use common::{
    Backend, NODE_SECRET, SECRET, TestNode, WAIT, assert_quiet, eventually, next_event,
    next_message,
};
use futures_util::StreamExt as _;
use tim::client::{self, Event, Options};
use tim::discovery::consul::ConsulClient;
use tim::discovery::{ConsulDiscovery, ConsulRegistration, Discovery, Update};
use tim::lb::StrategyKind;
use tim::proto;

const TTL: Duration = Duration::from_secs(1);

/// A node that registers in `consul` with a check TTL of [`TTL`], its config changed by `f`.
async fn consul_node(
    consul: &ConsulDouble,
    backend: &Backend,
    f: impl FnOnce(&mut tim::Config),
) -> TestNode {
    TestNode::with(backend, |c| {
        c.consul = Some(consul.url());
        c.consul_ttl = TTL;
        f(c);
    })
    .await
}

/// Starts `n` nodes registered in `consul`, sharing `backend`, and waits until each sees all.
async fn cluster(
    n: usize,
    consul: &ConsulDouble,
    backend: &Backend,
    lb: StrategyKind,
) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(consul_node(consul, backend, |c| c.lb = lb).await);
    }
    for node in &nodes {
        let want = nodes.len();
        eventually(|| async {
            // Enough distinct users that even consistent hashing reaches every node.
            (endpoints_seen_by(node, 30 * want).await.len() == want).then_some(())
        })
        .await;
    }
    nodes
}

/// The endpoints Login hands out from `node` over `logins` logins of distinct users.
async fn endpoints_seen_by(node: &TestNode, logins: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    let Ok(ch) = client::channel(&node.endpoint(), &Options::default()).await else { return seen };
    let mut gw = tim::proto::gateway_client::GatewayClient::new(ch);
    for i in 0..logins {
        let req = tim::proto::LoginRequest {
            user_id: format!("probe-{i}"),
            device: "d".into(),
            jwt: String::new(),
        };
        match gw.login(req).await {
            Ok(l) => *seen.entry(l.into_inner().endpoint).or_default() += 1,
            Err(e) => eprintln!("login failed: {e}"),
        }
    }
    seen
}

/// A group whose members hold their streams on different nodes: each message and event is
/// relayed to the nodes holding members, and a removal stops delivery there too. Redis Cluster
/// keeps the group, its log and each member's inbox in different slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spans_nodes_and_a_removal_stops_delivery_everywhere() {
    group_across_nodes(1000).await;
}

/// The same with a group past the fan-out limit: each message is broadcast once to every node,
/// which hands it to its members' sessions (and, after the removal, not to the removed one's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_group_spans_nodes_and_a_removal_stops_delivery_everywhere() {
    group_across_nodes(1).await;
}

async fn group_across_nodes(fanout: u32) {
    use tim::proto::{self, groups_client::GroupsClient};
    let consul = ConsulDouble::start().await;
    let backend = Backend::redis_cluster();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let lb = StrategyKind::RoundRobin;
        nodes.push(
            consul_node(&consul, &backend, |c| (c.lb, c.group_fanout_limit) = (lb, fanout)).await,
        );
    }
    for node in &nodes {
        eventually(|| async { (endpoints_seen_by(node, 60).await.len() == 2).then_some(()) }).await;
    }
    let alice = nodes[0].connect_here("alice", "phone", 0).await;
    let mut bob = nodes[1].connect_here("bob", "phone", 0).await;
    let mut carol = nodes[1].connect_here("carol", "phone", 0).await;
    let token = nodes[0].login("alice", "phone").await.token;
    let ch = client::channel(&nodes[0].endpoint(), &Options::default()).await.unwrap();
    let mut groups = GroupsClient::new(ch);
    let req = proto::CreateGroupRequest {
        name: "across".into(),
        members: vec!["bob".into(), "carol".into()],
        history_for_new_members: false,
    };
    let group = groups.create_group(client::authorized(req, &token)).await.unwrap();
    let group = group.into_inner().group.unwrap().id;
    for i in 1..=5 {
        alice.sender().send_to_group(&format!("c{i}"), &group, &format!("m{i}")).await.unwrap();
    }
    for member in [&mut bob, &mut carol] {
        assert!(next_message(member).await.event.is_some(), "the creation first");
        for i in 1..=5 {
            assert_eq!(next_message(member).await.body, format!("m{i}"));
        }
    }
    let req = proto::ChangeMembersRequest { group: group.clone(), users: vec!["carol".into()] };
    groups.remove_members(client::authorized(req, &token)).await.unwrap();
    assert!(next_message(&mut carol).await.event.is_some(), "her removal is her last");
    assert!(next_message(&mut bob).await.event.is_some());
    alice.sender().send_to_group("c6", &group, "after").await.unwrap();
    assert_eq!(next_message(&mut bob).await.body, "after");
    common::assert_quiet(&mut carol, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_nodes_chat_both_ways() {
    let consul = ConsulDouble::start().await;
    let backend = Backend::redis();
    let nodes = cluster(3, &consul, &backend, StrategyKind::RoundRobin).await;
    let mut alice = nodes[0].connect_here("alice", "phone", 0).await;
    let mut bob = nodes[1].connect_here("bob", "phone", 0).await;
    let mut bob_tablet = nodes[2].connect_here("bob", "tablet", 0).await;
    for i in 1..=5 {
        alice.sender().send("bob", &format!("a{i}")).await.unwrap();
        bob.sender().send("alice", &format!("b{i}")).await.unwrap();
    }
    // Bob has two devices: each gets what he sent (from the phone, on another node) in order
    // with what he received.
    for i in 1..=5 {
        for device in [&mut bob, &mut bob_tablet] {
            assert_eq!(next_message(device).await.body, format!("a{i}"));
            assert_eq!(next_message(device).await.body, format!("b{i}"));
        }
        assert_eq!(next_message(&mut alice).await.body, format!("b{i}"));
    }
    // A sender on a node that holds none of the recipient's streams: relayed, not polled.
    let started = Instant::now();
    nodes[2].send_unary("carol", "c1", "alice", "from afar").await.unwrap();
    assert_eq!(next_message(&mut alice).await.body, "from afar");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "pushed by relay, not by the periodic catch-up"
    );
}

/// The next event, which must be a signal.
async fn next_signal(s: &mut client::Session) -> proto::Signal {
    match next_event(s).await {
        Event::Signal(signal) => signal,
        other => panic!("expected a signal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_reads_reach_members_on_other_nodes_and_nothing_is_stored() {
    use proto::signal::Kind;
    let consul = ConsulDouble::start().await;
    let backend = Backend::redis();
    let nodes = cluster(2, &consul, &backend, StrategyKind::RoundRobin).await;
    let direct = tim::ids::Conversation::direct("alice", "bob").id();
    let mut alice = nodes[0].connect_here("alice", "phone", 0).await;
    let mut bob = nodes[1].connect_here("bob", "phone", 0).await;
    let mut tablet = nodes[0].connect_here("bob", "tablet", 0).await;
    // A burst of typing is relayed once a second at most.
    for _ in 0..5 {
        alice.sender().typing(&direct).await.unwrap();
    }
    for device in [&mut bob, &mut tablet] {
        let s = next_signal(device).await;
        assert_eq!(
            (s.kind(), s.user_id.as_str(), s.conversation.as_str()),
            (Kind::Typing, "alice", direct.as_str())
        );
        assert!(s.expires_in_ms > 0, "it expires by itself");
    }
    assert_quiet(&mut bob, Duration::from_millis(300)).await;
    assert_quiet(&mut alice, Duration::from_millis(100)).await;
    // Never stored: the first message is the conversation's first and the inbox's first.
    alice.sender().send("bob", "hi").await.unwrap();
    let m = next_message(&mut bob).await;
    assert_eq!((m.seq, m.conv_seq, m.body.as_str()), (1, 1, "hi"));
    assert_eq!(next_message(&mut tablet).await.seq, 1);
    // Bob reads it on his phone's node: alice (on the other node) and his devices hear of it.
    let token = nodes[1].login("bob", "phone").await.token;
    let req = proto::MarkReadRequest { conversation: direct.clone(), ..Default::default() };
    let mut gw = nodes[1].gateway().await;
    gw.mark_read(client::authorized(req, &token)).await.unwrap();
    for device in [&mut alice, &mut tablet, &mut bob] {
        let s = next_signal(device).await;
        assert_eq!((s.kind(), s.user_id.as_str(), s.conv_seq), (Kind::Read, "bob", 1));
    }
    // Someone else's conversation: the stream ends, nothing relayed.
    let mut mallory = nodes[0].connect_here("mallory", "phone", 0).await;
    mallory.sender().typing(&direct).await.unwrap();
    match next_event(&mut mallory).await {
        Event::Closed(Some(status)) => assert_eq!(status.code(), tonic::Code::PermissionDenied),
        other => panic!("expected the stream to end, got {other:?}"),
    }
    assert_quiet(&mut bob, Duration::from_millis(300)).await;
}

/// The unread counts the Welcome of `user`'s `device` on `node` gives: (total, conversations).
async fn welcome_unread(node: &TestNode, user: &str, device: &str) -> (Option<u64>, u32) {
    let s = node.connect_here(user, device, 0).await;
    (s.welcome.unread_total, s.welcome.unread_conversations)
}

/// Marks `conversation` read for `user` up to `conv_seq` (0: its newest), through `node`.
async fn mark_read(node: &TestNode, user: &str, conversation: &str, conv_seq: u64) {
    let token = node.login(user, "reader").await.token;
    let req = proto::MarkReadRequest {
        conversation: conversation.into(),
        conv_seq,
        ..Default::default()
    };
    node.gateway().await.mark_read(client::authorized(req, &token)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_agree_across_devices_nodes_and_members() {
    use tim::proto::groups_client::GroupsClient;
    let consul = ConsulDouble::start().await;
    let backend = Backend::redis();
    let nodes = cluster(2, &consul, &backend, StrategyKind::RoundRobin).await;
    let direct = tim::ids::Conversation::direct("alice", "bob").id();
    // Carol makes a group of three and writes in it twice; bob writes alice three times.
    let token = nodes[1].login("carol", "phone").await.token;
    let ch = client::channel(&nodes[1].endpoint(), &Options::default()).await.unwrap();
    let req = proto::CreateGroupRequest {
        name: "three".into(),
        members: vec!["alice".into(), "bob".into()],
        history_for_new_members: false,
    };
    let group = GroupsClient::new(ch).create_group(client::authorized(req, &token)).await;
    let group = group.unwrap().into_inner().group.unwrap().id;
    let carol = nodes[1].connect_here("carol", "phone", 0).await;
    for i in 1..=2 {
        carol.sender().send_to_group(&format!("c{i}"), &group, "hi all").await.unwrap();
    }
    for i in 1..=3 {
        nodes[1].send_unary("bob", &format!("b{i}"), "alice", "hi").await.unwrap();
    }
    // The index is written after the ack: wait for it, then every view agrees.
    eventually(|| async {
        let page = nodes[0].list_conversations("alice", 0, "").await.unwrap();
        (page.total_unread == 5).then_some(())
    })
    .await;
    assert_eq!(welcome_unread(&nodes[0], "alice", "phone").await, (Some(5), 2));
    assert_eq!(welcome_unread(&nodes[1], "alice", "tablet").await, (Some(5), 2));
    assert_eq!(welcome_unread(&nodes[0], "bob", "phone").await, (Some(2), 1));
    assert_eq!(welcome_unread(&nodes[1], "carol", "tablet").await, (Some(0), 0), "her own");
    // Alice reads two of bob's on one node: both her devices, on either node, count one less.
    mark_read(&nodes[0], "alice", &direct, 2).await;
    assert_eq!(welcome_unread(&nodes[1], "alice", "tablet").await, (Some(3), 2));
    assert_eq!(welcome_unread(&nodes[0], "alice", "phone").await, (Some(3), 2));
    let page = nodes[1].list_conversations("alice", 0, "").await.unwrap();
    assert_eq!(page.total_unread, 3);
    // The group read on the other: only bob's last one is left, in one conversation.
    mark_read(&nodes[1], "alice", &group, 0).await;
    assert_eq!(welcome_unread(&nodes[0], "alice", "phone").await, (Some(1), 1));
    // Bob's count is his own: untouched by alice's reads, gone with his.
    assert_eq!(welcome_unread(&nodes[1], "bob", "phone").await, (Some(2), 1));
    mark_read(&nodes[0], "bob", &group, 0).await;
    assert_eq!(welcome_unread(&nodes[1], "bob", "phone").await, (Some(0), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_places_users_as_the_strategy_says() {
    let consul = ConsulDouble::start().await;
    let backend = Backend::redis();
    let nodes = cluster(3, &consul, &backend, StrategyKind::RoundRobin).await;
    let seen = endpoints_seen_by(&nodes[0], 30).await;
    assert_eq!(seen.len(), 3);
    assert!(seen.values().all(|n| *n == 10), "round-robin rotates exactly: {seen:?}");
    drop(nodes);

    let consul = ConsulDouble::start().await;
    let nodes = cluster(3, &consul, &backend, StrategyKind::ConsistentHash).await;
    // Every gateway sends a user to the same node, every time.
    for i in 0..20 {
        let user = format!("user-{i}");
        let mut targets = Vec::new();
        for node in &nodes {
            targets.push(node.login(&user, "d").await.endpoint);
        }
        assert!(targets.windows(2).all(|w| w[0] == w[1]), "{user}: {targets:?}");
    }
    let spread = endpoints_seen_by(&nodes[1], 300).await;
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(spread.values().all(|n| *n > 50), "consistent hashing spreads users: {spread:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_sends_logins_to_the_emptier_node() {
    let consul = ConsulDouble::start().await;
    let backend = Backend::redis();
    let nodes = cluster(2, &consul, &backend, StrategyKind::LeastLoaded).await;
    let mut held = Vec::new();
    for i in 0..20 {
        held.push(nodes[0].connect_here(&format!("busy-{i}"), "d", 0).await);
    }
    // The load reaches Consul's Meta with the next check pass, and the other nodes with the watch.
    let busy = nodes[0].endpoint();
    eventually(|| async {
        let meta = consul.meta(&busy)?;
        (meta["connections"] == "20").then_some(())
    })
    .await;
    // Once node 1 sees it, every login it places goes to the emptier node.
    let empty = nodes[1].endpoint();
    eventually(|| async {
        let seen = endpoints_seen_by(&nodes[1], 4).await;
        (seen.get(&empty) == Some(&4)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_every_view_within_the_ttl() {
    let consul = ConsulDouble::start().await;
    let backend = Backend::redis();
    let Backend::Redis { url, prefix, .. } = &backend else { unreachable!() };
    let nodes = cluster(2, &consul, &backend, StrategyKind::RoundRobin).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let doomed_addr = format!("127.0.0.1:{port}");
    let mut doomed = tokio::process::Command::new(env!("CARGO_BIN_EXE_tim"))
        .args(["serve", "--addr", &doomed_addr, "--redis", url, "--redis-prefix", prefix])
        .args([
            "--token-secret",
            SECRET,
            "--node-secret",
            NODE_SECRET,
            "--consul",
            &consul.url(),
            "--consul-ttl",
            "1s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for node in &nodes {
        eventually(|| async {
            endpoints_seen_by(node, 12).await.contains_key(&doomed_addr).then_some(())
        })
        .await;
    }
    // bob is on the doomed node; alice elsewhere.
    let login = client::login(&doomed_addr, "bob", "phone", "", &Options::default()).await.unwrap();
    let bob =
        client::Session::connect(&doomed_addr, &login.token, 0, &Options::default()).await.unwrap();
    doomed.kill().await.unwrap();
    let killed = Instant::now();
    drop(bob);
    for node in &nodes {
        eventually(|| async { (!consul.passing().contains(&doomed_addr)).then_some(()) }).await;
        eventually(|| async {
            (!endpoints_seen_by(node, 12).await.contains_key(&doomed_addr)).then_some(())
        })
        .await;
    }
    let gone_after = killed.elapsed();
    // The TTL, plus the reaper, the watch and the logins above on a busy 2-core machine.
    assert!(gone_after < TTL * 3, "left the views after {gone_after:?}");
    // From now on Login never hands it out, and its routes count as gone.
    for node in &nodes {
        let seen = endpoints_seen_by(node, 30).await;
        assert!(!seen.contains_key(&doomed_addr), "{seen:?}");
        assert!(node.presence("bob").await.is_empty());
    }
    // Messages to bob wait for him on a live node.
    nodes[0].send_unary("alice", "k1", "bob", "still here").await.unwrap();
    let mut bob = nodes[1].connect_here("bob", "phone", 0).await;
    assert_eq!(next_message(&mut bob).await.body, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_session_on_another_node_kicks_the_older_one() {
    let consul = ConsulDouble::start().await;
    let backend = Backend::redis();
    let nodes = cluster(2, &consul, &backend, StrategyKind::RoundRobin).await;
    let mut old = nodes[0].connect_here("bob", "phone", 0).await;
    let mut new = nodes[1].connect_here("bob", "phone", 0).await;
    match next_event(&mut old).await {
        Event::Kicked(_) => {}
        other => panic!("expected Kicked, got {other:?}"),
    }
    nodes[0].send_unary("alice", "k1", "bob", "to the new one").await.unwrap();
    assert_eq!(next_message(&mut new).await.body, "to the new one");
    assert_eq!(nodes[0].presence("bob").await, ["phone"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_on_one_node_ends_the_devices_stream_on_another() {
    let consul = ConsulDouble::start().await;
    let backend = Backend::redis();
    let nodes = cluster(2, &consul, &backend, StrategyKind::RoundRobin).await;
    let mut phone = nodes[1].connect_here("bob", "phone", 0).await;
    let laptop = nodes[0].login("bob", "laptop").await.token;
    let req = tim::proto::LogoutRequest { device: "phone".into() };
    nodes[0].gateway().await.logout(client::authorized(req, &laptop)).await.unwrap();
    match next_event(&mut phone).await {
        Event::LoggedOut(_) => {}
        other => panic!("expected LoggedOut, got {other:?}"),
    }
    assert!(matches!(next_event(&mut phone).await, Event::Closed(Some(_))));
    assert!(nodes[1].presence("bob").await.is_empty());
}

/// A node registered in `consul` (and seen passing there) whose drain lasts `drain_grace` when a
/// client does not read (small outbound queue, no slow-client cut-off meanwhile).
async fn registered_node(
    consul: &ConsulDouble,
    backend: &Backend,
    drain_grace: Duration,
) -> TestNode {
    let node = consul_node(consul, backend, |c| {
        c.outbound_queue = 8;
        c.slow_client_timeout = Duration::from_secs(60);
        c.drain_grace = drain_grace;
    })
    .await;
    let id = node.endpoint();
    eventually(|| async { consul.passing().contains(&id).then_some(()) }).await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_deregisters_and_consul_outages_keep_the_last_view() {
    let consul = ConsulDouble::start().await;
    let backend = Backend::redis();
    let nodes = cluster(2, &consul, &backend, StrategyKind::RoundRobin).await;
    let leaving = registered_node(&consul, &backend, Duration::from_secs(3)).await;
    let leaving_id = leaving.endpoint();
    // A client that does not read keeps the drain busy for its whole grace, longer than a
    // heartbeat period: the heartbeat must not register the node again meanwhile.
    let _held = leaving.stuffed_session("slow").await;
    let stopping = tokio::spawn(leaving.stop());
    // Deregistered at once, not after the TTL, and it stays away while it drains.
    eventually(|| async { (!consul.passing().contains(&leaving_id)).then_some(()) }).await;
    for _ in 0..10 {
        tokio::time::sleep(TTL / 5).await;
        assert!(!consul.passing().contains(&leaving_id), "re-registered while draining");
    }
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap().unwrap();
    eventually(|| async { (endpoints_seen_by(&nodes[0], 8).await.len() == 2).then_some(()) }).await;

    // Consul goes down: logins keep working on the last known set.
    consul.set_down(true);
    tokio::time::sleep(TTL * 2).await;
    let seen = endpoints_seen_by(&nodes[0], 10).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    // It comes back: registrations are renewed and the view stays whole.
    consul.set_down(false);
    eventually(|| async { (consul.passing().len() == 2).then_some(()) }).await;
    let seen = endpoints_seen_by(&nodes[1], 10).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// `run` returns with every task it started: its Consul watch does not poll on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_stops_watching_consul() {
    let consul = ConsulDouble::start().await;
    let node = registered_node(&consul, &Backend::redis(), Duration::from_secs(1)).await;
    // A client that does not read keeps the drain busy for its grace: the watch sees the node
    // deregister and asks again while the node still runs.
    let _held = node.stuffed_session("slow").await;
    node.stop().await.unwrap();
    let after_stop = consul.health_queries();
    assert!(after_stop >= 2, "the node watched Consul while it ran: {after_stop} queries");
    // Any change in Consul answers every blocking query; one that leaves the set of `tim`
    // nodes as it was yields no update, so a watch still running would ask again at once.
    let client = ConsulClient::new(&consul.url(), None).unwrap();
    for i in 0..3 {
        let other_id = format!("other-{i}");
        let other = ConsulRegistration::new(
            client.clone(),
            "unrelated",
            &other_id,
            "127.0.0.1:50998",
            TTL,
            Duration::from_secs(60),
        )
        .unwrap();
        let heartbeat = tokio::spawn(other.run(|| 0));
        eventually(|| async { consul.passing().contains(&other_id).then_some(()) }).await;
        heartbeat.abort();
        tokio::time::sleep(TTL / 2).await;
    }
    assert_eq!(consul.health_queries(), after_stop, "the stopped node still watches Consul");
}

#[tokio::test]
async fn registration_and_watch_follow_the_consul_api() {
    let consul = ConsulDouble::start().await;
    watch_lifecycle(&consul.url(), "tim-api-test").await;
}

/// Against a real agent: runs only when CONSUL_HTTP_ADDR is set (e.g. `127.0.0.1:8500`).
#[tokio::test]
async fn registration_and_watch_against_a_real_consul_agent() {
    let Ok(addr) = std::env::var("CONSUL_HTTP_ADDR") else {
        eprintln!("CONSUL_HTTP_ADDR is not set: skipping the real-agent test");
        return;
    };
    let url = if addr.contains("://") { addr } else { format!("http://{addr}") };
    watch_lifecycle(&url, &format!("tim-test-{}", std::process::id())).await;
}

/// Registers a fake node, sees it appear in the watch, lets its check lapse... no: deregisters
/// it and sees it disappear.
async fn watch_lifecycle(url: &str, service: &str) {
    let client = ConsulClient::new(url, std::env::var("CONSUL_HTTP_TOKEN").ok()).unwrap();
    let discovery = ConsulDiscovery::new(client.clone(), service).with_wait(Duration::from_secs(2));
    let mut updates = discovery.updates();
    let reg = ConsulRegistration::new(
        client,
        service,
        &format!("{service}-node-1"),
        "127.0.0.1:50999",
        Duration::from_secs(10),
        Duration::from_secs(60),
    )
    .unwrap();
    let heartbeat = tokio::spawn(reg.clone().run(|| 3));
    let seen = loop {
        match tokio::time::timeout(WAIT, updates.next()).await.unwrap().unwrap() {
            Update::Reset(nodes) if !nodes.is_empty() => break nodes,
            _ => continue,
        }
    };
    assert_eq!(seen[0].id, format!("{service}-node-1"));
    assert_eq!(seen[0].endpoint, "127.0.0.1:50999");
    assert_eq!(seen[0].load, 3);
    heartbeat.abort();
    reg.deregister().await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, updates.next()).await.unwrap().unwrap() {
            Update::Reset(nodes) if nodes.is_empty() => break,
            _ => continue,
        }
    }
}

/// Consul with ACLs over HTTPS: the node registers with its token through the CA it was given;
/// a wrong token, no token, the system roots or plaintext get nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_uses_consul_over_https_with_its_acl_token() {
    let ca = common::tls::Ca::new("consul");
    let token = "consul-acl-token-1234";
    let consul = ConsulDouble::secured(token, &ca.issue("consul")).await;
    let node = TestNode::with(&Backend::redis(), |c| {
        c.consul = Some(consul.url());
        c.consul_ca = Some(ca.cert.clone());
        c.consul_token = Some(token.into());
        c.consul_ttl = TTL;
    })
    .await;
    eventually(|| async { (consul.passing() == [node.endpoint()]).then_some(()) }).await;
    assert_eq!(consul.denied(), 0);

    // Passing an unknown check: 404 for the right token, 403 for any other.
    let pass = |client: ConsulClient| async move { client.pass("nobody:ttl").await.unwrap_err() };
    let right = ConsulClient::with_ca(&consul.url(), Some(token.into()), Some(&ca.cert)).unwrap();
    assert!(pass(right).await.to_string().contains("404"));
    for wrong in [Some("not-the-token".to_string()), None] {
        let client = ConsulClient::with_ca(&consul.url(), wrong, Some(&ca.cert)).unwrap();
        let err = pass(client).await.to_string();
        assert!(err.contains("403"), "{err}");
    }
    assert_eq!(consul.denied(), 2);
    // The system roots do not know the CA; plaintext gets no answer from an HTTPS agent.
    let untrusted = ConsulClient::new(&consul.url(), Some(token.into())).unwrap();
    assert!(pass(untrusted).await.to_string().contains("unreachable"));
    let plaintext = consul.url().replace("https://", "http://");
    let plaintext = ConsulClient::new(&plaintext, Some(token.into())).unwrap();
    assert!(!pass(plaintext).await.to_string().contains("404"));
    assert_eq!(consul.denied(), 2);
    assert_eq!(consul.passing(), [node.endpoint()]);
}

#[tokio::test]
async fn a_check_that_is_not_passed_turns_critical_and_leaves_the_watch() {
    let consul = ConsulDouble::start().await;
    let client = ConsulClient::new(&consul.url(), None).unwrap();
    let discovery = ConsulDiscovery::new(client.clone(), "tim").with_wait(Duration::from_secs(2));
    let mut updates = discovery.updates();
    let reg = ConsulRegistration::new(
        client,
        "tim",
        "n1",
        "127.0.0.1:1000",
        TTL,
        Duration::from_secs(60),
    )
    .unwrap();
    let heartbeat = tokio::spawn(reg.clone().run(|| 0));
    loop {
        if let Update::Reset(nodes) =
            tokio::time::timeout(WAIT, updates.next()).await.unwrap().unwrap()
            && nodes.len() == 1
        {
            break;
        }
    }
    // The node hangs: no more passes.
    heartbeat.abort();
    let hung = Instant::now();
    loop {
        if let Update::Reset(nodes) =
            tokio::time::timeout(WAIT, updates.next()).await.unwrap().unwrap()
            && nodes.is_empty()
        {
            break;
        }
    }
    assert!(hung.elapsed() < TTL * 3, "{:?}", hung.elapsed());
}
