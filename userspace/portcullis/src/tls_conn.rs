//! One TLS connection: the client socket and its rustls state, with the connection's I/O as methods (mini-redis'
//! `Connection` is the model). The handshake stage builds it, the `tcp` relay and the HTTP stream drive it.
//!
//! rustls wants `io::Read`/`io::Write`; tokio's `try_read`/`try_write` are exactly those, returning
//! `WouldBlock` when the socket is not ready, after which we await readiness. No method holds a borrow across
//! an await and the type holds no buffer of its own, so a worker can share one scratch buffer among all its
//! connections and an idle connection costs rustls' state and the socket.

use std::io;
use std::ops::{Deref, DerefMut};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConnection;
use tokio::net::TcpStream;

/// Longest a closing connection waits for the client to take what rustls still has queued for it. The alert
/// or close_notify is a courtesy: a client that reads nothing for this long loses it, and the socket is reset.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A client socket and the rustls connection on it. Derefs to the `ServerConnection` (as rustls' own connection
/// types deref to their common state), so rustls' plaintext and state calls read as before.
pub struct TlsConn {
    tcp: TcpStream,
    conn: ServerConnection,
}

impl TlsConn {
    /// A rustls connection on `tcp`, as the handshake's expensive step returned it.
    pub fn new(tcp: TcpStream, conn: ServerConnection) -> Self {
        Self { tcp, conn }
    }

    /// The client socket (addresses, readiness).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Gives the socket back, dropping the rustls state (a handshake that failed after its expensive step).
    pub fn into_tcp(self) -> TcpStream {
        self.tcp
    }

