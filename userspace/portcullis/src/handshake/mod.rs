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
pub mod early_data;
pub mod engine;
pub mod failure;
pub mod inspect;
pub mod psk;
pub mod stages;

use std::sync::Arc;

use rustls::server::{Accepted, Acceptor, ServerConnection};
use rustls::{HandshakeKind, ProtocolVersion, ServerConfig};
use tokio::net::TcpStream;

use crate::metrics::{ModeLabel, VersionLabel};
use crate::tls::resolver::SniResolver;
use crate::tls_io;
use class::HandshakeClass;
use early_data::EarlyData;
use engine::{EngineError, HandshakeEngine, Job};
use failure::Failure;
use inspect::HelloInfo;
use stages::StageClock;

/// Most bytes of the client's first flight kept for our own parse: a full ClientHello record (2^14 bytes of
/// payload plus its header), more than any real one (post-quantum ones are ~1.2-1.9 KB).
const MAX_RAW_HELLO: usize = 16 * 1024 + 5;

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
    /// Early data rustls accepted, held until now: the first bytes for the upstream.
    pub early_data: Vec<u8>,
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
/// to classify the handshake. `on_hello` sees every inspected ClientHello, before the expensive step,
/// whatever the outcome (offers are counted there, so a rate of accepted / offered resumptions is honest).
/// `early` is the listener's early-data step, which may choose another configuration than `config`.
pub async fn run(
    tcp: &TcpStream,
    config: &Arc<ServerConfig>,
    certs: &SniResolver,
    engine: &dyn HandshakeEngine,
    early: &EarlyData,
    on_hello: impl FnOnce(&HelloInfo),
) -> Result<Established, HandshakeError> {
    let mut stages = StageClock::default();
    let (accepted, raw) = read_client_hello(tcp, &mut stages).await?;
    stages.hello();
    let hello = HelloInfo::new(accepted.client_hello().server_name(), &raw);
    drop(raw);
    on_hello(&hello);
    let class = HandshakeClass::classify(&hello, &accepted, certs);
    let prepared = early.prepare(&hello, config).await;
    let job = Job {
        accepted,
        config: prepared.config.clone(),
        hello: hello.clone(),
        class,
        max_wait: None,
    };
    let ran = engine.run(job).await;
    if ran.is_err() {
        early.count(&prepared, None, false);
    }
    let mut conn = match ran {
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
    if let Err(e) = finish(tcp, &mut conn, &mut stages).await {
        early.count(&prepared, None, e.detail == too_much_early_data());
        return Err(e);
    }
    early.count(&prepared, Some(&mut conn), false);
    let early_data = early_data::drain(&mut conn);
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
        early_data,
    })
}

/// rustls' error for a client sending more early data than its ticket allowed.
fn too_much_early_data() -> String {
    rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::TooMuchEarlyDataReceived).to_string()
}

/// Step 1: read until rustls has a whole ClientHello, keeping the raw bytes for our own parse.
async fn read_client_hello(
    tcp: &TcpStream,
    stages: &mut StageClock,
) -> Result<(Accepted, Vec<u8>), HandshakeError> {
    let mut acceptor = Acceptor::default();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = loop {
            match arrival::try_read(tcp, &mut buf) {
                Ok((n, stamp)) => {
                    stages.first_read(stamp);
                    break n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tcp.readable()
                        .await
                        .map_err(|e| HandshakeError::new(Failure::from_io(&e), e.to_string()))?;
                }
                Err(e) => return Err(HandshakeError::new(Failure::from_io(&e), e.to_string())),
            }
        };
        let Some(chunk) = buf.get(..n) else {
            return Err(HandshakeError::new(Failure::Internal, "read past buffer"));
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
        let room = MAX_RAW_HELLO.saturating_sub(raw.len());
        raw.extend_from_slice(chunk.get(..room.min(n)).unwrap_or_default());
        if !inspect::looks_like_tls(&raw) {
            return Err(HandshakeError::new(
                Failure::NotTls,
                "first bytes are not a TLS handshake record",
            ));
        }
        let mut rd: &[u8] = chunk;
        while !rd.is_empty() {
            if let Err(e) = acceptor.read_tls(&mut rd) {
                return Err(HandshakeError::new(Failure::ProtocolError, e.to_string()));
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok((accepted, raw)),
            Ok(None) => {}
            Err((err, mut alert)) => {
                let _ = alert.write(&mut tls_io::TcpWrite(tcp));
                return Err(HandshakeError::new(
                    Failure::from_rustls(&err),
                    err.to_string(),
                ));
            }
        }
    }
}

/// Step 4: exchange the remaining flights until the handshake completes.
async fn finish(
    tcp: &TcpStream,
    conn: &mut ServerConnection,
    stages: &mut StageClock,
) -> Result<(), HandshakeError> {
    let io_err = |e: std::io::Error| HandshakeError::new(Failure::from_io(&e), e.to_string());
    loop {
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
        if let Err(err) = conn.process_new_packets() {
            // rustls queued an alert describing the error: send it, then fail.
            let _ = tls_io::flush(tcp, conn).await;
            return Err(HandshakeError::new(
                Failure::from_rustls(&err),
                err.to_string(),
            ));
        }
    }
}
