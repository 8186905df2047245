//! Reuseport steering: which worker's socket of a SO_REUSEPORT group gets a new connection.
//!
//! The SK_REUSEPORT program ([`crate::names::PROG_REUSEPORT`]) runs [`pick`] on every new connection (the
//! same code the host tests run) and only does the map I/O around it: the config
//! ([`crate::names::MAP_RP_CONFIG`]), the saturated-worker bitmask ([`crate::names::MAP_RP_SATURATED`]), the
//! CPU -> worker table ([`crate::names::MAP_RP_CPU_WORKER`]), the socket array ([`crate::names::MAP_RP_SOCKS`])
//! and the outcome counters ([`crate::names::MAP_RP_OUTCOMES`]).
//!
//! Socket array layout: worker `w`'s socket of listener group `g` (the `g`-th listener, bind order) sits at key
//! [`sock_key`]`(g, w)` = `g * MAX_WORKERS + w`. The program does not know which group it runs for, so it tries
//! the picked worker's key in each group in turn: the kernel refuses a socket of another group
//! (`bpf_sk_select_reuseport` returns `-EBADFD`), so the first key it accepts is the right one. One listener
//! (the usual case) costs one helper call.
//!
//! Every decision is counted ([`Outcome`]); every failure returns `SK_PASS` without a selection, which makes the
//! kernel fall back to its own hash. Steering never drops: SYN shedding belongs to XDP.

/// Most workers steering can address (4 words of saturated bits). A daemon with more workers does not start
/// steering (it logs why) and the kernel hash spreads connections over all of them.
pub const MAX_WORKERS: usize = 256;

/// Most listener groups (listeners) one socket array holds.
pub const MAX_GROUPS: usize = 8;

/// Entries of the socket array: every group's worker slots.
pub const SOCK_SLOTS: usize = MAX_WORKERS * MAX_GROUPS;

/// `u64` words of the saturated bitmask (entries of [`crate::names::MAP_RP_SATURATED`]): worker `w` is bit
/// `w % 64` of word `w / 64`.
pub const SATURATED_WORDS: usize = MAX_WORKERS / 64;

/// Entries of the CPU -> worker table ([`crate::names::MAP_RP_CPU_WORKER`]); CPUs beyond it have no local
/// worker.
pub const MAX_CPUS: usize = 1024;

/// Index of the single entry of the config array map.
pub const RP_CONFIG_KEY: u32 = 0;

/// The reuseport program's configuration, one entry of [`crate::names::MAP_RP_CONFIG`], written by the daemon
/// before it attaches the program. Zero-filled (no workers) reads as "do not steer": the kernel hash decides.
///
/// Layout (16 bytes): `workers` at 0, `groups` at 4, `prefer_local_cpu` at 8, `_pad` at 12.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReuseportConfig {
    /// Sockets per group (one per worker), at most [`MAX_WORKERS`]; larger values are read as the maximum.
    pub workers: u32,
    /// Listener groups in the socket array, at most [`MAX_GROUPS`]; larger values are read as the maximum.
    pub groups: u32,
    /// 1: prefer the worker on the CPU that received the packet, when it is not saturated
    /// ([`crate::names::MAP_RP_CPU_WORKER`] says which worker that is). 0: spread by flow hash only.
    pub prefer_local_cpu: u32,
    /// Explicit padding; always 0.
    pub _pad: u32,
}

const _: () = assert!(size_of::<ReuseportConfig>() == 16);
const _: () = assert!(align_of::<ReuseportConfig>() == 4);

// SAFETY: `#[repr(C)]`, `Copy`, integers only, no implicit padding (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for ReuseportConfig {}

