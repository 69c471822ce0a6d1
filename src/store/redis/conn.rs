//! One Redis connection handle for both deployments: a single server (a multiplexed connection
//! that reconnects in the background) or a Redis Cluster (slot-aware routing); and what its
//! errors mean to the store's callers.
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, IntoConnectionInfo as _, Pipeline, RedisError, RedisFuture, TlsCertificates, Value,
};

use crate::store::StoreError;

/// How to reach Redis beyond its URLs: a password for URLs that carry none, and the CA of a
/// `rediss://` server (the system's roots when none).
#[derive(Clone, Default)]
pub struct Access {
    pub password: Option<String>,
    /// PEM CA certificate(s).
    pub tls_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls_ca", &self.tls_ca.is_some())
            .finish()
    }
}

impl Access {
    fn certificates(&self) -> Option<TlsCertificates> {
        let root_cert = self.tls_ca.clone()?;
        Some(TlsCertificates { client_tls: None, root_cert: Some(root_cert) })
    }
}

/// A cloneable, reconnecting Redis connection.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Whether this is one server (every key in reach of one script) rather than a Cluster.
    pub fn is_single(&self) -> bool {
        matches!(self, Conn::Single(_))
    }

    /// Connects to one server (`urls` has one entry) or to a cluster through its seed nodes,
    /// as `access` says. Fails if Redis cannot be reached now; later outages are retried per
    /// command. `rediss://` URLs connect over TLS.
    pub async fn open(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
        access: &Access,
    ) -> redis::RedisResult<Conn> {
        if cluster || urls.len() > 1 {
            let mut builder = ClusterClientBuilder::new(urls.to_vec())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2);
            if let Some(password) = &access.password {
                builder = builder.password(password.clone());
            }
            if let Some(certs) = access.certificates() {
                builder = builder.certs(certs);
            }
            return Ok(Conn::Cluster(builder.build()?.get_async_connection().await?));
        }
        let mut info = urls[0].as_str().into_connection_info()?;
        if let Some(password) = &access.password
            && info.redis_settings().password().is_none()
        {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = match access.certificates() {
            Some(certs) => redis::Client::build_with_tls(info, certs)?,
            None => redis::Client::open(info)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Each reconnect tries a few times; the next command after a failure starts again.
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        Ok(Conn::Single(ConnectionManager::new_with_config(client, config).await?))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind as S};
        // Connection loss, timeouts, LOADING after a restart, cluster failover: try again.
        // Anything else (a script error, WRONGTYPE) will not heal by retrying.
        let transient = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error()
            || matches!(
                e.kind(),
                ErrorKind::Io
                    | ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(
                        S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly
                    )
            );
        if transient {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Internal(e.to_string())
        }
    }
}
