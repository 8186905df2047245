//! The parse as a few steps over a [`Workspace`], so that the XDP program can start each stage from
//! what it stored in its workspace, not from registers.
//!
//! The [`Step`]s, in order: the headers and the compression methods; the extensions (up to
//! [`EXTENSIONS_PER_STEP`] per step); the two list extensions (supported_versions and key_share, in wire
//! order), the second with the checks that need the whole ClientHello; then, for a complete ClientHello whose
//! fingerprint is computed, the three that hash it: the cipher suites, the extension types (a second walk of
//! the block, which by then is known to be well framed), the supported_groups; and, when the parse of the first record
//! stopped short, [`Step::Record`] for each record after it, which reads its header. The parse proper knows nothing
//! of the fingerprint, so a ClientHello that is not fingerprinted pays nothing for it; one that is pays a
//! second walk of its extension headers. [`HASH`] asks for the fingerprint steps, and [`Steps::hash_wanted`]
//! may still decline them (the XDP program does when no blocked fingerprint has the ClientHello's
//! [shape](super::fingerprint::shape)). [`drive`] runs them through the [`Steps`]
//! trait: [`Direct`] calls [`run`] in place (what [`parse`](super::parse) does); the XDP ClientHello
//! program runs them one after another, each reloading its state from the per-CPU workspace
//! after a compiler barrier, which makes every way a step can end reach the next step in one verifier
//! state (`portcullis-ebpf`'s `hello.rs`). Within a step there is no such reset, so at most one
//! bounded loop runs per step: the verifier walks a loop after a loop once per way out of the first,
//! so two in one step multiply.
//!
//! Every stage returns an `i32` status, and the parse its last:
//! [`CONTINUE`], [`HASH`], [`DONE`], [`TRUNCATED`], or [`MALFORMED_BASE`] plus the [`Malformed`] reason.

use super::extensions;
use super::reader::{Halt, HelloBytes, Prefix, Reader};
use super::{
    CLIENT_HELLO, CONTENT_TYPE_HANDSHAKE, ClientHelloSummary, FingerprintBuilder,
    HANDSHAKE_HEADER_LEN, MAX_EXTENSIONS, MAX_HASHED_CIPHER_SUITES, MAX_HASHED_GROUPS,
    MAX_HELLO_LEN, MAX_RECORD_LEN, Malformed, RECORD_HEADER_LEN, Stage, Workspace,
};

/// Extensions one [`Step::Extension`] walks at most: real clients send 10–25, so one or two steps. Each more
/// adds ≈ 6k instructions to the verification of the XDP program; a step less saves a reload of the walk's
/// state (`BENCHMARKS.md`).
pub const EXTENSIONS_PER_STEP: usize = 16;

/// Steps of [`Step::Extension`] [`drive`] runs at most: they walk [`MAX_EXTENSIONS`], and no extension checks the
/// count; [`Step::SecondList`] then finds out whether the block ended there.
const EXTENSION_STEPS: usize = MAX_EXTENSIONS / EXTENSIONS_PER_STEP;
const _: () = assert!(EXTENSION_STEPS * EXTENSIONS_PER_STEP == MAX_EXTENSIONS);

/// The stage succeeded; run the next one (or, for [`Step::Extension`], the next extension).
pub const CONTINUE: i32 = 0;
/// The parse (or, for [`Step::Extension`], the extension walk) is finished.
pub const DONE: i32 = 1;
/// The input ended first: not an error, the summary so far is the answer.
pub const TRUNCATED: i32 = 2;
/// [`Step::SecondList`] finished a complete ClientHello and the fingerprint is wanted: run the steps that hash it,
/// if [`Steps::hash_wanted`] agrees.
pub const HASH: i32 = 3;
/// `MALFORMED_BASE + reason as i32`: the bytes present prove the ClientHello malformed.
pub const MALFORMED_BASE: i32 = 16;

