//! The spoofed-flood defences through the loaded BPF program (`BPF_PROG_TEST_RUN`): once this CPU's budget of
//! unknown sources' SYNs is spent, SYNs from new sources drop (`drop_syn_flood`) while a source that passed a
//! ClientHello still passes; and a source whose first segment was a malformed ClientHello has its next SYNs
//! dropped (`drop_syn_penalty`) for the penalty's time, while others, and known sources, pass. Both knobs apply on the next packet.
//!
//! Privileged like `run`, whose loader and runner it uses.

use aya::maps::{MapData, PerCpuArray};
use aya::{Ebpf, maps::Array};
use portcullis_abi::{
    hello_fixtures::malformed_cases,
    known::{KnownSet, known_slot},
    limits::{source_key, v4_mapped},
    names::MAP_XDP_KNOWN,
    verdict::Verdict,
};

use super::hello::{Conn, config, curl_hello, hello};
use super::run::{XDP_DROP, XDP_PASS, load, run, skip_reason, write_config};

/// The per-CPU flood budget is this CPU's: the test thread stays on one, so each run meets the same bucket.
fn pin_to_cpu0() {
    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(0).expect("CPU 0 exists");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).expect("pin to CPU 0");
}

/// SYNs from new sources 10.0.0.`first`.. until one drops; how many passed (at most `limit`).
fn spoof_until_dropped(
    ebpf: &mut Ebpf,
    counters: &PerCpuArray<MapData, u64>,
    first: u8,
    limit: u8,
) -> u8 {
    for i in 0..limit {
        let spoofed = Conn::v4(first + i, 50000);
        match run(ebpf, counters, &spoofed.syn()) {
            (XDP_PASS, Verdict::PassListenerTcp) => {}
            (XDP_DROP, Verdict::DropSynFlood) => return i,
            other => panic!("spoofed SYN {i}: {other:?}"),
        }
    }
    limit
}

#[test]
fn a_syn_flood_from_new_sources_drops_while_a_known_client_passes() {
    if skip_reason("a_syn_flood_from_new_sources_drops_while_a_known_client_passes").is_some() {
        return;
    }
    pin_to_cpu0();
    let mut config = config();
    // One unknown SYN a second per CPU, a burst of 3: the test runs in milliseconds.
    config.flood_syn_rate = 1;
    config.flood_syn_burst = 3;
    config.known_ttl_s = 60;
    let (mut ebpf, counters) = load(config);
    // The known client: its SYN spends a token, its ClientHello passes and makes it known.
    let client = Conn::v4(1, 40000);
    assert_eq!(
        hello(&mut ebpf, &counters, client, curl_hello()),
        (XDP_PASS, Verdict::PassClientHello)
    );
    let (set, tag) = known_slot(&source_key(&v4_mapped([10, 0, 0, 1]), 32, 64), 0);
    let known: Array<&MapData, KnownSet> = ebpf
        .map(MAP_XDP_KNOWN)
        .expect("known map")
        .try_into()
        .expect("known map type");
    let set = known.get(&set, 0).expect("read the client's set");
    assert!(
        set.ways.iter().any(|way| (way >> 32) as u32 == tag),
        "the client's source is recorded: {set:?}"
    );
    // The flood: the two tokens left pass two new sources, then new sources drop.
    assert_eq!(spoof_until_dropped(&mut ebpf, &counters, 100, 10), 2);
    assert_eq!(spoof_until_dropped(&mut ebpf, &counters, 120, 10), 0);
    // The known client's next connection passes, its ClientHello too.
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(1, 40001), curl_hello()),
        (XDP_PASS, Verdict::PassClientHello)
    );
    // A malformed first segment makes no one known.
    let (_, junk) = malformed_cases()
        .into_iter()
        .next()
        .expect("a malformed case");
    assert_eq!(
        run(
            &mut ebpf,
            &counters,
            &Conn::v4(130, 50000).first_segment(&junk)
        ),
        (XDP_PASS, Verdict::PassListenerTcp),
        "untracked: its SYN was dropped"
    );
    assert_eq!(spoof_until_dropped(&mut ebpf, &counters, 130, 1), 0);
    // Off on a live program (`portcullis xdp set flood_syn_rate=0`): new sources pass again.
    config.flood_syn_rate = 0;
    write_config(&mut ebpf, config);
    assert_eq!(spoof_until_dropped(&mut ebpf, &counters, 140, 5), 5);
}

