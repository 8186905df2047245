//! The BPF programs of portcullis.
//!
//! # Layout
//! - [`portcullis_xdp`]: the XDP guard. It runs the ABI crate's [`classify`] (the same code the host unit
//!   tests); for TCP to a listener port it drops sources in the blocklist [`XDP_BLOCK_NET`] and SYNs over their
//!   source's budget in [`XDP_SYN_BUDGET`]; it counts the verdict in the per-CPU array [`XDP_VERDICTS`] and
//!   passes everything else. Past those checks, `flow` tracks connections (a SYN records the flow) and hands the
//!   first payload segment of a tracked flow to `hello`'s ClientHello program by tail call.
//! - `portcullis_ch` (`hello`): the ClientHello program. It parses the segment with the ABI crate's parser, run
//!   stage by stage, decides the verdict (`judge::after_parse`) and finishes the packet as the XDP guard would
//!   (`finish`).
//! - [`XDP_CONFIG`]: the listener ports and limits, written by the daemon (before attaching, and whenever they
//!   change).
//!
//! Built only by `cargo xtask build` (Debian rustc, `-Z build-std=core`, `bpfel-unknown-none`). On the host this
//! crate still type-checks (so `cargo check --workspace` and clippy cover it) and links to an empty `main`.
//! - Modules, each importing only the ones after it: `flow` (connection tracking, the first segment) -> `hello`
//!   (the ClientHello program) -> `judge` (the verdict after a parse) -> `finish` (count, sample, action),
//!   `known` (the flood budget, known sources, the malformed ClientHello penalty), `budget` (budget slots and
//!   clock), `config`, `packet_bytes`, `barrier` (compiler barriers for the verifier),
//!   `shed` (SYN shedding); `reuseport` stands alone.
#![cfg_attr(target_arch = "bpf", no_std, no_main, feature(asm_experimental_arch))]

mod barrier;
mod budget;
mod config;
mod finish;
mod flow;
mod hello;
mod judge;
mod known;
mod packet_bytes;
mod reuseport;
mod shed;

use aya_ebpf::{
    btf_maps::{Array, LpmTrie, lpm_trie::Key},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use portcullis_abi::{
    block_filter::{FILTER_WORDS, source_bit, word_of},
    limits::{ADDR_LEN, SynSpend},
    packet::{Classification, classify},
    verdict::Verdict,
    xdp_config::XdpConfig,
};

use budget::{XDP_SYN_BUDGET, budget, now_ns};
use config::config;
use finish::finish;
use packet_bytes::Packet;

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

/// The verdict for TCP to a listener port: blocked source, SYN over budget, or pass.
#[inline(always)]
fn guard(packet: &Classification, config: &XdpConfig, flow_hash: u64) -> Verdict {
    if source_blocked(&packet.src) {
        return Verdict::DropBlockedSource;
    }
    // A spoofed-source flood, before the per-source budget: its SYNs would each write a random budget set.
    if packet.is_syn() && config.flood_syn_rate != 0 && !known::syn_admitted(packet, config) {
        return Verdict::DropSynFlood;
    }
    if packet.is_syn() && config.syn_rate != 0 {
        match syn_within_budget(packet, config) {
            SynSpend::Taken => {}
            SynSpend::Short => return Verdict::DropSynRate,
            SynSpend::Penalized => return Verdict::DropSynPenalty,
        }
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

/// Spends one SYN from the source's bucket (a full one for a source new to its set), unless it serves a penalty.
#[inline(always)]
fn syn_within_budget(packet: &Classification, config: &XdpConfig) -> SynSpend {
    // A missing set (it cannot be: the index is masked to the table) passes: fail open.
    let Some((set, _, source)) = budget(&XDP_SYN_BUDGET, packet, config) else {
        return SynSpend::Taken;
    };
    let now = now_ns(config);
    // SAFETY: a pointer to a live map value; a concurrent update from another CPU can only lose a token or tear
    // a way (see `BudgetSet`), never make the value invalid (plain integers).
    unsafe { (*set).take_syn(&source, now, config.syn_rate, config.syn_burst.max(1)) }
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
