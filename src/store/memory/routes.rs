//! The [`RouteStore`] half of [`MemoryStore`]: device routes, logout revocations and
//! last-seen times, in the same per-user state as the inbox.
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::MemoryStore;
use crate::store::{PutRoute, Route, RouteStore, StoreError};

#[async_trait]
impl RouteStore for MemoryStore {
    async fn put(
        &self,
        user: &str,
        device: &str,
        route: &Route,
        ttl: Duration,
    ) -> Result<PutRoute, StoreError> {
        let now = Instant::now();
        Ok(self.with_user(user, |u| {
            let current = u.routes.get(device).filter(|(_, lapses)| *lapses > now);
            if let Some((r, _)) = current
                && r.started_at > route.started_at
            {
                return PutRoute::Superseded(r.clone());
            }
            let old = u.routes.insert(device.to_string(), (route.clone(), now + ttl));
            PutRoute::Took(old.filter(|(_, lapses)| *lapses > now).map(|(r, _)| r))
        }))
    }

    async fn refresh(
        &self,
        user: &str,
        device: &str,
        route: &Route,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        Ok(self.with_user(user, |u| match u.routes.get(device) {
            Some((r, lapses)) if *lapses > now && r.session_id != route.session_id => false,
            _ => {
                u.routes.insert(device.to_string(), (route.clone(), now + ttl));
                true
            }
        }))
    }

    async fn remove_if(
        &self,
        user: &str,
        device: &str,
        session_id: &str,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        Ok(self.peek(user, |u| {
            if u.routes.get(device).is_none_or(|(r, _)| r.session_id != session_id) {
                return false;
            }
            // A lapsed route is gone already: removed all the same, but not reported.
            u.routes.remove(device).is_some_and(|(_, lapses)| lapses > now)
        }))
    }

    async fn get(&self, user: &str) -> Result<Vec<(String, Route)>, StoreError> {
        Ok(self.peek(user, |u| u.live_routes(Instant::now())))
    }

    async fn revoke(
        &self,
        user: &str,
        device: &str,
        at_ms: i64,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let until = Instant::now() + ttl;
        self.with_user(user, |u| u.revoked.insert(device.to_string(), (at_ms, until)));
        Ok(())
    }

    async fn seen(&self, user: &str, at_ms: i64, ttl: Duration) -> Result<(), StoreError> {
        let until = Instant::now() + ttl;
        self.with_user(user, |u| u.last_seen = Some((at_ms, until)));
        Ok(())
    }

    async fn last_seen(&self, user: &str) -> Result<Option<i64>, StoreError> {
        let now = Instant::now();
        Ok(self.peek(user, |u| u.last_seen.filter(|(_, until)| *until > now).map(|(at, _)| at)))
    }

    async fn revoked(&self, user: &str, device: &str) -> Result<Option<i64>, StoreError> {
        let now = Instant::now();
        Ok(self.peek(user, |u| {
            u.revoked.get(device).filter(|(_, until)| *until > now).map(|(at, _)| *at)
        }))
    }
}