/// The reason a status carries, if it is a malformation.
pub const fn malformed(status: i32) -> Option<Malformed> {
    if status < MALFORMED_BASE {
        return None;
    }
    Malformed::from_index((status - MALFORMED_BASE) as u32)
}

/// One step of the parse; [`run`] runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Resets the workspace; record header, handshake header, legacy_version, random, session id,
    /// cipher suites (their length, and that they arrived), compression methods; locates the
    /// extensions block.
    Head,
    /// Up to [`EXTENSIONS_PER_STEP`] extensions, stopping at the end of the block ([`DONE`]).
    Extension,
    /// The list extension (supported_versions or key_share) that comes first on the wire.
    FirstList,
    /// The other one, then how the extension walk ended and the checks that need the whole
    /// ClientHello: [`DONE`] with a complete summary, or [`HASH`] when the fingerprint is wanted.
    SecondList,
    /// The legacy_version and cipher suites into the fingerprint.
    Suites,
    /// The extension types into the fingerprint, walking the block again.
    ExtensionTypes,
    /// The supported_groups list into the fingerprint, which it finishes; [`DONE`].
    Groups,
    /// Run when the parse of the first record stopped short, once per record after it: if the first record fully
    /// arrived (the ClientHello goes on in the next one, RFC 8446 §5.1), the header of the next record: it must be
    /// a non-empty handshake record of a version rustls takes and at most [`MAX_RECORD_LEN`] long, and the records
    /// must not carry more than the ClientHello's length. Their contents are not parsed (see the `client_hello`
    /// module docs). [`CONTINUE`] when another record may follow, [`TRUNCATED`] when the walk is over (the input
    /// or the ClientHello ended), or a malformation. A step per record, like the extensions, so that the verifier
    /// walks one record from what it knows of the workspace, not each record once per way the one before ended.
    Record,
}

/// Records after the first that [`Step::Record`] looks at. A legitimate client splits a ClientHello only past 2^14
/// bytes, into two to four records, so a segment shows at most two of them; in the XDP program's 4 KiB payload a
/// client splitting finer has records after these that are not looked at (judged on the ones before).
pub const MAX_CONTINUATION_RECORDS: usize = 8;

/// Runs the steps of one parse; the BPF program implements it with a compiler barrier before each step.
pub trait Steps {
    /// Runs `step` and returns its status.
    fn run(&mut self, step: Step) -> i32;

    /// Whether to hash the complete ClientHello [`Step::SecondList`] finished: the XDP program looks its
    /// [shape](Workspace::shape) up among those of the blocked fingerprints. Yes by default.
    fn hash_wanted(&mut self) -> bool {
        true
    }
}

/// Runs every stage of one parse and returns the final status: [`DONE`], [`TRUNCATED`] or a
/// malformation. A parse of the first record that stops short ends with [`Step::Record`] for each record after it.
#[inline(always)]
pub fn drive<S: Steps + ?Sized>(steps: &mut S) -> i32 {
    let status = first_record(steps);
    if status != TRUNCATED {
        return status;
    }
    for _ in 0..MAX_CONTINUATION_RECORDS {
        let status = steps.run(Step::Record);
        if status != CONTINUE {
            return status;
        }
    }
    // Records not looked at may follow: judged on those before, as a ClientHello cut short.
    TRUNCATED
}

/// The steps that parse the ClientHello in the first record.
#[inline(always)]
fn first_record<S: Steps + ?Sized>(steps: &mut S) -> i32 {
    let status = steps.run(Step::Head);
    if status != CONTINUE {
        return status;
    }
    // Room for MAX_EXTENSIONS extensions: the walk ends inside the bound, whatever the input.
    for _ in 0..EXTENSION_STEPS {
        if steps.run(Step::Extension) != CONTINUE {
            break;
        }
    }
    // Run even when the walk stopped: a truncated ClientHello still reports the key_share groups
    // and versions that arrived; `Checks` then reports how the walk ended.
    let status = steps.run(Step::FirstList);
    if status != CONTINUE {
        return status;
    }
    match steps.run(Step::SecondList) {
        HASH if steps.hash_wanted() => {
            let status = steps.run(Step::Suites);
            if status != CONTINUE {
                return status;
            }
            let status = steps.run(Step::ExtensionTypes);
            if status != CONTINUE {
                return status;
            }
            steps.run(Step::Groups)
        }
        HASH => DONE,
        status => status,
    }
}

