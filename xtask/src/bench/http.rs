//! `cargo xtask bench http`: portcullis (`--mode http`), nginx (`proxy_pass`, upstream `keepalive`) and HAProxy
//! (`mode http`, `http-reuse always`) as HTTPS reverse proxies in front of one shared plain HTTP/1.1 upstream
//! (nginx serving static files, [`servers::start_upstream`]).
//!
//! Primary figure: server CPU per proxied request (utime+stime of the server's processes from /proc, as
//! `bench handshakes` does, divided by the 2xx responses the client counted) for 1 KiB and 64 KiB responses,
//! with the field's own keep-alive clients: `wrk` (HTTP/1.1) and `h2load` (h2). Then one request per new
//! connection with `portcullis-load --http`: time to first response byte, full vs resumed TLS 1.3, against the
//! issue's target (resumed TTFB within 10% of the handshake plus one upstream round trip). Server on CPU 0,
//! clients and the upstream on CPU 1.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::cmd::output_ok;

use super::Ctx;
use super::certs::{self, KeyType};
use super::load::{self, LOAD_CPU};
use super::servers::{self, Server, ServerKind};

/// The upstream's files: URL path (without the slash), size in bytes, row label.
const FILES: [(&str, usize, &str); 2] = [("1k", 1024, "1 KiB"), ("64k", 65536, "64 KiB")];
/// `wrk` keep-alive connections (one thread).
const H1_CONNECTIONS: usize = 16;
/// `h2load` connections (one thread), and streams in flight on each.
const H2_CONNECTIONS: usize = 4;
const H2_STREAMS: usize = 8;
/// New connections per second in the TTFB cells: low, so a connection never waits behind another.
const TTFB_RATE: u32 = 40;
/// Sequential keep-alive requests that measure the upstream round trip.
const RTT_REQUESTS: usize = 200;
/// The TTFB target: a resumed connection's first byte within this factor of handshake + upstream RTT.
const TTFB_SLACK: f64 = 1.10;

const TTFB_FULL_ROW: &str = "TTFB p50 ms, new connection, full TLS 1.3, 1 KiB";
const TTFB_RESUMED_ROW: &str = "TTFB p50 ms, new connection, resumed TLS 1.3, 1 KiB";
const HANDSHAKE_RESUMED_ROW: &str = "handshake p50 ms, resumed TLS 1.3";
const TTFB_TARGET_ROW: &str = "TTFB target ms: 1.1 x (resumed handshake + upstream RTT)";

/// The keep-alive client of a cell.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// `wrk`, HTTP/1.1.
    H1,
    /// `h2load`, h2.
    H2,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::H1 => "h1 (wrk)",
            Client::H2 => "h2 (h2load)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Client::H1 => "h1",
            Client::H2 => "h2",
        }
    }
}

/// What a keep-alive client run counted.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counted {
    /// 2xx responses.
    ok: u64,
    /// Response bytes read (headers and bodies for wrk, bodies for h2load).
    bytes: u64,
    /// Seconds the client ran.
    seconds: f64,
}

/// Rows in print order, a value per server.
#[derive(Debug, Default)]
struct Table {
    rows: Vec<(String, BTreeMap<&'static str, f64>)>,
}

impl Table {
    fn set(&mut self, label: &str, column: &'static str, value: f64) {
        match self.rows.iter_mut().find(|(l, _)| l == label) {
            Some((_, values)) => {
                values.insert(column, value);
            }
            None => self
                .rows
                .push((label.to_owned(), BTreeMap::from([(column, value)]))),
        }
    }

    fn value(&self, label: &str, column: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|(l, _)| l == label)
            .and_then(|(_, v)| v.get(column).copied())
    }
}

fn cpu_row(client: Client, size: &str) -> String {
    format!("CPU us/request, keep-alive {}, {size}", client.name())
}

fn rate_row(client: Client, size: &str) -> String {
    format!("rate req/s, keep-alive {}, {size}", client.name())
}

