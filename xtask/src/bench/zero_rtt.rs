//! `cargo xtask bench zero-rtt`: what TLS 1.3 0-RTT saves a returning client, and how many replays of a
//! captured 0-RTT flight reach the upstream, for portcullis, nginx and HAProxy (issue 19).
//!
//! The client and the servers sit in two network namespaces joined through a third where a frame relay delays
//! every packet by half the round trip each way ([`netns::Wan`]; this kernel has no `netem`): 30 ms and 100 ms
//! (`--quick`: 30 ms). In the server namespace: one server at a time
//! (portcullis `mode = "http"` with early data and the local store; nginx `ssl_early_data on`; HAProxy
//! `allow-0rtt`; [`servers::start_zero_rtt`]), in front of [`Upstream`], a small HTTP/1.1 server written here
//! that records every request's path and `Early-Data` header.
//!
//! Phases, per round trip and server: TTFB with `portcullis-load ttfb` (full, resumed, 0-RTT; from TCP
//! connected to the first response byte, so a full handshake is about 2 RTT and 0-RTT about 1). Then, once per
//! server at the first round trip, the replay: two instances sharing their ticket keys (portcullis: one fleet
//! key directory and one Debian `redis-server` started here), a 0-RTT `GET /replay` to the first whose first
//! flight the probe captures, and that flight re-sent raw to the first and to the second. The upstream's count
//! of `/replay` is the replay column: 1 means no replay got through.
//!
//! Last, portcullis only and with no delay ([`store`]): the session store's CPU per resumption (local against
//! Redis, alternating rounds; one client at a time and `--store-concurrency` K at once, the target judged on
//! the latter) and handshake p99 with redis-server stopped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::cmd::output_ok;

use super::Ctx;
use super::certs::{self, Cert, KeyType};
use super::load::LOAD_CPU;
use super::netns::{self, SERVER_IP, Wan};
use super::servers::{self, ServerKind, ZeroRttSpec};

mod store;

/// Probe processes at once in the store's concurrent CPU form (`--store-concurrency`).
pub const DEFAULT_STORE_CONCURRENCY: u32 = store::DEFAULT_CONCURRENCY;

/// Round trips of a full run, ms.
const RTTS_MS: [u32; 2] = [30, 100];
/// Round trip of a `--quick` run, ms.
const QUICK_RTT_MS: u32 = 30;
/// The probe's modes, in column order.
const MODES: [&str; 3] = ["full", "resumed", "zero-rtt"];
/// The target: portcullis' 0-RTT TTFB at most one round trip plus this, ms.
const ZERO_RTT_SLACK_MS: f64 = 3.0;
/// The store's phases (full run): resumptions per CPU run, alternating rounds, 0-RTT connections each way with
/// Redis running and stopped.
const STORE_FULL: (u32, u32, u32) = (2000, 5, 500);
/// The same for `--quick`.
const STORE_QUICK: (u32, u32, u32) = (1000, 3, 150);
/// How long a replayer waits for the server after sending a captured flight (it cannot finish the handshake);
/// a server that forwards early data forwards it within this.
const REPLAY_WAIT: Duration = Duration::from_secs(2);

/// What one TTFB run of one mode measured.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ModeCell {
    p50: f64,
    p90: f64,
    /// Completed samples.
    ok: u64,
    /// Samples whose early data the server accepted.
    early_accepted: u64,
}

/// One server at one round trip.
#[derive(Debug, Clone, Default)]
struct Row {
    server: &'static str,
    rtt_ms: u32,
    modes: BTreeMap<&'static str, ModeCell>,
    /// 0-RTT samples whose request reached the upstream with `Early-Data: 1`.
    early_header: u64,
}

impl Row {
    /// (resumed p50 - 0-RTT p50) / RTT: the round trips 0-RTT saved.
    fn saved_rtts(&self) -> Option<f64> {
        let r = self.modes.get("resumed")?;
        let z = self.modes.get("zero-rtt")?;
        Some((r.p50 - z.p50) / f64::from(self.rtt_ms))
    }

    /// Share of 0-RTT samples whose early data was accepted, %.
    fn accepted_pct(&self) -> Option<f64> {
        let z = self.modes.get("zero-rtt")?;
        (z.ok > 0).then(|| 100.0 * z.early_accepted as f64 / z.ok as f64)
    }
}

