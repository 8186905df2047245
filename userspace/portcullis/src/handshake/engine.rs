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
use std::task::{Context, Poll};
use std::time::Instant;

use rustls::ServerConfig;
use rustls::server::{Accepted, AcceptedAlert, ServerConnection};

use super::class::HandshakeClass;

/// One expensive handshake step to run.
pub struct Job {
    /// The parsed ClientHello, ready to become a connection.
    pub accepted: Accepted,
    /// The configuration to complete it with.
    pub config: Arc<ServerConfig>,
    /// The handshake's cost class, decided before any crypto.
    pub class: HandshakeClass,
    /// Shed it, before any crypto, if it waits longer than this in an engine queue (set by admission control
    /// while overloaded; `None`: no bound beyond the engine's own policy).
    pub max_wait: Option<std::time::Duration>,
}

/// Why an engine did not produce a connection.
pub enum EngineError {
    /// rustls failed the handshake: send the alert, then close.
    Tls(rustls::Error, AcceptedAlert),
    /// Shed before any crypto was spent (overload): close the connection at once.
    Shed(ShedReason),
    /// The engine lost the job (its crypto thread panicked): close the connection.
    Lost,
}

/// Why a handshake was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShedReason {
    /// Every engine ring was full (full-ring policy `reject`).
    RingFull,
    /// Waited longer than the wait deadline (full-ring policy `wait`), for a ring slot or in the ring.
    WaitDeadline,
    /// The engine is shutting down.
    EngineClosed,
    /// Admission control is shedding this class (queue delay above target).
    Overload,
    /// The worker already has its maximum of handshakes in flight.
    InFlightLimit,
    /// Admitting it would exceed the queued-work budget.
    CostBudget,
    /// Waited in the engine queue longer than admission control's bound while overloaded (dropped when a
    /// crypto thread took it, before any crypto: CoDel's drop at dequeue).
    QueueDeadline,
}

impl ShedReason {
    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::RingFull => "ring_full",
            Self::WaitDeadline => "wait_deadline",
            Self::EngineClosed => "engine_closed",
            Self::Overload => "overload",
            Self::InFlightLimit => "in_flight_limit",
            Self::CostBudget => "cost_budget",
            Self::QueueDeadline => "queue_deadline",
        }
    }
}

/// The expensive step, done: the connection with its first server flight queued, and when the step ran.
pub struct Completed {
    /// The connection.
    pub conn: ServerConnection,
    /// When the step started on its thread (a crypto thread, or the worker for the inline engine).
    pub started: Instant,
    /// When it finished there; the worker resumes the connection some time after.
    pub finished: Instant,
}

/// What the expensive step produced, or why not.
pub type JobResult = Result<Completed, EngineError>;

/// The result of `into_connection` run from `started` to `finished`, as a [`JobResult`] (every engine's step
/// ends here).
pub fn step_result(
    result: Result<ServerConnection, (rustls::Error, rustls::server::AcceptedAlert)>,
    started: Instant,
    finished: Instant,
) -> JobResult {
    result
        .map(|conn| Completed {
            conn,
            started,
            finished,
        })
        .map_err(|(e, alert)| EngineError::Tls(e, alert))
}

/// Runs the expensive step. Implementations must not block the calling worker.
pub trait HandshakeEngine: Send + Sync + 'static {
    /// Name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Runs the job, or starts it: the returned future resolves once the first server flight is ready. An
    /// engine that runs the step on the calling worker does it here, before returning, and returns
    /// [`Running::Ready`].
    fn run(&self, job: Job) -> Running<'_>;
}

/// What [`HandshakeEngine::run`] returns: the result itself when the step ran on the calling thread, with no
/// allocation (most handshakes: the inline engine, and the offload engine while idle), or the boxed future of
/// a job handed to a crypto thread.
#[expect(
    clippy::large_enum_variant,
    reason = "the result is held by value, so the inline step allocates nothing; this future lives in the \
              handshake's own (boxed, per-handshake) future, never in an idle connection's task"
)]
pub enum Running<'a> {
    /// The step ran already; `None` once the future has returned it.
    Ready(Option<JobResult>),
    /// The step runs elsewhere; resolves when it is done.
    Queued(Pin<Box<dyn Future<Output = JobResult> + Send + 'a>>),
}

impl Running<'_> {
    /// The step ran already with this result.
    pub fn ready(result: JobResult) -> Self {
        Self::Ready(Some(result))
    }
}

impl Future for Running<'_> {
    type Output = JobResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<JobResult> {
        match self.get_mut() {
            // Polled again after it returned: an engine that lost its job, never a panic.
            Self::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(EngineError::Lost))),
            Self::Queued(future) => future.as_mut().poll(cx),
        }
    }
}

/// Runs the expensive step directly on the worker thread: no queue, no hand-off.
#[derive(Debug, Default)]
pub struct InlineEngine;

impl HandshakeEngine for InlineEngine {
    fn name(&self) -> &'static str {
        "inline"
    }

    fn run(&self, job: Job) -> Running<'_> {
        let started = Instant::now();
        let result = job.accepted.into_connection(job.config);
        let finished = Instant::now();
        Running::ready(step_result(result, started, finished))
    }
}