/// Runs the benchmark; writes `http.json` and `http.txt` under `target/bench/`. Fails when a cell has no
/// number, a response was not 2xx, or a body was short.
pub fn run(ctx: &Ctx) -> Result<()> {
    let secs: u32 = if ctx.quick { 3 } else { 10 };
    let cert = certs::ensure(&ctx.out, KeyType::Ecdsa)?;
    let files: Vec<(&str, usize)> = FILES.iter().map(|(f, n, _)| (*f, *n)).collect();
    let upstream = servers::start_upstream(ctx, LOAD_CPU, &files)?;
    let rtt_ms = upstream_rtt_ms(upstream.port)?;
    let mut table = Table::default();
    let mut cells = serde_json::Map::new();

    for kind in &ctx.servers {
        let name = kind.name();
        let server = servers::start_http(ctx, *kind, &cert, upstream.port)?;
        preflight(&server)?;
        for client in [Client::H1, Client::H2] {
            for (file, size, label) in FILES {
                let before = server.cpu_time();
                let counted = match client {
                    Client::H1 => wrk(server.port, file, secs)?,
                    Client::H2 => h2load(server.port, file, secs)?,
                };
                let cpu = server.cpu_time().saturating_sub(before);
                check_bytes(kind, client, file, size, counted)?;
                let cpu_us = cpu.as_secs_f64() * 1e6 / counted.ok.max(1) as f64;
                table.set(&cpu_row(client, label), name, cpu_us);
                table.set(
                    &rate_row(client, label),
                    name,
                    counted.ok as f64 / counted.seconds,
                );
                cells.insert(
                    format!("{name}.{}.{file}", client.key()),
                    json!({ "ok": counted.ok, "bytes": counted.bytes, "seconds": counted.seconds,
                            "server_cpu_s": cpu.as_secs_f64(), "server_cpu_us_per_request": cpu_us }),
                );
            }
        }
        for (mix, row) in [("full13", TTFB_FULL_ROW), ("resume13", TTFB_RESUMED_ROW)] {
            let report = ttfb(ctx, &server, mix, secs)?;
            let p50 = |what: &str| {
                report["kinds"][mix][what]["p50"]
                    .as_f64()
                    .map(|us| us / 1e3)
            };
            if let Some(ms) = p50("first_byte_us") {
                table.set(row, name, ms);
            }
            if mix == "resume13"
                && let Some(hs) = p50("handshake_us")
            {
                table.set(HANDSHAKE_RESUMED_ROW, name, hs);
                table.set(TTFB_TARGET_ROW, name, TTFB_SLACK * (hs + rtt_ms));
            }
            cells.insert(
                format!("{name}.ttfb.{mix}"),
                json!({ "ok": report["ok"], "failed": report["failed"],
                        "resumed": report["kinds"][mix]["resumed"],
                        "first_byte_us": report["kinds"][mix]["first_byte_us"],
                        "handshake_us": report["kinds"][mix]["handshake_us"] }),
            );
        }
        drop(server);
    }
    drop(upstream);

    let verdicts = verdicts(&table);
    let text = render(&table, rtt_ms, &verdicts);
    println!("\n{text}");
    std::fs::write(ctx.out.join("http.txt"), &text)?;
    let json_path = ctx.out.join("http.json");
    let rows: Vec<_> = table
        .rows
        .iter()
        .map(|(label, values)| json!({ "cell": label, "values": values }))
        .collect();
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json!({
            "quick": ctx.quick,
            "seconds_per_cell": secs,
            "h1": { "client": "wrk", "threads": 1, "connections": H1_CONNECTIONS },
            "h2": { "client": "h2load", "threads": 1, "connections": H2_CONNECTIONS, "streams": H2_STREAMS },
            "ttfb": { "client": "portcullis-load --http /1k", "rate": TTFB_RATE },
            "upstream_rtt_ms_p50": rtt_ms,
            "rows": rows,
            "cells": cells,
            "targets": verdicts,
        }))?,
    )?;
    eprintln!("wrote {} and http.txt", json_path.display());
    let missing = missing_cells(&table, &ctx.servers);
    if !missing.is_empty() {
        bail!("no number in these cells: {}", missing.join(", "));
    }
    Ok(())
}

