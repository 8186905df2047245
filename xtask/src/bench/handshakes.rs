//! `cargo xtask bench handshakes`: per server, CPU per handshake of each kind (closed loop, saturating), the
//! saturated rate, and handshake latency at 50% and 90% of that rate (open loop, Poisson); the rustls in-memory
//! "limit"; a table with portcullis/nginx, portcullis/HAProxy and portcullis/limit; JSON and SVG.
//!
//! "Capacity" for the latency cells is the rate the saturating run reached with this client on CPU 1: the
//! server's capacity when the server is the bottleneck, the client's when it is not (printed with the rate, so
//! a reader can tell which).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Result, bail};
use serde_json::json;

use super::certs::{self, Cert, KeyType};
use super::servers::{self, Server, ServerKind};
use super::{Ctx, load, svg};

/// Connections in flight when saturating a server.
const SATURATING_CONCURRENCY: usize = 16;

/// The resumed and full kinds measured with the ECDSA certificate.
const KINDS: [(&str, &str); 4] = [
    ("full13", "CPU us/handshake, full TLS 1.3, ECDSA P-256"),
    ("resume13", "CPU us/handshake, resumed TLS 1.3 ticket"),
    (
        "resume12-ticket",
        "CPU us/handshake, resumed TLS 1.2 ticket",
    ),
    (
        "resume12-id",
        "CPU us/handshake, resumed TLS 1.2 session ID",
    ),
];

const RSA_ROW: &str = "CPU us/handshake, full TLS 1.3, RSA-2048";
const RATE_ROW: &str = "saturated rate /s, full TLS 1.3 ECDSA";
const S_TIME_CPU_ROW: &str = "openssl s_time: CPU us/handshake, full TLS 1.3";
const S_TIME_RATE_ROW: &str = "openssl s_time: rate /s, full TLS 1.3";

/// One row of the table: a value per column (server or `limit`).
#[derive(Debug, Default)]
struct Row {
    label: String,
    values: BTreeMap<&'static str, f64>,
}

/// The table, rows in print order.
#[derive(Debug, Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn set(&mut self, label: &str, column: &'static str, value: f64) {
        let row = match self.rows.iter().position(|r| r.label == label) {
            Some(i) => &mut self.rows[i],
            None => {
                self.rows.push(Row {
                    label: label.to_owned(),
                    values: BTreeMap::new(),
                });
                let last = self.rows.len() - 1;
                &mut self.rows[last]
            }
        };
        row.values.insert(column, value);
    }

    fn value(&self, label: &str, column: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.label == label)
            .and_then(|r| r.values.get(column).copied())
    }
}

const COLUMNS: [&str; 4] = ["portcullis", "nginx", "haproxy", "limit"];

