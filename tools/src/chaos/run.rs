//! `tim chaos`: nodes and a redis-server as child processes (through the [`crate::harness`]),
//! users on the resilient client sending to each other and into groups, faults on a schedule,
//! then the ledger's verdict.
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::info;

use super::cluster::Cluster;
use super::faults::{self, Schedule};
use super::options::{ChaosError, ChaosOptions, setup};
use super::{Ledger, Report};
use crate::harness;
use tim::client::resilient::{Client, ClientEvent, Config, Handle};
use tim::proto::groups_client::GroupsClient;

/// Runs the whole scenario and returns the verdict.
pub async fn run(opts: &ChaosOptions) -> Result<Report, ChaosError> {
    if opts.nodes < 2 || opts.users < 2 {
        return Err(setup("chaos needs at least 2 nodes and 2 users"));
    }
    let tim = harness::tim_exe(opts.tim.as_deref())?;
    // Interrupted (Ctrl-C), the scenario is dropped: its children die with it, and Redis'
    // directory with its server.
    tokio::select! {
        result = scenario(opts, &tim) => result,
        _ = tokio::signal::ctrl_c() => Err(setup("interrupted")),
    }
}

async fn scenario(opts: &ChaosOptions, tim: &Path) -> Result<Report, ChaosError> {
    let mut cluster = Cluster::start(opts, tim).await?;
    let gateways = cluster.gateways();
    info!(nodes = opts.nodes, users = opts.users, "cluster up; starting traffic");

    let ledger = Arc::new(Ledger::default());
    let users: Vec<String> = (0..opts.users).map(|i| format!("chaos-user-{i}")).collect();
    let mut handles = Vec::new();
    let mut readers = Vec::new();
    let connect_to = cluster.connect_to();
    for user in &users {
        let mut config = Config::new(gateways.clone(), user, "phone");
        config.backoff_min = Duration::from_millis(200);
        config.backoff_max = Duration::from_secs(2);
        config.options.keepalive_interval = Duration::from_secs(2);
        config.options.keepalive_timeout = Duration::from_secs(3);
        config.options.connect_to = connect_to.clone();
        let client = Client::start(config);
        handles.push(client.handle());
        readers.push(tokio::spawn(record(client, user.clone(), ledger.clone())));
    }
    let groups = create_groups(opts, &gateways[0], &users, &ledger).await?;
    let budget = Arc::new(AtomicU64::new(opts.messages.unwrap_or(u64::MAX)));
    let period = Duration::from_secs_f64(1.0 / f64::from(opts.rate.max(1)));
    let end = Instant::now() + Duration::from_secs(opts.seconds);
    let mut senders = Vec::new();
    for (i, handle) in handles.iter().enumerate() {
        let (h, ledger, users, budget) =
            (handle.clone(), ledger.clone(), users.clone(), budget.clone());
        let mine: Vec<String> =
            groups.iter().filter(|(_, m)| m.contains(&users[i])).map(|(g, _)| g.clone()).collect();
        let traffic = Traffic { i, users, groups: mine, period, end, budget };
        senders.push(tokio::spawn(send_loop(h, traffic, ledger)));
    }

    // Faults, in rotation, while the traffic lasts.
    let over = || budget.load(Ordering::Relaxed) == 0 || Instant::now() >= end;
    let every = Duration::from_secs(opts.fault_every);
    let schedule = Schedule { every, hold: Duration::from_secs(opts.hold) };
    let faults = faults::run(&mut cluster, &opts.faults, schedule, over).await?;
    while !over() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    info!("traffic stopped; waiting for every acked message to arrive");
    // One deadline for all: a sender still waiting then gives up (its send counts as unacked).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for s in senders {
        let abort = s.abort_handle();
        if tokio::time::timeout_at(deadline, s).await.is_err() {
            info!("a sender is still waiting for an ack; giving up on it");
            abort.abort();
        }
    }
    let devices: Vec<(String, String)> =
        users.iter().map(|u| (u.clone(), "phone".into())).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger.outstanding(&devices) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = Report { faults, ..ledger.report_for(&devices) };
    for lost in ledger.lost_examples(&devices, 20) {
        tracing::warn!(%lost, "an acked message never arrived");
    }
    for r in readers {
        r.abort();
    }
    drop(cluster);
    Ok(report)
}

