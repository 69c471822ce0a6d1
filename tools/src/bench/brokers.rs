//! Peers in the same load: Mosquitto (MQTT 3.1.1, QoS 1) and NATS JetStream (file storage,
//! explicit acks), driven as tim's pairs are. Each user has its own connection; a sender waits
//! for the broker's ack (PUBACK, or JetStream's PubAck once stored) before its next send, paced
//! or closed-loop; a receiver takes its own subject's messages and acks each one. The send
//! time rides in the body, so latency is end to end on one clock. The broker's CPU and RSS are
//! read from `/proc` by process name. A broker that does not answer is skipped with a note.
//!
//! MQTT runs with clean sessions (Mosquitto keeps a message only in memory, until the
//! subscriber's PUBACK). JetStream runs a work-queue stream (a message is removed once its
//! consumer acks it, as tim trims acked messages) with one durable pull consumer per receiver.
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio::time::Instant;

use super::load::{Clock, DELIVERY_WAIT, Outcome, Pacer, Received, Sent, Shape, body, drive};
use super::meter::{Meter, Watched};
use super::{BenchError, setup};

/// How long a broker has to answer before it is skipped.
const REACH: Duration = Duration::from_secs(1);

/// One pair's sending half: sends a body and waits for the broker's ack.
trait Sender: Send + 'static {
    fn send(&mut self, body: String) -> impl Future<Output = Result<(), String>> + Send;
}

/// One pair's receiving half: the next body (acked), or why there is none.
trait Receiver: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Result<Bytes, String>> + Send;
}

/// Whether something answers at `addr` (host:port).
async fn reachable(addr: &str) -> bool {
    matches!(tokio::time::timeout(REACH, tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// The pid of the first process called `name`, to read its CPU and RSS.
fn pid_of(name: &str) -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == name).then_some(pid)
    })
}

fn watched(broker: &str) -> Vec<Watched> {
    vec![
        Watched { label: broker.into(), pid: pid_of(broker) },
        Watched { label: "generator".into(), pid: None },
    ]
}

/// Mosquitto (or any MQTT 3.1.1 broker) at `addr`, QoS 1. `None`: nothing answered.
pub async fn mqtt(
    addr: &str,
    tag: &str,
    pairs: usize,
    shape: Shape,
) -> Result<Option<Outcome>, BenchError> {
    if !reachable(addr).await {
        return Ok(None);
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| setup("--mqtt must be host:port"))?;
    let port: u16 = port.parse().map_err(|_| setup("--mqtt must be host:port"))?;
    let mut halves = Vec::new();
    for i in 0..pairs {
        let topic = format!("{tag}/u/{i}");
        let (rx, mut rx_events) =
            mqtt_connect(host, port, &format!("{tag}-r{i}"), shape.size).await?;
        rx.subscribe(&topic, QoS::AtLeastOnce).await.map_err(|e| setup(e.to_string()))?;
        until(&mut rx_events, |p| matches!(p, Packet::SubAck(_))).await.map_err(setup)?;
        let (client, events) = mqtt_connect(host, port, &format!("{tag}-s{i}"), shape.size).await?;
        halves.push((
            MqttSender { client, events, topic },
            MqttReceiver { _client: rx, events: rx_events },
        ));
    }
    let mut meter = Meter::new(watched("mosquitto"), None).await;
    Ok(Some(run(halves, shape, &mut meter).await))
}

async fn mqtt_connect(
    host: &str,
    port: u16,
    id: &str,
    size: usize,
) -> Result<(AsyncClient, EventLoop), BenchError> {
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(30)).set_clean_session(true);
    opts.set_max_packet_size(size + 1024, size + 1024);
    let (client, mut events) = AsyncClient::new(opts, 16);
    until(&mut events, |p| matches!(p, Packet::ConnAck(_)))
        .await
        .map_err(|e| setup(format!("MQTT connect: {e}")))?;
    Ok((client, events))
}

/// Drives `events` until a packet `want` accepts comes in.
async fn until(events: &mut EventLoop, want: impl Fn(&Packet) -> bool) -> Result<Packet, String> {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(p)) if want(&p) => return Ok(p),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

struct MqttSender {
    client: AsyncClient,
    events: EventLoop,
    topic: String,
}

impl Sender for MqttSender {
    async fn send(&mut self, body: String) -> Result<(), String> {
        let published = self.client.publish(&self.topic, QoS::AtLeastOnce, false, body);
        published.await.map_err(|e| e.to_string())?;
        until(&mut self.events, |p| matches!(p, Packet::PubAck(_))).await.map(drop)
    }
}

struct MqttReceiver {
    _client: AsyncClient,
    events: EventLoop,
}

impl Receiver for MqttReceiver {
    /// The event loop sends the PUBACK for each publish it takes in.
    async fn next(&mut self) -> Result<Bytes, String> {
        match until(&mut self.events, |p| matches!(p, Packet::Publish(_))).await? {
            Packet::Publish(p) => Ok(p.payload),
            _ => Err("not a publish".into()),
        }
    }
}

