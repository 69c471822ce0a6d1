//! Groups past the fan-out limit (`--group-fanout-limit`): a message is stored once and pushed
//! to the members online (seq 0, ordered by conversation seq); a member who was away is told
//! in Welcome which groups moved and is sent what they missed, from the log, after their acked
//! conversation seq; nothing is written per member. On every store.
mod common;

use std::time::Duration;

use common::{Backend, TestNode, assert_quiet, next_event, next_message};
use tim::client::{self, Event, Session};
use tim::proto::{self, groups_client::GroupsClient};
use tonic::Code;

/// Members up to which a test node's groups write into inboxes: three members broadcast.
const FANOUT: u32 = 2;

async fn node(b: &Backend) -> TestNode {
    TestNode::with(b, |c| c.group_fanout_limit = FANOUT).await
}

async fn groups(node: &TestNode, user: &str) -> (GroupsClient<tonic::transport::Channel>, String) {
    let token = node.login(user, "phone").await.token;
    let ch = client::channel(&node.endpoint(), &node.opts).await.unwrap();
    (GroupsClient::new(ch), token)
}

async fn create(node: &TestNode, owner: &str, members: &[&str]) -> proto::GroupInfo {
    let (mut gc, token) = groups(node, owner).await;
    let req = proto::CreateGroupRequest {
        name: "crowd".into(),
        members: members.iter().map(|m| m.to_string()).collect(),
        history_for_new_members: false,
    };
    gc.create_group(client::authorized(req, &token)).await.unwrap().into_inner().group.unwrap()
}

async fn change(node: &TestNode, group: &str, users: &[&str], add: bool) {
    let (mut gc, token) = groups(node, "alice").await;
    let users = users.iter().map(|u| u.to_string()).collect();
    let req =
        client::authorized(proto::ChangeMembersRequest { group: group.into(), users }, &token);
    if add { gc.add_members(req).await } else { gc.remove_members(req).await }.unwrap();
}

async fn say(s: &Session, group: &str, from: u32, to: u32) {
    for i in from..=to {
        s.sender().send_to_group(&format!("c{i}"), group, &format!("m{i}")).await.unwrap();
    }
}

/// The next `n` messages as (seq, conv_seq, body), each checked to be of `group`.
async fn take(s: &mut Session, group: &str, n: usize) -> Vec<(u64, u64, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = next_message(s).await;
        assert_eq!(m.conversation, group);
        out.push((m.seq, m.conv_seq, m.body));
    }
    out
}

/// (0, conv_seq, body) for messages `m<i>` at conversation seqs `i + shift`.
fn bodies(from: u32, to: u32, shift: u64) -> Vec<(u64, u64, String)> {
    (from..=to).map(|i| (0, u64::from(i) + shift, format!("m{i}"))).collect()
}

async fn members_online_get_pushes_and_the_others_catch_up_from_their_cursor(b: &Backend) {
    let node = node(b).await;
    let alice = node.connect("alice", "phone", 0).await;
    let mut bob = node.connect("bob", "phone", 0).await;
    let group = create(&node, "alice", &["bob", "carol"]).await;
    assert_eq!(group.broadcast_from, 1, "three members are past the limit from the start");
    let created = next_message(&mut bob).await;
    assert_eq!((created.seq, created.conv_seq), (0, 1));
    assert!(created.event.is_some());
    say(&alice, &group.id, 1, 5).await;
    assert_eq!(take(&mut bob, &group.id, 5).await, bodies(1, 5, 1));

    // Carol was away: Welcome names the group, and the stream brings it all, in order.
    let mut carol = node.connect("carol", "phone", 0).await;
    let moved = carol.welcome.moved.clone();
    assert_eq!(moved.len(), 1);
    assert_eq!(
        (moved[0].conversation.as_str(), moved[0].after_seq, moved[0].last_seq),
        (group.id.as_str(), 0, 6)
    );
    assert!(next_message(&mut carol).await.event.is_some());
    assert_eq!(take(&mut carol, &group.id, 5).await, bodies(1, 5, 1));
    // Nothing was written into any member's inbox.
    assert_eq!((carol.welcome.last_seq, bob.welcome.last_seq), (0, 0));
    // She acks up to m3 (conversation seq 4) and leaves; she comes back to m4 and m5 only.
    carol.sender().ack_conversation(&group.id, 4).await.unwrap();
    carol.sender().flushed().await;
    drop(carol);
    let mut carol = common::eventually(|| async {
        let s = node.connect("carol", "phone", 0).await;
        (s.welcome.moved.first().map(|m| m.after_seq) == Some(4)).then_some(s)
    })
    .await;
    assert_eq!(take(&mut carol, &group.id, 2).await, bodies(4, 5, 1));
    // Live messages follow the catch-up, each once.
    say(&alice, &group.id, 6, 6).await;
    assert_eq!(take(&mut carol, &group.id, 1).await, bodies(6, 6, 1));
    assert_eq!(take(&mut bob, &group.id, 1).await, bodies(6, 6, 1));
    assert_quiet(&mut carol, Duration::from_millis(200)).await;
    // The sender's other device gets it too; the sending one recognises its own.
    let mine = take(&mut node.connect("alice", "laptop", 0).await, &group.id, 7).await;
    assert_eq!(mine.last(), Some(&(0, 7, "m6".to_string())));
}

