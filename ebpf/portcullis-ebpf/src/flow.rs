//! Connection tracking and the ClientHello verdict.
//!
//! A SYN that passed the source checks records its flow and initial sequence number in [`XDP_FLOWS`] (a
//! set-associative table of tags, see `portcullis_abi::flow`); the segment
//! that starts the flow's byte stream (ISN + 1) is handed to the ClientHello program ([`crate::hello::portcullis_ch`],
//! by tail call), which parses it and judges it ([`after_parse`]): malformed (counted
//! by reason in [`XDP_MALFORMED`]), over the source's ClientHello budget ([`XDP_HELLO_BUDGET`], resumption offers
//! cost less), or a blocked fingerprint ([`XDP_BLOCK_FP`]) drops; anything else passes, a ClientHello cut short
//! or continuing in another record included (charged to the budget, not fingerprinted: see
//! `portcullis_abi::client_hello`'s "Records"). A retransmission of that segment is judged again (a dropped one is dropped again); any other
//! segment, a reordered later one included, passes after one lookup. Flows are never deleted: newer SYNs push
//! them out of their set.

use aya_ebpf::{
    btf_maps::{Array, HashMap, PerCpuArray},
    macros::btf_map,
    programs::XdpContext,
};
use portcullis_abi::{
    client_hello::{Malformed, fingerprint::SHAPES, stages},
    flow::{
        FLOW_SETS, FULL_HELLO_COST_MILLI, FlowKey, FlowSet, contains, flow_set, flow_tag, record,
    },
    fp_shapes::{HIT_SLOTS, Membership, ShapeSet, hit_slot},
    limits::{BUDGET_SLOTS, BudgetSlot, TokenBucket},
    packet::Classification,
    verdict::Verdict,
    xdp_config::XdpConfig,
};

use crate::hello;

/// Flows whose SYN passed, as tags of (flow, ISN) in sets of two (`portcullis_abi::flow`); the name must match
/// `portcullis_abi::names::MAP_XDP_FLOWS`. Under a SYN flood newer flows push older ones out of their set, and
/// those connections merely pass unparsed (fail open).
#[btf_map(name = "xdp_flows")]
static XDP_FLOWS: Array<FlowSet, FLOW_SETS> = Array::new();

/// Malformed ClientHellos per reason and CPU; the name must match `portcullis_abi::names::MAP_XDP_MALFORMED`.
#[btf_map(name = "xdp_malformed")]
static XDP_MALFORMED: PerCpuArray<u64, { Malformed::COUNT }> = PerCpuArray::new();

/// Per-source ClientHello token buckets, slotted like the SYN budget (`crate::budget`); the name must match
/// `portcullis_abi::names::MAP_XDP_HELLO_BUDGET`.
#[btf_map(name = "xdp_ch_budget")]
static XDP_HELLO_BUDGET: Array<BudgetSlot, BUDGET_SLOTS> = Array::new();

/// Blocked fingerprints (either variant), value 1; the name must match `portcullis_abi::names::MAP_XDP_BLOCK_FP`.
#[btf_map(name = "xdp_block_fp")]
static XDP_BLOCK_FP: HashMap<u64, u8, 16384> = HashMap::new();

/// How many fingerprints [`XDP_BLOCK_FP`] holds, kept by the CLI and the daemon; the name must match
/// `portcullis_abi::names::MAP_XDP_BLOCK_FP_COUNT`. While it is 0 the parse computes no fingerprint (nothing
/// could match). Its own map: the daemon rewrites `XdpConfig` every 25 ms while shedding SYNs.
#[btf_map(name = "xdp_block_fp_n")]
static XDP_BLOCK_FP_COUNT: Array<u32, 1> = Array::new();

/// The blocked fingerprints by shape, rebuilt with the count; the name must match
/// `portcullis_abi::names::MAP_XDP_BLOCK_FP_SHAPES`. A complete ClientHello whose shape's set is empty is not hashed.
#[btf_map(name = "xdp_block_fp_sh")]
static XDP_BLOCK_FP_SHAPES: Array<ShapeSet, SHAPES> = Array::new();

