//! The real binary against real clients: curl, openssl s_client, and a rustls client.
//! Each test starts its own daemon on port 0 and checks `/metrics` for exactly the counts it caused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_tests::daemon::{Daemon, DaemonOptions, TempDir, binary};
use portcullis_tests::pki::Pki;

const DEMO_BODY: &str = "hello from the portcullis demo upstream";

fn start_with(pki: &Pki, tls_extra: &str, more: &str) -> Daemon {
    let config = format!("{}\n{more}", pki.tls_section(tls_extra));
    Daemon::start(DaemonOptions {
        config_toml: Some(config),
        ..Default::default()
    })
    .expect("daemon starts")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn curl(pki: &Pki, addr: SocketAddr, name: &str, tls: &[&str]) -> String {
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http1.1", "--cacert"])
        .arg(&pki.ca)
        .arg("--resolve")
        .arg(format!("{name}:{}:{}", addr.port(), addr.ip()))
        .args(tls)
        .arg(format!("https://{name}:{}/", addr.port())));
    assert!(
        out.status.success(),
        "curl {tls:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s_client(pki: &Pki, addr: SocketAddr, args: &[&str]) -> String {
    let out = run(Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(&pki.ca)
        .args(["-verify_return_error"])
        .args(args)
        .stdin(std::process::Stdio::null()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "openssl s_client {args:?} failed:\n{text}"
    );
    text
}

#[test]
fn curl_and_openssl_negotiate_versions_certificates_and_alpn() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let d = start_with(&pki, r#"alpn = ["h2", "http/1.1"]"#, "");
    let addr = d.addr();

    // curl through the proxy to the demo upstream, TLS 1.3 and 1.2, both certificates by SNI.
    for name in ["ecdsa.test", "rsa.test"] {
        assert!(curl(&pki, addr, name, &["--tlsv1.3"]).contains(DEMO_BODY));
        assert!(curl(&pki, addr, name, &["--tlsv1.2", "--tls-max", "1.2"]).contains(DEMO_BODY));
    }
    // openssl: versions, the certificate chosen by SNI (the key size tells them apart), ALPN.
    let out = s_client(
        &pki,
        addr,
        &["-tls1_3", "-servername", "ecdsa.test", "-alpn", "h2"],
    );
    assert!(out.contains("New, TLSv1.3,"), "{out}");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    assert!(
        out.contains("Server public key is 256 bit"),
        "ECDSA P-256 certificate expected:\n{out}"
    );
    let out = s_client(
        &pki,
        addr,
        &["-tls1_2", "-servername", "rsa.test", "-alpn", "http/1.1"],
    );
    assert!(out.contains("New, TLSv1.2,"), "{out}");
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    assert!(
        out.contains("Server public key is 2048 bit"),
        "RSA-2048 certificate expected:\n{out}"
    );
    let out = s_client(&pki, addr, &["-tls1_3", "-servername", "rsa.test"]);
    assert!(out.contains("Server public key is 2048 bit"), "{out}");
    assert!(out.contains("New, TLSv1.3,"), "{out}");

    // 2 curl + 2 openssl handshakes per version.
    let tls13 = d
        .metric(
            "portcullis_handshakes_total",
            &[("version", "tls1.3"), ("result", "ok")],
        )
        .expect("metrics");
    let tls12 = d
        .metric(
            "portcullis_handshakes_total",
            &[("version", "tls1.2"), ("result", "ok")],
        )
        .expect("metrics");
    assert_eq!(
        (tls13, tls12),
        (4.0, 3.0),
        "{}",
        d.metrics_text().unwrap_or_default()
    );
    let failures = d
        .metric("portcullis_handshakes_total", &[("version", "none")])
        .expect("metrics");
    assert_eq!(failures, 0.0);
    assert_eq!(
        d.metric("portcullis_connections_accepted_total", &[])
            .expect("metrics"),
        7.0
    );
    assert!(
        d.metric(
            "portcullis_forwarded_bytes_total",
            &[("direction", "upstream_to_client")]
        )
        .expect("m")
            > 0.0
    );
    promtool_accepts(&d.metrics_text().expect("metrics"));
    assert_eq!(
        d.metric("portcullis_handshake_duration_seconds_count", &[])
            .expect("m"),
        7.0
    );
    d.stop_ok();
}

#[test]
fn every_group_openssl_accepts_by_default_but_x448_and_ffdhe_is_negotiated() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let d = start_with(&pki, "", "");
    let addr = d.addr();
    // A client that offers one group only: nothing else to fall back to (P-521 is portcullis' own addition
    // to rustls' groups, `tls/p521.rs`). TLS 1.2 against the RSA certificate: there a client's groups also
    // bound the curve of an ECDSA certificate (RFC 8422 §5.1), and openssl enforces it.
    for (group, shown) in [
        ("X25519", "X25519"),
        ("P-256", "prime256v1"),
        ("P-384", "secp384r1"),
        ("P-521", "secp521r1"),
    ] {
        for (version, name, expected) in [
            ("-tls1_3", "ecdsa.test", "New, TLSv1.3,"),
            ("-tls1_2", "rsa.test", "New, TLSv1.2,"),
        ] {
            let out = s_client(
                &pki,
                addr,
                &[version, "-groups", group, "-servername", name],
            );
            assert!(out.contains(expected), "{group} {version}:\n{out}");
            assert!(
                out.contains(&format!("Server Temp Key: ECDH, {shown}"))
                    || out.contains(&format!("Server Temp Key: {shown}")),
                "{group} {version}: the group used is not the one offered:\n{out}"
            );
        }
    }
    d.stop_ok();
}

/// `promtool check metrics` (Debian package `prometheus`, installed by `cargo xtask setup`) must find nothing.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (run `cargo xtask setup`)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rustls_client(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&pki.ca).expect("read ca");
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("ca pem")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A rustls connection to `ecdsa.test` at `addr` with the handshake finished and nothing sent yet.
fn establish(
    pki: &Pki,
    addr: SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let server_name = rustls::pki_types::ServerName::try_from("ecdsa.test").expect("name");
    let conn = rustls::ClientConnection::new(rustls_client(pki), server_name).expect("conn");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("handshake");
    }
    tls
}

