//! The XDP classifier end to end: the real daemon in a server namespace with XDP on its veth, real TCP and TLS
//! from a client namespace, and the counters read two ways (`/metrics` and `bpftool` on the pinned map) that must
//! agree: the verdict counters, and the malformed-ClientHello counters per reason after crafted first segments
//! of every reason (sent through a raw socket) were dropped. Then SIGTERM must detach the program and remove the
//! pins.

use std::{
    collections::{BTreeMap, HashMap},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use portcullis_abi::{
    client_hello::Malformed,
    hello_fixtures::malformed_cases,
    names::{MAP_XDP_CONFIG, MAP_XDP_MALFORMED, MAP_XDP_VERDICTS, PROG_XDP},
    verdict::Verdict,
};
use portcullis_tests::{
    bpftool::{bpftool, parse_per_cpu_sums, per_cpu_sums},
    daemon::{Daemon, metric_value},
    privileged::require_root,
    raw::{PSH_ACK, RawSender, SYN, tcp_packet},
    testbed::XdpTestbed,
};

/// TLS handshakes the client makes to the listener.
const HANDSHAKES: u64 = 3;
/// Packets of one handshake that certainly reached the server before `openssl s_client` succeeded: the SYN and
/// the ClientHello, both answered by the server (the rest of the exchange is not counted on, to stay exact).
const PACKETS_PER_HANDSHAKE: u64 = 2;
/// Connection attempts to a port nobody listens on; each SYN is answered by a RST, so it reached the server.
const REFUSED_CONNECTS: u64 = 2;
/// Source port of the first crafted malformed flow; the next case takes the next port.
const MALFORMED_FIRST_PORT: u16 = 41_000;

#[test]
fn xdp_counts_traffic() {
    if !require_root("xdp_counts_traffic") {
        return;
    }
    let bed = XdpTestbed::builder("xdp")
        .xdp("mode = \"auto\"")
        .extra_client_addrs(1)
        .build()
        .expect("XDP testbed");
    let (veth, server, pin_dir) = (&bed.veth, &bed.server, &bed.pin_dir);
    let daemon = bed.start_daemon();
    let listener = daemon.addr();
    assert_eq!(
        listener.ip(),
        veth.b.addr,
        "listener bound on the server's veth address"
    );

    // Attached, and visible to the usual tools while it runs.
    let link = server
        .ip(&["link", "show", &veth.b.name])
        .expect("ip link show");
    eprintln!("server side of the veth while the daemon runs:\n{link}");
    assert!(
        link.contains("prog/xdp") && link.contains(PROG_XDP),
        "XDP not attached to {}:\n{link}",
        veth.b.name
    );
    let config_dump = bpftool(
        &["map", "dump", "pinned"],
        &pin_dir.path().join(MAP_XDP_CONFIG),
    );
    assert!(
        config_dump.contains(&listener.port().to_string()),
        "the resolved listener port is not in the config map: {config_dump}"
    );

    for _ in 0..HANDSHAKES {
        assert!(bed.s_client(listener, 30), "handshake across the veth");
    }
    let closed_port = if listener.port() == u16::MAX {
        1
    } else {
        listener.port() + 1
    };
    for _ in 0..REFUSED_CONNECTS {
        let target = SocketAddr::from((veth.b.addr, closed_port));
        let refused = bed
            .client
            .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))
            .expect("enter client namespace");
        let error = refused.expect_err("nothing listens on the closed port");
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{error}"
        );
    }

    let malformed_sent = send_malformed_first_segments(&bed, listener);

    // Counters only grow, and stray packets (IPv6 neighbour discovery) may arrive at any time: bracket the
    // /metrics read between two bpftool reads instead of expecting equality.
    let map_path = pin_dir.path().join(MAP_XDP_VERDICTS);
    let before = verdict_counts(&bpftool(&["-j", "map", "dump", "pinned"], &map_path));
    let metrics = daemon.metrics_text().expect("GET /metrics");
    let after = verdict_counts(&bpftool(&["-j", "map", "dump", "pinned"], &map_path));
    for verdict in Verdict::ALL {
        let exported = metric_value(
            &metrics,
            "portcullis_xdp_packets_total",
            &[("verdict", verdict.name())],
        );
        let (low, high) = (before[&verdict], after[&verdict]);
        assert!(
            (low as f64) <= exported && exported <= high as f64,
            "{}: /metrics says {exported}, bpftool says {low}..={high}\n{metrics}",
            verdict.name()
        );
    }
    eprintln!("XDP counters after the traffic (bpftool): {after:?}");
    let listener_packets = after[&Verdict::PassListenerTcp];
    assert!(
        listener_packets >= HANDSHAKES * PACKETS_PER_HANDSHAKE,
        "only {listener_packets} packets to the listener counted after {HANDSHAKES} handshakes"
    );
    assert!(
        after[&Verdict::PassOtherPort] >= REFUSED_CONNECTS,
        "only {} packets to other ports counted after {REFUSED_CONNECTS} refused connects",
        after[&Verdict::PassOtherPort]
    );

    malformed_counters_agree(
        &daemon,
        &pin_dir.path().join(MAP_XDP_MALFORMED),
        &malformed_sent,
    );
    let verdicts = verdict_counts(&bpftool(&["-j", "map", "dump", "pinned"], &map_path));
    assert_eq!(
        verdicts[&Verdict::DropMalformedHello],
        malformed_sent.values().sum::<u64>(),
        "drop_malformed_hello verdicts vs crafted malformed segments"
    );

    // The BPF program's aya-log debug line reached the daemon's log through tracing (the daemon logs at debug
    // unless PORTCULLIS_LOG says otherwise; then the BPF side does not even emit it).
    let debug_logging = std::env::var("PORTCULLIS_LOG").map_or(true, |filter| {
        filter.contains("debug") || filter.contains("trace")
    });
    if debug_logging {
        let expected_line = format!("SYN to listener port {}", listener.port());
        wait_for(Duration::from_secs(10), || {
            daemon.stderr().contains(&expected_line)
        })
        .unwrap_or_else(|| {
            panic!(
                "no `{expected_line}` in the daemon log:\n{}",
                daemon.stderr()
            )
        });
    }

    daemon.stop_ok();
    let link = server
        .ip(&["link", "show", &veth.b.name])
        .expect("ip link show");
    assert!(
        !link.contains("xdp"),
        "XDP still attached after SIGTERM:\n{link}"
    );
    for name in [MAP_XDP_VERDICTS, MAP_XDP_CONFIG] {
        let pin = pin_dir.path().join(name);
        assert!(!pin.exists(), "{} left behind after SIGTERM", pin.display());
    }
}