#[test]
fn a_malformed_client_hello_drops_its_sources_next_syns() {
    if skip_reason("a_malformed_client_hello_drops_its_sources_next_syns").is_some() {
        return;
    }
    let mut config = config();
    config.syn_rate = 100;
    config.syn_burst = 100;
    config.malformed_penalty_ms = 60_000;
    let (mut ebpf, counters) = load(config);
    let (reason, junk) = malformed_cases()
        .into_iter()
        .next()
        .expect("a malformed case");
    let sender = Conn::v4(7, 41000);
    assert_eq!(
        hello(&mut ebpf, &counters, sender, &junk),
        (XDP_DROP, Verdict::DropMalformedHello),
        "{reason:?}"
    );
    for port in 41001..41004 {
        assert_eq!(
            run(&mut ebpf, &counters, &Conn::v4(7, port).syn()),
            (XDP_DROP, Verdict::DropSynPenalty),
            "the junk sender's next SYN, port {port}"
        );
    }
    // Another source is not touched, and a valid ClientHello penalizes no one.
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(8, 41000), curl_hello()),
        (XDP_PASS, Verdict::PassClientHello)
    );
    assert_eq!(
        run(&mut ebpf, &counters, &Conn::v4(8, 41001).syn()),
        (XDP_PASS, Verdict::PassListenerTcp)
    );
    // A known source (a ClientHello passed) is spared: a spoofed junk segment cannot refuse a recent client.
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(8, 41002), &junk),
        (XDP_DROP, Verdict::DropMalformedHello)
    );
    assert_eq!(
        run(&mut ebpf, &counters, &Conn::v4(8, 41003).syn()),
        (XDP_PASS, Verdict::PassListenerTcp),
        "a known source's SYN after its malformed ClientHello"
    );
    // Without a penalty (a live knob), a malformed ClientHello costs its source nothing more.
    config.malformed_penalty_ms = 0;
    write_config(&mut ebpf, config);
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(9, 41000), &junk),
        (XDP_DROP, Verdict::DropMalformedHello)
    );
    assert_eq!(
        run(&mut ebpf, &counters, &Conn::v4(9, 41001).syn()),
        (XDP_PASS, Verdict::PassListenerTcp)
    );
}

/// A ClientHello over its source's budget drops that source's next SYNs (`drop_syn_penalty`), known source or not,
/// until its ClientHello budget holds a token again (`1 / hello_rate`): a connection made before then would only
/// have its ClientHello dropped too. Another source is not touched, and the penalty ends by itself.
#[test]
fn a_client_hello_over_budget_drops_its_sources_syns_until_the_next_token() {
    if skip_reason("a_client_hello_over_budget_drops_its_sources_syns_until_the_next_token")
        .is_some()
    {
        return;
    }
    let mut config = config();
    config.syn_rate = 100;
    config.syn_burst = 100;
    // One full handshake at once, then one per 50 ms: the penalty lasts 50 ms.
    config.hello_rate = 20;
    config.hello_burst = 1;
    let (mut ebpf, counters) = load(config);
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(9, 42000), curl_hello()),
        (XDP_PASS, Verdict::PassClientHello),
        "the budget's one token"
    );
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(9, 42001), curl_hello()),
        (XDP_DROP, Verdict::DropHelloRate)
    );
    let penalized = std::time::Instant::now();
    assert_eq!(
        run(&mut ebpf, &counters, &Conn::v4(9, 42002).syn()),
        (XDP_DROP, Verdict::DropSynPenalty),
        "the source is known (a ClientHello passed), and still its next SYN is dropped"
    );
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(10, 42000), curl_hello()),
        (XDP_PASS, Verdict::PassClientHello),
        "another source keeps its budgets"
    );
    // The penalty ends with the next ClientHello token (50 ms, a few jiffies more at most).
    let mut port = 42003;
    loop {
        match run(&mut ebpf, &counters, &Conn::v4(9, port).syn()) {
            (XDP_PASS, Verdict::PassListenerTcp) => break,
            // After the penalty the SYN bucket refills from empty (`syn_rate`: 10 ms a token).
            (XDP_DROP, Verdict::DropSynPenalty | Verdict::DropSynRate) => {
                assert!(
                    penalized.elapsed() < std::time::Duration::from_secs(1),
                    "the penalty outlived its token"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => panic!("unexpected verdict {other:?}"),
        }
        port += 1;
    }
    assert!(
        penalized.elapsed() >= std::time::Duration::from_millis(30),
        "the penalty ended before the token came back: {:?}",
        penalized.elapsed()
    );
    // Off with the SYN budget: a ClientHello over budget drops only itself.
    config.syn_rate = 0;
    write_config(&mut ebpf, config);
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(11, 42000), curl_hello()),
        (XDP_PASS, Verdict::PassClientHello)
    );
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(11, 42001), curl_hello()),
        (XDP_DROP, Verdict::DropHelloRate)
    );
    assert_eq!(
        run(&mut ebpf, &counters, &Conn::v4(11, 42002).syn()),
        (XDP_PASS, Verdict::PassListenerTcp)
    );
}
