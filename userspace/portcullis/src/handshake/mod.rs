//! The handshake stage, with its named seam.
//!
//! ```text
//! accept (worker) -> read_client_hello -> inspect -> HandshakeEngine::run -> finish -> Established
//!                    rustls Acceptor      raw parse   into_connection        remaining flights
//!                                                      (the expensive step: certificate, key exchange, sign)
//! ```
//! With early data accepted on an `http` listener, `finish` returns right after the server's flight and the
//! HTTP stream completes the handshake (`Established::unfinished`), so early requests are answered a round trip
//! earlier (README "0-RTT").
//!
//! `run` takes the client socket and returns it inside the [`TlsConn`] of `Established` (or inside `Refused`, so
//! the caller counts a failure before the socket closes).
//!
//! Each step is a function here; only the expensive step is behind a trait ([`engine::HandshakeEngine`]) so
//! the offload engine and admission control plug in there without touching the rest.

pub mod arrival;
pub mod class;
pub mod early_data;
pub mod engine;
pub mod failure;
pub mod inspect;
pub mod psk;
pub mod refusal;
pub mod stages;

use std::cell::Cell;
use std::sync::Arc;

use rustls::server::{Accepted, Acceptor, ServerConnection};
use rustls::{HandshakeKind, ProtocolVersion, ServerConfig};
use tokio::net::TcpStream;

use crate::metrics::{ModeLabel, VersionLabel};
use crate::tls::resolver::SniResolver;
use crate::tls_conn::{TcpWrite, TlsConn};
use class::HandshakeClass;
use early_data::EarlyData;
use engine::{EngineError, HandshakeEngine, Job};
use failure::Failure;
use inspect::HelloInfo;
use stages::StageClock;

/// A finished handshake.
pub struct Established {
    /// The connection (socket and rustls state), ready for application data.
    pub tls: TlsConn,
    /// What the ClientHello said.
    pub hello: HelloInfo,
    /// Negotiated version.
    pub version: VersionLabel,
    /// Full or resumed.
    pub mode: ModeLabel,
    /// When it passed each stage (completed now).
    pub stages: StageClock,
    /// Early data rustls accepted, held until now: the first bytes for the upstream.
    pub early_data: Vec<u8>,
    /// `Some` when the stage returned right after its flight, before the client's Finished (0-RTT accepted and
    /// `run`'s `release_early`): the early data is still in rustls, and whoever reads the connection next
    /// drives the handshake to its end and calls [`Unfinished::complete`] (once, success or failure).
    pub unfinished: Option<Unfinished>,
}

/// Called once when a handshake handed over before the client's Finished ends: `Ok` at the Finished, or why it
/// failed (the stream's reader runs it).
pub type OnFinished = Box<dyn FnOnce(Result<(), HandshakeError>) + Send>;

/// A handshake handed over before the client's Finished: what its end still has to count.
pub struct Unfinished {
    prepared: early_data::Prepared,
    counters: crate::tickets::session_store::metrics::EarlyDataCounters,
}

impl Unfinished {
    /// Counts the early-data outcome once the client's Finished was processed (`Ok`) or the handshake failed
    /// (too much early data is `too_large`, as in the stage).
    pub fn complete(self, result: Result<(), &HandshakeError>) {
        match result {
            Ok(()) => self.prepared.count_accepted(&self.counters),
            Err(e) => {
                self.prepared
                    .count_failed(&self.counters, e.detail == too_much_early_data());
            }
        }
    }
}

/// A failed handshake: the cause, and the version when it was already negotiated.
#[derive(Debug)]
pub struct HandshakeError {
    /// Why.
    pub failure: Failure,
    /// Detail for the debug log (never key material).
    pub detail: String,
}

impl HandshakeError {
    /// A failure with its detail.
    pub fn new(failure: Failure, detail: impl Into<String>) -> Self {
        Self {
            failure,
            detail: detail.into(),
        }
    }
}

/// A failed handshake with the socket it failed on: the caller counts the failure before the socket closes, so
/// a client that sees the close sees the count too.
pub struct Refused {
    /// Why.
    pub error: HandshakeError,
    /// The client socket, to close (or reset) once the failure is counted.
    pub tcp: TcpStream,
}

