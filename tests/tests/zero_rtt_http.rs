//! 0-RTT on `http` listeners against the real binary (RFC 8470): a request in early data is answered before the
//! client's Finished when it is safe (the upstream sees `Early-Data: 1`), and waits for the Finished (or gets 425)
//! when it is not; an upstream 425 is retried once after the handshake; a `tcp` listener never forwards early
//! data before the Finished.
//!
//! The client is a bare rustls `ClientConnection` that sends its ClientHello and early data, reads the server's
//! flight, and WITHHOLDS its own Finished (the bytes rustls queued are kept, not written): whatever answer it
//! reads then was sent before the handshake completed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_tests::clients::s_client_session;
use portcullis_tests::daemon::{Daemon, DaemonOptions, TempDir, binary};
use portcullis_tests::http_upstream::HttpUpstream;
use portcullis_tests::pki::Pki;
use portcullis_tests::redis::{RedisServer, require_redis};

const NAME: &str = "ecdsa.test";

struct Bed {
    tmp: TempDir,
    pki: Pki,
    keys: PathBuf,
    upstream: HttpUpstream,
    daemon: Daemon,
}

impl Bed {
    /// A daemon with one listener in `mode` with 0-RTT (local store), `early` appended to its
    /// `[listeners.early_data]`, in front of a recording upstream.
    fn start(mode: &str, early: &str) -> Bed {
        Self::start_with(mode, early, None)
    }

    /// As [`Bed::start`], the sessions in Redis at `redis` when given.
    fn start_with(mode: &str, early: &str, redis: Option<&str>) -> Bed {
        let tmp = TempDir::new("zero-rtt-http").expect("tempdir");
        let pki = Pki::generate(tmp.path()).expect("pki");
        let keys = tmp.path().join("ticket-keys");
        let out = Command::new(binary())
            .args(["keys", "init", "--dir"])
            .arg(&keys)
            .output()
            .expect("portcullis keys init");
        assert!(out.status.success(), "{out:?}");
        let upstream = HttpUpstream::start().expect("upstream");
        let daemon = start_daemon(&pki, &keys, upstream.addr, mode, early, redis);
        Bed {
            tmp,
            pki,
            keys,
            upstream,
            daemon,
        }
    }

    /// A client config (its own ticket store) offering `alpn`, with early data on.
    fn client(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(&self.pki.ca).expect("read ca");
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.expect("ca pem")).expect("add root");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        config.enable_early_data = true;
        Arc::new(config)
    }

    /// A client that holds a ticket of this daemon allowing early data.
    fn warm_client(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let config = self.client(alpn);
        warm(&config, self.daemon.addr(), alpn);
        config
    }

    /// The upstream's requests (see `HttpUpstream::requests`) but the warm-up ones.
    fn seen(&self) -> Vec<String> {
        let mut seen = self.upstream.requests();
        seen.retain(|r| !r.starts_with("GET /warm "));
        seen
    }

    fn early_requests(&self, action: &str) -> f64 {
        self.daemon
            .metric(
                "portcullis_http_early_requests_total",
                &[("action", action)],
            )
            .expect("metrics")
    }
}

/// A daemon with one listener in `mode`, `early` appended to `[listeners.early_data]` (default `max_size`
/// 16384), the sessions in Redis at `redis` or in the local store.
fn start_daemon(
    pki: &Pki,
    keys: &Path,
    upstream: SocketAddr,
    mode: &str,
    early: &str,
    redis: Option<&str>,
) -> Daemon {
    let store = match redis {
        // 100 ms, not 5: a debug build on a shared machine (see tests/zero_rtt.rs).
        Some(url) => format!(
            "[tls.session_store]\nkind = \"redis\"\nurl = {url:?}\nfetch_timeout = \"100ms\"\n"
        ),
        None => "[tls.session_store]\nkind = \"local\"\n".to_owned(),
    };
    let tls = pki.tls_section(&format!(
        "handshake_timeout = \"5s\"\nticket_keys_dir = {keys:?}\n{store}"
    ));
    let max_size = if early.contains("max_size") {
        ""
    } else {
        "max_size = 16384\n"
    };
    let toml = format!(
        "workers = 1\n[[listeners]]\naddress = \"127.0.0.1:0\"\nmode = \"{mode}\"\n[listeners.early_data]\n{max_size}{early}\n\n[upstream]\nbackends = [\"{upstream}\"]\n\n[metrics]\naddress = \"127.0.0.1:0\"\n\n{tls}"
    );
    Daemon::start(DaemonOptions {
        config_toml: Some(toml),
        ..Default::default()
    })
    .expect("daemon starts")
}

