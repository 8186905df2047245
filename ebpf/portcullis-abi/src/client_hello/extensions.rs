//! The extension list: each extension the summary needs is parsed just far enough to check its
//! framing; the others are stepped over by their length.

#[cfg(doc)]
use super::MAX_EXTENSIONS;
use super::fingerprint::is_grease;
use super::reader::{Halt, HelloBytes, Reader};
use super::{ClientHelloSummary, MAX_KEY_SHARES, Malformed, SniRange};

/// Extension type code points (IANA "TLS ExtensionType Values").
mod extension_type {
    pub(super) const SERVER_NAME: u16 = 0;
    pub(super) const SUPPORTED_GROUPS: u16 = 10;
    pub(super) const SIGNATURE_ALGORITHMS: u16 = 13;
    pub(super) const ALPN: u16 = 16;
    pub(super) const SESSION_TICKET: u16 = 35;
    pub(super) const PRE_SHARED_KEY: u16 = 41;
    pub(super) const EARLY_DATA: u16 = 42;
    pub(super) const SUPPORTED_VERSIONS: u16 = 43;
    pub(super) const PSK_KEY_EXCHANGE_MODES: u16 = 45;
    pub(super) const KEY_SHARE: u16 = 51;
}

/// TLS 1.3 in supported_versions.
const TLS13: u16 = 0x0304;

/// What the extension list tells the rest of the parser but not the summary.
///
/// Holds offsets rather than a [`Reader`]: a reader copied into an `Option` made LLVM split the input pointer
/// into 32-bit halves, which the BPF verifier rejects ("pointer arithmetic with >>= operator prohibited").
#[derive(Clone, Copy, Debug)]
pub(super) struct Extensions {
    /// The supported_groups list as `(start, end)` offsets into the input, hashed into the fingerprint after
    /// the extension types.
    pub(super) supported_groups: Option<(usize, usize)>,
    /// The supported_versions body as `(start, end)` offsets, walked by [`parse_deferred`].
    pub(super) supported_versions: Option<(usize, usize)>,
    /// The key_share body as `(start, end)` offsets, walked by [`parse_deferred`].
    pub(super) key_share: Option<(usize, usize)>,
    /// psk_key_exchange_modes is present.
    pub(super) psk_key_exchange_modes: bool,
}

impl Extensions {
    /// Nothing found yet.
    pub(super) const NONE: Self = Self {
        supported_groups: None,
        supported_versions: None,
        key_share: None,
        psk_key_exchange_modes: false,
    };
}

