//! Why a handshake failed, as a small closed set usable as a metric label, saying who is at fault.

/// A handshake failure cause. All are the client's doing except `Io` (the network) and `Internal` (us).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The client did not finish within `tls.handshake_timeout`.
    Timeout,
    /// The client closed the connection before the handshake finished.
    ClientClosed,
    /// The first bytes were not a TLS handshake record (plain HTTP, a port scanner, junk).
    NotTls,
    /// The client violated the protocol after a valid start.
    ProtocolError,
    /// The first handshake message is longer than `tls.max_client_hello_size` (answered with `decode_error`).
    HelloTooLarge,
    /// No common protocol version, cipher suite, key exchange group or ALPN protocol.
    Incompatible,
    /// The client sent a fatal alert (often: it does not trust our certificate).
    ClientAlert,
    /// A socket error (reset by peer, ...).
    Io,
    /// A failure of ours (e.g. no certificate could be chosen, a crypto thread panicked).
    Internal,
    /// Shed by overload protection before any crypto was spent (ours, deliberately; a retry later helps).
    Shed,
}

impl Failure {
    /// The `result` label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ClientClosed => "client_closed",
            Self::NotTls => "not_tls",
            Self::ProtocolError => "protocol_error",
            Self::HelloTooLarge => "hello_too_large",
            Self::Incompatible => "incompatible",
            Self::ClientAlert => "client_alert",
            Self::Io => "io_error",
            Self::Internal => "internal",
            Self::Shed => "shed",
        }
    }

    /// Classifies a rustls error.
    pub fn from_rustls(e: &rustls::Error) -> Self {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. } => Self::ProtocolError,
            E::PeerIncompatible(_) | E::NoApplicationProtocol => Self::Incompatible,
            E::AlertReceived(_) => Self::ClientAlert,
            E::PeerMisbehaved(_) | E::DecryptError | E::PeerSentOversizedRecord => {
                Self::ProtocolError
            }
            E::NoCertificatesPresented | E::InvalidCertificate(_) => Self::ProtocolError,
            E::General(_) | E::FailedToGetCurrentTime | E::FailedToGetRandomBytes => Self::Internal,
            _ => Self::ProtocolError,
        }
    }

    /// Classifies a socket error.
    pub fn from_io(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Self::ClientClosed,
            _ => Self::Io,
        }
    }
}
