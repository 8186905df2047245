//! `cargo xtask bench flood` (root): legitimate handshakes kept during floods, per server, with and without the
//! XDP guard, beside nginx and HAProxy (kernel SYN cookies on, defaults otherwise).
//!
//! Topology ([`topology`]): the server in one namespace, the legitimate client in a second, the flood senders in
//! a third, each joined to the server by its own veth with the guard attached native on both server ends. The
//! load generator (`portcullis-load`, open loop, half full TLS 1.3 handshakes and half resumptions, ECDSA P-256,
//! from 64 addresses) offers 50% of the capacity a short closed-loop probe measured against the same server in
//! the same run, phase by phase (each after a 1 s unmeasured warm-up of the clients at the same rate, [`WARMUP`]; the
//! flood starts with the measured phase): no flood, (a) spoofed-source SYNs, (b) junk ClientHellos after real TCP
//! handshakes from 4,096 sources, (c) valid ClientHellos from 4 sources that reset right after, (d) all three
//! ([`sender`]).
//!
//! CPUs: the server is pinned to CPU 0, the load generator and the flood senders to CPU 1 (the senders at nice
//! 19, so they take what the client leaves: the flood rate is what this host spares, printed per phase). The
//! server's veth ends steer received packets to CPU 0 (RPS), so the kernel's TCP work for the flood (SYN
//! cookies, accepts, resets) is charged to the server's CPU as a NIC queue's would be. On veth the XDP program
//! runs in the NAPI poll of the CPU that sent the frame, i.e. CPU 1: the guard's own cost shows in CPU 1's
//! softirq, not CPU 0's. CPU shares come from `/proc/stat` per CPU, which counts every process of the host (six
//! other engineers' builds included): they say where the time went, not what the server alone used.
//!
//! Per phase and server: legitimate success (completed / offered), handshake p99 from intended start against
//! the no-flood phase, CPU 0 user/system/softirq, CPU 1 softirq, the flood's achieved rate, and where flood
//! packets ended: XDP verdicts and userspace refusals from portcullis' `/metrics`, SYN cookies and listen-queue
//! drops from `nstat` in the server namespace. Target, printed as met or not: portcullis with the guard keeps at
//! least 99% of legitimate handshakes with p99 <= 2x no-flood in every phase. Writes `target/bench/flood.json`
//! and `flood.txt` (table and chart). `PORTCULLIS_BENCH_FLOOD_ONLY` (comma-separated row labels) runs a subset.

mod counters;
mod sender;
mod topology;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::Ctx;
use super::certs::{self, Cert, KeyType};
use super::load::{self, LOAD_CPU};
use super::servers::{self, SERVER_CPU, Server, ServerKind};
use sender::Mix;
use topology::{SERVER_FOR_CLIENT, SERVER_FOR_FLOOD, Topology};

/// The handshake mix of the legitimate clients: half full TLS 1.3 handshakes, half resumptions.
const MIX: &str = "full13:1,resume13:1";
/// Connections in flight in the capacity probe: enough that a server's close (nginx and HAProxy close after
/// the client's close_notify, a round trip later) does not bound the rate instead of its CPU.
const PROBE_CONCURRENCY: usize = 32;
/// Share of the measured capacity the legitimate clients offer.
const LOAD_SHARE: f64 = 0.5;
/// Legitimate clients give up on a handshake after this many seconds.
const CLIENT_TIMEOUT_S: u64 = 3;
/// The legitimate clients run this long at the phase's rate before the measured phase, unmeasured: a new
/// `portcullis-load` starts with no tickets (its first resumptions are full handshakes, the load's heavier share at
/// once), no neighbour entries and cold caches, which put the first second's p99 at 4-5x the rest in every phase,
/// the no-flood one included (branch flood5: over 58 phases, 43 ms against 10.7 ms for the median later second).
/// The floods start when the measured phase does, so their onset (the guard's budgets still full) is measured.
const WARMUP: Duration = Duration::from_secs(1);
/// Pause after each phase, so the next one does not start with the last one's half-open connections.
const SETTLE: Duration = Duration::from_secs(1);
/// Targets for portcullis with the guard, in every phase.
const TARGET_SUCCESS: f64 = 0.99;
const TARGET_P99_RATIO: f64 = 2.0;