fn rustls_get(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> (String, Option<rustls::HandshakeKind>) {
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
    let conn = rustls::ClientConnection::new(config.clone(), server_name).expect("client conn");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("request");
    let mut body = String::new();
    tls.read_to_string(&mut body).expect("response");
    (body, tls.conn.handshake_kind())
}

#[test]
fn rustls_client_gets_through_and_resumes() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let d = start_with(&pki, "", "");
    let config = rustls_client(&pki);
    let (body, kind) = rustls_get(&config, d.addr(), "ecdsa.test");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains(DEMO_BODY), "{body}");
    assert_eq!(kind, Some(rustls::HandshakeKind::Full));
    // The same client offers the ticket it got: a resumed handshake.
    let (body, kind) = rustls_get(&config, d.addr(), "ecdsa.test");
    assert!(body.contains(DEMO_BODY), "{body}");
    assert_eq!(kind, Some(rustls::HandshakeKind::Resumed));
    assert_eq!(
        d.metric(
            "portcullis_handshakes_total",
            &[("mode", "full"), ("result", "ok")]
        )
        .expect("m"),
        1.0
    );
    assert_eq!(
        d.metric(
            "portcullis_handshakes_total",
            &[("mode", "resumed"), ("result", "ok")]
        )
        .expect("m"),
        1.0
    );
    assert_eq!(
        d.metric("portcullis_client_hello_offers_total", &[("offer", "psk")])
            .expect("m"),
        1.0
    );
    assert_eq!(
        d.metric("portcullis_client_hello_offers_total", &[("offer", "sni")])
            .expect("m"),
        2.0
    );
    // Both handshakes passed every stage. The kernel's receive stamp (`socket`) needs the listener's
    // SO_TIMESTAMPNS on the accepted sockets; the kernel turns stamping on with deferred work after the daemon
    // asks, so only the first handshake may lack it.
    for stage in ["read", "queue", "crypto", "wake", "flight", "client"] {
        assert_eq!(
            d.metric(
                "portcullis_handshake_stage_seconds_count",
                &[("stage", stage)]
            )
            .expect("m"),
            2.0,
            "{stage}"
        );
    }
    let stamped = d
        .metric(
            "portcullis_handshake_stage_seconds_count",
            &[("stage", "socket")],
        )
        .expect("m");
    assert!((1.0..=2.0).contains(&stamped), "{stamped} stamped");
    d.stop_ok();
}

#[test]
fn recent_client_hello_fingerprints_are_listed_for_operators() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let d = start_with(&pki, "", "");
    let (code, empty) = d.admin_get("/fingerprints").expect("GET /fingerprints");
    assert_eq!(code, 200, "{empty}");
    // A full handshake, then a resumed one: the resumption adds pre_shared_key, so two fingerprints, once each.
    let config = rustls_client(&pki);
    for _ in 0..2 {
        let (body, _) = rustls_get(&config, d.addr(), "ecdsa.test");
        assert!(body.contains(DEMO_BODY), "{body}");
    }
    let (code, listed) = d.admin_get("/fingerprints").expect("GET /fingerprints");
    assert_eq!(code, 200, "{listed}");
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{listed}");
    for row in &rows {
        // last window + this window: the two may straddle a window's end.
        let count: u64 =
            row[0].parse::<u64>().expect("count") + row[1].parse::<u64>().expect("count");
        assert_eq!(count, 1, "{listed}");
        // Both variants in this version's format, as `portcullis xdp block-fingerprint add` takes them.
        assert!(
            row[2..4]
                .iter()
                .all(|h| h.len() == 16 && h.starts_with("02")),
            "{listed}"
        );
    }
    assert_ne!(rows[0][2], rows[1][2], "{listed}");
    d.stop_ok();
}