/// Runs one step of the parse of `input` in `workspace`.
#[inline(always)]
pub fn run<I: HelloBytes + ?Sized>(step: Step, input: &I, workspace: &mut Workspace) -> i32 {
    if step == Step::Record {
        // Reads past the first record: the whole input.
        return match record(input, workspace) {
            Ok(()) => CONTINUE,
            Err(Halt::Malformed(reason)) => MALFORMED_BASE + reason as i32,
            // Not parsed whole, wherever the walk ended: judged as a ClientHello cut short.
            Err(Halt::Truncated) => TRUNCATED,
        };
    }
    if step == Step::Head {
        let fingerprint_wanted = workspace.fingerprint_wanted;
        *workspace = Workspace::NEW;
        workspace.fingerprint_wanted = fingerprint_wanted;
        if let Err(halt) = head_into(input, workspace) {
            return status(Err(halt));
        }
    }
    // After the record header, the input ends at the first record: later bytes are ignored.
    let input = &Prefix {
        inner: input,
        len: workspace.record_end,
    };
    match step {
        Step::Head => status(compression_into(input, workspace)),
        Step::Extension => extension(input, workspace),
        Step::FirstList => status(list_into(input, workspace, true)),
        Step::SecondList => {
            if let Err(halt) = list_into(input, workspace, false) {
                return status(Err(halt));
            }
            let walk = match workspace.walk_status {
                // MAX_EXTENSIONS walked (or fewer, by a driver that stopped calling `Extension` early): the
                // block must end there.
                CONTINUE if workspace.block.is_empty() => DONE,
                CONTINUE => MALFORMED_BASE + Malformed::TooManyExtensions as i32,
                walk => walk,
            };
            match walk {
                DONE => match checks_into(input, workspace) {
                    Ok(()) if workspace.fingerprint_wanted => HASH,
                    Ok(()) => DONE,
                    Err(halt) => status(Err(halt)),
                },
                // Truncated or malformed: passed on as it is (no round trip through `Malformed`,
                // whose table lookup the BPF verifier cannot bound).
                halted => halted,
            }
        }
        Step::Suites => status(suites_into(input, workspace)),
        Step::ExtensionTypes => status(extension_types_into(input, workspace)),
        Step::Groups => match groups_into(input, workspace) {
            Ok(()) => DONE,
            Err(halt) => status(Err(halt)),
        },
        // Handled above, on the whole input.
        Step::Record => TRUNCATED,
    }
}

/// [`Steps`] run in place on one input and workspace.
pub struct Direct<'a, I: HelloBytes + ?Sized> {
    /// The client's first bytes.
    pub input: &'a I,
    /// Where the parse keeps its state.
    pub workspace: &'a mut Workspace,
}

impl<I: HelloBytes + ?Sized> Steps for Direct<'_, I> {
    fn run(&mut self, step: Step) -> i32 {
        run(step, self.input, self.workspace)
    }
}

/// What [`drive`]'s final `status` means for the parse: the summary, or why it is malformed.
pub fn outcome<I: HelloBytes + ?Sized>(
    input: &I,
    workspace: &mut Workspace,
    status: i32,
) -> Result<ClientHelloSummary, Malformed> {
    let summary = &mut workspace.summary;
    if let Some(reason) = malformed(status) {
        return Err(reason);
    }
    if status == TRUNCATED {
        // Stopping at the end of a record that fully arrived means the ClientHello goes on in the
        // next record, whose contents this parser does not read.
        let record_end = RECORD_HEADER_LEN + usize::from(summary.record_len);
        summary.fragmented = summary.record_len != 0 && input.arrived() >= record_end;
    }
    Ok(*summary)
}

