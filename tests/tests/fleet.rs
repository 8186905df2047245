//! Fleet-wide session resumption against the real binary: several daemons sharing one ticket key directory,
//! the per-process anti-pattern beside it, bad tickets, bad key directories, readiness and key activation.
//! Clients: rustls, `openssl s_client -sess_out/-sess_in`, and hand-built TLS 1.2 ClientHellos carrying
//! tickets the test sealed itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use portcullis::tickets::{format, key::TicketKey, keyfile};
use portcullis_tests::daemon::{Daemon, DaemonOptions, TempDir, binary, http_get};
use portcullis_tests::load;
use portcullis_tests::pki::Pki;

const DEMO_BODY: &str = "hello from the portcullis demo upstream";

struct Fleet {
    _tmp: TempDir,
    pki: Pki,
    keys: PathBuf,
}

impl Fleet {
    /// A PKI and a key directory initialised with `portcullis keys init`.
    fn new() -> Fleet {
        let tmp = TempDir::new("fleet").expect("tempdir");
        let pki = Pki::generate(tmp.path()).expect("pki");
        let keys = tmp.path().join("ticket-keys");
        keys_cmd(&["init", "--dir"], &keys);
        Fleet {
            _tmp: tmp,
            pki,
            keys,
        }
    }

    fn start(&self, tls_extra: &str, args: &[&str]) -> Daemon {
        Daemon::start(DaemonOptions {
            config_toml: Some(self.pki.tls_section(tls_extra)),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        })
        .expect("daemon starts")
    }

    /// A daemon in `fleet` mode on the shared directory, through the `--ticket-keys` flag.
    fn start_fleet(&self) -> Daemon {
        let dir = self.keys.display().to_string();
        self.start("", &["--ticket-keys", &dir, "--workers", "1"])
    }
}