/// The guard's per-source budgets: SYNs and ClientHellos (in full handshakes) per second per /32, with their
/// bursts. A legitimate source here offers well under 50/s (the load spread over 64 addresses); a valid
/// ClientHello flood from 4 sources offers thousands per second each.
const SYN_RATE: u32 = 400;
const SYN_BURST: u32 = 200;
const HELLO_RATE: u32 = 100;
const HELLO_BURST: u32 = 50;
/// The guard's flood defences (issue 21): SYNs per second per CPU from sources it does not know (no ClientHello
/// passed), with its burst, far below what one CPU's kernel answers with cookies without filling its backlog; and
/// the SYN penalty of a source after a malformed ClientHello, in milliseconds.
const FLOOD_SYN_RATE: u32 = 5000;
const FLOOD_SYN_BURST: u32 = 1000;
const MALFORMED_PENALTY_MS: u32 = 5000;
/// Environment variable naming the contenders to run (comma-separated labels, e.g.
/// `portcullis-guard-noadm,portcullis-guard`); unset: all of `--servers`.
const ONLY_ENV: &str = "PORTCULLIS_BENCH_FLOOD_ONLY";

/// The phases, in order.
const PHASES: &[(&str, Mix)] = &[
    (
        "none",
        Mix {
            syn: false,
            junk: false,
            valid: false,
        },
    ),
    (
        "a: spoofed SYN",
        Mix {
            syn: true,
            junk: false,
            valid: false,
        },
    ),
    (
        "b: junk hello",
        Mix {
            syn: false,
            junk: true,
            valid: false,
        },
    ),
    (
        "c: valid hello",
        Mix {
            syn: false,
            junk: false,
            valid: true,
        },
    ),
    (
        "d: all three",
        Mix {
            syn: true,
            junk: true,
            valid: true,
        },
    ),
];

/// One server in one configuration.
struct Contender {
    server: ServerKind,
    /// Row label and directory under `target/bench/`.
    label: &'static str,
    /// portcullis: the guard attached on both server ends.
    guard: bool,
    /// portcullis: admission control on (its default) or off.
    admission: bool,
}

/// Lengths of one run.
struct Plan {
    capacity_s: u64,
    phase_s: u64,
}

/// Runs the bench; fails when a cell produced no figure or the guard did not drop the junk it exists for.
pub fn run(ctx: &Ctx) -> Result<()> {
    if !crate::env::is_root() {
        bail!("bench flood needs root (network namespaces, XDP, AF_PACKET); run it with sudo");
    }
    let plan = if ctx.quick {
        Plan {
            capacity_s: 2,
            phase_s: 4,
        }
    } else {
        Plan {
            capacity_s: 5,
            phase_s: 20,
        }
    };
    let cert = certs::ensure(&ctx.out, KeyType::Ecdsa)?;
    let server_cpu: usize = SERVER_CPU.parse().context("SERVER_CPU")?;
    let topo = Topology::new(server_cpu).context("setting up the bench flood namespaces")?;
    remove_stale_pins()?;
    let pin_dir = format!("{PIN_PREFIX}{}", std::process::id());
    let results = in_netns(&topo.server, || {
        let mut rows = Vec::new();
        for c in contenders(ctx) {
            super::storm::remove_pins(&pin_dir)?;
            let result = measure_server(ctx, &topo, &cert, &c, &plan, &pin_dir);
            super::storm::remove_pins(&pin_dir)?;
            rows.push(result.with_context(|| format!("bench flood against {}", c.label))?);
        }
        Ok(rows)
    })?;
    report(ctx, &topo, &plan, &results)
}

