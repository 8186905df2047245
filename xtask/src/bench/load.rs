//! Running `portcullis-load` pinned to CPU 1 and reading its JSON report.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::Ctx;

/// The CPU the load generator runs on.
pub const LOAD_CPU: &str = "1";

/// Runs `portcullis-load run --quiet --json <json> <args>` against 127.0.0.1:`port` and returns the report.
pub fn run(ctx: &Ctx, port: u16, json: &Path, args: &[String]) -> Result<Value> {
    run_in(ctx, None, &format!("127.0.0.1:{port}"), json, args)
}

/// [`run`] against `target`, from inside the network namespace `netns` (a name under /run/netns) when given.
pub fn run_in(
    ctx: &Ctx,
    netns: Option<&str>,
    target: &str,
    json: &Path,
    args: &[String],
) -> Result<Value> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/run/netns/{ns}")).arg("sh");
            cmd
        }
        None => Command::new("sh"),
    };
    cmd.arg("-c")
        .arg(format!(
            "ulimit -n 20000; exec taskset -c {LOAD_CPU} \"$@\""
        ))
        .arg("sh")
        .arg(&ctx.load)
        .args(["run", "--quiet", "--target", target])
        .arg("--json")
        .arg(json)
        .args(args);
    let line = format!("portcullis-load run --target {target} {}", args.join(" "));
    eprintln!("+ {line}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", ctx.load.display()))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))
}

/// Runs `portcullis-load limit --json` and returns server CPU µs per handshake.
pub fn limit(ctx: &Ctx, cert: &Path, key: &Path, kind: &str, handshakes: u32) -> Result<f64> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", LOAD_CPU])
        .arg(&ctx.load)
        .args([
            "limit",
            "--json",
            "--kind",
            kind,
            "--handshakes",
            &handshakes.to_string(),
        ])
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key);
    eprintln!("+ portcullis-load limit --kind {kind} --handshakes {handshakes}");
    let out = cmd.output().context("cannot start portcullis-load limit")?;
    if !out.status.success() {
        bail!(
            "portcullis-load limit failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).context("parsing portcullis-load limit output")?;
    v["server_cpu_us"]
        .as_f64()
        .context("portcullis-load limit printed no server_cpu_us")
}

/// How many `openssl s_time` clients run side by side: one alone is sequential and mostly waits (delayed
/// ACKs), which leaves the server idle between handshakes and its caches cold.
pub const S_TIME_CLIENTS: usize = 8;

/// Runs [`S_TIME_CLIENTS`] `openssl s_time -new` (full handshakes, no request) pinned to CPU 1 for `secs`
/// against 127.0.0.1:`port`; returns the connections they completed. The independent client of the
/// cross-check.
pub fn s_time(port: u16, secs: u32) -> Result<u64> {
    eprintln!("+ {S_TIME_CLIENTS} x openssl s_time -new -connect 127.0.0.1:{port} -time {secs}");
    let children = (0..S_TIME_CLIENTS)
        .map(|_| {
            Command::new("taskset")
                .args(["-c", LOAD_CPU, "openssl", "s_time", "-new", "-connect"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["-time", &secs.to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("cannot start openssl s_time")
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = 0;
    for child in children {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "2345 connections in 11 real seconds, 0 bytes read per connection"
        total += text
            .lines()
            .find(|l| l.contains("connections in") && l.contains("real seconds"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .with_context(|| {
                format!(
                    "openssl s_time printed no connection count: {}",
                    text.trim()
                )
            })?;
    }
    Ok(total)
}

/// Completed connections in a report.
pub fn ok(report: &Value) -> u64 {
    report["ok"].as_u64().unwrap_or(0)
}

/// Resumed connections in a report, over all kinds.
pub fn resumed(report: &Value) -> u64 {
    report["kinds"].as_object().map_or(0, |k| {
        k.values().filter_map(|v| v["resumed"].as_u64()).sum()
    })
}

/// A handshake percentile (`p50`, `p99`, ...) in ms for `kind`.
pub fn handshake_ms(report: &Value, kind: &str, p: &str) -> Option<f64> {
    report["kinds"][kind]["handshake_us"][p]
        .as_u64()
        .map(|us| us as f64 / 1000.0)
}
