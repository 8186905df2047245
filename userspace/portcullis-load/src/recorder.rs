//! Where outcomes go: HdrHistograms per kind (TCP connect, handshake, first byte, all from intended start, in
//! microseconds) and a per-second time series (offered, completed, errors by cause, handshake percentiles per
//! kind). Seconds are counted from the run's start; completions are filed under the second they completed in,
//! offers under the second they were meant to start in.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::cause::{Cause, Fallback};
use crate::connection::Outcome;
use crate::kind::Kind;

/// The largest latency recorded, in microseconds (larger values are clamped to it): 10 minutes.
pub const MAX_US: u64 = 600_000_000;

/// A histogram of microseconds with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; a failure here is a programming error caught by any test.
    Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|e| panic!("histogram bounds: {e}"))
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros())
        .unwrap_or(MAX_US)
        .clamp(1, MAX_US);
    h.saturating_record(us);
}

/// Totals and histograms of one handshake kind.
#[derive(Debug)]
pub struct KindStats {
    /// Connections started (or refused a start by the client limit).
    pub attempted: u64,
    /// Completed (handshake done, and first byte when a request was sent).
    pub ok: u64,
    /// Completed with a resumed session.
    pub resumed: u64,
    /// Kinds that wanted resumption but did a full handshake, by why.
    pub fallback: BTreeMap<Fallback, u64>,
    /// Failures by cause.
    pub failed: BTreeMap<Cause, u64>,
    /// Intended start to TCP connected.
    pub connect: Histogram<u64>,
    /// Intended start to handshake complete.
    pub handshake: Histogram<u64>,
    /// Intended start to first response byte.
    pub first_byte: Histogram<u64>,
}

impl Default for KindStats {
    fn default() -> Self {
        Self {
            attempted: 0,
            ok: 0,
            resumed: 0,
            fallback: BTreeMap::new(),
            failed: BTreeMap::new(),
            connect: new_histogram(),
            handshake: new_histogram(),
            first_byte: new_histogram(),
        }
    }
}

/// One second of the time series.
#[derive(Debug, Default)]
pub struct Second {
    /// Connections meant to start in this second.
    pub offered: u64,
    /// Connections completed in this second.
    pub ok: u64,
    /// Of those, resumed.
    pub resumed: u64,
    /// Failures in this second by cause.
    pub errors: BTreeMap<Cause, u64>,
    /// Handshake latency (from intended start) of the connections completed in this second, per kind.
    pub handshake: BTreeMap<Kind, Histogram<u64>>,
    /// Of the connections meant to start in this second: completed.
    pub started_ok: u64,
    /// Of the connections meant to start in this second: failed.
    pub started_failed: u64,
    /// Handshake latency (from intended start) of the completed connections meant to start in this second, all
    /// kinds: what a client arriving in this second got, however late the answer came.
    pub started_handshake: Option<Histogram<u64>>,
}

/// Totals of the connections meant to start within one phase (so a storm's queue is charged to the storm).
#[derive(Debug)]
pub struct PhaseStats {
    /// Connections meant to start in the phase.
    pub offered: u64,
    /// Of those, completed.
    pub ok: u64,
    /// Of those, resumed.
    pub resumed: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Handshake latency from intended start, all kinds.
    pub handshake: Histogram<u64>,
    /// TCP connected to handshake complete, all kinds: the server's share once it took the connection (a SYN
    /// the server dropped and the client's TCP retransmitted is not in it).
    pub tls: Histogram<u64>,
    /// TCP connected to the server's first flight received (kernel timestamp), all kinds: the server's share
    /// without the client's own delay in reading and answering it.
    pub flight: Histogram<u64>,
    /// Of the completed ones, kinds that wanted resumption and had something to offer (resumed or rejected).
    pub resumption_offered: u64,
    /// Of those, refused by the server (a full handshake instead).
    pub resumption_rejected: u64,
}

impl Default for PhaseStats {
    fn default() -> Self {
        Self {
            offered: 0,
            ok: 0,
            resumed: 0,
            failed: 0,
            handshake: new_histogram(),
            tls: new_histogram(),
            flight: new_histogram(),
            resumption_offered: 0,
            resumption_rejected: 0,
        }
    }
}

/// Everything a run measured.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    phase_ends: Vec<f64>,
    /// Per phase, by intended start (empty in closed-loop runs).
    pub phases: Vec<PhaseStats>,
    /// Per kind.
    pub kinds: BTreeMap<Kind, KindStats>,
    /// Per second from the start.
    pub series: Vec<Second>,
    /// The first message seen for each failure cause.
    pub samples: BTreeMap<Cause, String>,
}

