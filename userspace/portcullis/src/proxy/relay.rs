//! Moving plaintext between an established TLS connection and its upstream TCP stream.
//!
//! One task per connection, no buffers of its own while idle: data passes through the worker's scratch
//! buffer synchronously (no borrow across an await), and the only per-connection buffers are rustls' own plus
//! `pending`, which holds plaintext the upstream could not take yet and is empty (unallocated) otherwise.
//! Backpressure: we stop reading the client while `pending` is non-empty, and stop reading the upstream while
//! rustls still has ciphertext queued for the client.
//!
//! Closing: a client close_notify or EOF half-closes the upstream (FIN) and we keep relaying the upstream's
//! answer; an upstream EOF sends close_notify, flushes, and ends the relay. A connection on which nothing moves
//! for `upstream.idle_timeout` is closed (as nginx's stream `proxy_timeout`). What rustls still holds when a
//! connection ends (an alert after a client protocol error, close_notify) leaves within
//! `TlsConn::flush_before_close`'s bound: a client that stopped reading cannot pin its connection and upstream
//! socket.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::time::Duration;

use rustls::ServerConnection;
use tokio::net::TcpStream;

use crate::tls_conn::TlsConn;

/// Scratch buffer size: one maximum TLS record of plaintext.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// `now + d`, or a year from now where `d` does not fit (a duration validated by the config never gets there;
/// this keeps an unvalidated one from panicking in `Instant + Duration`).
pub fn deadline_after(d: Duration) -> tokio::time::Instant {
    deadline_at(tokio::time::Instant::now(), d)
}

/// `start + d`, or a year after `start` where `d` does not fit (as [`deadline_after`], from a time already read).
pub fn deadline_at(start: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    start
        .checked_add(d)
        .unwrap_or(start + Duration::from_secs(365 * 24 * 3600))
}

/// Bytes moved by a relay.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    /// Plaintext bytes client -> upstream.
    pub to_upstream: u64,
    /// Plaintext bytes upstream -> client.
    pub to_client: u64,
}

/// Who ended a relay with an error.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The client broke the TLS protocol or the connection.
    #[error("client: {0}")]
    Client(String),
    /// The upstream connection failed.
    #[error("upstream: {0}")]
    Upstream(io::Error),
    /// Nothing moved in either direction for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(std::time::Duration),
}

/// Counts bytes as they move, so long-lived connections show up in metrics before they close.
pub trait OnMoved: Sync {
    /// `n` plaintext bytes went client -> upstream.
    fn to_upstream(&self, n: u64);
    /// `n` plaintext bytes went upstream -> client.
    fn to_client(&self, n: u64);
}

/// Relays until both directions are closed.
pub async fn relay(
    client: &mut TlsConn,
    upstream: &TcpStream,
    counters: &dyn OnMoved,
    idle_timeout: std::time::Duration,
) -> Result<Moved, RelayError> {
    let idle = tokio::time::sleep_until(deadline_after(idle_timeout));
    tokio::pin!(idle);
    let mut moved = Moved::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut client_open = true;
    let mut upstream_open = true;
    loop {
        // Plaintext the client sent: to the upstream, as far as it takes it now.
        if !pending.is_empty() || client_open {
            let before = moved.to_upstream;
            let closed = push_to_upstream(client, upstream, &mut pending, &mut moved)?;
            counters.to_upstream(moved.to_upstream - before);
            if closed && pending.is_empty() && client_open {
                client_open = false;
                let _ = socket2::SockRef::from(upstream).shutdown(std::net::Shutdown::Write);
            }
        }
        let flushed = client
            .try_flush()
            .map_err(|e| RelayError::Client(e.to_string()))?;
        if !upstream_open && flushed {
            client.shutdown_write();
            return Ok(moved);
        }

        let read_client = client_open && pending.is_empty();
        let write_upstream = !pending.is_empty();
        let read_upstream = upstream_open && flushed;
        let write_client = !flushed;
        // Every pass through the loop follows an event on one of the sockets: that is activity.
        idle.as_mut().reset(deadline_after(idle_timeout));
        tokio::select! {
            () = &mut idle => return Err(RelayError::Idle(idle_timeout)),
            r = client.tcp().readable(), if read_client => {
                r.map_err(|e| RelayError::Client(e.to_string()))?;
                match client.try_read() {
                    Ok(Some(true)) => {
                        if let Err(e) = client.process_new_packets() {
                            client.flush_before_close().await;
                            return Err(RelayError::Client(e.to_string()));
                        }
                    }
                    Ok(Some(false)) => {
                        // EOF without close_notify: treat as a close (truncation is the client's risk).
                        client_open = false;
                        let _ = socket2::SockRef::from(upstream).shutdown(std::net::Shutdown::Write);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(RelayError::Client(e.to_string())),
                }
            }
            r = upstream.writable(), if write_upstream => {
                r.map_err(RelayError::Upstream)?;
            }
            r = upstream.readable(), if read_upstream => {
                r.map_err(RelayError::Upstream)?;
                match pull_from_upstream(client, upstream) {
                    Ok(Some(0)) => {
                        upstream_open = false;
                        client.send_close_notify();
                    }
                    Ok(Some(n)) => {
                        moved.to_client += n as u64;
                        counters.to_client(n as u64);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(RelayError::Upstream(e)),
                }
            }
            r = client.tcp().writable(), if write_client => {
                r.map_err(|e| RelayError::Client(e.to_string()))?;
            }
            else => return Ok(moved),
        }
    }
}

/// Writes all of `buf` to the upstream before the relay starts (the PROXY v2 header, held early data).
pub async fn write_all(upstream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        upstream.writable().await?;
        match upstream.try_write(buf) {
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves decrypted client bytes to the upstream without waiting. Returns `true` once the client has sent
/// close_notify (or ended the stream) and everything before it has been taken.
fn push_to_upstream(
    conn: &mut ServerConnection,
    upstream: &TcpStream,
    pending: &mut Vec<u8>,
    moved: &mut Moved,
) -> Result<bool, RelayError> {
    if !pending.is_empty() {
        match upstream.try_write(pending) {
            Ok(n) => {
                moved.to_upstream += n as u64;
                pending.drain(..n);
                if pending.is_empty() {
                    *pending = Vec::new(); // give the memory back while idle
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(RelayError::Upstream(e)),
        }
        if !pending.is_empty() {
            return Ok(false);
        }
    }
    SCRATCH_BUF.with_borrow_mut(|scratch| {
        loop {
            let n = match conn.reader().read(scratch) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
                Err(e) => return Err(RelayError::Client(e.to_string())),
            };
            let data = scratch.get(..n).unwrap_or_default();
            let written = match upstream.try_write(data) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(RelayError::Upstream(e)),
            };
            moved.to_upstream += written as u64;
            if written < n {
                pending.extend_from_slice(data.get(written..).unwrap_or_default());
                return Ok(false);
            }
        }
    })
}

/// Reads what the upstream has into rustls' send queue. `Some(0)` is end of stream, `None` not ready.
fn pull_from_upstream(
    conn: &mut ServerConnection,
    upstream: &TcpStream,
) -> io::Result<Option<usize>> {
    SCRATCH_BUF.with_borrow_mut(|scratch| match upstream.try_read(scratch) {
        Ok(n) => {
            conn.writer()
                .write_all(scratch.get(..n).unwrap_or_default())?;
            Ok(Some(n))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    })
}
