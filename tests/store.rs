//! One rule, one test body, every backend: the in-memory store, a Redis server and a Redis
//! Cluster give the same answers to the same calls. Each `async fn(&Backend)` below runs as
//! `memory::<name>`, `redis::<name>` and `redis_cluster::<name>`.
mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::Backend;
use tim::auth::unix_ms;
use tim::store::conversations::{ConversationIndex, MAX_INDEXED, Noted};
use tim::store::groups::{GroupChange, Groups, Limits};

/// A small group's limits: it never broadcasts.
const LIMITS: Limits = Limits { max_members: 10, fanout: 10 };
use tim::store::{
    AckCheck, Inbox, MemoryStore, NewMessage, PutRoute, RedisStore, Route, RouteStore, StoreError,
    StoreOptions,
};

/// The parts of one backend.
struct Stores {
    inbox: Arc<dyn Inbox>,
    routes: Arc<dyn RouteStore>,
    groups: Arc<dyn Groups>,
    index: Arc<dyn ConversationIndex>,
}

async fn open(backend: &Backend, opts: StoreOptions) -> Stores {
    match backend {
        Backend::Memory => {
            let s = Arc::new(MemoryStore::new(opts));
            Stores { inbox: s.clone(), groups: s.clone(), index: s.clone(), routes: s }
        }
        Backend::Redis { url, prefix, cluster } => {
            let urls: Vec<String> = url.split(',').map(str::to_string).collect();
            let s = RedisStore::connect(&urls, *cluster, Duration::from_secs(2), prefix, opts)
                .await
                .unwrap();
            let s = Arc::new(s);
            Stores { inbox: s.clone(), groups: s.clone(), index: s.clone(), routes: s }
        }
    }
}

/// A group message that reaches a member before an earlier one of the group (two nodes racing
/// from log to delivery) brings the earlier one with it from the log, and the earlier one's
/// own delivery then adds nothing: the member's inbox holds the group in its order, once.
async fn a_group_delivery_fills_a_gap_from_the_log_first(backend: &Backend) {
    let s = open(backend, StoreOptions::default()).await;
    let group = "g:gap-test";
    let new = |from: &str, id: &str| NewMessage {
        from: from.into(),
        origin_device: "phone".into(),
        to: String::new(),
        conversation: group.into(),
        client_msg_id: id.into(),
        body: format!("body {id}"),
        msg_id: tim::ids::new_id(),
        sent_at: unix_ms(SystemTime::now()),
        event: None,
    };
    let create = GroupChange::Create {
        name: "gap".into(),
        members: vec!["bob".into(), "carol".into()],
        history_for_new_members: false,
    };
    let created = s.groups.change_group(new("alice", "e1"), create, LIMITS).await.unwrap();
    let members = created.members.clone();
    s.groups.deliver_group(&created.event.unwrap(), "phone", &members).await.unwrap();
    let first = s.groups.log_group_message(new("alice", "c1"), 10).await.unwrap().message;
    let second = s.groups.log_group_message(new("carol", "c2"), 10).await.unwrap().message;
    let late = s.groups.deliver_group(&second, "phone", &["bob".into()]).await.unwrap();
    let got: Vec<(u64, u64)> = late.iter().map(|d| (d.message.seq, d.message.conv_seq)).collect();
    assert_eq!(got, [(2, first.conv_seq), (3, second.conv_seq)], "the gap came first");
    let again = s.groups.deliver_group(&first, "phone", &["bob".into()]).await.unwrap();
    assert!(again.is_empty(), "already there: {again:?}");
    let inbox = s.inbox.read("bob", 0, 10).await.unwrap();
    let seqs: Vec<(u64, u64)> = inbox.iter().map(|m| (m.seq, m.conv_seq)).collect();
    assert_eq!(seqs, [(1, 1), (2, 2), (3, 3)]);
    assert_eq!(inbox[1].body, "body c1");
}

