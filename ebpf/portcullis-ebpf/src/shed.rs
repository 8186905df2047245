//! Load shedding at the SYN, fresh clients first.
//!
//! Admission control sets two fractions in the config map: `syn_shed_ppm` for SYNs of new flows and
//! `syn_retry_shed_ppm` for SYNs that repeat a flow whose SYN this program already shed (the client's TCP
//! retransmitting after 1 s, 3 s, ...). Shed flows are remembered in [`XDP_SYN_SHED`], keyed by the 64-bit
//! flow hash (`FlowKey::hash`), with their initial sequence number: a retransmitted SYN carries the same one,
//! a new connection from the same port a new one.
//!
//! Why retries go last: a client whose SYN was dropped has already waited a second; under overload, admitting
//! it ahead of one that just arrived makes both late ("adaptive LIFO", Facebook's "Fail at Scale"). And after a
//! storm, its retransmissions arrive for seconds more: dropping those while the storm's tail lasts lets clients
//! arriving after the storm in at once.

use aya_ebpf::{btf_maps::LruHashMap, helpers::bpf_get_prandom_u32, macros::btf_map};
use portcullis_abi::verdict::Verdict;

/// Flows whose SYN was shed, by flow hash, value the client's initial sequence number; the name must match
/// `portcullis_abi::names::MAP_XDP_SYN_SHED`. LRU, sized for a 10x storm's SYNs in flight over the clients'
/// retransmission window: an evicted flow's retry counts as a new SYN (fail open).
#[btf_map(name = "xdp_syn_shed")]
static XDP_SYN_SHED: LruHashMap<u64, u32, 131072> = LruHashMap::new();

/// For a SYN to a listener port while shedding (`ppm` of new SYNs, `retry_ppm` of retransmitted ones of shed
/// flows): `DropSynShed`, `DropSynRetryShed`, or `PassListenerTcp`. `flow_hash` is `FlowKey::hash` of the SYN,
/// `isn` its sequence number.
///
/// Not inlined and given scalars only: a BPF subprogram with its own small frame, so shedding adds nothing to
/// the main program's frame (the main program and the ClientHello parse steps it calls share 512 bytes).
#[inline(never)]
pub fn syn(flow_hash: u64, isn: u32, ppm: u32, retry_ppm: u32) -> Verdict {
    // SAFETY: the value is a plain u32, copied out at once.
    let retry = unsafe { XDP_SYN_SHED.get(&flow_hash) }.is_some_and(|seen| *seen == isn);
    let ppm = if retry { retry_ppm.max(ppm) } else { ppm };
    // SAFETY: a helper without arguments.
    if ppm == 0 || unsafe { bpf_get_prandom_u32() } % 1_000_000 >= ppm {
        return Verdict::PassListenerTcp;
    }
    if retry {
        return Verdict::DropSynRetryShed;
    }
    // A failed insert only forgets the flow: its retry will count as new (fail open).
    let _ = XDP_SYN_SHED.insert(&flow_hash, &isn, 0);
    Verdict::DropSynShed
}
