//! One connection, from its intended start to its close: TCP connect, TLS handshake, an optional request and its
//! first response byte, then a polite close that also collects the server's TLS 1.3 tickets.
//!
//! Every time is measured from the intended start, not from when the task got to run: if the client or the
//! server fell behind, the wait is part of the latency (no coordinated omission).

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ProtocolVersion};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::cause::{Cause, Failure, Fallback};
use crate::kind::Kind;
use crate::{stamp, store};

/// How long the close waits for the server's tickets and its close after ours.
pub const LINGER: Duration = Duration::from_secs(1);

/// One server to connect to.
#[derive(Clone, Debug)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The name sent as SNI (and the key of the session store in `sni` scope).
    pub sni: ServerName<'static>,
}

/// What every connection does after the handshake, and its bound.
#[derive(Clone, Debug)]
pub struct ConnSpec {
    /// Bytes to send after the handshake (an HTTP request); the first response byte is timed. `None`: close
    /// right after the handshake.
    pub request: Option<Vec<u8>>,
    /// How long to keep the connection open after the response (or handshake) before closing it.
    pub keep: Duration,
    /// The whole connection (connect, handshake, first byte) must finish within this, from intended start.
    pub timeout: Duration,
    /// Local addresses to connect from, in turn; empty: the kernel's choice.
    pub sources: std::sync::Arc<[std::net::IpAddr]>,
}

/// Connects to `addr`, from the next of `sources` when there are any. The port is left to `connect`
/// (`IP_BIND_ADDRESS_NO_PORT`), so each source address has its own ephemeral port range towards `addr`.
pub(crate) async fn connect(
    addr: SocketAddr,
    sources: &[std::net::IpAddr],
) -> std::io::Result<TcpStream> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if sources.is_empty() {
        return TcpStream::connect(addr).await;
    }
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let source = sources[n % sources.len()];
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor owned by `socket`, and a pointer to a c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// A connection that completed.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    /// The server resumed the session.
    pub resumed: bool,
    /// For a kind that wanted resumption and got a full handshake: why.
    pub fallback: Option<Fallback>,
    /// The negotiated version.
    pub version: Option<ProtocolVersion>,
}

/// What happened to one connection; the times are from its intended start.
#[derive(Debug)]
pub struct Outcome {
    /// The kind it was started as.
    pub kind: Kind,
    /// Index of its target.
    pub target: usize,
    /// When it was meant to start.
    pub intended: Instant,
    /// Intended start to TCP connected.
    pub connect: Option<Duration>,
    /// Intended start to the server's first flight reaching this host's kernel (its receive timestamp, so
    /// the client's own delay in reading it is not in it).
    pub server_flight: Option<Duration>,
    /// Intended start to handshake complete.
    pub handshake: Option<Duration>,
    /// Intended start to the first response byte.
    pub first_byte: Option<Duration>,
    /// Completed, or why not.
    pub result: Result<Done, Failure>,
}

impl Outcome {
    /// An outcome for a connection that was never started because of `cause`.
    pub fn not_started(kind: Kind, target: usize, intended: Instant, cause: Cause) -> Self {
        Self {
            kind,
            target,
            intended,
            connect: None,
            server_flight: None,
            handshake: None,
            first_byte: None,
            result: Err(Failure::new(cause, "not started")),
        }
    }
}

/// Runs one connection of `kind` to `target` that was meant to start at `intended`.
pub async fn run_one(
    kind: Kind,
    config: Arc<ClientConfig>,
    target_index: usize,
    target: Target,
    spec: Arc<ConnSpec>,
    intended: Instant,
) -> Outcome {
    let mut out = Outcome::not_started(kind, target_index, intended, Cause::Timeout);
    let deadline = intended + spec.timeout;
    let established = tokio::time::timeout_at(
        deadline,
        establish(
            &mut out,
            kind,
            config,
            &target,
            spec.request.as_deref(),
            &spec.sources,
        ),
    )
    .await;
    match established {
        Ok(Ok((done, tcp, tls))) => {
            out.result = Ok(done);
            close(tcp, tls, spec.keep).await;
        }
        Ok(Err(failure)) => out.result = Err(failure),
        Err(_) => {
            let stage = if out.connect.is_none() {
                "TCP connect"
            } else if out.handshake.is_none() {
                "TLS handshake"
            } else {
                "waiting for the first response byte"
            };
            out.result = Err(Failure::new(
                Cause::Timeout,
                format!(
                    "no progress within {:?} of intended start ({stage})",
                    spec.timeout
                ),
            ));
        }
    }
    out
}

