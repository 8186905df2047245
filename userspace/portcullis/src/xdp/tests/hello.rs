//! The ClientHello check through the loaded BPF program (`BPF_PROG_TEST_RUN`): a SYN records the flow, then the
//! first data segment of the same flow is judged. Real captured ClientHellos (the post-quantum one cut to its first
//! segment) pass, one crafted input per [`Malformed`] reason drops and is counted under its reason, cut-short and
//! untracked segments pass, IPv6 and VLAN frames are handled, a blocked fingerprint drops, the ClientHello
//! budget charges resumption offers less, and without the ClientHello program in its array first segments pass
//! unjudged (fail open). ClientHellos spanning TLS records (`hello_fixtures::split_cases`) pass, charged to the
//! budget and not fingerprinted, unless their records contradict them (a ChangeCipherSpec before the last byte,
//! lengths that disagree): those drop under their reason.
//!
//! Privileged like `test_run`, whose loader and runner it uses.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray},
};
use portcullis_abi::{
    client_hello::{Malformed, fingerprint::SHAPES, parse},
    fp_shapes::{ShapeSet, hit_slot, shape_index},
    hello_fixtures::{CAPTURED, handshake_of, in_records, malformed_cases, split_cases},
    names::{
        MAP_XDP_BLOCK_FP, MAP_XDP_BLOCK_FP_COUNT, MAP_XDP_BLOCK_FP_DROPS, MAP_XDP_BLOCK_FP_SHAPES,
        MAP_XDP_HELLO_PROG, MAP_XDP_MALFORMED,
    },
    packet::{ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, TCP_FLAG_ACK, TCP_FLAG_SYN},
    packet_fixtures::{FIXTURE_LISTENER_PORTS, LISTENER, frame, ipv4, ipv6},
    verdict::Verdict,
    xdp_config::XdpConfig,
};

use super::run::{XDP_DROP, XDP_PASS, load, run, skip_reason, write_config};

/// TCP payload bytes in one segment: an Ethernet MTU of 1500 minus 40 bytes of IPv6 and 20 of TCP, so every
/// family and tag fits the same cut.
pub(super) const MSS: usize = 1440;
/// TCP PSH | ACK, the flags of a data segment.
const DATA: u8 = TCP_FLAG_ACK | 0x08;
/// The clients' initial sequence number: near the wrap, so ISN + 1 arithmetic is exercised.
const ISN: u32 = u32::MAX - 100;

/// One client connection to the listener, as frames.
#[derive(Clone, Copy)]
pub(super) struct Conn {
    /// Last byte of the client address (10.0.0.x, or 2001:db8::x for IPv6).
    host: u8,
    src_port: u16,
    v6: bool,
    vlan: bool,
}

impl Conn {
    pub(super) fn v4(host: u8, src_port: u16) -> Conn {
        Conn {
            host,
            src_port,
            v6: false,
            vlan: false,
        }
    }

    /// A segment of this connection with `flags` carrying `payload` at `offset` bytes into the client's byte
    /// stream (the SYN at -1), IP lengths filled in.
    fn segment(&self, flags: u8, offset: u32, payload: &[u8]) -> Vec<u8> {
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&LISTENER.to_be_bytes());
        tcp[4..8].copy_from_slice(&ISN.wrapping_add(1).wrapping_add(offset).to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        tcp.extend_from_slice(payload);
        let tcp_len = u16::try_from(tcp.len()).expect("one segment");
        let (ether_type, l3) = if self.v6 {
            let mut ip = ipv6(IPPROTO_TCP);
            ip[4..6].copy_from_slice(&tcp_len.to_be_bytes());
            ip[8..24].copy_from_slice(&[
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, self.host,
            ]);
            ip[24..40]
                .copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            (ETH_P_IPV6, ip)
        } else {
            let mut ip = ipv4(IPPROTO_TCP, 5, 0);
            ip[2..4].copy_from_slice(&(tcp_len + 20).to_be_bytes());
            ip[12..16].copy_from_slice(&[10, 0, 0, self.host]);
            (ETH_P_IP, ip)
        };
        let tags: &[u16] = if self.vlan { &[ETH_P_8021Q] } else { &[] };
        frame(tags, ether_type, &l3, &tcp)
    }

    pub(super) fn syn(&self) -> Vec<u8> {
        self.segment(TCP_FLAG_SYN, u32::MAX, &[])
    }

