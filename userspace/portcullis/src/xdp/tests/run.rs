//! The packet fixture table run through the loaded BPF program with `BPF_PROG_TEST_RUN`: the kernel's copy of
//! the classifier (reading through `data_end` checks, after the verifier) must reach the same verdict as the host
//! unit test of `portcullis_abi::packet::classify` on every row.
//!
//! Privileged: it loads the embedded object. Without root (or without an embedded object) it skips with a line
//! saying why, except under `CI=true`, where a skip is a failure.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp},
};
use portcullis_abi::{
    limits::{BudgetSet, BudgetSlot, TokenBucket, block_entry, budget_set, source_key, v4_mapped},
    names::{
        MAP_XDP_BLOCK_NET, MAP_XDP_BLOCK_NET_FILTER, MAP_XDP_CONFIG, MAP_XDP_SYN_BUDGET,
        MAP_XDP_VERDICTS, PROG_XDP,
    },
    packet::{ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, TCP_FLAG_ACK, TCP_FLAG_SYN},
    packet_fixtures::{FIXTURE_LISTENER_PORTS, LISTENER, fixtures, frame, ipv4, ipv6, tcp},
    verdict::Verdict,
    xdp_config::{XDP_CONFIG_KEY, XdpConfig},
};

use crate::xdp::object;

/// `XDP_DROP`.
pub(super) const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub(super) const XDP_PASS: u32 = 2;

/// Why a privileged test cannot run here, or `None`; panics instead of skipping under `CI=true`.
pub(super) fn skip_reason(test: &str) -> Option<&'static str> {
    let why = if !nix::unistd::Uid::effective().is_root() {
        Some("needs root (CAP_BPF) to load the BPF object")
    } else if object::embedded().is_err() {
        Some("no BPF object embedded (build with `cargo xtask build`)")
    } else {
        None
    };
    if let Some(why) = why {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        assert!(!ci, "{test} {why}; CI=true forbids skipping");
        eprintln!("SKIP: {test} {why}");
    }
    why
}

/// The embedded object loaded with `config`, its verdict counters taken out, its program verified.
pub(super) fn load(config: XdpConfig) -> (Ebpf, PerCpuArray<MapData, u64>) {
    let object = object::embedded().expect("checked by skip_reason");
    let mut ebpf = EbpfLoader::new()
        .load(object)
        .expect("load the embedded object");
    write_config(&mut ebpf, config);
    let counters: PerCpuArray<MapData, u64> = ebpf
        .take_map(MAP_XDP_VERDICTS)
        .expect("verdict map")
        .try_into()
        .expect("verdict map type");
    crate::xdp::hello_prog::install(&mut ebpf)
        .expect("the verifier accepts the ClientHello program");
    program(&mut ebpf)
        .load()
        .expect("the verifier accepts the program");
    (ebpf, counters)
}

pub(super) fn write_config(ebpf: &mut Ebpf, config: XdpConfig) {
    Array::<_, XdpConfig>::try_from(ebpf.map_mut(MAP_XDP_CONFIG).expect("config map"))
        .expect("config map type")
        .set(XDP_CONFIG_KEY, config, 0)
        .expect("write config");
}

fn program(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(PROG_XDP)
        .expect("program")
        .try_into()
        .expect("XDP program")
}

/// Runs `frame` once; returns the XDP action and the verdict whose counter moved.
pub(super) fn run(
    ebpf: &mut Ebpf,
    counters: &PerCpuArray<MapData, u64>,
    frame: &[u8],
) -> (u32, Verdict) {
    let (action, moved) = run_counted(ebpf, counters, frame).expect("BPF_PROG_TEST_RUN");
    let moved: Vec<Verdict> = Verdict::ALL
        .into_iter()
        .filter(|v| moved[v.index() as usize] != 0)
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "exactly one counter moves per packet: {moved:?}"
    );
    (action, moved[0])
}

