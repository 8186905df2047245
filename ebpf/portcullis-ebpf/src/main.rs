//! The BPF programs of portcullis.
//!
//! # Layout
//! - [`portcullis_xdp`]: the XDP guard. It runs the ABI crate's [`classify`] (the same code the host unit
//!   tests); for TCP to a listener port it drops sources in the blocklist [`XDP_BLOCK_NET`] and SYNs over their
//!   source's budget in [`XDP_SYN_BUDGET`]; it counts the verdict in the per-CPU array [`XDP_VERDICTS`] and
//!   passes everything else. Past those checks, `flow` tracks connections (a SYN records the flow) and hands the
//!   first payload segment of a tracked flow to `hello`'s ClientHello program by tail call.
//! - `portcullis_ch` (`hello`): the ClientHello program. It parses the segment with the ABI crate's parser, run
//!   stage by stage, decides the verdict (`flow::after_parse`) and finishes the packet as the XDP guard would
//!   ([`finish`]).
//! - [`XDP_CONFIG`]: the listener ports and limits, written by the daemon (before attaching, and whenever they
//!   change).
//!
//! Built only by `cargo xtask build` (Debian rustc, `-Z build-std=core`, `bpfel-unknown-none`). On the host this
//! crate still type-checks (so `cargo check --workspace` and clippy cover it) and links to an empty `main`.
#![cfg_attr(target_arch = "bpf", no_std, no_main, feature(asm_experimental_arch))]

mod flow;
mod hello;
mod reuseport;
mod shed;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    btf_maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use portcullis_abi::{
    block_filter::{FILTER_WORDS, source_bit, word_of},
    drop_samples::{DropRing, DropSample, next_slot, sampled},
    limits::{
        ADDR_LEN, BUDGET_SLOTS, BudgetSlot, SYN_COST_MILLI, SourceKey, budget_slot, source_key,
    },
    packet::{Classification, PacketBytes, classify, source_and_port},
    verdict::Verdict,
    xdp_config::{XDP_CONFIG_KEY, XdpConfig, clock_ns},
};

/// Packet counters, one `u64` per [`Verdict`] and CPU. Per-CPU so the hot path needs no atomic; the daemon sums
/// the CPUs when it reads. The name must match `portcullis_abi::names::MAP_XDP_VERDICTS` (checked by the
/// daemon's ELF name test, since the attribute takes a literal only).
#[btf_map(name = "xdp_verdicts")]
static XDP_VERDICTS: PerCpuArray<u64, { Verdict::COUNT }> = PerCpuArray::new();

/// The runtime configuration (listener ports); the name must match `portcullis_abi::names::MAP_XDP_CONFIG`.
/// Zero-filled until the daemon writes it, which reads as "no listener port".
#[btf_map(name = "xdp_config")]
static XDP_CONFIG: Array<XdpConfig, 1> = Array::new();

/// Per-source SYN token buckets, a slot per keyed hash of the source (`portcullis_abi::limits::BudgetSlot`); the name
/// must match `portcullis_abi::names::MAP_XDP_SYN_BUDGET`. Under a spoofed-source flood sources take each other's
/// slots, which only forgets budget already spent (fail open).
#[btf_map(name = "xdp_syn_budget")]
static XDP_SYN_BUDGET: Array<BudgetSlot, BUDGET_SLOTS> = Array::new();

/// The key of the budget tables' slot hash, written by the daemon; the name must match
/// `portcullis_abi::names::MAP_XDP_BUDGET_SEED`.
#[btf_map(name = "xdp_budget_seed")]
static XDP_BUDGET_SEED: Array<u64, 1> = Array::new();

/// The slot of `packet`'s source (masked to the configured prefix) in `table`, its index, and the source.
#[inline(always)]
pub(crate) fn budget(
    table: &Array<BudgetSlot, BUDGET_SLOTS>,
    packet: &Classification,
    config: &XdpConfig,
) -> Option<(*mut BudgetSlot, u32, SourceKey)> {
    let source = source_key(&packet.src, config.v4_prefix_len, config.v6_prefix_len);
    let seed = XDP_BUDGET_SEED.get(0).copied().unwrap_or(0);
    let index = budget_slot(&source, seed);
    let slot = table.get_ptr_mut(index)?;
    Some((slot, index, source))
}

/// Blocked source prefixes (IPv4-mapped for IPv4), value 1; the name must match
/// `portcullis_abi::names::MAP_XDP_BLOCK_NET`. Written by `portcullis xdp block add|del`.
#[btf_map(name = "xdp_block_net")]
static XDP_BLOCK_NET: LpmTrie<[u8; ADDR_LEN], u8, 16384> = LpmTrie::new();

/// The prefilter of [`XDP_BLOCK_NET`] (`portcullis_abi::block_filter`): a clear bit proves no blocked prefix
/// covers the source, and saves the trie lookup. The name must match `portcullis_abi::names::MAP_XDP_BLOCK_NET_FILTER`.
#[btf_map(name = "xdp_block_pre")]
static XDP_BLOCK_NET_FILTER: Array<u64, FILTER_WORDS> = Array::new();

/// Whether a blocked prefix covers `src`: the trie is looked up only when the prefilter's bit for it is set.
#[inline(always)]
fn source_blocked(src: &[u8; ADDR_LEN]) -> bool {
    let (index, mask) = word_of(source_bit(src));
    // A missing word (it cannot be: the bit is below FILTER_BITS) reads as set: look the trie up (fail safe).
    let maybe = XDP_BLOCK_NET_FILTER
        .get(index)
        .is_none_or(|word| word & mask != 0);
    maybe && XDP_BLOCK_NET.get(&Key::new(128, *src)).is_some()
}

