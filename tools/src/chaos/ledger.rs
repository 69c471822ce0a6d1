//! The checker behind `tim chaos` and the fault tests: it records what was sent, what was acked
//! (with the recipient's seq, or for a group message its conversation seq) and what each device
//! received, and says whether anything acked was lost, shown twice or shown out of order
//! (in its inbox's seq order, in each sender's order, and in each group's conversation order).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use super::faults::Faults;

/// What happened to the messages of a run.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sent: u64,
    /// recipient → seq → body, for every acked message.
    acked: HashMap<String, BTreeMap<u64, String>>,
    /// Acks that named a seq already acked for another body: one of the two is lost.
    conflicting_acks: u64,
    /// (recipient, device) → seqs in the order the application saw them.
    received: HashMap<(String, String), Vec<(u64, String)>>,
    /// group → conversation seq → body, for every acked group message, with its sender.
    group_acked: HashMap<String, BTreeMap<u64, (String, String)>>,
    /// group → its members.
    members: HashMap<String, Vec<String>>,
    /// (member, device, group) → conversation seqs in the order the application saw them.
    group_received: HashMap<(String, String, String), Vec<(u64, String)>>,
    /// (recipient, device) → the inbox epoch it last connected to.
    epochs: HashMap<(String, String), String>,
    max_reconnect_ms: u64,
}

/// In `received`: the device connected to a new inbox epoch here (seqs start at 1).
const EPOCH: u64 = 0;

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    /// Acked messages some device of their recipient never received (or that shared a seq with
    /// another acked message).
    pub lost: u64,
    /// Deliveries of a seq, or of a message body, that a device had already received.
    pub duplicated: u64,
    /// Deliveries with a seq not above the device's previous one, or (for bodies of the form
    /// `<sender>#<n>`) a message shown before an earlier one of the same sender.
    pub out_of_order: u64,
    pub max_reconnect_ms: u64,
    /// The faults made while the messages went.
    pub faults: Faults,
}