/// Runs the whole handshake on `tcp` until `deadline` (`tls.handshake_timeout` after accept; past it the failure
/// is [`Failure::Timeout`]). `certs` is the certificate choice inside `config`, asked for the key type to
/// classify the handshake. `max_hello` is `tls.max_client_hello_size`: a longer ClientHello is refused. `on_hello`
/// sees every inspected ClientHello, before the expensive step, whatever the outcome (offers are counted there, so
/// a rate of accepted / offered resumptions is honest). `early` is the listener's early-data step, which may
/// choose another configuration than `config`. `release_early`: when rustls accepted early data, return right
/// after the server's flight, before the client's Finished (`Established::unfinished`), so early requests can be
/// answered a round trip earlier; the early data then stays in rustls. Without it (tcp mode) early data is held
/// until the Finished.
#[expect(
    clippy::too_many_arguments,
    reason = "the stage's inputs, each named at the one call site"
)]
pub async fn run(
    tcp: TcpStream,
    deadline: tokio::time::Instant,
    config: &Arc<ServerConfig>,
    certs: &SniResolver,
    engine: &dyn HandshakeEngine,
    max_hello: usize,
    early: &EarlyData,
    release_early: bool,
    on_hello: impl FnOnce(&HelloInfo),
) -> Result<Established, Refused> {
    let timed_out = |tcp| Refused {
        error: HandshakeError::new(Failure::Timeout, "tls.handshake_timeout passed"),
        tcp,
    };
    let mut stages = StageClock::default();
    let crypto = tokio::time::timeout_at(
        deadline,
        hello_and_crypto(
            &tcp,
            config,
            certs,
            engine,
            max_hello,
            early,
            on_hello,
            &mut stages,
        ),
    )
    .await;
    let (conn, hello, prepared) = match crypto {
        Ok(Ok(done)) => done,
        Ok(Err(error)) => return Err(Refused { error, tcp }),
        Err(_) => return Err(timed_out(tcp)),
    };
    let mut tls = TlsConn::new(tcp, conn);
    let finished =
        tokio::time::timeout_at(deadline, finish(&mut tls, &mut stages, release_early)).await;
    let released = match finished {
        Ok(Ok(released)) => released,
        Ok(Err(error)) => {
            early.count(&prepared, None, error.detail == too_much_early_data());
            let tcp = tls.into_tcp();
            return Err(Refused { error, tcp });
        }
        Err(_) => return Err(timed_out(tls.into_tcp())),
    };
    let (early_data, unfinished) = if released {
        let counters = early.counters().clone();
        (Vec::new(), Some(Unfinished { prepared, counters }))
    } else {
        early.count(&prepared, Some(&mut *tls), false);
        (early_data::drain(&mut tls), None)
    };
    let version = match tls.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => VersionLabel::Tls13,
        Some(ProtocolVersion::TLSv1_2) => VersionLabel::Tls12,
        _ => VersionLabel::None,
    };
    let mode = match tls.handshake_kind() {
        Some(HandshakeKind::Resumed) => ModeLabel::Resumed,
        Some(_) => ModeLabel::Full,
        None => ModeLabel::None,
    };
    Ok(Established {
        tls,
        hello,
        version,
        mode,
        stages,
        early_data,
        unfinished,
    })
}

/// Steps 1 to 3: the ClientHello read and inspected, then the expensive step, which returns the rustls
/// connection with the server's flight queued.
#[expect(
    clippy::too_many_arguments,
    reason = "the stage's inputs, passed on from `run`"
)]
async fn hello_and_crypto(
    tcp: &TcpStream,
    config: &Arc<ServerConfig>,
    certs: &SniResolver,
    engine: &dyn HandshakeEngine,
    max_hello: usize,
    early: &EarlyData,
    on_hello: impl FnOnce(&HelloInfo),
    stages: &mut StageClock,
) -> Result<(ServerConnection, HelloInfo, early_data::Prepared), HandshakeError> {
    let (accepted, raw) = read_client_hello(tcp, config, max_hello, stages).await?;
    stages.hello();
    let hello = HelloInfo::new(accepted.client_hello().server_name(), &raw);
    give_back(raw);
    on_hello(&hello);
    let class = HandshakeClass::classify(&hello, &accepted, certs);
    let prepared = early.prepare(&hello, config).await;
    if peer_gone(tcp) {
        early.count(&prepared, None, false);
        return Err(HandshakeError::new(
            Failure::ClientClosed,
            "the client reset the connection before the server's flight: its expensive step was skipped",
        ));
    }
    let job = Job {
        accepted,
        config: prepared.config.clone(),
        class,
        max_wait: None,
    };
    let ran = engine.run(job).await;
    if ran.is_err() {
        early.count(&prepared, None, false);
    }
    match ran {
        Ok(done) => {
            stages.crypto(done.started, done.finished);
            Ok((done.conn, hello, prepared))
        }
        Err(EngineError::Tls(err, mut alert)) => {
            // Best effort: tell the client why before closing.
            let _ = alert.write(&mut TcpWrite(tcp));
            Err(HandshakeError::new(
                Failure::from_rustls(&err),
                err.to_string(),
            ))
        }
        Err(EngineError::Shed(reason)) => Err(HandshakeError::new(Failure::Shed, reason.name())),
        Err(EngineError::Lost) => Err(HandshakeError::new(
            Failure::Internal,
            "the offload engine lost the job",
        )),
    }
}