/// Record versions outside 0x03XX that rustls' record layer takes (the ones it has names for: SSLv2, DTLS 1.0,
/// 1.2, 1.3), and so the daemon would serve a ClientHello in: the parser must not call them malformed, or XDP would
/// drop handshakes the daemon accepts (the differential fuzz target found 0x0002). No TLS client sends them: RFC
/// 8446 §5.1 has 0x0301 or 0x0303, and says the field "MUST be ignored for all purposes".
const RUSTLS_RECORD_VERSIONS: [u16; 4] = [0x0002, 0xfeff, 0xfefd, 0xfefc];

/// Whether rustls' record layer takes a record of `version` (0x03XX or one of [`RUSTLS_RECORD_VERSIONS`]).
#[inline(always)]
fn record_version_taken(version: u16) -> bool {
    version >> 8 == 3 || RUSTLS_RECORD_VERSIONS.contains(&version)
}

/// [`Step::Record`]: `Ok` when the next record's header was read and found right, [`Halt::Truncated`] when there is
/// none to read (the input or the ClientHello ended), else why it proves the ClientHello malformed.
fn record<I: HelloBytes + ?Sized>(input: &I, workspace: &mut Workspace) -> Result<(), Halt> {
    let record_end = workspace.record_end;
    if workspace.next_record == 0 {
        // Nothing follows a first record that did not fully arrive (or whose header did not).
        if record_end == 0 || input.arrived() < record_end {
            return Err(Halt::Truncated);
        }
        workspace.next_record = record_end;
        workspace.carried = record_end;
    }
    // Where the record starts in the input, and the handshake bytes carried so far in the first record's
    // coordinates, where each record's payload continues the one before.
    let at = workspace.next_record;
    let carried = workspace.carried;
    // The ClientHello's end in those coordinates; unknown (0) when the first record ended inside the handshake
    // header, and then unbounded here.
    let hello_end = match workspace.hello_end {
        0 => usize::MAX,
        end => end,
    };
    // The ClientHello ends here: what follows (early data, a ChangeCipherSpec) is not its business.
    if carried >= hello_end {
        return Err(Halt::Truncated);
    }
    // A fixed-size header: its reader cannot overrun, the reason is unused.
    let mut header = Reader::new(at, at + RECORD_HEADER_LEN, Malformed::NotHandshakeRecord);
    // RFC 8446 §5.1: "Handshake messages MUST NOT be interleaved with other record types". Checked on the type
    // byte alone, like the first record's.
    if header.u8(input)? != CONTENT_TYPE_HANDSHAKE {
        return Err(Malformed::NotHandshakeRecord.into());
    }
    if !record_version_taken(header.u16(input)?) {
        return Err(Malformed::BadRecordVersion.into());
    }
    let len = usize::from(header.u16(input)?);
    if len == 0 {
        return Err(Malformed::EmptyRecord.into());
    }
    if len > MAX_RECORD_LEN {
        return Err(Malformed::RecordTooLong.into());
    }
    // Record bytes past the ClientHello: a wrong length, as in the first record (the client sends nothing after
    // its ClientHello until the server answers, but records of other types).
    if len > hello_end - carried {
        return Err(Malformed::HandshakeLengthMismatch.into());
    }
    workspace.carried = carried + len;
    workspace.next_record = at + RECORD_HEADER_LEN + len;
    Ok(())
}

/// The status of a stage's result.
#[inline(always)]
fn status(result: Result<(), Halt>) -> i32 {
    match result {
        Ok(()) => CONTINUE,
        Err(Halt::Truncated) => TRUNCATED,
        Err(Halt::Malformed(reason)) => MALFORMED_BASE + reason as i32,
    }
}

