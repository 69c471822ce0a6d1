//! `idle`: open `--streams` sessions to one node, each on its own connection, hold them for the
//! window, and report the node's RSS per connection; then the same on the bare relay (what
//! HTTP/2 + tonic alone cost per connection).
//!
//! Every connection is a file descriptor in the generator and another in the node, so the soft
//! `RLIMIT_NOFILE` is raised to the hard limit first (children inherit it); raising the hard
//! limit needs privileges (`ulimit -Hn`, `LimitNOFILE=` in systemd) and is left to the operator.
//! Connections go out from several 127.0.0.x source addresses, so one address's ephemeral
//! ports do not cap the count.
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::dial::Dial;
use super::meter::rss_kib;
use super::stats::{Errors, Latencies};
use super::target::{self, NodeSpec, Running};
use super::{BenchArgs, BenchError, Sources, Summary, run_tag, setup, store};
use tim::client::{Event, Session};

/// Descriptors kept free for listeners, Redis, logs and logins in flight.
const SPARE_FDS: u64 = 256;
/// Logins and connects in flight at once.
const OPENING: usize = 64;

/// Raises the soft open-files limit to the hard one; returns (soft, hard) after.
pub fn raise_nofile() -> (u64, u64) {
    let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() else { return (0, 0) };
    if soft < hard && rlimit::Resource::NOFILE.set(hard, hard).is_ok() {
        return (hard, hard);
    }
    (soft, hard)
}

pub async fn run(args: &BenchArgs) -> Result<Summary, BenchError> {
    let n = args.streams.unwrap_or(2 * args.pairs);
    let (soft, hard) = raise_nofile();
    let per_process = if args.in_process && args.addr.is_empty() { 2 * n } else { n } as u64;
    if soft < per_process + SPARE_FDS {
        return Err(setup(format!(
            "idle: {n} streams need about {} open files per process, but RLIMIT_NOFILE is {soft} \
             (hard limit {hard}); use fewer --streams or raise the hard limit",
            per_process + SPARE_FDS
        )));
    }
    let tag = run_tag();
    let spec = NodeSpec::new(args, &tag);
    let running = super::pairs::nodes(args, &spec, 1).await?;
    let node = running.into_iter().next().ok_or_else(|| setup("no node"))?;
    let sources = Arc::new(args.sources(std::slice::from_ref(&node.addr)));
    println!(
        "bench: idle: {n} streams held {:.0} s; open-files limit {soft} (hard {hard}); {}",
        args.seconds,
        sources.describe()
    );
    println!("  node: {}", node.describe());
    let dial = Dial::Node { gateway: node.addr.clone(), pin: false };
    let users: Vec<String> = (0..n).map(|i| format!("{tag}-i{i}")).collect();
    let held = hold(args, "tim", &node, &dial, &users, &sources).await;
    node.stop().await;

    if !args.no_baselines && args.addr.is_empty() {
        let relay = target::relay(args.in_process).await?;
        let dial = Dial::Relay(relay.addr.clone());
        let base = hold(args, "bare-relay", &relay, &dial, &users, &sources).await;
        if let (Some(a), Some(b)) = (held.per_conn_kib, base.per_conn_kib) {
            println!("  tim/bare-relay RSS per connection {:.2}", a / b);
        }
        relay.stop().await;
    }
    if let Some(url) = &args.redis
        && args.addr.is_empty()
    {
        store::cleanup(url, &tag).await?;
    }
    let mut open = held.open;
    let p = open.percentiles();
    Ok(Summary {
        scenario: args.scenario,
        msgs_per_s: 0.0,
        p50_ms: p.p50,
        p99_ms: p.p99,
        errors: held.errors.total(),
    })
}

struct Held {
    open: Latencies,
    errors: Errors,
    per_conn_kib: Option<f64>,
}

/// Opens a session per user on `target`, holds them all for the window, and reports RSS.
async fn hold(
    args: &BenchArgs,
    label: &str,
    target: &Running,
    dial: &Dial,
    users: &[String],
    sources: &Arc<Sources>,
) -> Held {
    let pid = target.pid().flatten();
    let measured = target.pid().is_some();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid).filter(|_| measured);
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(OPENING));
    let tasks: Vec<_> = users
        .iter()
        .map(|u| {
            let (gate, dial, sources, u) = (gate.clone(), dial.clone(), sources.clone(), u.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                let t = Instant::now();
                dial.open(&u, &sources).await.map(|s| (s, t.elapsed()))
            })
        })
        .collect();
    let mut sessions: Vec<Session> = Vec::with_capacity(users.len());
    let (mut open, mut errors) = (Latencies::default(), Errors::default());
    for t in tasks {
        match t.await {
            Ok(Ok((s, took))) => {
                open.record(took);
                sessions.push(s);
            }
            Ok(Err(e)) => {
                errors.connect += 1;
                if errors.connect <= 3 {
                    eprintln!("bench: connect failed: {e}");
                }
            }
            Err(_) => errors.connect += 1,
        }
    }
    let opening = started.elapsed().as_secs_f64();
    tokio::time::sleep(args.window()).await;
    for s in &mut sessions {
        // An idle stream gets no events; any (Closed, Drain, Kicked) means it did not hold.
        if let Some(ev) = s.next_event().now_or_never()
            && !matches!(ev, Some(Event::Message(_)))
        {
            errors.closed += 1;
        }
    }
    let after = rss_kib(pid).filter(|_| measured);
    let held = sessions.len();
    let mut p = open.clone();
    let p = p.percentiles();
    println!(
        "{label}: {held} streams open ({:.0} opened/s; time to open {p}); {errors}",
        held as f64 / opening
    );
    let per = |b: Option<(u64, u64)>, a: Option<(u64, u64)>| -> Option<(f64, f64, f64)> {
        let (b, a) = (b?.0 as f64, a?.0 as f64);
        Some((b / 1024.0, a / 1024.0, (a - b) / held.max(1) as f64))
    };
    let who = if pid.is_none() { "process (node and generator)" } else { "process" };
    let target_note = if label == "tim" { " (target ≤ 24 KiB, issue 12)" } else { "" };
    let per_conn_kib = per(before, after).map(|(b, a, k)| {
        println!(
            "  {label} {who} RSS {b:.1} MiB before, {a:.1} MiB with the streams: \
             {k:.1} KiB per connection{target_note}"
        );
        k
    });
    drop(sessions);
    Held { open, errors, per_conn_kib }
}
