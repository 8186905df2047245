//! The 64-bit ClientHello fingerprint, computed identically in XDP and in userspace.
//!
//! # Bytes hashed
//! FNV-1a 64 (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over this stream, every
//! value a big-endian `u16` unless noted, and every GREASE value (RFC 8701, see [`is_grease`])
//! left out:
//!
//! 1. `legacy_version`;
//! 2. the cipher suites in wire order (at most the first
//!    [`MAX_HASHED_CIPHER_SUITES`](super::MAX_HASHED_CIPHER_SUITES)), then their count;
//! 3. the extension types — for [`Fingerprint::ordered`] in wire order, then their count; for
//!    [`Fingerprint::unordered`] one `u64` that is the wrapping sum of [`mix`]`(type)` over the
//!    types, then their count;
//! 4. the supported_groups in wire order (at most the first
//!    [`MAX_HASHED_GROUPS`](super::MAX_HASHED_GROUPS); none if the extension is absent), then
//!    their count.
//!
//! Each list is followed by its count so that moving a value from the end of one list to the
//! start of the next changes the hash: read from the end, the stream decodes one way only.
//!
//! The unordered variant exists because Chrome (since version 110) shuffles its extension order on
//! every connection, so the ordered hash gives one Chrome build many values; JA4 sorts the
//! extensions for the same reason. Summing per-type mixes is order-independent without the
//! storage and nested loops a sort would cost in BPF.

/// Whether `value` is a GREASE value (RFC 8701 §2): both bytes equal and of the form `0x?A`.
///
/// GREASE values (0x0A0A, 0x1A1A, ..., 0xFAFA) are random placeholders clients insert into
/// cipher suite, extension, group and version lists, so the fingerprint leaves them out.
pub const fn is_grease(value: u16) -> bool {
    value & 0x0f0f == 0x0a0a && value >> 8 == value & 0xff
}

/// The two 64-bit fingerprints of one complete ClientHello; the module docs give the bytes hashed.
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

/// Spreads an extension type over 64 bits (the splitmix64 finaliser), so that the wrapping sum
/// of several types does not collide the way a plain sum or XOR of small integers would.
pub const fn mix(value: u16) -> u64 {
    let mut z = (value as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a 64 state.
#[derive(Clone, Copy, Debug)]
struct Fnv(u64);

impl Fnv {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(Self::PRIME);
        }
    }
}

/// Builds both fingerprints in one pass over the ClientHello, in the order of the module docs.
///
/// The two hashes share every section but the extension types, so they are fed in parallel.
#[derive(Clone, Copy, Debug)]
pub(super) struct FingerprintBuilder {
    ordered: Fnv,
    unordered: Fnv,
    /// Wrapping sum of [`mix`] over the extension types seen so far.
    extension_set: u64,
    /// Non-GREASE values hashed in the current list.
    count: u16,
    /// Set by [`Self::pause`]: nothing more is hashed, the result will not be used.
    paused: bool,
}

impl FingerprintBuilder {
    /// A fingerprint of nothing yet, before the legacy_version is known.
    pub(super) const EMPTY: Self = Self {
        ordered: Fnv(Fnv::OFFSET_BASIS),
        unordered: Fnv(Fnv::OFFSET_BASIS),
        extension_set: 0,
        count: 0,
        paused: false,
    };

    /// Starts a fingerprint with the ClientHello's legacy_version.
    pub(super) fn new(legacy_version: u16) -> Self {
        let mut builder = Self::EMPTY;
        builder.both(legacy_version);
        builder
    }

    /// Adds one cipher suite or supported group (GREASE is skipped here).
    pub(super) fn list_item(&mut self, value: u16) {
        if !self.paused && !is_grease(value) {
            self.both(value);
            self.count = self.count.wrapping_add(1);
        }
    }

    /// Stops hashing: the parser calls it when the ClientHello cannot be complete, so its fingerprint,
    /// reported only for a complete one, would never be read, and when the caller asked for no
    /// fingerprint ([`Workspace::want_fingerprint`](super::Workspace::want_fingerprint)). Saves the
    /// multiplications, which are a good part of the parse in XDP.
    pub(super) fn pause(&mut self) {
        self.paused = true;
    }

    /// Whether [`Self::pause`] was called: the result is not a fingerprint.
    pub(super) const fn is_paused(&self) -> bool {
        self.paused
    }

    /// Adds one cipher suite (GREASE is skipped here) to the prefix both fingerprints share: only `ordered`
    /// is fed until [`Self::end_shared_list`] copies it, half the multiplications per suite.
    pub(super) fn shared_item(&mut self, value: u16) {
        if !self.paused && !is_grease(value) {
            self.ordered.bytes(&value.to_be_bytes());
            self.count = self.count.wrapping_add(1);
        }
    }

    /// Closes the cipher suite list, the end of the shared prefix (legacy_version and cipher suites): from
    /// here on the two fingerprints differ, so `unordered` starts from `ordered`'s state.
    pub(super) fn end_shared_list(&mut self) {
        if self.paused {
            return;
        }
        self.ordered.bytes(&self.count.to_be_bytes());
        self.count = 0;
        self.unordered = self.ordered;
    }

    /// Closes the supported_groups list.
    pub(super) fn end_list(&mut self) {
        if self.paused {
            return;
        }
        self.both(self.count);
        self.count = 0;
    }

    /// Adds one extension type (GREASE is skipped here).
    pub(super) fn extension(&mut self, extension_type: u16) {
        if !self.paused && !is_grease(extension_type) {
            self.ordered.bytes(&extension_type.to_be_bytes());
            self.extension_set = self.extension_set.wrapping_add(mix(extension_type));
            self.count = self.count.wrapping_add(1);
        }
    }

    /// Closes the extension type list.
    pub(super) fn end_extensions(&mut self) {
        if self.paused {
            return;
        }
        self.unordered.bytes(&self.extension_set.to_be_bytes());
        self.end_list();
    }

    /// The finished fingerprints; call after the supported_groups list is closed.
    pub(super) const fn finish(&self) -> Fingerprint {
        Fingerprint {
            ordered: self.ordered.0,
            unordered: self.unordered.0,
        }
    }

    fn both(&mut self, value: u16) {
        self.ordered.bytes(&value.to_be_bytes());
        self.unordered.bytes(&value.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::{Fnv, fingerprint_hex, is_grease};

    #[test]
    fn grease_values_are_exactly_the_sixteen_of_rfc_8701() {
        let grease = (0..=u16::MAX).filter(|v| is_grease(*v)).count();
        assert_eq!(grease, 16);
        assert!(is_grease(0x0a0a) && is_grease(0xfafa) && is_grease(0x5a5a));
        assert!(!is_grease(0x0a1a) && !is_grease(0x1301) && !is_grease(0x0aaa));
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // From the FNV reference test suite: FNV-1a 64 of "" and of "a".
        let mut empty = Fnv(Fnv::OFFSET_BASIS);
        empty.bytes(b"");
        assert_eq!(empty.0, 0xcbf2_9ce4_8422_2325);
        let mut a = Fnv(Fnv::OFFSET_BASIS);
        a.bytes(b"a");
        assert_eq!(a.0, 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn hex_is_lowercase_and_zero_padded() {
        assert_eq!(&fingerprint_hex(0), b"0000000000000000");
        assert_eq!(&fingerprint_hex(0x0123_4567_89ab_cdef), b"0123456789abcdef");
        assert_eq!(&fingerprint_hex(u64::MAX), b"ffffffffffffffff");
    }
}
