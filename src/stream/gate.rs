//! Which `Send` frames of a stream may go on to the node: the order hold. After a retryable
//! refusal (store unavailable, rate exceeded) every later message on the stream is refused with
//! the same code until the refused one is sent again, so a pipelining sender's messages keep
//! their order in the recipient's inbox. (The rate itself is the user's, counted by the node.)
use tonic::{Code, Status};

/// The gate of one stream.
#[derive(Debug, Default)]
pub struct SendGate {
    /// The first message refused with a retryable code, which later ones wait for.
    held: Option<(String, Code)>,
}

impl SendGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `client_msg_id` may go on now; the refusal to send back if not.
    pub fn admit(&mut self, client_msg_id: &str) -> Result<(), Status> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retryable_failure_holds_later_messages_until_it_is_stored() {
        let mut gate = SendGate::new();
        assert!(gate.admit("a").is_ok());
        gate.settle("a", Some(Code::Unavailable));
        let held = gate.admit("b").unwrap_err();
        assert_eq!(held.code(), Code::Unavailable);
        assert!(held.message().contains("\"a\""), "{}", held.message());
        gate.settle("b", Some(held.code()));
        assert!(gate.admit("a").is_ok(), "the held message itself may go");
        gate.settle("a", None);
        assert!(gate.admit("b").is_ok(), "stored: the hold is lifted");
    }

    #[test]
    fn a_refusal_for_rate_holds_too() {
        let mut gate = SendGate::new();
        gate.settle("a", Some(Code::ResourceExhausted));
        assert_eq!(gate.admit("b").unwrap_err().code(), Code::ResourceExhausted);
    }

    #[test]
    fn a_final_refusal_holds_nothing() {
        let mut gate = SendGate::new();
        gate.settle("a", Some(Code::InvalidArgument));
        assert!(gate.admit("b").is_ok());
    }
}