impl Report {
    /// True when every send was acked and nothing acked was lost, duplicated or reordered.
    pub fn clean(&self) -> bool {
        self.sent == self.acked && self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chaos: sent={} acked={} delivered={} lost={} duplicated={} out_of_order={} \
             max_reconnect_ms={} faults={}",
            self.sent,
            self.acked,
            self.delivered,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.max_reconnect_ms,
            self.faults
        )
    }
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A send was attempted (counted once per message, not per retry).
    pub fn sent(&self) {
        self.lock().sent += 1;
    }

    /// The server acked `body` to `to` as `seq`.
    pub fn acked(&self, to: &str, seq: u64, body: &str) {
        let mut inner = self.lock();
        let previous = inner.acked.entry(to.to_string()).or_default().insert(seq, body.to_string());
        tracing::trace!(to, seq, body, "acked");
        if let Some(previous) = previous.filter(|p| p != body) {
            tracing::warn!(to, seq, body, previous, "two messages acked under one seq");
            inner.conflicting_acks += 1;
        }
    }

    /// `device` of `user` showed message `seq`.
    pub fn received(&self, user: &str, device: &str, seq: u64, body: &str) {
        tracing::trace!(user, device, seq, body, "received");
        let mut inner = self.lock();
        inner
            .received
            .entry((user.to_string(), device.to_string()))
            .or_default()
            .push((seq, body.to_string()));
    }

    /// `device` of `user` is connected to an inbox of `epoch`: when it is another one than
    /// before, seqs start again (the store rolled the inbox back).
    pub fn epoch(&self, user: &str, device: &str, epoch: &str) {
        let mut inner = self.lock();
        let key = (user.to_string(), device.to_string());
        if inner.epochs.get(&key).is_some_and(|e| e == epoch) {
            return;
        }
        let first = inner.epochs.insert(key.clone(), epoch.to_string()).is_none();
        if !first {
            inner.received.entry(key).or_default().push((EPOCH, String::new()));
        }
    }

    /// `group` has `members` (fixed for the run).
    pub fn group(&self, group: &str, members: &[String]) {
        self.lock().members.insert(group.to_string(), members.to_vec());
    }

    /// The server acked `body` from `from` into `group` as its conversation seq `conv_seq`.
    pub fn acked_group(&self, group: &str, conv_seq: u64, from: &str, body: &str) {
        let mut inner = self.lock();
        let entry = (from.to_string(), body.to_string());
        let acked = inner.group_acked.entry(group.to_string()).or_default();
        if let Some(previous) = acked.insert(conv_seq, entry.clone()).filter(|p| *p != entry) {
            tracing::warn!(group, conv_seq, body, previous = %previous.1, "two messages acked under one conversation seq");
            inner.conflicting_acks += 1;
        }
    }

    /// `device` of `user` showed message `seq` of its inbox, which is `conv_seq` of `group`.
    pub fn received_in_group(
        &self,
        user: &str,
        device: &str,
        seq: u64,
        body: &str,
        group: &str,
        conv_seq: u64,
    ) {
        self.received(user, device, seq, body);
        let key = (user.to_string(), device.to_string(), group.to_string());
        self.lock().group_received.entry(key).or_default().push((conv_seq, body.to_string()));
    }

    /// A client was without a stream for `ms`.
    pub fn reconnected(&self, ms: u64) {
        let mut inner = self.lock();
        inner.max_reconnect_ms = inner.max_reconnect_ms.max(ms);
    }

    /// Acked messages not yet received by every listed device of their recipient.
    pub fn outstanding(&self, devices: &[(String, String)]) -> u64 {
        self.report_for(devices).lost
    }

    /// Up to `n` acked messages that some listed device never showed, as
    /// `recipient seq body` (a group message: `recipient group#conv_seq body`), to say what a
    /// run that was not clean lost.
    pub fn lost_examples(&self, devices: &[(String, String)], n: usize) -> Vec<String> {
        let inner = self.lock();
        let mut out = Vec::new();
        for (user, device) in devices {
            let got = inner.received.get(&(user.clone(), device.clone()));
            let shown: HashSet<&String> = got.into_iter().flatten().map(|(_, b)| b).collect();
            out.extend(never_shown(&inner, user, &shown).take(n - out.len()));
            if out.len() == n {
                break;
            }
        }
        out
    }

    /// Checks every acked message against every listed (user, device).
    pub fn report_for(&self, devices: &[(String, String)]) -> Report {
        let inner = self.lock();
        let mut r = Report {
            sent: inner.sent,
            acked: inner.acked.values().map(|m| m.len() as u64).sum::<u64>()
                + inner.group_acked.values().map(|m| m.len() as u64).sum::<u64>()
                + inner.conflicting_acks,
            lost: inner.conflicting_acks,
            max_reconnect_ms: inner.max_reconnect_ms,
            ..Report::default()
        };
        for (user, device) in devices {
            let got = inner.received.get(&(user.clone(), device.clone()));
            let got: &[(u64, String)] = got.map_or(&[], |v| v.as_slice());
            // Seqs count within an inbox epoch: a new one (the store rolled the inbox back)
            // starts them again. Bodies are unique per message, whatever the epoch.
            let mut seen = HashMap::new();
            let mut bodies = HashSet::new();
            let mut last = 0;
            let mut last_of_sender: HashMap<&str, u64> = HashMap::new();
            for (seq, body) in got {
                if *seq == EPOCH {
                    seen.clear();
                    last = 0;
                    continue;
                }
                r.delivered += 1;
                // The same body twice is one message stored or shown twice, even under two
                // seqs.
                if seen.insert(*seq, body).is_some() || !bodies.insert(body) {
                    r.duplicated += 1;
                } else if *seq <= last {
                    r.out_of_order += 1;
                } else if let Some((sender, n)) = body.rsplit_once('#')
                    && let Ok(n) = n.parse::<u64>()
                {
                    let previous = last_of_sender.insert(sender, n);
                    if previous.is_some_and(|p| p >= n) {
                        r.out_of_order += 1;
                    }
                }
                last = last.max(*seq);
            }
            // Lost: never shown (under whatever seq the epoch gave it).
            r.lost += never_shown(&inner, user, &bodies).count() as u64;
            for (group, members) in &inner.members {
                if members.contains(user) {
                    group_order(&inner, &mut r, user, device, group);
                }
            }
        }
        r
    }
}

/// The acked messages `user`'s device never showed (`shown`: the bodies it did show), direct
/// ones and those of its groups from other members, as `lost_examples` names them.
fn never_shown<'a>(
    inner: &'a Inner,
    user: &'a str,
    shown: &'a HashSet<&String>,
) -> impl Iterator<Item = String> + 'a {
    let direct = inner.acked.get(user).into_iter().flatten();
    let direct = direct
        .filter(|(_, body)| !shown.contains(body))
        .map(move |(seq, body)| format!("{user} {seq} {body}"));
    let member = move |group: &&String| {
        inner.members.get(*group).is_some_and(|m| m.iter().any(|u| u == user))
    };
    let groups =
        inner.group_acked.iter().filter(move |(g, _)| member(g)).flat_map(move |(g, acked)| {
            // One device per user in these runs: a sender's own copy is not made.
            acked
                .iter()
                .filter(move |(_, (from, body))| from != user && !shown.contains(body))
                .map(move |(cseq, (_, body))| format!("{user} {g}#{cseq} {body}"))
        });
    direct.chain(groups)
}

