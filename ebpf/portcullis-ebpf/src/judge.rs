//! The verdict on a parsed first segment ([`after_parse`]): malformed (counted by reason in [`XDP_MALFORMED`]), a
//! blocked fingerprint ([`XDP_BLOCK_FP`], through the by-shape index [`XDP_BLOCK_FP_SHAPES`]), over the source's
//! ClientHello budget ([`XDP_HELLO_BUDGET`], resumption offers cost less), or passed. Shared by `flow` (a segment
//! out of the parse's reach) and `hello` (after the parse).

use aya_ebpf::{
    btf_maps::{Array, HashMap, PerCpuArray},
    macros::btf_map,
};
use portcullis_abi::{
    client_hello::{Malformed, fingerprint::SHAPES, steps},
    flow::FULL_HELLO_COST_MILLI,
    fp_shapes::{HIT_SLOTS, Membership, ShapeSet, hit_slot},
    limits::{BUDGET_MAP_FLAGS, BUDGET_SETS, BudgetSet, TokenBucket, split_way_index, way_index},
    packet::Classification,
    verdict::Verdict,
    xdp_config::XdpConfig,
};

use crate::budget::{budget, now_ns};

/// Malformed ClientHellos per reason and CPU; the name must match `portcullis_abi::names::MAP_XDP_MALFORMED`.
#[btf_map(name = "xdp_malformed")]
static XDP_MALFORMED: PerCpuArray<u64, { Malformed::COUNT }> = PerCpuArray::new();

/// Per-source ClientHello token buckets, in sets like the SYN budget (`crate::budget`); the name must match
/// `portcullis_abi::names::MAP_XDP_HELLO_BUDGET`.
#[btf_map(name = "xdp_ch_budget")]
static XDP_HELLO_BUDGET: Array<BudgetSet, BUDGET_SETS, BUDGET_MAP_FLAGS> = Array::new();

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

/// Whether to compute fingerprints: only while some fingerprint is blocked. A missing count (it cannot be: index 0
/// of an array) reads as "some blocked" (fail safe).
#[inline(always)]
pub(crate) fn fingerprinting() -> bool {
    XDP_BLOCK_FP_COUNT.get(0).is_none_or(|n| *n != 0)
}

/// What the verdict needs from one parse.
#[derive(Clone, Copy)]
pub struct Judged {
    /// The final [`steps`] status: [`steps::DONE`], [`steps::TRUNCATED`] or a malformation.
    pub status: i32,
    /// A TLS 1.3 PSK or TLS 1.2 ticket offer was seen (a resumption: cheap to serve).
    pub resumption: bool,
    /// Both fingerprints, when the whole ClientHello was present and they were asked for.
    pub fingerprints: Option<[u64; 2]>,
    /// Their shape, which files them in the blocklist's index (`fp_shapes`).
    pub shape: u16,
}

/// The verdict on a parsed first segment: the parse's final `status`, what it found, the source's ClientHello
/// bucket (its slot index, when there is a budget).
#[inline(always)]
pub(crate) fn after_parse(judged: &Judged, bucket: Option<u32>, config: &XdpConfig) -> Verdict {
    if judged.status >= steps::MALFORMED_BASE {
        let reason = (judged.status - steps::MALFORMED_BASE) as u32;
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
    if let Some(bucket) = bucket {
        let (set, way) = split_way_index(bucket);
        if let Some(set) = XDP_HELLO_BUDGET.get_ptr_mut(set) {
            // SAFETY: a pointer to a live map value, the way refilled before the parse, unless another CPU took it
            // over meanwhile, which only spends from a fresh bucket (fail open). `way` is 0 or 1.
            if !unsafe {
                (*set).ways[way]
                    .bucket
                    .spend(hello_cost(config, judged.resumption))
            } {
                return Verdict::DropHelloRate;
            }
        }
    }
    Verdict::PassClientHello
}

/// The cost of one ClientHello in thousandths of a token: a resumption offer at its configured discount.
#[inline(always)]
pub(crate) fn hello_cost(config: &XdpConfig, resumption: bool) -> u64 {
    if resumption && config.hello_resume_cost_milli != 0 {
        u64::from(config.hello_resume_cost_milli)
    } else {
        FULL_HELLO_COST_MILLI
    }
}

/// The source's ClientHello bucket, refilled to now (a full one for a source new to its set), and its way's index
/// (`limits::way_index`); `None` only if the set cannot be found (it cannot: the index is masked to the table),
/// which passes: fail open.
#[inline(always)]
pub(crate) fn hello_bucket(
    packet: &Classification,
    config: &XdpConfig,
) -> Option<(u32, *mut TokenBucket)> {
    let (set, index, source) = budget(&XDP_HELLO_BUDGET, packet, config)?;
    let now = now_ns(config);
    let burst = config.hello_burst.max(1);
    // SAFETY: a pointer to a live map value; a concurrent update from another CPU can only lose a token or tear
    // a way, never make the value invalid (plain integers). `way` is 0 or 1.
    unsafe {
        let (way, new) = (*set).way_of(&source, now, config.hello_rate, burst);
        let bucket = core::ptr::addr_of_mut!((*set).ways[way].bucket);
        if !new {
            (*bucket).take(now, config.hello_rate, burst, 0);
        }
        Some((way_index(index, way), bucket))
    }
}
