//! Which `Send` frames of a stream may go to the store: the stream's rate allowance, and the
//! order hold. After a retryable refusal (store unavailable, rate exceeded) every later message
//! on the stream is refused with the same code until the refused one is sent again, so a
//! pipelining sender's messages keep their order in the recipient's inbox.
use std::time::Instant;

use tonic::{Code, Status};

/// The gate of one stream.
#[derive(Debug)]
pub struct SendGate {
    /// The first message refused with a retryable code, which later ones wait for.
    held: Option<(String, Code)>,
    bucket: TokenBucket,
    rate: u32,
}

impl SendGate {
    /// `rate` sends per second, `burst` at once; rate 0 = unlimited.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self { held: None, bucket: TokenBucket::new(rate, burst), rate }
    }

    /// Whether `client_msg_id` may be stored now; the refusal to send back if not.
    pub fn admit(&mut self, client_msg_id: &str, now: Instant) -> Result<(), Status> {
        if let Some((first, code)) = &self.held
            && first != client_msg_id
        {
            return Err(Status::new(
                *code,
                format!(
                    "message {first:?} was not stored; send it again first (messages keep their order)"
                ),
            ));
        }
        if !self.bucket.take(now) {
            return Err(Status::resource_exhausted(format!(
                "send rate limit ({} messages/s); retry with the same client_msg_id",
                self.rate
            )));
        }
        Ok(())
    }

    /// How the send of `client_msg_id` ended (`None`: stored). A stored message lifts the hold;
    /// the first retryable failure sets it.
    pub fn settle(&mut self, client_msg_id: &str, failure: Option<Code>) {
        match failure {
            None => self.held = None,
            Some(code @ (Code::Unavailable | Code::ResourceExhausted)) if self.held.is_none() => {
                self.held = Some((client_msg_id.to_string(), code));
            }
            Some(_) => {}
        }
    }
}

/// `rate` tokens per second, up to `burst`; rate 0 = unlimited.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: f64::from(rate), burst, tokens: burst, at: None }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let since = self.at.map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.tokens = (self.tokens + since * self.rate).min(self.burst);
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut gate = SendGate::new(10, 3);
        for i in 0..3 {
            assert!(gate.admit(&format!("m{i}"), t0).is_ok());
            gate.settle(&format!("m{i}"), None);
        }
        let refused = gate.admit("m3", t0).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("10 messages/s"), "{}", refused.message());
        gate.settle("m3", Some(refused.code()));
        // A tenth of a second later one token is back; the refused message goes first.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(gate.admit("m4", later).unwrap_err().code(), Code::ResourceExhausted);
        assert!(gate.admit("m3", later).is_ok());
    }

    #[test]
    fn a_retryable_failure_holds_later_messages_until_it_is_stored() {
        let t0 = Instant::now();
        let mut gate = SendGate::new(0, 0);
        assert!(gate.admit("a", t0).is_ok());
        gate.settle("a", Some(Code::Unavailable));
        let held = gate.admit("b", t0).unwrap_err();
        assert_eq!(held.code(), Code::Unavailable);
        assert!(held.message().contains("\"a\""), "{}", held.message());
        gate.settle("b", Some(held.code()));
        assert!(gate.admit("a", t0).is_ok(), "the held message itself may go");
        gate.settle("a", None);
        assert!(gate.admit("b", t0).is_ok(), "stored: the hold is lifted");
    }

    #[test]
    fn a_final_refusal_holds_nothing() {
        let t0 = Instant::now();
        let mut gate = SendGate::new(0, 0);
        gate.settle("a", Some(Code::InvalidArgument));
        assert!(gate.admit("b", t0).is_ok());
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let t0 = Instant::now();
        let mut gate = SendGate::new(0, 1);
        for i in 0..10_000 {
            assert!(gate.admit(&i.to_string(), t0).is_ok());
        }
    }
}
