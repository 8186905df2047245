//! Per-source budgets and the source blocklist: the map key and value layouts and the arithmetic, shared by the
//! XDP program and the daemon's CLI, and unit-tested here.
//!
//! Addresses are 16 bytes everywhere: IPv4 sources are IPv4-mapped (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2), so one
//! budget table and one LPM trie serve both families.

use core::net::IpAddr;

/// Length of an address in keys: IPv6, or IPv4-mapped IPv6.
pub const ADDR_LEN: usize = 16;

/// Prefix length, in bits, of the `::ffff:0:0/96` IPv4-mapped range.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// Longest time a bucket refills for at once, in nanoseconds (10 s): bounds the refill arithmetic, and a bucket
/// idle that long is full anyway for any burst of at most 10 s worth of rate.
pub const MAX_REFILL_NS: u64 = 10_000_000_000;

/// Cost of one SYN, in thousandths of a token.
pub const SYN_COST_MILLI: u64 = 1000;

/// One budget's source: the address masked to the configured prefix length ([`BudgetSlot::source`]). 8-byte
/// aligned, so that copies and comparisons are two 64-bit words in BPF rather than 16 bytes one by one.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// IPv6 or IPv4-mapped address, host bits beyond the prefix zeroed.
    pub addr: [u8; ADDR_LEN],
}

const _: () = assert!(size_of::<SourceKey>() == 16);

impl SourceKey {
    /// The address as two native-endian words. The whole key is copied first, an 8-byte-aligned place, so BPF reads
    /// it with two 8-byte loads; comparing or slicing the bytes loads them one by one (`==` on the byte array did:
    /// a quarter of a new source's SYN, profiled).
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = self.addr;
        [
            u64::from_ne_bytes([a, b, c, d, e, f, g, h]),
            u64::from_ne_bytes([i, j, k, l, m, n, o, p]),
        ]
    }

    /// Whether `self` and `other` are the same source, compared word by word (see [`SourceKey::words`]).
    #[inline(always)]
    pub fn same(&self, other: &SourceKey) -> bool {
        let (x, y) = (self.words(), other.words());
        x[0] == y[0] && x[1] == y[1]
    }
}

/// One token bucket ([`BudgetSlot::bucket`]).
///
/// Layout (16 bytes): `tokens_milli` at 0, `last_ns` at 8. Updated without atomics from whichever CPU sees the
/// source's packet: two CPUs racing on one source can each spend the same token, so a source may exceed its
/// budget by at most one token per CPU per race. That is the price of a lock-free hot path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens left, in thousandths of a token.
    pub tokens_milli: u64,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC, one tick of resolution) of the last refill, in nanoseconds.
    pub last_ns: u64,
}

const _: () = assert!(size_of::<TokenBucket>() == 16);

impl TokenBucket {
    /// A full bucket of `burst` tokens at time `now_ns`.
    pub const fn full(burst: u32, now_ns: u64) -> TokenBucket {
        TokenBucket {
            tokens_milli: burst as u64 * 1000,
            last_ns: now_ns,
        }
    }

