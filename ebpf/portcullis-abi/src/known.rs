//! Known sources: source prefixes that recently sent a ClientHello the guard passed, kept so that a
//! spoofed-source SYN flood can be stopped in XDP without stopping them.
//!
//! Every SYN of a spoofed flood comes from a new source, so no per-source budget runs out; what the flood shares is
//! that its sources never complete a handshake. The guard therefore spends SYNs of sources it does not know from
//! one budget per CPU (`XdpConfig::flood_syn_rate`, a [`crate::limits::TokenBucket`] in the per-CPU map
//! [`crate::names::MAP_XDP_SYN_FLOOD`]) and, once that is spent, passes only the SYNs of sources in this set
//! ([`crate::names::MAP_XDP_KNOWN`]); the others are dropped (`drop_syn_flood`), so the flood never reaches the
//! kernel's receive backlog and SYN cookies. Legitimate *new* clients compete with the flood for the budget.
//!
//! The set is an array of [`KNOWN_SETS`] sets of [`KNOWN_WAYS`] ways, each way a 32-bit tag of the source (the low
//! bits of [`crate::limits::source_hash`], keyed with the budget tables' random seed) and the time it last passed
//! a ClientHello in units of 2^30 ns (≈ 1.07 s); one cache line a set, 64 KiB, 8,192 sources. A source is known
//! while its stamp is younger than `XdpConfig::known_ttl_s`; a new source takes the oldest way. A spoofed source
//! whose tag matches a known one of its set passes: with 8 ways of 32 bits, one in 2^29 per SYN.

use crate::limits::{SourceKey, source_hash};

/// Sets in the known-source table (the array map's `max_entries`, a power of two).
pub const KNOWN_SETS: usize = 1 << 10;

/// Sources one [`KnownSet`] holds.
pub const KNOWN_WAYS: usize = 8;

/// Map flags of the known-source table: `BPF_F_MMAPABLE`, so each 64-byte set is one cache line (see
/// [`crate::limits::BUDGET_MAP_FLAGS`]).
pub const KNOWN_MAP_FLAGS: usize = crate::limits::BUDGET_MAP_FLAGS;

/// The stamp unit: 2^30 ns, ≈ 1.07 s.
pub const STAMP_SHIFT: u32 = 30;

/// Value of the known-source table: [`KNOWN_WAYS`] ways, each `tag << 32 | stamp`; stamp 0 marks a way never used.
///
/// Layout (64 bytes): `ways` at 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownSet {
    /// Tag in the high half, stamp (units of 2^30 ns, at least 1) in the low half.
    pub ways: [u64; KNOWN_WAYS],
}

const _: () = assert!(size_of::<KnownSet>() == 64);

/// Where `source` lives in the known-source table: its set (below [`KNOWN_SETS`]) and its tag.
#[inline(always)]
pub fn known_slot(source: &SourceKey, seed: u64) -> (u32, u32) {
    let h = source_hash(source, seed);
    // The top bits pick the budget set; bits 32.. the known set and the low half the tag.
    (((h >> 32) as u32) & (KNOWN_SETS as u32 - 1), h as u32)
}

/// The stamp of `now_ns` (never 0, the mark of an unused way).
#[inline(always)]
pub const fn stamp(now_ns: u64) -> u32 {
    let s = (now_ns >> STAMP_SHIFT) as u32;
    if s == 0 { 1 } else { s }
}

/// `ttl_s` seconds in stamp units, rounded up (0 is read as 1 s).
#[inline(always)]
pub const fn ttl_stamps(ttl_s: u32) -> u32 {
    let ttl = if ttl_s == 0 { 1 } else { ttl_s as u64 };
    ((ttl * 1_000_000_000 + (1 << STAMP_SHIFT) - 1) >> STAMP_SHIFT) as u32
}

impl KnownSet {
    /// An unused set.
    pub const EMPTY: KnownSet = KnownSet {
        ways: [0; KNOWN_WAYS],
    };

