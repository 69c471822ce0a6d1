//! The server of one node: gRPC (Gateway, Groups, Chat, Relay, health, reflection) and, on the
//! same port, the browser side (`crate::web`: page, WebSocket, JSON calls); the node's
//! background tasks and the ordered shutdown (NOT_SERVING, Drain every stream, bounded grace).
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::config::{Config, ConfigError, redact_url};
use crate::discovery::Membership;
use crate::node::{Node, Security, Stores};
use crate::proto::{
    FILE_DESCRIPTOR_SET, chat_server::ChatServer, gateway_server::GatewayServer,
    groups_server::GroupsServer, relay_server::RelayServer,
};
use crate::store::{MemoryStore, RedisAccess, RedisStore};

/// How often a node looks for group fan-outs other nodes left unfinished.
const FANOUT_SWEEP: std::time::Duration = std::time::Duration::from_secs(5);
use crate::task::AbortOnDrop;
use crate::tls::ServerTls;
use crate::web::Web;

mod cluster;
mod json;
mod metrics;
mod split;

pub mod chat;
pub mod gateway;
pub mod groups;
pub mod relay;

/// Frames up to this size reach validation, so an oversize body is refused with a clear
/// INVALID_ARGUMENT naming the limit; only larger frames are cut off by the transport
/// (OUT_OF_RANGE). Same as tonic's default.
const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Largest header block a request may carry (a bearer token is well under 1 KiB).
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams a client may reset before the node accepted them, before it is sent GOAWAY.
const MAX_PENDING_RESETS: usize = 20;
/// How often a node with dev login on a reachable address says so.
const INSECURE_WARNING_EVERY: Duration = Duration::from_secs(60);
/// How often the in-memory store drops what expired in inboxes nobody touches.
const MEMORY_SWEEP: Duration = Duration::from_secs(60);
/// How often a draining node looks whether its last sessions ended.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// How often idle senders' rate buckets are dropped.
const LIMITS_SWEEP: Duration = Duration::from_secs(10);

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

