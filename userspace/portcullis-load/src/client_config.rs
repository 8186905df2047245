//! rustls client configurations, one per handshake kind, all sharing one session store.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::{Resumption, Tls12Resumption};
use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use rustls::{ClientConfig, version};

use crate::kind::Kind;
use crate::store::{Scope, TicketStore};
use crate::verifier::AnyCertificate;

/// A key exchange group the client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// Classical X25519.
    X25519,
    /// The post-quantum hybrid X25519MLKEM768 (TLS 1.3 only; TLS 1.2 kinds fall back to the classical groups).
    #[value(name = "x25519mlkem768")]
    X25519Mlkem768,
    /// NIST P-256.
    Secp256r1,
}

impl Group {
    fn kx(self) -> &'static dyn SupportedKxGroup {
        match self {
            Group::X25519 => aws_lc_rs::kx_group::X25519,
            Group::X25519Mlkem768 => aws_lc_rs::kx_group::X25519MLKEM768,
            Group::Secp256r1 => aws_lc_rs::kx_group::SECP256R1,
        }
    }
}

/// What every connection's ClientHello carries, whatever its kind.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// Key exchange groups in preference order; the first gets a key share. P-256 is appended when missing.
    pub groups: Vec<Group>,
    /// ALPN protocols offered, e.g. `h2`, `http/1.1`; empty offers none.
    pub alpn: Vec<Vec<u8>>,
    /// How the shared session store is keyed.
    pub scope: Scope,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            groups: vec![Group::X25519],
            alpn: Vec::new(),
            scope: Scope::Sni,
        }
    }
}

/// The configurations for the kinds of one run and the store they share.
#[derive(Clone, Debug)]
pub struct ClientConfigs {
    by_kind: HashMap<Kind, Arc<ClientConfig>>,
    store: Arc<TicketStore>,
}

impl ClientConfigs {
    /// Builds one configuration per kind in `kinds`. Fails when the groups leave nothing usable for a kind's
    /// version (rustls' own error names it).
    pub fn new(
        opts: &TlsOptions,
        kinds: impl IntoIterator<Item = Kind>,
    ) -> Result<Self, rustls::Error> {
        let store = Arc::new(TicketStore::new(opts.scope));
        let mut by_kind = HashMap::new();
        for kind in kinds {
            by_kind.insert(kind, Arc::new(build(opts, kind, &store)?));
        }
        Ok(Self { by_kind, store })
    }

    /// The configuration for `kind`, if the run uses it.
    pub fn of(&self, kind: Kind) -> Option<Arc<ClientConfig>> {
        self.by_kind.get(&kind).cloned()
    }

    /// The store every resuming kind shares.
    pub fn store(&self) -> &Arc<TicketStore> {
        &self.store
    }
}

fn build(
    opts: &TlsOptions,
    kind: Kind,
    store: &Arc<TicketStore>,
) -> Result<ClientConfig, rustls::Error> {
    let mut groups: Vec<&'static dyn SupportedKxGroup> = opts
        .groups
        .iter()
        .filter(|g| kind.is_tls13() || **g != Group::X25519Mlkem768)
        .map(|g| g.kx())
        .collect();
    // TLS 1.2 servers with an ECDSA P-256 certificate (OpenSSL: nginx, HAProxy) refuse clients whose
    // supported_groups lacks P-256 (RFC 4492 §5.1 ties the certificate's curve to that list), as every real client
    // sends it: add it last. In TLS 1.3 only the first group gets a key share, so this costs nothing.
    if !groups
        .iter()
        .any(|g| g.name() == rustls::NamedGroup::secp256r1)
    {
        groups.push(aws_lc_rs::kx_group::SECP256R1);
    }
    let provider = Arc::new(CryptoProvider {
        kx_groups: groups,
        ..aws_lc_rs::default_provider()
    });
    let versions: &[&'static rustls::SupportedProtocolVersion] = if kind.is_tls13() {
        &[&version::TLS13]
    } else {
        &[&version::TLS12]
    };
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(provider)))
        .with_no_client_auth();
    config.alpn_protocols = opts.alpn.clone();
    let store = Arc::new(store.namespaced(kind.name()));
    config.resumption = match kind {
        Kind::Full13 | Kind::Full12 => Resumption::disabled(),
        Kind::Resume13 | Kind::Resume12Ticket => Resumption::store(store),
        Kind::Resume12Id => {
            Resumption::store(store).tls12_resumption(Tls12Resumption::SessionIdOnly)
        }
    };
    Ok(config)
}