    /// Refills at `rate_per_sec` tokens per second up to `burst` tokens, then spends `cost_milli` thousandths of
    /// a token if that many are left. Returns whether they were. A clock that went backwards refills nothing.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, rate_per_sec: u32, burst: u32, cost_milli: u64) -> bool {
        self.tokens_milli = self.level(now_ns, rate_per_sec, burst);
        // A stamp in the future is a penalty ([`TokenBucket::penalized`]): it stays until then.
        if now_ns > self.last_ns {
            self.last_ns = now_ns;
        }
        self.spend(cost_milli)
    }

    /// An empty bucket that refills nothing until `until_ns`: a penalty, which [`TokenBucket::level`] honours
    /// because it refills only for time after the stamp.
    pub const fn penalty(until_ns: u64) -> TokenBucket {
        TokenBucket {
            tokens_milli: 0,
            last_ns: until_ns,
        }
    }

    /// Whether the bucket serves a penalty at `now_ns` ([`TokenBucket::penalty`]).
    #[inline(always)]
    pub const fn penalized(&self, now_ns: u64) -> bool {
        self.last_ns > now_ns
    }

    /// The tokens the bucket would hold at `now_ns` once refilled at `rate_per_sec` up to `burst`, in thousandths,
    /// without changing it.
    #[inline(always)]
    pub fn level(&self, now_ns: u64, rate_per_sec: u32, burst: u32) -> u64 {
        let mut elapsed = now_ns.saturating_sub(self.last_ns);
        if elapsed > MAX_REFILL_NS {
            elapsed = MAX_REFILL_NS;
        }
        // elapsed * rate / 10^6 thousandths, without dividing (BPF has no multiply-high, so LLVM emits a real
        // division for a constant divisor, ≈ 20 ns each on this machine's JIT): in 64 ns units elapsed < 2^28, times
        // a rate < 2^32 stays below 2^60; x * 64 / 10^6 = x * 1.048576 / 2^14, and 1.048576 = 1 + 3183.5 / 2^16.
        // Rounded to the nearest thousandth, within 0.001% of the exact refill.
        let x = (elapsed >> 6) * rate_per_sec as u64;
        let refill = (x + (x >> 16) * 3183 + (1 << 13)) >> 14;
        let cap = burst as u64 * 1000;
        let tokens = self.tokens_milli.saturating_add(refill);
        if tokens > cap { cap } else { tokens }
    }

    /// Spends `cost_milli` thousandths of a token if that many are left, without refilling. Returns whether they
    /// were.
    #[inline(always)]
    pub fn spend(&mut self, cost_milli: u64) -> bool {
        if self.tokens_milli >= cost_milli {
            self.tokens_milli -= cost_milli;
            true
        } else {
            false
        }
    }
}

/// Sets in each budget table ([`crate::names::MAP_XDP_SYN_BUDGET`], [`crate::names::MAP_XDP_HELLO_BUDGET`]): the
/// array map's `max_entries`, a power of two. 2,048 sets of [`BUDGET_WAYS`]: 4,096 sources in 128 KiB per table.
pub const BUDGET_SETS: usize = 1 << 11;

/// Map flags of the budget tables: `BPF_F_MMAPABLE` (include/uapi/linux/bpf.h), for its side effect: the kernel then
/// puts an array's first value at a page boundary (kernel/bpf/arraymap.c), where a plain array's values start 16
/// bytes into a cache line, and a 64-byte [`BudgetSet`] would span two lines, two cache misses for a new source.
pub const BUDGET_MAP_FLAGS: usize = 1 << 10;

/// Sources one [`BudgetSet`] holds.
pub const BUDGET_WAYS: usize = 2;

/// One source's budget: the source and its bucket, a way of a [`BudgetSet`].
///
/// Layout (32 bytes): `source` at 0, `bucket` at 16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetSlot {
    /// The source whose bucket this is.
    pub source: SourceKey,
    /// Its bucket; `last_ns == 0` marks a way never used.
    pub bucket: TokenBucket,
}

const _: () = assert!(size_of::<BudgetSlot>() == 32);

/// Value of the budget tables: the sources of one set, picked by a keyed hash of the source ([`budget_set`]), and
/// their buckets; one cache line.
///
/// Small, so that it stays in cache: every SYN of a spoofed-source flood is a new source and writes a random set,
/// and the 2 MiB table of 65,536 one-source slots this replaced cost such a SYN ≈ 140–180 ns net, cache misses
/// mostly (`BENCHMARKS.md`, issue 21). An array indexed by hash, not an LRU hash map: a new source costs the same as
/// a known one, where an LRU insert took a free-list pop, a bucket lock and a free-list push (≈ 190 ns when the flow
/// table made the same move).
///
/// A source new to its set takes the way whose bucket holds more once refilled ([`TokenBucket::level`]), with a
/// full bucket: the one-SYN sources of a spoofed flood (a full bucket less one SYN) push each other out and leave a
/// source that spent its budget where it is, so a spoofed flood cannot wash out the budget of the source the budget
/// is for, which a slot per source lost to the next stranger hashed to it. A source that stopped sending refills and
/// is the first to go. The hash is keyed with the random seed in [`crate::names::MAP_XDP_BUDGET_SEED`], so a client
/// cannot pick addresses that share a set. Two CPUs writing one set at once can tear a way: the next packet of its
/// source then finds a stranger there and starts a full bucket (fail open).
///
/// Layout (64 bytes): `ways` at 0, [`BUDGET_WAYS`] [`BudgetSlot`]s of 32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetSet {
    /// The sources of this set and their buckets.
    pub ways: [BudgetSlot; BUDGET_WAYS],
}

const _: () = assert!(size_of::<BudgetSet>() == 64);

