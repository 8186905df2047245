//! TLS termination setup: certificates, SNI choice and the rustls `ServerConfig` every worker shares.

pub mod certs;
pub mod ocsp;
pub mod p521;
pub mod resolver;
pub mod watch;

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;

use crate::config::{TlsConfig, TlsVersion};
use certs::{CertError, LoadedCert};
use resolver::SniResolver;

/// The crypto provider used everywhere: aws-lc-rs (X25519 at about half the cost of ring's, and the
/// post-quantum X25519MLKEM768 group), with P-521 appended ([`p521`]) so every group OpenSSL accepts by
/// default but X448 and the FFDHE groups is accepted here too.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups.push(p521::SECP521R1);
    Arc::new(provider)
}

/// Loads the configured certificates, or the generated self-signed one when none is configured.
pub fn load_certificates(
    tls: &TlsConfig,
    state_dir: &Path,
    provider: &CryptoProvider,
) -> Result<Vec<LoadedCert>, CertError> {
    if tls.certificates.is_empty() {
        let (cert, key) = certs::ensure_self_signed(state_dir)?;
        return Ok(vec![certs::load(&cert, &key, &[], provider)?]);
    }
    tls.certificates
        .iter()
        .map(|c| {
            let loaded = certs::load(&c.cert, &c.key, &c.server_names, provider)?;
            Ok(match &c.ocsp {
                Some(path) => with_ocsp(loaded, path),
                None => loaded,
            })
        })
        .collect()
}

/// `cert` with the OCSP response in `path` stapled, when [`ocsp::load`] accepts it; else `cert` as it was,
/// with a warning: a bad staple never keeps a certificate from being served.
fn with_ocsp(cert: LoadedCert, path: &Path) -> LoadedCert {
    let Some(leaf) = cert.key.cert.first() else {
        return cert;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match ocsp::load(path, leaf.as_ref(), now) {
        Ok(der) => {
            tracing::info!(
                cert = %cert.source.display(),
                ocsp = %path.display(),
                bytes = der.len(),
                "OCSP response stapled"
            );
            let mut key = (*cert.key).clone();
            key.ocsp = Some(der);
            LoadedCert {
                key: Arc::new(key),
                ..cert
            }
        }
        Err(e) => {
            tracing::warn!(cert = %cert.source.display(), error = %e, "serving the certificate without an OCSP staple");
            cert
        }
    }
}

/// Builds the certificate choice shared by the server configuration and handshake classification (one table,
/// so both see the same choice).
pub fn resolver(certs: &[LoadedCert]) -> anyhow::Result<Arc<SniResolver>> {
    SniResolver::new(certs)
        .map(Arc::new)
        .ok_or_else(|| anyhow::anyhow!("no certificate loaded"))
}

/// Builds the server configuration shared by every worker, choosing certificates with `resolver`.
pub fn server_config(
    tls: &TlsConfig,
    resolver: Arc<SniResolver>,
    provider: Arc<CryptoProvider>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = tls
        .versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        })
        .collect();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = tls
        .alpn_for(crate::config::ListenerMode::Tcp)
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    // `http` listeners replace the ALPN list (`daemon.rs`); the ticketer and session cache are set per listener by `tickets::Tickets::server_config`.
    Ok(Arc::new(config))
}
