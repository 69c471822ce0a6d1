//! A node's metrics, in the Prometheus text format (OpenMetrics), on `--metrics-addr` when it is
//! given (the server's `metrics` module serves them at `GET /metrics`).
//!
//! One registry per node (never a process-wide one), so nodes embedded in one process, as the
//! tests run them, count apart. Labels take a few fixed values only (a transport, an outcome, a
//! gRPC code, a store call, a limit): never a user, a device or a conversation, so a hostile
//! client cannot grow the series, and nothing of what users say or who they are is exported.
//!
//! Counters move where the thing happens; the gauges of state (queues, the node set) are read
//! when scraped ([`Metrics::encode`] takes them).
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::Code;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    pub call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

/// How a client holds its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    WebSocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::WebSocket => "websocket",
        }
    }
}

/// The state read at each scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct Snapshot {
    /// Bytes queued toward clients on this node (all sessions' outbound queues).
    pub outbound_queue_bytes: u64,
    /// Messages waiting in relay queues to other nodes.
    pub relay_queue: u64,
    /// Notifications waiting for the push webhook.
    pub push_queue: u64,
    /// Notifications the webhook never took (queue full, or out of retries), since start.
    pub push_dropped: u64,
    /// Nodes this node sees alive (itself included).
    pub discovery_nodes: u64,
    /// Users whose send allowance is tracked.
    pub limited_users: u64,
}

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    pub streams: Family<TransportLabel, Gauge>,
    pub logins: Family<OutcomeLabel, Counter>,
    pub stored: Counter,
    pub delivered: Counter,
    pub acked: Counter,
    pub send_refusals: Family<CodeLabel, Counter>,
    pub store_seconds: Family<CallLabel, Histogram>,
    pub relay_batches: Counter,
    pub relay_failures: Counter,
    pub relay_dropped: Counter,
    pub rate_limited: Family<LimitLabel, Counter>,
    pub consul_errors: Counter,
    outbound_queue_bytes: Gauge,
    relay_queue: Gauge,
    push_queue: Gauge,
    push_dropped: Gauge,
    discovery_nodes: Gauge,
    limited_users: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("tim");
        let streams = Family::<TransportLabel, Gauge>::default();
        r.register("streams_open", "Sessions open on this node, by transport", streams.clone());
        let logins = Family::<OutcomeLabel, Counter>::default();
        r.register("logins", "Login calls answered, by outcome (ok, refused)", logins.clone());
        let stored = Counter::default();
        r.register(
            "messages_stored",
            "Messages stored and acked to their sender (not retries)",
            stored.clone(),
        );
        let delivered = Counter::default();
        r.register(
            "messages_delivered",
            "Messages written toward a client's stream",
            delivered.clone(),
        );
        let acked = Counter::default();
        r.register(
            "messages_acked",
            "Messages devices acked (the stored cursors' advance)",
            acked.clone(),
        );
        let send_refusals = Family::<CodeLabel, Counter>::default();
        r.register("send_refusals", "Sends refused, by gRPC code", send_refusals.clone());
        // 100 µs to about 3.3 s.
        let store_seconds = Family::<CallLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        r.register(
            "store_call_seconds",
            "Inbox store calls' latency, by call",
            store_seconds.clone(),
        );
        let relay_batches = Counter::default();
        r.register("relay_batches", "Relay batches sent to other nodes", relay_batches.clone());
        let relay_failures = Counter::default();
        r.register(
            "relay_failures",
            "Relay batches that failed (the inbox still has them)",
            relay_failures.clone(),
        );
        let relay_dropped = Counter::default();
        r.register(
            "relay_dropped",
            "Relays not queued (no such peer, or its queue full)",
            relay_dropped.clone(),
        );
        let rate_limited = Family::<LimitLabel, Counter>::default();
        r.register(
            "rate_limit_refusals",
            "Calls refused or dropped by a rate limit, by limit",
            rate_limited.clone(),
        );
        let consul_errors = Counter::default();
        r.register(
            "consul_errors",
            "Consul calls that failed (watch, register, TTL pass)",
            consul_errors.clone(),
        );
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        Metrics {
            outbound_queue_bytes: gauge(
                &mut r,
                "outbound_queue_bytes",
                "Bytes queued toward clients",
            ),
            relay_queue: gauge(&mut r, "relay_queue", "Messages queued for other nodes"),
            push_queue: gauge(&mut r, "push_queue", "Notifications queued for the push webhook"),
            push_dropped: gauge(&mut r, "push_dropped", "Push notifications dropped since start"),
            discovery_nodes: gauge(
                &mut r,
                "discovery_nodes",
                "Nodes seen alive, this one included",
            ),
            limited_users: gauge(
                &mut r,
                "rate_limited_users",
                "Users whose send allowance is tracked",
            ),
            registry: r,
            streams,
            logins,
            stored,
            delivered,
            acked,
            send_refusals,
            store_seconds,
            relay_batches,
            relay_failures,
            relay_dropped,
            rate_limited,
            consul_errors,
        }
    }

    /// One more open session of `transport`, until the guard drops.
    pub fn stream_opened(&self, transport: Transport) -> StreamGuard {
        let gauge = self.streams.get_or_create(&TransportLabel { transport: transport.as_str() });
        gauge.inc();
        StreamGuard(gauge.clone())
    }

    /// A send was refused with `code` (the message is not acked).
    pub fn refused(&self, code: Code) {
        self.send_refusals.get_or_create(&CodeLabel { code: code_name(code) }).inc();
    }

    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&LimitLabel { limit }).inc();
    }

    /// The latency histogram of store call `call`, to observe into.
    pub fn store_histogram(&self, call: &'static str) -> Histogram {
        self.store_seconds.get_or_create(&CallLabel { call }).clone()
    }

    /// The text exposition, with the state gauges set from `now`.
    pub fn encode(&self, now: Snapshot) -> String {
        let set = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&self.outbound_queue_bytes, now.outbound_queue_bytes);
        set(&self.relay_queue, now.relay_queue);
        set(&self.push_queue, now.push_queue);
        set(&self.push_dropped, now.push_dropped);
        set(&self.discovery_nodes, now.discovery_nodes);
        set(&self.limited_users, now.limited_users);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Holds one open session in [`Metrics::streams`].
pub struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The canonical name of a gRPC code, as google.rpc.Code spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_show_in_the_exposition() {
        let m = Metrics::new();
        let guard = m.stream_opened(Transport::WebSocket);
        m.stored.inc();
        m.refused(Code::ResourceExhausted);
        m.store_histogram("append").observe(0.001);
        let text = m.encode(Snapshot { discovery_nodes: 3, ..Default::default() });
        assert!(text.contains("tim_streams_open{transport=\"websocket\"} 1"), "{text}");
        assert!(text.contains("tim_messages_stored_total 1"), "{text}");
        assert!(text.contains("tim_send_refusals_total{code=\"RESOURCE_EXHAUSTED\"} 1"), "{text}");
        assert!(text.contains("tim_store_call_seconds_count{call=\"append\"} 1"), "{text}");
        assert!(text.contains("tim_discovery_nodes 3"), "{text}");
        drop(guard);
        let text = m.encode(Snapshot::default());
        assert!(text.contains("tim_streams_open{transport=\"websocket\"} 0"), "{text}");
    }
}