fn keys_cmd(args: &[&str], dir: &Path) -> String {
    let out = Command::new(binary())
        .arg("keys")
        .args(args)
        .arg(dir)
        .output()
        .expect("run portcullis keys");
    assert!(
        out.status.success(),
        "portcullis keys {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rustls_client(pki: &Pki, tls12_only: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&pki.ca).expect("read ca");
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("ca pem")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = if tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    let mut config = builder
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One request through `addr`; returns how the handshake went.
fn rustls_get(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> rustls::HandshakeKind {
    let server_name = rustls::pki_types::ServerName::try_from("ecdsa.test").expect("name");
    let conn = rustls::ClientConnection::new(config.clone(), server_name).expect("client conn");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: ecdsa.test\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    tls.read_to_string(&mut body).expect("response");
    assert!(body.contains(DEMO_BODY), "{body}");
    tls.conn.handshake_kind().expect("handshake finished")
}

/// `openssl s_client` with a request on stdin (so TLS 1.3 tickets arrive before it exits); returns its output.
fn s_client(pki: &Pki, addr: SocketAddr, args: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(&pki.ca)
        .args([
            "-verify_return_error",
            "-servername",
            "ecdsa.test",
            "-ign_eof",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GET / HTTP/1.0\r\nHost: ecdsa.test\r\n\r\n")
        .expect("write request");
    let out = child.wait_with_output().expect("openssl output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl s_client {args:?}:\n{text}");
    text
}

fn metric(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    d.metric(name, labels).expect("metrics")
}

fn rejections(d: &Daemon, cause: &str) -> f64 {
    metric(d, "portcullis_ticket_rejections_total", &[("cause", cause)])
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
fn a_ticket_from_any_instance_resumes_on_the_other_two() {
    let fleet = Fleet::new();
    let daemons = [
        fleet.start_fleet(),
        fleet.start_fleet(),
        fleet.start_fleet(),
    ];
    for d in &daemons {
        assert_eq!(d.admin_get("/readyz").expect("readyz").0, 200);
    }
    // rustls, TLS 1.3 and TLS 1.2: a full handshake on instance i, then resumption on the other two.
    for tls12 in [false, true] {
        for i in 0..3 {
            let client = rustls_client(&fleet.pki, tls12);
            assert_eq!(
                rustls_get(&client, daemons[i].addr()),
                rustls::HandshakeKind::Full
            );
            for j in (0..3).filter(|j| *j != i) {
                assert_eq!(
                    rustls_get(&client, daemons[j].addr()),
                    rustls::HandshakeKind::Resumed,
                    "tls12={tls12}: ticket from instance {i} on instance {j}"
                );
            }
        }
    }
    // openssl, TLS 1.3 and TLS 1.2: -sess_out on one instance, -sess_in on the others.
    let tmp = TempDir::new("sess").expect("tempdir");
    for (version, tag) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let sess = tmp.path().join(format!("{tag}.pem"));
        let sess = sess.to_str().expect("utf-8 path");
        let out = s_client(&fleet.pki, daemons[0].addr(), &[version, "-sess_out", sess]);
        assert!(out.contains(&format!("New, {tag},")), "{out}");
        for d in &daemons[1..] {
            let out = s_client(&fleet.pki, d.addr(), &[version, "-sess_in", sess]);
            assert!(
                out.contains(&format!("Reused, {tag},")),
                "{tag} session from instance 0 not resumed:\n{out}"
            );
        }
    }
    let mut resumed = 0.0;
    for d in &daemons {
        for cause in ["unknown_key", "expired", "auth_failed", "malformed"] {
            assert_eq!(rejections(d, cause), 0.0, "{cause}");
        }
        assert!(metric(d, "portcullis_tickets_issued_total", &[]) > 0.0);
        assert!(metric(d, "portcullis_ticket_key_age_seconds_count", &[]) > 0.0);
        assert_eq!(
            metric(d, "portcullis_ticket_keys", &[("state", "encrypting")]),
            1.0
        );
        assert_eq!(
            metric(
                d,
                "portcullis_ticket_key_reloads_total",
                &[("result", "ok")]
            ),
            1.0
        );
        resumed += metric(
            d,
            "portcullis_handshakes_total",
            &[("mode", "resumed"), ("result", "ok")],
        );
    }
    // 2 versions x 3 issuers x 2 other instances (rustls) + 2 versions x 2 instances (openssl).
    assert_eq!(resumed, 16.0);
    for d in daemons {
        d.stop_ok();
    }
}

#[test]
fn per_process_tickets_do_not_resume_elsewhere_and_count_unknown_key() {
    let fleet = Fleet::new();
    let a = fleet.start("tickets = \"per-process\"", &[]);
    let b = fleet.start("tickets = \"per-process\"", &[]);
    for tls12 in [false, true] {
        let client = rustls_client(&fleet.pki, tls12);
        assert_eq!(rustls_get(&client, a.addr()), rustls::HandshakeKind::Full);
        // The other instance cannot open the ticket: full handshake, never an error.
        assert_eq!(rustls_get(&client, b.addr()), rustls::HandshakeKind::Full);
    }
    assert_eq!(rejections(&b, "unknown_key"), 2.0);
    // The issuing instance still resumes its own tickets.
    let client = rustls_client(&fleet.pki, false);
    assert_eq!(rustls_get(&client, a.addr()), rustls::HandshakeKind::Full);
    assert_eq!(
        rustls_get(&client, a.addr()),
        rustls::HandshakeKind::Resumed
    );
    assert_eq!(rejections(&a, "unknown_key"), 0.0);
    // Under load across both instances, the load generator sees the collapse the fleet tests rule out.
    let tmp = TempDir::new("load").expect("tempdir");
    let json = tmp.path().join("report.json");
    let load = start_load(&[a.addr(), b.addr()], 2, &json);
    let (_resumed, rejected, _full, _failed) = finish_load(load, &json);
    assert!(
        rejected > 10,
        "per-process keys: only {rejected} refused resumptions"
    );
    assert!(rejections(&a, "unknown_key") + rejections(&b, "unknown_key") >= rejected as f64);
    a.stop_ok();
    b.stop_ok();
}

/// A TLS 1.2 ClientHello for `ecdsa.test` offering `ticket` (RFC 5077) with a 32-byte session ID.
fn client_hello_with_ticket(ticket: &[u8]) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&u16::try_from(data.len()).expect("len").to_be_bytes());
        out.extend_from_slice(data);
    }
    let name = b"ecdsa.test";
    let mut sni = vec![0, (name.len() + 3) as u8, 0, 0, name.len() as u8];
    sni.extend_from_slice(name);
    let mut exts = Vec::new();
    ext(&mut exts, 0, &sni);
    ext(&mut exts, 10, &[0, 4, 0, 0x1d, 0, 0x17]);
    ext(&mut exts, 11, &[1, 0]);
    ext(&mut exts, 13, &[0, 6, 4, 3, 8, 4, 4, 1]);
    ext(&mut exts, 23, &[]);
    ext(&mut exts, 35, ticket);
    ext(&mut exts, 0xff01, &[0]);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x11; 32]);
    body.push(32);
    body.extend_from_slice(&[0x22; 32]);
    body.extend_from_slice(&[0, 4, 0xc0, 0x2b, 0xc0, 0x2f, 1, 0]);
    body.extend_from_slice(&u16::try_from(exts.len()).expect("len").to_be_bytes());
    body.extend_from_slice(&exts);
    let len = u32::try_from(body.len()).expect("len").to_be_bytes();
    let mut hs = vec![1, len[1], len[2], len[3]];
    hs.extend_from_slice(&body);
    let mut record = vec![22, 3, 1];
    record.extend_from_slice(&u16::try_from(hs.len()).expect("len").to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// Sends `hello` and returns the handshake message types of the server's first flight (until
/// ServerHelloDone, a ChangeCipherSpec, an alert, or the end of the stream).
fn server_flight(addr: SocketAddr, hello: &[u8]) -> (Vec<u8>, Option<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(hello).expect("write hello");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut handshake = Vec::new();
    let mut other_record = None;
    loop {
        let mut types = Vec::new();
        let mut at = 0;
        handshake.clear();
        // Records: type, version, length.
        while let Some(h) = buf.get(at..at + 5) {
            let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
            let Some(payload) = buf.get(at + 5..at + 5 + len) else {
                break;
            };
            match h[0] {
                22 => handshake.extend_from_slice(payload),
                t => other_record = other_record.or(Some(t)),
            }
            at += 5 + len;
        }
        let mut m = 0;
        while let Some(h) = handshake.get(m..m + 4) {
            types.push(h[0]);
            m += 4 + (usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]));
        }
        if types.contains(&14) || other_record.is_some() {
            return (types, other_record);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (types, other_record),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn bad_tickets_get_a_full_handshake_and_their_cause() {
    let fleet = Fleet::new();
    let d = fleet.start_fleet();
    let keys = keyfile::read_dir(&fleet.keys).expect("read keys");
    let key = keys.first().expect("one key");
    let rng = ring::rand::SystemRandom::new();
    let now = SystemTime::now();
    let good = format::seal(key, b"not a session", now, &rng).expect("seal");
    let mut tampered = good.clone();
    if let Some(b) = tampered.last_mut() {
        *b ^= 0x80;
    }
    let foreign =
        format::seal(&TicketKey::random(true).expect("rng"), b"state", now, &rng).expect("seal");
    // Older than the default 6 h lifetime.
    let expired =
        format::seal(key, b"state", now - Duration::from_secs(7 * 3600), &rng).expect("seal");
    let cases: [(&str, &[u8]); 4] = [
        ("auth_failed", &tampered),
        ("malformed", &good[..20]),
        ("unknown_key", &foreign),
        ("expired", &expired),
    ];
    for (cause, ticket) in cases {
        let (types, other) = server_flight(d.addr(), &client_hello_with_ticket(ticket));
        // ServerHello, Certificate, ServerKeyExchange, ServerHelloDone: a full handshake, no alert.
        assert_eq!(other, None, "{cause}: unexpected non-handshake record");
        assert_eq!(types, vec![2, 11, 12, 14], "{cause}");
        assert_eq!(rejections(&d, cause), 1.0, "{cause}");
    }
    // A ticket that opens but holds no session state: also a full handshake, and no rejection counted.
    let (types, _) = server_flight(d.addr(), &client_hello_with_ticket(&good));
    assert_eq!(types, vec![2, 11, 12, 14]);
    let total: f64 = ["auth_failed", "malformed", "unknown_key", "expired"]
        .iter()
        .map(|c| rejections(&d, c))
        .sum();
    assert_eq!(total, 4.0);
    // Those clients hung up mid-handshake; the daemon is fine and still resumes real tickets.
    let client = rustls_client(&fleet.pki, true);
    assert_eq!(rustls_get(&client, d.addr()), rustls::HandshakeKind::Full);
    assert_eq!(
        rustls_get(&client, d.addr()),
        rustls::HandshakeKind::Resumed
    );
    d.stop_ok();
}

/// One change to the key directory.
type Step<'a> = Box<dyn Fn() + 'a>;

#[test]
fn bad_key_dir_changes_keep_the_last_good_set() {
    let fleet = Fleet::new();
    let d = fleet.start_fleet();
    let client = rustls_client(&fleet.pki, true);
    assert_eq!(rustls_get(&client, d.addr()), rustls::HandshakeKind::Full);
    let errors = || {
        metric(
            &d,
            "portcullis_ticket_key_reloads_total",
            &[("result", "error")],
        )
    };
    let good_files: Vec<PathBuf> = std::fs::read_dir(&fleet.keys)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(good_files.len(), 1, "keys init writes one key");
    use std::os::unix::fs::PermissionsExt;
    let chmod = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    let bad_size = fleet.keys.join("truncated.key");
    let cases: [(&str, Step, Step); 3] = [
        (
            "47-byte key file",
            Box::new(|| {
                std::fs::write(&bad_size, [7u8; 47]).expect("write");
                chmod(&bad_size, 0o600);
            }),
            Box::new(|| std::fs::remove_file(&bad_size).expect("rm")),
        ),
        (
            "world-readable key file",
            Box::new(|| chmod(&good_files[0], 0o644)),
            Box::new(|| chmod(&good_files[0], 0o600)),
        ),
        (
            "no key valid for encryption",
            Box::new(|| {
                // Only a pending key left, as if the current one had been deleted by mistake (hidden
                // names are ignored, so the old file waits under one).
                std::fs::rename(&good_files[0], fleet.keys.join("..hidden")).expect("hide");
                keys_cmd(&["rotate", "--lead", "1h", "--dir"], &fleet.keys);
            }),
            Box::new(|| {
                for e in std::fs::read_dir(&fleet.keys).expect("ls") {
                    let p = e.expect("entry").path();
                    if p.extension().is_some_and(|x| x == "toml") {
                        std::fs::remove_file(p).expect("rm");
                    }
                }
                std::fs::rename(fleet.keys.join("..hidden"), &good_files[0]).expect("restore");
            }),
        ),
    ];
    for (n, (what, break_it, fix_it)) in cases.iter().enumerate() {
        let before = errors();
        break_it();
        eventually(&format!("a reload error for: {what}"), || errors() > before);
        // Old keys still in use: the earlier session resumes, readiness unchanged.
        assert_eq!(
            rustls_get(&client, d.addr()),
            rustls::HandshakeKind::Resumed,
            "{what}"
        );
        assert_eq!(d.admin_get("/readyz").expect("readyz").0, 200, "{what}");
        assert!(
            d.stderr().contains("keeping the last good key set"),
            "{what}"
        );
        let oks = metric(
            &d,
            "portcullis_ticket_key_reloads_total",
            &[("result", "ok")],
        );
        fix_it();
        eventually(&format!("a good reload after fixing: {what}"), || {
            metric(
                &d,
                "portcullis_ticket_key_reloads_total",
                &[("result", "ok")],
            ) > oks
        });
        assert_eq!(errors(), (n + 1) as f64, "{what}: counted once");
    }
    assert!(d.stderr().contains("has mode 0644"));
    assert!(d.stderr().contains("is 47 bytes"));
    assert!(d.stderr().contains("no key is valid for encryption"));
    d.stop_ok();
}

#[test]
fn readyz_waits_for_a_valid_key_set() {
    let tmp = TempDir::new("unready").expect("tempdir");
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys).expect("mkdir");
    let log = tmp.path().join("stderr.log");
    let mut child = Command::new(binary())
        .args(["run", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        // One worker: no steering program to pin (this daemon is started by hand, without `Daemon`'s own pin
        // directory, and is killed at the end).
        .args(["--workers", "1"])
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg("--ticket-keys")
        .arg(&keys)
        .env_remove("NOTIFY_SOCKET")
        .env("PORTCULLIS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn daemon");
    let mut metrics: Option<SocketAddr> = None;
    eventually("the daemon to log its metrics address", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        metrics = text
            .lines()
            .find(|l| l.contains("waiting for a valid ticket key set"))
            .and_then(|l| l.split("metrics=").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        metrics.is_some()
    });
    let metrics = metrics.expect("address");
    assert_eq!(http_get(metrics, "/readyz").expect("readyz").0, 503);
    keys_cmd(&["init", "--dir"], &keys);
    eventually("/readyz to turn 200 once keys exist", || {
        http_get(metrics, "/readyz").map(|r| r.0).unwrap_or(0) == 200
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("portcullis ready"), "{text}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_staged_key_takes_over_at_its_activation_moment() {
    let fleet = Fleet::new();
    let d = fleet.start_fleet();
    let client = rustls_client(&fleet.pki, true);
    assert_eq!(rustls_get(&client, d.addr()), rustls::HandshakeKind::Full);
    // The lead leaves the watcher (one poll a second) room to load the key while it is still pending, even when
    // the other tests of this file load the machine: with 2 s, one CI run saw it only once it encrypted.
    let listed = keys_cmd(&["rotate", "--lead", "6s", "--dir"], &fleet.keys);
    assert!(listed.contains("encrypts from"), "{listed}");
    eventually("the staged key to be loaded as pending", || {
        metric(&d, "portcullis_ticket_keys", &[("state", "pending")]) == 1.0
    });
    assert!(metric(&d, "portcullis_ticket_key_next_activation_seconds", &[]) <= 6.0);
    // No reload happens at the activation moment: the window passes and the new key encrypts.
    eventually("the staged key to start encrypting", || {
        metric(&d, "portcullis_ticket_keys", &[("state", "decrypt_only")]) == 1.0
    });
    assert_eq!(
        metric(&d, "portcullis_ticket_keys", &[("state", "encrypting")]),
        1.0
    );
    // The ticket sealed with the old key still resumes; the new ticket is sealed with the new key.
    assert_eq!(
        rustls_get(&client, d.addr()),
        rustls::HandshakeKind::Resumed
    );
    let list = keys_cmd(&["list", "--dir"], &fleet.keys);
    assert!(
        list.contains("decrypt_only") && list.contains("encrypting"),
        "{list}"
    );
    assert_eq!(rejections(&d, "unknown_key"), 0.0);
    d.stop_ok();
}

#[test]
fn tls12_session_ids_resume_from_the_cache() {
    let fleet = Fleet::new();
    let d = fleet.start("tickets = \"off\"", &[]);
    let tmp = TempDir::new("sess").expect("tempdir");
    let sess = tmp.path().join("s.pem");
    let sess = sess.to_str().expect("utf-8 path");
    let out = s_client(&fleet.pki, d.addr(), &["-tls1_2", "-sess_out", sess]);
    assert!(out.contains("New, TLSv1.2,"), "{out}");
    let out = s_client(&fleet.pki, d.addr(), &["-tls1_2", "-sess_in", sess]);
    assert!(out.contains("Reused, TLSv1.2,"), "{out}");
    assert_eq!(metric(&d, "portcullis_session_cache_hits_total", &[]), 1.0);
    assert_eq!(metric(&d, "portcullis_tickets_issued_total", &[]), 0.0);
    d.stop_ok();
}

/// Starts `portcullis-load` resuming TLS 1.3 and TLS 1.2 ticket sessions round robin over `targets`, one
/// shared session store (so a ticket from one instance is offered to the next), `seconds` long.
fn start_load(targets: &[SocketAddr], seconds: u32, json: &Path) -> std::process::Child {
    let mut cmd = Command::new(load::binary());
    cmd.args(["run", "--quiet", "--no-preflight", "--sni", "ecdsa.test"])
        .args(["--mix", "resume13:1,resume12-ticket:1", "--rate", "40"])
        .args(["--duration", &seconds.to_string(), "--timeout", "5"])
        .args(["--http", "/", "--json"])
        .arg(json);
    for t in targets {
        cmd.arg("--target").arg(t.to_string());
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}): build it with `cargo build -p portcullis-load`",
                load::binary().display()
            )
        })
}

/// Waits for the load generator and returns its totals over all kinds: (resumed, resumption offers the server
/// refused, full handshakes, failed connections).
fn finish_load(child: std::process::Child, json: &Path) -> (u64, u64, u64, u64) {
    let out = child.wait_with_output().expect("load generator");
    assert!(
        out.status.success(),
        "portcullis-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(json).expect("load report");
    let report: serde_json::Value = serde_json::from_str(&text).expect("load report is JSON");
    let kinds = report["kinds"].as_object().expect("report.kinds");
    let sum = |f: &dyn Fn(&serde_json::Value) -> Option<u64>| -> u64 {
        kinds.values().filter_map(f).sum()
    };
    (
        sum(&|k| k["resumed"].as_u64()),
        sum(&|k| k["fallback"]["rejected"].as_u64()),
        sum(&|k| k["full"].as_u64()),
        sum(&|k| {
            Some(
                k["errors"]
                    .as_object()?
                    .values()
                    .filter_map(|v| v.as_u64())
                    .sum(),
            )
        }),
    )
}

#[test]
fn rotation_under_load_loses_no_resumption() {
    let fleet = Fleet::new();
    let daemons = [
        fleet.start_fleet(),
        fleet.start_fleet(),
        fleet.start_fleet(),
    ];
    let targets: Vec<SocketAddr> = daemons.iter().map(Daemon::addr).collect();
    let tmp = TempDir::new("load").expect("tempdir");
    let json = tmp.path().join("report.json");
    let load = start_load(&targets, 8, &json);
    // Stage the next key while clients resume across the three instances; it activates 3 s later, mid-run.
    keys_cmd(&["rotate", "--lead", "3s", "--dir"], &fleet.keys);
    let (resumed, rejected, _full, _failed) = finish_load(load, &json);
    assert!(resumed > 100, "only {resumed} resumptions");
    assert_eq!(rejected, 0, "resumptions refused during the rotation");
    for d in &daemons {
        // The activation moment passed on every instance during the run.
        assert_eq!(
            metric(d, "portcullis_ticket_keys", &[("state", "decrypt_only")]),
            1.0
        );
        for cause in ["unknown_key", "expired", "auth_failed", "malformed"] {
            assert_eq!(rejections(d, cause), 0.0, "{cause}");
        }
        assert!(
            metric(
                d,
                "portcullis_handshakes_total",
                &[("mode", "resumed"), ("result", "ok")]
            ) > 0.0
        );
    }
    for d in daemons {
        d.stop_ok();
    }
}

#[test]
fn rolling_restart_under_load_loses_no_resumption_to_keys() {
    let fleet = Fleet::new();
    let mut daemons: Vec<Daemon> = (0..3).map(|_| fleet.start_fleet()).collect();
    let targets: Vec<SocketAddr> = daemons.iter().map(Daemon::addr).collect();
    let tmp = TempDir::new("load").expect("tempdir");
    let json = tmp.path().join("report.json");
    let load = start_load(&targets, 9, &json);
    let dir = fleet.keys.display().to_string();
    // Restart the instances one at a time on their own ports, as a rolling deploy does.
    for i in 0..3 {
        std::thread::sleep(Duration::from_secs(2));
        let old = daemons.remove(i);
        let addr = old.addr().to_string();
        old.stop_ok();
        let new = fleet.start(
            "",
            &["--listen", &addr, "--ticket-keys", &dir, "--workers", "1"],
        );
        daemons.insert(i, new);
    }
    let (resumed, rejected, _full, failed) = finish_load(load, &json);
    assert!(resumed > 100, "only {resumed} resumptions");
    // Connections refused while an instance was down are failures, not resumption losses; a refused
    // ticket would be.
    assert_eq!(
        rejected, 0,
        "resumptions refused across the restarts ({failed} connection failures)"
    );
    for d in &daemons {
        for cause in ["unknown_key", "expired", "auth_failed", "malformed"] {
            assert_eq!(rejections(d, cause), 0.0, "{cause}");
        }
    }
    for d in daemons {
        d.stop_ok();
    }
}

fn write_key(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).expect("write key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
fn nginx_key_files_are_shared_across_instances() {
    let fleet = Fleet::new();
    // Replace the portcullis key with two nginx-style files: the first (by name) encrypts, the second decrypts.
    for e in std::fs::read_dir(&fleet.keys).expect("ls") {
        std::fs::remove_file(e.expect("entry").path()).expect("rm");
    }
    let rng = ring::rand::SystemRandom::new();
    use ring::rand::SecureRandom;
    let (mut current, mut previous) = ([0u8; 80], [0u8; 48]);
    rng.fill(&mut current).expect("rng");
    rng.fill(&mut previous).expect("rng");
    write_key(&fleet.keys.join("a-current.key"), &current);
    write_key(&fleet.keys.join("b-previous.key"), &previous);
    let a = fleet.start_fleet();
    let b = fleet.start_fleet();
    for tls12 in [false, true] {
        let client = rustls_client(&fleet.pki, tls12);
        assert_eq!(rustls_get(&client, a.addr()), rustls::HandshakeKind::Full);
        assert_eq!(
            rustls_get(&client, b.addr()),
            rustls::HandshakeKind::Resumed
        );
    }
    assert_eq!(
        metric(&a, "portcullis_ticket_keys", &[("state", "encrypting")]),
        1.0
    );
    assert_eq!(
        metric(&a, "portcullis_ticket_keys", &[("state", "decrypt_only")]),
        1.0
    );
    let list = keys_cmd(&["list", "--dir"], &fleet.keys);
    assert!(
        list.contains(&portcullis::tickets::key::hex(&current[..16])),
        "{list}"
    );
    assert!(
        !list.contains(&portcullis::tickets::key::hex(&current[16..])),
        "key bytes listed:\n{list}"
    );
    a.stop_ok();
    b.stop_ok();
}

#[test]
fn keys_prune_removes_only_expired_keys_and_list_shows_states() {
    let fleet = Fleet::new();
    keys_cmd(&["rotate", "--lead", "1h", "--dir"], &fleet.keys);
    // A key whose decrypt window has passed, written by hand in the documented format.
    write_key(
        &fleet.keys.join("old.toml"),
        b"version = 1\nname = \"00112233445566778899aabbccddeeff\"\nsecret = \"0000000000000000000000000000000000000000000000000000000000000000\"\nencrypt_from = \"2020-01-01T00:00:00Z\"\ndecrypt_until = \"2020-01-02T00:00:00Z\"\n",
    );
    let list = keys_cmd(&["list", "--dir"], &fleet.keys);
    for state in ["encrypting", "pending", "expired"] {
        assert!(list.contains(state), "{state}:\n{list}");
    }
    assert!(
        !list.contains("secret") && !list.contains("0000000000000000000000000000000000000000"),
        "{list}"
    );
    let out = keys_cmd(&["prune", "--dir"], &fleet.keys);
    assert!(out.contains("1 expired key(s) removed"), "{out}");
    assert!(!fleet.keys.join("old.toml").exists());
    let left = std::fs::read_dir(&fleet.keys).expect("ls").count();
    assert_eq!(left, 2, "the encrypting and the pending key stay");
    // A daemon accepts what is left.
    let d = fleet.start_fleet();
    assert_eq!(
        metric(&d, "portcullis_ticket_keys", &[("state", "pending")]),
        1.0
    );
    d.stop_ok();
}
