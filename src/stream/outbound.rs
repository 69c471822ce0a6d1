//! The server→client half of a session: a bounded queue that tonic streams out, and a way to end
//! it at once with a status when the client stops reading.
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};
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

/// The sending side, owned by the session task.
#[derive(Debug)]
pub struct Outbound {
    tx: mpsc::Sender<Result<ServerFrame, Status>>,
    abort: Option<oneshot::Sender<Status>>,
    slow_timeout: Duration,
}

/// The stream tonic sends to the client.
pub struct OutboundStream {
    rx: mpsc::Receiver<Result<ServerFrame, Status>>,
    abort: Option<oneshot::Receiver<Status>>,
    done: bool,
}

/// Makes a queue of `capacity` frames; a send that waits longer than `slow_timeout` for room
/// ends the stream with RESOURCE_EXHAUSTED.
pub fn channel(capacity: usize, slow_timeout: Duration) -> (Outbound, OutboundStream) {
    let (tx, rx) = mpsc::channel(capacity);
    let (abort_tx, abort_rx) = oneshot::channel();
    (
        Outbound { tx, abort: Some(abort_tx), slow_timeout },
        OutboundStream { rx, abort: Some(abort_rx), done: false },
    )
}

impl Outbound {
    /// Queues one frame, waiting at most the slow-client timeout for room.
    pub async fn send(&mut self, frame: Frame) -> Result<(), Gone> {
        let frame = ServerFrame { frame: Some(frame) };
        match self.tx.send_timeout(Ok(frame), self.slow_timeout).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Gone::Closed),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                self.abort(Status::resource_exhausted(
                    "client is not reading its stream; undelivered messages stay in the inbox",
                ));
                Err(Gone::Slow)
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
            other => other,
        }
    }
}
