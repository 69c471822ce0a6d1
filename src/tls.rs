//! TLS from PEM files: the node's server side (reloadable, optional client certificates), the
//! check that a relay comes from a node of the cluster, and the client side that the library,
//! the CLI and the relay channels use.
//!
//! Everything runs on rustls with the `ring` provider; no system OpenSSL is involved.
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt as _};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tracing::{debug, info, warn};

use crate::task::AbortOnDrop;

/// TLS connections being set up at once; more wait in the listen backlog. Each costs a few KiB
/// until its handshake completes or times out.
const MAX_HANDSHAKES: usize = 1024;
/// How often the certificate files are checked for changes (SIGHUP reloads at once).
const WATCH_EVERY: Duration = Duration::from_secs(5);

/// A TLS file that could not be used, in words for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's rustls provider, for libraries that ask rustls for the default
/// (redis-rs). Harmless when already done.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{}: {e}", path.display())))
}

/// Every certificate in a PEM file (a chain: leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("{}: not a PEM certificate file: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{}: holds no CERTIFICATE block", path.display())));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?)
        .map_err(|e| TlsError(format!("{}: no usable PEM private key: {e}", path.display())))
}

fn roots(paths: &[&Path]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for path in paths {
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(roots)
}

fn verifier(roots: RootCertStore, optional: bool) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto());
    let builder = if optional { builder.allow_unauthenticated() } else { builder };
    builder.build().map_err(|e| TlsError(format!("client CA: {e}")))
}

/// The PEM files a node serves TLS from.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, every client must present a certificate issued by this CA.
    pub client_ca: Option<PathBuf>,
    /// The CA of the cluster's node certificates: relays must present one.
    pub cluster_ca: Option<PathBuf>,
}

impl ServerFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.client_ca.as_deref());
        paths.extend(self.cluster_ca.as_deref());
        paths
    }

    fn modified(&self) -> Vec<Option<SystemTime>> {
        let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        self.paths().into_iter().map(stamp).collect()
    }
}

struct Loaded {
    config: Arc<rustls::ServerConfig>,
    /// Verifies relay callers against the cluster CA alone.
    nodes: Option<Arc<dyn ClientCertVerifier>>,
    modified: Vec<Option<SystemTime>>,
}

impl Loaded {
    fn from(files: &ServerFiles) -> Result<Self, TlsError> {
        // Taken first: a file replaced while it is read is then read again at the next check.
        let modified = files.modified();
        let certs = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        let client_roots: Vec<&Path> =
            files.client_ca.iter().chain(&files.cluster_ca).map(PathBuf::as_path).collect();
        let clients = if client_roots.is_empty() {
            WebPkiClientVerifier::no_client_auth()
        } else {
            // Node certificates always pass the handshake; other clients need one only when
            // --tls-client-ca asks for it.
            verifier(roots(&client_roots)?, files.client_ca.is_none())?
        };
        let nodes = match &files.cluster_ca {
            Some(ca) => Some(verifier(roots(&[ca])?, false)?),
            None => None,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(crypto())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_client_cert_verifier(clients)
            .with_single_cert(certs, key)
            .map_err(|e| {
                let (cert, key) = (files.cert.display(), files.key.display());
                TlsError(format!("{cert} with {key}: {e}"))
            })?;
        // HTTP/1.1 too, for browsers' page loads and WebSockets (src/web).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Loaded { config: Arc::new(config), nodes, modified })
    }
}

/// The server side of a node's TLS: the current configuration, swapped whole on reload.
/// Connections keep the configuration they were accepted with, so a reload drops no stream.
pub struct ServerTls {
    files: ServerFiles,
    current: RwLock<Loaded>,
}

impl ServerTls {
    pub fn load(files: ServerFiles) -> Result<Self, TlsError> {
        let loaded = Loaded::from(&files)?;
        Ok(ServerTls { files, current: RwLock::new(loaded) })
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().unwrap_or_else(|e| e.into_inner()).config.clone())
    }

