//! Inspection of the ClientHello, between reading it and paying for it.
//!
//! rustls' `ClientHello` exposes SNI, ALPN, cipher suites and signature schemes; what it hides (a PSK offer,
//! early_data, a TLS 1.2 session ticket, the fingerprint) comes from our own parse of the raw bytes with the
//! same no_std parser the XDP program uses (`portcullis_abi::client_hello`).
//!
//! A ClientHello may span records (RFC 8446 §5.1). The parser judges one record, so [`HelloInfo::new`] first
//! reassembles the handshake message (records' headers stripped, payloads joined) and hands the parser that
//! message as a single record. The parser's offsets are 16-bit (it also runs in XDP), so a message longer than
//! one record may be ([`MAX_RECORD_LEN`], 2^14 + 2048 bytes) first loses the bodies of the extensions the
//! parser reads the type of only (padding, ECH, cookies, ...: [`without_unread_bodies`]), which keeps every
//! fact and the fingerprint; if it is still too long, or its framing does not add up, it is judged on its first
//! [`MAX_RECORD_LEN`] bytes: facts past them stay unknown, and it has no fingerprint.

use std::borrow::Cow;

use portcullis_abi::client_hello::{
    Fingerprint, HANDSHAKE_HEADER_LEN, MAX_RECORD_LEN, RECORD_HEADER_LEN,
};

/// Content type of a handshake record.
const HANDSHAKE: u8 = 22;

/// The extensions whose bodies `portcullis_abi::client_hello` reads (its `extensions.rs`): server_name,
/// supported_groups, pre_shared_key, early_data, supported_versions, key_share. Of session_ticket (35) it reads
/// whether the body is empty. It reads only the type of any other.
const BODIES_READ: [u16; 6] = [0, 10, 41, 42, 43, 51];
/// session_ticket.
const SESSION_TICKET: u16 = 35;

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
    /// Builds the inspection from rustls' view and the raw bytes the client sent first (records and all: the
    /// ClientHello is reassembled here).
    pub fn new(sni: Option<&str>, raw: &[u8]) -> Self {
        let mut info = HelloInfo {
            sni: sni.map(str::to_owned),
            ..Default::default()
        };
        let record = as_one_record(raw);
        raw_facts(&record, &mut info);
        if info.offers_psk {
            info.psk = super::psk::first_psk(&record);
        }
        info
    }

    /// Whether the client tries to resume (ticket, PSK or TLS 1.2 session ID with a ticket-less server).
    #[cfg(test)]
    pub fn offers_resumption(&self) -> bool {
        self.offers_psk || self.offers_tls12_ticket
    }
}

/// Whether the first bytes can be the start of a TLS record (a content type of RFC 8446 §5.1 or heartbeat,
/// 20..=24, then major version 3), or of an SSL 2.0-compatible CLIENT-HELLO offering SSL 3 or later (a
/// two-byte header with the top bit set, message type 1, major version 3: old clients, and tlsfuzzer). Used to
/// close on garbage silently, labelled `not_tls`, while TLS that is wrong (an alert or ChangeCipherSpec record
/// first, an SSL 2.0 hello: RFC 8446 Appendix D.5 negotiates nothing with one) gets rustls' answer, an alert,
/// and counts as a protocol error.
pub fn looks_like_tls(raw: &[u8]) -> bool {
    match raw {
        [] => true,
        [typ] => (20..=24).contains(typ) || typ & 0x80 != 0,
        [typ, _] if typ & 0x80 != 0 => true,
        [typ, _, msg] if typ & 0x80 != 0 => *msg == 1,
        [typ, _, msg, major, ..] if typ & 0x80 != 0 => *msg == 1 && *major == 3,
        [typ, major, ..] => (20..=24).contains(typ) && *major == 3,
    }
}