on_every_store!(
    a_group_delivery_fills_a_gap_from_the_log_first,
    each_inbox_counts_from_one_and_a_retry_returns_the_first_copy,
    cursors_only_move_forward_and_the_inbox_keeps_what_a_device_still_needs,
    messages_past_retention_are_never_read,
    a_read_goes_on_past_a_page_of_expired_messages,
    the_later_hello_owns_the_route_whatever_the_write_order,
    a_lapsed_route_is_gone_for_every_call,
    a_revocation_is_per_device_replaced_by_a_later_one_and_lapses,
    last_seen_is_per_user_and_lapses,
    devices_are_bounded_forgotten_when_unseen_and_then_hold_nothing_back,
    concurrent_appends_keep_each_inbox_contiguous_and_each_sender_in_order,
    a_message_that_cannot_be_taken_fails_alone,
    a_conversation_index_only_moves_forward_and_keeps_the_most_recent,
    read_cursors_move_forward_count_readers_and_leave_with_the_member,
    an_ack_is_refused_when_the_inbox_no_longer_holds_what_the_device_was_given,
);

/// Read cursors: one per user and conversation, forward only, in what the user has seen too;
/// readers counted and paged by cursor then id; a member who leaves takes theirs along.
async fn read_cursors_move_forward_count_readers_and_leave_with_the_member(backend: &Backend) {
    let s = open(backend, StoreOptions::default()).await;
    let group = "g:readers-test";
    let create = GroupChange::Create {
        name: "team".into(),
        members: vec!["bob".into(), "carol".into()],
        history_for_new_members: false,
    };
    let event = NewMessage {
        from: "alice".into(),
        origin_device: "phone".into(),
        to: String::new(),
        conversation: group.into(),
        client_msg_id: "create".into(),
        body: String::new(),
        msg_id: tim::ids::new_id(),
        sent_at: unix_ms(SystemTime::now()),
        event: None,
    };
    s.groups.change_group(event.clone(), create, LIMITS).await.unwrap();
    assert_eq!(s.index.mark_read("bob", group, 5).await.unwrap(), 5);
    assert_eq!(s.index.mark_read("bob", group, 3).await.unwrap(), 5, "never back");
    assert_eq!(s.index.mark_read("carol", group, 3).await.unwrap(), 3);
    assert_eq!(s.index.mark_read("alice", group, 5).await.unwrap(), 5);
    let users = ["alice", "bob", "carol", "dave"].map(String::from);
    assert_eq!(s.index.read_cursors(group, &users).await.unwrap(), [5, 5, 3, 0]);
    let page = |v: &[(&str, u64)]| v.iter().map(|(u, s)| (u.to_string(), *s)).collect::<Vec<_>>();
    assert_eq!(
        s.index.readers(group, 4, 0, 10).await.unwrap(),
        (2, page(&[("alice", 5), ("bob", 5)]))
    );
    assert_eq!(s.index.readers(group, 1, 1, 1).await.unwrap(), (3, page(&[("alice", 5)])));
    let seen = s.index.indexed("bob").await.unwrap();
    assert_eq!(seen, vec![Noted { conversation: group.into(), at: 0, seen: 5 }]);
    let leave = NewMessage { from: "bob".into(), client_msg_id: "leave".into(), ..event };
    s.groups.change_group(leave, GroupChange::Leave, LIMITS).await.unwrap();
    assert_eq!(s.index.readers(group, 1, 0, 10).await.unwrap().0, 2, "bob left");
    assert!(s.index.indexed("bob").await.unwrap().is_empty(), "and what he had seen went");
}