    /// The first segment of `stream`: at most [`MSS`] bytes of it.
    pub(super) fn first_segment(&self, stream: &[u8]) -> Vec<u8> {
        self.segment(DATA, 0, stream.get(..MSS).unwrap_or(stream))
    }
}

pub(super) fn config() -> XdpConfig {
    XdpConfig::new(&FIXTURE_LISTENER_PORTS).expect("fixture ports fit")
}

pub(super) fn malformed_counters(ebpf: &Ebpf) -> Vec<u64> {
    let map: PerCpuArray<&MapData, u64> = ebpf
        .map(MAP_XDP_MALFORMED)
        .expect("malformed map")
        .try_into()
        .expect("malformed map type");
    Malformed::ALL
        .iter()
        .map(|r| map.get(&(*r as u32), 0).expect("read").iter().sum())
        .collect()
}

/// Runs the SYN and then `payload`'s first segment on `conn`; returns the verdict of the segment.
pub(super) fn hello(
    ebpf: &mut Ebpf,
    counters: &PerCpuArray<MapData, u64>,
    conn: Conn,
    payload: &[u8],
) -> (u32, Verdict) {
    assert_eq!(
        run(ebpf, counters, &conn.syn()),
        (XDP_PASS, Verdict::PassListenerTcp),
        "the SYN passes"
    );
    run(ebpf, counters, &conn.first_segment(payload))
}

/// The captured curl ClientHello (with SNI), the fixture several tests vary.
pub(super) fn curl_hello() -> &'static [u8] {
    CAPTURED
        .iter()
        .find(|c| c.0 == "curl_sni")
        .expect("curl fixture")
        .1
}

#[test]
fn captured_client_hellos_pass_and_only_the_first_segment_is_parsed() {
    if skip_reason("captured_client_hellos_pass_and_only_the_first_segment_is_parsed").is_some() {
        return;
    }
    let (mut ebpf, counters) = load(config());
    let mut cut = 0;
    for (i, (name, bytes, _)) in CAPTURED.iter().enumerate() {
        let conn = Conn::v4(7, 40000 + i as u16);
        cut += usize::from(bytes.len() > MSS);
        assert_eq!(
            hello(&mut ebpf, &counters, conn, bytes),
            (XDP_PASS, Verdict::PassClientHello),
            "{name}"
        );
        // The rest of the connection is not parsed, whatever it carries.
        let next = u32::try_from(bytes.len().min(MSS)).expect("one segment");
        assert_eq!(
            run(
                &mut ebpf,
                &counters,
                &conn.segment(DATA, next, b"GET / HTTP/1.1\r\n")
            ),
            (XDP_PASS, Verdict::PassListenerTcp),
            "{name}: second segment"
        );
        // A retransmission of the first segment is judged again.
        assert_eq!(
            run(&mut ebpf, &counters, &conn.first_segment(bytes)),
            (XDP_PASS, Verdict::PassClientHello),
            "{name}: retransmitted first segment"
        );
    }
    assert!(cut >= 1, "the post-quantum ClientHello spans two segments");
    assert!(
        malformed_counters(&ebpf).iter().all(|n| *n == 0),
        "nothing counted as malformed"
    );
}

#[test]
fn each_malformed_reason_drops_and_counts_under_its_reason() {
    if skip_reason("each_malformed_reason_drops_and_counts_under_its_reason").is_some() {
        return;
    }
    let (mut ebpf, counters) = load(config());
    for (i, (reason, bytes)) in malformed_cases().into_iter().enumerate() {
        let conn = Conn::v4(8, 41000 + i as u16);
        let before = malformed_counters(&ebpf);
        assert_eq!(
            hello(&mut ebpf, &counters, conn, &bytes),
            (XDP_DROP, Verdict::DropMalformedHello),
            "{reason:?}"
        );
        // The client's retransmission of the same bytes is judged (and dropped) again.
        assert_eq!(
            run(&mut ebpf, &counters, &conn.first_segment(&bytes)),
            (XDP_DROP, Verdict::DropMalformedHello),
            "{reason:?} retransmitted"
        );
        let after = malformed_counters(&ebpf);
        for (j, other) in Malformed::ALL.iter().enumerate() {
            let expected = if other == &reason { 2 } else { 0 };
            assert_eq!(
                after[j] - before[j],
                expected,
                "{reason:?}: counter {other:?}"
            );
        }
    }
}

