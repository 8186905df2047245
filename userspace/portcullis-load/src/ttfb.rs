//! `ttfb`: time to the first response byte of one `GET` per new connection, one connection at a time, in one of
//! three modes: a full TLS 1.3 handshake, a resumption (ticket, no early data), or 0-RTT (the request sent as
//! early data with the ClientHello). The probe of `cargo xtask bench zero-rtt`.
//!
//! Each sample: TCP connect, then the TLS first flight with the request (as early data in 0-RTT mode, else
//! queued behind the client's Finished), then bytes until the first byte of the response's plaintext. TTFB is
//! timed from the moment TCP is connected, so a round trip of TCP does not hide in it: on a link of round trip
//! `R` a full handshake or a resumption costs about 2 R and 0-RTT about 1 R. A 0-RTT request the server refused
//! is sent again after the handshake, as a real client does (RFC 8446 §4.2.10), and the sample says so. Each
//! sample also records when the client's handshake ended (the server's Finished read: about 1 R, plus any wait
//! of the server's, such as a session store's fetch).
//!
//! With `--capture FILE`, the first sample's first flight (ClientHello, and in 0-RTT mode the early data
//! records) is written to FILE as sent: what an attacker on the path could record and replay.
//!
//! With `--primes N --stash-only`, N priming connections fill a stash of tickets and the samples keep none of
//! their own, so each offers a ticket issued before the samples began; with `--pause-file FILE` the probe
//! creates FILE once primed and waits for it to be removed: in between, a bench can stop the server's session
//! store, so every sample offers a ticket the server can only find there.
//!
//! Plain blocking sockets on one thread: the samples are sequential, and a thread pool would only add noise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, NamedGroup, version};
use serde::Serialize;

use crate::store::{Scope, TicketStore};
use crate::verifier::AnyCertificate;

/// Which handshake each sample makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A full TLS 1.3 handshake (no resumption offered).
    Full,
    /// A TLS 1.3 resumption with a ticket from the previous connection, no early data.
    Resumed,
    /// A TLS 1.3 resumption with the request sent as early data.
    #[value(name = "zero-rtt")]
    ZeroRtt,
}

/// Options of `portcullis-load ttfb`.
#[derive(clap::Args, Debug, Clone)]
pub struct TtfbArgs {
    /// Server address.
    #[arg(long, value_name = "IP:PORT")]
    pub target: SocketAddr,
    /// Server name sent as SNI and in `Host`.
    #[arg(long, default_value = "localhost")]
    pub sni: String,
    /// Handshake of every sample.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Request path.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Path of the connection that fetches the first ticket (resumed and 0-RTT modes; not a sample).
    #[arg(long, default_value = "/prime")]
    pub prime_path: String,
    /// Samples to take (at most).
    #[arg(long, default_value = "20", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub samples: u32,
    /// Stop taking samples after this many seconds, whatever the count.
    #[arg(long, value_name = "SECONDS", default_value = "60")]
    pub max_seconds: f64,
    /// Bound on each connection (connect to end of response), seconds.
    #[arg(long, value_name = "SECONDS", default_value = "10")]
    pub timeout: f64,
    /// Pause between samples, milliseconds (lets the server's and the upstream's connections settle).
    #[arg(long, value_name = "MS", default_value = "20")]
    pub gap_ms: u64,
    /// Write the first sample's first flight (ClientHello and early data records) to this file.
    #[arg(long, value_name = "FILE")]
    pub capture: Option<PathBuf>,
    /// Priming connections before the samples (resumed and 0-RTT modes; not samples).
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub primes: u32,
    /// Samples keep no tickets: each offers one from the priming connections, which are then full handshakes
    /// that only collect tickets (none left: a full handshake).
    #[arg(long)]
    pub stash_only: bool,
    /// Once primed, create this file and wait (at most --max-seconds) until it is removed, then sample.
    #[arg(long, value_name = "FILE")]
    pub pause_file: Option<PathBuf>,
}

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum TtfbError {
    /// Bad option.
    #[error("{0}")]
    Usage(String),
    /// A TLS configuration rustls refused.
    #[error("client TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// Writing the capture file.
    #[error("cannot write the captured first flight to {path}: {source}")]
    Capture {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The connection that fetches the first ticket failed (the server is down, or refuses TLS 1.3).
    #[error("the priming connection to {target} failed: {reason}")]
    Prime {
        /// The server.
        target: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// Every sample failed.
    #[error("all {count} samples failed; the first: {first}")]
    AllFailed {
        /// How many were tried.
        count: u32,
        /// The first failure.
        first: String,
    },
}

/// One measured connection.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// TCP connect, µs.
    pub connect_us: u64,
    /// From TCP connected to the first plaintext byte of the response, µs.
    pub ttfb_us: u64,
    /// From TCP connected to the end of the handshake on the client's side (the server's Finished read), µs.
    pub handshake_us: u64,
    /// The handshake resumed a session.
    pub resumed: bool,
    /// The request went out as early data.
    pub early_sent: bool,
    /// The server accepted the early data (else the request was sent again after the handshake).
    pub early_accepted: bool,
}

/// Median and 90th percentile, ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
}