/// What the reuseport program decided for one new connection; the discriminant indexes the per-CPU counter
/// array [`crate::names::MAP_RP_OUTCOMES`]. Append only, never renumber: dashboards key on the names.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Steered to the worker the flow hash picked (no saturated worker in the way).
    Steered = 0,
    /// Steered to the worker on the receiving CPU (`prefer_local_cpu`).
    SteeredLocalCpu = 1,
    /// The hash picked a saturated worker; steered to another worker, chosen by the same hash among the
    /// unsaturated ones.
    SkippedSaturated = 2,
    /// Every worker is saturated: no selection, the kernel hash decides (never a drop).
    AllSaturatedFallback = 3,
    /// No config written (zero workers): no selection, the kernel hash decides.
    NoConfigFallback = 4,
    /// No group's socket array accepted the picked worker's socket (closed, not filled in, another group):
    /// no selection, the kernel hash decides.
    NoSocketFallback = 5,
}

impl Outcome {
    /// Number of outcomes, and so the entries of the counter array.
    pub const COUNT: usize = 6;

    /// Every outcome, in counter-index order.
    pub const ALL: [Outcome; Outcome::COUNT] = [
        Outcome::Steered,
        Outcome::SteeredLocalCpu,
        Outcome::SkippedSaturated,
        Outcome::AllSaturatedFallback,
        Outcome::NoConfigFallback,
        Outcome::NoSocketFallback,
    ];

    /// The `outcome` label of `portcullis_steering_total`. Stable.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Steered => "steered",
            Outcome::SteeredLocalCpu => "steered_local_cpu",
            Outcome::SkippedSaturated => "skipped_saturated",
            Outcome::AllSaturatedFallback => "all_saturated_fallback",
            Outcome::NoConfigFallback => "no_config_fallback",
            Outcome::NoSocketFallback => "no_socket_fallback",
        }
    }

    /// The counter index of this outcome.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Whether the program selected a socket (the others leave it to the kernel hash).
    pub const fn selects(self) -> bool {
        matches!(
            self,
            Outcome::Steered | Outcome::SteeredLocalCpu | Outcome::SkippedSaturated
        )
    }
}

const _: () = {
    let mut i = 0;
    while i < Outcome::COUNT {
        assert!(Outcome::ALL[i] as usize == i);
        i += 1;
    }
};

/// The `local` argument of [`pick`] meaning "no worker on this CPU".
pub const NO_LOCAL: u32 = u32::MAX;

/// A worker slot chosen by [`pick`], and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// The worker (index within a group), below the config's worker count.
    pub worker: u32,
    /// [`Outcome::Steered`], [`Outcome::SteeredLocalCpu`] or [`Outcome::SkippedSaturated`].
    pub outcome: Outcome,
}

/// The socket array key of worker `worker` in listener group `group`.
#[inline(always)]
pub const fn sock_key(group: u32, worker: u32) -> u32 {
    group * MAX_WORKERS as u32 + worker
}

/// Whether worker `worker` is marked saturated in `saturated` (out-of-range workers are not).
///
/// Branch-free over constant indices: the verifier refuses a variable-offset read from the stack, which is
/// what `saturated[worker / 64]` compiles to in BPF.
#[inline(always)]
pub const fn is_saturated(saturated: &[u64; SATURATED_WORDS], worker: u32) -> bool {
    let word = worker / 64;
    let mut bits = 0u64;
    let mut i = 0;
    while i < SATURATED_WORDS {
        bits |= saturated[i] & 0u64.wrapping_sub((word == i as u32) as u64);
        i += 1;
    }
    bits & (1u64 << (worker % 64)) != 0
}

