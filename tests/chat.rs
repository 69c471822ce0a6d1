//! Chat behaviour of one node: delivery, ordering, offline inbox, ack and resume, idempotent
//! sends, device takeover and fan-out to devices.
mod common;

use std::time::Duration;

use common::{Backend, TestNode, assert_quiet, expected, next_event, next_message, take};
use tim::client::{self, Event};

async fn alice_and_bob_chat_both_ways(b: &Backend) {
    let node = TestNode::start(b).await;
    let mut alice = node.connect("alice", "phone", 0).await;
    let mut bob = node.connect("bob", "phone", 0).await;

    let ack = alice.sender().send("bob", "hi bob").await.unwrap();
    assert_eq!(ack.seq, 1);
    let m = next_message(&mut bob).await;
    assert_eq!(
        (m.seq, m.from.as_str(), m.to.as_str(), m.body.as_str()),
        (1, "alice", "bob", "hi bob")
    );
    assert_eq!(m.msg_id, ack.msg_id);
    assert!(m.sent_at > 0);

    let ack = bob.sender().send("alice", "hi alice").await.unwrap();
    assert_eq!(ack.seq, 1, "each recipient has its own seq");
    let m = next_message(&mut alice).await;
    assert_eq!((m.seq, m.from.as_str(), m.body.as_str()), (1, "bob", "hi alice"));
}

async fn offline_messages_wait_and_arrive_in_order(b: &Backend) {
    let node = TestNode::start(b).await;
    let alice = node.connect("alice", "phone", 0).await;
    for i in 1..=20 {
        let ack = alice.sender().send("bob", &format!("m{i}")).await.unwrap();
        assert_eq!(ack.seq, i);
    }
    let mut bob = node.connect("bob", "phone", 0).await;
    assert_eq!(bob.welcome.last_seq, 20);
    assert_eq!(take(&mut bob, 20).await, expected("m", 1, 20));
    // Live messages continue the sequence without a gap.
    alice.sender().send("bob", "m21").await.unwrap();
    assert_eq!(take(&mut bob, 1).await, expected("m", 21, 21));
    assert_quiet(&mut bob, Duration::from_millis(200)).await;
}

