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
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::config::{Config, DataLocation};
use crate::error::{Error, Result};
use crate::model::now;
use crate::service::{Clock, NodeService, ServiceOptions};
use crate::storage::{memory::MemoryBackend, sled::SledBackend, Backend, Store, StoreHandle};

/// Installs the ring crypto provider for rustls once per process.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Opens the store a config names.
pub fn open_store(data: &DataLocation) -> Result<StoreHandle> {
    let backend: Arc<dyn Backend> = match data {
        DataLocation::Dir(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
            Arc::new(SledBackend::open(dir)?)
        }
        DataLocation::Memory => Arc::new(MemoryBackend::new()),
    };
    Ok(StoreHandle::new(Store::open(backend)?))
}

/// A running node.
pub struct Node {
    api_addr: SocketAddr,
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
        let store = open_store(&config.data)?;
        Self::bind_with_store(config, store, clock).await
    }

    /// Like [`Node::bind`], over a store the caller has opened already.
    pub async fn bind_with_store(config: Config, store: StoreHandle, clock: Clock) -> Result<Node> {
        let listener = TcpListener::bind(config.api_listen)
            .await
            .map_err(|e| Error::Internal(format!("cannot listen on {}: {e}", config.api_listen)))?;
        let service = NodeService::new(
            config.agency.clone(),
            store,
            clock,
            ServiceOptions {
                compact_after_chunks: config.compact_after_chunks,
            },
        )
        .await?;
        let (tx, rx) = watch::channel(false);
        let api_addr = listener.local_addr().map_err(Error::internal)?;
        let task = tokio::spawn(serve(config, service.clone(), listener, rx));
        tracing::info!(agency = %service.agency(), addr = %api_addr, "node started");
        Ok(Node {
            api_addr,
            service,
            shutdown: tx,
            task,
        })
    }

    /// The client API's bound address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
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

    /// Waits until the node has stopped.
    pub async fn join(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| Error::internal(format!("node task failed: {e}")))?
    }

    /// Stops the node and waits for it.
    pub async fn stop(self) -> Result<()> {
        self.shutdown();
        self.join().await
    }
}

/// Serves the client API over TLS on a bound listener until `shutdown` turns true.
pub async fn serve(
    config: Config,
    service: Arc<NodeService>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    install_crypto_provider();
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Error::Internal(format!("cannot read {}: {e}", p.display())))
    };
    let identity = Identity::from_pem(read(&config.tls.cert)?, read(&config.tls.key)?);
    let agency = service.agency().clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity))
        .map_err(|e| Error::Internal(format!("tls config: {e}")))?
        .trace_fn(
            move |req| tracing::info_span!("request", agency = %agency, path = %req.uri().path()),
        )
        .add_routes(crate::api::routes(service))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")))?;
    tracing::info!("node stopped");
    Ok(())
}
