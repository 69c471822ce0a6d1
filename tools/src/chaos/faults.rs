//! The faults of a chaos run, in rotation: node SIGKILLs and drains, Redis SIGKILLs, Redis
//! failovers (the replica in sync, then lagging), and partitions of each link (clients from a
//! node, a node from another, a node from Redis), refused and half-open by turns.
use std::time::{Duration, Instant};

use tracing::info;

use super::cluster::{Cluster, Cut};
use super::options::{ChaosError, FaultKind};
use super::proxy::Link;

/// How many faults of each kind a run made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    pub node_kill: u64,
    pub node_drain: u64,
    pub redis_kill: u64,
    pub redis_failover: u64,
    pub partition: u64,
}

impl std::fmt::Display for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node_kill:{},node_drain:{},redis_kill:{},redis_failover:{},partition:{}",
            self.node_kill, self.node_drain, self.redis_kill, self.redis_failover, self.partition
        )
    }
}

/// One step of the rotation.
#[derive(Debug, Clone, Copy)]
enum Step {
    NodeKill,
    NodeDrain,
    RedisKill,
    Failover { lagging: bool },
    Partition(Side),
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Clients,
    Relay,
    Redis,
}

const ROTATION: [Step; 9] = [
    Step::NodeKill,
    Step::Partition(Side::Clients),
    Step::RedisKill,
    Step::Partition(Side::Relay),
    Step::NodeDrain,
    Step::Failover { lagging: false },
    Step::Partition(Side::Redis),
    Step::Failover { lagging: true },
    Step::Partition(Side::Clients),
];

impl Step {
    fn kind(self) -> FaultKind {
        match self {
            Step::NodeKill => FaultKind::NodeKill,
            Step::NodeDrain => FaultKind::NodeDrain,
            Step::RedisKill => FaultKind::RedisKill,
            Step::Failover { .. } => FaultKind::RedisFailover,
            Step::Partition(_) => FaultKind::Partition,
        }
    }
}

/// When and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Between the end of one fault and the start of the next.
    pub every: Duration,
    /// How long a partition, or a lagging replica, lasts.
    pub hold: Duration,
}

/// Makes faults of the `kinds` in rotation until `over()`; a fault begun is carried through
/// (a cut link healed, a killed process restarted). Returns how many of each it made.
pub async fn run(
    cluster: &mut Cluster,
    kinds: &[FaultKind],
    schedule: Schedule,
    over: impl Fn() -> bool,
) -> Result<Faults, ChaosError> {
    let mut done = Faults::default();
    let steps: Vec<Step> = ROTATION.into_iter().filter(|s| kinds.contains(&s.kind())).collect();
    if steps.is_empty() {
        return Ok(done);
    }
    let mut round = 0usize;
    loop {
        let next = Instant::now() + schedule.every;
        while Instant::now() < next {
            if over() {
                return Ok(done);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let step = steps[round % steps.len()];
        round += 1;
        let nodes = cluster.nodes.len();
        let victim = rand::random_range(0..nodes);
        match step {
            Step::NodeKill => {
                info!(node = victim, "fault: SIGKILL node, restart in 1 s");
                cluster.nodes[victim].kill();
                tokio::time::sleep(Duration::from_secs(1)).await;
                cluster.nodes[victim].restart().await?;
                done.node_kill += 1;
            }
            Step::NodeDrain => {
                info!(node = victim, "fault: SIGTERM node (drain), restart");
                let _ = cluster.nodes[victim].terminate().await;
                cluster.nodes[victim].restart().await?;
                done.node_drain += 1;
            }
            Step::RedisKill => {
                info!("fault: SIGKILL the Redis primary, restart in 1 s");
                cluster.kill_redis(Duration::from_secs(1)).await?;
                done.redis_kill += 1;
            }
            Step::Failover { lagging } => {
                let lag = lagging.then_some(schedule.hold);
                info!(lagging, "fault: Redis failover to the replica");
                let lacked = cluster.failover(lag).await?;
                info!(lagging, lacked_bytes = lacked, "failover: replica promoted");
                done.redis_failover += 1;
            }
            Step::Partition(side) => {
                // Refused and half-open by turns.
                let link = if done.partition % 2 == 0 { Link::Refused } else { Link::Silent };
                let other = (victim + 1 + rand::random_range(0..nodes - 1)) % nodes;
                let cut = match side {
                    Side::Clients => Cut::Clients(victim),
                    Side::Relay => Cut::Relay(victim, other),
                    Side::Redis => Cut::Redis(victim),
                };
                info!(?cut, ?link, hold = ?schedule.hold, "fault: partition");
                cluster.set(cut, link);
                tokio::time::sleep(schedule.hold).await;
                cluster.set(cut, Link::Open);
                done.partition += 1;
            }
        }
    }
}