/// `user`'s `device` showed `group`'s messages in the group's conversation order (loss is
/// counted by `never_shown`, duplicates by the inbox checks).
fn group_order(inner: &Inner, r: &mut Report, user: &str, device: &str, group: &str) {
    let key = (user.to_string(), device.to_string(), group.to_string());
    let got = inner.group_received.get(&key).map_or(&[][..], Vec::as_slice);
    let mut last = 0;
    let mut seen = HashSet::new();
    for (conv_seq, _) in got {
        if *conv_seq <= last && !seen.contains(conv_seq) {
            r.out_of_order += 1;
        }
        last = last.max(*conv_seq);
        seen.insert(*conv_seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices() -> Vec<(String, String)> {
        vec![("bob".into(), "phone".into())]
    }

    #[test]
    fn counts_loss_duplicates_and_disorder() {
        let l = Ledger::default();
        for (seq, body) in [(1, "a"), (2, "b"), (3, "c")] {
            l.sent();
            l.acked("bob", seq, body);
        }
        l.received("bob", "phone", 1, "a");
        l.received("bob", "phone", 3, "c");
        assert_eq!(l.report_for(&devices()).lost, 1);
        l.received("bob", "phone", 2, "b");
        let r = l.report_for(&devices());
        assert_eq!((r.lost, r.out_of_order, r.duplicated), (0, 1, 0));
        l.received("bob", "phone", 3, "c");
        assert_eq!(l.report_for(&devices()).duplicated, 1);
        assert!(!l.report_for(&devices()).clean());
    }

    #[test]
    fn a_sender_reordered_in_the_inbox_is_out_of_order() {
        let l = Ledger::default();
        for (seq, body) in [(1, "alice#2"), (2, "carol#1"), (3, "alice#1")] {
            l.sent();
            l.acked("bob", seq, body);
            l.received("bob", "phone", seq, body);
        }
        assert_eq!(l.report_for(&devices()).out_of_order, 1);
    }

    #[test]
    fn a_message_stored_twice_under_two_seqs_is_a_duplicate() {
        let l = Ledger::default();
        l.sent();
        l.acked("bob", 1, "a");
        l.received("bob", "phone", 1, "a");
        l.received("bob", "phone", 2, "a");
        assert_eq!(l.report_for(&devices()).duplicated, 1);
    }

    #[test]
    fn two_acks_for_one_seq_and_unacked_sends_are_not_clean() {
        let l = Ledger::default();
        l.sent();
        l.sent();
        l.acked("bob", 1, "a");
        l.acked("bob", 1, "b");
        l.received("bob", "phone", 1, "b");
        let r = l.report_for(&devices());
        assert_eq!((r.acked, r.lost), (2, 1));
        let l = Ledger::default();
        l.sent();
        assert!(!l.report_for(&devices()).clean(), "a send never acked");
    }

    #[test]
    fn a_group_message_reaches_every_other_member_once_in_conversation_order() {
        let l = Ledger::default();
        let members = ["alice".to_string(), "bob".to_string(), "carol".to_string()];
        l.group("g:1", &members);
        for (cseq, body) in [(2, "alice#1"), (3, "alice#2")] {
            l.sent();
            l.acked_group("g:1", cseq, "alice", body);
        }
        let all: Vec<(String, String)> =
            members.iter().map(|m| (m.clone(), "phone".to_string())).collect();
        l.received_in_group("bob", "phone", 1, "alice#1", "g:1", 2);
        l.received_in_group("bob", "phone", 2, "alice#2", "g:1", 3);
        l.received_in_group("carol", "phone", 1, "alice#1", "g:1", 2);
        let r = l.report_for(&all);
        assert_eq!(
            (r.acked, r.lost, r.out_of_order),
            (2, 1, 0),
            "carol misses one; alice sent them"
        );
        l.received_in_group("carol", "phone", 2, "alice#2", "g:1", 3);
        assert!(l.report_for(&all).clean());
        // Shown in another order than the group's (even under increasing inbox seqs).
        let l = Ledger::default();
        l.group("g:1", &members);
        l.received_in_group("bob", "phone", 1, "x", "g:1", 5);
        l.received_in_group("bob", "phone", 2, "y", "g:1", 4);
        assert_eq!(l.report_for(&all).out_of_order, 1);
    }

    #[test]
    fn a_clean_run_is_clean() {
        let l = Ledger::default();
        l.sent();
        l.acked("bob", 1, "x");
        l.received("bob", "phone", 1, "x");
        let r = l.report_for(&devices());
        assert!(r.clean());
        assert_eq!(
            r.to_string(),
            "chaos: sent=1 acked=1 delivered=1 lost=0 duplicated=0 out_of_order=0 \
             max_reconnect_ms=0 faults=node_kill:0,node_drain:0,redis_kill:0,redis_failover:0,\
             partition:0"
        );
    }
}