/// ListConversations' index: activity and what was seen only move forward, newest first, and
/// past its bound the least recently active go with what was seen of them.
async fn a_conversation_index_only_moves_forward_and_keeps_the_most_recent(backend: &Backend) {
    let s = open(backend, StoreOptions::default()).await;
    let note = |c: &str, at: i64, seen: u64| Noted { conversation: c.into(), at, seen };
    s.index.note("alice", &[note("d:a", 100, 5), note("d:b", 200, 0)]).await.unwrap();
    s.index
        .note("alice", &[note("d:a", 50, 3), note("d:b", 300, 9), note("g:x", 0, 2)])
        .await
        .unwrap();
    let got = s.index.indexed("alice").await.unwrap();
    assert_eq!(got, vec![note("d:b", 300, 9), note("d:a", 100, 5), note("g:x", 0, 2)]);
    assert!(s.index.indexed("bob").await.unwrap().is_empty(), "per user");

    let many: Vec<Noted> =
        (0..MAX_INDEXED as i64).map(|i| note(&format!("d:n{i}"), 1000 + i, 1)).collect();
    s.index.note("alice", &many).await.unwrap();
    let got = s.index.indexed("alice").await.unwrap();
    assert_eq!(got.len(), MAX_INDEXED + 1, "bounded direct ones, and the group");
    let newest = MAX_INDEXED as i64 - 1;
    assert_eq!(got[0], note(&format!("d:n{newest}"), 1000 + newest, 1));
    assert_eq!(got[MAX_INDEXED], note("g:x", 0, 2), "a group is not evicted");
    assert!(
        got[..MAX_INDEXED].iter().all(|n| n.conversation.starts_with("d:n")),
        "the two oldest went"
    );
    // One that went and comes back starts again from nothing seen.
    s.index.note("alice", &[note("d:a", 5000, 0)]).await.unwrap();
    assert_eq!(s.index.indexed("alice").await.unwrap()[0], note("d:a", 5000, 0));
}