impl Recorder {
    /// An empty recorder for a run that starts at `start`, whose phases end at `phase_ends` (seconds from the
    /// start, ascending; empty without phases).
    pub fn new(start: Instant, phase_ends: Vec<f64>) -> Self {
        Self {
            start,
            phases: phase_ends.iter().map(|_| PhaseStats::default()).collect(),
            phase_ends,
            kinds: BTreeMap::new(),
            series: Vec::new(),
            samples: BTreeMap::new(),
        }
    }

    /// When the run started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Notes a connection meant to start at `intended`.
    pub fn offered(&mut self, intended: Instant) {
        self.second(intended).offered += 1;
        if let Some(p) = self.phase(intended) {
            p.offered += 1;
        }
    }

    fn phase(&mut self, intended: Instant) -> Option<&mut PhaseStats> {
        let offset = intended.saturating_duration_since(self.start).as_secs_f64();
        let index = self.phase_ends.iter().position(|end| offset < *end)?;
        self.phases.get_mut(index)
    }

    /// Files a finished (or never started) connection.
    pub fn record(&mut self, outcome: Outcome) {
        let now = Instant::now();
        if let Some(p) = self.phase(outcome.intended) {
            match &outcome.result {
                Ok(done) => {
                    p.ok += 1;
                    p.resumed += u64::from(done.resumed);
                    let rejected = done.fallback == Some(Fallback::Rejected);
                    p.resumption_offered += u64::from(done.resumed || rejected);
                    p.resumption_rejected += u64::from(rejected);
                    if let Some(d) = outcome.handshake {
                        record(&mut p.handshake, d);
                    }
                    if let (Some(h), Some(c)) = (outcome.handshake, outcome.connect) {
                        record(&mut p.tls, h.saturating_sub(c));
                    }
                    if let (Some(f), Some(c)) = (outcome.server_flight, outcome.connect) {
                        record(&mut p.flight, f.saturating_sub(c));
                    }
                }
                Err(_) => p.failed += 1,
            }
        }
        let started = self.second(outcome.intended);
        match &outcome.result {
            Ok(_) => {
                started.started_ok += 1;
                if let Some(d) = outcome.handshake {
                    record(
                        started.started_handshake.get_or_insert_with(new_histogram),
                        d,
                    );
                }
            }
            Err(_) => started.started_failed += 1,
        }
        let stats = self.kinds.entry(outcome.kind).or_default();
        stats.attempted += 1;
        if let Some(d) = outcome.connect {
            record(&mut stats.connect, d);
        }
        match &outcome.result {
            Ok(done) => {
                stats.ok += 1;
                if let Some(d) = outcome.handshake {
                    record(&mut stats.handshake, d);
                }
                if let Some(d) = outcome.first_byte {
                    record(&mut stats.first_byte, d);
                }
                if done.resumed {
                    stats.resumed += 1;
                }
                if let Some(f) = done.fallback {
                    *stats.fallback.entry(f).or_default() += 1;
                }
                let second = self.second(now);
                second.ok += 1;
                if done.resumed {
                    second.resumed += 1;
                }
                if let Some(d) = outcome.handshake {
                    record(
                        second
                            .handshake
                            .entry(outcome.kind)
                            .or_insert_with(new_histogram),
                        d,
                    );
                }
            }
            Err(failure) => {
                *stats.failed.entry(failure.cause).or_default() += 1;
                self.samples
                    .entry(failure.cause)
                    .or_insert_with(|| failure.message.clone());
                let at = if failure.cause == Cause::ClientLimit {
                    outcome.intended
                } else {
                    now
                };
                *self.second(at).errors.entry(failure.cause).or_default() += 1;
            }
        }
    }

    /// Completed connections over all kinds.
    pub fn ok(&self) -> u64 {
        self.kinds.values().map(|k| k.ok).sum()
    }

    /// Failed connections over all kinds.
    pub fn failed(&self) -> u64 {
        self.kinds.values().flat_map(|k| k.failed.values()).sum()
    }

    fn second(&mut self, at: Instant) -> &mut Second {
        let index =
            usize::try_from(at.saturating_duration_since(self.start).as_secs()).unwrap_or(0);
        if self.series.len() <= index {
            self.series.resize_with(index + 1, Second::default);
        }
        &mut self.series[index]
    }
}
