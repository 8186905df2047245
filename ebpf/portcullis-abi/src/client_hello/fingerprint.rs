//! The 64-bit ClientHello fingerprint, computed identically in XDP and in userspace.
//!
//! # Layout (format 2)
//! A fingerprint is one `u64`, printed as 16 hex digits:
//!
//! | bits | what |
//! |---|---|
//! | 63..56 | [`FORMAT`] (`0x02`): the printed value starts with `02` |
//! | 55..44 | the [shape](shape): the cipher suite count and the extension count, 6 bits each |
//! | 43..0 | the top 44 bits of the [`mix`] of the hash below |
//!
//! The shape lets the XDP program skip the hashing for a ClientHello that no blocked fingerprint could match: it
//! keeps one flag per shape, set for the shapes of the blocked fingerprints (`xdp_block_fp_sh`), and hashes only
//! when its ClientHello's flag is set. Both counts come from the framing the parser walks anyway, so telling a
//! browser's ClientHello from a blocked bot's usually costs one table lookup, not the hash.
//!
//! Format 1, before 2026-11-23, was the FNV-1a 64 of the same stream taken byte by byte, without a shape or a
//! format byte. Its values never match a format-2 fingerprint: `portcullis xdp block-fingerprint add` refuses a
//! value whose top byte is not [`FORMAT`], and `portcullis xdp status` counts blocked values of another format.
//!
//! # Hash
//! FNV-1a 64 (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) taken over 16-bit units (each unit XORed in
//! whole, then one multiplication: half the dependent multiplications of FNV-1a over bytes), over this stream, with
//! every GREASE value (RFC 8701, see [`is_grease`]) left out:
//!
//! 1. `legacy_version`;
//! 2. the cipher suites in wire order (at most the first
//!    [`MAX_HASHED_CIPHER_SUITES`](super::MAX_HASHED_CIPHER_SUITES)), then their count;
//! 3. the extension types — for [`Fingerprint::ordered`] in wire order, then their count; for
//!    [`Fingerprint::unordered`] the set of types below 64 as a 64-bit bitmap (bit `t` for type `t`), then the
//!    wrapping sum of [`mix`]`(type)` over the other types, each `u64` as four units, most significant first,
//!    then the count of all;
//! 4. the supported_groups in wire order (at most the first
//!    [`MAX_HASHED_GROUPS`](super::MAX_HASHED_GROUPS); none if the extension is absent), then
//!    their count.
//!
//! Each list is followed by its count so that moving a value from the end of one list to the
//! start of the next changes the hash: read from the end, the stream decodes one way only.
//!
//! The unordered variant exists because Chrome (since version 110) shuffles its extension order on
//! every connection, so the ordered hash gives one Chrome build many values; JA4 sorts the
//! extensions for the same reason. A bitmap and a sum of per-type mixes are order-independent without the
//! storage and nested loops a sort would cost in BPF; the bitmap is the one the parser keeps anyway to find
//! duplicate extensions, and most types are below 64 (the sum gets renegotiation_info, ECH, ALPS).
//!
//! # Shape
//! `min(cipher suites, 63) << 6 | min(extensions, 63)`, both counted as declared, GREASE included (the counts the
//! summary reports): taking GREASE out of the cipher suite count would need the walk over the suites that the
//! shape exists to skip. Clients that GREASE (BoringSSL, so Chrome) put a fixed number of GREASE values in each
//! list, so a client build keeps one shape.

/// The format of the fingerprints this version computes, in their top byte.
pub const FORMAT: u8 = 2;

/// Distinct shapes: the XDP program's table of blocked shapes has one entry each.
pub const SHAPES: usize = 1 << SHAPE_BITS;

const SHAPE_BITS: u32 = 12;
const SHAPE_SHIFT: u32 = 44;
const FORMAT_SHIFT: u32 = 56;

/// The shape of a ClientHello with `cipher_suites` suites and `extensions` extensions (GREASE included); see the
/// module docs.
pub const fn shape(cipher_suites: u16, extensions: u16) -> u16 {
    let suites = if cipher_suites > 63 {
        63
    } else {
        cipher_suites
    };
    let extensions = if extensions > 63 { 63 } else { extensions };
    suites << 6 | extensions
}

