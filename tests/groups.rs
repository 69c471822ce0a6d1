//! Groups: membership rules and every refusal, messages and membership events in every
//! member's inbox once and in order, removal, history for members who join later. On every
//! store.
mod common;

use std::time::Duration;

use common::webhook::{Received, Webhook};
use common::{Backend, TestNode, assert_quiet, eventually, next_message};
use tim::client::{self, Session};
use tim::ids::Conversation;
use tim::proto::conversation_summary::Kind;
use tim::proto::{self, groups_client::GroupsClient};
use tonic::Code;

/// Groups calls as `user` (logged in as device "phone", like their stream).
async fn groups(node: &TestNode, user: &str) -> (GroupsClient<tonic::transport::Channel>, String) {
    let token = node.login(user, "phone").await.token;
    let ch = client::channel(&node.endpoint(), &node.opts).await.unwrap();
    (GroupsClient::new(ch), token)
}

async fn create(node: &TestNode, owner: &str, members: &[&str], history: bool) -> String {
    let (mut gc, token) = groups(node, owner).await;
    let req = proto::CreateGroupRequest {
        name: "team".into(),
        members: members.iter().map(|m| m.to_string()).collect(),
        history_for_new_members: history,
    };
    let resp = gc.create_group(client::authorized(req, &token)).await.unwrap().into_inner();
    let group = resp.group.unwrap();
    assert_eq!((group.name.as_str(), group.owner.as_str()), ("team", owner));
    assert_eq!(group.member_count as usize, members.len() + 1);
    assert!(group.id.starts_with("g:"), "{}", group.id);
    group.id
}

async fn change(
    node: &TestNode,
    actor: &str,
    group: &str,
    users: &[&str],
    add: bool,
) -> Result<proto::GroupResponse, tonic::Status> {
    let (mut gc, token) = groups(node, actor).await;
    let req = proto::ChangeMembersRequest {
        group: group.into(),
        users: users.iter().map(|u| u.to_string()).collect(),
    };
    let req = client::authorized(req, &token);
    let resp = if add { gc.add_members(req).await } else { gc.remove_members(req).await };
    resp.map(|r| r.into_inner())
}

async fn send(s: &Session, group: &str, client_msg_id: &str, body: &str) -> proto::SendAck {
    s.sender().send_to_group(client_msg_id, group, body).await.unwrap()
}

fn event_of(m: &proto::Message) -> (i32, Vec<String>) {
    let e = m.event.clone().expect("an event");
    (e.kind, e.users)
}

