//! One bounded, allocation-free parser for the TLS ClientHello, shared by XDP and userspace.
//!
//! # Layout
//! - this file: [`parse`], the limits, and the record/handshake/body walk;
//! - `summary`: [`ClientHelloSummary`], what a parse returns, with [`Stage`] and [`SniRange`];
//! - `malformed`: [`Malformed`], the reasons a ClientHello is rejected;
//! - `extensions`: the extension list;
//! - [`fingerprint`]: the 64-bit fingerprint and its exact byte layout;
//! - `reader`: the bounds-checked cursor everything reads through.
//!
//! # Input and verdicts
//! The input is the first bytes a client sent on a TCP connection. [`parse`] returns
//! `Err(Malformed)` only when the bytes present *prove* the ClientHello malformed. Truncation never
//! does: a ClientHello whose record was split across TCP segments (post-quantum key shares make
//! real ones 1.2–1.9 KB) yields `Ok` with `complete == false`, even for zero bytes, and
//! [`ClientHelloSummary::needs_more_bytes`] tells the caller that more bytes would help.
//! Bytes after the first record (a second record, early data) are ignored; a ClientHello that
//! continues into a second record is reported as `fragmented` and judged on the first record.
//!
//! # Choices
//! - Any legacy_record_version 0x03XX is accepted, 0x0300 and 0x0304+ included: RFC 5246
//!   Appendix E.1 lets clients "send any value {03,XX} as the record layer version number", RFC
//!   8446 §5.1 says the field "MUST be ignored for all purposes", and rustls, which terminates
//!   behind us, accepts 0x03XX. A major byte other than 3 is not TLS.
//! - Records may be up to 2^14 + 2048 bytes (the RFC 5246 §6.2.3 ciphertext bound), not the
//!   2^14 of RFC 8446 §5.1: rustls, which terminates behind us, accepts that much, and the filter
//!   must not reject what the server would take.
//!
//! # BPF constraints
//! No recursion, no allocation, no indexing or unwrapping of input, and every loop runs at most a
//! `MAX_*` constant number of times, so the same code can be verified inside an XDP program.
//! The input is read through [`HelloBytes`] (a slice here, the packet through
//! `bpf_xdp_load_bytes` in XDP) and the parse state can live in a caller's [`Workspace`] (a
//! per-CPU map value in XDP). Status: the parse compiles for `bpfel-unknown-none` and loads past
//! the verifier's codegen checks, but a full parse still exceeds the verifier's budget of one
//! million instructions (kernel 6.18), so the XDP program does not call it yet.

mod extensions;
pub mod fingerprint;
mod malformed;
mod reader;
mod summary;

pub use fingerprint::{Fingerprint, fingerprint_hex, is_grease};
pub use malformed::Malformed;
pub use summary::{ClientHelloSummary, KEY_SHARE_SLOTS, SniRange, Stage};

use fingerprint::FingerprintBuilder;
pub use reader::HelloBytes;
use reader::{Halt, Prefix, Reader};

/// Bytes in a TLS record header: type, legacy_record_version, length.
pub const RECORD_HEADER_LEN: usize = 5;
/// Bytes in a handshake header: msg_type and 24-bit length.
pub const HANDSHAKE_HEADER_LEN: usize = 4;
/// Longest first record accepted, in payload bytes (2^14 + 2048; see the module docs).
pub const MAX_RECORD_LEN: usize = (1 << 14) + 2048;
/// Longest ClientHello accepted, in bytes after the handshake header. rustls caps every handshake
/// message at this; real ClientHellos, post-quantum ones included, stay under 2 KB.
pub const MAX_HELLO_LEN: usize = 0xffff;
/// Most extensions walked; more is [`Malformed::TooManyExtensions`]. About 60 types are
/// registered and none may repeat; real clients send 10–25.
pub const MAX_EXTENSIONS: usize = 64;
/// Most cipher suites hashed into the fingerprint; longer lists are counted but the rest is not
/// hashed. Real clients offer 3–60.
pub const MAX_HASHED_CIPHER_SUITES: usize = 256;
/// Most supported_groups hashed into the fingerprint; the rest is not hashed.
pub const MAX_HASHED_GROUPS: usize = 64;
/// Most key_share entries walked; later entries are neither recorded nor checked.
pub const MAX_KEY_SHARES: usize = 16;

// Every offset into the first record fits the `u16` fields of `SniRange`.
const _: () = assert!(RECORD_HEADER_LEN + MAX_RECORD_LEN <= u16::MAX as usize);