/// What `ttfb` prints as JSON.
#[derive(Debug, Serialize)]
pub struct TtfbReport {
    /// The mode of every sample.
    pub mode: Mode,
    /// The server.
    pub target: SocketAddr,
    /// Samples that completed with a 2xx response.
    pub ok: u32,
    /// Samples that failed (connect, TLS, or a non-2xx response).
    pub failed: u32,
    /// Connections that fetched tickets (or warmed up) and are not samples.
    pub primes: u32,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Completed samples that resumed.
    pub resumed: u32,
    /// Completed samples whose request went as early data.
    pub early_sent: u32,
    /// Of those, how many the server accepted.
    pub early_accepted: u32,
    /// TCP connect times.
    pub connect_ms: Option<Quantiles>,
    /// TTFB from TCP connected.
    pub ttfb_ms: Option<Quantiles>,
    /// Every completed sample, in order.
    pub samples: Vec<Sample>,
}

/// Runs the probe: a priming connection (not a sample; again whenever a resuming mode has no ticket left),
/// then up to `samples` samples within `max_seconds`.
pub fn run(args: &TtfbArgs) -> Result<TtfbReport, TtfbError> {
    if !(args.max_seconds > 0.0 && args.timeout > 0.0) {
        return Err(TtfbError::Usage(
            "--max-seconds and --timeout must be positive".into(),
        ));
    }
    let sni = ServerName::try_from(args.sni.clone())
        .map_err(|e| TtfbError::Usage(format!("--sni {:?}: {e}", args.sni)))?;
    let store = Arc::new(Stash {
        store: TicketStore::new(Scope::Sni),
        frozen: AtomicBool::new(false),
        // Priming a stash: full handshakes that only add tickets (a server sending one ticket per handshake
        // would otherwise hand back exactly the one each resuming prime spends).
        hoarding: AtomicBool::new(args.stash_only),
    });
    let config = client_config(args.mode, store.clone())?;
    let timeout = Duration::from_secs_f64(args.timeout);
    // Not a sample: warms ARP and the server's upstream connection, and (resuming modes) fetches tickets.
    let prime_req = request(&args.sni, &args.prime_path);
    let prime = || {
        let mut noop = |_: &[u8]| Ok(());
        one(
            &config,
            &sni,
            args.target,
            Mode::Resumed,
            &prime_req,
            timeout,
            &mut noop,
        )
        .map_err(|reason| TtfbError::Prime {
            target: args.target,
            reason,
        })
    };
    for _ in 0..args.primes {
        prime()?;
    }
    let mut primes = args.primes;
    store.frozen.store(args.stash_only, Ordering::Relaxed);
    store.hoarding.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs_f64(args.max_seconds);
    if let Some(file) = &args.pause_file {
        pause(file, deadline)?;
    }
    let req = request(&args.sni, &args.path);
    let mut report = TtfbReport {
        mode: args.mode,
        target: args.target,
        ok: 0,
        failed: 0,
        primes: 0,
        first_error: None,
        resumed: 0,
        early_sent: 0,
        early_accepted: 0,
        connect_ms: None,
        ttfb_ms: None,
        samples: Vec::new(),
    };
    for i in 0..args.samples {
        if i > 0 {
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(args.gap_ms));
        }
        // Some servers send no new ticket on a resumption (OpenSSL after 0-RTT, HAProxy): fetch more on a
        // connection that is not a sample, so every sample resumes.
        if args.mode != Mode::Full && !args.stash_only && store.store.tls13_tickets() == 0 {
            prime()?;
            primes += 1;
        }
        let mut capture = |flight: &[u8]| -> Result<(), String> {
            match (&args.capture, i) {
                (Some(path), 0) => std::fs::write(path, flight).map_err(|e| {
                    TtfbError::Capture {
                        path: path.clone(),
                        source: e,
                    }
                    .to_string()
                }),
                _ => Ok(()),
            }
        };
        match one(
            &config,
            &sni,
            args.target,
            args.mode,
            &req,
            timeout,
            &mut capture,
        ) {
            Ok(s) => {
                report.ok += 1;
                report.resumed += u32::from(s.resumed);
                report.early_sent += u32::from(s.early_sent);
                report.early_accepted += u32::from(s.early_accepted);
                report.samples.push(s);
            }
            Err(e) => {
                report.failed += 1;
                report.first_error.get_or_insert(e);
            }
        }
    }
    if report.ok == 0 {
        return Err(TtfbError::AllFailed {
            count: report.failed,
            first: report.first_error.unwrap_or_default(),
        });
    }
    report.primes = primes;
    report.connect_ms = quantiles(report.samples.iter().map(|s| s.connect_us));
    report.ttfb_ms = quantiles(report.samples.iter().map(|s| s.ttfb_us));
    Ok(report)
}