async fn establish(
    out: &mut Outcome,
    kind: Kind,
    config: Arc<ClientConfig>,
    target: &Target,
    request: Option<&[u8]>,
    sources: &[std::net::IpAddr],
) -> Result<(Done, TcpStream, ClientConnection), Failure> {
    let intended = out.intended;
    let mut tcp = connect(target.addr, sources)
        .await
        .map_err(|e| Failure::connect(&e))?;
    // Small flights: do not let Nagle hold the client's Finished behind the server's ACK.
    tcp.set_nodelay(true).map_err(|e| Failure::io(&e))?;
    out.connect = Some(intended.elapsed());
    // Best effort: without stamps the server-flight time is simply not recorded.
    let mut stamp_next = stamp::enable(&tcp).is_ok();

    store::take_offered();
    let mut tls =
        ClientConnection::new(config, target.sni.clone()).map_err(|e| Failure::tls(&e))?;
    let offered = store::take_offered();

    let mut buf = vec![0u8; 16 * 1024];
    while tls.is_handshaking() {
        flush(&mut tcp, &mut tls).await?;
        if !tls.is_handshaking() {
            break;
        }
        let closed = if stamp_next {
            stamp_next = false;
            let (n, at) = stamp::read(&tcp, &mut buf)
                .await
                .map_err(|e| Failure::io(&e))?;
            out.server_flight = at.map(|at| at.saturating_duration_since(intended));
            feed(&mut tcp, &mut tls, buf.get(..n).unwrap_or_default()).await?
        } else {
            read_some(&mut tcp, &mut tls, &mut buf).await?
        };
        if closed {
            return Err(Failure::new(
                Cause::ServerClosed,
                "the server closed the connection during the handshake",
            ));
        }
    }
    flush(&mut tcp, &mut tls).await?;
    out.handshake = Some(intended.elapsed());

    let resumed = tls.handshake_kind() == Some(HandshakeKind::Resumed);
    let fallback = (kind.wants_resumption() && !resumed).then_some(if offered {
        Fallback::Rejected
    } else {
        Fallback::NoTicket
    });
    let done = Done {
        resumed,
        fallback,
        version: tls.protocol_version(),
    };

    if let Some(request) = request {
        tls.writer()
            .write_all(request)
            .map_err(|e| Failure::io(&e))?;
        flush(&mut tcp, &mut tls).await?;
        let mut plain = [0u8; 1];
        loop {
            match tls.reader().read(&mut plain) {
                Ok(0) => {
                    return Err(Failure::new(
                        Cause::ServerClosed,
                        "the server closed the connection before responding",
                    ));
                }
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Failure::io(&e)),
            }
            if read_some(&mut tcp, &mut tls, &mut buf).await? {
                return Err(Failure::new(
                    Cause::ServerClosed,
                    "the server closed the connection before responding",
                ));
            }
        }
        out.first_byte = Some(intended.elapsed());
    }
    Ok((done, tcp, tls))
}

/// Keeps the connection for `keep`, sends close_notify and reads until the server closes (at most [`LINGER`]).
/// Reading on is what stores the TLS 1.3 tickets the server sends after the handshake. Errors here do not count:
/// the connection already did its work.
async fn close(mut tcp: TcpStream, mut tls: ClientConnection, keep: Duration) {
    if !keep.is_zero() {
        tokio::time::sleep(keep).await;
    }
    tls.send_close_notify();
    let mut buf = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        flush(&mut tcp, &mut tls).await?;
        let _ = tcp.shutdown().await;
        while !read_some(&mut tcp, &mut tls, &mut buf).await? {}
        Ok::<(), Failure>(())
    })
    .await;
}

/// Writes everything rustls has queued.
pub(crate) async fn flush(tcp: &mut TcpStream, tls: &mut ClientConnection) -> Result<(), Failure> {
    let mut out = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut out).map_err(|e| Failure::io(&e))?;
    }
    if !out.is_empty() {
        tcp.write_all(&out).await.map_err(|e| Failure::io(&e))?;
    }
    Ok(())
}

/// Reads once from the socket and feeds rustls. Returns true at end of stream. A TLS error is answered with the
/// alert rustls queued (best effort) and returned.
pub(crate) async fn read_some(
    tcp: &mut TcpStream,
    tls: &mut ClientConnection,
    buf: &mut [u8],
) -> Result<bool, Failure> {
    let n = tcp.read(buf).await.map_err(|e| Failure::io(&e))?;
    feed(tcp, tls, buf.get(..n).unwrap_or_default()).await
}

/// Feeds bytes read to rustls; no bytes is the end of stream (true). A TLS error is answered with the alert
/// rustls queued (best effort) and returned.
async fn feed(
    tcp: &mut TcpStream,
    tls: &mut ClientConnection,
    bytes: &[u8],
) -> Result<bool, Failure> {
    if bytes.is_empty() {
        return Ok(true);
    }
    let mut rest = bytes;
    while !rest.is_empty() {
        tls.read_tls(&mut rest).map_err(|e| Failure::io(&e))?;
        if let Err(e) = tls.process_new_packets() {
            let _ = flush(tcp, tls).await;
            return Err(Failure::tls(&e));
        }
    }
    Ok(false)
}
