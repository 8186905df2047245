//! Real clients run from a test's network namespace.

use std::net::SocketAddr;
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
