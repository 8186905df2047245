//! `portcullis-load hold`: opens N TLS 1.3 connections, completes each handshake (and optionally one keep-alive
//! request), then holds them idle so a benchmark can read the server's memory; on request, sends every
//! connection the same unfinished request head and holds again.
//!
//! The client stays small at 20,000 connections: once a connection is established, the bytes it may still send
//! (the pending head) are encrypted at once and its rustls state is dropped, so a held connection is a socket
//! and one TLS record (about 120 bytes). Nothing is read after that: the server's TLS 1.3 tickets wait in this
//! host's socket buffers, which is kernel memory on the client side.
//!
//! Protocol on stdin/stdout (one line each): after the handshakes it prints `held N`; the line `pending` on
//! stdin sends the pending record on every connection and prints `pending N`; end of stdin closes everything
//! and exits.

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use tokio::task::JoinSet;

use crate::cause::{Cause, Failure};
use crate::connection::{connect, flush, read_some};

/// What `hold` opens.
#[derive(Clone, Debug)]
pub struct HoldSpec {
    /// Where to connect.
    pub addr: SocketAddr,
    /// SNI.
    pub sni: ServerName<'static>,
    /// How many connections to hold.
    pub connections: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// A request sent after the handshake whose whole response (head and `Content-Length` body) is read before
    /// the connection is held: a keep-alive HTTP/1.1 request. `None`: held right after the handshake.
    pub request: Option<Vec<u8>>,
    /// Plaintext sent on every connection on `pending`.
    pub pending: Vec<u8>,
    /// Bound on each connection's connect + handshake (+ response).
    pub timeout: Duration,
}

/// One held connection: the socket and the already encrypted pending bytes.
struct Held {
    tcp: std::net::TcpStream,
    pending: Vec<u8>,
}

/// A request of about `len` bytes that is not finished (no blank line ends its head): an HTTP server keeps it
/// buffered, waiting for the rest.
pub fn unfinished_head(host: &str, len: usize) -> Vec<u8> {
    let mut head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Idle: ").into_bytes();
    head.resize(len.max(head.len()), b'a');
    head
}

/// Runs the hold protocol (module doc) on stdin/stdout. Fails when any connection fails to establish.
pub fn run(spec: HoldSpec, config: Arc<ClientConfig>) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::io(&e))?;
    let held = rt.block_on(open_all(&spec, config))?;
    drop(rt);
    let mut out = std::io::stdout().lock();
    let say = |out: &mut std::io::StdoutLock<'_>, line: String| -> Result<(), Failure> {
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| Failure::io(&e))
    };
    say(&mut out, format!("held {}", held.len()))?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| Failure::io(&e))?;
        match line.trim() {
            "" => {}
            "pending" => {
                let mut sent = 0usize;
                for h in &held {
                    // 120 bytes always fit an idle socket's send buffer: a plain blocking write.
                    (&h.tcp)
                        .write_all(&h.pending)
                        .map_err(|e| Failure::io(&e))?;
                    sent += 1;
                }
                say(&mut out, format!("pending {sent}"))?;
            }
            other => {
                return Err(Failure::new(
                    Cause::IoError,
                    format!("unknown command {other:?} on stdin (expected `pending`)"),
                ));
            }
        }
    }
    Ok(())
}

async fn open_all(spec: &HoldSpec, config: Arc<ClientConfig>) -> Result<Vec<Held>, Failure> {
    let spec = Arc::new(spec.clone());
    let mut tasks = JoinSet::new();
    let mut held = Vec::with_capacity(spec.connections);
    let mut started = 0;
    while held.len() < spec.connections {
        while started < spec.connections && tasks.len() < spec.concurrency.max(1) {
            let (spec, config) = (spec.clone(), config.clone());
            tasks.spawn(async move {
                tokio::time::timeout(spec.timeout, open_one(&spec, config))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure::new(
                            Cause::Timeout,
                            format!("not established within {:?}", spec.timeout),
                        ))
                    })
            });
            started += 1;
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let h = done.map_err(|e| Failure::new(Cause::IoError, format!("task: {e}")))??;
        held.push(h);
    }
    Ok(held)
}

async fn open_one(spec: &HoldSpec, config: Arc<ClientConfig>) -> Result<Held, Failure> {
    let mut tcp = connect(spec.addr, &[])
        .await
        .map_err(|e| Failure::connect(&e))?;
    tcp.set_nodelay(true).map_err(|e| Failure::io(&e))?;
    let mut tls = ClientConnection::new(config, spec.sni.clone()).map_err(|e| Failure::tls(&e))?;
    let mut buf = vec![0u8; 16 * 1024];
    while tls.is_handshaking() {
        flush(&mut tcp, &mut tls).await?;
        if tls.is_handshaking() && read_some(&mut tcp, &mut tls, &mut buf).await? {
            return Err(Failure::new(
                Cause::ServerClosed,
                "the server closed the connection during the handshake",
            ));
        }
    }
    flush(&mut tcp, &mut tls).await?;
    if let Some(request) = &spec.request {
        tls.writer()
            .write_all(request)
            .map_err(|e| Failure::io(&e))?;
        flush(&mut tcp, &mut tls).await?;
        let mut response = Vec::new();
        while !response_complete(&response) {
            if read_some(&mut tcp, &mut tls, &mut buf).await? {
                return Err(Failure::new(
                    Cause::ServerClosed,
                    "the server closed the connection before its whole response",
                ));
            }
            let _ = tls.reader().read_to_end(&mut response);
        }
    }
    tls.writer()
        .write_all(&spec.pending)
        .map_err(|e| Failure::io(&e))?;
    let mut pending = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut pending).map_err(|e| Failure::io(&e))?;
    }
    let tcp = tcp.into_std().map_err(|e| Failure::io(&e))?;
    tcp.set_nonblocking(false).map_err(|e| Failure::io(&e))?;
    Ok(Held { tcp, pending })
}

/// An HTTP/1.1 response head and its `Content-Length` body are all in `bytes`.
fn response_complete(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(bytes.get(..end).unwrap_or_default());
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    bytes.len() >= end + 4 + length
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_head_is_unfinished_and_of_the_asked_length() {
        let head = unfinished_head("localhost", 100);
        assert_eq!(head.len(), 100);
        assert!(!head.windows(4).any(|w| w == b"\r\n\r\n"));
    }

    #[test]
    fn a_response_is_complete_with_its_body() {
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"
        ));
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
        ));
        assert!(response_complete(b"HTTP/1.1 204 No Content\r\n\r\n"));
    }
}
