//! `cargo xtask bench fleet`: seed 000's scenario. Three portcullis instances (one worker each, all on CPU 0),
//! clients reconnecting round robin so every resumption lands on a different instance than the one that issued
//! the ticket, a rolling restart (each instance SIGTERM-drained and started again on its port, one at a time) and
//! a key rotation staged mid-run that activates under load. Run once with `fleet` tickets (one shared key
//! directory) and once with `per-process` tickets (each instance its own random key, the seed's anti-pattern).
//!
//! Reported: cross-instance resumption rate (resumed / (resumed + refused)) and handshake p99, in total and per
//! second, as a table, `target/bench/fleet.{json,md,svg}`; plus the session cache's take/put cost at 256, 4,096
//! and 65,536 entries beside rustls' built-in cache (`examples/session_cache_bench.rs` in the daemon crate).

use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::cmd::output_ok;

use super::Ctx;
use super::certs::{self, Cert, KeyType};
use super::servers::free_port;

/// The CPU the three instances share; the load generator runs on the other one.
const SERVER_CPU: &str = "0";
const LOAD_CPU: &str = "1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Fleet,
    PerProcess,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Fleet => "fleet",
            Mode::PerProcess => "per-process",
        }
    }
}

/// One run's outcome.
struct Outcome {
    mode: Mode,
    resumed: u64,
    refused: u64,
    failed: u64,
    p99_ms: f64,
    /// Per second: (t, resumption %, handshake p99 ms).
    series: Vec<(u64, f64, f64)>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        100.0 * self.resumed as f64 / (self.resumed + self.refused).max(1) as f64
    }
}

