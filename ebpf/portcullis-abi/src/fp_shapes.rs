//! The fingerprint blocklist indexed by shape (`xdp_block_fp_sh`): for each
//! [shape](crate::client_hello::fingerprint::shape), the blocked fingerprints that have it, so that the XDP program
//! answers "is this fingerprint blocked" from one array entry, without a hash map lookup.
//!
//! A ClientHello's shape comes from its framing, before any hashing: an empty entry tells the program that no blocked
//! fingerprint could match, and it skips the hash altogether. When some do, the program hashes and compares the two
//! fingerprints with the entry's (at most [`SHAPE_WAYS`]); an entry holding more than fit says so
//! ([`ShapeSet::OVERFLOW`]) and the program looks the fingerprints up in the blocklist (`xdp_block_fp`, a hash map:
//! a kernel function call each, ≈ 15 ns here with the return through the kernel's return thunk).
//!
//! Derived state, like the CIDR blocklist's prefilter: the blocklist is the truth, and whoever changes it rebuilds
//! every entry from it (`portcullis xdp block-fingerprint add|del`, the daemon at start). An entry is replaced by one
//! map update; a ClientHello judged while its entry is being rewritten may compare against a mix of the old and new
//! entry, which can only let that one ClientHello through (fail open) or drop it for a fingerprint blocked a moment
//! before or after.

use crate::client_hello::fingerprint::{SHAPES, shape_of};

/// Blocked fingerprints one [`ShapeSet`] holds: seven and the length fill one 64-byte cache line.
pub const SHAPE_WAYS: usize = 7;

/// The blocked fingerprints of one shape, as the XDP program reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapeSet {
    /// How many of `fingerprints` are blocked ones (the rest are 0, which no fingerprint equals: its top byte is the
    /// format), or [`Self::OVERFLOW`].
    pub len: u32,
    /// Explicit padding, always 0.
    pub _pad: u32,
    /// The blocked fingerprints of this shape, the first `len` of them.
    pub fingerprints: [u64; SHAPE_WAYS],
}

const _: () = assert!(size_of::<ShapeSet>() == 64);

// SAFETY: `#[repr(C)]`, plain integers, explicit padding: every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ShapeSet {}
const _: () = assert!(SHAPES <= u32::MAX as usize);

/// What a [`ShapeSet`] says of one fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Listed: blocked.
    Blocked,
    /// Not listed, and the set is complete: not blocked.
    Clear,
    /// The set overflowed: ask the blocklist.
    Unknown,
}

impl ShapeSet {
    /// No blocked fingerprint has this shape.
    pub const EMPTY: Self = Self {
        len: 0,
        _pad: 0,
        fingerprints: [0; SHAPE_WAYS],
    };

    /// [`Self::len`] of a shape with more blocked fingerprints than [`SHAPE_WAYS`].
    pub const OVERFLOW: u32 = u32::MAX;

    /// Whether a ClientHello of this shape must be hashed: some blocked fingerprint has the shape.
    #[inline(always)]
    pub const fn any(&self) -> bool {
        self.len != 0
    }

    /// Whether `fingerprint` is in this set.
    #[inline(always)]
    pub fn membership(&self, fingerprint: u64) -> Membership {
        if self.len == Self::OVERFLOW {
            return Membership::Unknown;
        }
        // Every slot compared, the unused ones 0: no loop bound for the verifier to follow, no branch per slot.
        let mut found = false;
        for listed in self.fingerprints {
            found |= listed == fingerprint;
        }
        if found {
            Membership::Blocked
        } else {
            Membership::Clear
        }
    }

    /// Adds `fingerprint` (of this set's shape) to the set, or marks it overflowed when it is full.
    pub fn insert(&mut self, fingerprint: u64) {
        if self.len == Self::OVERFLOW || self.fingerprints.contains(&fingerprint) {
            return;
        }
        match self.fingerprints.get_mut(self.len as usize) {
            Some(slot) => {
                *slot = fingerprint;
                self.len += 1;
            }
            None => self.len = Self::OVERFLOW,
        }
    }
}

/// The shape `fingerprint` is filed under, if it is a fingerprint of this format (others never match and are not
/// filed).
pub fn shape_index(fingerprint: u64) -> Option<u32> {
    shape_of(fingerprint).map(u32::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_answers_for_what_it_holds_and_overflows_past_its_ways() {
        let mut set = ShapeSet::EMPTY;
        assert!(!set.any());
        assert_eq!(set.membership(0x0200_0000_0000_0001), Membership::Clear);
        for n in 1..=SHAPE_WAYS as u64 {
            set.insert(0x0200_0000_0000_0000 | n);
            set.insert(0x0200_0000_0000_0000 | n);
        }
        assert_eq!(set.len, SHAPE_WAYS as u32, "duplicates are stored once");
        assert_eq!(set.membership(0x0200_0000_0000_0003), Membership::Blocked);
        assert_eq!(set.membership(0x0200_0000_0000_0009), Membership::Clear);
        set.insert(0x0200_0000_0000_0009);
        assert_eq!(set.len, ShapeSet::OVERFLOW);
        assert!(set.any());
        assert_eq!(set.membership(0x0200_0000_0000_0003), Membership::Unknown);
    }

    #[test]
    fn only_fingerprints_of_this_format_are_filed() {
        assert_eq!(shape_index(0x027c_c046_e3ad_ee47), Some(0x7cc));
        assert_eq!(shape_index(0x5c7a_204d_edbf_9bf6), None);
    }
}
