//! One bounded, allocation-free parser for the TLS ClientHello, shared by XDP and userspace.
//!
//! # Layout
//! - this file: [`parse`], the limits, and the record/handshake/body walk;
//! - `summary`: [`ClientHelloSummary`], what a parse returns, with [`Stage`] and [`SniRange`];
//! - `malformed`: [`Malformed`], the reasons a ClientHello is rejected;
//! - `extensions`: the extension list;
//! - [`fingerprint`]: the 64-bit fingerprint and its exact byte layout;
//! - [`steps`]: the parse as steps over a [`Workspace`], and the driver that runs them;
//! - `reader`: the bounds-checked cursor everything reads through.
//!
//! # Input and verdicts
//! The input is the first bytes a client sent on a TCP connection. [`parse`] returns
//! `Err(Malformed)` only when the bytes present *prove* the ClientHello malformed. Truncation never
//! does: a ClientHello whose record was split across TCP segments (post-quantum key shares make
//! real ones 1.2–1.9 KB) yields `Ok` with `complete == false`, even for zero bytes, and
//! [`ClientHelloSummary::needs_more_bytes`] tells the caller that more bytes would help.
//!
//! # Records
//! A ClientHello may span records (RFC 8446 §5.1), and the TCP segment being judged may end at, or
//! after, any of their boundaries. Its fields are parsed in the first record only; when that record
//! ends first, the ClientHello is reported as `fragmented`, and the records after it that arrived are
//! judged by their headers alone ([`steps::Step::Record`]): a record of another type before the
//! ClientHello's last byte (a ChangeCipherSpec, an alert, application data), an empty or oversized
//! record, a record version rustls refuses, or records carrying more than the ClientHello's length
//! prove it malformed; anything else is `Ok` with `complete == false`, like a ClientHello cut short:
//! judged on what is visible and passed without a fingerprint, since a hash of the visible part would
//! change with where the client split it (so it could not be blocked), and the XDP program still charges
//! the source's ClientHello budget for it. Why not reassemble the fields across records: in BPF every read would
//! have to map its offset across record headers, for ClientHellos that, when legitimate, are split
//! only past 2^14 bytes and so span TCP segments and are judged on a prefix anyway. Bytes after the
//! ClientHello's last record (a ChangeCipherSpec, early data) are ignored.
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
//! The input is read through [`HelloBytes`] (a slice here, the packet's payload in place in XDP)
//! and the parse runs as the [`steps`] over a [`Workspace`]: on the stack for [`parse`], in a
//! per-CPU map value in XDP, where one BPF program runs the steps, each reloading its state from
//! the map value, so that the verifier walks each stage once (with the state carried in registers
//! from stage to stage, it exceeded the verifier's budget of one million instructions on 6.18).

mod extensions;
pub mod fingerprint;
mod malformed;
mod reader;
pub mod steps;
mod summary;

pub use fingerprint::{Fingerprint, fingerprint_hex, is_grease};
pub use malformed::Malformed;
pub use summary::{ClientHelloSummary, KEY_SHARE_SLOTS, SniRange, Stage};

use fingerprint::FingerprintBuilder;
pub use reader::HelloBytes;
use reader::Reader;

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

/// Everything one parse keeps between its [`steps`]: the summary so far, the fingerprint being
/// built, where the extension walk is, and where the list extensions are.
///
/// [`parse`] keeps it on the stack. The XDP program keeps it in a per-CPU map value instead and
/// reloads it before each stage, so the verifier checks each stage once, from a workspace whose
/// contents it does not know, instead of once per path through earlier steps.
#[derive(Clone, Copy, Debug)]
pub struct Workspace {
    summary: ClientHelloSummary,
    found: extensions::Extensions,
    fingerprint: FingerprintBuilder,
    /// End of the first record, from the start of the input: later bytes are ignored.
    record_end: usize,
    /// End of the ClientHello, from the start of the input.
    hello_end: usize,
    /// The rest of the ClientHello body after the cipher suites, then the rest of the extensions
    /// block.
    block: Reader,
    /// The cipher suites list.
    list: Reader,
    /// Where the extensions block starts (it ends with the ClientHello), walked again for the fingerprint.
    extensions_start: usize,
    /// Extension types 0..=63 seen so far, one bit each.
    seen: u64,
    /// How the extension walk ended: a [`steps`] status ([`steps::CONTINUE`] while walking).
    walk_status: i32,
    /// Where the next record after the first starts, from the start of the input; 0 before
    /// [`steps::Step::Record`] looked at any.
    next_record: usize,
    /// Handshake bytes the records walked so far carry, counted from the start of the input as if
    /// they were all in the first record (which [`Workspace::hello_end`] counts the same way).
    carried: usize,
    /// Whether the parse computes the fingerprint; kept across the reset at [`steps::Step::Head`].
    fingerprint_wanted: bool,
}

impl Workspace {
    /// A workspace before any parse; [`steps::Step::Head`] resets it anyway.
    pub const NEW: Self = Self {
        summary: ClientHelloSummary::EMPTY,
        found: extensions::Extensions::NONE,
        fingerprint: FingerprintBuilder::EMPTY,
        record_end: 0,
        hello_end: 0,
        block: Reader::new(0, 0, Malformed::ExtensionFramingBroken),
        list: Reader::new(0, 0, Malformed::HandshakeLengthMismatch),
        extensions_start: 0,
        seen: 0,
        walk_status: steps::CONTINUE,
        next_record: 0,
        carried: 0,
        fingerprint_wanted: true,
    };

    /// Whether the parses in this workspace compute the fingerprint (they do unless told otherwise). Without
    /// it a complete ClientHello's summary has `fingerprint: None`; everything else is the same. The XDP
    /// program turns it off while no fingerprint is blocked, and skips it for a ClientHello whose
    /// [shape](Self::shape) no blocked fingerprint has ([`steps::Steps::hash_wanted`]).
    pub const fn want_fingerprint(&mut self, wanted: bool) {
        self.fingerprint_wanted = wanted;
    }

    /// The [shape](fingerprint::shape) of the ClientHello parsed so far: once [`steps::Step::SecondList`]
    /// found it complete, the shape its fingerprint will have.
    pub const fn shape(&self) -> u16 {
        fingerprint::shape(
            self.summary.cipher_suite_count,
            self.summary.extension_count,
        )
    }

    /// The summary so far (final once a stage returned [`steps::DONE`]).
    pub const fn summary(&self) -> &ClientHelloSummary {
        &self.summary
    }
}

/// [`parse_from`] with the caller's [`Workspace`] (reset first).
#[inline(always)]
pub fn parse_in<I: HelloBytes + ?Sized>(
    input: &I,
    workspace: &mut Workspace,
) -> Result<ClientHelloSummary, Malformed> {
    let status = steps::drive(&mut steps::Direct { input, workspace });
    steps::outcome(input, workspace, status)
}