/// A full handshake and one request (`/warm`, h1 or h2 by `alpn`), read to its end: the session tickets come
/// before it (sent when the server processes the client's Finished).
fn warm(config: &Arc<rustls::ClientConfig>, addr: SocketAddr, alpn: &[u8]) {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(connection(config), tcp);
    let h2 = alpn == b"h2";
    let request = if h2 {
        h2_get("/warm")
    } else {
        get("/warm", "Connection: close\r\n")
    };
    tls.write_all(&request).expect("request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let done = |a: &[u8]| if h2 { h2_body(a).1 } else { h1_complete(a) };
    while !done(&answer) {
        let n = tls.read(&mut buf).expect("answer");
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&buf[..n]);
    }
}

/// An h2 client's first bytes for a GET of `path` (stream 1): the preface, an empty SETTINGS, and HEADERS with
/// END_STREAM.
fn h2_get(path: &str) -> Vec<u8> {
    let mut flight = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flight.extend_from_slice(&frame(0x4, 0, 0, &[]));
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", path),
        (":authority", NAME),
    ] {
        // HPACK literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
        block.push(0);
        block.push(u8::try_from(name.len()).expect("short"));
        block.extend_from_slice(name.as_bytes());
        block.push(u8::try_from(value.len()).expect("short"));
        block.extend_from_slice(value.as_bytes());
    }
    // END_STREAM | END_HEADERS on stream 1.
    flight.extend_from_slice(&frame(0x1, 0x5, 1, &block));
    flight
}

fn connection(config: &Arc<rustls::ClientConfig>) -> rustls::ClientConnection {
    let name = rustls::pki_types::ServerName::try_from(NAME).expect("name");
    rustls::ClientConnection::new(config.clone(), name).expect("client conn")
}

/// A resuming connection that sent `early` in early data and read the server's flight, its own Finished withheld.
struct Early {
    tcp: TcpStream,
    conn: rustls::ClientConnection,
    /// The client's EndOfEarlyData and Finished, not sent until [`Early::finish`].
    withheld: Vec<u8>,
    /// Plaintext from the server so far.
    plain: Vec<u8>,
}

impl Early {
    fn connect(config: &Arc<rustls::ClientConfig>, addr: SocketAddr, early: &[u8]) -> Early {
        let mut conn = connection(config);
        let wrote = conn
            .early_data()
            .expect("the client holds a ticket that allows early data")
            .write(early)
            .expect("early write");
        assert_eq!(wrote, early.len(), "the early data fits the ticket's limit");
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        while conn.wants_write() {
            conn.write_tls(&mut tcp).expect("first flight");
        }
        // The server's flight: ServerHello .. Finished (and what it sends right after, half-RTT).
        while conn.is_handshaking() {
            let n = conn.read_tls(&mut tcp).expect("server flight");
            assert!(n > 0, "the server closed during its flight");
            conn.process_new_packets().expect("server flight");
        }
        assert!(conn.is_early_data_accepted(), "0-RTT accepted");
        let mut withheld = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut withheld).expect("client Finished");
        }
        assert!(!withheld.is_empty(), "rustls queued the client's Finished");
        let mut early = Early {
            tcp,
            conn,
            withheld,
            plain: Vec::new(),
        };
        early.drain();
        early
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.conn.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            self.plain.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads until `done` holds for the plaintext received, the server closes, or `wait` passes.
    fn read_until(&mut self, wait: Duration, done: impl Fn(&[u8]) -> bool) -> &[u8] {
        let deadline = Instant::now() + wait;
        while !done(&self.plain) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.tcp
                .set_read_timeout(Some(left.min(Duration::from_millis(50))))
                .expect("timeout");
            match self.conn.read_tls(&mut self.tcp) {
                Ok(0) => break,
                Ok(_) => {
                    self.conn.process_new_packets().expect("server records");
                    self.drain();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        &self.plain
    }

    /// An h1 response, whole (`Content-Length` or chunked), as text.
    fn response(&mut self, wait: Duration) -> String {
        String::from_utf8_lossy(self.read_until(wait, h1_complete)).into_owned()
    }

    /// Asserts that nothing is answered and nothing reached the upstream before the Finished (for [`QUIET`]),
    /// sends it, and returns the answer.
    fn response_after_finish(&mut self, bed: &Bed) -> String {
        let quiet = self.response(QUIET);
        assert!(quiet.is_empty(), "answered before the Finished: {quiet}");
        assert_eq!(bed.seen(), Vec::<String>::new());
        self.finish();
        self.response(ANSWER)
    }

    /// Sends the withheld EndOfEarlyData and Finished: the handshake completes.
    fn finish(&mut self) {
        let withheld = std::mem::take(&mut self.withheld);
        self.tcp.write_all(&withheld).expect("client Finished");
    }
}

/// Whether `buf` holds a whole HTTP/1.1 response.
fn h1_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let head = head.to_ascii_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    head.contains("transfer-encoding: chunked") && body.ends_with("0\r\n\r\n")
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {NAME}\r\n{extra}\r\n").into_bytes()
}

