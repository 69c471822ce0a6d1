//! The values tim keeps in Redis, written and read in one place: route values, dedup values,
//! inbox stream entries, and the errors a reply that does not parse becomes.
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use redis::Value;
use redis::streams::StreamId;

use crate::auth::unix_ms;
use crate::ids::Conversation;
use crate::store::groups::{EventKind, GroupEvent};
use crate::store::{Route, StoreError, StoredMessage};

pub(super) fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

pub(super) fn bad(what: &str) -> StoreError {
    StoreError::Internal(format!("unexpected reply from Redis: {what}"))
}

/// A dedup or log value: `seq|msg_id|sent_at`, then `|conv_seq` in a recipient's dedup value
/// (0 when written before conversations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    pub(super) seq: u64,
    pub(super) msg_id: String,
    pub(super) sent_at: i64,
    pub(super) conv_seq: u64,
}

pub(super) fn parse_stored(s: &str) -> Result<Stored, StoreError> {
    let mut it = s.splitn(4, '|');
    let (Some(seq), Some(id), Some(at)) = (it.next(), it.next(), it.next()) else {
        return Err(bad("dedup value"));
    };
    Ok(Stored {
        seq: seq.parse().map_err(|_| bad("seq"))?,
        msg_id: id.to_string(),
        sent_at: at.parse().map_err(|_| bad("sent_at"))?,
        conv_seq: it.next().map_or(Ok(0), |c| c.parse().map_err(|_| bad("conv_seq")))?,
    })
}

/// `node_id|session_id|started_at_ms|lapses_at_ms` for a route that lives `ttl` from now.
pub(super) fn route_value(route: &Route, ttl: Duration) -> String {
    let lapses = now_ms() + ttl.as_millis() as i64;
    format!("{}|{}|{}|{lapses}", route.node_id, route.session_id, route.started_at)
}

/// Parses `node_id|session_id|started_at_ms|lapses_at_ms`.
pub(super) fn parse_route(s: &str) -> Option<(Route, i64)> {
    let mut it = s.rsplitn(4, '|');
    let lapses = it.next()?.parse().ok()?;
    let started_at = it.next()?.parse().ok()?;
    let session_id = it.next()?.to_string();
    let node_id = it.next()?.to_string();
    Some((Route { node_id, session_id, started_at }, lapses))
}

pub(super) fn live_routes(flat: Vec<String>, now: i64) -> Vec<(String, Route)> {
    let mut out = Vec::new();
    let mut it = flat.into_iter();
    while let (Some(device), Some(value)) = (it.next(), it.next()) {
        if let Some((route, lapses)) = parse_route(&value)
            && lapses > now
        {
            out.push((device, route));
        }
    }
    out
}

pub(super) fn field(map: &HashMap<String, Value>, name: &str) -> Result<String, StoreError> {
    match map.get(name) {
        Some(v) => redis::from_redis_value_ref::<String>(v).map_err(|_| bad(name)),
        None => Err(bad(name)),
    }
}

/// One inbox stream entry as a message. Entries stored before conversations have no `conv`
/// and `cseq`: theirs is the direct conversation, at seq 0 (not known).
pub(super) fn stored_message(e: StreamId) -> Result<StoredMessage, StoreError> {
    let seq = e.id.split('-').next().and_then(|s| s.parse().ok()).ok_or(bad("id"))?;
    let mut m = entry(&e)?;
    m.seq = seq;
    m.conversation = match field(&e.map, "conv") {
        Ok(conv) => conv,
        // Stored before conversations: always a direct message.
        Err(_) => Conversation::direct(&m.from, &m.to).id(),
    };
    m.conv_seq = field(&e.map, "cseq").ok().and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok(m)
}

/// One conversation log entry (id `0-<conv_seq>`) as a message of `conversation`'s history.
pub(super) fn logged_message(e: StreamId, conversation: &str) -> Result<StoredMessage, StoreError> {
    let conv_seq = e.id.strip_prefix("0-").and_then(|s| s.parse().ok()).ok_or(bad("log id"))?;
    let mut m = entry(&e)?;
    m.conversation = conversation.to_string();
    m.conv_seq = conv_seq;
    Ok(m)
}

/// The fields an inbox entry and a log entry share.
fn entry(e: &StreamId) -> Result<StoredMessage, StoreError> {
    let event = match field(&e.map, "ev") {
        Ok(kind) => Some(GroupEvent {
            kind: kind.parse().ok().and_then(EventKind::from_number).ok_or(bad("event kind"))?,
            users: field(&e.map, "evusers")?
                .split(' ')
                .filter(|u| !u.is_empty())
                .map(String::from)
                .collect(),
            name: field(&e.map, "evname").unwrap_or_default(),
        }),
        Err(_) => None,
    };
    Ok(StoredMessage {
        event,
        msg_id: field(&e.map, "msg_id")?,
        from: field(&e.map, "from")?,
        to: field(&e.map, "to")?,
        body: field(&e.map, "body")?,
        sent_at: field(&e.map, "sent_at")?.parse().map_err(|_| bad("sent_at"))?,
        client_msg_id: field(&e.map, "client_msg_id").unwrap_or_default(),
        ..StoredMessage::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes_and_dedup_values() {
        let (r, lapses) = parse_route("10.0.0.1:50051|abc|1600|1700").unwrap();
        assert_eq!(
            (r.node_id.as_str(), r.session_id.as_str(), r.started_at, lapses),
            ("10.0.0.1:50051", "abc", 1600, 1700)
        );
        // Node ids may hold '|' or ':'; the fixed fields are taken from the right.
        let (r, _) = parse_route("a|b:1|s|1|2").unwrap();
        assert_eq!((r.node_id.as_str(), r.session_id.as_str()), ("a|b:1", "s"));
        assert!(parse_route("nope").is_none());
        let flat = vec!["phone".into(), "n|s|1|100".into(), "tab".into(), "n|t|1|300".into()];
        let live = live_routes(flat, 200);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].0, "tab");
        let old = Stored { seq: 7, msg_id: "id".into(), sent_at: 123, conv_seq: 0 };
        assert_eq!(parse_stored("7|id|123").unwrap(), old);
        assert_eq!(parse_stored("7|id|123|9").unwrap(), Stored { conv_seq: 9, ..old });
        assert!(parse_stored("7|id").is_err());
    }
}
