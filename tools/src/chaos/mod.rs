//! Fault injection and the delivery checker: `tim chaos` (the `tim-chaos` binary) runs nodes
//! and a Redis primary with a replica as child processes, every link through a TCP proxy it
//! controls, drives users through the resilient client while it kills, drains, fails over and
//! partitions them, and checks with the [`Ledger`] that every acked message reached its
//! recipient exactly once and in order.
//!
//! # Layout
//! - `options`: what a run is told; why one could not be carried out.
//! - `run`: traffic, faults while it goes, the verdict.
//! - `cluster`: nodes, Redis and the proxies between them; Redis SIGKILL and failover.
//! - `faults`: the rotation of faults and their counts.
//! - `proxy`: a TCP proxy that refuses, goes silent (half-open) or moves to another upstream.
//! - `ledger`: what was sent, acked and received, and the verdict on it.
mod cluster;
mod faults;
mod ledger;
mod options;
mod proxy;
mod run;

pub use faults::Faults;
pub use ledger::{Ledger, Report};
pub use options::{ChaosError, ChaosOptions, FaultKind};
pub use proxy::{Link, Proxy};
pub use run::{record, run};
