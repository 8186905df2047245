//! Inspection of the ClientHello, between reading it and paying for it.
//!
//! rustls' `ClientHello` exposes SNI, ALPN, cipher suites and signature schemes; what it hides (a PSK offer,
//! early_data, a TLS 1.2 session ticket, the fingerprint) comes from our own parse of the raw record with the
//! same no_std parser the XDP program uses (`portcullis_abi::client_hello`).

use portcullis_abi::client_hello::Fingerprint;

/// What we learned from a ClientHello before any crypto.
#[derive(Debug, Clone, Default)]
pub struct HelloInfo {
    /// The SNI host name, if sent.
    pub sni: Option<String>,
    /// The client offered TLS 1.3 (supported_versions).
    pub offers_tls13: bool,
    /// A TLS 1.3 pre_shared_key offer (resumption attempt).
    pub offers_psk: bool,
    /// The early_data extension (0-RTT attempt).
    pub offers_early_data: bool,
    /// A non-empty TLS 1.2 session_ticket (resumption attempt).
    pub offers_tls12_ticket: bool,
    /// A non-empty legacy session id (TLS 1.2 session-ID resumption attempt, or TLS 1.3 middlebox compat).
    pub session_id_len: u8,
    /// Both fingerprints (legacy version, ciphers, extension types in order or as a set, groups; GREASE
    /// removed), from a complete ClientHello: the values `portcullis xdp block-fingerprint` blocks.
    pub fingerprint: Option<Fingerprint>,
    /// Our parser found the ClientHello malformed although rustls accepted it (the reason's name). The XDP
    /// guard would drop such a hello; here it is only logged.
    pub malformed: Option<&'static str>,
    /// The first PSK identity and its obfuscated ticket age (for the early-data step's store fetch).
    pub psk: Option<super::psk::PskOffer>,
}

impl HelloInfo {
    /// Builds the inspection from rustls' view and the raw bytes the client sent first.
    pub fn new(sni: Option<&str>, raw: &[u8]) -> Self {
        let mut info = HelloInfo {
            sni: sni.map(str::to_owned),
            ..Default::default()
        };
        raw_facts(raw, &mut info);
        if info.offers_psk {
            info.psk = super::psk::first_psk(raw);
        }
        info
    }

    /// Whether the client tries to resume (ticket, PSK or TLS 1.2 session ID with a ticket-less server).
    pub fn offers_resumption(&self) -> bool {
        self.offers_psk || self.offers_tls12_ticket
    }
}

/// Whether the first bytes can be the start of a TLS handshake record (content type 22, major version 3).
/// Used to label garbage as `not_tls` rather than a protocol error.
pub fn looks_like_tls(raw: &[u8]) -> bool {
    matches!(raw, [] | [22] | [22, 3, ..])
}

fn raw_facts(raw: &[u8], info: &mut HelloInfo) {
    use portcullis_abi::client_hello;
    match client_hello::parse(raw) {
        Ok(summary) => {
            info.offers_tls13 = summary.offers_tls13;
            info.offers_psk = summary.offers_psk;
            info.offers_early_data = summary.offers_early_data;
            info.offers_tls12_ticket = summary.tls12_ticket;
            info.session_id_len = summary.session_id_len;
            info.fingerprint = summary.fingerprint;
            info.malformed = None;
        }
        Err(reason) => info.malformed = Some(reason.name()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A captured ClientHello from the ABI crate's fixtures.
    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../ebpf/portcullis-abi/fixtures/client_hello/"
        );
        std::fs::read(format!("{path}{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    #[test]
    fn real_client_hellos() {
        let cases = [
            // (fixture, tls13, psk, early_data, tls12 ticket)
            ("curl_sni.bin", true, false, false, false),
            ("openssl_tls12.bin", false, false, false, false),
            ("openssl_tls12_ticket.bin", false, false, false, true),
            ("openssl_tls13.bin", true, false, false, false),
            ("openssl_tls13_psk_early_data.bin", true, true, true, false),
            ("rustls_x25519.bin", true, false, false, false),
            ("rustls_x25519mlkem768.bin", true, false, false, false),
            ("rustls_tls13_psk.bin", true, true, false, false),
            ("rustls_tls12_ticket.bin", false, false, false, true),
            ("python_default.bin", true, false, false, false),
        ];
        for (name, tls13, psk, early, ticket) in cases {
            let info = HelloInfo::new(None, &fixture(name));
            assert_eq!(info.malformed, None, "{name}");
            assert_eq!(
                (
                    info.offers_tls13,
                    info.offers_psk,
                    info.offers_early_data,
                    info.offers_tls12_ticket
                ),
                (tls13, psk, early, ticket),
                "{name}"
            );
            assert!(
                info.fingerprint.is_some(),
                "{name}: complete hello has a fingerprint"
            );
        }
    }

    #[test]
    fn truncated_hellos_never_error_or_panic() {
        let hello = fixture("rustls_x25519mlkem768.bin");
        for cut in 0..hello.len() {
            let info = HelloInfo::new(None, &hello[..cut]);
            assert_eq!(info.malformed, None, "prefix of {cut} bytes");
        }
    }

    #[test]
    fn malformed_hellos_are_named() {
        let mut hello = fixture("curl_sni.bin");
        // Handshake type 2 (ServerHello) instead of ClientHello.
        hello[5] = 2;
        let info = HelloInfo::new(None, &hello);
        assert!(info.malformed.is_some());
        assert!(!looks_like_tls(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_tls(&[22, 3]));
        assert!(looks_like_tls(&[22]));
    }
}