/// From the client's second address, through a raw socket: for every crafted malformed ClientHello a SYN (which
/// records the flow) and a first segment (ISN + 1) carrying it, which XDP must drop and count under its reason.
/// Returns how many were sent per reason.
fn send_malformed_first_segments(
    bed: &XdpTestbed,
    listener: SocketAddr,
) -> HashMap<Malformed, u64> {
    let SocketAddr::V4(dst) = listener else {
        panic!("listener {listener} is not IPv4")
    };
    let src = bed.extra_client_addrs[0];
    let sender = RawSender::open(&bed.client).expect("raw socket in the client namespace");
    let mut sent = HashMap::new();
    for (port, (reason, hello)) in (MALFORMED_FIRST_PORT..).zip(malformed_cases()) {
        let isn = u32::from(port) << 12;
        for packet in [
            tcp_packet(src, port, dst, isn, SYN, &[]),
            tcp_packet(src, port, dst, isn.wrapping_add(1), PSH_ACK, &hello),
        ] {
            sender
                .send(&packet)
                .unwrap_or_else(|e| panic!("send a crafted {} flow: {e}", reason.name()));
        }
        *sent.entry(reason).or_insert(0) += 1;
    }
    assert!(sent.len() >= 5, "too few malformed reasons sent: {sent:?}");
    sent
}