#[test]
fn without_the_client_hello_program_first_segments_pass_unjudged() {
    if skip_reason("without_the_client_hello_program_first_segments_pass_unjudged").is_some() {
        return;
    }
    let (mut ebpf, counters) = load(config());
    let (reason, bytes) = malformed_cases()
        .into_iter()
        .next()
        .expect("a malformed case");
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(9, 42000), &bytes),
        (XDP_DROP, Verdict::DropMalformedHello),
        "{reason:?} with the ClientHello program installed"
    );
    // Emptied, as when no daemon filled it: the tail call fails and the XDP program passes the segment.
    ProgramArray::try_from(ebpf.map_mut(MAP_XDP_HELLO_PROG).expect("program array"))
        .expect("program array type")
        .clear_index(&0)
        .expect("empty the program array");
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(9, 42001), &bytes),
        (XDP_PASS, Verdict::PassListenerTcp),
        "{reason:?} without it"
    );
}

#[test]
fn untracked_and_cut_short_segments_pass() {
    if skip_reason("untracked_and_cut_short_segments_pass").is_some() {
        return;
    }
    let (mut ebpf, counters) = load(config());
    // No SYN seen (a connection older than the program, or evicted): not parsed, even if it is not TLS.
    let old = Conn::v4(9, 42000);
    assert_eq!(
        run(
            &mut ebpf,
            &counters,
            &old.segment(DATA, 0, b"GET / HTTP/1.1\r\n")
        ),
        (XDP_PASS, Verdict::PassListenerTcp)
    );
    // The second segment of a split ClientHello arriving first (reordering) is not the start of one: passed
    // unparsed, and the first segment, when it comes, is judged as usual.
    let (_, pq, _) = CAPTURED
        .iter()
        .find(|c| c.0 == "rustls_x25519mlkem768")
        .expect("post-quantum fixture");
    let split = Conn::v4(9, 42001);
    assert_eq!(
        run(&mut ebpf, &counters, &split.syn()).1,
        Verdict::PassListenerTcp
    );
    let tail = pq.get(MSS..).expect("two segments");
    assert_eq!(
        run(&mut ebpf, &counters, &split.segment(DATA, MSS as u32, tail)),
        (XDP_PASS, Verdict::PassListenerTcp),
        "reordered second segment"
    );
    assert_eq!(
        run(&mut ebpf, &counters, &split.first_segment(pq)),
        (XDP_PASS, Verdict::PassClientHello)
    );
    // A first segment shorter than a minimum Ethernet frame arrives padded with zeros: the padding is not
    // ClientHello bytes (read as a record length of 0 it would look malformed). Judged on the 3 bytes sent.
    let padded = Conn::v4(9, 42002);
    assert_eq!(
        run(&mut ebpf, &counters, &padded.syn()).1,
        Verdict::PassListenerTcp
    );
    let mut short = padded.first_segment(&[0x16, 0x03, 0x01]);
    assert!(short.len() < 60, "a frame short enough to be padded");
    short.resize(60, 0);
    assert_eq!(
        run(&mut ebpf, &counters, &short),
        (XDP_PASS, Verdict::PassClientHello),
        "a record header cut short, padded"
    );
    let junk = Conn::v4(9, 42003);
    run(&mut ebpf, &counters, &junk.syn());
    let mut short = junk.first_segment(b"G");
    short.resize(60, 0);
    assert_eq!(
        run(&mut ebpf, &counters, &short),
        (XDP_DROP, Verdict::DropMalformedHello),
        "one byte of plaintext, padded"
    );
    // A ClientHello cut anywhere is judged on what arrived: never dropped for truncation.
    let curl = curl_hello();
    for (i, len) in [1, 5, 9, 43, 60, 120, curl.len() - 1]
        .into_iter()
        .enumerate()
    {
        let conn = Conn::v4(9, 42100 + i as u16);
        assert_eq!(
            hello(&mut ebpf, &counters, conn, &curl[..len]),
            (XDP_PASS, Verdict::PassClientHello),
            "first {len} bytes"
        );
    }
}

#[test]
fn ipv6_and_vlan_frames_are_judged_too() {
    if skip_reason("ipv6_and_vlan_frames_are_judged_too").is_some() {
        return;
    }
    let (mut ebpf, counters) = load(config());
    let curl = curl_hello();
    let (reason, bad) = malformed_cases().swap_remove(0);
    for (i, (v6, vlan)) in [(true, false), (false, true), (true, true)]
        .into_iter()
        .enumerate()
    {
        let conn = |n: u16| Conn {
            host: 20,
            src_port: 43000 + 10 * i as u16 + n,
            v6,
            vlan,
        };
        assert_eq!(
            hello(&mut ebpf, &counters, conn(0), curl),
            (XDP_PASS, Verdict::PassClientHello),
            "curl, v6 {v6}, vlan {vlan}"
        );
        assert_eq!(
            hello(&mut ebpf, &counters, conn(1), &bad),
            (XDP_DROP, Verdict::DropMalformedHello),
            "{reason:?}, v6 {v6}, vlan {vlan}"
        );
    }
}

