//! Presence: whether a user is online (or when last seen), and to the user themself where.
use crate::error::Error;
use crate::ids;

use super::Node;

impl Node {
    /// Whether `user` holds a stream on a live node (or, if not, when last seen) and, only when
    /// `caller` is that user, on which devices and nodes, as (device, node id) sorted. Other
    /// users learn online or last seen, nothing more.
    pub async fn presence(&self, caller: &str, user: &str) -> Result<Presence, Error> {
        ids::user(user)?;
        let routes = self.routes.get(user).await?;
        let mut devices: Vec<_> = routes
            .into_iter()
            .filter(|(_, r)| self.delivery.is_live(r))
            .map(|(device, r)| (device, r.node_id))
            .collect();
        devices.sort();
        let online = !devices.is_empty();
        if caller != user {
            devices.clear();
        }
        let last_seen = if online { None } else { self.routes.last_seen(user).await? };
        Ok(Presence { online, devices, last_seen })
    }
}

/// What Presence tells a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub online: bool,
    /// (device, node id) of each online device; empty unless the caller asked about themself.
    pub devices: Vec<(String, String)>,
    /// While offline: when the user's last stream ended (Unix ms), if known.
    pub last_seen: Option<i64>,
}
