//! The load generator against rustls servers in this process: counts agree with the server, resumption across
//! servers without shared keys is reported as rejected, stalls show up in latency from intended start, and runs
//! stop at their bounds.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use portcullis_load::client_config::{Group, TlsOptions};
use portcullis_load::connection::{ConnSpec, Target};
use portcullis_load::kind::Kind;
use portcullis_load::phases::{Arrival, Phase};
use portcullis_load::preflight::PreflightError;
use portcullis_load::report::Report;
use portcullis_load::runner::{self, Load, RunError, RunSpec};
use rustls::pki_types::ServerName;

fn spec(targets: &[SocketAddr], mix: &str, rate: f64, seconds: f64) -> RunSpec {
    RunSpec {
        targets: targets
            .iter()
            .map(|addr| Target {
                addr: *addr,
                sni: ServerName::try_from("localhost").expect("name"),
            })
            .collect(),
        mix: mix.parse().expect("mix"),
        tls: TlsOptions::default(),
        conn: ConnSpec {
            request: None,
            keep: Duration::ZERO,
            timeout: Duration::from_secs(5),
            sources: Vec::new().into(),
        },
        load: Load::Open(vec![Phase {
            name: "run".into(),
            duration_s: seconds,
            rate,
            arrival: Arrival::Constant,
        }]),
        max_connections: 1_000_000,
        max_inflight: 1024,
        seed: 1,
        preflight: false,
        progress: false,
    }
}

fn run(spec: RunSpec) -> Report {
    runner::run(spec).expect("run")
}

fn fallback(report: &Report, kind: Kind, why: &str) -> u64 {
    report.kinds[kind.name()]
        .fallback
        .get(why)
        .copied()
        .unwrap_or(0)
}

#[test]
fn full_and_resumed_counts_match_what_the_server_saw() {
    let (addr, seen) = common::start(common::server_config(), Duration::ZERO);
    let mut s = spec(
        &[addr],
        "full13:1,resume13:1,resume12-ticket:1,resume12-id:1,full12:1",
        100.0,
        1.0,
    );
    s.conn.request = Some(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec());
    let report = run(s);
    assert_eq!(report.failed, 0, "{}", report.table());
    assert_eq!(report.ok, 100, "{}", report.table());
    let resumed: u64 = report.kinds.values().map(|k| k.resumed).sum();
    let full: u64 = report.kinds.values().map(|k| k.full).sum();
    assert!(
        common::eventually(|| seen.full() + seen.resumed() == 100),
        "server saw {} full + {} resumed",
        seen.full(),
        seen.resumed()
    );
    assert_eq!(
        (full, resumed),
        (seen.full(), seen.resumed()),
        "{}",
        report.table()
    );
    // Every resuming kind resumed after its first connection, which had nothing to offer.
    for kind in [Kind::Resume13, Kind::Resume12Ticket, Kind::Resume12Id] {
        let k = &report.kinds[kind.name()];
        assert_eq!(
            fallback(&report, kind, "no_ticket"),
            1,
            "{kind}: {}",
            report.table()
        );
        assert_eq!(k.resumed, k.ok - 1, "{kind}: {}", report.table());
    }
    assert_eq!(report.kinds[Kind::Full13.name()].resumed, 0);
    assert_eq!(report.phase_stats[0].offered, 100);
    assert_eq!(report.phase_stats[0].ok, 100);
    assert!(report.kinds[Kind::Full13.name()].first_byte_us.count > 0);
}

#[test]
fn tickets_offered_to_a_server_without_the_keys_fall_back_to_full_as_rejected() {
    // Two servers with their own ticket keys, round robin: each connection offers the ticket the other
    // server issued on the previous connection (newest first).
    let (a, seen_a) = common::start(common::server_config(), Duration::ZERO);
    let (b, seen_b) = common::start(common::server_config(), Duration::ZERO);
    let report = run(spec(&[a, b], "resume13", 10.0, 0.6));
    let k = &report.kinds[Kind::Resume13.name()];
    assert_eq!(k.ok, 6, "{}", report.table());
    assert_eq!(k.resumed, 0, "{}", report.table());
    assert_eq!(fallback(&report, Kind::Resume13, "no_ticket"), 1);
    assert_eq!(fallback(&report, Kind::Resume13, "rejected"), 5);
    assert!(common::eventually(|| seen_a.full() + seen_b.full() == 6));
    assert_eq!(seen_a.resumed() + seen_b.resumed(), 0);

    // The control: two listeners sharing one configuration (one set of ticket keys) do resume each other's.
    let shared = common::server_config();
    let (c, _) = common::start(shared.clone(), Duration::ZERO);
    let (d, _) = common::start(shared, Duration::ZERO);
    let report = run(spec(&[c, d], "resume13", 10.0, 0.6));
    assert_eq!(
        report.kinds[Kind::Resume13.name()].resumed,
        5,
        "{}",
        report.table()
    );
}