impl BudgetSlot {
    /// Whether this way holds `source`'s bucket.
    #[inline(always)]
    pub fn holds(&self, source: &SourceKey) -> bool {
        self.source.same(source) && self.bucket.last_ns != 0
    }
}

impl BudgetSet {
    /// The way holding `source`'s bucket, 0 or 1, and whether it was taken over now: the one it had, or else the
    /// way whose bucket would hold more at `now_ns` (an unused one first), taken over with a full bucket of `burst`.
    #[inline(always)]
    pub fn way_of(
        &mut self,
        source: &SourceKey,
        now_ns: u64,
        rate_per_sec: u32,
        burst: u32,
    ) -> (usize, bool) {
        if self.ways[0].holds(source) {
            return (0, false);
        }
        if self.ways[1].holds(source) {
            return (1, false);
        }
        let level = |way: &BudgetSlot| {
            if way.bucket.last_ns == 0 {
                u64::MAX
            } else {
                way.bucket.level(now_ns, rate_per_sec, burst)
            }
        };
        let way = if level(&self.ways[0]) >= level(&self.ways[1]) {
            0
        } else {
            1
        };
        self.ways[way] = BudgetSlot {
            source: *source,
            bucket: TokenBucket::full(burst, now_ns),
        };
        (way, true)
    }

    /// [`BudgetSet::take`] for a SYN: also tells a source serving a penalty ([`TokenBucket::penalty`]) apart from
    /// one merely over its budget.
    #[inline(always)]
    pub fn take_syn(
        &mut self,
        source: &SourceKey,
        now_ns: u64,
        rate_per_sec: u32,
        burst: u32,
    ) -> SynSpend {
        let (way, new) = self.way_of(source, now_ns, rate_per_sec, burst);
        let bucket = &mut self.ways[way].bucket;
        if new {
            return if bucket.spend(SYN_COST_MILLI) {
                SynSpend::Taken
            } else {
                SynSpend::Short
            };
        }
        if bucket.penalized(now_ns) {
            return SynSpend::Penalized;
        }
        if bucket.take(now_ns, rate_per_sec, burst, SYN_COST_MILLI) {
            SynSpend::Taken
        } else {
            SynSpend::Short
        }
    }

    /// Puts `source` under a penalty until `until_ns`: its bucket (its way, or the one [`BudgetSet::way_of`] hands
    /// it) emptied and refilling nothing until then. A penalty already running past `until_ns` is kept (a short
    /// penalty never ends a longer one early). An empty bucket is the last a stranger pushes out of the set, so the
    /// penalty holds unless two sources serving one share the set with a third.
    #[inline(always)]
    pub fn penalize(
        &mut self,
        source: &SourceKey,
        now_ns: u64,
        until_ns: u64,
        rate_per_sec: u32,
        burst: u32,
    ) {
        let (way, _) = self.way_of(source, now_ns, rate_per_sec, burst);
        let bucket = &mut self.ways[way].bucket;
        if bucket.last_ns < until_ns {
            *bucket = TokenBucket::penalty(until_ns);
        }
    }

    /// [`TokenBucket::take`] on `source`'s bucket, in the way [`BudgetSet::way_of`] gives it (a bucket just taken
    /// over is full: spent from without a refill). Returns whether the tokens were there.
    #[inline(always)]
    pub fn take(
        &mut self,
        source: &SourceKey,
        now_ns: u64,
        rate_per_sec: u32,
        burst: u32,
        cost_milli: u64,
    ) -> bool {
        let (way, new) = self.way_of(source, now_ns, rate_per_sec, burst);
        let bucket = &mut self.ways[way].bucket;
        if new {
            bucket.spend(cost_milli)
        } else {
            bucket.take(now_ns, rate_per_sec, burst, cost_milli)
        }
    }
}

/// The set of `source` in a budget table whose hash is keyed with `seed`: an index below [`BUDGET_SETS`], the top
/// bits of [`source_hash`], as in Fibonacci hashing.
#[inline(always)]
pub fn budget_set(source: &SourceKey, seed: u64) -> u32 {
    (source_hash(source, seed) >> (64 - BUDGET_SETS.trailing_zeros())) as u32
}