/// The replay of one server: how many times the upstream got the request.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Replay {
    server: &'static str,
    /// The original 0-RTT request's early data was accepted.
    early_accepted: bool,
    /// Requests for the path at the upstream: the original plus every replay that got through.
    upstream_count: usize,
    /// portcullis: replays its two instances recognised and refused early data to
    /// (`portcullis_early_data_total{outcome="replay"}`); `None` for the peers, which count none.
    refused: Option<u64>,
}

/// Runs the benchmark; writes `zero-rtt.json` and `zero-rtt.txt` under `target/bench/`. Fails when a server
/// does not answer, a resuming mode never resumed, a server accepted no early data at all, or the replay's
/// original request did not reach the upstream exactly once.
pub fn run(ctx: &Ctx) -> Result<()> {
    let started = Instant::now();
    let rtts: Vec<u32> = if ctx.quick {
        vec![QUICK_RTT_MS]
    } else {
        RTTS_MS.to_vec()
    };
    let samples: u32 = if ctx.quick { 10 } else { 50 };
    let cert = certs::ensure(&ctx.out, KeyType::Ecdsa)?;
    let keys = Keys::make(ctx)?;
    let wan = Wan::new()?;
    let mut bench = Bench {
        ctx,
        wan: &wan,
        cert: &cert,
        keys: &keys,
        next_port: 20_000,
        upstream: None,
    };
    let upstream_port = bench.port();
    bench.upstream = Some(Upstream::start(&wan.server_path(), upstream_port)?);
    let redis = if ctx.servers.contains(&ServerKind::Portcullis) {
        let port = bench.port();
        Some(Redis::start(&wan.server_path(), port)?)
    } else {
        None
    };

    let mut rows = Vec::new();
    let mut replays = Vec::new();
    for (i, &rtt) in rtts.iter().enumerate() {
        wan.set_rtt(rtt)?;
        for &kind in &ctx.servers {
            rows.push(bench.ttfb_row(kind, rtt, samples)?);
            if i == 0 {
                replays.push(bench.replay(kind, redis.as_ref().map(|r| r.url()))?);
            }
        }
    }
    // The store's targets, portcullis only, with no delay: the figures are server time, not the link's.
    let (store_cpu, stopped) = match &redis {
        Some(redis) => {
            wan.set_rtt(0)?;
            let (per_run, rounds, samples) = if ctx.quick {
                (STORE_QUICK.0, STORE_QUICK.1, STORE_QUICK.2)
            } else {
                (STORE_FULL.0, STORE_FULL.1, STORE_FULL.2)
            };
            (
                Some(store::cpu(
                    &mut bench,
                    redis,
                    per_run,
                    rounds,
                    ctx.store_concurrency,
                    ctx.store_gap_ms,
                )?),
                Some(store::stopped(&mut bench, samples)?),
            )
        }
        None => (None, None),
    };
    drop(redis);
    drop(bench);
    drop(wan);

    let mut verdicts = verdicts(&rows, &replays);
    verdicts["store_cpu_per_resumption"] = store_cpu
        .as_ref()
        .map_or(Value::Null, store::StoreCpus::json);
    verdicts["redis_stopped"] = stopped.as_ref().map_or(Value::Null, store::Stopped::json);
    let mut text = render(&rows, &replays, &verdicts);
    store::render(&mut text, store_cpu.as_ref(), stopped.as_ref());
    println!("\n{text}");
    std::fs::write(ctx.out.join("zero-rtt.txt"), &text)?;
    let json_path = ctx.out.join("zero-rtt.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json!({
            "quick": ctx.quick,
            "samples_per_cell": samples,
            "rtts_ms": rtts,
            "probe": "portcullis-load ttfb (rustls, aws-lc-rs, TLS 1.3, X25519), TTFB from TCP connected",
            "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
            "replay": replays.iter().map(|r| json!({
                "server": r.server, "early_accepted": r.early_accepted, "upstream_count": r.upstream_count,
                "replays_refused_and_counted": r.refused,
            })).collect::<Vec<_>>(),
            "targets": verdicts,
            "seconds": started.elapsed().as_secs_f64(),
        }))?,
    )?;
    eprintln!(
        "wrote {} and zero-rtt.txt in {:.0} s",
        json_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What every phase needs: the namespaces, the shared certificate and keys, the upstream.
struct Bench<'a> {
    ctx: &'a Ctx,
    wan: &'a Wan,
    cert: &'a Cert,
    keys: &'a Keys,
    /// Ports in the server namespace are handed out once each (a fresh namespace: nothing else binds there),
    /// so a restarted server never meets its predecessor's TIME_WAIT sockets.
    next_port: u16,
    upstream: Option<Upstream>,
}

