//! Running a node: open the store, build the service, serve the client API over TLS.
//!
//! [`Node::bind`] binds the configured address and returns a handle with the bound address,
//! [`Node::shutdown`] and [`Node::join`]; [`serve`] takes a pre-bound listener, so tests bind
//! port 0.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use weft_consent::ed25519_dalek::SigningKey;

use crate::config::{Config, DataLocation};
use crate::error::{Error, Result};
use crate::model::now;
use crate::service::{Clock, NodeService, ServiceOptions};
use crate::storage::{memory::MemoryBackend, sled::SledBackend, Backend, Store, StoreHandle};

/// Installs the ring crypto provider for rustls once per process.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Opens the store a config names (a sled store with a page cache of `cache_mib` MiB), keeping
/// up to `doc_cache` section documents loaded.
pub fn open_store(config: &Config) -> Result<StoreHandle> {
    let started = std::time::Instant::now();
    let backend: Arc<dyn Backend> = match &config.data {
        DataLocation::Dir(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
            Arc::new(SledBackend::open_with_cache(dir, config.cache_mib)?)
        }
        DataLocation::Memory => Arc::new(MemoryBackend::new()),
    };
    let engine = started.elapsed();
    let store = Store::open(backend)?;
    // How long a start spends where: the engine's recovery grows with what was written
    // since the store last opened, the store's own checks with what it holds.
    tracing::info!(
        engine_ms = engine.as_millis() as u64,
        store_ms = (started.elapsed() - engine).as_millis() as u64,
        doc_cache = config.doc_cache,
        "opened the store"
    );
    Ok(StoreHandle::with_doc_cache(store, config.doc_cache))
}

/// The node's consent signing key: read from its file, or created there (mode 0600) on
/// first start. An in-memory node without a key file gets a throwaway key.
pub fn load_signing_key(config: &Config) -> Result<SigningKey> {
    let path = match (&config.signing_key, &config.data) {
        (Some(p), _) => p.clone(),
        (None, DataLocation::Dir(dir)) => dir.join("signing.key"),
        (None, DataLocation::Memory) => return Ok(fresh_signing_key()),
    };
    let bad = |what: &str| Error::Internal(format!("{}: {what}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).map_err(|_| bad("not a hex Ed25519 seed"))?;
            let seed: [u8; 32] = bytes
                .try_into()
                .map_err(|_| bad("an Ed25519 seed is 32 bytes"))?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = fresh_signing_key();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| bad(&e.to_string()))?;
            }
            std::fs::write(&path, hex::encode(key.to_bytes())).map_err(|e| bad(&e.to_string()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| bad(&e.to_string()))?;
            }
            tracing::info!(path = %path.display(), "created the consent signing key");
            Ok(key)
        }
        Err(e) => Err(bad(&e.to_string())),
    }
}

/// When the PEM certificate in `path` expires (`None` if it cannot be read).
pub fn certificate_expiry(path: &std::path::Path) -> Option<crate::model::Timestamp> {
    let pem = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let secs = cert.validity().not_after.timestamp();
    Some(crate::model::Timestamp::from_millis(secs * 1000))
}

fn fresh_signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
    SigningKey::from_bytes(&seed)
}

/// A running node.
pub struct Node {
    api_addr: SocketAddr,
    federation_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    family_addr: Option<SocketAddr>,
    family_url: Option<String>,
    cert: Arc<crate::tls::ReloadingCert>,
    service: Arc<NodeService>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

impl Node {
    /// Opens the store, binds the client API address and starts serving.
    pub async fn bind(config: Config) -> Result<Node> {
        Self::bind_with_clock(config, Arc::new(now)).await
    }

    /// Like [`Node::bind`], with a clock of the caller's choosing (tests).
    pub async fn bind_with_clock(config: Config, clock: Clock) -> Result<Node> {
        let store = open_store(&config)?;
        Self::bind_with_store(config, store, clock).await
    }

