//! The CIDR blocklist's prefilter: one bit per IPv4 /16 and per hashed IPv6 /32, set when a blocked prefix may
//! cover addresses there, so that the XDP program looks a source up in the LPM trie (`xdp_block_net`) only when
//! its bit is set.
//!
//! The trie lookup is a kernel function walking one node per branching bit: ≈ 29 ns per listener packet with
//! 10,000 prefixes (`cargo xtask bench xdp`), as much as the rest of a SYN's path. A clear bit proves that no
//! prefix covers the source, so the filter never lets a blocked source through; a set bit only means "look": a
//! source sharing a /16 (or a /32's hash) with a blocked prefix pays the lookup as before.
//!
//! The filter is derived state: whoever changes the trie sets it from the trie's entries ([`mark`]): `portcullis
//! xdp block add` the new prefix's bits, `block del` and the daemon at start the whole filter, rebuilt. An entry
//! written into the trie by other means (bpftool) blocks only once a rebuild has run.
//!
//! Bits `0..65536` are IPv4 (`a.b` of `a.b.c.d` as a 16-bit number), bits `65536..131072` IPv6 (a multiplicative
//! hash of the first 32 bits; not keyed: addresses chosen to collide with a blocked /32 only pay the lookup).

use crate::limits::{ADDR_LEN, V4_MAPPED_PREFIX_BITS, is_v4_mapped, v4_mapped};

/// Bits of the filter: 2^16 for IPv4 /16s, 2^16 for IPv6 /32 hashes.
pub const FILTER_BITS: u32 = 1 << 17;
/// 64-bit words of the filter (16 KiB).
pub const FILTER_WORDS: usize = (FILTER_BITS / 64) as usize;

/// The whole filter, as the daemon builds it before writing it into the map word by word.
pub type Filter = [u64; FILTER_WORDS];

/// First bit of the IPv6 half.
const V6_BASE: u32 = 1 << 16;
/// Fibonacci hashing's multiplier (2^64 / golden ratio).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The filter bit of source `src` (IPv6, or IPv4-mapped as the trie keys it).
#[inline(always)]
pub fn source_bit(src: &[u8; ADDR_LEN]) -> u32 {
    if is_v4_mapped(src) {
        u32::from(src[12]) << 8 | u32::from(src[13])
    } else {
        v6_bit(u32::from_be_bytes([src[0], src[1], src[2], src[3]]))
    }
}

/// The word of the filter that holds `bit`, and the bit's mask in it.
#[inline(always)]
pub const fn word_of(bit: u32) -> (u32, u64) {
    (bit / 64, 1 << (bit % 64))
}

/// The IPv6 bit of addresses whose first 32 bits are `top`.
#[inline(always)]
const fn v6_bit(top: u32) -> u32 {
    V6_BASE + ((top as u64).wrapping_mul(GOLDEN) >> 48) as u32
}

/// The bits a trie entry `(prefix_bits, addr)` (as [`crate::limits::block_entry`] makes them) sets: every bit
/// whose addresses the prefix may cover. Each item is a run `(first bit, count)`.
pub fn entry_bits(prefix_bits: u32, addr: &[u8; ADDR_LEN]) -> [Option<(u32, u32)>; 2] {
    let bits = prefix_bits.min(128);
    // IPv6: one /32's bit, or all of them for a shorter prefix (it may cover any /32's hash).
    let v6 = if bits >= 32 {
        (
            v6_bit(u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]])),
            1,
        )
    } else {
        (V6_BASE, V6_BASE)
    };
    // IPv4: only if the prefix covers some IPv4-mapped address, i.e. agrees with ::ffff:0:0 on its first bits.
    let mapped = v4_mapped([0; 4]);
    let shared = bits.min(V4_MAPPED_PREFIX_BITS);
    let v4 = if prefix_agrees(addr, &mapped, shared) {
        if bits <= V4_MAPPED_PREFIX_BITS {
            Some((0, V6_BASE))
        } else {
            let v4_bits = bits - V4_MAPPED_PREFIX_BITS;
            let net16 = u32::from(addr[12]) << 8 | u32::from(addr[13]);
            if v4_bits >= 16 {
                Some((net16, 1))
            } else {
                let count = 1 << (16 - v4_bits);
                Some((net16 & !(count - 1), count))
            }
        }
    } else {
        None
    };
    [v4, Some(v6)]
}

/// Whether `a` and `b` agree on their first `bits` bits (at most 128).
fn prefix_agrees(a: &[u8; ADDR_LEN], b: &[u8; ADDR_LEN], bits: u32) -> bool {
    let (a, b) = (u128::from_be_bytes(*a), u128::from_be_bytes(*b));
    match bits {
        0 => true,
        1..=127 => (a ^ b) >> (128 - bits) == 0,
        _ => a == b,
    }
}

/// Sets in `filter` the bits of the trie entry `(prefix_bits, addr)`.
pub fn mark(filter: &mut Filter, prefix_bits: u32, addr: &[u8; ADDR_LEN]) {
    for (first, count) in entry_bits(prefix_bits, addr).into_iter().flatten() {
        let end = first + count;
        let mut bit = first;
        while bit < end {
            let (index, mask) = word_of(bit);
            let Some(word) = filter.get_mut(index as usize) else {
                return;
            };
            // Whole words where the run covers them (a run of 64 or more is a power of two, aligned).
            if mask == 1 && end - bit >= 64 {
                *word = u64::MAX;
                bit += 64;
            } else {
                *word |= mask;
                bit += 1;
            }
        }
    }
}