/// One GET per file over h1 and h2 with curl: status 200, the whole body, and the protocol asked for. Catches
/// a proxy that answers 502 quickly (a cheap request that must not count) before anything is measured.
fn preflight(server: &Server) -> Result<()> {
    for (file, size, _) in FILES {
        for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
            let url = format!("https://127.0.0.1:{}/{file}", server.port);
            let out = Command::new("curl")
                .args(["-sk", flag, "--max-time", "10", "-o", "/dev/null", "-w"])
                .arg("%{http_code} %{size_download} %{http_version}")
                .arg(&url)
                .output()
                .context("cannot start curl (`cargo xtask setup` installs it)")?;
            let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let want = format!("200 {size} {version}");
            if got != want {
                bail!(
                    "{}: curl {flag} {url} gave \"{got}\" (status, bytes, protocol), expected \"{want}\"; see the \
                     server's log under target/bench/{}-http/",
                    server.kind,
                    server.kind
                );
            }
        }
    }
    Ok(())
}

/// `wrk` on CPU 1 against `/file` for `secs`; fails on a non-2xx response or a socket error.
fn wrk(port: u16, file: &str, secs: u32) -> Result<Counted> {
    let url = format!("https://127.0.0.1:{port}/{file}");
    let out = client_output(
        "wrk",
        &[
            "-t1".into(),
            format!("-c{H1_CONNECTIONS}"),
            format!("-d{secs}s"),
            "--timeout".into(),
            "10s".into(),
            url,
        ],
    )?;
    parse_wrk(&out).with_context(|| format!("wrk printed:\n{out}"))
}

/// `h2load` on CPU 1 against `/file` for `secs`; fails when h2 was not negotiated or a response was not 2xx.
fn h2load(port: u16, file: &str, secs: u32) -> Result<Counted> {
    let url = format!("https://127.0.0.1:{port}/{file}");
    let out = client_output(
        "h2load",
        &[
            "-t1".into(),
            format!("-c{H2_CONNECTIONS}"),
            format!("-m{H2_STREAMS}"),
            "-D".into(),
            secs.to_string(),
            url,
        ],
    )?;
    parse_h2load(&out, secs).with_context(|| format!("h2load printed:\n{out}"))
}

/// Runs `program args` pinned to CPU 1 and returns its stdout; fails when it exits non-zero.
fn client_output(program: &str, args: &[String]) -> Result<String> {
    eprintln!("+ taskset -c {LOAD_CPU} {program} {}", args.join(" "));
    let out = output_ok(
        Command::new("taskset")
            .args(["-c", LOAD_CPU, program])
            .args(args),
        &format!("{program} (`cargo xtask setup --bench` installs it)"),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// From wrk's summary: "  123 requests in 3.00s, 1.23MB read", and no "Non-2xx or 3xx responses" nor
/// "Socket errors" line (wrk prints them only when non-zero).
fn parse_wrk(out: &str) -> Result<Counted> {
    if let Some(line) = out
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        bail!("wrk saw failures: {}", line.trim());
    }
    let line = out
        .lines()
        .find(|l| l.contains(" requests in ") && l.trim_end().ends_with(" read"))
        .context("no \"N requests in Ts, B read\" line")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let [requests, "requests", "in", time, read, "read"] = words[..] else {
        bail!("unexpected wrk summary {line:?}");
    };
    let seconds = parse_wrk_duration(time.trim_end_matches(','))
        .with_context(|| format!("wrk duration in {line:?}"))?;
    let bytes = parse_size(read).with_context(|| format!("wrk bytes in {line:?}"))?;
    Ok(Counted {
        ok: requests.parse().context("wrk request count")?,
        bytes,
        seconds,
    })
}

/// wrk's durations: "3.00s", "1.00m", "500.00ms", "10.00us".
fn parse_wrk_duration(s: &str) -> Option<f64> {
    for (suffix, scale) in [
        ("us", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ] {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| n * scale);
        }
    }
    None
}

/// wrk's sizes, binary units: "512.00B", "1.23KB", "4.56MB", "7.89GB".
fn parse_size(s: &str) -> Option<u64> {
    for (suffix, scale) in [
        ("TB", 1u64 << 40),
        ("GB", 1 << 30),
        ("MB", 1 << 20),
        ("KB", 1 << 10),
        ("B", 1),
    ] {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| (n * scale as f64) as u64);
        }
    }
    None
}

