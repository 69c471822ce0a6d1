//! One port, two protocols. A connection that opens with the HTTP/2 preface goes to the gRPC
//! server, untouched; any other is HTTP/1.1 (a browser's page, its JSON calls and its
//! WebSocket) and goes to the web side (`crate::web`). The first bytes are awaited for at most
//! the hello timeout, then handed back to whichever side takes the connection.
//!
//! What a hostile client gets: a connection that sends nothing (or a partial preface) is closed
//! after the hello timeout; at most [`MAX_SNIFFING`] connections are awaited at once, the rest
//! wait in the kernel's accept queue.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::debug;

use crate::task::AbortOnDrop;
use crate::web::Web;

/// How every HTTP/2 connection starts (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Connections whose first bytes are awaited at once.
pub const MAX_SNIFFING: usize = 1024;

/// A connection whose first bytes were read to tell its protocol; they are read again first.
pub struct Sniffed<IO> {
    head: Vec<u8>,
    at: usize,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Sniffed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.head.len() {
            let n = (this.head.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            if this.at == this.head.len() {
                this.head = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Sniffed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The gRPC side sees the connection's own info (peer address, TLS certificates).
impl<IO: Connected> Connected for Sniffed<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Reads until the bytes read are the HTTP/2 preface (true) or cannot begin it (false).
async fn sniff<IO: AsyncRead + Unpin>(mut io: IO) -> io::Result<(bool, Sniffed<IO>)> {
    let mut head = Vec::with_capacity(PREFACE.len());
    let mut buf = [0u8; PREFACE.len()];
    let h2 = loop {
        if head.len() == PREFACE.len() {
            break true;
        }
        let n = io.read(&mut buf[..PREFACE.len() - head.len()]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if !PREFACE.starts_with(&head) {
            break false;
        }
    };
    Ok((h2, Sniffed { head, at: 0, io }))
}

/// The stream of HTTP/2 connections for tonic; HTTP/1.1 ones are served by `web` on tasks that
/// end when this stream is dropped (upgraded WebSockets live on with their sessions).
pub struct H2Incoming<IO> {
    rx: ReceiverStream<io::Result<Sniffed<IO>>>,
    _task: AbortOnDrop,
}

impl<IO> Stream for H2Incoming<IO> {
    type Item = io::Result<Sniffed<IO>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().rx).poll_next(cx)
    }
}

/// Splits `incoming` by protocol: HTTP/2 into the returned stream, HTTP/1.1 to `web`.
pub fn split<IO, S>(incoming: S, timeout: Duration, web: Web) -> H2Incoming<IO>
where
    S: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        let mut sniffing = JoinSet::new();
        let mut http1 = JoinSet::new();
        loop {
            let full = sniffing.len() >= MAX_SNIFFING;
            tokio::select! {
                conn = incoming.next(), if !full => match conn {
                    Some(Ok(io)) => {
                        sniffing.spawn(tokio::time::timeout(timeout, sniff(io)));
                    }
                    // Accept errors are tonic's to handle, as without the split.
                    Some(Err(e)) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                Some(done) = sniffing.join_next() => match done {
                    Ok(Ok(Ok((true, io)))) => {
                        if tx.send(Ok(io)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Ok(Ok((false, io)))) => {
                        http1.spawn(web.clone().serve_http1(io));
                    }
                    Ok(Ok(Err(e))) => debug!(error = %e, "connection closed before its protocol was known"),
                    Ok(Err(_)) => debug!("connection sent no request within the hello timeout"),
                    Err(_) => {}
                },
                Some(_) = http1.join_next() => {}
                () = tx.closed() => return,
            }
        }
    });
    H2Incoming { rx: ReceiverStream::new(rx), _task: AbortOnDrop(task) }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    #[tokio::test]
    async fn the_preface_is_told_from_http1_and_read_again() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(PREFACE).await.unwrap();
        client.write_all(b"rest").await.unwrap();
        let (h2, mut io) = sniff(server).await.unwrap();
        assert!(h2);
        let mut all = vec![0u8; PREFACE.len() + 4];
        io.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..PREFACE.len()], PREFACE);
        assert_eq!(&all[PREFACE.len()..], b"rest");

        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (h2, mut io) = sniff(server).await.unwrap();
        assert!(!h2, "a request line is not the preface");
        let mut line = vec![0u8; 16];
        io.read_exact(&mut line).await.unwrap();
        assert_eq!(line, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_connection_closed_early_is_an_error() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HT").await.unwrap();
        drop(client);
        assert!(sniff(server).await.is_err());
    }
}
