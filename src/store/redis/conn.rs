//! One Redis connection handle for both deployments: a single server (a multiplexed connection
//! that reconnects in the background) or a Redis Cluster (slot-aware routing).
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo as _, Pipeline, RedisFuture, Value};

/// A cloneable, reconnecting Redis connection.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to one server (`urls` has one entry) or to a cluster through its seed nodes,
    /// with `password` where a URL carries none. Fails if Redis cannot be reached now; later
    /// outages are retried per command.
    pub async fn open(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
        password: Option<&str>,
    ) -> redis::RedisResult<Conn> {
        if cluster || urls.len() > 1 {
            let mut builder = ClusterClientBuilder::new(urls.to_vec())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2);
            if let Some(password) = password {
                builder = builder.password(password);
            }
            return Ok(Conn::Cluster(builder.build()?.get_async_connection().await?));
        }
        let mut info = urls[0].as_str().into_connection_info()?;
        if let Some(password) = password
            && info.redis_settings().password().is_none()
        {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info)?;
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