/// Named group code points (IANA "TLS Supported Groups") worth naming in policy and tests.
pub mod group {
    /// secp256r1 (P-256), ECDHE.
    pub const SECP256R1: u16 = 0x0017;
    /// secp384r1 (P-384), ECDHE.
    pub const SECP384R1: u16 = 0x0018;
    /// X25519, ECDHE (RFC 8446 §4.2.7).
    pub const X25519: u16 = 0x001d;
    /// X25519MLKEM768, the hybrid post-quantum group browsers and rustls offer by default.
    pub const X25519_MLKEM768: u16 = 0x11ec;
    /// SecP256r1MLKEM768, hybrid post-quantum.
    pub const SECP256R1_MLKEM768: u16 = 0x11eb;
    /// X25519Kyber768Draft00, the pre-standard hybrid Chrome 124–130 offered.
    pub const X25519_KYBER768_DRAFT00: u16 = 0x6399;
}

/// Content type of a handshake record.
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
/// Handshake msg_type of a ClientHello.
const CLIENT_HELLO: u8 = 1;

/// Parses the first bytes a client sent on a TCP connection as a TLS ClientHello.
///
/// Returns `Err` only when the bytes present prove the ClientHello malformed; a truncated input
/// returns `Ok` with `complete == false` (see the module docs). Runs in time linear in the input,
/// bounded by the `MAX_*` constants, and never panics.
pub fn parse(input: &[u8]) -> Result<ClientHelloSummary, Malformed> {
    parse_from(input)
}

/// [`parse`] over any [`HelloBytes`]: the XDP program reads the packet through the same code.
#[inline(always)]
pub fn parse_from<I: HelloBytes + ?Sized>(input: &I) -> Result<ClientHelloSummary, Malformed> {
    let mut workspace = Workspace::NEW;
    parse_in(input, &mut workspace)
}

/// What one parse writes as it goes: the summary so far and where the list extensions are.
///
/// [`parse`] keeps it on the stack. A BPF caller can keep it in a per-CPU map value instead, so
/// the verifier does not know the flags written into it: flags it knows decide later branches,
/// and it then tracks every combination of extensions seen as a separate state.
#[derive(Clone, Copy, Debug)]
pub struct Workspace {
    summary: ClientHelloSummary,
    found: extensions::Extensions,
}

impl Workspace {
    /// A workspace before any parse; [`parse_in`] resets it anyway.
    pub const NEW: Self = Self {
        summary: ClientHelloSummary::EMPTY,
        found: extensions::Extensions::NONE,
    };
}

/// [`parse_from`] with the caller's [`Workspace`] (reset first), for the XDP program.
#[inline(always)]
pub fn parse_in<I: HelloBytes + ?Sized>(
    input: &I,
    workspace: &mut Workspace,
) -> Result<ClientHelloSummary, Malformed> {
    *workspace = Workspace::NEW;
    let Workspace { summary, found } = workspace;
    match parse_into(input, summary, found) {
        Ok(()) => Ok(*summary),
        Err(Halt::Truncated) => {
            // Stopping at the end of a record that fully arrived means the ClientHello goes on
            // in the next record, which this parser does not read.
            let record_end = RECORD_HEADER_LEN + usize::from(summary.record_len);
            summary.fragmented = summary.record_len != 0 && input.arrived() >= record_end;
            Ok(*summary)
        }
        Err(Halt::Malformed(reason)) => Err(reason),
    }
}

