//! TLS 1.3 0-RTT against the real binary and a real `redis-server`: early data accepted once, a captured first
//! flight replayed to the same instance, to a second one sharing Redis, and after `freshness` (refused and
//! counted every time, the upstream sees the request once); Redis stopped (handshakes go on as full ones
//! within the fetch timeout); `openssl s_client -early_data` interoperates.
//!
//! Listeners are in `tcp` mode: early data reaches the upstream only after the client's Finished, so a
//! replayer, who cannot finish the handshake, never gets a byte to the upstream.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_tests::clients::s_client_session;
use portcullis_tests::daemon::{Daemon, DaemonOptions, TempDir, binary};
use portcullis_tests::pki::Pki;
use portcullis_tests::redis::{RedisServer, require_redis};

/// An upstream that answers every request with `ok` and counts request lines by path.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let counts = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let counts = counts.clone();
                std::thread::spawn(move || serve_upstream(conn, &counts));
            }
        });
        Upstream { addr, seen }
    }

    fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn serve_upstream(conn: TcpStream, counts: &Mutex<HashMap<String, usize>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    if let Some(path) = line.split_whitespace().nth(1) {
        *counts
            .lock()
            .expect("lock")
            .entry(path.to_owned())
            .or_default() += 1;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
    }
    let mut conn = conn;
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
}

struct Bed {
    tmp: TempDir,
    pki: Pki,
    keys: PathBuf,
    upstream: Upstream,
}

impl Bed {
    fn new() -> Bed {
        let tmp = TempDir::new("zero-rtt").expect("tempdir");
        let pki = Pki::generate(tmp.path()).expect("pki");
        let keys = tmp.path().join("ticket-keys");
        let out = Command::new(binary())
            .args(["keys", "init", "--dir"])
            .arg(&keys)
            .output()
            .expect("portcullis keys init");
        assert!(out.status.success(), "{out:?}");
        Bed {
            tmp,
            pki,
            keys,
            upstream: Upstream::start(),
        }
    }

    /// A daemon with 0-RTT on its listener (freshness 2 s), the fleet's keys, and `store` (`local` or a Redis
    /// URL).
    fn daemon(&self, store: Option<&str>) -> Daemon {
        let store = match store {
            // 100 ms, not 5: a debug build sharing two cores with parallel tests can take a few ms to answer,
            // and a timeout here would turn the outcome these tests check into `store_down`.
            Some(url) => format!(
                "[tls.session_store]\nkind = \"redis\"\nurl = {url:?}\nfetch_timeout = \"100ms\"\n"
            ),
            None => "[tls.session_store]\nkind = \"local\"\n".to_owned(),
        };
        let tls = self.pki.tls_section(&format!(
            "handshake_timeout = \"3s\"\nticket_keys_dir = {:?}\n{store}",
            self.keys
        ));
        let toml = format!(
            "workers = 1\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.early_data]\nmax_size = 16384\nfreshness = \"2s\"\n\n[upstream]\nbackends = [\"{}\"]\n\n[metrics]\naddress = \"127.0.0.1:0\"\n\n{tls}",
            self.upstream.addr
        );
        Daemon::start(DaemonOptions {
            config_toml: Some(toml),
            ..Default::default()
        })
        .expect("daemon starts")
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        self.client_of(&rustls::version::TLS13)
    }

    fn client_of(
        &self,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(&self.pki.ca).expect("read ca");
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.expect("ca pem")).expect("add root");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.enable_early_data = true;
        Arc::new(config)
    }
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: ecdsa.test\r\nConnection: close\r\n\r\n").into_bytes()
}

fn connection(config: &Arc<rustls::ClientConfig>) -> rustls::ClientConnection {
    let name = rustls::pki_types::ServerName::try_from("ecdsa.test").expect("name");
    rustls::ClientConnection::new(config.clone(), name).expect("client conn")
}

/// A request without early data; returns the handshake kind (the client keeps the tickets it got).
fn get(config: &Arc<rustls::ClientConfig>, addr: SocketAddr, path: &str) -> rustls::HandshakeKind {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(connection(config), tcp);
    tls.write_all(&request(path)).expect("request");
    let mut body = String::new();
    tls.read_to_string(&mut body).expect("response");
    assert!(body.ends_with("ok"), "{body}");
    tls.conn.handshake_kind().expect("handshake finished")
}

