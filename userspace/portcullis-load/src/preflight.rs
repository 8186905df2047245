//! One full handshake per target before a run, so that a wrong address or a server that refuses our
//! ClientHello fails the run at once with a message saying which target and why, instead of producing a report
//! full of errors.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cause::Cause;
use crate::client_config::{ClientConfigs, TlsOptions};
use crate::connection::{self, ConnSpec, Target};
use crate::kind::Kind;

/// How long the preflight connection may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a preflight connection the server reset or closed (it may be shedding load); backoff doubles from
/// [`RETRY_BACKOFF`], so at most 0.2 + 0.4 + 0.8 + 1.6 = 3 s of waiting.
const TRANSIENT_RETRIES: u32 = 4;
/// First wait before retrying a reset preflight connection.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// A target that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Nothing accepts TCP connections there.
    #[error(
        "target {addr} is unreachable ({message}): is the server running and listening on that address?"
    )]
    Unreachable {
        /// The target.
        addr: String,
        /// What the connect said.
        message: String,
    },
    /// The server refused or broke the TLS handshake.
    #[error(
        "target {addr} refused the TLS handshake ({message}): check --sni, the kinds' TLS versions and --group"
    )]
    TlsRefused {
        /// The target.
        addr: String,
        /// What rustls said.
        message: String,
    },
    /// Anything else (timeout, reset).
    #[error("target {addr}: preflight connection failed ({message})")]
    Failed {
        /// The target.
        addr: String,
        /// Why.
        message: String,
    },
    /// The client settings are unusable.
    #[error("client TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

/// Connects once to every target with a full handshake of each TLS version among `kinds`.
pub async fn check(
    targets: &[Target],
    tls: &TlsOptions,
    kinds: impl Iterator<Item = Kind>,
    conn: &ConnSpec,
) -> Result<(), PreflightError> {
    let mut full: Vec<Kind> = kinds
        .map(|k| {
            if k.is_tls13() {
                Kind::Full13
            } else {
                Kind::Full12
            }
        })
        .collect();
    full.sort();
    full.dedup();
    let configs = ClientConfigs::new(tls, full.iter().copied())?;
    let spec = Arc::new(ConnSpec {
        request: conn.request.clone(),
        keep: Duration::ZERO,
        timeout: TIMEOUT,
        sources: conn.sources.clone(),
    });
    for (i, target) in targets.iter().enumerate() {
        for kind in &full {
            let Some(config) = configs.of(*kind) else {
                continue;
            };
            let mut attempt = 0;
            let out = loop {
                let out = connection::run_one(
                    *kind,
                    config.clone(),
                    i,
                    target.clone(),
                    spec.clone(),
                    Instant::now(),
                )
                .await;
                // A server shedding load resets or closes connections before any crypto, by design, and expects
                // clients to come back: a reset is not a wrong target. Retry those, bounded, with backoff.
                let transient = matches!(
                    &out.result,
                    Err(f) if matches!(f.cause, Cause::IoError | Cause::ServerClosed)
                );
                if !transient || attempt >= TRANSIENT_RETRIES {
                    break out;
                }
                tokio::time::sleep(RETRY_BACKOFF * (1 << attempt)).await;
                attempt += 1;
            };
            if let Err(f) = out.result {
                let addr = target.addr.to_string();
                let message = format!("{kind}: {}", f.message);
                return Err(match f.cause {
                    Cause::ConnectRefused | Cause::ConnectTimeout | Cause::ConnectError => {
                        PreflightError::Unreachable { addr, message }
                    }
                    Cause::TlsAlert | Cause::TlsError => {
                        PreflightError::TlsRefused { addr, message }
                    }
                    _ => PreflightError::Failed { addr, message },
                });
            }
        }
    }
    Ok(())
}
