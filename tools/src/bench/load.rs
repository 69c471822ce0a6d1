//! The 1:1 traffic engine. Each pair is a sender session and a receiver session, each on its own
//! connection. Senders send paced (a share of `--rate`) or closed-loop (the next send after the
//! SendAck); the send time rides in the body, so the receiver measures end-to-end latency on the
//! same clock. Receivers check that seqs arrive contiguous and in order, and ack.
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::watch;
use tokio::time::Instant;

use super::meter::{Meter, Usage};
use super::stats::{Errors, Latencies};
use tim::client::{ClientError, Event, Session};

/// A body starts with the send time: 16 hex digits of nanoseconds since the run's origin.
pub const MIN_BODY: usize = 16;
/// After the window, how long receivers may take to get every acked message.
pub const DELIVERY_WAIT: Duration = Duration::from_secs(5);

/// The load's shape, shared by the scenario and its baselines.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub size: usize,
    /// Total messages per second over all senders; 0 = closed loop.
    pub rate: u64,
    pub warmup: Duration,
    pub window: Duration,
    pub ack_interval: Duration,
}

/// The run's clock: send times are nanoseconds since `origin`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub origin: Instant,
    pub window_start: Instant,
    pub window_end: Instant,
}

/// Waits out the warm-up, meters the window, then tells the workers to stop.
pub async fn measure_window(clock: &Clock, meter: &mut Meter, stop: &watch::Sender<bool>) -> Usage {
    tokio::time::sleep_until(clock.window_start).await;
    meter.start().await;
    tokio::time::sleep_until(clock.window_end).await;
    let usage = meter.stop().await;
    let _ = stop.send(true);
    usage
}

/// Sums what workers counted (done, latencies, errors) into the run's outcome.
pub async fn collect(
    tasks: Vec<tokio::task::JoinHandle<(u64, Latencies, Errors)>>,
    window: Duration,
    usage: Usage,
) -> Outcome {
    let mut out = Outcome { window, usage, ..Outcome::default() };
    for t in tasks {
        if let Ok((done, lat, errors)) = t.await {
            out.delivered += done;
            out.latency.merge(lat);
            out.errors.add(&errors);
        }
    }
    out
}

impl Clock {
    pub fn new(shape: &Shape) -> Clock {
        let origin = Instant::now();
        let window_start = origin + shape.warmup;
        Clock { origin, window_start, window_end: window_start + shape.window }
    }

    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && t < self.window_end
    }
}

/// A body of `size` bytes carrying the send time.
pub fn body(clock: &Clock, size: usize) -> String {
    let mut b = format!("{:016x}", clock.origin.elapsed().as_nanos() as u64);
    b.extend(std::iter::repeat_n('x', size.saturating_sub(MIN_BODY)));
    b
}

/// The send time carried by a body, as time since the origin.
fn sent_at(body: &str) -> Option<Duration> {
    let nanos = u64::from_str_radix(body.get(..MIN_BODY)?, 16).ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Spaces one worker's actions `period` apart, from a random offset; a worker that falls more
/// than a period behind drops the missed slots (it is then closed-loop).
pub struct Pacer {
    period: Option<Duration>,
    next: Instant,
}

impl Pacer {
    /// `rate` per second shared by `workers`; 0 = no pacing.
    pub fn new(rate: u64, workers: usize) -> Pacer {
        let period = (rate > 0).then(|| Duration::from_secs_f64(workers as f64 / rate as f64));
        let offset = period.map_or(Duration::ZERO, |p| p.mul_f64(rand::random::<f64>()));
        Pacer { period, next: Instant::now() + offset }
    }

    pub async fn wait(&mut self) {
        let Some(period) = self.period else { return };
        tokio::time::sleep_until(self.next).await;
        let now = Instant::now();
        self.next += period;
        if self.next + period < now {
            self.next = now;
        }
    }
}

/// What one traffic run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Messages received inside the window.
    pub delivered: u64,
    /// End-to-end latency of the messages received inside the window.
    pub latency: Latencies,
    pub errors: Errors,
    /// Messages acked to senders over the whole run, and how many of them arrived.
    pub acked: u64,
    pub received: u64,
    pub window: Duration,
    pub usage: Usage,
}

impl Outcome {
    pub fn msgs_per_s(&self) -> f64 {
        self.delivered as f64 / self.window.as_secs_f64()
    }
}

/// What one pair's sender did: messages acked, and how far its receiver must get to have them
/// all, measured as [`Received::reached`] is (tim: the last seq acked; a broker: how many).
#[derive(Default)]
pub struct Sent {
    pub acked: u64,
    pub target: u64,
    pub errors: Errors,
}

/// What one pair's receiver got: inside the window (`delivered`, `latency`), in all (`count`),
/// and how far, measured as its sender's [`Sent::target`] is.
#[derive(Default)]
pub struct Received {
    pub delivered: u64,
    pub count: u64,
    pub reached: u64,
    pub latency: Latencies,
    pub errors: Errors,
}

impl Received {
    /// A message with `body` arrived: counts it, and inside the window its latency. Returns its
    /// send time; a body without one is an order error.
    pub fn arrived(&mut self, clock: &Clock, body: &[u8]) -> Option<Duration> {
        let now = Instant::now();
        self.count += 1;
        let Some(sent) = std::str::from_utf8(body).ok().and_then(sent_at) else {
            self.errors.order += 1;
            return None;
        };
        if clock.in_window(now) {
            self.delivered += 1;
            self.latency.record(now.duration_since(clock.origin).saturating_sub(sent));
        }
        Some(sent)
    }
}