/// The shape in `fingerprint`, if it is of this [`FORMAT`]; `None` for any other value (a format-1 fingerprint
/// from before 2026-11-23, a typo), which no ClientHello's fingerprint can equal.
pub const fn shape_of(fingerprint: u64) -> Option<u16> {
    if (fingerprint >> FORMAT_SHIFT) as u8 != FORMAT {
        return None;
    }
    Some(((fingerprint >> SHAPE_SHIFT) & (SHAPES as u64 - 1)) as u16)
}

/// Whether `value` is a GREASE value (RFC 8701 §2): both bytes equal and of the form `0x?A`.
///
/// GREASE values (0x0A0A, 0x1A1A, ..., 0xFAFA) are random placeholders clients insert into
/// cipher suite, extension, group and version lists, so the fingerprint leaves them out.
pub const fn is_grease(value: u16) -> bool {
    value & 0x0f0f == 0x0a0a && value >> 8 == value & 0xff
}

/// The two 64-bit fingerprints of one complete ClientHello; the module docs give the layout and the stream hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// Extension types hashed in wire order (JA3-like): tells apart clients that differ only in
    /// extension order, but varies per connection for clients that shuffle (Chrome ≥ 110).
    pub ordered: u64,
    /// Extension types hashed as a set (JA4-like): one value per client build even when the
    /// extension order is shuffled.
    pub unordered: u64,
}

/// Writes `fingerprint` as 16 lowercase hex digits, most significant first, without allocating.
pub fn fingerprint_hex(fingerprint: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut rest = fingerprint;
    // Fill from the least significant digit at the end, so no shift amount is ever computed.
    for digit in out.iter_mut().rev() {
        let nibble = (rest & 0xf) as u8;
        *digit = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
        rest >>= 4;
    }
    out
}

/// Spreads a value over 64 bits (the splitmix64 finaliser): for an extension type, so that the wrapping sum of
/// several types does not collide the way a plain sum or XOR of small integers would; for a finished hash, so that
/// its top 44 bits, the ones kept, depend on every unit.
pub const fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a 64 state over 16-bit units.
#[derive(Clone, Copy, Debug)]
struct Fnv(u64);

impl Fnv {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn unit(&mut self, unit: u16) {
        self.0 = (self.0 ^ u64::from(unit)).wrapping_mul(Self::PRIME);
    }

    /// The fingerprint of `shape` with this hash.
    const fn finish(self, shape: u16) -> u64 {
        (FORMAT as u64) << FORMAT_SHIFT
            | ((shape as u64) & (SHAPES as u64 - 1)) << SHAPE_SHIFT
            | mix(self.0) >> (64 - SHAPE_SHIFT)
    }
}

/// Builds both fingerprints of a complete ClientHello, in the order of the module docs: [`Self::new`], the
/// suites, [`Self::end_suites`], the extension types, [`Self::end_extensions`], the groups, [`Self::finish`].
///
/// The two hashes share the legacy_version and the suites, so those are hashed once.
#[derive(Clone, Copy, Debug)]
pub(super) struct FingerprintBuilder {
    ordered: Fnv,
    unordered: Fnv,
    /// Wrapping sum of [`mix`] over the extension types of 64 and above seen so far.
    extension_set: u64,
    /// Non-GREASE values hashed in the current list.
    count: u16,
}

impl FingerprintBuilder {
    /// A fingerprint of nothing yet, before the legacy_version is known.
    pub(super) const EMPTY: Self = Self {
        ordered: Fnv(Fnv::OFFSET_BASIS),
        unordered: Fnv(Fnv::OFFSET_BASIS),
        extension_set: 0,
        count: 0,
    };

    /// Starts a fingerprint with the ClientHello's legacy_version.
    pub(super) fn new(legacy_version: u16) -> Self {
        let mut builder = Self::EMPTY;
        builder.ordered.unit(legacy_version);
        builder
    }

