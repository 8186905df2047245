//! Zero-downtime upgrade under load (issue 20): a daemon with XDP in a namespace serves paced handshakes and
//! long-lived streaming connections while it gets 3 SIGHUP reloads with a new certificate and 3 binary upgrades
//! (`portcullis upgrade`). Nothing may fail: no refused or failed handshake, no broken stream, every handshake
//! begun after a reload was seen served with the new certificate; the XDP program is replaced on its link (a
//! new program id on the interface) and keeps enforcing the blocklist entry made before the upgrades.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use portcullis_tests::daemon::{Daemon, DaemonOptions, TempDir, binary};
use portcullis_tests::pki::Pki;
use portcullis_tests::privileged::require_root;
use portcullis_tests::testbed::XdpTestbed;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

/// Handshake threads, each paced at [`HANDSHAKE_INTERVAL`] (open loop: a slow handshake does not slow the pace).
const HANDSHAKERS: usize = 4;
const HANDSHAKE_INTERVAL: Duration = Duration::from_millis(100);
/// Long-lived connections, each sending a request every [`STREAM_INTERVAL`] and reading the whole answer.
const STREAMS: usize = 10;
const STREAM_INTERVAL: Duration = Duration::from_millis(100);

/// What the clients saw.
#[derive(Default)]
struct Tally {
    handshakes: AtomicU64,
    /// The TCP connect failed (refused, reset or timed out): a SYN that found no listener.
    refused: AtomicU64,
    /// The TLS handshake failed after the connect.
    failed: AtomicU64,
    /// A handshake begun after a reload was confirmed got an older certificate.
    stale_certificate: AtomicU64,
    /// Requests answered on the long-lived connections.
    stream_requests: AtomicU64,
    /// Long-lived connections reset, closed early or answered short.
    broken_streams: AtomicU64,
    /// The first few failures, for the assertion message.
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.errors.lock()
            && e.len() < 10
        {
            e.push(what);
        }
    }
}

/// The certificates served in turn: index `g` after the `g`-th reload.
struct Generations {
    ders: Vec<CertificateDer<'static>>,
    /// The newest generation confirmed served.
    confirmed: AtomicUsize,
}

impl Generations {
    fn of(&self, der: &CertificateDer<'_>) -> Option<usize> {
        self.ders.iter().position(|d| d.as_ref() == der.as_ref())
    }
}

fn client_config(pkis: &[Pki]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for pki in pkis {
        let ca = CertificateDer::from_pem_file(&pki.ca).expect("CA pem");
        roots.add(ca).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One TLS connection to `addr` from `source` (if given); the handshake done, the stream and its leaf.
fn connect(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> Result<
    (
        rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
        CertificateDer<'static>,
    ),
    (bool, String),
> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| (true, e.to_string()))?;
    if let Some(ip) = source {
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .map_err(|e| (true, format!("bind {ip}: {e}")))?;
    }
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(3))
        .map_err(|e| (true, format!("connect {addr}: {e}")))?;
    let mut tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| (false, e.to_string()))?;
    let name = ServerName::try_from("ecdsa.test").map_err(|e| (false, e.to_string()))?;
    let mut conn =
        rustls::ClientConnection::new(config.clone(), name).map_err(|e| (false, e.to_string()))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| (false, format!("handshake: {e}")))?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or((false, "no certificate".to_owned()))?;
    Ok((rustls::StreamOwned::new(conn, tcp), leaf))
}