/// Whether some blocked fingerprint has `shape`, so that a ClientHello of that shape must be hashed. A lookup that
/// fails (it cannot: the shape is below [`SHAPES`]) reads as "yes" (fail safe, as for the count).
#[inline(always)]
pub(crate) fn shape_blocked(shape: u16) -> bool {
    XDP_BLOCK_FP_SHAPES
        .get(u32::from(shape))
        .is_none_or(ShapeSet::any)
}

/// Drops per way of each blocked-fingerprint set, per CPU; the name must match
/// `portcullis_abi::names::MAP_XDP_BLOCK_FP_DROPS`.
#[btf_map(name = "xdp_fp_drops")]
static XDP_BLOCK_FP_DROPS: PerCpuArray<u64, HIT_SLOTS> = PerCpuArray::new();

/// Whether `fingerprint`, of a ClientHello of `shape`, is blocked: from the shape's set (counting the drop under its
/// way), or from the blocklist when the set overflowed (or could not be read: it cannot).
#[inline(always)]
fn fingerprint_blocked(shape: u16, shapes: Option<&ShapeSet>, fingerprint: u64) -> bool {
    match shapes.map(|set| set.membership(fingerprint)) {
        Some(Membership::Blocked { way }) => {
            if let Some(drops) = XDP_BLOCK_FP_DROPS.get_ptr_mut(hit_slot(u32::from(shape), way)) {
                // SAFETY: this CPU's slot of a per-CPU array; XDP runs are not preempted on a CPU.
                unsafe { *drops += 1 };
            }
            true
        }
        Some(Membership::Clear) => false,
        // SAFETY: the value is a plain u8 and only compared for presence.
        Some(Membership::Unknown) | None => unsafe { XDP_BLOCK_FP.get(fingerprint) }.is_some(),
    }
}

/// The flow of a classified TCP packet.
#[inline(always)]
pub(crate) fn flow_key(packet: &Classification) -> FlowKey {
    FlowKey {
        src: packet.src,
        dst: packet.dst,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
    }
}

/// For a packet to a listener port that passed the source checks: records a SYN's flow, judges the first payload
/// segment of a recorded flow, passes everything else. `hash` is `flow_key(packet).hash()`.
#[inline(always)]
pub fn inspect(
    ctx: &XdpContext,
    packet: &Classification,
    config: &XdpConfig,
    hash: u64,
) -> Verdict {
    if packet.is_syn() {
        if let Some(set) = XDP_FLOWS.get_ptr_mut(flow_set(hash)) {
            // SAFETY: a pointer to a live map value, plain integers. Another CPU recording into the same set at
            // once can only lose one of the two flows (each tag is one aligned 8-byte store): fail open.
            unsafe { record(&mut *set, flow_tag(hash, packet.seq)) };
        }
        return Verdict::PassListenerTcp;
    }
    if packet.payload_len == 0 {
        return Verdict::PassListenerTcp;
    }
    let Some(set) = XDP_FLOWS.get_ptr(flow_set(hash)) else {
        return Verdict::PassListenerTcp;
    };
    // The SYN takes one sequence number: the byte stream, and so the ClientHello, starts at ISN + 1.
    // SAFETY: a pointer to a live map value, plain integers.
    if !contains(unsafe { &*set }, flow_tag(hash, packet.seq.wrapping_sub(1))) {
        return Verdict::PassListenerTcp;
    }
    judge(ctx, packet, config)
}