async fn messages_and_events_reach_every_member_once_in_order(b: &Backend) {
    let node = TestNode::start(b).await;
    let alice = node.connect("alice", "phone", 0).await;
    let mut bob = node.connect("bob", "phone", 0).await;
    let mut carol = node.connect("carol", "phone", 0).await;
    let group = create(&node, "alice", &["bob", "carol"], false).await;
    for s in [&mut bob, &mut carol] {
        let created = next_message(s).await;
        assert_eq!((created.conversation.as_str(), created.conv_seq), (group.as_str(), 1));
        // It names no one: each member's copy stays small, whatever the group's size.
        assert_eq!(event_of(&created), (proto::group_event::Kind::Created as i32, vec![]));
        assert_eq!(created.event.unwrap().name, "team");
    }
    let mut acks = Vec::new();
    for i in 1..=3 {
        acks.push(send(&alice, &group, &format!("c{i}"), &format!("m{i}")).await);
    }
    assert_eq!(
        acks.iter().map(|a| (a.seq, a.conv_seq)).collect::<Vec<_>>(),
        [(0, 2), (0, 3), (0, 4)]
    );
    for s in [&mut bob, &mut carol] {
        for i in 1..=3u64 {
            let m = next_message(s).await;
            assert_eq!(
                (m.seq, m.conv_seq, m.from.as_str(), m.to.as_str()),
                (i + 1, i + 1, "alice", "")
            );
            assert_eq!((m.body, m.conversation.as_str()), (format!("m{i}"), group.as_str()));
        }
    }
    // A retry is stored once and shown once.
    let again = send(&alice, &group, "c1", "m1").await;
    assert!(again.duplicate && again.conv_seq == 2);
    assert_quiet(&mut bob, Duration::from_millis(200)).await;
    // History has the event and the messages, for every member.
    let req = proto::HistoryRequest { conversation: group.clone(), ..Default::default() };
    let page = node.history("carol", req).await.unwrap().messages;
    assert_eq!(page.iter().map(|m| m.conv_seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(page[0].event.is_some() && page[1].event.is_none());
}

async fn a_removed_member_receives_nothing_after_removal(b: &Backend) {
    let node = TestNode::start(b).await;
    let alice = node.connect("alice", "phone", 0).await;
    let mut bob = node.connect("bob", "phone", 0).await;
    let mut carol = node.connect("carol", "phone", 0).await;
    let group = create(&node, "alice", &["bob", "carol"], false).await;
    next_message(&mut bob).await;
    next_message(&mut carol).await;
    let resp = change(&node, "alice", &group, &["carol"], false).await.unwrap();
    assert_eq!((resp.group.unwrap().member_count, resp.event_seq), (2, 2));
    // Carol's last message of the group is her removal; bob sees it too.
    for s in [&mut bob, &mut carol] {
        let removed = next_message(s).await;
        assert_eq!(
            event_of(&removed),
            (proto::group_event::Kind::Removed as i32, vec!["carol".into()])
        );
    }
    send(&alice, &group, "c1", "after").await;
    assert_eq!(next_message(&mut bob).await.body, "after");
    assert_quiet(&mut carol, Duration::from_millis(300)).await;
    // She can neither send, read nor look it up any more.
    let err = carol.sender().send_to_group("x", &group, "let me in").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err:?}");
    let req = proto::HistoryRequest { conversation: group.clone(), ..Default::default() };
    assert_eq!(node.history("carol", req).await.unwrap_err().code(), Code::NotFound);
    // Bob leaves: alice sees it as an event.
    let (mut gc, token) = groups(&node, "bob").await;
    let req = proto::LeaveGroupRequest { group: group.clone() };
    gc.leave_group(client::authorized(req, &token)).await.unwrap();
    let req = proto::HistoryRequest { conversation: group.clone(), ..Default::default() };
    let last = node.history("alice", req).await.unwrap().messages.pop().unwrap();
    assert_eq!(event_of(&last), (proto::group_event::Kind::Left as i32, vec!["bob".into()]));
    drop(alice);
}

async fn membership_rules_and_every_refusal(b: &Backend) {
    let node = TestNode::with(b, |c| c.group_max_members = 4).await;
    let group = create(&node, "alice", &["bob"], false).await;
    let code = |r: Result<proto::GroupResponse, tonic::Status>| r.unwrap_err().code();
    // A plain member may not add or remove; a stranger is told the group is not there.
    assert_eq!(code(change(&node, "bob", &group, &["dave"], true).await), Code::PermissionDenied);
    assert_eq!(code(change(&node, "mallory", &group, &["mallory"], true).await), Code::NotFound);
    assert_eq!(code(change(&node, "alice", "g:nope", &["dave"], true).await), Code::NotFound);
    // The owner stays (removing oneself changes nothing; leaving is refused); the group stays
    // within its limit; ids and names are checked.
    assert_eq!(change(&node, "alice", &group, &["alice"], false).await.unwrap().event_seq, 0);
    let (mut gc, token) = groups(&node, "alice").await;
    let leave = proto::LeaveGroupRequest { group: group.clone() };
    let err = gc.leave_group(client::authorized(leave, &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        code(change(&node, "alice", &group, &["c", "d", "e"], true).await),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(change(&node, "alice", "d:5:alice:bob", &["dave"], true).await),
        Code::InvalidArgument
    );
    assert_eq!(code(change(&node, "alice", &group, &["a b"], true).await), Code::InvalidArgument);
    assert_eq!(code(change(&node, "alice", &group, &[], true).await), Code::InvalidArgument);
    let many: Vec<String> = (0..101).map(|i| format!("x{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(code(change(&node, "alice", &group, &many, true).await), Code::InvalidArgument);
    let bad_name = proto::CreateGroupRequest { name: String::new(), ..Default::default() };
    let err = gc.create_group(client::authorized(bad_name, &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = gc
        .create_group(proto::CreateGroupRequest { name: "x".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Adding someone already in changes nothing and logs nothing.
    let resp = change(&node, "alice", &group, &["bob"], true).await.unwrap();
    assert_eq!(resp.event_seq, 0);
    // A stranger's message is refused and stored nowhere.
    let mallory = node.connect("mallory", "phone", 0).await;
    let err = mallory.sender().send_to_group("m1", &group, "spam").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
    let err = node.send_unary("alice", "u1", "", "to nobody").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Both a recipient and a group, an over-long name, more first members than the limit.
    let token = node.login("alice", "server").await.token;
    let both = proto::SendRequest {
        client_msg_id: "u2".into(),
        to: "bob".into(),
        body: "where to?".into(),
        group: group.clone(),
        change: None,
    };
    let err = node.gateway().await.send(client::authorized(both, &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let long = proto::CreateGroupRequest { name: "n".repeat(129), ..Default::default() };
    let err = gc.create_group(client::authorized(long, &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let crowd: Vec<String> = (0..4).map(|i| format!("u{i}")).collect();
    let big =
        proto::CreateGroupRequest { name: "big".into(), members: crowd, ..Default::default() };
    let err = gc.create_group(client::authorized(big, &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "5 with the owner, over 4");
    let req = proto::HistoryRequest { conversation: group.clone(), ..Default::default() };
    assert_eq!(node.history("alice", req).await.unwrap().messages.len(), 1, "the creation only");
}

async fn history_before_joining_is_a_group_setting(b: &Backend) {
    let node = TestNode::start(b).await;
    let alice = node.connect("alice", "phone", 0).await;
    for history in [false, true] {
        let group = create(&node, "alice", &["bob"], history).await;
        send(&alice, &group, "c1", "before dave").await;
        let joined = change(&node, "alice", &group, &["dave"], true).await.unwrap().event_seq;
        assert_eq!(joined, 3);
        send(&alice, &group, "c2", "after dave").await;
        let req = proto::HistoryRequest { conversation: group.clone(), ..Default::default() };
        let seen: Vec<u64> =
            node.history("dave", req).await.unwrap().messages.iter().map(|m| m.conv_seq).collect();
        let want: &[u64] = if history { &[1, 2, 3, 4] } else { &[3, 4] };
        assert_eq!(seen, want, "history_for_new_members: {history}");
    }
}

async fn get_group_pages_its_members_for_members_only(b: &Backend) {
    let node = TestNode::start(b).await;
    let group = create(&node, "alice", &["erin", "bob", "dave", "carol"], false).await;
    let (mut gc, token) = groups(&node, "carol").await;
    let page = |after: &str| proto::GetGroupRequest {
        group: group.clone(),
        after: after.into(),
        limit: 2,
    };
    let first = gc.get_group(client::authorized(page(""), &token)).await.unwrap().into_inner();
    assert_eq!(first.group.as_ref().unwrap().member_count, 5);
    let users = |r: &proto::GetGroupResponse| {
        r.members.iter().map(|m| (m.user_id.clone(), m.role)).collect::<Vec<_>>()
    };
    assert_eq!(
        users(&first),
        [("alice".into(), proto::Role::Owner as i32), ("bob".into(), proto::Role::Member as i32)]
    );
    let next = gc.get_group(client::authorized(page("bob"), &token)).await.unwrap().into_inner();
    assert_eq!(users(&next).into_iter().map(|(u, _)| u).collect::<Vec<_>>(), ["carol", "dave"]);
    let (mut stranger, token) = groups(&node, "mallory").await;
    let err = stranger.get_group(client::authorized(page(""), &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

async fn set_role(
    node: &TestNode,
    actor: &str,
    group: &str,
    user: &str,
    role: proto::Role,
) -> Result<proto::GroupResponse, tonic::Status> {
    let (mut gc, token) = groups(node, actor).await;
    let req = proto::SetRoleRequest { group: group.into(), user: user.into(), role: role as i32 };
    gc.set_role(client::authorized(req, &token)).await.map(|r| r.into_inner())
}

async fn rename(
    node: &TestNode,
    actor: &str,
    group: &str,
    name: &str,
) -> Result<proto::GroupResponse, tonic::Status> {
    let (mut gc, token) = groups(node, actor).await;
    let req = proto::RenameGroupRequest { group: group.into(), name: name.into() };
    gc.rename_group(client::authorized(req, &token)).await.map(|r| r.into_inner())
}

async fn admins_manage_members_and_the_owner_hands_the_group_on(b: &Backend) {
    let node = TestNode::start(b).await;
    let group = create(&node, "alice", &["bob", "carol"], false).await;
    let denied = |r: Result<proto::GroupResponse, tonic::Status>| {
        r.unwrap_err().code() == Code::PermissionDenied
    };
    assert!(denied(set_role(&node, "bob", &group, "carol", proto::Role::Admin).await));
    assert!(denied(rename(&node, "bob", &group, "bob's").await));
    set_role(&node, "alice", &group, "bob", proto::Role::Admin).await.unwrap();
    // An admin adds, removes plain members and renames; not the owner, and gives no roles.
    change(&node, "bob", &group, &["dave"], true).await.unwrap();
    change(&node, "bob", &group, &["carol"], false).await.unwrap();
    assert!(denied(change(&node, "bob", &group, &["alice"], false).await));
    assert!(denied(set_role(&node, "bob", &group, "dave", proto::Role::Admin).await));
    let renamed = rename(&node, "bob", &group, "the team").await.unwrap();
    assert_eq!(renamed.group.unwrap().name, "the team");
    let bad = rename(&node, "bob", &group, "").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let bad = set_role(&node, "alice", &group, "bob", proto::Role::Unspecified).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(
        set_role(&node, "alice", &group, "carol", proto::Role::Admin).await.unwrap_err().code(),
        Code::NotFound
    );
    // Handing on: bob owns it, alice is an admin and may leave.
    let handed = set_role(&node, "alice", &group, "bob", proto::Role::Owner).await.unwrap();
    assert_eq!(handed.group.unwrap().owner, "bob");
    let (mut gc, token) = groups(&node, "bob").await;
    let req = proto::GetGroupRequest { group: group.clone(), ..Default::default() };
    let members = gc.get_group(client::authorized(req, &token)).await.unwrap().into_inner().members;
    let roles: Vec<_> = members.iter().map(|m| (m.user_id.as_str(), m.role)).collect();
    let (owner, admin, member) =
        (proto::Role::Owner as i32, proto::Role::Admin as i32, proto::Role::Member as i32);
    assert_eq!(roles, [("alice", admin), ("bob", owner), ("dave", member)]);
    let (mut gc, token) = groups(&node, "alice").await;
    gc.leave_group(client::authorized(proto::LeaveGroupRequest { group: group.clone() }, &token))
        .await
        .unwrap();
    // Every change is in the conversation, in order.
    let req = proto::HistoryRequest { conversation: group.clone(), ..Default::default() };
    let kinds: Vec<i32> =
        node.history("bob", req).await.unwrap().messages.iter().map(|m| event_of(m).0).collect();
    use proto::group_event::Kind;
    let want = [
        Kind::Created,
        Kind::RoleChanged,
        Kind::Joined,
        Kind::Removed,
        Kind::Renamed,
        Kind::RoleChanged,
        Kind::Left,
    ];
    assert_eq!(kinds, want.map(|k| k as i32));
}

/// Members sending at once: their messages race from logging to delivery (another sender's
/// later message can reach a member first, a gap filled from the log), yet every member gets
/// every other member's messages once, in the group's order.
async fn concurrent_senders_reach_every_member_in_conversation_order(b: &Backend) {
    let node = TestNode::start(b).await;
    let names = ["m0", "m1", "m2", "m3", "m4"];
    let mut sessions = Vec::new();
    for n in names {
        sessions.push(node.connect(n, "phone", 0).await);
    }
    let group = create(&node, "m0", &names[1..], false).await;
    let sends = sessions.iter().zip(names).map(|(s, n)| {
        let (sender, group) = (s.sender(), group.clone());
        async move {
            for i in 0..20 {
                sender
                    .send_to_group(&format!("{n}-{i}"), &group, &format!("{n}#{i}"))
                    .await
                    .unwrap();
            }
        }
    });
    futures_util::future::join_all(sends).await;
    for (s, n) in sessions.iter_mut().zip(names) {
        let mut last = 0;
        let mut got = 0;
        while got < 80 {
            let m = next_message(s).await;
            assert!(m.conv_seq > last, "{n}: {} after {last}", m.conv_seq);
            last = m.conv_seq;
            if m.event.is_none() {
                assert!(!m.body.starts_with(&format!("{n}#")), "{n} got its own message");
                got += 1;
            }
        }
        assert_quiet(s, Duration::from_millis(100)).await;
    }
}

/// A node that dies between logging a group message and delivering it leaves a marker; any
/// node's sweep completes the delivery, once, to every member. (Redis and Redis Cluster only:
/// a memory store dies with its node.)
#[tokio::test]
async fn a_fan_out_cut_short_is_completed_by_a_sweep_on_redis() {
    fan_out_cut_short(&Backend::redis()).await;
}

#[tokio::test]
async fn a_fan_out_cut_short_is_completed_by_a_sweep_on_redis_cluster() {
    fan_out_cut_short(&Backend::redis_cluster()).await;
}

async fn fan_out_cut_short(b: &Backend) {
    use tim::store::groups::{GroupChange, Groups};
    use tim::store::{Inbox, NewMessage};
    const LIMITS: tim::store::groups::Limits =
        tim::store::groups::Limits { max_members: 10, fanout: 10 };
    let Backend::Redis { url, prefix, cluster } = b else { unreachable!("a Redis backend") };
    let urls: Vec<String> = url.split(',').map(str::to_string).collect();
    let connect = || async {
        let opts = tim::store::StoreOptions::default();
        tim::store::RedisStore::connect(&urls, *cluster, Duration::from_secs(2), prefix, opts)
            .await
            .unwrap()
    };
    let (dying, survivor) = (connect().await, connect().await);
    let new = |from: &str, id: &str| NewMessage {
        from: from.into(),
        origin_device: "phone".into(),
        to: String::new(),
        conversation: "g:cut-short".into(),
        client_msg_id: id.into(),
        body: format!("body {id}"),
        msg_id: tim::ids::new_id(),
        sent_at: tim::auth::unix_ms(std::time::SystemTime::now()),
        event: None,
    };
    let create = GroupChange::Create {
        name: "cut".into(),
        members: vec!["bob".into(), "carol".into()],
        history_for_new_members: false,
    };
    let created = dying.change_group(new("alice", "e1"), create, LIMITS).await.unwrap();
    dying.deliver_group(&created.event.unwrap(), "phone", &created.members).await.unwrap();
    // Logged, never delivered: the node "died" here.
    dying.log_group_message(new("alice", "c1"), 10).await.unwrap();
    dying.log_group_message(new("alice", "c2"), 10).await.unwrap();
    assert_eq!(survivor.sweep_fanout(Duration::from_secs(3600)).await.unwrap(), 0, "not stale yet");
    assert_eq!(survivor.sweep_fanout(Duration::ZERO).await.unwrap(), 2);
    for member in ["bob", "carol"] {
        let inbox = survivor.read(member, 0, 10).await.unwrap();
        let got: Vec<(u64, &str)> = inbox.iter().map(|m| (m.conv_seq, m.body.as_str())).collect();
        assert_eq!(got, [(1, ""), (2, "body c1"), (3, "body c2")], "{member}");
    }
    assert_eq!(survivor.sweep_fanout(Duration::ZERO).await.unwrap(), 0, "nothing left");
    // A change cut short the same way: its event reaches everyone, the new member too.
    let add = GroupChange::Add(vec!["dave".into()]);
    dying.change_group(new("alice", "e2"), add, LIMITS).await.unwrap();
    assert_eq!(survivor.sweep_fanout(Duration::ZERO).await.unwrap(), 1);
    for member in ["bob", "carol", "dave"] {
        let inbox = survivor.read(member, 0, 10).await.unwrap();
        let last = inbox.last().unwrap();
        assert_eq!(
            (last.conv_seq, last.event.as_ref().map(|e| e.users.clone())),
            (4, Some(vec!["dave".to_string()])),
            "{member}"
        );
    }
}

on_every_store!(
    concurrent_senders_reach_every_member_in_conversation_order,
    admins_manage_members_and_the_owner_hands_the_group_on,
    messages_and_events_reach_every_member_once_in_order,
    a_removed_member_receives_nothing_after_removal,
    membership_rules_and_every_refusal,
    history_before_joining_is_a_group_setting,
    get_group_pages_its_members_for_members_only,
    list_conversations_shows_titles_last_messages_and_unread_counts,
    list_conversations_pages_in_activity_order_and_refuses_bad_calls,
    receipts_count_the_other_members_who_read_each_message,
    read_receipts_refuse_outsiders_and_bad_calls,
    offline_push_retries_until_taken_and_skips_who_is_online,
    typing_reaches_a_small_groups_members_online_only,
    edits_deletes_and_recalls_are_logged_and_history_shows_the_latest_state,
);

/// A unary Send as `from` that changes message `target` of the conversation with `to` (a user,
/// or a group's id).
async fn change_unary(
    node: &TestNode,
    from: &str,
    to: &str,
    kind: proto::change::Kind,
    target: u64,
    body: &str,
) -> Result<proto::SendResponse, tonic::Status> {
    let token = node.login(from, "phone").await.token;
    let group = to.starts_with("g:");
    let req = proto::SendRequest {
        client_msg_id: tim::ids::new_id(),
        to: if group { String::new() } else { to.into() },
        group: if group { to.into() } else { String::new() },
        body: body.into(),
        change: Some(proto::Change { kind: kind.into(), target_seq: target }),
    };
    node.gateway().await.send(client::authorized(req, &token)).await.map(|r| r.into_inner())
}

/// History as `user` of `conversation`: (conv_seq, body, changed_by) of each message that is
/// no event.
async fn latest(node: &TestNode, user: &str, conversation: &str) -> Vec<(u64, String, u64)> {
    let req = proto::HistoryRequest { conversation: conversation.into(), ..Default::default() };
    let page = node.history(user, req).await.unwrap().messages;
    page.into_iter()
        .filter(|m| m.event.is_none())
        .map(|m| (m.conv_seq, m.body, m.changed_by))
        .collect()
}

async fn edits_deletes_and_recalls_are_logged_and_history_shows_the_latest_state(b: &Backend) {
    use proto::change::Kind as Change;
    use proto::group_event::Kind as Event;
    let node = TestNode::with(b, |c| c.recall_window = Duration::from_secs(2)).await;
    let direct = Conversation::direct("alice", "bob").id();
    let alice = node.connect("alice", "phone", 0).await;
    let mut bob = node.connect("bob", "phone", 0).await;
    alice.sender().send("bob", "helo").await.unwrap();
    alice.sender().send("bob", "second").await.unwrap();
    // An edit is a message of the conversation: in order, to every device, pointing at its target.
    let ack = alice.sender().change("e1", "bob", Change::Edit, 1, "hello").await.unwrap();
    assert_eq!(ack.conv_seq, 3);
    let edit = take_messages(&mut bob, 3).await.pop().unwrap();
    let e = edit.event.clone().expect("an event");
    assert_eq!((e.kind(), e.target_seq, edit.body.as_str()), (Event::Edited, 1, "hello"));
    alice.sender().change("e2", "bob", Change::Edit, 1, "hello!").await.unwrap();
    alice.sender().change("r1", "bob", Change::Recall, 2, "").await.unwrap();
    let want = vec![(1, "hello!".to_string(), 4), (2, String::new(), 5)];
    assert_eq!(latest(&node, "bob", &direct).await, want, "the latest state of each");
    // A retry of the recall (its ack lost) gets the same ack, not "recalled already".
    let again = alice.sender().change("r1", "bob", Change::Recall, 2, "").await.unwrap();
    assert_eq!(again.conv_seq, 5, "the retry is the same change");
    // Refusals: someone else's message, a change of a change, no such message, a body on a
    // delete, a recall too late.
    let err = change_unary(&node, "bob", "alice", Change::Edit, 1, "mine now").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for (kind, target, body) in [
        (Change::Edit, 3, "x"),
        (Change::Edit, 99, "x"),
        (Change::Delete, 1, "x"),
        (Change::Edit, 0, "x"),
        (Change::Unspecified, 1, "x"),
    ] {
        let err = change_unary(&node, "alice", "bob", kind, target, body).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{kind:?} {target}: {err:?}");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = change_unary(&node, "alice", "bob", Change::Recall, 1, "").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // A retry that comes after the window still gets its first ack: it was in time when sent.
    let again = alice.sender().change("r1", "bob", Change::Recall, 2, "").await.unwrap();
    assert_eq!(again.conv_seq, 5, "the late retry is the same change");
    change_unary(&node, "alice", "bob", Change::Delete, 1, "").await.unwrap();
    assert_eq!(latest(&node, "alice", &direct).await[0], (1, String::new(), 6));
    // Deleted or recalled stays so: no edit brings it back.
    for target in [1, 2] {
        let err = change_unary(&node, "alice", "bob", Change::Edit, target, "back").await;
        assert_eq!(err.unwrap_err().code(), Code::FailedPrecondition, "{target}");
    }
    assert_eq!(latest(&node, "bob", &direct).await, [(1, String::new(), 6), (2, String::new(), 5)]);

    // A group: a plain member may not delete another's message; the owner may.
    let group = create(&node, "alice", &["bob", "carol"], false).await;
    let carol = node.connect("carol", "phone", 0).await;
    let said = send(&carol, &group, "c1", "oops").await.conv_seq;
    let err = change_unary(&node, "bob", &group, Change::Delete, said, "").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    change_unary(&node, "alice", &group, Change::Delete, said, "").await.unwrap();
    assert_eq!(latest(&node, "bob", &group).await, [(said, String::new(), said + 1)]);
    let err = change_unary(&node, "mallory", &group, Change::Delete, said, "").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

/// The next `n` messages of `s`.
async fn take_messages(s: &mut Session, n: usize) -> Vec<proto::Message> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next_message(s).await);
    }
    out
}

async fn typing_reaches_a_small_groups_members_online_only(b: &Backend) {
    use proto::signal::Kind;
    let node = TestNode::with(b, |c| c.group_fanout_limit = 3).await;
    let small = create(&node, "alice", &["bob", "carol"], false).await;
    let large = create(&node, "alice", &["bob", "carol", "dave"], false).await;
    let alice = node.connect("alice", "phone", 0).await;
    let mut bob = node.connect("bob", "phone", 0).await;
    // Bob's inbox first: the two creations.
    assert!(next_message(&mut bob).await.event.is_some());
    assert!(next_message(&mut bob).await.event.is_some());
    alice.sender().typing(&small).await.unwrap();
    match common::next_event(&mut bob).await {
        client::Event::Signal(s) => {
            assert_eq!(
                (s.kind(), s.user_id.as_str(), s.conversation.as_str()),
                (Kind::Typing, "alice", small.as_str())
            )
        }
        other => panic!("expected typing, got {other:?}"),
    }
    // Past the fan-out limit typing is not relayed (its member list is not read for it).
    alice.sender().typing(&large).await.unwrap();
    assert_quiet(&mut bob, Duration::from_millis(300)).await;
    // Not a member: the stream ends NOT_FOUND.
    let mut mallory = node.connect("mallory", "phone", 0).await;
    mallory.sender().typing(&small).await.unwrap();
    match common::next_event(&mut mallory).await {
        client::Event::Closed(Some(status)) => assert_eq!(status.code(), Code::NotFound),
        other => panic!("expected the stream to end, got {other:?}"),
    } // Not a conversation id: INVALID_ARGUMENT.
    let mut odd = node.connect("odd", "phone", 0).await;
    odd.sender().typing("nonsense").await.unwrap();
    match common::next_event(&mut odd).await {
        client::Event::Closed(Some(status)) => assert_eq!(status.code(), Code::InvalidArgument),
        other => panic!("expected the stream to end, got {other:?}"),
    }
}

const PUSH_SECRET: &str = "push-secret-0123456789";

/// The webhook's requests once `n` have come and nothing more does for a while.
async fn pushed(hook: &Webhook, n: usize) -> Vec<Received> {
    eventually(|| async { (hook.received().len() >= n).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = hook.received();
    assert_eq!(got.len(), n, "{got:?}");
    got
}

async fn offline_push_retries_until_taken_and_skips_who_is_online(b: &Backend) {
    // Two failures, then taken; the fourth request is refused.
    let hook = Webhook::start(&[503, 503, 200, 400]).await;
    let node = TestNode::with(b, |c| {
        c.push.push_webhook = Some(hook.url.clone());
        c.push.push_secret = Some(PUSH_SECRET.into());
        c.push.push_backoff = Duration::from_millis(50);
    })
    .await;
    let ack = node.send_unary("alice", "d1", "bob", "wake up").await.unwrap();
    let got = pushed(&hook, 3).await;
    for r in &got {
        assert_eq!(r.path, "/hook");
        assert_eq!(r.body, got[0].body, "the same notification each try");
        assert_eq!(r.header("x-tim-delivery"), Some(ack.msg_id.as_str()));
        let mac = tim::push::sign(PUSH_SECRET.as_bytes(), &r.body);
        let want = format!("sha256={}", tim::push::hex(&mac));
        assert_eq!(r.header("x-tim-signature"), Some(want.as_str()));
    }
    let n: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!((n["user"].as_str(), n["from"].as_str()), (Some("bob"), Some("alice")));
    assert_eq!((n["body"].as_str(), n["conv_seq"].as_u64()), (Some("wake up"), Some(1)));
    // Bob online: nothing to push, for a direct message or a group's.
    let mut bob = node.connect("bob", "phone", 0).await;
    node.send_unary("alice", "d2", "bob", "here?").await.unwrap();
    let group = create(&node, "alice", &["bob", "carol"], false).await;
    let alice = node.connect("alice", "phone", 0).await;
    send(&alice, &group, "g1", "team news").await;
    assert_eq!(next_message(&mut bob).await.body, "wake up");
    // Only carol, offline, is told (not of the group's creation, not alice of her own); her
    // notification is refused, and a refusal is not tried again.
    let got = pushed(&hook, 4).await;
    let n: serde_json::Value = serde_json::from_slice(&got[3].body).unwrap();
    assert_eq!(
        (n["user"].as_str(), n["conversation"].as_str()),
        (Some("carol"), Some(group.as_str()))
    );
}

async fn mark_read(
    node: &TestNode,
    user: &str,
    conversation: &str,
    with: &str,
    conv_seq: u64,
) -> Result<proto::MarkReadResponse, tonic::Status> {
    let token = node.login(user, "reader").await.token;
    let req =
        proto::MarkReadRequest { conversation: conversation.into(), with: with.into(), conv_seq };
    node.gateway().await.mark_read(client::authorized(req, &token)).await.map(|r| r.into_inner())
}

async fn receipts(
    node: &TestNode,
    user: &str,
    conversation: &str,
    conv_seq: u64,
    limit: u32,
    page_token: &str,
) -> Result<proto::GetReceiptsResponse, tonic::Status> {
    let token = node.login(user, "reader").await.token;
    let req = proto::GetReceiptsRequest {
        conversation: conversation.into(),
        conv_seq,
        limit,
        page_token: page_token.into(),
        ..Default::default()
    };
    node.gateway().await.get_receipts(client::authorized(req, &token)).await.map(|r| r.into_inner())
}

/// (read_by, recipients, readers) of message `seq`, asked by `user`.
async fn read_by(node: &TestNode, user: &str, group: &str, seq: u64) -> (u32, u32, Vec<String>) {
    let r = receipts(node, user, group, seq, 0, "").await.unwrap();
    (r.read_by, r.recipients, r.readers.into_iter().map(|r| r.user_id).collect())
}

async fn receipts_count_the_other_members_who_read_each_message(b: &Backend) {
    let node = TestNode::start(b).await;
    let group = create(&node, "alice", &["bob", "carol", "dave"], false).await;
    let alice = node.connect("alice", "phone", 0).await;
    assert_eq!(send(&alice, &group, "m1", "lunch?").await.conv_seq, 2);
    assert_eq!(read_by(&node, "bob", &group, 2).await, (0, 3, vec![]));
    // The sender reading her own message does not count; a cursor before it does not either.
    mark_read(&node, "alice", &group, "", 0).await.unwrap();
    mark_read(&node, "carol", &group, "", 1).await.unwrap();
    assert_eq!(read_by(&node, "bob", &group, 2).await, (0, 3, vec![]));
    mark_read(&node, "bob", &group, "", 2).await.unwrap();
    mark_read(&node, "dave", &group, "", 0).await.unwrap();
    assert_eq!(read_by(&node, "carol", &group, 2).await, (2, 3, vec!["bob".into(), "dave".into()]));
    // The creation event (seq 1) has been read by everyone but its sender, alice.
    assert_eq!(read_by(&node, "carol", &group, 1).await.0, 3);
    // Paged: every reader once.
    let (mut who, mut token) = (Vec::new(), String::new());
    loop {
        let page = receipts(&node, "bob", &group, 1, 1, &token).await.unwrap();
        who.extend(page.readers.into_iter().map(|r| (r.user_id, r.read_seq)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let want = [("carol", 1), ("bob", 2), ("dave", 2)].map(|(u, s)| (u.to_string(), s));
    assert_eq!(who, want, "by cursor, then user id; the sender left out");
    // A removed member's cursor no longer counts.
    change(&node, "alice", &group, &["dave"], false).await.unwrap();
    assert_eq!(read_by(&node, "bob", &group, 2).await, (1, 2, vec!["bob".into()]));
    // Direct: whether the other user has read it.
    node.send_unary("alice", "d1", "bob", "one").await.unwrap();
    node.send_unary("alice", "d2", "bob", "two").await.unwrap();
    let direct = Conversation::direct("alice", "bob").id();
    mark_read(&node, "bob", "", "alice", 1).await.unwrap();
    assert_eq!(read_by(&node, "alice", &direct, 1).await, (1, 1, vec!["bob".into()]));
    assert_eq!(read_by(&node, "alice", &direct, 2).await, (0, 1, vec![]));
    // Past the newest: read up to the newest.
    assert_eq!(mark_read(&node, "bob", "", "alice", 99).await.unwrap().read_seq, 2);
}

async fn read_receipts_refuse_outsiders_and_bad_calls(b: &Backend) {
    let node = TestNode::start(b).await;
    let group = create(&node, "alice", &["bob"], false).await;
    node.send_unary("alice", "d1", "bob", "private").await.unwrap();
    let direct = Conversation::direct("alice", "bob").id();
    let err = mark_read(&node, "mallory", &group, "", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = receipts(&node, "mallory", &group, 1, 0, "").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = mark_read(&node, "mallory", &direct, "", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = receipts(&node, "mallory", &direct, 1, 0, "").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for (conversation, with) in [("", ""), (group.as_str(), "bob"), ("nonsense", ""), ("", "a b")] {
        let err = mark_read(&node, "alice", conversation, with, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{conversation:?} {with:?}: {err:?}");
    }
    let err = receipts(&node, "alice", &group, 0, 0, "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "conv_seq 0: {err:?}");
    let err = receipts(&node, "alice", &group, 1, 0, "x").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "page token: {err:?}");
    let mut gw = node.gateway().await;
    let req = proto::MarkReadRequest { conversation: group.clone(), ..Default::default() };
    let err = gw.mark_read(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = gw.mark_read(client::authorized(req, "forged")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let req = proto::GetReceiptsRequest { conversation: group, conv_seq: 1, ..Default::default() };
    let err = gw.get_receipts(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Nothing an outsider tried moved a cursor.
    let page = node.list_conversations("alice", 0, "").await.unwrap();
    assert!(page.conversations.iter().all(|c| c.peer_read_seq == 0 && c.read_seq == 0));
}

/// ListConversations as `user`: (id, kind, title, unread, last body) of the first page.
async fn listed(node: &TestNode, user: &str) -> Vec<(String, Kind, String, u64, String)> {
    let page = node.list_conversations(user, 0, "").await.unwrap();
    assert!(page.next_page_token.is_empty());
    let rows = page.conversations.into_iter().map(|c| {
        let body = c.last_message.map(|m| m.body).unwrap_or_default();
        (c.id, Kind::try_from(c.kind).unwrap(), c.title, c.unread, body)
    });
    rows.collect()
}

async fn list_conversations_shows_titles_last_messages_and_unread_counts(b: &Backend) {
    let node = TestNode::start(b).await;
    node.send_unary("alice", "d1", "bob", "one").await.unwrap();
    node.send_unary("alice", "d2", "bob", "two").await.unwrap();
    let direct = Conversation::direct("alice", "bob").id();
    let row = |id: &str, kind, title: &str, unread, body: &str| {
        (id.to_string(), kind, title.to_string(), unread, body.to_string())
    };
    // A direct conversation is indexed within a second of its messages.
    let want = vec![row(&direct, Kind::Direct, "alice", 2, "two")];
    eventually(|| async { (listed(&node, "bob").await == want).then_some(()) }).await;
    let want = vec![row(&direct, Kind::Direct, "bob", 0, "two")];
    eventually(|| async { (listed(&node, "alice").await == want).then_some(()) }).await;
    // Bob's device takes both and acks them: delivered, not read.
    let mut bob = node.connect("bob", "phone", 0).await;
    assert_eq!(next_message(&mut bob).await.body, "one");
    assert_eq!(next_message(&mut bob).await.seq, 2);
    bob.sender().ack(2).await.unwrap();
    // He reads the first: one unread, for all his devices; alice sees "read up to 1".
    assert_eq!(mark_read(&node, "bob", "", "alice", 1).await.unwrap().read_seq, 1);
    assert_eq!(listed(&node, "bob").await, [row(&direct, Kind::Direct, "alice", 1, "two")]);
    let page = node.list_conversations("alice", 0, "").await.unwrap();
    let c = &page.conversations[0];
    assert_eq!((c.read_seq, c.peer_read_seq, page.total_unread), (0, 1, 0));
    assert_eq!(mark_read(&node, "bob", &direct, "", 0).await.unwrap().read_seq, 2, "0: newest");
    assert_eq!(mark_read(&node, "bob", &direct, "", 1).await.unwrap().read_seq, 2, "never back");
    assert_eq!(listed(&node, "bob").await, [row(&direct, Kind::Direct, "alice", 0, "two")]);

    // A group: its name, its last message, unread since joining, the most recent first.
    let group = create(&node, "alice", &["bob", "carol"], false).await;
    let carol = node.connect("carol", "phone", 0).await;
    send(&carol, &group, "g1", "hi all").await;
    let page = node.list_conversations("bob", 0, "").await.unwrap();
    assert_eq!(page.total_unread, 1);
    let rows = listed(&node, "bob").await;
    assert_eq!(rows[0], row(&group, Kind::Group, "team", 1, "hi all"), "{rows:?}");
    assert_eq!(rows[1..], [row(&direct, Kind::Direct, "alice", 0, "two")]);
    assert_eq!(listed(&node, "carol").await, [row(&group, Kind::Group, "team", 0, "hi all")]);
    assert!(event_of(&next_message(&mut bob).await).0 > 0, "the group's creation");
    assert_eq!(next_message(&mut bob).await.body, "hi all");
    mark_read(&node, "bob", &group, "", 0).await.unwrap();
    assert_eq!(listed(&node, "bob").await[0].3, 0);
    // A removed member no longer sees the group.
    change(&node, "alice", &group, &["carol"], false).await.unwrap();
    assert!(listed(&node, "carol").await.iter().all(|r| r.0 != group));
    assert_eq!(listed(&node, "alice").await.len(), 2);
}

async fn list_conversations_pages_in_activity_order_and_refuses_bad_calls(b: &Backend) {
    // Refills so slowly that only what the calls cost shows.
    let node = TestNode::with(b, |c| c.send_rate = 1).await;
    for i in 0..105 {
        node.send_unary(&format!("u{i:03}"), "c1", "dave", "hello").await.unwrap();
    }
    // The index is written after the ack: wait until all 105 count (the total is over all).
    let first = eventually(|| async {
        let page = node.list_conversations("dave", 1000, "").await.unwrap();
        (page.total_unread == 105).then_some(page)
    })
    .await;
    assert_eq!(first.conversations.len(), 100, "a page holds 100 at most");
    assert!(!first.next_page_token.is_empty(), "and says there is more");
    // Welcome counts them too: the first 100 free, then a send allowance per 100 more.
    let phone = node.connect("dave", "phone", 0).await;
    let unread = (phone.welcome.unread_total, phone.welcome.unread_conversations);
    assert_eq!(unread, (Some(105), 105));
    let page = node.list_conversations("dave", 0, "").await.unwrap();
    assert_eq!(page.conversations.len(), 50, "no limit: 50");
    // Pages of 7 give every conversation once, the most recently active first.
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let page = node.list_conversations("dave", 7, &token).await.unwrap();
        assert!(page.conversations.len() <= 7);
        all.extend(page.conversations.into_iter().map(|c| (c.last_active_at, c.id)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let ids: std::collections::HashSet<_> = all.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!((all.len(), ids.len()), (105, 105));
    assert!(all.windows(2).all(|w| w[0].0 >= w[1].0), "by last activity");
    for bad in ["nonsense", "12:x", "x:d:1:a:b", "12:g:"] {
        let err = node.list_conversations("dave", 0, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
    }
    let mut gw = node.gateway().await;
    let req = proto::ListConversationsRequest::default();
    let err = gw.list_conversations(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = gw.list_conversations(client::authorized(req, "forged")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // 105 conversations cost two sends a call: the burst of 500 is gone in under 260 calls
    // (at one a call, more than 350 would be left after the calls above).
    let mut refused = None;
    for _ in 0..260 {
        if let Err(e) = node.list_conversations("dave", 1, "").await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("the allowance ran out");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Out of allowance, a session still starts and is delivered to; only the count is left out.
    let mut tablet = node.connect("dave", "tablet", 0).await;
    assert_eq!(tablet.welcome.unread_total, None, "not counted without an allowance");
    assert_eq!(next_message(&mut tablet).await.body, "hello");
}
