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

/// A conversation, as its id names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversation {
    /// The direct conversation of two users (the same one twice: a user's notes to themself),
    /// the smaller id first.
    Direct(String, String),
    /// A group, by the id its creation drew (`g:<id>`).
    Group(String),
}

impl Conversation {
    /// The direct conversation of `a` and `b` (either order).
    pub fn direct(a: &str, b: &str) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        Conversation::Direct(lo.to_string(), hi.to_string())
    }

    /// Parses an id that [`Conversation::id`] gave.
    pub fn parse(id: &str) -> Result<Self, IdError> {
        let bad = || IdError(format!("{id:?} is not a conversation id"));
        if let Some(group) = id.strip_prefix("g:") {
            check("group id", group, MAX_USER_ID).map_err(|_| bad())?;
            return Ok(Conversation::Group(group.to_string()));
        }
        let rest = id.strip_prefix("d:").ok_or_else(bad)?;
        let (len, pair) = rest.split_once(':').ok_or_else(bad)?;
        let len: usize = len.parse().map_err(|_| bad())?;
        if !pair.is_char_boundary(len) || pair.as_bytes().get(len) != Some(&b':') {
            return Err(bad());
        }
        let (lo, hi) = (&pair[..len], &pair[len + 1..]);
        user(lo)?;
        user(hi)?;
        if lo > hi {
            return Err(bad());
        }
        Ok(Conversation::Direct(lo.to_string(), hi.to_string()))
    }

    /// The id: `d:<length of the smaller user id>:<smaller>:<larger>` for a direct one (user ids
    /// may hold ':', the length keeps it unambiguous), `g:<id>` for a group.
    pub fn id(&self) -> String {
        match self {
            Conversation::Direct(lo, hi) => format!("d:{}:{lo}:{hi}", lo.len()),
            Conversation::Group(id) => format!("g:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Conversation;

    #[test]
    fn conversation_ids_are_stable_and_unambiguous() {
        let c = Conversation::direct("bob", "alice");
        assert_eq!(c, Conversation::direct("alice", "bob"));
        assert_eq!(c.id(), "d:5:alice:bob");
        assert_eq!(Conversation::parse(&c.id()).unwrap(), c);
        // ':' inside ids: the length says where the first ends.
        let odd = Conversation::direct("a:b", "a:c");
        assert_eq!(Conversation::parse(&odd.id()).unwrap(), odd);
        assert_eq!(Conversation::parse("g:7f").unwrap(), Conversation::Group("7f".into()));
        for bad in [
            "",
            "d:",
            "d:9:alice:bob",
            "d:5:bob:alice",
            "x:5:alice:bob",
            "d:5:alice-bob",
            "g:",
            "g:{x}",
        ] {
            assert!(Conversation::parse(bad).is_err(), "{bad}");
        }
    }

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
