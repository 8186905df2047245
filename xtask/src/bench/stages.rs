//! Where portcullis spent a phase's handshake time: `portcullis_handshake_stage_seconds` scraped from its
//! `/metrics` at phase boundaries, differenced, and read as percentiles per stage (both modes together, as
//! the client's admitted p99 counts them).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const METRIC: &str = "portcullis_handshake_stage_seconds_bucket";

/// The stages in the daemon's order (`handshake/stages.rs`).
pub const STAGES: [&str; 7] = [
    "socket", "read", "queue", "crypto", "wake", "flight", "client",
];

/// Cumulative bucket counts per stage: stage -> (upper bound in seconds -> count), summed over modes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets(BTreeMap<String, Vec<(f64, f64)>>);

/// Reads the daemon's metrics on 127.0.0.1:`port`.
pub fn scrape(port: u16) -> Result<Buckets> {
    let (status, body) = super::servers::http_get(port, "/metrics")
        .context("scraping portcullis /metrics for the stage histograms")?;
    if status != 200 {
        bail!("portcullis /metrics answered {status}");
    }
    Ok(parse(&body))
}

/// The stage buckets in a metrics exposition.
pub fn parse(text: &str) -> Buckets {
    let mut by_stage: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(METRIC) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let (Some(stage), Some(le), Ok(count)) = (
            label(labels, "stage"),
            label(labels, "le"),
            value.trim().parse::<f64>(),
        ) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let slot = by_stage
            .entry(stage.to_owned())
            .or_default()
            .entry(le.to_bits())
            .or_insert((le, 0.0));
        slot.1 += count;
    }
    Buckets(
        by_stage
            .into_iter()
            .map(|(stage, b)| {
                let mut v: Vec<(f64, f64)> = b.into_values().collect();
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                (stage, v)
            })
            .collect(),
    )
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = labels.get(start..)?;
    rest.get(..rest.find('"')?)
}

impl Buckets {
    /// What was observed between `earlier` and `self`.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(stage, now)| {
                    let before = earlier.0.get(stage);
                    let diff = now
                        .iter()
                        .map(|&(le, c)| {
                            let was = before
                                .and_then(|b| b.iter().find(|(l, _)| *l == le))
                                .map_or(0.0, |(_, c)| *c);
                            (le, (c - was).max(0.0))
                        })
                        .collect();
                    (stage.clone(), diff)
                })
                .collect(),
        )
    }

    /// Observations of `stage`.
    pub fn count(&self, stage: &str) -> f64 {
        self.0
            .get(stage)
            .and_then(|b| b.last())
            .map_or(0.0, |(_, c)| *c)
    }

    /// The `q` quantile of `stage` in milliseconds, interpolated linearly inside its bucket; `None` without
    /// observations.
    pub fn quantile_ms(&self, stage: &str, q: f64) -> Option<f64> {
        let b = self.0.get(stage)?;
        let total = b.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, c) in b {
            if c >= rank {
                if le.is_infinite() {
                    return Some(lower.0 * 1000.0);
                }
                let within = if c > lower.1 {
                    (rank - lower.1) / (c - lower.1)
                } else {
                    1.0
                };
                return Some((lower.0 + (le - lower.0) * within) * 1000.0);
            }
            lower = (le, c);
        }
        None
    }

    /// `{stage: {count, p50_ms, p99_ms}}` for the report.
    pub fn summary(&self) -> Value {
        let mut out = serde_json::Map::new();
        for stage in STAGES {
            out.insert(
                stage.to_owned(),
                json!({
                    "count": self.count(stage),
                    "p50_ms": self.quantile_ms(stage, 0.50),
                    "p99_ms": self.quantile_ms(stage, 0.99),
                }),
            );
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
portcullis_handshake_stage_seconds_bucket{stage=\"queue\",mode=\"full\",le=\"0.001\"} 10
portcullis_handshake_stage_seconds_bucket{stage=\"queue\",mode=\"full\",le=\"0.002\"} 10
portcullis_handshake_stage_seconds_bucket{stage=\"queue\",mode=\"full\",le=\"+Inf\"} 10
portcullis_handshake_stage_seconds_count{stage=\"queue\",mode=\"full\"} 10
";
    const AFTER: &str = "\
# HELP portcullis_handshake_stage_seconds Where...
portcullis_handshake_stage_seconds_bucket{stage=\"queue\",mode=\"full\",le=\"0.001\"} 10
portcullis_handshake_stage_seconds_bucket{stage=\"queue\",mode=\"full\",le=\"0.002\"} 110
portcullis_handshake_stage_seconds_bucket{stage=\"queue\",mode=\"full\",le=\"+Inf\"} 110
portcullis_handshake_stage_seconds_bucket{stage=\"queue\",mode=\"resumed\",le=\"0.001\"} 100
portcullis_handshake_stage_seconds_bucket{stage=\"queue\",mode=\"resumed\",le=\"0.002\"} 100
portcullis_handshake_stage_seconds_bucket{stage=\"queue\",mode=\"resumed\",le=\"+Inf\"} 100
";

    #[test]
    fn a_phase_is_the_difference_of_two_scrapes_with_modes_summed() {
        let phase = parse(AFTER).since(&parse(BEFORE));
        assert_eq!(phase.count("queue"), 200.0);
        // 100 resumed at or below 1 ms, 100 full in (1, 2] ms: the median at the boundary, the p99 near 2 ms.
        assert_eq!(phase.quantile_ms("queue", 0.5), Some(1.0));
        let p99 = phase.quantile_ms("queue", 0.99).expect("observations");
        assert!((p99 - 1.98).abs() < 1e-9, "{p99}");
        assert_eq!(phase.quantile_ms("crypto", 0.99), None);
    }
}
