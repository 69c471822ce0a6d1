//! `offline-drain`: senders store a backlog for receivers that are offline; then every receiver
//! connects at once and reads its inbox (the replay on connect) until it has all of it.
//! Figures: drained messages per second (all receivers together) and, as latency, each
//! receiver's time from starting to connect until its last backlog message arrived.
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::time::Instant;

use super::dial::{self, Dial};
use super::load::{self, Pacer, body};
use super::meter::Meter;
use super::pairs::{describe_load, nodes, shape, watched};
use super::stats::{Errors, Latencies};
use super::target::NodeSpec;
use super::{BenchArgs, BenchError, Summary, ratio, run_tag, store};
use tim::client::{ClientError, Event};

pub async fn run(args: &BenchArgs) -> Result<Summary, BenchError> {
    let tag = run_tag();
    let spec = NodeSpec::new(args, &tag);
    let shape = shape(args);
    let running = nodes(args, &spec, 1).await?;
    let node = &running[0];
    let sources = Arc::new(args.sources(std::slice::from_ref(&node.addr)));
    println!(
        "bench: offline-drain: {}; backlog {} per receiver",
        describe_load(args),
        args.backlog
    );
    println!("  node: {}", node.describe());
    let dial = Dial::Node { gateway: node.addr.clone(), pin: false };
    let senders: Vec<_> = (0..args.pairs).map(|i| (format!("{tag}-s{i}"), dial.clone())).collect();
    let receivers: Vec<String> = (0..args.pairs).map(|i| format!("{tag}-r{i}")).collect();

    // Fill: each sender stores its receiver's backlog, bounded by the window's length.
    let sessions = dial::open_all(&senders, &sources).await?;
    let clock = load::Clock::new(&load::Shape { warmup: Duration::ZERO, ..shape });
    let fill_deadline = Instant::now() + shape.window;
    let started = Instant::now();
    let fills: Vec<_> = sessions
        .into_iter()
        .zip(receivers.clone())
        .map(|(session, to)| {
            let (backlog, size, rate, n) = (args.backlog, shape.size, shape.rate, args.pairs);
            tokio::spawn(async move {
                let (sender, mut pacer) = (session.sender(), Pacer::new(rate, n));
                let (mut last, mut errors) = (0u64, Errors::default());
                while last < backlog && Instant::now() < fill_deadline {
                    pacer.wait().await;
                    match sender.send(&to, &body(&clock, size)).await {
                        Ok(ack) => last = ack.seq,
                        Err(ClientError::Closed) => {
                            errors.closed += 1;
                            break;
                        }
                        Err(_) => errors.send += 1,
                    }
                }
                drop(session);
                (last, errors)
            })
        })
        .collect();
    let mut expected = Vec::new();
    let mut errors = Errors::default();
    for f in fills {
        let (last, e) = f.await.map_err(|e| super::setup(e.to_string()))?;
        expected.push(last);
        errors.add(&e);
    }
    let stored: u64 = expected.iter().sum();
    let fill_secs = started.elapsed().as_secs_f64();
    println!(
        "fill: {stored} messages stored in {fill_secs:.1} s ({:.0} msgs/s)",
        stored as f64 / fill_secs
    );

    let store_rate = match (&args.redis, args.no_baselines || !args.addr.is_empty()) {
        (Some(url), false) => {
            let (n, secs, mut lat) = store::read_baseline(url, &tag, &receivers).await?;
            let p = lat.percentiles();
            println!(
                "store-read (Inbox::read pages of 256, no node): {:.0} msgs/s ({n} in {secs:.2} s); \
                 per-user read time p50 {:.2} p99 {:.2} ms",
                n as f64 / secs,
                p.p50,
                p.p99
            );
            Some(n as f64 / secs)
        }
        _ => None,
    };

    // Drain: every receiver connects at once and reads until its last backlog seq.
    let mut meter = Meter::new(watched(&[node]), args.redis.as_deref()).await;
    meter.start().await;
    let wait = Duration::from_secs_f64(args.seconds.max(10.0) * 3.0);
    let started = Instant::now();
    let drains: Vec<_> = receivers
        .iter()
        .zip(&expected)
        .map(|(user, &last)| {
            let (user, dial, sources) = (user.clone(), dial.clone(), sources.clone());
            tokio::spawn(async move { drain_one(&user, &dial, &sources, last, wait).await })
        })
        .collect();
    let (mut drained, mut times) = (0u64, Latencies::default());
    for d in drains {
        let (got, took, e) = d.await.map_err(|e| super::setup(e.to_string()))?;
        drained += got;
        times.record(took);
        errors.add(&e);
    }
    let secs = started.elapsed().as_secs_f64();
    let usage = meter.stop().await;
    let p = times.percentiles();
    let rate = drained as f64 / secs;
    println!(
        "tim drain: {rate:.0} msgs/s ({drained} of {stored} in {secs:.2} s); per-receiver time to \
         drain {p}; {errors}"
    );
    println!("  {}", usage.describe());
    if let Some(s) = store_rate {
        println!("  tim/store-read throughput {}", ratio(rate, s));
    }
    for n in running {
        n.stop().await;
    }
    if let Some(url) = &args.redis
        && args.addr.is_empty()
    {
        store::cleanup(url, &tag).await?;
    }
    Ok(Summary {
        scenario: args.scenario,
        msgs_per_s: rate,
        p50_ms: p.p50,
        p99_ms: p.p99,
        errors: errors.total(),
    })
}

/// Connects as `user` and reads until seq `last`, acking as it goes. Returns (messages read,
/// time from the start of the login, errors).
async fn drain_one(
    user: &str,
    dial: &Dial,
    sources: &super::Sources,
    last: u64,
    wait: Duration,
) -> (u64, Duration, Errors) {
    let start = Instant::now();
    let mut errors = Errors::default();
    let mut session = match dial.open(user, sources).await {
        Ok(s) => s,
        Err(_) => {
            errors.connect += 1;
            errors.undelivered += last;
            return (0, start.elapsed(), errors);
        }
    };
    let sender = session.sender();
    let (mut seq, mut n) = (0u64, 0u64);
    let deadline = start + wait;
    while seq < last {
        let Ok(event) = tokio::time::timeout_at(deadline, session.next_event()).await else {
            break;
        };
        let mut event = event;
        loop {
            match event {
                Some(Event::Message(m)) => {
                    if m.seq != seq + 1 {
                        errors.order += 1;
                    }
                    seq = seq.max(m.seq);
                    n += 1;
                }
                _ => {
                    errors.closed += 1;
                    errors.undelivered += last.saturating_sub(seq);
                    return (n, start.elapsed(), errors);
                }
            }
            match session.next_event().now_or_never() {
                Some(e) => event = e,
                None => break,
            }
        }
        if sender.ack(seq).await.is_err() {
            errors.closed += 1;
            break;
        }
    }
    errors.undelivered += last.saturating_sub(seq);
    (n, start.elapsed(), errors)
}