/// Runs the benchmark and writes `handshakes.json` and `handshakes.svg` under `target/bench/`.
pub fn run(ctx: &Ctx) -> Result<()> {
    let secs: f64 = if ctx.quick { 2.0 } else { 10.0 };
    let ecdsa = certs::ensure(&ctx.out, KeyType::Ecdsa)?;
    let rsa = certs::ensure(&ctx.out, KeyType::Rsa)?;
    let mut table = Table::default();
    for (_, label) in KINDS {
        table.rows.push(Row {
            label: label.to_owned(),
            values: BTreeMap::new(),
        });
    }
    let mut raw = serde_json::Map::new();

    for server in &ctx.servers {
        let name = server.name();
        let s = servers::start(ctx, *server, &ecdsa)?;
        for (kind, label) in KINDS {
            let cell = saturate(ctx, &s, &ecdsa, kind, secs)?;
            table.set(label, name, cell.cpu_us);
            if kind == "full13" {
                table.set(RATE_ROW, name, cell.rate);
            }
            raw.insert(format!("{name}.{kind}.ecdsa"), cell.json());
        }
        // The cross-check with an independent client: OpenSSL's s_time, full handshakes, no request.
        let before = s.cpu_time();
        let started = std::time::Instant::now();
        let n = load::s_time(s.port, secs as u32)?;
        let wall = started.elapsed().as_secs_f64();
        let cpu_us = s.cpu_time().saturating_sub(before).as_secs_f64() * 1e6 / n.max(1) as f64;
        table.set(S_TIME_CPU_ROW, name, cpu_us);
        table.set(S_TIME_RATE_ROW, name, n as f64 / wall);
        raw.insert(
            format!("{name}.s_time.ecdsa"),
            json!({ "connections": n, "wall_s": wall, "server_cpu_us_per_handshake": cpu_us }),
        );
        let capacity = table.value(RATE_ROW, name).unwrap_or(0.0);
        for fraction in [0.5, 0.9] {
            let rate = (capacity * fraction).max(1.0);
            let json_path = ctx.out.join(format!(
                "handshakes-{name}-{}pct.json",
                (fraction * 100.0) as u32
            ));
            let report = load::run(
                ctx,
                s.port,
                &json_path,
                &[
                    "--mix".into(),
                    "full13".into(),
                    "--rate".into(),
                    format!("{rate:.0}"),
                    "--arrival".into(),
                    "poisson".into(),
                    "--duration".into(),
                    secs.to_string(),
                    "--timeout".into(),
                    "10".into(),
                ],
            )?;
            let pct = (fraction * 100.0) as u32;
            for p in ["p50", "p99"] {
                if let Some(ms) = load::handshake_ms(&report, "full13", p) {
                    table.set(
                        &format!("{p} ms at {pct}% of saturated rate, full TLS 1.3"),
                        name,
                        ms,
                    );
                }
            }
            raw.insert(
                format!("{name}.latency.{pct}pct"),
                json!({ "offered_rate": rate, "achieved_rate": report["rate_ok"], "failed": report["failed"],
                        "handshake_us": report["kinds"]["full13"]["handshake_us"] }),
            );
        }
        drop(s);

        let s = servers::start(ctx, *server, &rsa)?;
        let cell = saturate(ctx, &s, &rsa, "full13", secs)?;
        table.set(RSA_ROW, name, cell.cpu_us);
        raw.insert(format!("{name}.full13.rsa2048"), cell.json());
        drop(s);
    }

    let n = if ctx.quick { 300 } else { 3000 };
    for (kind, label) in KINDS {
        let us = load::limit(ctx, &ecdsa.cert, &ecdsa.key, kind, n)?;
        table.set(label, "limit", us);
        if kind == "full13" {
            table.set(RATE_ROW, "limit", 1e6 / us);
        }
    }
    table.set(
        RSA_ROW,
        "limit",
        load::limit(ctx, &rsa.cert, &rsa.key, "full13", n / 5)?,
    );

    let text = render(&table);
    println!("\n{text}");
    let json_path = ctx.out.join("handshakes.json");
    let rows: Vec<_> = table
        .rows
        .iter()
        .map(|r| json!({ "cell": r.label, "values": r.values }))
        .collect();
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json!({
            "quick": ctx.quick,
            "seconds_per_cell": secs,
            "saturating_concurrency": SATURATING_CONCURRENCY,
            "rows": rows,
            "cells": raw,
        }))?,
    )?;
    let svg_path = ctx.out.join("handshakes.svg");
    let bars: Vec<(String, Vec<(&str, f64)>)> = table
        .rows
        .iter()
        .filter(|r| r.label.starts_with("CPU"))
        .map(|r| {
            let values = COLUMNS
                .iter()
                .filter_map(|c| r.values.get(c).map(|v| (*c, *v)))
                .collect();
            (r.label.clone(), values)
        })
        .collect();
    std::fs::write(
        &svg_path,
        svg::bars("Server CPU per handshake (µs, lower is better)", &bars),
    )?;
    std::fs::write(ctx.out.join("handshakes.txt"), &text)?;
    eprintln!(
        "wrote {}, {} and handshakes.txt",
        json_path.display(),
        svg_path.display()
    );
    let missing = missing_cells(&table, &ctx.servers);
    if !missing.is_empty() {
        bail!("no number in these cells: {}", missing.join(", "));
    }
    Ok(())
}

