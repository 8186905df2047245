//! What the parser learned from the bytes a client sent first.

use super::Fingerprint;

/// How far the parser got: the ClientHello field in which the input (or the first record) ended.
///
/// Ordered: a later stage means more of the ClientHello was seen. Useful as a metric label for
/// connections judged on a prefix, e.g. clients that split the record header across segments.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The 5-byte TLS record header.
    RecordHeader = 0,
    /// The 4-byte handshake header (type and 24-bit length).
    HandshakeHeader = 1,
    /// legacy_version.
    LegacyVersion = 2,
    /// The 32-byte random.
    Random = 3,
    /// legacy_session_id.
    SessionId = 4,
    /// cipher_suites.
    CipherSuites = 5,
    /// legacy_compression_methods.
    CompressionMethods = 6,
    /// The extensions block, or the psk/early-data checks that need all of it.
    Extensions = 7,
    /// Nothing is missing: the whole ClientHello was parsed.
    Done = 8,
}

impl Stage {
    /// The snake_case metric label, e.g. `"cipher_suites"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RecordHeader => "record_header",
            Self::HandshakeHeader => "handshake_header",
            Self::LegacyVersion => "legacy_version",
            Self::Random => "random",
            Self::SessionId => "session_id",
            Self::CipherSuites => "cipher_suites",
            Self::CompressionMethods => "compression_methods",
            Self::Extensions => "extensions",
            Self::Done => "done",
        }
    }
}

/// Where the SNI host name lies in the parser's input: `input[offset..offset + len]`.
///
/// The declared length is reported even when the name had not fully arrived;
/// [`ClientHelloSummary::sni`] returns the bytes only when all of them are present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SniRange {
    /// Offset of the first host name byte from the start of the input, in bytes.
    pub offset: u16,
    /// Declared host name length, in bytes (at least 1).
    pub len: u16,
}

/// Number of key share groups a summary keeps; real clients send one to three.
pub const KEY_SHARE_SLOTS: usize = 4;

/// Everything [`parse`](super::parse) learned from a ClientHello or a prefix of one.
///
/// Fields describing parts the input did not reach keep their zero value (`false`, `0`, `None`);
/// [`ClientHelloSummary::stage`] says how far the input reached. This is a Rust value for code on
/// either side of the ABI, not a map value: copy what a map needs into a `#[repr(C)]` type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientHelloSummary {
    /// The whole ClientHello was present and parsed; every field below is final.
    pub complete: bool,
    /// The ClientHello continues in a second TLS record (RFC 8446 §5.1 allows handshake
    /// fragmentation; ClientHellos over 2^14 bytes need it, DPI-evasion tools use it). Its fields
    /// were judged in the first record, the records after it by their headers (see the
    /// `client_hello` module docs), and more bytes will not change that.
    pub fragmented: bool,
    /// The field in which the input or the first record ended; [`Stage::Done`] when complete.
    pub stage: Stage,
    /// legacy_record_version of the first record (e.g. 0x0301).
    pub record_version: u16,
    /// Length of the first record's payload, in bytes.
    pub record_len: u16,
    /// The ClientHello's declared length, in bytes, excluding the 4-byte handshake header.
    pub handshake_len: u32,
    /// The ClientHello's legacy_version (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// Length of legacy_session_id, in bytes (0..=32; 32 for TLS 1.3 middlebox compatibility or
    /// a TLS 1.2 session resumption attempt).
    pub session_id_len: u8,
    /// Number of cipher suites declared, GREASE included.
    pub cipher_suite_count: u16,
    /// Number of extensions seen, GREASE included.
    pub extension_count: u16,
    /// supported_versions lists TLS 1.3 (0x0304).
    pub offers_tls13: bool,
    /// The server_name host name, if the extension was seen.
    pub sni: Option<SniRange>,
    /// pre_shared_key is present: a TLS 1.3 resumption (or external PSK) offer.
    pub offers_psk: bool,
    /// early_data is present: the client intends to send 0-RTT data.
    pub offers_early_data: bool,
    /// session_ticket is present and non-empty: a TLS 1.2 ticket resumption offer (an empty one
    /// merely asks for a ticket).
    pub tls12_ticket: bool,
    /// application_layer_protocol_negotiation is present.
    pub alpn_present: bool,
    /// signature_algorithms is present.
    pub signature_algorithms_present: bool,
    /// The first [`KEY_SHARE_SLOTS`] non-GREASE key_share groups, in wire order; see
    /// [`ClientHelloSummary::key_share_groups`].
    pub key_shares: [u16; KEY_SHARE_SLOTS],
    /// Number of non-GREASE key_share entries seen (may exceed [`KEY_SHARE_SLOTS`]).
    pub key_share_count: u8,
    /// The fingerprints; `Some` exactly when `complete`, since a prefix would hash differently
    /// depending on where the client's segments happened to end.
    pub fingerprint: Option<Fingerprint>,
}

impl ClientHelloSummary {
    /// The summary of zero bytes.
    pub(super) const EMPTY: Self = Self {
        complete: false,
        fragmented: false,
        stage: Stage::RecordHeader,
        record_version: 0,
        record_len: 0,
        handshake_len: 0,
        legacy_version: 0,
        session_id_len: 0,
        cipher_suite_count: 0,
        extension_count: 0,
        offers_tls13: false,
        sni: None,
        offers_psk: false,
        offers_early_data: false,
        tls12_ticket: false,
        alpn_present: false,
        signature_algorithms_present: false,
        key_shares: [0; KEY_SHARE_SLOTS],
        key_share_count: 0,
        fingerprint: None,
    };

    /// Whether more bytes from the same connection would let the parser see more: the input
    /// ended inside the first record before the ClientHello did.
    pub const fn needs_more_bytes(&self) -> bool {
        !self.complete && !self.fragmented
    }

    /// Whether a server_name extension was seen.
    pub const fn sni_present(&self) -> bool {
        self.sni.is_some()
    }

    /// The SNI host name bytes, if the extension was seen and the whole name is in `input`
    /// (the same bytes that were parsed, or a longer read of the same connection).
    pub fn sni<'a>(&self, input: &'a [u8]) -> Option<&'a [u8]> {
        let range = self.sni?;
        let start = usize::from(range.offset);
        input.get(start..start.checked_add(usize::from(range.len))?)
    }

    /// The key_share groups kept, in wire order, GREASE left out.
    pub fn key_share_groups(&self) -> &[u16] {
        let kept = usize::from(self.key_share_count).min(KEY_SHARE_SLOTS);
        self.key_shares.get(..kept).unwrap_or(&[])
    }

    /// Whether `group` (e.g. [`group::X25519_MLKEM768`](super::group::X25519_MLKEM768)) is among
    /// the key_share groups kept.
    pub fn offers_key_share(&self, group: u16) -> bool {
        self.key_share_groups().contains(&group)
    }
}