    /// Writes everything rustls has queued for the client, waiting for the socket as needed.
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            if !self.try_flush()? {
                self.tcp.writable().await?;
            }
        }
        Ok(())
    }

    /// Writes what the socket takes now. Returns `true` when rustls has nothing left queued.
    pub fn try_flush(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.write_tls() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// [`Self::flush`] for a poll-based caller: `Pending` with the waker registered while the socket is full.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            match self.write_tls() {
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

    /// One non-blocking `write_tls` to the socket: bytes written, or `WouldBlock` when it is full.
    pub fn write_tls(&mut self) -> io::Result<usize> {
        self.conn.write_tls(&mut TcpWrite(&self.tcp))
    }

    /// One non-blocking `read_tls` from the socket: bytes read (0 at end of stream), or `WouldBlock`. The caller
    /// runs `process_new_packets`.
    pub fn read_tls(&mut self) -> io::Result<usize> {
        self.conn.read_tls(&mut TcpRead(&self.tcp))
    }

    /// Reads what the client has sent into rustls, waiting until at least one read succeeds.
    /// Returns `false` on end of stream. The caller runs `process_new_packets`.
    pub async fn read(&mut self) -> io::Result<bool> {
        loop {
            match self.try_read()? {
                Some(open) => return Ok(open),
                None => self.tcp.readable().await?,
            }
        }
    }

    /// One non-blocking read into rustls: `Some(true)` read bytes, `Some(false)` end of stream, `None` not ready.
    pub fn try_read(&mut self) -> io::Result<Option<bool>> {
        match self.read_tls() {
            Ok(0) => Ok(Some(false)),
            Ok(_) => Ok(Some(true)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `process_new_packets`; on a protocol error, sends the alert rustls queued describing it (with anything
    /// queued before it) before returning the error.
    pub async fn process(&mut self) -> Result<rustls::IoState, rustls::Error> {
        match self.conn.process_new_packets() {
            Ok(state) => Ok(state),
            Err(e) => {
                let _ = self.flush().await;
                Err(e)
            }
        }
    }

    /// Whether the client has sent application data (`true`) or closed (`false`), flushing what rustls has
    /// queued meanwhile (the session tickets); `Pending` with the waker registered on the socket. The data stays
    /// in rustls for the relay. Polled in place, it keeps no future of its own while it waits (`tcp` mode's idle
    /// wait: BENCHMARKS.md, "Idle connections"). On a protocol error the alert rustls queued is sent if the
    /// socket takes it now.
    pub fn poll_first_client_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            // Check before reading: the request often arrives with the client's Finished, in which case it is
            // already decrypted and waiting in rustls (reading first would wait for bytes that never come).
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    let _ = self.try_flush();
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            };
            if state.plaintext_bytes_to_read() > 0 {
                return Poll::Ready(Ok(true));
            }
            if state.peer_has_closed() {
                return Poll::Ready(Ok(false));
            }
            if let Err(e) = std::task::ready!(self.poll_flush(cx)) {
                return Poll::Ready(Err(e));
            }
            match self.try_read()? {
                Some(false) => return Poll::Ready(Ok(false)),
                Some(true) => {}
                // The read cleared the socket's readiness: this registers the waker for the next bytes.
                None => {
                    if let Err(e) = std::task::ready!(self.tcp.poll_read_ready(cx)) {
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }

    /// Ends the TLS session cleanly: queues close_notify and sends it with whatever else rustls still holds,
    /// within [`Self::flush_before_close`]'s bound: the connection is closing anyway.
    pub async fn close(&mut self) {
        self.conn.send_close_notify();
        self.flush_before_close().await;
    }

    /// Sends what rustls has queued for a connection that is ending, for at most [`CLOSE_FLUSH_TIMEOUT`]; after
    /// that the socket resets on close, so the kernel does not keep the unsent bytes either: a client that
    /// stopped reading cannot pin its connection.
    ///
    /// The bound's timer is armed only when the socket does not take everything at once: a closing connection
    /// almost always has a few hundred bytes queued (close_notify, the tickets) and room for them, and a
    /// `tokio::time::timeout` reads the clock and looks up the runtime's timer even when its future is ready on
    /// the first poll (once per connection; BENCHMARKS.md, "Fourth round"). The bound is unchanged: it starts
    /// at the first write that would block instead of a few microseconds earlier.
    pub async fn flush_before_close(&mut self) {
        match self.try_flush() {
            Ok(true) | Err(_) => return,
            Ok(false) => {}
        }
        if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.flush())
            .await
            .is_err()
        {
            self.reset_on_close();
        }
    }

    /// Makes the socket's close a reset (no TIME_WAIT, unsent bytes dropped).
    pub fn reset_on_close(&self) {
        reset_on_close(&self.tcp);
    }

    /// Half-closes the socket (FIN) once rustls' last bytes are out.
    pub fn shutdown_write(&self) {
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
    }
}

impl Deref for TlsConn {
    type Target = ServerConnection;

    fn deref(&self) -> &ServerConnection {
        &self.conn
    }
}

impl DerefMut for TlsConn {
    fn deref_mut(&mut self) -> &mut ServerConnection {
        &mut self.conn
    }
}

/// Makes `tcp`'s close a reset: zero linger, so the socket leaves no TIME_WAIT and drops what it still holds.
pub fn reset_on_close(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

/// `io::Read` over a tokio socket: never blocks, `WouldBlock` when nothing is ready.
struct TcpRead<'a>(&'a TcpStream);

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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, ServerConfig};
    use std::io::{Read as _, Write as _};
    use std::sync::{Arc, mpsc};

    /// A server and a client configuration that trust each other (TLS 1.3, a fresh P-256 certificate).
    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let (server, client) = crate::test_tls::tls13_pair();
        (Arc::new(server), Arc::new(client))
    }

    /// A handshaken `TlsConn` on loopback, and the client's thread: it sends `request` after its handshake, then
    /// holds the connection without reading until told to go (or the test ends).
    async fn connected(request: &'static [u8]) -> (TlsConn, mpsc::Sender<()>) {
        let (server, client) = configs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback test socket");
        let addr = listener.local_addr().expect("loopback test socket");
        let (go, wait) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut sock = std::net::TcpStream::connect(addr).expect("loopback test socket");
            let name = ServerName::try_from("localhost").expect("name");
            let mut conn = ClientConnection::new(client, name).expect("client");
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).expect("client handshake");
            }
            conn.writer().write_all(request).expect("plaintext");
            while conn.wants_write() {
                conn.write_tls(&mut sock).expect("client write");
            }
            let _ = wait.recv();
        });
        let (tcp, _) = listener.accept().await.expect("loopback test socket");
        let mut tls = TlsConn::new(tcp, ServerConnection::new(server).expect("server"));
        while tls.is_handshaking() {
            tls.process().await.expect("server handshake");
            tls.flush().await.expect("server flight");
            if tls.is_handshaking() {
                assert!(tls.read().await.expect("client flight"), "client left");
            }
        }
        (tls, go)
    }

    #[tokio::test]
    async fn first_client_bytes_waits_for_the_request_and_leaves_it_in_rustls() {
        let (mut tls, _go) = connected(b"ping").await;
        let first = std::future::poll_fn(|cx| tls.poll_first_client_bytes(cx)).await;
        assert!(first.expect("first bytes"));
        let mut got = [0u8; 4];
        tls.reader()
            .read_exact(&mut got)
            .expect("plaintext in rustls");
        assert_eq!(&got, b"ping");
    }

    /// The usual close: what rustls holds fits in the socket at once, so it is written whole, without a reset,
    /// and no time passes (the bound's timer is not even armed).
    #[tokio::test(start_paused = true)]
    async fn close_with_room_in_the_socket_writes_everything_at_once() {
        let (mut tls, _go) = connected(b"").await;
        let before = tokio::time::Instant::now();
        tls.close().await;
        assert!(!tls.wants_write(), "close_notify left in rustls");
        assert_eq!(
            socket2::SockRef::from(tls.tcp()).linger().expect("linger"),
            None,
            "a close that fit was made a reset"
        );
        assert_eq!(tokio::time::Instant::now(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn close_resets_a_client_that_reads_nothing_after_the_bound() {
        let (mut tls, _go) = connected(b"").await;
        // More than loopback's socket buffers hold: the client, not reading, leaves most of it in rustls.
        tls.set_buffer_limit(None);
        tls.writer()
            .write_all(&vec![0x5a; 32 << 20])
            .expect("plaintext");
        assert_eq!(
            socket2::SockRef::from(tls.tcp()).linger().expect("linger"),
            None
        );
        // Paused time: the runtime jumps to the bound as soon as the flush can only wait.
        tls.close().await;
        assert_eq!(
            socket2::SockRef::from(tls.tcp()).linger().expect("linger"),
            Some(Duration::ZERO),
            "past CLOSE_FLUSH_TIMEOUT the socket resets on close"
        );
    }
}
