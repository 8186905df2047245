//! The spoofed-flood defences at the SYN, and the marks a ClientHello verdict leaves on its source
//! (`portcullis_abi::known`):
//!
//! - [`syn_admitted`]: a SYN spends a token of this CPU's flood budget ([`XDP_SYN_FLOOD`], `flood_syn_rate`); once
//!   it is spent, only sources in the known set [`XDP_KNOWN`] pass, the rest are dropped (`drop_syn_flood`).
//! - [`after_verdict`]: a passed ClientHello makes its source known (while the flood budget or the penalty is on); a
//!   malformed one puts its source's SYN budget under a penalty (`malformed_penalty_ms`) unless it is known, so that
//!   its next connections are dropped at the SYN (`drop_syn_penalty`) instead of each costing the server an accept;
//!   one over its source's ClientHello budget (`drop_hello_rate`) puts that source's SYNs under a penalty, known or
//!   not, until its ClientHello budget holds a token again (`1 / hello_rate`): a connection made before then would
//!   only have its ClientHello dropped too, after costing the server a TCP handshake, an accept and a reset.

use aya_ebpf::{
    bindings::xdp_md,
    btf_maps::{Array, PerCpuArray},
    macros::btf_map,
    programs::XdpContext,
};
use portcullis_abi::{
    known::{KNOWN_MAP_FLAGS, KNOWN_SETS, KnownSet, known_slot},
    limits::{SYN_COST_MILLI, SourceKey, TokenBucket, budget_set, source_key},
    packet::{Classification, source_and_port},
    verdict::Verdict,
    xdp_config::XdpConfig,
};

use crate::budget::{XDP_SYN_BUDGET, now_ns, seed};
use crate::packet_bytes::Packet;

/// Each CPU's budget of SYNs from sources it does not know; the name must match
/// `portcullis_abi::names::MAP_XDP_SYN_FLOOD`. Per CPU: no atomics, and a cache line no other CPU writes.
#[btf_map(name = "xdp_syn_flood")]
static XDP_SYN_FLOOD: PerCpuArray<TokenBucket, 1> = PerCpuArray::new();

/// Sources that recently passed a ClientHello (`portcullis_abi::known::KnownSet`, 64 KiB); the name must match
/// `portcullis_abi::names::MAP_XDP_KNOWN`. Written only by passed ClientHellos, so a spoofed flood, which never
/// sends one, cannot push a known source out.
#[btf_map(name = "xdp_known")]
static XDP_KNOWN: Array<KnownSet, KNOWN_SETS, KNOWN_MAP_FLAGS> = Array::new();

/// Whether a SYN to a listener port passes the flood budget: a token of this CPU's bucket, or, once it is spent, a
/// known source. Only looked up in the known set while the bucket is empty, so without a flood a SYN pays one
/// per-CPU bucket update.
#[inline(always)]
pub(crate) fn syn_admitted(packet: &Classification, config: &XdpConfig) -> bool {
    let now = now_ns(config);
    // A missing bucket (it cannot be: index 0) passes: fail open.
    let Some(bucket) = XDP_SYN_FLOOD.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for the run; XDP runs are not preempted on a CPU.
    let taken = unsafe {
        (*bucket).take(
            now,
            config.flood_syn_rate,
            config.flood_syn_burst.max(1),
            SYN_COST_MILLI,
        )
    };
    if taken {
        return true;
    }
    let [hi, lo] = source_key(&packet.src, config.v4_prefix_len, config.v6_prefix_len).words();
    known(hi, lo, now, config.known_ttl_s)
}

/// Whether the source whose key is the words `hi`, `lo` passed a ClientHello within `ttl_s` of `now`. A subprogram
/// given scalars only, so the lookup adds nothing to the main program's frame (see `shed::syn`).
#[inline(never)]
fn known(hi: u64, lo: u64, now: u64, ttl_s: u32) -> bool {
    let (a, b) = (hi.to_ne_bytes(), lo.to_ne_bytes());
    let source = SourceKey {
        addr: [
            a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5],
            b[6], b[7],
        ],
    };
    let (set, tag) = known_slot(&source, seed());
    // A missing set (it cannot be: masked to the table) is not known.
    XDP_KNOWN
        .get(set)
        .is_some_and(|set| set.contains(tag, now, ttl_s))
}

/// The marks a first segment's verdict leaves on its source: a passed ClientHello makes it known (while the flood
/// budget or a penalty is on), a malformed one puts an unknown source under a penalty (while the SYN budget is on
/// and a penalty set), one over the ClientHello budget puts its source under a penalty until the next token (while
/// both budgets are on). A few loads and branches for any other case.
///
/// One branch on the config in the ClientHello program and the rest in a subprogram: the two checks and two calls
/// inline cost every ClientHello 3–5% (paired, with both off), from the registers they took.
#[inline(always)]
pub(crate) fn after_verdict(ctx: &XdpContext, config: &XdpConfig, verdict: Verdict) {
    // Booleans without short-circuit: four loads, no branch but the one.
    let penalty =
        ((config.malformed_penalty_ms != 0) | (config.hello_rate != 0)) & (config.syn_rate != 0);
    if (config.flood_syn_rate != 0) | penalty {
        mark(ctx.ctx, config, verdict as u32);
    }
}