#[test]
fn blocked_fingerprints_drop_until_removed() {
    if skip_reason("blocked_fingerprints_drop_until_removed").is_some() {
        return;
    }
    let (mut ebpf, counters) = load(config());
    let curl = curl_hello();
    let fingerprint = parse(curl)
        .expect("curl parses")
        .fingerprint
        .expect("complete");
    let (_, other, _) = CAPTURED
        .iter()
        .find(|c| c.0 == "rustls_x25519")
        .expect("rustls fixture");
    for (n, value) in [fingerprint.unordered, fingerprint.ordered]
        .into_iter()
        .enumerate()
    {
        let port = |k: u16| 44000 + 10 * n as u16 + k;
        blocklist(&mut ebpf).insert(value, 1, 0).expect("block");
        // Not indexed yet: the program computes no fingerprint while the count is 0, and compares only with the
        // fingerprints filed under the ClientHello's shape, so nothing blocks until both are stored.
        let unindexed: [(u32, &[u64]); 2] = [(0, &[value]), (1, &[])];
        for (k, (count, filed)) in (3..).zip(unindexed) {
            set_index(&mut ebpf, count, filed, false);
            assert_eq!(
                hello(&mut ebpf, &counters, Conn::v4(30, port(k)), curl),
                (XDP_PASS, Verdict::PassClientHello),
                "blocked, count {count}, filed {filed:x?}"
            );
        }
        set_index(&mut ebpf, 1, &[value], false);
        let before = drops_of_way_0(&ebpf, value);
        assert_eq!(
            hello(&mut ebpf, &counters, Conn::v4(30, port(0)), curl),
            (XDP_DROP, Verdict::DropBlockedFingerprint),
            "fingerprint {value:016x}"
        );
        assert_eq!(
            drops_of_way_0(&ebpf, value),
            before + 1,
            "the drop counted for the fingerprint's way"
        );
        assert_eq!(
            hello(&mut ebpf, &counters, Conn::v4(30, port(1)), other),
            (XDP_PASS, Verdict::PassClientHello),
            "another client's fingerprint (another shape)"
        );
        // Another fingerprint of curl's shape filed, not curl's: curl is hashed, compared, and passes.
        set_index(&mut ebpf, 1, &[value ^ 1], false);
        assert_eq!(
            hello(&mut ebpf, &counters, Conn::v4(30, port(2)), curl),
            (XDP_PASS, Verdict::PassClientHello),
            "a blocked fingerprint of curl's shape, not curl's"
        );
        // A shape with more blocked fingerprints than its set holds sends the program to the blocklist.
        set_index(&mut ebpf, 9, &[value ^ 1], true);
        assert_eq!(
            hello(&mut ebpf, &counters, Conn::v4(30, port(5)), curl),
            (XDP_DROP, Verdict::DropBlockedFingerprint),
            "an overflowed shape, fingerprint {value:016x} in the blocklist"
        );
        blocklist(&mut ebpf).remove(&value).expect("unblock");
        assert_eq!(
            hello(&mut ebpf, &counters, Conn::v4(30, port(6)), curl),
            (XDP_PASS, Verdict::PassClientHello),
            "an overflowed shape, fingerprint {value:016x} not in the blocklist"
        );
        set_index(&mut ebpf, 0, &[], false);
        assert_eq!(
            hello(&mut ebpf, &counters, Conn::v4(30, port(7)), curl),
            (XDP_PASS, Verdict::PassClientHello),
            "unblocked"
        );
    }
}

/// The drops counted for way 0 of the set of `fingerprint`'s shape (where [`set_index`] files the first), summed
/// over CPUs.
fn drops_of_way_0(ebpf: &Ebpf, fingerprint: u64) -> u64 {
    let drops: PerCpuArray<&MapData, u64> = ebpf
        .map(MAP_XDP_BLOCK_FP_DROPS)
        .expect("fingerprint drop map")
        .try_into()
        .expect("fingerprint drop map type");
    let shape = shape_index(fingerprint).expect("format 2");
    drops
        .get(&hit_slot(shape, 0), 0)
        .expect("read")
        .iter()
        .sum()
}