async fn devices_are_bounded_forgotten_when_unseen_and_then_hold_nothing_back(backend: &Backend) {
    let opts = StoreOptions {
        max_devices: 2,
        device_ttl: Duration::from_millis(600),
        ..StoreOptions::default()
    };
    let s = open(backend, opts).await;
    for i in 1..=3 {
        s.inbox.append(message("bob", &format!("c{i}"), &format!("m{i}"))).await.unwrap();
    }
    s.inbox.enroll("bob", "phone").await.unwrap();
    s.inbox.enroll("bob", "laptop").await.unwrap();
    s.inbox.enroll("bob", "phone").await.unwrap();
    let full = s.inbox.enroll("bob", "tablet").await.unwrap_err();
    assert!(matches!(full, StoreError::TooManyDevices { max: 2 }), "{full:?}");
    s.inbox.enroll("alice", "tablet").await.unwrap();
    // The laptop never acks; the phone keeps acking (and so stays seen).
    assert_eq!(s.inbox.ack("bob", "laptop", 0, &AckCheck::default()).await.unwrap(), 0);
    assert_eq!(s.inbox.ack("bob", "phone", 3, &AckCheck::default()).await.unwrap(), 3);
    assert_eq!(s.inbox.read("bob", 0, 10).await.unwrap().len(), 3, "the laptop holds them");
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.inbox.ack("bob", "phone", 3, &AckCheck::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The laptop was away too long: forgotten at the next Hello, so the tablet fits, and its
    // cursor no longer holds the inbox.
    s.inbox.enroll("bob", "tablet").await.unwrap();
    s.inbox.ack("bob", "tablet", 3, &AckCheck::default()).await.unwrap();
    s.inbox.ack("bob", "phone", 3, &AckCheck::default()).await.unwrap();
    assert!(s.inbox.read("bob", 0, 10).await.unwrap().is_empty());
    // A forgotten device (logged out) frees its place; its late ack stores nothing.
    s.inbox.forget("bob", "tablet").await.unwrap();
    assert_eq!(s.inbox.ack("bob", "tablet", 1, &AckCheck::default()).await.unwrap(), 1);
    s.inbox.enroll("bob", "watch").await.unwrap();
    assert!(s.inbox.enroll("bob", "tablet").await.is_err(), "phone and watch: full again");
}

async fn last_seen_is_per_user_and_lapses(backend: &Backend) {
    let store = open(backend, StoreOptions::default()).await.routes;
    assert_eq!(store.last_seen("bob").await.unwrap(), None);
    store.seen("bob", 1_000, Duration::from_secs(60)).await.unwrap();
    store.seen("bob", 2_000, Duration::from_millis(300)).await.unwrap();
    assert_eq!(store.last_seen("bob").await.unwrap(), Some(2_000));
    assert_eq!(store.last_seen("alice").await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.last_seen("bob").await.unwrap(), None);
}

async fn a_revocation_is_per_device_replaced_by_a_later_one_and_lapses(backend: &Backend) {
    let store = open(backend, StoreOptions::default()).await.routes;
    assert_eq!(store.revoked("bob", "phone").await.unwrap(), None);
    store.revoke("bob", "phone", 1_000, Duration::from_secs(60)).await.unwrap();
    store.revoke("bob", "phone", 2_000, Duration::from_millis(300)).await.unwrap();
    assert_eq!(store.revoked("bob", "phone").await.unwrap(), Some(2_000));
    assert_eq!(store.revoked("bob", "laptop").await.unwrap(), None);
    assert_eq!(store.revoked("alice", "phone").await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.revoked("bob", "phone").await.unwrap(), None, "kept only for its ttl");
}

fn message(to: &str, client_msg_id: &str, body: &str) -> NewMessage {
    NewMessage {
        from: "alice".into(),
        origin_device: "phone".into(),
        conversation: tim::ids::Conversation::direct("alice", to).id(),
        to: to.into(),
        client_msg_id: client_msg_id.into(),
        body: body.into(),
        msg_id: tim::ids::new_id(),
        sent_at: unix_ms(SystemTime::now()),
        event: None,
    }
}

fn bodies(page: &[tim::store::StoredMessage]) -> Vec<(u64, &str)> {
    page.iter().map(|m| (m.seq, m.body.as_str())).collect()
}

async fn each_inbox_counts_from_one_and_a_retry_returns_the_first_copy(backend: &Backend) {
    let s = open(backend, StoreOptions::default()).await;
    assert_eq!(s.inbox.last_seq("bob").await.unwrap(), 0);
    let mut firsts = Vec::new();
    for i in 1..=3 {
        let a = s.inbox.append(message("bob", &format!("c{i}"), &format!("m{i}"))).await.unwrap();
        assert_eq!((a.message.seq, a.duplicate), (i, false));
        firsts.push(a.message);
    }
    assert_eq!(s.inbox.append(message("carol", "c1", "x")).await.unwrap().message.seq, 1);
    // A retry, even with another body: the first copy's identity, nothing new stored.
    let retry = s.inbox.append(message("bob", "c2", "changed")).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (retry.message.seq, &retry.message.msg_id, retry.message.sent_at),
        (2, &firsts[1].msg_id, firsts[1].sent_at)
    );
    assert_eq!(s.inbox.last_seq("bob").await.unwrap(), 3);
    let page = s.inbox.read("bob", 0, 10).await.unwrap();
    assert_eq!(bodies(&page), [(1, "m1"), (2, "m2"), (3, "m3")]);
    assert_eq!(page, firsts);
    assert_eq!(bodies(&s.inbox.read("bob", 1, 1).await.unwrap()), [(2, "m2")]);
    assert!(s.inbox.read("bob", 3, 10).await.unwrap().is_empty());
    // The epoch stays the same for the life of the inbox.
    let epoch = s.inbox.epoch("bob").await.unwrap();
    assert!(!epoch.is_empty());
    assert_eq!(s.inbox.epoch("bob").await.unwrap(), epoch);
}

