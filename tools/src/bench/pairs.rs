//! `same-node` and `cross-node`: 1:1 messages between pairs of users, then the same load on the
//! bare relay, (with Redis) on the store script alone, and (same-node) on the MQTT and NATS
//! JetStream peers.
use std::sync::Arc;

use super::dial::{self, Dial};
use super::load::{self, Outcome, Shape};
use super::meter::{Meter, Watched};
use super::stats::Percentiles;
use super::target::{self, NodeSpec, Running};
use super::{BenchArgs, BenchError, Scenario, Sources, Summary, brokers, ratio, run_tag, store};

/// The last line of a traffic scenario: tim's throughput, latency and errors.
pub fn summarize(scenario: super::Scenario, o: &Outcome, p: &Percentiles) -> Summary {
    Summary {
        scenario,
        msgs_per_s: o.msgs_per_s(),
        p50_ms: p.p50,
        p99_ms: p.p99,
        errors: o.errors.total(),
    }
}

/// Prints one measured run: rate, latency, errors, then CPU and RSS, and the servers' CPU per
/// delivered message.
pub fn report(label: &str, o: &mut Outcome) -> Percentiles {
    let p = o.latency.percentiles();
    println!(
        "{label}: {:.0} msgs/s over {:.1} s; latency {p}; {}",
        o.msgs_per_s(),
        o.window.as_secs_f64(),
        o.errors
    );
    println!("  {}", o.usage.describe());
    if let Some(line) = o.usage.per_message(o.delivered, o.window) {
        println!("  server CPU per delivered message: {line}");
    }
    p
}

/// The same load on the MQTT and NATS JetStream peers, each compared with tim's run `o`; one
/// that is not there or cannot be set up is skipped with a note.
async fn peers(args: &BenchArgs, tag: &str, shape: Shape, o: &Outcome) {
    let brokers = [
        ("mosquitto (MQTT QoS 1, stores nothing)", &args.mqtt, "MQTT"),
        ("nats-jetstream (file storage, explicit acks)", &args.nats, "NATS"),
    ];
    for (label, addr, kind) in brokers {
        if addr.is_empty() {
            continue;
        }
        let outcome = match kind {
            "MQTT" => brokers::mqtt(addr, tag, args.pairs, shape).await,
            _ => brokers::jetstream(addr, tag, args.pairs, shape).await,
        };
        // A peer is a comparison, never a reason for tim's run to fail.
        let mut b = match outcome {
            Ok(Some(b)) => b,
            Ok(None) => {
                println!("{label}: skipped, no {kind} server answers at {addr}");
                continue;
            }
            Err(e) => {
                println!("{label}: skipped, {e}");
                continue;
            }
        };
        report(label, &mut b);
        let name = label.split(' ').next().unwrap_or(label);
        println!("  tim/{name} throughput {}", ratio(o.msgs_per_s(), b.msgs_per_s()));
    }
}

/// Who is measured: each node by pid (or this process when in-process), and the generator.
pub fn watched(nodes: &[&Running]) -> Vec<Watched> {
    let mut w = Vec::new();
    let mut in_process = false;
    for (i, n) in nodes.iter().enumerate() {
        let label = if nodes.len() > 1 { format!("node{}", i + 1) } else { "node".into() };
        match n.pid() {
            Some(Some(pid)) => w.push(Watched { label, pid: Some(pid) }),
            Some(None) => in_process = true,
            None => {}
        }
    }
    let me = if in_process { "node+generator" } else { "generator" };
    w.push(Watched { label: me.into(), pid: None });
    w
}

/// The nodes of a run: `--addr` ones, or `count` started here.
pub async fn nodes(
    args: &BenchArgs,
    spec: &NodeSpec,
    count: usize,
) -> Result<Vec<Running>, BenchError> {
    if !args.addr.is_empty() {
        if args.addr.len() < count {
            return Err(super::setup(format!("this scenario needs {count} --addr nodes")));
        }
        let pid = |i: usize| if i == 0 { args.node_pid } else { None };
        return Ok(args
            .addr
            .iter()
            .take(count)
            .enumerate()
            .map(|(i, a)| Running::external(a, pid(i)))
            .collect());
    }
    // Later nodes first; each earlier one gets the later ones as static peers, so the senders'
    // node (the first) relays to the receivers' node (the last).
    let mut nodes: Vec<Running> = Vec::new();
    for _ in 0..count {
        let mut spec = spec.clone();
        let later: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
        spec.peers = (!later.is_empty()).then(|| later.join(","));
        nodes.insert(0, target::node(&spec, args.in_process).await?);
    }
    Ok(nodes)
}

pub fn shape(args: &BenchArgs) -> Shape {
    Shape {
        size: args.size,
        rate: args.rate,
        warmup: args.warmup(),
        window: args.window(),
        ack_interval: args.ack_interval,
    }
}