/// A hash of `source` keyed with `seed`: the address as two big-endian words (so its last bytes, where neighbours
/// differ, are low bits that a multiply carries into every higher one), each mixed in by a multiply and a shift,
/// then one more multiply. Its top bits pick a budget set ([`budget_set`]), its lower ones a known-source set and
/// tag ([`crate::known`]).
#[inline(always)]
pub fn source_hash(source: &SourceKey, seed: u64) -> u64 {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    let words = source.words();
    let mut h = seed;
    let mut i = 0;
    while i < 2 {
        h = (h ^ u64::from_be(words[i])).wrapping_mul(GOLDEN);
        h ^= h >> 29;
        i += 1;
    }
    h.wrapping_mul(GOLDEN)
}

/// What [`BudgetSet::take_syn`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynSpend {
    /// A SYN's token was there and is spent.
    Taken,
    /// Too few tokens: over the budget.
    Short,
    /// The source serves a penalty ([`BudgetSet::penalize`]).
    Penalized,
}

/// The index of way `way` of set `set` of a budget table, for a program that finds the bucket again later (the
/// ClientHello budget, after the parse): `set * 2 + way`.
#[inline(always)]
pub const fn way_index(set: u32, way: usize) -> u32 {
    (set << 1) | (way as u32 & 1)
}

/// The set and way of an index made by [`way_index`].
#[inline(always)]
pub const fn split_way_index(index: u32) -> (u32, usize) {
    (index >> 1, (index & 1) as usize)
}

/// Whether `addr` is IPv4-mapped (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn is_v4_mapped(addr: &[u8; ADDR_LEN]) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}

/// An IPv4 address as the IPv4-mapped 16 bytes used in keys.
#[inline(always)]
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; ADDR_LEN] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Zeroes every bit of `addr` after the first `bits` (clamped to 128).
///
/// Two 64-bit halves at once, with constant indices (no variable offset for the BPF verifier), where a byte at a
/// time cost ≈ 30 ns on the XDP budget paths.
#[inline(always)]
pub fn mask(addr: &mut [u8; ADDR_LEN], bits: u32) {
    let halves = [half(addr, 0), half(addr, 1)];
    let mut i = 0;
    while i < 2 {
        let first_bit = i as u32 * 64;
        let kept = if bits <= first_bit {
            0
        } else if bits >= first_bit + 64 {
            u64::MAX
        } else {
            u64::MAX << (64 - (bits - first_bit))
        };
        let bytes = (halves[i] & kept).to_be_bytes();
        let mut j = 0;
        while j < 8 {
            addr[i * 8 + j] = bytes[j];
            j += 1;
        }
        i += 1;
    }
}

/// The budget key of source `src` (IPv6 or IPv4-mapped): IPv4 sources masked to `v4_prefix_len` bits (0..=32),
/// IPv6 ones to `v6_prefix_len` bits (0..=128); larger values are clamped.
#[inline(always)]
pub fn source_key(src: &[u8; ADDR_LEN], v4_prefix_len: u32, v6_prefix_len: u32) -> SourceKey {
    let mut addr = *src;
    let bits = if is_v4_mapped(src) {
        V4_MAPPED_PREFIX_BITS
            + if v4_prefix_len > 32 {
                32
            } else {
                v4_prefix_len
            }
    } else if v6_prefix_len > 128 {
        128
    } else {
        v6_prefix_len
    };
    mask(&mut addr, bits);
    SourceKey { addr }
}

/// Bytes `8 * i .. 8 * i + 8` of `addr` as a big-endian `u64`.
#[inline(always)]
fn half(addr: &[u8; ADDR_LEN], i: usize) -> u64 {
    u64::from_be_bytes(address_half(addr, i))
}

/// Bytes `8 * i .. 8 * i + 8` of `addr` (`i` is 0 or 1), by constant indices (no slice a BPF verifier must bound).
#[inline(always)]
pub(crate) const fn address_half(addr: &[u8; ADDR_LEN], i: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    let mut j = 0;
    while j < 8 {
        w[j] = addr[i * 8 + j];
        j += 1;
    }
    w
}

/// Returned by [`block_entry`] for a prefix length longer than the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadPrefixLen {
    /// The prefix length given.
    pub prefix_len: u8,
    /// The longest allowed for this family (32 or 128).
    pub max: u8,
}

impl core::fmt::Display for BadPrefixLen {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "prefix length /{} is longer than the address (at most /{})",
            self.prefix_len, self.max
        )
    }
}

impl core::error::Error for BadPrefixLen {}

