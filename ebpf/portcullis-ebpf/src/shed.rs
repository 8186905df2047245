//! Load shedding at the SYN, fresh clients first.
//!
//! Admission control sets two fractions in the config map: `syn_shed_ppm` for SYNs of new flows and
//! `syn_retry_shed_ppm` for SYNs that repeat a flow whose SYN this program already shed (the client's TCP
//! retransmitting after 1 s, 3 s, ...). Shed flows are remembered in [`XDP_SYN_SHED`] as 21-bit tags of the flow
//! hash (`FlowKey::hash`) and the initial sequence number (`portcullis_abi::shed`): a
//! retransmitted SYN carries the same ISN, a new connection from the same port a new one.
//!
//! Why retries go last: a client whose SYN was dropped has already waited a second; under overload, admitting
//! it ahead of one that just arrived makes both late ("adaptive LIFO", Facebook's "Fail at Scale"). And after a
//! storm, its retransmissions arrive for seconds more: dropping those while the storm's tail lasts lets clients
//! arriving after the storm in at once.

use aya_ebpf::{btf_maps::Array, helpers::bpf_get_prandom_u32, macros::btf_map};
use portcullis_abi::{
    shed::{SHED_SETS, ShedSet, shed_contains, shed_record, shed_set, shed_tag},
    verdict::Verdict,
};

/// Flows whose SYN was shed, as 21-bit tags of (flow, ISN) in 3-way sets (98,304 flows in 256 KiB, sized for a 10x
/// storm's SYNs in flight over the clients' retransmission window: `portcullis_abi::shed`); the name must match
/// `portcullis_abi::names::MAP_XDP_SYN_SHED`. An array, not an LRU hash: shedding is what a SYN storm meets, and an
/// LRU insert per shed SYN (≈ 190 ns when the flow table made the same move) was most of the cost of dropping one;
/// a quarter of the flow table's bytes, because each shed SYN writes a random set and the table's size is its cache
/// misses. A flow pushed out of its set by three newer ones retries as a new SYN (fail open), as an LRU eviction did.
#[btf_map(name = "xdp_syn_shed")]
static XDP_SYN_SHED: Array<ShedSet, SHED_SETS> = Array::new();

/// For a SYN to a listener port while shedding (`ppm` of new SYNs, `retry_ppm` of retransmitted ones of shed
/// flows): `DropSynShed`, `DropSynRetryShed`, or `PassListenerTcp`. `flow_hash` is `FlowKey::hash` of the SYN,
/// `isn` its sequence number.
///
/// Not inlined and given scalars only: a BPF subprogram with its own small frame, so shedding adds nothing to
/// the main program's frame (the main program and the ClientHello parse steps it calls share 512 bytes).
#[inline(never)]
pub fn syn(flow_hash: u64, isn: u32, ppm: u32, retry_ppm: u32) -> Verdict {
    // A missing set (it cannot be: the index is masked to the table) sheds nothing: fail open.
    let Some(set) = XDP_SYN_SHED.get_ptr_mut(shed_set(flow_hash)) else {
        return Verdict::PassListenerTcp;
    };
    let tag = shed_tag(flow_hash, isn);
    // SAFETY: a pointer to a live map value, a plain integer read and written whole (one aligned 8-byte access).
    let seen = unsafe { *set };
    let retry = shed_contains(seen, tag);
    let ppm = if retry { retry_ppm.max(ppm) } else { ppm };
    // A uniform draw in 0..10^6 by multiply and shift (a `%` is a real division in BPF).
    // SAFETY: a helper without arguments.
    let draw = (u64::from(unsafe { bpf_get_prandom_u32() }) * 1_000_000) >> 32;
    if ppm == 0 || draw >= u64::from(ppm) {
        return Verdict::PassListenerTcp;
    }
    if retry {
        return Verdict::DropSynRetryShed;
    }
    // SAFETY: as above. Another CPU recording into the same set at once can lose one of the two flows, whose
    // retry then counts as new (fail open).
    unsafe { *set = shed_record(seen, tag) };
    Verdict::DropSynShed
}
