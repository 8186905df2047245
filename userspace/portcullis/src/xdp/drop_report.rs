//! `portcullis xdp drops`: who the guard drops and why, from the per-CPU drop samples (`xdp_drop_ring`,
//! `portcullis_abi::drop_samples`). A dropped packet reaches neither a socket nor `tcpdump`, so this is where an
//! operator paged for drops sees whom they hit.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use portcullis_abi::{
    drop_samples::{DropRing, SAMPLE_EVERY},
    verdict::Verdict,
};

/// One source and verdict among the samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DropRow {
    /// The source (an IPv4-mapped one shown as IPv4).
    pub(crate) src: IpAddr,
    /// The verdict's label (`drop_syn_rate`, ...), or its number for a verdict this version does not know.
    pub(crate) verdict: String,
    /// Samples of this source and verdict in the window.
    pub(crate) samples: u64,
    /// The newest of them, CLOCK_MONOTONIC ns.
    pub(crate) last_ns: u64,
}

/// The drops each row stands for: `SAMPLE_EVERY` per sample, except where that makes more than its verdict's
/// counter says were dropped (the first drop of a verdict on each CPU is sampled, so a handful of drops would read
/// as a multiple of `SAMPLE_EVERY`): then the verdict's total shared among its rows by their samples, rounded up.
/// `total(verdict)` is that total (summed over CPUs), `None` for a verdict it does not know.
pub(crate) fn estimated_drops(rows: &[DropRow], total: impl Fn(&str) -> Option<u64>) -> Vec<u64> {
    let mut samples_of: HashMap<&str, u64> = HashMap::new();
    for row in rows {
        *samples_of.entry(row.verdict.as_str()).or_default() += row.samples;
    }
    rows.iter()
        .map(|row| {
            let by_rate = row.samples.saturating_mul(SAMPLE_EVERY);
            let all = samples_of
                .get(row.verdict.as_str())
                .copied()
                .unwrap_or(row.samples);
            match total(&row.verdict) {
                Some(total) if all.saturating_mul(SAMPLE_EVERY) > total => (u128::from(total)
                    * u128::from(row.samples))
                .div_ceil(u128::from(all.max(1)))
                .try_into()
                .unwrap_or(u64::MAX),
                _ => by_rate,
            }
        })
        .collect()
}

/// Merges the CPUs' rings: the samples taken within `window_ns` before `now_ns` (both CLOCK_MONOTONIC ns), by
/// source and verdict. Slots never written (time 0) are skipped; a sample stamped after `now_ns` (the two clocks
/// agree to within a tick) counts.
/// Most samples first, then the newest first, then by source and verdict.
pub(crate) fn report(rings: &[DropRing], now_ns: u64, window_ns: u64) -> Vec<DropRow> {
    let since = now_ns.saturating_sub(window_ns);
    let mut by_key: HashMap<([u8; 16], u32), (u64, u64)> = HashMap::new();
    for ring in rings {
        for sample in &ring.samples {
            if sample.at_ns == 0 || sample.at_ns < since {
                continue;
            }
            let entry = by_key.entry((sample.src, sample.verdict)).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(sample.at_ns);
        }
    }
    let mut rows: Vec<DropRow> = by_key
        .into_iter()
        .map(|((src, verdict), (samples, last_ns))| DropRow {
            src: Ipv6Addr::from(src).to_canonical(),
            verdict: Verdict::from_u32(verdict)
                .map_or_else(|| format!("verdict {verdict}"), |v| v.name().to_owned()),
            samples,
            last_ns,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then(b.last_ns.cmp(&a.last_ns))
            .then(a.src.cmp(&b.src))
            .then(a.verdict.cmp(&b.verdict))
    });
    rows
}

#[cfg(test)]
mod tests {
    use portcullis_abi::drop_samples::{DROP_SAMPLES, DropSample};

    use super::*;

    const EMPTY: DropSample = DropSample {
        src: [0; 16],
        at_ns: 0,
        verdict: 0,
        dst_port: 0,
        _pad: 0,
    };

    fn v4(a: u8) -> [u8; 16] {
        let mut src = [0; 16];
        src[10] = 0xff;
        src[11] = 0xff;
        src[12..].copy_from_slice(&[198, 51, 100, a]);
        src
    }

    fn sample(src: [u8; 16], verdict: Verdict, at_s: u64) -> DropSample {
        DropSample {
            src,
            at_ns: at_s * 1_000_000_000,
            verdict: verdict as u32,
            dst_port: 443,
            _pad: 0,
        }
    }

    #[test]
    fn merges_cpus_by_source_and_verdict_within_the_window() {
        let mut cpu0 = DropRing {
            taken: 4,
            samples: [EMPTY; DROP_SAMPLES],
        };
        let mut cpu1 = cpu0;
        cpu1.taken = 2;
        cpu0.samples[0] = sample(v4(7), Verdict::DropSynRate, 95);
        cpu0.samples[1] = sample(v4(7), Verdict::DropSynRate, 99);
        cpu0.samples[2] = sample(v4(8), Verdict::DropBlockedSource, 98);
        // Too old for a 10 s window at t = 100 s.
        cpu0.samples[3] = sample(v4(9), Verdict::DropSynRate, 80);
        cpu1.samples[0] = sample(v4(7), Verdict::DropSynRate, 97);
        cpu1.samples[1] = sample(v4(7), Verdict::DropHelloRate, 96);

        let report = report(&[cpu0, cpu1], 100_000_000_000, 10_000_000_000);
        // drop_syn_rate's counter says 1,000 (more than its 4 samples x 64); the others say fewer.
        let totals = |verdict: &str| match verdict {
            "drop_syn_rate" => Some(1_000),
            "drop_blocked_source" => Some(2),
            _ => None,
        };
        let estimates = estimated_drops(&report, totals);
        let rows: Vec<(String, &str, u64, u64)> = report
            .iter()
            .zip(estimates)
            .map(|(r, estimate)| (r.src.to_string(), r.verdict.as_str(), r.samples, estimate))
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "198.51.100.7".to_owned(),
                    "drop_syn_rate",
                    3,
                    3 * SAMPLE_EVERY
                ),
                ("198.51.100.8".to_owned(), "drop_blocked_source", 1, 2),
                (
                    "198.51.100.7".to_owned(),
                    "drop_hello_rate",
                    1,
                    SAMPLE_EVERY
                ),
            ]
        );
        assert_eq!(report[0].last_ns, 99_000_000_000);
    }

    #[test]
    fn an_unknown_verdict_and_an_ipv6_source_are_shown_as_they_are() {
        let mut ring = DropRing {
            taken: 1,
            samples: [EMPTY; DROP_SAMPLES],
        };
        let v6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        ring.samples[0] = DropSample {
            verdict: 99,
            ..sample(v6, Verdict::DropSynRate, 5)
        };
        let report = report(&[ring], 6_000_000_000, 60_000_000_000);
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].src.to_string(), "2001:db8::1");
        assert_eq!(report[0].verdict, "verdict 99");
    }
}