async fn replay_and_concurrent_live_sends_have_no_gap_and_no_duplicate(b: &Backend) {
    let node = TestNode::start(b).await;
    let mut senders = Vec::new();
    for s in 0..4 {
        senders.push(node.connect(&format!("s{s}"), "d", 0).await);
    }
    // Half the messages are stored before bob connects, half race with his replay.
    for (s, session) in senders.iter().enumerate() {
        for i in 0..25 {
            session.sender().send("bob", &format!("s{s}-{i}")).await.unwrap();
        }
    }
    let mut bob = node.connect("bob", "phone", 0).await;
    let mut tasks = Vec::new();
    for (s, session) in senders.iter().enumerate() {
        let sender = session.sender();
        tasks.push(tokio::spawn(async move {
            for i in 25..50 {
                sender.send("bob", &format!("s{s}-{i}")).await.unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    assert_eq!(bob.welcome.last_seq, 100, "the rest arrive live");
    let got = take(&mut bob, 200).await;
    for t in tasks {
        t.await.unwrap();
    }
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    // Each sender's messages keep their order within bob's inbox.
    for s in 0..4 {
        let mine: Vec<&String> =
            got.iter().map(|(_, b)| b).filter(|b| b.starts_with(&format!("s{s}-"))).collect();
        let want: Vec<String> = (0..50).map(|i| format!("s{s}-{i}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>());
    }
    assert_quiet(&mut bob, Duration::from_millis(200)).await;
}

async fn ack_and_resume_deliver_exactly_the_unacked_rest(b: &Backend) {
    let node = TestNode::start(b).await;
    let alice = node.connect("alice", "phone", 0).await;
    for i in 1..=10 {
        alice.sender().send("bob", &format!("m{i}")).await.unwrap();
    }
    let mut bob = node.connect("bob", "phone", 0).await;
    assert_eq!(take(&mut bob, 10).await, expected("m", 1, 10));
    bob.sender().ack(6).await.unwrap();
    // The ack is stored once a later frame on the same stream has been processed.
    bob.sender().send("alice", "sync").await.unwrap();
    drop(bob);
    for i in 11..=12 {
        alice.sender().send("bob", &format!("m{i}")).await.unwrap();
    }

    // The client says where it is...
    let mut bob = node.connect("bob", "phone", 6).await;
    assert_eq!(bob.welcome.resume_from, 6);
    assert_eq!(take(&mut bob, 6).await, expected("m", 7, 12));
    assert_quiet(&mut bob, Duration::from_millis(200)).await;
    drop(bob);

    // A client ahead of the stored cursor (its last acks were lost) is believed...
    let mut bob = node.connect("bob", "phone", 8).await;
    assert_eq!(bob.welcome.resume_from, 8);
    assert_eq!(take(&mut bob, 4).await, expected("m", 9, 12));
    assert_quiet(&mut bob, Duration::from_millis(200)).await;
    drop(bob);

    // ...unless it claims more than the inbox ever held (state from a lost inbox): then the
    // stored cursor decides, so nothing is skipped.
    let mut bob = node.connect("bob", "phone", 1000).await;
    assert_eq!((bob.welcome.resume_from, bob.welcome.last_seq), (8, 12));
    assert_eq!(take(&mut bob, 4).await, expected("m", 9, 12));
    drop(bob);

    // ...or relies on the stored cursor when it has lost its state.
    let mut bob = node.connect("bob", "phone", 0).await;
    assert_eq!(bob.welcome.resume_from, 8);
    assert_eq!(take(&mut bob, 4).await, expected("m", 9, 12));
    bob.sender().ack(12).await.unwrap();
    bob.sender().send("alice", "sync").await.unwrap();
    drop(bob);
    let mut bob = node.connect("bob", "phone", 0).await;
    assert_eq!(bob.welcome.resume_from, 12);
    assert_quiet(&mut bob, Duration::from_millis(200)).await;
}

async fn retried_send_returns_the_first_ack_and_stores_once(b: &Backend) {
    let node = TestNode::start(b).await;
    let alice = node.connect("alice", "phone", 0).await;
    let first = alice.sender().send_with_id("c-1", "bob", "once").await.unwrap();
    let again = alice.sender().send_with_id("c-1", "bob", "once").await.unwrap();
    assert_eq!((again.seq, &again.msg_id, again.duplicate), (first.seq, &first.msg_id, true));
    assert!(!first.duplicate);
    // The same key through the unary API from the same sender is the same message too.
    let unary = node.send_unary("alice", "c-1", "bob", "once").await.unwrap();
    assert_eq!((unary.seq, unary.duplicate), (first.seq, true));
    // Another sender may use the same key.
    let carol = node.send_unary("carol", "c-1", "bob", "other").await.unwrap();
    assert_eq!((carol.seq, carol.duplicate), (2, false));

    let mut bob = node.connect("bob", "phone", 0).await;
    assert_eq!(bob.welcome.last_seq, 2, "exactly two messages stored");
    assert_eq!(take(&mut bob, 2).await, vec![(1, "once".to_string()), (2, "other".to_string())]);
    assert_quiet(&mut bob, Duration::from_millis(200)).await;
}

async fn second_login_on_the_same_device_kicks_the_older_stream(b: &Backend) {
    let node = TestNode::start(b).await;
    let mut old = node.connect("bob", "phone", 0).await;
    let mut new = node.connect("bob", "phone", 0).await;
    match next_event(&mut old).await {
        Event::Kicked(reason) => assert!(!reason.is_empty()),
        other => panic!("expected Kicked, got {other:?}"),
    }
    assert!(matches!(next_event(&mut old).await, Event::Closed(None)));
    // The new stream owns the device: messages go there, and its route stays.
    node.send_unary("alice", "k1", "bob", "to the new one").await.unwrap();
    assert_eq!(next_message(&mut new).await.body, "to the new one");
    assert_eq!(node.presence("bob").await, ["phone"]);
}

async fn every_device_of_a_user_receives_everything(b: &Backend) {
    let node = TestNode::start(b).await;
    let mut phone = node.connect("bob", "phone", 0).await;
    let mut laptop = node.connect("bob", "laptop", 0).await;
    let mut presence = node.presence("bob").await;
    presence.sort();
    assert_eq!(presence, ["laptop", "phone"]);
    // Anyone else learns only that bob is online.
    let token = node.login("alice", "web").await.token;
    for user in ["bob", "nobody"] {
        let req = tim::proto::PresenceRequest { user_id: user.into() };
        let seen = node.gateway().await.presence(client::authorized(req, &token)).await.unwrap();
        let seen = seen.into_inner();
        assert_eq!((seen.online, seen.devices.len()), (user == "bob", 0), "{user}");
    }
    for i in 1..=5 {
        node.send_unary("alice", &format!("d{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    assert_eq!(take(&mut phone, 5).await, expected("m", 1, 5));
    assert_eq!(take(&mut laptop, 5).await, expected("m", 1, 5));
    // Acks are per device: the phone's ack does not hide anything from the laptop.
    phone.sender().ack(5).await.unwrap();
    phone.sender().send("alice", "sync").await.unwrap();
    drop(laptop);
    let mut laptop = node.connect("bob", "laptop", 0).await;
    assert_eq!(take(&mut laptop, 5).await, expected("m", 1, 5));
}

async fn messages_carry_the_token_identity(b: &Backend) {
    let node = TestNode::start(b).await;
    let mallory = node.connect("mallory", "phone", 0).await;
    let mut bob = node.connect("bob", "phone", 0).await;
    mallory.sender().send("bob", "from whom?").await.unwrap();
    assert_eq!(next_message(&mut bob).await.from, "mallory");
}

async fn a_closed_stream_clears_its_route_and_others_see_when_it_was_last_seen(b: &Backend) {
    let node = TestNode::start(b).await;
    let alice = node.login("alice", "web").await.token;
    let ask = || async {
        let req = tim::proto::PresenceRequest { user_id: "bob".into() };
        let reply = node.gateway().await.presence(client::authorized(req, &alice)).await;
        reply.unwrap().into_inner()
    };
    let unknown = ask().await;
    assert_eq!((unknown.online, unknown.last_seen_at), (false, 0), "never seen");
    let bob = node.connect("bob", "phone", 0).await;
    assert_eq!(node.presence("bob").await, ["phone"]);
    let online = ask().await;
    assert_eq!((online.online, online.last_seen_at, online.devices.len()), (true, 0, 0));
    let before = tim::auth::unix_ms(std::time::SystemTime::now());
    drop(bob);
    common::eventually(|| async { node.presence("bob").await.is_empty().then_some(()) }).await;
    let gone = common::eventually(|| async { Some(ask().await).filter(|p| p.last_seen_at > 0) });
    let gone = gone.await;
    let after = tim::auth::unix_ms(std::time::SystemTime::now());
    assert!(!gone.online && (before..=after).contains(&gone.last_seen_at), "{gone:?}");
    assert!(gone.devices.is_empty());
}

/// Logout as `token`'s user, of `device` (empty: the token's own).
async fn logout(node: &TestNode, token: &str, device: &str) -> Result<String, tonic::Status> {
    let req = tim::proto::LogoutRequest { device: device.into() };
    let reply = node.gateway().await.logout(client::authorized(req, token)).await?;
    Ok(reply.into_inner().device)
}

async fn logout_ends_the_devices_streams_and_refuses_its_tokens(b: &Backend) {
    use tonic::Code;
    let node = TestNode::start(b).await;
    let phone_login = node.login("bob", "phone").await;
    let mut phone = node.connect("bob", "phone", 0).await;
    let laptop = node.login("bob", "laptop").await.token;
    // Mallory can only log out her own devices, whatever she names.
    let mallory = node.login("mallory", "web").await.token;
    assert_eq!(logout(&node, &mallory, "phone").await.unwrap(), "phone");
    node.send_unary("alice", "l1", "bob", "still here").await.unwrap();
    assert_eq!(next_message(&mut phone).await.body, "still here");

    // The lost phone, logged out from the laptop: its stream says why and ends.
    assert_eq!(logout(&node, &laptop, "phone").await.unwrap(), "phone");
    assert!(matches!(next_event(&mut phone).await, Event::LoggedOut(_)));
    match next_event(&mut phone).await {
        Event::Closed(Some(s)) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
    // Its old token opens nothing and sends nothing; the laptop's still works.
    let opts = client::Options::default();
    let again = client::Session::connect(&node.endpoint(), &phone_login.token, 0, &opts).await;
    assert!(matches!(again, Err(client::ClientError::LoggedOut(_))), "{:?}", again.err());
    let req = tim::proto::SendRequest {
        client_msg_id: "x".into(),
        to: "alice".into(),
        body: "x".into(),
        ..Default::default()
    };
    let err = node.gateway().await.send(client::authorized(req, &phone_login.token)).await;
    assert_eq!(err.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(node.presence_nodes("bob").await.len(), 0, "the phone's route is gone");
    assert!(logout(&node, &laptop, "").await.is_ok(), "the laptop logs itself out");
    let err = logout(&node, &laptop, "").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "a logged-out token cannot log out again");

    // Logging in again gives the phone a token that works.
    let mut phone = node.connect("bob", "phone", 0).await;
    assert_eq!(next_message(&mut phone).await.body, "still here");
    let fresh = node.login("bob", "tablet").await.token;
    let err = logout(&node, &fresh, "no spaces allowed").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(logout(&node, "", "phone").await.unwrap_err().code(), Code::Unauthenticated);
}

/// Messages that passed the retention before a device came are not silently skipped: Welcome
/// says where delivery starts, and the resilient client reports the gap.
async fn a_device_is_told_what_expired_before_it_came(b: &Backend) {
    let node = TestNode::with(b, |c| c.retention = Duration::from_secs(1)).await;
    node.send_unary("alice", "c1", "bob", "old 1").await.unwrap();
    node.send_unary("alice", "c2", "bob", "old 2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    node.send_unary("alice", "c3", "bob", "fresh").await.unwrap();
    let mut bob = node.connect("bob", "phone", 0).await;
    assert_eq!((bob.welcome.resume_from, bob.welcome.first_seq), (0, 3));
    assert_eq!(next_message(&mut bob).await.body, "fresh");
    drop(bob);

    let config = tim::client::resilient::Config::new(vec![node.endpoint()], "bob", "laptop");
    let mut laptop = tim::client::resilient::Client::start(config);
    let mut events = Vec::new();
    while events.len() < 3 {
        let event = tokio::time::timeout(common::WAIT, laptop.next_event()).await.unwrap().unwrap();
        events.push(format!("{event:?}"));
    }
    assert!(events[0].starts_with("Connected"), "{events:?}");
    assert_eq!(events[1], "Gap { first: 1, last: 2 }");
    assert!(events[2].contains("fresh"), "{events:?}");
}

on_every_store!(
    a_device_is_told_what_expired_before_it_came,
    logout_ends_the_devices_streams_and_refuses_its_tokens,
    alice_and_bob_chat_both_ways,
    offline_messages_wait_and_arrive_in_order,
    replay_and_concurrent_live_sends_have_no_gap_and_no_duplicate,
    ack_and_resume_deliver_exactly_the_unacked_rest,
    retried_send_returns_the_first_ack_and_stores_once,
    second_login_on_the_same_device_kicks_the_older_stream,
    every_device_of_a_user_receives_everything,
    messages_carry_the_token_identity,
    a_closed_stream_clears_its_route_and_others_see_when_it_was_last_seen,
);