    /// Like [`Node::bind`], over a store the caller has opened already.
    pub async fn bind_with_store(config: Config, store: StoreHandle, clock: Clock) -> Result<Node> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Internal(format!("cannot listen on {addr}: {e}")))
        };
        let api = bind(config.api_listen).await?;
        let federation = match &config.federation {
            Some(f) => Some(bind(f.listen).await?),
            None => None,
        };
        Self::start(config, store, clock, api, federation).await
    }

    /// Starts a node on listeners the caller has bound (tests bind port 0). `federation`
    /// must be given exactly when the config has a `[federation]` section.
    pub async fn start(
        config: Config,
        store: StoreHandle,
        clock: Clock,
        listener: TcpListener,
        federation: Option<TcpListener>,
    ) -> Result<Node> {
        install_crypto_provider();
        let cert = crate::tls::ReloadingCert::new(&config.tls)?;
        let service = service_for(&config, store, clock).await?;
        service.set_certificate(cert.clone());
        let (tx, rx) = watch::channel(false);
        let api_addr = listener.local_addr().map_err(Error::internal)?;
        let mut federation_addr = None;
        if let (Some(fed), Some(peer_listener)) = (&config.federation, federation) {
            federation_addr = Some(peer_listener.local_addr().map_err(Error::internal)?);
            let peers = Arc::new(fed.peers.clone());
            for p in peers.iter() {
                service.peer_update(&p.agency, |i| i.endpoint = p.endpoint.clone());
                if service.agency() < &p.agency {
                    tokio::spawn(crate::api::federation::dial(
                        service.clone(),
                        p.clone(),
                        config.tls.clone(),
                        rx.clone(),
                    ));
                }
            }
            tokio::spawn(serve_federation(
                config.tls.clone(),
                cert.clone(),
                service.clone(),
                peers,
                peer_listener,
                rx.clone(),
            ));
        }
        tokio::spawn(sweep_expiries(service.clone(), rx.clone()));
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let mut metrics_addr = None;
        if let Some(addr) = config.metrics_listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Internal(format!("cannot listen on {addr}: {e}")))?;
            metrics_addr = Some(l.local_addr().map_err(Error::internal)?);
            tokio::spawn(crate::metrics::serve(
                l,
                metrics.clone(),
                service.clone(),
                rx.clone(),
            ));
        }
        let (mut family_addr, mut family_url) = (None, None);
        if let Some(family) = &config.family {
            let l = TcpListener::bind(family.listen)
                .await
                .map_err(|e| Error::Internal(format!("cannot listen on {}: {e}", family.listen)))?;
            let addr = l.local_addr().map_err(Error::internal)?;
            family_addr = Some(addr);
            let url = crate::family::public_url(family, addr);
            service.set_family_url(url.clone());
            family_url = Some(url);
            let peers = config
                .federation
                .as_ref()
                .map(|f| f.peers.clone())
                .unwrap_or_default();
            tokio::spawn(crate::family::serve(
                service.clone(),
                family.clone(),
                peers,
                cert.clone(),
                l,
                rx.clone(),
            ));
        }
        tokio::spawn(watch_certificate(cert.clone(), rx.clone()));
        let task = tokio::spawn(serve(service.clone(), listener, metrics, cert.clone(), rx));
        tracing::info!(agency = %service.agency(), addr = %api_addr, "node started");
        Ok(Node {
            api_addr,
            federation_addr,
            metrics_addr,
            family_addr,
            family_url,
            cert,
            service,
            shutdown: tx,
            task,
        })
    }

    /// The client API's bound address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The federation listener's bound address, if federation is configured.
    pub fn federation_addr(&self) -> Option<SocketAddr> {
        self.federation_addr
    }

    /// The metrics listener's bound address, if metrics are configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The family page's bound address, if `[family]` is configured.
    pub fn family_addr(&self) -> Option<SocketAddr> {
        self.family_addr
    }

    /// The base of the family page's links (`[family] public_url`, else from the bound
    /// address), if the page is enabled.
    pub fn family_url(&self) -> Option<&str> {
        self.family_url.as_deref()
    }

    /// Reads the node certificate and key again (SIGHUP, or a test); new connections use
    /// them, open ones keep theirs. On error the old certificate stays in use.
    pub fn reload_tls(&self) -> Result<()> {
        self.cert.reload()
    }

    /// The node's service (for in-process tools and tests).
    pub fn service(&self) -> &Arc<NodeService> {
        &self.service
    }

    /// Asks the node to stop: no new requests; in-flight ones finish.
    pub fn shutdown(&self) {
        self.service.close();
        let _ = self.shutdown.send(true);
    }

    /// Waits until the node has stopped (its replication sessions too, for up to
    /// `SESSIONS_END_WITHIN`: each writes the peer's newest cursor and heads as it ends).
    pub async fn join(self) -> Result<()> {
        let served = self
            .task
            .await
            .map_err(|e| Error::internal(format!("node task failed: {e}")))?;
        if !self.service.sessions_ended(SESSIONS_END_WITHIN).await {
            tracing::warn!("replication sessions did not end in time; their peers' newest cursors may not be stored");
        }
        served
    }

    /// Stops the node and waits for it.
    pub async fn stop(self) -> Result<()> {
        self.shutdown();
        self.join().await
    }
}

