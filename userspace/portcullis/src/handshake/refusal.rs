//! Refusing a ClientHello with the alert a bare rustls server would send, never a silent close.
//!
//! rustls' `Acceptor` queues an alert only for some refusals: a first handshake message of another type than
//! ClientHello, or a first record of another content type, comes back as an error with no alert, where a
//! `ServerConnection` (the bare rustls server) answers `unexpected_message` (RFC 8446 §6); and where it has one,
//! it may differ (`decode_error` for any undecodable message). So the bytes the client sent are replayed into a
//! `ServerConnection` with the same configuration and whatever it queues is sent, the `Acceptor`'s alert only
//! when the replay has none. The replay's configuration chooses no certificate, so no input can make it do the
//! key exchange or sign on the worker, past admission control. A replay that gets as far as choosing the
//! certificate, or waits for more bytes, tells that a bare server would go on although the `Acceptor` refused:
//! it skips warning alerts before the ClientHello, which the `Acceptor` does not, so step 1 starts again from
//! the first handshake record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::server::{AcceptedAlert, ClientHello, ResolvesServerCert, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, ServerConfig};
use tokio::net::TcpStream;

use super::HandshakeError;
use super::failure::Failure;

/// What a bare rustls server answers to the bytes a client sent first.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// It refuses them, sending these bytes (its alert; empty when it sends none).
    Refuses(Vec<u8>),
    /// It waits for more, or it would choose a certificate: it goes on.
    GoesOn,
}

impl Answer {
    /// Whether a bare rustls server would not refuse (yet).
    pub fn goes_on(&self) -> bool {
        *self == Self::GoesOn
    }
}

/// Sends the alert for a ClientHello rustls' `Acceptor` refused with `err` (best effort: the connection is
/// closing anyway) and returns the failure to count. The replay's alert comes first: the `Acceptor` has its own
/// (e.g. `decode_error` for every undecodable message, where a `ServerConnection` names the field's problem).
pub fn refuse(
    tcp: &TcpStream,
    answer: Answer,
    err: rustls::Error,
    mut alert: AcceptedAlert,
) -> HandshakeError {
    let mut bytes = match answer {
        Answer::Refuses(bytes) => bytes,
        Answer::GoesOn => Vec::new(),
    };
    if bytes.is_empty() {
        let _ = alert.write(&mut bytes);
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

/// What a bare rustls server with `config` (but no certificate: it stops there) answers after reading `raw`.
pub fn replay(config: &Arc<ServerConfig>, raw: &[u8]) -> Answer {
    let chosen = Arc::new(NoCertificate::default());
    let mut without_certificate = (**config).clone();
    without_certificate.cert_resolver = chosen.clone();
    let Ok(mut conn) = ServerConnection::new(Arc::new(without_certificate)) else {
        return Answer::Refuses(Vec::new());
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
    if !failed || chosen.asked.load(Ordering::Relaxed) {
        return Answer::GoesOn;
    }
    let mut out = Vec::new();
    while conn.wants_write() {
        if conn.write_tls(&mut out).is_err() {
            break;
        }
    }
    Answer::Refuses(out)
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

/// The replay's certificate choice: none, so it stops before any key exchange or signature; `asked` tells
/// that the ClientHello got that far.
#[derive(Debug, Default)]
struct NoCertificate {
    asked: AtomicBool,
}

impl ResolvesServerCert for NoCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
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
            .with_cert_resolver(Arc::new(NoCertificate::default()));
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
                sent == Answer::Refuses(alert_record(AlertDescription::UnexpectedMessage))
                    || sent == Answer::Refuses(alert_record(AlertDescription::DecodeError)),
                "type {typ}: {sent:?}"
            );
        }
        let mut raw = hello();
        raw[5] = 255;
        assert_eq!(
            replay(&config(), &raw),
            Answer::Refuses(alert_record(AlertDescription::UnexpectedMessage))
        );
    }

    #[test]
    fn a_valid_hello_ends_at_certificate_choice_without_crypto() {
        assert_eq!(replay(&config(), &hello()), Answer::GoesOn);
        let warning_first = [&[21, 3, 3, 0, 2, 1, 90][..], &hello()].concat();
        assert_eq!(replay(&config(), &warning_first), Answer::GoesOn);
    }

    #[test]
    fn an_incomplete_hello_goes_on() {
        let raw = hello();
        assert_eq!(replay(&config(), &raw[..raw.len() - 1]), Answer::GoesOn);
    }
}