/// Runs the traffic: `pairs` of (sender, receiver, receiver's user id) through warm-up and the
/// window (sampling `meter` over the window), then waits for every acked message.
pub async fn run(
    pairs: Vec<(Session, Session, String)>,
    shape: Shape,
    meter: &mut Meter,
) -> Outcome {
    let n = pairs.len();
    drive(pairs, shape, meter, |(s, r, to), clock, stop, target| {
        let receive = receive_loop(r, clock, shape.ack_interval, target);
        (send_loop(s, to, shape, clock, n, stop), receive)
    })
    .await
}

/// The engine of every 1:1 load, tim's and the broker peers': `start` makes each pair's sender
/// (told when to stop) and receiver (told, once its sender stopped, what to reach); both run
/// through warm-up and the window (sampling `meter` over the window); then each receiver gets
/// until what its sender had acked arrives, and what they counted is summed.
pub async fn drive<P, S, R>(
    pairs: Vec<P>,
    shape: Shape,
    meter: &mut Meter,
    start: impl Fn(P, Clock, watch::Receiver<bool>, watch::Receiver<Option<u64>>) -> (S, R),
) -> Outcome
where
    S: Future<Output = Sent> + Send + 'static,
    R: Future<Output = Received> + Send + 'static,
{
    let clock = Clock::new(&shape);
    let (stop_tx, stop) = watch::channel(false);
    let (mut senders, mut receivers, mut targets) = (Vec::new(), Vec::new(), Vec::new());
    for pair in pairs {
        let (target_tx, target) = watch::channel(None);
        targets.push(target_tx);
        let (send, receive) = start(pair, clock, stop.clone(), target);
        senders.push(tokio::spawn(send));
        receivers.push(tokio::spawn(receive));
    }
    let usage = measure_window(&clock, meter, &stop_tx).await;

    let mut out = Outcome { window: shape.window, usage, ..Outcome::default() };
    for (task, target) in senders.into_iter().zip(&targets) {
        let sent = task.await.unwrap_or_default();
        out.acked += sent.acked;
        out.errors.add(&sent.errors);
        let _ = target.send(Some(sent.target));
    }
    for (task, target) in receivers.into_iter().zip(&targets) {
        let got = task.await.unwrap_or_default();
        let expected = target.borrow().unwrap_or(0);
        out.errors.undelivered += expected.saturating_sub(got.reached);
        out.delivered += got.delivered;
        out.received += got.count;
        out.latency.merge(got.latency);
        out.errors.add(&got.errors);
    }
    out
}

async fn send_loop(
    mut session: Session,
    to: String,
    shape: Shape,
    clock: Clock,
    workers: usize,
    mut stop: watch::Receiver<bool>,
) -> Sent {
    let sender = session.sender();
    let mut sent = Sent::default();
    let mut pacer = Pacer::new(shape.rate, workers);
    let sends = async {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = pacer.wait() => {}
            }
            if *stop.borrow() {
                return;
            }
            match sender.send(&to, &body(&clock, shape.size)).await {
                Ok(ack) => {
                    sent.acked += 1;
                    sent.target = sent.target.max(ack.seq);
                }
                Err(ClientError::Closed) => return,
                Err(e) => {
                    sent.errors.send += 1;
                    if sent.errors.send <= 3 {
                        eprintln!("bench: send failed: {e}");
                    }
                }
            }
        }
    };
    // SendAcks arrive on the stream's reader; anything else ending the stream is an error.
    let closed = async {
        loop {
            match session.next_event().await {
                Some(Event::Message(_)) => {}
                _ => return,
            }
        }
    };
    tokio::select! {
        () = sends => {}
        () = closed => sent.errors.closed += 1,
    }
    sent
}

async fn receive_loop(
    mut session: Session,
    clock: Clock,
    ack_interval: Duration,
    mut target: watch::Receiver<Option<u64>>,
) -> Received {
    let sender = session.sender();
    let mut got = Received::default();
    let mut deadline: Option<Instant> = None;
    let mut acked_at = Instant::now();
    let mut acked = 0;
    loop {
        if target.borrow().is_some_and(|t| got.reached >= t) {
            break;
        }
        let event = tokio::select! {
            e = session.next_event() => e,
            _ = target.changed(), if deadline.is_none() => {
                deadline = Some(Instant::now() + DELIVERY_WAIT);
                continue;
            }
            () = tokio::time::sleep_until(deadline.unwrap_or(clock.window_end)), if deadline.is_some() => break,
        };
        let mut event = event;
        // Take everything already queued, then ack once for the lot.
        loop {
            match event {
                Some(Event::Message(m)) => on_message(&mut got, &clock, m),
                Some(Event::Closed(_)) | None => {
                    got.errors.closed += 1;
                    return got;
                }
                Some(_) => got.errors.closed += 1,
            }
            match session.next_event().now_or_never() {
                Some(e) => event = e,
                None => break,
            }
        }
        if got.reached > acked && acked_at.elapsed() >= ack_interval {
            if sender.ack(got.reached).await.is_err() {
                got.errors.closed += 1;
                return got;
            }
            acked = got.reached;
            acked_at = Instant::now();
        }
    }
    if got.reached > acked {
        let _ = sender.ack(got.reached).await;
    }
    got
}

/// A pushed message, counted by [`Received::arrived`]; seqs must come contiguous and in order
/// (`reached` is the last one).
fn on_message(got: &mut Received, clock: &Clock, m: tim::proto::Message) {
    if m.seq != got.reached + 1 {
        got.errors.order += 1;
    }
    got.reached = got.reached.max(m.seq);
    got.arrived(clock, m.body.as_bytes());
}