/// The cells without a number: every server in every row, and `limit` in the CPU and rate rows. This is what
/// `bench handshakes --quick` checks when CI runs it.
fn missing_cells(table: &Table, servers: &[ServerKind]) -> Vec<String> {
    let mut missing = Vec::new();
    for row in &table.rows {
        let mut columns: Vec<&str> = servers.iter().map(|s| s.name()).collect();
        if !row.label.starts_with('p') && !row.label.starts_with("openssl") {
            columns.push("limit");
        }
        for c in columns {
            if !row.values.get(c).is_some_and(|v| v.is_finite() && *v > 0.0) {
                missing.push(format!("{} / {c}", row.label));
            }
        }
    }
    missing
}

/// What one saturating run measured.
struct Saturated {
    cpu_us: f64,
    rate: f64,
    ok: u64,
    resumed: u64,
    failed: u64,
}

impl Saturated {
    fn json(&self) -> serde_json::Value {
        json!({ "server_cpu_us_per_handshake": self.cpu_us, "rate": self.rate, "ok": self.ok,
                "resumed": self.resumed, "failed": self.failed })
    }
}

/// Closed loop against `server` for `secs` with `kind`; server CPU over the run divided by completions.
fn saturate(ctx: &Ctx, server: &Server, cert: &Cert, kind: &str, secs: f64) -> Result<Saturated> {
    let json_path = ctx.out.join(format!(
        "handshakes-{}-{kind}-{}.json",
        server.kind.name(),
        cert.key_type.name()
    ));
    let before = server.cpu_time();
    let report = load::run(
        ctx,
        server.port,
        &json_path,
        &[
            "--mix".into(),
            kind.into(),
            "--concurrency".into(),
            SATURATING_CONCURRENCY.to_string(),
            "--duration".into(),
            secs.to_string(),
        ],
    )?;
    let cpu = server.cpu_time().saturating_sub(before);
    let ok = load::ok(&report);
    Ok(Saturated {
        cpu_us: cpu.as_secs_f64() * 1e6 / ok.max(1) as f64,
        rate: report["rate_ok"].as_f64().unwrap_or(0.0),
        ok,
        resumed: load::resumed(&report),
        failed: report["failed"].as_u64().unwrap_or(0),
    })
}

fn render(table: &Table) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<52} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "cell", "portcullis", "nginx", "haproxy", "limit", "p/nginx", "p/haproxy", "p/limit"
    );
    for row in &table.rows {
        let cell = |c: &str| {
            row.values
                .get(c)
                .map_or("-".to_owned(), |v| format!("{v:.1}"))
        };
        let ratio = |c: &str| match (row.values.get("portcullis"), row.values.get(c)) {
            (Some(p), Some(o)) if *o > 0.0 => format!("{:.2}", p / o),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<52} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}",
            row.label,
            cell("portcullis"),
            cell("nginx"),
            cell("haproxy"),
            cell("limit"),
            ratio("nginx"),
            ratio("haproxy"),
            ratio("limit"),
        );
    }
    let _ = writeln!(
        out,
        "CPU = utime+stime of the server's processes (/proc/PID/stat) / handshakes completed; server on CPU 0, \
         client on CPU 1; limit = rustls in memory, server side only. Ratios below 1 favour portcullis for CPU \
         and latency rows, above 1 for the rate row."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_prints_every_column_and_the_three_ratios() {
        let mut t = Table::default();
        t.set("cpu", "portcullis", 100.0);
        t.set("cpu", "nginx", 400.0);
        t.set("cpu", "haproxy", 200.0);
        t.set("cpu", "limit", 50.0);
        let text = render(&t);
        assert!(
            text.contains("0.25") && text.contains("0.50") && text.contains("2.00"),
            "{text}"
        );
        let servers = [
            ServerKind::Portcullis,
            ServerKind::Nginx,
            ServerKind::Haproxy,
        ];
        assert!(missing_cells(&t, &servers).is_empty());
        t.set("p99 ms at 50%", "nginx", 3.0);
        assert_eq!(
            missing_cells(&t, &servers),
            vec!["p99 ms at 50% / portcullis", "p99 ms at 50% / haproxy"]
        );
    }
}