/// Where portcullis with the guard pins its maps, this process's PID appended. The bench removes the pins before
/// and after each contender, so every run starts from empty budgets and leaves nothing pinned.
const PIN_PREFIX: &str = "/sys/fs/bpf/portcullis-bench-flood-";

/// Removes the pin directories of earlier runs killed before their cleanup (their PID is gone).
fn remove_stale_pins() -> Result<()> {
    let Ok(dir) = std::fs::read_dir("/sys/fs/bpf") else {
        return Ok(());
    };
    for entry in dir.flatten() {
        let path = entry.path().display().to_string();
        let Some(pid) = path.strip_prefix(PIN_PREFIX) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            super::storm::remove_pins(&path)?;
        }
    }
    Ok(())
}

/// The contenders of `--servers`, only those named in [`ONLY_ENV`] when it is set.
fn contenders(ctx: &Ctx) -> Vec<Contender> {
    let only = std::env::var(ONLY_ENV).ok();
    let mut out = all_contenders(ctx);
    if let Some(only) = only {
        out.retain(|c| only.split(',').any(|label| label.trim() == c.label));
    }
    out
}

fn all_contenders(ctx: &Ctx) -> Vec<Contender> {
    let mut out = Vec::new();
    for server in &ctx.servers {
        match server {
            ServerKind::Portcullis => {
                out.push(Contender {
                    server: *server,
                    label: "portcullis-guard",
                    guard: true,
                    admission: true,
                });
                // The guard alone: what admission control's shedding adds to (or takes from) the guard's figures.
                out.push(Contender {
                    server: *server,
                    label: "portcullis-guard-noadm",
                    guard: true,
                    admission: false,
                });
                out.push(Contender {
                    server: *server,
                    label: "portcullis-noguard",
                    guard: false,
                    admission: true,
                });
            }
            other => out.push(Contender {
                server: *other,
                label: other.name(),
                guard: false,
                admission: true,
            }),
        }
    }
    out
}

