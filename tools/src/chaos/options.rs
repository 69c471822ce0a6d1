//! What a chaos run is told, and why one could not be carried out.
use std::path::PathBuf;

use crate::harness::{self, HarnessError};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosOptions {
    /// Nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Simulated users, each on its own connection.
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// How long traffic and faults last.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Messages per second each user sends.
    #[arg(long, default_value_t = 5)]
    pub rate: u32,
    /// Stop sending after this many messages in all (default: when --seconds are up).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds between faults.
    #[arg(long, default_value_t = 3)]
    pub fault_every: u64,
    /// Seconds a partition, or a lagging replica before its failover, lasts.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// The faults to make, in rotation.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = FaultKind::ALL)]
    pub faults: Vec<FaultKind>,
    /// Redis replicas every message must reach before its sender is acked (the nodes'
    /// --redis-wait-replicas). 0: a lagging failover can lose acked messages, and the run
    /// counts them as lost.
    #[arg(long, default_value_t = 1)]
    pub redis_wait_replicas: u32,
    /// Groups to create (0: none); a quarter of each member's messages go to one of theirs.
    #[arg(long, default_value_t = 2)]
    pub groups: usize,
    /// Members of each group (at most --users).
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// The tim executable to start nodes from (default: the `tim` beside this executable).
    #[arg(long, env = harness::TIM_BIN)]
    pub tim: Option<PathBuf>,
}

/// Why a chaos run could not be carried out (not a verdict on delivery).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Harness(#[from] HarnessError),
}

pub(super) fn setup(e: impl std::fmt::Display) -> ChaosError {
    ChaosError::Setup(e.to_string())
}

/// A kind of fault, for `--faults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultKind {
    NodeKill,
    NodeDrain,
    RedisKill,
    RedisFailover,
    Partition,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::NodeKill,
        FaultKind::NodeDrain,
        FaultKind::RedisKill,
        FaultKind::RedisFailover,
        FaultKind::Partition,
    ];
}
