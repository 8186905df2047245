//! Crafted ClientHellos for tests: a builder ([`Hello`]) and one malformed input per
//! [`Malformed`] reason ([`malformed_cases`]), ClientHellos spanning records ([`split_cases`]), plus the captured real ClientHellos ([`CAPTURED`]) and a seeded
//! mutator of them ([`Rng`], [`mutate`]).
//!
//! Host only (`user` feature or tests): it allocates. Shared by the parser's host tests
//! (`tests/client_hello.rs` includes this file by path) and the daemon's privileged test that wraps
//! every case in Ethernet/IP/TCP and runs it through the loaded XDP program.

use alloc::{vec, vec::Vec};

use super::client_hello::{
    HANDSHAKE_HEADER_LEN, MAX_EXTENSIONS, MAX_RECORD_LEN, Malformed, RECORD_HEADER_LEN, group,
};

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

/// One row of the table of ClientHellos spanning TLS records (RFC 8446 §5.1), as the first bytes of a connection.
pub struct SplitCase {
    /// What the row checks, for failure messages.
    pub description: &'static str,
    /// The client's first bytes (a first TCP segment takes at most its first MSS bytes).
    pub bytes: Vec<u8>,
    /// `None`: a legal ClientHello (or a prefix of one), to pass; else the reason it must be dropped for.
    pub malformed: Option<Malformed>,
}

/// The captured ClientHello `name`.
pub fn captured(name: &str) -> &'static [u8] {
    CAPTURED
        .iter()
        .find(|c| c.0 == name)
        .unwrap_or_else(|| panic!("no capture {name}"))
        .1
}

/// The handshake message of a ClientHello that fits its first record (the record header and any later records cut
/// off).
pub fn handshake_of(hello: &[u8]) -> &[u8] {
    let len = u32::from_be_bytes([0, hello[6], hello[7], hello[8]]) as usize;
    &hello[RECORD_HEADER_LEN..RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + len]
}

/// `handshake` in records of version 0x0301 carrying `sizes` bytes each, in order, then the rest (if any) in one
/// more record.
pub fn in_records(handshake: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = handshake;
    for size in sizes.iter().copied().chain([usize::MAX]) {
        if rest.is_empty() {
            break;
        }
        let (part, tail) = rest.split_at(size.min(rest.len()));
        out.extend_from_slice(&record(22, part));
        rest = tail;
    }
    out
}

/// A record of content type `kind` (version 0x0303) carrying `payload`.
pub fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind, 3, if kind == 22 { 1 } else { 3 }];
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The handshake message of the single-record ClientHello `hello` with one more extension, an unknown type carrying
/// `pad` bytes, as its first (so that a pre_shared_key stays last): `pad + 4` bytes longer.
fn with_padding_extension(hello: &[u8], pad: usize) -> Vec<u8> {
    let handshake = handshake_of(hello);
    // msg_type, length, legacy_version, random, then the session id.
    let mut at = HANDSHAKE_HEADER_LEN + 2 + 32;
    at += 1 + usize::from(handshake[at]);
    at += 2 + usize::from(u16::from_be_bytes([handshake[at], handshake[at + 1]]));
    at += 1 + usize::from(handshake[at]);
    // `at` is the extensions block's length.
    let block = usize::from(u16::from_be_bytes([handshake[at], handshake[at + 1]]));
    let mut out = handshake[..at].to_vec();
    out.extend_from_slice(&((block + 4 + pad) as u16).to_be_bytes());
    out.extend_from_slice(&0xfe77u16.to_be_bytes());
    out.extend_from_slice(&(pad as u16).to_be_bytes());
    out.extend(core::iter::repeat_n(0u8, pad));
    out.extend_from_slice(&handshake[at + 2..]);
    let body = (out.len() - HANDSHAKE_HEADER_LEN) as u32;
    out[1..4].copy_from_slice(&body.to_be_bytes()[1..]);
    out
}

/// The single-record ClientHello `hello` grown by an unknown extension to `total` handshake bytes (header included)
/// and framed in records of at most 2^14 bytes, as a TLS stack frames a message that does not fit one: a
/// ClientHello of `total` bytes in `total.div_ceil(16384)` records. `total` must exceed `hello`'s message by 4.
pub fn enlarged(hello: &[u8], total: usize) -> Vec<u8> {
    let pad = total - handshake_of(hello).len() - 4;
    let message = with_padding_extension(hello, pad);
    assert_eq!(message.len(), total);
    in_records(&message, &vec![1 << 14; total / (1 << 14)])
}