/// Walks one extension of the block, filling `summary`; `Ok(false)` once the block is finished. (The fingerprint
/// walks the types again after the checks, when it is computed: see `steps`.)
///
/// On [`Halt::Truncated`] the summary keeps what the extensions that arrived told, and `found` what they
/// were. The two extensions whose bodies hold lists (supported_versions, key_share) are only located here;
/// [`parse_deferred`] walks them after the walk, however it ended, so that no loop is nested in this
/// one: the BPF verifier walks nested bounded loops as the product of their bounds.
///
/// `seen` has one bit per extension type below 64: every type this parser interprets is in that range, and
/// a bitmap keeps the duplicate check O(1) without storing the types (RFC 8446 §4.2: "There MUST NOT be
/// more than one extension of the same type"). `walked` counts the extensions walked (the summary's
/// `extension_count`, which the caller keeps in a register meanwhile); the caller calls this at most
/// [`MAX_EXTENSIONS`] times, and then finds out whether the block ended there.
#[inline(always)]
pub(super) fn step<I: HelloBytes + ?Sized>(
    input: &I,
    block: &mut Reader,
    seen: &mut u64,
    walked: &mut u16,
    summary: &mut ClientHelloSummary,
    found: &mut Extensions,
) -> Result<bool, Halt> {
    if block.is_empty() {
        return Ok(false);
    }
    // Both fields at once: when the block ends inside them, either way of reading them gives the block's
    // overrun reason; when the input does, truncation.
    let (kind, len) = block.u16_pair(input)?;
    let len = usize::from(len);
    // A body that runs past the block breaks the block's framing; each body read below has its own reason.
    let (start, end) = block.take(len)?;
    // At most MAX_EXTENSIONS are walked: no saturation needed.
    *walked += 1;
    if let Some(bit) = 1u64.checked_shl(u32::from(kind)) {
        if *seen & bit != 0 {
            return Err(Malformed::DuplicateExtension.into());
        }
        *seen |= bit;
    }
    match kind {
        extension_type::SERVER_NAME => server_name(
            input,
            Reader::new(start, end, Malformed::BadSniFraming),
            summary,
        )?,
        extension_type::SUPPORTED_GROUPS => {
            found.supported_groups = Some(supported_groups(
                input,
                Reader::new(start, end, Malformed::BadSupportedGroups),
            )?)
        }
        extension_type::SIGNATURE_ALGORITHMS => summary.signature_algorithms_present = true,
        extension_type::ALPN => summary.alpn_present = true,
        extension_type::SESSION_TICKET => summary.tls12_ticket = len > 0,
        extension_type::PRE_SHARED_KEY => {
            // RFC 8446 §4.2.11: it "MUST be the last extension", because the binders cover
            // every byte before them.
            if !block.is_empty() {
                return Err(Malformed::PskNotLast.into());
            }
            summary.offers_psk = true;
            pre_shared_key(input, Reader::new(start, end, Malformed::BadPskFraming))?;
        }
        extension_type::EARLY_DATA => {
            // RFC 8446 §4.2.10: in a ClientHello the extension_data is `struct {} Empty`.
            if len != 0 {
                return Err(Malformed::BadEarlyData.into());
            }
            summary.offers_early_data = true;
        }
        extension_type::SUPPORTED_VERSIONS => found.supported_versions = Some((start, end)),
        extension_type::PSK_KEY_EXCHANGE_MODES => found.psk_key_exchange_modes = true,
        extension_type::KEY_SHARE => found.key_share = Some((start, end)),
        _ => {}
    }
    Ok(true)
}

/// Walks one of the list-carrying extensions [`step`] located: the one first in wire order when
/// `first`, else the other, so that the first malformation found is still the first on the wire.
#[inline(always)]
pub(super) fn parse_deferred<I: HelloBytes + ?Sized>(
    input: &I,
    found: &Extensions,
    summary: &mut ClientHelloSummary,
    first: bool,
) -> Result<(), Halt> {
    let versions_first = match (found.supported_versions, found.key_share) {
        (Some((v, _)), Some((k, _))) => v < k,
        _ => true,
    };
    if versions_first == first {
        deferred_versions(input, found, summary)
    } else {
        deferred_key_share(input, found, summary)
    }
}

/// supported_versions, if [`step`] found it.
#[inline(always)]
fn deferred_versions<I: HelloBytes + ?Sized>(
    input: &I,
    found: &Extensions,
    summary: &mut ClientHelloSummary,
) -> Result<(), Halt> {
    match found.supported_versions {
        Some((start, end)) => supported_versions(
            input,
            Reader::new(start, end, Malformed::BadSupportedVersions),
            summary,
        ),
        None => Ok(()),
    }
}

/// key_share, if [`step`] found it.
#[inline(always)]
fn deferred_key_share<I: HelloBytes + ?Sized>(
    input: &I,
    found: &Extensions,
    summary: &mut ClientHelloSummary,
) -> Result<(), Halt> {
    match found.key_share {
        Some((start, end)) => key_share(
            input,
            Reader::new(start, end, Malformed::BadKeyShare),
            summary,
        ),
        None => Ok(()),
    }
}

