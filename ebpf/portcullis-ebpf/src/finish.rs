//! How every packet ends, in either program: its verdict counted per CPU ([`XDP_VERDICTS`]), a sampled drop
//! recorded ([`XDP_DROP_RING`], for `portcullis xdp drops`), and the XDP action.

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    btf_maps::PerCpuArray,
    macros::btf_map,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use portcullis_abi::{
    drop_samples::{DropRing, DropSample, next_slot, sampled},
    packet::source_and_port,
    verdict::Verdict,
    xdp_config::XdpConfig,
};

use crate::budget::now_ns;
use crate::packet_bytes::Packet;

/// Packet counters, one `u64` per [`Verdict`] and CPU. Per-CPU so the hot path needs no atomic; the daemon sums
/// the CPUs when it reads. The name must match `portcullis_abi::names::MAP_XDP_VERDICTS` (checked by the
/// daemon's ELF name test, since the attribute takes a literal only).
#[btf_map(name = "xdp_verdicts")]
pub(crate) static XDP_VERDICTS: PerCpuArray<u64, { Verdict::COUNT }> = PerCpuArray::new();

/// Counts `verdict`, samples it when it is a drop (one in `SAMPLE_EVERY` of each verdict per CPU: who, into
/// [`XDP_DROP_RING`], and a log line at debug) or logs (at debug) a SYN to a listener port, and returns the XDP
/// action: `XDP_DROP` for `Drop*` verdicts when the config enforces, `XDP_PASS` otherwise.
#[inline(always)]
pub(crate) fn finish(
    ctx: &XdpContext,
    config: &XdpConfig,
    verdict: Verdict,
    dst_port: u16,
    syn: bool,
) -> u32 {
    let count = count(verdict);
    if verdict.drops() {
        if sampled(count) {
            sample_drop(ctx.ctx, config, verdict);
            debug!(ctx, "XDP drop ({}) to port {}", verdict as u32, dst_port);
        }
        if config.enforce != 0 {
            return xdp_action::XDP_DROP;
        }
    } else if verdict == Verdict::PassListenerTcp && syn {
        // One line per new connection to a listener, at debug: the daemon sets AYA_LOG_LEVEL from its tracing
        // filter, so this costs a global load and a branch unless debug logging is on.
        debug!(ctx, "SYN to listener port {}", dst_port);
    }
    xdp_action::XDP_PASS
}

/// Records who a sampled drop hit, for `portcullis xdp drops`.
///
/// A subprogram of its own, called for sampled drops only, which reads the source and port from the packet again
/// (`source_and_port`, a few small reads: `classify` there took the call chain's stack past 512 bytes): passing
/// them down from the verdict, or keeping them in the ClientHello program's scratch, slowed every passing SYN and
/// ClientHello by a quarter (paired), from the registers and stack they took.
#[inline(never)]
fn sample_drop(ctx: *mut xdp_md, config: &XdpConfig, verdict: Verdict) {
    // The context pointer through a register move LLVM cannot see into (`barrier::opaque`): otherwise it passes
    // `data` and `data_end` down instead of the pointer, zero-extending them with shifts the verifier refuses on a
    // packet pointer ("pointer arithmetic on pkt_end prohibited").
    let ctx = XdpContext::new(crate::barrier::opaque(ctx as usize) as *mut xdp_md);
    let Some((src, dst_port)) = source_and_port(&Packet(&ctx)) else {
        return;
    };
    let Some(ring) = XDP_DROP_RING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for the run; XDP runs are not preempted on a CPU.
    let ring = unsafe { &mut *ring };
    if let Some(sample) = ring.samples.get_mut(next_slot(ring.taken)) {
        *sample = DropSample {
            src,
            at_ns: now_ns(config),
            verdict: verdict as u32,
            dst_port,
            _pad: 0,
        };
    }
    ring.taken = ring.taken.wrapping_add(1);
}

/// Each CPU's sampled drops; the name must match `portcullis_abi::names::MAP_XDP_DROP_RING`.
#[btf_map(name = "xdp_drop_ring")]
static XDP_DROP_RING: PerCpuArray<DropRing, 1> = PerCpuArray::new();

/// Adds one to this CPU's counter of `verdict`; returns the new count (0 if the counter cannot be found: it can).
#[inline(always)]
fn count(verdict: Verdict) -> u64 {
    match XDP_VERDICTS.get_ptr_mut(verdict.index()) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, valid for the program's run, and XDP
        // programs are not preempted on a CPU, so nothing else writes this slot concurrently.
        Some(counter) => unsafe {
            *counter += 1;
            *counter
        },
        None => 0,
    }
}