/// Reads until the server closes; returns how long that took. Bounded: fails after `limit`.
fn wait_closed(mut s: &TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("server did not close within {limit:?}: {e}"),
        }
    }
}

#[test]
fn garbage_instead_of_client_hello_is_closed_and_counted() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let d = start_with(&pki, "", "");
    let mut s = TcpStream::connect(d.addr()).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .expect("write");
    wait_closed(&s, Duration::from_secs(10));
    // A TLS-looking record with a broken handshake inside.
    let mut s = TcpStream::connect(d.addr()).expect("connect");
    s.write_all(&[22, 3, 1, 0, 8, 1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])
        .expect("write");
    wait_closed(&s, Duration::from_secs(10));
    let text = d.metrics_text().expect("metrics");
    let count = |result| {
        portcullis_tests::daemon::metric_value(
            &text,
            "portcullis_handshakes_total",
            &[("result", result)],
        )
    };
    assert_eq!(count("not_tls"), 1.0, "{text}");
    assert_eq!(count("protocol_error"), 1.0, "{text}");
    assert_eq!(count("ok"), 0.0, "{text}");
    d.stop_ok();
}

#[test]
fn stalled_client_is_cut_at_the_handshake_timeout() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let d = start_with(&pki, r#"handshake_timeout = "300ms""#, "");
    // Silent after connect.
    let s = TcpStream::connect(d.addr()).expect("connect");
    let took = wait_closed(&s, Duration::from_secs(10));
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the timeout"
    );
    // Half a record header, then silence.
    let mut s = TcpStream::connect(d.addr()).expect("connect");
    s.write_all(&[22, 3, 1]).expect("write");
    wait_closed(&s, Duration::from_secs(10));
    assert_eq!(
        d.metric("portcullis_handshakes_total", &[("result", "timeout")])
            .expect("m"),
        2.0
    );
    assert_eq!(
        d.metric("portcullis_connections_active", &[]).expect("m"),
        0.0
    );
    d.stop_ok();
}

#[test]
fn proxy_protocol_v2_carries_client_sni_and_alpn_upstream() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let d = start_with(&pki, "", "[upstream]\nproxy_protocol = true\n");
    let body = curl(&pki, d.addr(), "rsa.test", &[]);
    assert!(body.contains(DEMO_BODY), "{body}");
    assert!(body.contains("client=127.0.0.1:"), "{body}");
    assert!(body.contains("sni=rsa.test"), "{body}");
    assert!(body.contains("alpn=http/1.1"), "{body}");
    d.stop_ok();
}

#[test]
fn upstream_connect_failure_is_counted() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    // A port that was free a moment ago: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let d = start_with(&pki, "", &format!("[upstream]\nbackends = [\"{dead}\"]\n"));
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&pki.ca)
        .arg("--resolve")
        .arg(format!("ecdsa.test:{}:127.0.0.1", d.addr().port()))
        .arg(format!("https://ecdsa.test:{}/", d.addr().port())));
    assert!(!out.status.success(), "curl should get no response");
    let n = d
        .metric(
            "portcullis_upstream_connect_errors_total",
            &[("upstream", &dead.to_string()), ("cause", "refused")],
        )
        .expect("m");
    assert_eq!(n, 1.0);
    d.stop_ok();
}

#[test]
fn sigterm_stops_accepting_drains_open_connections_and_exits_0() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let mut d = start_with(&pki, "", "[shutdown]\ndrain_timeout = \"20s\"\n");
    let addr = d.addr();
    // An established connection with its request not yet sent.
    let mut tls = establish(&pki, addr);
    assert_eq!(d.admin_get("/readyz").expect("readyz").0, 200);

    d.signal(nix::sys::signal::Signal::SIGTERM).expect("signal");
    // Draining: not ready any more, and still running because of our open connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.admin_get("/readyz").map(|r| r.0).unwrap_or(0) == 200 {
        assert!(Instant::now() < deadline, "/readyz still 200 after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        d.exited().expect("status").is_none(),
        "daemon exited with a connection open"
    );
    // New connections are refused once every worker has closed its socket (each sees the phase change on its
    // own thread, so poll, bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The open connection still completes its request.
    tls.write_all(b"GET / HTTP/1.1\r\nHost: ecdsa.test\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    tls.read_to_string(&mut body).expect("response");
    assert!(body.contains(DEMO_BODY), "{body}");
    drop(tls);
    let status = d
        .stop_with(nix::sys::signal::Signal::SIGCONT)
        .expect("exit");
    assert!(status.success(), "{status}");
}

