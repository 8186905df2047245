//! The "limit" column: rustls handshakes in memory, client and server in this process, timing only the server's
//! side with the thread's CPU clock. No sockets, no scheduler, no HTTP: what a rustls-based server could spend
//! per handshake at best with this key, provider and group.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, ServerConfig, ServerConnection};
use serde::Serialize;

use crate::client_config::{ClientConfigs, TlsOptions};
use crate::kind::Kind;

/// What to measure.
#[derive(Clone, Debug)]
pub struct LimitSpec {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// Handshake kind (a resuming kind is primed with one unmeasured handshake).
    pub kind: Kind,
    /// Handshakes to time.
    pub handshakes: u32,
    /// Client settings (groups matter: the server does the key exchange the client picks).
    pub tls: TlsOptions,
}

/// The result.
#[derive(Clone, Debug, Serialize)]
pub struct LimitResult {
    /// The kind measured.
    pub kind: Kind,
    /// Handshakes timed.
    pub handshakes: u32,
    /// Of those, resumed.
    pub resumed: u32,
    /// Server-side thread CPU time per handshake, µs.
    pub server_cpu_us: f64,
    /// Client-side thread CPU time per handshake, µs (for comparison: a client costs more).
    pub client_cpu_us: f64,
}

/// Why the limit could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The certificate or key file is unusable.
    #[error("cannot load {path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// rustls refused the configuration or a handshake failed.
    #[error("rustls: {0}")]
    Tls(#[from] rustls::Error),
    /// The in-memory handshake did not finish.
    #[error("the in-memory handshake did not complete")]
    Stuck,
}

/// Measures `spec.handshakes` in-memory handshakes.
pub fn measure(spec: &LimitSpec) -> Result<LimitResult, LimitError> {
    let server = Arc::new(server_config(&spec.cert, &spec.key)?);
    let configs = ClientConfigs::new(&spec.tls, [spec.kind])?;
    let client = configs.of(spec.kind).ok_or(LimitError::Stuck)?;
    let name = ServerName::try_from("localhost").map_err(|_| LimitError::Stuck)?;
    let mut times = Times::default();
    if spec.kind.wants_resumption() {
        handshake(&server, &client, &name, &mut Times::default())?;
    }
    let mut resumed = 0;
    for _ in 0..spec.handshakes {
        if handshake(&server, &client, &name, &mut times)? {
            resumed += 1;
        }
    }
    let n = f64::from(spec.handshakes.max(1));
    Ok(LimitResult {
        kind: spec.kind,
        handshakes: spec.handshakes,
        resumed,
        server_cpu_us: times.server.as_secs_f64() * 1e6 / n,
        client_cpu_us: times.client.as_secs_f64() * 1e6 / n,
    })
}

/// A server configuration like the daemon's: the given certificate, stateless tickets, default session cache.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, LimitError> {
    let pem = |path: &Path, e: &dyn std::fmt::Display| LimitError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, &e))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(rustls::ALL_VERSIONS)?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)?;
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(config)
}

#[derive(Default)]
struct Times {
    server: Duration,
    client: Duration,
}

/// One handshake, both flights and the tickets after it. Returns whether it resumed.
fn handshake(
    server_config: &Arc<ServerConfig>,
    client_config: &Arc<rustls::ClientConfig>,
    name: &ServerName<'static>,
    times: &mut Times,
) -> Result<bool, LimitError> {
    let mut client = timed(&mut times.client, || {
        ClientConnection::new(client_config.clone(), name.clone())
    })?;
    let mut server = timed(&mut times.server, || {
        ServerConnection::new(server_config.clone())
    })?;
    let mut buf = Vec::with_capacity(16 * 1024);
    for _ in 0..16 {
        let mut moved = false;
        buf.clear();
        timed(&mut times.client, || {
            while client.wants_write() {
                let _ = client.write_tls(&mut buf);
            }
        });
        if !buf.is_empty() {
            moved = true;
            timed(&mut times.server, || feed_server(&mut server, &buf))?;
        }
        buf.clear();
        timed(&mut times.server, || {
            while server.wants_write() {
                let _ = server.write_tls(&mut buf);
            }
        });
        if !buf.is_empty() {
            moved = true;
            timed(&mut times.client, || feed_client(&mut client, &buf))?;
        }
        if !moved && !client.is_handshaking() && !server.is_handshaking() {
            return Ok(client.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
        }
    }
    Err(LimitError::Stuck)
}

fn feed_server(server: &mut ServerConnection, mut bytes: &[u8]) -> Result<(), rustls::Error> {
    while !bytes.is_empty() {
        if server.read_tls(&mut bytes).is_err() {
            break;
        }
        server.process_new_packets()?;
    }
    Ok(())
}

fn feed_client(client: &mut ClientConnection, mut bytes: &[u8]) -> Result<(), rustls::Error> {
    while !bytes.is_empty() {
        if client.read_tls(&mut bytes).is_err() {
            break;
        }
        client.process_new_packets()?;
    }
    Ok(())
}

fn timed<R>(total: &mut Duration, f: impl FnOnce() -> R) -> R {
    let start = thread_cpu_time();
    let r = f();
    *total += thread_cpu_time().saturating_sub(start);
    r
}

/// CPU time consumed by the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}
