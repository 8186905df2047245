//! The handshake stage, with its named seam.
//!
//! ```text
//! accept (worker) -> read_client_hello -> inspect -> HandshakeEngine::run -> finish -> Established
//!                    rustls Acceptor      raw parse   into_connection        remaining flights
//!                                                      (the expensive step: certificate, key exchange, sign)
//! ```
//! Each step is a function here; only the expensive step is behind a trait ([`engine::HandshakeEngine`]) so
//! the offload engine and admission control plug in there without touching the rest.

pub mod arrival;
pub mod class;
pub mod engine;
pub mod failure;
pub mod inspect;
pub mod refusal;
pub mod stages;

use std::sync::Arc;

use rustls::server::{Accepted, Acceptor, ServerConnection};
use rustls::{HandshakeKind, ProtocolVersion, ServerConfig};
use tokio::net::TcpStream;

use crate::metrics::{ModeLabel, VersionLabel};
use crate::tls::resolver::SniResolver;
use crate::tls_io;
use class::HandshakeClass;
use engine::{EngineError, HandshakeEngine, Job};
use failure::Failure;
use inspect::HelloInfo;
use stages::StageClock;

/// A finished handshake.
pub struct Established {
    /// The connection, ready for application data.
    pub conn: ServerConnection,
    /// What the ClientHello said.
    pub hello: HelloInfo,
    /// Negotiated version.
    pub version: VersionLabel,
    /// Full or resumed.
    pub mode: ModeLabel,
    /// When it passed each stage (completed now).
    pub stages: StageClock,
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
    fn new(failure: Failure, detail: impl Into<String>) -> Self {
        Self {
            failure,
            detail: detail.into(),
        }
    }
}

/// Runs the whole handshake on `tcp`. `certs` is the certificate choice inside `config`, asked for the key type
/// to classify the handshake. `max_hello` is `tls.max_client_hello_size`: a longer ClientHello is refused. `on_hello` sees every inspected ClientHello, before the expensive step,
/// whatever the outcome (offers are counted there, so a rate of accepted / offered resumptions is honest).
pub async fn run(
    tcp: &TcpStream,
    config: &Arc<ServerConfig>,
    certs: &SniResolver,
    engine: &dyn HandshakeEngine,
    max_hello: usize,
    on_hello: impl FnOnce(&HelloInfo),
) -> Result<Established, HandshakeError> {
    let mut stages = StageClock::default();
    let (accepted, raw) = read_client_hello(tcp, config, max_hello, &mut stages).await?;
    stages.hello();
    let hello = HelloInfo::new(accepted.client_hello().server_name(), &raw);
    drop(raw);
    on_hello(&hello);
    let class = HandshakeClass::classify(&hello, &accepted, certs);
    let job = Job {
        accepted,
        config: config.clone(),
        hello: hello.clone(),
        class,
        max_wait: None,
    };
    let mut conn = match engine.run(job).await {
        Ok(done) => {
            stages.crypto(done.started, done.finished);
            done.conn
        }
        Err(EngineError::Tls(err, mut alert)) => {
            // Best effort: tell the client why before closing.
            let _ = alert.write(&mut tls_io::TcpWrite(tcp));
            return Err(HandshakeError::new(
                Failure::from_rustls(&err),
                err.to_string(),
            ));
        }
        Err(EngineError::Shed(reason)) => {
            return Err(HandshakeError::new(Failure::Shed, reason.name()));
        }
        Err(EngineError::Lost) => {
            return Err(HandshakeError::new(
                Failure::Internal,
                "the offload engine lost the job",
            ));
        }
    };
    finish(tcp, &mut conn, &mut stages).await?;
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => VersionLabel::Tls13,
        Some(ProtocolVersion::TLSv1_2) => VersionLabel::Tls12,
        _ => VersionLabel::None,
    };
    let mode = match conn.handshake_kind() {
        Some(HandshakeKind::Resumed) => ModeLabel::Resumed,
        Some(_) => ModeLabel::Full,
        None => ModeLabel::None,
    };
    Ok(Established {
        conn,
        hello,
        version,
        mode,
        stages,
    })
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
        };
        let n = match acceptor.read_tls(&mut source) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tcp.readable()
                    .await
                    .map_err(|e| HandshakeError::new(Failure::from_io(&e), e.to_string()))?;
                continue;
            }
            // rustls refused to buffer more before reading (its 64 KiB handshake buffer is full: records too
            // small for the message they carry). Only reachable with `max_hello` near rustls' own limit.
            Err(e) if !source.called => {
                return Err(refusal::too_large(tcp, format!("rustls: {e}")));
            }
            Err(e) => return Err(HandshakeError::new(Failure::from_io(&e), e.to_string())),
        };
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
            Ok(Some(accepted)) => return Ok((accepted, raw)),
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
}

impl std::io::Read for Recorder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.called = true;
        let (n, stamp) = arrival::try_read(self.tcp, buf)?;
        self.stages.first_read(stamp);
        self.raw.extend_from_slice(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// Step 4: exchange the remaining flights until the handshake completes. Bytes the client sent after its
/// ClientHello may already be in rustls (they came in the same reads): they are processed before waiting for
/// more, as a bare rustls server does, so an error in them is answered with its alert.
async fn finish(
    tcp: &TcpStream,
    conn: &mut ServerConnection,
    stages: &mut StageClock,
) -> Result<(), HandshakeError> {
    let io_err = |e: std::io::Error| HandshakeError::new(Failure::from_io(&e), e.to_string());
    loop {
        if let Err(err) = conn.process_new_packets() {
            // rustls queued an alert describing the error: send it, then fail.
            let _ = tls_io::flush(tcp, conn).await;
            return Err(HandshakeError::new(
                Failure::from_rustls(&err),
                err.to_string(),
            ));
        }
        tls_io::flush(tcp, conn).await.map_err(io_err)?;
        stages.flight();
        if !conn.is_handshaking() {
            return Ok(());
        }
        if !tls_io::read(tcp, conn).await.map_err(io_err)? {
            return Err(HandshakeError::new(
                Failure::ClientClosed,
                "end of stream during the handshake",
            ));
        }
    }
}