    /// Whether the source of `tag` passed a ClientHello within `ttl_s` seconds of `now_ns`.
    #[inline(always)]
    pub fn contains(&self, tag: u32, now_ns: u64, ttl_s: u32) -> bool {
        let now = stamp(now_ns);
        let ttl = ttl_stamps(ttl_s);
        let mut i = 0;
        while i < KNOWN_WAYS {
            let way = self.ways[i];
            let at = way as u32;
            if (way >> 32) as u32 == tag && at != 0 && now.wrapping_sub(at) <= ttl {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Records that the source of `tag` passed a ClientHello at `now_ns`: its way's stamp renewed (written only when
    /// it changes, once a second at most), or the oldest way taken over. Returns whether it wrote the set.
    #[inline(always)]
    pub fn remember(&mut self, tag: u32, now_ns: u64) -> bool {
        let now = stamp(now_ns);
        let entry = (u64::from(tag) << 32) | u64::from(now);
        let mut oldest = 0;
        let mut oldest_age = 0u32;
        let mut i = 0;
        while i < KNOWN_WAYS {
            let way = self.ways[i];
            let at = way as u32;
            if (way >> 32) as u32 == tag && at != 0 {
                if at == now {
                    return false;
                }
                self.ways[i] = entry;
                return true;
            }
            // An unused way is the oldest of all.
            let age = if at == 0 {
                u32::MAX
            } else {
                now.wrapping_sub(at)
            };
            if age >= oldest_age {
                oldest_age = age;
                oldest = i;
            }
            i += 1;
        }
        if let Some(way) = self.ways.get_mut(oldest) {
            *way = entry;
        }
        true
    }

    /// Ways whose source is known at `now_ns` (for `portcullis xdp status`).
    pub fn live(&self, now_ns: u64, ttl_s: u32) -> usize {
        let now = stamp(now_ns);
        let ttl = ttl_stamps(ttl_s);
        self.ways
            .iter()
            .filter(|&&way| way as u32 != 0 && now.wrapping_sub(way as u32) <= ttl)
            .count()
    }
}

// SAFETY: `KnownSet` is `#[repr(C)]`, `Copy`, made of integers only, with no padding (size asserted above), so
// every bit pattern is valid and its bytes can be copied to and from a map value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for KnownSet {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{source_key, v4_mapped};

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_remembered_source_is_known_until_its_ttl_passes() {
        let mut set = KnownSet::EMPTY;
        assert!(!set.contains(7, 100 * S, 60));
        assert!(set.remember(7, 100 * S));
        assert!(!set.remember(7, 100 * S), "the same stamp is not rewritten");
        assert!(set.contains(7, 100 * S, 60));
        assert!(set.contains(7, 150 * S, 60));
        assert!(!set.contains(7, 170 * S, 60), "70 s later, ttl 60 s");
        assert!(!set.contains(8, 100 * S, 60), "another tag");
        assert!(set.remember(7, 165 * S));
        assert!(set.contains(7, 170 * S, 60), "renewed");
    }

    #[test]
    fn a_new_source_takes_the_oldest_way() {
        let mut set = KnownSet::EMPTY;
        for tag in 0..KNOWN_WAYS as u32 {
            set.remember(tag + 1, (10 + u64::from(tag) * 2) * S);
        }
        assert!((1..=KNOWN_WAYS as u32).all(|tag| set.contains(tag, 30 * S, 600)));
        set.remember(100, 40 * S);
        assert!(
            !set.contains(1, 40 * S, 600),
            "tag 1, the oldest, made room"
        );
        assert!(set.contains(100, 40 * S, 600));
        assert!((2..=KNOWN_WAYS as u32).all(|tag| set.contains(tag, 40 * S, 600)));
        assert_eq!(set.live(40 * S, 600), KNOWN_WAYS);
        assert_eq!(
            set.live(40 * S, 20),
            4,
            "within 20 s of 40 s: the ways stamped at 20, 22, 24 and 40 s"
        );
    }

    #[test]
    fn ttls_and_stamps() {
        assert_eq!(stamp(0), 1);
        assert_eq!(stamp(1 << 31), 2);
        assert_eq!(ttl_stamps(0), 1);
        assert_eq!(ttl_stamps(1), 1);
        assert_eq!(ttl_stamps(600), 559, "600 s in 1.074 s units, rounded up");
    }

    #[test]
    fn slots_stay_in_the_table_and_spread() {
        let mut used = [false; KNOWN_SETS];
        for i in 0..4096u32 {
            let source = source_key(&v4_mapped((0x0a00_0000 | i).to_be_bytes()), 32, 64);
            let (set, _) = known_slot(&source, 0x1234);
            used[set as usize] = true;
        }
        // 4,096 sources over 1,024 sets leave about 1024 / e^4 ≈ 19 empty.
        let empty = used.iter().filter(|u| !**u).count();
        assert!(empty < 60, "{empty} sets unused");
    }
}
