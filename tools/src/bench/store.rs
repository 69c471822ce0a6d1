//! The store baseline: tim's Redis store called directly, without any node, in the same load
//! shape; and deleting a run's keys afterwards.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::BenchError;
use super::load::{Clock, Outcome, Pacer, Shape, body, collect, measure_window};
use super::meter::Meter;
use super::stats::{Errors, Latencies};
use tim::store::{Inbox as _, NewMessage, RedisStore, Route, RouteStore as _, StoreOptions};

async fn connect(url: &str, prefix: &str) -> Result<RedisStore, BenchError> {
    let urls = [url.to_string()];
    let timeout = tim::Config::default().redis_timeout;
    Ok(RedisStore::connect(&urls, false, timeout, prefix, StoreOptions::default()).await?)
}

/// `Inbox::append` (the append script: dedup, seq, XADD, route read) from one task per
/// recipient, paced or closed-loop like the senders. Each recipient gets a live route first,
/// as a connected receiver has. Delivered = appends completed in the window; latency = the
/// script's round trip.
pub async fn append_baseline(
    url: &str,
    prefix: &str,
    recipients: &[String],
    shape: Shape,
    meter: &mut Meter,
) -> Result<Outcome, BenchError> {
    let store = Arc::new(connect(url, prefix).await?);
    let route = Route { node_id: "bench".into(), session_id: "bench".into(), started_at: 0 };
    for to in recipients {
        store.put(to, "bench", &route, Duration::from_secs(300)).await?;
    }
    let clock = Clock::new(&shape);
    let (stop_tx, stop) = watch::channel(false);
    let n = recipients.len();
    let tasks: Vec<_> = recipients
        .iter()
        .enumerate()
        .map(|(i, to)| {
            let (store, to, mut stop) = (store.clone(), to.clone(), stop.clone());
            tokio::spawn(async move {
                let mut pacer = Pacer::new(shape.rate, n);
                let (mut done, mut lat, mut errors) =
                    (0u64, Latencies::default(), Errors::default());
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        () = pacer.wait() => {}
                    }
                    let from = format!("store-s{i}");
                    let msg = NewMessage {
                        conversation: tim::ids::Conversation::direct(&from, &to).id(),
                        from,
                        origin_device: "bench".into(),
                        to: to.clone(),
                        client_msg_id: tim::ids::new_id(),
                        body: body(&clock, shape.size),
                        msg_id: tim::ids::new_id(),
                        sent_at: tim::auth::unix_ms(std::time::SystemTime::now()),
                        event: None,
                    };
                    let t = Instant::now();
                    match store.append(msg).await {
                        Ok(_) if clock.in_window(Instant::now()) => {
                            done += 1;
                            lat.record(t.elapsed());
                        }
                        Ok(_) => {}
                        Err(_) => errors.send += 1,
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
    Ok(collect(tasks, shape.window, usage).await)
}

/// Reads each user's inbox after seq 0 to its end in pages of 256 (as a session's replay does),
/// all users at once. Returns (messages read, seconds taken, per-user time to read).
pub async fn read_baseline(
    url: &str,
    prefix: &str,
    users: &[String],
) -> Result<(u64, f64, Latencies), BenchError> {
    let store = Arc::new(connect(url, prefix).await?);
    let start = Instant::now();
    let tasks: Vec<_> = users
        .iter()
        .map(|u| {
            let (store, u) = (store.clone(), u.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let (mut after, mut n) = (0u64, 0u64);
                loop {
                    let page = store.read(&u, after, 256).await?;
                    n += page.len() as u64;
                    match page.last() {
                        Some(m) if page.len() == 256 => after = m.seq,
                        _ => break,
                    }
                }
                Ok::<_, BenchError>((n, t.elapsed()))
            })
        })
        .collect();
    let (mut total, mut lat) = (0, Latencies::default());
    for t in tasks {
        let (n, took) = t.await.map_err(|e| super::setup(e.to_string()))??;
        total += n;
        lat.record(took);
    }
    Ok((total, start.elapsed().as_secs_f64(), lat))
}

/// Checks that Redis answers at `url`.
pub async fn ping(url: &str) -> Result<(), BenchError> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(())
}

/// Deletes every key under `prefix:` (the run's own prefix, so nothing else is touched).
pub async fn cleanup(url: &str, prefix: &str) -> Result<u64, BenchError> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let pattern = format!("{prefix}:*");
    let (mut cursor, mut deleted) = (0u64, 0u64);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
