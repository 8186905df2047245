//! `cargo xtask bench storm`: the reconnect storm of the seed scenario against each server, portcullis with its
//! admission control on and off.
//!
//! One client core must offer 10x what one server core completes, so the certificate is RSA-4096: the server's
//! signature costs about 1.4 ms, the client's verification a few microseconds. Every server runs on CPU 0 alone,
//! the load generator on CPU 1. (An earlier version throttled the servers with a cgroup CPU quota instead; at
//! 100% of its quota a server is stopped for part of every CFS period, which adds milliseconds of its own to
//! every latency measured.) Per server: the saturated rate of the mix is its capacity; then busy at [`BUSY_LOAD`]
//! of it -> steady at 50% -> open-loop Poisson storm at [`STORM_FACTOR`]x -> recovery at 50%, clients giving up after
//! [`CLIENT_TIMEOUT_S`] and connecting from [`SOURCES`] loopback addresses (so the many connections waiting at
//! once do not exhaust one address's ports). The mix is half full TLS 1.3 handshakes, half TLS 1.3 resumptions
//! (tickets from earlier connections of the run).
//!
//! portcullis with admission control runs its XDP guard on `lo` (generic mode), so its cheapest shedding action,
//! dropping a fraction of new SYNs, is in play as on an edge host; without admission control it runs without XDP.
//!
//! Summary per server, against the targets at 10x: goodput during the storm as a share of capacity
//! (target >= 95%), admitted p99 during the storm against the steady p99 (target <= 2x), resumption success
//! (target >= 99%), and the time after the storm until a newly arriving client is served as in steady state
//! again (target <= 1 s). For portcullis also what admission control shed below overload, in the busy and steady
//! phases (target: nothing, issue 21), from its `/metrics`.
//!
//! The admitted p99 is measured two ways. *To flight*: TCP connected to the server's first flight received,
//! stamped by the kernel (`SO_TIMESTAMPNS`): the server's response, what the target is judged on. *Handshake
//! done*: TCP connected to the client's Finished sent, which adds the load generator's own delay in reading
//! and answering the flight; during the storm its core is saturated (10x the server's capacity in connection
//! attempts), so that delay grows with the load generator's load, not the server's. For portcullis the
//! server's own stage histograms are scraped at the phase boundaries and printed beside them.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::certs::{self, KeyType};
use super::servers::{self, ServerKind};
use super::{Ctx, load, merge, stages};

/// Clients give up on a connection after this many seconds (browsers wait longer, mobile clients about 10 s; the
/// bound keeps the connections one client process holds open within its descriptor limit at 10x).
pub const CLIENT_TIMEOUT_S: u64 = 3;

/// Connections one load generator process keeps open at once, below the 20,000 descriptors it may have here.
const MAX_INFLIGHT: u32 = 18_000;

/// Load generator processes sharing the offered load (each with its own descriptor limit).
const LOAD_PROCESSES: usize = 2;

/// The busy phase's share of the capacity: the most that must not be shed at all.
pub const BUSY_LOAD: f64 = 0.8;

/// Storm multiplier of the capacity.
pub const STORM_FACTOR: f64 = 10.0;

/// Loopback addresses the load generator connects from (127.0.0.1 up to 127.0.0.SOURCES).
pub const SOURCES: u8 = 16;

/// The handshake mix of every run: half full TLS 1.3 handshakes, half resumptions.
const MIX: &str = "full13:1,resume13:1";

/// The targets at 10x, checked on every row (printed, not enforced: the quick form is smoke).
const TARGET_GOODPUT: f64 = 0.95;
const TARGET_P99_RATIO: f64 = 2.0;
const TARGET_RESUMPTION: f64 = 0.99;
const TARGET_RECOVER_S: f64 = 1.0;

/// A second of arrivals is served "as before the storm" with at most this share failed. The steady phase
/// itself, before any storm, lost 0.07-0.8% of its connections here (resets by the cost budget when Poisson
/// arrivals bunched up, gone since its burst is sized from the learned costs; and host hiccups), in a few of its
/// seconds: "back to normal" cannot ask for fewer. A
/// collapsed server fails most of them. The strict figure (not one failure) is reported beside it.
const RECOVERED_MAX_FAILED: f64 = 0.01;

