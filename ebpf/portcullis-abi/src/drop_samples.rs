//! Sampled drops: who the XDP program drops, and why, for the operator (`portcullis xdp drops`).
//!
//! A dropped packet never reaches a socket or `tcpdump` (its tap runs after XDP), so without these samples an
//! operator paged for drops cannot see whom they hit. The drop of each verdict numbered 1, 1 + [`SAMPLE_EVERY`],
//! ... on a CPU (by its verdict counter, which every packet bumps anyway) is recorded in that CPU's [`DropRing`]
//! (the one entry of the per-CPU array [`crate::names::MAP_XDP_DROP_RING`]): source, verdict, port and time, in
//! the next of its [`DROP_SAMPLES`] slots, overwriting the oldest. So a flood of any rate costs nothing more per
//! packet than the counter it already had, and a 32-byte write (and a second look at the packet's headers) per
//! [`SAMPLE_EVERY`] drops. Per CPU: no atomic, no lock; the reader merges the CPUs.

/// One drop of each verdict in this many (per CPU) is sampled; a power of two.
pub const SAMPLE_EVERY: u64 = 64;

/// Samples a CPU keeps, a power of two: the newest overwrite the oldest.
pub const DROP_SAMPLES: usize = 64;

const _: () = assert!(SAMPLE_EVERY.is_power_of_two() && DROP_SAMPLES.is_power_of_two());

/// Whether the drop that took its verdict's counter on this CPU to `count` is sampled.
#[inline(always)]
pub const fn sampled(count: u64) -> bool {
    count % SAMPLE_EVERY == 1
}

/// One sampled drop.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropSample {
    /// The IP source, IPv4 sources IPv4-mapped (as in [`crate::limits`]).
    pub src: [u8; 16],
    /// When: CLOCK_MONOTONIC in nanoseconds, to within a tick (the budgets' clock); 0 for a slot never written.
    pub at_ns: u64,
    /// The [`crate::verdict::Verdict`] (a `Drop*` one) as its discriminant.
    pub verdict: u32,
    /// The TCP destination port, host byte order.
    pub dst_port: u16,
    /// Explicit padding, always 0.
    pub _pad: u16,
}

const _: () = assert!(size_of::<DropSample>() == 32);

/// One CPU's samples.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropRing {
    /// Samples taken on this CPU since the program was loaded; the next goes to slot `taken % DROP_SAMPLES`.
    pub taken: u64,
    /// The samples.
    pub samples: [DropSample; DROP_SAMPLES],
}

const _: () = assert!(size_of::<DropRing>() == 8 + 32 * DROP_SAMPLES);

/// The slot of the next sample of a ring that has taken `taken`.
#[inline(always)]
pub const fn next_slot(taken: u64) -> usize {
    (taken as usize) & (DROP_SAMPLES - 1)
}

// SAFETY: `#[repr(C)]`, plain integers and byte arrays, explicit padding: every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for DropSample {}
// SAFETY: as for `DropSample`, of which it holds an array after a `u64`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for DropRing {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_drop_in_sample_every_is_sampled_round_the_ring() {
        let counts: alloc::vec::Vec<u64> = (1..=3 * SAMPLE_EVERY).filter(|n| sampled(*n)).collect();
        assert_eq!(counts, [1, SAMPLE_EVERY + 1, 2 * SAMPLE_EVERY + 1]);
        assert_eq!(next_slot(0), 0);
        assert_eq!(next_slot(DROP_SAMPLES as u64 - 1), DROP_SAMPLES - 1);
        assert_eq!(next_slot(DROP_SAMPLES as u64), 0);
    }
}