/// Creates `--groups` groups of `--group-size` consecutive users (wrapping) through `gateway`,
/// before any fault, and tells the ledger who is in each.
async fn create_groups(
    opts: &ChaosOptions,
    gateway: &str,
    users: &[String],
    ledger: &Ledger,
) -> Result<Vec<(String, Vec<String>)>, ChaosError> {
    let size = opts.group_size.clamp(2, users.len());
    let mut groups = Vec::new();
    for g in 0..opts.groups {
        let members: Vec<String> =
            (0..size).map(|k| users[(g * size + k) % users.len()].clone()).collect();
        let opts = tim::client::Options::default();
        let login =
            tim::client::login(gateway, &members[0], "admin", "", &opts).await.map_err(setup)?;
        let channel = tim::client::channel(gateway, &opts).await.map_err(setup)?;
        let req = tim::proto::CreateGroupRequest {
            name: format!("chaos-{g}"),
            members: members[1..].to_vec(),
            history_for_new_members: false,
        };
        let created = GroupsClient::new(channel)
            .create_group(tim::client::authorized(req, &login.token))
            .await
            .map_err(setup)?;
        let id = created.into_inner().group.map(|g| g.id).unwrap_or_default();
        ledger.group(&id, &members);
        groups.push((id, members));
    }
    Ok(groups)
}

/// One user's sending: to random others and (a quarter) into its groups, one message each
/// `period` (or, when an ack takes longer, as soon as it came), until `end` or until the run's
/// `budget` is spent.
struct Traffic {
    i: usize,
    users: Vec<String>,
    groups: Vec<String>,
    period: Duration,
    end: Instant,
    budget: Arc<AtomicU64>,
}

async fn send_loop(h: Handle, t: Traffic, ledger: Arc<Ledger>) {
    let me = &t.users[t.i];
    let mut n = 0u64;
    let take = |b: u64| b.checked_sub(1);
    let mut tick = tokio::time::interval(t.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < t.end
        && t.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, take).is_ok()
    {
        n += 1;
        let body = format!("{me}#{n}");
        ledger.sent();
        // Retried across reconnects until stored; only a client that stopped gives up.
        if !t.groups.is_empty() && rand::random_range(0..4) == 0 {
            let group = &t.groups[rand::random_range(0..t.groups.len())];
            if let Ok(ack) = h.send_to_group(group, &body).await {
                ledger.acked_group(group, ack.conv_seq, me, &body);
            }
        } else {
            let others = t.users.len() - 1;
            let to = &t.users[(t.i + 1 + rand::random_range(0..others)) % t.users.len()];
            if let Ok(ack) = h.send(to, &body).await {
                ledger.acked(to, ack.seq, &body);
            }
        }
        tick.tick().await;
    }
}

/// Takes `client`'s events until it is kicked or stopped: records and acks each message for
/// `user`'s device "phone", and how long each reconnect took.
pub async fn record(mut client: Client, user: String, ledger: Arc<Ledger>) {
    let acker = client.handle();
    let mut down_since: Option<Instant> = None;
    while let Some(event) = client.next_event().await {
        match event {
            ClientEvent::Message(m) => {
                if m.conversation.starts_with("g:") {
                    // A group change (its creation) is no message of the run.
                    if m.event.is_none() {
                        let (conv, cseq) = (&m.conversation, m.conv_seq);
                        ledger.received_in_group(&user, "phone", m.seq, &m.body, conv, cseq);
                    }
                } else {
                    ledger.received(&user, "phone", m.seq, &m.body);
                }
                let _ = acker.ack_message(&m).await;
            }
            ClientEvent::Disconnected { .. } => {
                down_since.get_or_insert_with(Instant::now);
            }
            ClientEvent::Connected { inbox_epoch, .. } => {
                ledger.epoch(&user, "phone", &inbox_epoch);
                if let Some(t) = down_since.take() {
                    ledger.reconnected(t.elapsed().as_millis() as u64);
                }
            }
            ClientEvent::Kicked(_) | ClientEvent::LoggedOut(_) => return,
            // Chaos keeps every message within the retention: a gap is a loss, and the ledger
            // counts it as one.
            ClientEvent::Gap { .. } => {}
            // Ephemeral, no part of the ledger.
            ClientEvent::Signal(_) => {}
        }
    }
}