/// [`Step::Extension`]; the outcome of the walk is kept for the checks in [`Step::SecondList`].
fn extension<I: HelloBytes + ?Sized>(input: &I, workspace: &mut Workspace) -> i32 {
    // The walk's cursor, bitmap and count in locals, written back once (see `suites_into`). The
    // fingerprint stays in the workspace: as a local too it took the stack past the 512 bytes a call
    // chain may use while the parse was a function the XDP program called (not tried again since the
    // parse became a program of its own, with its own 512 bytes).
    let mut block = workspace.block;
    let mut seen = workspace.seen;
    let mut walked = workspace.summary.extension_count;
    let Workspace { summary, found, .. } = workspace;
    // Several extensions per step: in XDP each step reloads the walk's state from the workspace, which
    // cost more than a small extension's walk.
    let mut walk = CONTINUE;
    for _ in 0..EXTENSIONS_PER_STEP {
        walk = match extensions::step(input, &mut block, &mut seen, &mut walked, summary, found) {
            Ok(true) => CONTINUE,
            Ok(false) => DONE,
            Err(halt) => status(Err(halt)),
        };
        if walk != CONTINUE {
            break;
        }
    }
    workspace.block = block;
    workspace.seen = seen;
    workspace.summary.extension_count = walked;
    workspace.walk_status = walk;
    walk
}