#[test]
fn bad_config_and_unreadable_certificates_exit_2_naming_the_problem() {
    let dir = TempDir::new("cfg").expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[tls]\nhandshake_timeot = \"1s\"\n").expect("write");
    let out = run(Command::new(binary()).arg("check-config").arg(&bad));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("handshake_timeot"),
        "{out:?}"
    );

    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "[tls]\nversions = []\n").expect("write");
    let out = run(Command::new(binary())
        .args(["run", "--config"])
        .arg(&invalid));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tls.versions"),
        "{out:?}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[[listeners]]\naddress = \"127.0.0.1:0\"\n").expect("write");
    let out = run(Command::new(binary()).arg("check-config").arg(&good));
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // The documented example config stays valid.
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/portcullis.toml");
    let out = run(Command::new(binary()).arg("check-config").arg(&example));
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let missing = dir.path().join("no-such-cert.pem");
    let out = run(Command::new(binary())
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--cert",
        ])
        .arg(&missing)
        .arg("--key")
        .arg(&missing));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-cert.pem"),
        "{out:?}"
    );
}

#[test]
fn idle_established_connection_is_closed_after_idle_timeout() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let d = start_with(&pki, "", "[upstream]\nidle_timeout = \"300ms\"\n");
    let mut tls = establish(&pki, d.addr());
    let start = Instant::now();
    // Silent client: the server must end the connection on its own (EOF, possibly without close_notify).
    let mut buf = [0u8; 64];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("server did not close an idle connection: {e}"),
        }
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    d.stop_ok();
}

/// Handshakes, then closes without sending a byte.
fn handshake_and_leave(pki: &Pki, addr: SocketAddr) {
    let mut tls = establish(pki, addr);
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    // Wait for the server's side of the close, so the daemon has finished with the connection.
    let mut buf = [0u8; 64];
    while matches!(tls.read(&mut buf), Ok(n) if n > 0) {}
}

#[test]
fn upstream_is_connected_on_the_first_client_byte_only() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let errors = |d: &Daemon| {
        d.metric("portcullis_upstream_connect_errors_total", &[])
            .expect("m")
    };
    // Lazy (default): a client that handshakes and leaves never causes an upstream connect.
    let d = start_with(&pki, "", &format!("[upstream]\nbackends = [\"{dead}\"]\n"));
    handshake_and_leave(&pki, d.addr());
    assert_eq!(errors(&d), 0.0);
    d.stop_ok();
    // Eager: the same client costs an upstream connect (here: a refused one).
    let d = start_with(
        &pki,
        "",
        &format!("[upstream]\nbackends = [\"{dead}\"]\nlazy_connect = false\n"),
    );
    handshake_and_leave(&pki, d.addr());
    let deadline = Instant::now() + Duration::from_secs(10);
    while errors(&d) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no upstream connect with lazy_connect = false"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.stop_ok();
}

/// The request travels in the same TCP segment as the client's Finished, so the server has it decrypted the
/// moment the handshake completes: it must not wait for more bytes before forwarding it.
#[test]
fn request_in_the_same_segment_as_finished_is_forwarded() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let d = start_with(&pki, "", "");
    let server_name = rustls::pki_types::ServerName::try_from("ecdsa.test").expect("name");
    let mut conn = rustls::ClientConnection::new(rustls_client(&pki), server_name).expect("conn");
    // Queued now, sent by rustls right after the client Finished.
    conn.writer()
        .write_all(b"GET / HTTP/1.1\r\nHost: ecdsa.test\r\nConnection: close\r\n\r\n")
        .expect("queue request");
    let mut sock = TcpStream::connect(d.addr()).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut response = Vec::new();
    loop {
        // Everything rustls has to send goes out in one write: Finished and request share a segment.
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("encode");
        }
        if !out.is_empty() {
            sock.write_all(&out).expect("send");
        }
        match conn.read_tls(&mut sock) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("no response (the server waited for more bytes?): {e}"),
        }
        conn.process_new_packets().expect("tls");
        let _ = conn.reader().read_to_end(&mut response);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.contains(DEMO_BODY), "{text}");
    d.stop_ok();
}
