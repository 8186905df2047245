//! The report of a run: serializable (JSON) and printable (a human table).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::phases::Phase;
use crate::recorder::Recorder;

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// The percentiles of `h`; all zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Totals of one handshake kind.
#[derive(Clone, Debug, Serialize)]
pub struct KindReport {
    /// Connections attempted.
    pub attempted: u64,
    /// Completed.
    pub ok: u64,
    /// Completed with resumption.
    pub resumed: u64,
    /// Completed with a full handshake.
    pub full: u64,
    /// Wanted resumption, did a full handshake: `no_ticket` / `rejected`.
    pub fallback: BTreeMap<&'static str, u64>,
    /// Failures by cause.
    pub errors: BTreeMap<&'static str, u64>,
    /// Intended start to TCP connected, µs.
    pub connect_us: Percentiles,
    /// Intended start to handshake complete, µs.
    pub handshake_us: Percentiles,
    /// Intended start to first response byte, µs (count 0 without a request).
    pub first_byte_us: Percentiles,
}

/// One second of the time series.
#[derive(Clone, Debug, Serialize)]
pub struct SecondReport {
    /// Seconds from the start.
    pub t: u64,
    /// Connections meant to start in this second.
    pub offered: u64,
    /// Completed in this second.
    pub ok: u64,
    /// Of those, resumed.
    pub resumed: u64,
    /// Failures by cause.
    pub errors: BTreeMap<&'static str, u64>,
    /// Handshake latency (from intended start) per kind, µs.
    pub handshake_us: BTreeMap<&'static str, Percentiles>,
    /// The connections meant to start in this second, however late they ended.
    pub started: StartedReport,
}

/// The connections meant to start in one second: what a client arriving then got.
#[derive(Clone, Debug, Serialize)]
pub struct StartedReport {
    /// Completed.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
    /// Handshake latency from intended start of the completed ones, all kinds, µs.
    pub handshake_us: Percentiles,
}

/// Resumption within one phase: of the completed connections that offered a session, how many the server took.
#[derive(Clone, Debug, Serialize)]
pub struct ResumptionReport {
    /// Completed connections that offered a ticket or session ID.
    pub offered: u64,
    /// Of those, resumed.
    pub resumed: u64,
    /// Of those, refused (full handshake instead).
    pub rejected: u64,
}

/// Totals of the connections meant to start within one phase.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    /// The phase's name.
    pub name: String,
    /// Seconds from the start where it begins.
    pub start_s: f64,
    /// Its length in seconds.
    pub duration_s: f64,
    /// Scheduled rate, connections per second.
    pub rate: f64,
    /// Meant to start in it.
    pub offered: u64,
    /// Of those, completed.
    pub ok: u64,
    /// Of those, resumed.
    pub resumed: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Completed per second of the phase (goodput).
    pub goodput: f64,
    /// Handshake latency from intended start, µs.
    pub handshake_us: Percentiles,
    /// TCP connected to handshake complete, µs: the server's share once it took the connection.
    pub tls_us: Percentiles,
    /// TCP connected to the server's first flight received by the kernel, µs: the server's share without the
    /// client's delay in reading it (a saturated load generator's own latency is not in it).
    pub flight_us: Percentiles,
    /// Resumption offers and how the server answered them.
    pub resumption: ResumptionReport,
}

/// Everything a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Wall time of the run in seconds, drain included.
    pub elapsed_s: f64,
    /// Completed connections per second of the scheduled duration.
    pub rate_ok: f64,
    /// Completed connections.
    pub ok: u64,
    /// Failed connections.
    pub failed: u64,
    /// The phases (empty in closed-loop mode).
    pub phases: Vec<Phase>,
    /// Per phase, by intended start.
    pub phase_stats: Vec<PhaseReport>,
    /// Per kind.
    pub kinds: BTreeMap<&'static str, KindReport>,
    /// The first message seen for each failure cause.
    pub error_samples: BTreeMap<&'static str, String>,
    /// Per second.
    pub series: Vec<SecondReport>,
}