/// Runs `frame` once; returns the XDP action and how far each verdict's counter moved (indexed by
/// `Verdict::index`), or the error of `BPF_PROG_TEST_RUN`.
fn run_counted(
    ebpf: &mut Ebpf,
    counters: &PerCpuArray<MapData, u64>,
    frame: &[u8],
) -> Result<(u32, Vec<u64>), ProgramError> {
    let totals = || -> Vec<u64> {
        Verdict::ALL
            .iter()
            .map(|v| {
                counters
                    .get(&v.index(), 0)
                    .expect("read counter")
                    .iter()
                    .sum()
            })
            .collect()
    };
    let before = totals();
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    let result = program(ebpf).test_run(options)?;
    let moved = totals()
        .iter()
        .zip(&before)
        .map(|(after, before)| after.wrapping_sub(*before))
        .collect();
    Ok((result.return_value, moved))
}

/// An IPv4 TCP frame to the listener from `src` with `flags`.
fn v4_from(src: [u8; 4], flags: u8) -> Vec<u8> {
    let mut ip = ipv4(6, 5, 0);
    ip[12..16].copy_from_slice(&src);
    frame(&[], ETH_P_IP, &ip, &tcp(LISTENER, flags))
}

/// A frame a table row sends, built by [`Packet::frame`].
#[derive(Clone, Copy, Debug)]
enum Packet {
    /// IPv4 TCP to the listener from the address with the flags ([`v4_from`]).
    V4([u8; 4], u8),
    /// IPv4 SYN to the listener from the address, with this initial sequence number.
    V4SynSeq([u8; 4], u32),
    /// IPv6 SYN to the listener from `2001:db8:0:net::host` (`net`, `host`), behind the VLAN tags.
    V6Syn(u8, u8, &'static [u16]),
    /// IPv4 SYN to port 22, not a listener.
    OtherPortSyn,
}

impl Packet {
    fn frame(self) -> Vec<u8> {
        match self {
            Self::V4(src, flags) => v4_from(src, flags),
            Self::V4SynSeq(src, seq) => {
                let mut f = v4_from(src, TCP_FLAG_SYN);
                let at = ETH_HLEN + 20 + 4;
                f[at..at + 4].copy_from_slice(&seq.to_be_bytes());
                f
            }
            Self::V6Syn(net, host, tags) => {
                let mut ip = ipv6(6);
                ip[8..24].copy_from_slice(&[
                    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, net, 0, 0, 0, 0, 0, 0, 0, host,
                ]);
                frame(tags, ETH_P_IPV6, &ip, &tcp(LISTENER, TCP_FLAG_SYN))
            }
            Self::OtherPortSyn => frame(&[], ETH_P_IP, &ipv4(6, 5, 0), &tcp(22, TCP_FLAG_SYN)),
        }
    }
}

/// A table row: what it checks, the frame sent, the XDP action and the verdict whose counter must move.
type Row = (&'static str, Packet, u32, Verdict);

/// Sends each row's frame in order (rows share the program's state: buckets, shed flows), failing on the first
/// row whose action or verdict differs, by name.
fn run_rows(ebpf: &mut Ebpf, counters: &PerCpuArray<MapData, u64>, rows: &[Row]) {
    for &(name, packet, action, verdict) in rows {
        assert_eq!(
            run(ebpf, counters, &packet.frame()),
            (action, verdict),
            "row `{name}` ({packet:?})"
        );
    }
}

// Short names for the tables' columns.
use Packet::{V4, V4SynSeq, V6Syn};
const SYN: u8 = TCP_FLAG_SYN;
const ACK: u8 = TCP_FLAG_ACK;
const PASS: u32 = XDP_PASS;
const DROP: u32 = XDP_DROP;
const PASS_TCP: Verdict = Verdict::PassListenerTcp;

#[test]
fn syn_budget_limits_one_source_and_not_the_others() {
    if skip_reason("syn_budget_limits_one_source_and_not_the_others").is_some() {
        return;
    }
    let mut config = XdpConfig::new(&FIXTURE_LISTENER_PORTS).expect("fixture ports fit");
    // 1 SYN/s with a burst of 2: the test runs in milliseconds, so the third SYN finds the bucket empty.
    config.syn_rate = 1;
    config.syn_burst = 2;
    let (mut ebpf, counters) = load(config);
    #[rustfmt::skip]
    const PER_32: &[Row] = &[
        ("first SYN of the burst",         V4([10, 0, 0, 1], SYN), PASS, PASS_TCP),
        ("second SYN of the burst",        V4([10, 0, 0, 1], SYN), PASS, PASS_TCP),
        ("third SYN: the bucket is empty", V4([10, 0, 0, 1], SYN), DROP, Verdict::DropSynRate),
        ("only SYNs are budgeted",         V4([10, 0, 0, 1], ACK), PASS, PASS_TCP),
        ("another /32",                    V4([10, 0, 0, 2], SYN), PASS, PASS_TCP),
    ];
    run_rows(&mut ebpf, &counters, PER_32);

    // Per /24: the neighbour now shares 10.0.0.1's empty bucket. No reload: the program reads the config map.
    config.v4_prefix_len = 24;
    write_config(&mut ebpf, config);
    // Then IPv6 sources share a budget per /64 (the default), and a VLAN-tagged SYN is the same source.
    #[rustfmt::skip]
    const PER_24_AND_64: &[Row] = &[
        ("new /24 bucket",                  V4([10, 0, 0, 3], SYN),      PASS, PASS_TCP),
        ("new /24 bucket, second SYN",      V4([10, 0, 0, 3], SYN),      PASS, PASS_TCP),
        ("same /24",                        V4([10, 0, 0, 2], SYN),      DROP, Verdict::DropSynRate),
        ("first address of a /64",          V6Syn(9, 1, &[]),            PASS, PASS_TCP),
        ("second address, VLAN-tagged",     V6Syn(9, 2, &[ETH_P_8021Q]), PASS, PASS_TCP),
        ("a third address of the same /64", V6Syn(9, 3, &[]),            DROP, Verdict::DropSynRate),
    ];
    run_rows(&mut ebpf, &counters, PER_24_AND_64);

    // Dry run: counted as a drop, passed.
    config.enforce = 0;
    write_config(&mut ebpf, config);
    #[rustfmt::skip]
    const DRY_RUN: &[Row] = &[
        ("dry run: counted as a drop, passed", V4([10, 0, 0, 2], SYN), PASS, Verdict::DropSynRate),
    ];
    run_rows(&mut ebpf, &counters, DRY_RUN);
}

#[test]
fn the_jiffies_clock_agrees_with_the_monotonic_clock() {
    if skip_reason("the_jiffies_clock_agrees_with_the_monotonic_clock").is_some() {
        return;
    }
    let mut config = XdpConfig::new(&FIXTURE_LISTENER_PORTS).expect("fixture ports fit");
    config.syn_rate = 1;
    config.syn_burst = 1;
    // What the daemon sets: the budgets read jiffies.
    (config.jiffy_ns, config.jiffies_origin) = crate::xdp::clock::jiffies();
    assert_ne!(config.jiffy_ns, 0, "this kernel reports no tick");
    let (mut ebpf, counters) = load(config);
    let src = [10, 0, 0, 1];
    let source = source_key(&v4_mapped(src), 32, 64);
    // A fresh load's set hash key is 0 (the daemon draws one; nothing here does).
    let index = budget_set(&source, 0);
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE).expect("clock");
    let now_ns = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
    let minute = 60_000_000_000;
    let stamp = |ebpf: &mut Ebpf, last_ns: u64| {
        let way = BudgetSlot {
            source,
            bucket: TokenBucket {
                tokens_milli: 0,
                last_ns,
            },
        };
        // The source's bucket in the set's first way, the second unused (`last_ns` 0).
        let unused = BudgetSlot {
            bucket: TokenBucket {
                tokens_milli: 0,
                last_ns: 0,
            },
            ..way
        };
        Array::<_, BudgetSet>::try_from(ebpf.map_mut(MAP_XDP_SYN_BUDGET).expect("SYN budget map"))
            .expect("array of sets")
            .set(
                index,
                BudgetSet {
                    ways: [way, unused],
                },
                0,
            )
            .expect("write the set");
    };
    // An empty bucket stamped a minute from now: a clock that agrees refills nothing (one far ahead would).
    stamp(&mut ebpf, now_ns + minute);
    let syn = v4_from(src, TCP_FLAG_SYN);
    // (A stamp in the future is a penalty: `drop_syn_penalty`, not `drop_syn_rate`.)
    assert_eq!(
        run(&mut ebpf, &counters, &syn),
        (XDP_DROP, Verdict::DropSynPenalty),
        "the program's clock is a minute or more ahead of CLOCK_MONOTONIC_COARSE"
    );
    // Stamped a minute ago: a minute's refill (one far behind would see the stamp in its future).
    stamp(&mut ebpf, now_ns - minute);
    assert_eq!(
        run(&mut ebpf, &counters, &syn),
        (XDP_PASS, Verdict::PassListenerTcp),
        "the program's clock is a minute or more behind CLOCK_MONOTONIC_COARSE"
    );
}

#[test]
fn blocked_prefixes_drop_until_removed() {
    if skip_reason("blocked_prefixes_drop_until_removed").is_some() {
        return;
    }
    let config = XdpConfig::new(&FIXTURE_LISTENER_PORTS).expect("fixture ports fit");
    let (mut ebpf, counters) = load(config);
    let entries = [
        block_entry("10.0.0.0".parse().expect("address"), 24).expect("valid /24"),
        block_entry("2001:db8:0:7::".parse().expect("address"), 64).expect("valid /64"),
    ];
    set_blocked(&mut ebpf, &entries, true);
    // Outside the /24 but in its /16 (its prefilter bit set: the trie decides), and in another /16 (bit clear).
    #[rustfmt::skip]
    const BLOCKED: &[Row] = &[
        ("SYN from the blocked /24",        V4([10, 0, 0, 1], SYN),  DROP, Verdict::DropBlockedSource),
        ("ACK from the blocked /24",        V4([10, 0, 0, 1], ACK),  DROP, Verdict::DropBlockedSource),
        ("SYN from the blocked /64",        V6Syn(7, 1, &[]),        DROP, Verdict::DropBlockedSource),
        ("outside the /24, inside its /16", V4([10, 0, 1, 1], SYN),  PASS, PASS_TCP),
        ("another /16",                     V4([192, 0, 2, 1], SYN), PASS, PASS_TCP),
        ("listener ports only",             Packet::OtherPortSyn,    PASS, Verdict::PassOtherPort),
    ];
    run_rows(&mut ebpf, &counters, BLOCKED);
    set_blocked(&mut ebpf, &entries, false);
    #[rustfmt::skip]
    const REMOVED: &[Row] = &[
        ("SYN from the removed /24",        V4([10, 0, 0, 1], SYN),  PASS, PASS_TCP),
        ("SYN from the removed /64",        V6Syn(7, 1, &[]),        PASS, PASS_TCP),
    ];
    run_rows(&mut ebpf, &counters, REMOVED);
}

#[test]
fn bpf_program_agrees_with_the_fixture_table() {
    if skip_reason("bpf_program_agrees_with_the_fixture_table").is_some() {
        return;
    }
    let config = XdpConfig::new(&FIXTURE_LISTENER_PORTS).expect("fixture ports fit");
    let (mut ebpf, counters) = load(config);
    let mut ran = 0;
    for fixture in fixtures() {
        // The kernel refuses XDP test input shorter than an Ethernet header (EINVAL); the host test covers those.
        if fixture.frame.len() < ETH_HLEN {
            continue;
        }
        let (action, moved) = run_counted(&mut ebpf, &counters, &fixture.frame)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on `{}`: {e}", fixture.description));
        assert_eq!(action, XDP_PASS, "{}", fixture.description);
        for verdict in Verdict::ALL {
            let i = verdict.index() as usize;
            let expected = u64::from(verdict == fixture.expected);
            assert_eq!(
                moved[i],
                expected,
                "`{}`: counter {} moved by {}, expected verdict {}",
                fixture.description,
                verdict.name(),
                moved[i],
                fixture.expected.name()
            );
        }
        ran += 1;
    }
    assert!(ran >= 20, "only {ran} fixtures ran through the BPF program");
}

#[test]
fn syn_shed_drops_the_configured_fraction_of_syns_only() {
    if skip_reason("syn_shed_drops_the_configured_fraction_of_syns_only").is_some() {
        return;
    }
    let mut config = XdpConfig::new(&FIXTURE_LISTENER_PORTS).expect("fixture ports fit");
    config.syn_shed_ppm = 250_000;
    let (mut ebpf, counters) = load(config);
    const SYNS: u32 = 4000;
    let mut shed = 0u32;
    for i in 0..SYNS {
        let src = [10, 1, (i >> 8) as u8, i as u8];
        match run(&mut ebpf, &counters, &v4_from(src, TCP_FLAG_SYN)) {
            (XDP_DROP, Verdict::DropSynShed) => shed += 1,
            (XDP_PASS, Verdict::PassListenerTcp) => {}
            other => panic!("unexpected verdict for a SYN: {other:?}"),
        }
    }
    // Binomial(4000, 0.25): mean 1000, standard deviation 27.4; ±6 sd keeps a false failure below 1e-8.
    assert!(
        (836..=1164).contains(&shed),
        "{shed} of {SYNS} SYNs shed at 25%"
    );
    // Only SYNs: the rest of a connection always passes, or established connections would break.
    for _ in 0..200 {
        let ack = v4_from([10, 2, 0, 1], TCP_FLAG_ACK);
        assert_eq!(
            run(&mut ebpf, &counters, &ack),
            (XDP_PASS, Verdict::PassListenerTcp)
        );
    }
    // Dry run: counted, not dropped.
    config.enforce = 0;
    write_config(&mut ebpf, config);
    let mut counted = 0;
    for i in 0..400u32 {
        let (action, verdict) = run(
            &mut ebpf,
            &counters,
            &v4_from([10, 3, 0, i as u8], TCP_FLAG_SYN),
        );
        assert_eq!(action, XDP_PASS);
        counted += u32::from(verdict == Verdict::DropSynShed);
    }
    assert!(counted > 0, "dry run counts shed SYNs");
}

#[test]
fn retransmitted_syns_of_shed_flows_are_told_apart_from_new_ones() {
    if skip_reason("retransmitted_syns_of_shed_flows_are_told_apart_from_new_ones").is_some() {
        return;
    }
    let mut config = XdpConfig::new(&FIXTURE_LISTENER_PORTS).expect("fixture ports fit");
    config.syn_shed_ppm = 1_000_000;
    let (mut ebpf, counters) = load(config);
    const SHED: Packet = V4([10, 4, 0, 1], SYN);
    #[rustfmt::skip]
    const DURING_THE_STORM: &[Row] = &[
        ("shed SYN", SHED, DROP, Verdict::DropSynShed),
    ];
    run_rows(&mut ebpf, &counters, DURING_THE_STORM);
    // The storm is over for new clients, not yet for the ones shed during it.
    config.syn_shed_ppm = 0;
    config.syn_retry_shed_ppm = 1_000_000;
    write_config(&mut ebpf, config);
    // The same addresses and ports with another initial sequence number are a new connection.
    #[rustfmt::skip]
    const AFTER_THE_STORM: &[Row] = &[
        ("the same SYN again is the client's TCP retransmitting it", SHED,                                 DROP, Verdict::DropSynRetryShed),
        ("another initial sequence number: a new connection",        V4SynSeq([10, 4, 0, 1], 0x1234_5678), PASS, PASS_TCP),
        ("a source never shed passes",                               V4([10, 4, 0, 2], SYN),               PASS, PASS_TCP),
    ];
    run_rows(&mut ebpf, &counters, AFTER_THE_STORM);
    // Retry shedding off: the retransmission gets in.
    config.syn_retry_shed_ppm = 0;
    write_config(&mut ebpf, config);
    #[rustfmt::skip]
    const RETRY_SHED_OFF: &[Row] = &[
        ("retry shedding off: the retransmission gets in", SHED, PASS, PASS_TCP),
    ];
    run_rows(&mut ebpf, &counters, RETRY_SHED_OFF);
}

/// A drop of each verdict in `SAMPLE_EVERY` per CPU is sampled into that CPU's ring, with the source (IPv4-mapped), the
/// verdict, the port and the time (what `portcullis xdp drops` reads); a pass is not sampled.
#[test]
fn one_drop_in_sample_every_is_recorded_with_its_source() {
    use portcullis_abi::drop_samples::{DropRing, SAMPLE_EVERY};
    use portcullis_abi::names::MAP_XDP_DROP_RING;

    if skip_reason("one_drop_in_sample_every_is_recorded_with_its_source").is_some() {
        return;
    }
    // BPF_PROG_TEST_RUN runs on the calling thread's CPU: one CPU, so one ring and its exact numbering.
    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(0).expect("CPU 0");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).expect("pin to CPU 0");

