//! The admin listener: plain TCP on loopback, or TLS (rustls) wherever it listens.

use crate::config::AdminConfig;
use anyhow::{bail, Context, Result};
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::rustls;

/// The address an admin request came from (the transitions it causes record it).
#[derive(Debug, Clone, Copy)]
pub struct AdminPeer(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for AdminPeer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        AdminPeer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for AdminPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        AdminPeer(*stream.remote_addr())
    }
}

/// TLS handshakes in progress at once, and how long one may take: a client that opens
/// connections and never finishes a handshake holds no more than this.
const MAX_HANDSHAKES: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and hands out those whose TLS handshake finished; handshakes run
/// beside each other, so one slow client does not hold up the rest.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshakes: JoinSet<Option<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>>,
}

impl Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_HANDSHAKES => match accepted {
                    Ok((tcp, addr)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(tls)) => Some((tls, addr)),
                                Ok(Err(e)) => {
                                    tracing::debug!(peer = %addr, error = %e, "admin: TLS handshake failed");
                                    None
                                }
                                Err(_) => None,
                            }
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "admin: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(ready)) = done {
                        return ready;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("admin TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("admin TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        bail!(
            "admin TLS certificate {}: no certificate in it",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("admin TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("admin TLS: protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("admin TLS: certificate and key do not go together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Binds the admin listener and serves `router` on it until `shutdown`. Refuses a listener off
/// loopback without TLS unless `allow_plain_remote` says so: the token would cross the network
/// in clear.
pub async fn serve(
    cfg: &AdminConfig,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(
    SocketAddr,
    bool,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    if cfg.tls.is_none() && !cfg.listen.ip().is_loopback() && !cfg.allow_plain_remote {
        bail!(
            "admin.listen {} is not a loopback address and admin.tls_cert/tls_key are not set: refusing to send the admin token in clear (set admin.allow_plain_remote = true to do it anyway)",
            cfg.listen
        );
    }
    let tls = match &cfg.tls {
        Some((cert, key)) => Some(tls_config(cert, key)?),
        None => None,
    };
    let tcp = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", cfg.listen))?;
    let addr = tcp.local_addr()?;
    let app = router.into_make_service_with_connect_info::<AdminPeer>();
    let handle = match tls {
        Some(config) => {
            let listener = TlsListener {
                tcp,
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
                handshakes: JoinSet::new(),
            };
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            })
        }
        None => {
            tokio::spawn(
                async move { axum::serve(tcp, app).with_graceful_shutdown(shutdown).await },
            )
        }
    };
    Ok((addr, cfg.tls.is_some(), handle))
}