/// Polls (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const QUIET: Duration = Duration::from_millis(700);
const ANSWER: Duration = Duration::from_secs(10);

#[test]
fn an_early_get_is_answered_before_the_clients_finished() {
    let bed = Bed::start("http", "");
    let client = bed.warm_client(b"http/1.1");
    let mut early = Early::connect(&client, bed.daemon.addr(), &get("/headers", ""));
    let response = early.response(ANSWER);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("early-data: 1"), "{response}");
    assert_eq!(bed.seen(), vec!["GET /headers early-data=1".to_owned()]);
    assert_eq!(bed.early_requests("forwarded"), 1.0);
    // The handshake is counted when the Finished arrives: resumed, ok, early data accepted.
    let resumed_ok = || {
        bed.daemon
            .metric(
                "portcullis_handshakes_total",
                &[("mode", "resumed"), ("result", "ok")],
            )
            .expect("metrics")
    };
    assert_eq!(resumed_ok(), 0.0, "not complete before the Finished");
    early.finish();
    eventually("the resumed handshake counted", || resumed_ok() == 1.0);
    assert_eq!(
        bed.daemon
            .metric("portcullis_early_data_total", &[("outcome", "accepted")])
            .expect("metrics"),
        1.0
    );
    // The connection goes on after the handshake: a second request is not early.
    early
        .conn
        .writer()
        .write_all(&get("/headers", ""))
        .expect("second request");
    while early.conn.wants_write() {
        early
            .conn
            .write_tls(&mut early.tcp)
            .expect("second request");
    }
    let first = early.plain.len();
    early.read_until(ANSWER, |b| h1_complete(&b[first..]));
    let second = String::from_utf8_lossy(&early.plain[first..]).into_owned();
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(!second.contains("early-data"), "{second}");
    assert_eq!(bed.early_requests("forwarded"), 1.0);
    drop(early);
    bed.daemon.stop_ok();
}