/// The length of the first handshake message in `raw` (the bytes a client sent first), header included, once
/// its 4-byte header has arrived, however the records split it; `None` before. Reads at most the headers of
/// the records before it and of its first four records.
pub fn first_message_len(raw: &[u8]) -> Option<usize> {
    let mut header = [0u8; HANDSHAKE_HEADER_LEN];
    let mut have = 0;
    for payload in handshake_payloads(raw) {
        for &byte in payload.iter().take(HANDSHAKE_HEADER_LEN - have) {
            *header.get_mut(have)? = byte;
            have += 1;
        }
        if have == HANDSHAKE_HEADER_LEN {
            let [_, a, b, c] = header;
            return Some(
                HANDSHAKE_HEADER_LEN
                    + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c)),
            );
        }
    }
    None
}

/// Where the first handshake record starts in `raw`: after the whole records of other types before it (warning
/// alerts rustls skips), or at the end of the last whole record when no handshake record has arrived.
pub fn leading_records_end(raw: &[u8]) -> usize {
    let mut at = 0;
    while let Some(&[typ, _, _, hi, lo]) = raw
        .get(at..)
        .and_then(|r| r.first_chunk::<RECORD_HEADER_LEN>())
    {
        let end = at + RECORD_HEADER_LEN + usize::from(u16::from_be_bytes([hi, lo]));
        if typ == HANDSHAKE || end > raw.len() {
            break;
        }
        at = end;
    }
    at
}

/// The handshake records' payloads in `raw` after [`leading_records_end`], the last one possibly cut short;
/// ends at the next record of another content type.
fn handshake_payloads(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = raw.get(leading_records_end(raw)..).unwrap_or_default();
    std::iter::from_fn(move || {
        let (&[typ, _, _, hi, lo], body) = rest.split_first_chunk::<RECORD_HEADER_LEN>()?;
        if typ != HANDSHAKE {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let (payload, next) = body.split_at_checked(len).unwrap_or((body, &[]));
        rest = next;
        Some(payload)
    })
}

/// The first handshake message of `raw`, reassembled from its records and framed as one record for the parser
/// (with the first record's version), cut at [`MAX_RECORD_LEN`] bytes (see the module docs). Bytes before the
/// first whole record header, or when the message has not all arrived, come back as they were.
///
/// The usual ClientHello, one record holding exactly the message, is that record already: it is borrowed, not
/// copied (no allocation per handshake, BENCHMARKS.md "Per-handshake overhead").
fn as_one_record(raw: &[u8]) -> Cow<'_, [u8]> {
    let start = leading_records_end(raw);
    let (Some(version), Some(len)) = (raw.get(start + 1..start + 3), first_message_len(raw)) else {
        return Cow::Borrowed(raw);
    };
    if let Some(&[HANDSHAKE, _, _, hi, lo]) = raw.get(start..).and_then(|r| r.first_chunk())
        && usize::from(u16::from_be_bytes([hi, lo])) == len
        && len <= MAX_RECORD_LEN
        && let Some(record) = raw.get(start..start + RECORD_HEADER_LEN + len)
    {
        return Cow::Borrowed(record);
    }
    let mut message = Vec::with_capacity(len);
    message.extend(handshake_payloads(raw).flatten().copied().take(len));
    if message.len() < len {
        return Cow::Borrowed(raw);
    }
    if message.len() > MAX_RECORD_LEN
        && let Some(compact) = without_unread_bodies(&message)
    {
        message = compact;
    }
    let kept = message.len().min(MAX_RECORD_LEN);
    let mut record = Vec::with_capacity(RECORD_HEADER_LEN + kept);
    record.push(HANDSHAKE);
    record.extend_from_slice(version);
    record.extend_from_slice(&u16::try_from(kept).unwrap_or(u16::MAX).to_be_bytes());
    record.extend_from_slice(message.get(..kept).unwrap_or_default());
    Cow::Owned(record)
}

