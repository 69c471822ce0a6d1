//! The gRPC server of one node: Gateway, Chat and Relay, plus gRPC health and reflection, and
//! the ordered shutdown (NOT_SERVING, Drain every stream, bounded grace).
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tracing::{info, warn};

use crate::config::{Config, ConfigError};
use crate::discovery::Membership;
use crate::lb::Selector;
use crate::node::Node;
use crate::proto::{
    FILE_DESCRIPTOR_SET, chat_server::ChatServer, gateway_server::GatewayServer,
    relay_server::RelayServer,
};
use crate::store::{Inbox, MemoryStore, RedisStore, RouteStore};
use crate::stream::Registry;
use peers::Peers;

mod cluster;

pub mod chat;
pub mod gateway;
pub mod peers;
pub mod relay;

/// Frames up to this size reach validation, so an oversize body is refused with a clear
/// INVALID_ARGUMENT naming the limit; only larger frames are cut off by the transport
/// (OUT_OF_RANGE). Same as tonic's default.
const MAX_FRAME: usize = 4 * 1024 * 1024;
/// How long Login waits for discovery to know a node before answering UNAVAILABLE.
const PICK_TIMEOUT: Duration = Duration::from_secs(3);
/// Live messages queued per session before it falls back to reading its inbox.
const FEED_CAPACITY: usize = 1024;

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("discovery: {0}")]
    Discovery(String),
    #[error("cannot open the store: {0}")]
    Store(String),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The configured stores: Redis with `--redis`, else in memory.
async fn open_store(config: &Config) -> Result<(Arc<dyn Inbox>, Arc<dyn RouteStore>), ServeError> {
    let urls = config.redis_urls();
    if urls.is_empty() {
        let store = MemoryStore::shared(config.store_options(), Duration::from_secs(60));
        return Ok((store.clone(), store));
    }
    let store = RedisStore::connect(
        &urls,
        config.redis_cluster,
        config.redis_timeout,
        &config.redis_prefix,
        config.store_options(),
    )
    .await
    .map_err(|e| ServeError::Store(e.to_string()))?;
    info!(redis = %urls.join(","), cluster = config.redis_cluster, "using Redis stores");
    let store = Arc::new(store);
    Ok((store.clone(), store))
}

/// Runs a node on `listener` until `shutdown` resolves, then drains it and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    config.validate()?;
    let local = listener.local_addr()?;
    let endpoint = config.advertise.clone().unwrap_or_else(|| local.to_string());
    let id = config.node_id.clone().unwrap_or_else(|| endpoint.clone());
    let (inbox, routes) = open_store(&config).await?;
    let (discovery, registration) = cluster::discovery(&config, &id, &endpoint)?;
    let membership = Membership::spawn(discovery.updates());
    let selector = ServiceBuilder::new()
        .timeout(PICK_TIMEOUT)
        .buffer(1024)
        .service(Selector::new(membership.subscribe(), config.lb.build()));
    let signer = config.signer();
    let peers = Peers::new(&id, signer.clone());
    let node = Arc::new(Node {
        id: id.clone(),
        endpoint: endpoint.clone(),
        signer,
        login: config.login_mode(),
        inbox,
        routes,
        registry: Registry::new(FEED_CAPACITY),
        membership,
        selector,
        peers,
        config,
    });
    if node.config.token_secret.is_none() {
        warn!("no --token-secret: tokens are signed with a random key and die with this process");
    }
    let background = vec![cluster::keep_peers(&node)];

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GatewayServer<gateway::GatewayService>>().await;
    health.set_serving::<ChatServer<chat::ChatService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let max_frame = MAX_FRAME.max(node.config.max_body + 1024);
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(node.config.keepalive_interval));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .http2_keepalive_interval(Some(node.config.keepalive_interval))
        .http2_keepalive_timeout(Some(node.config.keepalive_timeout))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            GatewayServer::new(gateway::GatewayService::new(node.clone()))
                .max_decoding_message_size(max_frame),
        )
        .add_service(
            ChatServer::new(chat::ChatService::new(node.clone()))
                .max_decoding_message_size(max_frame),
        )
        .add_service(RelayServer::new(relay::RelayService::new(node.clone())))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    info!(node = %node.id, addr = %local, "serving");
    let heartbeat = registration.as_ref().map(|r| cluster::keep_registered(&node, r.clone()));
    let _abort_on_return = AbortOnDrop(background);

    tokio::select! {
        result = &mut server => {
            if let Some(heartbeat) = &heartbeat {
                heartbeat.abort();
            }
            return result.map_err(Into::into);
        }
        () = shutdown => {}
    }

    info!(sessions = node.registry.len(), "shutting down: draining streams");
    health.set_service_status("", ServingStatus::NotServing).await;
    health.set_not_serving::<GatewayServer<gateway::GatewayService>>().await;
    health.set_not_serving::<ChatServer<chat::ChatService>>().await;
    if let (Some(registration), Some(heartbeat)) = (&registration, heartbeat) {
        // Stop passing and re-registering first, or the heartbeat would bring the node back.
        heartbeat.abort();
        let _ = heartbeat.await;
        cluster::deregister(registration).await;
    }
    node.registry.drain_all(|| rand::random_range(0..1000));
    let _ = stop_tx.send(());
    let grace = node.config.drain_grace;
    match tokio::time::timeout(grace, &mut server).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => {
            warn!(?grace, sessions = node.registry.len(), "drain grace expired; ending the rest");
            node.registry.terminate();
            // Sessions end at once; give their connections a moment to close.
            match tokio::time::timeout(Duration::from_secs(1), &mut server).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Ok(()),
            }
        }
    }
}

/// Aborts the node's background tasks when `run` returns, however it returns.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
