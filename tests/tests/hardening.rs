//! Hardening of the data path against clients that hold resources: stalled closes, connection caps, timeouts.
//! Each test starts its own daemon on port 0 and a test upstream on a loopback port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portcullis_tests::clients::rustls_establish;
use portcullis_tests::daemon::{Daemon, DaemonOptions, TempDir};
use portcullis_tests::pki::Pki;

/// What the daemon may take to close a connection whose client stopped reading (its close flush timeout is
/// 2 s), with room for a busy host.
const CLOSE_LIMIT: Duration = Duration::from_secs(6);

/// An upstream that streams bytes at each connection as fast as the daemon takes them (at most 1 GiB) and
/// reports when the daemon closes the connection.
struct StreamingUpstream {
    addr: SocketAddr,
    written: Arc<AtomicU64>,
    closed: mpsc::Receiver<Instant>,
}

impl StreamingUpstream {
    fn start() -> StreamingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let written = Arc::new(AtomicU64::new(0));
        let (tx, closed) = mpsc::channel();
        let counter = written.clone();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut reader = s.try_clone().expect("clone");
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
                let _ = tx.send(Instant::now());
            });
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..16_384 {
                match s.write(&chunk) {
                    Ok(n) => counter.fetch_add(n as u64, Ordering::Relaxed),
                    Err(_) => return,
                };
            }
        });
        StreamingUpstream {
            addr,
            written,
            closed,
        }
    }

    /// Waits until the daemon stops taking bytes (the client's and the daemon's buffers are full).
    fn wait_stalled(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = u64::MAX;
        let mut still = 0;
        while still < 3 {
            assert!(Instant::now() < deadline, "the relay never stalled");
            std::thread::sleep(Duration::from_millis(100));
            let now = self.written.load(Ordering::Relaxed);
            still = if now == last && now > 0 { still + 1 } else { 0 };
            last = now;
        }
    }
}

/// A TCP connection to `addr` with a small receive buffer, so a client that does not read stalls the server
/// quickly.
fn connect_small(addr: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    s.connect(&addr.into()).expect("connect");
    s.into()
}

fn start(pki: &Pki, more: &str) -> Daemon {
    Daemon::start(DaemonOptions {
        config_toml: Some(format!("{}\n{more}", pki.tls_section(""))),
        ..Default::default()
    })
    .expect("daemon starts")
}

/// Polls `/metrics` until `name` reads `want` (bounded); returns the last value.
fn wait_metric(d: &Daemon, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = d.metric(name, labels).expect("metrics");
        if v == want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client that stops reading while the upstream streams, then sends a corrupt record: the alert the server
/// owes it cannot be delivered, and the connection and its upstream socket must still close within the close
/// flush timeout, long before `idle_timeout`.
#[test]
fn a_corrupt_record_from_a_client_that_stopped_reading_closes_within_the_flush_timeout() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let upstream = StreamingUpstream::start();
    let d = start(
        &pki,
        &format!(
            "[upstream]\nbackends = [\"{}\"]\nidle_timeout = \"5m\"\n",
            upstream.addr
        ),
    );
    let mut tls = rustls_establish(&pki, connect_small(d.addr()));
    tls.write_all(b"start streaming\n").expect("first bytes");
    tls.flush().expect("flush");
    upstream.wait_stalled();

    // An application_data record that cannot decrypt: a protocol error, answered with an alert.
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    record.extend_from_slice(&[0xa5; 0x20]);
    tls.sock
        .write_all(&record)
        .expect("send the corrupt record");
    let sent = Instant::now();
    let closed = upstream
        .closed
        .recv_timeout(CLOSE_LIMIT)
        .unwrap_or_else(|_| {
            panic!(
                "the upstream socket was still open {CLOSE_LIMIT:?} after the client's protocol error; stderr:\n{}",
                d.stderr()
            )
        });
    assert!(closed.saturating_duration_since(sent) < CLOSE_LIMIT);
    assert_eq!(
        wait_metric(&d, "portcullis_connections_active", &[], 0.0),
        0.0,
        "the client connection is still open"
    );
    d.stop_ok();
}

/// Reads until the server closes (EOF or reset); returns how long that took, or `None` if it stayed open for
/// `limit`.
fn closed_within(mut s: &TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(start.elapsed());
            }
            Err(_) => return None,
        }
    }
}