/// Whether the client has already reset the connection: checked right before the expensive step, whose result
/// nobody can receive any more. That is the cheapest handshake flood there is: a valid ClientHello, then a reset,
/// from sources within the guard's budgets (phase c of `cargo xtask bench flood`; also clients that gave up while
/// a worker was behind), each of which would otherwise cost a key exchange and a signature.
///
/// Only a reset counts: a client that half-closed after its ClientHello (`shutdown(SHUT_WR)`: scanners, and
/// test harnesses that send a ClientHello and read the answer) still reads the server's flight, as bare rustls
/// and every other server send it. The readiness the worker last took from epoll rarely knows yet (the reset
/// lands microseconds after the ClientHello that woke the worker), so this asks the socket: one
/// `recv(MSG_PEEK | MSG_DONTWAIT)` of a byte, ≈ 0.3 µs against the ≈ 100 µs it saves per such ClientHello.
fn peer_gone(tcp: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(tcp).peek(&mut byte) {
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ),
    }
}

/// rustls' error for a client sending more early data than its ticket allowed.
fn too_much_early_data() -> String {
    rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::TooMuchEarlyDataReceived).to_string()
}

/// Step 1: read until rustls has a whole ClientHello, however many records and segments it spans, keeping the
/// raw bytes for our own parse.
///
/// rustls reads into its own buffer, as much as its deframer takes (4 KiB at a time), and `accept` runs after
/// every read, as `Acceptor::read_tls` asks: feeding it a whole socket read before `accept` overran that buffer at
/// the end of a full first record ("message buffer full"), which refused every ClientHello longer than one record
/// without an alert (issue 17). A first handshake message declared longer than `max_hello` is refused with
/// `decode_error` as soon as its header arrives.
async fn read_client_hello(
    tcp: &TcpStream,
    config: &Arc<ServerConfig>,
    max_hello: usize,
    stages: &mut StageClock,
) -> Result<(Accepted, Vec<u8>), HandshakeError> {
    let mut acceptor = Acceptor::default();
    let mut raw = Vec::new();
    let mut restarts = 0;
    loop {
        let mut source = Recorder {
            tcp,
            raw: &mut raw,
            stages: &mut *stages,
            called: false,
            short: false,
        };
        let n = match acceptor.read_tls(&mut source) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tcp.readable()
                    .await
                    .map_err(|e| HandshakeError::new(Failure::from_io(&e), e.to_string()))?;
                continue;
            }
            // rustls refused to buffer more before reading: its 64 KiB buffer holds the records' headers too, so
            // a ClientHello near that size, or one cut into tiny records, fills it. A bare rustls server closes
            // without an alert there; the RFC 8446 §6 one for a message too long to take is decode_error.
            Err(e) if !source.called => {
                return Err(refusal::too_large(tcp, format!("rustls: {e}")));
            }
            Err(e) => return Err(HandshakeError::new(Failure::from_io(&e), e.to_string())),
        };
        let drained = source.short;
        if n == 0 {
            let failure = if inspect::looks_like_tls(&raw) {
                Failure::ClientClosed
            } else {
                Failure::NotTls
            };
            return Err(HandshakeError::new(
                failure,
                "end of stream before a whole ClientHello",
            ));
        }
        if !inspect::looks_like_tls(&raw) {
            return Err(HandshakeError::new(
                Failure::NotTls,
                "first bytes are not a TLS record",
            ));
        }
        if let Some(len) = inspect::first_message_len(&raw)
            && len > max_hello
        {
            return Err(refusal::too_large(
                tcp,
                format!(
                    "first handshake message of {len} bytes, more than tls.max_client_hello_size = {max_hello}"
                ),
            ));
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                if drained {
                    // Nothing more until the client has our flight: its next bytes wake the finish step.
                    arrival::drained(tcp);
                }
                return Ok((accepted, raw));
            }
            Ok(None) => {}
            Err((err, alert)) => {
                let answer = refusal::replay(config, &raw);
                if !answer.goes_on() || restarts == MAX_RESTARTS {
                    return Err(refusal::refuse(tcp, answer, err, alert));
                }
                restarts += 1;
                acceptor = Acceptor::default();
                if let Some(accepted) = restart(tcp, config, &mut acceptor, &raw)? {
                    return Ok((accepted, raw));
                }
            }
        }
    }
}

