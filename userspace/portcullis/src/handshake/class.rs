//! Handshake classes, decided from the ClientHello before any crypto, so admission control can price and
//! order handshakes before paying for them.

use rustls::SignatureAlgorithm;
use rustls::server::Accepted;

use super::inspect::HelloInfo;
use crate::tls::resolver::SniResolver;

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

    /// Classifies: a resumption offer from the raw ClientHello, else the key type of the certificate `certs`
    /// will choose for this SNI and these signature schemes (the same choice `into_connection` makes, read from
    /// the table built at load: the resolver itself runs once, in rustls).
    pub fn classify(hello: &HelloInfo, accepted: &Accepted, certs: &SniResolver) -> Self {
        if hello.offers_psk {
            return Self::Tls13Psk;
        }
        if hello.offers_tls12_ticket && !hello.offers_tls13 {
            return Self::Tls12Resumption;
        }
        let client_hello = accepted.client_hello();
        match certs.algorithm(client_hello.server_name(), client_hello.signature_schemes()) {
            Some(SignatureAlgorithm::RSA) => Self::FullRsa,
            _ => Self::FullEcdsa,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::{Acceptor, ResolvesServerCert};
    use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

    use super::*;
    use crate::tls::resolver::tests::{MODERN, RSA_ONLY, certs};

    /// A client verifier that offers `0` as its signature schemes (and checks nothing: no handshake completes).
    #[derive(Debug)]
    struct Offers(&'static [SignatureScheme]);

    impl ServerCertVerifier for Offers {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.to_vec()
        }
    }

    /// A real rustls ClientHello for `sni` offering `schemes`, accepted server-side, with our inspection of it.
    fn hello(sni: &str, schemes: &'static [SignatureScheme]) -> (HelloInfo, Accepted) {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Offers(schemes)))
            .with_no_client_auth();
        let name = ServerName::try_from(sni.to_owned()).expect("server name");
        let mut client = ClientConnection::new(Arc::new(config), name).expect("client");
        let mut raw = Vec::new();
        client.write_tls(&mut raw).expect("client hello");
        let mut acceptor = Acceptor::default();
        acceptor.read_tls(&mut raw.as_slice()).expect("read");
        let accepted = acceptor
            .accept()
            .ok()
            .flatten()
            .expect("a whole ClientHello");
        let info = HelloInfo::new(accepted.client_hello().server_name(), &raw);
        (info, accepted)
    }

    #[test]
    fn full_handshakes_take_the_key_type_rustls_will_choose() {
        let resolver = SniResolver::new(certs()).expect("resolver");
        let cases = [
            ("a.test", MODERN, HandshakeClass::FullEcdsa),
            ("a.test", RSA_ONLY, HandshakeClass::FullRsa),
            ("rsa.test", MODERN, HandshakeClass::FullRsa),
            ("b.test", MODERN, HandshakeClass::FullEcdsa),
            ("ed.test", MODERN, HandshakeClass::FullEcdsa),
            ("unknown.test", MODERN, HandshakeClass::FullEcdsa),
            ("unknown.test", RSA_ONLY, HandshakeClass::FullRsa),
        ];
        for (sni, schemes, want) in cases {
            let (info, accepted) = hello(sni, schemes);
            assert!(!info.offers_resumption(), "{sni}");
            let class = HandshakeClass::classify(&info, &accepted, &resolver);
            assert_eq!(class, want, "{sni} {schemes:?}");
            // The certificate rustls itself gets from the resolver, for the same ClientHello.
            let key = resolver
                .resolve(accepted.client_hello())
                .expect("a certificate");
            let rsa = key.key.algorithm() == SignatureAlgorithm::RSA;
            assert_eq!(rsa, class == HandshakeClass::FullRsa, "{sni} {schemes:?}");
        }
    }

    #[test]
    fn resumption_offers_come_first() {
        let resolver = SniResolver::new(certs()).expect("resolver");
        let (mut info, accepted) = hello("rsa.test", MODERN);
        info.offers_tls12_ticket = true;
        // A TLS 1.2 ticket counts only from a TLS 1.2-only client: one offering TLS 1.3 gets it, ticket ignored.
        assert_eq!(
            HandshakeClass::classify(&info, &accepted, &resolver),
            HandshakeClass::FullRsa
        );
        info.offers_tls13 = false;
        assert_eq!(
            HandshakeClass::classify(&info, &accepted, &resolver),
            HandshakeClass::Tls12Resumption
        );
        info.offers_psk = true;
        assert_eq!(
            HandshakeClass::classify(&info, &accepted, &resolver),
            HandshakeClass::Tls13Psk
        );
    }
}
