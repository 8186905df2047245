//! The drivers. Open loop: connections start at the schedule's intended times whatever earlier ones did; a
//! connection that would exceed `max_inflight` is counted as `client_limit` instead of delaying the schedule.
//! Closed loop (`Load::Closed`): `concurrency` connections back to back, for saturating a server.
//!
//! Both stop by themselves: no new connection after the scheduled duration or `max_connections`, and each
//! connection ends within its timeout, so the drain after the schedule is bounded by that timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cause::Cause;
use crate::client_config::{ClientConfigs, TlsOptions};
use crate::connection::{self, ConnSpec, Outcome, Target};
use crate::kind::Mix;
use crate::phases::{self, Phase};
use crate::preflight::{self, PreflightError};
use crate::progress::Progress;
use crate::recorder::Recorder;
use crate::report::Report;
use crate::rng::Rng;
use crate::schedule::Schedule;

/// How connections arrive.
#[derive(Clone, Debug)]
pub enum Load {
    /// Open loop over these phases (validated).
    Open(Vec<Phase>),
    /// Closed loop: this many connections at a time, for this long.
    Closed {
        /// Connections in flight.
        concurrency: usize,
        /// How long to keep starting new ones.
        duration: Duration,
    },
}

/// A whole run.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Round robin over these.
    pub targets: Vec<Target>,
    /// Which kinds, how often.
    pub mix: Mix,
    /// ClientHello settings.
    pub tls: TlsOptions,
    /// What each connection does.
    pub conn: ConnSpec,
    /// Arrivals.
    pub load: Load,
    /// No more connections than this are started in the whole run.
    pub max_connections: u64,
    /// Open loop: no more than this many at once (the rest count as `client_limit`).
    pub max_inflight: usize,
    /// Seed of the kind mix and the Poisson gaps.
    pub seed: u64,
    /// Connect once to every target before starting, failing clearly if one is unreachable or refuses TLS.
    pub preflight: bool,
    /// Show a progress line when stderr is a terminal.
    pub progress: bool,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No target given.
    #[error("no target: give at least one --target ADDR")]
    NoTarget,
    /// The phases are not usable.
    #[error(transparent)]
    Phases(#[from] phases::PhaseError),
    /// rustls refused the client settings.
    #[error("client TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    /// A target is unreachable or refuses TLS.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The tokio runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs `spec` on a current-thread runtime of its own (pin the process with `taskset` to keep it on one core).
pub fn run(spec: RunSpec) -> Result<Report, RunError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?
        .block_on(run_async(spec))
}

/// Runs `spec` on the current runtime.
pub async fn run_async(spec: RunSpec) -> Result<Report, RunError> {
    if spec.targets.is_empty() {
        return Err(RunError::NoTarget);
    }
    if let Load::Open(p) = &spec.load {
        phases::validate(p)?;
    }
    let configs = ClientConfigs::new(&spec.tls, spec.mix.kinds())?;
    if spec.preflight {
        preflight::check(&spec.targets, &spec.tls, spec.mix.kinds(), &spec.conn).await?;
    }
    let mut driver = Driver {
        configs,
        conn: Arc::new(spec.conn.clone()),
        targets: spec.targets.clone(),
        mix: spec.mix.clone(),
        rng: Rng::new(spec.seed),
        next_target: 0,
        started: 0,
        set: JoinSet::new(),
        rec: Recorder::new(Instant::now(), phase_ends(&spec.load)),
        progress: Progress::new(spec.progress),
    };
    let (phases, scheduled) = match &spec.load {
        Load::Open(phases) => {
            driver.open_loop(phases, &spec).await;
            (phases.clone(), phases::total_seconds(phases))
        }
        Load::Closed {
            concurrency,
            duration,
        } => {
            driver.closed_loop(*concurrency, *duration, &spec).await;
            (Vec::new(), duration.as_secs_f64())
        }
    };
    driver.drain().await;
    driver.progress.finish();
    let elapsed = driver.rec.start().elapsed().as_secs_f64();
    Ok(Report::new(&driver.rec, phases, scheduled, elapsed))
}