/// Starts step 1 again on `acceptor` (a new one) from the first handshake record in `raw`: the Acceptor refuses
/// any record before the ClientHello, where a bare rustls server skips warning alerts and goes on.
fn restart(
    tcp: &TcpStream,
    config: &Arc<ServerConfig>,
    acceptor: &mut Acceptor,
    raw: &[u8],
) -> Result<Option<Accepted>, HandshakeError> {
    let mut rest = raw
        .get(inspect::leading_records_end(raw)..)
        .unwrap_or_default();
    while !rest.is_empty() {
        if let Err(e) = acceptor.read_tls(&mut rest) {
            return Err(HandshakeError::new(Failure::ProtocolError, e.to_string()));
        }
    }
    acceptor.accept().map_err(|(err, alert)| {
        let answer = refusal::replay(config, raw);
        refusal::refuse(tcp, answer, err, alert)
    })
}

/// How many times step 1 starts again after records a bare rustls server skips before the ClientHello (its
/// own tolerance ends the connection earlier: 4 warning alerts).
const MAX_RESTARTS: u32 = 4;

/// The socket as rustls' reader during step 1: records each read's bytes in `raw` and the kernel's receive
/// stamp in `stages`.
struct Recorder<'a> {
    tcp: &'a TcpStream,
    raw: &'a mut Vec<u8>,
    stages: &'a mut StageClock,
    /// rustls called `read` (an error without a call is rustls refusing to buffer more).
    called: bool,
    /// The read returned fewer bytes than rustls asked for: the socket is drained ([`arrival::drained`]).
    short: bool,
}