/// From h2load's summary: "Application protocol: h2", "status codes: N 2xx, N 3xx, N 4xx, N 5xx", and
/// "traffic: ... , 30.00MB (31457280) data".
fn parse_h2load(out: &str, secs: u32) -> Result<Counted> {
    if !out.lines().any(|l| l.trim() == "Application protocol: h2") {
        bail!("h2 was not negotiated (no \"Application protocol: h2\")");
    }
    let codes = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("status codes:"))
        .context("no \"status codes:\" line")?;
    let mut ok = None;
    for part in codes.split(',') {
        let mut w = part.split_whitespace();
        let (Some(n), Some(class)) = (w.next(), w.next()) else {
            bail!("unexpected status codes {codes:?}");
        };
        let n: u64 = n
            .parse()
            .with_context(|| format!("status codes {codes:?}"))?;
        match class {
            "2xx" => ok = Some(n),
            _ if n > 0 => bail!("h2load got non-2xx responses: {}", codes.trim()),
            _ => {}
        }
    }
    let traffic = out
        .lines()
        .find(|l| l.trim_start().starts_with("traffic:"))
        .context("no \"traffic:\" line")?;
    let data = traffic
        .rsplit(',')
        .next()
        .and_then(|d| d.split_once('(')?.1.split_once(')'))
        .and_then(|(n, rest)| (rest.trim() == "data").then(|| n.parse::<u64>().ok())?)
        .with_context(|| format!("no data bytes in {traffic:?}"))?;
    Ok(Counted {
        ok: ok.context("no 2xx count")?,
        bytes: data,
        seconds: f64::from(secs),
    })
}

/// Every counted response carried at least the file's size (wrk counts headers too, h2load only data).
fn check_bytes(
    kind: &ServerKind,
    client: Client,
    file: &str,
    size: usize,
    counted: Counted,
) -> Result<()> {
    if counted.ok == 0 {
        bail!("{kind}: {} got no response for /{file}", client.name());
    }
    // wrk's sizes are rounded to two decimals of their unit: allow 1%.
    let per_response = counted.bytes as f64 / counted.ok as f64;
    if per_response < size as f64 * 0.99 {
        bail!(
            "{kind}: {} read {per_response:.0} bytes per response for /{file}, expected at least {size}",
            client.name()
        );
    }
    Ok(())
}

/// New connection per request: `portcullis-load --mix MIX --http /1k` at [`TTFB_RATE`] for `secs`; fails when
/// a connection failed or a `resume13` run resumed nothing.
fn ttfb(ctx: &Ctx, server: &Server, mix: &str, secs: u32) -> Result<Value> {
    let json_path = ctx
        .out
        .join(format!("http-ttfb-{}-{mix}.json", server.kind.name()));
    let report = load::run(
        ctx,
        server.port,
        &json_path,
        &[
            "--mix".into(),
            mix.into(),
            "--http".into(),
            "/1k".into(),
            "--rate".into(),
            TTFB_RATE.to_string(),
            "--duration".into(),
            secs.to_string(),
            "--timeout".into(),
            "10".into(),
        ],
    )?;
    let failed = report["failed"].as_u64().unwrap_or(0);
    if failed > 0 || load::ok(&report) == 0 {
        bail!(
            "{}: {failed} of the new connections with a request failed; see {}",
            server.kind,
            json_path.display()
        );
    }
    if mix == "resume13" && load::resumed(&report) == 0 {
        bail!(
            "{}: no connection resumed in the resume13 run; see {}",
            server.kind,
            json_path.display()
        );
    }
    Ok(report)
}

/// The upstream's round trip: median time from writing a keep-alive `GET /1k` on one open connection to the
/// response's first byte, over [`RTT_REQUESTS`] requests.
fn upstream_rtt_ms(port: u16) -> Result<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to the upstream on 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    let mut samples = Vec::with_capacity(RTT_REQUESTS);
    let mut buf = vec![0u8; 8192];
    for _ in 0..RTT_REQUESTS {
        let start = Instant::now();
        s.write_all(b"GET /1k HTTP/1.1\r\nHost: upstream\r\n\r\n")?;
        let mut got = Vec::new();
        let mut first = None;
        // The whole response: head, then the 1 KiB body Content-Length announces.
        loop {
            let n = s
                .read(&mut buf)
                .context("reading the upstream's response")?;
            if n == 0 {
                bail!("the upstream closed a keep-alive connection");
            }
            first.get_or_insert_with(|| start.elapsed());
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
                && got.len() >= end + 4 + FILES[0].1
            {
                break;
            }
            if got.len() > 16 * 1024 {
                bail!("the upstream's answer to GET /1k has no end within 16 KiB");
            }
        }
        if !got.starts_with(b"HTTP/1.1 200") {
            bail!(
                "the upstream answered GET /1k with {:?}",
                String::from_utf8_lossy(&got[..got.len().min(40)])
            );
        }
        samples.extend(first);
    }
    samples.sort();
    Ok(samples[samples.len() / 2].as_secs_f64() * 1e3)
}

