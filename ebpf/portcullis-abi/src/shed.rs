//! The memory of SYN load shedding: which flows' SYNs were shed, so that their retransmissions are told apart from
//! new SYNs (`syn_retry_shed_ppm`, [`crate::names::MAP_XDP_SYN_SHED`]).
//!
//! A 3-way set-associative table of 21-bit tags of (flow, ISN), three to a 64-bit set, newest in the low bits:
//! 32,768 sets, 98,304 shed flows in 256 KiB. A SYN storm writes one random set per shed SYN, so the table's size
//! is the shed path's cost: its first layout, the flow table's (2-way sets of 64-bit tags, 131,072 flows in 1 MiB), made a shed
//! SYN ≈ 90 ns net, a cache miss each, and 32-bit tags in 512 KiB still ≈ 77 (`BENCHMARKS.md`, issue 21). A quarter
//! of the bytes keeps three quarters of the capacity, sized for a 10x storm's SYNs in flight over the clients'
//! retransmission window. What a short tag gives up is nothing that breaks: a new SYN whose tag matches a shed
//! flow's in its set (at most 3 in 2^21) is shed at the retry fraction instead of the fresh one; nothing passes or
//! breaks because of it, unlike a false match in the flow table (a data segment judged as a ClientHello), which
//! keeps 64-bit tags.
//!
//! A flow pushed out of its set by three newer shed flows retries as a new SYN (fail open). A set is read and
//! written as one aligned 8-byte word, so two CPUs recording at once lose one of the flows at worst.

use crate::flow::flow_tag;

/// Sets in the table: the array map's `max_entries`, a power of two.
pub const SHED_SETS: usize = 1 << 15;

/// Shed flows one set holds.
pub const SHED_WAYS: usize = 3;

/// Bits of a [`shed_tag`].
pub const SHED_TAG_BITS: u32 = 21;

/// The mask of one way of a set.
const WAY: u64 = (1 << SHED_TAG_BITS) - 1;

/// One set, the array map's value: [`SHED_WAYS`] [`shed_tag`]s of [`SHED_TAG_BITS`] each, the newest in bits
/// 0..21, then 21..42, 42..63; bit 63 is always 0, and so is an empty way (no tag is 0).
pub type ShedSet = u64;

const _: () = assert!(SHED_WAYS as u32 * SHED_TAG_BITS <= 64);

/// The set of the flow of `hash` (`FlowKey::hash`): an index below [`SHED_SETS`], from the bits `flow::flow_set` takes.
#[inline(always)]
pub const fn shed_set(hash: u64) -> u32 {
    ((hash >> 32) as u32) & (SHED_SETS as u32 - 1)
}

/// The tag recording the flow of `hash` opened with initial sequence number `isn`: the low [`SHED_TAG_BITS`] of its
/// [`flow_tag`] (which are mixed from the whole hash and ISN), never 0 (the flow tag's bit 0 is set).
#[inline(always)]
pub const fn shed_tag(hash: u64, isn: u32) -> u64 {
    flow_tag(hash, isn) & WAY
}

/// Whether `set` holds `tag`.
#[inline(always)]
pub const fn shed_contains(set: ShedSet, tag: u64) -> bool {
    set & WAY == tag
        || (set >> SHED_TAG_BITS) & WAY == tag
        || (set >> (2 * SHED_TAG_BITS)) & WAY == tag
}

/// `set` with `tag` recorded as its newest flow, the oldest pushed out; a tag already newest (a retransmission shed
/// again) leaves the set as it is.
#[inline(always)]
pub const fn shed_record(set: ShedSet, tag: u64) -> ShedSet {
    if set & WAY == tag {
        set
    } else {
        ((set << SHED_TAG_BITS) | tag) & ((1 << (SHED_WAYS as u32 * SHED_TAG_BITS)) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FlowKey;

    fn hash(src_port: u16) -> u64 {
        FlowKey {
            src: crate::limits::v4_mapped([10, 0, 0, 7]),
            dst: crate::limits::v4_mapped([10, 0, 0, 1]),
            src_port,
            dst_port: 443,
        }
        .hash()
    }

    #[test]
    fn a_set_keeps_the_three_newest_shed_flows() {
        let [a, b, c, d] = [1, 2, 3, 4].map(|port| shed_tag(hash(port), 7));
        let mut set: ShedSet = 0;
        assert!(!shed_contains(set, a), "an empty set holds nothing");
        for tag in [a, b, c] {
            set = shed_record(set, tag);
        }
        assert!([a, b, c].iter().all(|&t| shed_contains(set, t)));
        assert_eq!(
            shed_record(set, c),
            set,
            "a retry shed again changes nothing"
        );
        set = shed_record(set, d);
        assert!(!shed_contains(set, a), "the oldest made room");
        assert!([b, c, d].iter().all(|&t| shed_contains(set, t)));
        assert_eq!(set >> 63, 0, "bit 63 stays clear");
    }

    #[test]
    fn tags_tell_flows_and_sequence_numbers_apart() {
        let mut tags = alloc::vec::Vec::new();
        for port in 0..256 {
            for isn in [0, 1, u32::MAX] {
                tags.push(shed_tag(hash(port), isn));
            }
        }
        assert!(tags.iter().all(|t| *t != 0), "0 marks an empty way");
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), 256 * 3);
    }

    #[test]
    fn a_retransmission_is_found_in_its_set_among_many() {
        // 4,000 shed flows (the privileged test's storm) into the table; each one's retry finds its tag in its set
        // unless three later flows took the set, and no other flow's SYN finds one.
        let mut table = alloc::vec![0 as ShedSet; SHED_SETS];
        let flows: alloc::vec::Vec<_> = (0..4000u16)
            .map(|port| (hash(port), u32::from(port) * 31))
            .collect();
        for &(h, isn) in &flows {
            let set = &mut table[shed_set(h) as usize];
            *set = shed_record(*set, shed_tag(h, isn));
        }
        let found = flows
            .iter()
            .filter(|&&(h, isn)| shed_contains(table[shed_set(h) as usize], shed_tag(h, isn)))
            .count();
        assert!(found >= 3995, "{found} of 4000 retries recognised");
        let strangers = (4000..8000u16)
            .filter(|&port| {
                shed_contains(
                    table[shed_set(hash(port)) as usize],
                    shed_tag(hash(port), 5),
                )
            })
            .count();
        assert_eq!(strangers, 0, "a new flow is taken for a retry");
    }
}