/// A resuming connection whose request for `path` went into early data, and its first flight as sent on the
/// wire (ClientHello and the early data records): what an attacker would capture.
fn early_flight(
    config: &Arc<rustls::ClientConfig>,
    path: &str,
) -> (rustls::ClientConnection, Vec<u8>) {
    let mut conn = connection(config);
    conn.early_data()
        .expect("the client holds a ticket that allows early data")
        .write_all(&request(path))
        .expect("early data fits");
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).expect("first flight");
    }
    (conn, flight)
}

/// Sends `flight` for `conn` to `addr` and finishes the handshake; returns whether the early data was accepted.
fn finish_early(
    conn: rustls::ClientConnection,
    flight: &[u8],
    path: &str,
    addr: SocketAddr,
) -> bool {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp.write_all(flight).expect("first flight");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("handshake");
    }
    let accepted = tls.conn.is_early_data_accepted();
    if !accepted {
        // As a real client does: the request goes again, after the handshake.
        tls.write_all(&request(path)).expect("request again");
    }
    let mut body = String::new();
    tls.read_to_string(&mut body).expect("response");
    assert!(body.ends_with("ok"), "{body}");
    accepted
}

/// A replayer: sends a captured first flight to `addr`, reads the server's answer (it cannot finish the
/// handshake: it has no keys), and leaves.
fn replay(flight: &[u8], addr: SocketAddr) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    tcp.write_all(flight).expect("replayed flight");
    let mut buf = [0u8; 4096];
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert!(n > 0, "the server answers a replay with its first flight");
}

fn early(d: &Daemon, outcome: &str) -> f64 {
    d.metric("portcullis_early_data_total", &[("outcome", outcome)])
        .expect("metrics")
}

fn store(d: &Daemon, op: &str, result: &str) -> f64 {
    d.metric(
        "portcullis_session_store_requests_total",
        &[("op", op), ("result", result)],
    )
    .expect("metrics")
}

/// Polls (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn early_data_is_accepted_once_across_the_fleet() {
    if !require_redis("early_data_is_accepted_once_across_the_fleet") {
        return;
    }
    let redis = RedisServer::start().expect("redis");
    let bed = Bed::new();
    let a = bed.daemon(Some(&redis.url()));
    let b = bed.daemon(Some(&redis.url()));
    let client = bed.client();

    assert_eq!(get(&client, a.addr(), "/warm"), rustls::HandshakeKind::Full);
    // The connection's ticket (one per handshake, `tls.session_store.tickets`; writes to Redis are
    // asynchronous).
    eventually("sessions written to Redis", || {
        redis.count_keys("portcullis:0rtt:").unwrap_or(0) >= 1
    });
    let (conn, flight) = early_flight(&client, "/once");
    assert!(
        finish_early(conn, &flight, "/once", a.addr()),
        "0-RTT accepted"
    );
    assert_eq!(bed.upstream.count("/once"), 1);
    assert_eq!(early(&a, "accepted"), 1.0);

    // (a) The captured flight again, to the same instance: the ticket is spent.
    replay(&flight, a.addr());
    eventually("the replay counted on a", || early(&a, "replay") >= 1.0);
    // (b) To a second instance sharing Redis: spent there too.
    replay(&flight, b.addr());
    eventually("the replay counted on b", || early(&b, "replay") >= 1.0);
    assert_eq!(store(&b, "fetch", "replay"), 1.0);
    assert_eq!(early(&a, "accepted") + early(&b, "accepted"), 1.0);

    // (c) A flight captured before its ticket was ever used, replayed after `freshness` (2 s): the session is
    // found, but the ages disagree, so no early data (the replayer cannot finish the resumed handshake).
    // Fresh tickets for a flight never sent (this connection resumes, from Redis or from the write queue).
    get(&client, a.addr(), "/warm2");
    let (_held, stale_flight) = early_flight(&client, "/stale");
    std::thread::sleep(Duration::from_secs(4));
    replay(&stale_flight, b.addr());
    eventually("the stale flight counted on b", || {
        early(&b, "stale") >= 1.0
    });

    // The upstream saw each early request exactly once: the replays never reached it.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(bed.upstream.count("/once"), 1);
    assert_eq!(bed.upstream.count("/stale"), 0);
    a.stop_ok();
    b.stop_ok();
}