impl Bench<'_> {
    fn port(&mut self) -> u16 {
        self.next_port += 1;
        self.next_port
    }

    fn upstream(&self) -> &Upstream {
        self.upstream
            .as_ref()
            .expect("the upstream starts before any server")
    }

    fn spec(&mut self, kind: ServerKind, label: String, redis: Option<String>) -> ZeroRttSpec {
        ZeroRttSpec {
            netns: self.wan.server_path(),
            port: self.port(),
            metrics_port: self.port(),
            upstream: self.upstream().port,
            label,
            ticket_keys: self.keys.of(kind).to_path_buf(),
            redis,
        }
    }

    /// One server alone (portcullis with the local store): TTFB in each mode.
    fn ttfb_row(&mut self, kind: ServerKind, rtt: u32, samples: u32) -> Result<Row> {
        let name = kind.name();
        let spec = self.spec(kind, format!("zero-rtt-{name}"), None);
        let server = servers::start_zero_rtt(self.ctx, kind, self.cert, &spec)?;
        let mut row = Row {
            server: name,
            rtt_ms: rtt,
            ..Row::default()
        };
        for mode in MODES {
            let path = format!("/ttfb/{name}/{rtt}/{mode}");
            let report = self.probe(spec.port, mode, &path, samples, None, &[])?;
            let cell = mode_cell(&report).with_context(|| {
                format!("{name} {mode} at {rtt} ms: the probe printed {report}")
            })?;
            if mode != "full" && report["resumed"].as_u64() == Some(0) {
                bail!(
                    "{name} did not resume any {mode} connection at {rtt} ms (see {}); its ticket config is broken",
                    self.ctx.out.join(&spec.label).display()
                );
            }
            // All three are configured to accept it: none accepted means the config under test is broken.
            if mode == "zero-rtt" && cell.early_accepted == 0 {
                bail!(
                    "{name} accepted early data on none of the {} 0-RTT connections at {rtt} ms; see its config and \
                     log under {}",
                    cell.ok,
                    self.ctx.out.join(&spec.label).display()
                );
            }
            row.modes.insert(mode, cell);
            if mode == "zero-rtt" {
                row.early_header = self.upstream().early_flags(&path) as u64;
            }
        }
        drop(server);
        Ok(row)
    }

    /// Two instances sharing keys (and, for portcullis, Redis): a captured 0-RTT flight re-sent to both.
    fn replay(&mut self, kind: ServerKind, redis: Option<String>) -> Result<Replay> {
        let name = kind.name();
        let redis = match kind {
            ServerKind::Portcullis => {
                Some(redis.context("portcullis' replay needs the Redis store")?)
            }
            _ => None,
        };
        let a_spec = self.spec(kind, format!("zero-rtt-{name}-a"), redis.clone());
        let b_spec = self.spec(kind, format!("zero-rtt-{name}-b"), redis);
        let a = servers::start_zero_rtt(self.ctx, kind, self.cert, &a_spec)?;
        let b = servers::start_zero_rtt(self.ctx, kind, self.cert, &b_spec)?;
        let path = format!("/replay/{name}");
        let flight_file = self.ctx.out.join(format!("zero-rtt-{name}-flight.bin"));
        let report = self.probe(a_spec.port, "zero-rtt", &path, 1, Some(&flight_file), &[])?;
        let early_accepted = report["early_accepted"].as_u64() == Some(1);
        let flight = std::fs::read(&flight_file)
            .with_context(|| format!("reading the captured flight {}", flight_file.display()))?;
        if self.upstream().count(&path) != 1 {
            bail!(
                "{name}: the original 0-RTT request reached the upstream {} times, expected once",
                self.upstream().count(&path)
            );
        }
        for target in [&a_spec, &b_spec] {
            replay(&self.wan.client_path(), target.port, &flight)?;
        }
        // A server that forwards early data has done so by now (REPLAY_WAIT each); leave the upstream a moment.
        std::thread::sleep(Duration::from_millis(300));
        let upstream_count = self.upstream().count(&path);
        let refused = match kind {
            ServerKind::Portcullis => Some(
                replays_counted(&self.wan.server_path(), a_spec.metrics_port)?
                    + replays_counted(&self.wan.server_path(), b_spec.metrics_port)?,
            ),
            _ => None,
        };
        drop((a, b));
        Ok(Replay {
            server: name,
            early_accepted,
            upstream_count,
            refused,
        })
    }

    /// `portcullis-load ttfb` in the client namespace on CPU 1, with `extra` options; its JSON report.
    fn probe(
        &self,
        port: u16,
        mode: &str,
        path: &str,
        samples: u32,
        capture: Option<&Path>,
        extra: &[&str],
    ) -> Result<Value> {
        let max_seconds = if self.ctx.quick { 20 } else { 90 };
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", LOAD_CPU])
            .args(netns::nsenter(&self.wan.client_path()))
            .arg(&self.ctx.load)
            .args(["ttfb", "--target", &format!("{SERVER_IP}:{port}")])
            .args(["--mode", mode, "--path", path])
            .args(["--samples", &samples.to_string()])
            .args(["--max-seconds", &max_seconds.to_string(), "--timeout", "10"])
            .args(extra);
        if let Some(file) = capture {
            cmd.arg("--capture").arg(file);
        }
        eprintln!(
            "+ portcullis-load ttfb --target {SERVER_IP}:{port} --mode {mode} --path {path} --samples {samples} {}",
            extra.join(" ")
        );
        let out = output_ok(
            cmd.stderr(Stdio::inherit()),
            &format!("portcullis-load ttfb --mode {mode} against {SERVER_IP}:{port}"),
        )?;
        // Every sample stays on disk for a second look: target/bench/zero-rtt-probe-<path>.json.
        let file = self
            .ctx
            .out
            .join(format!("zero-rtt-probe{}.json", path.replace('/', "-")));
        std::fs::write(&file, &out.stdout)
            .with_context(|| format!("writing {}", file.display()))?;
        serde_json::from_slice(&out.stdout).context("parsing portcullis-load ttfb's JSON")
    }
}