/// Paced handshakes until `stop`.
fn handshaker(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    certs: &Generations,
    tally: &Tally,
    stop: &AtomicBool,
) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let due = certs.confirmed.load(Ordering::Acquire);
        tally.handshakes.fetch_add(1, Ordering::Relaxed);
        match connect(config, addr, None) {
            Ok((mut stream, leaf)) => {
                let got = certs.of(&leaf);
                if got.is_none_or(|g| g < due) {
                    tally.error(
                        &tally.stale_certificate,
                        format!(
                            "certificate generation {got:?}, {due} confirmed before the handshake"
                        ),
                    );
                }
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
            Err((true, e)) => tally.error(&tally.refused, e),
            Err((false, e)) => tally.error(&tally.failed, e),
        }
        next += HANDSHAKE_INTERVAL;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// One long-lived connection: a request every [`STREAM_INTERVAL`] until `stop`, each answer read whole.
fn streamer(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    tally: &Tally,
    stop: &AtomicBool,
) {
    let (mut stream, _) = match connect(config, addr, None) {
        Ok(s) => s,
        Err((_, e)) => return tally.error(&tally.broken_streams, format!("stream connect: {e}")),
    };
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = request(&mut stream) {
            return tally.error(&tally.broken_streams, format!("stream: {e}"));
        }
        tally.stream_requests.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(STREAM_INTERVAL);
    }
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

/// `GET /` over keep-alive; reads the head and exactly `Content-Length` bytes of body.
fn request(stream: &mut impl ReadWrite) -> Result<(), String> {
    stream
        .write_all(b"GET /upgrade HTTP/1.1\r\nHost: ecdsa.test\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err("closed before the answer's head".into()),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
        if head.len() > 16 * 1024 {
            return Err("answer head too long".into());
        }
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("answer {head:?}"));
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    let mut body = vec![0u8; length];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("body cut short: {e}"))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Installs generation `g`'s certificate where the config points.
/// Installs `pki`'s ECDSA pair as the served one, owned by `user` when given (the daemon reloads as that user).
fn install(pki: &Pki, cert: &Path, key: &Path, user: Option<u32>) {
    // Write-then-rename: a reload never reads half a file.
    let tmp_c = cert.with_extension("tmp");
    let tmp_k = key.with_extension("tmpk");
    std::fs::copy(&pki.ecdsa.0, &tmp_c).expect("copy cert");
    std::fs::copy(&pki.ecdsa.1, &tmp_k).expect("copy key");
    std::fs::set_permissions(&tmp_k, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod key");
    if let Some(id) = user {
        for f in [&tmp_c, &tmp_k] {
            nix::unistd::chown(
                f,
                Some(nix::unistd::Uid::from_raw(id)),
                Some(nix::unistd::Gid::from_raw(id)),
            )
            .expect("chown");
        }
    }
    std::fs::rename(&tmp_k, key).expect("rename key");
    std::fs::rename(&tmp_c, cert).expect("rename cert");
}

/// Handshakes from the client namespace until generation `g` is served (bounded), then marks it confirmed.
fn confirm(
    bed: &XdpTestbed,
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    certs: &Generations,
    g: usize,
) {
    let served = bed
        .client
        .run(|| {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok((_, leaf)) = connect(config, addr, None)
                    && certs.of(&leaf) == Some(g)
                {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
        .expect("client namespace");
    assert!(
        served,
        "certificate generation {g} never served after its reload"
    );
    certs.confirmed.store(g, Ordering::Release);
}

/// The XDP program id attached to `iface` in the server namespace.
fn xdp_prog_id(bed: &XdpTestbed) -> u64 {
    let out = bed
        .server
        .ip(&["-d", "link", "show", "dev", &bed.veth.b.name])
        .expect("ip link show");
    // `... prog/xdp id 123 name portcullis_xdp ...`
    out.split_whitespace()
        .skip_while(|w| !w.starts_with("prog/xdp"))
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no XDP program on {}:\n{out}", bed.veth.b.name))
}

/// `portcullis upgrade` in the server namespace; the new daemon's pid (from its `MAINPID=` notification).
fn upgrade(
    bed: &XdpTestbed,
    control: &Path,
    run_args: &[String],
    notify: &UnixDatagram,
    notify_path: &Path,
    log: &Path,
) -> i32 {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let status = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", bed.server.name()))
        .arg("--")
        .arg(binary())
        .arg("upgrade")
        .arg("--control-socket")
        .arg(control)
        .args(["--timeout", "60s", "--"])
        .args(run_args)
        .env("NOTIFY_SOCKET", notify_path)
        .env("PORTCULLIS_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .status()
        .expect("run portcullis upgrade");
    assert!(
        status.success(),
        "portcullis upgrade failed ({status}):\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let Ok(n) = notify.recv(&mut buf) else {
            continue;
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == "READY=1")
            && let Some(pid) = msg.lines().find_map(|l| l.strip_prefix("MAINPID="))
        {
            return pid.parse().expect("MAINPID");
        }
    }
    panic!("the new daemon sent no READY=1 with MAINPID");
}

/// The successors started (not children of the test: `portcullis upgrade` starts them), killed by PID when the
/// test ends, passing or not.
struct Successors(Vec<i32>);

impl Drop for Successors {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Sets its flag when dropped, also while unwinding.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
}

/// `nobody` on Debian; numeric, so the test does not depend on the passwd file.
const NOBODY: u32 = 65534;

#[test]
fn three_reloads_and_three_upgrades_under_load_lose_nothing() {
    if !require_root("three_reloads_and_three_upgrades_under_load_lose_nothing") {
        return;
    }
    reloads_and_upgrades_under_load("upgrade", None, |_| {});
}

/// README's privilege model: each daemon runs as `[process] user` with no capability once started, so the old
/// daemon hands over as that user (its control socket, the XDP link pins, its drain), and every successor,
/// started as root by `portcullis upgrade`, ends as the same user with the same empty capability sets.
#[test]
fn an_unprivileged_daemon_hands_over_to_successors_that_drop_to_the_same_user() {
    if !require_root("an_unprivileged_daemon_hands_over_to_successors_that_drop_to_the_same_user") {
        return;
    }
    reloads_and_upgrades_under_load("upgrade-user", Some(NOBODY), |pid| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let s = portcullis::process::Status::parse(&text);
        assert_eq!(s.uid, Some(NOBODY), "daemon {pid}: {s:?}");
        assert_eq!(s.gid, Some(NOBODY), "daemon {pid}: {s:?}");
        assert_eq!(s.cap_eff, Some(0), "daemon {pid} CapEff: {s:?}");
        assert_eq!(s.cap_prm, Some(0), "daemon {pid} CapPrm: {s:?}");
        assert_eq!(s.cap_bnd, Some(0), "daemon {pid} CapBnd: {s:?}");
        assert_eq!(s.no_new_privs, Some(true), "daemon {pid}: {s:?}");
    });
}

/// Paced handshakes and streams while the daemon gets 3 reloads with a new certificate and 3 upgrades; the
/// daemons run as `user` (`[process] user` and group) when given, else as root. `check` is called with each
/// daemon's pid once it serves. Panics on any loss.
fn reloads_and_upgrades_under_load(tag: &str, user: Option<u32>, check: impl Fn(i32)) {
    let bed = XdpTestbed::builder(tag)
        .extra_client_addrs(1)
        .build()
        .expect("testbed");
    let dir = TempDir::new("upgrade").expect("tempdir");
    let pkis: Vec<Pki> = (0..4)
        .map(|g| {
            let d = dir.path().join(format!("pki{g}"));
            std::fs::create_dir_all(&d).expect("pki dir");
            Pki::generate(&d).expect("pki")
        })
        .collect();
    let certs = Generations {
        ders: pkis
            .iter()
            .map(|p| CertificateDer::from_pem_file(&p.ecdsa.0).expect("cert pem"))
            .collect(),
        confirmed: AtomicUsize::new(0),
    };
    let (cert, key) = (dir.path().join("served.pem"), dir.path().join("served.key"));
    install(&pkis[0], &cert, &key, user);
    // In a directory the daemon creates and gives to its user (as systemd's `RuntimeDirectory=`), so an
    // unprivileged successor can move its socket there.
    let control = dir.path().join("run/control.sock");
    let process = user
        .map(|id| format!("\n[process]\nuser = \"{id}\"\ngroup = \"{id}\"\n"))
        .unwrap_or_default();
    let config_toml = format!(
        "workers = 2\n[[tls.certificates]]\ncert = {cert:?}\nkey = {key:?}\n\n[[listeners]]\naddress = \"{addr}:0\"\n\n\
         [metrics]\naddress = \"127.0.0.1:0\"\n\n[shutdown]\ndrain_timeout = \"120s\"\n\n\
         [xdp]\ninterfaces = [\"{iface}\"]\npin_dir = {pins:?}\n{process}",
        addr = bed.veth.b.addr,
        iface = bed.veth.b.name,
        pins = bed.pin_dir.path(),
    );
    let first = Daemon::start(DaemonOptions {
        config_toml: Some(config_toml),
        netns: Some(bed.server.name().to_owned()),
        args: vec!["--control-socket".into(), control.display().to_string()],
        ..Default::default()
    })
    .expect("daemon starts");
    let addr = first.addr();
    let run_args: Vec<String> = vec![
        "--state-dir".into(),
        first.dir().join("state").display().to_string(),
        "--config".into(),
        first.dir().join("portcullis.toml").display().to_string(),
        "--control-socket".into(),
        control.display().to_string(),
    ];
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    // Successors announce after dropping to `user`, as to systemd's world-writable notify socket.
    std::fs::set_permissions(
        &notify_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let log = dir.path().join("successors.log");
    let config = client_config(&pkis);

    // A blocklist entry made before the upgrades: the blocked source must stay blocked by every successor.
    let blocked = bed.extra_client_addrs[0];
    bed.cli(&["block", "add", &format!("{blocked}/32")]);
    let prog_before = xdp_prog_id(&bed);

    let tally = Tally::default();
    let stop = AtomicBool::new(false);
    let mut pids = vec![first.pid().map(|p| p as i32).expect("pid")];
    check(pids[0]);
    let mut successors = Successors(Vec::new());
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            bed.client
                .run(|| {
                    std::thread::scope(|inner| {
                        for _ in 0..HANDSHAKERS {
                            inner.spawn(|| handshaker(&config, addr, &certs, &tally, &stop));
                        }
                        for _ in 0..STREAMS {
                            inner.spawn(|| streamer(&config, addr, &tally, &stop));
                        }
                    });
                })
                .expect("client namespace");
        });
        // A failed assertion below stops the load, so the scope can join its threads and the panic surfaces.
        let _stop_on_panic = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_secs(2));
        for (round, pki) in pkis.iter().enumerate().skip(1) {
            install(pki, &cert, &key, user);
            let current = *pids.last().expect("a daemon");
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(current), Signal::SIGHUP)
                .expect("SIGHUP");
            confirm(&bed, &config, addr, &certs, round);
            std::thread::sleep(Duration::from_secs(1));
            let pid = upgrade(&bed, &control, &run_args, &notify, &notify_path, &log);
            assert_ne!(pid, current, "the upgrade must start a new process");
            pids.push(pid);
            successors.0.push(pid);
            check(pid);
            std::thread::sleep(Duration::from_secs(2));
        }
        stop.store(true, Ordering::Relaxed);
        load.join().expect("load threads");
    });

    let log_text = || {
        format!(
            "first daemon:\n{}\nsuccessors:\n{}",
            first.stderr(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    let errors = tally.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let handshakes = tally.handshakes.load(Ordering::Relaxed);
    let requests = tally.stream_requests.load(Ordering::Relaxed);
    eprintln!(
        "upgrade under load: {handshakes} handshakes, {requests} stream requests on {STREAMS} connections, \
         refused {}, failed {}, stale certificate {}, broken streams {}",
        tally.refused.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.stale_certificate.load(Ordering::Relaxed),
        tally.broken_streams.load(Ordering::Relaxed),
    );
    assert!(
        handshakes > 100,
        "too few handshakes to judge: {handshakes}"
    );
    assert!(
        requests > 500,
        "too few stream requests to judge: {requests}"
    );
    for (name, counter) in [
        ("refused connects", &tally.refused),
        ("failed handshakes", &tally.failed),
        ("stale certificates", &tally.stale_certificate),
        ("broken streams", &tally.broken_streams),
    ] {
        assert_eq!(
            counter.load(Ordering::Relaxed),
            0,
            "{name}; first errors: {errors:#?}\n{}",
            log_text()
        );
    }

    // XDP: a new program on the same link, still enforcing the blocklist of before.
    let prog_after = xdp_prog_id(&bed);
    assert_ne!(
        prog_before,
        prog_after,
        "the XDP program was not replaced\n{}",
        log_text()
    );
    assert!(
        bed.cli(&["block", "list"]).contains(&blocked.to_string()),
        "the blocklist entry is gone"
    );
    let (from_blocked, from_allowed) = bed
        .client
        .run(|| {
            (
                connect(&config, addr, Some(IpAddr::V4(blocked))).is_ok(),
                connect(&config, addr, None).is_ok(),
            )
        })
        .expect("client namespace");
    assert!(
        !from_blocked,
        "the blocked source connected after the upgrades"
    );
    assert!(
        from_allowed,
        "an allowed source could not connect after the upgrades"
    );

    // The old daemons drained (their streams closed) and exited; the last one serves until stopped.
    let last = *pids.last().expect("a daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids[..pids.len() - 1].iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let lingering: Vec<i32> = pids[..pids.len() - 1]
        .iter()
        .copied()
        .filter(|&p| alive(p))
        .collect();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(last), Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(last) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &p in lingering.iter().chain(std::iter::once(&last)) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
    }
    assert!(
        lingering.is_empty(),
        "old daemons {lingering:?} did not exit after their drain\n{}",
        log_text()
    );
    assert!(
        !alive(last),
        "the last daemon did not stop on SIGTERM\n{}",
        log_text()
    );
    drop(first);
}
