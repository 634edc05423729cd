//! The certificates both brokers serve TLS with: a CA and a server certificate for `localhost` signed
//! by it (ECDSA P-256, rcgen's default), made for the run, and the client that trusts the CA.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls_pki_types::CertificateDer;
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

pub struct Certs {
    pub cert: PathBuf,
    pub key: PathBuf,
    ca: CertificateDer<'static>,
    dir: PathBuf,
}

impl Certs {
    pub fn make() -> anyhow::Result<Certs> {
        let dir = std::env::temp_dir().join(format!("midge-bench-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.distinguished_name.push(DnType::CommonName, "midge-bench CA");
        let ca_key = KeyPair::generate()?;
        let ca = params.self_signed(&ca_key)?;

        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params.distinguished_name.push(DnType::CommonName, "midge-bench");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let server = params.signed_by(&key, &ca, &ca_key)?;
        let certs = Certs { cert: dir.join("server.crt"), key: dir.join("server.key"), ca: ca.der().clone(), dir };
        std::fs::write(&certs.cert, server.pem()).context("writing the certificate")?;
        std::fs::write(&certs.key, key.serialize_pem()).context("writing the key")?;
        Ok(certs)
    }

    /// A client that trusts the CA, with session resumption off: every connection a full handshake,
    /// for both brokers alike (OpenSSL issues tickets by default and rustls's server does not).
    pub fn connector(&self) -> anyhow::Result<TlsConnector> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