async fn cursors_only_move_forward_and_the_inbox_keeps_what_a_device_still_needs(
    backend: &Backend,
) {
    let s = open(backend, StoreOptions::default()).await;
    for i in 1..=3 {
        s.inbox.append(message("bob", &format!("c{i}"), &format!("m{i}"))).await.unwrap();
    }
    for (user, device) in [("bob", "laptop"), ("bob", "phone"), ("carol", "phone")] {
        s.inbox.enroll(user, device).await.unwrap();
    }
    // A device seen for the first time is registered at what it asks for.
    assert_eq!(s.inbox.ack("bob", "laptop", 0, &AckCheck::default()).await.unwrap(), 0);
    // Past the last seq: the inbox lost what the device was given (rolled back); never back.
    let past = s.inbox.ack("bob", "phone", 10, &AckCheck::default()).await.unwrap_err();
    assert!(matches!(past, StoreError::RolledBack { seq: 10 }), "{past:?}");
    assert_eq!(s.inbox.ack("bob", "phone", 3, &AckCheck::default()).await.unwrap(), 3);
    assert_eq!(s.inbox.ack("bob", "phone", 1, &AckCheck::default()).await.unwrap(), 3);
    assert_eq!(bodies(&s.inbox.read("bob", 0, 10).await.unwrap()).len(), 3, "laptop needs all");
    assert_eq!(s.inbox.ack("bob", "laptop", 2, &AckCheck::default()).await.unwrap(), 2);
    // Acked by every device: gone; the rest stays.
    assert_eq!(bodies(&s.inbox.read("bob", 0, 10).await.unwrap()), [(3, "m3")]);
    assert_eq!(s.inbox.last_seq("bob").await.unwrap(), 3);
    // With one device, what it acks is gone.
    s.inbox.append(message("carol", "c1", "x")).await.unwrap();
    assert_eq!(s.inbox.ack("carol", "phone", 1, &AckCheck::default()).await.unwrap(), 1);
    assert!(s.inbox.read("carol", 0, 10).await.unwrap().is_empty());
}

/// A failover to a replica that lagged gives seqs out again: an ack naming messages the inbox no
/// longer holds under their seqs, or whose last stored cursor was lost, stores nothing.
async fn an_ack_is_refused_when_the_inbox_no_longer_holds_what_the_device_was_given(
    backend: &Backend,
) {
    let s = open(backend, StoreOptions::default()).await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        let stored = s.inbox.append(message("bob", &format!("c{i}"), &format!("m{i}"))).await;
        ids.push((i, stored.unwrap().message.msg_id));
    }
    s.inbox.enroll("bob", "phone").await.unwrap();
    let check = |stored: u64, sent: &[(u64, String)]| AckCheck { stored, sent: sent.to_vec() };
    let ack = |up_to: u64, check: AckCheck| {
        let inbox = s.inbox.clone();
        async move { inbox.ack("bob", "phone", up_to, &check).await }
    };
    assert_eq!(ack(2, check(0, &ids[..2])).await.unwrap(), 2, "what the device was given");
    let other = [(3, "another message".to_string())];
    let refusals = [
        (3, check(2, &other), 3, "another message under seq 3"),
        (4, check(2, &[]), 4, "past the last seq"),
        (3, check(3, &ids[2..]), 3, "the stored cursor (3) was lost"),
    ];
    for (up_to, check, seq, why) in refusals {
        let refused = ack(up_to, check).await.unwrap_err();
        assert!(
            matches!(refused, StoreError::RolledBack { seq: s } if s == seq),
            "{why}: {refused:?}"
        );
    }
    assert_eq!(ack(0, AckCheck::default()).await.unwrap(), 2, "nothing stored by a refusal");
    assert_eq!(ack(3, check(2, &ids[2..])).await.unwrap(), 3);
}