/// server_name (RFC 6066 §3): records the range of the host_name.
fn server_name<I: HelloBytes + ?Sized>(
    input: &I,
    mut body: Reader,
    summary: &mut ClientHelloSummary,
) -> Result<(), Halt> {
    let list_len = usize::from(body.u16(input)?);
    if list_len == 0 || list_len != body.left() {
        return Err(Malformed::BadSniFraming.into());
    }
    // "The ServerNameList MUST NOT contain more than one name of the same name_type", and a
    // name of another type has framing unknown to us (rustls stops there too). So at most two
    // entries are walked: a host_name, then the end, a second host_name, or another type.
    for _ in 0..2 {
        if body.is_empty() {
            break;
        }
        if body.u8(input)? != 0 {
            break;
        }
        if summary.sni.is_some() {
            return Err(Malformed::BadSniFraming.into());
        }
        let name_len = body.u16(input)?;
        if name_len == 0 {
            return Err(Malformed::BadSniFraming.into());
        }
        // Record the range before the name arrives: a split ClientHello still reports it.
        let offset = body.position();
        body.split(usize::from(name_len), Malformed::BadSniFraming)?;
        summary.sni = Some(SniRange {
            // Cannot saturate: offsets stay below 5 + MAX_RECORD_LEN, asserted in mod.rs.
            offset: u16::try_from(offset).unwrap_or(u16::MAX),
            len: name_len,
        });
    }
    Ok(())
}

/// supported_groups (RFC 8446 §4.2.7): `NamedGroup named_group_list<2..2^16-1>`.
///
/// Returns the list's `(start, end)` offsets; its groups are hashed after the extension types.
fn supported_groups<I: HelloBytes + ?Sized>(
    input: &I,
    mut body: Reader,
) -> Result<(usize, usize), Halt> {
    let list_len = usize::from(body.u16(input)?);
    if list_len == 0 || list_len % 2 != 0 || list_len != body.left() {
        return Err(Malformed::BadSupportedGroups.into());
    }
    Ok((body.position(), body.position() + list_len))
}

/// supported_versions (RFC 8446 §4.2.1): `ProtocolVersion versions<2..254>`.
#[inline(always)]
fn supported_versions<I: HelloBytes + ?Sized>(
    input: &I,
    mut body: Reader,
    summary: &mut ClientHelloSummary,
) -> Result<(), Halt> {
    let list_len = usize::from(body.u8(input)?);
    if list_len == 0 || list_len % 2 != 0 || list_len != body.left() {
        return Err(Malformed::BadSupportedVersions.into());
    }
    // A one-byte length holds at most 127 versions.
    for _ in 0..127 {
        if body.is_empty() {
            break;
        }
        if body.u16(input)? == TLS13 {
            summary.offers_tls13 = true;
        }
    }
    Ok(())
}

/// key_share (RFC 8446 §4.2.8): `KeyShareEntry client_shares<0..2^16-1>`, each entry a group and
/// `opaque key_exchange<1..2^16-1>`.
///
/// Each group is recorded as soon as its entry header arrives, so a ClientHello cut inside a
/// large post-quantum key still reports the groups offered so far. Entries after the first
/// [`MAX_KEY_SHARES`] are not examined.
#[inline(always)]
fn key_share<I: HelloBytes + ?Sized>(
    input: &I,
    mut body: Reader,
    summary: &mut ClientHelloSummary,
) -> Result<(), Halt> {
    let list_len = usize::from(body.u16(input)?);
    if list_len != body.left() {
        return Err(Malformed::BadKeyShare.into());
    }
    for _ in 0..MAX_KEY_SHARES {
        if body.is_empty() {
            break;
        }
        let group = body.u16(input)?;
        let key_len = usize::from(body.u16(input)?);
        if key_len == 0 {
            return Err(Malformed::BadKeyShare.into());
        }
        if !is_grease(group) {
            if let Some(slot) = summary
                .key_shares
                .get_mut(usize::from(summary.key_share_count))
            {
                *slot = group;
            }
            summary.key_share_count = summary.key_share_count.saturating_add(1);
        }
        body.skip(input, key_len)?;
    }
    Ok(())
}

/// pre_shared_key (RFC 8446 §4.2.11): `PskIdentity identities<7..2^16-1>` then
/// `PskBinderEntry binders<33..2^16-1>`, filling the extension exactly.
fn pre_shared_key<I: HelloBytes + ?Sized>(input: &I, mut body: Reader) -> Result<(), Halt> {
    let identities = usize::from(body.u16(input)?);
    if identities < 7 {
        return Err(Malformed::BadPskFraming.into());
    }
    body.skip(input, identities)?;
    let binders = usize::from(body.u16(input)?);
    if binders < 33 || binders != body.left() {
        return Err(Malformed::BadPskFraming.into());
    }
    Ok(())
}
