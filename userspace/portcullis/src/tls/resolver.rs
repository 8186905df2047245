//! Certificate choice by SNI.
//!
//! Exact names first, then the wildcard one label up (`*.example.com` answers `a.example.com`, not
//! `a.b.example.com`, RFC 6125 §6.4.3), then the default (first configured) certificate. When one name has
//! several certificates (say ECDSA and RSA), the first whose key can sign with a scheme the client offered wins,
//! so modern clients get ECDSA and old ones still get RSA, as nginx does with several `ssl_certificate` lines.
//!
//! The table is swapped whole on reload ([`SniResolver::replace`]): a handshake resolves its certificate once,
//! so one in flight keeps the certificate it got, and the next one sees the new table.
//!
//! The signature schemes each key can sign with are worked out once, when the certificates load, so the same
//! choice can be asked for twice at the cost of a table lookup: by rustls (`resolve`, inside
//! `Accepted::into_connection`) and, before that, by admission control, which only needs the key type
//! ([`SniResolver::algorithm`]) to price the handshake.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{SignatureAlgorithm, SignatureScheme};

use super::certs::LoadedCert;

/// Resolves a certificate from the SNI and signature schemes of a ClientHello.
#[derive(Debug)]
pub struct SniResolver {
    table: RwLock<Arc<Table>>,
}

/// One certificate table, built at load and never changed (a reload builds a new one).
#[derive(Debug)]
struct Table {
    by_name: HashMap<String, Vec<Candidate>>,
    default: Vec<Candidate>,
}

impl SniResolver {
    /// Builds the resolver. The first certificate is the default; certificates that share its names are
    /// alternatives to it for clients that cannot use its key type. Returns `None` when `certs` is empty.
    pub fn new(certs: &[LoadedCert]) -> Option<Self> {
        Some(Self {
            table: RwLock::new(Arc::new(Table::new(certs)?)),
        })
    }

