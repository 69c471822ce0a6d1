//! Counters and latency percentiles.
use std::fmt;
use std::time::Duration;

/// Latency samples in microseconds; sorted once, when read.
#[derive(Debug, Default, Clone)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u128::from(u32::MAX)) as u32);
    }

    pub fn merge(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// p50, p90, p99 and max, in milliseconds (zeros when empty).
    pub fn percentiles(&mut self) -> Percentiles {
        self.0.sort_unstable();
        let at = |q: f64| -> f64 {
            if self.0.is_empty() {
                return 0.0;
            }
            // Nearest rank: the smallest sample with at least q of the samples at or below it.
            let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
            f64::from(self.0[rank - 1]) / 1000.0
        };
        Percentiles { p50: at(0.50), p90: at(0.90), p99: at(0.99), max: at(1.0) }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms",
            self.p50, self.p90, self.p99, self.max
        )
    }
}

/// What went wrong, by kind. Every kind counts as an error.
#[derive(Debug, Default, Clone, Copy)]
pub struct Errors {
    /// Sends that got SendError or failed (not stored).
    pub send: u64,
    /// Streams that ended while the benchmark still used them.
    pub closed: u64,
    /// Messages received out of seq order, duplicated, or with an unreadable body.
    pub order: u64,
    /// Messages acked to their sender but never received (within the wait after the window).
    pub undelivered: u64,
    /// Logins or connects that failed.
    pub connect: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.send + self.closed + self.order + self.undelivered + self.connect
    }

    pub fn add(&mut self, o: &Errors) {
        self.send += o.send;
        self.closed += o.closed;
        self.order += o.order;
        self.undelivered += o.undelivered;
        self.connect += o.connect;
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "errors {}", self.total())?;
        if self.total() > 0 {
            write!(
                f,
                " (send {}, stream closed {}, order {}, undelivered {}, connect {})",
                self.send, self.closed, self.order, self.undelivered, self.connect
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for us in 1..=100u64 {
            l.record(Duration::from_micros(us * 1000));
        }
        let p = l.percentiles();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Latencies::default().percentiles().p99, 0.0);
    }
}
