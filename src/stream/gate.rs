//! Which `Send` frames of a stream may go on to the node: the order hold. After a retryable
//! refusal (store unavailable, rate exceeded) every later message on the stream is refused with
//! the same code until the refused one is sent again, so a pipelining sender's messages keep
//! their order in the recipient's inbox. (The rate itself is the user's, counted by the node.)
use tonic::{Code, Status};

/// The gate of one stream.
#[derive(Debug, Default)]
pub struct SendGate {
    /// The first message refused with a retryable code, which later ones wait for, and the
    /// refusal's retry hint (ms), passed on to the ones held behind it.
    held: Option<(String, Code, u32)>,
}

impl SendGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `client_msg_id` may go on now; the refusal to send back if not.
    pub fn admit(&mut self, client_msg_id: &str) -> Result<(), Status> {
        if let Some((first, code, retry_after_ms)) = &self.held
            && first != client_msg_id
        {
            let mut held = Status::new(
                *code,
                format!(
                    "message {first:?} was not stored; send it again first (messages keep their order)"
                ),
            );
            if *retry_after_ms > 0
                && let Ok(v) = retry_after_ms.to_string().parse()
            {
                held.metadata_mut().insert(crate::error::RETRY_AFTER_MS, v);
            }
            return Err(held);
        }
        Ok(())
    }

    /// How the send of `client_msg_id` ended (`None`: stored). A stored message lifts the hold;
    /// the first retryable failure sets it, keeping its retry hint for the ones held behind.
    pub fn settle(&mut self, client_msg_id: &str, failure: Option<&Status>) {
        match failure.map(|s| (s.code(), s)) {
            None => self.held = None,
            Some((code @ (Code::Unavailable | Code::ResourceExhausted), status))
                if self.held.is_none() =>
            {
                let hint = crate::wire::retry_after_ms(status.metadata());
                self.held = Some((client_msg_id.to_string(), code, hint));
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retryable_failure_holds_later_messages_until_it_is_stored() {
        let mut gate = SendGate::new();
        assert!(gate.admit("a").is_ok());
        gate.settle("a", Some(&Status::unavailable("down")));
        let held = gate.admit("b").unwrap_err();
        assert_eq!(held.code(), Code::Unavailable);
        assert!(held.message().contains("\"a\""), "{}", held.message());
        gate.settle("b", Some(&held));
        assert!(gate.admit("a").is_ok(), "the held message itself may go");
        gate.settle("a", None);
        assert!(gate.admit("b").is_ok(), "stored: the hold is lifted");
    }

    #[test]
    fn a_refusal_for_rate_holds_too_and_passes_its_hint_on() {
        let mut gate = SendGate::new();
        let mut refused = Status::resource_exhausted("rate");
        refused.metadata_mut().insert(crate::error::RETRY_AFTER_MS, "250".parse().unwrap());
        gate.settle("a", Some(&refused));
        let held = gate.admit("b").unwrap_err();
        assert_eq!(held.code(), Code::ResourceExhausted);
        assert_eq!(crate::wire::retry_after_ms(held.metadata()), 250);
    }

    #[test]
    fn a_final_refusal_holds_nothing() {
        let mut gate = SendGate::new();
        gate.settle("a", Some(&Status::invalid_argument("bad")));
        assert!(gate.admit("b").is_ok());
    }
}
