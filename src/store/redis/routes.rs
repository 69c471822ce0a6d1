//! The [`RouteStore`] half of [`RedisStore`]: device routes (compare-and-set by session start
//! time, lapsing on their own), logout revocations and last-seen times.
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;

use super::RedisStore;
use super::values::{bad, live_routes, now_ms, parse_route, route_value};
use super::writer::Refresh;
use crate::store::{PutRoute, Route, RouteStore, StoreError};

#[async_trait]
impl RouteStore for RedisStore {
    async fn put(
        &self,
        user: &str,
        device: &str,
        route: &Route,
        ttl: Duration,
    ) -> Result<PutRoute, StoreError> {
        let now = now_ms();
        let (took, value): (i64, Option<String>) = self
            .route_put
            .key(self.key("route", user))
            .arg(device)
            .arg(route_value(route, ttl))
            .arg(route.started_at)
            .arg(ttl.as_millis() as u64)
            .arg(now)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let other = value.and_then(|v| parse_route(&v));
        if took == 1 {
            Ok(PutRoute::Took(other.filter(|(_, lapses)| *lapses > now).map(|(r, _)| r)))
        } else {
            other.map(|(r, _)| PutRoute::Superseded(r)).ok_or_else(|| bad("route"))
        }
    }

    async fn refresh(
        &self,
        user: &str,
        device: &str,
        route: &Route,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        // Every session refreshes its route each third of the route TTL: group-committed, so
        // a node's idle streams cost Redis a call per batch, not one each.
        let refresh = Refresh {
            user: user.to_string(),
            device: device.to_string(),
            session_id: route.session_id.clone(),
            value: route_value(route, ttl),
            ttl_ms: ttl.as_millis() as u64,
        };
        self.writer.refresh(refresh).await
    }

    async fn remove_if(
        &self,
        user: &str,
        device: &str,
        session_id: &str,
    ) -> Result<bool, StoreError> {
        let removed: i64 = self
            .route_remove
            .key(self.key("route", user))
            .arg(device)
            .arg(session_id)
            .arg(now_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(removed == 1)
    }

    async fn get(&self, user: &str) -> Result<Vec<(String, Route)>, StoreError> {
        let flat: Vec<String> = redis::cmd("HGETALL")
            .arg(self.key("route", user))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(live_routes(flat, now_ms()))
    }

    async fn revoke(
        &self,
        user: &str,
        device: &str,
        at_ms: i64,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let key = format!("{}:{device}", self.key("revoked", user));
        let () = self.conn.clone().pset_ex(key, at_ms, ttl_ms).await?;
        Ok(())
    }

    async fn seen(&self, user: &str, at_ms: i64, ttl: Duration) -> Result<(), StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let () = self.conn.clone().pset_ex(self.key("seen", user), at_ms, ttl_ms).await?;
        Ok(())
    }

    async fn last_seen(&self, user: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.conn.clone().get(self.key("seen", user)).await?)
    }

    async fn revoked(&self, user: &str, device: &str) -> Result<Option<i64>, StoreError> {
        let key = format!("{}:{device}", self.key("revoked", user));
        Ok(self.conn.clone().get(key).await?)
    }
}