impl std::io::Read for Recorder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.called = true;
        let (n, stamp) = arrival::try_read(self.tcp, buf)?;
        self.short = n > 0 && n < buf.len();
        self.stages.first_read(stamp);
        if self.raw.capacity() == 0 {
            // Taken at the first bytes, not at accept: a connection waiting for its ClientHello holds none.
            *self.raw = HELLO_BUFFER.with(Cell::take);
        }
        self.raw.extend_from_slice(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

thread_local! {
    /// A worker's buffer for step 1's raw bytes, reused from handshake to handshake: taken at a connection's
    /// first read, given back once its ClientHello is inspected ([`give_back`]), so a worker whose ClientHellos
    /// come whole (the usual case: no await in between) allocates none. Another connection reading meanwhile
    /// gets a new one.
    static HELLO_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The largest buffer [`HELLO_BUFFER`] keeps (a worker does not hold on to a rare 64 KiB ClientHello's).
const KEPT_HELLO_BUFFER: usize = 16 * 1024;

/// Returns step 1's buffer to the worker's [`HELLO_BUFFER`].
fn give_back(mut raw: Vec<u8>) {
    if raw.capacity() <= KEPT_HELLO_BUFFER {
        raw.clear();
        HELLO_BUFFER.with(|b| b.set(raw));
    }
}

/// Step 4: exchange the remaining flights until the handshake completes. Bytes the client sent after its
/// ClientHello may already be in rustls (they came in the same reads): they are processed before waiting for
/// more, as a bare rustls server does, so an error in them is answered with its alert. With `release_early`
/// and early data accepted, it returns `Ok(true)` once the server's flight is written, the handshake unfinished.
async fn finish(
    tls: &mut TlsConn,
    stages: &mut StageClock,
    release_early: bool,
) -> Result<bool, HandshakeError> {
    let io_err = |e: std::io::Error| HandshakeError::new(Failure::from_io(&e), e.to_string());
    loop {
        // On an error rustls queued an alert describing it: `process` sends it, then we fail.
        let state = match tls.process().await {
            Ok(state) => state,
            Err(err) => {
                return Err(HandshakeError::new(
                    Failure::from_rustls(&err),
                    err.to_string(),
                ));
            }
        };
        if !tls.is_handshaking() && state.peer_has_closed() && state.plaintext_bytes_to_read() == 0
        {
            // The client sent close_notify with its Finished (a probe, a health check): whoever has the
            // connection next only closes it, and the session tickets leave with our close_notify, in one write
            // and one segment instead of two (every path after the stage flushes rustls before it reads or closes).
            return Ok(false);
        }
        tls.flush().await.map_err(io_err)?;
        stages.flight();
        if !tls.is_handshaking() {
            return Ok(false);
        }
        if release_early && tls.early_data().is_some() {
            return Ok(true);
        }
        if !tls.read().await.map_err(io_err)? {
            return Err(HandshakeError::new(
                Failure::ClientClosed,
                "end of stream during the handshake",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_abi::hello_fixtures::{
        Hello, alpn, extensions, key_share, sni, u16_list, versions,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The ClientHello read, then the client's reset: `peer_gone` says so; not for a client still there (nothing
    /// more sent, or bytes waiting) nor for one that half-closed (it can still read the flight).
    #[tokio::test]
    async fn a_client_that_reset_after_its_hello_is_gone_one_still_there_or_half_closed_is_not() {
        for how in ["reset", "fin", "there", "more"] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
                .await
                .expect("connect");
            let (server, _) = listener.accept().await.expect("accept");
            let hello = hello_in_records(0);
            client.write_all(&hello).await.expect("write");
            let mut buf = vec![0; hello.len()];
            server.readable().await.expect("readable");
            let mut got = 0;
            while got < hello.len() {
                match server.try_read(&mut buf[got..]) {
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        server.readable().await.expect("readable");
                    }
                    Err(e) => panic!("read: {e}"),
                }
            }
            assert!(
                !peer_gone(&server),
                "{how}: the ClientHello alone does not make the client gone"
            );
            match how {
                "reset" => {
                    socket2::SockRef::from(&client)
                        .set_linger(Some(std::time::Duration::ZERO))
                        .expect("linger");
                    drop(client);
                }
                "fin" => client.shutdown().await.expect("shutdown"),
                "more" => client.write_all(b"early").await.expect("write"),
                _ => {}
            }
            // The FIN or RST crosses loopback at once, but give it a few milliseconds.
            let mut gone = false;
            for _ in 0..50 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                if peer_gone(&server) {
                    gone = true;
                    break;
                }
            }
            assert_eq!(gone, how == "reset", "{how}");
        }
    }

    /// A TLS 1.3 ClientHello of about `padding` bytes more than usual (an unknown extension), in records of at
    /// most 2^14 bytes.
    fn hello_in_records(padding: usize) -> Vec<u8> {
        let mut hello = Hello::valid();
        hello.tail = extensions(&[
            (0, sni("example.com")),
            (10, u16_list(&[0x001d])),
            (13, u16_list(&[0x0403, 0x0804])),
            (16, alpn()),
            (43, versions(&[0x0304])),
            (51, key_share(&[(0x001d, 32)])),
            (0x7777, vec![0x5a; padding]),
        ]);
        let record = hello.encode();
        let mut out = Vec::new();
        for payload in record[5..].chunks(1 << 14) {
            out.extend_from_slice(&record[..3]);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            out.extend_from_slice(payload);
        }
        out
    }

    /// Sends `segments` (one write each) and runs step 1 on the server side with `max_hello`; returns its
    /// outcome (the raw bytes' length, or the failure) and what the client received until the server closed.
    async fn step_one(
        segments: Vec<Vec<u8>>,
        max_hello: usize,
    ) -> (Result<usize, Failure>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback test socket");
        let addr = listener.local_addr().expect("loopback test socket");
        let client = tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(addr)
                .await
                .expect("loopback test socket");
            tcp.set_nodelay(true).expect("loopback test socket");
            for segment in segments {
                if tcp.write_all(&segment).await.is_err() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer).await;
            answer
        });
        let (server, _) = listener.accept().await.expect("loopback test socket");
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
        let outcome = read_client_hello(
            &server,
            &Arc::new(config),
            max_hello,
            &mut StageClock::default(),
        )
        .await
        .map(|(_, raw)| raw.len())
        .map_err(|e| e.failure);
        drop(server);
        (outcome, client.await.expect("client task"))
    }

    #[tokio::test]
    async fn a_hello_in_three_records_and_segments_is_read_whole() {
        let wire = hello_in_records(40 * 1024);
        let segments: Vec<Vec<u8>> = wire.chunks((1 << 14) + 5).map(<[u8]>::to_vec).collect();
        assert_eq!(segments.len(), 3);
        let (outcome, _) = step_one(segments, 64 * 1024).await;
        assert_eq!(outcome, Ok(wire.len()));
        // What inspect sees is the reassembled message, the padding's body left out: whole, fingerprinted.
        let info = HelloInfo::new(None, &wire);
        assert_eq!(info.malformed, None);
        assert!(info.offers_tls13);
        assert!(info.fingerprint.is_some());
    }

    /// After a ClientHello read whole in a short read, the socket reads as not ready without another system
    /// call, and bytes the client sends later still wake the reader.
    #[tokio::test]
    async fn a_short_hello_read_clears_the_readiness_and_later_bytes_wake_the_reader() {
        let (server, mut client) = arrival::loopback_with(&hello_in_records(0)).await;
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
        let read = read_client_hello(
            &server,
            &Arc::new(config),
            64 * 1024,
            &mut StageClock::default(),
        )
        .await;
        assert!(read.is_ok(), "the fixture is a whole ClientHello");
        let zero = std::time::Duration::ZERO;
        assert!(
            tokio::time::timeout(zero, server.ready(tokio::io::Interest::READABLE))
                .await
                .is_err(),
            "still marked readable after the short read"
        );
        client.write_all(b"x").await.expect("loopback test socket");
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), server.readable()).await;
        assert!(
            matches!(woke, Ok(Ok(()))),
            "a later byte did not wake the reader"
        );
        let mut byte = [0u8; 1];
        assert_eq!(server.try_read(&mut byte).ok(), Some(1));
    }

    /// A client whose close_notify comes with its Finished gets the session tickets with our close_notify (the
    /// stage leaves them queued: one write less); a client that stays open gets them from the stage.
    #[tokio::test]
    async fn tickets_wait_for_our_close_notify_only_when_the_client_closed_with_its_finished() {
        for client_closes in [true, false] {
            let (server, client) = crate::test_tls::tls13_pair();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("loopback test socket");
            let addr = listener.local_addr().expect("loopback test socket");
            let client = std::thread::spawn(move || {
                use std::io::Read as _;
                let mut sock = std::net::TcpStream::connect(addr).expect("loopback test socket");
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let mut conn =
                    rustls::ClientConnection::new(Arc::new(client), name).expect("client");
                while conn.is_handshaking() {
                    if conn.wants_write() {
                        conn.write_tls(&mut sock).expect("client write");
                    } else {
                        conn.read_tls(&mut sock).expect("client read");
                        conn.process_new_packets().expect("server flight");
                    }
                }
                // The Finished is queued: with close_notify behind it, both leave in one write.
                if client_closes {
                    conn.send_close_notify();
                }
                while conn.wants_write() {
                    conn.write_tls(&mut sock).expect("client write");
                }
                let mut after = Vec::new();
                let _ = sock.read_to_end(&mut after);
                after.len()
            });
            let (tcp, _) = listener.accept().await.expect("loopback test socket");
            let conn = ServerConnection::new(Arc::new(server)).expect("server");
            let mut tls = TlsConn::new(tcp, conn);
            let released = finish(&mut tls, &mut StageClock::default(), false).await;
            assert!(
                matches!(released, Ok(false)),
                "client_closes = {client_closes}"
            );
            assert_eq!(
                tls.wants_write(),
                client_closes,
                "tickets still queued after the stage, client_closes = {client_closes}"
            );
            tls.close().await;
            drop(tls);
            // Two tickets (a few hundred bytes) and close_notify (24 bytes) reached the client either way.
            let after = client.join().expect("client thread");
            assert!(
                after > 100,
                "the client got {after} bytes after its Finished"
            );
        }
    }

    #[tokio::test]
    async fn a_hello_over_the_limit_gets_decode_error() {
        let wire = hello_in_records(5000);
        let (outcome, answer) = step_one(vec![wire], 4096).await;
        assert_eq!(outcome, Err(Failure::HelloTooLarge));
        assert_eq!(answer, [21, 3, 3, 0, 2, 2, 50]);
    }

    #[tokio::test]
    async fn another_handshake_type_gets_an_alert() {
        let mut wire = hello_in_records(0);
        wire[5] = 255;
        let (outcome, answer) = step_one(vec![wire], 64 * 1024).await;
        assert_eq!(outcome, Err(Failure::ProtocolError));
        assert_eq!(answer, [21, 3, 3, 0, 2, 2, 10], "unexpected_message");
    }
}
