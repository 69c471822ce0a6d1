//! How simulated users get their sessions: through a node's gateway (login, then the stream)
//! or straight to the bare relay; many at once, each on its own connection.
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{BenchError, Sources};
use tim::client::{self, ClientError, Session};

/// Logins and connects in flight at once while sessions are being opened.
const OPENING: usize = 64;

/// How a user gets a session.
#[derive(Debug, Clone)]
pub enum Dial {
    /// Log in at this gateway, then open the stream: on the endpoint Login returns, or on the
    /// gateway itself when `pin` (to place users on chosen nodes).
    Node { gateway: String, pin: bool },
    /// The bare relay: no login, the token is the user id.
    Relay(String),
}

impl Dial {
    /// Opens `user`'s session; only the stream's connection takes a source address from
    /// `sources` (the login's is short-lived: the OS picks, so its TIME_WAIT port can be reused).
    pub async fn open(&self, user: &str, sources: &Sources) -> Result<Session, ClientError> {
        let opts = sources.options();
        match self {
            Dial::Node { gateway, pin } => {
                let login_opts = client::Options { local_address: None, ..opts.clone() };
                let login = client::login(gateway, user, "bench", "", &login_opts).await?;
                let endpoint = if *pin { gateway } else { &login.endpoint };
                Session::connect(endpoint, &login.token, 0, &opts).await
            }
            Dial::Relay(addr) => Session::connect(addr, user, 0, &opts).await,
        }
    }
}

/// Opens one session per (user, dial), at most [`OPENING`] at a time, in order.
pub async fn open_all(
    users: &[(String, Dial)],
    sources: &Arc<Sources>,
) -> Result<Vec<Session>, BenchError> {
    let gate = Arc::new(Semaphore::new(OPENING));
    let tasks: Vec<_> = users
        .iter()
        .cloned()
        .map(|(user, dial)| {
            let (gate, sources) = (gate.clone(), sources.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                dial.open(&user, &sources).await
            })
        })
        .collect();
    let mut sessions = Vec::with_capacity(tasks.len());
    for t in tasks {
        let s = t.await.map_err(|e| super::setup(format!("opening a session: {e}")))??;
        sessions.push(s);
    }
    Ok(sessions)
}
