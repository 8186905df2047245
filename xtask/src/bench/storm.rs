//! `cargo xtask bench storm`: the reconnect storm of the seed scenario against each server.
//!
//! A client core cannot offer 5x a full server core, so every server is made equally smaller: RSA-2048
//! certificates (the server signs, the client only verifies) and a cgroup v1 CPU quota of [`QUOTA_PERCENT`] of
//! one core. Per server: the saturated rate under those conditions is the capacity; then steady at 50% of it ->
//! open-loop Poisson storm at 5x -> recovery at 50%, clients giving up after [`CLIENT_TIMEOUT_S`]. Summary:
//! goodput and p99 (from intended start) during the storm, and the time until the per-second p99 is back
//! within twice the steady p99 (plus 20 ms) and stays there.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::{Value, json};

use super::certs::{self, KeyType};
use super::cgroup::CpuQuota;
use super::servers::{self, ServerKind};
use super::{Ctx, load};

/// CPU quota of every server under test, percent of one core.
pub const QUOTA_PERCENT: u64 = 50;

/// Clients give up on a handshake after this many seconds (mobile clients use about 10).
pub const CLIENT_TIMEOUT_S: u64 = 5;

/// Storm multiplier of the capacity.
pub const STORM_FACTOR: f64 = 5.0;

/// Runs the storm against every server; writes `storm-<server>.json/.svg` and `storm.json`.
pub fn run(ctx: &Ctx) -> Result<()> {
    let (cap_s, steady_s, storm_s, recovery_s) = if ctx.quick {
        (2.0, 3.0, 3.0, 8.0)
    } else {
        (5.0, 15.0, 10.0, 30.0)
    };
    let rsa = certs::ensure(&ctx.out, KeyType::Rsa)?;
    let mut summary = Vec::new();
    for server in &ctx.servers {
        let name = server.name();
        let quota = CpuQuota::create(&format!("portcullis-bench-{name}"), QUOTA_PERCENT)?;
        let s = servers::start(ctx, *server, &rsa, Some(&quota.procs_file()))?;
        let cap_report = load::run(
            ctx,
            s.port,
            &ctx.out.join(format!("storm-{name}-capacity.json")),
            &[
                "--mix".into(),
                "full13".into(),
                "--concurrency".into(),
                "32".into(),
                "--duration".into(),
                cap_s.to_string(),
            ],
        )?;
        let capacity = cap_report["rate_ok"].as_f64().unwrap_or(1.0).max(1.0);
        let steady = (capacity * 0.5).max(1.0);
        let storm = capacity * STORM_FACTOR;
        let report = load::run(
            ctx,
            s.port,
            &ctx.out.join(format!("storm-{name}.json")),
            &[
                "--mix".into(),
                "full13".into(),
                "--phase".into(),
                format!("steady:{steady_s}:{steady:.0}:poisson"),
                "--phase".into(),
                format!("storm:{storm_s}:{storm:.0}:poisson"),
                "--phase".into(),
                format!("recovery:{recovery_s}:{steady:.0}:poisson"),
                "--timeout".into(),
                CLIENT_TIMEOUT_S.to_string(),
                "--max-inflight".into(),
                "15000".into(),
                "--svg".into(),
                ctx.out
                    .join(format!("storm-{name}.svg"))
                    .display()
                    .to_string(),
                "--title".into(),
                format!(
                    "{name}: RSA-2048, {QUOTA_PERCENT}% of CPU 0; steady {steady:.0}/s, storm {storm:.0}/s"
                ),
            ],
        )?;
        drop(s);
        drop(quota);
        summary.push(summarize(*server, capacity, &report, steady_s + storm_s));
    }
    let text = render(&summary);
    println!("\n{text}");
    std::fs::write(ctx.out.join("storm.txt"), &text)?;
    std::fs::write(
        ctx.out.join("storm.json"),
        serde_json::to_string_pretty(&json!({
            "quick": ctx.quick,
            "quota_percent": QUOTA_PERCENT,
            "certificate": "rsa2048",
            "client_timeout_s": CLIENT_TIMEOUT_S,
            "servers": summary,
        }))?,
    )?;
    eprintln!(
        "wrote {}/storm.json, storm.txt and storm-<server>.svg",
        ctx.out.display()
    );
    Ok(())
}