/// A captured first flight re-sent from the client namespace: connect, write it, read what the server answers
/// for [`REPLAY_WAIT`] (the replayer has no keys: it can never finish the handshake), close.
fn replay(client_ns: &Path, port: u16, flight: &[u8]) -> Result<()> {
    netns::run_in(client_ns, || -> Result<()> {
        let addr = (SERVER_IP, port).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("replay: connecting to {addr}"))?;
        s.write_all(flight)
            .with_context(|| format!("replay: sending the flight to {addr}"))?;
        let deadline = Instant::now() + REPLAY_WAIT;
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        Ok(())
    })?
}

/// `portcullis_early_data_total{outcome="replay"}` of the portcullis whose metrics listen on 127.0.0.1:`port`
/// in `netns`.
fn replays_counted(netns: &Path, port: u16) -> Result<u64> {
    let (status, text) = netns::run_in(netns, || servers::http_get(port, "/metrics"))??;
    if status != 200 {
        bail!("GET /metrics on portcullis' 127.0.0.1:{port} answered {status}");
    }
    Ok(replay_metric(&text))
}

/// The sum of `portcullis_early_data_total` series labelled `outcome="replay"` in a metrics text.
fn replay_metric(text: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with("portcullis_early_data_total{") && l.contains("outcome=\"replay\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn mode_cell(report: &Value) -> Option<ModeCell> {
    Some(ModeCell {
        p50: report["ttfb_ms"]["p50"].as_f64()?,
        p90: report["ttfb_ms"]["p90"].as_f64()?,
        ok: report["ok"].as_u64()?,
        early_accepted: report["early_accepted"].as_u64()?,
    })
}

/// Ticket key material, one per server kind, shared by that kind's instances: portcullis' fleet key
/// directory, nginx's 80-byte `ssl_session_ticket_key` file, HAProxy's `tls-ticket-keys` file (three base64
/// 80-byte keys).
struct Keys {
    portcullis: PathBuf,
    nginx: PathBuf,
    haproxy: PathBuf,
}

impl Keys {
    fn make(ctx: &Ctx) -> Result<Keys> {
        let dir = ctx.out.join("zero-rtt-keys");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the previous run's {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        let keys = Keys {
            portcullis: dir.join("portcullis"),
            nginx: dir.join("nginx.key"),
            haproxy: dir.join("haproxy.keys"),
        };
        output_ok(
            Command::new(&ctx.daemon)
                .args(["keys", "init", "--dir"])
                .arg(&keys.portcullis),
            &format!("portcullis keys init --dir {}", keys.portcullis.display()),
        )?;
        write_secret(&keys.nginx, &random(80)?)?;
        let lines: Vec<String> = (0..3)
            .map(|_| random(80).map(|k| base64(&k)))
            .collect::<Result<_>>()?;
        write_secret(&keys.haproxy, format!("{}\n", lines.join("\n")).as_bytes())?;
        Ok(keys)
    }

    fn of(&self, kind: ServerKind) -> &Path {
        match kind {
            ServerKind::Portcullis => &self.portcullis,
            ServerKind::Nginx => &self.nginx,
            ServerKind::Haproxy => &self.haproxy,
        }
    }
}

