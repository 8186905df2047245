//! Names the BPF object and the daemon must agree on: program names, map names and the pin directory.
//!
//! The BPF side cannot use these constants directly (`#[xdp]` takes the function's name, `#[btf_map(name = ..)]`
//! takes a literal), so the daemon's unit test opens the built ELF and checks that every name here exists in it.
//! The kernel keeps at most 15 bytes of a program or map name (`BPF_OBJ_NAME_LEN` is 16 with the NUL), so every
//! name stays within 15 bytes and `bpftool prog`/`map` show it whole.

/// The XDP guard program: parses Ethernet/IP/TCP, drops blocked and over-budget sources, counts each packet in
/// [`MAP_XDP_VERDICTS`]. Pinned under the pin directory by this name while the daemon runs.
pub const PROG_XDP: &str = "portcullis_xdp";

/// The SK_REUSEPORT steering program: picks each new connection's worker socket among the unsaturated ones by
/// flow hash ([`crate::steering::pick`]), counting the outcome in [`MAP_RP_OUTCOMES`]. Attached to every
/// listener's SO_REUSEPORT group and pinned under the pin directory by this name while the daemon steers.
pub const PROG_REUSEPORT: &str = "portcullis_rp";

/// The ClientHello program: [`PROG_XDP`] tail-calls it (through [`MAP_XDP_HELLO_PROG`]) with the first payload
/// segment of a tracked flow; it parses the segment as a ClientHello, decides and counts the packet's verdict, and
/// returns its action. Pinned under the pin directory by this name while the daemon runs ("ch": ClientHello, for
/// the kernel's 15 bytes).
pub const PROG_XDP_HELLO: &str = "portcullis_ch";

/// Every program in the object, for the ELF name check and for operators' tooling.
pub const ALL_PROGRAMS: &[&str] = &[PROG_XDP, PROG_XDP_HELLO, PROG_REUSEPORT];

/// Per-CPU array of `u64` packet counters, indexed by [`crate::verdict::Verdict`]; summed over CPUs by the daemon.
pub const MAP_XDP_VERDICTS: &str = "xdp_verdicts";

/// Array of one [`crate::xdp_config::XdpConfig`] (the listener TCP ports), written by the daemon before attaching.
pub const MAP_XDP_CONFIG: &str = "xdp_config";

/// Array of [`crate::limits::BUDGET_SETS`] sets of per-source SYN token buckets ([`crate::limits::BudgetSet`]),
/// indexed by [`crate::limits::budget_set`]. A source new to its set takes the way whose bucket holds more (a
/// stranger's, not the spent budget of a flooding source).
pub const MAP_XDP_SYN_BUDGET: &str = "xdp_syn_budget";

/// Array of one `u64`: the key of the budget tables' set hash ([`crate::limits::budget_set`]). Written once, at
/// random, by the first daemon that finds it 0, and pinned for good with the tables it indexes.
pub const MAP_XDP_BUDGET_SEED: &str = "xdp_budget_seed";

/// LPM trie of blocked source prefixes: [`crate::limits::BlockKey`] -> `u8` (1). IPv4 prefixes are stored
/// IPv4-mapped (`::ffff:a.b.c.d/96+len`), so one trie serves both families.
pub const MAP_XDP_BLOCK_NET: &str = "xdp_block_net";

/// Array of [`crate::block_filter::FILTER_WORDS`] `u64`: the prefilter of [`MAP_XDP_BLOCK_NET`] (a bit per IPv4
/// /16 and per hashed IPv6 /32 that a blocked prefix may cover; [`crate::block_filter`]). `portcullis xdp block
/// add` sets a new prefix's bits; `block del` and the daemon at start rebuild it from the trie.
pub const MAP_XDP_BLOCK_NET_FILTER: &str = "xdp_block_pre";

/// Array of [`crate::flow::FlowSet`]s (indexed by [`crate::flow::flow_set`]) recording connections whose SYN
/// reached a listener port, as tags of flow and initial sequence number ([`crate::flow::flow_tag`]). The segment
/// that starts the byte stream (sequence number ISN + 1) of a tracked flow is parsed as a ClientHello; untracked
/// flows and later segments pass.
pub const MAP_XDP_FLOWS: &str = "xdp_flows";

