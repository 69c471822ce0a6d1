//! `connect-storm`: `--pairs` clients each log in and open a stream (a new connection for each,
//! as a fresh app start would), wait for Welcome, close, and start over. Figures: sessions
//! opened per second and the time of login + connect + Welcome. Baseline: the same loop against
//! the bare relay, which has no login (one connection per session instead of two).
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::dial::Dial;
use super::load::{Clock, Outcome, Pacer, collect, measure_window};
use super::meter::Meter;
use super::pairs::{describe_load, nodes, relay_watched, report, shape, summarize, watched};
use super::stats::{Errors, Latencies};
use super::target::{self, NodeSpec};
use super::{BenchArgs, BenchError, Sources, Summary, ratio, run_tag, store};

pub async fn run(args: &BenchArgs) -> Result<Summary, BenchError> {
    let tag = run_tag();
    let spec = NodeSpec::new(args, &tag);
    let running = nodes(args, &spec, 1).await?;
    let node = &running[0];
    let sources = Arc::new(args.sources(std::slice::from_ref(&node.addr)));
    println!("bench: connect-storm: {} (pairs = concurrent clients)", describe_load(args));
    println!("  node: {}", node.describe());
    println!("  clients: {}", sources.describe());
    let dial = Dial::Node { gateway: node.addr.clone(), pin: false };
    let mut meter = Meter::new(watched(&[node]), args.redis.as_deref()).await;
    let mut o = storm(args, &tag, &dial, &sources, &mut meter).await;
    let p = report("tim (sessions/s: login + stream + Welcome)", &mut o);
    let summary = summarize(args.scenario, &o, &p);
    for n in running {
        n.stop().await;
    }
    if !args.no_baselines && args.addr.is_empty() {
        let relay = target::relay(args.in_process).await?;
        let dial = Dial::Relay(relay.addr.clone());
        let mut meter = Meter::new(relay_watched(&relay), None).await;
        let mut b = storm(args, &tag, &dial, &sources, &mut meter).await;
        report("bare-relay (sessions/s: stream + Welcome, no login)", &mut b);
        println!("  tim/bare-relay throughput {}", ratio(o.msgs_per_s(), b.msgs_per_s()));
        relay.stop().await;
    }
    if let Some(url) = &args.redis
        && args.addr.is_empty()
    {
        store::cleanup(url, &tag).await?;
    }
    Ok(summary)
}

/// Runs the connect loop of every client through warm-up and the window.
async fn storm(
    args: &BenchArgs,
    tag: &str,
    dial: &Dial,
    sources: &Arc<Sources>,
    meter: &mut Meter,
) -> Outcome {
    let shape = shape(args);
    let clock = Clock::new(&shape);
    let (stop_tx, stop) = watch::channel(false);
    let tasks: Vec<_> = (0..args.pairs)
        .map(|i| {
            let (dial, sources, mut stop) = (dial.clone(), sources.clone(), stop.clone());
            let (user, rate, n) = (format!("{tag}-c{i}"), args.rate, args.pairs);
            tokio::spawn(async move {
                let mut pacer = Pacer::new(rate, n);
                let (mut done, mut lat, mut errors) =
                    (0u64, Latencies::default(), Errors::default());
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        () = pacer.wait() => {}
                    }
                    let t = Instant::now();
                    match dial.open(&user, &sources).await {
                        Ok(session) => {
                            if clock.in_window(Instant::now()) {
                                done += 1;
                                lat.record(t.elapsed());
                            }
                            drop(session);
                        }
                        Err(e) => {
                            errors.connect += 1;
                            if errors.connect <= 3 {
                                eprintln!("bench: connect failed: {e}");
                            }
                        }
                    }
                    if *stop.borrow() {
                        break;
                    }
                }
                (done, lat, errors)
            })
        })
        .collect();
    let usage = measure_window(&clock, meter, &stop_tx).await;
    collect(tasks, shape.window, usage).await
}