    /// Reads the files again; on an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Loaded::from(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    fn changed(&self) -> bool {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.modified != self.files.modified()
    }

    /// Whether relay callers must present a node certificate.
    pub fn checks_nodes(&self) -> bool {
        self.current.read().unwrap_or_else(|e| e.into_inner()).nodes.is_some()
    }

    /// Accepts a relay caller only with a certificate chain issued by the cluster CA.
    pub fn verify_node(&self, chain: Option<&[CertificateDer<'static>]>) -> Result<(), String> {
        let nodes = self.current.read().unwrap_or_else(|e| e.into_inner()).nodes.clone();
        let Some(nodes) = nodes else { return Ok(()) };
        let Some((leaf, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return Err("relay calls need a node certificate of the cluster CA".into());
        };
        nodes
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("not a node certificate of this cluster: {e}"))
    }

    /// Reloads on SIGHUP and whenever a file's modification time changes; runs until dropped.
    pub async fn watch(self: Arc<Self>) {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<Option<()>>();
            let why = tokio::select! {
                _ = signalled => "SIGHUP",
                () = tokio::time::sleep(WATCH_EVERY) => {
                    if !self.changed() {
                        continue;
                    }
                    "the files changed"
                }
            };
            match self.reload() {
                Ok(()) => {
                    info!(cert = %self.files.cert.display(), why, "TLS certificates reloaded")
                }
                Err(e) => {
                    warn!(error = %e, why, "TLS reload failed; still serving the previous certificates")
                }
            }
        }
    }

    /// TLS connections from `incoming`: handshakes run concurrently (at most
    /// [`MAX_HANDSHAKES`], each within `timeout`), failed ones are dropped. Ends with `incoming`
    /// or when the stream is dropped.
    pub fn accept(
        self: Arc<Self>,
        mut incoming: TcpIncoming,
        timeout: Duration,
    ) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            let mut handshakes = JoinSet::new();
            loop {
                let full = handshakes.len() >= MAX_HANDSHAKES;
                tokio::select! {
                    tcp = incoming.next(), if !full => match tcp {
                        Some(Ok(tcp)) => {
                            let acceptor = self.acceptor();
                            handshakes.spawn(async move {
                                let peer = tcp.peer_addr().ok();
                                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                                    Ok(Ok(tls)) => Some(tls),
                                    Ok(Err(e)) => {
                                        debug!(?peer, error = %e, "TLS handshake failed");
                                        None
                                    }
                                    Err(_) => {
                                        debug!(?peer, "TLS handshake timed out");
                                        None
                                    }
                                }
                            });
                        }
                        Some(Err(e)) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        None => break,
                    },
                    Some(done) = handshakes.join_next() => {
                        if let Ok(Some(tls)) = done
                            && tx.send(Ok(tls)).await.is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        let task = AbortOnDrop(task);
        tokio_stream::wrappers::ReceiverStream::new(rx).map(move |tls| {
            let _ = &task;
            tls
        })
    }
}

/// A rustls client configuration that trusts the CA certificate(s) in the PEM file `ca`
/// (for HTTPS clients other than tonic's: the Consul agent).
pub fn client_config(ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots(&[ca])?)
        .with_no_client_auth();
    Ok(config)
}

/// What a client trusts and presents over TLS: a private CA instead of the system roots, and a
/// client certificate for servers that ask for one. PEM bytes, read once.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// From files: `ca` replaces the system roots; `cert` and `key` go together.
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, TlsError> {
        if let Some(ca) = ca {
            load_certs(ca)?;
        }
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => {
                load_certs(cert)?;
                load_key(key)?;
                Some((read(cert)?, read(key)?))
            }
            (None, None) => None,
            _ => {
                return Err(TlsError(
                    "a client certificate needs both its cert and its key".into(),
                ));
            }
        };
        Ok(ClientTls { ca: ca.map(read).transpose()?, identity })
    }

    /// The tonic client configuration: the private CA if one is set, else the system's roots.
    pub fn tonic(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new();
        let config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}