async fn a_removed_member_gets_their_removal_and_nothing_after(b: &Backend) {
    let node = node(b).await;
    let alice = node.connect("alice", "phone", 0).await;
    let mut bob = node.connect("bob", "phone", 0).await;
    let mut carol = node.connect("carol", "phone", 0).await;
    let group = create(&node, "alice", &["bob", "carol", "dave"]).await.id;
    next_message(&mut bob).await;
    next_message(&mut carol).await;
    change(&node, &group, &["carol"], false).await;
    for s in [&mut bob, &mut carol] {
        let removed = next_message(s).await.event.unwrap();
        assert_eq!(
            (removed.kind, removed.users),
            (proto::group_event::Kind::Removed as i32, vec!["carol".to_string()])
        );
    }
    say(&alice, &group, 1, 1).await;
    assert_eq!(take(&mut bob, &group, 1).await, bodies(1, 1, 2));
    assert_quiet(&mut carol, Duration::from_millis(300)).await;
    // Back again, she is not sent the group: it is no longer hers.
    drop(carol);
    let mut carol = node.connect("carol", "phone", 0).await;
    assert!(carol.welcome.moved.is_empty(), "{:?}", carol.welcome.moved);
    assert_quiet(&mut carol, Duration::from_millis(200)).await;
}

async fn a_member_who_joins_later_starts_at_their_joining(b: &Backend) {
    let node = node(b).await;
    let alice = node.connect("alice", "phone", 0).await;
    let group = create(&node, "alice", &["bob", "carol"]).await.id;
    say(&alice, &group, 1, 3).await;
    change(&node, &group, &["dave"], true).await;
    say(&alice, &group, 4, 4).await;
    let mut dave = node.connect("dave", "phone", 0).await;
    let joined = next_message(&mut dave).await;
    assert_eq!(joined.conv_seq, 5);
    assert_eq!(joined.event.unwrap().kind, proto::group_event::Kind::Joined as i32);
    assert_eq!(take(&mut dave, &group, 1).await, bodies(4, 4, 2));
    assert_quiet(&mut dave, Duration::from_millis(200)).await;
}

async fn an_ack_past_what_was_sent_or_of_another_conversation_is_refused(b: &Backend) {
    let node = node(b).await;
    let mut bob = node.connect("bob", "phone", 0).await;
    let group = create(&node, "alice", &["bob", "carol"]).await.id;
    next_message(&mut bob).await;
    bob.sender().ack_conversation(&group, 2).await.unwrap();
    match next_event(&mut bob).await {
        Event::Closed(Some(status)) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}")
        }
        other => panic!("expected the stream to end, got {other:?}"),
    }
    let mut bob = node.connect("bob", "phone", 0).await;
    next_message(&mut bob).await;
    bob.sender().ack_conversation("g:someone-elses", 1).await.unwrap();
    match next_event(&mut bob).await {
        Event::Closed(Some(status)) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}")
        }
        other => panic!("expected the stream to end, got {other:?}"),
    }
}

on_every_store!(
    members_online_get_pushes_and_the_others_catch_up_from_their_cursor,
    a_removed_member_gets_their_removal_and_nothing_after,
    a_member_who_joins_later_starts_at_their_joining,
    an_ack_past_what_was_sent_or_of_another_conversation_is_refused,
);
