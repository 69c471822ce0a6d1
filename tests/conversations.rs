//! Conversations: every message is logged once in its conversation with a contiguous
//! conversation seq (history, for any device, also a new one), and reaches the sender's other
//! devices in order with what they receive. On every store.
mod common;

use std::time::Duration;

use common::{Backend, TestNode, assert_quiet, next_message};

use tim::client;
use tim::ids::Conversation;
use tim::proto;
use tonic::Code;

fn triples(
    from: &str,
    prefix: &str,
    seqs: std::ops::RangeInclusive<u64>,
) -> Vec<(u64, String, String)> {
    seqs.map(|i| (i, from.to_string(), format!("{prefix}{i}"))).collect()
}

async fn a_direct_conversation_logs_each_message_once_with_contiguous_seqs(b: &Backend) {
    let node = TestNode::start(b).await;
    let alice = node.connect("alice", "phone", 0).await;
    let mut bob = node.connect("bob", "phone", 0).await;
    let conv = Conversation::direct("alice", "bob").id();

    let first = alice.sender().send("bob", "one").await.unwrap();
    assert_eq!((first.conversation.as_str(), first.conv_seq, first.seq), (conv.as_str(), 1, 1));
    let m = next_message(&mut bob).await;
    assert_eq!((m.conversation.as_str(), m.conv_seq, m.seq), (conv.as_str(), 1, 1));
    assert_eq!(m.client_msg_id, first.client_msg_id);
    let two = bob.sender().send("alice", "two").await.unwrap();
    assert_eq!((two.conversation.as_str(), two.conv_seq, two.seq), (conv.as_str(), 2, 1));
    // A retry is logged once: same conversation seq, nothing new in history.
    let again = alice.sender().send_with_id(&first.client_msg_id, "bob", "one").await.unwrap();
    assert!(again.duplicate);
    assert_eq!((again.conv_seq, again.seq), (1, 1));
    let three = node.send_unary("alice", "u3", "bob", "three").await.unwrap();
    assert_eq!((three.conversation.as_str(), three.conv_seq, three.seq), (conv.as_str(), 3, 2));

    let want = vec![
        (1, "alice".to_string(), "one".to_string()),
        (2, "bob".to_string(), "two".to_string()),
        (3, "alice".to_string(), "three".to_string()),
    ];
    assert_eq!(node.history_with("alice", "bob", 0, 0).await, want);
    assert_eq!(node.history_with("bob", "alice", 0, 0).await, want, "the same log for both");
    // By id too, and every message names its conversation; history has no inbox seq.
    let req = proto::HistoryRequest { conversation: conv.clone(), ..Default::default() };
    let page = node.history("bob", req).await.unwrap();
    assert_eq!(page.conversation, conv);
    assert!(page.messages.iter().all(|m| m.conversation == conv && m.seq == 0 && !m.to.is_empty()));

    // Notes to oneself are a conversation too, and make no second copy.
    let mut notes = node.connect("carol", "phone", 0).await;
    let ack = notes.sender().send("carol", "note").await.unwrap();
    assert_eq!((ack.conversation, ack.conv_seq), (Conversation::direct("carol", "carol").id(), 1));
    assert_eq!(next_message(&mut notes).await.body, "note");
    assert_quiet(&mut notes, Duration::from_millis(200)).await;
}

