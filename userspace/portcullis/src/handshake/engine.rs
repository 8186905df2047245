//! The expensive step of a handshake, behind a seam.
//!
//! `Accepted::into_connection` is where rustls chooses the certificate, does the key exchange and signs: the
//! step that costs ~150 µs of CPU (ECDSA) to ~1 ms (RSA-2048) while everything else costs microseconds. It is
//! the only step an offload engine or admission control needs to own, so it is the only thing behind
//! [`HandshakeEngine`]: an engine takes the `Accepted` state (which is `Send`) and gives back the connection.
//! [`InlineEngine`] runs it on the worker thread; a queued crypto-thread engine plugs in here unchanged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{Accepted, AcceptedAlert, ServerConnection};

use super::inspect::HelloInfo;

/// One expensive handshake step to run.
pub struct Job {
    /// The parsed ClientHello, ready to become a connection.
    pub accepted: Accepted,
    /// The configuration to complete it with.
    pub config: Arc<ServerConfig>,
    /// What the ClientHello offered, for engines that classify or prioritise.
    pub hello: HelloInfo,
}

/// What the expensive step produced: the connection with its first server flight queued, or rustls' error
/// with the alert to send.
pub type JobResult = Result<ServerConnection, (rustls::Error, AcceptedAlert)>;

/// Runs the expensive step. Implementations must not block the calling worker.
pub trait HandshakeEngine: Send + Sync + 'static {
    /// Name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Runs the job; the future resolves once the first server flight is ready.
    fn run(&self, job: Job) -> Pin<Box<dyn Future<Output = JobResult> + Send + '_>>;
}

/// Runs the expensive step directly on the worker thread: no queue, no hand-off.
#[derive(Debug, Default)]
pub struct InlineEngine;

impl HandshakeEngine for InlineEngine {
    fn name(&self) -> &'static str {
        "inline"
    }

    fn run(&self, job: Job) -> Pin<Box<dyn Future<Output = JobResult> + Send + '_>> {
        Box::pin(std::future::ready(job.accepted.into_connection(job.config)))
    }
}
