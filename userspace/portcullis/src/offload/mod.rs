//! The offload engine, modelled on Intel QAT: a set of engine instances, each a crypto thread with a
//! fixed-depth request ring. `submit` never blocks: a full ring answers [`SubmitError::Retry`] (QAT's
//! `CPA_STATUS_RETRY`) and hands the work back, and the caller's [`policy::FullRingPolicy`] decides what
//! happens then. Completion wakes the submitting worker.
//!
//! # Layout
//! - [`OffloadEngine`]: the submit/poll trait a hardware backend (qatlib) could implement.
//! - [`software`]: the default engine: crypto threads with bounded rings, supervised (a panicking thread fails
//!   only the job it was running, is counted, and is restarted).
//! - [`policy`]: [`policy::OffloadHandshakes`], which runs the handshake's expensive step on an engine and
//!   applies the full-ring policy; it implements the handshake seam's `HandshakeEngine`.
//! - [`metrics`]: ring depth, queue wait and service time per class, retries, rejections, fallbacks.
//! - [`setup`]: builds the configured engine (inline, or software with admission control in front).
//! - [`config`]: the `[engine]` config section.

pub mod config;
pub mod metrics;
pub mod policy;
pub mod setup;
pub mod software;

use std::sync::Arc;

pub use config::{EngineConfig, EngineKind, FullRingPolicyConfig};

/// A unit of work for an engine: the closure moves its state in and sends its result out itself.
pub type Work = Box<dyn FnOnce() + Send + 'static>;

/// Which jobs an instance serves first. Resumptions are cheap and, under pressure, the handshakes to keep:
/// they never wait behind queued full handshakes (QAT serves several rings per instance the same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Served before any `Normal` job queued on the same instance.
    High,
    /// Full handshakes.
    Normal,
}

/// Why a submission was not taken. The work comes back so the caller can run it elsewhere or retry.
pub enum SubmitError {
    /// Every ring is full: try again later (QAT's `CPA_STATUS_RETRY`).
    Retry(Work),
    /// The engine is shutting down and takes no new work.
    Closed(
        #[expect(
            dead_code,
            reason = "given back as QAT's API does; nothing retries the work of an engine that is closing"
        )]
        Work,
    ),
}

impl std::fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Retry(_) => f.write_str("Retry"),
            Self::Closed(_) => f.write_str("Closed"),
        }
    }
}

/// A handshake offload engine: bounded queues in front of whatever does the crypto.
pub trait OffloadEngine: Send + Sync + 'static {
    /// Name for logs and metrics (`software`, ...).
    fn name(&self) -> &'static str;

    /// Queues `work` at `priority` without blocking, or gives it back.
    fn submit(&self, work: Work, priority: Priority) -> Result<(), SubmitError>;

    /// Number of instances (rings).
    fn instances(&self) -> usize;

    /// Total ring slots over all instances (tests).
    #[cfg(test)]
    fn capacity(&self) -> usize;

    /// Jobs queued now on `instance` (not counting the one in service).
    fn depth(&self, instance: usize) -> usize;

    /// Resolves when a ring slot may have freed up (used by the wait-with-deadline policy).
    fn capacity_freed(&self) -> tokio::sync::futures::Notified<'_>;

    /// No job queued or in service on any instance: a job submitted now would start at once.
    fn idle(&self) -> bool;

    /// The one CPU every instance is confined to, if so (crypto threads under `taskset` to a single core);
    /// `None`: its instances may run in parallel with a worker (more CPUs, or hardware).
    fn single_cpu(&self) -> Option<usize> {
        None
    }
}

impl<E: OffloadEngine + ?Sized> OffloadEngine for Arc<E> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn submit(&self, work: Work, priority: Priority) -> Result<(), SubmitError> {
        (**self).submit(work, priority)
    }
    fn instances(&self) -> usize {
        (**self).instances()
    }
    #[cfg(test)]
    fn capacity(&self) -> usize {
        (**self).capacity()
    }
    fn depth(&self, instance: usize) -> usize {
        (**self).depth(instance)
    }
    fn capacity_freed(&self) -> tokio::sync::futures::Notified<'_> {
        (**self).capacity_freed()
    }
    fn idle(&self) -> bool {
        (**self).idle()
    }
    fn single_cpu(&self) -> Option<usize> {
        (**self).single_cpu()
    }
}
