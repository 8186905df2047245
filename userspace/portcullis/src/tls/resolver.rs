//! Certificate choice by SNI.
//!
//! Exact names first, then the wildcard one label up (`*.example.com` answers `a.example.com`, not
//! `a.b.example.com`, RFC 6125 §6.4.3), then the default (first configured) certificate. When one name has
//! several certificates (say ECDSA and RSA), the first whose key can sign with a scheme the client offered wins,
//! so modern clients get ECDSA and old ones still get RSA, as nginx does with several `ssl_certificate` lines.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::LoadedCert;

/// Resolves a certificate from the SNI and signature schemes of a ClientHello.
#[derive(Debug)]
pub struct SniResolver {
    by_name: HashMap<String, Vec<Arc<CertifiedKey>>>,
    default: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Builds the resolver. The first certificate is the default; certificates that share its names are
    /// alternatives to it for clients that cannot use its key type. Returns `None` when `certs` is empty.
    pub fn new(certs: &[LoadedCert]) -> Option<Self> {
        let first = certs.first()?;
        let mut by_name: HashMap<String, Vec<Arc<CertifiedKey>>> = HashMap::new();
        for cert in certs {
            for name in &cert.names {
                by_name
                    .entry(name.to_ascii_lowercase())
                    .or_default()
                    .push(cert.key.clone());
            }
        }
        let mut default = vec![first.key.clone()];
        for cert in &certs[1..] {
            if cert.names.iter().any(|n| first.names.contains(n)) {
                default.push(cert.key.clone());
            }
        }
        Some(Self { by_name, default })
    }

    fn candidates(&self, sni: Option<&str>) -> &[Arc<CertifiedKey>] {
        let Some(name) = sni else {
            return &self.default;
        };
        // rustls hands us a validated DNS name, already lower-case.
        if let Some(found) = self.by_name.get(name) {
            return found;
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(found) = self.by_name.get(&format!("*.{parent}"))
        {
            return found;
        }
        &self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let candidates = self.candidates(hello.server_name());
        if let [only] = candidates {
            return Some(only.clone());
        }
        let schemes = hello.signature_schemes();
        candidates
            .iter()
            .find(|c| c.key.choose_scheme(schemes).is_some())
            .or(candidates.first())
            .cloned()
    }
}