/// The handshake's end after the hand-over is still judged: a Finished that never comes is a `timeout` at
/// `tls.handshake_timeout` (the connection closed), a forged one a `protocol_error`; neither counts as `ok`.
#[test]
fn a_missing_or_bad_finished_fails_the_handshake_after_the_early_answer() {
    let bed = Bed::start("http", "");
    let handshakes = |result: &str| {
        bed.daemon
            .metric("portcullis_handshakes_total", &[("result", result)])
            .expect("metrics")
    };
    let client = bed.warm_client(b"http/1.1");
    // One ticket per handshake (`tls.session_store.tickets`): the silent connection spends `client`'s and, never
    // finishing, gets none back, so the forged one offers another client's.
    let other = bed.warm_client(b"http/1.1");
    let ok_before = handshakes("ok");
    // Never sent: answered early, then closed at the deadline (5 s after accept).
    let started = Instant::now();
    let mut silent = Early::connect(&client, bed.daemon.addr(), &get("/headers", ""));
    let response = silent.response(ANSWER);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    silent
        .tcp
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rest = Vec::new();
    let _ = silent.tcp.read_to_end(&mut rest);
    let closed = started.elapsed();
    assert!(
        closed >= Duration::from_secs(4) && closed < Duration::from_secs(9),
        "closed after {closed:?}"
    );
    eventually("the timeout counted", || handshakes("timeout") == 1.0);
    // Forged: the last byte of the client's Finished record flipped.
    let mut forged = Early::connect(&other, bed.daemon.addr(), &get("/headers", ""));
    let response = forged.response(ANSWER);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    if let Some(last) = forged.withheld.last_mut() {
        *last ^= 0x01;
    }
    forged.finish();
    eventually("the bad Finished counted", || {
        handshakes("protocol_error") == 1.0
    });
    assert_eq!(handshakes("ok"), ok_before, "neither counted as ok");
    drop(forged);
    bed.daemon.stop_ok();
}

/// A head that straddles the Finished (its start in early data, its end after) is not early: forwarded after the
/// handshake, without `Early-Data`, and not counted as an early request.
#[test]
fn a_head_straddling_the_finished_is_not_early() {
    let bed = Bed::start("http", "");
    let client = bed.warm_client(b"http/1.1");
    let head = get("/headers", "");
    let (start, end) = head.split_at(20);
    let mut early = Early::connect(&client, bed.daemon.addr(), start);
    let quiet = early.response(QUIET);
    assert!(quiet.is_empty(), "answered a part of a head: {quiet}");
    early.finish();
    early.conn.writer().write_all(end).expect("the rest");
    while early.conn.wants_write() {
        early.conn.write_tls(&mut early.tcp).expect("the rest");
    }
    let response = early.response(ANSWER);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(!response.contains("early-data"), "{response}");
    assert_eq!(bed.seen(), vec!["GET /headers early-data=-".to_owned()]);
    for action in ["forwarded", "held", "rejected", "retried"] {
        assert_eq!(bed.early_requests(action), 0.0, "{action}");
    }
    drop(early);
    bed.daemon.stop_ok();
}

#[test]
fn an_early_post_waits_for_the_finished() {
    let bed = Bed::start("http", "");
    let client = bed.warm_client(b"http/1.1");
    let post = format!("POST /headers HTTP/1.1\r\nHost: {NAME}\r\nContent-Length: 1\r\n\r\nx");
    let mut early = Early::connect(&client, bed.daemon.addr(), post.as_bytes());
    let response = early.response_after_finish(&bed);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("POST /headers"), "{response}");
    assert!(!response.contains("early-data"), "{response}");
    assert_eq!(bed.seen(), vec!["POST /headers early-data=-".to_owned()]);
    assert_eq!(bed.early_requests("held"), 1.0);
    assert_eq!(bed.early_requests("forwarded"), 0.0);
    drop(early);
    bed.daemon.stop_ok();
}

#[test]
fn an_early_post_gets_425_with_unsafe_reject() {
    let bed = Bed::start("http", "unsafe = \"reject\"");
    let client = bed.warm_client(b"http/1.1");
    let post = format!("POST /headers HTTP/1.1\r\nHost: {NAME}\r\nContent-Length: 1\r\n\r\nx");
    let mut early = Early::connect(&client, bed.daemon.addr(), post.as_bytes());
    let response = early.response(ANSWER);
    assert!(response.starts_with("HTTP/1.1 425"), "{response}");
    assert!(bed.seen().is_empty());
    assert_eq!(bed.early_requests("rejected"), 1.0);
    drop(early);
    bed.daemon.stop_ok();
}

