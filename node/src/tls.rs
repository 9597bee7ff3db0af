//! TLS for the node's listeners, with certificates that can be replaced while it runs.
//!
//! Both listeners (the client API and the federation port) use rustls through tokio-rustls,
//! with a certificate resolver that hands out the current certificate. [`ReloadingCert::reload`]
//! reads the files again; the node calls it on SIGHUP and when the files change. New
//! connections use the new certificate; open connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use futures::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
use crate::error::{Error, Result};

/// The node's certificate and key, replaceable at run time.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>> {
    let bad = |p: &Path, e: String| Error::Internal(format!("{}: {e}", p.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| bad(key, e.to_string()))?;
    let certified = CertifiedKey::new(certs, signer);
    certified
        .keys_match()
        .map_err(|_| bad(key, "this key does not belong to the certificate".into()))?;
    Ok(Arc::new(certified))
}

fn modified(files: &[&Path]) -> Option<SystemTime> {
    files
        .iter()
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max()
}

impl ReloadingCert {
    /// Loads the certificate and key.
    pub fn new(files: &TlsFiles) -> Result<Arc<Self>> {
        let current = load(&files.cert, &files.key)?;
        Ok(Arc::new(Self {
            cert: files.cert.clone(),
            key: files.key.clone(),
            current: RwLock::new((current, modified(&[&files.cert, &files.key]))),
        }))
    }

    /// Reads the files again; on error the current certificate stays in use.
    pub fn reload(&self) -> Result<()> {
        let fresh = load(&self.cert, &self.key)?;
        let stamp = modified(&[&self.cert, &self.key]);
        if let Ok(mut c) = self.current.write() {
            *c = (fresh, stamp);
        }
        tracing::info!(cert = %self.cert.display(), "reloaded the node certificate");
        Ok(())
    }

    /// Reloads if the files changed since the last load. Returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let stamp = modified(&[&self.cert, &self.key]);
        let known = self.current.read().ok().and_then(|c| c.1);
        if stamp.is_some() && stamp != known {
            self.reload()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// When the certificate in use expires.
    pub fn expires(&self) -> Option<crate::model::Timestamp> {
        let der = self.current_der()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        Some(crate::model::Timestamp::from_millis(
            cert.validity().not_after.timestamp() * 1000,
        ))
    }

    /// The certificate in use (its end-entity DER).
    pub fn current_der(&self) -> Option<Vec<u8>> {
        let c = self.current.read().ok()?;
        c.0.cert.first().map(|d| d.to_vec())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.0.clone())
    }
}

/// A rustls server config over `cert`, speaking HTTP/2; with `client_ca`, a client
/// certificate from that CA is required (the federation port).
pub fn server_config(
    cert: Arc<ReloadingCert>,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("tls: {e}")))?;
    let mut config = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| Error::Internal(format!("{}: {e}", ca.display())))?
            {
                let c = c.map_err(|e| Error::Internal(format!("{}: {e}", ca.display())))?;
                roots
                    .add(c)
                    .map_err(|e| Error::Internal(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::Internal(format!("tls: {e}")))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(cert)
        }
        None => builder.with_no_client_auth().with_cert_resolver(cert),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepted, handshaken TLS connections. Each handshake runs in its own task, so a slow or
/// failing client cannot hold up others; failures are logged and skipped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Stop listening as soon as the server drops the stream (shutdown).
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            // Small frames (an event, an acknowledgement, a one-field change) go out at once:
            // with Nagle's algorithm a write waits while an earlier one is unacknowledged,
            // and the other side delays its ACK by up to 40 ms.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(%peer, error = %e, "could not turn off Nagle's algorithm");
            }
            let (acceptor, sender) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                        .await;
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = sender.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// Accepted connections answer small writes at once: tonic's own listener turns Nagle's
    /// algorithm off, and ours must too (with it on, an event written while an earlier one
    /// is unacknowledged waits for the client's delayed ACK, up to 40 ms).
    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        crate::pki::init_ca(dir.path(), "test CA").unwrap();
        let agency = crate::model::AgencyId::parse("school.test").unwrap();
        let files = crate::pki::issue(dir.path(), &agency, dir.path(), 1).unwrap();
        let config = server_config(ReloadingCert::new(&files).unwrap(), None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(incoming(listener, config));

        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&files.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connect = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect("localhost".try_into().unwrap(), tcp);
        let (client, server) = tokio::join!(connect, accepted.next());
        client.expect("the handshake succeeds");
        let server = server.expect("a connection").expect("its handshake");
        assert!(server.get_ref().0.nodelay().unwrap());
    }
}
