//! The four node-selection strategies.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Strategy;
use crate::discovery::NodeInfo;

/// Each login goes to the next node in turn: an atomic counter modulo the node count.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Strategy for RoundRobin {
    fn pick(&mut self, _user: &str, nodes: &[NodeInfo]) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % nodes.len()
    }
}

/// A uniformly random node.
#[derive(Debug, Default)]
pub struct Random;

impl Strategy for Random {
    fn pick(&mut self, _user: &str, nodes: &[NodeInfo]) -> usize {
        rand::random_range(0..nodes.len())
    }
}

/// Virtual nodes per node on the ring: enough for an even spread over a few nodes.
const VNODES: usize = 160;

/// A hash ring with virtual nodes, keyed by user id: a user keeps their node while it lives; a
/// leaving node moves only its own users, a joining one takes about 1/n of them.
#[derive(Debug, Default)]
pub struct ConsistentHash {
    /// (point, node id), sorted by point.
    ring: Vec<(u64, String)>,
}

impl Strategy for ConsistentHash {
    fn update(&mut self, nodes: &[NodeInfo]) {
        self.ring.clear();
        for n in nodes {
            for v in 0..VNODES {
                self.ring.push((hash(&format!("{}#{v}", n.id)), n.id.clone()));
            }
        }
        self.ring.sort();
    }

    fn pick(&mut self, user: &str, nodes: &[NodeInfo]) -> usize {
        if self.ring.is_empty() {
            self.update(nodes);
        }
        let h = hash(user);
        let at = self.ring.partition_point(|(p, _)| *p < h) % self.ring.len();
        let id = &self.ring[at].1;
        nodes.iter().position(|n| &n.id == id).unwrap_or(0)
    }
}

/// How long logins sent to a node count on top of its reported load when no new report comes
/// (logins that never connected would otherwise count for ever): about one report period.
const SENT_WINDOW: Duration = Duration::from_secs(5);

/// Power of two choices on connection counts: of two random nodes, the one with fewer streams
/// (as last reported, plus the logins this node sent it since, for a while).
#[derive(Debug, Default)]
pub struct LeastLoaded {
    /// node id → (logins sent since its last report, when the first of them was sent).
    sent_since_report: HashMap<String, (u64, Instant)>,
    reported: HashMap<String, u64>,
}

impl Strategy for LeastLoaded {
    fn update(&mut self, nodes: &[NodeInfo]) {
        // A node whose reported load changed has counted what we sent it; the others have not.
        let reported = nodes.iter().map(|n| (n.id.clone(), n.load)).collect::<HashMap<_, _>>();
        self.sent_since_report
            .retain(|id, _| reported.get(id).is_some_and(|l| self.reported.get(id) == Some(l)));
        self.reported = reported;
    }

    fn pick(&mut self, _user: &str, nodes: &[NodeInfo]) -> usize {
        let now = Instant::now();
        self.sent_since_report.retain(|_, (_, since)| now.duration_since(*since) < SENT_WINDOW);
        let load = |i: usize| {
            let n = &nodes[i];
            n.load + self.sent_since_report.get(&n.id).map_or(0, |(sent, _)| *sent)
        };
        let chosen = if nodes.len() == 1 {
            0
        } else {
            let a = rand::random_range(0..nodes.len());
            let b = (a + rand::random_range(1..nodes.len())) % nodes.len();
            if load(b) < load(a) { b } else { a }
        };
        self.sent_since_report.entry(nodes[chosen].id.clone()).or_insert((0, now)).0 += 1;
        chosen
    }
}

/// FNV-1a with a splitmix64 finish: stable across processes, builds and Rust versions, so every
/// node computes the same ring.
fn hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeInfo> {
        (0..n)
            .map(|i| NodeInfo {
                id: format!("node-{i}"),
                endpoint: format!("10.0.0.{i}:1"),
                load: 0,
            })
            .collect()
    }

    fn users(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user-{i}")).collect()
    }

    #[test]
    fn round_robin_rotates_exactly() {
        let set = nodes(3);
        let mut s = RoundRobin::default();
        let picks: Vec<usize> = (0..7).map(|_| s.pick("u", &set)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn random_is_about_uniform() {
        let set = nodes(4);
        let mut s = Random;
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[s.pick("u", &set)] += 1;
        }
        // Each should be 10,000; 5 sigma is about 430.
        for c in counts {
            assert!((9_400..=10_600).contains(&c), "{counts:?}");
        }
    }

    fn assign(s: &mut ConsistentHash, set: &[NodeInfo], users: &[String]) -> Vec<String> {
        s.update(set);
        users.iter().map(|u| set[s.pick(u, set)].id.clone()).collect()
    }

    #[test]
    fn consistent_hash_moves_only_what_it_must() {
        let users = users(20_000);
        let mut s = ConsistentHash::default();
        let four = nodes(4);
        let before = assign(&mut s, &four, &users);
        // Spread: each node holds roughly a quarter.
        for n in &four {
            let share = before.iter().filter(|id| **id == n.id).count() as f64 / users.len() as f64;
            assert!((0.17..0.33).contains(&share), "{} holds {share}", n.id);
        }
        // A node leaves: only its users move.
        let three: Vec<NodeInfo> = four.iter().filter(|n| n.id != "node-2").cloned().collect();
        let after = assign(&mut s, &three, &users);
        for (b, a) in before.iter().zip(&after) {
            if b != "node-2" {
                assert_eq!(a, b, "a user of a staying node moved");
            }
        }
        // A node joins: about 1/n of the users move, all of them to the new node.
        let five = nodes(5);
        let before = assign(&mut s, &four, &users);
        let after = assign(&mut s, &five, &users);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        assert!(moved.iter().all(|(_, a)| *a == "node-4"));
        let share = moved.len() as f64 / users.len() as f64;
        assert!((0.12..0.28).contains(&share), "moved {share}");
    }

    #[test]
    fn consistent_hash_is_stable_across_instances() {
        let set = nodes(3);
        let (mut a, mut b) = (ConsistentHash::default(), ConsistentHash::default());
        for u in users(100) {
            assert_eq!(a.pick(&u, &set), b.pick(&u, &set));
        }
    }

    #[test]
    fn least_loaded_prefers_the_emptier_node() {
        let mut set = nodes(2);
        set[0].load = 1_000;
        set[1].load = 10;
        let mut s = LeastLoaded::default();
        s.update(&set);
        for _ in 0..100 {
            assert_eq!(s.pick("u", &set), 1);
        }
        // Logins it sent count until the next report, so it does not herd.
        let mut set = nodes(2);
        set[0].load = 5;
        set[1].load = 0;
        s.update(&set);
        let picks: Vec<usize> = (0..20).map(|_| s.pick("u", &set)).collect();
        assert_eq!(picks[..5], [1, 1, 1, 1, 1], "the empty node fills up first");
        let to_1 = picks.iter().filter(|p| **p == 1).count() as i64;
        let to_0 = 20 - to_1;
        assert!(((5 + to_0) - to_1).abs() <= 1, "then they stay level: {picks:?}");
    }
}
