//! `floor`: the least a rustls server over TCP can do, the "floor" column of `cargo xtask bench handshakes`.
//!
//! One thread, a tokio current-thread runtime, one listening socket with `TCP_NODELAY` (inherited by every
//! accepted socket, as in portcullis). Per connection a task drives a rustls [`ServerConnection`] by hand over the
//! non-blocking socket: read what arrived into rustls, process it, write what rustls queued in one `writev`;
//! once the client has closed (close_notify or EOF) it queues close_notify, writes it (with the tickets when the
//! client's close_notify came with its Finished, as portcullis does) and closes. No timeouts, no limits, no
//! metrics, no application data (whatever the client sends is discarded): what is left is rustls and the
//! kernel's TCP, the cost any rustls-based server pays per handshake on a socket.
//!
//! The `ServerConfig` makes the crypto choices portcullis makes by default ([`limit::server_config`]):
//! aws-lc-rs, TLS 1.3 and 1.2, stateless tickets from rustls' own `Ticketer` (two per TLS 1.3 handshake,
//! rustls' default, which portcullis keeps), and a session-ID cache of [`SESSION_CACHE`] sessions for TLS 1.2.
//! No ALPN: the benchmark's clients offer none.

use std::io::{self, Read as _};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::Arc;

use rustls::server::ServerSessionMemoryCache;
use rustls::{ServerConfig, ServerConnection};
use tokio::net::{TcpListener, TcpStream};

use crate::limit::{self, LimitError};

/// Sessions kept for TLS 1.2 session-ID resumption: portcullis' default `tls.session_cache_size`.
pub const SESSION_CACHE: usize = 4096;

/// Pending connections the listening socket queues (`listen(2)` backlog).
const BACKLOG: libc::c_int = 1024;

/// Why the floor server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// The certificate, key or rustls configuration is unusable.
    #[error(transparent)]
    Config(#[from] LimitError),
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The runtime could not be built.
    #[error("cannot build the tokio runtime: {0}")]
    Runtime(io::Error),
}

/// Why one connection ended before its handshake and close completed (printed to stderr, never fatal).
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the client closed before the handshake finished")]
    Closed,
}

/// The floor's server configuration: [`limit::server_config`] with a session-ID cache of [`SESSION_CACHE`].
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, FloorError> {
    let mut config = limit::server_config(cert, key)?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(config))
}

/// Binds `addr` with `TCP_NODELAY` set on the listening socket (Linux copies it to each accepted socket, so no
/// `setsockopt` per connection) and a backlog of [`BACKLOG`]; non-blocking, ready for [`serve`].
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, FloorError> {
    let err = |source| FloorError::Listen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    let fd = listener.as_raw_fd();
    let on: libc::c_int = 1;
    // SAFETY: `fd` is the listener's open socket for the duration of the call; `on` is a readable c_int whose
    // size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // std listens with a backlog of 128; listen(2) again on a listening socket only changes the backlog.
    // SAFETY: as above.
    if unsafe { libc::listen(fd, BACKLOG) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Serves TLS on `listener` with `config` on this thread, forever (until the process is stopped).
pub fn serve(listener: std::net::TcpListener, config: Arc<ServerConfig>) -> Result<(), FloorError> {
    let addr = listener
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(FloorError::Runtime)?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)
            .map_err(|source| FloorError::Listen { addr, source })?;
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    let config = config.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(&tcp, config).await {
                            eprintln!("portcullis-load floor: connection from {peer}: {e}");
                        }
                    });
                }
                // Out of descriptors or memory: say so and keep accepting (connections end on their own).
                Err(e) => eprintln!("portcullis-load floor: accept on {addr}: {e}"),
            }
        }
    })
}

/// One connection: handshake, wait for the client's close, close_notify, close (when `tcp` drops).
async fn connection(tcp: &TcpStream, config: Arc<ServerConfig>) -> Result<(), ConnError> {
    let mut tls = ServerConnection::new(config)?;
    let mut closing = false;
    loop {
        while tls.wants_write() {
            match tls.write_tls(&mut Socket(tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
                Err(e) => return Err(e.into()),
            }
        }
        if closing {
            return Ok(());
        }
        match tls.read_tls(&mut Socket(tcp)) {
            Ok(0) if tls.is_handshaking() => return Err(ConnError::Closed),
            // EOF without close_notify after the handshake: answer with ours all the same.
            Ok(0) => {
                tls.send_close_notify();
                closing = true;
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tcp.readable().await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let state = match tls.process_new_packets() {
            Ok(state) => state,
            Err(e) => {
                // rustls queued an alert: send it if the socket takes it now, then give up.
                let _ = tls.write_tls(&mut Socket(tcp));
                return Err(e.into());
            }
        };
        if state.plaintext_bytes_to_read() > 0 {
            discard(&mut tls);
        }
        if state.peer_has_closed() {
            tls.send_close_notify();
            closing = true;
        }
    }
}

/// Drops the application data rustls has decrypted (the floor answers nothing).
fn discard(tls: &mut ServerConnection) {
    let mut sink = [0u8; 4096];
    while matches!(tls.reader().read(&mut sink), Ok(n) if n > 0) {}
}

/// The non-blocking socket as `Read`/`Write` for rustls: `WouldBlock` means wait for readiness.
struct Socket<'a>(&'a TcpStream);

impl io::Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for Socket<'_> {
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