/// One server under test, in one configuration.
struct Contender {
    server: ServerKind,
    /// Row label, file name stem and directory under `target/bench/`.
    label: &'static str,
    /// portcullis only: the TOML config file.
    config: Option<String>,
    /// Take the capacity measured for this earlier contender instead of probing: portcullis with admission
    /// control is the same server on the same CPU as without, and a closed-loop probe would only measure how
    /// its shedding (SYNs dropped, clients waiting out TCP's 1 s retransmission) slows a client that never
    /// backs off.
    capacity_of: Option<&'static str>,
}

fn contenders(ctx: &Ctx) -> Vec<Contender> {
    let mut out = Vec::new();
    for server in &ctx.servers {
        match server {
            ServerKind::Portcullis => {
                out.push(Contender {
                    server: *server,
                    label: "portcullis-noadm",
                    config: Some(
                        "# cargo xtask bench storm: admission control off, no XDP.\n[admission]\nenabled = false\n"
                            .to_owned(),
                    ),
                    capacity_of: None,
                });
                out.push(Contender {
                    server: *server,
                    label: "portcullis",
                    config: Some(format!(
                        "# cargo xtask bench storm: admission control on, the XDP guard on lo for SYN shedding.\n\
                         [xdp]\ninterfaces = [\"lo\"]\npin_dir = \"{STORM_PIN_DIR}\"\n\
                         [admission]\nenabled = true\n"
                    )),
                    capacity_of: Some("portcullis-noadm"),
                });
            }
            other => out.push(Contender {
                server: *other,
                label: other.name(),
                config: None,
                capacity_of: None,
            }),
        }
    }
    out
}

/// Runs the storm against every server; writes `storm-<server>.json/.svg` and `storm.json`.
/// Where the storm's portcullis pins its XDP maps. The daemon leaves the state pins (budgets, blocklists) for its
/// next start by design; the bench removes them before and after, so every run starts from empty state and leaves
/// nothing pinned.
const STORM_PIN_DIR: &str = "/sys/fs/bpf/portcullis-bench-storm";

/// Removes `dir` and the pins in it, if it exists.
pub(super) fn remove_pins(dir: &str) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {dir}")),
    };
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list {dir}"))?.path();
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the pin {}", path.display()))?;
    }
    std::fs::remove_dir(dir).with_context(|| format!("cannot remove {dir}"))
}