/// Runs `f` on a thread that entered namespace `ns` (processes it starts are born there), and returns its result.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file =
        File::open(Topology::path(ns)).with_context(|| format!("cannot open namespace {ns}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: a valid descriptor; setns(2) changes this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .context("setns into the server namespace");
                }
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Starts one contender, probes its capacity, runs the phases; its JSON row.
fn measure_server(
    ctx: &Ctx,
    topo: &Topology,
    cert: &Cert,
    c: &Contender,
    plan: &Plan,
    pin_dir: &str,
) -> Result<Value> {
    let config = (c.server == ServerKind::Portcullis).then(|| portcullis_config(c, topo, pin_dir));
    let config = match config {
        Some(text) => {
            let path = ctx.out.join(format!("flood-{}.toml", c.label));
            std::fs::write(&path, text)?;
            Some(path)
        }
        None => None,
    };
    let server = servers::start_on(
        ctx,
        c.server,
        cert,
        c.label,
        config.as_deref(),
        &[],
        "0.0.0.0",
    )?;
    let capacity = legit(
        ctx,
        topo,
        &server,
        &ctx.out.join(format!("flood-{}-capacity.json", c.label)),
        &[
            "--concurrency".into(),
            PROBE_CONCURRENCY.to_string(),
            "--duration".into(),
            plan.capacity_s.to_string(),
        ],
    )?["rate_ok"]
        .as_f64()
        .unwrap_or(0.0);
    if capacity < 1.0 {
        bail!("{}: the capacity probe completed no handshake", c.label);
    }
    let rate = (capacity * LOAD_SHARE).max(1.0);
    eprintln!(
        "{}: capacity {capacity:.0}/s, legitimate load {rate:.0}/s",
        c.label
    );
    let target = sender::Target {
        netns: Topology::path(&topo.flood),
        ifname: topo.flood_if.clone(),
        src_mac: Topology::mac(&topo.flood, &topo.flood_if)?,
        dst_mac: Topology::mac(&topo.server, &topo.server_flood_if)?,
        server: SERVER_FOR_FLOOD,
        port: server.port,
        cpu: LOAD_CPU.parse().context("LOAD_CPU")?,
    };
    let mut phases = Vec::new();
    // `--phases`: the no-flood phase always, as every ratio's base.
    let wanted = |name: &str| {
        ctx.flood_phases.is_empty()
            || name == "none"
            || ctx
                .flood_phases
                .iter()
                .any(|p| name.starts_with(p.as_str()))
    };
    for (name, mix) in PHASES.iter().filter(|(name, _)| wanted(name)) {
        let row = phase(ctx, topo, &server, c, &target, plan, rate, (name, *mix))
            .with_context(|| format!("phase {name}"))?;
        eprintln!("{}", phase_line(c.label, &row));
        phases.push(row);
        std::thread::sleep(SETTLE);
    }
    Ok(json!({
        "server": c.label,
        "guard": c.guard,
        "capacity_per_s": capacity,
        "rate_per_s": rate,
        "phases": phases,
    }))
}

/// portcullis' config file for contender `c`: the guard native on both server veth ends with the bench's
/// budgets, or no XDP; admission control as `c` says.
fn portcullis_config(c: &Contender, topo: &Topology, pin_dir: &str) -> String {
    let mut text = String::from("# Written by cargo xtask bench flood.\n");
    if c.guard {
        let _ = write!(
            text,
            "[xdp]\ninterfaces = [\"{}\", \"{}\"]\nmode = \"native\"\npin_dir = \"{pin_dir}\"\n\
             syn_rate = {SYN_RATE}\nsyn_burst = {SYN_BURST}\nhello_rate = {HELLO_RATE}\nhello_burst = {HELLO_BURST}\n\
             flood_syn_rate = {FLOOD_SYN_RATE}\nflood_syn_burst = {FLOOD_SYN_BURST}\n\
             malformed_penalty_ms = {MALFORMED_PENALTY_MS}\n",
            topo.server_client_if, topo.server_flood_if
        );
    }
    let _ = write!(text, "[admission]\nenabled = {}\n", c.admission);
    text
}

/// One phase: counters, the flood and the legitimate load side by side, counters again; the phase's JSON row.
#[expect(
    clippy::too_many_arguments,
    reason = "the phase's context, each named at its one call site"
)]
fn phase(
    ctx: &Ctx,
    topo: &Topology,
    server: &Server,
    c: &Contender,
    target: &sender::Target,
    plan: &Plan,
    rate: f64,
    (name, mix): (&str, Mix),
) -> Result<Value> {
    let before = Snapshot::take(topo, server)?;
    let json_path = ctx
        .out
        .join(format!("flood-{}-{}.json", c.label, &name[..1]));
    let load = [
        "--no-preflight".into(),
        "--phase".into(),
        format!("warmup:{}:{rate:.1}", WARMUP.as_secs()),
        "--phase".into(),
        format!("{}:{}:{rate:.1}", &name[..1], plan.phase_s),
    ];
    let (sent, report) = std::thread::scope(|scope| -> Result<_> {
        let flooding = mix != Mix::default();
        let flood = flooding.then(|| {
            scope.spawn(|| {
                std::thread::sleep(WARMUP);
                sender::flood(target, mix, Duration::from_secs(plan.phase_s))
            })
        });
        let report = legit(ctx, topo, server, &json_path, &load);
        let sent = match flood {
            Some(h) => Some(
                h.join()
                    .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??,
            ),
            None => None,
        };
        Ok((sent, report?))
    })?;
    let after = Snapshot::take(topo, server)?;
    // The measured phase, after the warm-up.
    let stats = &report["phase_stats"][1];
    let offered = stats["offered"].as_u64().unwrap_or(0);
    let ok = stats["ok"].as_u64().unwrap_or(0);
    // No percentile of nothing (the report says 0).
    let ms = |p: &str| {
        stats["handshake_us"][p]
            .as_u64()
            .filter(|_| ok > 0)
            .map(|us| us as f64 / 1000.0)
    };
    let mut row = json!({
        "phase": name,
        "offered": offered,
        "ok": ok,
        "success": ok as f64 / offered.max(1) as f64,
        "p99_ms": ms("p99"),
        "p50_ms": ms("p50"),
        "errors": errors_by_cause(&report),
        "flood": sent.map_or_else(|| json!({"packets_per_s": 0.0}), |sent| json!({
            "syns": sent.syns,
            "junk_hellos": sent.junk,
            "valid_hellos": sent.valid,
            "connect_failed": sent.connect_failed,
            "secs": sent.secs,
            "packets_per_s": sent.packets_per_s(),
        })),
    });
    if let (Some(row), Value::Object(delta)) = (row.as_object_mut(), before.delta(&after)) {
        row.extend(delta);
    }
    Ok(row)
}

