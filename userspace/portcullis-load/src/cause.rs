//! Why a connection failed, or why a resumption attempt ended in a full handshake. Each cause is a label in the
//! report and the time series; the first message seen for each is kept as a sample.

use std::io;

use serde::Serialize;

/// Why a connection did not complete. Says who is at fault where it can: `connect_*` is the network or an absent
/// server, `tls_alert` the server refused, `tls_error` either side broke the protocol, `client_limit` us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// TCP connect refused: nothing listens on the target (or its accept queue overflowed with reset).
    ConnectRefused,
    /// TCP connect did not finish within the connection timeout.
    ConnectTimeout,
    /// Any other TCP connect error (unreachable network, no route, ...).
    ConnectError,
    /// The server sent a TLS alert during the handshake (it refused us: versions, groups, SNI, ...).
    TlsAlert,
    /// Our rustls rejected the server's messages (bad certificate signature, protocol violation, ...).
    TlsError,
    /// The server closed the connection before the handshake (or the response) finished.
    ServerClosed,
    /// The connection did not finish (handshake and request) within the connection timeout from intended start.
    Timeout,
    /// A read or write failed after connecting (reset, broken pipe).
    IoError,
    /// Not started: the client already had `--max-inflight` connections open. The open loop counts it instead of
    /// waiting, so the offered rate stays honest.
    ClientLimit,
}

impl Cause {
    /// Every cause, in report order.
    pub const ALL: [Cause; 9] = [
        Cause::ConnectRefused,
        Cause::ConnectTimeout,
        Cause::ConnectError,
        Cause::TlsAlert,
        Cause::TlsError,
        Cause::ServerClosed,
        Cause::Timeout,
        Cause::IoError,
        Cause::ClientLimit,
    ];

    /// The label used in the JSON report and the table.
    pub fn name(self) -> &'static str {
        match self {
            Cause::ConnectRefused => "connect_refused",
            Cause::ConnectTimeout => "connect_timeout",
            Cause::ConnectError => "connect_error",
            Cause::TlsAlert => "tls_alert",
            Cause::TlsError => "tls_error",
            Cause::ServerClosed => "server_closed",
            Cause::Timeout => "timeout",
            Cause::IoError => "io_error",
            Cause::ClientLimit => "client_limit",
        }
    }

    /// Classifies a TCP connect error.
    pub fn of_connect(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Cause::ConnectRefused,
            io::ErrorKind::TimedOut => Cause::ConnectTimeout,
            _ => Cause::ConnectError,
        }
    }

    /// Classifies an error from reading or writing an established socket.
    pub fn of_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => Cause::ServerClosed,
            io::ErrorKind::TimedOut => Cause::Timeout,
            _ => Cause::IoError,
        }
    }

    /// Classifies a rustls error: an alert from the server, or our own verdict on its messages.
    pub fn of_tls(e: &rustls::Error) -> Self {
        match e {
            rustls::Error::AlertReceived(_) => Cause::TlsAlert,
            _ => Cause::TlsError,
        }
    }
}

/// A failed connection: its cause and a message for the report's samples.
#[derive(Debug)]
pub struct Failure {
    /// The counted label.
    pub cause: Cause,
    /// What happened, for a human.
    pub message: String,
}

impl Failure {
    /// A failure with `cause` and `message`.
    pub fn new(cause: Cause, message: impl Into<String>) -> Self {
        Self {
            cause,
            message: message.into(),
        }
    }

    /// From a TCP connect error.
    pub fn connect(e: &io::Error) -> Self {
        Self::new(Cause::of_connect(e), format!("TCP connect: {e}"))
    }

    /// From a socket read or write error.
    pub fn io(e: &io::Error) -> Self {
        Self::new(Cause::of_io(e), format!("socket: {e}"))
    }

    /// From a rustls error.
    pub fn tls(e: &rustls::Error) -> Self {
        Self::new(Cause::of_tls(e), format!("TLS: {e}"))
    }
}

/// Why a connection that wanted resumption did a full handshake anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// The store had nothing to offer (first connection, or every ticket already used).
    NoTicket,
    /// A ticket or session ID was offered and the server did a full handshake: it could not decrypt the ticket
    /// or find the session (different keys, expired, evicted).
    Rejected,
}

impl Fallback {
    /// The label used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Fallback::NoTicket => "no_ticket",
            Fallback::Rejected => "rejected",
        }
    }
}
