//! Reload on SIGHUP: a new certificate is served to new handshakes; a bad one keeps the last good; the daemon
//! goes on serving and counts each outcome.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use portcullis_tests::daemon::{Daemon, DaemonOptions, TempDir};
use portcullis_tests::pki::Pki;

/// The size of the server's public key in one handshake (`openssl s_client`): 256 for the ECDSA test
/// certificate, 2048 for the RSA one.
fn served_key_bits(addr: SocketAddr) -> u32 {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "edge.test",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Server public key is "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no handshake:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
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
