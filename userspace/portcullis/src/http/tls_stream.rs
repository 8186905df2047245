//! A rustls `ServerConnection` over a tokio `TcpStream` as one `AsyncRead + AsyncWrite`, for hyper.
//!
//! tokio-rustls builds its stream only through its own `Accept`, but our handshake stage drives rustls itself
//! (`handshake::run`), so this small poll-based adapter takes over the established connection. It is also the
//! shape 0-RTT needs: it reads whatever plaintext rustls releases, early data included.
//!
//! The stream is a cheap handle (`Clone`) on shared state: hyper owns one, and the connection's driver keeps
//! another to answer 408 itself after cancelling hyper on a header read timeout (hyper only closes).

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::watchdog::Activity;
use crate::tls_io::{TcpRead, TcpWrite};

/// rustls plus its socket, shared by the handles.
struct Inner {
    tcp: TcpStream,
    conn: ServerConnection,
    /// close_notify already queued.
    closing: bool,
    /// Early data (0-RTT) the handshake stage took out of rustls, held until the client's Finished and read
    /// before anything rustls releases after it.
    early: bytes::Bytes,
}

/// A handle on one TLS connection; every handle reads and writes the same stream.
#[derive(Clone)]
pub struct TlsStream {
    inner: Arc<Mutex<Inner>>,
    activity: Arc<Activity>,
}

impl TlsStream {
    /// Takes over an established connection. `activity` learns when request bytes arrive. `early` is the early
    /// data the handshake stage took out of rustls (empty without 0-RTT): it is read first.
    pub fn new(
        tcp: TcpStream,
        conn: ServerConnection,
        activity: Arc<Activity>,
        early: Vec<u8>,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                tcp,
                conn,
                closing: false,
                early: bytes::Bytes::from(early),
            })),
            activity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic mid-call on this connection; the state is still a valid rustls state.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `bytes` as plaintext, then close_notify, and flushes: the last words on a connection no other
    /// handle uses any more (the 408 after a header read timeout). Best effort.
    pub async fn last_words(&self, bytes: &[u8]) {
        {
            let mut inner = self.lock();
            let _ = inner.conn.writer().write_all(bytes);
            inner.conn.send_close_notify();
            inner.closing = true;
        }
        let _ = std::future::poll_fn(|cx| self.lock().poll_flush_tls(cx)).await;
    }
}

impl Inner {
    /// Writes what rustls has queued until it is empty or the socket is full (then Pending, waker registered).
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut TcpWrite(&self.tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.tcp.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early.split_to(n));
            return Poll::Ready(Ok(n));
        }
        loop {
            match self.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The client closed TCP without close_notify: an end of stream to hyper, which itself calls a
                // message cut short an error.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Whatever rustls wants to send (tickets, alerts, key updates) goes out before we wait.
            if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
            match self.conn.read_tls(&mut TcpRead(&self.tcp)) {
                Ok(0) => {
                    // End of TCP stream: let rustls say whether close_notify came first (next loop's read).
                    if let Err(e) = self.conn.process_new_packets() {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    match self.conn.reader().read(buf.initialize_unfilled()) {
                        Ok(n) => {
                            buf.advance(n);
                            return Poll::Ready(Ok(n));
                        }
                        Err(_) => return Poll::Ready(Ok(0)),
                    }
                }
                Ok(_) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        // Best effort: tell the client why (the alert rustls queued) before failing.
                        let _ = self.conn.write_tls(&mut TcpWrite(&self.tcp));
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.tcp.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Records reach the socket on poll_flush (hyper flushes after each h1 message, h2 after each batch of frames),
        // so what one flush covers leaves in one writev instead of one per write: h2 writes a frame's head and payload
        // separately (BENCHMARKS.md, "HTTP proxying"). rustls takes what fits under its buffer limit (64 KiB): that
        // limit is the backpressure. A full buffer flushed completely takes bytes on the second try; if it still takes
        // none, say so (0) rather than spin.
        let n = self.conn.writer().write(buf)?;
        if n > 0 || buf.is_empty() {
            return Poll::Ready(Ok(n));
        }
        if self.poll_flush_tls(cx)?.is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Ok(self.conn.writer().write(buf)?))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closing {
            self.conn.send_close_notify();
            self.closing = true;
        }
        match self.poll_flush_tls(cx) {
            Poll::Ready(Ok(())) => {
                let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = match self.lock().poll_read(cx, buf) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        if n > 0 {
            self.activity.bytes_in();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.lock().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.lock().poll_flush_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.lock().poll_shutdown(cx)
    }
}