/// Per-CPU array of `u64` counters of malformed ClientHellos, indexed by
/// [`crate::client_hello::Malformed`]; summed over CPUs by the daemon.
pub const MAP_XDP_MALFORMED: &str = "xdp_malformed";

/// Array of [`crate::limits::BUDGET_SETS`] sets of per-source ClientHello token buckets
/// ([`crate::limits::BudgetSet`]), indexed like [`MAP_XDP_SYN_BUDGET`].
pub const MAP_XDP_HELLO_BUDGET: &str = "xdp_ch_budget";

/// Hash set of blocked ClientHello fingerprints: `u64` (either variant, see
/// [`crate::client_hello::fingerprint`]) -> `u8` (1). Written by `portcullis xdp block-fingerprint add|del`.
pub const MAP_XDP_BLOCK_FP: &str = "xdp_block_fp";

/// Array of one `u32`: how many fingerprints [`MAP_XDP_BLOCK_FP`] holds, as counted by whoever last changed it
/// (`portcullis xdp block-fingerprint add|del` recounts after each change, the daemon at start). While it is 0
/// the XDP program skips fingerprinting a ClientHello altogether (nothing could match). A separate map, not a
/// field of [`crate::xdp_config::XdpConfig`]: the daemon rewrites that value every 25 ms while shedding SYNs
/// and would overwrite a count the CLI put there. An entry written into [`MAP_XDP_BLOCK_FP`] by other means
/// (bpftool) blocks only once this count is non-zero.
pub const MAP_XDP_BLOCK_FP_COUNT: &str = "xdp_block_fp_n";

/// Array of [`crate::client_hello::fingerprint::SHAPES`] [`crate::fp_shapes::ShapeSet`]s: for each
/// [shape](crate::client_hello::fingerprint::shape), the fingerprints in [`MAP_XDP_BLOCK_FP`] that have it, rebuilt
/// from the blocklist by whoever changes it (as [`MAP_XDP_BLOCK_FP_COUNT`] is recounted). The XDP program hashes a
/// complete ClientHello only when its shape's set is not empty, and looks the blocklist up only when the set
/// overflowed.
pub const MAP_XDP_BLOCK_FP_SHAPES: &str = "xdp_block_fp_sh";

/// Per-CPU array of [`crate::fp_shapes::HIT_SLOTS`] `u64`s: ClientHellos dropped for each way of each set of
/// [`MAP_XDP_BLOCK_FP_SHAPES`] ([`crate::fp_shapes::hit_slot`]), so per blocked fingerprint while it keeps its way.
/// Zeroed for a way that changes hands by whoever rebuilds the sets.
pub const MAP_XDP_BLOCK_FP_DROPS: &str = "xdp_fp_drops";

/// Array of [`crate::shed::SHED_SETS`] sets ([`crate::shed::ShedSet`]) of the flows whose SYN load shedding
/// dropped, as [`crate::shed::shed_tag`]s of (flow hash, initial sequence number). A SYN that matches one is the
/// client's TCP retransmitting it (verdict `drop_syn_retry_shed` when dropped again).
pub const MAP_XDP_SYN_SHED: &str = "xdp_syn_shed";

/// Per-CPU scratch of the ClientHello parse inside XDP (not read by userspace).
pub const MAP_XDP_HELLO_WS: &str = "xdp_hello_ws";

/// Program array of one entry, [`PROG_XDP_HELLO`], which [`PROG_XDP`] tail-calls; filled by the daemon after
/// loading both. Empty (no daemon filled it), first payload segments pass unjudged (verdict `pass_listener_tcp`).
pub const MAP_XDP_HELLO_PROG: &str = "xdp_hello_prog";

/// REUSEPORT_SOCKARRAY of the workers' listening sockets: `u32` key
/// [`crate::steering::sock_key`]`(group, worker)` -> socket (written by the daemon with the socket's fd).
pub const MAP_RP_SOCKS: &str = "rp_socks";

/// Array of one [`crate::steering::ReuseportConfig`] (worker and group counts, `prefer_local_cpu`).
pub const MAP_RP_CONFIG: &str = "rp_config";

