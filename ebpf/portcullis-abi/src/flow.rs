//! Connection tracking for the ClientHello check: a SYN to a listener port records its flow and initial sequence
//! number in the flow table [`crate::names::MAP_XDP_FLOWS`], and the segment that starts the flow's byte stream
//! (sequence number ISN + 1: the first segment, or its retransmission) is parsed as a ClientHello.
//!
//! The table is a 2-way set-associative cache of 64-bit tags in an array map, not a hash map: recording a flow is
//! a hash, one array slot and two stores, where an LRU hash map update took a free-list pop, a bucket lock and a
//! free-list push (≈ 190 of the SYN path's ≈ 220 ns, `BENCHMARKS.md`). A flow's [`FlowKey::hash`] picks its set
//! ([`flow_set`]); the set holds [`flow_tag`]s of (flow, ISN), newest first, so one 64-bit compare answers
//! "is this the segment at ISN + 1 of a recorded flow". A tag is written with one aligned 8-byte store, so a race
//! between CPUs can lose a flow but never pair one flow with another's ISN.
//!
//! Untracked flows pass: connections older than the program and flows pushed out of their set by two newer ones
//! (under a SYN flood, much as the LRU map evicted its oldest); so do later segments, even one that arrives before
//! the first (reordering), which is not the start of a ClientHello. The check fails open by construction. Flows
//! are never deleted: newer SYNs overwrite them.

use crate::limits::{ADDR_LEN, address_half};

/// One TCP connection as the server sees it arrive: source and destination address (IPv4-mapped for IPv4,
/// see [`crate::limits`]) and ports in host byte order. 36 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address.
    pub src: [u8; ADDR_LEN],
    /// Server (listener) address.
    pub dst: [u8; ADDR_LEN],
    /// Client TCP port.
    pub src_port: u16,
    /// Listener TCP port.
    pub dst_port: u16,
}

const _: () = assert!(size_of::<FlowKey>() == 36);

// SAFETY: `#[repr(C)]`, integers only, no padding (size asserted), so every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}

/// Sets in the flow table (a power of two): the array map's `max_entries`. Every passing SYN writes a random set,
/// so the table's size is what a SYN flood's SYNs cost in cache misses: 256 KiB (32,768 flows, each kept for the
/// one round trip to its first segment) stays in a core's L2 where the 1 MiB of 131,072 flows did not (a new flow's
/// SYN ≈ 70–90 ns net then, ≈ 40–60 now: `BENCHMARKS.md`, issue 21). Under a spoofed flood a flow is pushed out
/// four times sooner, and its ClientHello passes unparsed (fail open), as it did a little later before.
pub const FLOW_SETS: usize = 1 << 14;

/// Flows one set holds; with [`FLOW_SETS`], 32,768 flows in 256 KiB.
pub const FLOW_WAYS: usize = 2;

/// One set of the flow table, the array map's value: [`flow_tag`]s, newest first; 0 is an empty way (no tag is 0).
pub type FlowSet = [u64; FLOW_WAYS];

/// Multiplier of the flow hash (2^64 / golden ratio, as in Fibonacci hashing).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl FlowKey {
    /// A 64-bit hash of the flow, from which [`flow_set`] and [`flow_tag`] are derived. Not keyed: a client that
    /// crafts collisions only pushes flows out of their set, which makes them pass unparsed (fail open) exactly as
    /// a SYN flood does.
    #[inline(always)]
    pub fn hash(&self) -> u64 {
        let word =
            |bytes: &[u8; ADDR_LEN], half: usize| u64::from_le_bytes(address_half(bytes, half));
        let ports = (u64::from(self.src_port) << 16) | u64::from(self.dst_port);
        let mut h = ports;
        for w in [
            word(&self.src, 0),
            word(&self.src, 1),
            word(&self.dst, 0),
            word(&self.dst, 1),
        ] {
            h = (h ^ w).wrapping_mul(GOLDEN);
            h ^= h >> 29;
        }
        h
    }
}

/// The set of the flow table that holds the flow of `hash` ([`FlowKey::hash`]): an index below [`FLOW_SETS`].
#[inline(always)]
pub const fn flow_set(hash: u64) -> u32 {
    ((hash >> 32) as u32) & (FLOW_SETS as u32 - 1)
}

/// The tag recording the flow of `hash` opened with initial sequence number `isn`; never 0.
#[inline(always)]
pub const fn flow_tag(hash: u64, isn: u32) -> u64 {
    let mut z = hash ^ isn as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// Records `tag` as the newest flow of `set`; the oldest of the others makes room. A tag already there (a
/// retransmitted SYN) moves to the front instead of taking a second way.
#[inline(always)]
pub fn record(set: &mut FlowSet, tag: u64) {
    if set[0] != tag {
        set[1] = set[0];
        set[0] = tag;
    }
}

/// Whether `set` holds `tag`.
#[inline(always)]
pub fn contains(set: &FlowSet, tag: u64) -> bool {
    set[0] == tag || set[1] == tag
}

/// What a resumption offer costs by default, in thousandths of a full handshake, when the config says 0.
pub const FULL_HELLO_COST_MILLI: u64 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src_port: u16) -> FlowKey {
        FlowKey {
            src: crate::limits::v4_mapped([10, 0, 0, 7]),
            dst: crate::limits::v4_mapped([10, 0, 0, 1]),
            src_port,
            dst_port: 443,
        }
    }

    #[test]
    fn a_set_keeps_the_two_newest_flows() {
        let mut set = FlowSet::default();
        let [a, b, c] = [1, 2, 3].map(|port| flow_tag(key(port).hash(), 7));
        assert!(!contains(&set, a), "an empty set holds nothing");
        record(&mut set, a);
        record(&mut set, b);
        assert!(contains(&set, a) && contains(&set, b));
        record(&mut set, b);
        assert!(
            contains(&set, a),
            "a retransmitted SYN does not push the other flow out"
        );
        record(&mut set, c);
        assert!(!contains(&set, a) && contains(&set, b) && contains(&set, c));
        record(&mut set, b);
        assert_eq!(set, [b, c], "a SYN seen again moves to the front");
    }

    #[test]
    fn tags_tell_flows_and_sequence_numbers_apart() {
        let mut tags = alloc::vec::Vec::new();
        for port in 0..64 {
            for isn in [0, 1, u32::MAX] {
                tags.push(flow_tag(key(port).hash(), isn));
            }
        }
        assert!(tags.iter().all(|t| *t != 0), "0 marks an empty way");
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), 64 * 3);
    }

    #[test]
    fn flows_spread_over_the_sets() {
        let mut used = alloc::collections::BTreeSet::new();
        for port in 0..4096 {
            let set = flow_set(key(port).hash());
            assert!((set as usize) < FLOW_SETS);
            used.insert(set);
        }
        // 4,096 flows into 16,384 sets: about 3,624 distinct sets for a uniform hash (sd ≈ 27).
        assert!(used.len() > 3500, "{} sets used", used.len());
    }
}
