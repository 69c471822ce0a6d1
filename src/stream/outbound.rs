//! The server→client half of a session: a queue bounded in frames and in bytes that tonic
//! streams out, and a way to end it at once with a status when the client stops reading.
//!
//! A client is cut off when its queue stays full for the slow-client timeout without draining
//! to half: taking one frame now and then does not count as progress.
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use prost::Message as _;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;

use crate::proto::{ServerFrame, server_frame::Frame};

/// The client is gone or too slow; the session must end.
#[derive(Debug, PartialEq, Eq)]
pub enum Gone {
    /// The response stream was dropped (client cancelled, connection died).
    Closed,
    /// The queue stayed full past the slow-client timeout: ended with RESOURCE_EXHAUSTED.
    Slow,
}

/// Bytes queued towards the client, shared by both halves.
#[derive(Debug, Default)]
struct Queued {
    bytes: AtomicUsize,
    /// Told each time the client takes a frame.
    drained: Notify,
}

/// The sending side, owned by the session task.
#[derive(Debug)]
pub struct Outbound {
    tx: mpsc::Sender<Result<ServerFrame, Status>>,
    abort: Option<oneshot::Sender<Status>>,
    slow_timeout: Duration,
    max_bytes: usize,
    queued: Arc<Queued>,
    /// Since when the queue has been full without draining to half (in bytes and in frames).
    full_since: Option<Instant>,
}

/// The stream tonic sends to the client.
pub struct OutboundStream {
    rx: mpsc::Receiver<Result<ServerFrame, Status>>,
    abort: Option<oneshot::Receiver<Status>>,
    queued: Arc<Queued>,
    done: bool,
}

/// Makes a queue of at most `capacity` frames and `max_bytes` bytes (one frame always fits);
/// a queue that stays full for `slow_timeout` without draining to half ends the stream with
/// RESOURCE_EXHAUSTED.
pub fn channel(
    capacity: usize,
    max_bytes: usize,
    slow_timeout: Duration,
) -> (Outbound, OutboundStream) {
    let (tx, rx) = mpsc::channel(capacity);
    let (abort_tx, abort_rx) = oneshot::channel();
    let queued = Arc::new(Queued::default());
    (
        Outbound {
            tx,
            abort: Some(abort_tx),
            slow_timeout,
            max_bytes,
            queued: queued.clone(),
            full_since: None,
        },
        OutboundStream { rx, abort: Some(abort_rx), queued, done: false },
    )
}

impl Outbound {
    /// Queues one frame when there is room in frames and bytes; waits for the client to drain,
    /// until the queue has been full for the slow-client timeout.
    pub async fn send(&mut self, frame: Frame) -> Result<(), Gone> {
        let frame = ServerFrame { frame: Some(frame) };
        let size = frame.encoded_len();
        loop {
            let queued = self.queued.bytes.load(Ordering::Acquire);
            let frames = self.tx.max_capacity() - self.tx.capacity();
            if queued <= self.max_bytes / 2 && frames <= self.tx.max_capacity() / 2 {
                self.full_since = None;
            }
            if queued == 0 || queued + size <= self.max_bytes {
                match self.tx.try_reserve() {
                    Ok(permit) => {
                        self.queued.bytes.fetch_add(size, Ordering::AcqRel);
                        permit.send(Ok(frame));
                        return Ok(());
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => return Err(Gone::Closed),
                    Err(mpsc::error::TrySendError::Full(())) => {}
                }
            }
            let since = *self.full_since.get_or_insert_with(Instant::now);
            let Some(left) = self.slow_timeout.checked_sub(since.elapsed()) else {
                self.abort(Status::resource_exhausted(
                    "client is not reading its stream; undelivered messages stay in the inbox",
                ));
                return Err(Gone::Slow);
            };
            tokio::select! {
                () = self.queued.drained.notified() => {}
                () = tokio::time::sleep(left) => {}
                () = self.tx.closed() => return Err(Gone::Closed),
            }
        }
    }

    /// Ends the stream with `status` after the frames already queued.
    pub async fn finish(&mut self, status: Status) {
        if self.tx.send_timeout(Err(status.clone()), self.slow_timeout).await.is_err() {
            self.abort(status);
        }
    }

    /// Ends the stream with `status` now, dropping whatever is still queued.
    pub fn abort(&mut self, status: Status) {
        if let Some(abort) = self.abort.take() {
            let _ = abort.send(status);
        }
    }

    /// Resolves when the client side is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl Stream for OutboundStream {
    type Item = Result<ServerFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(abort) = self.abort.as_mut() {
            match Pin::new(abort).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Err(_)) => self.abort = None,
                Poll::Pending => {}
            }
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                self.queued.bytes.fetch_sub(frame.encoded_len(), Ordering::AcqRel);
                self.queued.drained.notify_one();
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }
}