/// Array of [`crate::steering::SATURATED_WORDS`] `u64` words: bit `w % 64` of word `w / 64` set = worker `w`
/// is saturated and gets no new connections. Written by the daemon's admission hook and
/// `portcullis steering saturate|clear`.
pub const MAP_RP_SATURATED: &str = "rp_saturated";

/// Array of [`crate::steering::MAX_CPUS`] `u32`: CPU -> its pinned worker + 1 (0 = none), for
/// `prefer_local_cpu`.
pub const MAP_RP_CPU_WORKER: &str = "rp_cpu_worker";

/// Per-CPU array of `u64` counters, indexed by [`crate::steering::Outcome`]; summed over CPUs by the daemon.
pub const MAP_RP_OUTCOMES: &str = "rp_outcomes";

/// Per-CPU array of one [`crate::drop_samples::DropRing`]: each CPU's drop count and its last sampled drops (one in
/// [`crate::drop_samples::SAMPLE_EVERY`]: source, verdict, port, time), read by `portcullis xdp drops`. Pinned
/// per run, like the verdict counters.
pub const MAP_XDP_DROP_RING: &str = "xdp_drop_ring";

/// Per-CPU array of one [`crate::limits::TokenBucket`]: the CPU's budget of SYNs from sources the guard does not
/// know (`XdpConfig::flood_syn_rate`; [`crate::known`]).
pub const MAP_XDP_SYN_FLOOD: &str = "xdp_syn_flood";

/// Array of [`crate::known::KNOWN_SETS`] [`crate::known::KnownSet`]s: the sources that recently passed a
/// ClientHello, which pass while the flood budget is spent ([`crate::known`]).
pub const MAP_XDP_KNOWN: &str = "xdp_known";

/// Every map the daemon opens by name (aya-log's own `AYA_LOGS` ring buffer is not ours and not listed).
pub const ALL_MAPS: &[&str] = &[
    MAP_XDP_VERDICTS,
    MAP_XDP_CONFIG,
    MAP_XDP_SYN_BUDGET,
    MAP_XDP_BUDGET_SEED,
    MAP_XDP_BLOCK_NET,
    MAP_XDP_BLOCK_NET_FILTER,
    MAP_XDP_FLOWS,
    MAP_XDP_MALFORMED,
    MAP_XDP_HELLO_BUDGET,
    MAP_XDP_BLOCK_FP,
    MAP_XDP_BLOCK_FP_COUNT,
    MAP_XDP_BLOCK_FP_SHAPES,
    MAP_XDP_BLOCK_FP_DROPS,
    MAP_XDP_HELLO_WS,
    MAP_XDP_HELLO_PROG,
    MAP_XDP_SYN_SHED,
    MAP_XDP_DROP_RING,
    MAP_XDP_SYN_FLOOD,
    MAP_XDP_KNOWN,
    MAP_RP_SOCKS,
    MAP_RP_CONFIG,
    MAP_RP_SATURATED,
    MAP_RP_CPU_WORKER,
    MAP_RP_OUTCOMES,
];

/// The maps of the steering program; every other map in [`ALL_MAPS`] belongs to the XDP program, so the steering
/// loader (which never loads the XDP program) shrinks those to one entry.
pub const RP_MAPS: &[&str] = &[
    MAP_RP_SOCKS,
    MAP_RP_CONFIG,
    MAP_RP_SATURATED,
    MAP_RP_CPU_WORKER,
    MAP_RP_OUTCOMES,
];

/// Default directory on the BPF filesystem where the daemon pins its maps, one file per map named as the map.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/portcullis";

/// Longest program or map name the kernel keeps whole (`BPF_OBJ_NAME_LEN - 1`).
pub const MAX_OBJ_NAME_LEN: usize = 15;

const _: () = {
    let mut i = 0;
    while i < ALL_PROGRAMS.len() {
        assert!(ALL_PROGRAMS[i].len() <= MAX_OBJ_NAME_LEN);
        i += 1;
    }
    let mut i = 0;
    while i < ALL_MAPS.len() {
        assert!(ALL_MAPS[i].len() <= MAX_OBJ_NAME_LEN);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_maps_are_in_all_maps() {
        for name in RP_MAPS {
            assert!(ALL_MAPS.contains(name), "{name} missing from ALL_MAPS");
        }
    }
}
