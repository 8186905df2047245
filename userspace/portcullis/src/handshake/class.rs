//! Handshake classes, decided from the ClientHello before any crypto, so admission control can price and
//! order handshakes before paying for them.

use rustls::ServerConfig;
use rustls::server::Accepted;

use super::inspect::HelloInfo;

/// What a handshake will cost, roughly, decided before any crypto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeClass {
    /// TLS 1.2 resumption offer (a non-empty session ticket).
    Tls12Resumption,
    /// TLS 1.3 PSK offer (a ticket from an earlier connection).
    Tls13Psk,
    /// Full handshake signed with an ECDSA (or Ed25519) certificate.
    FullEcdsa,
    /// Full handshake signed with an RSA certificate (several times the cost of ECDSA).
    FullRsa,
}

impl HandshakeClass {
    /// Every class, for metric initialisation.
    pub const ALL: [HandshakeClass; 4] = [
        Self::Tls12Resumption,
        Self::Tls13Psk,
        Self::FullEcdsa,
        Self::FullRsa,
    ];

    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tls12Resumption => "tls12_resumption",
            Self::Tls13Psk => "tls13_psk",
            Self::FullEcdsa => "full_ecdsa",
            Self::FullRsa => "full_rsa",
        }
    }

    /// Index into per-class arrays.
    pub fn index(self) -> usize {
        match self {
            Self::Tls12Resumption => 0,
            Self::Tls13Psk => 1,
            Self::FullEcdsa => 2,
            Self::FullRsa => 3,
        }
    }

    /// Whether the client offers to resume (cheaper, and served first under pressure).
    pub fn is_resumption(self) -> bool {
        matches!(self, Self::Tls12Resumption | Self::Tls13Psk)
    }

    /// Classifies: a resumption offer from the raw ClientHello, else the key type of the certificate the
    /// resolver will choose for this SNI and these signature schemes (the same choice `into_connection` makes).
    pub fn classify(hello: &HelloInfo, accepted: &Accepted, config: &ServerConfig) -> Self {
        if hello.offers_psk {
            return Self::Tls13Psk;
        }
        if hello.offers_tls12_ticket && !hello.offers_tls13 {
            return Self::Tls12Resumption;
        }
        let key = config.cert_resolver.resolve(accepted.client_hello());
        match key.map(|k| k.key.algorithm()) {
            Some(rustls::SignatureAlgorithm::RSA) => Self::FullRsa,
            _ => Self::FullEcdsa,
        }
    }
}