/// Each cap: connections up to it are held open, the next one is reset at once and counted with its reason.
#[test]
fn connections_over_a_cap_are_reset_and_counted_by_reason() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    for (limits, held, reason) in [
        ("max_connections = 2", 2, "process_limit"),
        ("max_connections_per_worker = 2", 2, "worker_limit"),
        ("max_connections_per_source = 1", 1, "source_limit"),
    ] {
        let d = Daemon::start(DaemonOptions {
            config_toml: Some(format!(
                "workers = 1\n{}\n[limits]\n{limits}\n",
                pki.tls_section("")
            )),
            ..Default::default()
        })
        .expect("daemon starts");
        // Each sends the first byte of a ClientHello's record, as a client does at once: a listener defers a
        // connection until its first bytes (`listeners[].defer_accept`), and the cap must count them in order.
        let start = || {
            let mut s = TcpStream::connect(d.addr()).expect("connect");
            s.write_all(&[22]).expect("first byte");
            s
        };
        let open: Vec<TcpStream> = (0..held).map(|_| start()).collect();
        let over = start();
        assert!(
            closed_within(&over, Duration::from_secs(5)).is_some(),
            "{limits}: the connection over the cap was not closed"
        );
        for s in &open {
            assert!(
                closed_within(s, Duration::from_millis(200)).is_none(),
                "{limits}: a connection under the cap was closed"
            );
        }
        assert_eq!(
            d.metric(
                "portcullis_connections_refused_total",
                &[("reason", reason)]
            )
            .expect("metrics"),
            1.0,
            "{limits}"
        );
        assert_eq!(
            d.metric("portcullis_connections_refused_total", &[])
                .expect("metrics"),
            1.0,
            "{limits}: another reason counted too"
        );
        // Gone before the stop, which would otherwise wait for their handshakes to time out.
        drop((open, over));
        d.stop_ok();
    }
}