/// A whole ClientHello `message` with the bodies of the extensions the parser does not read emptied (a
/// session_ticket cut to one byte) and its lengths adjusted: the parser finds the same facts and fingerprint
/// in it. `None` when the fixed fields or the extension framing do not add up to the message's length.
fn without_unread_bodies(message: &[u8]) -> Option<Vec<u8>> {
    let u16_at = |at: usize| {
        Some(usize::from(u16::from_be_bytes(
            *message.get(at..)?.first_chunk()?,
        )))
    };
    // type, length, legacy_version, random; then session id, cipher suites, compression methods.
    let mut at = HANDSHAKE_HEADER_LEN + 2 + 32;
    at += 1 + usize::from(*message.get(at)?);
    at += 2 + u16_at(at)?;
    at += 1 + usize::from(*message.get(at)?);
    let extensions_len = u16_at(at)?;
    let head = message.get(..at)?;
    let mut rest = message.get(at + 2..)?;
    if rest.len() != extensions_len {
        return None;
    }
    let mut extensions = Vec::new();
    while !rest.is_empty() {
        let (&[t0, t1, l0, l1], tail) = rest.split_first_chunk::<4>()?;
        let (body, next) = tail.split_at_checked(usize::from(u16::from_be_bytes([l0, l1])))?;
        let kind = u16::from_be_bytes([t0, t1]);
        let kept = match kind {
            k if BODIES_READ.contains(&k) => body,
            SESSION_TICKET => body.get(..1).unwrap_or_default(),
            _ => &[],
        };
        extensions.extend_from_slice(&[t0, t1]);
        extensions.extend_from_slice(&u16::try_from(kept.len()).ok()?.to_be_bytes());
        extensions.extend_from_slice(kept);
        rest = next;
    }
    let mut out = head.to_vec();
    out.extend_from_slice(&u16::try_from(extensions.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&extensions);
    let body_len = u32::try_from(out.len() - HANDSHAKE_HEADER_LEN)
        .ok()?
        .to_be_bytes();
    out.get_mut(1..HANDSHAKE_HEADER_LEN)?
        .copy_from_slice(body_len.get(1..)?);
    Some(out)
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
        // SSL 2.0-compatible CLIENT-HELLO headers (offering SSL 3 or TLS), and what is not one.
        assert!(looks_like_tls(&[0x80, 0x2e, 1, 3, 3]));
        assert!(looks_like_tls(&[0x80, 0x2e, 1]));
        assert!(!looks_like_tls(&[0x80, 0x2e, 2, 3, 3]));
        assert!(!looks_like_tls(&[0x80, 0x2e, 1, 2, 0]));
        assert!(!looks_like_tls(b"\x80\x2e\x01HTTP"));
    }

    /// The first record of `raw` re-framed as records whose payloads end at `cuts` (offsets into its payload),
    /// then the rest of `raw`.
    fn in_records(raw: &[u8], cuts: &[usize]) -> Vec<u8> {
        let (header, rest) = raw.split_at(RECORD_HEADER_LEN);
        let (message, after) =
            rest.split_at(usize::from(u16::from_be_bytes([header[3], header[4]])));
        let mut out = Vec::new();
        let mut start = 0;
        for end in cuts.iter().copied().chain([message.len()]) {
            let payload = &message[start..end];
            out.extend_from_slice(&header[..3]);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            out.extend_from_slice(payload);
            start = end;
        }
        out.extend_from_slice(after);
        out
    }

    #[test]
    fn a_hello_split_into_records_reads_as_the_whole() {
        for (name, hello, _) in portcullis_abi::hello_fixtures::CAPTURED {
            let whole = HelloInfo::new(None, hello);
            let len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
            // Some captures go on after the ClientHello's record (early data): the record alone is parsed.
            assert!(
                matches!(as_one_record(hello), Cow::Borrowed(r) if r == &hello[..RECORD_HEADER_LEN + len]),
                "{name}: one record is parsed in place"
            );
            for cuts in [
                vec![1],
                vec![3],
                vec![4],
                vec![40],
                vec![len / 2],
                vec![1, 2, 3, len - 1],
            ] {
                let split = in_records(hello, &cuts);
                assert_eq!(first_message_len(&split), Some(len), "{name} {cuts:?}");
                assert_eq!(
                    &*as_one_record(&split),
                    &hello[..RECORD_HEADER_LEN + len],
                    "{name} {cuts:?}"
                );
                let info = HelloInfo::new(None, &split);
                assert_eq!(info.malformed, None, "{name} {cuts:?}");
                assert_eq!(info.fingerprint, whole.fingerprint, "{name} {cuts:?}");
                assert_eq!(info.offers_psk, whole.offers_psk, "{name} {cuts:?}");
            }
        }
    }

    /// `raw`'s ClientHello with an unknown extension of `padding` bytes put first, as one record (its 16-bit
    /// length wraps above 64 KiB: callers re-frame it).
    fn padded(raw: &[u8], padding: usize) -> Vec<u8> {
        let len = usize::from(u16::from_be_bytes([raw[3], raw[4]]));
        let message = &raw[5..5 + len];
        let mut at = 4 + 2 + 32;
        at += 1 + usize::from(message[at]);
        at += 2 + usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
        at += 1 + usize::from(message[at]);
        let mut out = message[..at].to_vec();
        let ext_len = usize::from(u16::from_be_bytes([message[at], message[at + 1]])) + 4 + padding;
        out.extend_from_slice(&(ext_len as u16).to_be_bytes());
        out.extend_from_slice(&[0x77, 0x77]);
        out.extend_from_slice(&(padding as u16).to_be_bytes());
        out.extend(std::iter::repeat_n(0x5a, padding));
        out.extend_from_slice(&message[at + 2..]);
        let body_len = (out.len() - 4) as u32;
        out[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
        [&raw[..3], &(out.len() as u16).to_be_bytes(), &out].concat()
    }

    #[test]
    fn a_hello_longer_than_the_parser_record_keeps_its_facts() {
        for (name, hello, _) in portcullis_abi::hello_fixtures::CAPTURED {
            // The same extensions, one of them 40 KiB long in the second: three records.
            let small = HelloInfo::new(None, &padded(hello, 100));
            let big = padded(hello, 40 * 1024);
            let info = HelloInfo::new(None, &in_records(&big, &[16 * 1024, 32 * 1024]));
            assert_eq!(small.malformed, None, "{name}");
            assert!(small.fingerprint.is_some(), "{name}");
            assert_eq!(info.malformed, None, "{name}");
            assert_eq!(info.fingerprint, small.fingerprint, "{name}");
            assert_eq!(
                (
                    info.offers_tls13,
                    info.offers_psk,
                    info.offers_early_data,
                    info.offers_tls12_ticket
                ),
                (
                    small.offers_tls13,
                    small.offers_psk,
                    small.offers_early_data,
                    small.offers_tls12_ticket
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn a_hello_too_long_even_without_unread_bodies_is_judged_on_its_start() {
        use portcullis_abi::hello_fixtures::Hello;
        let mut hello = Hello::valid();
        // supported_versions, then a 40 KiB key share (a body the parser reads): in three records.
        hello.tail = portcullis_abi::hello_fixtures::extensions(&[
            (43, portcullis_abi::hello_fixtures::versions(&[0x0304])),
            (
                51,
                portcullis_abi::hello_fixtures::key_share(&[(0x001d, 32), (0x0200, 40 * 1024)]),
            ),
        ]);
        let record = hello.encode();
        let split = in_records(&record, &[16 * 1024, 32 * 1024]);
        assert_eq!(
            first_message_len(&split),
            Some(record.len() - RECORD_HEADER_LEN)
        );
        let info = HelloInfo::new(None, &split);
        assert_eq!(info.malformed, None);
        assert!(info.offers_tls13);
        assert_eq!(
            info.fingerprint, None,
            "a fingerprint needs the whole ClientHello"
        );
    }

    #[test]
    fn first_message_len_needs_the_whole_handshake_header() {
        let hello = fixture("curl_sni.bin");
        let len = hello.len() - RECORD_HEADER_LEN;
        for cut in 0..RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN {
            assert_eq!(first_message_len(&hello[..cut]), None, "{cut}");
        }
        assert_eq!(first_message_len(&hello[..9]), Some(len));
        assert_eq!(first_message_len(&[21, 3, 3, 0, 2, 2, 40]), None);
        let warning_first = [&[21, 3, 3, 0, 2, 1, 90][..], &hello].concat();
        assert_eq!(leading_records_end(&warning_first), 7);
        assert_eq!(first_message_len(&warning_first), Some(len));
        assert_eq!(leading_records_end(&warning_first[..6]), 0);
        assert!(
            looks_like_tls(&[21, 3, 3]),
            "an alert is TLS, refused by rustls"
        );
        assert!(!looks_like_tls(&[22, 4]));
    }
}