/// Where each phase ends, in seconds from the start.
fn phase_ends(load: &Load) -> Vec<f64> {
    match load {
        Load::Open(phases) => phases
            .iter()
            .scan(0.0, |end, p| {
                *end += p.duration_s;
                Some(*end)
            })
            .collect(),
        Load::Closed { .. } => Vec::new(),
    }
}

struct Driver {
    configs: ClientConfigs,
    conn: Arc<ConnSpec>,
    targets: Vec<Target>,
    mix: Mix,
    rng: Rng,
    next_target: usize,
    started: u64,
    set: JoinSet<Outcome>,
    rec: Recorder,
    progress: Progress,
}

impl Driver {
    async fn open_loop(&mut self, phases: &[Phase], spec: &RunSpec) {
        let start = self.rec.start();
        let mut schedule = Schedule::new(phases.to_vec(), spec.seed ^ 0x5eed);
        while self.started < spec.max_connections {
            let Some((offset, _)) = schedule.next_start() else {
                break;
            };
            let intended = start + Duration::from_secs_f64(offset);
            self.wait_until(intended).await;
            self.rec.offered(intended);
            self.started += 1;
            if self.set.len() >= spec.max_inflight {
                let kind = self.mix.pick(&mut self.rng);
                let target = self.pick_target();
                self.rec.record(Outcome::not_started(
                    kind,
                    target,
                    intended,
                    Cause::ClientLimit,
                ));
            } else {
                self.spawn(intended);
            }
        }
    }

    async fn closed_loop(&mut self, concurrency: usize, duration: Duration, spec: &RunSpec) {
        let end = self.rec.start() + duration;
        loop {
            while self.set.len() < concurrency.max(1)
                && self.started < spec.max_connections
                && Instant::now() < end
            {
                let now = Instant::now();
                self.rec.offered(now);
                self.started += 1;
                self.spawn(now);
            }
            if self.set.is_empty() {
                return;
            }
            tokio::select! {
                Some(joined) = self.set.join_next() => self.file(joined),
                () = tokio::time::sleep_until(end), if Instant::now() < end => {}
            }
            self.progress.tick(&self.rec, self.set.len());
            if Instant::now() >= end || self.started >= spec.max_connections {
                return;
            }
        }
    }

    /// Files completions until `t`. A start already due is not slept for: tokio's timer has millisecond
    /// resolution, so sleeping for each of 5,000 starts a second would cap the rate near 1,000/s and charge the
    /// lag to the server. Due starts go out back to back instead, yielding so that connections keep running.
    async fn wait_until(&mut self, t: Instant) {
        loop {
            while let Some(joined) = self.set.try_join_next() {
                self.file(joined);
            }
            if Instant::now() >= t {
                tokio::task::yield_now().await;
                break;
            }
            tokio::select! {
                biased;
                Some(joined) = self.set.join_next(), if !self.set.is_empty() => self.file(joined),
                () = tokio::time::sleep_until(t) => break,
            }
        }
        self.progress.tick(&self.rec, self.set.len());
    }

    /// Waits for the connections in flight; each ends within its own timeout.
    async fn drain(&mut self) {
        while let Some(joined) = self.set.join_next().await {
            self.file(joined);
            self.progress.tick(&self.rec, self.set.len());
        }
    }

    fn spawn(&mut self, intended: Instant) {
        let kind = self.mix.pick(&mut self.rng);
        let target = self.pick_target();
        let Some(config) = self.configs.of(kind) else {
            // The configs were built from the mix's kinds, so every kind drawn has one.
            return;
        };
        self.set.spawn(connection::run_one(
            kind,
            config,
            target,
            self.targets[target].clone(),
            self.conn.clone(),
            intended,
        ));
    }

    fn pick_target(&mut self) -> usize {
        let t = self.next_target % self.targets.len();
        self.next_target = self.next_target.wrapping_add(1);
        t
    }

    fn file(&mut self, joined: Result<Outcome, tokio::task::JoinError>) {
        match joined {
            Ok(outcome) => self.rec.record(outcome),
            // A connection task cannot panic on network input (no unwrap/indexing there); if one does, that is a
            // bug worth seeing rather than a number to count.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
}
