//! Upstream backends: round robin over the configured addresses, with a connect timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;

/// The backend pool shared by every worker.
#[derive(Debug)]
pub struct Upstreams {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
    connect_timeout: Duration,
}

/// Why a backend connect failed: the label of `portcullis_upstream_connect_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// No answer within `upstream.connect_timeout`.
    Timeout,
    /// The backend refused (nothing listening).
    Refused,
    /// Any other socket error.
    Other,
}

impl ConnectFailure {
    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Other => "other",
        }
    }
}

impl Upstreams {
    /// A pool over `backends` (must be non-empty).
    pub fn new(backends: Vec<SocketAddr>, connect_timeout: Duration) -> Self {
        Self {
            backends,
            next: AtomicUsize::new(0),
            connect_timeout,
        }
    }

    /// The configured backends.
    pub fn backends(&self) -> &[SocketAddr] {
        &self.backends
    }

    /// Picks the next backend round robin.
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.backends.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        self.backends.get(i).copied()
    }

    /// Connects to `addr` within the connect timeout, with TCP_NODELAY (we forward whole TLS records' worth
    /// of plaintext; Nagle would only add latency).
    pub async fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<TcpStream, (ConnectFailure, std::io::Error)> {
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => Err((
                ConnectFailure::Timeout,
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            )),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Err((ConnectFailure::Refused, e))
            }
            Ok(Err(e)) => Err((ConnectFailure::Other, e)),
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
        }
    }
}
