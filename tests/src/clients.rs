//! Real clients run from a test's network namespace.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::netns::NetNsGuard;
use crate::pki::Pki;

/// One TLS handshake with `openssl s_client` from `ns` to `addr` (SNI `ecdsa.test`, verified against the test
/// CA), given up after `secs` seconds (a dropped SYN or ClientHello would otherwise leave it waiting on TCP
/// retransmissions for minutes). Returns whether it succeeded; on failure openssl's output is printed.
pub fn s_client(ns: &NetNsGuard, pki: &Pki, addr: SocketAddr, secs: u32) -> bool {
    let mut cmd = Command::new("timeout");
    cmd.arg(secs.to_string())
        .arg("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "ecdsa.test",
            "-verify_return_error",
        ])
        .arg("-CAfile")
        .arg(&pki.ca)
        .stdin(Stdio::null());
    ns.enter_on_spawn(&mut cmd).expect("enter client namespace");
    let out = cmd
        .output()
        .expect("run openssl s_client (install openssl)");
    if !out.status.success() {
        eprintln!(
            "openssl s_client to {addr} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// A rustls client trusting the test CA, offering `http/1.1`.
pub fn rustls_config(pki: &Pki) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&pki.ca).expect("read the test CA");
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("CA PEM")).expect("add root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(config)
}

/// A rustls connection to `ecdsa.test` over `tcp` (already connected), handshake finished, nothing sent yet.
pub fn rustls_establish(
    pki: &Pki,
    tcp: std::net::TcpStream,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let server_name = rustls::pki_types::ServerName::try_from("ecdsa.test").expect("name");
    let conn = rustls::ClientConnection::new(rustls_config(pki), server_name).expect("conn");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("handshake");
    }
    tls
}

/// One `openssl s_client` resumption run against `addr` (SNI `servername`, verified against `ca`), with `extra`
/// arguments (e.g. `-alpn`), session arguments `sess` (`-sess_out` / `-sess_in`) and their `file`. With `early`,
/// that file's bytes go as early data (`-early_data`) and stdin is closed; without, `request` is written on
/// stdin. With `wait` it waits for the server to close (`-ign_eof`); without, it leaves once the handshake is
/// reported. Returns stdout and stderr together, given up after 20 s.
#[allow(clippy::too_many_arguments)]
pub fn s_client_session(
    ca: &Path,
    addr: SocketAddr,
    servername: &str,
    extra: &[&str],
    sess: &[&str],
    file: &Path,
    early: Option<&Path>,
    request: &[u8],
    wait: bool,
) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "openssl", "s_client", "-connect", &addr.to_string()])
        .args(["-servername", servername, "-verify_return_error"]);
    if wait {
        cmd.arg("-ign_eof");
    }
    cmd.args(extra).arg("-CAfile").arg(ca).args(sess).arg(file);
    if let Some(f) = early {
        cmd.arg("-early_data").arg(f);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    let stdin = child.stdin.take().expect("stdin");
    if early.is_none() {
        let mut stdin = stdin;
        stdin.write_all(request).expect("write request");
    } else {
        drop(stdin);
    }
    let out = child.wait_with_output().expect("openssl output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