/// TLS 1.3 only, X25519 first, aws-lc-rs, ALPN `http/1.1`, any certificate (signatures checked); resumption and
/// early data as the mode needs.
fn client_config(
    mode: Mode,
    store: Arc<dyn ClientSessionStore>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let provider = Arc::new(CryptoProvider {
        kx_groups: vec![aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1],
        ..Arc::unwrap_or_clone(provider)
    });
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = match mode {
        Mode::Full => Resumption::disabled(),
        Mode::Resumed | Mode::ZeroRtt => Resumption::store(store),
    };
    config.enable_early_data = mode == Mode::ZeroRtt;
    Ok(Arc::new(config))
}

/// Creates `file`, then waits until it is gone or `deadline` passes.
fn pause(file: &std::path::Path, deadline: Instant) -> Result<(), TtfbError> {
    std::fs::write(file, b"primed\n").map_err(|e| {
        TtfbError::Usage(format!(
            "cannot create the pause file {}: {e}",
            file.display()
        ))
    })?;
    while file.exists() {
        if Instant::now() >= deadline {
            return Err(TtfbError::Usage(format!(
                "the pause file {} was not removed within --max-seconds",
                file.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The probe's ticket store: once `frozen`, TLS 1.3 tickets the server sends are dropped (`--stash-only`);
/// while `hoarding` (priming for `--stash-only`), none is offered, so each prime adds what the server sends.
#[derive(Debug)]
struct Stash {
    store: TicketStore,
    frozen: AtomicBool,
    hoarding: AtomicBool,
}

impl ClientSessionStore for Stash {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.store.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.store.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.store.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.store.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.store.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        if !self.frozen.load(Ordering::Relaxed) {
            self.store.insert_tls13_ticket(server_name, value);
        }
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        if self.hoarding.load(Ordering::Relaxed) {
            return None;
        }
        self.store.take_tls13_ticket(server_name)
    }
}

fn request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// One connection: connect, first flight (handed to `capture`), handshake, response read to its end (the
/// server's tickets arrive on the way, for the next sample). Errors are a sentence for the report.
fn one(
    config: &Arc<ClientConfig>,
    sni: &ServerName<'static>,
    target: SocketAddr,
    mode: Mode,
    req: &[u8],
    timeout: Duration,
    capture: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> Result<Sample, String> {
    let start = Instant::now();
    let mut tcp = TcpStream::connect_timeout(&target, timeout)
        .map_err(|e| format!("connect to {target}: {e}"))?;
    let connected = Instant::now();
    let io = |e: std::io::Error| format!("{target}: {e}");
    tcp.set_nodelay(true).map_err(io)?;
    let mut conn = ClientConnection::new(config.clone(), sni.clone())
        .map_err(|e| format!("client connection: {e}"))?;
    let mut early_sent = false;
    if mode == Mode::ZeroRtt
        && let Some(mut early) = conn.early_data()
        && early.bytes_left() >= req.len()
    {
        early.write_all(req).map_err(io)?;
        early_sent = true;
    }
    if !early_sent {
        // Buffered by rustls until the handshake completes, then sent with the client's Finished.
        conn.writer().write_all(req).map_err(io)?;
    }
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).map_err(io)?;
    }
    capture(&flight)?;
    tcp.write_all(&flight).map_err(io)?;

    let mut resent = false;
    let mut first_byte = None;
    let mut handshake = None;
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!("{target}: no complete response within {timeout:?}"));
        }
        tcp.set_read_timeout(Some(left)).map_err(io)?;
        if early_sent && !resent && !conn.is_handshaking() && !conn.is_early_data_accepted() {
            conn.writer().write_all(req).map_err(io)?;
            resent = true;
        }
        while conn.wants_write() {
            conn.write_tls(&mut tcp).map_err(io)?;
        }
        let n = match conn.read_tls(&mut tcp) {
            Ok(n) => n,
            // A server that closes after its response without close_notify (or resets): the response is in.
            Err(_) if first_byte.is_some() => 0,
            Err(e) => return Err(io(e)),
        };
        let state = conn
            .process_new_packets()
            .map_err(|e| format!("{target}: TLS: {e}"))?;
        if !conn.is_handshaking() {
            handshake.get_or_insert_with(|| connected.elapsed());
        }
        if state.plaintext_bytes_to_read() > 0 {
            first_byte.get_or_insert_with(|| connected.elapsed());
            loop {
                match conn.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(m) => response.extend_from_slice(&buf[..m]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(io(e)),
                }
            }
        }
        if n == 0 || state.peer_has_closed() {
            break;
        }
    }
    let Some(ttfb) = first_byte else {
        return Err(format!("{target}: closed without a response"));
    };
    if !(response.starts_with(b"HTTP/1.1 2") || response.starts_with(b"HTTP/1.0 2")) {
        let head = String::from_utf8_lossy(&response[..response.len().min(60)]).into_owned();
        return Err(format!("{target}: not a 2xx response: {head:?}"));
    }
    Ok(Sample {
        connect_us: micros(connected - start),
        ttfb_us: micros(ttfb),
        handshake_us: micros(handshake.unwrap_or(ttfb)),
        resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
        early_sent,
        early_accepted: early_sent && conn.is_early_data_accepted(),
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Nearest-rank median and p90 of µs values, in ms; `None` when empty.
fn quantiles(values: impl Iterator<Item = u64>) -> Option<Quantiles> {
    let mut v: Vec<u64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = |q: f64| {
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1000.0
    };
    Some(Quantiles {
        p50: rank(0.5),
        p90: rank(0.9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_in_ms() {
        assert!(quantiles(std::iter::empty()).is_none());
        let q = quantiles((1..=10).map(|i| i * 1000)).expect("ten values");
        assert_eq!((q.p50, q.p90), (5.0, 9.0));
        let one = quantiles([2500].into_iter()).expect("one value");
        assert_eq!((one.p50, one.p90), (2.5, 2.5));
    }

    #[test]
    fn a_zero_rtt_config_offers_early_data_and_a_full_one_no_resumption() {
        let store = Arc::new(TicketStore::new(Scope::Sni));
        let z = client_config(Mode::ZeroRtt, store.clone()).expect("config");
        assert!(z.enable_early_data);
        let f = client_config(Mode::Full, store).expect("config");
        assert!(!f.enable_early_data);
        assert_eq!(f.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
