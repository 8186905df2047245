//! Connection tracking and the ClientHello verdict.
//!
//! A SYN that passed the source checks records its flow and initial sequence number in [`XDP_FLOWS`] (a
//! set-associative table of tags, see `portcullis_abi::flow`); the segment
//! that starts the flow's byte stream (ISN + 1) is handed to the ClientHello program ([`crate::hello::portcullis_ch`],
//! by tail call), which parses it and judges it (`judge::after_parse`): malformed, over the source's ClientHello budget, or a
//! blocked fingerprint drops; anything else passes, a ClientHello cut short
//! or continuing in another record included (charged to the budget, not fingerprinted: see
//! `portcullis_abi::client_hello`'s "Records"). A retransmission of that segment is judged again (a dropped one is dropped again); any other
//! segment, a reordered later one included, passes after one lookup. Flows are never deleted: newer SYNs push
//! them out of their set.

use aya_ebpf::{btf_maps::Array, macros::btf_map, programs::XdpContext};
use portcullis_abi::{
    client_hello::steps,
    flow::{
        FLOW_SETS, FULL_HELLO_COST_MILLI, FlowKey, FlowSet, contains, flow_set, flow_tag, record,
    },
    packet::Classification,
    verdict::Verdict,
    xdp_config::XdpConfig,
};

use crate::{hello, judge};

/// Flows whose SYN passed, as tags of (flow, ISN) in sets of two (`portcullis_abi::flow`); the name must match
/// `portcullis_abi::names::MAP_XDP_FLOWS`. Under a SYN flood newer flows push older ones out of their set, and
/// those connections merely pass unparsed (fail open).
#[btf_map(name = "xdp_flows")]
static XDP_FLOWS: Array<FlowSet, FLOW_SETS> = Array::new();

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
    let verdict = first_segment(ctx, packet, config);
    // The ClientHello program marks the sources of the segments it judges itself (`known::after_verdict`).
    if verdict == Verdict::DropHelloRate {
        crate::known::over_hello_budget(packet, config);
    }
    verdict
}

/// The first payload segment of a tracked flow: dropped here when its source has too little ClientHello budget left
/// for even the cheapest one, otherwise handed to [`hello::portcullis_ch`] by tail call, which parses it and
/// finishes the packet ([`judge::after_parse`]). Returns a verdict when the payload is out of the parse's reach (judged as
/// cut short), and when the tail call fails (the program array is empty: no daemon filled it): the segment then
/// passes unjudged and uncharged (fail open).
#[inline(always)]
fn first_segment(ctx: &XdpContext, packet: &Classification, config: &XdpConfig) -> Verdict {
    // The source's bucket, refilled, when there is a ClientHello budget. A source without enough left for even
    // the cheapest ClientHello is dropped before the parse: a flood from one source costs a slot lookup per
    // packet, not a parse. (Its malformed or blocked ClientHellos are then counted as over budget.)
    let bucket = if config.hello_rate != 0 {
        judge::hello_bucket(packet, config)
    } else {
        None
    };
    if let Some((_, bucket)) = bucket {
        let cheapest = judge::hello_cost(config, true).min(FULL_HELLO_COST_MILLI);
        // SAFETY: a pointer to a live map value (see `hello_bucket`).
        if unsafe { (*bucket).tokens_milli } < cheapest {
            return Verdict::DropHelloRate;
        }
    }
    let fingerprinting = judge::fingerprinting();
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
        let unparsed = judge::Judged {
            status: steps::TRUNCATED,
            resumption: false,
            fingerprints: None,
            shape: 0,
        };
        return judge::after_parse(&unparsed, bucket, config);
    }
    hello::judge_by_tail_call(ctx);
    Verdict::PassListenerTcp
}
