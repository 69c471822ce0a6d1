//! The server→client half of a session: a queue bounded in frames and in bytes that tonic
//! streams out, and a way to end it at once with a status when the client stops reading.
//!
//! A client is cut off when its queue stays full for the slow-client timeout without draining
//! to half of what it held when found full: taking one frame now and then does not count as
//! progress. Full means no room in the queue's own bounds or in the node's budget.
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use prometheus_client::metrics::counter::Counter;
use prost::Message as _;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;

use crate::limit::QueueBudget;
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

/// The bytes one queued frame holds of its queue and of the node's budget, given back when it
/// is dropped: taken by the client, or dropped with the queue.
#[derive(Debug)]
struct Charge {
    size: usize,
    queued: Arc<Queued>,
    budget: Arc<QueueBudget>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.queued.bytes.fetch_sub(self.size, Ordering::AcqRel);
        self.budget.give(self.size);
        self.queued.drained.notify_one();
    }
}

type Item = Result<(ServerFrame, Charge), Status>;

/// The sending side, owned by the session task.
#[derive(Debug)]
pub struct Outbound {
    tx: mpsc::Sender<Item>,
    abort: Option<oneshot::Sender<Status>>,
    slow_timeout: Duration,
    max_bytes: usize,
    queued: Arc<Queued>,
    budget: Arc<QueueBudget>,
    /// Since when the queue has been full, and what it held then (bytes, frames): it counts as
    /// making progress again only once it drains to half of that.
    full_since: Option<(Instant, usize, usize)>,
    /// Counts the messages queued (the node's `tim_messages_delivered`).
    delivered: Counter,
}

/// The stream tonic sends to the client.
pub struct OutboundStream {
    rx: mpsc::Receiver<Item>,
    abort: Option<oneshot::Receiver<Status>>,
    done: bool,
}

/// Makes a queue of at most `capacity` frames and `max_bytes` bytes, drawing on the node's
/// `budget` (one frame always fits); a queue that stays full for `slow_timeout` without draining
/// to half ends the stream with RESOURCE_EXHAUSTED.
pub fn channel(
    capacity: usize,
    max_bytes: usize,
    slow_timeout: Duration,
    budget: Arc<QueueBudget>,
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
            budget,
            full_since: None,
            delivered: Counter::default(),
        },
        OutboundStream { rx, abort: Some(abort_rx), done: false },
    )
}

impl Outbound {
    /// Counts the messages this queue takes into `delivered`.
    pub fn count_delivered(&mut self, delivered: Counter) {
        self.delivered = delivered;
    }

    /// Queues one frame when there is room in frames and bytes; waits for the client to drain,
    /// until the queue has been full for the slow-client timeout.
    pub async fn send(&mut self, frame: Frame) -> Result<(), Gone> {
        let message = matches!(frame, Frame::Message(_));
        let frame = ServerFrame { frame: Some(frame) };
        let size = frame.encoded_len();
        loop {
            let (queued, frames) = self.held();
            if let Some((_, bytes_then, frames_then)) = self.full_since
                && queued <= bytes_then / 2
                && frames <= frames_then / 2
            {
                self.full_since = None;
            }
            // An empty queue always takes one frame; otherwise the frame must fit this queue and
            // the node's budget.
            let fits = queued == 0 || queued + size <= self.max_bytes;
            let budgeted = fits
                && if queued == 0 {
                    self.budget.take(size);
                    true
                } else {
                    self.budget.try_take(size)
                };
            if budgeted {
                match self.tx.try_reserve() {
                    Ok(permit) => {
                        self.queued.bytes.fetch_add(size, Ordering::AcqRel);
                        let charge = Charge {
                            size,
                            queued: self.queued.clone(),
                            budget: self.budget.clone(),
                        };
                        permit.send(Ok((frame, charge)));
                        if message {
                            self.delivered.inc();
                        }
                        return Ok(());
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        self.budget.give(size);
                        return Err(Gone::Closed);
                    }
                    Err(mpsc::error::TrySendError::Full(())) => self.budget.give(size),
                }
            }
            self.wait().await?;
        }
    }

    /// Bytes and frames in the queue now.
    fn held(&self) -> (usize, usize) {
        let frames = self.tx.max_capacity() - self.tx.capacity();
        (self.queued.bytes.load(Ordering::Acquire), frames)
    }

    /// Waits for the client to take a frame, unless the queue has been full for the slow-client
    /// timeout: then the stream ends.
    async fn wait(&mut self) -> Result<(), Gone> {
        let (bytes, frames) = self.held();
        let (since, _, _) = *self.full_since.get_or_insert_with(|| (Instant::now(), bytes, frames));
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
        Ok(())
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
            // Taken: its bytes go back (the charge is dropped here).
            Poll::Ready(Some(Ok((frame, _charge)))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
