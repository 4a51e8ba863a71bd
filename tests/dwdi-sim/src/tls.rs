//! Serving the simulator over TLS, so the host's rustls client, CA bundle setting and
//! certificate errors are tested against a real handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::PrivateKeyDer, pki_types::pem::PemObject};

/// A TLS acceptor for the PEM chain and key; HTTP/1.1 only, like the plain server.
pub(crate) fn acceptor(cert_pem: &str, key_pem: &str) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("dwdi-sim: bad certificate PEM: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| anyhow::anyhow!("dwdi-sim: bad key PEM: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts until `stopped` fires; each connection records its peer and is counted open
/// like the plain server's. Connections live in a `JoinSet`, so aborting this task closes them all.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: crate::SimState,
    router: Router,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "dwdi-sim: accept failed");
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let acceptor = acceptor.clone();
        let service = router.clone().layer(axum::Extension(ConnectInfo::<SocketAddr>(peer)));
        let open = state.connection_opened();
        connections.spawn(async move {
            let _open = open;
            // A client that gives up during the handshake (a certificate it does not
            // trust) is normal in the tests: nothing to report.
            let Ok(stream) = acceptor.accept(tcp).await else { return };
            let service = TowerToHyperService::new(service);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    // Let requests in flight finish for a moment, like the plain server's grace.
    let _ =
        tokio::time::timeout(super::SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} }).await;
}
