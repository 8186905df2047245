//! The XDP guard's per-source SYN budget under a flood, end to end: from one address of the client namespace a
//! raw socket sends a bounded SYN flood at the daemon's listener while `openssl s_client` from another address
//! keeps completing handshakes. The flood source's excess must be dropped in XDP (counted on `/metrics` as
//! `drop_syn_rate`, close to what the token bucket arithmetic predicts) and every legitimate handshake must
//! succeed. A spoofed flood (a new source per SYN) past the per-CPU budget of unknown sources' SYNs is dropped
//! (`drop_syn_flood`) while a client known by its earlier handshake keeps handshaking; and a source that sent a
//! malformed ClientHello cannot connect again during its penalty (`drop_syn_penalty`) while others can.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::{Duration, Instant},
};

use portcullis_tests::{
    daemon::Daemon,
    privileged::require_root,
    raw::{RawSender, SYN, tcp_packet},
    testbed::XdpTestbed,
};

/// SYNs per second each source may send (`xdp.syn_rate`).
const SYN_RATE: u32 = 100;
/// SYNs a fresh source may send at once (`xdp.syn_burst`).
const SYN_BURST: u32 = 100;
/// SYNs the flood sends at least (it goes on until the legitimate client is done).
const FLOOD_PACKETS: u32 = 20_000;
/// The flood's pace, far above the budget yet gentle on a shared CI host.
const FLOOD_PER_SEC: u32 = 4_000;
/// The flood stops after this long whatever happened, which also bounds its packet count
/// (`FLOOD_PER_SEC × 30 s`).
const FLOOD_TIME_LIMIT: Duration = Duration::from_secs(30);
/// Handshakes the legitimate client makes while the flood runs; every one must succeed.
const HANDSHAKES: u32 = 20;
/// Packets the flood sends before the legitimate client starts, so its handshakes meet an exhausted budget.
const HEAD_START: u32 = 2 * SYN_BURST;
/// Share of the predicted drops that may go missing: SYNs lost between the raw socket and XDP on a busy host.
const DROP_SHORTFALL: f64 = 0.05;

#[test]
fn syn_flood_is_limited_while_another_address_handshakes() {
    if !require_root("syn_flood_is_limited_while_another_address_handshakes") {
        return;
    }
    let bed = XdpTestbed::builder("flood")
        .xdp(&format!("syn_rate = {SYN_RATE}"))
        .xdp(&format!("syn_burst = {SYN_BURST}"))
        .extra_client_addrs(1)
        .build()
        .expect("XDP testbed");
    let daemon = bed.start_daemon();
    let listener = match daemon.addr() {
        std::net::SocketAddr::V4(v4) => v4,
        other => panic!("listener {other} is not IPv4"),
    };
    let flood_src = bed.extra_client_addrs[0];
    assert_ne!(flood_src, bed.veth.a.addr);
    let sender = RawSender::open(&bed.client).expect("raw socket in the client namespace");
    let drops = || xdp_verdicts(&daemon, "drop_syn_rate");
    assert_eq!(drops(), 0.0, "SYN drops before any flood");

    let (flood, handshakes) = handshakes_during_a_flood(&bed, &daemon, |sent, done| {
        flood_syns(&sender, flood_src.into(), listener, sent, done)
    });
    let ok = handshakes.iter().filter(|ok| **ok).count();
    assert_eq!(
        ok,
        handshakes.len(),
        "legitimate handshakes from {} during the flood from {flood_src}: only {ok} of {} succeeded",
        bed.veth.a.addr,
        handshakes.len()
    );

    // The bucket starts full (SYN_BURST) and refills at SYN_RATE while the flood lasts; every SYN beyond that
    // is dropped. CPUs racing on one bucket can only let more through, never fewer, so the burst bounds the
    // drops from above exactly.
    let flood_sent = f64::from(flood.sent);
    let refill = f64::from(SYN_RATE) * flood.elapsed.as_secs_f64();
    let most = flood_sent - f64::from(SYN_BURST);
    let predicted = (most - refill).max(0.0);
    let dropped = drops();
    eprintln!(
        "flood: {} SYNs in {:?} ({} send errors), predicted drops {predicted:.0}..={most:.0}, dropped {dropped}; \
         {ok} legitimate handshakes succeeded",
        flood.sent, flood.elapsed, flood.send_errors
    );
    assert!(
        flood.sent >= FLOOD_PACKETS,
        "the flood sent only {} SYNs",
        flood.sent
    );
    assert!(
        dropped <= most,
        "{dropped} SYNs dropped, more than the {most} beyond the burst"
    );
    assert!(
        dropped >= predicted * (1.0 - DROP_SHORTFALL),
        "only {dropped} SYNs of the flood dropped, expected about {predicted:.0} (sent {}, burst {SYN_BURST}, \
         refill {refill:.0})",
        flood.sent
    );

    daemon.stop_ok();
}

