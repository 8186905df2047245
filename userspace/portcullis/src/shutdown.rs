//! Stopping the daemon. The one place that defines what the signals do:
//!
//! - **SIGTERM** (systemd stop, Kubernetes pod termination): graceful. Stop accepting (each worker closes its
//!   listening sockets), let open connections finish for up to `shutdown.drain_timeout` (default 30 s), close
//!   the rest, detach XDP, exit 0. A second SIGTERM or a SIGINT during the drain stops at once.
//! - **SIGINT** (Ctrl-C): fast stop. Close everything now, detach XDP, exit 0.
//! - **SIGUSR1**: reopen a file access log (`http::AccessLog::reopen_on_sigusr1`), watched only when it is on.
//! - **SIGHUP** (`systemctl reload`): reload the configuration and certificates (`reload` module); the daemon
//!   goes on serving, whatever the outcome.
//! - **SIGUSR2** (nginx's upgrade signal): logged and ignored, not the default action (exit without a drain).
//!   The running daemon keeps no capability to start a successor with: `portcullis upgrade` does it.
//!
//! In both cases XDP is detached and pins removed before exit, so no program is left attached to an interface
//! without a daemon behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// Not accepting; open connections may finish until `deadline`.
    Draining {
        /// When the remaining connections are closed.
        deadline: Instant,
    },
    /// Close everything now.
    Stop,
}

/// `shutdown.drain_timeout`, read when a drain starts (SIGTERM or an upgrade's handoff), so a reload that
/// changes it applies to the next drain. Clones share the value.
#[derive(Debug, Clone)]
pub struct DrainTimeout(Arc<AtomicU64>);

impl DrainTimeout {
    /// Holds `timeout` (saturating at `u64::MAX` nanoseconds, 584 years: the config bounds it far lower).
    pub fn new(timeout: Duration) -> Self {
        Self(Arc::new(AtomicU64::new(Self::nanos(timeout))))
    }

    /// The timeout now.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    /// Sets the timeout for the drains that start from now on (a drain under way keeps its deadline).
    pub fn set(&self, timeout: Duration) {
        self.0.store(Self::nanos(timeout), Ordering::Relaxed);
    }

    fn nanos(d: Duration) -> u64 {
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The SIGHUP stream; installing it stops SIGHUP from killing the process (its default action).
///
/// # Errors
/// When the signal handler cannot be installed.
pub fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    signal(SignalKind::hangup())
}

/// The SIGUSR2 stream, for [`explain_usr2`]; installing it stops SIGUSR2 from killing the process.
///
/// # Errors
/// When the signal handler cannot be installed.
pub fn usr2() -> std::io::Result<tokio::signal::unix::Signal> {
    signal(SignalKind::user_defined2())
}

/// Answers each SIGUSR2 with a warning that says how to upgrade.
pub async fn explain_usr2(mut usr2: tokio::signal::unix::Signal) {
    while usr2.recv().await.is_some() {
        tracing::warn!(
            "SIGUSR2 ignored: this daemon has no privilege left to start its successor; upgrade with \
             `portcullis upgrade -- <the flags of portcullis run>` (README \"Upgrade\")"
        );
    }
}

/// Waits for signals and moves `phase` along. Returns once the phase is `Stop` or drain was requested and
/// then `Stop` happened; the caller joins the workers meanwhile.
pub async fn watch_signals(
    phase: watch::Sender<Phase>,
    drain_timeout: DrainTimeout,
) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {
            let drain_timeout = drain_timeout.get();
            tracing::info!(drain_timeout = ?drain_timeout, "SIGTERM: draining connections");
            let _ = phase.send(Phase::Draining { deadline: drain_deadline(Instant::now(), drain_timeout) });
        }
        _ = int.recv() => {
            tracing::info!("SIGINT: stopping now");
            let _ = phase.send(Phase::Stop);
            return Ok(());
        }
    }
    tokio::select! {
        _ = term.recv() => tracing::info!("second SIGTERM: stopping now"),
        _ = int.recv() => tracing::info!("SIGINT during drain: stopping now"),
    }
    let _ = phase.send(Phase::Stop);
    Ok(())
}

/// `now + drain_timeout`, saturating at an hour past the configured maximum: `Instant + Duration` panics on
/// overflow, and a panic here would leave SIGTERM ignored (the config bounds the timeout; this holds without).
pub(crate) fn drain_deadline(now: Instant, drain_timeout: Duration) -> Instant {
    now.checked_add(drain_timeout)
        .or_else(|| now.checked_add(crate::config::MAX_DRAIN_TIMEOUT))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_drain_timeout_does_not_panic() {
        let now = Instant::now();
        assert_eq!(
            drain_deadline(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(drain_deadline(now, Duration::MAX) >= now);
    }

    #[test]
    fn a_drain_timeout_set_after_start_is_the_one_read() {
        let shared = DrainTimeout::new(Duration::from_secs(30));
        let clone = shared.clone();
        shared.set(Duration::from_millis(1500));
        assert_eq!(clone.get(), Duration::from_millis(1500));
        shared.set(Duration::MAX);
        assert_eq!(clone.get(), Duration::from_nanos(u64::MAX));
    }
}