fn summarize(server: ServerKind, capacity: f64, report: &Value, recovery_start: f64) -> Value {
    let phase = |name: &str| {
        report["phase_stats"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (steady, storm, recovery) = (phase("steady"), phase("storm"), phase("recovery"));
    let steady_p99_ms = steady["handshake_us"]["p99"].as_f64().unwrap_or(0.0) / 1000.0;
    let threshold_ms = steady_p99_ms * 2.0 + 20.0;
    let recover_s = time_to_recover(report, recovery_start, threshold_ms);
    let storm_start = storm["start_s"].as_f64().unwrap_or(0.0);
    let storm_len = storm["duration_s"].as_f64().unwrap_or(1.0).max(1.0);
    let goodput = completions_per_second(report, storm_start, storm_start + storm_len);
    json!({
        "server": server.name(),
        "capacity_per_s": capacity,
        "steady_p99_ms": steady_p99_ms,
        "storm_goodput_per_s": goodput,
        "storm_started_ok": storm["ok"],
        "storm_offered": storm["offered"],
        "storm_failed": storm["failed"],
        "storm_p99_ms": storm["handshake_us"]["p99"].as_f64().map(|us| us / 1000.0),
        "recovery_p99_ms": recovery["handshake_us"]["p99"].as_f64().map(|us| us / 1000.0),
        "recovery_failed": recovery["failed"],
        "recover_threshold_ms": threshold_ms,
        "time_to_recover_s": recover_s,
    })
}

/// Completed connections per second between `from` and `to` (seconds from the start, whole seconds of the
/// series), whatever phase they were meant to start in: what the server got done during the storm.
fn completions_per_second(report: &Value, from: f64, to: f64) -> f64 {
    let Some(series) = report["series"].as_array() else {
        return 0.0;
    };
    let (a, b) = (from as usize, (to as usize).min(series.len()));
    let ok: u64 = series
        .get(a..b)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["ok"].as_u64())
        .sum();
    ok as f64 / (b.saturating_sub(a)).max(1) as f64
}

/// Seconds from the start of recovery until every later second has completions, no errors and a p99 under
/// `threshold_ms`; `None` if that never happens before the series ends.
fn time_to_recover(report: &Value, recovery_start: f64, threshold_ms: f64) -> Option<f64> {
    let series = report["series"].as_array()?;
    let healthy = |s: &Value| {
        let errors: u64 = s["errors"]
            .as_object()
            .map_or(0, |e| e.values().filter_map(Value::as_u64).sum());
        let p99_ms = s["handshake_us"]["full13"]["p99"]
            .as_f64()
            .unwrap_or(f64::MAX)
            / 1000.0;
        errors == 0 && s["ok"].as_u64().unwrap_or(0) > 0 && p99_ms <= threshold_ms
    };
    let start = recovery_start as usize;
    // Ignore the drain after the schedule: the last second(s) may be partial.
    let end = series.len().saturating_sub(1);
    let later = series.get(start..end)?;
    let first_unhealthy_from_end = later.iter().rposition(|s| !healthy(s));
    match first_unhealthy_from_end {
        None => Some(0.0),
        Some(i) if i + 1 < later.len() => Some((i + 1) as f64),
        Some(_) => None,
    }
}

fn render(summary: &[Value]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "storm: RSA-2048, each server limited to {QUOTA_PERCENT}% of CPU 0 (cgroup v1 cpu.cfs_quota_us); \
         steady 50% of capacity -> {STORM_FACTOR}x -> 50%; clients time out after {CLIENT_TIMEOUT_S} s"
    );
    let _ = writeln!(
        out,
        "{:<11} {:>9} {:>10} {:>12} {:>9} {:>9} {:>12} {:>12}",
        "server",
        "capacity",
        "steady p99",
        "storm goodput",
        "storm p99",
        "failed",
        "recovery p99",
        "recovered in"
    );
    for s in summary {
        let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.1}"));
        let _ = writeln!(
            out,
            "{:<11} {:>9} {:>10} {:>12} {:>9} {:>9} {:>12} {:>12}",
            s["server"].as_str().unwrap_or("?"),
            f(&s["capacity_per_s"]),
            f(&s["steady_p99_ms"]),
            f(&s["storm_goodput_per_s"]),
            f(&s["storm_p99_ms"]),
            s["storm_failed"],
            f(&s["recovery_p99_ms"]),
            s["time_to_recover_s"]
                .as_f64()
                .map_or("not".to_owned(), |x| format!("{x:.0} s")),
        );
    }
    let _ = writeln!(
        out,
        "(rates per second, latencies in ms from intended start)"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_is_the_first_second_after_which_all_are_healthy() {
        let sec = |ok: u64, p99: u64, err: u64| json!({ "ok": ok, "errors": { "timeout": err }, "handshake_us": { "full13": { "p99": p99 } } });
        let report = json!({ "series": [
            sec(10, 1000, 0), sec(10, 900_000, 5), sec(10, 800_000, 0), sec(10, 2000, 0), sec(10, 1500, 0),
            sec(3, 1000, 0)
        ]});
        assert_eq!(time_to_recover(&report, 1.0, 25.0), Some(2.0));
        assert_eq!(time_to_recover(&report, 3.0, 25.0), Some(0.0));
        let never = json!({ "series": [sec(10, 900_000, 0), sec(10, 900_000, 0), sec(1, 1, 0)] });
        assert_eq!(time_to_recover(&never, 0.0, 25.0), None);
    }
}
