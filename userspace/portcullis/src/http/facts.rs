//! TLS facts of a connection, carried to every request on it (access log, metric labels, and the next issue's
//! 0-RTT decisions).

use std::borrow::Cow;
use std::time::Duration;

use rustls::CipherSuite;

use crate::handshake::Established;
use crate::metrics::{ModeLabel, VersionLabel};

/// What the handshake established, once per connection. Compact (BENCHMARKS.md, "Idle connections", fifth round):
/// every idle connection keeps one; the names the access log writes are made from these when a line is written.
#[derive(Debug, Clone)]
pub struct TlsFacts {
    /// TLS 1.3 or 1.2 ([`Self::version`] names it: `tls1.3`, `tls1.2`).
    pub version: VersionLabel,
    /// The negotiated cipher suite, if any ([`Self::cipher`] names it, e.g. `TLS13_AES_128_GCM_SHA256`).
    pub suite: Option<CipherSuite>,
    /// Negotiated ALPN protocol, if any (`h2`, `http/1.1`; those two without an allocation per connection).
    pub alpn: Option<Cow<'static, str>>,
    /// Server name the client asked for.
    pub sni: Option<Box<str>>,
    /// Full or resumed.
    pub mode: ModeLabel,
    /// A TLS 1.2 resumption's ClientHello offered a ticket ([`Self::resumption`]: `ticket`, else `session_id`).
    pub offered_ticket: bool,
    /// Whether the connection's first flight carried 0-RTT early data (accepted once across the fleet; in `tcp` mode
    /// held until the client's Finished, in `http` mode served by the rules of RFC 8470, see `proxy.rs`).
    pub early_data: bool,
    /// TCP accept to finished handshake; for a connection handed over before the client's Finished (0-RTT on an
    /// http listener), to our flight written.
    pub handshake: Duration,
    /// The ClientHello's unordered fingerprint (the access log writes it in hex, what `portcullis xdp
    /// block-fingerprint` takes).
    pub fingerprint: Option<u64>,
}

impl TlsFacts {
    /// Reads the facts of an established connection; `handshake` is how long its handshake took.
    pub fn new(est: &Established, handshake: Duration) -> Self {
        let conn = &est.tls;
        Self {
            version: est.version,
            suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
            alpn: conn.alpn_protocol().map(|p| match p {
                b"h2" => Cow::Borrowed("h2"),
                b"http/1.1" => Cow::Borrowed("http/1.1"),
                other => Cow::Owned(String::from_utf8_lossy(other).into_owned()),
            }),
            sni: est.hello.sni.as_deref().map(Box::from),
            mode: est.mode,
            offered_ticket: est.hello.offers_tls12_ticket,
            handshake,
            fingerprint: est.hello.fingerprint.map(|f| f.unordered),
            early_data: !est.early_data.is_empty() || est.unfinished.is_some(),
        }
    }

    /// Whether ALPN chose h2.
    pub fn is_h2(&self) -> bool {
        self.alpn.as_deref() == Some("h2")
    }

    /// `tls1.3`, `tls1.2`.
    pub fn version(&self) -> &'static str {
        self.version.name()
    }

    /// IANA name of the cipher suite, e.g. `TLS13_AES_128_GCM_SHA256` (empty if none).
    pub fn cipher(&self) -> Cow<'static, str> {
        match self.suite {
            None => Cow::Borrowed(""),
            Some(suite) => suite
                .as_str()
                .map_or_else(|| Cow::Owned(format!("{suite:?}")), Cow::Borrowed),
        }
    }

    /// How a resumed handshake resumed: `psk` (TLS 1.3), `ticket` or `session_id` (TLS 1.2); `none` if full.
    pub fn resumption(&self) -> &'static str {
        match (self.mode, self.version) {
            (ModeLabel::Resumed, VersionLabel::Tls13) => "psk",
            (ModeLabel::Resumed, _) if self.offered_ticket => "ticket",
            (ModeLabel::Resumed, _) => "session_id",
            _ => "none",
        }
    }
}