/// Whether `filter` has `bit` set (what the XDP program tests, from the map).
pub fn is_set(filter: &Filter, bit: u32) -> bool {
    let (index, mask) = word_of(bit);
    filter
        .get(index as usize)
        .is_some_and(|word| word & mask != 0)
}

#[cfg(test)]
mod tests {
    use super::{FILTER_WORDS, Filter, entry_bits, is_set, mark, source_bit};
    use crate::limits::{ADDR_LEN, block_entry, mask};
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// A fixed pseudo-random sequence (splitmix64).
    struct Sequence(u64);

    impl Sequence {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    /// Whether the trie entry `(bits, net)` covers `src`, as the LPM trie decides it.
    fn covers(bits: u32, net: &[u8; ADDR_LEN], src: &[u8; ADDR_LEN]) -> bool {
        let mut masked = *src;
        mask(&mut masked, bits);
        masked == *net
    }

    fn v4(a: [u8; 4]) -> [u8; ADDR_LEN] {
        crate::limits::v4_mapped(a)
    }

    #[test]
    fn a_covered_source_always_finds_its_bit_set() {
        let mut seq = Sequence(7);
        let entry = |seq: &mut Sequence| -> (u32, [u8; ADDR_LEN]) {
            let r = seq.next();
            let (net, len) = if r.is_multiple_of(2) {
                (
                    IpAddr::V4(Ipv4Addr::from(r as u32 >> 8)),
                    (r >> 40) as u8 % 33,
                )
            } else {
                let top = u128::from(seq.next()) << 64;
                (IpAddr::V6(Ipv6Addr::from(top)), (r >> 40) as u8 % 129)
            };
            block_entry(net, len).expect("valid length")
        };
        let mut checked = 0;
        for _ in 0..2_000 {
            let (bits, net) = entry(&mut seq);
            let mut filter: Filter = [0; FILTER_WORDS];
            mark(&mut filter, bits, &net);
            // Sources inside the prefix (its bits, random host bits) and random ones.
            for _ in 0..50 {
                let host = u128::from(seq.next()) << 64 | u128::from(seq.next());
                let keep = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits.min(128))
                };
                let inside = (u128::from_be_bytes(net) & keep | host & !keep).to_be_bytes();
                for src in [
                    inside,
                    host.to_be_bytes(),
                    v4((seq.next() as u32).to_be_bytes()),
                ] {
                    if covers(bits, &net, &src) {
                        checked += 1;
                        assert!(
                            is_set(&filter, source_bit(&src)),
                            "{src:?} is inside {net:?}/{bits} but its bit is clear"
                        );
                    }
                }
            }
        }
        assert!(checked > 50_000, "only {checked} covered sources tried");
    }

    #[test]
    fn the_wide_prefixes_cover_their_whole_family() {
        let all = |bits: u32, net: [u8; ADDR_LEN]| entry_bits(bits, &net);
        // ::/0 covers IPv4-mapped addresses too.
        assert_eq!(
            all(0, [0; 16]),
            [Some((0, 1 << 16)), Some((1 << 16, 1 << 16))]
        );
        // 0.0.0.0/0 (IPv4-mapped /96) covers every IPv4 address and no IPv6 one but its own /32 (::, harmless).
        let (bits, net) = block_entry("0.0.0.0".parse().expect("address"), 0).expect("valid");
        assert_eq!(entry_bits(bits, &net)[0], Some((0, 1 << 16)));
        // 2001:db8::/16 is shorter than a /32: every IPv6 bit, no IPv4 one.
        let (bits, net) = block_entry("2001:db8::".parse().expect("address"), 16).expect("valid");
        assert_eq!(entry_bits(bits, &net), [None, Some((1 << 16, 1 << 16))]);
    }

    #[test]
    fn a_narrow_prefix_sets_only_its_own_bits() {
        // 192.0.2.0/24 sets the one bit of 192.0/16, so 198.51.100.7 (another /16) skips the lookup.
        let (bits, net) = block_entry("192.0.2.0".parse().expect("address"), 24).expect("valid");
        assert_eq!(entry_bits(bits, &net)[0], Some((0xc000, 1)));
        // 10.0.0.0/14 sets the four /16s 10.0 to 10.3.
        let (bits, net) = block_entry("10.1.0.0".parse().expect("address"), 14).expect("valid");
        assert_eq!(entry_bits(bits, &net)[0], Some((0x0a00, 4)));
        let mut filter: Filter = [0; FILTER_WORDS];
        mark(&mut filter, bits, &net);
        assert!(is_set(&filter, source_bit(&v4([10, 3, 255, 255]))));
        assert!(!is_set(&filter, source_bit(&v4([10, 4, 0, 0]))));
        let set: u32 = filter.iter().map(|w| w.count_ones()).sum();
        assert_eq!(
            set,
            4 + 1,
            "four IPv4 /16s and one IPv6 hash (of ::ffff:0:0's first 32 bits)"
        );
    }
}