/// Runs both modes and the cache comparison; writes `fleet.json`, `fleet.md`, `fleet.svg`.
pub fn run(ctx: &Ctx) -> Result<()> {
    let cert = certs::ensure(&ctx.out, KeyType::Ecdsa)?;
    let (duration, rate) = if ctx.quick { (12, 60.0) } else { (40, 100.0) };
    let mut outcomes = Vec::new();
    for mode in [Mode::Fleet, Mode::PerProcess] {
        outcomes.push(run_mode(ctx, &cert, mode, duration, rate)?);
    }
    let cache = session_cache()?;
    let md = markdown(&outcomes, &cache, duration, rate);
    print!("{md}");
    std::fs::write(ctx.out.join("fleet.md"), &md)?;
    std::fs::write(ctx.out.join("fleet.svg"), chart(&outcomes))?;
    let json = json!({
        "duration_s": duration,
        "rate": rate,
        "modes": outcomes.iter().map(|o| json!({
            "mode": o.mode.name(),
            "resumed": o.resumed,
            "refused": o.refused,
            "failed": o.failed,
            "cross_instance_resumption_percent": o.rate(),
            "handshake_p99_ms": o.p99_ms,
            "per_second": o.series.iter().map(|(t, r, p)| json!({"t": t, "resumption_percent": r, "p99_ms": p})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "session_cache": cache,
    });
    std::fs::write(
        ctx.out.join("fleet.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!("wrote {}/fleet.{{md,json,svg}}", ctx.out.display());
    Ok(())
}

struct Instance {
    port: u16,
    child: Child,
}

fn start_instance(ctx: &Ctx, dir: &Path, cert: &Cert, mode: Mode, port: u16) -> Result<Instance> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--metrics".into(),
        format!("127.0.0.1:{}", free_port()?),
        "--workers".into(),
        "1".into(),
        "--cert".into(),
        cert.cert.display().to_string(),
        "--key".into(),
        cert.key.display().to_string(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
    ];
    if mode == Mode::Fleet {
        args.push("--ticket-keys".into());
        args.push(dir.join("keys").display().to_string());
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("portcullis-{port}.log")))?;
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 20000; exec taskset -c {SERVER_CPU} \"$@\""
        ))
        .arg("sh")
        .arg(&ctx.daemon)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .env("PORTCULLIS_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .spawn()
        .with_context(|| format!("cannot start {}", ctx.daemon.display()))?;
    let mut inst = Instance { port, child };
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = inst.child.try_wait()? {
            bail!(
                "portcullis on port {port} exited during start-up ({status}); see {}",
                dir.display()
            );
        }
        if Instant::now() > deadline {
            bail!("portcullis did not listen on 127.0.0.1:{port} within 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(inst)
}

impl Instance {
    /// Sends `signal` by PID and waits (bounded) for the exit.
    fn stop(mut self, signal: &str) -> Result<()> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args([signal, &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(35);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("portcullis (pid {pid}) did not stop within 35 s of {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

fn run_mode(ctx: &Ctx, cert: &Cert, mode: Mode, duration: u64, rate: f64) -> Result<Outcome> {
    let dir = ctx.out.join(format!("fleet-{}", mode.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let keys = dir.join("keys");
    keys_cmd(ctx, &["init", "--period", "1h", "--dir"], &keys)?;
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(start_instance(ctx, &dir, cert, mode, free_port()?)?);
    }
    let json = dir.join("load.json");
    let mut load = Command::new("taskset");
    load.args(["-c", LOAD_CPU])
        .arg(&ctx.load)
        .args(["run", "--quiet", "--no-preflight", "--sni", "localhost"])
        .args(["--mix", "resume13:1,resume12-ticket:1"])
        .args([
            "--rate",
            &rate.to_string(),
            "--duration",
            &duration.to_string(),
        ])
        .args(["--timeout", "5", "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(dir.join("load.svg"))
        .args(["--title", &format!("fleet bench, {} tickets", mode.name())]);
    for i in &instances {
        load.args(["--target", &format!("127.0.0.1:{}", i.port)]);
    }
    eprintln!(
        "+ {mode:?}: portcullis-load over 3 instances, {rate}/s for {duration} s",
        mode = mode.name()
    );
    let load = load
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start portcullis-load")?;
    // The rolling restart in the middle, then a rotation that activates before the end.
    let start = Instant::now();
    let at = |frac: u64| Duration::from_secs(duration * frac / 10);
    for (i, when) in [(0usize, at(3)), (1, at(4)), (2, at(5))] {
        sleep_until(start + when);
        let old = instances.remove(i);
        let port = old.port;
        old.stop("-TERM")?;
        instances.insert(i, start_instance(ctx, &dir, cert, mode, port)?);
        eprintln!(
            "  t={:.1}s restarted instance {i}",
            start.elapsed().as_secs_f64()
        );
    }
    sleep_until(start + at(6));
    let lead = format!("{}s", (duration / 10).max(1));
    keys_cmd(
        ctx,
        &["rotate", "--lead", &lead, "--period", "1h", "--dir"],
        &keys,
    )?;
    eprintln!(
        "  t={:.1}s rotated keys (activation in {lead})",
        start.elapsed().as_secs_f64()
    );
    let out = load.wait_with_output()?;
    for i in instances {
        i.stop("-INT")?;
    }
    if !out.status.success() {
        bail!(
            "portcullis-load failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)
        .with_context(|| format!("parsing {}", json.display()))?;
    Ok(outcome(mode, &report))
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

fn keys_cmd(ctx: &Ctx, args: &[&str], dir: &Path) -> Result<()> {
    output_ok(
        Command::new(&ctx.daemon).arg("keys").args(args).arg(dir),
        &format!("portcullis keys {} {}", args.join(" "), dir.display()),
    )?;
    Ok(())
}

fn outcome(mode: Mode, report: &Value) -> Outcome {
    let kinds = ["resume13", "resume12-ticket"];
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let mut resumed = 0;
    let mut refused = 0;
    let mut failed = 0;
    let mut p99_us = 0;
    for k in kinds {
        let kind = &report["kinds"][k];
        resumed += u(&kind["resumed"]);
        refused += u(&kind["fallback"]["rejected"]);
        failed += kind["errors"]
            .as_object()
            .map_or(0, |e| e.values().map(u).sum());
        p99_us = p99_us.max(u(&kind["handshake_us"]["p99"]));
    }
    let series = report["series"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|sec| {
                    let ok = u(&sec["ok"]);
                    let res = u(&sec["resumed"]);
                    let p99 = kinds
                        .iter()
                        .map(|k| u(&sec["handshake_us"][*k]["p99"]))
                        .max()
                        .unwrap_or(0);
                    (
                        u(&sec["t"]),
                        100.0 * res as f64 / ok.max(1) as f64,
                        p99 as f64 / 1000.0,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Outcome {
        mode,
        resumed,
        refused,
        failed,
        p99_ms: p99_us as f64 / 1000.0,
        series,
    }
}

/// Runs the cache comparison example (release) and returns its rows.
fn session_cache() -> Result<Vec<Value>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    eprintln!("+ cargo run --release -p portcullis --example session_cache_bench");
    let out = output_ok(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "portcullis",
                "--example",
                "session_cache_bench",
            ]),
        "the session cache benchmark (session_cache_bench)",
    )?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad line {l:?}")))
        .collect()
}

fn markdown(outcomes: &[Outcome], cache: &[Value], duration: u64, rate: f64) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Cross-instance resumption ({duration} s at {rate}/s over 3 instances, rolling restart at 30-50%, rotation at 60%)\n"
    );
    let _ = writeln!(
        md,
        "| tickets | resumed | refused | cross-instance resumption | handshake p99 | connection failures |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2}% | {:.1} ms | {} |",
            o.mode.name(),
            o.resumed,
            o.refused,
            o.rate(),
            o.p99_ms,
            o.failed
        );
    }
    let _ = writeln!(
        md,
        "\nPer second (resumed / completed, handshake p99 ms):\n"
    );
    let _ = writeln!(
        md,
        "| t (s) | {} |",
        outcomes
            .iter()
            .map(|o| format!("{} % | {} p99", o.mode.name(), o.mode.name()))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---:|{}", "---:|".repeat(2 * outcomes.len()));
    let rows = outcomes.iter().map(|o| o.series.len()).max().unwrap_or(0);
    for r in 0..rows {
        let t = outcomes
            .iter()
            .find_map(|o| o.series.get(r).map(|s| s.0))
            .unwrap_or(r as u64);
        let cells: Vec<String> = outcomes
            .iter()
            .map(|o| match o.series.get(r) {
                Some((_, pct, p99)) => format!("{pct:.1} | {p99:.1}"),
                None => "- | -".into(),
            })
            .collect();
        let _ = writeln!(md, "| {t} | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        md,
        "\n### Session cache, ns per operation on a full cache (single thread)\n"
    );
    let _ = writeln!(
        md,
        "| entries | portcullis take | portcullis put | rustls take | rustls put |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|");
    for n in [256, 4096, 65536] {
        let get = |imp: &str, field: &str| {
            cache
                .iter()
                .find(|v| v["impl"] == imp && v["entries"] == n)
                .and_then(|v| v[field].as_f64())
                .map_or("-".into(), |x| format!("{x:.0}"))
        };
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} |",
            get("portcullis", "take_ns"),
            get("portcullis", "put_ns"),
            get("rustls", "take_ns"),
            get("rustls", "put_ns")
        );
    }
    md
}

/// Picks a value out of one second of the series.
type Pick = fn(&(u64, f64, f64)) -> f64;

/// Two stacked line charts: resumption % and handshake p99 per second, one line per mode.
fn chart(outcomes: &[Outcome]) -> String {
    let (w, h, pad) = (720.0, 220.0, 40.0);
    let colors = ["#1b7837", "#c51b7d"];
    let t_max = outcomes
        .iter()
        .flat_map(|o| o.series.iter().map(|s| s.0))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let p99_max = outcomes
        .iter()
        .flat_map(|o| o.series.iter().map(|s| s.2))
        .fold(1.0, f64::max);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        2.0 * h + 40.0
    );
    let panels: [(&str, f64, Pick); 2] = [
        (
            "cross-instance resumption, % of completed per second",
            100.0,
            |s| s.1,
        ),
        ("handshake p99 per second, ms", p99_max, |s| s.2),
    ];
    for (p, (title, y_max, pick)) in panels.iter().enumerate() {
        let top = p as f64 * (h + 20.0) + 20.0;
        let _ = writeln!(
            svg,
            "<text x=\"{pad}\" y=\"{}\">{title} (max {y_max:.0})</text>",
            top - 4.0
        );
        let _ = writeln!(
            svg,
            "<rect x=\"{pad}\" y=\"{top}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
            w - 2.0 * pad,
            h - pad
        );
        for (o, color) in outcomes.iter().zip(colors) {
            let points: Vec<String> = o
                .series
                .iter()
                .map(|s| {
                    let x = pad + (w - 2.0 * pad) * s.0 as f64 / t_max;
                    let y = top + (h - pad) * (1.0 - (pick(s) / y_max).clamp(0.0, 1.0));
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                points.join(" ")
            );
        }
    }
    for (i, (o, color)) in outcomes.iter().zip(colors).enumerate() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{} tickets: {:.2}% resumed across instances</text>",
            pad + 10.0 + 300.0 * i as f64,
            2.0 * h + 30.0,
            o.mode.name(),
            o.rate()
        );
    }
    svg.push_str("</svg>\n");
    svg
}