/// The legitimate failures of a `portcullis-load` report by cause, over all kinds.
fn errors_by_cause(report: &Value) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for kind in report["kinds"]
        .as_object()
        .into_iter()
        .flat_map(|k| k.values())
    {
        for (cause, n) in kind["errors"].as_object().into_iter().flatten() {
            *all.entry(cause.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    all
}

/// The counters read at a phase's edges.
struct Snapshot {
    cpu0: counters::CpuTimes,
    cpu1: counters::CpuTimes,
    nstat: BTreeMap<String, u64>,
    /// portcullis' `/metrics` (empty for the others).
    metrics: BTreeMap<String, u64>,
    backlog_drops: u64,
    server_cpu: Duration,
    at: Instant,
}

impl Snapshot {
    fn take(topo: &Topology, server: &Server) -> Result<Snapshot> {
        Ok(Snapshot {
            cpu0: counters::cpu(SERVER_CPU.parse()?)?,
            cpu1: counters::cpu(LOAD_CPU.parse()?)?,
            nstat: counters::nstat(&topo.server)?,
            metrics: match server.metrics_port {
                Some(port) => counters::metrics(&servers::http_get(port, "/metrics")?.1),
                None => BTreeMap::new(),
            },
            backlog_drops: counters::backlog_drops()?,
            server_cpu: server.cpu_time(),
            at: Instant::now(),
        })
    }

    /// What changed until `later`, as the JSON fields of a phase row.
    fn delta(&self, later: &Snapshot) -> Value {
        let share = |a: counters::CpuTimes, b: counters::CpuTimes| {
            let s = counters::share(a, b);
            json!({"user": s.user, "system": s.system, "softirq": s.softirq})
        };
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        json!({
            "cpu0": share(self.cpu0, later.cpu0),
            "cpu1": share(self.cpu1, later.cpu1),
            "server_cpu_share": later.server_cpu.saturating_sub(self.server_cpu).as_secs_f64() / wall,
            "nstat": counters::delta(&self.nstat, &later.nstat, counters::NSTAT),
            "metrics": counters::delta_all(&self.metrics, &later.metrics),
            "backlog_drops": later.backlog_drops.saturating_sub(self.backlog_drops),
        })
    }
}

/// `portcullis-load run` from the client namespace, pinned to the load CPU, at the server's client-side address,
/// from the client's 64 sources; the JSON report.
fn legit(
    ctx: &Ctx,
    topo: &Topology,
    server: &Server,
    json: &Path,
    args: &[String],
) -> Result<Value> {
    let mut all = vec![
        "--mix".to_owned(),
        MIX.to_owned(),
        "--timeout".to_owned(),
        CLIENT_TIMEOUT_S.to_string(),
    ];
    all.extend(topo.client_sources.iter().map(|a| format!("--source={a}")));
    all.extend_from_slice(args);
    load::run_in(
        ctx,
        Some(&topo.client),
        &format!("{SERVER_FOR_CLIENT}:{}", server.port),
        json,
        &all,
    )
}

/// One progress line for a phase row.
fn phase_line(label: &str, row: &Value) -> String {
    format!(
        "{label:<20} {:<15} ok {:>6.2}%  p99 {:>7.1} ms  flood {:>8.0} pkt/s  cpu0 usr {:>4.1} sys {:>4.1} si {:>4.1}  cpu1 si {:>4.1}",
        row["phase"].as_str().unwrap_or("?"),
        100.0 * row["success"].as_f64().unwrap_or(0.0),
        row["p99_ms"].as_f64().unwrap_or(f64::NAN),
        row["flood"]["packets_per_s"].as_f64().unwrap_or(0.0),
        row["cpu0"]["user"].as_f64().unwrap_or(0.0),
        row["cpu0"]["system"].as_f64().unwrap_or(0.0),
        row["cpu0"]["softirq"].as_f64().unwrap_or(0.0),
        row["cpu1"]["softirq"].as_f64().unwrap_or(0.0),
    )
}

/// Where the flood's packets ended, in one cell: XDP drops, SYN cookies, userspace refusals.
fn dropped_where(row: &Value) -> String {
    let m = row["metrics"].as_object();
    let sum = |pred: &dyn Fn(&str) -> bool| -> u64 {
        m.map_or(0, |m| {
            m.iter()
                .filter(|(k, _)| pred(k))
                .map(|(_, v)| v.as_u64().unwrap_or(0))
                .sum()
        })
    };
    let xdp = sum(&|k| k.starts_with("xdp:drop_"));
    let user = sum(&|k| {
        (k.starts_with("handshake:") && k != "handshake:ok")
            || k.starts_with("refused:")
            || k.starts_with("shed:")
    });
    let cookies = row["nstat"]["TcpExtSyncookiesSent"].as_u64().unwrap_or(0);
    let listen = row["nstat"]["TcpExtListenDrops"].as_u64().unwrap_or(0);
    let backlog = row["backlog_drops"].as_u64().unwrap_or(0);
    let mut s = String::new();
    if m.is_some_and(|m| m.keys().any(|k| k.starts_with("xdp:"))) {
        let _ = write!(s, "xdp {} ", short(xdp));
        // Of which the flood defences' (issue 21): unknown sources over the flood budget, penalized sources.
        let flood = sum(&|k| k == "xdp:drop_syn_flood");
        let penalty = sum(&|k| k == "xdp:drop_syn_penalty");
        if flood + penalty != 0 {
            let _ = write!(s, "(flood {} penalty {}) ", short(flood), short(penalty));
        }
    }
    let _ = write!(
        s,
        "backlog {} cookies {} listen {}",
        short(backlog),
        short(cookies),
        short(listen)
    );
    if m.is_some_and(|m| !m.is_empty()) {
        let _ = write!(s, " user {}", short(user));
    }
    s
}

/// `x` with `places` decimals, or "-" when it is not a number (no handshake completed).
fn fixed(x: f64, places: usize) -> String {
    if x.is_finite() {
        format!("{x:.places$}")
    } else {
        "-".to_owned()
    }
}

/// 1234567 -> "1.2M".
fn short(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// The table, the targets, the chart; `flood.json` and `flood.txt`. Fails when a cell is empty or the guard
/// dropped none of the junk ClientHellos (then the bench measured something other than the guard).
fn report(ctx: &Ctx, topo: &Topology, plan: &Plan, results: &[Value]) -> Result<()> {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "bench flood: {} s per phase, legitimate load at {:.0}% of capacity ({MIX}, ECDSA P-256), server on CPU \
         {SERVER_CPU}, client and flood on CPU {LOAD_CPU}; RPS to CPU {SERVER_CPU}: {}",
        plan.phase_s,
        100.0 * LOAD_SHARE,
        if topo.rps {
            "yes"
        } else {
            "no (kernel without RPS?)"
        },
    );
    let _ = writeln!(
        text,
        "\n| server | phase | flood pkt/s | legit ok % | p99 ms | p99 / no flood | CPU0 usr/sys/si % | CPU1 si % | flood dropped where |\n\
         |---|---|---:|---:|---:|---:|---|---:|---|"
    );
    let mut failures = Vec::new();
    let mut targets = Vec::new();
    for r in results {
        let label = r["server"].as_str().unwrap_or("?");
        let phases = r["phases"].as_array().cloned().unwrap_or_default();
        let base = phases
            .first()
            .and_then(|p| p["p99_ms"].as_f64())
            .unwrap_or(f64::NAN);
        for p in &phases {
            let name = p["phase"].as_str().unwrap_or("?");
            let success = p["success"].as_f64().unwrap_or(0.0);
            let p99 = p["p99_ms"].as_f64().unwrap_or(f64::NAN);
            let ratio = p99 / base;
            let _ = writeln!(
                text,
                "| {label} | {name} | {:.0} | {:.2} | {} | {} | {:.0}/{:.0}/{:.0} | {:.0} | {} |",
                p["flood"]["packets_per_s"].as_f64().unwrap_or(0.0),
                100.0 * success,
                fixed(p99, 1),
                fixed(ratio, 2),
                p["cpu0"]["user"].as_f64().unwrap_or(0.0),
                p["cpu0"]["system"].as_f64().unwrap_or(0.0),
                p["cpu0"]["softirq"].as_f64().unwrap_or(0.0),
                p["cpu1"]["softirq"].as_f64().unwrap_or(0.0),
                dropped_where(p),
            );
            // A server that serves no one during a flood is a result; one that serves no one without a flood
            // means the harness is broken.
            if name == "none" && p["ok"].as_u64().unwrap_or(0) == 0 {
                failures.push(format!(
                    "{label}: no legitimate handshake completed without a flood"
                ));
            }
            if name != "none" && p["flood"]["packets_per_s"].as_f64().unwrap_or(0.0) <= 0.0 {
                failures.push(format!("{label}, phase {name}: the flood sent nothing"));
            }
            if r["guard"].as_bool() == Some(true) {
                let met = success >= TARGET_SUCCESS && ratio <= TARGET_P99_RATIO;
                targets.push(format!(
                    "  {label:<22} {name:<15} ok {:.2}% (>= {:.0}%), p99 {ratio:.2}x no flood (<= {TARGET_P99_RATIO:.0}x): {}",
                    100.0 * success,
                    100.0 * TARGET_SUCCESS,
                    if met { "met" } else { "NOT met" }
                ));
                if name.starts_with('b')
                    && p["metrics"]["xdp:drop_malformed_hello"]
                        .as_u64()
                        .unwrap_or(0)
                        == 0
                {
                    failures.push(format!(
                        "{label}, phase {name}: the guard dropped no junk ClientHello (is XDP attached to the veths?)"
                    ));
                }
            }
        }
    }
    if !targets.is_empty() {
        let _ = writeln!(
            text,
            "\nTargets, portcullis with the guard (admission control on, its default; and off), per phase:"
        );
        for t in &targets {
            let _ = writeln!(text, "{t}");
        }
    }
    let _ = writeln!(text, "\n{}", chart(results));
    print!("{text}");
    let out = json!({ "phase_s": plan.phase_s, "rps_to_server_cpu": topo.rps, "servers": results });
    std::fs::write(
        ctx.out.join("flood.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    std::fs::write(ctx.out.join("flood.txt"), &text)?;
    eprintln!(
        "wrote {} and flood.txt",
        ctx.out.join("flood.json").display()
    );
    if !failures.is_empty() {
        bail!("bench flood: {}", failures.join("; "));
    }
    Ok(())
}

/// Legitimate success per server and phase as text bars (50 characters = 100%).
fn chart(results: &[Value]) -> String {
    let mut s = String::from("legitimate handshakes completed, % (each # = 2%)\n");
    for r in results {
        let label = r["server"].as_str().unwrap_or("?");
        for p in r["phases"].as_array().into_iter().flatten() {
            let pct = 100.0 * p["success"].as_f64().unwrap_or(0.0);
            let _ = writeln!(
                s,
                "{label:<22} {:<15} {:<50} {pct:6.2}",
                p["phase"].as_str().unwrap_or("?"),
                "#".repeat((pct / 2.0).round() as usize),
            );
        }
    }
    s
}
