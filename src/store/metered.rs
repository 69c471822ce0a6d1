//! An [`Inbox`] that times every call of the one it wraps into the node's
//! `tim_store_call_seconds` histogram, by call; answers pass through unchanged.
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus_client::metrics::histogram::Histogram;

use super::{AckCheck, Appended, HistoryPage, Inbox, NewMessage, StoreError, StoredMessage};
use crate::metrics::Metrics;

/// The calls timed: `timed` takes a position here.
const CALLS: [&str; 9] =
    ["append", "history", "read", "epoch", "renew_epoch", "last_seq", "ack", "enroll", "forget"];

pub struct Metered {
    inner: Arc<dyn Inbox>,
    /// One histogram per call, looked up once.
    seconds: Vec<Histogram>,
}

impl Metered {
    pub fn wrap(inner: Arc<dyn Inbox>, metrics: &Metrics) -> Arc<dyn Inbox> {
        let seconds = CALLS.iter().map(|&call| metrics.store_histogram(call)).collect();
        Arc::new(Metered { inner, seconds })
    }

    async fn timed<T>(&self, call: usize, f: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let answer = f.await;
        self.seconds[call].observe(started.elapsed().as_secs_f64());
        answer
    }
}

#[async_trait]
impl Inbox for Metered {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        self.timed(0, self.inner.append(msg)).await
    }

    async fn history(
        &self,
        conversation: &str,
        page: HistoryPage,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.timed(1, self.inner.history(conversation, page)).await
    }

    async fn read(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.timed(2, self.inner.read(user, after, limit)).await
    }

    async fn epoch(&self, user: &str) -> Result<String, StoreError> {
        self.timed(3, self.inner.epoch(user)).await
    }

    async fn renew_epoch(&self, user: &str) -> Result<String, StoreError> {
        self.timed(4, self.inner.renew_epoch(user)).await
    }

    async fn last_seq(&self, user: &str) -> Result<u64, StoreError> {
        self.timed(5, self.inner.last_seq(user)).await
    }

    async fn ack(
        &self,
        user: &str,
        device: &str,
        up_to: u64,
        check: &AckCheck,
    ) -> Result<u64, StoreError> {
        self.timed(6, self.inner.ack(user, device, up_to, check)).await
    }

    async fn enroll(&self, user: &str, device: &str) -> Result<(), StoreError> {
        self.timed(7, self.inner.enroll(user, device)).await
    }

    async fn forget(&self, user: &str, device: &str) -> Result<(), StoreError> {
        self.timed(8, self.inner.forget(user, device)).await
    }
}
