//! Driving a rustls connection over a non-blocking tokio `TcpStream` without per-connection buffers of our own.
//!
//! rustls wants `io::Read`/`io::Write`; tokio's `try_read`/`try_write` are exactly those, returning
//! `WouldBlock` when the socket is not ready, after which we await readiness. Nothing here holds a borrow across
//! an await, so a worker can share one scratch buffer among all its connections.

use std::io;

use rustls::ServerConnection;
use tokio::net::TcpStream;

/// `io::Read` over a tokio socket: never blocks, `WouldBlock` when nothing is ready.
pub struct TcpRead<'a>(pub &'a TcpStream);

impl io::Read for TcpRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// `io::Write` over a tokio socket: never blocks, `WouldBlock` when the send buffer is full.
pub struct TcpWrite<'a>(pub &'a TcpStream);

impl io::Write for TcpWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes everything rustls has queued for the client, waiting for the socket as needed.
pub async fn flush(tcp: &TcpStream, conn: &mut ServerConnection) -> io::Result<()> {
    while conn.wants_write() {
        if !try_flush(tcp, conn)? {
            tcp.writable().await?;
        }
    }
    Ok(())
}

/// Writes what the socket takes now. Returns `true` when rustls has nothing left queued.
pub fn try_flush(tcp: &TcpStream, conn: &mut ServerConnection) -> io::Result<bool> {
    while conn.wants_write() {
        match conn.write_tls(&mut TcpWrite(tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads what the client has sent into rustls, waiting until at least one read succeeds.
/// Returns `false` on end of stream. The caller runs `process_new_packets`.
pub async fn read(tcp: &TcpStream, conn: &mut ServerConnection) -> io::Result<bool> {
    loop {
        match try_read(tcp, conn)? {
            Some(open) => return Ok(open),
            None => tcp.readable().await?,
        }
    }
}

/// One non-blocking read into rustls: `Some(true)` read bytes, `Some(false)` end of stream, `None` not ready.
pub fn try_read(tcp: &TcpStream, conn: &mut ServerConnection) -> io::Result<Option<bool>> {
    match conn.read_tls(&mut TcpRead(tcp)) {
        Ok(0) => Ok(Some(false)),
        Ok(_) => Ok(Some(true)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}