async fn history_pages_backwards_and_forwards(b: &Backend) {
    let node = TestNode::start(b).await;
    for i in 1..=25 {
        node.send_unary("alice", &format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    assert_eq!(node.history_with("bob", "alice", 0, 10).await, triples("alice", "m", 16..=25));
    assert_eq!(node.history_with("bob", "alice", 16, 10).await, triples("alice", "m", 6..=15));
    assert_eq!(node.history_with("bob", "alice", 6, 10).await, triples("alice", "m", 1..=5));
    assert_eq!(node.history_with("bob", "alice", 1, 10).await, vec![]);
    assert_eq!(node.history_with("bob", "alice", 0, 0).await, triples("alice", "m", 1..=25));
    let after = |after_seq, limit| proto::HistoryRequest {
        with: "alice".into(),
        after_seq,
        limit,
        ..Default::default()
    };
    let page = node.history("bob", after(20, 3)).await.unwrap().messages;
    assert_eq!(page.iter().map(|m| m.conv_seq).collect::<Vec<_>>(), [21, 22, 23]);
    let page = node.history("bob", after(23, 1000)).await.unwrap().messages;
    assert_eq!(page.iter().map(|m| m.conv_seq).collect::<Vec<_>>(), [24, 25]);
    // A page holds 100 at most, whatever the limit asks.
    for i in 26..=130 {
        node.send_unary("alice", &format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    assert_eq!(node.history_with("bob", "alice", 0, 1000).await, triples("alice", "m", 31..=130));
}

async fn a_new_device_reads_the_whole_history(b: &Backend) {
    let node = TestNode::start(b).await;
    let alice = node.connect("alice", "phone", 0).await;
    let mut bob = node.connect("bob", "phone", 0).await;
    for i in 1..=5 {
        alice.sender().send("bob", &format!("m{i}")).await.unwrap();
        let seq = next_message(&mut bob).await.seq;
        bob.sender().ack(seq).await.unwrap();
    }
    // A device that never held a stream, with nothing in any inbox for it, reads them all.
    let login = node.login("bob", "laptop").await;
    let req = proto::HistoryRequest { with: "alice".into(), ..Default::default() };
    let mut gw = node.gateway().await;
    let page = gw.history(client::authorized(req, &login.token)).await.unwrap().into_inner();
    let bodies: Vec<_> = page.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["m1", "m2", "m3", "m4", "m5"]);
}

async fn sent_messages_reach_the_senders_other_devices_in_order(b: &Backend) {
    let node = TestNode::start(b).await;
    // Alone, a device's sends make no copy: nothing waits for it in its own inbox.
    let solo = node.connect("alice", "phone", 0).await;
    solo.sender().send("bob", "before the laptop").await.unwrap();
    drop(solo);
    let mut phone = node.connect("alice", "phone", 0).await;
    assert_eq!(phone.welcome.last_seq, 0);
    let mut laptop = node.connect("alice", "laptop", 0).await;
    let mut bob = node.connect("bob", "phone", 0).await;
    next_message(&mut bob).await;

    let ack = phone.sender().send("bob", "from my phone").await.unwrap();
    let m = next_message(&mut laptop).await;
    assert_eq!(
        (m.seq, m.from.as_str(), m.to.as_str(), m.body.as_str(), m.conv_seq),
        (1, "alice", "bob", "from my phone", 2)
    );
    assert_eq!(
        (m.msg_id.as_str(), m.client_msg_id.as_str()),
        (ack.msg_id.as_str(), ack.client_msg_id.as_str())
    );
    // The phone gets its own copy too (its inbox seq must stay contiguous); the client_msg_id
    // tells it apart.
    let own = next_message(&mut phone).await;
    assert_eq!((own.seq, own.client_msg_id.as_str()), (1, ack.client_msg_id.as_str()));
    assert_eq!(next_message(&mut bob).await.body, "from my phone");

    // What alice receives and what she sends interleave in one order on every device.
    bob.sender().send("alice", "reply").await.unwrap();
    laptop.sender().send("bob", "from my laptop").await.unwrap();
    for device in [&mut phone, &mut laptop] {
        let got: Vec<_> = [next_message(device).await, next_message(device).await]
            .into_iter()
            .map(|m| (m.seq, m.from, m.body, m.conv_seq))
            .collect();
        assert_eq!(
            got,
            [
                (2, "bob".to_string(), "reply".to_string(), 3),
                (3, "alice".to_string(), "from my laptop".to_string(), 4)
            ]
        );
    }
    // A unary Send (a device of its own) copies to every stream device.
    node.send_unary("alice", "u1", "bob", "from the server").await.unwrap();
    assert_eq!(next_message(&mut phone).await.body, "from the server");
    assert_eq!(next_message(&mut laptop).await.body, "from the server");
}

async fn history_is_for_members_only(b: &Backend) {
    let node = TestNode::start(b).await;
    node.send_unary("alice", "c1", "bob", "private").await.unwrap();
    let conv = Conversation::direct("alice", "bob").id();
    let by_id = proto::HistoryRequest { conversation: conv.clone(), ..Default::default() };
    let err = node.history("mallory", by_id.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let bad = [
        proto::HistoryRequest { conversation: "d:99:alice:bob".into(), ..Default::default() },
        proto::HistoryRequest { conversation: "alice".into(), ..Default::default() },
        proto::HistoryRequest {
            conversation: conv.clone(),
            with: "bob".into(),
            ..Default::default()
        },
        proto::HistoryRequest::default(),
        proto::HistoryRequest { with: "a b".into(), ..Default::default() },
    ];
    for req in bad {
        let err = node.history("alice", req.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}: {err:?}");
    }
    let mut gw = node.gateway().await;
    let err = gw.history(by_id.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = gw.history(client::authorized(by_id, "forged")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Mallory reading "his" conversation with alice learns nothing of alice and bob's.
    assert_eq!(node.history_with("mallory", "alice", 0, 0).await, vec![]);
}

async fn history_keeps_at_most_its_length(b: &Backend) {
    let node = TestNode::with(b, |c| c.history_max = 5).await;
    for i in 1..=8 {
        node.send_unary("alice", &format!("c{i}"), "bob", &format!("m{i}")).await.unwrap();
    }
    assert_eq!(node.history_with("bob", "alice", 0, 0).await, triples("alice", "m", 4..=8));
}

async fn history_forgets_what_passed_its_retention(b: &Backend) {
    let node = TestNode::with(b, |c| c.history_retention = Duration::from_secs(1)).await;
    node.send_unary("alice", "c1", "bob", "old").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    node.send_unary("alice", "c2", "bob", "new").await.unwrap();
    // (A log that went quiet past its retention may start its seqs again.)
    let page = node.history_with("bob", "alice", 0, 0).await;
    assert_eq!(page.into_iter().map(|(_, _, body)| body).collect::<Vec<_>>(), ["new"]);
}

on_every_store!(
    a_direct_conversation_logs_each_message_once_with_contiguous_seqs,
    history_pages_backwards_and_forwards,
    a_new_device_reads_the_whole_history,
    sent_messages_reach_the_senders_other_devices_in_order,
    history_is_for_members_only,
    history_keeps_at_most_its_length,
    history_forgets_what_passed_its_retention,
);