pub fn describe_load(args: &BenchArgs) -> String {
    let rate = match args.rate {
        0 => "as fast as possible (closed loop)".to_string(),
        r => format!("{r} msgs/s in total"),
    };
    let store =
        args.redis.as_deref().map_or("in-memory store".to_string(), |u| format!("Redis {u}"));
    format!(
        "{} pairs, {} B bodies, {rate}, {store}, warm-up {:.1} s, window {:.1} s",
        args.pairs, args.size, args.warmup, args.seconds
    )
}

pub async fn run(args: &BenchArgs) -> Result<Summary, BenchError> {
    let tag = run_tag();
    let cross = args.scenario == Scenario::CrossNode;
    let spec = NodeSpec::new(args, &tag);
    let shape = shape(args);
    let running = nodes(args, &spec, if cross { 2 } else { 1 }).await?;
    let addrs: Vec<String> = running.iter().map(|n| n.addr.clone()).collect();
    let sources = Arc::new(args.sources(&addrs));
    println!("bench: {}: {}", args.scenario.name(), describe_load(args));
    for (i, n) in running.iter().enumerate() {
        println!("  node{}: {}", i + 1, n.describe());
    }
    println!("  clients: one connection per user, {}", sources.describe());

    // Senders on the first node; receivers on the last (the second, for cross-node), pinned to
    // it whatever Login answers, so that the pair really spans two nodes.
    let send_dial = Dial::Node { gateway: addrs[0].clone(), pin: cross };
    let recv_dial = Dial::Node { gateway: addrs[addrs.len() - 1].clone(), pin: cross };
    let senders: Vec<String> = (0..args.pairs).map(|i| format!("{tag}-s{i}")).collect();
    let receivers: Vec<String> = (0..args.pairs).map(|i| format!("{tag}-r{i}")).collect();
    let mut meter =
        Meter::new(watched(&running.iter().collect::<Vec<_>>()), args.redis.as_deref()).await;
    let mut o =
        traffic(&senders, &receivers, &send_dial, &recv_dial, &sources, shape, &mut meter).await?;
    let p = report("tim", &mut o);
    if cross && o.acked > 0 && o.received == 0 {
        println!(
            "  cross-node: {} messages were stored and acked, none reached the receivers on the \
             other node: check that the nodes reach each other over `--peers` (relay) and share the Redis",
            o.acked
        );
    }
    let summary = summarize(args.scenario, &o, &p);
    for n in running {
        n.stop().await;
    }

    if !args.no_baselines && args.addr.is_empty() {
        let relay = target::relay(args.in_process).await?;
        let dial = Dial::Relay(relay.addr.clone());
        let mut meter = Meter::new(relay_watched(&relay), None).await;
        let mut b =
            traffic(&senders, &receivers, &dial, &dial, &sources, shape, &mut meter).await?;
        report("bare-relay", &mut b);
        let paced = if args.rate > 0 { " (both paced at --rate: compare latency)" } else { "" };
        println!("  tim/bare-relay throughput {}{paced}", ratio(o.msgs_per_s(), b.msgs_per_s()));
        relay.stop().await;
        if let Some(url) = &args.redis {
            let store_prefix = format!("{tag}-store");
            let mut meter =
                Meter::new(vec![Watched { label: "generator".into(), pid: None }], Some(url)).await;
            let mut s =
                store::append_baseline(url, &store_prefix, &receivers, shape, &mut meter).await?;
            let label = "store-script (append round trip, no node)";
            report(label, &mut s);
            let target = if args.rate > 0 { paced } else { " (target ≥ 0.80)" };
            println!(
                "  tim/store-script throughput {}{target}",
                ratio(o.msgs_per_s(), s.msgs_per_s())
            );
            store::cleanup(url, &store_prefix).await?;
        }
        if !cross {
            peers(args, &tag, shape, &o).await;
        }
    }
    if let Some(url) = &args.redis
        && args.addr.is_empty()
    {
        store::cleanup(url, &tag).await?;
    }
    Ok(summary)
}

pub fn relay_watched(relay: &Running) -> Vec<Watched> {
    match relay.pid() {
        Some(Some(pid)) => vec![
            Watched { label: "relay".into(), pid: Some(pid) },
            Watched { label: "generator".into(), pid: None },
        ],
        _ => vec![Watched { label: "relay+generator".into(), pid: None }],
    }
}

/// Opens receivers first (so every message finds its receiver online), then senders, and runs
/// the load.
async fn traffic(
    senders: &[String],
    receivers: &[String],
    send_dial: &Dial,
    recv_dial: &Dial,
    sources: &Arc<Sources>,
    shape: Shape,
    meter: &mut Meter,
) -> Result<Outcome, BenchError> {
    let r: Vec<_> = receivers.iter().map(|u| (u.clone(), recv_dial.clone())).collect();
    let s: Vec<_> = senders.iter().map(|u| (u.clone(), send_dial.clone())).collect();
    let r = dial::open_all(&r, sources).await?;
    let s = dial::open_all(&s, sources).await?;
    let pairs = s.into_iter().zip(r).zip(receivers.iter().cloned()).map(|((s, r), to)| (s, r, to));
    Ok(load::run(pairs.collect(), shape, meter).await)
}