fn random(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf)
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))
}

/// Standard base64 with padding (RFC 4648 §4), for HAProxy's key file.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What the upstream saw: one entry per request, its path and `Early-Data` header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// The shared upstream: plain HTTP/1.1 with keep-alive on 127.0.0.1 of the server namespace, a thread per
/// connection, `200 ok` to every request, each request's path and `Early-Data` header recorded. Stops
/// accepting on drop.
struct Upstream {
    port: u16,
    seen: Seen,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    fn start(netns: &Path, port: u16) -> Result<Upstream> {
        let listener = netns::run_in(netns, || TcpListener::bind(("127.0.0.1", port)))?
            .with_context(|| {
                format!("upstream: binding 127.0.0.1:{port} in {}", netns.display())
            })?;
        listener.set_nonblocking(true)?;
        let up = Upstream {
            port,
            seen: Seen::default(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (seen, stop) = (up.seen.clone(), up.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let seen = seen.clone();
                        std::thread::spawn(move || serve(conn, &seen));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(up)
    }

    /// Requests for exactly `path`.
    fn count(&self, path: &str) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter().filter(|(p, _)| p == path).count()
    }

    /// Requests for exactly `path` that carried `Early-Data: 1`.
    fn early_flags(&self, path: &str) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .filter(|(p, e)| p == path && e.as_deref() == Some("1"))
            .count()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One upstream connection: requests until the peer closes, 60 s of silence, or a malformed head (at most
/// 64 KiB; a body announced by `Content-Length` is read and dropped).
fn serve(conn: TcpStream, seen: &Mutex<Vec<(String, Option<String>)>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let Some(path) = line.split_whitespace().nth(1).map(str::to_owned) else {
            return;
        };
        let (mut early, mut length, mut close, mut head) = (None, 0u64, false, line.len());
        loop {
            let mut h = String::new();
            match r.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(n) => head += n,
            }
            if head > 64 * 1024 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("early-data") {
                early = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        if std::io::copy(&mut (&mut r).take(length), &mut std::io::sink()).is_err() {
            return;
        }
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((path, early));
        let response =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
        if out.write_all(response).is_err() || close {
            return;
        }
    }
}

/// Debian's `redis-server` in the server namespace on 127.0.0.1:`port`, no persistence, killed by PID on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(netns: &Path, port: u16) -> Result<Redis> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["redis-server", "--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (`cargo xtask setup --bench` installs it)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("redis-server exited during start-up ({status})");
            }
            let pong = netns::run_in(netns, || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                s.write_all(b"PING\r\n").ok()?;
                let mut buf = [0u8; 16];
                let n = s.read(&mut buf).ok()?;
                Some(buf[..n].starts_with(b"+PONG"))
            })?;
            if pong == Some(true) {
                return Ok(Redis { child, port });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("redis-server did not answer PING on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// redis-server's own PID (nsenter execs it).
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn row_json(r: &Row) -> Value {
    let modes: serde_json::Map<String, Value> = r
        .modes
        .iter()
        .map(|(m, c)| {
            (
                (*m).to_owned(),
                json!({ "p50_ms": c.p50, "p90_ms": c.p90, "ok": c.ok, "early_accepted": c.early_accepted }),
            )
        })
        .collect();
    json!({
        "server": r.server, "rtt_ms": r.rtt_ms, "ttfb": modes,
        "saved_rtts": r.saved_rtts(), "early_accepted_pct": r.accepted_pct(),
        "early_data_header_at_upstream": r.early_header,
    })
}

/// The targets this bench measures: portcullis' 0-RTT TTFB within one RTT + 3 ms at every RTT, and no
/// replay reaching the upstream across two instances. `null` when portcullis was not measured.
fn verdicts(rows: &[Row], replays: &[Replay]) -> Value {
    let ttfb: Vec<Value> = rows
        .iter()
        .filter(|r| r.server == "portcullis")
        .filter_map(|r| {
            let z = r.modes.get("zero-rtt")?;
            let target = f64::from(r.rtt_ms) + ZERO_RTT_SLACK_MS;
            Some(json!({ "rtt_ms": r.rtt_ms, "p50_ms": z.p50, "target_ms": target, "met": z.p50 <= target }))
        })
        .collect();
    let replay = replays
        .iter()
        .find(|r| r.server == "portcullis")
        .map_or(Value::Null, |r| {
            json!({ "replays_reaching_upstream": r.upstream_count.saturating_sub(1), "met": r.upstream_count == 1 })
        });
    json!({
        "zero_rtt_ttfb": if ttfb.is_empty() { Value::Null } else { Value::Array(ttfb) },
        "replays": replay,
    })
}

fn render(rows: &[Row], replays: &[Replay], verdicts: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<11} {:>4}  {:>15} {:>15} {:>15}  {:>10} {:>9} {:>10}",
        "server",
        "RTT",
        "full p50/p90",
        "resumed p50/p90",
        "0-RTT p50/p90",
        "saved RTTs",
        "accepted",
        "Early-Data"
    );
    for r in rows {
        let cell = |m: &str| {
            r.modes
                .get(m)
                .map_or("-".to_owned(), |c| format!("{:.1}/{:.1}", c.p50, c.p90))
        };
        let z_ok = r.modes.get("zero-rtt").map_or(0, |c| c.ok);
        let _ = writeln!(
            out,
            "{:<11} {:>4}  {:>15} {:>15} {:>15}  {:>10} {:>9} {:>10}",
            r.server,
            r.rtt_ms,
            cell("full"),
            cell("resumed"),
            cell("zero-rtt"),
            r.saved_rtts().map_or("-".to_owned(), |s| format!("{s:.2}")),
            r.accepted_pct()
                .map_or("-".to_owned(), |p| format!("{p:.0}%")),
            format!("{}/{z_ok}", r.early_header),
        );
    }
    let _ = writeln!(
        out,
        "TTFB ms from TCP connected to the first response byte (portcullis-load ttfb: rustls, TLS 1.3, X25519, one \
         GET per new connection, sequential); saved RTTs = (resumed p50 - 0-RTT p50) / RTT; accepted = 0-RTT \
         samples whose early data the server accepted; Early-Data = of those samples, requests the upstream got \
         with `Early-Data: 1`. RTT: a frame relay delaying every packet half of it each way between the client's \
         and the server's namespaces (the kernel has no netem)."
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<11} {:>14} {:>28} {:>20}",
        "server", "early accepted", "upstream got the request", "replays counted"
    );
    for r in replays {
        let _ = writeln!(
            out,
            "{:<11} {:>14} {:>28} {:>20}",
            r.server,
            if r.early_accepted { "yes" } else { "no" },
            format!(
                "{} time{}",
                r.upstream_count,
                if r.upstream_count == 1 { "" } else { "s" }
            ),
            r.refused.map_or("-".to_owned(), |n| n.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "Replay: one 0-RTT GET to instance A, its first flight (ClientHello + early data) captured and re-sent raw \
         to A and to B (same ticket keys; portcullis: same fleet keys and one Redis). 1 = no replay got through; replays \
         counted = portcullis_early_data_total{{outcome=\"replay\"}} of A and B."
    );
    if let Some(cells) = verdicts["zero_rtt_ttfb"].as_array() {
        for t in cells {
            let _ = writeln!(
                out,
                "target {}: portcullis 0-RTT TTFB p50 {:.1} ms <= RTT + {ZERO_RTT_SLACK_MS} ms = {:.1} ms at RTT {} ms",
                if t["met"] == true { "met" } else { "MISSED" },
                t["p50_ms"].as_f64().unwrap_or(f64::NAN),
                t["target_ms"].as_f64().unwrap_or(f64::NAN),
                t["rtt_ms"],
            );
        }
    }
    let r = &verdicts["replays"];
    if !r.is_null() {
        let peers: Vec<String> = replays
            .iter()
            .filter(|p| p.server != "portcullis")
            .map(|p| format!("{} {}", p.server, p.upstream_count.saturating_sub(1)))
            .collect();
        let _ = writeln!(
            out,
            "target {}: replays reaching the upstream across two instances: portcullis {} (peers: {})",
            if r["met"] == true { "met" } else { "MISSED" },
            r["replays_reaching_upstream"],
            if peers.is_empty() {
                "not measured".to_owned()
            } else {
                peers.join(", ")
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }

    fn row(server: &'static str, rtt: u32, resumed: f64, zero: f64, accepted: u64) -> Row {
        let cell = |p50| ModeCell {
            p50,
            p90: p50 + 1.0,
            ok: 10,
            early_accepted: 0,
        };
        Row {
            server,
            rtt_ms: rtt,
            modes: BTreeMap::from([
                ("full", cell(resumed + 0.5)),
                ("resumed", cell(resumed)),
                (
                    "zero-rtt",
                    ModeCell {
                        early_accepted: accepted,
                        ..cell(zero)
                    },
                ),
            ]),
            early_header: accepted,
        }
    }

    #[test]
    fn saved_round_trips_acceptance_and_targets() {
        let rows = [
            row("portcullis", 30, 61.0, 61.5, 10),
            row("nginx", 30, 61.0, 31.0, 10),
        ];
        assert!((rows[1].saved_rtts().expect("both modes") - 1.0).abs() < 1e-9);
        assert_eq!(rows[0].accepted_pct(), Some(100.0));
        let replays = [
            Replay {
                server: "portcullis",
                early_accepted: true,
                upstream_count: 1,
                refused: Some(2),
            },
            Replay {
                server: "nginx",
                early_accepted: true,
                upstream_count: 3,
                refused: None,
            },
        ];
        let v = verdicts(&rows, &replays);
        assert_eq!(v["zero_rtt_ttfb"][0]["met"], false, "61.5 ms > 30 + 3 ms");
        assert_eq!(v["replays"]["met"], true);
        let text = render(&rows, &replays, &v);
        assert!(
            text.contains("target MISSED: portcullis 0-RTT TTFB"),
            "{text}"
        );
        assert!(text.contains("(peers: nginx 2)"), "{text}");
        assert!(text.contains("3 times"), "{text}");
        let fast = [row("portcullis", 30, 61.0, 31.0, 10)];
        assert_eq!(verdicts(&fast, &[])["zero_rtt_ttfb"][0]["met"], true);
        assert!(verdicts(&fast, &[])["replays"].is_null());
    }

    #[test]
    fn replay_outcomes_are_summed_from_the_metrics_text() {
        let text = "# HELP portcullis_early_data_total ...\n\
            portcullis_early_data_total{listener=\"https\",outcome=\"accepted\"} 1\n\
            portcullis_early_data_total{listener=\"https\",outcome=\"replay\"} 2\n\
            portcullis_early_data_total{listener=\"other\",outcome=\"replay\"} 1\n\
            portcullis_session_store_requests_total{op=\"fetch\",result=\"replay\"} 7\n";
        assert_eq!(replay_metric(text), 3);
        assert_eq!(replay_metric(""), 0);
    }

    #[test]
    fn the_upstream_counts_paths_and_early_data_headers() {
        let seen = Seen::default();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let worker = {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let (conn, _) = listener.accept().expect("accept");
                serve(conn, &seen);
            })
        };
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(
            b"GET /a HTTP/1.1\r\nEarly-Data: 1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /a HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .expect("requests");
        let mut answer = String::new();
        c.read_to_string(&mut answer).expect("responses");
        worker.join().expect("server thread");
        assert_eq!(answer.matches("200 OK").count(), 3, "{answer}");
        let up = Upstream {
            port: addr.port(),
            seen,
            stop: Arc::new(AtomicBool::new(false)),
        };
        assert_eq!((up.count("/a"), up.count("/b")), (2, 1));
        assert_eq!(up.early_flags("/a"), 1);
    }
}