/// [`Step::Head`], updating the summary as each field arrives, so that a truncated input leaves a
/// summary of everything before the cut.
fn head_into<I: HelloBytes + ?Sized>(input: &I, workspace: &mut Workspace) -> Result<(), Halt> {
    let summary = &mut workspace.summary;
    // Both headers have fixed sizes, so their readers cannot overrun: the reasons are unused.
    let mut record = Reader::new(0, RECORD_HEADER_LEN, Malformed::NotHandshakeRecord);
    // Checked on the first byte alone, so plaintext HTTP or SSH is rejected without waiting.
    if record.u8(input)? != CONTENT_TYPE_HANDSHAKE {
        return Err(Malformed::NotHandshakeRecord.into());
    }
    let record_version = record.u16(input)?;
    if !record_version_taken(record_version) {
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
    workspace.record_end = record_end;
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
    workspace.hello_end = hello_end;
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
    let suites = body.split(usize::from(suites_len), Malformed::HandshakeLengthMismatch)?;
    // The suites must have arrived (those [`Step::Suites`] may hash, at least): checked here, with one
    // comparison, so that a ClientHello cut inside them stops at this stage, not at the compression methods
    // (a read fails only when its bytes did not arrive: the list's length is even and inside the body).
    let mut hashed = suites;
    hashed.skip(input, suites.left().min(2 * MAX_HASHED_CIPHER_SUITES))?;
    workspace.list = suites;
    workspace.block = body;
    Ok(())
}

/// [`Step::Suites`]: the legacy_version and the cipher suites in `workspace.list` into a new fingerprint.
fn suites_into<I: HelloBytes + ?Sized>(input: &I, workspace: &mut Workspace) -> Result<(), Halt> {
    // Worked on in locals and written back once, so that the hash stays in a register instead of making a
    // round trip through the workspace (a BPF map value in XDP) for every suite.
    let mut suites = workspace.list;
    let mut fingerprint = FingerprintBuilder::new(workspace.summary.legacy_version);
    each_u16::<I, MAX_HASHED_CIPHER_SUITES>(input, &mut suites, |suite| fingerprint.suite(suite))?;
    fingerprint.end_suites();
    workspace.fingerprint = fingerprint;
    Ok(())
}

/// Calls `f` on each of the first `MAX` big-endian `u16`s of `list` (whose length is even), in order, reading four
/// at a time while at least four are left: a quarter of the bounds checks, which were most of a hashed entry's
/// cost.
#[inline(always)]
fn each_u16<I: HelloBytes + ?Sized, const MAX: usize>(
    input: &I,
    list: &mut Reader,
    mut f: impl FnMut(u16),
) -> Result<(), Halt> {
    const { assert!(MAX.is_multiple_of(4)) };
    for _ in 0..MAX / 4 {
        if list.left() < 8 {
            // Fewer than four left, and fewer than MAX taken: the last ones one at a time.
            for _ in 0..3 {
                if list.is_empty() {
                    break;
                }
                f(list.u16(input)?);
            }
            break;
        }
        let quad = list.u16_quad(input)?;
        f((quad >> 48) as u16);
        f((quad >> 32) as u16);
        f((quad >> 16) as u16);
        f(quad as u16);
    }
    Ok(())
}

/// [`Step::ExtensionTypes`]: the extension types into the fingerprint, walking the extensions block again (the
/// extension walk found it well framed, and all of it arrived).
fn extension_types_into<I: HelloBytes + ?Sized>(
    input: &I,
    workspace: &mut Workspace,
) -> Result<(), Halt> {
    let mut block = Reader::new(
        workspace.extensions_start,
        workspace.hello_end,
        Malformed::ExtensionFramingBroken,
    );
    let mut fingerprint = workspace.fingerprint;
    for _ in 0..MAX_EXTENSIONS {
        if block.is_empty() {
            break;
        }
        let (kind, len) = block.u16_pair(input)?;
        block.take(usize::from(len))?;
        fingerprint.extension(kind);
    }
    // The walk's duplicate bitmap is the set of types below 64.
    fingerprint.end_extensions(workspace.seen);
    workspace.fingerprint = fingerprint;
    Ok(())
}

/// The compression methods at `workspace.block` (the rest of the body), at the end of [`Step::Head`],
/// then the extensions block, which replaces it in `workspace.block`.
fn compression_into<I: HelloBytes + ?Sized>(
    input: &I,
    workspace: &mut Workspace,
) -> Result<(), Halt> {
    let summary = &mut workspace.summary;
    let body = &mut workspace.block;
    let hello_end = workspace.hello_end;
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
    // The block ends where the ClientHello does: its start is all the fingerprint's second walk needs.
    workspace.extensions_start = block.position();
    *body = block;
    Ok(())
}

/// The list extension of [`Step::FirstList`] (`first`) or [`Step::SecondList`].
fn list_into<I: HelloBytes + ?Sized>(
    input: &I,
    workspace: &mut Workspace,
    first: bool,
) -> Result<(), Halt> {
    extensions::parse_deferred(input, &workspace.found, &mut workspace.summary, first)
}

/// The checks at the end of [`Step::SecondList`], once the extension walk finished; the summary is then
/// complete but for the fingerprint.
fn checks_into<I: HelloBytes + ?Sized>(input: &I, workspace: &mut Workspace) -> Result<(), Halt> {
    let summary = &mut workspace.summary;
    let found = &workspace.found;
    // Extension bodies the parser does not interpret were stepped over by length alone, so only
    // this proves every byte of the ClientHello arrived.
    if input.arrived() < workspace.hello_end {
        return Err(Halt::Truncated);
    }
    if summary.offers_psk && !found.psk_key_exchange_modes {
        return Err(Malformed::PskWithoutKeyExchangeModes.into());
    }
    if summary.offers_early_data && !summary.offers_psk {
        return Err(Malformed::EarlyDataWithoutPsk.into());
    }
    summary.complete = true;
    summary.stage = Stage::Done;
    Ok(())
}

/// [`Step::Groups`]: the supported_groups list into the fingerprint, which it finishes.
fn groups_into<I: HelloBytes + ?Sized>(input: &I, workspace: &mut Workspace) -> Result<(), Halt> {
    let shape = workspace.shape();
    let fingerprint = &mut workspace.fingerprint;
    if let Some((start, end)) = workspace.found.supported_groups {
        let mut groups = Reader::new(start, end, Malformed::BadSupportedGroups);
        each_u16::<I, MAX_HASHED_GROUPS>(input, &mut groups, |group| fingerprint.group(group))?;
    }
    workspace.summary.fingerprint = Some(fingerprint.finish(shape));
    Ok(())
}