    let config = XdpConfig::new(&FIXTURE_LISTENER_PORTS).expect("fixture ports fit");
    let (mut ebpf, counters) = load(config);
    let entry = block_entry("10.0.0.0".parse().expect("address"), 24).expect("valid /24");
    set_blocked(&mut ebpf, &[entry], true);
    let ring = |ebpf: &Ebpf| -> DropRing {
        let map: PerCpuArray<_, DropRing> =
            PerCpuArray::try_from(ebpf.map(MAP_XDP_DROP_RING).expect("drop ring")).expect("type");
        map.get(&0, 0).expect("read")[0]
    };
    let before_ns = crate::xdp::clock::monotonic_ns().expect("clock");
    let passing = v4_from([192, 0, 2, 1], TCP_FLAG_SYN);
    assert_eq!(
        run(&mut ebpf, &counters, &passing),
        (XDP_PASS, Verdict::PassListenerTcp)
    );
    assert_eq!(ring(&ebpf).taken, 0, "a pass was sampled");

    let blocked = v4_from([10, 0, 0, 9], TCP_FLAG_SYN);
    let runs = 2 * SAMPLE_EVERY + 1;
    for _ in 0..runs {
        assert_eq!(
            run(&mut ebpf, &counters, &blocked),
            (XDP_DROP, Verdict::DropBlockedSource)
        );
    }
    let after_ns = crate::xdp::clock::monotonic_ns().expect("clock");
    let ring = ring(&ebpf);
    assert_eq!(ring.taken, 3, "drops 1, 65 and 129 are sampled");
    let written: Vec<_> = ring.samples.iter().filter(|s| s.at_ns != 0).collect();
    assert_eq!(
        written.len(),
        3,
        "drops 1, 65 and 129 are sampled: {written:?}"
    );
    for sample in written {
        assert_eq!(sample.src, v4_mapped([10, 0, 0, 9]));
        assert_eq!(sample.verdict, Verdict::DropBlockedSource as u32);
        assert_eq!(sample.dst_port, LISTENER);
        // The coarse clock (the test's config gives no tick) runs up to a tick behind.
        assert!(
            sample.at_ns + 20_000_000 >= before_ns && sample.at_ns <= after_ns,
            "sampled at {} ns, outside [{before_ns}, {after_ns}]",
            sample.at_ns
        );
    }
}

/// Adds (`add`) or removes `entries` in the CIDR blocklist, then rewrites its prefilter as the CLI does after each
/// change: the program looks at the trie only where the prefilter says.
fn set_blocked(ebpf: &mut Ebpf, entries: &[(u32, [u8; 16])], add: bool) {
    let mut trie: LpmTrie<_, [u8; 16], u8> =
        LpmTrie::try_from(ebpf.map_mut(MAP_XDP_BLOCK_NET).expect("block map")).expect("LPM trie");
    for &(bits, addr) in entries {
        let key = Key::new(bits, addr);
        if add {
            trie.insert(&key, 1, 0).expect("insert");
        } else {
            trie.remove(&key).expect("remove");
        }
    }
    let filter = crate::xdp::block_filter::of(&trie).expect("read the trie");
    let mut map: Array<_, u64> = Array::try_from(
        ebpf.map_mut(MAP_XDP_BLOCK_NET_FILTER)
            .expect("prefilter map"),
    )
    .expect("array");
    crate::xdp::block_filter::store(&mut map, &filter).expect("write the prefilter");
}