/// The two targets of issue 18: CPU per request at or below nginx's in every cell, and the resumed TTFB within
/// [`TTFB_SLACK`] of handshake + upstream RTT. `null` when a needed column was not measured.
fn verdicts(table: &Table) -> Value {
    let mut misses = Vec::new();
    let mut measured = false;
    for (label, values) in &table.rows {
        if !label.starts_with("CPU") {
            continue;
        }
        if let (Some(p), Some(n)) = (values.get("portcullis"), values.get("nginx")) {
            measured = true;
            if p > n {
                misses.push(json!({ "cell": label, "over_nginx_pct": (p / n - 1.0) * 100.0 }));
            }
        }
    }
    let ttfb = match (
        table.value(TTFB_RESUMED_ROW, "portcullis"),
        table.value(TTFB_TARGET_ROW, "portcullis"),
    ) {
        (Some(got), Some(target)) => {
            json!({ "met": got <= target, "ttfb_ms": got, "target_ms": target })
        }
        _ => Value::Null,
    };
    json!({
        "cpu_at_or_below_nginx": if measured { json!({ "met": misses.is_empty(), "misses": misses }) } else { Value::Null },
        "resumed_ttfb": ttfb,
    })
}

fn render(table: &Table, rtt_ms: f64, verdicts: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<56} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "cell", "portcullis", "nginx", "haproxy", "p/nginx", "p/haproxy"
    );
    for (label, values) in &table.rows {
        let cell = |c: &str| values.get(c).map_or("-".to_owned(), |v| format!("{v:.1}"));
        let ratio = |c: &str| match (values.get("portcullis"), values.get(c)) {
            (Some(p), Some(o)) if *o > 0.0 => format!("{:.2}", p / o),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{label:<56} {:>10} {:>10} {:>10} {:>9} {:>9}",
            cell("portcullis"),
            cell("nginx"),
            cell("haproxy"),
            ratio("nginx"),
            ratio("haproxy"),
        );
    }
    let _ = writeln!(
        out,
        "CPU = utime+stime of the server's processes (/proc/PID/stat) / 2xx responses; server on CPU 0, client \
         and upstream (nginx, static files) on CPU 1; h1: wrk -t1 -c{H1_CONNECTIONS}, h2: h2load -t1 \
         -c{H2_CONNECTIONS} -m{H2_STREAMS}; TTFB: portcullis-load --http /1k, {TTFB_RATE} new connections/s; \
         upstream RTT p50 {rtt_ms:.3} ms. Ratios below 1 favour portcullis."
    );
    match &verdicts["cpu_at_or_below_nginx"] {
        Value::Null => {}
        v if v["met"] == true => {
            let _ = writeln!(
                out,
                "target met: portcullis CPU/request <= nginx in every cell"
            );
        }
        v => {
            let misses: Vec<String> = v["misses"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    format!(
                        "{} (+{:.0}%)",
                        m["cell"].as_str().unwrap_or("?"),
                        m["over_nginx_pct"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "target MISSED: portcullis CPU/request above nginx in {}",
                misses.join("; ")
            );
        }
    }
    let t = &verdicts["resumed_ttfb"];
    if let (Some(got), Some(target)) = (t["ttfb_ms"].as_f64(), t["target_ms"].as_f64()) {
        let _ = writeln!(
            out,
            "TTFB target {}: portcullis resumed first byte {got:.2} ms vs 1.1 x (handshake + upstream RTT) = \
             {target:.2} ms",
            if got <= target { "met" } else { "MISSED" }
        );
    }
    out
}

/// The cells without a number: every measured server in every row.
fn missing_cells(table: &Table, servers: &[ServerKind]) -> Vec<String> {
    let mut missing = Vec::new();
    for (label, values) in &table.rows {
        for c in servers.iter().map(|s| s.name()) {
            if !values.get(c).is_some_and(|v| v.is_finite() && *v > 0.0) {
                missing.push(format!("{label} / {c}"));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ https://127.0.0.1:4433/1k
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  200.00us   5.00ms   90.00%
    Req/Sec    12.00k     1.00k   13.00k    70.00%
  36000 requests in 3.00s, 44.50MB read
Requests/sec:  12000.00
Transfer/sec:     14.83MB
";

    const H2LOAD: &str = "starting benchmark...
Application protocol: h2

finished in 3.00s, 10000.00 req/s, 10.50MB/s
requests: 30000 total, 30032 started, 30000 done, 30000 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 30000 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 31.50MB (33030000) total, 400.00KB (409600) headers (space savings 90.00%), 29.30MB (30720000) data
";

    #[test]
    fn wrk_summary_parses_and_failures_fail() {
        let c = parse_wrk(WRK).expect("the sample summary parses");
        assert_eq!(c.ok, 36000);
        assert!((c.seconds - 3.0).abs() < 1e-9);
        assert_eq!(c.bytes, (44.5 * 1048576.0) as u64);
        let bad = WRK.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 7\nRequests/sec",
        );
        assert!(
            parse_wrk(&bad)
                .expect_err("a failure line fails the cell")
                .to_string()
                .contains("Non-2xx")
        );
        let errors = WRK.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&errors).is_err());
        assert_eq!(parse_wrk_duration("500.00ms"), Some(0.5));
    }

    #[test]
    fn h2load_summary_parses_and_non_2xx_or_h1_fail() {
        let c = parse_h2load(H2LOAD, 3).expect("the sample summary parses");
        assert_eq!((c.ok, c.bytes), (30000, 30720000));
        let bad = H2LOAD.replace("0 5xx", "12 5xx");
        assert!(
            parse_h2load(&bad, 3)
                .expect_err("a failure line fails the cell")
                .to_string()
                .contains("5xx")
        );
        let h1 = H2LOAD.replace("Application protocol: h2", "Application protocol: http/1.1");
        assert!(parse_h2load(&h1, 3).is_err());
    }

    #[test]
    fn short_bodies_fail_the_cell() {
        let c = Counted {
            ok: 100,
            bytes: 100 * 200,
            seconds: 1.0,
        };
        assert!(check_bytes(&ServerKind::Nginx, Client::H1, "1k", 1024, c).is_err());
        let full = Counted {
            bytes: 100 * 1300,
            ..c
        };
        assert!(check_bytes(&ServerKind::Nginx, Client::H1, "1k", 1024, full).is_ok());
    }

    #[test]
    fn table_ratios_targets_and_missing_cells() {
        let mut t = Table::default();
        t.set(&cpu_row(Client::H1, "1 KiB"), "portcullis", 30.0);
        t.set(&cpu_row(Client::H1, "1 KiB"), "nginx", 20.0);
        t.set(&cpu_row(Client::H1, "1 KiB"), "haproxy", 60.0);
        t.set(TTFB_RESUMED_ROW, "portcullis", 1.0);
        t.set(TTFB_TARGET_ROW, "portcullis", 1.2);
        let v = verdicts(&t);
        assert_eq!(v["cpu_at_or_below_nginx"]["met"], false);
        assert_eq!(v["resumed_ttfb"]["met"], true);
        let text = render(&t, 0.05, &v);
        assert!(
            text.contains("1.50") && text.contains("0.50") && text.contains("+50%"),
            "{text}"
        );
        let all = [
            ServerKind::Portcullis,
            ServerKind::Nginx,
            ServerKind::Haproxy,
        ];
        assert_eq!(
            missing_cells(&t, &all),
            vec![
                format!("{TTFB_RESUMED_ROW} / nginx"),
                format!("{TTFB_RESUMED_ROW} / haproxy"),
                format!("{TTFB_TARGET_ROW} / nginx"),
                format!("{TTFB_TARGET_ROW} / haproxy"),
            ]
        );
        t.set(&cpu_row(Client::H1, "1 KiB"), "portcullis", 15.0);
        assert_eq!(verdicts(&t)["cpu_at_or_below_nginx"]["met"], true);
    }
}