/// Walks the ClientHello, updating `summary` as each field arrives, so that a truncated input
/// leaves a summary of everything before the cut.
fn parse_into<I: HelloBytes + ?Sized>(
    input: &I,
    summary: &mut ClientHelloSummary,
    found: &mut extensions::Extensions,
) -> Result<(), Halt> {
    // Both headers have fixed sizes, so their readers cannot overrun: the reasons are unused.
    let mut record = Reader::new(0, RECORD_HEADER_LEN, Malformed::NotHandshakeRecord);
    // Checked on the first byte alone, so plaintext HTTP or SSH is rejected without waiting.
    if record.u8(input)? != CONTENT_TYPE_HANDSHAKE {
        return Err(Malformed::NotHandshakeRecord.into());
    }
    let record_version = record.u16(input)?;
    if record_version >> 8 != 3 {
        return Err(Malformed::BadRecordVersion.into());
    }
    summary.record_version = record_version;
    let record_len = record.u16(input)?;
    if record_len == 0 {
        return Err(Malformed::EmptyRecord.into());
    }
    if usize::from(record_len) > MAX_RECORD_LEN {
        return Err(Malformed::RecordTooLong.into());
    }
    summary.record_len = record_len;
    let record_end = RECORD_HEADER_LEN + usize::from(record_len);
    // From here on the input ends at the first record: later bytes are ignored.
    let input = &Prefix {
        inner: input,
        len: record_end,
    };

    summary.stage = Stage::HandshakeHeader;
    let hello_start = RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN;
    let mut handshake = Reader::new(RECORD_HEADER_LEN, hello_start, Malformed::NotClientHello);
    if handshake.u8(input)? != CLIENT_HELLO {
        return Err(Malformed::NotClientHello.into());
    }
    let hello_len = handshake.u24(input)?;
    summary.handshake_len = hello_len;
    let hello_len = usize::try_from(hello_len).unwrap_or(usize::MAX);
    if hello_len > MAX_HELLO_LEN {
        return Err(Malformed::HandshakeTooLong.into());
    }
    let hello_end = hello_start + hello_len;
    // A client sends nothing after its ClientHello until the server answers, so record bytes
    // after it are not a second message but a wrong length.
    if record_end > hello_end {
        return Err(Malformed::HandshakeLengthMismatch.into());
    }

    let mut body = Reader::new(hello_start, hello_end, Malformed::HandshakeLengthMismatch);
    summary.stage = Stage::LegacyVersion;
    let legacy_version = body.u16(input)?;
    if legacy_version >> 8 != 3 {
        return Err(Malformed::BadLegacyVersion.into());
    }
    summary.legacy_version = legacy_version;
    let mut fingerprint = FingerprintBuilder::new(legacy_version);

    summary.stage = Stage::Random;
    body.skip(input, 32)?;

    summary.stage = Stage::SessionId;
    let session_id_len = body.u8(input)?;
    if session_id_len > 32 {
        return Err(Malformed::SessionIdTooLong.into());
    }
    summary.session_id_len = session_id_len;
    body.skip(input, usize::from(session_id_len))?;

    summary.stage = Stage::CipherSuites;
    let suites_len = body.u16(input)?;
    if suites_len % 2 != 0 {
        return Err(Malformed::CipherSuitesOddLength.into());
    }
    if suites_len == 0 {
        return Err(Malformed::CipherSuitesEmpty.into());
    }
    summary.cipher_suite_count = suites_len / 2;
    let mut suites = body.split(usize::from(suites_len), Malformed::HandshakeLengthMismatch)?;
    for _ in 0..MAX_HASHED_CIPHER_SUITES {
        if suites.is_empty() {
            break;
        }
        fingerprint.list_item(suites.u16(input)?);
    }
    fingerprint.end_list();

    summary.stage = Stage::CompressionMethods;
    let methods_len = body.u8(input)?;
    if methods_len == 0 {
        return Err(Malformed::CompressionMethodsEmpty.into());
    }
    // RFC 5246 §7.4.1.2: the list "MUST contain ... CompressionMethod.null".
    let mut methods = body.split(usize::from(methods_len), Malformed::HandshakeLengthMismatch)?;
    let mut null_offered = false;
    for _ in 0..u8::MAX {
        if methods.is_empty() {
            break;
        }
        null_offered |= methods.u8(input)? == 0;
    }
    if !null_offered {
        return Err(Malformed::CompressionNullMissing.into());
    }

    summary.stage = Stage::Extensions;
    // RFC 5246 §7.4.1.2 lets a TLS 1.2 ClientHello end here without an extensions block; an
    // empty block stands in for it.
    let block = if body.is_empty() {
        Reader::new(hello_end, hello_end, Malformed::ExtensionFramingBroken)
    } else {
        if body.left() < 2 {
            return Err(Malformed::ExtensionsLengthMismatch.into());
        }
        let block_len = usize::from(body.u16(input)?);
        if block_len != body.left() {
            return Err(Malformed::ExtensionsLengthMismatch.into());
        }
        body.split(block_len, Malformed::ExtensionFramingBroken)?
    };
    let walked = extensions::parse(input, block, summary, &mut fingerprint, found);
    // Run even when the walk stopped: a truncated ClientHello still reports the key_share groups and
    // versions that arrived, and an earlier malformed list is reported before a later fault.
    extensions::parse_deferred(input, found, summary)?;
    walked?;

    // Extension bodies the parser does not interpret were stepped over by length alone, so only
    // this proves every byte of the ClientHello arrived.
    if input.arrived() < hello_end {
        return Err(Halt::Truncated);
    }
    if summary.offers_psk && !found.psk_key_exchange_modes {
        return Err(Malformed::PskWithoutKeyExchangeModes.into());
    }
    if summary.offers_early_data && !summary.offers_psk {
        return Err(Malformed::EarlyDataWithoutPsk.into());
    }
    if let Some((start, end)) = found.supported_groups {
        let mut groups = Reader::new(start, end, Malformed::BadSupportedGroups);
        for _ in 0..MAX_HASHED_GROUPS {
            if groups.is_empty() {
                break;
            }
            fingerprint.list_item(groups.u16(input)?);
        }
    }
    fingerprint.end_list();
    summary.fingerprint = Some(fingerprint.finish());
    summary.complete = true;
    summary.stage = Stage::Done;
    Ok(())
}