#[test]
fn a_stopped_store_means_full_handshakes_within_the_fetch_timeout() {
    if !require_redis("a_stopped_store_means_full_handshakes_within_the_fetch_timeout") {
        return;
    }
    let mut redis = RedisServer::start().expect("redis");
    let bed = Bed::new();
    let d = bed.daemon(Some(&redis.url()));
    // Clients whose newest ticket is in Redis (a client offers its newest; one issued while Redis is stopped
    // waits in this instance's write queue, and resumes from there).
    let warm = |n: usize| -> Vec<Arc<rustls::ClientConfig>> {
        let before = redis.count_keys("portcullis:0rtt:").unwrap_or(0);
        let clients: Vec<_> = (0..n).map(|_| bed.client()).collect();
        for c in &clients {
            assert_eq!(get(c, d.addr(), "/warm"), rustls::HandshakeKind::Full);
        }
        eventually("sessions written to Redis", || {
            redis.count_keys("portcullis:0rtt:").unwrap_or(0) >= before + n
        });
        clients
    };
    let clients = warm(8);
    assert_eq!(
        get(&clients[0], d.addr(), "/r"),
        rustls::HandshakeKind::Resumed
    );

    redis.pause().expect("SIGSTOP redis");
    // Every attempt may take a full handshake and request on this (debug, shared) machine, plus the 5 ms fetch
    // timeout: far below the margin.
    let mut worst = Duration::ZERO;
    for (i, c) in clients.iter().enumerate().skip(1) {
        let started = Instant::now();
        let kind = get(c, d.addr(), &format!("/down{i}"));
        worst = worst.max(started.elapsed());
        assert_eq!(kind, rustls::HandshakeKind::Full, "attempt {i}");
    }
    assert!(
        worst < Duration::from_millis(500),
        "slowest attempt {worst:?}"
    );
    assert!(early(&d, "store_down") >= 1.0);
    assert!(store(&d, "fetch", "timeout") >= 1.0);
    // After 5 timeouts the breaker stops asking.
    assert!(store(&d, "fetch", "breaker_open") >= 1.0);
    assert_eq!(
        d.metric("portcullis_session_store_breaker_open", &[])
            .expect("metrics"),
        1.0
    );

    // Back: the breaker probes, closes, and resumption works again.
    redis.resume().expect("SIGCONT redis");
    let back = warm(3);
    let hits = store(&d, "fetch", "hit");
    eventually("sessions from Redis again", || {
        get(&back[0], d.addr(), "/back");
        store(&d, "fetch", "hit") > hits
    });
    assert_eq!(
        d.metric("portcullis_session_store_breaker_open", &[])
            .expect("metrics"),
        0.0
    );

    // Killed: refused connections fail (or time out while the client reconnects), full handshakes again.
    let failed = |d: &Daemon| {
        ["error", "timeout", "breaker_open"]
            .iter()
            .map(|r| store(d, "fetch", r))
            .sum::<f64>()
    };
    let errors = failed(&d);
    redis.kill().expect("kill redis");
    for (i, c) in back.iter().enumerate().skip(1) {
        let started = Instant::now();
        let kind = get(c, d.addr(), &format!("/dead{i}"));
        assert_eq!(kind, rustls::HandshakeKind::Full, "attempt {i}");
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    assert!(failed(&d) >= errors + 2.0);
    d.stop_ok();
}

/// rustls has one ticketer for both versions, off on an early-data listener: TLS 1.2 resumes by session ID
/// from the instance's cache instead, and does not touch the 0-RTT store.
#[test]
fn tls12_on_an_early_data_listener_resumes_by_session_id() {
    let bed = Bed::new();
    let d = bed.daemon(None);
    let client = bed.client_of(&rustls::version::TLS12);
    assert_eq!(get(&client, d.addr(), "/a"), rustls::HandshakeKind::Full);
    assert_eq!(get(&client, d.addr(), "/b"), rustls::HandshakeKind::Resumed);
    assert_eq!(store(&d, "put", "ok"), 0.0);
    d.stop_ok();
}

/// `deploy/examples/zero-rtt.toml` with the command line over it (what the README shows): two instances share
/// one Redis, a session `openssl s_client` got from one sends early data to the other, accepted.
#[test]
fn openssl_early_data_across_two_instances_of_the_example_config() {
    if !require_redis("openssl_early_data_across_two_instances_of_the_example_config") {
        return;
    }
    let redis = RedisServer::start().expect("redis");
    let bed = Bed::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/zero-rtt.toml");
    // The example's 5 ms fetch timeout is for a release build on a quiet host; see `Bed::daemon`.
    let toml = std::fs::read_to_string(&example)
        .expect("read the example")
        .replace("fetch_timeout = \"5ms\"", "fetch_timeout = \"100ms\"");
    assert!(toml.contains("100ms"), "the example sets fetch_timeout");
    let start = || {
        let args = [
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--metrics".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--upstream".to_owned(),
            bed.upstream.addr.to_string(),
            "--ticket-keys".to_owned(),
            bed.keys.display().to_string(),
            "--session-store".to_owned(),
            redis.url(),
            "--cert".to_owned(),
            bed.pki.ecdsa.0.display().to_string(),
            "--key".to_owned(),
            bed.pki.ecdsa.1.display().to_string(),
            "--workers".to_owned(),
            "1".to_owned(),
        ];
        Daemon::start(DaemonOptions {
            config_toml: Some(toml.clone()),
            args: args.to_vec(),
            ..Default::default()
        })
        .expect("daemon starts from the example")
    };
    let (a, b) = (start(), start());
    let dir = bed.tmp.path();
    let sess = dir.join("sess.pem");
    let out = s_client(&bed.pki.ca, a.addr(), &["-sess_out"], &sess, None, true);
    assert!(out.contains("\r\n\r\nok") || out.ends_with("ok"), "{out}");
    eventually("the session in Redis", || {
        redis.count_keys("portcullis:0rtt:").unwrap_or(0) >= 1
    });
    let req = dir.join("req.txt");
    std::fs::write(&req, request("/openssl-early")).expect("write request");
    let out = s_client(
        &bed.pki.ca,
        b.addr(),
        &["-sess_in"],
        &sess,
        Some(&req),
        true,
    );
    let why = || {
        let text = b.metrics_text().unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("session_store_requests") || l.contains("early_data_total"))
            .filter(|l| !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(out.contains("Early data was accepted"), "{out}\n{}", why());
    assert!(out.contains("Reused, TLSv1.3"), "{out}");
    eventually("the early request upstream", || {
        bed.upstream.count("/openssl-early") == 1
    });
    assert_eq!(early(&b, "accepted"), 1.0);
    // The same session file again, on either instance: its ticket is spent.
    for d in [&a, &b] {
        let out = s_client(
            &bed.pki.ca,
            d.addr(),
            &["-sess_in"],
            &sess,
            Some(&req),
            false,
        );
        assert!(out.contains("Early data was rejected"), "{out}");
    }
    eventually("both replays counted", || {
        early(&a, "replay") + early(&b, "replay") >= 2.0
    });
    assert_eq!(bed.upstream.count("/openssl-early"), 1);
    a.stop_ok();
    b.stop_ok();
}

/// `openssl s_client` with a session file (`-sess_out`/`-sess_in`) and, optionally, early data from a file.
/// With `wait` it waits for the server to close (after the response); without, it leaves once the handshake is
/// done and reported.
fn s_client(
    ca: &Path,
    addr: SocketAddr,
    sess: &[&str],
    file: &Path,
    early: Option<&Path>,
    wait: bool,
) -> String {
    let request = request("/openssl-full");
    s_client_session(
        ca,
        addr,
        "ecdsa.test",
        &[],
        sess,
        file,
        early,
        &request,
        wait,
    )
}
