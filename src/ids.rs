//! Rules for user and device ids, checked in one place.
//!
//! Ids appear inside store keys (`im:inbox:{uid}`), so braces, which delimit Redis Cluster hash
//! tags, whitespace and control characters are refused.
/// An id that breaks the rules; the text says which rule. Requests carrying one get
/// INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(String);

/// Longest user id, in bytes.
pub const MAX_USER_ID: usize = 128;
/// Longest device id, in bytes.
pub const MAX_DEVICE_ID: usize = 64;
/// Longest client_msg_id, in bytes.
pub const MAX_CLIENT_MSG_ID: usize = 128;

/// A random 128-bit id in hex (message, session and epoch ids).
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn check(what: &str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError(format!("{what} is empty")));
    }
    if value.len() > max {
        return Err(IdError(format!("{what} is longer than {max} bytes")));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}') {
        return Err(IdError(format!(
            "{what} may not contain whitespace, control characters or braces"
        )));
    }
    Ok(())
}

/// A user id: 1 to 128 bytes, no whitespace, control characters or braces.
pub fn user(id: &str) -> Result<(), IdError> {
    check("user id", id, MAX_USER_ID)
}

/// A device id: 1 to 64 bytes, same characters as a user id.
pub fn device(id: &str) -> Result<(), IdError> {
    check("device", id, MAX_DEVICE_ID)
}

/// A sender's idempotency key: 1 to 128 bytes.
pub fn client_msg_id(id: &str) -> Result<(), IdError> {
    check("client_msg_id", id, MAX_CLIENT_MSG_ID)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids() {
        assert!(super::user("alice@example.com").is_ok());
        assert!(super::user("").is_err());
        assert!(super::user("a b").is_err());
        assert!(super::user("{x}").is_err());
        assert!(super::user(&"x".repeat(129)).is_err());
        assert!(super::device("phone-1").is_ok());
    }
}