/// A client that handshakes and sends nothing is closed at `first_byte_timeout`, long before `idle_timeout`;
/// accepted client sockets carry TCP keepalive, set on the listening sockets (the kernel copies it to each
/// connection), and a reload that changes `limits.tcp_keepalive` reaches connections accepted after it.
#[test]
fn a_silent_client_is_closed_at_the_first_byte_timeout_and_sockets_keep_alive() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let d = start(
        &pki,
        "[upstream]\nidle_timeout = \"5m\"\n[limits]\nfirst_byte_timeout = \"2s\"\ntcp_keepalive = \"45s\"\n",
    );
    let tls = rustls_establish(&pki, TcpStream::connect(d.addr()).expect("connect"));
    let established = Instant::now();
    let first = keepalive_timer(&tls.sock);
    assert!(
        first > Duration::from_secs(40) && first <= Duration::from_secs(45),
        "keepalive timer {first:?}, configured 45s"
    );
    let _ = closed_within(&tls.sock, Duration::from_secs(10)).expect("closed");
    let took = established.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(6),
        "closed after {took:?}"
    );
    assert_eq!(
        wait_metric(
            &d,
            "portcullis_connections_closed_total",
            &[("cause", "first_byte_timeout")],
            1.0
        ),
        1.0
    );

    let config = d.dir().join("portcullis.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let changed = text.replace("tcp_keepalive = \"45s\"", "tcp_keepalive = \"100s\"");
    assert_ne!(changed, text, "tcp_keepalive is in the daemon's config");
    std::fs::write(&config, &changed).expect("write");
    d.signal(nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    assert_eq!(
        wait_metric(
            &d,
            "portcullis_config_reloads_total",
            &[("result", "ok")],
            1.0
        ),
        1.0,
        "reload not counted ok: {}",
        d.stderr()
    );
    // The worker puts the new value on its listener when it next runs, just after the reload is counted: a
    // connection the kernel completed in between has the old one (`Limits::update`). A few tries, then it must show.
    let mut timers = Vec::new();
    for _ in 0..10 {
        let tls = rustls_establish(&pki, TcpStream::connect(d.addr()).expect("connect"));
        timers.push(keepalive_timer(&tls.sock));
        if timers.last() > Some(&Duration::from_secs(95)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let reloaded = timers.last().copied().unwrap_or_default();
    assert!(
        reloaded > Duration::from_secs(95) && reloaded <= Duration::from_secs(100),
        "keepalive timers {timers:?} after the reload to 100s"
    );
    d.stop_ok();
}

/// The keepalive timer of the daemon's end of `client`'s connection (`ss -o`: `timer:(keepalive,1min39sec,0)`),
/// read once nothing is in flight (until then it shows the retransmission timer), within 1.5 s.
fn keepalive_timer(client: &TcpStream) -> Duration {
    let local = client.local_addr().expect("local");
    let started = Instant::now();
    let mut ss = String::new();
    while started.elapsed() < Duration::from_millis(1500) {
        let out = std::process::Command::new("ss")
            .args(["-tnoH", "state", "established"])
            .arg(format!("( dport = :{} )", local.port()))
            .output()
            .expect("run ss (iproute2)");
        ss = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(left) = ss
            .split("timer:(keepalive,")
            .nth(1)
            .and_then(|t| t.split(',').next())
        {
            return parse_ss_time(left).unwrap_or_else(|| panic!("unreadable timer in {ss}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no keepalive timer: {ss}");
}

/// `ss`'s timer format: `1min39sec`, `44sec`, `990ms`.
fn parse_ss_time(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest.get(..digits)?.parse().ok()?;
        let unit_end = rest
            .get(digits..)?
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| digits + i);
        total += match rest.get(digits..unit_end)? {
            "min" => Duration::from_secs(60 * n),
            "sec" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            _ => return None,
        };
        rest = rest.get(unit_end..)?;
    }
    Some(total)
}

#[test]
fn a_connection_is_closed_at_its_maximum_lifetime() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let upstream = StreamingUpstream::start();
    let d = start(
        &pki,
        &format!(
            "[upstream]\nbackends = [\"{}\"]\nidle_timeout = \"5m\"\n[limits]\nmax_connection_lifetime = \"1s\"\n",
            upstream.addr
        ),
    );
    let started = Instant::now();
    let mut tls = rustls_establish(&pki, TcpStream::connect(d.addr()).expect("connect"));
    tls.write_all(b"start streaming\n").expect("first bytes");
    tls.flush().expect("flush");
    // The client reads everything: the connection is busy, never idle.
    let took = closed_within(&tls.sock, Duration::from_secs(10)).expect("closed");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {took:?}"
    );
    upstream
        .closed
        .recv_timeout(Duration::from_secs(5))
        .expect("the upstream socket closed too");
    assert_eq!(
        wait_metric(
            &d,
            "portcullis_connections_closed_total",
            &[("cause", "lifetime")],
            1.0
        ),
        1.0
    );
    d.stop_ok();
}

/// A TLS private key that group or others may read, or that belongs to neither root nor the daemon's user,
/// stops the start with exit code 2 and a message naming the file and what is wrong.
#[test]
fn exposed_or_foreign_private_keys_are_refused_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let (cert, key) = &pki.ecdsa;
    let start = || {
        std::process::Command::new(portcullis_tests::daemon::binary())
            .args(["run", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .env("PORTCULLIS_LOG", "error")
            .output()
            .expect("run portcullis")
    };
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = start();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ecdsa.test.key") && stderr.contains("mode 0640"),
        "{stderr}"
    );

    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if nix::unistd::Uid::effective().is_root() {
        nix::unistd::chown(key, Some(nix::unistd::Uid::from_raw(4242)), None).expect("chown");
        let out = start();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("ecdsa.test.key") && stderr.contains("owned by uid 4242"),
            "{stderr}"
        );
    } else {
        portcullis_tests::privileged::require_root("foreign key owner (chown)");
    }
}

/// `listeners[].defer_accept` (default 1 s, `TCP_DEFER_ACCEPT`): a connection reaches a worker with its first
/// bytes, not at the TCP handshake, so one that connects, stays silent and resets never costs a worker anything;
/// `"0s"` hands it over at the handshake.
#[test]
fn a_connection_reaches_a_worker_with_its_first_bytes_unless_defer_accept_is_off() {
    let dir = TempDir::new("pki").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    for (option, deferred) in [("", true), ("defer_accept = \"0s\"\n", false)] {
        let d = Daemon::start(DaemonOptions {
            config_toml: Some(format!(
                "workers = 1\n[[listeners]]\naddress = \"127.0.0.1:0\"\n{option}{}",
                pki.tls_section("")
            )),
            ..Default::default()
        })
        .expect("daemon starts");
        let accepted = "portcullis_worker_connections_accepted_total";
        let mut silent = TcpStream::connect(d.addr()).expect("connect");
        if deferred {
            // The TCP handshake is complete on the client's side; the worker must not see it for the deferral.
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(
                d.metric(accepted, &[]).expect("metrics"),
                0.0,
                "a silent connection was handed to a worker"
            );
            silent.write_all(&[22]).expect("first byte");
        }
        assert_eq!(
            wait_metric(&d, accepted, &[], 1.0),
            1.0,
            "{option:?}: the connection never reached a worker"
        );
        drop(silent);
        d.stop_ok();
    }
}