/// Picks the worker for a connection with flow hash `hash` among `workers` workers, skipping the ones set in
/// `saturated`; `local` is the worker on the receiving CPU when `prefer_local_cpu` is on, [`NO_LOCAL`] (or any
/// value at or above `workers`) when there is none. Not an `Option`: LLVM leaves a `None`'s payload register
/// unset and may still copy it, which the verifier refuses ("!read_ok").
///
/// - `local`, if it names an unsaturated worker;
/// - else the hash's worker, `hash * workers >> 32` (the kernel's `reciprocal_scale`, so an unsaturated group
///   spreads like the kernel's own hash);
/// - else, if that one is saturated, the `k`-th unsaturated worker with `k = hash * free >> 32`, so flows that
///   would have gone to saturated workers spread evenly over the rest (a "next free slot" probe would double
///   the load of a saturated worker's neighbour).
///
/// # Errors
/// The fallback to count, when the kernel hash should decide: [`Outcome::NoConfigFallback`] for zero workers,
/// [`Outcome::AllSaturatedFallback`] when every worker is saturated. `workers` above [`MAX_WORKERS`] is read as
/// the maximum.
#[inline(always)]
pub fn pick(
    hash: u32,
    workers: u32,
    saturated: &[u64; SATURATED_WORDS],
    local: u32,
) -> Result<Pick, Outcome> {
    let workers = if workers > MAX_WORKERS as u32 {
        MAX_WORKERS as u32
    } else {
        workers
    };
    if workers == 0 {
        return Err(Outcome::NoConfigFallback);
    }
    if local < workers && !is_saturated(saturated, local) {
        return Ok(Pick {
            worker: local,
            outcome: Outcome::SteeredLocalCpu,
        });
    }
    let first = reciprocal_scale(hash, workers);
    if !is_saturated(saturated, first) {
        return Ok(Pick {
            worker: first,
            outcome: Outcome::Steered,
        });
    }
    // Unsaturated workers per word, and their total.
    let mut free_bits = [0u64; SATURATED_WORDS];
    let mut free = 0u32;
    let mut w = 0;
    while w < SATURATED_WORDS {
        free_bits[w] = !saturated[w] & valid_bits(workers, w as u32);
        free += free_bits[w].count_ones();
        w += 1;
    }
    if free == 0 {
        return Err(Outcome::AllSaturatedFallback);
    }
    let mut k = reciprocal_scale(hash, free);
    let mut w = 0;
    while w < SATURATED_WORDS {
        let in_word = free_bits[w].count_ones();
        if k < in_word {
            return Ok(Pick {
                worker: w as u32 * 64 + nth_set_bit(free_bits[w], k),
                outcome: Outcome::SkippedSaturated,
            });
        }
        k -= in_word;
        w += 1;
    }
    // Unreachable: `k < free`, the sum of the words' counts. Counted as the all-saturated fallback if it were.
    Err(Outcome::AllSaturatedFallback)
}

/// `hash` scaled into `0..n` without a division: `hash * n >> 32` (Linux `reciprocal_scale`).
#[inline(always)]
pub const fn reciprocal_scale(hash: u32, n: u32) -> u32 {
    ((hash as u64 * n as u64) >> 32) as u32
}

/// The bits of word `word` that stand for workers below `workers`.
#[inline(always)]
const fn valid_bits(workers: u32, word: u32) -> u64 {
    let start = word * 64;
    if workers <= start {
        0
    } else if workers - start >= 64 {
        u64::MAX
    } else {
        (1u64 << (workers - start)) - 1
    }
}

