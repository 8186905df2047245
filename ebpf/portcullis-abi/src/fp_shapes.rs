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
//! Each way of each set has a per-CPU drop counter (`xdp_block_fp_hits`, [`hit_slot`]), so `portcullis xdp
//! block-fingerprint list` can say which blocked fingerprint drops what. A fingerprint keeps its way while it stays
//! blocked: a rebuild leaves the others where they are, puts a new one in a free way and zeroes the counter of a way
//! that changes hands. A shape with more than [`SHAPE_WAYS`] blocked fingerprints counts its drops in the verdict
//! total only.
//!
//! Derived state, like the CIDR blocklist's prefilter: the blocklist is the truth, and whoever changes it rebuilds
//! every entry from it (`portcullis xdp block-fingerprint add|del`, the daemon at start). An entry is replaced by one
//! map update; a ClientHello judged while its entry is being rewritten may compare against a mix of the old and new
//! entry, which can only let that one ClientHello through (fail open) or drop it for a fingerprint blocked a moment
//! before or after.

use crate::client_hello::fingerprint::{SHAPES, shape_of};

/// Blocked fingerprints one [`ShapeSet`] holds: seven and the length fill one 64-byte cache line.
pub const SHAPE_WAYS: usize = 7;

/// Drop counters in `xdp_block_fp_hits`: one per way of every shape's set.
pub const HIT_SLOTS: usize = SHAPES * SHAPE_WAYS;

/// The drop counter of `way` of the set of `shape`.
#[inline(always)]
pub const fn hit_slot(shape: u32, way: u32) -> u32 {
    shape * SHAPE_WAYS as u32 + way
}

/// The blocked fingerprints of one shape, as the XDP program reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapeSet {
    /// How many of `fingerprints` are blocked ones, or [`Self::OVERFLOW`].
    pub len: u32,
    /// Explicit padding, always 0.
    pub _pad: u32,
    /// The blocked fingerprints of this shape, each in its way; a free way is 0, which no fingerprint equals (its
    /// top byte is the format).
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
    /// Listed, in this way: blocked.
    Blocked {
        /// Its way in the set, which picks its drop counter ([`hit_slot`]).
        way: u32,
    },
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
        // Every way compared, the free ones 0: a fixed count for the verifier, a select rather than a branch each.
        let mut found = SHAPE_WAYS as u32;
        for (way, listed) in (0u32..).zip(self.fingerprints) {
            if listed == fingerprint {
                found = way;
            }
        }
        if found < SHAPE_WAYS as u32 {
            Membership::Blocked { way: found }
        } else {
            Membership::Clear
        }
    }

    /// The way of `fingerprint`, if the set holds it (and has not overflowed).
    pub fn way_of(&self, fingerprint: u64) -> Option<u32> {
        match self.membership(fingerprint) {
            Membership::Blocked { way } => Some(way),
            _ => None,
        }
    }

    /// Adds `fingerprint` (of this set's shape) to the set in its first free way, which it returns, or marks the set
    /// overflowed when no way is free. `None` too when it was there already or the set had overflowed.
    pub fn insert(&mut self, fingerprint: u64) -> Option<u32> {
        if self.len == Self::OVERFLOW || self.fingerprints.contains(&fingerprint) {
            return None;
        }
        match (0u32..)
            .zip(self.fingerprints.iter_mut())
            .find(|(_, f)| **f == 0)
        {
            Some((way, free)) => {
                *free = fingerprint;
                self.len += 1;
                Some(way)
            }
            None => {
                self.len = Self::OVERFLOW;
                None
            }
        }
    }

    /// Removes `fingerprint` from its way, which it returns, leaving the other ways as they are.
    pub fn remove(&mut self, fingerprint: u64) -> Option<u32> {
        let way = self.way_of(fingerprint)?;
        if let Some(listed) = self.fingerprints.get_mut(way as usize) {
            *listed = 0;
            self.len -= 1;
        }
        Some(way)
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
            assert_eq!(set.insert(0x0200_0000_0000_0000 | n), Some(n as u32 - 1));
            assert_eq!(set.insert(0x0200_0000_0000_0000 | n), None);
        }
        assert_eq!(set.len, SHAPE_WAYS as u32, "duplicates are stored once");
        assert_eq!(
            set.membership(0x0200_0000_0000_0003),
            Membership::Blocked { way: 2 }
        );
        // A removal frees its way alone; the next insert takes it.
        assert_eq!(set.remove(0x0200_0000_0000_0003), Some(2));
        assert_eq!(set.way_of(0x0200_0000_0000_0005), Some(4));
        assert_eq!(set.insert(0x0200_0000_0000_0011), Some(2));
        assert_eq!(set.remove(0x0200_0000_0000_0011), Some(2));
        assert_eq!(set.insert(0x0200_0000_0000_0003), Some(2));
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
