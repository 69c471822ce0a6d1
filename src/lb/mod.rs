//! Node selection at login: a [`Strategy`] picks one of the discovered nodes for a user, and the
//! [`Balancer`] keeps the node set current from discovery [`Update`]s.
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::discovery::{NodeInfo, Update};

/// Chooses a node for a user among the live ones.
pub trait Strategy: Send + Sync + 'static {
    /// Index into `nodes` (non-empty) of the node for `user`.
    fn pick(&self, user: &str, nodes: &[NodeInfo]) -> usize;
}

/// Each login goes to the next node in turn: an atomic counter modulo the node count.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Strategy for RoundRobin {
    fn pick(&self, _user: &str, nodes: &[NodeInfo]) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % nodes.len()
    }
}

/// The live node set and the strategy applied to it.
pub struct Balancer {
    nodes: RwLock<Vec<NodeInfo>>,
    strategy: Box<dyn Strategy>,
}

impl Balancer {
    pub fn new(strategy: Box<dyn Strategy>) -> Self {
        Self { nodes: RwLock::new(Vec::new()), strategy }
    }

    /// Applies one discovery update. Nodes are kept sorted by id so that every node of a
    /// cluster sees the same order.
    pub fn apply(&self, update: Update) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        match update {
            Update::Reset(all) => *nodes = all,
            Update::Add(added) => {
                for n in added {
                    nodes.retain(|m| m.id != n.id);
                    nodes.push(n);
                }
            }
            Update::Remove(ids) => nodes.retain(|m| !ids.contains(&m.id)),
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes.dedup_by(|a, b| a.id == b.id);
    }

    /// The node for `user`, or None while no node is known.
    pub fn pick(&self, user: &str) -> Option<NodeInfo> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        if nodes.is_empty() {
            return None;
        }
        let i = self.strategy.pick(user, &nodes);
        nodes.get(i).cloned()
    }

    /// The current node set.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo { id: id.into(), endpoint: format!("{id}:1") }
    }

    #[test]
    fn round_robin_rotates_over_updates() {
        let b = Balancer::new(Box::new(RoundRobin::default()));
        assert!(b.pick("u").is_none());
        b.apply(Update::Reset(vec![node("b"), node("a")]));
        b.apply(Update::Add(vec![node("c")]));
        let picks: Vec<_> = (0..6).map(|_| b.pick("u").unwrap().id).collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
        b.apply(Update::Remove(vec!["b".into()]));
        assert_eq!(b.nodes().len(), 2);
        assert!((0..4).all(|_| b.pick("u").unwrap().id != "b"));
    }
}