/// The first payload segment of a tracked flow: dropped here when its source has too little ClientHello budget left
/// for even the cheapest one, otherwise handed to [`hello::portcullis_ch`] by tail call, which parses it and
/// finishes the packet ([`after_parse`]). Returns a verdict when the payload is out of the parse's reach (judged as
/// cut short), and when the tail call fails (the program array is empty: no daemon filled it): the segment then
/// passes unjudged and uncharged (fail open).
#[inline(always)]
fn judge(ctx: &XdpContext, packet: &Classification, config: &XdpConfig) -> Verdict {
    // The source's bucket, refilled, when there is a ClientHello budget. A source without enough left for even
    // the cheapest ClientHello is dropped before the parse: a flood from one source costs a slot lookup per
    // packet, not a parse. (Its malformed or blocked ClientHellos are then counted as over budget.)
    let bucket = if config.hello_rate != 0 {
        hello_bucket(packet, config)
    } else {
        None
    };
    if let Some((_, bucket)) = bucket {
        let cheapest = hello_cost(config, true).min(FULL_HELLO_COST_MILLI);
        // SAFETY: a pointer to a live map value (see `hello_bucket`).
        if unsafe { (*bucket).tokens_milli } < cheapest {
            return Verdict::DropHelloRate;
        }
    }
    // A missing count (it cannot be: index 0 of an array) reads as "some blocked": fingerprint (fail safe).
    let fingerprinting = XDP_BLOCK_FP_COUNT.get(0).is_none_or(|n| *n != 0);
    let bucket = bucket.map(|(index, _)| index);
    if !hello::start(
        ctx.ctx,
        packet.payload_offset,
        packet.payload_len,
        fingerprinting,
        bucket,
        packet.dst_port,
    ) {
        // A payload the parse cannot reach (behind more than 511 header bytes, or longer than 4 KiB) counts as a
        // ClientHello cut short: it passes, and pays for a full handshake from the budget.
        let unparsed = hello::Judged {
            status: stages::TRUNCATED,
            resumption: false,
            fingerprints: None,
            shape: 0,
        };
        return after_parse(&unparsed, bucket, config);
    }
    hello::judge_by_tail_call(ctx);
    Verdict::PassListenerTcp
}

/// The verdict on a parsed first segment: the parse's final `status`, what it found, the source's ClientHello
/// bucket (its slot index, when there is a budget).
#[inline(always)]
pub(crate) fn after_parse(
    judged: &hello::Judged,
    bucket: Option<u32>,
    config: &XdpConfig,
) -> Verdict {
    if judged.status >= stages::MALFORMED_BASE {
        let reason = (judged.status - stages::MALFORMED_BASE) as u32;
        if let Some(counter) = XDP_MALFORMED.get_ptr_mut(reason) {
            // SAFETY: this CPU's slot of a per-CPU array; XDP runs are not preempted on a CPU.
            unsafe { *counter += 1 };
        }
        return Verdict::DropMalformedHello;
    }
    if let Some(fingerprints) = judged.fingerprints {
        let shapes = XDP_BLOCK_FP_SHAPES.get(u32::from(judged.shape));
        for fingerprint in fingerprints {
            if fingerprint_blocked(judged.shape, shapes, fingerprint) {
                return Verdict::DropBlockedFingerprint;
            }
        }
    }
    if let Some(bucket) = bucket.and_then(|index| XDP_HELLO_BUDGET.get_ptr_mut(index)) {
        // SAFETY: a pointer to a live map value, the slot refilled before the parse, unless another CPU took it
        // over meanwhile, which only spends from a fresh bucket (fail open).
        if !unsafe {
            (*bucket)
                .bucket
                .spend(hello_cost(config, judged.resumption))
        } {
            return Verdict::DropHelloRate;
        }
    }
    Verdict::PassClientHello
}

/// The cost of one ClientHello in thousandths of a token: a resumption offer at its configured discount.
#[inline(always)]
fn hello_cost(config: &XdpConfig, resumption: bool) -> u64 {
    if resumption && config.hello_resume_cost_milli != 0 {
        u64::from(config.hello_resume_cost_milli)
    } else {
        FULL_HELLO_COST_MILLI
    }
}

/// The source's ClientHello bucket, refilled to now (a full one for a source new to its slot), and its slot index;
/// `None` only if the slot cannot be found (it cannot: the index is masked to the table), which passes: fail open.
#[inline(always)]
fn hello_bucket(packet: &Classification, config: &XdpConfig) -> Option<(u32, *mut TokenBucket)> {
    let (slot, index, source) = crate::budget(&XDP_HELLO_BUDGET, packet, config)?;
    let now = crate::now_ns(config);
    // SAFETY: a pointer to a live map value; a concurrent update from another CPU can only lose a token or tear
    // the slot, never make the value invalid (plain integers).
    unsafe {
        (*slot).take(
            &source,
            now,
            config.hello_rate,
            config.hello_burst.max(1),
            0,
        );
        Some((index, core::ptr::addr_of_mut!((*slot).bucket)))
    }
}
