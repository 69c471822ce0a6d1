//! TCP proxies on every link of a chaos run (client→node, node→node, node→Redis, replica→
//! primary), so that the run can cut a link the ways a network fails:
//! - [`Link::Refused`]: every connection is reset and new ones are reset on accept (a firewall
//!   that rejects, a host that is down);
//! - [`Link::Silent`]: half-open; connections stay up and new ones are accepted, but no byte
//!   moves either way (a dropped route, a dead switch): only keepalives and timeouts notice.
//!   Healed, the bytes held back flow on, as TCP's retransmits would bring them;
//! - [`Proxy::repoint`]: every connection is reset and new ones reach another upstream (an
//!   address that moved to another host: a Redis failover behind a virtual IP).
//!
//! Every socket has a zero linger time, so a connection the proxy drops is reset (RST), never
//! closed politely.
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The state of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Open,
    Refused,
    Silent,
}

#[derive(Debug, Clone)]
struct State {
    link: Link,
    upstream: SocketAddr,
    /// Bumped by `repoint`: connections of an older generation are reset.
    generation: u64,
}

/// A proxy on a free loopback port; it stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    _accept: tim::task::AbortOnDrop,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(State { link: Link::Open, upstream, generation: 0 });
        let accept = tokio::spawn(accept_loop(listener, state.subscribe()));
        Ok(Proxy { addr, state, _accept: tim::task::AbortOnDrop(accept) })
    }

    /// Where to connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts or heals the link.
    pub fn set(&self, link: Link) {
        self.state.send_modify(|s| s.link = link);
    }

    /// Resets every connection; new ones go to `upstream`.
    pub fn repoint(&self, upstream: SocketAddr) {
        self.state.send_modify(|s| {
            s.upstream = upstream;
            s.generation += 1;
        });
    }
}

async fn accept_loop(listener: TcpListener, state: watch::Receiver<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let _ = client.set_zero_linger();
        let state = state.clone();
        tokio::spawn(async move {
            let now = state.borrow().clone();
            if now.link == Link::Refused {
                return; // dropped: reset
            }
            let Ok(server) = TcpStream::connect(now.upstream).await else { return };
            let _ = server.set_zero_linger();
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            // Either direction reset ends both; an orderly end of one lets the other go on.
            let up = pump(cr, sw, state.clone(), now.generation);
            let down = pump(sr, cw, state, now.generation);
            tokio::pin!(up, down);
            let (mut up_done, mut down_done) = (false, false);
            while !(up_done && down_done) {
                tokio::select! {
                    r = &mut up, if !up_done => { if r.is_err() { return } up_done = true }
                    r = &mut down, if !down_done => { if r.is_err() { return } down_done = true }
                }
            }
        });
    }
}

/// Copies `from` to `to` while the link is open; waits while it is silent. Ok at the end of
/// `from` (the end passed on); an error when the link is refused or repointed, or a side fails.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    generation: u64,
) -> io::Result<()> {
    let cut = || io::Error::from(io::ErrorKind::ConnectionReset);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let link = {
            let s = state.borrow_and_update();
            if s.generation != generation {
                return Err(cut());
            }
            s.link
        };
        match link {
            Link::Refused => return Err(cut()),
            Link::Silent => {
                state.changed().await.map_err(|_| cut())?;
                continue;
            }
            Link::Open => {}
        }
        tokio::select! {
            read = from.read(&mut buf) => match read? {
                0 => {
                    to.shutdown().await?;
                    return Ok(());
                }
                n => to.write_all(&buf[..n]).await?,
            },
            changed = state.changed() => changed.map_err(|_| cut())?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, within: Duration) -> io::Result<Vec<u8>> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
            Ok(r) => r.map(|_| buf.to_vec()),
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    #[tokio::test]
    async fn cuts_the_three_ways_and_heals() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let second = Duration::from_secs(2);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, second).await.unwrap(), b"ping");

        // Silent: nothing moves, nothing is closed; healed, the held bytes arrive.
        proxy.set(Link::Silent);
        let short = Duration::from_millis(300);
        let err = round_trip(&mut s, short).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        proxy.set(Link::Open);
        let mut buf = [0u8; 4];
        tokio::time::timeout(second, s.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"ping", "the bytes held back while silent");

        // Refused: the open connection is reset, and so is a new one.
        proxy.set(Link::Refused);
        assert!(round_trip(&mut s, second).await.is_err());
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut fresh, second).await.is_err(), "reset on accept");
        proxy.set(Link::Open);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, second).await.unwrap(), b"ping");

        // Repointed: the old connection is reset, new ones reach the new upstream.
        proxy.repoint(echo().await);
        assert!(round_trip(&mut s, second).await.is_err());
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, second).await.unwrap(), b"ping");
    }
}