/// The configured stores: Redis with `--redis`, else in memory (then swept by a task in
/// `tasks`).
async fn open_store(config: &Config, tasks: &mut JoinSet<()>) -> Result<Stores, ServeError> {
    let urls = config.redis_urls();
    if urls.is_empty() {
        let store = Arc::new(MemoryStore::new(config.store_options()));
        let sweeper = store.clone();
        tasks.spawn(async move { sweeper.sweep_every(MEMORY_SWEEP).await });
        return Ok(Stores {
            inbox: store.clone(),
            groups: store.clone(),
            conversations: store.clone(),
            routes: store,
        });
    }
    let shown: Vec<String> = urls.iter().map(|u| redact_url(u)).collect();
    let tls_ca = match &config.redis_ca {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| ServeError::Store(format!("--redis-ca {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let access = RedisAccess { password: config.redis_password.clone(), tls_ca };
    let store = RedisStore::connect_with(
        &urls,
        config.redis_cluster,
        config.redis_timeout,
        &access,
        &config.redis_prefix,
        config.store_options(),
    )
    .await
    .map_err(|e| ServeError::Store(format!("{}: {e}", shown.join(","))))?;
    info!(redis = %shown.join(","), cluster = config.redis_cluster, "using Redis stores");
    let store = Arc::new(store);
    // Completes group fan-outs that a node (any) began and did not finish.
    let sweeper = store.clone();
    tasks.spawn(async move { sweeper.sweep_fanout_every(FANOUT_SWEEP).await });
    Ok(Stores {
        inbox: store.clone(),
        groups: store.clone(),
        conversations: store.clone(),
        routes: store,
    })
}

/// Runs a node on `listener` until `shutdown` resolves, then drains it and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    crate::tls::install_default_provider();
    let config = config.read_secret_files()?;
    config.validate()?;
    let local = listener.local_addr()?;
    let endpoint = config.advertise.clone().unwrap_or_else(|| local.to_string());
    let id = config.node_id.clone().unwrap_or_else(|| endpoint.clone());
    // Every background task of the node lives here and ends when `run` returns.
    let mut tasks = JoinSet::new();
    let stores = open_store(&config, &mut tasks).await?;
    let node_metrics = Arc::new(crate::metrics::Metrics::new());
    let (discovery, registration) = cluster::discovery(&config, &id, &endpoint, &node_metrics)?;
    let membership = Membership::new();
    let updates = discovery.updates();
    tasks.spawn({
        let membership = membership.clone();
        async move { membership.follow(updates).await }
    });
    if config.dev_login_exposed() {
        // Allowed by --insecure-dev-login (validate refuses it otherwise): said again and again.
        let addr = config.addr;
        tasks.spawn(async move {
            loop {
                warn!(%addr, "--insecure-dev-login: anyone who reaches this address can log in as anyone");
                tokio::time::sleep(INSECURE_WARNING_EVERY).await;
            }
        });
    }
    if config.token_secret.is_none() {
        warn!("no --token-secret: tokens are signed with a random key and die with this process");
    }
    let tls = match config.tls_files() {
        Some(files) => {
            let tls = Arc::new(ServerTls::load(files).map_err(|e| ConfigError(e.to_string()))?);
            tasks.spawn(tls.clone().watch());
            Some(tls)
        }
        None => {
            if !config.addr.ip().is_loopback() {
                warn!(addr = %config.addr, "serving without TLS on an address other hosts can reach: \
                    tokens and messages cross the network in clear (give --tls-cert and --tls-key)");
            }
            None
        }
    };
    let security = Security {
        login_mode: config.login_mode()?,
        tls: tls.clone(),
        peer_tls: config.peer_tls()?,
    };
    let push = crate::push::Pusher::start(&config.push).map(|(pusher, worker)| {
        tasks.spawn(worker);
        pusher
    });
    let metrics_addr = config.metrics_addr;
    let (node, login_worker) =
        Node::new(&id, config, security, stores, membership, push, node_metrics);
    let node = Arc::new(node);
    if let Some(addr) = metrics_addr {
        let listener = TcpListener::bind(addr).await?;
        info!(addr = %listener.local_addr()?, "metrics at /metrics");
        tasks.spawn(metrics::serve(listener, node.clone()));
    }
    tasks.spawn(login_worker);
    tasks.spawn({
        // Forget the send allowance of users who stopped sending.
        let node = node.clone();
        async move {
            loop {
                tokio::time::sleep(LIMITS_SWEEP).await;
                node.limits().sweep(std::time::Instant::now());
            }
        }
    });
    tasks.spawn({
        let node = node.clone();
        async move { node.delivery().follow_membership().await }
    });
    tasks.spawn({
        let node = node.clone();
        async move { node.notes().flush_every().await }
    });
    let result = serve(listener, &node, tls, registration, shutdown).await;
    // Whatever ended the server: sessions still running end now, peer calls are abandoned
    // (the inbox has every message) and the background tasks stop with `tasks`.
    node.delivery().sessions().terminate();
    node.delivery().shutdown();
    node.notes().flush().await;
    tasks.shutdown().await;
    result
}

/// Serves until `shutdown`, then drains: NOT_SERVING, deregistration, `Drain` to every stream,
/// bounded grace.
async fn serve(
    listener: TcpListener,
    node: &Arc<Node>,
    tls: Option<Arc<ServerTls>>,
    registration: Option<crate::discovery::ConsulRegistration>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let local = listener.local_addr()?;
    let sessions = node.delivery().sessions();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GatewayServer<gateway::GatewayService>>().await;
    health.set_serving::<ChatServer<chat::ChatService>>().await;
    health.set_serving::<GroupsServer<groups::GroupsService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let config = node.config();
    let max_frame = MAX_FRAME.max(config.max_body + 1024);
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(config.keepalive_interval));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stop_rx.await;
    };
    // gRPC, and beside it the browser side (page, JSON calls) for HTTP/2 browsers; HTTP/1.1
    // connections (and WebSocket upgrades) are split off to `web` before tonic sees them.
    let web = Web::new(node.clone(), max_frame, json::routes(node));
    let mut grpc = Routes::builder();
    grpc.add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            GatewayServer::new(gateway::GatewayService::new(node.clone()))
                .max_decoding_message_size(max_frame),
        )
        .add_service(
            GroupsServer::new(groups::GroupsService::new(node.clone()))
                .max_decoding_message_size(max_frame),
        )
        .add_service(
            ChatServer::new(chat::ChatService::new(node.clone()))
                .max_decoding_message_size(max_frame),
        )
        .add_service(
            RelayServer::new(relay::RelayService::new(node.clone()))
                .max_decoding_message_size(max_frame),
        );
    let routes = Routes::from(web.router().merge(grpc.routes().into_axum_router()));
    let router = Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        // What one connection may cost: a few streams, bounded headers, and a GOAWAY for a
        // client that opens and resets streams faster than they are accepted (rapid reset).
        .max_concurrent_streams(config.max_streams_per_connection)
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .add_routes(routes);
    let timeout = config.hello_timeout;
    let mut server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match &tls {
            Some(tls) => {
                // An unauthenticated connection lives no longer than a stream without Hello.
                let incoming = tls.clone().accept(incoming, timeout);
                let incoming = split::split(incoming, timeout, web);
                Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
            }
            None => {
                let incoming = split::split(incoming, timeout, web);
                Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
            }
        };
    info!(node = %node.id(), addr = %local, tls = tls.is_some(), "serving");
    let heartbeat =
        registration.as_ref().map(|r| AbortOnDrop(cluster::keep_registered(node, r.clone())));

    tokio::select! {
        result = &mut server => return result.map_err(Into::into),
        () = shutdown => {}
    }

    info!(sessions = sessions.len(), "shutting down: draining streams");
    health.set_service_status("", ServingStatus::NotServing).await;
    health.set_not_serving::<GatewayServer<gateway::GatewayService>>().await;
    health.set_not_serving::<ChatServer<chat::ChatService>>().await;
    health.set_not_serving::<GroupsServer<groups::GroupsService>>().await;
    if let (Some(registration), Some(heartbeat)) = (&registration, heartbeat) {
        // Stop passing and re-registering first, or the heartbeat would bring the node back.
        heartbeat.stop().await;
        cluster::deregister(registration).await;
    }
    sessions.drain_all(|| rand::random_range(0..1000));
    let _ = stop_tx.send(());
    let grace = config.drain_grace;
    let mut ended = None;
    let drained = tokio::time::timeout(grace, async {
        ended = Some((&mut server).await);
        // WebSocket sessions are not tonic's connections: wait for them as well.
        while !sessions.is_empty() {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    })
    .await;
    if drained.is_err() {
        warn!(?grace, sessions = sessions.len(), "drain grace expired; ending the rest");
        sessions.terminate();
        if ended.is_none() {
            // Sessions end at once; give their connections a moment to close.
            ended = tokio::time::timeout(Duration::from_secs(1), &mut server).await.ok();
        }
    }
    ended.unwrap_or(Ok(())).map_err(Into::into)
}