/// How long a stopping node waits for its replication sessions to end.
const SESSIONS_END_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves the federation stream over mutual TLS: a client certificate from the federation
/// CA is required, and the agency it names must be a configured peer.
async fn serve_federation(
    tls: crate::config::TlsFiles,
    cert: Arc<crate::tls::ReloadingCert>,
    service: Arc<NodeService>,
    peers: Arc<Vec<crate::config::PeerConfig>>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let incoming = crate::tls::incoming(listener, crate::tls::server_config(cert, Some(&tls.ca))?);
    let api = crate::api::federation::FederationApi::new(service.clone(), peers, shutdown.clone());
    let result = crate::api::federation::server_keepalive(Server::builder())
        .add_service(
            weft_proto::v1::federation_server::FederationServer::new(api)
                .accept_compressed(crate::api::federation::OLD_COMPRESSION)
                .max_decoding_message_size(crate::api::federation::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::api::federation::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "federation listener failed");
    }
    result.map_err(|e| Error::Internal(format!("federation server: {e}")))
}

/// How often the node looks for a replaced certificate or key file.
pub const CERTIFICATE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Reloads the node certificate when its files change, until shutdown.
async fn watch_certificate(
    cert: Arc<crate::tls::ReloadingCert>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(CERTIFICATE_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = cert.reload_if_changed() {
                    tracing::warn!(error = %e, "the certificate files changed but do not load; keeping the old ones");
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// How often a node looks for consents that reached their expiry.
pub const EXPIRY_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Records consent expiries as they happen, until shutdown.
async fn sweep_expiries(service: Arc<NodeService>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EXPIRY_SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = service.sweep_expiries().await {
                    tracing::warn!(error = %e, "consent expiry sweep failed");
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// Serves the client API over TLS on a bound listener until `shutdown` turns true.
pub async fn serve(
    service: Arc<NodeService>,
    listener: TcpListener,
    metrics: Arc<crate::metrics::Metrics>,
    cert: Arc<crate::tls::ReloadingCert>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    install_crypto_provider();
    let agency = service.agency().clone();
    let (routes, health) = crate::api::routes(service).await?;
    let incoming = crate::tls::incoming(listener, crate::tls::server_config(cert, None)?);
    Server::builder()
        .layer(crate::metrics::MetricsLayer(metrics))
        .trace_fn(
            move |req| tracing::info_span!("request", agency = %agency, path = %req.uri().path()),
        )
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            // Readiness probes see the node leave before its listener closes.
            for name in crate::api::SERVICE_NAMES {
                health
                    .set_service_status(*name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")))?;
    tracing::info!("node stopped");
    Ok(())
}

/// The node service for `config` over `store`, without listeners (the node uses it, and so
/// do offline commands such as `weft seed`).
pub async fn service_for(
    config: &Config,
    store: StoreHandle,
    clock: Clock,
) -> Result<Arc<NodeService>> {
    let service = NodeService::new(
        config.agency.clone(),
        store,
        clock,
        ServiceOptions {
            compact_after_chunks: config.compact_after_chunks,
            certificate_expires: certificate_expiry(&config.tls.cert),
            config_sha256: config.source_sha256.clone(),
            scratch_dir: match &config.data {
                DataLocation::Dir(d) => Some(d.clone()),
                DataLocation::Memory => None,
            },
        },
        load_signing_key(config)?,
    )
    .await?;
    service.load_peer_keys().await?;
    Ok(service)
}