    /// Swaps in the table of `certs`, whole; `false` (and the old table kept) when `certs` is empty.
    pub fn replace(&self, certs: &[LoadedCert]) -> bool {
        let Some(table) = Table::new(certs) else {
            return false;
        };
        let table = Arc::new(table);
        match self.table.write() {
            Ok(mut t) => *t = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
        true
    }

    fn current(&self) -> Arc<Table> {
        // A poisoned lock only means a panic while swapping an `Arc`: the value is whole.
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The signature algorithm of the certificate [`ResolvesServerCert::resolve`] chooses for this SNI and these
    /// offered schemes: the same choice, from the table built at load, without a signer or a key clone.
    pub fn algorithm(
        &self,
        sni: Option<&str>,
        offered: &[SignatureScheme],
    ) -> Option<SignatureAlgorithm> {
        self.current().choose(sni, offered).map(|c| c.algorithm)
    }
}

impl Table {
    fn new(certs: &[LoadedCert]) -> Option<Self> {
        let first = certs.first()?;
        let candidates: Vec<Candidate> = certs.iter().map(|c| Candidate::new(&c.key)).collect();
        let mut by_name: HashMap<String, Vec<Candidate>> = HashMap::new();
        for (cert, candidate) in certs.iter().zip(&candidates) {
            for name in &cert.names {
                by_name
                    .entry(name.to_ascii_lowercase())
                    .or_default()
                    .push(candidate.clone());
            }
        }
        let mut default = Vec::new();
        for (i, (cert, candidate)) in certs.iter().zip(&candidates).enumerate() {
            if i == 0 || cert.names.iter().any(|n| first.names.contains(n)) {
                default.push(candidate.clone());
            }
        }
        Some(Self { by_name, default })
    }

    /// The one choice both `resolve` and [`Self::algorithm`] report.
    fn choose(&self, sni: Option<&str>, offered: &[SignatureScheme]) -> Option<&Candidate> {
        let candidates = self.candidates(sni);
        if let [only] = candidates {
            return Some(only);
        }
        candidates
            .iter()
            .find(|c| c.can_sign(offered))
            .or(candidates.first())
    }

    fn candidates(&self, sni: Option<&str>) -> &[Candidate] {
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
        self.current()
            .choose(hello.server_name(), hello.signature_schemes())
            .map(|c| c.key.clone())
    }
}

/// One certificate with what it can sign, worked out at load.
#[derive(Debug, Clone)]
struct Candidate {
    key: Arc<CertifiedKey>,
    algorithm: SignatureAlgorithm,
    /// The schemes `key.key.choose_scheme` accepts, one by one.
    schemes: Vec<SignatureScheme>,
}

impl Candidate {
    fn new(key: &Arc<CertifiedKey>) -> Self {
        let schemes = ALL_SCHEMES
            .into_iter()
            .filter(|s| key.key.choose_scheme(&[*s]).is_some())
            .collect();
        Self {
            key: key.clone(),
            algorithm: key.key.algorithm(),
            schemes,
        }
    }

    /// Whether the key can sign with one of `offered` (what `choose_scheme(offered).is_some()` says, without
    /// building a signer).
    fn can_sign(&self, offered: &[SignatureScheme]) -> bool {
        self.schemes.iter().any(|s| offered.contains(s))
    }
}

/// Every signature scheme this rustls version names. The provider's keys (aws-lc-rs) sign only with named
/// schemes, so probing a key with each of these finds everything it can sign with (a test checks the table
/// against `choose_scheme`).
const ALL_SCHEMES: [SignatureScheme; 16] = [
    SignatureScheme::RSA_PKCS1_SHA1,
    SignatureScheme::ECDSA_SHA1_Legacy,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::ECDSA_NISTP521_SHA512,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::ED25519,
    SignatureScheme::ED448,
    SignatureScheme::ML_DSA_44,
    SignatureScheme::ML_DSA_65,
    SignatureScheme::ML_DSA_87,
];

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    /// Signature schemes a modern client offers (ECDSA first, as rustls and browsers do).
    pub(crate) const MODERN: &[SignatureScheme] = &[
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ED25519,
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PKCS1_SHA256,
    ];
    /// Signature schemes of a client that can only verify RSA.
    pub(crate) const RSA_ONLY: &[SignatureScheme] = &[
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PKCS1_SHA256,
    ];

    /// Test certificates, generated once per test binary (the RSA key takes a while):
    /// the default ECDSA one for `a.test` and `*.w.test`, an RSA alternative for `a.test` that also answers
    /// `rsa.test`, ECDSA for `b.test`, Ed25519 for `ed.test`.
    pub(crate) fn certs() -> &'static [LoadedCert] {
        static CERTS: OnceLock<Vec<LoadedCert>> = OnceLock::new();
        CERTS.get_or_init(|| {
            let ecdsa = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256);
            let rsa = || {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            };
            let ed = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519);
            vec![
                leaf(&["a.test", "*.w.test"], ecdsa().expect("ecdsa key")),
                leaf(&["a.test", "rsa.test"], rsa().expect("rsa key")),
                leaf(&["b.test"], ecdsa().expect("ecdsa key")),
                leaf(&["ed.test"], ed().expect("ed25519 key")),
            ]
        })
    }

    fn leaf(names: &[&str], key: rcgen::KeyPair) -> LoadedCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names.clone()).expect("params");
        let cert = params.self_signed(&key).expect("self-sign");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = CertifiedKey::from_der(vec![cert.der().clone()], der, &provider).expect("pair");
        LoadedCert {
            key: Arc::new(key),
            names,
            source: PathBuf::from("test"),
        }
    }

    /// The choice as `resolve` made it before the scheme table existed: asking each key's `choose_scheme`.
    fn reference<'a>(
        r: &'a Table,
        sni: Option<&str>,
        offered: &[SignatureScheme],
    ) -> Option<&'a Arc<CertifiedKey>> {
        let candidates = r.candidates(sni);
        if let [only] = candidates {
            return Some(&only.key);
        }
        candidates
            .iter()
            .find(|c| c.key.key.choose_scheme(offered).is_some())
            .or(candidates.first())
            .map(|c| &c.key)
    }

    #[test]
    fn choice_by_name_and_schemes() {
        let resolver = SniResolver::new(certs()).expect("resolver");
        let r = resolver.current();
        let (ecdsa, rsa, ed) = (
            Some(SignatureAlgorithm::ECDSA),
            Some(SignatureAlgorithm::RSA),
            Some(SignatureAlgorithm::ED25519),
        );
        let cases: [(Option<&str>, &[SignatureScheme], _); 14] = [
            // Several certificates for one name: the first the client can verify, else the first.
            (Some("a.test"), MODERN, ecdsa),
            (Some("a.test"), RSA_ONLY, rsa),
            (Some("a.test"), &[], ecdsa),
            // One certificate for the name: that one, whatever the client offers.
            (Some("rsa.test"), MODERN, rsa),
            (Some("b.test"), RSA_ONLY, ecdsa),
            (Some("ed.test"), MODERN, ed),
            // Wildcard one label up only.
            (Some("x.w.test"), RSA_ONLY, ecdsa),
            (Some("x.y.w.test"), RSA_ONLY, rsa),
            // Unknown name or no SNI: the default, with its RSA alternative for RSA-only clients.
            (Some("unknown.test"), MODERN, ecdsa),
            (Some("unknown.test"), RSA_ONLY, rsa),
            (None, MODERN, ecdsa),
            (None, RSA_ONLY, rsa),
            (None, &[SignatureScheme::ED25519], ecdsa),
            (None, &[], ecdsa),
        ];
        for (sni, offered, want) in cases {
            assert_eq!(
                resolver.algorithm(sni, offered),
                want,
                "{sni:?} {offered:?}"
            );
            let chosen = r.choose(sni, offered).map(|c| &c.key);
            let before = reference(&r, sni, offered);
            assert!(
                matches!((chosen, before), (Some(a), Some(b)) if Arc::ptr_eq(a, b)),
                "{sni:?} {offered:?}: the table chose differently from choose_scheme"
            );
        }
    }

    #[test]
    fn replace_swaps_the_whole_table_and_refuses_an_empty_one() {
        let all = certs();
        let r = SniResolver::new(all).expect("resolver");
        let before = r.current();
        // Only the RSA certificate of rsa.test: every name now resolves to it (it is the new default).
        let rsa_only: Vec<LoadedCert> = all
            .iter()
            .filter(|c| c.names.iter().any(|n| n == "rsa.test"))
            .map(|c| LoadedCert {
                key: c.key.clone(),
                names: c.names.clone(),
                source: c.source.clone(),
            })
            .collect();
        assert!(r.replace(&rsa_only));
        assert_eq!(
            r.algorithm(Some("a.test"), MODERN),
            Some(SignatureAlgorithm::RSA)
        );
        // A table taken before the swap (a handshake in flight) still answers from the old certificates.
        assert_eq!(
            before.choose(Some("a.test"), MODERN).map(|c| c.algorithm),
            Some(SignatureAlgorithm::ECDSA)
        );
        assert!(!r.replace(&[]), "an empty table must be refused");
        assert_eq!(r.algorithm(None, MODERN), Some(SignatureAlgorithm::RSA));
    }

    #[test]
    fn scheme_table_agrees_with_choose_scheme() {
        let r = SniResolver::new(certs()).expect("resolver").current();
        let offers: Vec<Vec<SignatureScheme>> = ALL_SCHEMES
            .iter()
            .map(|s| vec![*s])
            .chain([MODERN.to_vec(), RSA_ONLY.to_vec(), Vec::new()])
            .collect();
        for candidate in r.by_name.values().flatten() {
            assert!(!candidate.schemes.is_empty(), "{:?}", candidate.algorithm);
            for offered in &offers {
                assert_eq!(
                    candidate.can_sign(offered),
                    candidate.key.key.choose_scheme(offered).is_some(),
                    "{:?} {offered:?}",
                    candidate.algorithm
                );
            }
        }
    }
}
