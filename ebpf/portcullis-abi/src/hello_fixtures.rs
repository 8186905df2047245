//! Crafted ClientHellos for tests: a builder ([`Hello`]) and one malformed input per
//! [`Malformed`] reason ([`malformed_cases`]), plus the captured real ClientHellos ([`CAPTURED`]) and a seeded
//! mutator of them ([`Rng`], [`mutate`]).
//!
//! Host only (`user` feature or tests): it allocates. Shared by the parser's host tests
//! (`tests/client_hello.rs` includes this file by path) and the daemon's privileged test that wraps
//! every case in Ethernet/IP/TCP and runs it through the loaded XDP program.

use alloc::{vec, vec::Vec};

use super::client_hello::{MAX_EXTENSIONS, Malformed, RECORD_HEADER_LEN, group};

/// The captured ClientHellos of `fixtures/client_hello/` (see its README): name, bytes, and whether
/// the client offers resumption (a TLS 1.3 PSK or a TLS 1.2 ticket).
pub const CAPTURED: &[(&str, &[u8], bool)] = &[
    (
        "curl_no_sni",
        include_bytes!("../fixtures/client_hello/curl_no_sni.bin"),
        false,
    ),
    (
        "curl_sni",
        include_bytes!("../fixtures/client_hello/curl_sni.bin"),
        false,
    ),
    (
        "openssl_tls12",
        include_bytes!("../fixtures/client_hello/openssl_tls12.bin"),
        false,
    ),
    (
        "openssl_tls12_ticket",
        include_bytes!("../fixtures/client_hello/openssl_tls12_ticket.bin"),
        true,
    ),
    (
        "openssl_tls13",
        include_bytes!("../fixtures/client_hello/openssl_tls13.bin"),
        false,
    ),
    (
        "openssl_tls13_psk_early_data",
        include_bytes!("../fixtures/client_hello/openssl_tls13_psk_early_data.bin"),
        true,
    ),
    (
        "python_default",
        include_bytes!("../fixtures/client_hello/python_default.bin"),
        false,
    ),
    (
        "rustls_tls12_ticket",
        include_bytes!("../fixtures/client_hello/rustls_tls12_ticket.bin"),
        true,
    ),
    (
        "rustls_tls13_psk",
        include_bytes!("../fixtures/client_hello/rustls_tls13_psk.bin"),
        true,
    ),
    (
        "rustls_tls13_psk_early_data",
        include_bytes!("../fixtures/client_hello/rustls_tls13_psk_early_data.bin"),
        true,
    ),
    (
        "rustls_x25519",
        include_bytes!("../fixtures/client_hello/rustls_x25519.bin"),
        false,
    ),
    (
        "rustls_x25519mlkem768",
        include_bytes!("../fixtures/client_hello/rustls_x25519mlkem768.bin"),
        false,
    ),
];

/// A ClientHello built from parts, for crafted inputs.
#[derive(Clone)]
pub struct Hello {
    pub record_version: u16,
    pub legacy_version: u16,
    pub session_id: Vec<u8>,
    /// Raw cipher_suites vector contents.
    pub suites: Vec<u8>,
    pub compression: Vec<u8>,
    /// Everything after compression_methods, raw (normally [`extensions`] of some list).
    pub tail: Vec<u8>,
}

impl Hello {
    /// A plausible TLS 1.3 ClientHello with GREASE, SNI, groups, versions and a key share.
    pub fn valid() -> Self {
        Self::with_extensions(&[
            (0x0a0a, vec![]),
            (0, sni("example.com")),
            (10, u16_list(&[0x2a2a, group::X25519, group::SECP256R1])),
            (13, u16_list(&[0x0403, 0x0804])),
            (16, alpn()),
            (43, versions(&[0x3a3a, 0x0304, 0x0303])),
            (51, key_share(&[(0x2a2a, 1), (group::X25519, 32)])),
            (0x1a1a, vec![0]),
        ])
    }

    pub fn with_extensions(list: &[(u16, Vec<u8>)]) -> Self {
        Self {
            record_version: 0x0301,
            legacy_version: 0x0303,
            session_id: vec![7; 32],
            suites: u16s(&[0x5a5a, 0x1301, 0x1302, 0xc02b]),
            compression: vec![0],
            tail: extensions(list),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.legacy_version.to_be_bytes());
        body.extend_from_slice(&[0x42; 32]);
        body.push(self.session_id.len() as u8);
        body.extend_from_slice(&self.session_id);
        body.extend_from_slice(&(self.suites.len() as u16).to_be_bytes());
        body.extend_from_slice(&self.suites);
        body.push(self.compression.len() as u8);
        body.extend_from_slice(&self.compression);
        body.extend_from_slice(&self.tail);
        let mut handshake = vec![1];
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        let mut record = vec![22];
        record.extend_from_slice(&self.record_version.to_be_bytes());
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }
}

