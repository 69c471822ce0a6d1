//! `group`: messages into one group of each size of `--group-sizes` (10 and 1,000 by default),
//! of whose members `--online` hold streams and the rest are offline (their inboxes fill, as a
//! big group's mostly do). `--pairs` of the online members send, closed loop or at `--rate` in
//! total. Figures per size: messages stored per second, deliveries per second to the online
//! members with their latency from send to arrival, server CPU per stored message, and the
//! bytes Redis appended to its AOF per stored message (up to the node's `--group-fanout-limit`,
//! 1,000, a group message is written into every member's inbox: that is what grows with the
//! size; a larger group broadcasts: stored once, pushed to the members online). The last line
//! is the largest size's.
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::dial::{self, Dial};
use super::load::{self, Pacer, Received, body};
use super::meter::Meter;
use super::pairs::{nodes, shape, watched};
use super::stats::{Errors, Latencies};
use super::target::NodeSpec;
use super::{BenchArgs, BenchError, Scenario, Summary, run_tag, setup, store};
use tim::client::{self, ClientError, Event, Options};
use tim::proto::{self, groups_client::GroupsClient};

pub async fn run(args: &BenchArgs) -> Result<Summary, BenchError> {
    let mut last = None;
    for &size in &args.group_sizes {
        last = Some(one(args, size).await?);
    }
    last.ok_or_else(|| setup("--group-sizes is empty"))
}

/// Bytes in Redis's AOF, when it keeps one.
async fn aof_bytes(url: Option<&str>) -> Option<u64> {
    let client = redis::Client::open(url?).ok()?;
    let mut c = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO").arg("persistence").query_async(&mut c).await.ok()?;
    let line = info.lines().find(|l| l.starts_with("aof_current_size:"))?;
    line.trim_start_matches("aof_current_size:").trim().parse().ok()
}

async fn one(args: &BenchArgs, size: u32) -> Result<Summary, BenchError> {
    if size < 2 {
        return Err(setup("a group has at least 2 members"));
    }
    let tag = run_tag();
    let mut spec = NodeSpec::new(args, &tag);
    spec.group_max_members = Some(size);
    let running = nodes(args, &spec, 1).await?;
    let node = &running[0];
    let sources = Arc::new(args.sources(std::slice::from_ref(&node.addr)));
    let members: Vec<String> = (0..size).map(|i| format!("{tag}-m{i}")).collect();
    let online = (args.online as usize).clamp(2, members.len());
    let senders = args.pairs.clamp(1, online);

    // The first member creates the group with all the others.
    let opts = Options::default();
    let owner = client::login(&node.addr, &members[0], "bench", "", &opts).await?;
    let mut groups = GroupsClient::new(client::channel(&node.addr, &opts).await?);
    let req = proto::CreateGroupRequest {
        name: "bench".into(),
        members: members[1..].to_vec(),
        history_for_new_members: false,
    };
    let created = groups.create_group(client::authorized(req, &owner.token)).await;
    let group = created.map_err(ClientError::from)?.into_inner().group.unwrap_or_default().id;

    let dial = Dial::Node { gateway: node.addr.clone(), pin: false };
    let users: Vec<_> = members[..online].iter().map(|u| (u.clone(), dial.clone())).collect();
    let sessions = dial::open_all(&users, &sources).await?;
    let shape = shape(args);
    let clock = Arc::new(load::Clock::new(&shape));
    let (stop, stopped) = watch::channel(false);
    let mut workers = Vec::new();
    for (i, mut session) in sessions.into_iter().enumerate() {
        let (clock, mut stopped, group) = (clock.clone(), stopped.clone(), group.clone());
        let sends = i < senders;
        let (rate, n, body_size) = (shape.rate, senders, shape.size);
        workers.push(tokio::spawn(async move {
            let sender = session.sender();
            let (mut pacer, mut received) = (Pacer::new(rate, n), Received::default());
            let (mut stored, mut errors) = (0u64, Errors::default());
            let mut in_flight: Option<futures_util::future::BoxFuture<'static, _>> = None;
            loop {
                if sends && in_flight.is_none() {
                    pacer.wait().await;
                    let (sender, group, body) = (sender.clone(), group.clone(), body(&clock, body_size));
                    in_flight = Some(Box::pin(async move {
                        sender.send_to_group(&tim::ids::new_id(), &group, &body).await
                    }));
                }
                tokio::select! {
                    _ = async { stopped.wait_for(|s| *s).await.map(drop) } => break,
                    Some(done) = async { match in_flight.as_mut() { Some(f) => Some(f.await), None => None } } => {
                        in_flight = None;
                        match done {
                            Ok(_) if clock.in_window(Instant::now()) => stored += 1,
                            Ok(_) => {}
                            Err(_) => errors.send += 1,
                        }
                    }
                    event = session.next_event() => match event {
                        Some(Event::Message(m)) if m.event.is_none() => {
                            received.arrived(&clock, m.body.as_bytes());
                            if received.count % 64 == 0 {
                                let _ = sender.ack_message(&m).await;
                            }
                        }
                        Some(_) => {}
                        None => {
                            errors.closed += 1;
                            break;
                        }
                    },
                }
            }
            (stored, received, errors)
        }));
    }
    drop(stopped);

    let mut meter = Meter::new(watched(&[node]), args.redis.as_deref()).await;
    tokio::time::sleep_until(clock.window_start).await;
    let aof0 = aof_bytes(args.redis.as_deref()).await;
    let usage = load::measure_window(&clock, &mut meter, &stop).await;
    let aof1 = aof_bytes(args.redis.as_deref()).await;
    let (mut stored, mut delivered, mut latency, mut errors) =
        (0u64, 0u64, Latencies::default(), Errors::default());
    for w in workers {
        let (s, r, e) = w.await.map_err(|e| setup(e.to_string()))?;
        stored += s;
        delivered += r.delivered;
        latency.merge(r.latency);
        errors.add(&e);
        errors.add(&r.errors);
    }
    let window = shape.window;
    let secs = window.as_secs_f64();
    let p = latency.percentiles();
    println!(
        "group of {size} ({online} online, {senders} sending, {group}): {:.0} msgs/s stored, \
         {:.0} deliveries/s to online members; latency {p}; {errors}",
        stored as f64 / secs,
        delivered as f64 / secs
    );
    if let Some(per) = usage.per_message(stored, window) {
        println!("  server CPU per stored message: {per}");
    }
    match (aof0, aof1) {
        (Some(a), Some(b)) if stored > 0 && b >= a => {
            println!("  Redis AOF per stored message: {:.0} bytes", (b - a) as f64 / stored as f64)
        }
        (Some(_), Some(_)) if stored > 0 => {
            println!("  Redis AOF per stored message: n/a (Redis rewrote its AOF meanwhile)")
        }
        _ => {
            println!("  Redis AOF per stored message: n/a (no --redis, no AOF, or nothing stored)")
        }
    }
    println!("  {}", usage.describe());
    for n in running {
        n.stop().await;
    }
    if let Some(url) = &args.redis {
        store::cleanup(url, &tag).await?;
    }
    Ok(Summary {
        scenario: Scenario::Group,
        msgs_per_s: stored as f64 / secs,
        p50_ms: p.p50,
        p99_ms: p.p99,
        errors: errors.total(),
    })
}