pub fn run(ctx: &Ctx) -> Result<()> {
    remove_pins(STORM_PIN_DIR)?;
    let (cap_s, busy_s, steady_s, storm_s, recovery_s) = if ctx.quick {
        (2.0, 3.0, 3.0, 3.0, 6.0)
    } else {
        // A minute each at 80% and 50% (issue 21: nothing shed in 60 s at either); the steady p99, the
        // denominator of the storm ratio, from ~30,000 handshakes.
        (5.0, 60.0, 60.0, 10.0, 15.0)
    };
    let rsa = certs::ensure(&ctx.out, KeyType::Rsa4096)?;
    // One entry per address ("--source=ADDR"), dealt out to the load generator processes in turn.
    let sources: Vec<String> = (1..=SOURCES)
        .map(|i| format!("--source=127.0.0.{i}"))
        .collect();
    let mut summary = Vec::new();
    for c in contenders(ctx) {
        let name = c.label;
        let config: Option<PathBuf> = match &c.config {
            Some(text) => {
                let path = ctx.out.join(format!("storm-{name}.toml"));
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let s = servers::start_with(ctx, c.server, &rsa, name, config.as_deref())?;
        let measured = c.capacity_of.and_then(|of| {
            summary
                .iter()
                .find(|v: &&Value| v["server"] == of)
                .and_then(|v| v["capacity_per_s"].as_f64())
        });
        let capacity = match measured {
            Some(capacity) => capacity,
            None => {
                let cap_report = load::run(
                    ctx,
                    s.port,
                    &ctx.out.join(format!("storm-{name}-capacity.json")),
                    &[
                        "--mix".into(),
                        MIX.into(),
                        // Eight in flight keep the server busy (one handshake served, the next ones waiting,
                        // while the client works on the others).
                        "--concurrency".into(),
                        "8".into(),
                        "--duration".into(),
                        cap_s.to_string(),
                    ],
                )?;
                cap_report["rate_ok"].as_f64().unwrap_or(1.0).max(1.0)
            }
        };
        let busy = (capacity * BUSY_LOAD).max(1.0);
        let steady = (capacity * 0.5).max(1.0);
        let storm = capacity * STORM_FACTOR;
        // Two load generator processes, half the rate each (own seeds, own source addresses): one process
        // may hold 20,000 descriptors here, and at 10x the clients whose SYNs were dropped hold one each
        // until they give up.
        let args = |part: usize| -> Vec<String> {
            let (busy, steady, storm) = (
                busy / LOAD_PROCESSES as f64,
                steady / LOAD_PROCESSES as f64,
                storm / LOAD_PROCESSES as f64,
            );
            let mut args: Vec<String> = vec![
                "--mix".into(),
                MIX.into(),
                "--seed".into(),
                (part + 1).to_string(),
                "--phase".into(),
                format!("busy:{busy_s}:{busy:.1}:poisson"),
                "--phase".into(),
                format!("steady:{steady_s}:{steady:.1}:poisson"),
                "--phase".into(),
                format!("storm:{storm_s}:{storm:.1}:poisson"),
                "--phase".into(),
                format!("recovery:{recovery_s}:{steady:.1}:poisson"),
                "--timeout".into(),
                CLIENT_TIMEOUT_S.to_string(),
                "--max-inflight".into(),
                MAX_INFLIGHT.to_string(),
            ];
            if part == 0 {
                args.extend([
                    "--svg".into(),
                    ctx.out
                        .join(format!("storm-{name}.svg"))
                        .display()
                        .to_string(),
                    "--title".into(),
                    format!(
                        "{name}: RSA-4096, CPU 0; busy {:.0}/s, steady {:.0}/s, storm {:.0}/s (one of {LOAD_PROCESSES} clients)",
                        busy, steady, storm
                    ),
                ]);
            }
            args.extend(sources.iter().skip(part).step_by(LOAD_PROCESSES).cloned());
            args
        };
        let port = s.port;
        let metrics_port = s.metrics_port;
        let (reports, scrapes) = std::thread::scope(|scope| {
            // portcullis: its stage histograms and shed counters at the start and at the end of the busy, steady
            // and storm phases, so each phase's server-side stages and sheds can be read beside the client's view.
            let scraper = metrics_port.map(|mp| {
                scope.spawn(move || {
                    let t0 = std::time::Instant::now();
                    [0.0, busy_s, busy_s + steady_s, busy_s + steady_s + storm_s]
                        .into_iter()
                        .map(|at| {
                            let wait =
                                std::time::Duration::from_secs_f64(at).saturating_sub(t0.elapsed());
                            std::thread::sleep(wait);
                            Ok((stages::scrape(mp)?, shed_total(mp)?))
                        })
                        .collect::<Result<Vec<_>>>()
                })
            });
            let handles: Vec<_> = (0..LOAD_PROCESSES)
                .map(|part| {
                    let args = args(part);
                    let json = ctx.out.join(format!("storm-{name}-{part}.json"));
                    scope.spawn(move || load::run(ctx, port, &json, &args))
                })
                .collect();
            let reports = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| anyhow::bail!("a load generator thread panicked"))
                })
                .collect::<Result<Vec<Value>>>();
            let scrapes = scraper.map(|h| {
                h.join()
                    .unwrap_or_else(|_| anyhow::bail!("the metrics scraper panicked"))
            });
            (reports, scrapes)
        });
        let reports = reports?;
        let (server_stages, shed_below_overload) = match scrapes.transpose()? {
            Some(v) => match v.as_slice() {
                [start, busy_end, steady_end, storm_end] => (
                    json!({
                        "steady": steady_end.0.since(&busy_end.0).summary(),
                        "storm": storm_end.0.since(&steady_end.0).summary(),
                    }),
                    json!({
                        "busy": busy_end.1 - start.1,
                        "steady": steady_end.1 - busy_end.1,
                    }),
                ),
                _ => (Value::Null, Value::Null),
            },
            None => (Value::Null, Value::Null),
        };
        let report = merge::reports(&reports);
        std::fs::write(
            ctx.out.join(format!("storm-{name}.json")),
            serde_json::to_string_pretty(&report)?,
        )?;
        drop(s);
        let mut row = summarize(name, capacity, &report);
        row["server_stages"] = server_stages;
        row["shed_below_overload"] = shed_below_overload;
        summary.push(row);
    }
    remove_pins(STORM_PIN_DIR)?;
    let text = render(&summary);
    println!("\n{text}");
    std::fs::write(ctx.out.join("storm.txt"), &text)?;
    std::fs::write(
        ctx.out.join("storm.json"),
        serde_json::to_string_pretty(&json!({
            "quick": ctx.quick,
            "storm_factor": STORM_FACTOR,
            "mix": MIX,
            "certificate": "rsa4096",
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

/// Handshakes portcullis refused so far: shed by admission control plus refused by the engine (expired in a ring,
/// ring full), from its `/metrics` on 127.0.0.1:`port`.
fn shed_total(port: u16) -> Result<f64> {
    let (status, body) = servers::http_get(port, "/metrics")
        .context("scraping portcullis /metrics for the shed counters")?;
    if status != 200 {
        anyhow::bail!("portcullis /metrics answered {status}");
    }
    Ok(body
        .lines()
        .filter(|l| {
            l.starts_with("portcullis_admission_shed_total")
                || l.starts_with("portcullis_engine_rejected_total")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

fn summarize(name: &str, capacity: f64, report: &Value) -> Value {
    let phase = |name: &str| {
        report["phase_stats"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (steady, storm, recovery) = (phase("steady"), phase("storm"), phase("recovery"));
    let ms = |v: &Value| v.as_f64().map(|us| us / 1000.0);
    let steady_p99_ms = ms(&steady["handshake_us"]["p99"]).unwrap_or(0.0);
    let steady_tls_p99_ms = ms(&steady["tls_us"]["p99"]).unwrap_or(0.0);
    let storm_tls_p99_ms = ms(&storm["tls_us"]["p99"]);
    let steady_flight_p99_ms = ms(&steady["flight_us"]["p99"]).unwrap_or(0.0);
    let storm_flight_p99_ms = ms(&storm["flight_us"]["p99"]);
    let flight_ratio = storm_flight_p99_ms
        .filter(|_| steady_flight_p99_ms > 0.0)
        .map(|p| p / steady_flight_p99_ms);
    let threshold_ms = steady_p99_ms * 2.0 + 20.0;
    let recovery_start = recovery["start_s"].as_f64().unwrap_or(0.0);
    let recovery_end = recovery_start + recovery["duration_s"].as_f64().unwrap_or(0.0);
    let recover_s = time_to_recover(
        report,
        recovery_start,
        recovery_end,
        threshold_ms,
        RECOVERED_MAX_FAILED,
    );
    let recover_strict_s = time_to_recover(report, recovery_start, recovery_end, threshold_ms, 0.0);
    let storm_start = storm["start_s"].as_f64().unwrap_or(0.0);
    let storm_len = storm["duration_s"].as_f64().unwrap_or(1.0).max(1.0);
    let goodput = completions_per_second(report, storm_start, storm_start + storm_len);
    let offered_resumptions = storm["resumption"]["offered"].as_f64().unwrap_or(0.0);
    let resumption_success = (offered_resumptions > 0.0)
        .then(|| storm["resumption"]["resumed"].as_f64().unwrap_or(0.0) / offered_resumptions);
    let p99_ratio = storm_tls_p99_ms
        .filter(|_| steady_tls_p99_ms > 0.0)
        .map(|p| p / steady_tls_p99_ms);
    let goodput_share = goodput / capacity;
    let targets = json!({
        "goodput": goodput_share >= TARGET_GOODPUT,
        // Judged on the server's response (connected -> its flight on the wire): the load generator's core is
        // saturated during the storm, and its delay in answering the flight is its own (BENCHMARKS.md).
        "admitted_p99": flight_ratio.is_some_and(|r| r <= TARGET_P99_RATIO),
        "resumption": resumption_success.is_some_and(|r| r >= TARGET_RESUMPTION),
        "recovery": recover_s.is_some_and(|s| s <= TARGET_RECOVER_S),
    });
    json!({
        "server": name,
        "capacity_per_s": capacity,
        "steady_p99_ms": steady_p99_ms,
        "steady_tls_p99_ms": steady_tls_p99_ms,
        "storm_goodput_per_s": goodput,
        "storm_goodput_share": goodput_share,
        "storm_offered": storm["offered"],
        "storm_started_ok": storm["ok"],
        "storm_failed": storm["failed"],
        "storm_p99_ms": ms(&storm["handshake_us"]["p99"]),
        "storm_tls_p99_ms": storm_tls_p99_ms,
        "storm_tls_p99_ratio": p99_ratio,
        "steady_flight_p99_ms": steady_flight_p99_ms,
        "storm_flight_p99_ms": storm_flight_p99_ms,
        "storm_flight_p99_ratio": flight_ratio,
        "storm_resumption": storm["resumption"],
        "storm_resumption_success": resumption_success,
        "recovery_p99_ms": ms(&recovery["handshake_us"]["p99"]),
        "recovery_failed": recovery["failed"],
        "recover_threshold_ms": threshold_ms,
        "time_to_recover_s": recover_s,
        "time_to_recover_strict_s": recover_strict_s,
        "targets_met": targets,
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

/// Seconds from the start of recovery until clients arriving then are served as in steady state: every later
/// second of intended starts (until the recovery phase ends) had connections, none failed, and their p99 from
/// intended start is under `threshold_ms`. `None` if that never happens. Judged by when clients *arrive*, not
/// by when answers complete: a storm client that gets in late (its SYN retransmitted) is the storm's tail, not
/// the server's state afterwards.
fn time_to_recover(
    report: &Value,
    recovery_start: f64,
    recovery_end: f64,
    threshold_ms: f64,
    max_failed: f64,
) -> Option<f64> {
    let series = report["series"].as_array()?;
    let healthy = |s: &Value| {
        let started = &s["started"];
        let p99_ms = started["handshake_us"]["p99"].as_f64().unwrap_or(f64::MAX) / 1000.0;
        let ok = started["ok"].as_u64().unwrap_or(0) as f64;
        let failed = started["failed"].as_u64().unwrap_or(u64::MAX) as f64;
        ok > 0.0 && failed <= max_failed * (ok + failed) && p99_ms <= threshold_ms
    };
    let start = recovery_start as usize;
    let end = (recovery_end as usize).min(series.len());
    let later = series.get(start..end)?;
    match later.iter().rposition(|s| !healthy(s)) {
        None => Some(0.0),
        Some(i) if i + 1 < later.len() => Some((i + 1) as f64),
        Some(_) => None,
    }
}

fn render(summary: &[Value]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "storm: RSA-4096, each server on CPU 0; mix {MIX}; busy {:.0}% of capacity -> steady 50% -> {STORM_FACTOR}x -> \
         50%; clients time out after {CLIENT_TIMEOUT_S} s",
        BUSY_LOAD * 100.0
    );
    let _ = writeln!(
        out,
        "{:<17} {:>8} {:>9} {:>14} {:>9} {:>13} {:>9} {:>15} {:>14} {:>9} {:>11} {:>9}",
        "server",
        "capacity",
        "goodput",
        "admitted p99",
        "x steady",
        "to flight p99",
        "x steady",
        "resumed/offered",
        "recovered",
        "failed",
        "storm p99*",
        "targets"
    );
    for s in summary {
        let f = |v: &Value, d: usize| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.d$}"));
        let met = s["targets_met"].as_object().map_or(0, |t| {
            t.values().filter(|v| v.as_bool() == Some(true)).count()
        });
        let _ = writeln!(
            out,
            "{:<17} {:>8} {:>8}% {:>11} ms {:>8}x {:>10} ms {:>8}x {:>14}% {:>14} {:>9} {:>8} ms {:>7}/4",
            s["server"].as_str().unwrap_or("?"),
            f(&s["capacity_per_s"], 0),
            s["storm_goodput_share"]
                .as_f64()
                .map_or("-".to_owned(), |x| format!("{:.0}", x * 100.0)),
            f(&s["storm_tls_p99_ms"], 1),
            f(&s["storm_tls_p99_ratio"], 1),
            f(&s["storm_flight_p99_ms"], 1),
            f(&s["storm_flight_p99_ratio"], 1),
            s["storm_resumption_success"]
                .as_f64()
                .map_or("-".to_owned(), |x| format!("{:.1}", x * 100.0)),
            {
                let secs = |v: &Value| v.as_f64().map_or("not".to_owned(), |x| format!("{x:.0} s"));
                let (lax, strict) = (
                    secs(&s["time_to_recover_s"]),
                    secs(&s["time_to_recover_strict_s"]),
                );
                if lax == strict {
                    lax
                } else {
                    format!("{lax} ({strict})")
                }
            },
            s["storm_failed"],
            f(&s["storm_p99_ms"], 0),
            met,
        );
    }
    let _ = writeln!(
        out,
        "goodput: completions/s during the storm / capacity (target >= {:.0}%); admitted p99: TCP connected to \
         handshake done, storm vs steady (target <= {TARGET_P99_RATIO}x); to flight: TCP connected to the server's flight \
         received (kernel timestamp: without the load generator's own delay); resumed/offered: resumptions the server took \
         (target >= {:.0}%); recovered: until clients arriving after the storm are served as before, at most {:.0}% of a \
         second's arrivals failing (in parentheses when it differs: not one failing) (target <= {TARGET_RECOVER_S} s); storm p99*: from intended start, SYN retransmissions included",
        TARGET_GOODPUT * 100.0,
        TARGET_RESUMPTION * 100.0,
        RECOVERED_MAX_FAILED * 100.0
    );
    for s in summary {
        let shed = &s["shed_below_overload"];
        if !shed.is_null() {
            let _ = writeln!(
                out,
                "\n{}: shed below overload (admission control + engine refusals; target 0): {} at {:.0}%, {} at 50%",
                s["server"].as_str().unwrap_or("?"),
                shed["busy"],
                BUSY_LOAD * 100.0,
                shed["steady"],
            );
        }
        let st = &s["server_stages"];
        if st.is_null() {
            continue;
        }
        let _ = writeln!(
            out,
            "\n{}: server-side stages of completed handshakes, p99 ms steady -> storm (portcullis_handshake_stage_seconds)",
            s["server"].as_str().unwrap_or("?")
        );
        for stage in stages::STAGES {
            let f = |phase: &str, q: &str| {
                st[phase][stage][q]
                    .as_f64()
                    .map_or("-".to_owned(), |x| format!("{x:.2}"))
            };
            let _ = writeln!(
                out,
                "  {stage:<7} p99 {:>8} -> {:>8}   p50 {:>7} -> {:>7}   n {} -> {}",
                f("steady", "p99_ms"),
                f("storm", "p99_ms"),
                f("steady", "p50_ms"),
                f("storm", "p50_ms"),
                st["steady"][stage]["count"],
                st["storm"][stage]["count"],
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_is_the_first_arrival_second_after_which_all_are_healthy() {
        let sec = |ok: u64, p99: u64, failed: u64| json!({ "started": { "ok": ok, "failed": failed, "handshake_us": { "p99": p99 } } });
        let report = json!({ "series": [
            sec(10, 1000, 0), sec(10, 900_000, 5), sec(10, 800_000, 0), sec(10, 2000, 0), sec(10, 1500, 0),
            sec(3, 900_000, 3)
        ]});
        assert_eq!(time_to_recover(&report, 1.0, 5.0, 25.0, 0.0), Some(2.0));
        assert_eq!(time_to_recover(&report, 3.0, 5.0, 25.0, 0.0), Some(0.0));
        // The second after the recovery phase (the drain) does not count.
        assert_eq!(time_to_recover(&report, 3.0, 6.0, 25.0, 0.0), None);
        let never = json!({ "series": [sec(10, 900_000, 0), sec(10, 900_000, 0), sec(1, 1, 0)] });
        assert_eq!(time_to_recover(&never, 0.0, 2.0, 25.0, 0.0), None);
        // One reset in 500 is within 1%, not in the strict reading; 30 of 500 is not, either way.
        let sporadic = json!({ "series": [sec(470, 1000, 30), sec(500, 1000, 0), sec(499, 1000, 1), sec(500, 1000, 0)] });
        assert_eq!(time_to_recover(&sporadic, 0.0, 4.0, 25.0, 0.01), Some(1.0));
        assert_eq!(time_to_recover(&sporadic, 0.0, 4.0, 25.0, 0.0), Some(3.0));
    }
}