/// The fingerprint blocklist of the loaded program.
pub(super) fn blocklist(ebpf: &mut Ebpf) -> HashMap<&mut MapData, u64, u8> {
    ebpf.map_mut(MAP_XDP_BLOCK_FP)
        .expect("fingerprint map")
        .try_into()
        .expect("fingerprint map type")
}

/// Stores the count of blocked fingerprints and files `filed` under their shapes, as `portcullis xdp
/// block-fingerprint` does after a change; with `overflow`, the shape of the first is marked as holding more than
/// its set has room for.
pub(super) fn set_index(ebpf: &mut Ebpf, blocked: u32, filed: &[u64], overflow: bool) {
    let mut count: Array<_, u32> = ebpf
        .map_mut(MAP_XDP_BLOCK_FP_COUNT)
        .expect("fingerprint count map")
        .try_into()
        .expect("fingerprint count map type");
    count.set(0, blocked, 0).expect("count");
    let mut shapes: Array<_, ShapeSet> = ebpf
        .map_mut(MAP_XDP_BLOCK_FP_SHAPES)
        .expect("fingerprint shape map")
        .try_into()
        .expect("fingerprint shape map type");
    for shape in 0..SHAPES as u32 {
        shapes.set(shape, ShapeSet::EMPTY, 0).expect("shape");
    }
    for (n, value) in filed.iter().enumerate() {
        let shape = shape_index(*value).expect("format 2");
        let mut set = shapes.get(&shape, 0).expect("shape");
        set.insert(*value);
        if overflow && n == 0 {
            set.len = ShapeSet::OVERFLOW;
        }
        shapes.set(shape, set, 0).expect("shape");
    }
}

#[test]
fn resumption_offers_cost_less_of_the_client_hello_budget() {
    if skip_reason("resumption_offers_cost_less_of_the_client_hello_budget").is_some() {
        return;
    }
    let mut config = config();
    // 1 ClientHello/s, a burst of 2 full handshakes, a resumption a quarter of one: the test runs in
    // milliseconds, so refill does not matter.
    config.hello_rate = 1;
    config.hello_burst = 2;
    config.hello_resume_cost_milli = 250;
    let (mut ebpf, counters) = load(config);
    let full = CAPTURED
        .iter()
        .find(|c| c.0 == "openssl_tls13")
        .expect("fixture")
        .1;
    let resume = CAPTURED
        .iter()
        .find(|c| c.0 == "rustls_tls13_psk")
        .expect("fixture")
        .1;
    let take = |ebpf: &mut Ebpf, host: u8, port: u16, bytes: &[u8]| {
        hello(ebpf, &counters, Conn::v4(host, port), bytes).1
    };
    assert_eq!(take(&mut ebpf, 40, 45000, full), Verdict::PassClientHello);
    assert_eq!(take(&mut ebpf, 40, 45001, full), Verdict::PassClientHello);
    assert_eq!(take(&mut ebpf, 40, 45002, full), Verdict::DropHelloRate);
    // Another source has its own budget: eight resumptions fit in two full handshakes' worth.
    for port in 45100..45108 {
        assert_eq!(
            take(&mut ebpf, 41, port, resume),
            Verdict::PassClientHello,
            "port {port}"
        );
    }
    assert_eq!(take(&mut ebpf, 41, 45108, resume), Verdict::DropHelloRate);
    // A source without budget for even a resumption is dropped before the parse: its malformed ClientHello is
    // counted as over budget, not as malformed.
    let (_, bad) = malformed_cases()
        .into_iter()
        .find(|c| c.0 == Malformed::BadKeyShare)
        .expect("a bad key_share case");
    let before = malformed_counters(&ebpf);
    assert_eq!(take(&mut ebpf, 41, 45109, &bad), Verdict::DropHelloRate);
    assert_eq!(malformed_counters(&ebpf), before, "not parsed");

    // Dry run: counted, not dropped.
    config.enforce = 0;
    write_config(&mut ebpf, config);
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(40, 45003), full),
        (XDP_PASS, Verdict::DropHelloRate)
    );
}