/// NATS JetStream at `addr` (host:port): a file-storage work-queue stream, explicit acks.
/// `None`: nothing answered. The stream is deleted afterwards.
pub async fn jetstream(
    addr: &str,
    tag: &str,
    pairs: usize,
    shape: Shape,
) -> Result<Option<Outcome>, BenchError> {
    if !reachable(addr).await {
        return Ok(None);
    }
    let nats = |e: String| setup(format!("NATS at {addr}: {e}"));
    let admin = jetstream::new(async_nats::connect(addr).await.map_err(|e| nats(e.to_string()))?);
    let config = stream::Config {
        name: tag.to_string(),
        subjects: vec![format!("{tag}.u.*")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    };
    admin.create_stream(config).await.map_err(|e| nats(format!("no JetStream stream: {e}")))?;
    let result = jetstream_pairs(addr, tag, pairs, shape).await;
    let _ = admin.delete_stream(tag).await;
    result.map(Some)
}

async fn jetstream_pairs(
    addr: &str,
    tag: &str,
    pairs: usize,
    shape: Shape,
) -> Result<Outcome, BenchError> {
    let nats = |e: &dyn std::fmt::Display| setup(format!("NATS at {addr}: {e}"));
    let mut halves = Vec::new();
    for i in 0..pairs {
        let subject = format!("{tag}.u.{i}");
        let rx = jetstream::new(async_nats::connect(addr).await.map_err(|e| nats(&e))?);
        let stream = rx.get_stream(tag).await.map_err(|e| nats(&e))?;
        let config = consumer::pull::Config {
            durable_name: Some(format!("r{i}")),
            filter_subject: subject.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await.map_err(|e| nats(&e))?;
        let messages = consumer.messages().await.map_err(|e| nats(&e))?;
        let js = jetstream::new(async_nats::connect(addr).await.map_err(|e| nats(&e))?);
        halves.push((JetStreamSender { js, subject }, JetStreamReceiver { messages }));
    }
    let mut meter = Meter::new(watched("nats-server"), None).await;
    Ok(run(halves, shape, &mut meter).await)
}

struct JetStreamSender {
    js: jetstream::Context,
    subject: String,
}

impl Sender for JetStreamSender {
    /// Waits for the PubAck: the stream has stored the message.
    async fn send(&mut self, body: String) -> Result<(), String> {
        let ack = self.js.publish(self.subject.clone(), Bytes::from(body)).await;
        ack.map_err(|e| e.to_string())?.await.map(drop).map_err(|e| e.to_string())
    }
}

struct JetStreamReceiver {
    messages: consumer::pull::Stream,
}

impl Receiver for JetStreamReceiver {
    async fn next(&mut self) -> Result<Bytes, String> {
        match self.messages.next().await {
            Some(Ok(m)) => {
                m.ack().await.map_err(|e| e.to_string())?;
                Ok(m.payload.clone())
            }
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the consumer's stream ended".into()),
        }
    }
}

/// Runs `pairs` through warm-up and the window (sampling `meter` over the window), then waits
/// for every acked message.
async fn run<S: Sender, R: Receiver>(
    pairs: Vec<(S, R)>,
    shape: Shape,
    meter: &mut Meter,
) -> Outcome {
    let n = pairs.len();
    drive(pairs, shape, meter, |(s, r), clock, stop, target| {
        (send_loop(s, shape, clock, n, stop), receive_loop(r, clock, target))
    })
    .await
}

async fn send_loop<S: Sender>(
    mut sender: S,
    shape: Shape,
    clock: Clock,
    workers: usize,
    mut stop: watch::Receiver<bool>,
) -> Sent {
    let mut sent = Sent::default();
    let mut pacer = Pacer::new(shape.rate, workers);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return sent,
            () = pacer.wait() => {}
        }
        if *stop.borrow() {
            return sent;
        }
        match sender.send(body(&clock, shape.size)).await {
            Ok(()) => {
                sent.acked += 1;
                sent.target = sent.acked;
            }
            Err(e) => {
                sent.errors.send += 1;
                if sent.errors.send <= 3 {
                    eprintln!("bench: broker send failed: {e}");
                }
                if sent.errors.send > 100 {
                    return sent;
                }
            }
        }
    }
}

async fn receive_loop<R: Receiver>(
    mut receiver: R,
    clock: Clock,
    mut target: watch::Receiver<Option<u64>>,
) -> Received {
    let mut got = Received::default();
    let mut deadline = None;
    // The send time of the newest message taken.
    let mut last_sent = None;
    loop {
        if target.borrow().is_some_and(|t| got.reached >= t) {
            return got;
        }
        let next = tokio::select! {
            next = receiver.next() => next,
            _ = target.changed(), if deadline.is_none() => {
                deadline = Some(Instant::now() + DELIVERY_WAIT);
                continue;
            }
            () = tokio::time::sleep_until(deadline.unwrap_or(clock.window_end)), if deadline.is_some() => return got,
        };
        match next {
            Ok(body) => {
                // Counted by messages: the sender's target is how many it had acked.
                let sent = got.arrived(&clock, &body);
                got.reached = got.count;
                // One sender per subject, one message in flight: send times only grow. One
                // that does not came twice or out of order.
                if sent.is_some_and(|s| last_sent.is_some_and(|last| s <= last)) {
                    got.errors.order += 1;
                }
                last_sent = sent.or(last_sent);
            }
            Err(e) => {
                eprintln!("bench: broker receive failed: {e}");
                got.errors.closed += 1;
                return got;
            }
        }
    }
}