pub fn u16s(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

/// A u16-length-prefixed vector.
pub fn vec16(contents: &[u8]) -> Vec<u8> {
    let mut out = (contents.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(contents);
    out
}

pub fn u16_list(values: &[u16]) -> Vec<u8> {
    vec16(&u16s(values))
}

pub fn extensions(list: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (kind, body) in list {
        block.extend_from_slice(&kind.to_be_bytes());
        block.extend_from_slice(&vec16(body));
    }
    vec16(&block)
}

pub fn sni(host: &str) -> Vec<u8> {
    let mut entry = vec![0];
    entry.extend_from_slice(&vec16(host.as_bytes()));
    vec16(&entry)
}

pub fn alpn() -> Vec<u8> {
    vec16(b"\x02h2\x08http/1.1")
}

pub fn versions(list: &[u16]) -> Vec<u8> {
    let mut out = vec![(list.len() * 2) as u8];
    out.extend_from_slice(&u16s(list));
    out
}

pub fn key_share(entries: &[(u16, usize)]) -> Vec<u8> {
    let mut list = Vec::new();
    for (group, len) in entries {
        list.extend_from_slice(&group.to_be_bytes());
        list.extend_from_slice(&vec16(&vec![0x55; *len]));
    }
    vec16(&list)
}

/// A well-framed pre_shared_key body: one identity, one 32-byte binder.
pub fn psk() -> Vec<u8> {
    let mut identity = vec16(b"ticket");
    identity.extend_from_slice(&[0, 0, 0, 1]);
    let mut body = vec16(&identity);
    let mut binder = vec![32];
    binder.extend_from_slice(&[0x33; 32]);
    body.extend_from_slice(&vec16(&binder));
    body
}

pub fn set_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// One crafted input per reason.
pub fn malformed_cases() -> Vec<(Malformed, Vec<u8>)> {
    use Malformed::*;
    let valid = Hello::valid();
    let with = |list: &[(u16, Vec<u8>)]| Hello::with_extensions(list).encode();
    let mut cases = vec![
        (NotHandshakeRecord, b"GET / HTTP/1.1\r\n".to_vec()),
        (
            BadRecordVersion,
            Hello {
                record_version: 0x0201,
                ..valid.clone()
            }
            .encode(),
        ),
        (EmptyRecord, vec![22, 3, 1, 0, 0]),
        (RecordTooLong, vec![22, 3, 1, 0x48, 0x01]),
        (NotClientHello, vec![22, 3, 3, 0, 4, 2, 0, 0, 0]),
        (HandshakeTooLong, vec![22, 3, 1, 0x40, 0, 1, 1, 0, 0]),
        (
            BadLegacyVersion,
            Hello {
                legacy_version: 0x0203,
                ..valid.clone()
            }
            .encode(),
        ),
        (
            SessionIdTooLong,
            Hello {
                session_id: vec![1; 33],
                ..valid.clone()
            }
            .encode(),
        ),
        (
            CipherSuitesOddLength,
            Hello {
                suites: vec![0x13, 0x01, 0x13],
                ..valid.clone()
            }
            .encode(),
        ),
        (
            CipherSuitesEmpty,
            Hello {
                suites: vec![],
                ..valid.clone()
            }
            .encode(),
        ),
        (
            CompressionMethodsEmpty,
            Hello {
                compression: vec![],
                ..valid.clone()
            }
            .encode(),
        ),
        (
            CompressionNullMissing,
            Hello {
                compression: vec![1],
                ..valid.clone()
            }
            .encode(),
        ),
        (
            ExtensionsLengthMismatch,
            Hello {
                tail: vec![0, 5, 0, 0, 0, 0],
                ..valid.clone()
            }
            .encode(),
        ),
        (
            ExtensionFramingBroken,
            Hello {
                tail: vec16(&[0, 16, 0, 9, 0]),
                ..valid.clone()
            }
            .encode(),
        ),
        (
            TooManyExtensions,
            with(
                &(0..=MAX_EXTENSIONS as u16)
                    .map(|i| (100 + i, vec![]))
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            DuplicateExtension,
            with(&[(16, alpn()), (0, sni("a.example")), (16, alpn())]),
        ),
        (
            PskNotLast,
            with(&[(45, vec![1, 1]), (41, psk()), (0, sni("a.example"))]),
        ),
        (BadSniFraming, with(&[(0, vec16(&[0, 0, 0]))])),
        (BadSupportedVersions, with(&[(43, vec![3, 3, 4, 3])])),
        (BadSupportedGroups, with(&[(10, vec16(&[]))])),
        (BadKeyShare, with(&[(51, key_share(&[(group::X25519, 0)]))])),
        (
            BadPskFraming,
            with(&[(45, vec![1, 1]), (41, vec![0, 3, 0, 1, 0])]),
        ),
        (BadEarlyData, with(&[(42, vec![0])])),
        (PskWithoutKeyExchangeModes, with(&[(41, psk())])),
        (EarlyDataWithoutPsk, with(&[(42, vec![]), (45, vec![1, 1])])),
    ];
    // The record carries one byte more than the ClientHello claims.
    let mut longer_record = valid.encode();
    let record_len = longer_record.len() - RECORD_HEADER_LEN + 1;
    set_u16(&mut longer_record, 3, record_len as u16);
    longer_record.push(0);
    cases.push((HandshakeLengthMismatch, longer_record));
    cases
}

/// xorshift64*: a tiny deterministic generator, so a failure reproduces from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Applies 1–4 random edits: bit flips, byte overwrites (often at length fields' small values),
/// insertions, deletions and truncation.
pub fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len());
        match rng.below(5) {
            0 if !bytes.is_empty() => bytes[at] ^= 1 << rng.below(8),
            1 if !bytes.is_empty() => {
                bytes[at] = [0, 1, 0xff, 0x0a, 0x29, rng.next_u64() as u8][rng.below(6)]
            }
            2 => bytes.insert(at, rng.next_u64() as u8),
            3 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}
