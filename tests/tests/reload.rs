//! Reload on SIGHUP and on a certificate file change: a new certificate is served to new handshakes; a bad one
//! keeps the last good; new connections get a new upstream while open ones continue; a listen address change is
//! refused by name; an OCSP response is stapled. The daemon goes on serving and counts each outcome.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use portcullis_tests::clients;
use portcullis_tests::daemon::{Daemon, DaemonOptions, TempDir};
use portcullis_tests::http_upstream::HttpUpstream;
use portcullis_tests::netns::NetNsGuard;
use portcullis_tests::pki::Pki;
use portcullis_tests::privileged::require_root;
use portcullis_tests::testbed::XdpTestbed;

/// The size of the server's public key in one handshake (`openssl s_client`): 256 for the ECDSA test
/// certificate, 2048 for the RSA one.
fn served_key_bits(addr: SocketAddr) -> u32 {
    served_key_bits_in(None, addr, false).0
}

/// [`served_key_bits`] from `ns`, asking for an OCSP staple when `status`; also openssl's whole output.
fn served_key_bits_in(ns: Option<&NetNsGuard>, addr: SocketAddr, status: bool) -> (u32, String) {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "10",
        "openssl",
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        "edge.test",
    ]);
    if status {
        cmd.arg("-status");
    }
    if let Some(ns) = ns {
        ns.enter_on_spawn(&mut cmd).expect("enter netns");
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let bits = text
        .lines()
        .find_map(|l| l.strip_prefix("Server public key is "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no handshake:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (bits, text)
}

fn install(
    from: &(std::path::PathBuf, std::path::PathBuf),
    cert: &std::path::Path,
    key: &std::path::Path,
) {
    std::fs::copy(&from.0, cert).expect("copy cert");
    std::fs::copy(&from.1, key).expect("copy key");
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// Polls `/metrics` until `portcullis_config_reloads_total{result}` reaches `n` (bounded).
fn wait_reloads(d: &Daemon, result: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = d
            .metric("portcullis_config_reloads_total", &[("result", result)])
            .expect("metrics");
        if v >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {result} reload counted; stderr:\n{}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_serves_a_new_certificate_and_a_bad_one_keeps_the_last_good() {
    let dir = TempDir::new("reload").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let (cert, key) = (dir.path().join("served.pem"), dir.path().join("served.key"));
    install(&pki.ecdsa, &cert, &key);
    let d = Daemon::start(DaemonOptions {
        config_toml: Some(format!(
            "[[tls.certificates]]\ncert = {cert:?}\nkey = {key:?}\n"
        )),
        ..Default::default()
    })
    .expect("daemon starts");
    assert_eq!(served_key_bits(d.addr()), 256);
    let not_after = d
        .metric(
            "portcullis_certificate_not_after_seconds",
            &[("name", "ecdsa.test")],
        )
        .expect("metrics");
    assert!(not_after > 1.7e9, "notAfter {not_after}");

    // A new certificate: served to the next handshake.
    install(&pki.rsa, &cert, &key);
    d.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_reloads(&d, "ok", 1.0);
    assert_eq!(
        served_key_bits(d.addr()),
        2048,
        "the old certificate after reload"
    );
    assert!(
        d.metric(
            "portcullis_certificate_not_after_seconds",
            &[("name", "rsa.test")]
        )
        .expect("metrics")
            > 1.7e9
    );
    assert!(
        d.metric(
            "portcullis_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .expect("metrics")
            > 1.7e9
    );

    // A key that does not parse: nothing changes, the daemon keeps serving the last good certificate.
    std::fs::write(&key, "not a key").expect("write");
    d.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_reloads(&d, "failed", 1.0);
    assert_eq!(
        served_key_bits(d.addr()),
        2048,
        "a bad key replaced the good one"
    );

    // A change that needs a restart is refused by name; the certificates still apply.
    install(&pki.ecdsa, &cert, &key);
    let config = d.dir().join("portcullis.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("workers = 7\n{text}")).expect("write");
    d.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_reloads(&d, "partial", 1.0);
    assert_eq!(served_key_bits(d.addr()), 256);
    assert!(
        d.stderr().contains("need a restart") && d.stderr().contains("workers"),
        "the refused field is not named:\n{}",
        d.stderr()
    );
    d.stop_ok();
}

/// A tagged upstream in `ns`: every read on a connection is answered `"{tag} proxy\n"` when the connection
/// began with a PROXY v2 header, else `"{tag} plain\n"`. Serves until the test process ends (bounded by it).
fn tagged_upstream(ns: &NetNsGuard, tag: &'static str) -> SocketAddr {
    let listener = ns
        .run(|| TcpListener::bind("127.0.0.1:0"))
        .expect("enter netns")
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut first = None;
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let proxy = *first.get_or_insert_with(|| buf.starts_with(PROXY_V2_SIGNATURE));
                    let kind = if proxy { "proxy" } else { "plain" };
                    if conn
                        .write_all(format!("{tag} {kind}\n").as_bytes())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

const PROXY_V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A TLS connection from `ns` to the daemon, handshake done.
fn connect(ns: &NetNsGuard, pki: &Pki, addr: SocketAddr) -> Tls {
    let tcp = ns
        .run(|| std::net::TcpStream::connect(addr))
        .expect("enter netns")
        .expect("connect to the daemon");
    clients::rustls_establish(pki, tcp)
}

/// Sends a line through the relay and returns the first line of the upstream's answer (with a PROXY header
/// the upstream may answer twice: once for the header, once for the line).
fn ask(tls: &mut Tls, line: &str) -> String {
    tls.write_all(line.as_bytes()).expect("write");
    tls.flush().expect("flush");
    let mut buf = [0u8; 256];
    let n = tls.read(&mut buf).expect("read the upstream's answer");
    let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn sighup_sends_new_connections_to_a_new_upstream_while_an_open_one_continues_and_refuses_a_listen_change()
 {
    if !require_root("sighup_sends_new_connections_to_a_new_upstream") {
        return;
    }
    let ns = NetNsGuard::new().expect("netns");
    let dir = TempDir::new("reload-upstream").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let (a, b) = (tagged_upstream(&ns, "A"), tagged_upstream(&ns, "B"));
    let d = Daemon::start(DaemonOptions {
        config_toml: Some(format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstream]\nbackends = [\"{a}\"]\n{}",
            pki.tls_section("")
        )),
        netns: Some(ns.name().to_owned()),
        ..Default::default()
    })
    .expect("daemon starts");
    let mut open = connect(&ns, &pki, d.addr());
    assert_eq!(ask(&mut open, "one\n"), "A plain");

    // A new upstream and a knob (PROXY v2 towards it), a limit, an access log, and a listen address, which
    // needs a restart.
    let access_log = dir.path().join("access.log");
    let config = d.dir().join("portcullis.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text
        .replace(
            &format!("backends = [\"{a}\"]"),
            &format!("backends = [\"{b}\"]\nproxy_protocol = true"),
        )
        .replace("address = \"127.0.0.1:0\"", "address = \"127.0.0.1:1\"")
        + &format!("\n[limits]\nmax_connections_per_source = 1\n[log]\naccess = {access_log:?}\n");
    std::fs::write(&config, text).expect("write");
    d.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_reloads(&d, "partial", 1.0);
    assert!(
        d.stderr().contains("need a restart") && d.stderr().contains("listeners[0].address"),
        "the refused field is not named:\n{}",
        d.stderr()
    );

    // New connections (on the listener that stayed) get the new upstream and the knob...
    let mut new = connect(&ns, &pki, d.addr());
    assert_eq!(
        ask(&mut new, "two\n"),
        "B proxy",
        "a new connection after the reload"
    );
    // ... and the one open across the reload goes on with the old upstream.
    assert_eq!(
        ask(&mut open, "three\n"),
        "A plain",
        "the connection open across the reload"
    );
    // The new per-source cap counts connections accepted after the reload: `new` holds the one place.
    let refused = || {
        d.metric(
            "portcullis_connections_refused_total",
            &[("reason", "source_limit")],
        )
        .expect("metrics")
    };
    assert_eq!(refused(), 0.0);
    let _third = ns
        .run(|| std::net::TcpStream::connect(d.addr()))
        .expect("enter netns")
        .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused() < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the reloaded per-source cap refused nothing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The access log started by the reload has the line of the connection accepted after it.
    drop((open, new));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = std::fs::read_to_string(&access_log).unwrap_or_default();
        if lines.contains(&format!("\"upstream\":\"{b}\"")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line from the reloaded [log]: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.stop_ok();
}

/// Replaces `secret/..data` with a symlink to `secret/<version>`, as the kubelet does for a Secret volume: a
/// new symlink renamed over the old one (atomic).
fn kube_swap(secret: &Path, version: &str) {
    let tmp = secret.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, secret.join("..data")).expect("rename ..data");
}

/// Writes `secret/<version>/{tls.crt,tls.key}` from `cert` and `key`.
fn kube_version(secret: &Path, version: &str, cert: &Path, key: &Path) {
    let dir = secret.join(version);
    std::fs::create_dir_all(&dir).expect("mkdir");
    install(
        &(cert.to_owned(), key.to_owned()),
        &dir.join("tls.crt"),
        &dir.join("tls.key"),
    );
}

#[test]
fn a_kubernetes_secret_swap_is_served_without_a_signal_and_a_bad_pair_keeps_the_last_good() {
    if !require_root("a_kubernetes_secret_swap_is_served_without_a_signal") {
        return;
    }
    let ns = NetNsGuard::new().expect("netns");
    let dir = TempDir::new("reload-watch").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let secret = dir.path().join("secret");
    kube_version(&secret, "..v1", &pki.ecdsa.0, &pki.ecdsa.1);
    kube_swap(&secret, "..v1");
    for name in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), secret.join(name)).expect("symlink");
    }
    let d = Daemon::start(DaemonOptions {
        config_toml: Some(format!(
            "[tls]\nwatch_interval = \"200ms\"\n[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n",
            secret.join("tls.crt"),
            secret.join("tls.key")
        )),
        netns: Some(ns.name().to_owned()),
        ..Default::default()
    })
    .expect("daemon starts");
    assert_eq!(served_key_bits_in(Some(&ns), d.addr(), false).0, 256);

    // The Secret is updated: no signal, the next handshakes get the new certificate within the interval.
    kube_version(&secret, "..v2", &pki.rsa.0, &pki.rsa.1);
    kube_swap(&secret, "..v2");
    wait_reloads(&d, "ok", 1.0);
    assert_eq!(
        served_key_bits_in(Some(&ns), d.addr(), false).0,
        2048,
        "the old certificate after the Secret swap"
    );

    // A version whose key is not its certificate's (a half-updated pair): refused, the last good is served.
    kube_version(&secret, "..v3", &pki.ecdsa.0, &pki.rsa.1);
    kube_swap(&secret, "..v3");
    wait_reloads(&d, "failed", 1.0);
    assert_eq!(served_key_bits_in(Some(&ns), d.addr(), false).0, 2048);
    assert_eq!(
        d.metric("portcullis_config_reloads_total", &[("result", "ok")])
            .expect("metrics"),
        1.0
    );
    d.stop_ok();
}

/// An OCSP response from the test CA saying `cert` is good for a day (`openssl ocsp` as a responder).
fn ocsp_response(pki: &Pki, cert: &Path, dir: &Path) -> PathBuf {
    let openssl = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let serial = openssl(&[
        os("x509"),
        os("-noout"),
        os("-serial"),
        os("-in"),
        cert.as_os_str(),
    ]);
    let serial = serial.trim().trim_start_matches("serial=").to_owned();
    let index = dir.join("index.txt");
    std::fs::write(
        &index,
        format!("V\t301231235959Z\t\t{serial}\tunknown\t/CN=ecdsa.test\n"),
    )
    .expect("index");
    let (req, resp) = (dir.join("req.der"), dir.join("ocsp.der"));
    openssl(&[
        os("ocsp"),
        os("-no_nonce"),
        os("-issuer"),
        pki.ca.as_os_str(),
        os("-cert"),
        cert.as_os_str(),
        os("-reqout"),
        req.as_os_str(),
    ]);
    openssl(&[
        os("ocsp"),
        os("-index"),
        index.as_os_str(),
        os("-rsigner"),
        pki.ca.as_os_str(),
        os("-rkey"),
        pki.ca_key.as_os_str(),
        os("-CA"),
        pki.ca.as_os_str(),
        os("-reqin"),
        req.as_os_str(),
        os("-respout"),
        resp.as_os_str(),
        os("-ndays"),
        os("1"),
    ]);
    resp
}

#[test]
fn an_ocsp_response_is_stapled_and_a_bad_one_is_skipped_not_fatal() {
    if !require_root("an_ocsp_response_is_stapled") {
        return;
    }
    let ns = NetNsGuard::new().expect("netns");
    let dir = TempDir::new("reload-ocsp").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let resp = ocsp_response(&pki, &pki.ecdsa.0, dir.path());
    let d = Daemon::start(DaemonOptions {
        config_toml: Some(format!(
            "[[tls.certificates]]\ncert = {:?}\nkey = {:?}\nocsp = {resp:?}\n",
            pki.ecdsa.0, pki.ecdsa.1
        )),
        netns: Some(ns.name().to_owned()),
        ..Default::default()
    })
    .expect("daemon starts");
    let (bits, text) = served_key_bits_in(Some(&ns), d.addr(), true);
    assert_eq!(bits, 256);
    assert!(
        text.contains("OCSP Response Status: successful") && text.contains("Cert Status: good"),
        "no OCSP staple:\n{text}"
    );

    // A response that is not one: logged, not stapled, and the certificate is still served.
    std::fs::write(&resp, b"not an OCSP response").expect("write");
    d.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_reloads(&d, "ok", 1.0);
    let (bits, text) = served_key_bits_in(Some(&ns), d.addr(), true);
    assert_eq!(bits, 256);
    assert!(text.contains("OCSP response: no response sent"), "{text}");
    assert!(
        d.stderr().contains("without an OCSP staple"),
        "the bad response is not logged:\n{}",
        d.stderr()
    );
    d.stop_ok();
}

/// The `[xdp]` knobs on SIGHUP: written into the running program's config map by a daemon that kept no
/// capability (the map's descriptor was opened at start), in force on the next packet.
#[test]
fn sighup_turns_the_xdp_knobs_of_a_daemon_without_capabilities() {
    if !require_root("sighup_turns_the_xdp_knobs_of_a_daemon_without_capabilities") {
        return;
    }
    let bed = XdpTestbed::builder("reload-xdp")
        .build()
        .expect("XDP testbed");
    let d = Daemon::start(DaemonOptions {
        config_toml: Some(format!(
            "{}[process]\ndrop_capabilities = true\n",
            bed.config()
        )),
        netns: Some(bed.server.name().to_owned()),
        ..Default::default()
    })
    .expect("daemon starts with XDP");
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid().expect("pid")))
        .expect("/proc/PID/status");
    assert!(
        status.lines().any(|l| l == "CapEff:\t0000000000000000"),
        "the daemon kept capabilities:\n{status}"
    );
    let cidr = format!("{}/32", bed.veth.a.addr);
    bed.cli(&["block", "add", &cidr]);
    assert!(
        !bed.s_client(d.addr(), 3),
        "a blocked source handshook before the reload"
    );

    let config = d.dir().join("portcullis.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replacen(
            "[xdp]\n",
            "[xdp]\nenforce = false\nsyn_rate = 50\nsyn_burst = 5\n",
            1,
        ),
    )
    .expect("write");
    d.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_reloads(&d, "ok", 1.0);
    let status = bed.cli(&["status"]);
    assert!(
        status.contains("enforce          no (count only)")
            && status.contains("syn budget       50/s, burst 5,"),
        "the knobs after the reload:\n{status}\n{}",
        d.stderr()
    );
    assert!(
        bed.s_client(d.addr(), 30),
        "enforce = false did not reach the program"
    );
    d.stop_ok();
}

/// One HTTP/1.1 request on a kept-alive TLS connection; returns once the answer's body (`ok PATH`) is read.
fn http_get_on(tls: &mut Tls, path: &str) {
    write!(tls, "GET {path} HTTP/1.1\r\nHost: edge.test\r\n\r\n").expect("write request");
    tls.flush().expect("flush");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let want = format!("ok {path}");
    while !String::from_utf8_lossy(&got).contains(&want) {
        let n = tls.read(&mut buf).expect("read the answer");
        assert!(
            n > 0,
            "closed before the answer to {path}: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
}

#[test]
fn sighup_sends_new_http_connections_to_a_new_upstream_while_a_kept_alive_one_stays() {
    let dir = TempDir::new("reload-http").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let (a, b) = (
        HttpUpstream::start().expect("upstream a"),
        HttpUpstream::start().expect("upstream b"),
    );
    let access_log = dir.path().join("access.log");
    let d = Daemon::start(DaemonOptions {
        config_toml: Some(format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\nmode = \"http\"\n[upstream]\nbackends = [\"{}\"]\n\
             [log]\naccess = {access_log:?}\n{}",
            a.addr,
            pki.tls_section("")
        )),
        ..Default::default()
    })
    .expect("daemon starts");
    let connect = || {
        clients::rustls_establish(
            &pki,
            std::net::TcpStream::connect(d.addr()).expect("connect"),
        )
    };
    let mut kept = connect();
    http_get_on(&mut kept, "/one");

    let config = d.dir().join("portcullis.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(&a.addr.to_string(), &b.addr.to_string()),
    )
    .expect("write");
    d.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_reloads(&d, "ok", 1.0);
    let mut new = connect();
    http_get_on(&mut new, "/two");
    http_get_on(&mut kept, "/three");

    // Each request's upstream, from the access log.
    let upstream_of = |path: &str| -> Option<String> {
        let log = std::fs::read_to_string(&access_log).unwrap_or_default();
        log.lines()
            .find(|l| l.contains(&format!("\"path\":\"{path}\"")))
            .and_then(|l| l.split("\"upstream\":\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .map(str::to_owned)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream_of("/three").is_none() || upstream_of("/two").is_none() {
        assert!(
            Instant::now() < deadline,
            "no access log lines for /two and /three"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        upstream_of("/two"),
        Some(b.addr.to_string()),
        "a new connection after the reload"
    );
    assert_eq!(
        upstream_of("/three"),
        Some(a.addr.to_string()),
        "the connection kept alive across the reload"
    );
    drop((kept, new));
    d.stop_ok();
}

/// Full handshakes to `d`, one after another, each closed once established.
fn handshakes(pki: &Pki, d: &Daemon, n: usize) {
    for _ in 0..n {
        let tcp = std::net::TcpStream::connect(d.addr()).expect("connect");
        drop(clients::rustls_establish(pki, tcp));
    }
}

/// SIGHUP applies `[engine] inline_when_idle` (the next handshakes go to a crypto thread: the inline counter
/// stops), `[admission]` (the running admission control's parameters: `portcullis_admission_setting`) and
/// `[shutdown] drain_timeout` (a drain with a connection open ends after the reloaded 1 s, not the 60 s of the
/// start); `engine.ring_depth`, which needs new rings, is refused by name. SIGUSR2 does not kill the daemon.
#[test]
fn sighup_applies_engine_admission_and_shutdown_knobs_and_refuses_the_ring_depth() {
    let dir = TempDir::new("reload-knobs").expect("tempdir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let knobs = |inline: bool, target: &str, drain: &str| {
        format!(
            "{}\n[engine]\ninline_when_idle = {inline}\n[admission]\ntarget = \"{target}\"\n\
             max_in_flight_per_worker = 64\n[shutdown]\ndrain_timeout = \"{drain}\"\n",
            pki.tls_section("")
        )
    };
    let d = Daemon::start(DaemonOptions {
        config_toml: Some(knobs(true, "5ms", "60s")),
        ..Default::default()
    })
    .expect("daemon starts");
    let inline = |d: &Daemon| {
        d.metric("portcullis_engine_idle_inline_total", &[])
            .expect("metrics")
    };
    let setting = |d: &Daemon, field: &str| {
        d.metric("portcullis_admission_setting", &[("field", field)])
            .expect("metrics")
    };
    handshakes(&pki, &d, 3);
    let before = inline(&d);
    assert!(before >= 1.0, "an idle engine ran no step inline");
    assert!((setting(&d, "target") - 0.005).abs() < 1e-9);
    assert_eq!(setting(&d, "max_in_flight_per_worker"), 64.0);

    let config = d.dir().join("portcullis.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let changed = text
        .replace("inline_when_idle = true", "inline_when_idle = false")
        .replace("target = \"5ms\"", "target = \"7ms\"")
        .replace(
            "max_in_flight_per_worker = 64",
            "max_in_flight_per_worker = 9",
        )
        .replace("drain_timeout = \"60s\"", "drain_timeout = \"1s\"");
    assert_ne!(changed, text, "the knobs are in the daemon's config");
    std::fs::write(&config, &changed).expect("write");
    d.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_reloads(&d, "ok", 1.0);
    handshakes(&pki, &d, 3);
    assert_eq!(
        inline(&d),
        before,
        "inline_when_idle = false still ran inline"
    );
    assert!((setting(&d, "target") - 0.007).abs() < 1e-9);
    assert_eq!(setting(&d, "max_in_flight_per_worker"), 9.0);

    // New rings need a restart: named, the rest applies.
    std::fs::write(
        &config,
        changed.replace("[engine]\n", "[engine]\nring_depth = 64\n"),
    )
    .expect("write");
    d.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_reloads(&d, "partial", 1.0);
    assert!(
        d.stderr().contains("need a restart") && d.stderr().contains("engine.ring_depth"),
        "the refused field is not named:\n{}",
        d.stderr()
    );

    // SIGUSR2 (nginx's upgrade signal) neither upgrades nor kills: it says how to upgrade.
    d.signal(Signal::SIGUSR2).expect("SIGUSR2");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.stderr().contains("SIGUSR2 ignored") {
        assert!(
            Instant::now() < deadline,
            "SIGUSR2 not answered:\n{}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.stderr().contains("portcullis upgrade"));
    handshakes(&pki, &d, 1);

    // A connection open through SIGTERM holds the drain for the reloaded 1 s, not 60 s.
    let tcp = std::net::TcpStream::connect(d.addr()).expect("connect");
    let _open = clients::rustls_establish(&pki, tcp);
    let stopping = Instant::now();
    let status = d.stop_with(Signal::SIGTERM).expect("exits within 30 s");
    let took = stopping.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(20),
        "drained for {took:?} with drain_timeout reloaded to 1 s"
    );
}
