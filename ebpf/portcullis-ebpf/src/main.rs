//! The BPF programs of portcullis.
//!
//! # Layout
//! - [`portcullis_xdp`]: the XDP classifier. It runs the ABI crate's [`classify`] (the same code the host unit
//!   tests), counts the verdict in the per-CPU array [`XDP_VERDICTS`], and passes every packet: it observes, it
//!   does not filter yet.
//! - [`XDP_CONFIG`]: the listener ports, written by the daemon before it attaches the program.
//!
//! Built only by `cargo xtask build` (Debian rustc, `-Z build-std=core`, `bpfel-unknown-none`). On the host this
//! crate still type-checks (so `cargo check --workspace` and clippy cover it) and links to an empty `main`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use portcullis_abi::{
    packet::{PacketBytes, classify},
    verdict::Verdict,
    xdp_config::{XDP_CONFIG_KEY, XdpConfig},
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

/// The XDP entry point; its name must match `portcullis_abi::names::PROG_XDP`. Always `XDP_PASS`.
#[xdp]
pub fn portcullis_xdp(ctx: XdpContext) -> u32 {
    let packet = Packet(&ctx);
    let config = XDP_CONFIG.get(XDP_CONFIG_KEY).unwrap_or(&XdpConfig::EMPTY);
    let classification = classify(&packet, config);
    count(classification.verdict);
    // One line per new connection to a listener, at debug: the daemon sets AYA_LOG_LEVEL from its tracing
    // filter, so this costs a global load and a branch unless debug logging is on.
    if classification.verdict == Verdict::PassListenerTcp && classification.is_syn() {
        debug!(&ctx, "SYN to listener port {}", classification.dst_port);
    }
    xdp_action::XDP_PASS
}

/// Adds one to this CPU's counter of `verdict`.
#[inline(always)]
fn count(verdict: Verdict) {
    if let Some(counter) = XDP_VERDICTS.get_ptr_mut(verdict.index()) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, valid for the program's run, and XDP
        // programs are not preempted on a CPU, so nothing else writes this slot concurrently.
        unsafe { *counter += 1 };
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
