//! TLS for the `mqtt:ssl` and `mqtt:wss` listeners, through rustls: the server certificate and key from
//! PEM files, and optionally client certificates checked against a CA (`verify_peer`), whose subject
//! can stand for the username (`peer_cert_as_username`).
//!
//! The files are read when the listener starts and again on [`Tls::reload`] (SIGHUP, or the control
//! request): a new handshake uses the new certificate, connections already up keep theirs, and files
//! that do not load leave the running certificate in place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::listener::{ListenerConfig, PeerCertField};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is required for a TLS listener")]
    Missing { what: &'static str },
    #[error("cannot read {path}: {source}")]
    Pem { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("client certificate verification: {0}")]
    Verifier(#[from] tokio_rustls::rustls::server::VerifierBuilderError),
    #[error("{0}")]
    Rustls(#[from] tokio_rustls::rustls::Error),
}

/// Where a listener's TLS settings come from, kept for reloading.
#[derive(Debug, Clone)]
struct Files {
    certfile: PathBuf,
    keyfile: PathBuf,
    /// With `verify_peer`: the CA client certificates must chain to.
    cacertfile: Option<PathBuf>,
    fail_if_no_peer_cert: bool,
}

/// A listener's TLS: the acceptor in use, replaced whole on reload.
pub struct Tls {
    files: Files,
    acceptor: ArcSwap<TlsAcceptor>,
    peer_cert_as_username: Option<PeerCertField>,
}

impl Tls {
    /// Loads the listener's certificate, key and CA.
    pub fn load(config: &ListenerConfig) -> Result<Tls, TlsError> {
        let certfile = config.certfile.clone().ok_or(TlsError::Missing { what: "certfile" })?;
        let keyfile = config.keyfile.clone().ok_or(TlsError::Missing { what: "keyfile" })?;
        let cacertfile = match (config.verify_peer, &config.cacertfile) {
            (true, None) => return Err(TlsError::Missing { what: "cacertfile (for verify_peer)" }),
            (true, Some(ca)) => Some(ca.clone()),
            (false, _) => None,
        };
        let files = Files { certfile, keyfile, cacertfile, fail_if_no_peer_cert: config.fail_if_no_peer_cert };
        let acceptor = files.acceptor()?;
        Ok(Tls {
            files,
            acceptor: ArcSwap::from_pointee(acceptor),
            peer_cert_as_username: config.peer_cert_as_username,
        })
    }

    /// Reads the files again; on success new handshakes use them.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.acceptor.store(Arc::new(self.files.acceptor()?));
        Ok(())
    }

    /// The TLS handshake over `tcp`, and the username the client certificate gives, if the listener
    /// takes one from it.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<(TlsStream<TcpStream>, Option<String>)> {
        let acceptor = self.acceptor.load_full();
        let stream = acceptor.accept(tcp).await?;
        let username = self.peer_cert_as_username.and_then(|field| {
            let (_, session) = stream.get_ref();
            let leaf = session.peer_certificates()?.first()?;
            subject(leaf, field)
        });
        Ok((stream, username))
    }

    pub fn takes_username_from_certificate(&self) -> bool {
        self.peer_cert_as_username.is_some()
    }
}

/// Every TLS listener's certificates, to reload together.
#[derive(Clone, Default)]
pub struct Certificates(Vec<(SocketAddr, Arc<Tls>)>);

impl Certificates {
    pub fn add(&mut self, addr: SocketAddr, tls: Arc<Tls>) {
        self.0.push((addr, tls));
    }

    /// Every file the TLS listeners read: certificate chains, keys, CAs.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for (_, tls) in &self.0 {
            let f = &tls.files;
            files.extend([f.certfile.clone(), f.keyfile.clone()]);
            files.extend(f.cacertfile.clone());
        }
        files.sort();
        files.dedup();
        files
    }

    /// Reloads every TLS listener's files. Each that loads is in use at once; the error names those
    /// that did not (and keep their running certificates).
    pub fn reload(&self) -> Result<usize, String> {
        let mut failed = Vec::new();
        for (addr, tls) in &self.0 {
            match tls.reload() {
                Ok(()) => tracing::info!(listener = %addr, "certificates reloaded"),
                Err(e) => {
                    tracing::error!(listener = %addr, error = %e, "certificates not reloaded; the running ones stay");
                    failed.push(format!("{addr}: {e}"));
                }
            }
        }
        if failed.is_empty() {
            Ok(self.0.len())
        } else {
            Err(failed.join("; "))
        }
    }
}

impl Files {
    fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let certs = certificates(&self.certfile)?;
        let key = PrivateKeyDer::from_pem_file(&self.keyfile)
            .map_err(|source| TlsError::Pem { path: self.keyfile.clone(), source })?;
        let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match &self.cacertfile {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(ca)? {
                    roots.add(cert)?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.fail_if_no_peer_cert {
                    verifier.build()?
                } else {
                    verifier.allow_unauthenticated().build()?
                };
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(certs, key)?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem { path: path.to_owned(), source };
    let certs = CertificateDer::pem_file_iter(path).map_err(pem)?.collect::<Result<Vec<_>, _>>().map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// The certificate subject's common name, or the whole subject (`CN=alice, O=Example`).
fn subject(cert: &CertificateDer<'_>, field: PeerCertField) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    match field {
        PeerCertField::Cn => cert.subject().iter_common_name().next()?.as_str().ok().map(str::to_owned),
        PeerCertField::Dn => Some(cert.subject().to_string()),
    }
}