/// `portcullis_xdp_malformed_total{reason}` on /metrics equals the per-CPU sum `bpftool` reads from the pinned
/// map for every reason, and each reason counts exactly the crafted segments sent with it (nothing else on the
/// veth is malformed, so the counters stand still once those arrived).
fn malformed_counters_agree(
    daemon: &Daemon,
    map: &std::path::Path,
    sent: &HashMap<Malformed, u64>,
) {
    let expected: BTreeMap<u32, u64> = Malformed::ALL
        .iter()
        .map(|r| (*r as u32, sent.get(r).copied().unwrap_or(0)))
        .collect();
    // The frames cross the veth asynchronously: wait (bounded) until all were counted.
    let arrived = wait_for(Duration::from_secs(10), || per_cpu_sums(map) == expected);
    let counted = per_cpu_sums(map);
    assert!(
        arrived.is_some(),
        "bpftool's xdp_malformed sums {counted:?}, expected the crafted segments {expected:?}"
    );
    let metrics = daemon.metrics_text().expect("GET /metrics");
    let after = per_cpu_sums(map);
    assert_eq!(
        counted, after,
        "xdp_malformed moved while /metrics was read"
    );
    for reason in Malformed::ALL {
        let exported = metric_value(
            &metrics,
            "portcullis_xdp_malformed_total",
            &[("reason", reason.name())],
        );
        let dumped = counted[&(reason as u32)];
        assert_eq!(
            exported,
            dumped as f64,
            "{}: /metrics says {exported}, bpftool says {dumped}\n{metrics}",
            reason.name()
        );
    }
    eprintln!("xdp_malformed after the crafted segments (bpftool): {counted:?}");
}

/// The verdict map's `bpftool -j map dump`, summed over CPUs, by verdict; one entry per verdict.
fn verdict_counts(json: &str) -> HashMap<Verdict, u64> {
    let counts: HashMap<Verdict, u64> = parse_per_cpu_sums(json)
        .into_iter()
        .map(|(key, total)| {
            let verdict =
                Verdict::from_u32(key).unwrap_or_else(|| panic!("map key {key} is no verdict"));
            (verdict, total)
        })
        .collect();
    assert_eq!(
        counts.len(),
        Verdict::COUNT,
        "not one entry per verdict in:\n{json}"
    );
    counts
}

/// Polls `done` until it holds or `timeout` passes; `None` on timeout.
fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done().then_some(())
}

#[test]
fn verdict_counts_reads_bpftool_json() {
    let mut json = String::from(
        r#"[{"key":["0x00","0x00","0x00","0x00"],"values":[{"cpu":0,"value":["0x01"]}],
        "formatted":{"key":0,"values":[{"cpu":0,"value":1},{"cpu":1,"value":2}]}},
        {"formatted":{"key":1,"values":[{"cpu":0,"value":0},{"cpu":1,"value":0}]}},
        {"formatted":{"key":2,"values":[{"cpu":0,"value":0}]}},
        {"formatted":{"key":3,"values":[{"cpu":0,"value":0}]}},
        {"formatted":{"key":4,"values":[{"cpu":0,"value":10}]}},
        {"formatted":{"key":5,"values":[{"cpu":0,"value":7},{"cpu":1,"value":5}]}},
        {"formatted":{"key":6,"values":[{"cpu":0,"value":0}]}},
        {"formatted":{"key":7,"values":[{"cpu":0,"value":4},{"cpu":1,"value":1}]}}"#,
    );
    // Verdicts appended later read as zero.
    for key in 8..Verdict::COUNT {
        json.push_str(&format!(
            r#",{{"formatted":{{"key":{key},"values":[{{"cpu":0,"value":0}}]}}}}"#
        ));
    }
    json.push(']');
    let counts = verdict_counts(&json);
    assert_eq!(counts[&Verdict::PassNotIp], 3);
    assert_eq!(counts[&Verdict::PassOtherPort], 10);
    assert_eq!(counts[&Verdict::PassListenerTcp], 12);
    assert_eq!(counts[&Verdict::DropSynRate], 5);
}
