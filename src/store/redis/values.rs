//! The values tim keeps in Redis, written and read in one place: route values, dedup values,
//! inbox stream entries, and the errors a reply that does not parse becomes.
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use redis::Value;
use redis::streams::StreamId;

use crate::auth::unix_ms;
use crate::store::{Route, StoreError, StoredMessage};

pub(super) fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

pub(super) fn bad(what: &str) -> StoreError {
    StoreError::Internal(format!("unexpected reply from Redis: {what}"))
}

/// Parses `seq|msg_id|sent_at`.
pub(super) fn parse_stored(s: &str) -> Result<(u64, String, i64), StoreError> {
    let mut it = s.splitn(3, '|');
    let (Some(seq), Some(id), Some(at)) = (it.next(), it.next(), it.next()) else {
        return Err(bad("dedup value"));
    };
    Ok((
        seq.parse().map_err(|_| bad("seq"))?,
        id.to_string(),
        at.parse().map_err(|_| bad("sent_at"))?,
    ))
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

/// One inbox stream entry as a message.
pub(super) fn stored_message(e: StreamId) -> Result<StoredMessage, StoreError> {
    let seq = e.id.split('-').next().and_then(|s| s.parse().ok()).ok_or(bad("id"))?;
    Ok(StoredMessage {
        seq,
        msg_id: field(&e.map, "msg_id")?,
        from: field(&e.map, "from")?,
        to: field(&e.map, "to")?,
        body: field(&e.map, "body")?,
        sent_at: field(&e.map, "sent_at")?.parse().map_err(|_| bad("sent_at"))?,
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
        assert_eq!(parse_stored("7|id|123").unwrap(), (7, "id".into(), 123));
        assert!(parse_stored("7|id").is_err());
    }
}
