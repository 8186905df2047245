//! The SK_REUSEPORT steering program: which worker's socket gets a new connection.
//!
//! The choice is the ABI crate's [`pick`] (host-tested); this file only does the map I/O around it and the
//! `bpf_sk_select_reuseport` call. Every run counts one [`Outcome`] in [`RP_OUTCOMES`] and returns `SK_PASS`:
//! without a selection the kernel falls back to its own hash, so a missing config, an all-saturated group or an
//! empty socket slot never drops a connection (SYN shedding belongs to XDP).

use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    btf_maps::{Array, PerCpuArray, ReusePortSockArray},
    helpers::bpf_get_smp_processor_id,
    macros::{btf_map, sk_reuseport},
    programs::SkReuseportContext,
};
use portcullis_abi::steering::{
    MAX_CPUS, MAX_GROUPS, NO_LOCAL, Outcome, RP_CONFIG_KEY, ReuseportConfig, SATURATED_WORDS,
    SOCK_SLOTS, pick, sock_key,
};

/// The workers' listening sockets, key `sock_key(group, worker)`; the name must match
/// `portcullis_abi::names::MAP_RP_SOCKS`.
#[btf_map(name = "rp_socks")]
static RP_SOCKS: ReusePortSockArray<SOCK_SLOTS> = ReusePortSockArray::new();

/// Worker and group counts, `prefer_local_cpu`; the name must match `portcullis_abi::names::MAP_RP_CONFIG`.
#[btf_map(name = "rp_config")]
static RP_CONFIG: Array<ReuseportConfig, 1> = Array::new();

/// Saturated-worker bitmask words; the name must match `portcullis_abi::names::MAP_RP_SATURATED`.
#[btf_map(name = "rp_saturated")]
static RP_SATURATED: Array<u64, SATURATED_WORDS> = Array::new();

/// CPU -> its worker + 1 (0 = none); the name must match `portcullis_abi::names::MAP_RP_CPU_WORKER`.
#[btf_map(name = "rp_cpu_worker")]
static RP_CPU_WORKER: Array<u32, MAX_CPUS> = Array::new();

/// One `u64` per [`Outcome`] and CPU; the name must match `portcullis_abi::names::MAP_RP_OUTCOMES`.
#[btf_map(name = "rp_outcomes")]
static RP_OUTCOMES: PerCpuArray<u64, { Outcome::COUNT }> = PerCpuArray::new();

/// The steering entry point; its name must match `portcullis_abi::names::PROG_REUSEPORT`.
#[sk_reuseport]
pub fn portcullis_rp(ctx: SkReuseportContext) -> u32 {
    let outcome = steer(&ctx);
    if let Some(counter) = RP_OUTCOMES.get_ptr_mut(outcome.index()) {
        // SAFETY: this CPU's slot of a per-CPU array; the program runs with preemption (migration) disabled.
        unsafe { *counter += 1 };
    }
    SK_PASS
}

/// Picks a worker and selects its socket; the outcome says what happened.
#[inline(always)]
fn steer(ctx: &SkReuseportContext) -> Outcome {
    let Some(config) = RP_CONFIG.get(RP_CONFIG_KEY) else {
        return Outcome::NoConfigFallback;
    };
    let mut saturated = [0u64; SATURATED_WORDS];
    let mut i = 0;
    while i < SATURATED_WORDS {
        if let Some(word) = RP_SATURATED.get(i as u32) {
            saturated[i] = *word;
        }
        i += 1;
    }
    let mut local = NO_LOCAL;
    if config.prefer_local_cpu != 0 {
        // SAFETY: a helper without arguments.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        if let Some(worker) = RP_CPU_WORKER.get(cpu) {
            // 0 (no worker on this CPU) wraps to NO_LOCAL.
            local = worker.wrapping_sub(1);
        }
    }
    let chosen = match pick(ctx.hash(), config.workers, &saturated, local) {
        Ok(chosen) => chosen,
        Err(fallback) => return fallback,
    };
    // The program does not know its group: the kernel refuses another group's socket, so try each.
    let groups = config.groups;
    let mut group = 0;
    while group < MAX_GROUPS as u32 {
        if group >= groups {
            break;
        }
        if RP_SOCKS
            .select_reuseport(ctx, sock_key(group, chosen.worker))
            .is_ok()
        {
            return chosen.outcome;
        }
        group += 1;
    }
    Outcome::NoSocketFallback
}