async fn messages_past_retention_are_never_read(backend: &Backend) {
    let opts = StoreOptions { retention: Duration::from_secs(1), ..StoreOptions::default() };
    let s = open(backend, opts).await;
    s.inbox.append(message("bob", "c1", "m1")).await.unwrap();
    s.inbox.append(message("bob", "c2", "m2")).await.unwrap();
    assert_eq!(s.inbox.read("bob", 0, 10).await.unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Nothing touched the inbox since: the answer is the same as after a trim.
    assert!(s.inbox.read("bob", 0, 10).await.unwrap().is_empty());
    s.inbox.append(message("bob", "c3", "m3")).await.unwrap();
    assert_eq!(bodies(&s.inbox.read("bob", 0, 10).await.unwrap()), [(3, "m3")]);
}

/// Expired messages that no append trimmed (none came since) fill more than a page: the read
/// goes on to the fresh ones.
async fn a_read_goes_on_past_a_page_of_expired_messages(backend: &Backend) {
    let opts = StoreOptions { retention: Duration::from_secs(2), ..StoreOptions::default() };
    let s = open(backend, opts).await;
    let a_second_ago = unix_ms(SystemTime::now()) - 1000;
    for i in 1..=3 {
        let old = NewMessage { sent_at: a_second_ago, ..message("bob", &format!("c{i}"), "old") };
        s.inbox.append(old).await.unwrap();
    }
    s.inbox.append(message("bob", "c4", "m4")).await.unwrap();
    s.inbox.append(message("bob", "c5", "m5")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(bodies(&s.inbox.read("bob", 0, 2).await.unwrap()), [(4, "m4"), (5, "m5")]);
    assert_eq!(bodies(&s.inbox.read("bob", 1, 2).await.unwrap()), [(4, "m4"), (5, "m5")]);
}

/// Of two sessions of one device, the one whose Hello came later owns the route, even when the
/// older one's write lands last (a slow store call).
async fn the_later_hello_owns_the_route_whatever_the_write_order(backend: &Backend) {
    let store = open(backend, StoreOptions::default()).await.routes;
    let ttl = Duration::from_secs(60);
    let older = Route { node_id: "n1".into(), session_id: "s1".into(), started_at: 1_000 };
    let newer = Route { node_id: "n2".into(), session_id: "s2".into(), started_at: 2_000 };
    assert_eq!(store.put("bob", "phone", &newer, ttl).await.unwrap(), PutRoute::Took(None));
    // The older session's write arrives late: refused, and told who holds the device.
    assert_eq!(
        store.put("bob", "phone", &older, ttl).await.unwrap(),
        PutRoute::Superseded(newer.clone())
    );
    assert_eq!(store.get("bob").await.unwrap(), vec![("phone".to_string(), newer.clone())]);
    // Its cleanup does not remove the newer route either.
    assert!(!store.remove_if("bob", "phone", "s1").await.unwrap());
    // A later session takes over and learns whom to kick.
    let newest = Route { node_id: "n1".into(), session_id: "s3".into(), started_at: 3_000 };
    assert_eq!(
        store.put("bob", "phone", &newest, ttl).await.unwrap(),
        PutRoute::Took(Some(newer.clone()))
    );
    // Refresh only extends one's own route.
    assert!(!store.refresh("bob", "phone", &newer, ttl).await.unwrap());
    assert!(store.refresh("bob", "phone", &newest, ttl).await.unwrap());
    assert!(store.remove_if("bob", "phone", "s3").await.unwrap());
    assert!(store.get("bob").await.unwrap().is_empty());
}

/// A route that was not refreshed in time is gone: not listed, not reported to the next owner,
/// and taken over by a refresh of another session (while another device keeps the user's
/// routes alive).
async fn a_lapsed_route_is_gone_for_every_call(backend: &Backend) {
    let store = open(backend, StoreOptions::default()).await.routes;
    let long = Duration::from_secs(60);
    let laptop = Route { node_id: "n1".into(), session_id: "l1".into(), started_at: 1_000 };
    let dead = Route { node_id: "n2".into(), session_id: "p1".into(), started_at: 2_000 };
    store.put("bob", "laptop", &laptop, long).await.unwrap();
    store.put("bob", "phone", &dead, Duration::from_secs(1)).await.unwrap();
    assert_eq!(store.get("bob").await.unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(store.get("bob").await.unwrap(), vec![("laptop".to_string(), laptop.clone())]);
    // An older session of the phone (its kick never arrived) keeps the device.
    let older = Route { node_id: "n3".into(), session_id: "p0".into(), started_at: 500 };
    assert!(store.refresh("bob", "phone", &older, long).await.unwrap());
    assert_eq!(store.get("bob").await.unwrap().len(), 2);
    // A new session takes it over and has nobody to kick... but the refreshed one.
    let next = Route { node_id: "n1".into(), session_id: "p2".into(), started_at: 3_000 };
    assert_eq!(store.put("bob", "phone", &next, long).await.unwrap(), PutRoute::Took(Some(older)));
    // After a lapse, a new session has nobody to kick, and a lapsed route's own session
    // removes nothing that was still there.
    store.put("bob", "tablet", &dead, Duration::from_millis(300)).await.unwrap();
    store.put("bob", "watch", &dead, Duration::from_millis(300)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let tablet = Route { node_id: "n1".into(), session_id: "t2".into(), started_at: 1_500 };
    assert_eq!(store.put("bob", "tablet", &tablet, long).await.unwrap(), PutRoute::Took(None));
    assert!(!store.remove_if("bob", "watch", "p1").await.unwrap());
    assert!(store.remove_if("bob", "tablet", "t2").await.unwrap());
}

/// Many senders at once (a node's sessions, its unary Send callers, and retries racing their
/// first try), as the Redis store's writer gathers them into batches: every inbox still counts
/// 1, 2, 3... without a gap or a repeat, each sender's messages keep the order it sent them in,
/// and a retry racing its first copy gets that copy's seq.
async fn concurrent_appends_keep_each_inbox_contiguous_and_each_sender_in_order(backend: &Backend) {
    let s = open(backend, StoreOptions::default()).await;
    let (senders, each, inboxes) = (12, 15, ["bob", "carol", "dave"]);
    let sender = async |n: usize| {
        let mut seqs = Vec::new();
        for i in 0..each {
            let mut m = message(inboxes[(n + i) % inboxes.len()], &format!("c{i}"), "hi");
            m.from = format!("s{n}");
            // The first try and a retry of it, at once.
            let (a, b) = tokio::join!(s.inbox.append(m.clone()), s.inbox.append(m.clone()));
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.message.seq, b.message.seq, "a retry gets the first copy's seq");
            assert_eq!(a.message.msg_id, b.message.msg_id);
            assert!(a.duplicate != b.duplicate, "exactly one of the two is stored");
            seqs.push((m.to, a.message.seq));
        }
        seqs
    };
    let all = futures_util::future::join_all((0..senders).map(sender)).await;
    for (n, seqs) in all.iter().enumerate() {
        for to in inboxes {
            let mine: Vec<u64> = seqs.iter().filter(|(t, _)| t == to).map(|(_, q)| *q).collect();
            assert!(mine.is_sorted(), "s{n} to {to} out of order: {mine:?}");
        }
    }
    let mut total = 0;
    for to in inboxes {
        let page = s.inbox.read(to, 0, 1000).await.unwrap();
        let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=page.len() as u64).collect::<Vec<_>>(), "{to}'s inbox has a gap");
        assert_eq!(s.inbox.last_seq(to).await.unwrap(), page.len() as u64);
        total += page.len();
    }
    assert_eq!(total, senders * each, "every message stored once");
}

/// A full inbox refuses its own message, not the others sent at the same moment (which, on
/// Redis, travel in the same batch and often the same script call).
async fn a_message_that_cannot_be_taken_fails_alone(backend: &Backend) {
    let s = open(backend, StoreOptions { inbox_max: 3, ..StoreOptions::default() }).await;
    for i in 1..=3 {
        s.inbox.append(message("carol", &format!("c{i}"), "x")).await.unwrap();
    }
    let sends = (0..20).map(|i| {
        let to = if i % 5 == 0 { "carol".to_string() } else { format!("u{i}") };
        s.inbox.append(message(&to, &format!("d{i}"), "y"))
    });
    let results = futures_util::future::join_all(sends).await;
    for (i, r) in results.into_iter().enumerate() {
        if i % 5 == 0 {
            assert!(matches!(r, Err(StoreError::InboxFull { max: 3 })), "{i}: {r:?}");
        } else {
            assert_eq!(r.unwrap().message.seq, 1, "{i}");
        }
    }
}

/// Group commit on one Redis server: messages sent at the same moment share script calls (far
/// fewer calls than messages), and a message whose keys are broken (WRONGTYPE) fails alone,
/// with the error, while the rest of its call is stored.
#[tokio::test]
async fn redis_group_commit_shares_calls_and_a_broken_message_fails_alone() {
    let server = common::redis::RedisServer::start(false);
    let backend = Backend::redis_at(&server);
    let Backend::Redis { prefix, .. } = &backend else { unreachable!() };
    let s = open(&backend, StoreOptions::default()).await;
    let client = ::redis::Client::open(server.url().as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The inbox of "broken" is a string, so XADD to it fails.
    let () = ::redis::cmd("SET")
        .arg(format!("{prefix}:inbox:{{broken}}"))
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = server.script_calls().await;
    let n = 200;
    let mut targets: Vec<String> = (0..n).map(|i| format!("u{}", i % 50)).collect();
    targets.insert(100, "broken".into());
    let sends = targets
        .iter()
        .enumerate()
        .map(|(i, to)| s.inbox.append(message(to, &format!("c{i}"), "hi")));
    let results = futures_util::future::join_all(sends).await;
    let calls = server.script_calls().await - before;
    for (i, r) in results.iter().enumerate() {
        match (i, r) {
            (100, Err(StoreError::Internal(e))) => assert!(e.contains("WRONGTYPE"), "{e}"),
            (100, r) => panic!("the broken message: {r:?}"),
            (i, r) => assert!(r.is_ok(), "{i}: {r:?}"),
        }
    }
    assert!(calls <= n as u64 / 10, "{n} messages sent at once took {calls} script calls");
    for u in 0..50 {
        assert_eq!(s.inbox.last_seq(&format!("u{u}")).await.unwrap(), 4);
    }
}

/// Route refreshes (every stream's, each third of the route TTL) are group-committed like
/// sends: 300 at once take a few script calls, and each still only extends its own session's
/// route, whatever else shares its call.
#[tokio::test]
async fn redis_route_refreshes_share_calls_and_each_extends_only_its_own_route() {
    let server = common::redis::RedisServer::start(false);
    let backend = Backend::redis_at(&server);
    let s = open(&backend, StoreOptions::default()).await;
    let ttl = Duration::from_secs(60);
    let route =
        |session: &str| Route { node_id: "n1".into(), session_id: session.into(), started_at: 1 };
    let n = 300;
    for i in 0..n {
        s.routes
            .put(&format!("u{}", i % 100), &format!("d{i}"), &route(&format!("s{i}")), ttl)
            .await
            .unwrap();
    }
    let before = server.script_calls().await;
    // Every third refresh comes from a session that no longer owns its device.
    let refreshes = (0..n).map(|i| {
        let session = if i % 3 == 0 { format!("old{i}") } else { format!("s{i}") };
        let routes = s.routes.clone();
        async move {
            let (user, device) = (format!("u{}", i % 100), format!("d{i}"));
            routes.refresh(&user, &device, &route(&session), ttl).await
        }
    });
    let results = futures_util::future::join_all(refreshes).await;
    let calls = server.script_calls().await - before;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i % 3 != 0, "refresh {i}");
    }
    assert!(calls <= n as u64 / 10, "{n} refreshes at once took {calls} script calls");
    // The owners' routes are all still there, none taken by a stale session.
    for u in 0..100 {
        let held = s.routes.get(&format!("u{u}")).await.unwrap();
        assert_eq!(held.len(), 3, "u{u}: {held:?}");
        assert!(held.iter().all(|(_, r)| r.session_id.starts_with('s')), "u{u}: {held:?}");
    }
}