/// The XDP entry point; its name must match `portcullis_abi::names::PROG_XDP`. Returns `XDP_DROP` for `Drop*`
/// verdicts when the config enforces, `XDP_PASS` otherwise. The first payload segment of a tracked flow is judged by
/// [`hello::portcullis_ch`], which this program tail-calls and which finishes the packet itself.
#[xdp]
pub fn portcullis_xdp(ctx: XdpContext) -> u32 {
    let packet = Packet(&ctx);
    let config = config();
    let classification = classify(&packet, config);
    let verdict = if classification.verdict == Verdict::PassListenerTcp {
        // One flow hash per packet, for SYN shedding and flow tracking both.
        let flow_hash = flow::flow_key(&classification).hash();
        match guard(&classification, config, flow_hash) {
            // Past the source checks: flow tracking and the ClientHello check (`flow.rs`).
            Verdict::PassListenerTcp => flow::inspect(&ctx, &classification, config, flow_hash),
            dropped => dropped,
        }
    } else {
        classification.verdict
    };
    finish(
        &ctx,
        config,
        verdict,
        classification.dst_port,
        classification.is_syn(),
    )
}

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

/// The runtime configuration, or the empty one (no listener port) if the lookup fails (it cannot: index 0).
#[inline(always)]
pub(crate) fn config() -> &'static XdpConfig {
    XDP_CONFIG.get(XDP_CONFIG_KEY).unwrap_or(&XdpConfig::EMPTY)
}

/// The verdict for TCP to a listener port: blocked source, SYN over budget, or pass.
#[inline(always)]
fn guard(packet: &Classification, config: &XdpConfig, flow_hash: u64) -> Verdict {
    if source_blocked(&packet.src) {
        return Verdict::DropBlockedSource;
    }
    if packet.is_syn() && config.syn_rate != 0 && !syn_within_budget(packet, config) {
        return Verdict::DropSynRate;
    }
    if packet.is_syn() && (config.syn_shed_ppm | config.syn_retry_shed_ppm) != 0 {
        // Load shedding, fresh SYNs before retransmitted ones (`shed.rs`).
        return shed::syn(
            flow_hash,
            packet.seq,
            config.syn_shed_ppm,
            config.syn_retry_shed_ppm,
        );
    }
    Verdict::PassListenerTcp
}

/// Spends one SYN from the source's bucket (a full one for a source new to its slot).
#[inline(always)]
fn syn_within_budget(packet: &Classification, config: &XdpConfig) -> bool {
    // A missing slot (it cannot be: the index is masked to the table) passes: fail open.
    let Some((slot, _, source)) = budget(&XDP_SYN_BUDGET, packet, config) else {
        return true;
    };
    let now = now_ns(config);
    // SAFETY: a pointer to a live map value; a concurrent update from another CPU can only lose a token or tear
    // the slot (see `BudgetSlot`), never make the value invalid (plain integers).
    unsafe {
        (*slot).take(
            &source,
            now,
            config.syn_rate,
            config.syn_burst.max(1),
            SYN_COST_MILLI,
        )
    }
}

/// The budgets' clock: CLOCK_MONOTONIC to within a tick (4 ms at HZ=250), plenty for budgets of a few per second.
/// Read as jiffies when the daemon gave the tick (`XdpConfig::jiffy_ns`): `bpf_jiffies64` becomes one load in
/// the verifier, where `bpf_ktime_get_coarse_ns` is a helper call (≈ 17 ns of a SYN's 41 with a budget).
#[inline(always)]
pub(crate) fn now_ns(config: &XdpConfig) -> u64 {
    if config.jiffy_ns != 0 {
        // SAFETY: a helper without arguments.
        clock_ns(unsafe { bpf_jiffies64() }, config)
    } else {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_coarse_ns() }
    }
}

/// Records who a sampled drop hit, for `portcullis xdp drops`.
///
/// A subprogram of its own, called for sampled drops only, which reads the source and port from the packet again
/// (`source_and_port`, a few small reads: `classify` there took the call chain's stack past 512 bytes): passing
/// them down from the verdict, or keeping them in the ClientHello program's scratch, slowed every passing SYN and
/// ClientHello by a quarter (paired), from the registers and stack they took.
#[inline(never)]
fn sample_drop(ctx: *mut xdp_md, config: &XdpConfig, verdict: Verdict) {
    // The context pointer through a register move LLVM cannot see into (`hello::opaque`): otherwise it passes
    // `data` and `data_end` down instead of the pointer, zero-extending them with shifts the verifier refuses on a
    // packet pointer ("pointer arithmetic on pkt_end prohibited").
    let ctx = XdpContext::new(hello::opaque(ctx as usize) as *mut xdp_md);
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

/// The packet of an XDP context, read through bounds checks against `data_end`.
struct Packet<'a>(&'a XdpContext);

impl PacketBytes for Packet<'_> {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data().checked_add(offset)?;
        // The verifier only allows a packet read after this comparison against data_end, in this form.
        if start.checked_add(N)? > self.0.data_end() {
            return None;
        }
        // SAFETY: `start..start + N` lies within `data..data_end`, the packet buffer the kernel hands the
        // program; `[u8; N]` has alignment 1, so the read is never misaligned.
        Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // BPF has no unwinding and the verifier rejects unbounded loops; every panic path is dead code in a verified
    // program, and this body only satisfies the compiler.
    loop {}
}

/// License of the object, as the kernel reads it: the project's. No GPL-only helper is used (the ring buffer
/// helpers behind aya-log are not GPL-only); calling one would need a GPL-compatible string here.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