#[test]
fn the_post_quantum_group_and_alpn_reach_the_server() {
    let (addr, seen) = common::start(common::server_config(), Duration::ZERO);
    let mut s = spec(&[addr], "full13", 20.0, 0.5);
    s.tls.groups = vec![Group::X25519Mlkem768];
    s.tls.alpn = vec![b"http/1.1".to_vec()];
    let report = run(s);
    assert_eq!(report.ok, 10, "{}", report.table());
    assert!(common::eventually(|| seen
        .post_quantum
        .load(Ordering::SeqCst)
        == 10));
    assert_eq!(seen.alpn_http11.load(Ordering::SeqCst), 10);
}

#[test]
fn a_stalled_server_shows_in_latency_from_intended_start() {
    // The server accepts nothing for 600 ms; connections meant to start then must count the wait.
    let stall = Duration::from_millis(600);
    let (addr, _) = common::start(common::server_config(), stall);
    let report = run(spec(&[addr], "full13", 50.0, 1.2));
    let hs = &report.kinds[Kind::Full13.name()].handshake_us;
    assert_eq!(report.failed, 0, "{}", report.table());
    // The first connection was meant to start at 0 and could not finish before the stall ended.
    assert!(hs.max >= 550_000, "max {} µs: {}", hs.max, report.table());
    // About half of the connections were meant to start during the stall: the tail shows it.
    assert!(hs.p99 >= 400_000, "p99 {} µs: {}", hs.p99, report.table());
    let first_seconds: u64 = report.series.iter().map(|s| s.ok).sum();
    assert_eq!(first_seconds, report.ok);
}

#[test]
fn runs_stop_at_max_connections_and_at_their_timeout() {
    let (addr, _) = common::start(common::server_config(), Duration::ZERO);
    let mut s = spec(&[addr], "full13", 200.0, 30.0);
    s.max_connections = 20;
    let started = Instant::now();
    let report = run(s);
    assert_eq!(report.ok + report.failed, 20);
    assert!(started.elapsed() < Duration::from_secs(30));

    // A listener that never accepts: every handshake times out, and the run still ends.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut s = spec(&[silent.local_addr().expect("addr")], "full13", 20.0, 0.5);
    s.conn.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let report = run(s);
    assert_eq!(report.ok, 0);
    assert_eq!(
        report.kinds[Kind::Full13.name()].errors.get("timeout"),
        Some(&10)
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // Closed loop: bounded by its duration.
    let mut s = spec(&[addr], "full13", 1.0, 1.0);
    s.load = Load::Closed {
        concurrency: 2,
        duration: Duration::from_millis(300),
    };
    let report = run(s);
    assert!(report.ok > 0);
}

#[test]
fn an_unreachable_target_fails_the_preflight_clearly() {
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let mut s = spec(&[addr], "full13", 10.0, 1.0);
    s.preflight = true;
    match runner::run(s) {
        Err(RunError::Preflight(PreflightError::Unreachable { .. })) => {}
        other => panic!("expected an unreachable-target error, got {other:?}"),
    }

    // A TLS 1.2-only client against a TLS 1.3-only server: refused, and said so.
    let resolver = common::server_config().cert_resolver.clone();
    let tls13_only = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver),
    );
    let (addr, _) = common::start(tls13_only, Duration::ZERO);
    let mut s = spec(&[addr], "full12", 10.0, 1.0);
    s.preflight = true;
    match runner::run(s) {
        Err(RunError::Preflight(PreflightError::TlsRefused { message, .. })) => {
            assert!(message.contains("full12"), "{message}");
        }
        other => panic!("expected a TLS refusal, got {other:?}"),
    }
}

#[test]
fn connections_come_from_the_given_source_addresses_in_turn() {
    // A plain TCP listener that records each peer's address and closes: the handshakes fail, which is fine,
    // only where they came from matters here.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = peers.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(6).flatten() {
            if let Ok(peer) = stream.peer_addr() {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(peer.ip());
            }
        }
    });
    let sources: Vec<std::net::IpAddr> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|a| a.parse().expect("address"))
        .collect();
    let mut s = spec(&[addr], "full13", 20.0, 0.3);
    s.conn.sources = sources.clone().into();
    s.conn.timeout = Duration::from_secs(2);
    let report = run(s);
    assert_eq!(report.ok + report.failed, 6, "{}", report.table());
    assert!(
        common::eventually(|| peers.lock().unwrap_or_else(|e| e.into_inner()).len() == 6),
        "the listener saw {:?}",
        peers.lock().unwrap_or_else(|e| e.into_inner())
    );
    let peers = peers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for source in &sources {
        assert_eq!(
            peers.iter().filter(|p| *p == source).count(),
            3,
            "connections from {source}: {peers:?}"
        );
    }
}