/// The LPM trie entry `(prefix_len in bits, 16 address bytes)` for the network `net/prefix_len`, host bits
/// zeroed; IPv4 networks become IPv4-mapped with 96 added to the length.
///
/// # Errors
/// [`BadPrefixLen`] when `prefix_len` exceeds 32 (IPv4) or 128 (IPv6).
pub fn block_entry(net: IpAddr, prefix_len: u8) -> Result<(u32, [u8; ADDR_LEN]), BadPrefixLen> {
    let (mut addr, bits, max) = match net {
        IpAddr::V4(v4) => (
            v4_mapped(v4.octets()),
            V4_MAPPED_PREFIX_BITS + u32::from(prefix_len),
            32,
        ),
        IpAddr::V6(v6) => (v6.octets(), u32::from(prefix_len), 128),
    };
    if prefix_len > max {
        return Err(BadPrefixLen { prefix_len, max });
    }
    mask(&mut addr, bits);
    Ok((bits, addr))
}

/// The network of an LPM trie entry made by [`block_entry`], as `(address, prefix length)` in its own family.
pub fn block_network(prefix_bits: u32, addr: [u8; ADDR_LEN]) -> (IpAddr, u8) {
    if is_v4_mapped(&addr) && prefix_bits >= V4_MAPPED_PREFIX_BITS {
        let v4 = [addr[12], addr[13], addr[14], addr[15]];
        let len = (prefix_bits - V4_MAPPED_PREFIX_BITS).min(32) as u8;
        (IpAddr::from(v4), len)
    } else {
        (IpAddr::from(addr), prefix_bits.min(128) as u8)
    }
}