#[test]
fn an_upstream_425_is_retried_once_after_the_finished() {
    let logs = TempDir::new("zero-rtt-http-log").expect("tempdir");
    let log = logs.path().join("access.log");
    let bed = Bed::start("http", &format!("[log]\naccess = {log:?}"));
    let client = bed.warm_client(b"http/1.1");
    let mut early = Early::connect(&client, bed.daemon.addr(), &get("/too-early", ""));
    eventually("the early request upstream", || !bed.seen().is_empty());
    let quiet = early.response(QUIET);
    assert!(quiet.is_empty(), "the 425 went to the client: {quiet}");
    early.finish();
    let response = early.response(ANSWER);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(
        bed.seen(),
        vec![
            "GET /too-early early-data=1".to_owned(),
            "GET /too-early early-data=-".to_owned()
        ]
    );
    assert_eq!(bed.early_requests("retried"), 1.0);
    // The access log line says the request was early and what was done with it (the warm-up's: not early).
    let mut lines: Vec<serde_json::Value> = Vec::new();
    eventually("the access log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        lines.len() == 2
    });
    assert_eq!(lines[0]["path"], "/warm", "{}", lines[0]);
    assert_eq!(lines[0]["early_request"], false, "{}", lines[0]);
    assert_eq!(
        lines[0]["early_action"],
        serde_json::Value::Null,
        "{}",
        lines[0]
    );
    let line = &lines[1];
    assert_eq!(line["path"], "/too-early", "{line}");
    assert_eq!(line["early_request"], true, "{line}");
    assert_eq!(line["early_action"], "retried", "{line}");
    assert_eq!(line["early_data"], true, "{line}");
    drop(early);
    bed.daemon.stop_ok();
}

/// A client's own `Early-Data` (an intermediary before us forwarded the request early): kept, and the request
/// waits for the Finished; the upstream's 425 is its to answer (passed through, never retried).
#[test]
fn a_clients_early_data_header_is_passed_through() {
    let bed = Bed::start("http", "");
    let client = bed.warm_client(b"http/1.1");
    let mut early = Early::connect(
        &client,
        bed.daemon.addr(),
        &get("/too-early", "Early-Data: 1\r\n"),
    );
    let response = early.response_after_finish(&bed);
    assert!(response.starts_with("HTTP/1.1 425"), "{response}");
    assert_eq!(bed.seen(), vec!["GET /too-early early-data=1".to_owned()]);
    assert_eq!(bed.early_requests("held"), 1.0);
    assert_eq!(bed.early_requests("retried"), 0.0);
    drop(early);
    bed.daemon.stop_ok();
}