/// What the flood did.
#[derive(Debug)]
struct Flood {
    /// SYNs the kernel took from the raw socket.
    sent: u32,
    /// `sendto` failures (not counted in `sent`).
    send_errors: u32,
    /// From the first SYN to the last.
    elapsed: Duration,
}

/// Sends SYNs from `src` (a new source port and ISN each) to `dst` at [`FLOOD_PER_SEC`] until at least
/// [`FLOOD_PACKETS`] went out and `legit_done` is set, or [`FLOOD_TIME_LIMIT`] passed. Counts into `sent`.
fn flood_syns(
    sender: &RawSender,
    src: IpAddr,
    dst: SocketAddrV4,
    sent: &AtomicU32,
    legit_done: &AtomicBool,
) -> Flood {
    let IpAddr::V4(src) = src else {
        panic!("flood source {src} is not IPv4")
    };
    paced_syns(sender, dst, FLOOD_PACKETS, |_| src, sent, legit_done)
}

/// Sends SYNs to `dst`, the `n`th from `source(n)` (a new source port and ISN each), at [`FLOOD_PER_SEC`] until
/// at least `at_least` went out and `legit_done` is set, or [`FLOOD_TIME_LIMIT`] passed. Counts into `sent`.
fn paced_syns(
    sender: &RawSender,
    dst: SocketAddrV4,
    at_least: u32,
    source: impl Fn(u32) -> Ipv4Addr,
    sent: &AtomicU32,
    legit_done: &AtomicBool,
) -> Flood {
    let start = Instant::now();
    let mut send_errors = 0;
    let mut n: u32 = 0;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= FLOOD_TIME_LIMIT || (n >= at_least && legit_done.load(Ordering::Relaxed)) {
            break;
        }
        // Catch up to the schedule, then sleep a tick: the pace holds even when a sleep overshoots.
        let due = (elapsed.as_secs_f64() * f64::from(FLOOD_PER_SEC)) as u32;
        while n < due {
            let port = 1024 + (n % 60_000) as u16;
            let packet = tcp_packet(
                source(n),
                port,
                dst,
                n.wrapping_mul(2_654_435_761),
                SYN,
                &[],
            );
            match sender.send(&packet) {
                Ok(()) => {
                    n += 1;
                    sent.store(n, Ordering::Relaxed);
                }
                Err(_) => {
                    send_errors += 1;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Flood {
        sent: n,
        send_errors,
        elapsed: start.elapsed(),
    }
}

/// The flood budget for unknown sources' SYNs in [`spoofed_syn_flood_is_dropped_while_a_known_client_handshakes`]
/// (`xdp.flood_syn_rate`, per CPU, and `xdp.flood_syn_burst`).
const FLOOD_SYN_RATE: u32 = 50;
const FLOOD_SYN_BURST: u32 = 50;
/// Spoofed SYNs that flood sends at least.
const SPOOFED_PACKETS: u32 = 8_000;

#[test]
fn spoofed_syn_flood_is_dropped_while_a_known_client_handshakes() {
    if !require_root("spoofed_syn_flood_is_dropped_while_a_known_client_handshakes") {
        return;
    }
    let bed = XdpTestbed::builder("spoofed")
        .xdp(&format!("flood_syn_rate = {FLOOD_SYN_RATE}"))
        .xdp(&format!("flood_syn_burst = {FLOOD_SYN_BURST}"))
        .xdp("known_ttl = 600")
        .build()
        .expect("XDP testbed");
    let daemon = bed.start_daemon();
    let listener = match daemon.addr() {
        std::net::SocketAddr::V4(v4) => v4,
        other => panic!("listener {other} is not IPv4"),
    };
    // One handshake before the flood makes the client's address known.
    assert!(
        bed.s_client(daemon.addr(), 10),
        "handshake before the flood"
    );
    let status = bed.cli(&["status"]);
    assert!(
        status.contains("known sources    1 of 8192"),
        "the client's address should be known after its handshake: {status}"
    );
    let sender = RawSender::open(&bed.client).expect("raw socket in the client namespace");
    let drops = || xdp_verdicts(&daemon, "drop_syn_flood");
    assert_eq!(drops(), 0.0, "flood drops before any flood");

    let (flood, handshakes) = handshakes_during_a_flood(&bed, &daemon, |sent, done| {
        spoofed_syns(&sender, listener, sent, done)
    });
    let ok = handshakes.iter().filter(|ok| **ok).count();
    assert_eq!(
        ok,
        handshakes.len(),
        "handshakes of the known client {} during a spoofed flood: only {ok} of {} succeeded",
        bed.veth.a.addr,
        handshakes.len()
    );
    // Each CPU that runs the program has its own bucket: at most that many bursts pass, plus the refill.
    // SAFETY: sysconf reads a system value.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as f64;
    let passed_at_most = cpus
        * (f64::from(FLOOD_SYN_BURST) + f64::from(FLOOD_SYN_RATE) * flood.elapsed.as_secs_f64());
    let dropped = drops();
    eprintln!(
        "spoofed flood: {} SYNs in {:?} ({} send errors), dropped {dropped} (at most {passed_at_most:.0} may pass); \
         {ok} handshakes of the known client succeeded",
        flood.sent, flood.elapsed, flood.send_errors
    );
    assert!(
        flood.sent >= SPOOFED_PACKETS,
        "the flood sent only {} SYNs",
        flood.sent
    );
    let predicted = f64::from(flood.sent) - passed_at_most;
    assert!(
        dropped >= predicted * (1.0 - DROP_SHORTFALL) && dropped <= f64::from(flood.sent),
        "{dropped} spoofed SYNs dropped, expected at least {predicted:.0} of {} (burst {FLOOD_SYN_BURST}, rate \
         {FLOOD_SYN_RATE}/s per CPU)",
        flood.sent
    );
    daemon.stop_ok();
}

/// Sends SYNs to `dst` from a new spoofed source each (10.98.x.y, never an address of the testbed) at
/// [`FLOOD_PER_SEC`] until at least [`SPOOFED_PACKETS`] went out and `legit_done` is set, or [`FLOOD_TIME_LIMIT`]
/// passed.
fn spoofed_syns(
    sender: &RawSender,
    dst: SocketAddrV4,
    sent: &AtomicU32,
    legit_done: &AtomicBool,
) -> Flood {
    let spoofed = |n: u32| {
        let [_, _, hi, lo] = n.to_be_bytes();
        Ipv4Addr::new(10, 98, hi, lo.max(1))
    };
    paced_syns(sender, dst, SPOOFED_PACKETS, spoofed, sent, legit_done)
}

#[test]
fn a_junk_client_hello_sender_is_refused_at_the_syn() {
    if !require_root("a_junk_client_hello_sender_is_refused_at_the_syn") {
        return;
    }
    let bed = XdpTestbed::builder("junk")
        .xdp("syn_rate = 100")
        .xdp("syn_burst = 100")
        .xdp("malformed_penalty_ms = 60000")
        .extra_client_addrs(1)
        .build()
        .expect("XDP testbed");
    let daemon = bed.start_daemon();
    let listener = daemon.addr();
    let junk_src = bed.extra_client_addrs[0];
    let (reason, junk) = portcullis_abi::hello_fixtures::malformed_cases()
        .into_iter()
        .next()
        .expect("a malformed ClientHello");
    let connect_from = |src: Ipv4Addr| {
        bed.client
            .run(|| {
                let socket = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                socket.bind(&std::net::SocketAddr::from((src, 0)).into())?;
                socket.connect_timeout(&listener.into(), Duration::from_secs(1))?;
                Ok::<_, std::io::Error>(std::net::TcpStream::from(socket))
            })
            .expect("enter the client namespace")
    };
    let metric = |verdict: &str| xdp_verdicts(&daemon, verdict);
    // The junk sender's first connection completes (the SYN is fine); its first segment is dropped in XDP.
    let mut first = connect_from(junk_src).expect("the junk sender's first connect");
    std::io::Write::write_all(&mut first, &junk).expect("send the malformed ClientHello");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric("drop_malformed_hello") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the {reason:?} ClientHello was not dropped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(first);
    // Its next connections are refused at the SYN, for the penalty's 60 s: no accept for the server.
    let next = connect_from(junk_src);
    assert!(
        next.is_err(),
        "a connect from {junk_src} completed after its malformed ClientHello"
    );
    assert!(
        metric("drop_syn_penalty") >= 1.0,
        "no drop_syn_penalty on /metrics"
    );
    // Another address is untouched.
    assert!(
        bed.s_client(listener, 10),
        "a handshake from {} during {junk_src}'s penalty",
        bed.veth.a.addr
    );
    let status = bed.cli(&["status"]);
    assert!(
        status.contains("malformed penalty 60000 ms"),
        "status: {status}"
    );
    daemon.stop_ok();
}

/// Starts `flood` (given the count of packets sent so far and the flag that says the handshakes are done) on a
/// thread, waits for its head start, makes [`HANDSHAKES`] handshakes with `openssl s_client` from the testbed's
/// client address, then stops the flood; fails if the flood ended before the handshakes did.
fn handshakes_during_a_flood(
    bed: &XdpTestbed,
    daemon: &Daemon,
    flood: impl FnOnce(&AtomicU32, &AtomicBool) -> Flood + Send,
) -> (Flood, Vec<bool>) {
    let sent = AtomicU32::new(0);
    let legit_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let flood = scope.spawn(|| flood(&sent, &legit_done));
        let head_start = Instant::now();
        while sent.load(Ordering::Relaxed) < HEAD_START && !flood.is_finished() {
            assert!(
                head_start.elapsed() < FLOOD_TIME_LIMIT,
                "the flood did not get going"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let handshakes: Vec<bool> = (0..HANDSHAKES)
            .map(|_| bed.s_client(daemon.addr(), 10))
            .collect();
        let still_flooding = !flood.is_finished();
        legit_done.store(true, Ordering::Relaxed);
        let flood = flood.join().expect("flood thread");
        assert!(
            still_flooding,
            "the flood ended ({flood:?}) before the client's {HANDSHAKES} handshakes did"
        );
        (flood, handshakes)
    })
}

/// The daemon's count of XDP verdicts `verdict` (`portcullis_xdp_packets_total`).
fn xdp_verdicts(daemon: &Daemon, verdict: &str) -> f64 {
    daemon
        .metric("portcullis_xdp_packets_total", &[("verdict", verdict)])
        .expect("GET /metrics")
}