// SAFETY: `#[repr(C)]`, `Copy`, integers only with no padding (sizes asserted above): every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SourceKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TokenBucket {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for BudgetSlot {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for BudgetSet {}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn bucket_spends_the_burst_then_refills_at_the_rate() {
        let mut b = TokenBucket::full(3, 0);
        assert!((0..3).all(|_| b.take(0, 10, 3, SYN_COST_MILLI)));
        assert!(!b.take(0, 10, 3, SYN_COST_MILLI), "burst spent");
        assert!(
            !b.take(S / 20, 10, 3, SYN_COST_MILLI),
            "half a token after 50 ms at 10/s"
        );
        assert!(
            b.take(S / 10, 10, 3, SYN_COST_MILLI),
            "one token after 100 ms at 10/s"
        );
        assert!(b.take(100 * S, 10, 3, SYN_COST_MILLI));
        assert_eq!(b.tokens_milli, 2000, "refill stops at the burst");
    }

    #[test]
    fn bucket_survives_a_clock_going_backwards_and_huge_rates() {
        let mut b = TokenBucket::full(1, 5 * S);
        assert!(b.take(S, u32::MAX, 1, SYN_COST_MILLI));
        assert!(!b.take(S, u32::MAX, 1, SYN_COST_MILLI));
        assert!(b.take(u64::MAX, u32::MAX, u32::MAX, SYN_COST_MILLI));
    }

    #[test]
    fn source_keys_mask_to_the_prefix() {
        let v4 = v4_mapped([192, 0, 2, 77]);
        assert_eq!(source_key(&v4, 32, 64).addr, v4);
        assert_eq!(source_key(&v4, 24, 64).addr, v4_mapped([192, 0, 2, 0]));
        assert_eq!(source_key(&v4, 0, 64).addr, v4_mapped([0, 0, 0, 0]));
        assert_eq!(source_key(&v4, 99, 64).addr, v4, "clamped to /32");
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6).octets();
        assert_eq!(
            source_key(&v6, 32, 64).addr,
            Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 0).octets()
        );
        assert_eq!(
            source_key(&v6, 32, 60).addr,
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0).octets()
        );
    }

    #[test]
    fn source_keys_mask_like_u128_arithmetic_at_every_length() {
        // The same masking in 128-bit arithmetic, independent of `mask`'s two halves.
        let masked = |addr: [u8; ADDR_LEN], bits: u32| {
            let keep = u128::MAX.checked_shl(128 - bits.min(128)).unwrap_or(0);
            (u128::from_be_bytes(addr) & keep).to_be_bytes()
        };
        let v6 = [
            0x20, 0x01, 0x0d, 0xb8, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66,
            0x55, 0x44,
        ];
        let v4 = v4_mapped([203, 0, 113, 255]);
        for len in 0..=130 {
            assert_eq!(
                source_key(&v6, 32, len).addr,
                masked(v6, len),
                "IPv6 /{len}"
            );
            assert_eq!(
                source_key(&v4, len, 64).addr,
                masked(v4, 96 + len.min(32)),
                "IPv4 /{len}"
            );
        }
    }

    fn unused() -> BudgetSet {
        let way = BudgetSlot {
            source: SourceKey {
                addr: [0; ADDR_LEN],
            },
            bucket: TokenBucket {
                tokens_milli: 0,
                last_ns: 0,
            },
        };
        BudgetSet { ways: [way; 2] }
    }

    #[test]
    fn a_source_new_to_its_set_takes_a_way_with_a_full_bucket() {
        let [a, b, c] = [1, 2, 3].map(|i| source_key(&v4_mapped([192, 0, 2, i]), 32, 64));
        let mut set = unused();
        // An unused way (last_ns 0) is taken over even by the all-zero source it seems to hold.
        let zero = SourceKey {
            addr: [0; ADDR_LEN],
        };
        assert!(set.clone().take(&zero, S, 1, 1, SYN_COST_MILLI));
        assert!(set.take(&a, S, 1, 2, SYN_COST_MILLI));
        assert!(set.take(&a, S, 1, 2, SYN_COST_MILLI));
        assert!(!set.take(&a, S, 1, 2, SYN_COST_MILLI), "a spent its burst");
        assert!(
            set.take(&b, S, 1, 2, SYN_COST_MILLI),
            "b takes the unused way, full"
        );
        assert!(set.ways.iter().any(|w| w.source == a) && set.ways.iter().any(|w| w.source == b));
        assert!(set.take(&c, S, 1, 2, SYN_COST_MILLI), "c takes a way, full");
        assert!(
            set.ways.iter().all(|w| w.source != b),
            "pushing out b, whose bucket held more than a's"
        );
        assert!(
            !set.take(&a, S, 1, 2, SYN_COST_MILLI),
            "a is still over budget"
        );
    }

    #[test]
    fn a_spoofed_flood_does_not_wash_out_a_spent_budget() {
        let a = source_key(&v4_mapped([198, 51, 100, 1]), 32, 64);
        let mut set = unused();
        let (rate, burst) = (10, 5);
        let mut now = S;
        while set.take(&a, now, rate, burst, SYN_COST_MILLI) {}
        // A million spoofed sources, each one SYN, all into a's set, 100 ns apart: a's bucket refills at 10/s
        // meanwhile, one token each 100 ms, and a spends each as it comes; every stranger gets its full burst.
        let mut a_passed = 0;
        for i in 0..1_000_000u32 {
            now += 100;
            let stranger = source_key(&v4_mapped((0x0a00_0000 | i).to_be_bytes()), 32, 64);
            assert!(
                set.take(&stranger, now, rate, burst, SYN_COST_MILLI),
                "a stranger's first SYN passes"
            );
            if i % 1000 == 0 && set.take(&a, now, rate, burst, SYN_COST_MILLI) {
                a_passed += 1;
            }
        }
        // 0.1 s of flood refills a with one token: what the budget allows, not a fresh burst per stranger.
        assert!(
            a_passed <= 1,
            "a passed {a_passed} SYNs of 1,000 during the flood"
        );
        // A source that stopped refills, and is the first to make room.
        now += 10 * S;
        let b = source_key(&v4_mapped([198, 51, 100, 2]), 32, 64);
        let c = source_key(&v4_mapped([198, 51, 100, 3]), 32, 64);
        while set.take(&b, now, rate, burst, SYN_COST_MILLI) {}
        assert!(set.take(&c, now, rate, burst, SYN_COST_MILLI));
        assert!(set.ways.iter().any(|w| w.source == b), "b, spent, stays");
        assert!(
            set.ways.iter().all(|w| w.source != a),
            "a, idle and refilled, made room"
        );
    }

    #[test]
    fn a_penalty_drops_until_it_ends_then_the_bucket_refills() {
        let (a, b) = (
            source_key(&v4_mapped([203, 0, 113, 1]), 32, 64),
            source_key(&v4_mapped([203, 0, 113, 2]), 32, 64),
        );
        let (rate, burst) = (10, 5);
        let mut set = unused();
        assert_eq!(set.take_syn(&a, S, rate, burst), SynSpend::Taken);
        set.penalize(&a, S, 3 * S, rate, burst);
        for now in [S, 2 * S, 3 * S - 1] {
            assert_eq!(set.take_syn(&a, now, rate, burst), SynSpend::Penalized);
        }
        // A stranger pushes out the fuller way, not the penalized one; the penalty survives a SYN from it.
        assert_eq!(set.take_syn(&b, 2 * S, rate, burst), SynSpend::Taken);
        assert!(set.ways.iter().any(|w| w.source == a));
        // After the penalty, the bucket refills from empty at the rate: a tenth of a second per token.
        assert_eq!(
            set.take_syn(&a, 3 * S + S / 20, rate, burst),
            SynSpend::Short
        );
        assert_eq!(
            set.take_syn(&a, 3 * S + S / 10, rate, burst),
            SynSpend::Taken
        );
        // A shorter penalty on top of a running one leaves it as it is; a longer one extends it.
        let mut set = unused();
        set.penalize(&a, S, 3 * S, rate, burst);
        set.penalize(&a, S, S + S / 100, rate, burst);
        assert_eq!(set.take_syn(&a, 2 * S, rate, burst), SynSpend::Penalized);
        set.penalize(&a, 2 * S, 4 * S, rate, burst);
        assert_eq!(
            set.take_syn(&a, 3 * S + S / 2, rate, burst),
            SynSpend::Penalized
        );
        // A source new to its set with a penalty gets a way and the penalty at once.
        let c = source_key(&v4_mapped([203, 0, 113, 3]), 32, 64);
        let mut set = unused();
        set.penalize(&c, S, 2 * S, rate, burst);
        assert_eq!(set.take_syn(&c, S, rate, burst), SynSpend::Penalized);
        assert_eq!(
            set.take_syn(&c, 2 * S + S, rate, burst),
            SynSpend::Taken,
            "a second after the penalty, 10 tokens refilled"
        );
    }

    #[test]
    fn sets_stay_in_the_table_and_move_with_the_seed() {
        let sets = |seed| {
            let mut sets = [0u32; 64];
            for (i, set) in sets.iter_mut().enumerate() {
                let source = source_key(&v4_mapped([198, 51, 100, i as u8]), 32, 64);
                *set = budget_set(&source, seed);
            }
            sets
        };
        assert!(sets(1).iter().all(|&i| (i as usize) < BUDGET_SETS));
        assert_eq!(sets(1), sets(1), "deterministic for one seed");
        assert_ne!(sets(1), sets(2), "another seed, other sets");
        let mut distinct = sets(7);
        distinct.sort_unstable();
        let collisions = distinct.windows(2).filter(|w| w[0] == w[1]).count();
        // About 1 expected (64 * 63 / 2 pairs over 2,048 sets).
        assert!(
            collisions <= 4,
            "64 neighbours spread over the table: {collisions} collisions"
        );
    }

    #[test]
    fn words_are_the_bytes_and_same_is_equality() {
        let a = source_key(&v4_mapped([192, 0, 2, 1]), 32, 64);
        let b = source_key(&v4_mapped([192, 0, 2, 2]), 32, 64);
        let [.., i, j, k, l, m, n, o, p] = a.addr;
        assert_eq!(
            u64::from_be(a.words()[1]),
            u64::from_be_bytes([i, j, k, l, m, n, o, p])
        );
        assert_eq!(u64::from_be(a.words()[0]), 0);
        assert!(a.same(&a) && !a.same(&b) && !b.same(&a));
    }

    #[test]
    fn way_indices_round_trip() {
        for set in [0, 1, BUDGET_SETS as u32 - 1] {
            for way in 0..BUDGET_WAYS {
                assert_eq!(split_way_index(way_index(set, way)), (set, way));
            }
        }
    }

    #[test]
    fn block_entries_round_trip() {
        let (bits, addr) = block_entry(Ipv4Addr::new(10, 1, 2, 3).into(), 16).expect("valid /16");
        assert_eq!(bits, 112);
        assert_eq!(addr, v4_mapped([10, 1, 0, 0]));
        assert_eq!(
            block_network(bits, addr),
            (Ipv4Addr::new(10, 1, 0, 0).into(), 16)
        );
        let v6: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into();
        let (bits, addr) = block_entry(v6, 48).expect("valid /48");
        assert_eq!(
            block_network(bits, addr),
            (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0).into(), 48)
        );
        assert_eq!(
            block_entry(Ipv4Addr::LOCALHOST.into(), 33),
            Err(BadPrefixLen {
                prefix_len: 33,
                max: 32
            })
        );
    }
}