/// The position of the `n`-th (from 0) set bit of `bits`; `n` must be below `bits.count_ones()` (else 64 or
/// more, which no worker has). A fixed-trip loop, so the verifier sees a bounded one.
#[inline(always)]
fn nth_set_bit(mut bits: u64, n: u32) -> u32 {
    let mut i = 0;
    while i < 64 {
        if i == n {
            break;
        }
        bits &= bits.wrapping_sub(1);
        i += 1;
    }
    bits.trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: [u64; SATURATED_WORDS] = [0; SATURATED_WORDS];

    fn mark(workers: &[u32]) -> [u64; SATURATED_WORDS] {
        let mut s = NONE;
        for &w in workers {
            s[(w / 64) as usize] |= 1 << (w % 64);
        }
        s
    }

    /// Hashes spread over the whole u32 range, as the kernel's flow hash does.
    fn hashes() -> impl Iterator<Item = u32> {
        (0..10_000u32).map(|i| i.wrapping_mul(2_654_435_761))
    }

    #[test]
    fn hash_spreads_evenly_when_nothing_is_saturated() {
        let mut counts = [0u32; 4];
        for h in hashes() {
            let p = pick(h, 4, &NONE, NO_LOCAL).expect("a worker");
            assert_eq!(p.outcome, Outcome::Steered);
            counts[p.worker as usize] += 1;
        }
        for c in counts {
            assert!((2300..2700).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn saturated_workers_get_nothing_and_the_rest_share_evenly() {
        let saturated = mark(&[0, 2]);
        let mut counts = [0u32; 4];
        for h in hashes() {
            let p = pick(h, 4, &saturated, NO_LOCAL).expect("a worker");
            counts[p.worker as usize] += 1;
        }
        assert_eq!((counts[0], counts[2]), (0, 0), "{counts:?}");
        // Each free worker gets its own quarter plus half of the saturated ones' flows.
        assert!((4500..5500).contains(&counts[1]), "{counts:?}");
        assert!((4500..5500).contains(&counts[3]), "{counts:?}");
    }

    #[test]
    fn skipped_flows_are_counted_as_skipped() {
        let saturated = mark(&[1]);
        let mut skipped = 0;
        for h in hashes() {
            let p = pick(h, 2, &saturated, NO_LOCAL).expect("a worker");
            assert_eq!(p.worker, 0);
            if p.outcome == Outcome::SkippedSaturated {
                skipped += 1;
            }
        }
        assert!((4500..5500).contains(&skipped), "{skipped}");
    }

    #[test]
    fn all_saturated_falls_back_to_the_kernel_hash() {
        assert_eq!(
            pick(7, 3, &mark(&[0, 1, 2]), NO_LOCAL),
            Err(Outcome::AllSaturatedFallback)
        );
        // Bits of workers that do not exist do not count as free.
        assert_eq!(
            pick(7, 2, &mark(&[0, 1]), 1),
            Err(Outcome::AllSaturatedFallback)
        );
    }

    #[test]
    fn zero_workers_means_no_config() {
        assert_eq!(pick(7, 0, &NONE, NO_LOCAL), Err(Outcome::NoConfigFallback));
    }

    #[test]
    fn local_cpu_wins_unless_saturated_or_out_of_range() {
        let p = pick(u32::MAX, 4, &NONE, 1).expect("a worker");
        assert_eq!((p.worker, p.outcome), (1, Outcome::SteeredLocalCpu));
        let p = pick(u32::MAX, 4, &mark(&[1]), 1).expect("a worker");
        assert_eq!((p.worker, p.outcome), (3, Outcome::Steered));
        let p = pick(u32::MAX, 4, &NONE, 9).expect("a worker");
        assert_eq!(p.outcome, Outcome::Steered);
    }

    #[test]
    fn works_across_words() {
        // 200 workers, all but 130 and 199 saturated.
        let mut saturated = [u64::MAX; SATURATED_WORDS];
        saturated[2] &= !(1 << (130 - 128));
        saturated[3] &= !(1 << (199 - 192));
        let mut seen = [false; 2];
        for h in hashes() {
            let p = pick(h, 200, &saturated, NO_LOCAL).expect("a worker");
            match p.worker {
                130 => seen[0] = true,
                199 => seen[1] = true,
                other => panic!("picked saturated worker {other}"),
            }
        }
        assert_eq!(seen, [true, true]);
        // More workers than the bitmask holds are read as MAX_WORKERS.
        assert!(
            pick(u32::MAX, 10_000, &NONE, NO_LOCAL)
                .expect("a worker")
                .worker
                < MAX_WORKERS as u32
        );
    }

    #[test]
    fn sock_keys_do_not_overlap_between_groups() {
        assert_eq!(sock_key(0, 255), 255);
        assert_eq!(sock_key(1, 0), 256);
        assert_eq!(
            sock_key(MAX_GROUPS as u32 - 1, MAX_WORKERS as u32 - 1),
            SOCK_SLOTS as u32 - 1
        );
    }

    #[test]
    fn outcome_names_are_unique() {
        for (i, a) in Outcome::ALL.iter().enumerate() {
            for b in &Outcome::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