    /// Adds one cipher suite (GREASE is skipped here) to the prefix both fingerprints share: only `ordered` is fed
    /// until [`Self::end_suites`] copies it.
    pub(super) fn suite(&mut self, value: u16) {
        if !is_grease(value) {
            self.ordered.unit(value);
            self.count = self.count.wrapping_add(1);
        }
    }

    /// Closes the cipher suite list, the end of the shared prefix: from here on the two fingerprints differ, so
    /// `unordered` starts from `ordered`'s state.
    pub(super) fn end_suites(&mut self) {
        self.ordered.unit(self.count);
        self.count = 0;
        self.unordered = self.ordered;
    }

    /// Adds one extension type (GREASE is skipped here).
    pub(super) fn extension(&mut self, extension_type: u16) {
        if !is_grease(extension_type) {
            self.ordered.unit(extension_type);
            if extension_type >= 64 {
                self.extension_set = self
                    .extension_set
                    .wrapping_add(mix(u64::from(extension_type)));
            }
            self.count = self.count.wrapping_add(1);
        }
    }

    /// Closes the extension type list; `below_64` has bit `t` set for each type `t` below 64 in it.
    pub(super) fn end_extensions(&mut self, below_64: u64) {
        for word in [below_64, self.extension_set] {
            for unit in [word >> 48, word >> 32, word >> 16, word] {
                self.unordered.unit(unit as u16);
            }
        }
        self.end_list();
    }

    /// Adds one supported group (GREASE is skipped here).
    pub(super) fn group(&mut self, value: u16) {
        if !is_grease(value) {
            self.ordered.unit(value);
            self.unordered.unit(value);
            self.count = self.count.wrapping_add(1);
        }
    }

    /// Closes the supported_groups list and returns both fingerprints, of the ClientHello's `shape`.
    pub(super) fn finish(&mut self, shape: u16) -> Fingerprint {
        self.end_list();
        Fingerprint {
            ordered: self.ordered.finish(shape),
            unordered: self.unordered.finish(shape),
        }
    }

    fn end_list(&mut self) {
        self.ordered.unit(self.count);
        self.unordered.unit(self.count);
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::{FORMAT, Fnv, fingerprint_hex, is_grease, shape, shape_of};

    #[test]
    fn grease_values_are_exactly_the_sixteen_of_rfc_8701() {
        let grease = (0..=u16::MAX).filter(|v| is_grease(*v)).count();
        assert_eq!(grease, 16);
        assert!(is_grease(0x0a0a) && is_grease(0xfafa) && is_grease(0x5a5a));
        assert!(!is_grease(0x0a1a) && !is_grease(0x1301) && !is_grease(0x0aaa));
    }

    #[test]
    fn fnv1a_of_one_small_unit_matches_the_published_test_vector() {
        // From the FNV reference test suite: FNV-1a 64 of "a". A unit below 256 is hashed as that one byte.
        let mut a = Fnv(Fnv::OFFSET_BASIS);
        a.unit(u16::from(b'a'));
        assert_eq!(a.0, 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn the_shape_and_format_read_back_from_a_fingerprint() {
        for (suites, extensions) in [(0, 0), (31, 12), (63, 63), (200, 64), (1, 999)] {
            let fingerprint = Fnv(Fnv::OFFSET_BASIS).finish(shape(suites, extensions));
            assert_eq!((fingerprint >> 56) as u8, FORMAT);
            assert_eq!(
                shape_of(fingerprint),
                Some(shape(suites.min(63), extensions.min(63)))
            );
        }
        assert_ne!(shape(31, 12), shape(12, 31));
        assert_eq!(shape_of(0x0100_0000_0000_0000), None);
        assert_eq!(shape_of(0x5c7a_204d_edbf_9bf6), None, "a format-1 value");
    }

    #[test]
    fn hex_is_lowercase_and_zero_padded() {
        assert_eq!(&fingerprint_hex(0), b"0000000000000000");
        assert_eq!(&fingerprint_hex(0x0123_4567_89ab_cdef), b"0123456789abcdef");
        assert_eq!(&fingerprint_hex(u64::MAX), b"ffffffffffffffff");
    }
}