/// A TLS 1.3 ClientHello offering ML-KEM-1024 (group 0x0202, a 1,568-byte key) and SecP384r1MLKEM1024 (0x11ed,
/// 1,665 bytes) key shares, as post-quantum clients will: 3.3 KB, more than a TCP segment.
pub fn mlkem1024_hello() -> Vec<u8> {
    Hello::with_extensions(&[
        (0, sni("example.com")),
        (10, u16_list(&[0x0202, 0x11ed, group::X25519])),
        (13, u16_list(&[0x0403, 0x0804])),
        (43, versions(&[0x0304])),
        (51, key_share(&[(0x0202, 1568), (0x11ed, 1665)])),
    ])
    .encode()
}

/// The table of ClientHellos spanning records: legal ones, cut at or after a record boundary or not, pass; the
/// ones where the records contradict the message (a record of another type before its last byte, lengths that
/// disagree) are dropped for their reason. Run by the parser's host tests, through the loaded BPF program and in
/// the differential test of the two.
#[rustfmt::skip]
pub fn split_cases() -> Vec<SplitCase> {
    use Malformed::*;
    let curl = handshake_of(captured("curl_sni"));
    let pq = handshake_of(captured("rustls_x25519mlkem768"));
    let tls12 = handshake_of(captured("openssl_tls12"));
    let mlkem = mlkem1024_hello();
    let mlkem = handshake_of(&mlkem);
    let two = in_records(curl, &[100]);
    let first = RECORD_HEADER_LEN + 100;
    let ccs = record(20, &[1]);
    let alert = record(21, &[2, 10]);
    let app = record(23, &[0x17; 40]);
    // The curl ClientHello's first 100 bytes, then `next` in place of the rest.
    let then = |next: &[u8]| [&two[..first], next].concat();
    let with_len = |len: usize| {
        let mut header = record(22, &[])[..3].to_vec();
        header.extend_from_slice(&(len as u16).to_be_bytes());
        header
    };
    let row = |description, bytes: Vec<u8>, malformed| SplitCase {
        description,
        bytes,
        malformed,
    };
    vec![
        // What a first segment holds of legal ClientHellos spanning records.
        row("segment ends with the first of two records", two[..first].to_vec(), None),
        row("segment ends in the second record's header", two[..first + 3].to_vec(), None),
        row("both records in the segment", two.clone(), None),
        row("three records", in_records(curl, &[60, 150]), None),
        row("first record ends inside the handshake header", in_records(curl, &[2]), None),
        row("one-byte records first", in_records(curl, &[1, 1, 1, 1, 1]), None),
        row("a record per extension-sized chunk", in_records(curl, &[45, 45, 45, 45, 45, 45]), None),
        row("TLS 1.2 ClientHello in two records", in_records(tls12, &[80]), None),
        row("segment ends inside the first record", in_records(curl, &[150])[..90].to_vec(), None),
        row("then a ChangeCipherSpec and early data after the last byte", [in_records(curl, &[100]), ccs.clone(), app.clone()].concat(), None),
        row("post-quantum key share across two records", in_records(pq, &[600]), None),
        row("ML-KEM-1024 key shares across records", in_records(mlkem, &[1000, 1000]), None),
        row("ML-KEM-1024 key share split at the first record's end", in_records(mlkem, &[200]), None),
        row("40 KiB ClientHello in three records", enlarged(captured("rustls_x25519"), 40 * 1024), None),
        row("18 KiB ClientHello in two records", enlarged(captured("curl_sni"), 18 * 1024), None),
        // Records proving the ClientHello malformed before its last byte.
        row("ChangeCipherSpec after the first record", then(&ccs), Some(NotHandshakeRecord)),
        row("alert after the first record", then(&alert), Some(NotHandshakeRecord)),
        row("application data after the first record", then(&app), Some(NotHandshakeRecord)),
        row("only the type byte of a ChangeCipherSpec", then(&ccs[..1]), Some(NotHandshakeRecord)),
        row("ChangeCipherSpec after the second of three", [in_records(&curl[..200], &[100]), ccs.clone()].concat(), Some(NotHandshakeRecord)),
        row("ChangeCipherSpec after a cut handshake header", [in_records(&curl[..2], &[]), ccs.clone()].concat(), Some(NotHandshakeRecord)),
        row("empty continuation record", then(&with_len(0)), Some(EmptyRecord)),
        row("continuation record over 2^14 + 2048", then(&with_len(MAX_RECORD_LEN + 1)), Some(RecordTooLong)),
        row("continuation record version 2.1", then(&{ let mut r = record(22, &curl[100..]); r[1] = 2; r }), Some(BadRecordVersion)),
        row("records carry one byte past the ClientHello", then(&record(22, &[&curl[100..], &[0]].concat())), Some(HandshakeLengthMismatch)),
        row("continuation longer than the ClientHello's rest", then(&with_len(curl.len() - 100 + 1)), Some(HandshakeLengthMismatch)),
        row("third record one byte past the end", [in_records(&curl[..curl.len() - 50], &[100]), record(22, &[&curl[curl.len() - 50..], &[0]].concat())].concat(), Some(HandshakeLengthMismatch)),
    ]
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
