//! Per-source budgets' shared parts: the SYN budget table [`XDP_SYN_BUDGET`] (spent in `main.rs`, penalized in
//! `known.rs`), the set of a source in a budget table (a keyed hash of its prefix) and the budgets' clock. The
//! ClientHello budget lives in `judge.rs`.

use aya_ebpf::{
    btf_maps::Array,
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};
use portcullis_abi::{
    limits::{BUDGET_MAP_FLAGS, BUDGET_SETS, BudgetSet, SourceKey, budget_set, source_key},
    packet::Classification,
    xdp_config::{XdpConfig, clock_ns},
};

/// Per-source SYN token buckets in 2-way sets, a set per keyed hash of the source (`portcullis_abi::limits::BudgetSet`,
/// 128 KiB: a spoofed flood writes a random set per SYN); the name must match
/// `portcullis_abi::names::MAP_XDP_SYN_BUDGET`. Under a spoofed-source flood the one-SYN sources push each other out
/// of their sets and leave a source that spent its budget (or serves a penalty) in place.
#[btf_map(name = "xdp_syn_budget")]
pub(crate) static XDP_SYN_BUDGET: Array<BudgetSet, BUDGET_SETS, BUDGET_MAP_FLAGS> = Array::new();

/// The key of the budget tables' set hash, written by the daemon; the name must match
/// `portcullis_abi::names::MAP_XDP_BUDGET_SEED`.
#[btf_map(name = "xdp_budget_seed")]
static XDP_BUDGET_SEED: Array<u64, 1> = Array::new();

/// The set of `packet`'s source (masked to the configured prefix) in `table`, its index, and the source.
#[inline(always)]
pub(crate) fn budget(
    table: &Array<BudgetSet, BUDGET_SETS, BUDGET_MAP_FLAGS>,
    packet: &Classification,
    config: &XdpConfig,
) -> Option<(*mut BudgetSet, u32, SourceKey)> {
    let source = source_key(&packet.src, config.v4_prefix_len, config.v6_prefix_len);
    let index = budget_set(&source, seed());
    let set = table.get_ptr_mut(index)?;
    Some((set, index, source))
}

/// The key of the source hashes (0 until the daemon writes it).
#[inline(always)]
pub(crate) fn seed() -> u64 {
    XDP_BUDGET_SEED.get(0).copied().unwrap_or(0)
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