/// h2: the preface, SETTINGS and a HEADERS frame in early data; the answer's DATA arrives before the Finished.
#[test]
fn an_early_h2_get_is_answered_before_the_finished() {
    let bed = Bed::start("http", "");
    let client = bed.warm_client(b"h2");
    let flight = h2_get("/headers");
    let mut early = Early::connect(&client, bed.daemon.addr(), &flight);
    early.read_until(ANSWER, |b| h2_body(b).1);
    let (body, ended) = h2_body(&early.plain);
    assert!(ended, "no whole answer before the Finished");
    let body = String::from_utf8_lossy(&body).into_owned();
    assert!(body.contains("early-data: 1"), "{body}");
    assert_eq!(bed.seen(), vec!["GET /headers early-data=1".to_owned()]);
    assert_eq!(bed.early_requests("forwarded"), 1.0);
    early.finish();
    drop(early);
    bed.daemon.stop_ok();
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("short").to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The DATA of stream 1 in the server's frames so far, and whether its END_STREAM came.
fn h2_body(mut buf: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    while buf.len() >= 9 {
        let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
        let (kind, flags) = (buf[3], buf[4]);
        let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
        let Some(payload) = buf.get(9..9 + len) else {
            break;
        };
        if kind == 0 && stream == 1 {
            body.extend_from_slice(payload);
            if flags & 1 != 0 {
                return (body, true);
            }
        }
        buf = &buf[9 + len..];
    }
    (body, false)
}

/// More early data than `max_size`: a ticket issued by an instance allowing 16 KiB, used on one sharing its
/// Redis that allows 64 bytes. rustls fails the handshake (unexpected_message alert) on the record that
/// overflows: counted `too_large` and as a failed handshake, and nothing reaches the upstream.
#[test]
fn too_much_early_data_fails_the_handshake_and_is_counted() {
    if !require_redis("too_much_early_data_fails_the_handshake_and_is_counted") {
        return;
    }
    let redis = RedisServer::start().expect("redis");
    let bed = Bed::start_with("http", "", Some(&redis.url()));
    let small = start_daemon(
        &bed.pki,
        &bed.keys,
        bed.upstream.addr,
        "http",
        "max_size = 64",
        Some(&redis.url()),
    );
    let client = bed.client(b"http/1.1");
    warm(&client, bed.daemon.addr(), b"http/1.1");
    eventually("the session in Redis", || {
        redis.count_keys("portcullis:0rtt:").unwrap_or(0) >= 1
    });
    let padding = "x".repeat(200);
    let request = get("/headers", &format!("X-Padding: {padding}\r\n"));
    let mut conn = connection(&client);
    let wrote = conn
        .early_data()
        .expect("a ticket allowing early data")
        .write(&request)
        .expect("early write");
    assert_eq!(wrote, request.len(), "the ticket allows 16 KiB");
    let mut tcp = TcpStream::connect(small.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    while conn.wants_write() {
        conn.write_tls(&mut tcp).expect("first flight");
    }
    // What rustls dictates: the server's flight, then a fatal alert, then the end of the connection.
    let mut failed = None;
    while failed.is_none() {
        match conn.read_tls(&mut tcp) {
            Ok(0) => break,
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    failed = Some(e);
                }
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(
        matches!(
            failed,
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnexpectedMessage
            ))
        ),
        "{failed:?}"
    );
    let metric = |name: &str, labels: &[(&str, &str)]| small.metric(name, labels).expect("metrics");
    eventually("too_large counted", || {
        metric("portcullis_early_data_total", &[("outcome", "too_large")]) == 1.0
    });
    eventually("the failed handshake counted", || {
        metric(
            "portcullis_handshakes_total",
            &[("result", "protocol_error")],
        ) == 1.0
    });
    assert_eq!(
        metric("portcullis_early_data_total", &[("outcome", "accepted")]),
        0.0
    );
    assert!(bed.seen().is_empty());
    drop(tcp);
    small.stop_ok();
    bed.daemon.stop_ok();
}

/// `tcp` mode keeps holding early data until the Finished: the upstream sees nothing before it.
#[test]
fn tcp_mode_never_forwards_early_data_before_the_finished() {
    let bed = Bed::start("tcp", "");
    let client = bed.warm_client(b"http/1.1");
    let mut early = Early::connect(&client, bed.daemon.addr(), &get("/headers", ""));
    let response = early.response_after_finish(&bed);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(!response.contains("early-data"), "{response}");
    assert_eq!(bed.seen(), vec!["GET /headers early-data=-".to_owned()]);
    drop(early);
    bed.daemon.stop_ok();
}

/// `openssl s_client -early_data` against an http listener: accepted, and answered.
#[test]
fn openssl_early_data_on_an_http_listener() {
    let bed = Bed::start("http", "");
    let dir = bed.tmp.path();
    let sess = dir.join("sess.pem");
    let out = s_client(&bed.pki.ca, bed.daemon.addr(), "-sess_out", &sess, None);
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    let req = dir.join("req.txt");
    std::fs::write(&req, get("/openssl", "Connection: close\r\n")).expect("write request");
    let out = s_client(
        &bed.pki.ca,
        bed.daemon.addr(),
        "-sess_in",
        &sess,
        Some(&req),
    );
    assert!(out.contains("Early data was accepted"), "{out}");
    assert!(out.contains("ok /openssl"), "{out}");
    assert_eq!(
        bed.upstream
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /openssl "))
            .count(),
        1
    );
    bed.daemon.stop_ok();
}

/// `openssl s_client` with a session file and, optionally, early data from a file; waits for the server to
/// close after the response.
fn s_client(ca: &Path, addr: SocketAddr, sess: &str, file: &Path, early: Option<&Path>) -> String {
    let request = get("/openssl-full", "Connection: close\r\n");
    let alpn = ["-alpn", "http/1.1"];
    s_client_session(ca, addr, NAME, &alpn, &[sess], file, early, &request, true)
}