impl Report {
    /// Summarizes `rec` for a run scheduled for `scheduled_s` seconds that took `elapsed_s`.
    pub fn new(rec: &Recorder, phases: Vec<Phase>, scheduled_s: f64, elapsed_s: f64) -> Self {
        let kinds = rec
            .kinds
            .iter()
            .map(|(kind, s)| {
                let report = KindReport {
                    attempted: s.attempted,
                    ok: s.ok,
                    resumed: s.resumed,
                    full: s.ok - s.resumed,
                    fallback: s.fallback.iter().map(|(f, n)| (f.name(), *n)).collect(),
                    errors: s.failed.iter().map(|(c, n)| (c.name(), *n)).collect(),
                    connect_us: Percentiles::of(&s.connect),
                    handshake_us: Percentiles::of(&s.handshake),
                    first_byte_us: Percentiles::of(&s.first_byte),
                };
                (kind.name(), report)
            })
            .collect();
        let series = rec
            .series
            .iter()
            .enumerate()
            .map(|(t, s)| SecondReport {
                t: t as u64,
                offered: s.offered,
                ok: s.ok,
                resumed: s.resumed,
                errors: s.errors.iter().map(|(c, n)| (c.name(), *n)).collect(),
                handshake_us: s
                    .handshake
                    .iter()
                    .map(|(k, h)| (k.name(), Percentiles::of(h)))
                    .collect(),
                started: StartedReport {
                    ok: s.started_ok,
                    failed: s.started_failed,
                    handshake_us: s
                        .started_handshake
                        .as_ref()
                        .map(Percentiles::of)
                        .unwrap_or_default(),
                },
            })
            .collect();
        let mut start_s = 0.0;
        let phase_stats = phases
            .iter()
            .zip(&rec.phases)
            .map(|(p, s)| {
                let r = PhaseReport {
                    name: p.name.clone(),
                    start_s,
                    duration_s: p.duration_s,
                    rate: p.rate,
                    offered: s.offered,
                    ok: s.ok,
                    resumed: s.resumed,
                    failed: s.failed,
                    goodput: s.ok as f64 / p.duration_s,
                    handshake_us: Percentiles::of(&s.handshake),
                    tls_us: Percentiles::of(&s.tls),
                    flight_us: Percentiles::of(&s.flight),
                    resumption: ResumptionReport {
                        offered: s.resumption_offered,
                        resumed: s.resumption_offered - s.resumption_rejected,
                        rejected: s.resumption_rejected,
                    },
                };
                start_s += p.duration_s;
                r
            })
            .collect();
        let ok = rec.ok();
        Self {
            phase_stats,
            elapsed_s,
            rate_ok: if scheduled_s > 0.0 {
                ok as f64 / scheduled_s
            } else {
                0.0
            },
            ok,
            failed: rec.failed(),
            phases,
            kinds,
            error_samples: rec
                .samples
                .iter()
                .map(|(c, m)| (c.name(), m.clone()))
                .collect(),
            series,
        }
    }

    /// The human table: one row per kind, then errors with a sample message each.
    pub fn table(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "kind",
            "ok",
            "resumed",
            "fallback",
            "failed",
            "hs p50 ms",
            "hs p99 ms",
            "hs p999 ms",
            "hs max ms",
            "ttfb p99"
        );
        for (name, k) in &self.kinds {
            let h = &k.handshake_us;
            let _ = writeln!(
                out,
                "{:<16} {:>8} {:>8} {:>8} {:>8} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                name,
                k.ok,
                k.resumed,
                k.fallback.values().sum::<u64>(),
                k.errors.values().sum::<u64>(),
                ms(h.p50),
                ms(h.p99),
                ms(h.p999),
                ms(h.max),
                ms(k.first_byte_us.p99),
            );
            for (why, n) in &k.fallback {
                let _ = writeln!(out, "{:<16}   full instead of resumed ({why}): {n}", "");
            }
        }
        if !self.phase_stats.is_empty() {
            let _ = writeln!(
                out,
                "{:<16} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
                "phase",
                "rate",
                "offered",
                "failed",
                "goodput/s",
                "hs p50 ms",
                "hs p99 ms",
                "hs p999 ms"
            );
            for p in &self.phase_stats {
                let _ = writeln!(
                    out,
                    "{:<16} {:>8.0} {:>8} {:>8} {:>10.1} {:>10.2} {:>10.2} {:>10.2}",
                    p.name,
                    p.rate,
                    p.offered,
                    p.failed,
                    p.goodput,
                    ms(p.handshake_us.p50),
                    ms(p.handshake_us.p99),
                    ms(p.handshake_us.p999)
                );
            }
        }
        let _ = writeln!(
            out,
            "completed {} ({:.1}/s), failed {}, elapsed {:.1} s",
            self.ok, self.rate_ok, self.failed, self.elapsed_s
        );
        for (cause, message) in &self.error_samples {
            let n: u64 = self
                .kinds
                .values()
                .filter_map(|k| k.errors.get(cause))
                .sum();
            let _ = writeln!(out, "  {cause}: {n} (e.g. {message})");
        }
        out
    }
}