/// [`after_verdict`] once a mark may be due: `verdict` as its counter index.
#[inline(never)]
fn mark(ctx: *mut xdp_md, config: &XdpConfig, verdict: u32) {
    if verdict == Verdict::PassClientHello as u32 {
        remember(ctx, config);
    } else if config.syn_rate != 0 {
        if verdict == Verdict::DropMalformedHello as u32 && config.malformed_penalty_ms != 0 {
            penalize(ctx, config);
        } else if verdict == Verdict::DropHelloRate as u32 && config.hello_rate != 0 {
            penalize_until_token(ctx, config);
        }
    }
}

/// The source of the packet in `ctx`, masked to its budget prefix. The packet is read again (as `finish`'s
/// `sample_drop` does) because the ClientHello program does not carry the source: that cost every ClientHello.
#[inline(always)]
fn source_of(ctx: *mut xdp_md, config: &XdpConfig) -> Option<SourceKey> {
    // The context pointer through a register move LLVM cannot see into (see `finish::sample_drop`).
    let ctx = XdpContext::new(crate::barrier::opaque(ctx as usize) as *mut xdp_md);
    let (src, _) = source_and_port(&Packet(&ctx))?;
    Some(source_key(&src, config.v4_prefix_len, config.v6_prefix_len))
}

/// Makes the packet's source known (its stamp renewed at most once per stamp unit).
#[inline(never)]
fn remember(ctx: *mut xdp_md, config: &XdpConfig) {
    let Some(source) = source_of(ctx, config) else {
        return;
    };
    let (set, tag) = known_slot(&source, seed());
    let Some(set) = XDP_KNOWN.get_ptr_mut(set) else {
        return;
    };
    // SAFETY: a pointer to a live map value, plain integers; two CPUs writing one set at once can lose one of the
    // two sources (each way is one aligned 8-byte store), which is then unknown until its next ClientHello.
    unsafe { (*set).remember(tag, now_ns(config)) };
}

/// Puts the packet's source, over its ClientHello budget, under a SYN penalty until that budget holds a token again
/// (`1 / hello_rate` from now: the bucket was just found short of one), known or not: a source the guard knows can
/// still flood with valid ClientHellos, and every connection it opens before then only has its ClientHello dropped.
/// A spoofer that can spend a source's ClientHello budget could already keep its ClientHellos out; this moves the
/// drop to the SYN, where a client retries too.
#[inline(never)]
fn penalize_until_token(ctx: *mut xdp_md, config: &XdpConfig) {
    let Some(source) = source_of(ctx, config) else {
        return;
    };
    penalize_source_until_token(&source, config);
}

/// [`penalize_until_token`] for a first segment the XDP program dropped for its budget itself (`flow::inspect`:
/// before the parse, or out of the parse's reach), which has the packet's source at hand. Inline: as a subprogram
/// its frame on top of the XDP program's passed the verifier's 512-byte bound for a call chain.
#[inline(always)]
pub(crate) fn over_hello_budget(packet: &Classification, config: &XdpConfig) {
    if config.syn_rate == 0 {
        return;
    }
    let source = source_key(&packet.src, config.v4_prefix_len, config.v6_prefix_len);
    penalize_source_until_token(&source, config);
}

/// The SYN penalty of [`penalize_until_token`] on `source`.
#[inline(always)]
fn penalize_source_until_token(source: &SourceKey, config: &XdpConfig) {
    let now = now_ns(config);
    let until = now.saturating_add(1_000_000_000 / u64::from(config.hello_rate.max(1)));
    penalize_syns(source, now, until, config);
}

/// Empties `source`'s SYN bucket until `until` (a longer penalty already there stands).
#[inline(always)]
fn penalize_syns(source: &SourceKey, now: u64, until: u64, config: &XdpConfig) {
    let Some(set) = XDP_SYN_BUDGET.get_ptr_mut(budget_set(source, seed())) else {
        return;
    };
    // SAFETY: a pointer to a live map value; a concurrent update can only lose the penalty or a token (see
    // `BudgetSet`), never make the value invalid.
    unsafe { (*set).penalize(source, now, until, config.syn_rate, config.syn_burst.max(1)) };
}

/// Puts the packet's source under a penalty: its SYN bucket emptied until `malformed_penalty_ms` from now, unless it
/// is known. XDP sees one direction only and cannot tell a completed handshake from a spoofed SYN and segment, so a
/// spoofer can penalize a source; sparing known ones keeps it from refusing the clients seen recently (and the
/// clients behind a NAT one of which sends junk).
#[inline(never)]
fn penalize(ctx: *mut xdp_md, config: &XdpConfig) {
    let Some(source) = source_of(ctx, config) else {
        return;
    };
    let now = now_ns(config);
    let (known_set, tag) = known_slot(&source, seed());
    if XDP_KNOWN
        .get(known_set)
        .is_some_and(|set| set.contains(tag, now, config.known_ttl_s))
    {
        return;
    }
    let until = now.saturating_add(u64::from(config.malformed_penalty_ms) * 1_000_000);
    penalize_syns(&source, now, until, config);
}