#[test]
fn the_program_stays_far_from_the_verifier_budget() {
    if skip_reason("the_program_stays_far_from_the_verifier_budget").is_some() {
        return;
    }
    let (mut ebpf, _counters) = load(config());
    for name in [
        portcullis_abi::names::PROG_XDP,
        portcullis_abi::names::PROG_XDP_HELLO,
    ] {
        let program: &mut aya::programs::Xdp = ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("XDP program");
        let verified = program
            .info()
            .expect("program info")
            .verified_instruction_count()
            .expect("kernel reports verified instructions (5.16+)");
        eprintln!("{name}: verifier processed {verified} instructions (limit 1000000)");
        // The parse with its steps' state carried in registers from one step to the next went past 1,000,000;
        // with a compiler barrier before each step (which then reloads its state from the map value, and so
        // starts from what the verifier knows of one, whatever way the step before it ended) it was 313,000 to
        // 380,000 as the code generation moved, ≈ 216,000 once the parse became a program of its own, ≈ 236,000 with
        // the steps over the records after the first. A regression that multiplies states at least doubles it
        // (a walk of those records in one step, its statuses not passed through the scratch: 444,000), so half
        // the limit catches it long before the load fails.
        assert!(
            verified < 500_000,
            "{name}: {verified} verified instructions: a parse step has started to multiply verifier states"
        );
    }
}

#[test]
fn client_hellos_spanning_records_pass_and_contradicting_records_drop() {
    if skip_reason("client_hellos_spanning_records_pass_and_contradicting_records_drop").is_some() {
        return;
    }
    let (mut ebpf, counters) = load(config());
    for (i, case) in split_cases().into_iter().enumerate() {
        let conn = Conn::v4(10, 46000 + i as u16);
        let before = malformed_counters(&ebpf);
        let want = match case.malformed {
            None => (XDP_PASS, Verdict::PassClientHello),
            Some(_) => (XDP_DROP, Verdict::DropMalformedHello),
        };
        assert_eq!(
            hello(&mut ebpf, &counters, conn, &case.bytes),
            want,
            "{}",
            case.description
        );
        // The client's retransmission gets the same verdict (a dropped one is not let through, a passed one not
        // dropped), and so do the next segments (not parsed).
        assert_eq!(
            run(&mut ebpf, &counters, &conn.first_segment(&case.bytes)),
            want,
            "{}: retransmitted",
            case.description
        );
        if let Some(rest) = case.bytes.get(MSS..) {
            let next = u32::try_from(MSS).expect("one segment");
            let rest = rest.get(..MSS).unwrap_or(rest);
            assert_eq!(
                run(&mut ebpf, &counters, &conn.segment(DATA, next, rest)),
                (XDP_PASS, Verdict::PassListenerTcp),
                "{}: second segment",
                case.description
            );
        }
        let after = malformed_counters(&ebpf);
        for (j, other) in Malformed::ALL.iter().enumerate() {
            let expected = if case.malformed == Some(*other) { 2 } else { 0 };
            assert_eq!(
                after[j] - before[j],
                expected,
                "{}: counter {other:?}",
                case.description
            );
        }
    }
}

#[test]
fn a_client_hello_spanning_records_is_charged_to_the_budget_and_not_fingerprinted() {
    if skip_reason("a_client_hello_spanning_records_is_charged_to_the_budget_and_not_fingerprinted")
        .is_some()
    {
        return;
    }
    let mut config = config();
    // Two full ClientHellos per source; the test runs in milliseconds, so refill does not matter.
    config.hello_rate = 1;
    config.hello_burst = 2;
    let (mut ebpf, counters) = load(config);
    // curl's fingerprint blocked: whole, curl's ClientHello is dropped for it...
    let curl = curl_hello();
    let blocked = parse(curl)
        .expect("curl parses")
        .fingerprint
        .expect("complete")
        .unordered;
    blocklist(&mut ebpf).insert(blocked, 1, 0).expect("block");
    set_index(&mut ebpf, 1, &[blocked], false);
    assert_eq!(
        hello(&mut ebpf, &counters, Conn::v4(50, 47000), curl).1,
        Verdict::DropBlockedFingerprint
    );
    // ...split into records it is judged on what it shows, as when cut into TCP segments, and passes without a
    // fingerprint (see `client_hello`'s module docs), paid for from the source's budget like any other.
    let split = in_records(handshake_of(curl), &[100]);
    let take = |ebpf: &mut Ebpf, port: u16| hello(ebpf, &counters, Conn::v4(51, port), &split).1;
    assert_eq!(take(&mut ebpf, 47100), Verdict::PassClientHello);
    assert_eq!(take(&mut ebpf, 47101), Verdict::PassClientHello);
    assert_eq!(
        take(&mut ebpf, 47102),
        Verdict::DropHelloRate,
        "the third is over budget"
    );
}
