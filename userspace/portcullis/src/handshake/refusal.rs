//! Refusing a ClientHello with the alert a bare rustls server would send, never a silent close.
//!
//! rustls' `Acceptor` queues an alert only for some refusals: a first handshake message of another type than
//! ClientHello, or a first record of another content type, comes back as an error with no alert, where a
//! `ServerConnection` (the bare rustls server) answers `unexpected_message` (RFC 8446 §6). So when the
//! `Acceptor` has no alert, the bytes the client sent are replayed into a `ServerConnection` with the same
//! configuration and whatever it queues is sent. The replay's configuration chooses no certificate, so no input
//! can make it do the key exchange or sign on the worker, past admission control: an input the replay would
//! accept (leading records rustls skips, then a valid ClientHello) ends at certificate choice with
//! `access_denied` instead.

use std::sync::Arc;

use rustls::server::{AcceptedAlert, ClientHello, ResolvesServerCert, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, ServerConfig};
use tokio::net::TcpStream;

use super::HandshakeError;
use super::failure::Failure;

/// Sends the alert for a ClientHello rustls' `Acceptor` refused with `err` (best effort: the connection is
/// closing anyway) and returns the failure to count.
pub fn refuse(
    tcp: &TcpStream,
    config: &Arc<ServerConfig>,
    raw: &[u8],
    err: rustls::Error,
    mut alert: AcceptedAlert,
) -> HandshakeError {
    let mut bytes = Vec::new();
    let _ = alert.write(&mut bytes);
    if bytes.is_empty() {
        bytes = replay(config, raw);
    }
    send(tcp, &bytes);
    HandshakeError::new(Failure::from_rustls(&err), err.to_string())
}

/// Refuses a ClientHello longer than `tls.max_client_hello_size` with `decode_error` (RFC 8446 §6: "the length
/// of the message was incorrect"; rustls sends no alert for its own limit, a handshake message over 64 KiB).
pub fn too_large(tcp: &TcpStream, detail: String) -> HandshakeError {
    send(tcp, &alert_record(AlertDescription::DecodeError));
    HandshakeError::new(Failure::HelloTooLarge, detail)
}

/// What a bare rustls server with `config` (but no certificate) sends after reading `raw`, when it fails.
fn replay(config: &Arc<ServerConfig>, raw: &[u8]) -> Vec<u8> {
    let mut without_certificate = (**config).clone();
    without_certificate.cert_resolver = Arc::new(NoCertificate);
    let Ok(mut conn) = ServerConnection::new(Arc::new(without_certificate)) else {
        return Vec::new();
    };
    let mut rest = raw;
    let failed = loop {
        if rest.is_empty() {
            break false;
        }
        if conn.read_tls(&mut rest).is_err() {
            break false;
        }
        if conn.process_new_packets().is_err() {
            break true;
        }
    };
    let mut out = Vec::new();
    if failed {
        while conn.wants_write() {
            if conn.write_tls(&mut out).is_err() {
                break;
            }
        }
    }
    out
}

/// A fatal alert record as sent before any keys (RFC 8446 §6: level 2, fatal).
fn alert_record(description: AlertDescription) -> Vec<u8> {
    vec![21, 3, 3, 0, 2, 2, u8::from(description)]
}

/// Best effort, without waiting: an alert is a few bytes and the socket's send buffer is empty this early.
fn send(tcp: &TcpStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match tcp.try_write(bytes) {
            Ok(n) if n > 0 => bytes = bytes.get(n..).unwrap_or_default(),
            _ => return,
        }
    }
}

/// The replay's certificate choice: none, so it stops before any key exchange or signature.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesServerCert for NoCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCertificate));
        Arc::new(config)
    }

    fn hello() -> Vec<u8> {
        portcullis_abi::hello_fixtures::CAPTURED
            .iter()
            .find(|(name, _, _)| *name == "curl_sni")
            .map(|(_, bytes, _)| bytes.to_vec())
            .expect("curl_sni fixture")
    }

    #[test]
    fn another_handshake_type_first_gets_rustls_alert() {
        // rustls parses the message by its type first: a body that is not that type's is a decode_error, a
        // well-formed message of the wrong type an unexpected_message (RFC 8446 §6).
        for typ in (0..=255u8).filter(|t| *t != 1) {
            let mut raw = hello();
            raw[5] = typ;
            let sent = replay(&config(), &raw);
            assert!(
                sent == alert_record(AlertDescription::UnexpectedMessage)
                    || sent == alert_record(AlertDescription::DecodeError),
                "type {typ}: {sent:?}"
            );
        }
        let mut raw = hello();
        raw[5] = 255;
        assert_eq!(
            replay(&config(), &raw),
            alert_record(AlertDescription::UnexpectedMessage)
        );
    }

    #[test]
    fn a_valid_hello_ends_at_certificate_choice_without_crypto() {
        assert_eq!(
            replay(&config(), &hello()),
            alert_record(AlertDescription::AccessDenied)
        );
    }

    #[test]
    fn an_incomplete_hello_sends_nothing() {
        let raw = hello();
        assert!(replay(&config(), &raw[..raw.len() - 1]).is_empty());
    }
}
